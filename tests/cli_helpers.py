"""What the command-line tests share: the console script, a tiny configuration, running it, and reading which stages ran."""
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

# a run small enough for a test: 2 training steps, 4 test rows
TINY = """
model: {tiny_size: test}
data: {max_test_rows: 4}
train: {methods: [sft, lagdpo], max_steps: 2, sft_max_steps: 2, per_device_train_batch_size: 4}
generate: {max_new_tokens: 8}
benchmarks: {xstest_limit: 2, sycophancy_limit: 2}
"""


def cli(*args, cwd, env=None, timeout=1800):
    "Run `dignified-peer *args` in `cwd`; the completed process, output captured."
    return subprocess.run([str(BIN/'dignified-peer'), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def ran(stdout) -> list[str]:
    "The stages a run's output says it ran, in order."
    return [l.split()[1] for l in stdout.splitlines() if l.startswith('[stage]') and l.rstrip().endswith('running')]
