"""Every Python block of README.md and docs/*.md runs, in order, as written.

Each page runs in a fresh interpreter (one namespace for all its blocks, as a
reader pasting them into a notebook would), from an empty folder with the
repository on the path, so an example cannot rot. A block preceded by an HTML
comment ``<!-- not run ... -->`` says why it is not run (e.g. it needs several
processes); every such block is listed by this test, never silently dropped.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import launcher_util

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

REPO = pathlib.Path(__file__).resolve().parents[2]
PAGES = ['README.md'] + sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / 'docs').glob('*.md'))
_BLOCK = re.compile(r'(<!-- not run[^\n]*-->\n)?```python\n(.*?)```', re.S)


def python_blocks(page):
  """[(line, code, skipped)] of every ```python block of ``page``."""
  text = (REPO / page).read_text()
  return [(text.count('\n', 0, m.start()) + 1, m.group(2), bool(m.group(1)))
          for m in _BLOCK.finditer(text)]


def test_every_page_with_code_is_checked():
  counted = {p: len(python_blocks(p)) for p in PAGES}
  assert counted['README.md'] >= 1 and counted['docs/guide.md'] >= 5, counted
  # One block is not run (it needs several processes): the page, not its line
  # number, is checked, so that edits above it do not break the test.
  skipped = [(p, line) for p in PAGES for line, _, s in python_blocks(p) if s]
  assert [p for p, _ in skipped] == ['docs/distributed.md'], skipped


@pytest.mark.parametrize('page', [p for p in PAGES if python_blocks(p)])
def test_page_examples_run(page, tmp_path):
  script = []
  for line, code, skipped in python_blocks(page):
    if not skipped:
      script.append(f'# {page}, line {line}\n{code}')
  # As a reader runs them: the repository on the path (experiments/ is a
  # folder of it), and the machine's own devices, not the 4 CPU devices
  # tests/conftest.py forces for the sharding tests.
  env = dict(os.environ, XLA_FLAGS=launcher_util.xla_flags())
  env['PYTHONPATH'] = str(REPO)
  proc = subprocess.run([sys.executable, '-c', '\n'.join(script)], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, (
      f'{page}: an example failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}')
