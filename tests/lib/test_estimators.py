"""Estimators against closed forms (quadratics), autodiff, and Monte Carlo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
import quadratic as q

D = 4
ALPHA = 0.1


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _problem(seed, num_steps, per_step=False, hessian=False):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=D)
  supports = ([q.batch(rng, D) for _ in range(num_steps)] if per_step
              else [q.batch(rng, D)] * num_steps)
  query = q.batch(rng, D)
  hessians = [q.batch(rng, D)] * num_steps if hessian else None
  return w, supports, query, hessians


def _stack(batches):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *q.as_jax(batches))


@pytest.mark.parametrize('num_steps', [1, 3, 5])
@pytest.mark.parametrize('name,kwargs', [
    ('maml', dict(backprop='autodiff')),
    ('maml', dict(backprop='product')),
    ('maml', dict(backprop='product', remat=True)),
    ('maml', dict(backprop='autodiff', remat=2)),
    ('hf_maml', dict(delta=0.3)),
    ('fo_maml', {}),
])
def test_quadratic_closed_form(name, kwargs, num_steps):
  w, supports, query, _ = _problem(num_steps, num_steps)
  est = getattr(mj, name)(q.loss, inner_lr=ALPHA, num_inner_steps=num_steps,
                          loss_before=True, **kwargs)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query))
  grads, aux = jax.jit(est)(jnp.asarray(w), task, jax.random.PRNGKey(0))
  expected = q.closed_form(w, supports, query, ALPHA,
                           first_order=name == 'fo_maml')
  np.testing.assert_allclose(grads, expected, rtol=1e-10, atol=1e-12)
  w_n = q.inner_iterates(w, supports, ALPHA)[-1]
  np.testing.assert_allclose(aux.query_loss_after, q.loss(w_n, query),
                             rtol=1e-12)
  np.testing.assert_allclose(aux.query_loss_before, q.loss(w, query),
                             rtol=1e-12)
  assert aux.inner_losses.shape == (num_steps,)
  assert bool(aux.finite)


@pytest.mark.parametrize('num_steps', [1, 3])
@pytest.mark.parametrize('remat', [False, True])
def test_separate_hessian_batch_closed_form(num_steps, remat):
  w, supports, query, hessians = _problem(10 + num_steps, num_steps,
                                          hessian=True)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query),
                 hessian=q.as_jax(hessians[0]))
  for est in (mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=num_steps,
                      remat=remat),
              mj.hf_maml(q.loss, inner_lr=ALPHA, num_inner_steps=num_steps,
                         delta=1.0, remat=remat)):
    grads, _ = jax.jit(est)(jnp.asarray(w), task, jax.random.PRNGKey(1))
    np.testing.assert_allclose(
        grads, q.closed_form(w, supports, query, ALPHA, hessians), rtol=1e-10)


def test_per_step_support_and_hessian_closed_form():
  n = 4
  w, supports, query, _ = _problem(3, n, per_step=True)
  rng = np.random.default_rng(7)
  hessians = [q.batch(rng, D) for _ in range(n)]
  task = mj.Task(support=mj.PerStep(_stack(supports)), query=q.as_jax(query))
  for backprop in ('autodiff', 'product'):
    est = mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, backprop=backprop)
    grads, _ = est(jnp.asarray(w), task, jax.random.PRNGKey(0))
    np.testing.assert_allclose(grads, q.closed_form(w, supports, query, ALPHA),
                               rtol=1e-10)
  task = task._replace(hessian=mj.PerStep(_stack(hessians)))
  for remat in (False, 3):
    est = mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, remat=remat)
    grads, _ = est(jnp.asarray(w), task, jax.random.PRNGKey(0))
    np.testing.assert_allclose(
        grads, q.closed_form(w, supports, query, ALPHA, hessians), rtol=1e-10)


def _sampler(params, data, key):
  """A batch whose centre is drawn with the key and (deliberately) uses params."""
  noise = jax.random.normal(key, data['c'].shape, data['c'].dtype)
  return {'A': data['A'], 'c': data['c'] + 0.1 * noise + 0.0 * params}


@pytest.mark.parametrize('with_hessian', [False, True])
def test_sampled_batches_match_manual_resampling(with_hessian):
  """Resampling case: S_j at w_j with support keys, D_j with hessian keys, T at w_N."""
  n = 3
  w, supports, query, _ = _problem(5, n)
  rng = np.random.default_rng(8)
  h_data = q.batch(rng, D)
  key = jax.random.PRNGKey(42)
  keys = mj.task_keys(key, n)
  s_data = q.as_jax(supports[0])
  draw = lambda data, k: jax.tree.map(np.asarray, _sampler(0.0, data, k))
  s_batches = [draw(s_data, keys.support[j]) for j in range(n)]
  d_batches = ([draw(q.as_jax(h_data), keys.hessian[j]) for j in range(n)]
               if with_hessian else None)
  t_batch = draw(q.as_jax(query), keys.query)
  task = mj.Task(support=mj.Sampled(s_data), query=mj.Sampled(q.as_jax(query)),
                 hessian=mj.Sampled(q.as_jax(h_data)) if with_hessian else None)
  for remat in (False, True):
    est = mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, sampler=_sampler,
                  remat=remat)
    grads, aux = jax.jit(est)(jnp.asarray(w), task, key)
    np.testing.assert_allclose(
        grads, q.closed_form(w, s_batches, t_batch, ALPHA, d_batches),
        rtol=1e-10)
    ws = q.inner_iterates(w, s_batches, ALPHA)
    np.testing.assert_allclose(aux.inner_losses,
                               [q.loss(ws[j], s_batches[j]) for j in range(n)],
                               rtol=1e-10)


@pytest.mark.parametrize('name,kwargs', [
    ('maml', dict(backprop='autodiff')),
    ('maml', dict(backprop='autodiff', remat=2)),
    ('maml', dict(backprop='product')),
    ('maml', dict(backprop='product', remat=2)),
    ('fo_maml', {}),
    ('zo_maml', dict(num_directions=2, delta=0.1)),
    ('ggs_maml', dict(num_directions=2, delta=0.1)),
    ('hf_maml', dict(delta=0.1)),
])
def test_keep_batches_returns_the_sampled_batches_and_w_n(name, kwargs):
  """aux carries the S_j and T the estimator drew, and w_N, on every path.

  remat=2 with N = 3 also covers a padded last segment.
  """
  n = 3
  w, supports, query, _ = _problem(6, n)
  key = jax.random.PRNGKey(5)
  keys = mj.task_keys(key, n)
  s_data, t_data = q.as_jax(supports[0]), q.as_jax(query)
  draw = lambda data, k: jax.tree.map(np.asarray, _sampler(0.0, data, k))
  s_batches = [draw(s_data, keys.support[j]) for j in range(n)]
  task = mj.Task(support=mj.Sampled(s_data), query=mj.Sampled(t_data))
  make = lambda keep: getattr(mj, name)(q.loss, inner_lr=ALPHA, num_inner_steps=n,
                                        sampler=_sampler, keep_batches=keep,
                                        **kwargs)
  grads, aux = jax.jit(make(True))(jnp.asarray(w), task, key)
  for leaf in ('A', 'c'):
    np.testing.assert_allclose(aux.support_batches[leaf],
                               np.stack([b[leaf] for b in s_batches]), rtol=1e-12)
    np.testing.assert_allclose(aux.query_batch[leaf],
                               draw(t_data, keys.query)[leaf], rtol=1e-12)
  np.testing.assert_allclose(aux.adapted_params,
                             q.inner_iterates(w, s_batches, ALPHA)[n], rtol=1e-10)
  # As documented, no gradient flows through aux.adapted_params on any path.
  through_w_n = jax.grad(lambda p: jnp.sum(make(True)(p, task, key)[1].adapted_params))
  np.testing.assert_array_equal(through_w_n(jnp.asarray(w)), 0.0)
  # Keeping the batches changes nothing else; without it they are None.
  grads_plain, aux_plain = jax.jit(make(False))(jnp.asarray(w), task, key)
  np.testing.assert_allclose(grads, grads_plain, rtol=1e-12)
  np.testing.assert_allclose(aux.adapted_params, aux_plain.adapted_params, rtol=1e-12)
  assert aux_plain.support_batches is None and aux_plain.query_batch is None


def _mlp_loss(params, batch):
  h = jnp.tanh(batch['x'] @ params['w1'] + params['b1'])
  pred = h @ params['w2'] + params['b2']
  return jnp.mean((pred - batch['y']) ** 2)


def _mlp_problem(seed=0, dtype=jnp.float64):
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  params = {'w1': jax.random.normal(k[0], (2, 8), dtype),
            'b1': jax.random.normal(k[1], (8,), dtype) * 0.1,
            'w2': jax.random.normal(k[2], (8, 1), dtype) * 0.5,
            'b2': jnp.zeros((1,), dtype)}
  data = lambda kx, n: {'x': jax.random.normal(kx, (n, 2), dtype),
                        'y': jnp.sin(jax.random.normal(kx, (n, 1), dtype))}
  return params, mj.Task(support=data(k[3], 10), query=data(k[4], 12))


def _unrolled_meta_grad(params, task, n, alpha):
  def outer(p):
    for _ in range(n):
      p = jax.tree.map(lambda a, g: a - alpha * g, p,
                       jax.grad(_mlp_loss)(p, task.support))
    return _mlp_loss(p, task.query)
  return jax.grad(outer)(params)


@pytest.mark.parametrize('num_steps', [1, 4])
def test_mlp_autodiff_equals_product_equals_unrolled(num_steps):
  params, task = _mlp_problem()
  expected = _unrolled_meta_grad(params, task, num_steps, ALPHA)
  for backprop in ('autodiff', 'product'):
    for remat in (False, True):
      est = mj.maml(_mlp_loss, inner_lr=ALPHA, num_inner_steps=num_steps,
                    backprop=backprop, remat=remat)
      grads, _ = jax.jit(est)(params, task, jax.random.PRNGKey(0))
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9,
                                                           atol=1e-12),
                   grads, expected)


def _mc(est, params, task, num_draws, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), num_draws)
  grads, _ = jax.jit(jax.vmap(est, in_axes=(None, None, 0)))(params, task, keys)
  return np.asarray(grads)


def _assert_unbiased(samples, expected, num_se=5.0):
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
  z = np.abs(mean - expected) / se
  assert np.max(z) < num_se, (mean, expected, z)


@pytest.mark.parametrize('num_steps', [1, 3])
def test_ggs_maml_unbiased_on_quadratic(num_steps):
  w, supports, query, _ = _problem(20 + num_steps, num_steps)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query))
  est = mj.ggs_maml(q.loss, inner_lr=ALPHA, num_inner_steps=num_steps,
                    num_directions=2, delta=0.5)
  samples = _mc(est, jnp.asarray(w), task, 4000)
  _assert_unbiased(samples, q.closed_form(w, supports, query, ALPHA))


def test_zo_maml_mean_has_constant_level_bias():
  """Prop. 5: E H_zo = A + tr(A)/2 I on a quadratic, whatever delta and b."""
  w, supports, query, _ = _problem(30, 1)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query))
  a = supports[0]['A']
  g = q.closed_form(w, supports, query, ALPHA, first_order=True)
  biased = g - ALPHA * (a + 0.5 * np.trace(a) * np.eye(D)) @ g
  for delta in (1e-2, 1.0):
    est = mj.zo_maml(q.loss, inner_lr=ALPHA, num_inner_steps=1,
                     num_directions=4, delta=delta)
    samples = _mc(est, jnp.asarray(w), task, 6000, seed=1)
    _assert_unbiased(samples, biased)
    exact = q.closed_form(w, supports, query, ALPHA)
    # The bias is far outside the Monte-Carlo noise: ZO does NOT estimate MAML.
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    assert np.max(np.abs(samples.mean(0) - exact) / se) > 10.0
  est = mj.zo_maml(q.loss, inner_lr=ALPHA, num_inner_steps=1,
                   num_directions=4, delta=0.1, subtract_identity=True)
  _assert_unbiased(_mc(est, jnp.asarray(w), task, 6000, seed=2),
                   q.closed_form(w, supports, query, ALPHA))


def test_fresh_directions_per_call_and_deterministic_per_key():
  params, task = _mlp_problem()
  est = jax.jit(mj.ggs_maml(_mlp_loss, inner_lr=ALPHA, num_inner_steps=2,
                            num_directions=3, delta=1e-2))
  g1, _ = est(params, task, jax.random.PRNGKey(0))
  g2, _ = est(params, task, jax.random.PRNGKey(0))
  g3, _ = est(params, task, jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, g1, g2)
  assert not np.allclose(g1['w1'], g3['w1'])


def test_remat_reduces_compiled_memory():
  """Rematerialization keeps ~sqrt(N) iterates instead of N (compiled temp bytes)."""
  d, n = 20000, 64
  loss = lambda w, b: 0.5 * jnp.sum(b['a'] * (w - b['c']) ** 2) + jnp.sum(w ** 4)
  task = mj.Task(support={'a': jnp.ones(d), 'c': jnp.zeros(d)},
                 query={'a': jnp.ones(d), 'c': jnp.ones(d)})
  w = jnp.ones(d)

  def temp_bytes(est):
    compiled = jax.jit(est).lower(w, task, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  for make in (functools.partial(mj.maml, backprop='autodiff'),
               functools.partial(mj.maml, backprop='product'),
               functools.partial(mj.ggs_maml, num_directions=2, delta=1e-2)):
    full = temp_bytes(make(loss, inner_lr=0.01, num_inner_steps=n))
    remat = temp_bytes(make(loss, inner_lr=0.01, num_inner_steps=n, remat=True))
    # N iterates of 8 * d bytes vs about 2 sqrt(N) of them.
    assert full > n * d * 8 * 0.9
    assert remat < full / 2.5, (full, remat)


KEY_ = jax.random.PRNGKey(0)


def _loss_with_aux(w, batch):
  value = q.loss(w, batch)
  return value, {'residual_norm': jnp.linalg.norm(w - batch['c']),
                 'below_one': value < 1.0}


@pytest.mark.parametrize('name', mj.ESTIMATORS)
def test_has_aux_reports_query_aux_at_w0_and_w_n(name):
  """loss_fn -> (loss, aux): the same meta-gradient, aux per task and averaged."""
  w, supports, query, _ = _problem(40, 2)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query))
  kwargs = mj.estimator_kwargs(name, num_directions=2, delta=0.1)
  plain = mj.make_estimator(name, q.loss, inner_lr=ALPHA, num_inner_steps=2,
                            **kwargs)
  with_aux = mj.make_estimator(name, _loss_with_aux, inner_lr=ALPHA,
                               num_inner_steps=2, has_aux=True,
                               loss_before=True, **kwargs)
  key = jax.random.PRNGKey(3)
  g0, a0 = jax.jit(plain)(jnp.asarray(w), task, key)
  g1, a1 = jax.jit(with_aux)(jnp.asarray(w), task, key)
  np.testing.assert_allclose(g1, g0, rtol=1e-12)
  assert a0.query_aux_after is None and a0.query_aux_before is None
  # The query loss at w_0 is computed only when asked (loss_before=True).
  assert a0.query_loss_before is None
  assert mj.make_estimator(name, _loss_with_aux, inner_lr=ALPHA,
                           num_inner_steps=2, has_aux=True, **kwargs)(
                               jnp.asarray(w), task, key)[1].query_aux_before is None
  w_n = q.inner_iterates(w, supports, ALPHA)[-1]
  np.testing.assert_allclose(a1.query_aux_after['residual_norm'],
                             np.linalg.norm(w_n - query['c']), rtol=1e-12)
  np.testing.assert_allclose(a1.query_aux_before['residual_norm'],
                             np.linalg.norm(w - query['c']), rtol=1e-12)
  # Averaged over tasks (booleans as fractions) by meta_gradient.
  tasks = jax.tree.map(lambda x: jnp.stack([x, x, 10 * x]), task)
  _, meta_aux = mj.meta_gradient(with_aux, jnp.asarray(w), tasks, key)
  per_task = meta_aux.per_task.query_aux_after
  np.testing.assert_allclose(meta_aux.query_aux_after['residual_norm'],
                             np.mean(per_task['residual_norm']), rtol=1e-12)
  np.testing.assert_allclose(meta_aux.query_aux_after['below_one'],
                             np.mean(np.asarray(per_task['below_one'], float)))
  with pytest.raises(ValueError, match='has_aux'):
    mj.make_estimator(name, q.loss, inner_lr=ALPHA, num_inner_steps=2,
                      has_aux=True, **kwargs)(jnp.asarray(w), task, key)


def test_has_aux_in_the_train_step_metrics():
  w, supports, query, _ = _problem(41, 2)
  tasks = jax.tree.map(lambda x: jnp.stack([x, 2 * x]),
                       mj.Task(support=q.as_jax(supports[0]),
                               query=q.as_jax(query)))
  import optax
  est = mj.maml(_loss_with_aux, inner_lr=ALPHA, num_inner_steps=2,
                has_aux=True, loss_before=True)
  step = mj.make_train_step(est, optax.sgd(0.01))
  _, metrics = step(mj.init_train_state(jnp.asarray(w), optax.sgd(0.01)),
                    tasks, KEY_)
  assert set(metrics['aux_after']) == {'residual_norm', 'below_one'}
  assert metrics['aux_before']['residual_norm'].shape == ()



def test_query_loss_before_of_a_sampled_query_only_when_asked():
  """l(w_0; T) of a Sampled query costs a sample: computed only on request."""
  n = 2
  w, supports, query, _ = _problem(42, n)
  calls = []

  def sampler(params, data, key):
    jax.debug.callback(lambda: calls.append(1))  # counts samples at run time
    return _sampler(params, data, key)

  task = mj.Task(support=mj.Sampled(q.as_jax(supports[0])),
                 query=mj.Sampled(q.as_jax(query)))
  key = jax.random.PRNGKey(4)
  default = mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, sampler=sampler,
                    backprop='product')
  g0, a0 = jax.jit(default)(jnp.asarray(w), task, key)
  jax.effects_barrier()
  assert len(calls) == n + 1  # S_0..S_{N-1} and T
  assert a0.query_loss_before is None
  calls.clear()
  asked = mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, sampler=sampler,
                  backprop='product', loss_before=True)
  g1, a1 = jax.jit(asked)(jnp.asarray(w), task, key)
  jax.effects_barrier()
  assert len(calls) == n + 2  # one more sample, T at w_0
  np.testing.assert_allclose(g1, g0, rtol=1e-12)
  t_at_w0 = _sampler(0.0, q.as_jax(query), mj.task_keys(key, n).query)
  np.testing.assert_allclose(a1.query_loss_before, q.loss(jnp.asarray(w),
                                                          t_at_w0), rtol=1e-12)
  tasks = jax.tree.map(lambda x: jnp.stack([x, x]), task)
  _, meta_aux = mj.meta_gradient(default, jnp.asarray(w), tasks, key)
  assert meta_aux.query_loss_before is None
  with pytest.raises(ValueError, match='loss_before'):
    mj.maml(q.loss, inner_lr=ALPHA, num_inner_steps=n, loss_before='yes')


def test_registry_builds_every_estimator_and_names_bad_input():
  assert mj.ESTIMATORS == ('maml', 'fo_maml', 'zo_maml', 'ggs_maml', 'hf_maml')
  w, supports, query, _ = _problem(43, 2)
  task = mj.Task(support=q.as_jax(supports[0]), query=q.as_jax(query))
  for name in mj.ESTIMATORS:
    assert {'inner_lr', 'num_inner_steps', 'remat', 'has_aux'} <= set(
        mj.estimator_hyperparameters(name))
    kwargs = mj.estimator_kwargs(name, num_directions=2, delta=0.3)
    by_name = mj.make_estimator(name, q.loss, inner_lr=ALPHA,
                                num_inner_steps=2, **kwargs)
    direct = getattr(mj, name)(q.loss, inner_lr=ALPHA, num_inner_steps=2,
                               **kwargs)
    np.testing.assert_array_equal(by_name(jnp.asarray(w), task, KEY_)[0],
                                  direct(jnp.asarray(w), task, KEY_)[0])
  assert 'num_directions' not in mj.estimator_hyperparameters('maml')
  with pytest.raises(ValueError, match="unknown estimator 'reptile'"):
    mj.make_estimator('reptile', q.loss, inner_lr=ALPHA, num_inner_steps=1)
  with pytest.raises(ValueError, match="'maml' does not take delta"):
    mj.make_estimator('maml', q.loss, inner_lr=ALPHA, num_inner_steps=1,
                      delta=0.1)
  with pytest.raises(ValueError, match='unknown estimator'):
    mj.estimator_hyperparameters('maml2')
