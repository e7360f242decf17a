"""Meta-training with Optax: a jitted step, and many steps fused in one scan."""

import functools
from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import meta
from maml_jax._src import sharding
from maml_jax._src import validation


class TrainState(NamedTuple):
  """Meta-training state: meta parameters, optimizer state, iteration count.

  Attributes:
    params: the meta parameters w_0 (or a ``LearnedInnerLR``).
    opt_state: the Optax optimizer's state (an ``optax.OptState``; annotated
      ``Any`` because optax's own alias does not resolve outside optax, which
      breaks the API reference build).
    iteration: the number of meta-iterations done, an int32 scalar.
  """
  params: base.Params
  opt_state: Any
  iteration: chex.Array


def init_train_state(params: base.Params,
                     optimizer: optax.GradientTransformation) -> TrainState:
  """A ``TrainState`` at iteration 0."""
  return TrainState(params=params, opt_state=optimizer.init(params),
                    iteration=jnp.zeros((), jnp.int32))


def iteration_keys(key: chex.PRNGKey, iteration) -> tuple[chex.PRNGKey, chex.PRNGKey]:
  """(task-sampling key, estimator key) of meta-iteration ``iteration``.

  Deriving them from (key, iteration) alone makes a resumed run draw exactly
  the tasks and directions an uninterrupted run would.
  """
  k_tasks, k_est = jax.random.split(jax.random.fold_in(key, iteration))
  return k_tasks, k_est


def _per_device_meta_gradient(est, task_batching, mesh, axis_name):
  """``meta_gradient`` run by every device of ``mesh`` on its own tasks.

  A ``jax.shard_map`` over ``axis_name``: each device computes the
  meta-gradients of its share of the tasks (batched by ``task_batching``)
  and ``meta_gradient(..., axis_name=)`` reduces the means over the axis, so
  the result is replicated and equals the unsharded one to float rounding.
  Left to GSPMD instead (a jitted call on sharded tasks), a ``lax.map`` over
  the task axis ('map', chunk sizes) is not split over the devices: every
  device would run every task.
  """
  spec = jax.sharding.PartitionSpec

  def local(params, tasks, key):
    grads, aux = meta.meta_gradient(est, params, tasks, key,
                                    axis_name=axis_name,
                                    task_batching=task_batching)
    return grads, aux._replace(per_task=None)  # per-task values stay local

  per_device = jax.shard_map(local, mesh=mesh,
                             in_specs=(spec(), spec(axis_name), spec()),
                             out_specs=spec())

  def gradient(params, tasks, key):
    sharding.check_task_split(meta.num_tasks(tasks), mesh, axis_name)
    return per_device(params, tasks, key)

  return gradient


