"""Linear feature baseline of MAML-RL (Duan et al. 2016), fitted per task.

Features of step t of an episode: [s, s^2, c, c^2, c^3, 1] with c = (t + 1)/100;
the coefficients minimise sum ||X w - R||^2 + reg ||w||^2 over all the task's
episodes (ridge least squares, solved from the normal equations), R the
discounted returns.
"""

import jax.numpy as jnp


def baseline_features(obs):
  """Features [E, T, 2 obs_dim + 4] of observations [E, T, obs_dim]."""
  num_steps = obs.shape[-2]
  c = (jnp.arange(num_steps, dtype=obs.dtype) + 1.0) / 100.0
  c = jnp.broadcast_to(c[:, None], obs.shape[:-1] + (1,))
  return jnp.concatenate([obs, obs ** 2, c, c ** 2, c ** 3, jnp.ones_like(c)], axis=-1)


def fit_linear_baseline(obs, returns, reg=1e-5):
  """Ridge least-squares coefficients [F] from obs [E, T, d] and returns [E, T]."""
  x = baseline_features(obs).reshape(-1, 2 * obs.shape[-1] + 4)
  y = returns.reshape(-1)
  xtx = x.T @ x + reg * jnp.eye(x.shape[1], dtype=x.dtype)
  return jnp.linalg.solve(xtx, x.T @ y)


def predict_linear_baseline(coef, obs):
  """Baseline values [E, T] of observations [E, T, d]."""
  return baseline_features(obs) @ coef
