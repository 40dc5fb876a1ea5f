"""MFRM recovery over repeated simulations: 95 % interval coverage of the Fisher (joint) S.E.s and recovery RMSE.

Each design is simulated REPS times from known parameters (dignified_peer.simulation.simulate_ratings) and fitted.
Pooled over all target elements and repetitions, the share of 95 % intervals (measure +/- 1.96 Joint S.E.)
that cover the true measure must lie in [0.90, 0.99]; the recovery RMSE must be under 0.25 logits and within
25 % of the root mean squared S.E. (the S.E.s describe the actual error). Sizes are modest: about 20 s in all.
"""
import warnings

import numpy as np
import pandas as pd
import pytest

from dignified_peer.mfrm import MFRM, DisconnectedDesignError
from dignified_peer.simulation import simulate_ratings

REPS = 20
DESIGNS = {
    'balanced': dict(n_models=5, n_items=30),
    'sparse': dict(n_models=5, n_items=60, density=0.5),
    'severe_judge': dict(n_models=5, n_items=30, severe_judge=3.0),
    'unobserved_category': dict(n_models=5, n_items=30, drop_categories=(3,)),
}


def _recovery(kw):
    err, se = [], []
    for rep in range(REPS):
        df, truth = simulate_ratings(seed=1000 + rep, **kw)
        fit = MFRM(categories=(1, 5)).fit(df)
        assert fit.converged_
        m = fit.measures().query("facet == 'model x trait'")
        err.append(m['Measure'].to_numpy() - truth['target']['Measure'].to_numpy())
        se.append(m['Joint S.E.'].to_numpy())
    return np.concatenate(err), np.concatenate(se)


@pytest.mark.parametrize('design', list(DESIGNS))
def test_coverage_and_rmse(design):
    err, se = _recovery(DESIGNS[design])
    coverage = np.mean(np.abs(err) <= 1.96 * se)
    rmse, rms_se = np.sqrt(np.mean(err ** 2)), np.sqrt(np.mean(se ** 2))
    print(f"{design}: n={len(err)} coverage={coverage:.3f} rmse={rmse:.3f} rms_se={rms_se:.3f}")
    assert 0.90 <= coverage <= 0.99, coverage
    assert rmse < 0.25, rmse
    assert rmse < 1.25 * rms_se, (rmse, rms_se)


def test_item_and_judge_recovery():
    df, truth = simulate_ratings(n_models=8, n_items=40, n_judges=4, severe_judge=3.0, seed=5)
    m = MFRM().fit(df).measures().set_index('element')
    judges = m.loc[truth['judge']['judge'], 'Measure'].to_numpy()
    items = m.loc[truth['item']['item'], 'Measure'].to_numpy()
    assert np.abs(judges - truth['judge']['Measure'].to_numpy()).max() < 0.2
    assert np.corrcoef(items, truth['item']['Measure'])[0, 1] > 0.95


def test_dichotomous_closed_form_two_models():
    # two models, one item, one judge: theta_m = logit(successes / trials) exactly
    rows = [dict(model=m, trait='A', item='i', judge='j', score=int(r < k)) for m, k in [('a', 3), ('b', 6)] for r in range(8)]
    fit = MFRM().fit(pd.DataFrame(rows))
    got = fit.measures().set_index('element')
    for m, k in [('a', 3), ('b', 6)]:
        p = k / 8
        assert got.loc[f'{m}|A', 'Measure'] == pytest.approx(np.log(p / (1 - p)), abs=1e-9)
        assert got.loc[f'{m}|A', 'Model S.E.'] == pytest.approx(1 / np.sqrt(8 * p * (1 - p)), abs=1e-9)


def test_disconnected_message_exact():
    rows = [dict(model=m, trait='A', item=i, judge=j, score=(k + len(i)) % 2)
            for ms, items, j in [(('m1',), ('i1', 'i2'), 'j1'), (('m2',), ('i3',), 'j2')]
            for m in ms for i in items for k in range(2)]
    with pytest.raises(DisconnectedDesignError) as e:
        MFRM().fit(pd.DataFrame(rows))
    assert str(e.value) == ("design is disconnected: 2 subsets\n"
                            "  subset 1: model x trait: m1|A; item: i1, i2; judge: j1\n"
                            "  subset 2: model x trait: m2|A; item: i3; judge: j2")


def test_threshold_coverage():
    hits = []
    for rep in range(REPS):
        df, truth = simulate_ratings(n_models=5, n_items=30, seed=2000 + rep)
        th = MFRM().fit(df).thresholds().dropna(subset=['Andrich Threshold'])
        for trait, g in th.groupby('trait'):
            err = g['Andrich Threshold'].to_numpy() - truth['thresholds'][trait]
            hits += list(np.abs(err) <= 1.96 * g['S.E.'].to_numpy())
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)
