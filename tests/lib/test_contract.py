"""The shared contract every estimator meets (as optax's _common_test does),
and the clear errors for bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj

KWARGS = {
    'maml': {},
    'fo_maml': {},
    'zo_maml': dict(num_directions=3, delta=1e-2),
    'ggs_maml': dict(num_directions=3, delta=1e-2),
    'hf_maml': dict(delta=1e-2),
}
KEY = jax.random.PRNGKey(0)


def _make(name, loss=mj.models.mf_loss, **overrides):
  kwargs = dict(inner_lr=0.01, num_inner_steps=2, **KWARGS[name])
  kwargs.update(overrides)
  return getattr(mj, name)(loss, **kwargs)


def _task(key=KEY, dtype=jnp.float32):
  tasks = mj.tasks.matrix_factorization_tasks(key, 1, dtype=dtype)
  return jax.tree.map(lambda x: x[0], tasks)


@pytest.mark.parametrize('name', mj.ESTIMATORS)
def test_contract(name):
  traces = []

  def loss(w, batch):
    traces.append(1)
    return mj.models.mf_loss(w, batch)

  est = jax.jit(_make(name, loss))
  params = mj.models.init_mf_params(KEY)
  grads, aux = est(params, _task(), KEY)
  assert grads.shape == params.shape and grads.dtype == jnp.float32
  assert np.all(np.isfinite(grads)) and bool(aux.finite)
  assert aux.inner_losses.shape == (2,)
  n = len(traces)
  for i in range(3):  # new data and keys: no retrace
    est(params, _task(jax.random.PRNGKey(i + 1)), jax.random.PRNGKey(i))
  assert len(traces) == n
  # vmap over tasks through meta_gradient.
  tasks = mj.tasks.matrix_factorization_tasks(KEY, 3)
  mean, meta_aux = jax.jit(lambda p, t, k: mj.meta_gradient(
      _make(name), p, t, k))(params, tasks, KEY)
  assert mean.shape == params.shape and int(meta_aux.num_nonfinite) == 0


@pytest.mark.parametrize('name', mj.ESTIMATORS)
def test_contract_with_learned_step_sizes(name):
  """The same contract with (w_0, alpha) as meta-parameters: float32 kept,
  finite, jit without retracing, vmapped over tasks."""
  traces = []

  def loss(w, batch):
    traces.append(1)
    return mj.models.mf_loss(w, batch)

  params = mj.models.init_mf_params(KEY)
  meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.01,
                                                    'per_parameter',
                                                    num_inner_steps=2))
  est = jax.jit(_make(name, loss, inner_lr=None))
  grads, aux = est(meta, _task(), KEY)
  assert isinstance(grads, mj.LearnedInnerLR) and bool(aux.finite)
  assert grads.inner_lr.shape == (2,) + params.shape
  assert grads.inner_lr.dtype == jnp.float32
  assert np.all(np.isfinite(grads.inner_lr))
  assert np.any(grads.inner_lr[0] != 0) and np.any(grads.inner_lr[1] != 0)
  n = len(traces)
  for i in range(2):
    est(meta, _task(jax.random.PRNGKey(i + 1)), jax.random.PRNGKey(i))
  assert len(traces) == n
  tasks = mj.tasks.matrix_factorization_tasks(KEY, 3)
  mean, meta_aux = jax.jit(lambda p, t, k: mj.meta_gradient(
      _make(name, inner_lr=None), p, t, k))(meta, tasks, KEY)
  assert mean.inner_lr.shape == (2,) + params.shape
  assert int(meta_aux.num_nonfinite) == 0


@pytest.mark.parametrize('name', ['maml', 'ggs_maml'])
def test_float64_stays_float64(name):
  with jax.enable_x64(True):
    params = mj.models.init_mf_params(KEY, dtype=jnp.float64)
    grads, aux = jax.jit(_make(name))(params, _task(dtype=jnp.float64), KEY)
    assert grads.dtype == jnp.float64
    assert aux.query_loss_after.dtype == jnp.float64


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_inner_steps=0), 'num_inner_steps'),
    (dict(num_inner_steps=2.5), 'num_inner_steps'),
    (dict(inner_lr=0.0), 'inner_lr'),
    (dict(inner_lr=-0.1), 'inner_lr'),
    (dict(inner_lr=float('nan')), 'inner_lr'),
    (dict(inner_lr=float('inf')), 'inner_lr'),
    (dict(num_directions=0), 'num_directions'),
    (dict(delta=0.0), 'delta'),
    (dict(delta=-1e-2), 'delta'),
    (dict(remat=0), 'remat'),
])
def test_bad_hyperparameters_fail_at_construction(kwargs, match):
  name = 'ggs_maml' if 'num_directions' in kwargs else 'zo_maml'
  with pytest.raises(ValueError, match=match):
    _make(name, **kwargs)
  with pytest.raises(ValueError, match='delta'):
    _make('hf_maml', delta=0.0)
  with pytest.raises(ValueError, match='backprop'):
    mj.maml(mj.models.mf_loss, inner_lr=0.1, num_inner_steps=1, backprop='fast')


def test_bad_tasks_fail_at_trace_time():
  params = mj.models.init_mf_params(KEY)
  task = _task()
  est = _make('maml')
  with pytest.raises(ValueError, match='loss_fn must return a scalar'):
    _make('ggs_maml', loss=lambda w, b: w * 2.0)(params, task, KEY)
  with pytest.raises(ValueError, match='task.query does not fit'):
    est(params, task._replace(query={'z': task.query['z'], 'extra': 1.0}), KEY)
  with pytest.raises(ValueError, match='task.hessian does not fit'):
    est(params, task._replace(hessian={'z': task.query['z'][0]}), KEY)
  with pytest.raises(ValueError, match='PerStep'):
    est(params, task._replace(support=mj.PerStep(task.support)), KEY)
  with pytest.raises(ValueError, match='sampler'):
    est(params, task._replace(support=mj.Sampled(task.support)), KEY)
  with pytest.raises(ValueError, match='maml_jax.Task'):
    est(params, (task.support, task.query), KEY)
  with pytest.raises(ValueError, match='floating-point'):
    est(jnp.arange(20), task, KEY)
  with pytest.raises(ValueError, match='task.hessian=None'):
    mj.maml(mj.models.mf_loss, inner_lr=0.1, num_inner_steps=1,
            backprop='autodiff')(params, task._replace(hessian=task.support),
                                 KEY)


def _deprecated(call, match):
  """``call()``, checking that it warned exactly once, deprecated, at its caller."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    out = call()
  assert [(w.category, w.filename) for w in caught] == [
      (DeprecationWarning, __file__)], [(w.message, w.filename) for w in caught]
  assert match in str(caught[0].message), caught[0].message
  return out


