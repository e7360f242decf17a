"""Small models and task samplers of the library's own tests.

Beside the library's rank-one matrix factorization (``mj.models.mf_loss``, a
vector parameter): a one-hidden-layer regression MLP (a dict of parameters)
and Gaussian-noise image tasks, smaller than the library's benchmark models.
"""

import jax
import jax.numpy as jnp

import maml_jax as mj

def init_mlp_params(key, hidden=16, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {'w1': jax.random.normal(k1, (1, hidden), dtype),
          'b1': jnp.zeros((hidden,), dtype),
          'w2': jax.random.normal(k2, (hidden, 1), dtype) / jnp.sqrt(hidden),
          'b2': jnp.zeros((1,), dtype)}


def mlp_loss(params, batch):
  """Mean squared error of a 1-16-1 tanh MLP on ``{'x': [K, 1], 'y': [K, 1]}``."""
  h = jnp.tanh(batch['x'] @ params['w1'] + params['b1'])
  return jnp.mean((h @ params['w2'] + params['b2'] - batch['y']) ** 2)


def wave_tasks(key, num_tasks, *, num_points=10, dtype=jnp.float32):
  """Regression tasks y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi]."""
  k_a, k_p, k_s, k_q = jax.random.split(key, 4)
  amp = jax.random.uniform(k_a, (num_tasks, 1, 1), dtype, 0.1, 5.0)
  phase = jax.random.uniform(k_p, (num_tasks, 1, 1), dtype, 0.0, jnp.pi)

  def draw(k):
    x = jax.random.uniform(k, (num_tasks, num_points, 1), dtype, -5.0, 5.0)
    return {'x': x, 'y': amp * jnp.sin(x - phase)}

  return mj.Task(support=draw(k_s), query=draw(k_q))


def image_tasks(key, num_tasks, dtype=jnp.float32, *, ways=3, shots=2, query=2,
                size=12):
  """Few-shot classification tasks of Gaussian-noise images [size, size, 1].

  Support and query hold ``shots`` / ``query`` images of each of ``ways``
  labels (grouped by label), with a leading task axis.
  """
  ks, kq = jax.random.split(key)

  def batch(k, per_class):
    x = jax.random.normal(k, (num_tasks, ways * per_class, size, size, 1), dtype)
    y = jnp.tile(jnp.repeat(jnp.arange(ways), per_class), (num_tasks, 1))
    return {'x': x, 'y': y}

  return mj.Task(batch(ks, shots), batch(kq, query))
