"""Issue 12: a re-run never reports results the current settings did not produce.

One test (or group) per finding of the issue, on a tiny configuration (2 training steps, 4 test rows).
Each test failed on the code before the fix."""
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import BIN, TINY, cli, ran
from dignified_peer.testing import LoopbackOpenAIServer







def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip()
    last = err.splitlines()[-1]  # progress bars of a stage may come before it
    assert 'Traceback' not in err and last.startswith('dignified-peer: error: '), err[-3000:]
    for n in needles: assert n in last, last
    return last


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A finished tiny run; tests copy it so that each starts from the same state."
    tmp = tmp_path_factory.mktemp('integrity')
    (tmp/'tiny.yaml').write_text(TINY)
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'base', cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp


def copy_run(base, name):
    import shutil
    shutil.copytree(base/'runs'/'base', base/'runs'/name)
    return base/'runs'/name


# 1. Stale responses
def test_1_sampling_and_weights_reach_the_responses(base):
    d = copy_run(base, 'f1')
    before = pd.read_csv(d/'responses'/'responses.csv')
    r = cli('generate', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f1', '--set', 'generate.max_new_tokens=3', cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ran(r.stdout) == ['generate']
    after = pd.read_csv(d/'responses'/'responses.csv')
    assert not before['response'].equals(after['response'])
    # --force recomputes: nothing is served from the completion cache
    r = cli('generate', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f1', '--set', 'generate.max_new_tokens=3', '--force', cwd=base)
    assert r.returncode == 0 and ran(r.stdout) == ['generate'], r.stderr[-2000:]
    assert '; 0 from the cache' in r.stderr, r.stderr[-2000:]  # stages log; only the command's own lines are on stdout


# 2. Stale ratings: another endpoint under the same judge name is asked
def test_2_rating_cache_knows_the_endpoint(tmp_path):
    from dignified_peer.backends import OpenAIBackend
    from dignified_peer.data import MINI_DATASET, load_personaknob
    from dignified_peer.judging import JudgePanel, LLMJudge
    rows = load_personaknob(MINI_DATASET, split='test').select(range(2))
    responses = pd.DataFrame({'model': 'm', 'item': rows['row_id'], 'prompt': rows['prompt'], 'response': rows['golden']})
    cache = tmp_path/'ratings.jsonl'
    with LoopbackOpenAIServer(responder='{"score": 4, "rationale": "one"}') as s1, \
         LoopbackOpenAIServer(responder='{"score": 2, "rationale": "two"}') as s2:
        for srv, score in ((s1, 4), (s2, 2)):
            be = OpenAIBackend('same-model', base_url=srv.base_url, progress=False)
            got = JudgePanel([LLMJudge(be, name='judge', temperature=0)], cache=cache).judge(responses, rows)
            be.close()
            assert set(got['score']) == {score}
        assert len(s2.requests) == len(got)


# 3. Old results beside a failure
def test_3_a_failed_calibration_leaves_no_old_results(base):
    from dignified_peer.simulation import simulate_ratings
    d = copy_run(base, 'f3')
    ratings, _ = simulate_ratings(n_models=3, n_items=30, n_judges=3, seed=0)
    ratings.to_csv(d/'ratings'/'ratings.csv', index=False)  # ratings the MFRM can fit: a report with scores
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f3', '--set', 'mfrm.max_iter=99', cwd=base)
    assert r.returncode == 0 and (d/'mfrm'/'scores.csv').exists(), r.stderr[-2000:]
    assert 'Dignity score D-hat' in (d/'report.md').read_text()
    ratings.assign(score=3).to_csv(d/'ratings'/'ratings.csv', index=False)  # one category: the MFRM cannot be fitted now
    r = cli('calibrate', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f3', '--set', 'mfrm.max_iter=99', '--force', cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f3', '--set', 'mfrm.max_iter=99', cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    md = (d/'report.md').read_text()
    assert 'could not be fitted' in md and 'Dignity score D-hat' not in md, md[:3000]
    assert not (d/'mfrm'/'scores.csv').exists() and not (d/'figures'/'wright_map.png').exists()


# 4. Torn files
def test_4_torn_caches_and_state_are_survived_and_named(base):
    d = copy_run(base, 'f4')
    with open(d/'ratings'/'ratings.jsonl', 'a') as f: f.write('{"model": "sft", "ite')
    with open(d/'responses'/'responses.jsonl', 'a') as f: f.write('{"model": "sft", "ite')
    (d/'stages.json').write_text('{"data": {"identity": "ab')
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f4', cwd=base)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'ratings.jsonl:' in r.stderr and 'responses.jsonl:' in r.stderr and 'torn last line' in r.stderr, r.stderr[-3000:]
    assert 'stages.json' in r.stderr
    json.loads((d/'stages.json').read_text())  # written whole again
    from dignified_peer.data import read_jsonl
    assert len(read_jsonl(d/'ratings'/'ratings.jsonl')) and len(read_jsonl(d/'responses'/'responses.jsonl'))


# 5. Concurrent runs: one lock per run directory
def test_5_a_second_process_stops_at_the_lock(base):
    d = copy_run(base, 'f5')
    (d/'run.lock').write_text(str(os.getpid()))  # held by a live process: this one
    r = cli('report', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f5', cwd=base)
    one_line_error(r, f'process {os.getpid()}', 'f5')
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    (d/'run.lock').write_text(str(dead.pid))  # left by a process that died: taken over
    r = cli('report', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f5', cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'process {dead.pid}' in r.stderr and not (d/'run.lock').exists()


# 6. Run names
@pytest.mark.parametrize('name', ['..', '.', 'a/b'])
def test_6_a_run_name_is_one_safe_component(tmp_path, name):
    r = cli('data', '--out', 'runs', '--name', name, cwd=tmp_path)
    one_line_error(r, 'run.name')
    assert not (tmp_path/'runs').exists()


# 7. Late validation: every bad setting stops at start-up, in one line
BAD = [('generate.temperature=hot', 'generate.temperature'), ('train.learning_rate=fast', 'train.learning_rate'),
       ('model.tiny_size=huge', 'model.tiny_size'), ('run.seed=abc', 'run.seed'), ('mfrm.thresholds=bogus', 'mfrm.thresholds'),
       ('data.max_test_rows=-3', 'data.max_test_rows'), ('train=5', 'train must be a mapping'),
       ('train.max_steps=true', 'train.max_steps'), ('train.epsilon=.inf', 'train.epsilon'), ('train.epsilon="0.5"', 'train.epsilon'),
       ('train.beta=-3', 'train.beta'), ('judges=[{kind: marker, timout: 3}]', "did you mean 'timeout'"),
       ('train.extra.max_step=2', 'train.extra.max_step')]

@pytest.mark.parametrize('item,needle', BAD)
def test_7_bad_settings_stop_at_start_up(tmp_path, capsys, item, needle):
    from dignified_peer.pipeline import main
    with pytest.raises(SystemExit) as e: main(['run', '--out', str(tmp_path/'runs'), '--set', item])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path/'runs').exists()


# 8. Error output
def test_8_data_errors_are_one_line(tmp_path):
    from dignified_peer.data import MINI_DATASET
    head = MINI_DATASET.read_text(encoding='utf-8').splitlines(keepends=True)[0]
    (tmp_path/'empty.csv').write_text(head)
    r = cli('data', '--data', 'empty.csv', '--out', 'runs', cwd=tmp_path)
    one_line_error(r, 'empty.csv', 'no rows')
    df = pd.read_csv(MINI_DATASET, dtype=str, keep_default_na=False)
    df.assign(golden2='x').rename(columns={'golden2': 'golden'}).to_csv(tmp_path/'twice.csv', index=False)
    r = cli('data', '--data', 'twice.csv', '--out', 'runs', cwd=tmp_path)
    one_line_error(r, 'twice.csv', "'golden'", 'more than once')


def test_8_ctrl_c_is_one_line_and_leaves_the_run_consistent(base):
    d = copy_run(base, 'f8')
    p = subprocess.Popen([str(BIN/'dignified-peer'), 'run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f8',
                          '--set', 'train.learning_rate=0.001'], cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith('[stage] train') and 'running' in line: break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith('dignified-peer: interrupted'), err[-2000:]
    st = json.loads((d/'stages.json').read_text())
    assert list(st) == ['data']  # train was not done; what depends on it is gone with it
    assert not (d/'report.md').exists() and not (d/'run.lock').exists()
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f8', '--set', 'train.learning_rate=0.001', cwd=base)
    assert r.returncode == 0 and 'data' not in ran(r.stdout) and 'train' in ran(r.stdout), r.stderr[-2000:]


# 9. Judge endpoints
def _llm_judge(url, **kw):
    j = {'kind': 'openai', 'name': 'llm', 'model': 'm', 'base_url': url, 'api_key_env': 'JUDGE_KEY', 'max_retries': 3, **kw}
    return 'judges=[' + json.dumps(j) + ']'


def test_9_judge_endpoint_failures_are_not_done(base):
    copy_run(base, 'f9')
    args = ('judge', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'f9')
    st = lambda: json.loads((base/'runs'/'f9'/'stages.json').read_text())
    with LoopbackOpenAIServer(faults=lambda n, b: {'status': 401}) as srv:
        r = cli(*args, '--set', _llm_judge(srv.base_url, concurrency=1), cwd=base, env={'JUDGE_KEY': 'sk-wrong-0123456789'})
    one_line_error(r, '401', 'judge')
    assert len(srv.requests) == 1 and 'judge' not in st()
    with LoopbackOpenAIServer(faults={0: {'delay': 30}}, responder='{"score": 4, "rationale": "ok"}') as srv:  # a hanging endpoint
        r = cli(*args, '--set', _llm_judge(srv.base_url, timeout=0.5, max_retries=0), cwd=base)
    assert r.returncode == 0, r.stderr[-2000:]  # one rating in many missing: under the share
    with LoopbackOpenAIServer(faults=lambda n, b: {'delay': 30}) as srv:  # every request hangs
        r = cli(*args, '--set', _llm_judge(srv.base_url, timeout=0.5, max_retries=1), cwd=base)
    one_line_error(r, 'llm', 'missing')
    assert 'judge' not in st()
    with LoopbackOpenAIServer(responder='{"score": 4, "rationale": "ok"}') as srv:  # the key fixed: the stage runs
        r = cli(*args, '--set', _llm_judge(srv.base_url), cwd=base, env={'JUDGE_KEY': 'sk-right-0123456789'})
    assert r.returncode == 0 and ran(r.stdout) == ['judge'], r.stderr[-2000:]
    assert 'judge' in st()


# 10. No pickle: a run folder is data
class _Payload:
    def __reduce__(self): return (Path.touch, (Path(os.environ['PICKLE_MARKER']),))


def test_10_figures_never_unpickle(tmp_path, monkeypatch):
    from dignified_peer.config import load_config
    from dignified_peer.report import build_figures
    run = tmp_path/'run'; (run/'mfrm').mkdir(parents=True)
    marker = tmp_path/'pwned'
    monkeypatch.setenv('PICKLE_MARKER', str(marker))
    (run/'mfrm'/'mfrm.pkl').write_bytes(pickle.dumps(_Payload()))
    (run/'mfrm'/'fit.json').write_bytes(pickle.dumps(_Payload()))
    build_figures(run, load_config())
    assert not marker.exists()
    pkg = Path(__import__('dignified_peer').__file__).parent
    assert not [p.name for p in pkg.glob('*.py') if 'import pickle' in p.read_text()]
