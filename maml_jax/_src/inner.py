"""The N-step inner loop of eq. (1)/(6) as a ``lax.scan``, with optional remat.

    w_0 = w,   w_{j+1} = w_j - alpha_j ⊙ grad l(w_j; S_j),   j = 0..N-1

(alpha_j a fixed or learned step size, see ``step_sizes``). The batch S_j comes
from the task's ``support`` field: a plain batch (every step), a ``PerStep``
(slice j) or a ``Sampled`` (drawn at w_j with the step's key). Steps are run in
segments so that ``remat`` can keep only every k-th iterate (k ~ sqrt(N)) and
recompute the rest; steps past N (padding of the last segment) leave the
parameters unchanged.

Two public entry points run it outside an estimator: ``adapt`` (w_N and the
support losses) and ``adaptation_curve`` (also a user function evaluated at
every iterate w_0..w_K, and the support batches drawn).
"""

import copy
import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

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
    evaluations: ``evaluate(w_j)`` of the loop's ``evaluate``, or None.
  """
  params: Any
  grads: Any
  batches: Any
  losses: chex.Array
  evaluations: Any = None


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
  ``evaluate``, if given, is called at every iterate w_j a step starts from
  (``adaptation_curve``).
  """

  def __init__(self, loss_fn, task, keys: oracles.TaskKeys, *,
               step_sizes: step_sizes_lib.StepSizes, num_steps: int, sampler,
               seg: Segmentation, keep_batches: bool = False,
               keep_grads: bool = False, evaluate=None):
    self.loss_fn = loss_fn
    self.task = task
    self.keys = keys
    self.step_sizes = step_sizes
    self.num_steps = num_steps
    self.sampler = sampler
    self.seg = seg
    self.keep_batches = keep_batches
    self.keep_grads = keep_grads
    self.evaluate = evaluate
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
      return w_next, Steps(
          params=w if store else None,
          grads=grad if self.keep_grads else None,
          batches=batch if self._keeps_batches(store) else None,
          losses=loss,
          evaluations=None if self.evaluate is None else self.evaluate(w))

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


class AdaptationCurve(NamedTuple):
  """What ``adaptation_curve`` returns for K inner steps.

  Attributes:
    adapted: w_K, the parameters after the K steps.
    support_losses: [K], the support loss l(w_k; S_k) of every step.
    evaluations: ``evaluate(w_k)`` for k = 0..K, every leaf stacked on a
      leading axis of length K + 1; None without ``evaluate``.
    support_batches: the batches S_0..S_{K-1} the steps used, stacked
      ([K, ...]), with ``keep_batches=True``; else None.
  """
  adapted: Any
  support_losses: chex.Array
  evaluations: Any = None
  support_batches: Any = None


def _check_per_step_support(support, num_steps):
  if not isinstance(support, base.PerStep):
    return
  for leaf in jax.tree.leaves(support.batches):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_steps:
      raise ValueError(
          'support is PerStep, so every leaf needs a leading axis of '
          f'num_inner_steps={num_steps}; got shape {jnp.shape(leaf)}.')


def _stack_with(stacked, last):
  """Appends ``last`` to the [K, ...] leaves of ``stacked`` -> [K + 1, ...]."""
  return jax.tree.map(
      lambda xs, x: jnp.concatenate([xs, jnp.asarray(x, xs.dtype)[None]]),
      stacked, last)


def _curve_lengths(num_inner_steps, inner_lr_steps, num_steps):
  """(K, N) from ``adaptation_curve``'s keywords, old or new.

  New: K = ``num_inner_steps``, N = ``inner_lr_steps``. Old (deprecated, told
  apart by ``num_steps``, which it required): K = ``num_steps``, and
  ``num_inner_steps`` was N.
  """
  if num_steps is None:
    if num_inner_steps is None:
      raise TypeError('adaptation_curve() missing the keyword argument '
                      "'num_inner_steps'.")
    return num_inner_steps, inner_lr_steps
  if num_inner_steps is not None and inner_lr_steps is not None:
    raise TypeError('adaptation_curve() got num_steps, num_inner_steps and '
                    'inner_lr_steps; pass num_inner_steps=K and '
                    'inner_lr_steps=N only.')
  validation.deprecated(
      'adaptation_curve(..., num_steps=K, num_inner_steps=N) is deprecated; '
      'use num_inner_steps=K, inner_lr_steps=N', stacklevel=3)
  return num_steps, (inner_lr_steps if num_inner_steps is None
                     else num_inner_steps)


