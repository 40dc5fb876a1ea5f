"""Fault injection, concurrent writers and kill-and-resume for the chat backends (needs subprocesses and a loopback server)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from dignified_peer.backends import CompletionCache, OpenAIBackend, cache_key
from dignified_peer.testing import LoopbackOpenAIServer
from dignified_peer.core import setup_logging

SECRET = 'sk-test-SECRET-do-not-store-0123456789'


def prompt_of(entry): return entry['body']['messages'][-1]['content']


def scripted_faults(n, body):
    "Fault by prompt and attempt: each kind of fault hits the first attempt(s) of some prompts; 'doomed' ones always fail."
    text = body['messages'][-1]['content']
    if text.startswith('doomed'): return {'status': 500}
    i = int(text.split()[-1])
    kind = i % 7
    with LOCK:
        ATTEMPTS[text] += 1
        a = ATTEMPTS[text]
    if a > 2: return None
    return [None,
            {'status': 429, 'retry_after': 1} if a == 1 else None,
            {'status': 500},                      # twice in a row
            {'delay': 5} if a == 1 else None,     # longer than the client's timeout
            {'malformed': True} if a == 1 else None,
            {'content': ''} if a == 1 else None,
            {'status': 503} if a == 1 else None][kind]


import threading
LOCK = threading.Lock()
ATTEMPTS = Counter()


def test_fault_injection_every_request_completes_or_fails_once(tmp_path):
    ATTEMPTS.clear()
    log_file = tmp_path/'run.log'
    setup_logging('DEBUG', file=log_file)
    n, doomed = 42, 3
    batch = [[{'role': 'user', 'content': f"question {i}"}] for i in range(n)] + \
            [[{'role': 'user', 'content': f"doomed {i}"}] for i in range(doomed)]
    with LoopbackOpenAIServer(latency=0.02, faults=scripted_faults) as srv:
        b = OpenAIBackend('loopback', base_url=srv.base_url, api_key=SECRET, concurrency=8, max_retries=3,
                          timeout=1.0, cache=tmp_path/'cache.sqlite', progress=False)
        res = b.complete(batch, temperature=0.0)
    setup_logging('INFO')
    # every request is answered, in order, or failed with its error
    assert len(res) == n + doomed
    assert [r.text for r in res[:n]] == [f"echo: question {i}" for i in range(n)]
    assert all(r.text is None and r.error.startswith('HTTP 500') for r in res[n:])
    # server side: each prompt was sent exactly as often as the backend says it was attempted, no more
    sent = Counter(prompt_of(e) for e in srv.requests)
    for conv, r in zip(batch, res):
        assert sent[conv[-1]['content']] == r.attempts, conv
    assert all(sent[f"doomed {i}"] == 4 for i in range(doomed))  # 1 attempt + max_retries
    # every fault kind was met, and the prompt it hit was retried (by the client, or asked again by the backend) and answered
    kinds = {'429': lambda f: f.get('status') == 429, '500': lambda f: f.get('status') == 500, '503': lambda f: f.get('status') == 503,
             'timeout': lambda f: 'delay' in f, 'malformed': lambda f: 'malformed' in f, 'empty reply': lambda f: f.get('content') == ''}
    answered = {conv[-1]['content'] for conv, r in zip(batch, res) if r.ok}
    for kind, hit in kinds.items():
        prompts = {prompt_of(e) for e in srv.requests if e['fault'] and hit(e['fault'])} - {f"doomed {i}" for i in range(doomed)}
        assert prompts and prompts <= answered, kind
    # Retry-After is respected: a lower bound on the server's clock, which a slow machine can only lengthen
    for text in {prompt_of(e) for e in srv.requests if e['fault'] and e['fault'].get('status') == 429}:
        first, second = [e['time'] for e in srv.requests if prompt_of(e) == text][:2]
        assert second - first >= 1.0, text
    # a request that failed is named (by its key) in the log with its error
    log = log_file.read_text()
    for r in res[n:]:
        assert f"request {r.cache_key[:12]} failed after 4 attempt(s): HTTP 500" in log, r.cache_key
    # the cache holds one completion per successful prompt, and the failures with their errors
    cache = CompletionCache(tmp_path/'cache.sqlite')
    assert len(cache) == n
    assert sorted(f['key'] for f in cache.failures()) == sorted(r.cache_key for r in res[n:])
    # the key is nowhere
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f
        assert b'SECRET-do-not-store' not in f.read_bytes(), f
    # usage accounting adds up
    assert b.usage['failed'] == doomed
    assert b.usage['requests'] == len(srv.requests) and b.usage['retries'] == len(srv.requests) - len(batch)
    assert b.usage['completion_tokens'] == 3 * n


def _writer(path, start, count):
    c = CompletionCache(path)
    for i in range(start, start + count):
        c.put(f"k{i}", 'scripted', 'm', {'i': i}, f"text {i}")


def test_cache_concurrent_writer_processes(tmp_path):
    import multiprocessing as mp
    path = tmp_path/'shared.sqlite'
    CompletionCache(path)
    ctx = mp.get_context('spawn')
    procs = [ctx.Process(target=_writer, args=(path, 100 * p, 200)) for p in range(4)]  # overlapping key ranges
    for p in procs: p.start()
    for p in procs: p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    c = CompletionCache(path)
    assert len(c) == 500
    assert c.get('k250')['text'] == 'text 250'
    assert sqlite3.connect(path).execute('PRAGMA integrity_check').fetchone()[0] == 'ok'


CLIENT = textwrap.dedent('''
    import json, sys
    from dignified_peer.backends import OpenAIBackend
    base_url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    b = OpenAIBackend('loopback', base_url=base_url, api_key='EMPTY', concurrency=4, cache=cache, progress=False)
    res = b.complete([[{'role': 'user', 'content': f"item {i}"}] for i in range(n)])
    print(json.dumps({'ok': sum(r.ok for r in res), 'cached': sum(r.cached for r in res),
                      'texts_ok': all(r.text == f"echo: item {i}" for i, r in enumerate(res))}))
''')


def test_kill_and_resume_repeats_no_finished_call(tmp_path):
    n = 60
    script, cache = tmp_path/'client.py', tmp_path/'cache.sqlite'
    script.write_text(CLIENT)
    with LoopbackOpenAIServer(latency=0.1) as srv:
        cmd = [sys.executable, str(script), srv.base_url, str(cache), str(n)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(srv.served(200)) < 20 and time.time() < deadline and p.poll() is None: time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, 'the client finished before it could be killed'
        time.sleep(0.3)  # let requests in flight at the kill reach the server log
        n_first = len(srv.requests)
        done_first = CompletionCache(cache).keys()
        assert 0 < len(done_first) < n
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
    second = [prompt_of(e) for e in srv.requests[n_first:]]
    first = [prompt_of(e) for e in srv.requests[:n_first]]
    # the backend's own key: the endpoint is part of it
    key = lambda text: OpenAIBackend('loopback', base_url=srv.base_url, api_key='EMPTY').key([{'role': 'user', 'content': text}], {})
    # the re-run completed the rest, and served the finished ones from the cache
    assert summary == {'ok': n, 'cached': len(done_first), 'texts_ok': True}
    # finished calls were not repeated: nothing cached in run 1 was requested in run 2
    assert not any(key(t) in done_first for t in second)
    # every item completed exactly once: one cache entry each, and each item sent at most once per run
    assert CompletionCache(cache).keys() == {key(f"item {i}") for i in range(n)}
    assert max(Counter(first).values()) == 1 and max(Counter(second).values()) == 1
    assert set(first) | set(second) == {f"item {i}" for i in range(n)}
    # only requests in flight at the kill (at most `concurrency`) were sent twice
    assert len(set(first) & set(second)) <= 4
    assert sqlite3.connect(cache).execute('PRAGMA integrity_check').fetchone()[0] == 'ok'


def test_build_data_against_loopback_writes_valid_csv_without_key(tmp_path, monkeypatch):
    from dignified_peer.construction import build_data, offline_writer
    from dignified_peer.data import load_personaknob
    monkeypatch.setenv('OPENAI_API_KEY', SECRET)
    faults = {5: {'status': 429, 'retry_after': 0.2}, 17: {'status': 502}, 40: {'malformed': True}}
    with LoopbackOpenAIServer(responder=offline_writer, latency=0.01, faults=faults) as srv:
        df = build_data(tmp_path/'out', model='gen', base_url=srv.base_url, judge_model='judge', progress=False)
        n_first = len(srv.requests)
        again = build_data(tmp_path/'out', model='gen', base_url=srv.base_url, judge_model='judge', progress=False)
    assert len(srv.requests) == n_first  # the re-run made no call
    assert len(df) == 24 and df.equals(again)
    assert {m['model'] for m in (e['body'] for e in srv.requests)} == {'gen', 'judge'}
    assert all(json.loads(k)['scenario'] for k in df['cache_keys'])
    dd = load_personaknob(tmp_path/'out'/'personaknob.csv', strict=True)
    assert sum(len(d) for d in dd.values()) == 24
    for f in (tmp_path/'out').iterdir():
        assert b'SECRET-do-not-store' not in f.read_bytes(), f


BUILD = textwrap.dedent('''
    import sys
    from dignified_peer.construction import build_data
    df = build_data(sys.argv[2], model='gen', base_url=sys.argv[1], judge_model='judge', concurrency=4, progress=False)
    print(len(df))
''')


def test_kill_and_resume_a_dataset_build(tmp_path):
    from dignified_peer.construction import offline_writer
    from dignified_peer.data import load_personaknob
    script, out = tmp_path/'build.py', tmp_path/'out'
    script.write_text(BUILD)
    env = {**os.environ, 'OPENAI_API_KEY': SECRET}
    body_key = lambda b: OpenAIBackend(b['model'], base_url=srv.base_url, api_key='EMPTY').key(
        b['messages'], {k: v for k, v in b.items() if k not in ('model', 'messages')})
    with LoopbackOpenAIServer(responder=offline_writer, latency=0.05) as srv:
        cmd = [sys.executable, str(script), srv.base_url, str(out)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 120
        while len(srv.served(200)) < 70 and time.time() < deadline and p.poll() is None: time.sleep(0.01)
        p.send_signal(signal.SIGKILL); p.wait()
        assert p.returncode == -signal.SIGKILL, 'the build finished before it could be killed'
        time.sleep(0.3)
        n_first = len(srv.requests)
        done_first = CompletionCache(out/'cache.sqlite').keys()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
    second = [body_key(e['body']) for e in srv.requests[n_first:]]
    assert done_first and not (set(second) & done_first)  # nothing finished before the kill was asked again
    assert len(second) == len(set(second))
    assert int(r.stdout.strip().splitlines()[-1]) == 24
    dd = load_personaknob(out/'personaknob.csv', strict=True)
    assert sum(len(d) for d in dd.values()) == 24
    for f in out.iterdir(): assert b'SECRET-do-not-store' not in f.read_bytes(), f
