"""Multipliers stay identical on every process: two CPU processes (gloo) train Lag-DPO and compare multipliers at every step."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    from dignified_peer.core import seed_everything, tiny_model
    from dignified_peer.data import MINI_DATASET, load_personaknob, to_groups
    from dignified_peer.training import LagrangianDPOConfig, LagrangianDPOTrainer
    out = sys.argv[1]
    torch.set_num_threads(1)
    seed_everything(0)
    rows = load_personaknob(MINI_DATASET, split='train').select(range(16))
    model, tok = tiny_model([*rows['prompt'], *rows['golden']], size='test', seed=0)
    ref = tiny_model([*rows['prompt'], *rows['golden']], size='test', seed=0)[0].eval()
    args = LagrangianDPOConfig(output_dir=os.path.join(out, 'run'), max_steps=4, per_device_train_batch_size=2, max_length=256,
                               learning_rate=1e-3, dual_lr=2.0, epsilon=0.69, dual_window=1, use_cpu=True, report_to='none',
                               save_strategy='no', logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    trainer = LagrangianDPOTrainer(model, ref_model=ref, args=args, train_dataset=to_groups(rows), processing_class=tok)
    local = []
    record = trainer._record
    def spy(mode, losses, counts, *a):
        local.append((losses * counts).tolist())
        return record(mode, losses, counts, *a)
    trainer._record = spy
    trainer.train()
    rank = trainer.args.process_index
    json.dump({'world_size': trainer.args.world_size, 'history': trainer.dual_history, 'local_sums': local,
               'multipliers': trainer.dual_state.multipliers}, open(os.path.join(out, f'rank{rank}.json'), 'w'))
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_multipliers_identical_on_two_gloo_processes(tmp_path):
    script = tmp_path/'worker.py'
    script.write_text(WORKER)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1', 'CUDA_VISIBLE_DEVICES': ''}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path/f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['world_size'] == r1['world_size'] == 2
    assert len(r0['history']) == len(r1['history']) == 4
    # the ranks saw different rows, so their local losses differ ...
    assert r0['local_sums'] != r1['local_sums']
    # ... yet the reduced per-trait losses, the estimates and the multipliers agree exactly at every step
    for h0, h1 in zip(r0['history'], r1['history']):
        assert h0 == h1
    lam = [[v for k, v in h.items() if k.startswith('lambda/')] for h in r0['history']]
    assert any(v > 0 for v in lam[-1]), lam  # the dual step did move the multipliers
    assert r0['multipliers'] == r1['multipliers']