def adaptation_curve(loss_fn: base.LossFn, params: base.Params, support: Any,
                     *, inner_lr=None, num_inner_steps: Optional[int] = None,
                     evaluate: Optional[Callable[[base.Params], Any]] = None,
                     inner_lr_steps: Optional[int] = None,
                     sampler: base.Sampler = None,
                     key: Optional[chex.PRNGKey] = None,
                     has_aux: bool = False,
                     keep_batches: bool = False,
                     num_steps: Optional[int] = None) -> AdaptationCurve:
  """Runs K inner steps and evaluates every iterate w_0..w_K: a learning curve.

      w_0 = params,  w_{k+1} = w_k - alpha_k ⊙ grad l(w_k; S_k),  k < K

  as one ``lax.scan`` (the estimators' inner step), with ``evaluate(w_k)``
  computed inside the scan, so only the evaluations are stored, never the
  iterates. Use it for the query loss or accuracy after 0..K steps of a
  held-out task, or to see the episodes drawn at every w_k (``Sampled``
  support with ``keep_batches``).

  The step sizes may be per step, with a leading axis of length N =
  ``inner_lr_steps`` (the inner steps the step sizes were meta-trained for);
  K may differ from N. Steps k >= N have no step size of their own and use
  the last one, alpha_{N-1}.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (``-> (scalar, aux)`` with
      ``has_aux=True``).
    params: w_0, or a ``LearnedInnerLR`` whose step sizes are used (then
      ``inner_lr`` may be None).
    support: a batch (used at every step), a ``PerStep`` (leaves with a
      leading axis of K = ``num_inner_steps``) or a ``Sampled`` (S_k drawn at
      w_k).
    inner_lr: alpha, in any form a ``LearnedInnerLR`` accepts; a per-step one
      has a leading axis of length N = ``inner_lr_steps``.
    num_inner_steps: K >= 0, the number of inner steps, as in ``adapt``.
    evaluate: ``evaluate(w) -> pytree`` of arrays (a query loss, a dict of
      metrics, predictions), or None.
    inner_lr_steps: N, the length of a per-step ``inner_lr`` (the
      ``num_inner_steps`` it was learned for); defaults to K.
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` support.
    key: PRNG key for ``Sampled`` support (split as in ``task_keys`` for K
      steps: the draws depend on K); default ``PRNGKey(0)``.
    has_aux: ``loss_fn`` returns ``(loss, aux)``; only the loss is used.
    keep_batches: also return the support batches S_0..S_{K-1}.
    num_steps: deprecated (it warns): the old name of K. With it,
      ``num_inner_steps`` keeps its old meaning, N (now ``inner_lr_steps``).

  Returns:
    ``AdaptationCurve(adapted, support_losses, evaluations,
    support_batches)``: w_K, the [K] support losses, ``evaluate(w_k)``
    stacked over k = 0..K ([K + 1, ...]; None without ``evaluate``) and, with
    ``keep_batches``, the [K, ...] support batches.

  Example:
    >>> curve = mj.adaptation_curve(
    ...     loss_fn, params, task.support, inner_lr=0.01, num_inner_steps=10,
    ...     evaluate=lambda w: loss_fn(w, task.query))
    >>> curve.evaluations        # [11]: query loss after 0, 1, ..., 10 steps
    >>> meta = mj.LearnedInnerLR(params, per_step_alpha)   # leading axis N=3
    >>> mj.adaptation_curve(loss_fn, meta, support, num_inner_steps=10,
    ...                     inner_lr_steps=3)   # steps 3..9 use alpha_2
  """
  num_steps, inner_lr_steps = _curve_lengths(num_inner_steps, inner_lr_steps,
                                             num_steps)
  if isinstance(params, step_sizes_lib.LearnedInnerLR):
    params, inner_lr = params.params, params.inner_lr
  validation.check_callable(loss_fn, 'loss_fn')
  if evaluate is not None:
    validation.check_callable(evaluate, 'evaluate')
  if sampler is not None:
    validation.check_callable(sampler, 'sampler')
  inner_lr = validation.check_inner_lr(inner_lr, allow_none=False)
  if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) \
      or num_steps < 0:
    raise ValueError('num_inner_steps must be an integer >= 0, got '
                     f'{num_steps!r}.')
  num_steps = int(num_steps)
  key = jax.random.PRNGKey(0) if key is None else key
  if num_steps == 0:
    return _no_steps(params, support, evaluate=evaluate, sampler=sampler,
                     key=key, keep_batches=keep_batches)
  inner_lr_steps = validation.check_positive_int(
      num_steps if inner_lr_steps is None else inner_lr_steps,
      'inner_lr_steps')
  _check_per_step_support(support, num_steps)
  loop = InnerLoop(validation.value_only(loss_fn, has_aux),
                   base.Task(support=support, query=None),
                   oracles.task_keys(key, num_steps),
                   step_sizes=step_sizes_lib.StepSizes.resolve(
                       inner_lr, params, inner_lr_steps),
                   num_steps=num_steps, sampler=sampler,
                   seg=segmentation(num_steps, False),
                   keep_batches=keep_batches, evaluate=evaluate)
  adapted, steps = loop.run(params, 0, num_steps, store=False)
  evaluations = (None if evaluate is None
                 else _stack_with(steps.evaluations, evaluate(adapted)))
  return AdaptationCurve(adapted, steps.losses, evaluations, steps.batches)


