"""Lag-DPO across processes (two CPU processes over gloo): multipliers identical on every rank at every step with mixed
masks and uneven pair counts, with and without gradient accumulation; the gradient of 2 processes x accumulation 2
equals that of one process with the whole batch; a killed two-process run resumes to the uninterrupted result."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

COMMON = textwrap.dedent('''
    import copy, json, os, sys, tempfile, logging, warnings
    import torch
    from transformers import TrainerCallback
    from dignified_peer.core import seed_everything, tiny_model
    from dignified_peer.data import MINI_DATASET, load_personaknob, to_groups
    from dignified_peer.training import LagrangianDPOConfig, LagrangianDPOTrainer, train
    warnings.filterwarnings('ignore'); logging.getLogger('transformers').setLevel(logging.ERROR)
    torch.set_num_threads(1)
    MASKS = ["['A']", "['A', 'T', 'E', 'C']", "['T', 'C']", "['E', 'C']", "['A', 'T']", "['C']", "['A', 'E', 'C']", "['T']"]

    def mixed_rows(n):
        "n rows whose masks cycle through MASKS: 1 to 4 pairs per row, so processes hold different numbers of pairs."
        rows = load_personaknob(MINI_DATASET, split='train')
        masks = [str(m) for m in rows['mask']]
        return rows.select([masks.index(m) for m in MASKS[:n]])

    def config(out, **kw):
        d = dict(output_dir=out, per_device_train_batch_size=1, max_length=256, learning_rate=1e-3, dual_lr=2.0, epsilon=0.6,
                 dual_window=1, use_cpu=True, report_to='none', save_strategy='no', logging_steps=1, disable_tqdm=True, seed=0,
                 dataloader_num_workers=0)
        return LagrangianDPOConfig(**{**d, **kw})

    def trainer(rows, args, multipliers=None):
        seed_everything(0)
        model, tok = tiny_model([*rows['prompt'], *rows['golden']], size='test', seed=0)
        t = LagrangianDPOTrainer(model, ref_model=copy.deepcopy(model).eval(), args=args, train_dataset=to_groups(rows), processing_class=tok)
        if multipliers: t.dual_state.multipliers = list(multipliers)
        return t

    class Grab(TrainerCallback):
        "The gradient of the first optimiser step, after accumulation and the all-reduce."
        def __init__(self): self.grad = None
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if self.grad is None: self.grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).clone()

    def grad_run(out, bs, ga):
        t = trainer(mixed_rows(4), config(out, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1), MULTIPLIERS)
        with torch.no_grad():  # move the policy off the reference so that every trait has a gradient
            g = torch.Generator().manual_seed(3)
            for p in t.model.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
        grab = Grab(); t.add_callback(grab); t.train()
        return grab.grad, t

    MULTIPLIERS = [0.3, 1.2, 0.0, 0.7]
''')

WORKER = COMMON + textwrap.dedent('''
    out, mode = sys.argv[1], sys.argv[2]
    rank = int(os.environ['RANK'])
    res = {}
    if mode == 'identical':
        for name, ga, steps in [('ga1', 1, 4), ('ga2', 2, 3)]:
            t = trainer(mixed_rows(8), config(os.path.join(out, name), gradient_accumulation_steps=ga, max_steps=steps))
            local, record = [], t._record
            def spy(mode, f, in_step, record=record, local=local):
                local.append((f['losses'] * f['counts']).tolist())
                return record(mode, f, in_step)
            t._record = spy
            t.train()
            res[name] = {'world_size': t.args.world_size, 'history': t.dual_history, 'local_sums': local,
                         'logged_loss': [h['loss'] for h in t.state.log_history if 'loss' in h], 'multipliers': t.dual_state.multipliers}
    elif mode == 'grad':
        grad, t = grad_run(os.path.join(out, 'grad'), 1, 2)
        torch.save(grad, os.path.join(out, f'grad{rank}.pt'))
        res = {'history': t.dual_history, 'logged_loss': [h['loss'] for h in t.state.log_history if 'loss' in h]}
    elif mode in ('full_and_killed', 'resume'):
        class Killed(RuntimeError): pass
        class KillAfter(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == 4: raise Killed('killed at step 5')
        settings = dict(data=mixed_rows(8), max_steps=6, per_device_train_batch_size=1, max_length=256, learning_rate=1e-3,
                        dual_lr=2.0, epsilon=0.6, dual_window=2, seed=0, save_strategy='steps', save_steps=3, progress=False, use_cpu=True)
        if mode == 'full_and_killed':
            full = train('lagdpo', output_dir=os.path.join(out, 'full'), **settings)
            try: train('lagdpo', output_dir=os.path.join(out, 'killed'), callbacks=[KillAfter()], **settings)
            except Killed: res['killed'] = True
            res['full'] = {'dual_state': full['dual_state'], 'history': full['history'].to_dict('list')}
        else:
            r = train('lagdpo', output_dir=os.path.join(out, 'killed'), resume_from_checkpoint=True, **settings)
            res['resumed'] = {'dual_state': r['dual_state'], 'history': r['history'].to_dict('list')}
    json.dump(res, open(os.path.join(out, f'{mode}{rank}.json'), 'w'))
    if torch.distributed.is_initialized(): torch.distributed.destroy_process_group()  # a clean exit, no gloo abort
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(tmp_path, mode, nproc=2):
    "Run the worker in `mode` on `nproc` gloo processes; returns each rank's results."
    script = tmp_path/'worker.py'
    script.write_text(WORKER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1', 'CUDA_VISIBLE_DEVICES': ''}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), str(script), str(tmp_path), mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path/f'{mode}{r}.json').read_text()) for r in range(nproc)]


def test_multipliers_identical_on_every_rank_with_mixed_masks(tmp_path):
    r0, r1 = launch(tmp_path, 'identical')
    for name, steps in [('ga1', 4), ('ga2', 3)]:
        a, b = r0[name], r1[name]
        assert a['world_size'] == b['world_size'] == 2
        assert len(a['history']) == len(b['history']) == steps
        # the ranks held different numbers of pairs (rows of 1 to 4 traits, one row per micro-batch) ...
        n0, n1 = ([sum(1 for v in s if v != 0) for s in r['local_sums']] for r in (a, b))
        assert n0 != n1, (n0, n1)
        # ... yet the reduced losses, counts, estimates and multipliers agree exactly at every step
        assert a['history'] == b['history']
        assert a['logged_loss'] == b['logged_loss']
        ga = 2 if name == 'ga2' else 1
        for i, h in enumerate(a['history']):  # the step's L_k is the pooled mean over both ranks' micro-batches
            micro = [m for r in (a, b) for m in r['local_sums'][i * ga:(i + 1) * ga]]
            for k, trait in enumerate('ATEC'):
                if h[f'count/{trait}']:
                    assert h[f'loss/{trait}'] == pytest.approx(sum(m[k] for m in micro) / h[f'count/{trait}'], rel=1e-6)
        assert any(v > 0 for v in a['multipliers']), a['multipliers']  # the dual step did move the multipliers
        assert a['multipliers'] == b['multipliers']


def test_two_processes_with_accumulation_give_the_single_batch_gradient(tmp_path):
    r0, r1 = launch(tmp_path, 'grad')
    g0, g1 = (torch.load(tmp_path/f'grad{r}.pt') for r in (0, 1))
    assert torch.equal(g0, g1)  # DDP synchronised the gradient
    exec(compile(COMMON, 'common', 'exec'), ns := {})
    torch.set_num_threads(1)
    ref, t = ns['grad_run'](str(tmp_path/'ref'), 4, 1)  # one process, the same 4 rows in one micro-batch
    assert ref.norm() > 0
    assert float((g0 - ref).norm() / ref.norm()) < 1e-5
    # primal and dual steps see the same L_k, and the logged loss is sum_k w_k L_k of the step
    assert r0['history'][0] == pytest.approx(t.dual_history[0], rel=1e-5)
    w = [0.25 + lam for lam in ns['MULTIPLIERS']]
    L = [t.dual_history[0][f'loss/{k}'] for k in 'ATEC']
    assert r0['logged_loss'][0] == pytest.approx(sum(wk * lk for wk, lk in zip(w, L)), rel=1e-5)


def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    a, b = launch(tmp_path, 'full_and_killed')
    assert a['killed'] and b['killed']
    assert (tmp_path/'killed'/'checkpoint-3').is_dir() and not (tmp_path/'killed'/'checkpoint-6').exists()
    c, d = launch(tmp_path, 'resume')
    full, resumed = a['full'], c['resumed']
    assert resumed['dual_state'] == d['resumed']['dual_state']  # identical on both ranks
    assert any(v > 0 for v in full['dual_state']['multipliers'])
    assert resumed['dual_state']['multipliers'] == pytest.approx(full['dual_state']['multipliers'], abs=1e-9)
    assert resumed['history']['step'] == full['history']['step'] == [1, 2, 3, 4, 5, 6]
    assert resumed['history']['loss'] == pytest.approx(full['history']['loss'], abs=1e-6)
    for k in 'ATEC':
        assert resumed['history'][f'dual/lambda/{k}'] == pytest.approx(full['history'][f'dual/lambda/{k}'], abs=1e-9)
