"""The real-model preset's cost: seconds per training step for each method at the preset's settings (LoRA on
SmolLM2-135M-Instruct, configs/smollm2-cpu.yaml), sequences and tokens per step, selection scoring and generation
throughput, all measured in one run, and what the preset's whole run should take.

The preset's step counts are sized from these numbers. With --unshared each preference method is also timed on the
layout training used before its fast path (one sequence per completion, random batches: share_prompt off), in the same
run, right after the fast one. Usage:
    python bench/real_model.py [--config configs/smollm2-cpu.yaml] [--steps 3] [--unshared]
"""
import argparse
import logging
import os
import tempfile
import time
import warnings

os.environ.setdefault('TQDM_DISABLE', '1')
warnings.filterwarnings('ignore')

import datasets
import pandas as pd
import torch
import transformers
from transformers import TrainerCallback

from dignified_peer.core import load_model, resolve_model
from dignified_peer.data import load_personaknob, to_groups
from dignified_peer.lagrangian import completion_logps
from dignified_peer.pipeline import load_config
from dignified_peer.training import train

datasets.disable_progress_bars()
transformers.utils.logging.set_verbosity_error()
logging.getLogger('dignified_peer').setLevel(logging.WARNING)


class StepClock(TrainerCallback):
    "Wall time of every optimizer step."
    def __init__(self): self.times, self._t = [], None
    def on_step_begin(self, args, state, control, **kw): self._t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): self.times.append(time.perf_counter() - self._t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--config', default='configs/smollm2-cpu.yaml', help='the preset (default configs/smollm2-cpu.yaml)')
    ap.add_argument('--steps', type=int, default=3, help='steps timed per method; the first is a warm-up and not counted (default 3)')
    ap.add_argument('--unshared', action='store_true', help='also time every preference method without share_prompt and length-grouped batches')
    a = ap.parse_args()
    cfg = load_config(a.config)
    t, m, g = cfg['train'], cfg['model'], cfg['generate']
    t0 = time.perf_counter(); path = resolve_model(m['name']); t_conv = time.perf_counter() - t0
    ds = load_personaknob(cfg['data']['source'])
    rows, test = ds['train'], ds['test']
    print(f"model {m['name']} ({path}; ready in {t_conv:.1f}s); LoRA {m['peft']}; batch {t['per_device_train_batch_size']}; "
          f"max_length {t['max_length']}; torch threads {torch.get_num_threads()}")
    results = []
    layouts = {'shared': {}, 'unshared': dict(share_prompt=False, train_sampling_strategy='random')}
    runs = [(method, layout) for method in t['methods'] if method != 'base'
            for layout in (['shared', 'unshared'] if a.unshared and method != 'sft' else ['shared'])]
    for method, layout in runs:
        clock = StepClock()
        with tempfile.TemporaryDirectory() as out:
            res = train(method, data=rows, model=m['name'], output_dir=out, peft=m['peft'], progress=False, callbacks=[clock],
                        max_steps=a.steps, per_device_train_batch_size=t['per_device_train_batch_size'], max_length=t['max_length'],
                        learning_rate=t['learning_rate'], beta=t['beta'], epsilon=t['epsilon'], seed=cfg['run']['seed'],
                        save_strategy='no', **{**(t.get('extra') or {}), **layouts[layout]})
        h = res['history']
        tokens = h['num_tokens'].diff().iloc[1:].mean() if 'num_tokens' in h and len(h) > 1 else float('nan')
        counts = [c for c in h.columns if c.startswith('dual/count/')]
        pairs = h[counts].sum(1).mean() if counts else t['per_device_train_batch_size']
        groups = t['per_device_train_batch_size']
        seqs = (pairs + groups) if method != 'pooled' else 2 * pairs
        step_s = sum(clock.times[1:]) / max(1, len(clock.times) - 1)
        results.append(dict(method=method, layout=layout, s_per_step=step_s, pairs_per_step=pairs, sequences_per_step=seqs, tokens_per_step=tokens))
        print(f"{method:8s} {layout:8s} {step_s:6.1f} s/step  {pairs:4.1f} pairs  {seqs:4.1f} sequences  {tokens:7.0f} tokens per step", flush=True)
    model, tok = load_model(path)
    refs = to_groups(test.select(range(4)))
    t0 = time.perf_counter()
    lp = completion_logps(model, tok, list(refs['prompt']), list(refs['golden']), batch_size=8)
    score_s = (time.perf_counter() - t0) / len(lp)
    msgs = [[{'role': 'user', 'content': p}] for p in test['prompt'][:8]]
    tok.padding_side = 'left'
    x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors='pt', return_dict=True, padding=True)
    t0 = time.perf_counter()
    with torch.no_grad(): out = model.generate(**x, max_new_tokens=g['max_new_tokens'], do_sample=False)
    gen_s = time.perf_counter() - t0
    new = int((out[:, x['input_ids'].shape[1]:] != tok.pad_token_id).sum())
    gen_tps = new / gen_s
    # the preset's stages, estimated from the measured rates
    n_test_seqs = len(test) + sum(len(k) for k in test['mask'])
    fast = [r for r in results if r['layout'] == 'shared']
    scored = 1 + len(fast)  # base once (it is every method's reference), then each trained model
    n_prompts = len(test) + int(cfg['benchmarks']['xstest_limit'] or 450) + 2 * 24
    est = dict(train=sum(r['s_per_step'] for r in fast) * t['max_steps'], select=score_s * n_test_seqs * scored,
               generate=n_prompts * (1 + len(fast)) * g['max_new_tokens'] / gen_tps * 8 / g['batch_size'])
    print(pd.DataFrame(results).round(2).to_string(index=False))
    print(f"selection scoring: {score_s:.2f} s per sequence; generation: {gen_tps:.1f} new tokens/s (8 prompts, batched)")
    print(f"estimated preset stages: " + ', '.join(f'{k} {v/60:.1f} min' for k, v in est.items()) + f"; total {sum(est.values())/60:.1f} min")
    print('RESULT ' + ' '.join(f"{r['method']}{'' if r['layout'] == 'shared' else '_unshared'}_s_per_step={r['s_per_step']:.2f}" for r in results)
          + f" score_s_per_seq={score_s:.3f} gen_tokens_per_s={gen_tps:.1f} est_preset_min={sum(est.values())/60:.1f}")


if __name__ == '__main__':
    main()
