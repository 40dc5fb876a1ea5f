"""Every TRL preference format (standard and conversational, explicit and implicit prompt) in train and eval, with and
without an objective column: plain pairs give TRL's DPO loss, named objectives give TRL's loss on each objective's pairs."""
import copy
import math

import datasets
import pytest
import torch
from trl import DPOConfig, DPOTrainer

from dignified_peer.core import tiny_model
from dignified_peer.training import LagrangianDPOConfig, LagrangianDPOTrainer

PROMPTS = [f"Question {i}: how should I {t}?" for i, t in enumerate(
    ['water a cactus', 'store old paint', 'fix a flat tyre', 'clean a cast iron pan',
     'ask for a raise', 'learn to juggle', 'cook rice', 'plan a hike'])]
CHOSEN = [f"Here is a careful answer about step {i}, with the safe way first." for i in range(8)]
REJECTED = [f"Nobody knows, try anything {i} times and see." for i in range(8)]
OBJECTIVES = ['helpful', 'harmless'] * 4
user = lambda t: [{'role': 'user', 'content': t}]
assistant = lambda t: [{'role': 'assistant', 'content': t}]

FORMATS = {  # TRL's four preference formats, one row from (prompt, chosen, rejected)
    'standard-explicit': lambda p, c, r: {'prompt': p, 'chosen': c, 'rejected': r},
    'standard-implicit': lambda p, c, r: {'chosen': f"{p} {c}", 'rejected': f"{p} {r}"},
    'conversational-explicit': lambda p, c, r: {'prompt': user(p), 'chosen': assistant(c), 'rejected': assistant(r)},
    'conversational-implicit': lambda p, c, r: {'chosen': user(p) + assistant(c), 'rejected': user(p) + assistant(r)},
}


def dataset(fmt, objective=False, only=None):
    recs = [{**FORMATS[fmt](p, c, r), **({'trait': k} if objective else {})}
            for p, c, r, k in zip(PROMPTS, CHOSEN, REJECTED, OBJECTIVES) if only is None or k == only]
    return datasets.Dataset.from_list(recs)


@pytest.fixture(scope='module')
def models():
    torch.set_num_threads(1); datasets.disable_progress_bars()
    ref, tok = tiny_model(PROMPTS + CHOSEN + REJECTED, size='test', seed=0)
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))  # the policy off its reference
    return policy, ref, tok


def trainer(models, data, cls=LagrangianDPOTrainer, **kw):
    policy, ref, tok = models
    args = (LagrangianDPOConfig if cls is LagrangianDPOTrainer else DPOConfig)(
        output_dir='unused', per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=1, learning_rate=1e-3,
        report_to='none', save_strategy='no', logging_steps=1, seed=0, use_cpu=True, bf16=False, disable_tqdm=True, **kw)
    return cls(copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=data, eval_dataset=data, processing_class=tok)


def first_loss(t):
    batch = t._prepare_inputs(t.data_collator([t.train_dataset[i] for i in range(len(t.train_dataset))]))
    return t.compute_loss(t.model, batch).item()


@pytest.mark.parametrize('fmt', list(FORMATS))
def test_format(models, fmt):
    # plain pairs: one objective, TRL's DPO loss in train and eval
    ours, theirs = trainer(models, dataset(fmt)), trainer(models, dataset(fmt), cls=DPOTrainer)
    assert ours.traits == ['preference'] and len(ours.train_dataset) == 8
    assert abs(first_loss(ours) - first_loss(theirs)) < 1e-6
    m_ours, m_theirs = ours.evaluate(), theirs.evaluate()
    assert abs(m_ours['eval_loss'] - m_theirs['eval_loss']) < 1e-6 and m_ours['eval_loss'] != pytest.approx(math.log(2))
    assert abs(m_ours['eval_loss/preference'] - m_theirs['eval_loss']) < 1e-6
    # an objective column: each objective's eval loss is TRL's loss on that objective's pairs; one training step sees both
    ours = trainer(models, dataset(fmt, objective=True))
    assert ours.traits == ['helpful', 'harmless']
    m_ours = ours.evaluate()
    for k in ours.traits:
        m_k = trainer(models, dataset(fmt, only=k), cls=DPOTrainer).evaluate()
        assert abs(m_ours[f'eval_loss/{k}'] - m_k['eval_loss']) < 1e-6, k
    ours.train()
    rec = ours.dual_history[0]
    assert (rec['count/helpful'], rec['count/harmless']) == (4, 4)
    assert all(math.isfinite(rec[f'loss/{k}']) for k in ours.traits)
