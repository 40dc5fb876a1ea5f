"""MFRM scaling benchmark (not a test): fit 10^4, 10^5 and 10^6 simulated ratings; seconds, peak memory, growth.

Design: 20 models x 4 traits x n_items x 5 judges, every triple rated (n_items = 25, 250, 2500). Each size runs in
its own process so that its peak resident memory is its own. The last line reads
`RESULT n=1000000 seconds=<s> peak_mb=<m> exponent=<e>` (exponent: slope of log seconds on log n).
Target: 10^6 ratings in under 60 s and 4 GB on a 2-core machine.
"""
import json
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {10_000: 25, 100_000: 250, 1_000_000: 2_500}


def one(n_items: int) -> dict:
    from dignified_peer.mfrm import MFRM
    from dignified_peer.simulation import simulate_ratings
    df, _ = simulate_ratings(n_models=20, n_items=n_items, n_judges=5, seed=0)
    t0 = time.perf_counter()
    m = MFRM().fit(df)
    m.measures(); m.facet_summary(); m.dignity_score(); m.peer_score()
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    return {'n': len(df), 'seconds': seconds, 'peak_mb': peak_mb, 'iterations': m.n_iter_, 'converged': m.converged_}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == '--one':
        print(json.dumps(one(int(sys.argv[2])))); return
    rows = []
    for n, n_items in SIZES.items():
        out = subprocess.run([sys.executable, __file__, '--one', str(n_items)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"n={r['n']:>9,d}  seconds={r['seconds']:7.2f}  peak_mb={r['peak_mb']:7.0f}  "
              f"iterations={r['iterations']}  converged={r['converged']}", flush=True)
    exponent = np.polyfit(np.log([r['n'] for r in rows]), np.log([r['seconds'] for r in rows]), 1)[0]
    last = rows[-1]
    print(f"RESULT n={last['n']} seconds={last['seconds']:.1f} peak_mb={last['peak_mb']:.0f} exponent={exponent:.2f}")


if __name__ == '__main__':
    main()
