"""Task samplers of the standard MAML benchmarks, pure JAX functions of a key.

Each returns a ``Task`` whose leaves carry a leading task axis, so it can run
inside a compiled training loop (``make_fused_train``'s ``sample_tasks``):

* ``sine_tasks``: K-shot sine-wave regression, y = A sin(x - phase)
  (Finn et al. 2017);
* ``fewshot_tasks``: N-way K-shot classification tasks drawn from an array of
  images [classes, instances, H, W] held on the device (Omniglot,
  miniImageNet), by indexing, with no Python loop per task;
* ``matrix_factorization_tasks``: the rank-one matrix factorization tasks of
  Ji, Yang and Liang's section 5.1 (``maml_jax.models.mf_loss``).
"""

import jax
import jax.numpy as jnp

from maml_jax._src import base

# Sine-wave regression (Finn et al. 2017).
SINE_AMPLITUDE = (0.1, 5.0)
SINE_PHASE = (0.0, jnp.pi)
SINE_X = (-5.0, 5.0)


def sine_tasks(key, num_tasks: int, *, num_support: int = 10,
               num_query: int = 10, dtype=jnp.float32) -> base.Task:
  """K-shot sine regression tasks: y = A sin(x - phase).

  A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5], as Finn et al. (2017).

  Args:
    key: PRNG key.
    num_tasks: number of tasks (leading axis of every leaf).
    num_support: K, support points per task.
    num_query: query points per task.
    dtype: float dtype of the data.

  Returns:
    ``Task`` with support/query batches ``{'x': [T, K, 1], 'y': [T, K, 1]}``
    and ``hessian=None``; the amplitudes and phases are not returned
    (``sine_task_params`` with the same key gives them).

  Example:
    >>> tasks = mj.tasks.sine_tasks(key, 25)
    >>> grads, aux = mj.meta_gradient(est, params, tasks, key)
  """
  amp, phase = sine_task_params(key, num_tasks, dtype=dtype)
  k_s, k_q = jax.random.split(jax.random.fold_in(key, 1))
  return base.Task(support=sine_points(k_s, amp, phase, num_support, dtype),
                   query=sine_points(k_q, amp, phase, num_query, dtype))


def sine_task_params(key, num_tasks: int, *, dtype=jnp.float32):
  """Amplitude and phase of ``num_tasks`` sine tasks (same key as ``sine_tasks``).

  Args:
    key: PRNG key (the one given to ``sine_tasks``).
    num_tasks: number of tasks.
    dtype: float dtype.

  Returns:
    (amplitudes [T], phases [T]).

  Example:
    >>> amp, phase = mj.tasks.sine_task_params(key, 25)
  """
  k_a, k_p = jax.random.split(key)
  amp = jax.random.uniform(k_a, (num_tasks,), dtype, *SINE_AMPLITUDE)
  phase = jax.random.uniform(k_p, (num_tasks,), dtype, *SINE_PHASE)
  return amp, phase


def sine_points(key, amp, phase, num_points: int, dtype=jnp.float32):
  """``num_points`` (x, y) pairs for each task given by ``amp``/``phase``.

  Args:
    key: PRNG key of the x draws.
    amp: amplitudes [T].
    phase: phases [T].
    num_points: points per task.
    dtype: float dtype.

  Returns:
    ``{'x': [T, num_points, 1], 'y': [T, num_points, 1]}``.

  Example:
    >>> amp, phase = mj.tasks.sine_task_params(key, 1)
    >>> curve = mj.tasks.sine_points(key2, amp, phase, 100)
  """
  x = jax.random.uniform(key, (amp.shape[0], num_points, 1), dtype, *SINE_X)
  y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
  return {'x': x, 'y': y}


