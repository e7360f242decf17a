"""Task batches: the meta-gradient of eq. (7), sharded or not (see sharding.py)."""

from typing import Any, NamedTuple, Optional
import warnings

import chex
import jax
import jax.numpy as jnp

from maml_jax._src import base
from maml_jax._src import nn
from maml_jax._src import validation


class MetaAux(NamedTuple):
  """What ``meta_gradient`` reports besides the averaged meta-gradient.

  Attributes:
    query_loss_before: mean over tasks of l_i(w_0; T_i) (None unless
      the estimator was built with ``loss_before=True``).
    query_loss_after: mean over tasks of l_i(w_N; T_i).
    num_nonfinite: number of tasks whose meta-gradient had a NaN/inf; they are
      left out of the average (never silently averaged into the update).
    per_task: the estimators' ``EstimatorAux``, stacked over tasks (over this
      device's tasks inside ``shard_map``).
    query_aux_before: with a ``has_aux`` loss, the mean over tasks of every
      leaf of the query aux at w_0 (booleans and integers as floats); else
      None.
    query_aux_after: the same for the aux of l(w_N; T).
  """
  query_loss_before: Optional[chex.Array]
  query_loss_after: chex.Array
  num_nonfinite: chex.Array
  per_task: base.EstimatorAux
  query_aux_before: Any = None
  query_aux_after: Any = None


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


def _task_keys(key, n, axis_name):
  """Task i's key: ``split(key, total)[global index of i]``, whatever the sharding."""
  if axis_name is None:
    return jax.random.split(key, n)
  size = jax.lax.axis_size(axis_name)
  first = jax.lax.axis_index(axis_name) * n
  return jax.lax.dynamic_slice_in_dim(jax.random.split(key, n * size), first, n)


def _make_varying(tree, axis_name):
  """Marks replicated values device-varying inside shard_map (docs/design.md, 'Sharding').

  Without it, the gradient w.r.t. a replicated value is psum-ed over the axis by
  its transpose, so each per-task meta-gradient would already be a sum over
  devices. Outside shard_map (pmap, or shard_map without varying-axis types)
  there is nothing to mark.
  """
  def cast(x):
    if axis_name in getattr(jax.typeof(x), 'vma', frozenset()):
      return x
    try:
      return jax.lax.pcast(x, axis_name, to='varying')
    except (ValueError, TypeError, NameError):  # not under a typed shard_map
      return x
  return jax.tree.map(cast, tree)


def _mean_numeric(tree, n_total, axis_name):
  """Mean over the task axis (and over ``axis_name``) of every leaf."""
  if tree is None:
    return None

  def mean(x):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      x = x.astype(jnp.float32)
    total = jnp.sum(x, axis=0)
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
    return total / n_total

  return jax.tree.map(mean, tree)


TASK_BATCHING = ('auto', 'vmap', 'map', 'unroll')


def check_task_batching(task_batching):
  """'auto', 'vmap', 'map', 'unroll' or a positive chunk size; returns it normalised.

  Raises:
    ValueError: naming the argument, for anything else.
  """
  if isinstance(task_batching, str):
    if task_batching not in TASK_BATCHING:
      raise ValueError(f'task_batching must be one of {TASK_BATCHING} or a '
                       f'positive int, got {task_batching!r}.')
    return task_batching
  return validation.check_positive_int(task_batching, 'task_batching')


