"""Run every notebook's tests with nbdev-test, and fail when none was eligible.

nbdev-test prints only 'Success.' and exits 0 when it finds no notebook (or a notebook is marked
skip_exec), so this wrapper lists the notebooks itself and checks each one was run and completed.
Extra arguments go to nbdev-test (for example `--flags slow`).
"""
import json, re, subprocess, sys, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nbs = sorted(p for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
if not nbs: sys.exit('nbtest: no notebook found under nbs/: nothing would be tested')
for p in nbs:
    meta = json.loads(p.read_text(encoding='utf-8')).get('metadata', {})
    if str(meta.get('skip_exec', '')).lower() in ('1', 'true'): sys.exit(f'nbtest: {p.name} is marked skip_exec')
bin_dir = Path(sys.executable).parent
cmd = [str(bin_dir/'nbdev-test'), '--do-print', '--timing', *sys.argv[1:]]
print('nbtest:', ' '.join(cmd[1:]), f'({len(nbs)} notebooks)', flush=True)
t0 = time.time()
proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
sys.stdout.write(proc.stdout); sys.stderr.write(proc.stderr)
done = {Path(m).name for m in re.findall(r'^- Completed (.+)$', proc.stdout, re.M)}
missing = [p.name for p in nbs if p.name not in done]
if proc.returncode != 0: sys.exit(f'nbtest: nbdev-test failed (exit {proc.returncode})')
if missing or 'Success.' not in proc.stdout: sys.exit(f'nbtest: notebooks not run: {", ".join(missing) or "?"}')
print(f'nbtest: {len(nbs)} notebooks tested, all passed in {time.time()-t0:.0f}s')
