"""notebooks/quickstart.ipynb runs top to bottom in a fresh kernel (short mode).

The notebook's one parameter, MAML_JAX_NOTEBOOK_QUICK=1, shrinks its iteration
counts and data set; the code is the committed notebook's, cell for cell.
"""

import pathlib

import nbclient
import nbformat
import pytest

import launcher_util

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  # The kernel inherits this environment: the quick parameter, the
  # repository on the path (experiments/ is a folder of it), and the
  # machine's own devices rather than the 4 CPU devices of tests/conftest.py.
  monkeypatch.setenv('MAML_JAX_NOTEBOOK_QUICK', '1')
  monkeypatch.setenv('PYTHONPATH', str(REPO))
  monkeypatch.setenv('XLA_FLAGS', launcher_util.xla_flags())
  nb = nbformat.read(REPO / 'notebooks' / 'quickstart.ipynb', as_version=4)
  committed = [c.source for c in nb.cells]
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  assert [c.source for c in nb.cells] == committed
  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.outputs)
  for expected in ('| quick', 'MAML: query loss', 'GGS-MAML: query loss',
                   'held-out accuracy after k = 0, 1, 2, 3 steps',
                   'learned step sizes'):
    assert expected in text, text[-2000:]
  images = sum('image/png' in o.get('data', {}) for c in nb.cells
               if c.cell_type == 'code' for o in c.outputs)
  assert images == 4