def test_custom_estimator_composes_any_oracle():
  """custom_estimator is the recursion the named estimators are built from:
  exact H v gives MAML's product, hvp=None FO-MAML; any oracle plugs in."""
  params, task = mj.models.init_mf_params(KEY), _task()
  hp = dict(inner_lr=0.01, num_inner_steps=2)

  def close(est, reference):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                 est(params, task, KEY)[0], reference(params, task, KEY)[0])

  close(mj.custom_estimator(mj.models.mf_loss, mj.exact_hvp(mj.models.mf_loss), **hp),
        mj.maml(mj.models.mf_loss, backprop='product', **hp))
  close(mj.custom_estimator(mj.models.mf_loss, None, **hp), mj.fo_maml(mj.models.mf_loss, **hp))
  zero = lambda w, batch, v, key: jax.tree.map(jnp.zeros_like, v)
  close(mj.custom_estimator(mj.models.mf_loss, zero, **hp), mj.fo_maml(mj.models.mf_loss, **hp))
  with pytest.raises(ValueError, match='hvp must be callable'):
    mj.custom_estimator(mj.models.mf_loss, 'exact', **hp)


def test_deprecated_names_warn_once_and_forward():
  """mj.estimator, its autodiff=True and mj.no_hvp still work, warning once each."""
  params, task = mj.models.init_mf_params(KEY), _task()
  hp = dict(inner_lr=0.01, num_inner_steps=2)
  grads = lambda est: est(params, task, KEY)[0]
  exact = mj.exact_hvp(mj.models.mf_loss)
  old = _deprecated(lambda: mj.estimator(mj.models.mf_loss, exact, **hp),
                    'use maml_jax.custom_estimator')
  np.testing.assert_array_equal(
      grads(old), grads(mj.custom_estimator(mj.models.mf_loss, exact, **hp)))
  old = _deprecated(lambda: mj.estimator(mj.models.mf_loss, **hp), 'hvp=None')
  np.testing.assert_array_equal(grads(old), grads(mj.fo_maml(mj.models.mf_loss, **hp)))
  old = _deprecated(lambda: mj.estimator(mj.models.mf_loss, None, autodiff=True, **hp),
                    "maml(..., backprop='autodiff')")
  np.testing.assert_array_equal(
      grads(old), grads(mj.maml(mj.models.mf_loss, backprop='autodiff', **hp)))
  zero = _deprecated(lambda: mj.no_hvp(mj.models.mf_loss), 'pass hvp=None')
  v = jnp.ones_like(params)
  np.testing.assert_array_equal(zero(params, task.support, v, None), 0 * v)
  np.testing.assert_allclose(
      grads(mj.custom_estimator(mj.models.mf_loss, zero, **hp)),
      grads(mj.fo_maml(mj.models.mf_loss, **hp)), rtol=1e-6)


def test_adapt_matches_estimator_inner_loop():
  params = mj.models.init_mf_params(KEY)
  task = _task()
  adapted, losses = mj.adapt(mj.models.mf_loss, params, task.support,
                             inner_lr=0.01, num_inner_steps=2)
  _, aux = _make('fo_maml')(params, task, KEY)
  np.testing.assert_allclose(mj.models.mf_loss(adapted, task.query),
                             aux.query_loss_after, rtol=1e-6)
  np.testing.assert_allclose(losses, aux.inner_losses, rtol=1e-6)
  same, empty = mj.adapt(mj.models.mf_loss, params, task.support, inner_lr=0.01,
                         num_inner_steps=0)
  assert same is params and empty.shape == (0,)
  # The old keyword still works, with one DeprecationWarning, and gives the same.
  old, _ = _deprecated(lambda: mj.adapt(mj.models.mf_loss, params, task.support,
                                        inner_lr=0.01, num_steps=2),
                       'use num_inner_steps')
  jax.tree.map(np.testing.assert_array_equal, old, adapted)
  with pytest.raises(TypeError, match='both'):
    mj.adapt(mj.models.mf_loss, params, task.support, inner_lr=0.01,
             num_inner_steps=2, num_steps=2)
  with pytest.raises(TypeError, match='missing'):
    mj.adapt(mj.models.mf_loss, params, task.support, inner_lr=0.01)
  # init_inner_lr's per-step axis: num_inner_steps, the old num_steps warns.
  new = mj.init_inner_lr(params, 0.01, 'per_layer', num_inner_steps=2)
  old = _deprecated(lambda: mj.init_inner_lr(params, 0.01, 'per_layer',
                                             num_steps=2), 'use num_inner_steps')
  jax.tree.map(np.testing.assert_array_equal, old, new)
  assert all(x.shape == (2,) for x in jax.tree.leaves(new))
