"""maml_jax meta-gradients agree with the PyTorch reference (benchmarks/torch_reference/).

Both sides get the same initial parameters, task data and Gaussian directions:
the directions are the ones maml_jax draws (``mj.task_keys`` and
``mj.gaussian_directions`` from the per-task keys of ``mj.meta_gradient``),
converted to numpy and fed to torch (benchmarks/agreement.py). Agreement is
checked per task (and once for the task mean of ``mj.meta_gradient``), for
every estimator, on sine regression and matrix factorization, in float32
(relative error <= 1e-4) and float64 (<= 1e-10).

ZO-MAML in float32 uses delta = 0.1 instead of 1e-2: its second difference
(l(w + delta u) + l(w - delta u) - 2 l(w)) / (2 delta^2) loses about
eps * l / delta^2 to cancellation, so at delta = 1e-2 two correct float32
implementations differ by ~1e-4 (measured 1.1e-4 on sine); float64 checks
delta = 1e-2 to 1e-10.

The jitted functions are compiled with XLA's backend optimizations off: the
same math, ~4x faster compiles, which keeps this module CI-sized on 2 cores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj

pytest.importorskip('torch')

from benchmarks import agreement  # pylint: disable=g-import-not-at-top
from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

NUM_TASKS = 3
NUM_STEPS = 3
NUM_DIRECTIONS = 5
DELTA = 1e-2
ZO_DELTA_FLOAT32 = 0.1
RTOL = {'float32': 1e-4, 'float64': 1e-10}


def test_the_reference_implements_every_registered_estimator():
  assert tr.ALGORITHMS == mj.ESTIMATORS


def _check(problem, algorithm, dtype, check_mean=False):
  name = jnp.dtype(dtype).name
  delta = ZO_DELTA_FLOAT32 if (algorithm, name) == ('zo_maml', 'float32') else DELTA
  res = agreement.compare(problem, algorithm, num_tasks=NUM_TASKS,
                          num_inner_steps=NUM_STEPS,
                          num_directions=NUM_DIRECTIONS, delta=delta,
                          dtype=dtype, check_mean=check_mean,
                          compiler_options=agreement.FAST_COMPILE)
  assert res['all_finite']
  assert res['torch_dtype_ok'], res['dtype']
  tol = RTOL[name]
  assert res['max_per_task'] <= tol, res
  if check_mean:
    assert res['mean'] <= tol, res


@pytest.mark.parametrize('algorithm', mj.ESTIMATORS)
@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_agreement_float32(problem, algorithm):
  # The task mean of mj.meta_gradient (eq. 7, its own key split) once.
  _check(problem, algorithm, jnp.float32,
         check_mean=(problem, algorithm) == ('sine', 'ggs_maml'))


@pytest.mark.parametrize('algorithm', mj.ESTIMATORS)
@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_agreement_float64(problem, algorithm):
  with jax.enable_x64(True):
    _check(problem, algorithm, jnp.float64)


@pytest.mark.parametrize('problem', tr.PROBLEMS)
def test_torch_func_matches_torch_loop(problem):
  """The vectorized torch.func reference (the faster one) equals the loop one."""
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    _, params, tasks = agreement.problem_setup(problem, NUM_TASKS,
                                               jax.random.PRNGKey(0), jnp.float64)
    params = jax.tree.map(np.asarray, params)
    tasks = jax.tree.map(np.asarray, tasks)
  directions = jax.tree.map(
      lambda p: rng.standard_normal((NUM_TASKS, NUM_STEPS, NUM_DIRECTIONS) + p.shape),
      params)
  for algorithm in mj.ESTIMATORS:
    out = [tr.meta_gradient(problem, algorithm, params, tasks, inner_lr=0.01,
                            num_inner_steps=NUM_STEPS,
                            num_directions=NUM_DIRECTIONS, delta=DELTA,
                            directions=directions, impl=impl)[1]
           for impl in tr.IMPLS]
    assert agreement.rel_err(out[1], out[0]) <= 1e-12, algorithm


def test_directions_are_fresh_per_task_and_step():
  """The directions fed to torch differ across tasks and steps (docs/design.md, 'Random directions and keys')."""
  params = jnp.zeros((20,))
  d = np.asarray(agreement.compiled_call(
      lambda p, k: agreement.meta_gradient_directions(p, k, NUM_TASKS, NUM_STEPS,
                                                      NUM_DIRECTIONS),
      params, jax.random.PRNGKey(1)))
  assert d.shape == (NUM_TASKS, NUM_STEPS, NUM_DIRECTIONS, 20)
  assert not np.allclose(d[0, 0], d[1, 0])
  assert not np.allclose(d[0, 0], d[0, 1])


def test_x64_does_not_leak():
  assert jnp.ones(()).dtype == jnp.float32


@pytest.mark.parametrize('algorithm', ['maml', 'fo_maml', 'ggs_maml'])
def test_convnet_agreement_float64(algorithm):
  """The few-shot conv net (mj.models.ConvNet, 'xla_vjp' convs, tasks
  batched with lax.map): same meta-gradient as the PyTorch loop (and TorchOpt
  for MAML / FO-MAML, when installed) in float64, tiny sizes (8 filters,
  2 tasks, 28x28 images, 2 blocks so the head sees 7x7x8 features: half the
  compile time of 4 blocks, and the flatten order is checked). Compiled with XLA's
  default options (with FAST_COMPILE, backend optimizations off, the
  meta-gradient of this net came out non-finite with the old pool below; it
  is finite now).

  GGS-MAML used to differ by a relative error of ~1 (issue 14). Not the
  HWIO/OIHW layout of the directions: the jitted maml_jax result differed by
  1.3 from the same function run op by op (``jax.disable_jit``), which agreed
  with PyTorch to 7e-15. The cause was the max-pool's gradient (``jnp.max``'s
  JVP marks the maximum by an equality test, and XLA's fused recomputation of
  the operand rounded differently, dropping windows). The pool,
  ``mj.nn.max_pool``, now routes the gradient with ``where``
  (benchmarks/investigations/repro_vmap_conv.py)."""
  from benchmarks import convnet  # pylint: disable=g-import-not-at-top
  hp = dict(num_tasks=2, ways=5, shots=1, query=2, filters=8, blocks=2,
            num_inner_steps=1, inner_lr=0.4, num_directions=2, delta=DELTA,
            meta_lr=1e-3)
  with jax.enable_x64(True):
    # The benchmarked configuration: conv_impl 'xla_vjp' (custom VJP, matmul
    # kernel gradient) in a lax.map (tests/experiments/test_convnet.py: every conv_impl
    # gives the same meta-gradient).
    loss_fn, params, tasks = convnet.setup(hp, conv_impl='xla_vjp', dtype=jnp.float64)
    est = convnet.estimator(algorithm, loss_fn, hp)
    key = jax.random.PRNGKey(3)
    mean_jax, aux = agreement.compiled_call(
        lambda p, t, k: mj.meta_gradient(est, p, t, k, task_batching='map'),
        params, tasks, key)
    directions = jax.tree.map(np.asarray, agreement.compiled_call(
        lambda p, k: agreement.meta_gradient_directions(p, k, 2, 1, 2),
        params, key, compiler_options=agreement.FAST_COMPILE))
  assert int(aux.num_nonfinite) == 0
  assert flat_dtype(mean_jax) == np.float64
  impls = ['loop']
  if convnet.torchopt_available() and algorithm in tr.TORCHOPT_ALGORITHMS:
    impls.append('torchopt')
  for impl in impls:
    mean_torch, _ = tr.meta_gradient(
        tr.CONVNET, algorithm, jax.tree.map(np.asarray, params),
        jax.tree.map(np.asarray, tasks), inner_lr=hp['inner_lr'],
        num_inner_steps=1, num_directions=2, delta=DELTA,
        directions=directions, impl=impl)
    assert agreement.rel_err(mean_jax, mean_torch) <= 1e-10, impl


def flat_dtype(tree):
  return agreement.flat(tree).dtype
