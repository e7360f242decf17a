"""The few-shot conv net of experiments/models.py (Finn et al. 2017, SPEC section 7).

The convolution implementations ('xla', 'matmul', 'xla_vjp') are the same math: same
loss, gradient and MAML meta-gradient in float64. The building blocks
(3x3 'SAME' conv, batch-statistics BatchNorm, 2x2 max-pool) are checked on
tiny hand-computed cases.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
from experiments import models


def _tasks(key, num_tasks, dtype, ways=3, shots=2, query=2, size=12):
  ks, kq = jax.random.split(key)

  def batch(k, per_class):
    return {'x': jax.random.normal(k, (num_tasks, ways * per_class, size, size, 1), dtype),
            'y': jnp.tile(jnp.repeat(jnp.arange(ways), per_class), (num_tasks, 1))}

  return mj.Task(batch(ks, shots), batch(kq, query))


def _net(conv_impl, ways=3):
  return models.ConvNet(ways, filters=4, blocks=2, conv_impl=conv_impl)


def _loss_grad_and_meta_gradient(conv_impl, task_batching):
  tasks = _tasks(jax.random.PRNGKey(1), 2, jnp.float64)
  params = models.init_convnet_params(jax.random.PRNGKey(0), _net('xla'),
                                      image_shape=(12, 12, 1), dtype=jnp.float64)
  support = jax.tree.map(lambda x: x[0], tasks.support)
  loss_fn = models.make_convnet_loss(_net(conv_impl))
  est = mj.maml(loss_fn, inner_lr=0.4, num_inner_steps=1)
  return jax.jit(lambda p, t, k: (
      jax.value_and_grad(loss_fn)(p, support),
      mj.meta_gradient(est, p, t, k, task_batching=task_batching)[0]))(
          params, tasks, jax.random.PRNGKey(2))


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-13),
               a, b)


def test_conv_impls_give_the_same_loss_gradient_and_meta_gradient():
  with jax.enable_x64(True):
    out = {impl: _loss_grad_and_meta_gradient(impl, 'map')
           for impl in models.CONV_IMPLS}
    out['matmul_vmap'] = _loss_grad_and_meta_gradient('matmul', 'vmap')
  assert jax.tree.leaves(out['xla'])[0].dtype == jnp.float64
  _assert_close(out['matmul'], out['xla'])
  _assert_close(out['matmul_vmap'], out['xla'])
  # The meta-gradient is not trivially zero.
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(out['xla'][1])) > 1e-3


def test_vmapped_xla_conv_meta_gradient():
  """vmap over tasks (grouped convolutions) gives map's meta-gradient.

  This failed (relative error 0.67) while ``max_pool_2x2`` was ``jnp.max``
  over a reshaped window: the JVP of a max reduction finds the maximum by an
  equality test between the operand and the result, and the compiled
  program recomputed the operand (BatchNorm + ReLU) in fusions that rounded
  differently, so some windows lost their gradient. Not a JAX batching bug:
  the same program run op by op (``jax.disable_jit``) was right, and the
  error moved with XLA's options (0.88 without YNNPACK fusions, NaN at
  ``xla_backend_optimization_level=0``). The ``where``-based pool routes the
  gradient by its own comparison. Standalone: benchmarks/repro_vmap_conv.py.
  """
  with jax.enable_x64(True):
    _assert_close(_loss_grad_and_meta_gradient('xla', 'vmap'),
                  _loss_grad_and_meta_gradient('xla', 'map'))


def test_canonical_conv_matches_lax_to_second_order():
  """The custom VJP of ``canonical_conv`` (conv_impl 'xla_vjp') is lax's derivative.

  Odd sizes, a 3x2 kernel and asymmetric padding, float64; gradients and
  the gradient of a gradient (what MAML differentiates).
  """
  with jax.enable_x64(True):
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3), jnp.float64)
    kernel = jax.random.normal(kk, (3, 2, 3, 4), jnp.float64)
    padding = ((1, 2), (0, 1))

    def lax_conv(x, k):
      return jax.lax.conv_general_dilated(x, k, (1, 1), padding,
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    def ours(x, k):
      return models.canonical_conv(x, k, padding)

    out = lax_conv(x, kernel)
    g = jax.random.normal(kg, out.shape, jnp.float64)
    np.testing.assert_allclose(ours(x, kernel), out, rtol=1e-12)

    def loss(conv):
      return lambda x, k: jnp.sum(jnp.sin(conv(x, k)) * g)

    def second(conv):
      grad = jax.grad(loss(conv), argnums=(0, 1))
      return jax.grad(lambda x, k: sum(jnp.sum(jnp.cos(t)) for t in grad(x, k)),
                      argnums=(0, 1))

    for fn in (lambda c: jax.grad(loss(c), argnums=(0, 1)), second):
      for a, b in zip(jax.jit(fn(ours))(x, kernel), jax.jit(fn(lax_conv))(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_params_do_not_depend_on_conv_impl():
  shapes = [jax.tree.map(jnp.shape, jax.eval_shape(
      lambda k, impl=impl: models.init_convnet_params(
          k, models.ConvNet(5, conv_impl=impl)), jax.random.PRNGKey(0)))
            for impl in models.CONV_IMPLS]
  assert shapes[0] == shapes[1]
  p = shapes[0]['params']
  # Finn et al.: 4 blocks of 64 3x3 filters, no conv bias (BatchNorm cancels
  # it), 28x28 pools to 1x1, linear 5-way head.
  assert p['block_0'] == {'kernel': (3, 3, 1, 64), 'scale': (64,), 'offset': (64,)}
  assert p['block_3']['kernel'] == (3, 3, 64, 64)
  assert p['head'] == {'kernel': (64, 5), 'bias': (5,)}


@pytest.mark.parametrize('conv_impl', models.CONV_IMPLS)
def test_conv3x3_hand_checked(conv_impl):
  # All-ones image and kernel: each output counts the in-image 3x3 neighbours
  # times C_in (4 at corners, 6 on edges, 9 inside).
  x = jnp.ones((1, 4, 4, 2))
  kernel = jnp.ones((3, 3, 2, 1))
  out = models.conv3x3(x, kernel, conv_impl)[0, :, :, 0]
  counts = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
  np.testing.assert_allclose(out, 2 * counts)
  # One-hot kernel at (dy, dx) = (0, 2): out[i, j] = x[i - 1, j + 1] (zero outside).
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 2, 0, 0].set(1.0)
  out = models.conv3x3(x, kernel, conv_impl)[0, :, :, 0]
  want = np.zeros((4, 4))
  want[1:, :3] = np.arange(16.0).reshape(4, 4)[:3, 1:]
  np.testing.assert_allclose(out, want)


def test_max_pool_hand_checked():
  x = jnp.array([[1., 5., 2., 0., 9.],
                 [3., 4., 7., 8., 9.],
                 [0., 1., 6., 2., 9.],
                 [2., 0., 3., 1., 9.],
                 [9., 9., 9., 9., 9.]]).reshape(1, 5, 5, 1)
  out = models.max_pool_2x2(x)[0, :, :, 0]
  # 5x5 floors to 2x2 (last row and column dropped, as PyTorch's max_pool2d).
  np.testing.assert_allclose(out, [[5., 8.], [2., 6.]])
  # Ties: the whole gradient goes to the first maximum in row-major order
  # (PyTorch's rule), not shared.
  x = jnp.array([[1., 3.], [3., 3.]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: jnp.sum(models.max_pool_2x2(x)))(x)[0, :, :, 0]
  np.testing.assert_allclose(grad, [[0., 1.], [0., 0.]])


def test_batch_norm_uses_this_batch_statistics():
  # Channel 0 holds 1, 3 (mean 2, biased var 1); channel 1 holds 5, 5 (var 0).
  x = jnp.array([[1., 5.], [3., 5.]]).reshape(2, 1, 1, 2)
  out = models.batch_norm(x, jnp.array([2., 1.]), jnp.array([0.5, -1.]), eps=0.0)
  np.testing.assert_allclose(out[:, 0, 0, 0], [-1.5, 2.5])
  out = models.batch_norm(x, jnp.ones(2), jnp.zeros(2), eps=1.0)
  np.testing.assert_allclose(out[:, 0, 0, 1], [0., 0.])
  np.testing.assert_allclose(out[:, 0, 0, 0], [-1 / np.sqrt(2), 1 / np.sqrt(2)],
                             rtol=1e-6)


def test_loss_with_accuracy_aux_runs_in_an_estimator():
  net = _net(None)
  params = models.init_convnet_params(jax.random.PRNGKey(0), net,
                                      image_shape=(12, 12, 1))
  tasks = _tasks(jax.random.PRNGKey(1), 2, jnp.float32)
  query = jax.tree.map(lambda x: x[0], tasks.query)
  loss, aux = models.make_convnet_loss(net, has_aux=True)(params, query)
  np.testing.assert_allclose(loss, models.make_convnet_loss(net)(params, query))
  assert 0.0 <= float(aux['accuracy']) <= 1.0
  est = mj.maml(models.make_convnet_loss(net, has_aux=True), inner_lr=0.4,
                num_inner_steps=1, has_aux=True)
  _, est_aux = jax.jit(est)(params, jax.tree.map(lambda x: x[0], tasks),
                            jax.random.PRNGKey(0))
  assert est_aux.query_aux_after['accuracy'].shape == ()


def test_default_conv_impl():
  assert models.default_conv_impl('cpu') == 'xla_vjp'
  assert models.default_conv_impl('gpu') == 'xla'
  assert models.default_conv_impl('tpu') == 'xla'
  with pytest.raises(ValueError, match='conv_impl'):
    models.conv3x3(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), 'fft')
