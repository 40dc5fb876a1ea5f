"""The report as a person sees it: report.html rendered by headless Chromium at 1280 px.

Every image must load, nothing may overflow the page horizontally, and the summary table must come
before the first figure. A screenshot is kept in the run directory (report.png). Chromium is the
Debian package `chromium`; the set-up installs it when it can (root with apt-get) and otherwise
skips with a message saying how to get it.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from cli_helpers import TINY, cli

WIDTH = 1280

# written into a copy of the report: after every image has loaded or failed, the checks' results
# go into the DOM, which --dump-dom prints
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const summary = document.getElementById('summary'), first = imgs[0];
  const out = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
               scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
               summaryFirst: !!summary && !!first && !!(summary.compareDocumentPosition(first) & Node.DOCUMENT_POSITION_FOLLOWING),
               wide: [...document.body.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                       .slice(0, 5).map(e => e.tagName + (e.id ? '#' + e.id : ''))};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    "The Chromium binary, installed with apt-get when missing and possible; skips the test otherwise."
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if path := shutil.which(name): return path
    if os.geteuid() == 0 and shutil.which('apt-get'):
        r = subprocess.run(['apt-get', 'install', '-y', '-q', 'chromium'], capture_output=True, text=True, timeout=900)
        if r.returncode == 0 and (path := shutil.which('chromium')): return path
        pytest.skip(f"headless Chromium is needed to check the report; `apt-get install -y chromium` failed: {r.stderr.strip()[-300:]}")
    pytest.skip('headless Chromium is needed to check the report: install the Debian package `chromium` (apt-get install -y chromium)')


def headless(browser, *args, height=900, timeout=180):
    return subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                           f'--window-size={WIDTH},{height}', *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    browser = chromium()
    tmp = tmp_path_factory.mktemp('browser')
    (tmp/'tiny.yaml').write_text(TINY)
    r = cli('run', '--config', 'tiny.yaml', '--out', 'runs', '--name', 'browser', cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return browser, tmp/'runs'/'browser'


@pytest.fixture(scope='module')
def probe(run):
    browser, d = run
    page = d/'report_probe.html'
    page.write_text((d/'report.html').read_text().replace('</body>', PROBE + '</body>'))
    r = headless(browser, '--virtual-time-budget=10000', '--dump-dom', page.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert m, f'Chromium printed no probe result: {r.stderr[-2000:]}'
    return json.loads(m.group(1).replace('&quot;', '"').replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>'))


def test_every_image_loads(run, probe):
    _, d = run
    assert probe['images'] == len(list((d/'figures').glob('*.png'))) >= 8, probe  # the tiny run's MFRM cannot be fitted: 8 of the 13
    assert probe['broken'] == [], probe


def test_nothing_overflows_at_1280px(probe):
    assert probe['innerWidth'] == WIDTH, probe
    assert probe['scrollWidth'] <= WIDTH and probe['wide'] == [], probe


def test_the_summary_comes_before_the_first_figure(probe):
    assert probe['summaryFirst'], probe


def test_a_screenshot_is_kept_in_the_run_directory(run):
    browser, d = run
    shot = d/'report.png'
    r = headless(browser, f'--screenshot={shot}', (d/'report.html').as_uri(), height=2400)
    assert shot.exists(), r.stderr[-2000:]
    from PIL import Image
    assert Image.open(shot).size == (WIDTH, 2400)
