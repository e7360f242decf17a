"""The dependency floors of setup.cfg as exact pins, and the library's own tests.

  python3 .ci/floors.py requirements   # jax==0.9.0 jaxlib==0.9.0 ... (from install_requires)
  python3 .ci/floors.py tests          # the test modules that use the library alone

Used by .ci/floors; tests/test_packaging.py checks that LIBRARY_TESTS is exactly
the set of test modules that import neither experiments/, benchmarks/ nor torch.
"""

import configparser
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The test modules that import maml_jax and the tests' own helpers only.
LIBRARY_TESTS = (
    'tests/test_adaptation_curve.py',
    'tests/test_contract.py',
    'tests/test_estimators.py',
    'tests/test_meta.py',
    'tests/test_models.py',
    'tests/test_nn.py',
    'tests/test_oracles.py',
    'tests/test_sharding.py',
    'tests/test_step_sizes.py',
    'tests/test_tasks.py',
    'tests/test_training.py',
)
# What the library tests need besides the library (not pinned: test tools).
TEST_TOOLS = ('pytest', 'pytest-xdist', 'absl-py')


def floor_pins(setup_cfg=ROOT / 'setup.cfg'):
  """['jax==0.9.0', ...]: every install_requires entry 'name>=v' as 'name==v'."""
  cfg = configparser.ConfigParser()
  cfg.read(setup_cfg)
  pins = []
  for line in cfg['options']['install_requires'].splitlines():
    line = line.strip()
    if not line:
      continue
    match = re.fullmatch(r'([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)', line)
    if match is None:
      raise SystemExit(f'setup.cfg install_requires: {line!r} is not name>=version')
    pins.append(f'{match[1]}=={match[2]}')
  return pins


if __name__ == '__main__':
  what = sys.argv[1] if len(sys.argv) > 1 else ''
  if what == 'requirements':
    print(' '.join(floor_pins() + list(TEST_TOOLS)))
  elif what == 'tests':
    print(' '.join(LIBRARY_TESTS))
  else:
    raise SystemExit('usage: floors.py requirements|tests')
