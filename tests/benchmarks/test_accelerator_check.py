"""benchmarks/accelerator_check.sh --quick runs on the CPU and writes its results.

Also benchmarks/scaling.py's table: one configuration of 1 process x 2
devices (the 2-process path is tests/experiments/test_distributed.py's). Timings are not
checked: the machine may be shared.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

import launcher_util

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_accelerator_check_quick(tmp_path):
  # The machine's devices (the scaling part sets its own device count).
  env = dict(os.environ, PYTHON=sys.executable, XLA_FLAGS=launcher_util.xla_flags())
  proc = subprocess.run(
      ['bash', 'benchmarks/accelerator_check.sh', '--quick',
       f'--out_dir={tmp_path}'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=420, check=False)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  with open(tmp_path / 'accelerator.json') as f:
    res = json.load(f)
  assert res['quick'] and res['backend'] == 'cpu'
  assert set(res['parts']) == {'speed', 'scaling', 'rl'}
  assert all(p['exit_code'] == 0 for p in res['parts'].values())
  with open(tmp_path / 'accelerator_scaling.json') as f:
    scaling = json.load(f)
  [row] = scaling['rows']
  assert (row['processes'], row['devices']) == (1, 2)
  assert row['results']['maml']['tasks_per_second'] > 0
  text = (tmp_path / 'accelerator.md').read_text()
  for part in ('speed', 'scaling', 'rl'):
    assert f'| {part} | 0 |' in text
  assert 'tasks / s' in text and (tmp_path / 'accelerator_rl.md').exists()
  # --quick: the 2D navigation task, Brax installed or not.
  assert (tmp_path / 'accelerator_rl.md').read_text().startswith(
      '# Meta-RL navigation2d')
  assert len(os.listdir(tmp_path)) <= 8  # what a device run can bring back
