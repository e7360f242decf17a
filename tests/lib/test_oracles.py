"""Hessian-vector oracles: exactness on quadratics, ZO bias, GGS error trends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
import quadratic as q

D = 5


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _quadratic(seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=D)), q.as_jax(q.batch(rng, D)),
          jnp.asarray(rng.normal(size=D)))


def test_exact_and_fd_are_exact_on_quadratic():
  w, batch, v = _quadratic()
  expected = np.asarray(batch['A']) @ np.asarray(v)
  np.testing.assert_allclose(mj.exact_hvp(q.loss)(w, batch, v, None), expected,
                             rtol=1e-12)
  for delta in (1e-3, 1.0, 10.0):
    np.testing.assert_allclose(
        mj.fd_hvp(q.loss, delta=delta)(w, batch, v, None), expected, rtol=1e-8)


def test_gaussian_directions_shape_dtype_and_moments():
  params = {'a': jnp.zeros((3, 2), jnp.float32), 'b': jnp.zeros((4,))}
  u = mj.gaussian_directions(jax.random.PRNGKey(0), params, 7)
  assert u['a'].shape == (7, 3, 2) and u['a'].dtype == jnp.float32
  assert u['b'].shape == (7, 4) and u['b'].dtype == jnp.float64
  big = mj.gaussian_directions(jax.random.PRNGKey(1), jnp.zeros(3), 20000)
  np.testing.assert_allclose(np.cov(np.asarray(big).T), np.eye(3), atol=0.05)


def _mean_estimate(oracle, w, batch, v, num_draws, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), num_draws)
  return np.asarray(jax.jit(jax.vmap(oracle, (None, None, None, 0)))(
      w, batch, v, keys))


def test_ggs_unbiased_and_zo_biased_on_quadratic():
  w, batch, v = _quadratic(1)
  a = np.asarray(batch['A'])
  for oracle, target in (
      (mj.ggs_hvp(q.loss, num_directions=3, delta=0.7), a @ v),
      (mj.zo_hvp(q.loss, num_directions=3, delta=0.7),
       (a + 0.5 * np.trace(a) * np.eye(D)) @ v),
      (mj.zo_hvp(q.loss, num_directions=3, delta=1e-2, subtract_identity=True),
       a @ v)):
    samples = _mean_estimate(oracle, w, batch, v, 8000)
    se = samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.max(np.abs(samples.mean(0) - target) / se) < 5.0


def _mf_loss(w, batch):
  """Rank-one matrix factorization: a quartic, so the smoothed Hessian differs."""
  z = batch['z']
  return 0.25 * (jnp.dot(w, w) ** 2 - 2 * jnp.dot(w, z) ** 2 + jnp.dot(z, z) ** 2)


def _rel_err(estimates, exact):
  return np.linalg.norm(estimates - exact, axis=-1) / np.linalg.norm(exact)


def _mf_problem(seed, d=10):
  """(w, batch, v, exact H v) for the matrix factorization loss."""
  rng = np.random.default_rng(seed)
  w, z, v = (jnp.asarray(rng.normal(size=d)) for _ in range(3))
  batch = {'z': z}
  return w, batch, v, np.asarray(mj.exact_hvp(_mf_loss)(w, batch, v, None))


@pytest.mark.slow
def test_ggs_error_falls_with_b_and_delta_on_nonlinear_loss():
  w, batch, v, exact = _mf_problem(3)
  err = lambda b, delta, n=400: _rel_err(_mean_estimate(
      mj.ggs_hvp(_mf_loss, num_directions=b, delta=delta), w, batch, v, n),
      exact)
  e1, e16, e64 = err(1, 1e-3).mean(), err(16, 1e-3).mean(), err(64, 1e-3).mean()
  assert e1 > 2.5 * e16  # error ~ 1/sqrt(b): 1 -> 16 directions is 4x
  assert e16 / e64 == pytest.approx(2.0, rel=0.35)
  # Bias: the mean over many draws converges to Hess l_delta, not Hess l.
  bias = lambda delta: _rel_err(
      _mean_estimate(mj.ggs_hvp(_mf_loss, num_directions=50, delta=delta), w,
                     batch, v, 400, seed=5).mean(0, keepdims=True), exact)[0]
  assert bias(1.0) > 5 * bias(1e-3)


def test_zo_error_has_a_floor_on_nonlinear_loss():
  """Unlike GGS, ZO's error does not vanish as b grows (Proposition 5)."""
  w, batch, v, exact = _mf_problem(4)
  mean_err = lambda oracle: _rel_err(
      _mean_estimate(oracle, w, batch, v, 200).mean(0, keepdims=True), exact)[0]
  zo = mean_err(mj.zo_hvp(_mf_loss, num_directions=200, delta=1e-2))
  ggs = mean_err(mj.ggs_hvp(_mf_loss, num_directions=200, delta=1e-2))
  assert zo > 0.3 and ggs < 0.05, (zo, ggs)


@pytest.mark.parametrize('make', [
    lambda d: mj.ggs_hvp(q.loss, num_directions=2, delta=d),
    lambda d: mj.zo_hvp(q.loss, num_directions=2, delta=d),
    lambda d: mj.fd_hvp(q.loss, delta=d),
])
def test_delta_too_small_for_the_dtype_is_refused_or_warned(make):
  """delta = 1e-9 in float32 cannot move unit-scale weights: GGS would silently
  return the FO-MAML gradient (zero gradient differences)."""
  w, batch, v = _quadratic()
  f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
  with pytest.raises(ValueError, match='cannot move float32 parameters'):
    make(1e-9)(f32(w), f32(batch), f32(v), jax.random.PRNGKey(0))
  with pytest.warns(UserWarning, match='below sqrt\\(eps\\)'):
    make(1e-5)(f32(w), f32(batch), f32(v), jax.random.PRNGKey(0))
  # float64 has the room: no error, no warning, and the product is accurate.
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    out = make(1e-5)(w, batch, v, jax.random.PRNGKey(0))
  assert np.all(np.isfinite(out))


def test_ggs_maml_refuses_a_delta_lost_to_rounding():
  w, batch, _ = _quadratic(1)
  f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
  est = mj.ggs_maml(q.loss, inner_lr=0.1, num_inner_steps=1, num_directions=2,
                    delta=1e-9)
  with pytest.raises(ValueError, match='delta=1e-09'):
    jax.jit(est)(f32(w), mj.Task(f32(batch), f32(batch)), jax.random.PRNGKey(0))
