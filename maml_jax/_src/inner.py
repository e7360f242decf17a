"""The N-step inner loop of eq. (1)/(6) as a ``lax.scan``, with optional remat.

    w_0 = w,   w_{j+1} = w_j - alpha_j ⊙ grad l(w_j; S_j),   j = 0..N-1

(alpha_j a fixed or learned step size, see ``step_sizes``). The batch S_j comes
from the task's ``support`` field: a plain batch (every step), a ``PerStep``
(slice j) or a ``Sampled`` (drawn at w_j with the step's key). Steps are run in
segments so that ``remat`` can keep only every k-th iterate (k ~ sqrt(N)) and
recompute the rest; steps past N (padding of the last segment) leave the
parameters unchanged.
"""

import copy
import math
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import oracles
from maml_jax._src import step_sizes as step_sizes_lib
from maml_jax._src import validation


def _check_sampler(sampler, name):
  if sampler is None:
    raise ValueError(
        f'{name} is Sampled but the estimator was built without a sampler; '
        'pass sampler=fn(params, data, key) -> batch to the factory.')


def step_key(keys: chex.PRNGKey, j, num_steps: int) -> chex.PRNGKey:
  """Step j's key from an [N] key array (padding steps reuse the last)."""
  return keys[jnp.minimum(j, num_steps - 1)]


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


class Steps(NamedTuple):
  """What a run of inner steps records, stacked over its steps.

  Attributes:
    params: the iterates w_j at which the steps started, or None.
    grads: the gradients g_j = grad l(w_j; S_j), or None.
    batches: the support batches S_j, or None.
    losses: the support losses l(w_j; S_j) (0 on padding steps).
  """
  params: Any
  grads: Any
  batches: Any
  losses: chex.Array


class Forward(NamedTuple):
  """All N inner steps.

  Attributes:
    adapted: w_N.
    segment_starts: the first iterate of every segment [S, ...], or None.
    steps: ``Steps`` over the N steps (padding dropped); ``params`` is None.
  """
  adapted: Any
  segment_starts: Any
  steps: Steps


