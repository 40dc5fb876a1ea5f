"""Grouped forward vs TRL's pairwise forward: seconds per PersonaKnob row of TRL's DPOTrainer on the exploded pairs
and of LagrangianDPOTrainer on the same rows, same model (about 4M parameters) and settings, in one run.

The saving comes from putting each golden through the policy and the reference once per row instead of once per
pair, so its physical limit is the ratio of the tokens the two forwards process; the target is a measured time
ratio within 10 % of that token ratio. Usage: python bench/lagdpo_vs_trl.py [--rows 48] [--repeats 3]
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
import torch
import transformers
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import DPOConfig, DPOTrainer

from dignified_peer.core import n_params, seed_everything, tiny_model
from dignified_peer.data import MINI_DATASET, load_personaknob, to_groups, to_pairs
from dignified_peer.training import LagrangianDPOConfig, LagrangianDPOTrainer

datasets.disable_progress_bars()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger('transformers').setLevel(logging.ERROR)


def settings(max_length, batch, max_steps=-1):
    "Identical TrainingArguments for both trainers."
    return dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_length=max_length, learning_rate=1e-4,
                beta=0.1, num_train_epochs=1, max_steps=max_steps, gradient_checkpointing=False, bf16=False, report_to='none',
                save_strategy='no', logging_strategy='no', disable_tqdm=True, seed=0, dataloader_num_workers=0)


def build(kind, model, tok, rows, max_length, batch, max_steps=-1):
    policy = copy.deepcopy(model)
    if kind == 'trl':
        return DPOTrainer(policy, ref_model=copy.deepcopy(model), args=DPOConfig(**settings(max_length, batch, max_steps)),
                          train_dataset=to_pairs(rows), processing_class=tok)
    return LagrangianDPOTrainer(policy, ref_model=copy.deepcopy(model), args=LagrangianDPOConfig(**settings(max_length, batch, max_steps)),
                                train_dataset=to_groups(rows), processing_class=tok)


def tokens(trainer):
    "Tokens one epoch puts through the policy (and again through the reference): (real tokens, padded batch cells)."
    real = padded = 0
    for batch in trainer.get_train_dataloader():  # the same seeded order and collator as training
        real += int(batch['attention_mask'].sum()); padded += batch['input_ids'].numel()
    return real, padded


def timed_epoch(kind, model, tok, rows, max_length, batch):
    trainer = build(kind, model, tok, rows, max_length, batch)
    trainer.remove_callback(PrinterCallback); trainer.remove_callback(ProgressCallback)
    t0 = time.perf_counter(); trainer.train(); return time.perf_counter() - t0, trainer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=48, help='PersonaKnob training rows to train on (default 48)')
    ap.add_argument('--repeats', type=int, default=3, help='timed epochs per trainer, interleaved; the fastest counts (default 3)')
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
    for kind, b in (('trl', pair_batch), ('lag', a.rows_per_step)):  # warm-up: allocator, kernels, tokenisation caches
        build(kind, model, tok, rows, a.max_length, b, max_steps=2).train()
    times, toks = {'trl': [], 'lag': []}, {}
    batches = {'trl': pair_batch, 'lag': a.rows_per_step}
    for r in range(a.repeats):
        for kind in (('trl', 'lag') if r % 2 == 0 else ('lag', 'trl')):  # alternate the order against drifting load
            s, trainer = timed_epoch(kind, model, tok, rows, a.max_length, batches[kind])
            times[kind].append(s)
            if kind not in toks: toks[kind] = tokens(trainer)
            print(f"  {kind}: epoch {r + 1} in {s:.1f}s ({s / a.rows:.3f} s/row)")
    trl_s, lag_s = min(times['trl']) / a.rows, min(times['lag']) / a.rows
    time_ratio = lag_s / trl_s
    # the physical limit: the ratio of the tokens the two forwards compute on (padded batches, as each collator builds them)
    token_ratio = toks['lag'][1] / toks['trl'][1]
    for name, kind, s in (('TRL DPOTrainer (pairs)  ', 'trl', trl_s), ('LagrangianDPO (grouped) ', 'lag', lag_s)):
        print(f"{name}: {s:.4f} s/row; per epoch {toks[kind][0]} real tokens, {toks[kind][1]} padded tokens")
    print(f"real-token ratio {toks['lag'][0] / toks['trl'][0]:.3f}, padded-token ratio {token_ratio:.3f}")
    print(f"time ratio {time_ratio:.3f} vs token ratio {token_ratio:.3f}: "
          f"{'within' if abs(time_ratio - token_ratio) <= 0.1 * token_ratio else 'NOT within'} 10 % of the token ratio")
    print(f"RESULT trl_s_per_row={trl_s:.4f} lag_s_per_row={lag_s:.4f} time_ratio={time_ratio:.3f} token_ratio={token_ratio:.3f}")


if __name__ == '__main__':
    main()
