"""The README documents the configuration in one place, generated from the dataclasses (issue 12)."""
from pathlib import Path

from dignified_peer.config import config_reference

README = Path(__file__).resolve().parents[1]/'README.md'


def test_readme_holds_the_generated_config_table():
    text = README.read_text(encoding='utf-8')
    assert config_reference() in text, 'README.md is out of date: paste dignified_peer.config.config_reference() into "Configuration and re-runs"'
    assert text.count('## Configuration and re-runs') == 1 and '**The skip rule.**' in text
