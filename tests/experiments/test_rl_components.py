"""Tests of the meta-RL building blocks: env, GAE, linear baseline, TRPO step."""

import os
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.rl import baseline as baseline_lib
from experiments.rl import envs
from experiments.rl import gae as gae_lib
from experiments.rl import policy as policy_lib
from experiments.rl import trpo as trpo_lib


def test_nav_step_hand_computed():
  goal = jnp.array([0.3, -0.4])
  pos = envs.nav_reset(goal, None)
  np.testing.assert_array_equal(pos, [0.0, 0.0])
  # Action (0.05, 0.5): y clipped to 0.1 -> p' = (0.05, 0.1).
  pos, r = envs.nav_step(pos, jnp.array([0.05, 0.5]), goal)
  np.testing.assert_allclose(pos, [0.05, 0.1], atol=1e-7)
  np.testing.assert_allclose(r, -np.sqrt(0.25 ** 2 + 0.5 ** 2), rtol=1e-6)
  # Action (-3, -0.1): x clipped to -0.1 -> p' = (-0.05, 0.0).
  pos, r = envs.nav_step(pos, jnp.array([-3.0, -0.1]), goal)
  np.testing.assert_allclose(pos, [-0.05, 0.0], atol=1e-7)
  np.testing.assert_allclose(r, -np.sqrt(0.35 ** 2 + 0.4 ** 2), rtol=1e-6)
  # Reaching the goal exactly gives reward 0.
  _, r = envs.nav_step(jnp.array([0.25, -0.35]), jnp.array([0.05, -0.05]), goal)
  np.testing.assert_allclose(r, 0.0, atol=1e-6)


def test_nav_goals_in_range_and_greedy_return():
  goals = envs.nav_sample_goals(jax.random.PRNGKey(0), 1000)
  assert goals.shape == (1000, 2)
  assert float(goals.min()) >= -0.5 and float(goals.max()) <= 0.5
  # The greedy policy (step towards the goal, clipped) versus a NumPy loop.
  goal = jnp.array([0.35, -0.22])
  pos, total = jnp.zeros(2), 0.0
  ref = envs.NumpyNavigation2D(np.asarray(goal)[None])
  ref.reset()
  ref_total = 0.0
  for _ in range(envs.NAV_HORIZON):
    action = goal - pos
    pos, r = envs.nav_step(pos, action, goal)
    _, r_ref = ref.step(np.asarray(action)[None])
    total += float(r)
    ref_total += float(r_ref[0])
  # Hand computed: the goal is reached after 4 steps (x: 0.1, 0.1, 0.1, 0.05),
  # every later reward is 0.
  expected = 0.0
  p = np.zeros(2)
  for _ in range(4):
    p = p + np.clip(np.array([0.35, -0.22]) - p, -0.1, 0.1)
    expected += -np.linalg.norm(p - [0.35, -0.22])
  np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5, atol=1e-5)


def test_jax_env_matches_numpy_env_on_random_actions():
  rng = np.random.default_rng(0)
  goals = rng.uniform(-0.5, 0.5, (8, 2))
  actions = rng.normal(0, 0.2, (envs.NAV_HORIZON, 8, 2))
  ref = envs.NumpyNavigation2D(goals)
  ref.reset()
  step = jax.jit(jax.vmap(envs.nav_step))
  pos = jnp.zeros((8, 2))
  for t in range(envs.NAV_HORIZON):
    pos, r = step(pos, jnp.asarray(actions[t], jnp.float32), jnp.asarray(goals, jnp.float32))
    ref_pos, ref_r = ref.step(actions[t])
    np.testing.assert_allclose(pos, ref_pos, atol=1e-5)
    np.testing.assert_allclose(r, ref_r, atol=1e-5)


def numpy_gae(rewards, values, gamma, tau):
  T = len(rewards)
  adv = np.zeros(T)
  last = 0.0
  for t in reversed(range(T)):
    next_v = values[t + 1] if t + 1 < T else 0.0
    delta = rewards[t] + gamma * next_v - values[t]
    last = delta + gamma * tau * last
    adv[t] = last
  return adv


def test_gae_and_returns_match_numpy():
  rng = np.random.default_rng(1)
  rewards = rng.normal(size=37)
  values = rng.normal(size=37)
  returns = np.array([sum(0.95 ** (k - t) * rewards[k] for k in range(t, 37))
                      for t in range(37)])
  np.testing.assert_allclose(
      gae_lib.discounted_returns(jnp.asarray(rewards, jnp.float32), 0.95), returns,
      rtol=1e-5, atol=1e-5)
  for tau in (1.0, 0.9, 0.0):
    np.testing.assert_allclose(
        gae_lib.gae_advantages(jnp.asarray(rewards, jnp.float32),
                               jnp.asarray(values, jnp.float32), 0.95, tau),
        numpy_gae(rewards, values, 0.95, tau), rtol=1e-4, atol=1e-4)
  # tau = 1: A_t = R_t - V(s_t).
  np.testing.assert_allclose(numpy_gae(rewards, values, 0.95, 1.0), returns - values,
                             atol=1e-10)


