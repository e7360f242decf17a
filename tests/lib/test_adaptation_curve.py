"""mj.adaptation_curve: K inner steps with every iterate evaluated."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj

D = 3


def loss(w, batch):
  """A quadratic 1/2 |A (w - c)|^2 on the dict of arrays ``w``."""
  r = batch['A'] @ (w['a'] - batch['c']) + w['b']
  return 0.5 * jnp.sum(r * r)


def _params(seed=0):
  k_a, k_b = jax.random.split(jax.random.PRNGKey(seed))
  return {'a': jax.random.normal(k_a, (D,)), 'b': 0.1 * jax.random.normal(k_b, ())}


def _batch(seed):
  k_a, k_c = jax.random.split(jax.random.PRNGKey(100 + seed))
  a = jnp.eye(D) + 0.3 * jax.random.normal(k_a, (D, D))
  return {'A': a, 'c': jax.random.normal(k_c, (D,))}


SUPPORT, QUERY = _batch(1), _batch(2)


def _close(a, b, rtol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol,
                                                       atol=1e-6), a, b)


def _step(w, batch, alpha):
  g = jax.grad(loss)(w, batch)
  if not isinstance(alpha, dict):
    alpha = jax.tree.map(lambda _: alpha, w)
  return jax.tree.map(lambda x, a, y: x - a * y, w, alpha, g)


def test_equals_a_loop_of_one_step_adapt_calls():
  params, k = _params(), 5
  curve = jax.jit(lambda p: mj.adaptation_curve(
      loss, p, SUPPORT, inner_lr=0.1, num_inner_steps=k,
      evaluate=lambda w: loss(w, QUERY)))(params)
  w, evals, losses = params, [], []
  for _ in range(k):
    evals.append(loss(w, QUERY))
    w, support_loss = mj.adapt(loss, w, SUPPORT, inner_lr=0.1, num_inner_steps=1)
    losses.append(support_loss[0])
  evals.append(loss(w, QUERY))
  assert curve.evaluations.shape == (k + 1,)
  assert curve.support_losses.shape == (k,)
  _close(curve.evaluations, jnp.stack(evals))
  _close(curve.support_losses, jnp.stack(losses))
  _close(curve.adapted, w)
  assert curve.support_batches is None
  # mj.adapt is the same loop.
  adapted, support_losses = mj.adapt(loss, params, SUPPORT, inner_lr=0.1,
                                     num_inner_steps=k)
  _close(adapted, curve.adapted)
  _close(support_losses, curve.support_losses)


def test_per_step_sizes_past_n_use_the_last_one():
  params, n, k = _params(1), 2, 5
  alpha = {'a': jnp.array([0.05, 0.2]), 'b': jnp.array([0.1, 0.3])}  # per layer
  curve = mj.adaptation_curve(loss, mj.LearnedInnerLR(params, alpha), SUPPORT,
                              num_inner_steps=k, inner_lr_steps=n,
                              evaluate=lambda w: loss(w, QUERY))
  w, evals = params, []
  for j in range(k):
    evals.append(loss(w, QUERY))
    w = _step(w, SUPPORT, jax.tree.map(lambda a, j=j: a[min(j, n - 1)], alpha))
  evals.append(loss(w, QUERY))
  _close(curve.evaluations, jnp.stack(evals))
  _close(curve.adapted, w)
  # K < N: the first K step sizes.
  short = mj.adaptation_curve(loss, params, SUPPORT, inner_lr=alpha,
                              num_inner_steps=1, inner_lr_steps=n)
  _close(short.adapted, _step(params, SUPPORT, {'a': 0.05, 'b': 0.1}))
  # Without inner_lr_steps, N = K: a [2] step size does not fit 5 steps.
  with pytest.raises(ValueError, match='does not fit'):
    mj.adaptation_curve(loss, params, SUPPORT, inner_lr=alpha, num_inner_steps=k)


def test_old_num_steps_still_works_with_one_warning():
  """The old call, num_steps=K with num_inner_steps=N, is the new
  num_inner_steps=K with inner_lr_steps=N; it warns once, at the caller."""
  params, n, k = _params(1), 2, 5
  alpha = {'a': jnp.array([0.05, 0.2]), 'b': jnp.array([0.1, 0.3])}
  new = mj.adaptation_curve(loss, params, SUPPORT, inner_lr=alpha,
                            num_inner_steps=k, inner_lr_steps=n)
  for old_keywords in (dict(num_steps=k, num_inner_steps=n),
                       dict(num_steps=k, inner_lr_steps=n)):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      old = mj.adaptation_curve(loss, params, SUPPORT, inner_lr=alpha,
                                **old_keywords)
    assert [(w.category, w.filename) for w in caught] == [
        (DeprecationWarning, __file__)], caught
    assert 'use num_inner_steps=K, inner_lr_steps=N' in str(caught[0].message)
    _close(old, new)
  with pytest.raises(TypeError, match='inner_lr_steps=N only'):
    mj.adaptation_curve(loss, params, SUPPORT, inner_lr=alpha, num_steps=k,
                        num_inner_steps=n, inner_lr_steps=n)
  with pytest.raises(TypeError, match="missing the keyword argument 'num_inner_steps'"):
    mj.adaptation_curve(loss, params, SUPPORT, inner_lr=0.1, inner_lr_steps=n)


def test_evaluate_returns_any_pytree():
  params, k = _params(2), 3
  curve = mj.adaptation_curve(
      loss, params, SUPPORT, inner_lr=0.1, num_inner_steps=k,
      evaluate=lambda w: {'query': loss(w, QUERY), 'w': w,
                          'pair': (w['b'], jnp.int32(7))})
  assert curve.evaluations['query'].shape == (k + 1,)
  assert curve.evaluations['w']['a'].shape == (k + 1, D)
  assert curve.evaluations['pair'][1].dtype == jnp.int32
  np.testing.assert_array_equal(curve.evaluations['pair'][1], 7)
  _close(jax.tree.map(lambda x: x[0], curve.evaluations['w']), params)
  _close(jax.tree.map(lambda x: x[-1], curve.evaluations['w']), curve.adapted)
  _close(curve.evaluations['pair'][0], curve.evaluations['w']['b'])


def test_learned_inner_lr_is_used():
  params = _params(3)
  alpha = mj.init_inner_lr(params, 0.07, 'per_parameter')
  learned = mj.adaptation_curve(loss, mj.LearnedInnerLR(params, alpha), SUPPORT,
                                num_inner_steps=2, evaluate=lambda w: loss(w, QUERY))
  given = mj.adaptation_curve(loss, params, SUPPORT, inner_lr=0.07, num_inner_steps=2,
                              evaluate=lambda w: loss(w, QUERY))
  _close(learned, given)
  with pytest.raises(ValueError, match='inner_lr is None'):
    mj.adaptation_curve(loss, params, SUPPORT, num_inner_steps=2)


def _sampler(w, data, key):
  """A batch that depends on the parameters it is drawn at (like a rollout)."""
  noise = jax.random.normal(key, (D,))
  return {'A': data['A'], 'c': data['c'] + 0.1 * noise + 0.5 * w['a']}


def test_sampled_support_keeps_the_batches_drawn_at_every_iterate():
  params, k = _params(4), 3
  key = jax.random.PRNGKey(9)
  curve = jax.jit(lambda p, key: mj.adaptation_curve(
      loss, p, mj.Sampled(SUPPORT), inner_lr=0.1, num_inner_steps=k,
      sampler=_sampler, key=key, keep_batches=True,
      evaluate=lambda w: w['a']))(params, key)
  keys = mj.task_keys(key, k).support
  w, batches = params, []
  for j in range(k):
    batches.append(_sampler(w, SUPPORT, keys[j]))
    w = _step(w, batches[-1], 0.1)
  assert curve.support_batches['c'].shape == (k, D)
  _close(curve.support_batches, jax.tree.map(lambda *x: jnp.stack(x), *batches))
  _close(curve.adapted, w)
  # Batch j was drawn at w_j = evaluations[j].
  _close(curve.support_batches['c'],
         SUPPORT['c'] + 0.1 * jax.vmap(lambda kk: jax.random.normal(kk, (D,)))(
             keys) + 0.5 * curve.evaluations[:k])
  # mj.adapt with the same key draws the same batches.
  _close(mj.adapt(loss, params, mj.Sampled(SUPPORT), inner_lr=0.1,
                  num_inner_steps=k,
                  sampler=_sampler, key=key)[0], curve.adapted)


def test_has_aux_uses_only_the_loss():
  params = _params(5)
  with_aux = lambda w, b: (loss(w, b), {'r': w['b']})
  curve = mj.adaptation_curve(with_aux, params, SUPPORT, inner_lr=0.1,
                              num_inner_steps=2, has_aux=True,
                              evaluate=lambda w: with_aux(w, QUERY))
  plain = mj.adaptation_curve(loss, params, SUPPORT, inner_lr=0.1, num_inner_steps=2,
                              evaluate=lambda w: loss(w, QUERY))
  query_loss, aux = curve.evaluations
  _close(query_loss, plain.evaluations)
  _close(curve.support_losses, plain.support_losses)
  assert aux['r'].shape == (3,)


def test_per_step_support_and_zero_steps():
  params, k = _params(6), 2
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), SUPPORT, QUERY)
  curve = mj.adaptation_curve(loss, params, mj.PerStep(stacked), inner_lr=0.1,
                              num_inner_steps=k, keep_batches=True)
  _close(curve.adapted, _step(_step(params, SUPPORT, 0.1), QUERY, 0.1))
  _close(curve.support_batches, stacked)
  with pytest.raises(ValueError, match='leading axis of num_inner_steps=3'):
    mj.adaptation_curve(loss, params, mj.PerStep(stacked), inner_lr=0.1,
                        num_inner_steps=3)
  none = mj.adaptation_curve(loss, params, mj.Sampled(SUPPORT), inner_lr=0.1,
                             num_inner_steps=0, sampler=_sampler, keep_batches=True,
                             evaluate=lambda w: loss(w, QUERY))
  _close(none.adapted, params)
  assert none.support_losses.shape == (0,)
  _close(none.evaluations, loss(params, QUERY)[None])
  assert none.support_batches['c'].shape == (0, D)
  with pytest.raises(ValueError, match='num_inner_steps'):
    mj.adaptation_curve(loss, params, SUPPORT, inner_lr=0.1, num_inner_steps=-1)


def test_estimator_kwargs_keeps_what_the_estimator_takes():
  offered = dict(inner_lr=0.1, num_inner_steps=2, num_directions=4, delta=0.01,
                 remat=False)
  assert mj.estimator_kwargs('maml', **offered) == dict(
      inner_lr=0.1, num_inner_steps=2, remat=False)
  assert mj.estimator_kwargs('hf_maml', **offered) == dict(
      inner_lr=0.1, num_inner_steps=2, delta=0.01, remat=False)
  assert mj.estimator_kwargs('ggs_maml', **offered) == offered
  assert mj.estimator_kwargs('fo_maml', num_directions=3) == {}
  for name in mj.ESTIMATORS:
    mj.make_estimator(name, loss, **mj.estimator_kwargs(name, **offered))
  with pytest.raises(ValueError, match="unknown estimator 'reptile'"):
    mj.estimator_kwargs('reptile', inner_lr=0.1)
