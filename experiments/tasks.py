"""The matrix-factorization tasks of the paper's section 5.1, a pure JAX sampler.

It maps a PRNG key to a ``maml_jax.Task`` whose leaves carry a leading task
axis, so it can run inside a jit-compiled training loop. The sine and
few-shot samplers are the library's (``maml_jax.tasks``).
"""

import jax
import jax.numpy as jnp

import maml_jax as mj

# Rank-one matrix factorization (paper section 5.1).
MF_DIM = 20
MF_SIGMA = (0.0, 0.1)


def matrix_factorization_tasks(key, num_tasks, *, dim=MF_DIM, num_samples=1,
                               dtype=jnp.float32):
  """Rank-one matrix factorization tasks: z ~ N(0, sigma_i^2 I_d), sigma_i ~ U(0, 0.1).

  Support and query are independent draws from the task's distribution.

  Args:
    key: PRNG key.
    num_tasks: number of tasks.
    dim: d, the dimension of w and z.
    num_samples: draws of z per batch (the loss averages over them).
    dtype: float dtype.

  Returns:
    ``mj.Task`` with support/query batches ``{'z': [T, num_samples, d]}``.
  """
  k_sig, k_s, k_q = jax.random.split(key, 3)
  sigma = jax.random.uniform(k_sig, (num_tasks, 1, 1), dtype, *MF_SIGMA)
  draw = lambda k: {'z': sigma * jax.random.normal(k, (num_tasks, num_samples, dim), dtype)}
  return mj.Task(support=draw(k_s), query=draw(k_q))