def _sub_jaxprs(value):
  """The jaxprs held by an equation parameter (scan bodies, branches, calls)."""
  if hasattr(value, 'eqns'):
    yield value
  elif hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def _convolutions(jaxpr):
  """Every ``conv_general_dilated`` equation of ``jaxpr``, nested ones included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      yield eqn
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        yield from _convolutions(sub)


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


_SLOW_CONV_ADVICE = (
    "task_batching='auto' chose 'map' (tasks one after another) for a per-task "
    'program with convolutions on CPU, but {slow} of its {total} convolutions '
    'are not in the layout XLA:CPU runs fast inside a loop (typically the '
    "backward convolutions JAX writes for lax.conv_general_dilated / Flax's "
    'nn.Conv), so every task step will be slow (~15x for a 4-block conv net). '
    'Fix: build the model with maml_jax.nn.conv_general_dilated, e.g. '
    'nn.Conv(..., conv_general_dilated=maml_jax.nn.conv_general_dilated).')


def choose_task_batching(est: base.MetaEstimator, params: base.Params,
                         tasks: base.Task, key: chex.PRNGKey, *,
                         backend: Optional[str] = None) -> str:
  """What ``task_batching='auto'`` runs: 'map' or 'vmap' (decided at trace time).

  Traces one task's estimator (shapes only, nothing runs) and looks for
  convolutions in the per-task program, its derivatives included:

  * none, or a backend other than CPU: ``'vmap'``, one batched program
    (for MLPs many times faster than a loop);
  * convolutions on CPU: ``'map'``. Under ``jax.vmap`` every task's own
    weights turn a convolution into a grouped one, which XLA:CPU runs one or
    two orders of magnitude slower than the same work task by task.

  If some of those convolutions are not in XLA:CPU's canonical layout (the
  backward convolutions of ``lax.conv_general_dilated``), neither choice is
  fast; a warning (once per call site) names the fix,
  ``maml_jax.nn.conv_general_dilated``.

  Args:
    est: the per-task estimator.
    params: meta parameters (arrays or tracers; only shapes are used).
    tasks: the task batch (leading task axis).
    key: the PRNG key.
    backend: the platform to decide for (default ``jax.default_backend()``).

  Returns:
    'map' or 'vmap'.
  """
  if (backend or jax.default_backend()) != 'cpu':
    return 'vmap'
  one_task = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.result_type(x)),
      tasks)
  jaxpr = jax.make_jaxpr(est)(_abstract(params), one_task, _abstract(key))
  convs = list(_convolutions(jaxpr.jaxpr))
  if not convs:
    return 'vmap'
  slow = sum(not nn.is_canonical(eqn.params['dimension_numbers'])
             for eqn in convs)
  if slow:
    warnings.warn(_SLOW_CONV_ADVICE.format(slow=slow, total=len(convs)),
                  stacklevel=4)
  return 'map'


def _per_task(est, params, tasks, keys, n, task_batching):
  """Runs ``est`` on every task, batched over the task axis as asked."""
  one = lambda task, key: est(params, task, key)
  if task_batching == 'vmap':
    return jax.vmap(one)(tasks, keys)
  if task_batching == 'unroll':
    outs = [one(jax.tree.map(lambda x, i=i: x[i], tasks), keys[i])
            for i in range(n)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  chunk = 1 if task_batching == 'map' else min(task_batching, n)
  return jax.lax.map(lambda a: one(*a), (tasks, keys),
                     batch_size=None if chunk == 1 else chunk)


def meta_gradient(est: base.MetaEstimator, params: base.Params,
                  tasks: base.Task, key: chex.PRNGKey, *,
                  axis_name: Optional[str] = None,
                  task_batching='auto'):
  """Mean meta-gradient over a batch of tasks, eq. (7).

      G(w) = (1/|B|) sum_{i in B} G_i(w)

  The estimator is ``jax.vmap``-ed over the tasks, task i getting
  ``jax.random.split(key, |B|)[i]``. Tasks whose meta-gradient is not finite
  are left out of the mean and counted in ``aux.num_nonfinite``. Works
  unchanged when ``tasks`` is a global array sharded over devices along its
  leading axis (``shard_tasks``), on one process or many: task i's key is
  chosen by its global index, so P processes draw what one process draws.

  Inside ``jax.shard_map`` or ``jax.pmap`` over a mesh axis that splits the
  tasks, pass its name as ``axis_name``: ``tasks`` is then this device's
  share, task i of device k gets the key of global task k * |B_local| + i,
  and the masked mean, the non-finite count and the mean losses reduce over
  the axis, so the result equals the unsharded one on every device.

  How the task axis is batched is a speed choice only (the results agree to
  float rounding). ``'auto'`` (default) decides at trace time from the
  per-task program (``choose_task_batching``): ``'map'`` when it has
  convolutions and runs on CPU, ``'vmap'`` otherwise. ``'vmap'`` is one
  batched program: right for MLPs, where it is many times faster than a
  loop; but when every task's inner steps give it its own weights, a vmapped
  convolution becomes a grouped convolution, which XLA:CPU runs far slower
  than the same work task by task. ``'map'`` runs the tasks one after another
  in a ``lax.map``, an int k runs chunks of k tasks vmapped, one chunk after
  another (memory ~ k tasks), and ``'unroll'`` writes every task into the
  program (fast to run, slow to compile for many tasks).

  Args:
    est: a per-task estimator (``maml``, ``ggs_maml``, ...).
    params: meta parameters w (or a ``LearnedInnerLR``), replicated.
    tasks: a ``Task`` whose leaves carry a leading task axis.
    key: PRNG key, the same on every device.
    axis_name: the mesh axis the tasks are split over, or None.
    task_batching: 'auto', 'vmap', 'map', 'unroll' or a chunk size (int).

  Returns:
    (mean meta-gradient shaped like ``params``, ``MetaAux``).
  """
  task_batching = check_task_batching(task_batching)
  n = num_tasks(tasks)
  if task_batching == 'auto':
    task_batching = choose_task_batching(est, params, tasks, key)
  keys = _task_keys(key, n, axis_name)
  if axis_name is not None:
    params = _make_varying(params, axis_name)
  grads, aux = _per_task(est, params, tasks, keys, n, task_batching)
  finite = aux.finite
  count = jnp.sum(finite)
  n_total = n
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
    n_total = n * jax.lax.axis_size(axis_name)
  denom = jnp.maximum(count, 1)

  def masked_mean(g):
    mask = finite.reshape((n,) + (1,) * (g.ndim - 1))
    total = jnp.sum(jnp.where(mask, g, jnp.zeros_like(g)), axis=0)
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
    return total / denom.astype(g.dtype)

  mean_grads = jax.tree.map(masked_mean, grads)
  meta_aux = MetaAux(
      query_loss_before=_mean_numeric(aux.query_loss_before, n_total,
                                      axis_name),
      query_loss_after=_mean_numeric(aux.query_loss_after, n_total, axis_name),
      num_nonfinite=n_total - count,
      per_task=aux,
      query_aux_before=_mean_numeric(aux.query_aux_before, n_total, axis_name),
      query_aux_after=_mean_numeric(aux.query_aux_after, n_total, axis_name))
  return mean_grads, meta_aux
