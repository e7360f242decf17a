"""Learned inner step sizes (docs/design.md, 'Step sizes') against autodiff, closed forms and
Monte Carlo, for every form of inner_lr and every estimator path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maml_jax as mj
import quadratic as q

N = 3
KEY = jax.random.PRNGKey(0)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def loss(params, batch):
  """A two-leaf nonlinear model, so Hessians change along the inner loop."""
  pred = jnp.tanh(batch['x'] @ params['w'] + params['b'])
  return jnp.mean((pred - batch['y']) ** 2)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2))),
            'b': jnp.asarray(rng.normal(size=(2,)))}

  def batch():
    return {'x': jnp.asarray(rng.normal(size=(5, 3))),
            'y': jnp.asarray(rng.normal(size=(5, 2)))}

  return params, mj.Task(support=batch(), query=batch())


def _step_sizes(params, kind, per_step, seed=1):
  """Distinct positive values, so a mix-up of entries or steps shows."""
  base = mj.init_inner_lr(params, 0.3, kind,
                          num_inner_steps=N if per_step else None)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: a * jnp.asarray(rng.uniform(0.5, 1.5, size=a.shape)), base)


def _alpha_at(inner_lr, kind, per_step, j, params):
  """alpha_j broadcast to params (the reference's own reading of the forms)."""
  a = jax.tree.map(lambda x: x[j], inner_lr) if per_step else inner_lr
  if kind == 'scalar':
    return jax.tree.map(lambda p: a * jnp.ones_like(p), params)
  return jax.tree.map(lambda x, p: x * jnp.ones_like(p), a, params)


def _unrolled_query_loss(params, inner_lr, task, kind, per_step,
                         num_steps=N):
  w = params
  for j in range(num_steps):
    g = jax.grad(loss)(w, task.support)
    a = _alpha_at(inner_lr, kind, per_step, j, params)
    w = jax.tree.map(lambda x, s, y: x - s * y, w, a, g)
  return loss(w, task.query)


FORMS = [(kind, per_step) for kind in ('scalar', 'per_layer', 'per_parameter')
         for per_step in (False, True)]
PATHS = [
    ('maml', dict(backprop='autodiff')),
    ('maml', dict(backprop='product')),
    ('maml', dict(backprop='product', remat=True)),
    ('maml', dict(backprop='autodiff', remat=2)),
]


@pytest.mark.parametrize('kind,per_step', FORMS)
def test_maml_step_size_gradient_equals_unrolled_autodiff(kind, per_step):
  params, task = _problem()
  inner_lr = _step_sizes(params, kind, per_step)
  expected = jax.grad(_unrolled_query_loss, argnums=(0, 1))(
      params, inner_lr, task, kind, per_step)
  for name, kwargs in PATHS:
    est = jax.jit(mj.make_estimator(name, loss, num_inner_steps=N, **kwargs))
    grads, aux = est(mj.LearnedInnerLR(params, inner_lr), task, KEY)
    assert isinstance(grads, mj.LearnedInnerLR), kwargs
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11,
                                                    atol=1e-13)
    jax.tree.map(close, grads.params, expected[0])
    jax.tree.map(close, grads.inner_lr, expected[1])
    assert jax.tree.structure(grads.inner_lr) == jax.tree.structure(inner_lr)
    np.testing.assert_allclose(
        aux.query_loss_after,
        _unrolled_query_loss(params, inner_lr, task, kind, per_step),
        rtol=1e-12)
    assert bool(aux.finite)


@pytest.mark.parametrize('kind,per_step', [('scalar', True),
                                           ('per_parameter', False)])
def test_fo_maml_step_size_gradient_is_first_order_closed_form(kind, per_step):
  """FO-MAML: v_{j+1} = grad l(w_N; T) for every j, dL/d alpha_j = -g_j ⊙ v."""
  params, task = _problem(2)
  inner_lr = _step_sizes(params, kind, per_step)
  ws = [params]
  for j in range(N):
    g = jax.grad(loss)(ws[-1], task.support)
    a = _alpha_at(inner_lr, kind, per_step, j, params)
    ws.append(jax.tree.map(lambda x, s, y: x - s * y, ws[-1], a, g))
  v = jax.grad(loss)(ws[-1], task.query)
  per_step_grads = [jax.tree.map(lambda g, x: -g * x,
                                 jax.grad(loss)(ws[j], task.support), v)
                    for j in range(N)]
  if kind == 'scalar':
    per_step_grads = [sum(jnp.sum(x) for x in jax.tree.leaves(t))
                      for t in per_step_grads]
  expected_lr = (jnp.stack(per_step_grads) if per_step else
                 jax.tree.map(lambda *xs: sum(xs), *per_step_grads))
  grads, _ = jax.jit(mj.fo_maml(loss, num_inner_steps=N))(
      mj.LearnedInnerLR(params, inner_lr), task, KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
               grads.params, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11,
                                                       atol=1e-14),
               grads.inner_lr, expected_lr)


def _quadratic(seed, d=3):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=d))
  task = mj.Task(support=q.as_jax(q.batch(rng, d)), query=q.as_jax(q.batch(rng, d)))
  return w, task