def _no_steps(params, support, *, evaluate, sampler, key, keep_batches):
  """``adaptation_curve`` with K = 0: w_0, evaluate(w_0) and empty arrays."""
  evaluations = None
  if evaluate is not None:
    evaluations = jax.tree.map(lambda x: jnp.asarray(x)[None],
                               evaluate(params))
  batches = None
  if keep_batches:
    example = jax.eval_shape(
        lambda p: example_batch(support, p, sampler, 'support', key), params)
    batches = jax.tree.map(lambda s: jnp.zeros((0,) + s.shape, s.dtype),
                           example)
  return AdaptationCurve(params, jnp.zeros((0,)), evaluations, batches)


def adapt(loss_fn: base.LossFn, params: base.Params, support: Any, *,
          inner_lr, num_inner_steps: Optional[int] = None,
          sampler: base.Sampler = None, key: Optional[chex.PRNGKey] = None,
          has_aux: bool = False, num_steps: Optional[int] = None):
  """Runs the inner loop of eq. (1): N gradient steps on ``support``.

  ``adaptation_curve`` does the same and also evaluates every iterate.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (``-> (scalar, aux)`` with
      ``has_aux=True``).
    params: w_0, or a ``LearnedInnerLR`` whose step sizes are used (then
      ``inner_lr`` may be None).
    support: a batch, ``PerStep`` or ``Sampled`` (as ``Task.support``).
    inner_lr: alpha, in any form a ``LearnedInnerLR`` accepts (a per-step
      one needs ``num_inner_steps`` = its length N).
    num_inner_steps: N, the number of inner steps (0 returns ``params``), as
      in the estimators.
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` support.
    key: PRNG key for ``Sampled`` support (split as in ``task_keys``).
    has_aux: ``loss_fn`` returns ``(loss, aux)``; only the loss is used.
    num_steps: the old name of ``num_inner_steps`` (deprecated: it warns).

  Returns:
    (adapted parameters w_N, support losses l(w_j; S_j) of shape [N]).

  Example:
    >>> w_n, losses = mj.adapt(loss_fn, params, task.support, inner_lr=0.01,
    ...                        num_inner_steps=5)
  """
  n = validation.renamed(num_inner_steps, num_steps, name='num_inner_steps',
                         old_name='num_steps', where='adapt')
  if n != 0:
    n = validation.check_positive_int(n, 'num_inner_steps')
  curve = adaptation_curve(loss_fn, params, support, inner_lr=inner_lr,
                           num_inner_steps=n, sampler=sampler, key=key,
                           has_aux=has_aux)
  return curve.adapted, curve.support_losses
