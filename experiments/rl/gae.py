"""Discounted returns and generalized advantage estimation for ONE episode.

rlax-style: each function handles one unbatched stream of length T; callers
batch with ``jax.vmap``. Recursions run backwards with ``jax.lax.scan``.
"""

import jax
import jax.numpy as jnp


def discounted_returns(rewards, gamma):
  """R_t = sum_{k >= t} gamma^(k - t) r_k for rewards [T] (no bootstrap)."""

  def body(acc, r):
    acc = r + gamma * acc
    return acc, acc

  _, returns = jax.lax.scan(body, jnp.zeros((), rewards.dtype), rewards, reverse=True)
  return returns


def gae_advantages(rewards, values, gamma, tau):
  """GAE(gamma, tau) (Schulman et al. 2016) for rewards [T], values V(s_t) [T].

  delta_t = r_t + gamma V(s_{t+1}) - V(s_t) with V(s_T) = 0 (the episode ends
  at the horizon), A_t = sum_k (gamma tau)^k delta_{t+k}. With tau = 1,
  A_t = R_t - V(s_t).
  """
  next_values = jnp.concatenate([values[1:], jnp.zeros((1,), values.dtype)])
  deltas = rewards + gamma * next_values - values

  def body(acc, delta):
    acc = delta + gamma * tau * acc
    return acc, acc

  _, adv = jax.lax.scan(body, jnp.zeros((), rewards.dtype), deltas, reverse=True)
  return adv
