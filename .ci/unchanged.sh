#!/usr/bin/env bash
# Run a command and fail when it changed any file under nbs/ or the library: the notebooks must be
# committed clean and exported. Compares content hashes, so it also works in a dirty work tree.
set -uo pipefail
msg=$1; shift
snap() { find nbs dignified_peer -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha1sum; }
before=$(snap)
"$@" >/dev/null || { echo "FAILED: $*"; exit 1; }
after=$(snap)
if [ "$before" != "$after" ]; then
  echo "$msg"; diff <(echo "$before") <(echo "$after") | sed 's/^/  /'
  git --no-pager diff --stat -- nbs dignified_peer 2>/dev/null | tail -20
  exit 1
fi
echo "ok: $* changed nothing"
