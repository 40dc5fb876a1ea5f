"""Client throughput of `OpenAIBackend` against the loopback server with injected latency (a benchmark, not a test).

Ideal throughput is concurrency / latency (every slot always busy); the ratio achieved/ideal measures the
client's own overhead (event loop, HTTP stack, cache writes). The server runs in a child process so that
its threads do not compete with the client for the interpreter lock, as a real remote server would not.
Last line: RESULT requests_per_s=<x> ideal_per_s=<y> ratio=<x/y> lost=<n>
"""
import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from dignified_peer.backends import OpenAIBackend
from dignified_peer.testing import LoopbackOpenAIServer


def serve(latency, conn):
    srv = LoopbackOpenAIServer(latency=latency).start()
    conn.send(srv.base_url)
    conn.recv()  # block until the parent is done
    conn.send(len(srv.served(200)))
    srv.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--requests', type=int, default=640, help='requests to send (default 640)')
    p.add_argument('--concurrency', type=int, default=32, help='requests in flight (default 32)')
    p.add_argument('--latency', type=float, default=0.2, help='server latency per request in seconds (default 0.2)')
    p.add_argument('--no-cache', action='store_true', help='measure without the SQLite cache')
    a = p.parse_args()
    parent, child = mp.Pipe()
    proc = mp.get_context('spawn').Process(target=serve, args=(a.latency, child), daemon=True)
    proc.start()
    base_url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        cache = None if a.no_cache else Path(tmp)/'bench.sqlite'
        backend = OpenAIBackend('loopback', base_url=base_url, api_key='EMPTY', concurrency=a.concurrency,
                                max_retries=0, timeout=30, cache=cache, progress=False)
        # warm-up: opens the connections and imports the client outside the timed part
        backend.complete([[{'role': 'user', 'content': f"warm-up {i}"}] for i in range(a.concurrency)])
        batch = [[{'role': 'user', 'content': f"request {i}"}] for i in range(a.requests)]
        t0 = time.perf_counter()
        res = backend.complete(batch, temperature=0.0)
        dt = time.perf_counter() - t0
    parent.send('done')
    served = parent.recv() - a.concurrency
    proc.join(5)
    ok = sum(r.ok and r.text == f"echo: request {i}" for i, r in enumerate(res))
    lost = a.requests - ok
    rps, ideal = ok / dt, a.concurrency / a.latency
    print(f"{a.requests} requests, concurrency {a.concurrency}, latency {a.latency*1000:.0f} ms, cache {'off' if a.no_cache else 'on'}: "
          f"{dt:.2f} s, {ok} answered, {served} served by the server")
    print(f"RESULT requests_per_s={rps:.1f} ideal_per_s={ideal:.1f} ratio={rps/ideal:.3f} lost={lost}")


if __name__ == '__main__':
    main()
