"""Quadratic tasks l(w) = 1/2 (w - c)^T A (w - c) with closed-form meta-gradients."""

import jax
import jax.numpy as jnp
import numpy as np


def loss(w, batch):
  r = w - batch['c']
  return 0.5 * r @ (batch['A'] @ r)


def random_spd(rng, d, scale=1.0):
  m = rng.normal(size=(d, d))
  return scale * (m @ m.T / d + 0.1 * np.eye(d))


def batch(rng, d, scale=1.0):
  return {'A': random_spd(rng, d, scale), 'c': rng.normal(size=d)}


def inner_iterates(w, supports, alpha):
  """w_0..w_N for supports = [S_0, ..., S_{N-1}] (plain numpy, float64)."""
  ws = [np.asarray(w, np.float64)]
  for s in supports:
    ws.append(ws[-1] - alpha * s['A'] @ (ws[-1] - s['c']))
  return ws


def closed_form(w, supports, query, alpha, hessians=None, first_order=False):
  """prod_j (I - alpha A_{D_j}) A_q (w_N - c_q) (or A_q (w_N - c_q) if first order)."""
  ws = inner_iterates(w, supports, alpha)
  v = query['A'] @ (ws[-1] - query['c'])
  if first_order:
    return v
  hessians = supports if hessians is None else hessians
  for h in reversed(hessians):
    v = v - alpha * h['A'] @ v
  return v


def as_jax(tree, dtype=jnp.float64):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
