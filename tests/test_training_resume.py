"""Kill-and-resume, and the resume policy: state from the checkpoint, settings from the current config (each change
logged), a checkpoint of other traits refused, the dual state inside the checkpoint before any upload."""
import json
import logging

import pytest
import torch
from transformers import TrainerCallback

from dignified_peer.data import MINI_DATASET, load_personaknob
from dignified_peer.training import DualAscentCallback, train


class Killed(RuntimeError):
    "Stands in for the process being killed."


class KillAfter(TrainerCallback):
    "Raise at the start of the step after `step`, as a crash after a checkpoint would."
    def __init__(self, step): self.step = step
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.step: raise Killed(f'killed at step {state.global_step + 1}')


SETTINGS = dict(max_steps=6, per_device_train_batch_size=2, max_length=256, learning_rate=1e-3, dual_lr=2.0,
                epsilon=0.69, dual_window=2, seed=0, save_strategy='steps', save_steps=3, progress=False)


@pytest.fixture(scope='module')
def rows():
    return load_personaknob(MINI_DATASET, split='train').select(range(12))


def saved_dual(checkpoint):
    "The dual state that Trainer wrote into the checkpoint's trainer_state.json."
    return json.loads((checkpoint/'trainer_state.json').read_text())['stateful_callbacks'][DualAscentCallback.__name__]['attributes']


def test_resumed_run_matches_uninterrupted_run(tmp_path, rows):
    torch.set_num_threads(1)
    full = train('lagdpo', data=rows, output_dir=tmp_path/'full', **SETTINGS)
    with pytest.raises(Killed):
        train('lagdpo', data=rows, output_dir=tmp_path/'killed', callbacks=[KillAfter(4)], **SETTINGS)
    # Trainer writes trainer_state.json, with the callback's state, before it uploads a checkpoint (push_to_hub)
    saved = saved_dual(tmp_path/'killed'/'checkpoint-3')
    assert saved['dual_state']['steps'] == 3 and len(saved['history']) == 3
    resumed = train('lagdpo', data=rows, output_dir=tmp_path/'killed', resume_from_checkpoint=True, **SETTINGS)
    # the multipliers moved, and the resumed run reproduces them and the whole dual history exactly
    assert any(v > 0 for v in full['dual_state']['multipliers'])
    assert resumed['dual_state']['multipliers'] == pytest.approx(full['dual_state']['multipliers'], abs=1e-9)
    assert resumed['dual_state']['estimates'] == pytest.approx(full['dual_state']['estimates'], abs=1e-6)
    hf, hr = full['history'].set_index('step'), resumed['history'].set_index('step')
    assert list(hr.index) == list(hf.index) == [1, 2, 3, 4, 5, 6]  # the log of steps 1-3 comes back from the checkpoint
    assert hr['loss'].to_numpy() == pytest.approx(hf['loss'].to_numpy(), abs=1e-6)
    lam = [c for c in hf.columns if c.startswith('dual/lambda/')]
    assert hr[lam].to_numpy() == pytest.approx(hf[lam].to_numpy(), abs=1e-9)


def test_resume_takes_settings_from_the_current_config(tmp_path, rows, caplog):
    first = train('lagdpo', data=rows, output_dir=tmp_path/'r', **{**SETTINGS, 'max_steps': 3, 'epsilon': 0.3})
    lam3 = first['dual_state']['multipliers']
    assert max(lam3) > 1.0
    with caplog.at_level(logging.WARNING, logger='dignified_peer'):
        r = train('lagdpo', data=rows, output_dir=tmp_path/'r', resume_from_checkpoint=True,
                  **{**SETTINGS, 'max_steps': 4, 'epsilon': 0.5, 'dual_lr': 0.5, 'lambda_max': 1.0})
    d = r['dual_state']
    assert (d['epsilon'], d['lr'], d['lambda_max'], d['steps']) == (0.5, 0.5, 1.0, 4)
    assert max(d['multipliers']) <= 1.0  # clipped into the new cap
    # the estimates carried over from the checkpoint: step 4's estimate mixes the saved one with step 4's loss
    h4 = r['history'].set_index('step').loc[4]
    for k, est in zip('ATEC', first['dual_state']['estimates']):
        if est is not None and h4[f'dual/count/{k}'] > 0:
            alpha = 2 / (SETTINGS['dual_window'] + 1)
            assert h4[f'dual/estimate/{k}'] == pytest.approx(est + alpha * (h4[f'dual/loss/{k}'] - est), rel=1e-9)
    msgs = '\n'.join(rec.getMessage() for rec in caplog.records)
    for change in ["epsilon=0.5", "dual_lr=0.5", "lambda_max=1.0"]:
        assert change in msgs, msgs


def test_resume_refuses_other_traits(tmp_path, rows):
    train('lagdpo', data=rows, output_dir=tmp_path/'r', **{**SETTINGS, 'max_steps': 3})
    with pytest.raises(ValueError, match='traits'):
        train('lagdpo', data=rows, output_dir=tmp_path/'r', resume_from_checkpoint=True,
              **{**SETTINGS, 'traits': ['A', 'T'], 'drop_other_traits': True})


def test_resume_without_dual_state_fails_clearly(tmp_path, rows):
    train('lagdpo', data=rows, output_dir=tmp_path/'r', **{**SETTINGS, 'max_steps': 3})
    f = tmp_path/'r'/'checkpoint-3'/'trainer_state.json'
    state = json.loads(f.read_text())
    del state['stateful_callbacks'][DualAscentCallback.__name__]
    f.write_text(json.dumps(state))
    with pytest.raises(FileNotFoundError, match='cannot restore the Lagrange multipliers'):
        train('lagdpo', data=rows, output_dir=tmp_path/'r', resume_from_checkpoint=True, **SETTINGS)
