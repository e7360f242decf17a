"""The task batch over many devices and processes: one global "tasks" mesh.

Data parallelism over tasks (docs/design.md, 'Sharding'). ``task_mesh`` is a 1-D mesh
over ``jax.devices()``, which after ``jax.distributed.initialize`` lists the
devices of every process, so the same code runs on one device, on the
devices of one process, or on many processes and hosts (multi-controller:
every process runs the same program on global ``jax.Array``s).

What each process must hold:

* replicated values (meta parameters, optimizer state, PRNG keys): the same
  value on every process (``replicate``). Derive them from the same seed on
  every process, never from ``jax.process_index()``.
* the task batch, one of three ways:

  - the whole global batch on every process (``shard_tasks``): each keeps
    only the shards of its own devices;
  - only its own tasks (``shard_process_tasks``): the global tasks
    ``process_tasks(num_tasks, mesh)``, in that order;
  - nothing: tasks are drawn on device inside the compiled step under a
    sharding constraint (``constrain_tasks``, ``make_fused_train(...,
    mesh=)``), from a key that is the same on every process.

``meta_gradient`` then needs no ``axis_name``: task i of the global batch
gets ``jax.random.split(key, |B|)[i]`` wherever it lives, XLA inserts the
cross-device (and cross-process) mean, and the meta-gradient, the Optax
update and the new parameters are the same on every process, and equal (to
float rounding) to a run on one device.
"""

from typing import Optional

import jax
import numpy as np

from maml_jax._src import base
from maml_jax._src import meta

P = jax.sharding.PartitionSpec


def task_mesh(devices=None, axis_name: str = 'tasks') -> jax.sharding.Mesh:
  """A 1-D device mesh whose single axis shards the task batch.

  Args:
    devices: the devices, in mesh order; default ``jax.devices()``, every
      device of every process (after ``jax.distributed.initialize``).
    axis_name: the name of the mesh axis.

  Returns:
    A ``jax.sharding.Mesh`` with one axis ``axis_name``.
  """
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (axis_name,))


def check_task_split(num_tasks: int, mesh: jax.sharding.Mesh,
                     axis_name: str = 'tasks') -> int:
  """Raises ``ValueError`` unless ``num_tasks`` splits evenly over the axis.

  Returns:
    The number of tasks per device.
  """
  size = mesh.shape[axis_name]
  if num_tasks % size:
    processes = len({d.process_index for d in mesh.devices.flat})
    where = f' of {processes} processes' if processes > 1 else ''
    raise ValueError(
        f'{num_tasks} tasks per batch cannot be split evenly over the {size} '
        f'devices{where} on mesh axis {axis_name!r}: use a multiple of {size}.')
  return num_tasks // size


def _task_sharding(mesh, axis_name):
  return jax.sharding.NamedSharding(mesh, P(axis_name))


def shard_tasks(tasks: base.Task, mesh: Optional[jax.sharding.Mesh] = None,
                axis_name: str = 'tasks') -> base.Task:
  """Places a task batch on ``mesh``, split along its leading (task) axis.

  With several processes every process passes the whole (same) global batch
  and keeps the shards of its own devices; see ``shard_process_tasks`` for
  per-process data. The number of tasks must be divisible by the number of
  devices on the axis. ``meta_gradient`` and the train steps then run
  data-parallel over tasks with no change: XLA inserts the cross-device mean.
  """
  mesh = task_mesh(axis_name=axis_name) if mesh is None else mesh
  check_task_split(meta.num_tasks(tasks), mesh, axis_name)
  return jax.device_put(tasks, _task_sharding(mesh, axis_name))


def process_tasks(num_tasks: int, mesh: Optional[jax.sharding.Mesh] = None,
                  axis_name: str = 'tasks') -> slice:
  """The global tasks this process holds on ``mesh``: a slice of range(|B|).

  This is what a process passes to ``shard_process_tasks``: with P processes
  of D devices each on a ``task_mesh``, process p holds tasks
  [p |B| / P, (p + 1) |B| / P). A task drawn from its global index (e.g.
  ``jax.random.split(key, |B|)[i]``) is then the task a 1-process run draws.
  """
  mesh = task_mesh(axis_name=axis_name) if mesh is None else mesh
  check_task_split(num_tasks, mesh, axis_name)
  indices = _task_sharding(mesh, axis_name).addressable_devices_indices_map(
      (num_tasks,))
  ranges = sorted({(s.indices(num_tasks)[0], s.indices(num_tasks)[1])
                   for (s,) in indices.values()})
  for (_, stop), (start, _) in zip(ranges, ranges[1:]):
    if stop != start:
      raise ValueError('this process\'s devices are not contiguous on mesh '
                       f'axis {axis_name!r}; order the mesh devices by process.')
  return slice(ranges[0][0], ranges[-1][1])


def shard_process_tasks(local_tasks: base.Task,
                        mesh: Optional[jax.sharding.Mesh] = None,
                        axis_name: str = 'tasks') -> base.Task:
  """The global task batch from each process's own tasks.

  ``jax.make_array_from_process_local_data``: process p passes only the
  tasks ``process_tasks(num_tasks, mesh)`` (the same number on every
  process), and the result is one global batch split over ``mesh``.

  Args:
    local_tasks: a ``Task`` with this process's tasks on the leading axis.
    mesh: the task mesh (default ``task_mesh()``).
    axis_name: the mesh axis of the tasks.

  Returns:
    The global ``Task``, its leading axis the sum over processes.
  """
  mesh = task_mesh(axis_name=axis_name) if mesh is None else mesh
  sharding = _task_sharding(mesh, axis_name)
  local = meta.num_tasks(local_tasks)
  local_devices = len(sharding.addressable_devices)
  if local % local_devices:
    raise ValueError(f'{local} tasks of this process cannot be split evenly '
                     f'over its {local_devices} devices on mesh axis '
                     f'{axis_name!r}.')
  total = local * mesh.shape[axis_name] // local_devices
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), (total,) + np.shape(x)[1:]), local_tasks)


def replicate(tree, mesh: Optional[jax.sharding.Mesh] = None):
  """``tree`` as global arrays replicated over every device of ``mesh``.

  For values that must be the same everywhere (parameters, optimizer state,
  PRNG keys): every process passes the same value.
  """
  mesh = task_mesh() if mesh is None else mesh
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, P()))


def constrain_tasks(tasks: base.Task, mesh: jax.sharding.Mesh,
                    axis_name: str = 'tasks') -> base.Task:
  """Inside ``jax.jit``: the task batch split over ``mesh`` along its tasks.

  ``jax.lax.with_sharding_constraint`` on the leading axis of every leaf, so
  tasks drawn on device from a replicated key are computed and kept where
  they are used (works under ``jax.vmap``, e.g. over seeds). Raises
  ``ValueError`` at trace time if the tasks do not split evenly.
  """
  check_task_split(meta.num_tasks(tasks), mesh, axis_name)
  return jax.lax.with_sharding_constraint(tasks,
                                          _task_sharding(mesh, axis_name))