class InnerLoop:
  """The inner loop of one task, closed over its data, keys and step sizes.

  Not part of the public API: estimators build one per call (at trace time).

  Which batches S_j a run keeps follows one rule (``_keeps_batches``): every
  one when the estimator hands them back (``keep_batches``), and, in runs that
  store iterates for the backward pass, the sampled ones it would otherwise
  have to draw again (``Sampled`` support reused as the Hessian batch).
  """

  def __init__(self, loss_fn, task, keys: oracles.TaskKeys, *,
               step_sizes: step_sizes_lib.StepSizes, num_steps: int, sampler,
               seg: Segmentation, keep_batches: bool = False,
               keep_grads: bool = False):
    self.loss_fn = loss_fn
    self.task = task
    self.keys = keys
    self.step_sizes = step_sizes
    self.num_steps = num_steps
    self.sampler = sampler
    self.seg = seg
    self.keep_batches = keep_batches
    self.keep_grads = keep_grads
    self.grad_fn = jax.value_and_grad(loss_fn)

  def with_step_sizes(self, step_sizes):
    """The same loop with other step sizes (e.g. a traced value to differentiate)."""
    loop = copy.copy(self)
    loop.step_sizes = step_sizes
    return loop

  def support(self, j, params):
    """S_j, the support batch of step j at the iterate ``params`` = w_j."""
    key = step_key(self.keys.support, j, self.num_steps)
    return step_batch(self.task.support, j, params, key, self.sampler,
                      'task.support')

  def hessian(self, j, params, support_batch):
    """D_j: the task's Hessian batch, or the support batch S_j when None."""
    if self.task.hessian is None:
      return support_batch
    key = step_key(self.keys.hessian, j, self.num_steps)
    return step_batch(self.task.hessian, j, params, key, self.sampler,
                      'task.hessian')

  def _keeps_batches(self, store):
    reused = (isinstance(self.task.support, base.Sampled)
              and self.task.hessian is None)
    return self.keep_batches or (store and reused)

  def run(self, params, start, length, store):
    """Steps start..start+length-1 from ``params``: (params after, ``Steps``).

    ``store`` keeps the iterates w_j (for a backward recursion).
    """
    ss = self.step_sizes

    def body(w, j):
      batch = self.support(j, w)
      loss, grad = self.grad_fn(w, batch)
      w_next = optax.tree.sub(w, ss.scale(ss.at(j), grad))
      if self.seg.padded:
        valid = j < self.num_steps
        w_next = optax.tree.where(valid, w_next, w)
        loss = jnp.where(valid, loss, jnp.zeros_like(loss))
        grad = optax.tree.where(valid, grad, optax.tree.zeros_like(grad))
      return w_next, Steps(params=w if store else None,
                           grads=grad if self.keep_grads else None,
                           batches=batch if self._keeps_batches(store) else None,
                           losses=loss)

    return jax.lax.scan(body, params, start + jnp.arange(length))

  def flatten_steps(self, stacked):
    """[segments, length, ...] -> [N, ...] (drops the padding steps)."""
    return jax.tree.map(
        lambda x: x.reshape((-1,) + x.shape[2:])[:self.num_steps], stacked)

  def forward(self, params, *, keep_segment_starts: bool = False,
              checkpoint: bool = False) -> Forward:
    """All N steps, segment by segment.

    Args:
      params: w_0.
      keep_segment_starts: return the first iterate of every segment.
      checkpoint: wrap each segment in ``jax.checkpoint`` (autodiff remat).
    """
    seg = self.seg

    def segment(w, s):
      w_end, steps = self.run(w, s * seg.length, seg.length, store=False)
      return w_end, (w if keep_segment_starts else None, steps)

    if checkpoint:
      segment = jax.checkpoint(segment)
    w_n, (starts, steps) = jax.lax.scan(segment, params,
                                        jnp.arange(seg.num_segments))
    return Forward(w_n, starts, self.flatten_steps(steps))

  def trajectory(self, params):
    """All N steps keeping every iterate: (w_N, ``Steps`` with the w_j)."""
    return self.run(params, 0, self.num_steps, store=True)


def adapt(loss_fn: base.LossFn, params: base.Params, support: Any, *,
          inner_lr, num_steps: int, sampler: base.Sampler = None,
          key: Optional[chex.PRNGKey] = None, has_aux: bool = False):
  """Runs the inner loop of eq. (1): ``num_steps`` gradient steps on ``support``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (``-> (scalar, aux)`` with
      ``has_aux=True``).
    params: w_0, or a ``LearnedInnerLR`` whose step sizes are used (then
      ``inner_lr`` may be None).
    support: a batch, ``PerStep`` or ``Sampled`` (as ``Task.support``).
    inner_lr: alpha, in any form a ``LearnedInnerLR`` accepts (a per-step
      one needs ``num_steps`` = its length N).
    num_steps: number of inner steps (0 returns ``params``).
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` support.
    key: PRNG key for ``Sampled`` support (split as in ``task_keys``).
    has_aux: ``loss_fn`` returns ``(loss, aux)``; only the loss is used.

  Returns:
    (adapted parameters w_N, support losses l(w_j; S_j) of shape [num_steps]).
  """
  if isinstance(params, step_sizes_lib.LearnedInnerLR):
    params, inner_lr = params.params, params.inner_lr
  inner_lr = validation.check_inner_lr(inner_lr, allow_none=False)
  if num_steps == 0:
    return params, jnp.zeros((0,))
  num_steps = validation.check_positive_int(num_steps, 'num_steps')
  value_fn = validation.value_only(loss_fn, has_aux)
  keys = oracles.task_keys(jax.random.PRNGKey(0) if key is None else key,
                           num_steps)
  loop = InnerLoop(value_fn, base.Task(support=support, query=None), keys,
                   step_sizes=step_sizes_lib.StepSizes.resolve(
                       inner_lr, params, num_steps),
                   num_steps=num_steps, sampler=sampler,
                   seg=segmentation(num_steps, False))
  fwd = loop.forward(params)
  return fwd.adapted, fwd.steps.losses
