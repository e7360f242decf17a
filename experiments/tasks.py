"""Task distributions of the paper's experiments, sampled by pure JAX functions.

Every sampler maps a PRNG key to a ``maml_jax.Task`` whose leaves carry a
leading task axis, so it can run inside a jit-compiled training loop.
"""

import jax
import jax.numpy as jnp

import maml_jax as mj

# Sine-wave regression (Finn et al. 2017; paper section 5.2).
SINE_AMPLITUDE = (0.1, 5.0)
SINE_PHASE = (0.0, jnp.pi)
SINE_X = (-5.0, 5.0)


def sine_tasks(key, num_tasks, *, num_support=10, num_query=10, dtype=jnp.float32):
  """K-shot sine regression tasks: y = A sin(x - phase).

  Args:
    key: PRNG key.
    num_tasks: number of tasks (leading axis of every leaf).
    num_support: K, support points per task.
    num_query: query points per task.
    dtype: float dtype of the data.

  Returns:
    ``mj.Task`` with support/query batches ``{'x': [T, K, 1], 'y': [T, K, 1]}``
    and ``hessian=None``; the amplitudes and phases are not returned (use
    ``sine_task_params`` with the same key to get them).
  """
  amp, phase = sine_task_params(key, num_tasks, dtype=dtype)
  k_s, k_q = jax.random.split(jax.random.fold_in(key, 1))
  return mj.Task(support=sine_points(k_s, amp, phase, num_support, dtype),
                 query=sine_points(k_q, amp, phase, num_query, dtype))


def sine_task_params(key, num_tasks, *, dtype=jnp.float32):
  """Amplitude and phase of ``num_tasks`` sine tasks (same key as ``sine_tasks``)."""
  k_a, k_p = jax.random.split(key)
  amp = jax.random.uniform(k_a, (num_tasks,), dtype, *SINE_AMPLITUDE)
  phase = jax.random.uniform(k_p, (num_tasks,), dtype, *SINE_PHASE)
  return amp, phase


def sine_points(key, amp, phase, num_points, dtype=jnp.float32):
  """``num_points`` (x, y) pairs for each task given by ``amp``/``phase`` [T]."""
  x = jax.random.uniform(key, (amp.shape[0], num_points, 1), dtype, *SINE_X)
  y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
  return {'x': x, 'y': y}


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
