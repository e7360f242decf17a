"""maml_jax.models: the sine MLP and Finn et al.'s few-shot conv net."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
import toy

KEY = jax.random.PRNGKey(0)


def test_sine_mlp_shapes_and_loss():
  params = mj.models.init_sine_params(KEY)
  sizes = sorted(p.size for p in jax.tree.leaves(params))
  assert sum(sizes) == 1 * 40 + 40 + 40 * 40 + 40 + 40 * 1 + 1
  batch = {'x': jnp.linspace(-1, 1, 7)[:, None], 'y': jnp.ones((7, 1))}
  pred = mj.models.SineMLP().apply(params, batch['x'])
  np.testing.assert_allclose(mj.models.sine_loss(params, batch),
                             jnp.mean((pred - 1.0) ** 2), rtol=1e-6)
  wide = mj.models.SineMLP(hidden=(8, 8, 8))
  wide_params = mj.models.init_sine_params(KEY, wide, dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(wide_params)} == {jnp.dtype(jnp.bfloat16)}
  assert mj.models.make_mse_loss(wide)(wide_params, batch).shape == ()


def _shapes(model, image_shape):
  params = jax.eval_shape(
      lambda k: mj.models.init_convnet_params(k, model, image_shape), KEY)
  logits = jax.eval_shape(model.apply, params, jnp.zeros((2,) + image_shape))
  return jax.tree.map(lambda x: x.shape, params)['params'], logits.shape


def test_convnet_parameters_for_omniglot_and_miniimagenet():
  # Omniglot, Finn et al.: 4 blocks of 64 3x3 filters, no conv bias
  # (BatchNorm cancels it), 28x28 pools to 1x1, linear 5-way head.
  p, logits = _shapes(mj.models.ConvNet(5), (28, 28, 1))
  assert p['block_0'] == {'kernel': (3, 3, 1, 64), 'scale': (64,), 'offset': (64,)}
  assert p['block_3']['kernel'] == (3, 3, 64, 64)
  assert p['head'] == {'kernel': (64, 5), 'bias': (5,)}
  assert logits == (2, 5)
  # miniImageNet, 32 filters: 84 -> 42 -> 21 -> 10 (odd sizes floor) -> 5.
  p, logits = _shapes(mj.models.ConvNet(5, filters=32), (84, 84, 3))
  assert p['block_0']['kernel'] == (3, 3, 3, 32)
  assert p['head']['kernel'] == (5 * 5 * 32, 5)
  assert logits == (2, 5)


def test_convnet_default_conv_is_the_library_op_with_lax_math():
  """conv=mj.nn.conv_general_dilated (default) and lax's: same loss, gradient, MAML."""
  assert mj.models.ConvNet(5).conv is mj.nn.conv_general_dilated
  with jax.enable_x64(True):
    tasks = toy.image_tasks(jax.random.PRNGKey(1), 2, jnp.float64)
    support = jax.tree.map(lambda x: x[0], tasks.support)
    out = []
    for conv in (mj.nn.conv_general_dilated, jax.lax.conv_general_dilated):
      model = mj.models.ConvNet(3, filters=4, blocks=2, conv=conv)
      params = mj.models.init_convnet_params(KEY, model, (12, 12, 1), jnp.float64)
      loss_fn = mj.models.make_convnet_loss(model)
      est = mj.maml(loss_fn, inner_lr=0.4, num_inner_steps=1)
      out.append(jax.jit(lambda p, t, k, loss_fn=loss_fn, est=est: (
          jax.value_and_grad(loss_fn)(p, support),
          mj.meta_gradient(est, p, t, k, task_batching='map')[0]))(
              params, tasks, jax.random.PRNGKey(2)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
               out[0], out[1])
  assert jax.tree.leaves(out[0])[0].dtype == np.float64
  # The meta-gradient is not trivially zero.
  assert max(np.abs(g).max() for g in jax.tree.leaves(out[0][1])) > 1e-3


def test_batch_norm_uses_this_batch_statistics():
  # Channel 0 holds 1, 3 (mean 2, biased var 1); channel 1 holds 5, 5 (var 0).
  x = jnp.array([[1., 5.], [3., 5.]]).reshape(2, 1, 1, 2)
  out = mj.models.batch_norm(x, jnp.array([2., 1.]), jnp.array([0.5, -1.]), eps=0.0)
  np.testing.assert_allclose(out[:, 0, 0, 0], [-1.5, 2.5])
  out = mj.models.batch_norm(x, jnp.ones(2), jnp.zeros(2), eps=1.0)
  np.testing.assert_allclose(out[:, 0, 0, 1], [0., 0.])
  np.testing.assert_allclose(out[:, 0, 0, 0], [-1 / np.sqrt(2), 1 / np.sqrt(2)],
                             rtol=1e-6)
  assert mj.models.BATCH_NORM_EPS == 1e-5  # PyTorch's default


@pytest.mark.slow
def test_convnet_loss_with_accuracy_aux_runs_in_an_estimator():
  net = mj.models.ConvNet(3, filters=4, blocks=2)
  params = mj.models.init_convnet_params(KEY, net, image_shape=(12, 12, 1))
  tasks = toy.image_tasks(jax.random.PRNGKey(1), 2, jnp.float32)
  query = jax.tree.map(lambda x: x[0], tasks.query)
  loss, aux = mj.models.make_convnet_loss(net, has_aux=True)(params, query)
  np.testing.assert_allclose(loss, mj.models.make_convnet_loss(net)(params, query))
  assert 0.0 <= float(aux['accuracy']) <= 1.0
  est = mj.maml(mj.models.make_convnet_loss(net, has_aux=True), inner_lr=0.4,
                num_inner_steps=1, has_aux=True)
  _, est_aux = jax.jit(est)(params, jax.tree.map(lambda x: x[0], tasks),
                            jax.random.PRNGKey(0))
  assert est_aux.query_aux_after['accuracy'].shape == ()


def test_mf_loss_is_the_frobenius_matrix_loss():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  w = jax.random.normal(k1, (20,))
  z = jax.random.normal(k2, (3, 20))
  explicit = np.mean([0.25 * np.sum((np.outer(w, w) - np.outer(zi, zi)) ** 2)
                      for zi in np.asarray(z)])
  np.testing.assert_allclose(mj.models.mf_loss(w, {'z': z}), explicit, rtol=1e-5)
  # Not the authors' code's (1/4)(|w|^2 - |z|^2)^2, a different function.
  bug = 0.25 * (jnp.dot(w, w) - jnp.dot(z[0], z[0])) ** 2
  assert not np.isclose(mj.models.mf_loss(w, {'z': z[:1]}), bug, rtol=1e-3)
  assert mj.models.init_mf_params(k1).shape == (mj.models.MF_DIM,)

