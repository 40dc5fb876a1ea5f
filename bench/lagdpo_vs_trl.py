"""Three forwards of the same PersonaKnob rows, in one run: TRL's DPOTrainer on the exploded pairs (2|S| sequences a
row), LagrangianDPOTrainer's grouped forward (|S|+1 sequences) and its shared-prompt forward (one sequence: the prompt
once, then every completion); same model (about 4M parameters) and settings. All three read precomputed reference
log-probs (`precompute_ref_log_probs`), so each step is the policy's forward and backward only.

The saving of each layout is the tokens it does not process, so its physical limit is its ratio of (padded) tokens to
TRL's; the limit of any layout is the prompt plus the sum of the completions. Per row the bench prints the real and
padded tokens of each forward and that limit, the time ratios against TRL, and last how close each time ratio is to
its token ratio (target: within 10 %).

Timing: each trainer's epoch of batches (its own sampler and collator) is run as optimiser steps (`training_step`,
then the optimiser), the three trainers' steps interleaved in proportion so that a shared machine's drifting speed
(epochs of the same trainer a minute apart differed by up to 30 % here) falls on all three alike. A repeat is one
epoch of each; the ratios are the medians over repeats. Usage: python bench/lagdpo_vs_trl.py [--rows 48] [--repeats 3]
"""
import argparse
import copy
import logging
import os
import tempfile
import time
import warnings

os.environ.setdefault('TQDM_DISABLE', '1')
warnings.filterwarnings('ignore')

import datasets
import numpy as np
import torch
import transformers
from trl import DPOConfig, DPOTrainer

from dignified_peer.core import n_params, seed_everything, tiny_model
from dignified_peer.data import MINI_DATASET, load_personaknob, to_groups, to_pairs
from dignified_peer.training import LagrangianDPOConfig, LagrangianDPOTrainer

datasets.disable_progress_bars()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger('transformers').setLevel(logging.ERROR)


def settings(max_length, batch):
    "Identical TrainingArguments for both trainers."
    return dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_length=max_length, learning_rate=1e-4,
                beta=0.1, num_train_epochs=1, gradient_checkpointing=False, bf16=False, report_to='none',
                save_strategy='no', logging_strategy='no', disable_tqdm=True, seed=0, dataloader_num_workers=0,
                precompute_ref_log_probs=True)


def build(kind, model, tok, rows, max_length, batch):
    policy = copy.deepcopy(model)
    if kind == 'trl':
        return DPOTrainer(policy, ref_model=copy.deepcopy(model), args=DPOConfig(**settings(max_length, batch)),
                          train_dataset=to_pairs(rows), processing_class=tok)
    fast = dict(share_prompt=kind == 'shared', train_sampling_strategy='group_by_length')
    return LagrangianDPOTrainer(policy, ref_model=copy.deepcopy(model), args=LagrangianDPOConfig(**settings(max_length, batch), **fast),
                                train_dataset=to_groups(rows), processing_class=tok)


def limit_tokens(trainer):
    "Prompt plus the sum of the completions of every row (after truncation): what any layout must process."
    cap = trainer.args.max_length or 10**9
    return sum(len(ex['prompt_ids']) + sum(min(len(c), cap - len(ex['prompt_ids'])) for c in [ex['chosen_ids'], *ex['rejected_ids']])
               for ex in trainer.train_dataset)


def epoch_batches(trainer):
    "One epoch of the trainer's own batches (its sampler, collator and precomputed reference log-probs), on its device."
    return [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]


