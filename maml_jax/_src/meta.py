"""Task batches: the meta-gradient of eq. (7) and sharding over a "tasks" axis."""

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from maml_jax._src import base


class MetaAux(NamedTuple):
  """What ``meta_gradient`` reports besides the averaged meta-gradient.

  Attributes:
    query_loss_before: mean over tasks of l_i(w_0; T_i).
    query_loss_after: mean over tasks of l_i(w_N; T_i).
    num_nonfinite: number of tasks whose meta-gradient had a NaN/inf; they are
      left out of the average (never silently averaged into the update).
    per_task: the estimators' ``EstimatorAux``, stacked over tasks.
  """
  query_loss_before: chex.Array
  query_loss_after: chex.Array
  num_nonfinite: chex.Array
  per_task: base.EstimatorAux


def num_tasks(tasks: base.Task) -> int:
  """The size of the leading task axis, checked to be common to every leaf."""
  if not isinstance(tasks, base.Task):
    raise ValueError(f'tasks must be a maml_jax.Task, got {type(tasks).__name__}.')
  sizes = set()
  for leaf in jax.tree.leaves(tasks):
    if jnp.ndim(leaf) < 1:
      raise ValueError(
          'tasks must carry a leading task axis on every leaf; found a leaf of '
          f'shape {jnp.shape(leaf)}. Stack tasks (e.g. jax.tree.map(jnp.stack, '
          '...)) or call the estimator on a single task directly.')
    sizes.add(jnp.shape(leaf)[0])
  if len(sizes) != 1:
    raise ValueError(
        'tasks must carry one leading task axis shared by every leaf; found '
        f'leading sizes {sorted(sizes)}. Is the task axis missing?')
  return sizes.pop()


def meta_gradient(est: base.MetaEstimator, params: base.Params,
                  tasks: base.Task, key: chex.PRNGKey):
  """Mean meta-gradient over a batch of tasks, eq. (7).

      G(w) = (1/|B|) sum_{i in B} G_i(w)

  The estimator is ``jax.vmap``-ed over the tasks, task i getting
  ``jax.random.split(key, |B|)[i]``. Tasks whose meta-gradient is not finite
  are left out of the mean and counted in ``aux.num_nonfinite``. Works
  unchanged when ``tasks`` is sharded over devices along its leading axis.

  Args:
    est: a per-task estimator (``maml``, ``ggs_maml``, ...).
    params: meta parameters w.
    tasks: a ``Task`` whose leaves carry a leading task axis.
    key: PRNG key.

  Returns:
    (mean meta-gradient shaped like ``params``, ``MetaAux``).
  """
  n = num_tasks(tasks)
  keys = jax.random.split(key, n)
  grads, aux = jax.vmap(est, in_axes=(None, 0, 0))(params, tasks, keys)
  finite = aux.finite
  count = jnp.sum(finite)
  denom = jnp.maximum(count, 1).astype(jnp.result_type(*jax.tree.leaves(params)))

  def masked_mean(g):
    mask = finite.reshape((n,) + (1,) * (g.ndim - 1))
    return jnp.sum(jnp.where(mask, g, jnp.zeros_like(g)), axis=0) / denom.astype(g.dtype)

  mean_grads = jax.tree.map(masked_mean, grads)
  meta_aux = MetaAux(query_loss_before=jnp.mean(aux.query_loss_before),
                     query_loss_after=jnp.mean(aux.query_loss_after),
                     num_nonfinite=n - count,
                     per_task=aux)
  return mean_grads, meta_aux


def task_mesh(devices=None, axis_name: str = 'tasks') -> jax.sharding.Mesh:
  """A 1-D device mesh whose single axis shards the task batch."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (axis_name,))


def shard_tasks(tasks: base.Task, mesh: Optional[jax.sharding.Mesh] = None,
                axis_name: str = 'tasks') -> base.Task:
  """Places a task batch on ``mesh``, split along its leading (task) axis.

  The number of tasks must be divisible by the number of devices on the axis.
  ``meta_gradient`` and the train steps then run data-parallel over tasks with
  no change: XLA inserts the cross-device mean.
  """
  mesh = task_mesh(axis_name=axis_name) if mesh is None else mesh
  n, size = num_tasks(tasks), mesh.shape[axis_name]
  if n % size:
    raise ValueError(f'{n} tasks cannot be split evenly over {size} devices '
                     f'on mesh axis {axis_name!r}.')
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(axis_name))
  return jax.device_put(tasks, sharding)
