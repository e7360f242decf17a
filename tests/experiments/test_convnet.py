"""The experiments' conv_impl choices for the few-shot conv net (mj.models.ConvNet).

The convolution implementations ('xla', 'matmul', 'xla_vjp') of
experiments/models.py are the same math: same loss, gradient and MAML
meta-gradient in float64, on tiny hand-computed cases too. The net itself,
its BatchNorm and its pool are tested with the library (tests/lib/test_models.py,
tests/lib/test_nn.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
from experiments import models
import toy


def _net(conv_impl, ways=3):
  return models.ConvNet(ways, filters=4, blocks=2, conv_impl=conv_impl)


@functools.cache  # 'xla' with 'map' is the reference of two tests: compiled once
def _loss_grad_and_meta_gradient(conv_impl, task_batching):
  tasks = toy.image_tasks(jax.random.PRNGKey(1), 2, jnp.float64)
  params = mj.models.init_convnet_params(jax.random.PRNGKey(0), _net('xla'),
                                         image_shape=(12, 12, 1), dtype=jnp.float64)
  support = jax.tree.map(lambda x: x[0], tasks.support)
  loss_fn = mj.models.make_convnet_loss(_net(conv_impl))
  est = mj.maml(loss_fn, inner_lr=0.4, num_inner_steps=1)
  return jax.jit(lambda p, t, k: (
      jax.value_and_grad(loss_fn)(p, support),
      mj.meta_gradient(est, p, t, k, task_batching=task_batching)[0]))(
          params, tasks, jax.random.PRNGKey(2))


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-13),
               a, b)


@pytest.mark.slow
def test_conv_impls_give_the_same_loss_gradient_and_meta_gradient():
  with jax.enable_x64(True):
    # 'xla_vjp' (mj.nn.conv_general_dilated) against lax: tests/lib/test_models.py.
    out = {impl: _loss_grad_and_meta_gradient(impl, 'map')
           for impl in ('xla', 'matmul')}
    out['matmul_vmap'] = _loss_grad_and_meta_gradient('matmul', 'vmap')
  assert jax.tree.leaves(out['xla'])[0].dtype == jnp.float64
  _assert_close(out['matmul'], out['xla'])
  _assert_close(out['matmul_vmap'], out['xla'])
  # The meta-gradient is not trivially zero.
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(out['xla'][1])) > 1e-3


@pytest.mark.slow
def test_vmapped_xla_conv_meta_gradient():
  """vmap over tasks (grouped convolutions) gives map's meta-gradient.

  This failed (relative error 0.67) while the conv net's pool was ``jnp.max``
  over a reshaped window: the JVP of a max reduction finds the maximum by an
  equality test between the operand and the result, and the compiled
  program recomputed the operand (BatchNorm + ReLU) in fusions that rounded
  differently, so some windows lost their gradient. Not a JAX batching bug:
  the same program run op by op (``jax.disable_jit``) was right, and the
  error moved with XLA's options (0.88 without YNNPACK fusions, NaN at
  ``xla_backend_optimization_level=0``). The ``where``-based ``mj.nn.max_pool`` routes the
  gradient by its own comparison. Standalone: benchmarks/investigations/repro_vmap_conv.py.
  """
  with jax.enable_x64(True):
    _assert_close(_loss_grad_and_meta_gradient('xla', 'vmap'),
                  _loss_grad_and_meta_gradient('xla', 'map'))


def test_params_do_not_depend_on_conv_impl():
  shapes = [jax.tree.map(jnp.shape, jax.eval_shape(
      lambda k, impl=impl: mj.models.init_convnet_params(
          k, models.ConvNet(5, conv_impl=impl)), jax.random.PRNGKey(0)))
            for impl in models.CONV_IMPLS + (None,)]
  assert all(s == shapes[0] for s in shapes)


@pytest.mark.parametrize('conv_impl', models.CONV_IMPLS)
def test_conv_op_hand_checked(conv_impl):
  conv = lambda x, k: models.conv_op(conv_impl)(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # All-ones image and kernel: each output counts the in-image 3x3 neighbours
  # times C_in (4 at corners, 6 on edges, 9 inside).
  x = jnp.ones((1, 4, 4, 2))
  kernel = jnp.ones((3, 3, 2, 1))
  out = conv(x, kernel)[0, :, :, 0]
  counts = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
  np.testing.assert_allclose(out, 2 * counts)
  # One-hot kernel at (dy, dx) = (0, 2): out[i, j] = x[i - 1, j + 1] (zero outside).
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 2, 0, 0].set(1.0)
  out = conv(x, kernel)[0, :, :, 0]
  want = np.zeros((4, 4))
  want[1:, :3] = np.arange(16.0).reshape(4, 4)[:3, 1:]
  np.testing.assert_allclose(out, want)


def test_default_conv_impl():
  assert models.default_conv_impl('cpu') == 'xla_vjp'
  assert models.default_conv_impl('gpu') == 'xla'
  assert models.default_conv_impl('tpu') == 'xla'
  assert models.conv_op(None) is models.conv_op('xla_vjp') is mj.nn.conv_general_dilated
  with pytest.raises(ValueError, match='conv_impl'):
    models.conv_op('fft')
  with pytest.raises(ValueError, match="conv_impl='matmul'"):
    models.matmul_conv(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), (2, 2),
                       'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