def timed_steps(trainers, batches):
    "Seconds per trainer for one epoch of optimiser steps, the trainers' steps interleaved in proportion to their counts."
    order = sorted((i / len(batches[k]), k, i) for k in trainers for i in range(len(batches[k])))
    spent = dict.fromkeys(trainers, 0.0)
    for _, k, i in order:
        t, b = trainers[k], batches[k][i]
        t0 = time.perf_counter()
        t.training_step(t.model, b); t.optimizer.step(); t.optimizer.zero_grad()
        spent[k] += time.perf_counter() - t0
    return spent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=48, help='PersonaKnob training rows to train on (default 48)')
    ap.add_argument('--repeats', type=int, default=3, help='timed epochs of each trainer, their steps interleaved; medians count (default 3)')
    ap.add_argument('--max-length', type=int, default=512, help='max_length of both trainers (default 512)')
    ap.add_argument('--rows-per-step', type=int, default=4, help='rows per step of the grouped trainer (default 4)')
    a = ap.parse_args()
    seed_everything(0)
    rows = load_personaknob(MINI_DATASET, split='train').select(range(a.rows))
    n_pairs = sum(len(m) for m in rows['mask'])
    model, tok = tiny_model([*rows['prompt'], *rows['golden']], size='bench', vocab_size=4096, seed=0)
    # TRL's batch holds pairs: give it the same number of pairs per step as the grouped batch holds on average
    pair_batch = max(1, round(a.rows_per_step * n_pairs / a.rows))
    print(f"model: {n_params(model)/1e6:.2f}M parameters (tiny Llama 'bench', vocabulary {len(tok)}); "
          f"{a.rows} rows, {n_pairs} pairs; max_length {a.max_length}; {a.rows_per_step} rows or {pair_batch} pairs per step; "
          f"torch threads {torch.get_num_threads()}")
    kinds = ('trl', 'lag', 'shared')
    batches = {'trl': pair_batch, 'lag': a.rows_per_step, 'shared': a.rows_per_step}
    trainers = {k: build(k, model, tok, rows, a.max_length, batches[k]) for k in kinds}
    data = {k: epoch_batches(t) for k, t in trainers.items()}  # precomputes the reference log-probs
    for t in trainers.values(): t.create_optimizer(); t.model.train(); t.current_gradient_accumulation_steps = 1  # as `train` sets it
    timed_steps(trainers, {k: b[:2] for k, b in data.items()})  # warm-up: allocator, kernels
    toks = {k: (sum(int(b['attention_mask'].sum()) for b in data[k]), sum(b['input_ids'].numel() for b in data[k])) for k in kinds}
    limit = limit_tokens(trainers['lag'])
    times = {k: [] for k in kinds}
    for r in range(a.repeats):
        spent = timed_steps(trainers, data)
        for k in kinds: times[k].append(spent[k])
        print(f"  epoch {r + 1}: " + ", ".join(f"{k} {spent[k]:.1f}s ({len(data[k])} steps)" for k in kinds))
    ratio = {k: float(np.median([times[k][r] / times['trl'][r] for r in range(a.repeats)])) for k in kinds}
    sec = {k: float(np.median(times[k])) / a.rows for k in kinds}
    names = {'trl': 'TRL DPOTrainer (pairs)    ', 'lag': 'LagrangianDPO (grouped)   ', 'shared': 'LagrangianDPO (shared)    '}
    print(f"tokens per row (real / padded): " + "; ".join(f"{k} {toks[k][0] / a.rows:.0f} / {toks[k][1] / a.rows:.0f}" for k in kinds)
          + f"; limit (prompt + completions) {limit / a.rows:.0f}")
    close = []
    for k in kinds:
        # the physical limit of each layout: its padded tokens over TRL's (every cell of a batch is computed)
        tr, kr = ratio[k], toks[k][1] / toks['trl'][1]
        print(f"{names[k]}: {sec[k]:.4f} s/row; time ratio {tr:.3f}, padded-token ratio {kr:.3f}, real-token ratio {toks[k][0] / toks['trl'][0]:.3f}")
        if k != 'trl': close.append(f"{k} time ratio {tr:.3f} vs token ratio {kr:.3f} ({'within' if abs(tr - kr) <= 0.1 * kr else 'NOT within'} 10 %)")
    print(f"limit ratio (prompt + completions over TRL's padded tokens) {limit / toks['trl'][1]:.3f}")
    print("RESULT " + "; ".join(close))


if __name__ == '__main__':
    main()
