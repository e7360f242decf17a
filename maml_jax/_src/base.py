"""Core types of maml_jax: tasks, batch markers, estimator outputs.

The contract with the model is one function, ``loss_fn(params, batch) -> scalar``.
A task carries the batches that loss function is evaluated on.
"""

from typing import Any, Callable, NamedTuple, Optional, Protocol

import chex

Params = Any  # a pytree of arrays
Batch = Any  # whatever ``loss_fn`` accepts as its second argument
LossFn = Callable[[Params, Batch], chex.Array]


class PerStep(NamedTuple):
  """A support (or Hessian) batch given separately for every inner step.

  ``batches`` is a pytree whose leaves all carry a leading axis of length
  ``num_inner_steps``: slice ``j`` is the batch S_j (or D_j) of inner step j,
  i.e. the resampling case of Algorithm 1 with data drawn ahead of time.
  """
  batches: Batch


class Sampled(NamedTuple):
  """A batch drawn by the estimator's ``sampler`` at the parameters it is used at.

  ``data`` is the task's description (e.g. a goal position); the estimator
  calls ``sampler(params_j, data, key) -> batch`` with the inner parameters
  w_j for the support batch S_j and the Hessian batch D_j of step j, and with
  the adapted parameters w_N for the query batch T. Sampled batches are data:
  no gradient flows through the sampler (``lax.stop_gradient``); a loss that
  needs the score-function term (meta-RL) writes it into ``loss_fn``.
  """
  data: Any


class Task(NamedTuple):
  """One task's data for an N-step MAML meta-gradient.

  Attributes:
    support: batch for the inner steps: a plain batch (reused at every inner
      step, the finite-sum case), a ``PerStep`` (a fresh batch S_j per step) or
      a ``Sampled`` (drawn with w_j, the resampling case of Algorithm 1).
    query: batch T of the outer loss l(w_N; T): a plain batch or ``Sampled``.
    hessian: batch D_j of the Hessian (estimate) terms of eq. (8): ``None``
      (use the support batch of the same step), a plain batch, a ``PerStep``
      or a ``Sampled``.
  """
  support: Any
  query: Any
  hessian: Any = None


class EstimatorAux(NamedTuple):
  """What one task's estimator reports besides the meta-gradient.

  Attributes:
    query_loss_before: l(w_0; T), the query loss of the meta parameters.
    query_loss_after: l(w_N; T), the query loss after N inner steps.
    inner_losses: shape [N], support loss l(w_j; S_j) at every inner step.
    finite: whether every entry of the meta-gradient is finite.
    adapted_params: w_N, the parameters after the N inner steps (no gradient
      flows through it).
    support_batches: the batches S_0..S_{N-1} the inner steps used, stacked
      ([N, ...]), when the estimator was built with ``keep_batches=True``;
      else None.
    query_batch: the batch T of the outer loss with ``keep_batches=True``;
      else None.
    query_aux_before: with ``has_aux=True``, the aux of the query loss at
      w_0 (None when ``query_loss_before`` is not computed); else None.
    query_aux_after: with ``has_aux=True``, the aux of l(w_N; T); else None.

  ``query_loss_before`` is None unless the estimator was built with
  ``loss_before=True`` (it costs a forward pass of the query batch at w_0).
  """
  query_loss_before: chex.Array
  query_loss_after: chex.Array
  inner_losses: chex.Array
  finite: chex.Array
  adapted_params: Any = None
  support_batches: Any = None
  query_batch: Any = None
  query_aux_before: Any = None
  query_aux_after: Any = None


class MetaEstimator(Protocol):
  """``est(params, task, key) -> (meta_grads, EstimatorAux)`` for ONE task.

  ``params`` is w_0, or a ``LearnedInnerLR`` (then so is ``meta_grads``).
  Every builder returns one: the named factories (``maml`` ... ``hf_maml``,
  whose names are ``ESTIMATORS``), ``make_estimator(name, ...)`` and
  ``custom_estimator(loss_fn, hvp, ...)``.
  """

  def __call__(self, params: Params, task: Task,
               key: chex.PRNGKey) -> tuple[Params, EstimatorAux]:
    ...


class HvpOracle(Protocol):
  """``hvp(params, batch, v, key) -> H v`` (exact or estimated Hessian of loss).

  What ``custom_estimator`` plugs into the backward recursion, where
  ``hvp=None`` means first order (no Hessian terms).
  """

  def __call__(self, params: Params, batch: Batch, v: Params,
               key: chex.PRNGKey) -> Params:
    ...


Sampler = Optional[Callable[[Params, Any, chex.PRNGKey], Batch]]
