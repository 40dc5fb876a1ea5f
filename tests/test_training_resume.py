"""Kill-and-resume: a run stopped after a checkpoint and resumed ends with the multipliers and loss of an uninterrupted run."""
import json

import pytest
import torch
from transformers import TrainerCallback

from dignified_peer.data import MINI_DATASET, load_personaknob
from dignified_peer.training import DUAL_STATE_NAME, train


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


def test_resumed_run_matches_uninterrupted_run(tmp_path, rows):
    torch.set_num_threads(1)
    full = train('lagdpo', data=rows, output_dir=tmp_path/'full', **SETTINGS)
    with pytest.raises(Killed):
        train('lagdpo', data=rows, output_dir=tmp_path/'killed', callbacks=[KillAfter(4)], **SETTINGS)
    saved = json.loads((tmp_path/'killed'/'checkpoint-3'/DUAL_STATE_NAME).read_text())
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


def test_resume_without_dual_state_fails_clearly(tmp_path, rows):
    train('lagdpo', data=rows, output_dir=tmp_path/'r', **{**SETTINGS, 'max_steps': 3})
    (tmp_path/'r'/'checkpoint-3'/DUAL_STATE_NAME).unlink()
    with pytest.raises(FileNotFoundError, match='cannot restore the Lagrange multipliers'):
        train('lagdpo', data=rows, output_dir=tmp_path/'r', resume_from_checkpoint=True, **SETTINGS)