def _quadratic_reference(w, task, inner_lr, hessian_shift=0.0):
  """(dL/dw, dL/dalpha) for per-parameter, per-step alpha [N, d] on a quadratic.

  ``hessian_shift`` adds s I to the Hessian used in the backward recursion
  (ZO's expectation A + tr(A)/2 I, Prop. 5); the forward pass is exact.
  """
  a_s, c_s = task.support['A'], task.support['c']
  a_q, c_q = task.query['A'], task.query['c']
  ws, gs = [w], []
  for j in range(N):
    gs.append(a_s @ (ws[-1] - c_s))
    ws.append(ws[-1] - inner_lr[j] * gs[-1])
  v = a_q @ (ws[-1] - c_q)
  h = a_s + hessian_shift * jnp.eye(w.shape[0])
  lr_grads = [None] * N
  for j in reversed(range(N)):
    lr_grads[j] = -gs[j] * v
    v = v - h @ (inner_lr[j] * v)
  return v, jnp.stack(lr_grads)


def _mc(est, meta, task, draws, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), draws)
  grads, _ = jax.jit(jax.vmap(est, in_axes=(None, None, 0)))(meta, task, keys)
  return np.concatenate([np.asarray(grads.params),
                         np.asarray(grads.inner_lr).reshape(draws, -1)], axis=1)


def _assert_unbiased(samples, expected, num_se=5.0):
  """z-test per entry; entries without noise (the last step's step-size
  gradient, -g_{N-1} ⊙ grad l(w_N; T), is exact) must match exactly."""
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
  noisy = se > 1e-9 * np.abs(expected).max()
  assert noisy.sum() >= samples.shape[1] - 3
  np.testing.assert_allclose(mean[~noisy], expected[~noisy], rtol=1e-10)
  z = np.abs(mean[noisy] - expected[noisy]) / se[noisy]
  assert np.max(z) < num_se, (mean, expected, z)


def test_ggs_step_size_gradient_is_unbiased_on_quadratic():
  """E[-g_j ⊙ v_{j+1}] = the exact value: v_{j+1} is linear in each H_k, k > j."""
  w, task = _quadratic(3)
  inner_lr = jnp.asarray(np.random.default_rng(4).uniform(0.05, 0.15, (N, 3)))
  est = mj.ggs_maml(q.loss, num_inner_steps=N, num_directions=2, delta=0.5)
  samples = _mc(est, mj.LearnedInnerLR(w, inner_lr), task, 4000)
  g_w, g_lr = _quadratic_reference(w, task, inner_lr)
  _assert_unbiased(samples, np.concatenate([g_w, g_lr.ravel()]))


def test_zo_step_size_gradient_has_the_constant_level_bias():
  """ZO-MAML's step-size gradient is unbiased for A + tr(A)/2 I, not for A."""
  w, task = _quadratic(5)
  inner_lr = jnp.asarray(np.random.default_rng(6).uniform(0.05, 0.15, (N, 3)))
  est = mj.zo_maml(q.loss, num_inner_steps=N, num_directions=4, delta=0.1)
  samples = _mc(est, mj.LearnedInnerLR(w, inner_lr), task, 6000, seed=1)
  shift = 0.5 * jnp.trace(task.support['A'])
  g_w, g_lr = _quadratic_reference(w, task, inner_lr, hessian_shift=shift)
  _assert_unbiased(samples, np.concatenate([g_w, g_lr.ravel()]))
  e_w, e_lr = _quadratic_reference(w, task, inner_lr)
  se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
  exact = np.concatenate([e_w, e_lr.ravel()])
  noisy = se > 1e-9
  assert np.max(np.abs(samples.mean(0) - exact)[noisy] / se[noisy]) > 10.0


@pytest.mark.parametrize('kind,per_step', [('scalar', False),
                                           ('per_parameter', True)])
def test_hf_maml_is_exact_on_quadratics_with_learned_step_sizes(kind, per_step):
  w, task = _quadratic(7)
  inner_lr = _step_sizes(w, kind, per_step)
  expected = jax.grad(_q_unrolled, argnums=(0, 1))(w, inner_lr, task, per_step)
  grads, _ = jax.jit(mj.hf_maml(q.loss, num_inner_steps=N, delta=0.3))(
      mj.LearnedInnerLR(w, inner_lr), task, KEY)
  np.testing.assert_allclose(grads.params, expected[0], rtol=1e-10)
  np.testing.assert_allclose(grads.inner_lr, expected[1], rtol=1e-10)


def _q_unrolled(w, inner_lr, task, per_step):
  for j in range(N):
    a = inner_lr[j] if per_step else inner_lr
    w = w - a * jax.grad(q.loss)(w, task.support)
  return q.loss(w, task.query)


