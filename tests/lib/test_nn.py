"""maml_jax.nn: the conv op against lax to second order, max_pool, task_batching='auto'."""

import functools
import warnings

from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maml_jax as mj

NHWC = ('NHWC', 'HWIO', 'NHWC')

# (input shape, kernel shape, strides, padding, lhs dilation, rhs dilation,
#  feature groups, dimension numbers): every case the op claims to cover.
CASES = {
    'same_3x3': ((2, 7, 8, 3), (3, 3, 3, 4), (1, 1), 'SAME', None, None, 1, NHWC),
    'valid_strided_odd_kernel': ((2, 7, 8, 3), (3, 2, 3, 4), (2, 1), 'VALID',
                                 None, None, 1, NHWC),
    'dilated_grouped': ((2, 9, 8, 4), (3, 3, 2, 6), (2, 2), 'SAME', None,
                        (2, 1), 2, NHWC),
    'explicit_negative_padding_lhs_dilation': (
        (2, 5, 6, 3), (2, 3, 3, 4), (1, 2), ((1, 2), (0, -1)), (2, 1), None,
        1, NHWC),
    'lax_default_nchw_oihw': ((2, 3, 9, 8), (4, 3, 3, 3), (2, 1), 'SAME',
                              None, None, 1, None),
    'depthwise': ((2, 8, 8, 6), (3, 3, 1, 6), (1, 1), 'SAME', None, None, 6,
                  NHWC),
    'one_d': ((2, 9, 3), (3, 3, 4), (2,), 'SAME', None, None, 1,
              ('NWC', 'WIO', 'NWC')),
    'three_d': ((1, 5, 6, 4, 2), (2, 3, 2, 2, 4), (1, 2, 1), 'SAME', None,
                None, 1, ('NDHWC', 'DHWIO', 'NDHWC')),
}


def _conv_case(name):
  x_shape, k_shape, strides, padding, lhs_d, rhs_d, groups, dn = CASES[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape))
  k = jnp.asarray(rng.normal(size=k_shape))
  kwargs = dict(lhs_dilation=lhs_d, rhs_dilation=rhs_d, dimension_numbers=dn,
                feature_group_count=groups)

  def make_loss(conv):
    def loss(x, k):
      out = conv(x, k, strides, padding, **kwargs)
      return jnp.sum(jnp.sin(out) * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
    return loss

  return x, k, make_loss


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


class ConvOpTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(n, n) for n in CASES])
  def test_matches_lax_to_second_order(self, name):
    x, k, make_loss = _conv_case(name)
    vx, vk = jnp.cos(x), jnp.sin(k)

    @functools.partial(jax.jit, static_argnums=4)
    def orders(x, k, vx, vk, conv_is_ours):
      # Value, gradient and, second order, H v for v = (vx, vk) (reverse
      # over reverse), of the loss on one op or the other (one compile each).
      loss = make_loss(mj.nn.conv_general_dilated if conv_is_ours
                       else jax.lax.conv_general_dilated)
      g = jax.grad(loss, (0, 1))
      hv = jax.grad(lambda a, b: sum(jnp.vdot(u, v) for u, v in
                                     zip(g(a, b), (vx, vk))), (0, 1))(x, k)
      return loss(x, k), g(x, k), hv

    value, grads, hv = orders(x, k, vx, vk, True)
    ref_value, ref_grads, ref_hv = orders(x, k, vx, vk, False)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for a, b in zip(grads, ref_grads):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(hv, ref_hv):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)

  def test_backward_convolutions_are_canonical(self):
    x, k, make_loss = _conv_case('valid_strided_odd_kernel')
    loss = make_loss(mj.nn.conv_general_dilated)
    second = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(
        jax.grad(loss, (0, 1))(a, b)[1] ** 2), (0, 1)))(x, k)
    convs = list(mj._src.meta._convolutions(second.jaxpr))
    assert len(convs) >= 3  # forward, input gradient, their derivatives
    assert all(mj.nn.is_canonical(e.params['dimension_numbers']) for e in convs)
    plain = jax.make_jaxpr(jax.grad(make_loss(jax.lax.conv_general_dilated),
                                    (0, 1)))(x, k)
    assert not all(mj.nn.is_canonical(e.params['dimension_numbers'])
                   for e in mj._src.meta._convolutions(plain.jaxpr))

  def test_uncovered_arguments_are_lax(self):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 6, 6, 2)))
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)))
    kwargs = dict(dimension_numbers=NHWC, batch_group_count=2)
    out = mj.nn.conv_general_dilated(x, k, (1, 1), 'SAME', **kwargs)
    np.testing.assert_array_equal(
        out, jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', **kwargs))
    jaxpr = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(
        mj.nn.conv_general_dilated(a, k, (1, 1), 'SAME', **kwargs))))(x)
    assert 'custom_vjp' not in str(jaxpr)

  def test_flax_drop_in(self):
    class Net(nn.Module):
      conv: object = jax.lax.conv_general_dilated

      @nn.compact
      def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2), conv_general_dilated=self.conv)(x)
        x = nn.Conv(4, (3, 3), feature_group_count=2, padding='VALID',
                    kernel_dilation=(2, 1), conv_general_dilated=self.conv)(x)
        return jnp.sum(jnp.tanh(x))

    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 11, 10, 3)))
    ours, ref = Net(mj.nn.conv_general_dilated), Net()
    params = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(
        ours.init(jax.random.PRNGKey(0), x))
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x),
                               rtol=1e-12)
    for a, b in zip(jax.tree.leaves(jax.grad(ours.apply)(params, x)),
                    jax.tree.leaves(jax.grad(ref.apply)(params, x))):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

  def test_forward_mode_through_exact_hvp(self):
    x, k, make_loss = _conv_case('same_3x3')
    loss = lambda k_, batch: make_loss(mj.nn.conv_general_dilated)(batch, k_)
    ref = lambda k_, batch: make_loss(jax.lax.conv_general_dilated)(batch, k_)
    v = jnp.sin(k)
    with pytest.raises(TypeError, match='custom_vjp'):
      mj.exact_hvp(loss, mode='forward')(k, x, v, None)
    expected = mj.exact_hvp(ref, mode='forward')(k, x, v, None)
    for mode in ('auto', 'reverse'):
      np.testing.assert_allclose(mj.exact_hvp(loss, mode=mode)(k, x, v, None),
                                 expected, rtol=1e-10)
    with pytest.raises(ValueError, match='mode'):
      mj.exact_hvp(loss, mode='sideways')


