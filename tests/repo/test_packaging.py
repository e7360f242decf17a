"""The built wheel holds the library alone and runs outside the repository."""

import ast
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# A meta-gradient and a train step through the installed package, run from a
# folder that is not the repository, with nothing of the repository importable.
_OUTSIDE = r"""
import sys
import jax, jax.numpy as jnp, optax
import maml_jax as mj
assert mj.__file__.startswith(sys.argv[1]), mj.__file__
for name in ('experiments', 'benchmarks'):
  try:
    __import__(name)
  except ModuleNotFoundError:
    pass
  else:
    raise AssertionError(name + ' is importable')
key = jax.random.PRNGKey(0)
params = mj.models.init_sine_params(key)
tasks = mj.tasks.sine_tasks(key, 4)
est = mj.maml(mj.models.sine_loss, inner_lr=0.01, num_inner_steps=2)
grads, aux = jax.jit(mj.meta_gradient, static_argnums=0)(est, params, tasks, key)
assert int(aux.num_nonfinite) == 0
opt = optax.adam(1e-3)
state, metrics = mj.make_train_step(est, opt)(mj.init_train_state(params, opt), tasks, key)
print('ok', float(metrics['loss_after']))
"""


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """Builds the wheel from a copy of what it is made of (the tree stays clean)."""
  src = tmp_path_factory.mktemp('src')
  for name in ('setup.py', 'setup.cfg', 'README.md'):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / 'maml_jax', src / 'maml_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  out = tmp_path_factory.mktemp('wheel')
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
       '--no-cache-dir', '-q', '-w', str(out), str(src)],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  wheels = list(out.glob('maml_jax-*.whl'))
  assert len(wheels) == 1, wheels
  return wheels[0]


def test_wheel_holds_the_library_alone(wheel):
  with zipfile.ZipFile(wheel) as zf:
    names = zf.namelist()
    info = next(n for n in names if n.endswith('.dist-info/top_level.txt'))
    assert zf.read(info).decode().split() == ['maml_jax']
  tops = {n.split('/')[0] for n in names}
  dist_info = [t for t in tops if t.endswith('.dist-info')]
  assert len(dist_info) == 1 and tops == {'maml_jax', *dist_info}, tops
  for module in ('maml_jax/__init__.py', 'maml_jax/nn.py', 'maml_jax/models.py',
                 'maml_jax/tasks.py', 'maml_jax/_src/estimators.py'):
    assert module in names
  assert not any(n.startswith(('experiments/', 'benchmarks/', 'tests/'))
                 for n in names)


@pytest.mark.slow
def test_wheel_runs_outside_the_repository(wheel, tmp_path):
  """Installed on its own (its dependencies from this environment)."""
  site = tmp_path / 'site'
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-cache-dir',
       '-q', '--target', str(site), str(wheel)],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  work = tmp_path / 'elsewhere'
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = str(site)
  proc = subprocess.run([sys.executable, '-c', _OUTSIDE, str(site)], cwd=work,
                        env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith('ok'), proc.stdout


def _floors_module():
  spec = importlib.util.spec_from_file_location('floors', REPO / '.ci' / 'floors.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# What makes a test module more than a library test: it imports or runs the
# experiments, the benchmarks, PyTorch, the README, or tools the floors venv
# does not have (pdoc, pip's wheel builder, a Jupyter kernel).
_BEYOND_LIBRARY = re.compile(
    r'^\s*(from|import)\s+(experiments|benchmarks|torch)\b'
    r"|'-m', '(benchmarks|experiments|pdoc|pip)"
    r"|benchmarks/|'pdoc'|'pip'|README|^import nbclient", re.M)


def test_floors_pin_install_requires_and_list_the_library_tests():
  floors = _floors_module()
  pins = floors.floor_pins()
  assert {p.split('==')[0] for p in pins} >= {'jax', 'jaxlib', 'optax', 'flax',
                                              'chex', 'numpy'}, pins
  library = set(floors.LIBRARY_TESTS)
  assert library and all(n.startswith('tests/lib/') for n in library), library
  for path in sorted((REPO / 'tests').rglob('test_*.py')):
    name = path.relative_to(REPO).as_posix()
    beyond = bool(_BEYOND_LIBRARY.search(path.read_text()))
    assert (name in library) == (not beyond), (
        f'{name}: tests/lib/ must hold exactly the test modules that use the '
        'library alone (the other tiers: tests/experiments, tests/benchmarks, '
        'tests/repo)')


def _public_functions():
  """'mj.maml', 'mj.nn.max_pool', ...: the functions of the public API."""
  import maml_jax as mj  # pylint: disable=g-import-not-at-top
  names = []
  for prefix, module in (('mj', mj), ('mj.nn', mj.nn), ('mj.models', mj.models),
                         ('mj.tasks', mj.tasks)):
    for name in getattr(module, '__all__', None) or dir(module):
      obj = getattr(module, name)
      if not name.startswith('_') and callable(obj) and not isinstance(obj, type):
        names.append(f'{prefix}.{name}')
  return names


def _is_test(node):
  name = getattr(node, 'name', '')
  return (isinstance(node, ast.ClassDef) and 'Test' in name) or (
      isinstance(node, ast.FunctionDef) and name.startswith('test'))


def _source(test):
  """The code a floors entry runs: a module's text, or for a test id
  ('path::test_f[param]', 'path::Class::test_m0') the selected test with the
  helpers and constants around it (every statement that is not another test).
  A generated name (absl parameterized) selects the function it starts with."""
  path, *names = test.split('::')
  text = (REPO / path).read_text()
  lines = text.splitlines()

  def segment(node):
    first = min([node.lineno] + [d.lineno for d in getattr(node, 'decorator_list', [])])
    return '\n'.join(lines[first - 1:node.end_lineno])

  def keep(body, names):
    if not names:
      return [segment(n) for n in body]
    want = names[0].split('[')[0]
    tests = [n for n in body if _is_test(n)]
    chosen = max((n for n in tests if want.startswith(n.name)),
                 key=lambda n: len(n.name), default=None)
    assert chosen is not None, f'{test}: no test {want}'
    return [segment(n) for n in body if not _is_test(n)] + keep(
        chosen.body if isinstance(chosen, ast.ClassDef) else [chosen], names[1:])

  return '\n'.join(keep(ast.parse(text).body, names))


def _calls(text, function):
  return re.search(r'\b' + re.escape(function) + r'\b', text) is not None


def test_the_floors_run_calls_every_function_the_library_tests_call():
  """FLOOR_TESTS, what .ci/floors runs at the oldest dependency versions, are
  library tests (whole modules or single test functions) and, between them,
  call every public function that any library test calls."""
  floors = _floors_module()
  modules = [t.split('::')[0] for t in floors.FLOOR_TESTS]
  assert set(modules) <= set(floors.LIBRARY_TESTS), floors.FLOOR_TESTS
  assert len(set(floors.FLOOR_TESTS)) == len(floors.FLOOR_TESTS)
  library = '\n'.join(_source(t) for t in floors.LIBRARY_TESTS)
  floor = '\n'.join(_source(t) for t in floors.FLOOR_TESTS)
  tested = [f for f in _public_functions() if _calls(library, f)]
  assert len(tested) >= 30, tested  # the check finds the calls at all
  missing = [f for f in tested if not _calls(floor, f)]
  assert not missing, (f'{missing}: called by a library test but by none of '
                       '.ci/floors.py FLOOR_TESTS')