def _train_step(est, optimizer, task_batching, mesh=None, axis_name='tasks'):
  if mesh is None:
    gradient = functools.partial(meta.meta_gradient, est,
                                 task_batching=task_batching)
  else:
    gradient = _per_device_meta_gradient(est, task_batching, mesh, axis_name)

  def step(state: TrainState, tasks: base.Task, key: chex.PRNGKey):
    grads, aux = gradient(state.params, tasks, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # No finite task at all: keep the old parameters and optimizer state.
    ok = aux.num_nonfinite < meta.num_tasks(tasks)
    params = optax.tree.where(ok, params, state.params)
    opt_state = optax.tree.where(ok, opt_state, state.opt_state)
    metrics = {
        'loss_after': aux.query_loss_after,
        'grad_norm': optax.tree.norm(grads),
        'num_nonfinite': aux.num_nonfinite,
    }
    if aux.query_loss_before is not None:
      metrics['loss_before'] = aux.query_loss_before
    if aux.query_aux_after is not None:
      metrics['aux_after'] = aux.query_aux_after
    if aux.query_aux_before is not None:
      metrics['aux_before'] = aux.query_aux_before
    return TrainState(params, opt_state, state.iteration + 1), metrics

  return step


def make_train_step(est: base.MetaEstimator,
                    optimizer: optax.GradientTransformation, *,
                    jit: bool = True, task_batching='auto',
                    mesh: Optional[jax.sharding.Mesh] = None,
                    axis_name: str = 'tasks'):
  """One meta-iteration: mean meta-gradient over the task batch, Optax update.

  Args:
    est: a per-task estimator.
    optimizer: any ``optax.GradientTransformation`` (the outer update, eq. 7
      with ``optax.sgd(beta)``).
    jit: return the step ``jax.jit``-compiled.
    task_batching: how the task axis is batched (see ``meta_gradient``).
    mesh: a task mesh (``task_mesh()``) or None. With a mesh, every device
      runs the meta-gradients of its share of the tasks (a ``shard_map``
      over ``axis_name``; the number of tasks must be a multiple of the
      axis size) and the means are reduced over the devices; ``state`` and
      ``key`` must be replicated (``replicate``). On a CPU this is also how
      to use several cores for models whose tasks run one after another
      (``task_batching='map'``): expose one device per core
      (``jax.config.update('jax_num_cpu_devices', n)`` before JAX starts).
    axis_name: the mesh axis that splits the tasks.

  Returns:
    ``step(state, tasks, key) -> (state, metrics)`` with scalar metrics
    'loss_before', 'loss_after' (mean query losses before/after adaptation;
    'loss_before' only with an estimator built with ``loss_before=True``), 'grad_norm' and
    'num_nonfinite', and with a ``has_aux`` loss 'aux_after' / 'aux_before'
    (the task means of the query aux, ``MetaAux``). ``state.params`` may be
    a ``LearnedInnerLR``: the optimizer then updates w_0 and the step sizes. When every task's meta-gradient is
    non-finite the update is skipped (and reported).
  """
  validation.check_callable(est, 'est')
  step = _train_step(est, optimizer, meta.check_task_batching(task_batching),
                     mesh, axis_name)
  return jax.jit(step) if jit else step


def make_fused_train(est: base.MetaEstimator,
                     optimizer: optax.GradientTransformation,
                     sample_tasks: Callable[[chex.PRNGKey], base.Task],
                     num_iterations: int, *, jit: bool = True,
                     task_batching='auto',
                     mesh: Optional[jax.sharding.Mesh] = None,
                     axis_name: str = 'tasks'):
  """``num_iterations`` meta-iterations in one compiled ``lax.scan``.

  Tasks are drawn on device by ``sample_tasks(key) -> Task`` (leading task
  axis), so there is no host round-trip per iteration. Iteration i uses
  ``iteration_keys(key, state.iteration)``: a fused run equals a loop of
  ``make_train_step`` calls fed the same tasks and keys, and a resumed run
  equals an uninterrupted one. ``task_batching`` as in ``meta_gradient``.

  With a ``mesh`` (``task_mesh()``: every device of every process), each
  iteration's tasks are split over its ``axis_name`` axis
  (``constrain_tasks``), each device computes its own tasks' meta-gradients
  (as in ``make_train_step(..., mesh=)``) and the run is data-parallel over tasks; ``state``
  and ``key`` must then be the same on every process (``replicate``), and
  so is the result, equal to float rounding to a run without a mesh.

  Returns:
    ``run(state, key) -> (state, metrics)``, metrics stacked over iterations.
  """
  validation.check_callable(sample_tasks, 'sample_tasks')
  num_iterations = validation.check_positive_int(num_iterations,
                                                 'num_iterations')
  step = _train_step(est, optimizer, meta.check_task_batching(task_batching),
                     mesh, axis_name)

  def draw(key):
    tasks = sample_tasks(key)
    if mesh is not None:
      tasks = sharding.constrain_tasks(tasks, mesh, axis_name)
    return tasks

  def run(state: TrainState, key: chex.PRNGKey):

    def body(state, _):
      k_tasks, k_est = iteration_keys(key, state.iteration)
      return step(state, draw(k_tasks), k_est)

    return jax.lax.scan(body, state, None, length=num_iterations)

  return jax.jit(run) if jit else run