def _first_max_pool_reference(x, window, strides):
  """numpy: max over each window and the gradient routed to its first maximum."""
  b, h, w, c = x.shape
  oh, ow = (h - window[0]) // strides[0] + 1, (w - window[1]) // strides[1] + 1
  out = np.zeros((b, oh, ow, c))
  grad = np.zeros_like(x)
  for n, i, j, ch in np.ndindex(b, oh, ow, c):
    win = x[n, i * strides[0]:i * strides[0] + window[0],
            j * strides[1]:j * strides[1] + window[1], ch]
    flat = int(np.argmax(win))  # numpy: the first maximum, row-major
    out[n, i, j, ch] = win.flat[flat]
    grad[n, i * strides[0] + flat // window[1],
         j * strides[1] + flat % window[1], ch] += 1.0
  return out, grad


class MaxPoolTest(parameterized.TestCase):

  @parameterized.parameters(((2, 2), None, (2, 7, 9, 3)),
                            ((3, 2), (2, 1), (1, 8, 7, 2)))
  def test_against_reference_with_ties(self, window, strides, shape):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=shape).astype(np.float64)  # many ties
    out, grad = _first_max_pool_reference(x, window, strides or window)
    np.testing.assert_array_equal(mj.nn.max_pool(x, window, strides), out)
    np.testing.assert_array_equal(
        jax.grad(lambda a: jnp.sum(mj.nn.max_pool(a, window, strides)))(x),
        grad)

  def test_same_padding_matches_flax(self):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 7, 5, 3)))
    for padding in ('SAME', ((1, 0), (0, 2))):
      np.testing.assert_array_equal(
          mj.nn.max_pool(x, (2, 3), (2, 2), padding),
          nn.max_pool(x, (2, 3), (2, 2), padding))

  def test_maml_meta_gradient_jit_vs_op_by_op(self):
    """Second order through the pool: the gradient survives XLA fusion."""

    def loss(w, batch):
      h = mj.nn.conv_general_dilated(batch['x'], w['k'], (1, 1), 'SAME',
                                     dimension_numbers=NHWC)
      h = (h - jnp.mean(h, (0, 1, 2))) * jax.lax.rsqrt(jnp.var(h, (0, 1, 2)) + 1e-5)
      h = mj.nn.max_pool(jax.nn.relu(h), (2, 2))
      logits = h.reshape(h.shape[0], -1) @ w['head']
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['y']).mean()

    rng = np.random.default_rng(5)
    w = {'k': jnp.asarray(rng.normal(size=(3, 3, 1, 2)) * 0.5),
         'head': jnp.asarray(rng.normal(size=(2 * 2 * 2, 3)) * 0.1)}
    batch = {'x': jnp.asarray(rng.normal(size=(3, 4, 4, 1))),
             'y': jnp.arange(3)}
    task = mj.Task(support=batch, query=batch)
    est = mj.maml(loss, inner_lr=0.5, num_inner_steps=1)
    key = jax.random.PRNGKey(0)
    with jax.disable_jit():
      eager, _ = est(w, task, key)
    jitted, _ = jax.jit(est)(w, task, key)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
      np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


