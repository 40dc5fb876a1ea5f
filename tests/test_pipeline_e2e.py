"""The pipeline end to end through the command line, in a subprocess, on a very small configuration."""
import json
import math
import re
import shutil

import pandas as pd
import pytest

from cli_helpers import cli

PNG = b'\x89PNG\r\n\x1a\n'

SMALL = """
model: {tiny_size: test}
data: {max_test_rows: 6}
train: {methods: [sft, uniform, lagdpo], max_steps: 6, sft_max_steps: 40, per_device_train_batch_size: 4}
generate: {max_new_tokens: 16}
benchmarks: {xstest_limit: 6, sycophancy_limit: 4}
"""




@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    (tmp/'small.yaml').write_text(SMALL)
    r = cli('run', '--config', 'small.yaml', '--out', 'runs', '--name', 'e2e', cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp/'runs'/'e2e', r.stdout


def finite(df, cols):
    for c in cols:
        vals = pd.to_numeric(df[c], errors='coerce')
        assert vals.notna().all() and vals.map(math.isfinite).all(), (c, df[c].tolist()[:10])


def test_every_stage_ran_and_printed_its_timing(run):
    d, out = run
    stages = json.loads((d/'stages.json').read_text())
    assert list(stages) == ['data', 'train', 'select', 'generate', 'judge', 'calibrate', 'benchmark', 'gradnorm', 'figures', 'report']
    for s in stages: assert f'[stage] {s:<10} done in' in out
    assert '[total]' in out


def test_tables_are_well_formed(run):
    d, _ = run
    ratings = pd.read_csv(d/'ratings'/'ratings.csv')
    assert list(ratings.columns) == ['model', 'item', 'trait', 'judge', 'score', 'rationale', 'raw', 'cache_key']
    assert set(ratings.model) == {'sft', 'uniform', 'lagdpo'} and ratings.judge.nunique() == 3
    assert ratings.score.dropna().between(1, 5).all()
    sel = pd.read_csv(d/'tables'/'selection.csv')
    assert {'model', 'benchmark', 'metric', 'trait', 'value', 'n', 'se'} <= set(sel.columns)
    finite(sel, ['value', 'n'])
    bench = pd.read_csv(d/'tables'/'benchmarks.csv')
    assert {'selection', 'xstest', 'sycophancy'} <= set(bench.benchmark)
    finite(bench[bench.n > 0], ['value'])
    hist = pd.read_csv(d/'models'/'lagdpo'/'history.csv')
    assert {'loss/A', 'lambda/A'} <= set(hist.columns) and len(hist) == 6
    gn = pd.read_csv(d/'tables'/'gradient_norms.csv')
    assert set(gn.weighting) - {'uniform', 'lagrangian'} == {w for w in gn.weighting if w.startswith('lagrangian (peak, step ')}
    assert len(set(gn.weighting)) == 3
    finite(gn, ['weight', 'grad_norm', 'share'])


def check_mfrm_tables(d, models):
    m = pd.read_csv(d/'mfrm'/'measures.csv')
    assert {'Measure', 'Model S.E.', 'Infit MnSq', 'Outfit MnSq'} <= set(m.columns)
    finite(m, ['Measure'])
    assert m['Model S.E.'].dropna().gt(0).all()
    scores = pd.read_csv(d/'mfrm'/'scores.csv')
    assert set(scores.score) == {'Dignity', 'Peer'} and set(scores.model) == set(models)
    finite(scores, ['measure', 'se'])
    facets = pd.read_csv(d/'mfrm'/'facet_summary.csv')
    assert len(facets) >= 3


def test_mfrm_tables(run):
    d, _ = run
    if (d/'mfrm'/'error.txt').exists():  # the tiny model's few ratings can sit in one category: reported, not hidden
        assert 'single category' in (d/'mfrm'/'error.txt').read_text()
        assert 'could not be fitted' in (d/'report.md').read_text()
    else:
        check_mfrm_tables(d, {'sft', 'uniform', 'lagdpo'})


def test_figures_and_reports(run):
    d, _ = run
    pngs = sorted((d/'figures').glob('*.png'))
    names = {p.stem for p in pngs}
    assert {'dataset_distribution', 'instance', 'training_curves', 'gradient_norms', 'benchmarks'} <= names, names
    for p in pngs: assert p.read_bytes()[:8] == PNG and p.with_suffix('.pdf').exists()
    md = (d/'report.md').read_text()
    for p in pngs: assert f'figures/{p.name}' in md
    html = (d/'report.html').read_text()
    assert html.count('data:image/png;base64,') == len(pngs) and 'Selection accuracy' in html


def test_figures_are_legible_and_the_report_answers_first(run):
    from PIL import Image
    d, _ = run
    for p in (d/'figures').glob('*.png'):
        w, h = Image.open(p).size
        assert w / h <= 2.55, f'{p.name}: {w}x{h} is a strip, wider than 2.5:1'
    md, html = (d/'report.md').read_text(), (d/'report.html').read_text()
    assert md.index('## Summary') < md.index('![') < md.index('## Run details'), md[:2000]
    summary = md.split('## Summary')[1].split('![')[0]
    for m in ('sft', 'uniform', 'lagdpo'): assert f'| {m} |' in summary, summary  # one row per method
    assert '<details><summary>Run details' in html and html.index('id="summary"') < html.index('<img')


def test_second_run_skips_every_stage(run):
    d, _ = run
    r = cli('run', '--config', 'small.yaml', '--out', 'runs', '--name', 'e2e', cwd=d.parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('skipped (done') == 10


@pytest.mark.parametrize('args,message', [
    (['run', '--methods', 'sft,dpo9'], "train.methods[1] must be one of base, sft, pooled, uniform, fixed, lagdpo, got 'dpo9'"),
    (['run', '--data', 'no/such.csv'], 'data.source not found: no/such.csv'),
    (['run', '--epsilon', '0'], 'train.epsilon must be greater than 0'),
    (['run', '--set', 'judges=[{kind: openai, name: gpt, model: gpt-4o-mini}]'], "judges[0] (gpt) needs an endpoint"),
])
def test_bad_configuration_fails_at_start_up_in_one_line(tmp_path, args, message):
    r = cli(*args, '--out', str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_calibrate_subcommand_on_simulated_ratings(run):
    """`calibrate --force` refits the MFRM on the run's ratings file (here replaced by simulated ratings)."""
    from dignified_peer.simulation import simulate_ratings
    d, _ = run
    ratings, _ = simulate_ratings(n_models=3, n_items=30, n_judges=3, seed=0)
    ratings.to_csv(d/'ratings'/'ratings.csv', index=False)
    r = cli('calibrate', '--config', 'small.yaml', '--out', 'runs', '--name', 'e2e', '--force', cwd=d.parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '[stage] calibrate  done in' in r.stdout and not (d/'mfrm'/'error.txt').exists()
    check_mfrm_tables(d, set(ratings['model']))


def test_report_compare_puts_runs_side_by_side(run, tmp_path):
    d, _ = run
    other = shutil.copytree(d, tmp_path/'other', ignore=shutil.ignore_patterns('final', 'base', 'checkpoint-*', 'cache'))  # tables only
    r = cli('report', '--compare', str(d), str(other), '--out', str(tmp_path), '--name', 'both', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    html, md = (tmp_path/'both'/'report.html').read_text(), (tmp_path/'both'/'report.md').read_text()
    n = len(list((d/'figures').glob('*.png')))
    assert html.count('data:image/png;base64,') == 2 * n, html[:1500]
    paths = re.findall(r'!\[(?:e2e|other)\]\(([^)]+)\)', md)
    assert len(paths) == 2 * n and all((tmp_path/'both'/p).exists() for p in paths), paths  # found from the comparison's folder
    assert md.count('| e2e |') == md.count('| other |') == 3  # the summary: one row per run and method
    r = cli('report', '--compare', str(d), str(tmp_path/'nope'), cwd=tmp_path)
    assert r.returncode == 2 and 'not a run directory' in r.stderr, r.stderr


def test_benchmark_stops_without_xstest_unless_turned_off(run):
    """Missing XSTest prompts stop the benchmark stage with one line saying where to point; `xstest_enabled: false` runs without them."""
    d, _ = run
    cwd, nope = d.parent.parent, str(d.parent.parent/'no-xstest-here')
    args = ('benchmark', '--config', 'small.yaml', '--out', 'runs', '--name', 'e2e')
    r = cli(*args, '--force', cwd=cwd, env={'XSTEST_PATH': nope})
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert 'stage benchmark' in err and 'XSTEST_PATH' in err and 'benchmarks.xstest' in err, err
    r = cli(*args, '--set', 'benchmarks.xstest_enabled=false', cwd=cwd, env={'XSTEST_PATH': nope})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    bench = pd.read_csv(d/'tables'/'benchmarks.csv')
    assert 'xstest' not in set(bench.benchmark) and {'selection', 'sycophancy'} <= set(bench.benchmark), sorted(set(bench.benchmark))