def test_every_estimator_and_the_fused_loop_learn_step_sizes():
  """Optax updates w_0 and alpha together; the fused loop equals the step loop."""
  params, task = _problem(8)
  tasks = jax.tree.map(lambda x: jnp.stack([x, 0.5 * x]), task)
  meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.1, 'per_layer',
                                                    num_inner_steps=N))
  opt = optax.adam(1e-2)
  hyper = dict(num_directions=2, delta=1e-2)
  for name in mj.ESTIMATORS:
    kwargs = mj.estimator_kwargs(name, **hyper)
    est = mj.make_estimator(name, loss, num_inner_steps=N, **kwargs)
    step = mj.make_train_step(est, opt)
    state = mj.init_train_state(meta, opt)
    for i in range(3):
      state, metrics = step(state, tasks, jax.random.PRNGKey(i))
    assert int(metrics['num_nonfinite']) == 0
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                         state.params.inner_lr, meta.inner_lr)
    assert min(jax.tree.leaves(moved)) > 1e-4, (name, moved)
  run = mj.make_fused_train(est, opt, lambda k: tasks, num_iterations=3)
  fused, _ = run(mj.init_train_state(meta, opt), KEY)
  state = mj.init_train_state(meta, opt)
  for i in range(3):
    state, _ = step(state, tasks, mj.iteration_keys(KEY, i)[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10),
               fused.params, state.params)


def test_vmapped_inner_lr_sweep_equals_a_loop():
  """Step sizes given as data: one compiled program for several alphas."""
  params, task = _problem(9)
  tasks = jax.tree.map(lambda x: jnp.stack([x, -x]), task)
  alphas = jnp.asarray([0.05, 0.1, 0.3])
  for name in ('maml', 'ggs_maml'):
    kwargs = dict(num_directions=3, delta=1e-2) if name == 'ggs_maml' else {}

    def meta_grad(alpha, name=name, kwargs=kwargs):
      est = mj.make_estimator(name, loss, inner_lr=alpha, num_inner_steps=N,
                              **kwargs)
      return mj.meta_gradient(est, params, tasks, KEY)

    swept, aux = jax.jit(jax.vmap(meta_grad))(alphas)
    one_alpha = jax.jit(meta_grad)
    for i in range(len(alphas)):
      one, one_aux = one_alpha(alphas[i])
      jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(
          a[i], b, rtol=1e-10, atol=1e-14), swept, one)
      np.testing.assert_allclose(aux.query_loss_after[i],
                                 one_aux.query_loss_after, rtol=1e-12)


def test_step_size_sweep_is_differentiable():
  """d/d alpha of the meta-loss through the meta-gradient program."""
  params, task = _problem(10)

  def meta_loss(alpha):
    _, aux = mj.maml(loss, inner_lr=alpha, num_inner_steps=N)(params, task, KEY)
    return aux.query_loss_after

  got = jax.grad(meta_loss)(0.2)
  expected = jax.grad(
      lambda a: _unrolled_query_loss(params, a, task, 'scalar', False))(0.2)
  np.testing.assert_allclose(got, expected, rtol=1e-11)


def test_adapt_uses_learned_step_sizes():
  params, task = _problem(11)
  inner_lr = _step_sizes(params, 'per_parameter', True)
  w_n, losses = mj.adapt(loss, mj.LearnedInnerLR(params, inner_lr),
                         task.support, inner_lr=None, num_inner_steps=N)
  w = params
  for j in range(N):
    a = _alpha_at(inner_lr, 'per_parameter', True, j, params)
    w = jax.tree.map(lambda x, s, y: x - s * y, w, a,
                     jax.grad(loss)(w, task.support))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12),
               w_n, w)
  assert losses.shape == (N,)


def test_step_size_forms_and_errors():
  params, task = _problem(12)
  est = mj.maml(loss, num_inner_steps=N)
  with pytest.raises(ValueError, match='LearnedInnerLR'):
    est(params, task, KEY)  # built with inner_lr=None, called without one
  bad = {'w': jnp.ones((2,)), 'b': jnp.ones((2,))}
  with pytest.raises(ValueError, match='does not fit params'):
    jax.jit(est)(mj.LearnedInnerLR(params, bad), task, KEY)
  with pytest.raises(ValueError, match='does not fit params'):
    est(mj.LearnedInnerLR(params, jnp.ones((N + 1,))), task, KEY)
  with pytest.raises(ValueError, match='floating-point'):
    est(mj.LearnedInnerLR(params, jnp.ones((), jnp.int32)), task, KEY)
  for value in (0.0, -1.0, float('nan'), True):
    with pytest.raises(ValueError, match='inner_lr'):
      mj.maml(loss, inner_lr=value, num_inner_steps=N)
  with pytest.raises(ValueError, match='kind'):
    mj.init_inner_lr(params, 0.1, 'per_row')
  # A learned inner_lr overrides the factory's fixed one.
  fixed = mj.maml(loss, inner_lr=0.5, num_inner_steps=N)
  g1, _ = fixed(mj.LearnedInnerLR(params, jnp.asarray(0.2)), task, KEY)
  g2, _ = mj.maml(loss, num_inner_steps=N)(
      mj.LearnedInnerLR(params, jnp.asarray(0.2)), task, KEY)
  jax.tree.map(np.testing.assert_array_equal, g1, g2)