class AutoTaskBatchingTest(parameterized.TestCase):

  def _tasks(self, n=2):
    rng = np.random.default_rng(6)
    batch = {'x': jnp.asarray(rng.normal(size=(n, 4, 6, 6, 1))),
             'y': jnp.asarray(rng.integers(0, 2, size=(n, 4)))}
    return mj.Task(support=batch, query=batch)

  def _conv_loss(self, conv):
    def loss(w, batch):
      h = conv(batch['x'], w['k'], (1, 1), 'SAME', dimension_numbers=NHWC)
      logits = jnp.mean(h, (1, 2)) @ w['head']
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['y']).mean()
    return loss

  def _params(self):
    rng = np.random.default_rng(7)
    return {'k': jnp.asarray(rng.normal(size=(3, 3, 1, 3))),
            'head': jnp.asarray(rng.normal(size=(3, 2)))}

  def test_mlp_gets_vmap(self):
    loss = lambda w, b: jnp.mean((jnp.tanh(b['x'].reshape(4, -1) @ w) - 1.) ** 2)
    est = mj.maml(loss, inner_lr=0.1, num_inner_steps=1)
    w = jnp.ones((36, 2)) * 0.01
    assert mj.choose_task_batching(est, w, self._tasks(),
                                   jax.random.PRNGKey(0)) == 'vmap'

  def test_library_conv_gets_map_without_warning(self):
    est = mj.maml(self._conv_loss(mj.nn.conv_general_dilated), inner_lr=0.1,
                  num_inner_steps=1)
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      choice = mj.choose_task_batching(est, self._params(), self._tasks(),
                                       jax.random.PRNGKey(0))
    assert choice == 'map'
    assert mj.choose_task_batching(est, self._params(), self._tasks(),
                                   jax.random.PRNGKey(0), backend='gpu') == 'vmap'

  def test_plain_lax_conv_warns_with_the_fix(self):
    est = mj.maml(self._conv_loss(jax.lax.conv_general_dilated), inner_lr=0.1,
                  num_inner_steps=1)
    with pytest.warns(UserWarning, match='maml_jax.nn.conv_general_dilated'):
      choice = mj.choose_task_batching(est, self._params(), self._tasks(),
                                       jax.random.PRNGKey(0))
    assert choice == 'map'

  def test_auto_default_agrees_with_every_explicit_choice(self):
    est = mj.maml(self._conv_loss(mj.nn.conv_general_dilated), inner_lr=0.1,
                  num_inner_steps=1)
    params, tasks, key = self._params(), self._tasks(), jax.random.PRNGKey(1)
    grad = functools.partial(mj.meta_gradient, est)
    auto, _ = jax.jit(grad)(params, tasks, key)
    for batching in ('vmap', 'map'):
      other, _ = jax.jit(functools.partial(grad, task_batching=batching))(
          params, tasks, key)
      for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(other)):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    # The train step and the fused loop default to 'auto' too.
    opt = optax.sgd(0.1)
    state = mj.init_train_state(params, opt)
    stepped, _ = mj.make_train_step(est, opt)(state, tasks, key)
    assert np.all(np.isfinite(jax.tree.leaves(stepped.params)[0]))

  def test_bad_task_batching_is_named(self):
    with pytest.raises(ValueError, match='task_batching'):
      mj.check_task_batching('sometimes')
    assert mj.check_task_batching('auto') == 'auto'
