"""Models and losses of the paper's experiments (each a ``loss_fn(params, batch)``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class SineMLP(nn.Module):
  """The MLP 1-40-40-1 with ReLU of Finn et al. (2017) for sine regression."""
  hidden: tuple = (40, 40)

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(1)(x)


SINE_MODEL = SineMLP()


def init_sine_params(key, dtype=jnp.float32):
  """Parameters of ``SINE_MODEL`` (Flax's default init), cast to ``dtype``."""
  params = SINE_MODEL.init(key, jnp.zeros((1, 1), dtype))
  return jax.tree.map(lambda p: p.astype(dtype), params)


def sine_loss(params, batch):
  """Mean squared error of the sine MLP on ``batch = {'x': [K, 1], 'y': [K, 1]}``."""
  pred = SINE_MODEL.apply(params, batch['x'])
  return jnp.mean((pred - batch['y']) ** 2)


def init_mf_params(key, dim=20, dtype=jnp.float32):
  """w_0 ~ N(0, 2/(d+1)) as in the authors' setup (SPEC section 4)."""
  return jnp.sqrt(2.0 / (dim + 1)) * jax.random.normal(key, (dim,), dtype)


def mf_loss(w, batch):
  """Rank-one matrix factorization loss (1/4)||w w^T - z z^T||_F^2, averaged over z.

  Uses ||w w^T - z z^T||_F^2 = |w|^4 - 2 (w.z)^2 + |z|^4, which never forms the
  d x d matrices (and, unlike the authors' code, is the matrix loss, not
  (1/4)(|w|^2 - |z|^2)^2; SPEC section 5).

  Args:
    w: parameter vector [d].
    batch: ``{'z': [n, d]}``.
  """
  z = batch['z']
  ww = jnp.dot(w, w)
  wz = z @ w
  zz = jnp.sum(z * z, axis=-1)
  return 0.25 * jnp.mean(ww ** 2 - 2.0 * wz ** 2 + zz ** 2)
