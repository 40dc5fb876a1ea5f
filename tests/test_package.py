"""Packaging and CLI checks that notebooks cannot make: metadata agreement, the console script, a wheel."""
import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dignified_peer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def settings():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']


def test_version_matches_settings():
    assert dignified_peer.__version__ == settings()['version']


def test_pyproject_holds_no_metadata():
    text = (ROOT/'pyproject.toml').read_text()
    assert '[project]' not in text and '[tool.nbdev]' in text and 'update_pyproject = false' in text


def test_every_notebook_has_a_module():
    nbs = sorted(p for p in (ROOT/'nbs').glob('[0-9]*.ipynb'))
    assert nbs, 'no notebooks'
    test_only = {'10_real_model.ipynb'}  # slow tests on the real model; it exports nothing and says so
    for nb in nbs:
        cells = json.loads(nb.read_text())['cells']
        exp = [l for c in cells if c['cell_type'] == 'code' for l in c['source'] if l.startswith('#| default_exp')]
        if nb.name in test_only:
            assert not exp, nb.name; continue
        assert len(exp) == 1, nb.name
        mod = exp[0].split()[-1]
        assert (ROOT/'dignified_peer'/f'{mod}.py').exists(), f'{nb.name} exports {mod}, missing'


def test_cli_help_lists_demo():
    out = subprocess.run([str(BIN/'dignified-peer'), '--help'], capture_output=True, text=True, check=True).stdout
    assert 'demo' in out


def test_cli_unknown_command_fails_with_one_line():
    r = subprocess.run([str(BIN/'dignified-peer'), 'nope'], capture_output=True, text=True)
    assert r.returncode != 0 and 'invalid choice' in r.stderr
