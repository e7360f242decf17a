"""maml_jax meta-gradients agree with the PyTorch reference (benchmarks/torch_reference.py).

Both sides get the same initial parameters, task data and Gaussian directions:
the directions are the ones maml_jax draws (``mj.task_keys`` and
``mj.gaussian_directions`` from the per-task keys of ``mj.meta_gradient``),
converted to numpy and fed to torch. Agreement is checked per task and for the
task mean, for every estimator, on sine regression and matrix factorization,
in float32 (relative error <= 1e-4) and float64 (much tighter).

ZO-MAML in float32 uses delta = 0.1 instead of 1e-2: its second difference
(l(w + delta u) + l(w - delta u) - 2 l(w)) / (2 delta^2) loses about
eps * l / delta^2 to cancellation, so at delta = 1e-2 two correct float32
implementations differ by ~1e-4 (measured 1.1e-4 on sine); float64 checks
delta = 1e-2 to 1e-10.

The jitted functions are compiled with XLA's backend optimizations off: the
numbers are the same math, and compiling is ~4x faster, which keeps this
module CI-sized on a 2-core machine.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

import maml_jax as mj  # pylint: disable=g-import-not-at-top
from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
from experiments import models  # pylint: disable=g-import-not-at-top
from experiments import tasks as task_lib  # pylint: disable=g-import-not-at-top

NUM_TASKS = 3
NUM_STEPS = 3
NUM_DIRECTIONS = 5
INNER_LR = 0.01
DELTA = 1e-2
ZO_DELTA_FLOAT32 = 0.1
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}

# Relative errors ||g_jax - g_torch|| / ||g_torch||.
RTOL = {'float32': 1e-4, 'float64': 1e-10}


def _setup(problem, dtype):
  key_p, key_t = jax.random.split(jax.random.PRNGKey(42))
  if problem == 'sine':
    params = models.init_sine_params(key_p, dtype=dtype)
    tasks = task_lib.sine_tasks(key_t, NUM_TASKS, dtype=dtype)
    return models.sine_loss, params, tasks
  params = models.init_mf_params(key_p, dtype=dtype)
  tasks = task_lib.matrix_factorization_tasks(key_t, NUM_TASKS, num_samples=2,
                                              dtype=dtype)
  return models.mf_loss, params, tasks


def _delta(algorithm, dtype_name):
  return ZO_DELTA_FLOAT32 if (algorithm, dtype_name) == ('zo_maml', 'float32') else DELTA


def _estimator(algorithm, loss_fn, delta):
  kw = dict(inner_lr=INNER_LR, num_inner_steps=NUM_STEPS)
  if algorithm in ('zo_maml', 'ggs_maml'):
    kw.update(num_directions=NUM_DIRECTIONS, delta=delta)
  elif algorithm == 'hf_maml':
    kw.update(delta=delta)
  return getattr(mj, algorithm)(loss_fn, **kw)


def _compiled(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _directions(params, key):
  """The directions maml_jax uses inside meta_gradient: leaves [T, N, b, ...]."""

  def per_task(k):
    keys = mj.task_keys(k, NUM_STEPS)
    return jax.vmap(lambda kd: mj.gaussian_directions(kd, params, NUM_DIRECTIONS))(
        keys.directions)

  return jax.vmap(per_task)(jax.random.split(key, NUM_TASKS))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def _rel_err(a, b):
  a, b = _flat(a).astype(np.float64), _flat(b).astype(np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _check(problem, algorithm, dtype_name, impl, check_mean=False):
  """Per-task (and optionally mean) meta-gradients of maml_jax vs torch."""
  dtype = jnp.float32 if dtype_name == 'float32' else jnp.float64
  delta = _delta(algorithm, dtype_name)
  loss_fn, params, tasks = _setup(problem, dtype)
  key = jax.random.PRNGKey(7)
  est = _estimator(algorithm, loss_fn, delta)
  # Per-task meta-gradients with the per-task keys meta_gradient uses.
  per_task_jax, aux = _compiled(
      lambda p, t, k: jax.vmap(est, in_axes=(None, 0, 0))(
          p, t, jax.random.split(k, NUM_TASKS)), params, tasks, key)
  assert np.all(np.asarray(aux.finite))
  mean_jax = None
  if check_mean:
    mean_jax, meta_aux = _compiled(
        lambda p, t, k: mj.meta_gradient(est, p, t, k), params, tasks, key)
    assert int(meta_aux.num_nonfinite) == 0
  directions = None
  if algorithm in ('zo_maml', 'ggs_maml'):
    directions = jax.tree.map(np.asarray, _compiled(_directions, params, key))
  np_tasks = jax.tree.map(np.asarray, tasks)
  mean_torch, per_task_torch = tr.meta_gradient(
      problem, algorithm, jax.tree.map(np.asarray, params), np_tasks,
      inner_lr=INNER_LR, num_inner_steps=NUM_STEPS,
      num_directions=NUM_DIRECTIONS, delta=delta, directions=directions,
      impl=impl)
  assert _flat(mean_torch).dtype == np.dtype(dtype_name)
  tol = RTOL[dtype_name]
  for i in range(NUM_TASKS):
    err = _rel_err(jax.tree.map(lambda x: x[i], per_task_jax),
                   jax.tree.map(lambda x: x[i], per_task_torch))
    assert err <= tol, f'task {i}: relative error {err:.3g} > {tol}'
  if check_mean:
    err = _rel_err(mean_jax, mean_torch)
    assert err <= tol, f'mean: relative error {err:.3g} > {tol}'


@pytest.mark.parametrize('algorithm', tr.ALGORITHMS)
@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_agreement_float32(problem, algorithm):
  # The task mean of mj.meta_gradient (eq. 7, its own key split) once.
  check_mean = (problem, algorithm) == ('sine', 'ggs_maml')
  _check(problem, algorithm, 'float32', 'loop', check_mean=check_mean)


@pytest.mark.parametrize('algorithm', tr.ALGORITHMS)
@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_agreement_float64(problem, algorithm):
  with jax.enable_x64(True):
    _check(problem, algorithm, 'float64', 'loop')


@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_torch_func_matches_torch_loop(problem):
  """The vectorized torch.func reference (the faster one) equals the loop one."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    _, params, tasks = _setup(problem, jnp.float64)
  params = jax.tree.map(np.asarray, params)
  tasks = jax.tree.map(np.asarray, tasks)
  directions = jax.tree.map(
      lambda p: rng.standard_normal((NUM_TASKS, NUM_STEPS, NUM_DIRECTIONS) + p.shape),
      params)
  for algorithm in tr.ALGORITHMS:
    out = [tr.meta_gradient(problem, algorithm, params, tasks, inner_lr=INNER_LR,
                            num_inner_steps=NUM_STEPS,
                            num_directions=NUM_DIRECTIONS, delta=DELTA,
                            directions=directions, impl=impl)[1]
           for impl in tr.IMPLS]
    assert _rel_err(out[1], out[0]) <= 1e-12, algorithm


def test_directions_are_fresh_per_task_and_step():
  """The directions fed to torch differ across tasks and steps (SPEC section 5)."""
  params = models.init_mf_params(jax.random.PRNGKey(0))
  d = np.asarray(_compiled(_directions, params, jax.random.PRNGKey(1)))
  assert d.shape == (NUM_TASKS, NUM_STEPS, NUM_DIRECTIONS, task_lib.MF_DIM)
  assert not np.allclose(d[0, 0], d[1, 0])
  assert not np.allclose(d[0, 0], d[0, 1])


def test_x64_does_not_leak():
  assert jnp.ones(()).dtype == jnp.float32
