"""The N-step inner loop of eq. (1)/(6) as a ``lax.scan``, with optional remat.

    w_0 = w,   w_{j+1} = w_j - alpha * grad l(w_j; S_j),   j = 0..N-1

The batch S_j comes from the task's ``support`` field: a plain batch (every
step), a ``PerStep`` (slice j) or a ``Sampled`` (drawn at w_j with the step's
key). Steps are run in segments so that ``remat`` can keep only every k-th
iterate (k ~ sqrt(N)) and recompute the rest; steps past N (padding of the last
segment) leave the parameters unchanged.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import oracles
from maml_jax._src import validation


def _check_sampler(sampler, name):
  if sampler is None:
    raise ValueError(
        f'{name} is Sampled but the estimator was built without a sampler; '
        'pass sampler=fn(params, data, key) -> batch to the factory.')


def step_batch(spec, j, params, key, sampler, name):
  """The batch of inner step ``j`` (a traced index) described by ``spec``."""
  if isinstance(spec, base.PerStep):
    return jax.tree.map(lambda x: x[j], spec.batches)
  if isinstance(spec, base.Sampled):
    _check_sampler(sampler, name)
    return jax.lax.stop_gradient(
        sampler(jax.lax.stop_gradient(params), spec.data, key))
  return spec


def example_batch(spec, params, sampler, name, key):
  """A representative (possibly abstract) batch of ``spec`` for trace-time checks."""
  if isinstance(spec, base.PerStep):
    return jax.tree.map(lambda x: x[0], spec.batches)
  if isinstance(spec, base.Sampled):
    _check_sampler(sampler, name)
    return jax.eval_shape(sampler, params, spec.data, key)
  return spec


class Segmentation(NamedTuple):
  """How N inner steps are grouped: ``num_segments`` scans of ``length`` steps."""
  num_steps: int
  length: int
  num_segments: int

  @property
  def padded(self):
    return self.length * self.num_segments != self.num_steps


def segmentation(num_steps: int, remat) -> Segmentation:
  """No remat: one segment of N steps. remat=True: segments of ceil(sqrt(N))."""
  if remat is False:
    length = num_steps
  elif remat is True:
    length = max(1, math.ceil(math.sqrt(num_steps)))
  else:
    length = min(int(remat), num_steps)
  return Segmentation(num_steps, length, math.ceil(num_steps / length))


class InnerLoop:
  """The inner loop of one task, closed over its data, keys and hyperparameters.

  Not part of the public API: estimators build one per call (at trace time).
  """

  def __init__(self, loss_fn, task, keys, *, inner_lr, num_steps, sampler,
               seg: Segmentation, keep_batches=False):
    self.loss_fn = loss_fn
    self.task = task
    self.keys = keys
    self.inner_lr = inner_lr
    self.num_steps = num_steps
    self.sampler = sampler
    self.seg = seg
    self.keep_batches = keep_batches
    self.grad_fn = jax.value_and_grad(loss_fn)

  def support(self, j, params):
    key = self.keys.support[jnp.minimum(j, self.num_steps - 1)]
    return step_batch(self.task.support, j, params, key, self.sampler,
                      'task.support')

  def hessian(self, j, params, support_batch):
    """D_j: the task's Hessian batch, or the support batch S_j when None."""
    if self.task.hessian is None:
      return support_batch
    key = self.keys.hessian[jnp.minimum(j, self.num_steps - 1)]
    return step_batch(self.task.hessian, j, params, key, self.sampler,
                      'task.hessian')

  @property
  def stores_batches(self):
    """Whether S_j must be kept for the backward pass (sampled and reused as D_j)."""
    return (isinstance(self.task.support, base.Sampled)
            and self.task.hessian is None)

  def _flatten_steps(self, stacked):
    """[segments, length, ...] -> [N, ...] (drops the padding steps)."""
    return jax.tree.map(
        lambda x: x.reshape((-1,) + x.shape[2:])[:self.num_steps], stacked)

  def run(self, params, start, length, store):
    """Steps start..start+length-1 from ``params``.

    Returns:
      (params after the steps, (w_j stacked or None, S_j stacked or None,
      support losses [length])).
    """

    def body(w, j):
      batch = self.support(j, w)
      loss, grad = self.grad_fn(w, batch)
      w_next = optax.tree.add_scale(w, -self.inner_lr, grad)
      if self.seg.padded:
        valid = j < self.num_steps
        w_next = optax.tree.where(valid, w_next, w)
        loss = jnp.where(valid, loss, jnp.zeros_like(loss))
      keep_w = w if store else None
      keep_s = (batch if (store and self.stores_batches) or self.keep_batches
                else None)
      return w_next, (keep_w, keep_s, loss)

    return jax.lax.scan(body, params, start + jnp.arange(length))

  def forward(self, params, *, keep_segment_starts, checkpoint):
    """All N steps, segment by segment.

    Args:
      params: w_0.
      keep_segment_starts: return the first iterate of every segment.
      checkpoint: wrap each segment in ``jax.checkpoint`` (autodiff remat).

    Returns:
      (w_N, segment starts [S, ...] or None, support losses [N], S_j [N] if
      ``keep_batches`` else None).
    """
    seg = self.seg

    def segment(w, s):
      w_end, (_, batches, losses) = self.run(w, s * seg.length, seg.length,
                                             store=False)
      return w_end, (w if keep_segment_starts else None, losses, batches)

    if checkpoint:
      segment = jax.checkpoint(segment)
    w_n, (starts, losses, batches) = jax.lax.scan(segment, params,
                                                  jnp.arange(seg.num_segments))
    return w_n, starts, self._flatten_steps(losses), self._flatten_steps(batches)

  def trajectory(self, params):
    """All N steps keeping every iterate: (w_N, (w_j [N], S_j [N] or None), losses)."""
    w_n, (ws, batches, losses) = self.run(params, 0, self.num_steps, store=True)
    return w_n, (ws, batches), losses


def adapt(loss_fn: base.LossFn, params: base.Params, support: Any, *,
          inner_lr: float, num_steps: int, sampler: base.Sampler = None,
          key=None):
  """Runs the inner loop of eq. (1): ``num_steps`` gradient steps on ``support``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: w_0.
    support: a batch, ``PerStep`` or ``Sampled`` (as ``Task.support``).
    inner_lr: alpha.
    num_steps: number of inner steps (0 returns ``params``).
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` support.
    key: PRNG key for ``Sampled`` support (split as in ``task_keys``).

  Returns:
    (adapted parameters w_N, support losses l(w_j; S_j) of shape [num_steps]).
  """
  inner_lr = validation.check_positive_float(inner_lr, 'inner_lr')
  if num_steps == 0:
    return params, jnp.zeros((0,))
  num_steps = validation.check_positive_int(num_steps, 'num_steps')
  keys = oracles.task_keys(jax.random.PRNGKey(0) if key is None else key,
                           num_steps)
  loop = InnerLoop(loss_fn, base.Task(support=support, query=None), keys,
                   inner_lr=inner_lr, num_steps=num_steps, sampler=sampler,
                   seg=segmentation(num_steps, False))
  w_n, _, losses, _ = loop.forward(params, keep_segment_starts=False,
                                   checkpoint=False)
  return w_n, losses
