"""Test-session setup, before jax is imported anywhere in the test process.

* 4 host CPU devices, so sharding tests run on any machine.
* One persistent compilation cache for the whole session: every test process
  (pytest-xdist workers, launcher subprocesses, the docs and notebook runs)
  compiles a given XLA program once; later compilations of the same program
  (the same model and estimator in another test module, a resumed launcher
  run) load it from the cache. The suite is mostly XLA compilation on a
  2-core CI machine. The folder is new for each session (nothing is reused
  from an earlier run, so compile times stay visible in `--durations`) and
  removed at the end. ``MAML_JAX_TEST_COMPILATION_CACHE=0`` turns it off.
* XLA's CPU backend compiles without LLVM's optimisations
  (``--xla_backend_optimization_level=0``): the tests' programs are small and
  run briefly, so their compilation is most of the suite's time, and LLVM's
  passes are most of a compilation. The HLO (what is computed, in which
  precision) is the same; the machine code is slower, which no test measures
  (speeds are the benchmarks' job, run without these flags). It halved the
  time of compile-bound modules (tests/lib/test_meta.py, test_oracles.py,
  tests/experiments/test_convnet.py: 113 s -> 57 s on 2 cores).
  ``MAML_JAX_TEST_FAST_COMPILE=0`` turns it off. The flags are also in
  ``MAML_JAX_TEST_XLA_FLAGS``, for the tests that start processes with XLA_FLAGS
  of their own (``launcher_util.xla_flags``).
"""
import atexit
import importlib.util
import os
import shutil
import tempfile

_FLAG = '--xla_force_host_platform_device_count=4'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
if 'MAML_JAX_TEST_XLA_FLAGS' not in os.environ:  # the xdist workers inherit it
  _fast = (os.environ.get('MAML_JAX_TEST_FAST_COMPILE', '1') != '0'
           and 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS'])
  os.environ['MAML_JAX_TEST_XLA_FLAGS'] = (
      '--xla_backend_optimization_level=0' if _fast else '')
  os.environ['XLA_FLAGS'] = (os.environ['XLA_FLAGS'] + ' '
                             + os.environ['MAML_JAX_TEST_XLA_FLAGS']).strip()

# The pytest-xdist workers inherit the controller's environment, so the first
# process (the controller, or the only process with -n 0) makes the folder.
# The cache's file lock needs filelock (in the test extra); without it, no cache.
if (os.environ.get('MAML_JAX_TEST_COMPILATION_CACHE', '1') != '0'
    and 'JAX_COMPILATION_CACHE_DIR' not in os.environ
    and importlib.util.find_spec('filelock') is not None):
  _cache = tempfile.mkdtemp(prefix='maml_jax_test_jax_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  # Programs that compile in under 0.5 s are not worth a disk round trip.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  # A size bound turns on the cache's file lock: several processes read and
  # write the folder at once (without it a reader can see a half-written entry).
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 << 30))

# pytest-xdist (--dist loadfile) hands whole modules to the workers in
# collection order; the longest first (measured with --durations on a 2-core
# CPU, longest first), so that no long module starts last while the other
# worker idles. The other modules keep their order, after these. A stale list
# only costs time, never a result.
_LONGEST_MODULES_FIRST = (
    'test_faults.py', 'test_benchmarks.py', 'test_docs_examples.py',
    'test_rl_brax.py', 'test_distributed.py', 'test_experiments_launchers.py',
    'test_meta.py', 'test_step_sizes.py', 'test_rl_metarl.py',
    'test_oracles.py', 'test_convnet.py', 'test_notebooks.py',
    'test_fewshot.py', 'test_models.py', 'test_experiments_common.py',
    'test_accelerator_check.py', 'test_experiments_inner_lr.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_MODULES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