def test_linear_baseline_matches_numpy_ridge():
  rng = np.random.default_rng(2)
  obs = np.cumsum(rng.uniform(-0.1, 0.1, (20, 100, 2)), axis=1)
  returns = -np.cumsum(np.abs(obs).sum(-1), axis=1)[:, ::-1] + rng.normal(0, 0.1, (20, 100))
  t = (np.arange(100) + 1.0) / 100.0
  tt = np.broadcast_to(t[None, :, None], (20, 100, 1))
  feats = np.concatenate([obs, obs ** 2, tt, tt ** 2, tt ** 3, np.ones_like(tt)], -1)
  x = feats.reshape(-1, 8)
  coef = np.linalg.solve(x.T @ x + 1e-5 * np.eye(8), x.T @ returns.reshape(-1))
  pred_ref = feats @ coef
  jcoef = baseline_lib.fit_linear_baseline(jnp.asarray(obs, jnp.float32),
                                           jnp.asarray(returns, jnp.float32))
  pred = baseline_lib.predict_linear_baseline(jcoef, jnp.asarray(obs, jnp.float32))
  np.testing.assert_allclose(pred, pred_ref, rtol=1e-3, atol=2e-3 * np.abs(pred_ref).max())


def test_gaussian_kl_and_log_prob():
  mean_p, ls_p = jnp.array([0.1, -0.3]), jnp.array([0.2, -0.5])
  mean_q, ls_q = jnp.array([0.4, 0.0]), jnp.array([-0.1, 0.3])
  sp, sq = np.exp(ls_p), np.exp(ls_q)
  ref = np.sum(np.log(sq / sp) + (sp ** 2 + (mean_p - mean_q) ** 2) / (2 * sq ** 2) - 0.5)
  np.testing.assert_allclose(policy_lib.gaussian_kl(mean_p, ls_p, mean_q, ls_q), ref,
                             rtol=1e-5)
  a = jnp.array([0.3, 0.3])
  ref_lp = np.sum(-0.5 * ((a - mean_p) / sp) ** 2 - np.log(sp) - 0.5 * np.log(2 * np.pi))
  np.testing.assert_allclose(policy_lib.gaussian_log_prob(mean_p, ls_p, a), ref_lp, rtol=1e-5)


def test_conjugate_gradient_solves_spd_system():
  rng = np.random.default_rng(3)
  m = rng.normal(size=(6, 6))
  a = jnp.asarray(m @ m.T + 6 * np.eye(6), jnp.float32)
  b = {'x': jnp.asarray(rng.normal(size=6), jnp.float32)}
  x = trpo_lib.conjugate_gradient(lambda v: {'x': a @ v['x']}, b, num_iters=20)
  np.testing.assert_allclose(a @ x['x'], b['x'], atol=1e-4)


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('max_kl', [1e-2, 1e-1])
def test_trpo_step_never_exceeds_kl_bound(seed, max_kl):
  """A Gaussian 'policy' with params (mean, log_std): KL is far from quadratic."""
  key = jax.random.PRNGKey(seed)
  k1, k2, k3 = jax.random.split(key, 3)
  old = {'mean': jax.random.normal(k1, (3,)), 'log_std': 0.3 * jax.random.normal(k2, (3,))}
  target = jax.random.normal(k3, (3,)) * 5.0

  def loss(p):  # wants to move the mean far and shrink the std
    return jnp.sum((p['mean'] - target) ** 2) + jnp.sum(jnp.exp(2 * p['log_std']))

  def kl(p):
    return policy_lib.gaussian_kl(old['mean'], old['log_std'], p['mean'], p['log_std'])

  grads = jax.grad(loss)(old)
  hvp = lambda v: jax.jvp(jax.grad(kl), (old,), (v,))[1]
  new, info = jax.jit(lambda p, g: trpo_lib.trpo_step(
      p, g, hvp, lambda q: (loss(q), kl(q)), max_kl=max_kl))(old, grads)
  # First, that a step was taken at all (with none, the KL would be 0 anyway).
  assert bool(info.accepted) and 0 < float(info.step_frac) <= 1
  assert not np.allclose(new['mean'], old['mean'])
  assert 0 < float(kl(new)) <= max_kl
  np.testing.assert_allclose(float(info.kl), float(kl(new)), rtol=1e-4)
  assert float(loss(new)) < float(loss(old))
  np.testing.assert_allclose(float(info.improve), float(loss(new) - loss(old)),
                             rtol=1e-4)
  # An ascent direction (the gradient's sign flipped): the convex loss rises
  # along it at every step size, so the line search must reject every trial
  # and leave the parameters exactly where they were.
  new2, info2 = trpo_lib.trpo_step(old, jax.tree.map(lambda g: -g, grads), hvp,
                                   lambda q: (loss(q), kl(q)), max_kl=max_kl)
  assert not bool(info2.accepted) and int(info2.num_trials) == 15
  assert float(info2.kl) == 0.0 and float(info2.step_frac) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new2, old)


def test_reports_survive_nonfinite_eval_returns(tmp_path):
  """A diverged extra inner step writes null to metrics.jsonl; reports skip it."""
  from experiments.rl import plots  # pylint: disable=g-import-not-at-top
  assert plots.fmt_mean_std([1.0, 3.0]) == '2.0 +- 1.0'
  assert plots.fmt_mean_std([1.0, None, 3.0]) == '2.0 +- 1.0 (non-finite in 1/3)'
  assert plots.fmt_mean_std([None, float('nan')]) == 'non-finite (2/2)'
  rows = [{'kind': 'eval', 'algorithm': 'fo_maml', 'iteration': 10, 'seed': s,
           'eval_return_0': -40.0, 'eval_return_1': -20.0,
           'eval_return_2': None if s == 2 else -30.0} for s in range(3)]
  path = plots.plot_eval_steps(rows, str(tmp_path / 'eval.png'))
  assert os.path.getsize(path) > 0