def fewshot_tasks(key, images, num_tasks: int, *, ways: int, shots: int,
                  query_shots: int, start_index=0) -> base.Task:
  """Draws N-way K-shot classification tasks from an array of images, inside jit.

  Task i uses only ``jax.random.fold_in(key, start_index + i)``: it picks
  ``ways`` distinct classes in random order (label j is the j-th class drawn,
  so labels are assigned at random) and, per class, ``shots + query_shots``
  distinct instances, the first ``shots`` for the support set.

  Args:
    key: PRNG key.
    images: [C, M, H, W] (one channel) or [C, M, H, W, channels], uint8
      (scaled by 1/255) or float, on the device: M instances of each of C
      classes.
    num_tasks: T, the number of tasks (static).
    ways: N, classes per task (static).
    shots: K, support images per class (static).
    query_shots: query images per class (static).
    start_index: global index of the first task (may be traced), so that a
      task depends only on the key and its index, however the tasks are
      batched.

  Returns:
    ``Task`` with support ``{'x': float32 [T, N*K, H, W, channels], 'y':
    int32 [T, N*K]}`` and query ``{'x': [T, N*Q, H, W, channels], 'y':
    [T, N*Q]}``; images are grouped by label (label 0 first).

  Raises:
    ValueError: at trace time, if ways > C or shots + query_shots > M.

  Example:
    >>> images = jax.device_put(train_images)   # uint8 [classes, 20, 28, 28]
    >>> sample = lambda k: mj.tasks.fewshot_tasks(
    ...     k, images, 32, ways=5, shots=1, query_shots=15)
    >>> run = mj.make_fused_train(est, opt, sample, num_iterations=100)
  """
  if images.ndim not in (4, 5):
    raise ValueError('images must be [classes, instances, H, W] or [classes, '
                     f'instances, H, W, channels], got {images.shape}')
  num_classes, num_instances = images.shape[:2]
  per_class = shots + query_shots
  if not 1 <= ways <= num_classes:
    raise ValueError(f'ways={ways} needs 1..{num_classes} classes (the images '
                     f'have {num_classes})')
  if shots < 1 or query_shots < 0 or per_class > num_instances:
    raise ValueError(f'shots + query_shots = {shots} + {query_shots} must be at '
                     f'most the {num_instances} instances per class')

  def one_task(index):
    k_classes, k_instances = jax.random.split(jax.random.fold_in(key, index))
    # The first entries of a random permutation (argsort of random bits:
    # distinct indices, uniform up to ties of 32-bit draws) are a draw without
    # replacement.
    classes = jnp.argsort(jax.random.bits(k_classes, (num_classes,)))[:ways]
    instances = jnp.argsort(
        jax.random.bits(k_instances, (ways, num_instances)), axis=-1)
    instances = instances[:, :per_class]
    x = images[classes[:, None], instances]  # [ways, per_class, H, W(, C)]
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = x.astype(jnp.float32) / 255.0
    x = x.astype(jnp.float32)
    if images.ndim == 4:
      x = x[..., None]
    labels = jnp.broadcast_to(jnp.arange(ways, dtype=jnp.int32)[:, None],
                              (ways, per_class))
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    return ({'x': flat(x[:, :shots]), 'y': flat(labels[:, :shots])},
            {'x': flat(x[:, shots:]), 'y': flat(labels[:, shots:])})

  indices = start_index + jnp.arange(num_tasks)
  support, query = jax.vmap(one_task)(indices)
  return base.Task(support=support, query=query)


# Rank-one matrix factorization (Ji, Yang, Liang, section 5.1).
MF_DIM = 20
MF_SIGMA = (0.0, 0.1)


def matrix_factorization_tasks(key, num_tasks: int, *, dim: int = MF_DIM,
                               num_samples: int = 1, dtype=jnp.float32):
  """Rank-one matrix factorization tasks: z ~ N(0, sigma_i^2 I_d), sigma_i ~ U(0, 0.1).

  Support and query are independent draws from the task's distribution.

  Args:
    key: PRNG key.
    num_tasks: number of tasks.
    dim: d, the dimension of w and z (``MF_DIM``, also ``maml_jax.models.MF_DIM``).
    num_samples: draws of z per batch (the loss averages over them).
    dtype: float dtype.

  Returns:
    ``Task`` with support/query batches ``{'z': [T, num_samples, d]}``.
  """
  k_sig, k_s, k_q = jax.random.split(key, 3)
  sigma = jax.random.uniform(k_sig, (num_tasks, 1, 1), dtype, *MF_SIGMA)
  draw = lambda k: {'z': sigma * jax.random.normal(k, (num_tasks, num_samples, dim), dtype)}
  return base.Task(support=draw(k_s), query=draw(k_q))
