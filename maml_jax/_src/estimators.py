"""Per-task N-step MAML meta-gradient estimators (Algorithms 1 and 2).

Every estimator is the same two pieces, differing only in the Hessian-vector
oracle plugged into the backward recursion:

  forward   w_{j+1} = w_j - alpha_j ⊙ grad l(w_j; S_j)                eq. (1)
  backward  v = grad l(w_N; T);  for j = N-1..0: v <- v - H_j (alpha_j ⊙ v)
                                     eq. (8); docs/design.md, 'Step sizes'

so that v = prod_j (I - alpha H_j) grad l(w_N; T), with H_j v from
``exact_hvp`` (MAML), none (``hvp=None``, FO-MAML), ``zo_hvp`` (eq. 17, ZO-MAML),
``ggs_hvp`` (eq. 18/19, GGS-MAML) or ``fd_hvp`` (HF-MAML). Three builders
compute it:

  ``_first_order``       no Hessian terms: G = grad l(w_N; T);
  ``_through_scan``      ``jax.grad`` of l(w_N(w); T) through the ``lax.scan``;
  ``_explicit_product``  the backward recursion with a pluggable oracle. It
                         stores the iterates w_j (O(N d)) and recomputes step
                         j's directions, gradient differences and batches
                         inside the recursion, so the random estimators never
                         keep b x d arrays across steps. With ``remat`` only
                         every k-th iterate (k ~ sqrt(N)) is kept and each
                         segment is recomputed.

Called with a ``LearnedInnerLR`` as params, each returns the gradient w.r.t.
the step sizes too, from the same recursion: dL/d alpha_j = -g_j ⊙ v_{j+1}.
"""

import functools
import inspect
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import inner
from maml_jax._src import oracles
from maml_jax._src import step_sizes as step_sizes_lib
from maml_jax._src import validation

_BACKPROP = ('auto', 'autodiff', 'product')


class _Settings(NamedTuple):
  """A factory's static hyperparameters (and its fixed inner_lr, if any)."""
  value_fn: Any       # loss_fn(params, batch) -> scalar
  loss_and_aux: Any   # loss_fn(params, batch) -> (scalar, aux or None)
  inner_lr: Any
  num_steps: int
  sampler: Any
  remat: Any
  seg: inner.Segmentation
  keep_batches: bool
  loss_before: bool
  has_aux: bool


def _settings(loss_fn, *, inner_lr, num_inner_steps, sampler, remat,
              keep_batches, loss_before, has_aux) -> _Settings:
  validation.check_callable(loss_fn, 'loss_fn')
  if sampler is not None:
    validation.check_callable(sampler, 'sampler')
  if loss_before not in (True, False):
    raise ValueError(f'loss_before must be True or False, got '
                     f'{loss_before!r}.')
  num_steps = validation.check_positive_int(num_inner_steps, 'num_inner_steps')
  remat = validation.check_remat(remat)
  return _Settings(
      value_fn=validation.value_only(loss_fn, has_aux),
      loss_and_aux=validation.with_aux(loss_fn, has_aux),
      inner_lr=validation.check_inner_lr(inner_lr, allow_none=True),
      num_steps=num_steps, sampler=sampler, remat=remat,
      seg=inner.segmentation(num_steps, remat),
      keep_batches=bool(keep_batches), loss_before=loss_before,
      has_aux=bool(has_aux))


def _check_task(task, params, loop, num_steps, sampler, value_fn):
  """Trace-time checks of one task against the estimator's settings."""
  if not isinstance(task, base.Task):
    raise ValueError(f'task must be a maml_jax.Task, got {type(task).__name__}.')
  validation.check_params(params)
  for name in ('support', 'hessian'):
    spec = getattr(task, name)
    if isinstance(spec, base.PerStep):
      for leaf in jax.tree.leaves(spec.batches):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_steps:
          raise ValueError(
              f'task.{name} is PerStep, so every leaf needs a leading axis of '
              f'num_inner_steps={num_steps}; got shape {jnp.shape(leaf)}.')
  if isinstance(task.query, base.PerStep):
    raise ValueError('task.query cannot be PerStep: the outer loss uses one '
                     'batch T.')
  support = inner.example_batch(task.support, params, sampler, 'task.support',
                                loop.keys.query)
  validation.check_scalar_loss(value_fn, params, support, 'task.support')
  query = inner.example_batch(task.query, params, sampler, 'task.query',
                              loop.keys.query)
  validation.check_batch_fits(query, support, 'task.query', 'task.support')
  if task.hessian is not None:
    hessian = inner.example_batch(task.hessian, params, sampler, 'task.hessian',
                                  loop.keys.query)
    validation.check_batch_fits(hessian, support, 'task.hessian',
                                'task.support')


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                            for x in jax.tree.leaves(tree)]))


class _Call(NamedTuple):
  """One call's resolved inputs: w_0, the step sizes, the loop, the query."""
  w0: Any
  step_sizes: step_sizes_lib.StepSizes
  learned: bool
  loop: inner.InnerLoop
  query_batch: Any  # w -> T


def _prepare(s: _Settings, params, task, key, *, keep_grads=False) -> _Call:
  learned = isinstance(params, step_sizes_lib.LearnedInnerLR)
  if learned:
    w0 = params.params
    lr = validation.check_inner_lr(params.inner_lr, allow_none=False)
  else:
    w0, lr = params, s.inner_lr
  ss = step_sizes_lib.StepSizes.resolve(lr, w0, s.num_steps)
  keys = oracles.task_keys(key, s.num_steps)
  loop = inner.InnerLoop(s.value_fn, task, keys, step_sizes=ss,
                         num_steps=s.num_steps, sampler=s.sampler, seg=s.seg,
                         keep_batches=s.keep_batches,
                         keep_grads=keep_grads and learned)
  _check_task(task, w0, loop, s.num_steps, s.sampler, s.value_fn)

  def query_batch(w):
    return inner.step_batch(task.query, 0, w, keys.query, s.sampler,
                            'task.query')

  return _Call(w0, ss, learned, loop, query_batch)


def _finish(s: _Settings, call: _Call, *, grads_w, grads_lr, w_n, losses,
            support, query, loss_after, aux_after):
  """The meta-gradient (a ``LearnedInnerLR`` if the step sizes are learned) and
  the ``EstimatorAux`` shared by every builder."""
  grads = (step_sizes_lib.LearnedInnerLR(grads_w, grads_lr) if call.learned
           else grads_w)
  if s.loss_before:
    loss_b, aux_b = s.loss_and_aux(call.w0, call.query_batch(call.w0))
  else:
    loss_b, aux_b = None, None
  aux = base.EstimatorAux(
      query_loss_before=loss_b, query_loss_after=loss_after,
      inner_losses=losses, finite=_all_finite(grads),
      adapted_params=jax.lax.stop_gradient(w_n),
      support_batches=support if s.keep_batches else None,
      query_batch=query if s.keep_batches else None,
      query_aux_before=aux_b, query_aux_after=aux_after)
  return grads, aux


def _step_lr_grads(call: _Call, grads_stacked, v):
  """FO-MAML's step-size gradient: v_{j+1} = v = grad l(w_N; T) at every j."""
  ss = call.step_sizes
  per_step = jax.vmap(lambda g: ss.step_grad(g, v))(grads_stacked)
  return ss.collect(per_step)


def _first_order(s: _Settings):
  """G = grad l(w_N; T): every Hessian term dropped (FO-MAML)."""

  def est(params, task, key):
    call = _prepare(s, params, task, key, keep_grads=True)
    fwd = call.loop.forward(call.w0)
    query = call.query_batch(fwd.adapted)
    (loss_after, aux_after), grads_w = jax.value_and_grad(
        s.loss_and_aux, has_aux=True)(fwd.adapted, query)
    grads_lr = (_step_lr_grads(call, fwd.steps.grads, grads_w)
                if call.learned else None)
    return _finish(s, call, grads_w=grads_w, grads_lr=grads_lr,
                   w_n=fwd.adapted, losses=fwd.steps.losses,
                   support=fwd.steps.batches, query=query,
                   loss_after=loss_after, aux_after=aux_after)

  return est


def _through_scan(s: _Settings):
  """``jax.grad`` of l(w_N(w_0, alpha); T) through the inner ``lax.scan``."""

  def est(params, task, key):
    call = _prepare(s, params, task, key)
    if task.hessian is not None:
      raise ValueError(
          'autodiff meta-gradients need task.hessian=None (Hessians of the '
          'support loss); use the explicit product for a separate Hessian '
          'batch.')

    def outer_loss(w0, lr):
      loop = call.loop.with_step_sizes(call.step_sizes.with_value(lr))
      fwd = loop.forward(w0, checkpoint=s.remat is not False)
      query = call.query_batch(fwd.adapted)
      loss, aux_after = s.loss_and_aux(fwd.adapted, query)
      return loss, (fwd, query, aux_after)

    argnums = (0, 1) if call.learned else 0
    (loss_after, (fwd, query, aux_after)), grads = jax.value_and_grad(
        outer_loss, argnums=argnums, has_aux=True)(call.w0,
                                                   call.step_sizes.value)
    grads_w, grads_lr = grads if call.learned else (grads, None)
    return _finish(s, call, grads_w=grads_w, grads_lr=grads_lr,
                   w_n=fwd.adapted, losses=fwd.steps.losses,
                   support=fwd.steps.batches, query=query,
                   loss_after=loss_after, aux_after=aux_after)

  return est


def _explicit_product(s: _Settings, hvp: base.HvpOracle):
  """The backward recursion v_j = v_{j+1} - H_j (alpha_j ⊙ v_{j+1}), eq. (8)."""
  num_steps, seg = s.num_steps, s.seg

  def est(params, task, key):
    call = _prepare(s, params, task, key, keep_grads=True)
    loop, ss = call.loop, call.step_sizes

    def backward_step(v, xs):
      j, steps = xs
      s_j = steps.batches
      if task.hessian is None and s_j is None:
        s_j = loop.support(j, steps.params)
      d_j = loop.hessian(j, steps.params, s_j)
      k_j = inner.step_key(loop.keys.directions, j, num_steps)
      alpha_j = ss.at(j)
      if ss.kind == step_sizes_lib.SCALAR:
        # v - alpha H v: the oracle sees v itself (HF-MAML's finite
        # difference then steps by delta |v|, not delta alpha |v|).
        v_next = optax.tree.sub(v, ss.scale(alpha_j, hvp(steps.params, d_j,
                                                         v, k_j)))
      else:
        v_next = optax.tree.sub(v, hvp(steps.params, d_j, ss.scale(alpha_j, v),
                                       k_j))
      lr_grad = ss.step_grad(steps.grads, v) if call.learned else None
      if seg.padded:
        valid = j < num_steps
        v_next = optax.tree.where(valid, v_next, v)
        if call.learned:
          lr_grad = optax.tree.where(valid, lr_grad,
                                     optax.tree.zeros_like(lr_grad))
      return v_next, lr_grad

    if s.remat is False:
      w_n, steps = loop.trajectory(call.w0)
      losses, support = steps.losses, steps.batches
    else:
      fwd = loop.forward(call.w0, keep_segment_starts=True)
      w_n, losses, support = fwd.adapted, fwd.steps.losses, fwd.steps.batches
    query = call.query_batch(w_n)
    (loss_after, aux_after), v = jax.value_and_grad(
        s.loss_and_aux, has_aux=True)(w_n, query)

    if s.remat is False:
      v, lr_grads = jax.lax.scan(backward_step, v,
                                 (jnp.arange(num_steps), steps), reverse=True)
    else:

      def backward_segment(v, xs):
        seg_index, w_start = xs
        first = seg_index * seg.length
        _, seg_steps = loop.run(w_start, first, seg.length, store=True)
        return jax.lax.scan(backward_step, v,
                            (first + jnp.arange(seg.length), seg_steps),
                            reverse=True)

      v, lr_grads = jax.lax.scan(
          backward_segment, v,
          (jnp.arange(seg.num_segments), fwd.segment_starts), reverse=True)
      lr_grads = loop.flatten_steps(lr_grads)
    grads_lr = ss.collect(lr_grads) if call.learned else None
    return _finish(s, call, grads_w=v, grads_lr=grads_lr, w_n=w_n,
                   losses=losses, support=support, query=query,
                   loss_after=loss_after, aux_after=aux_after)

  return est


def _build(s: _Settings, hvp, *, autodiff=False) -> base.MetaEstimator:
  """The builder of the recursion for ``hvp`` (None: first order)."""
  if autodiff:
    return _through_scan(s)
  if hvp is None:
    return _first_order(s)
  validation.check_callable(hvp, 'hvp')
  return _explicit_product(s, hvp)


def custom_estimator(loss_fn: base.LossFn,
                     hvp: Optional[base.HvpOracle],
                     *,
                     inner_lr=None,
                     num_inner_steps: int,
                     sampler: base.Sampler = None,
                     remat=False,
                     keep_batches: bool = False,
                     has_aux: bool = False,
                     loss_before: bool = False) -> base.MetaEstimator:
  """Builds a per-task meta-gradient estimator from any Hessian-vector oracle.

  G = prod_{j=0}^{N-1} (I - alpha_j H_j) grad l(w_N; T)     (eq. 8 / eq. 19)

  The named estimators (``maml``, ``fo_maml``, ``zo_maml``, ``ggs_maml``,
  ``hf_maml``) are this builder with one of the library's oracles; give it
  your own ``hvp`` to try another Hessian estimate in the same recursion.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; the whole model contract.
      With ``has_aux=True``: ``loss_fn(params, batch) -> (scalar, aux)``.
    hvp: ``hvp(params, batch, v, key) -> H v`` for the H_j terms (evaluated on
      the Hessian batch D_j at w_j with step j's direction key; an oracle of
      the scalar loss), or None for first-order MAML: no Hessian terms,
      G = grad l(w_N; T), without the recursion or its memory (``fo_maml``).
    inner_lr: alpha, the inner stepsize: a positive Python number, or data
      (an array, a tracer, a pytree in any form ``LearnedInnerLR`` accepts)
      that may be vmapped over and differentiated. None: the estimator must
      be called with a ``LearnedInnerLR`` as params. A ``LearnedInnerLR``
      passed as params always overrides it.
    num_inner_steps: N >= 1.
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` batches.
    remat: False (keep every iterate, memory O(N d)), True (keep every
      ceil(sqrt(N))-th and recompute, memory O(sqrt(N) d)) or an int segment
      length.
    keep_batches: also return the batches the estimator used, S_0..S_{N-1}
      stacked ([N, ...]) and T, in ``aux.support_batches`` / ``aux.query_batch``
      (the sampled episodes of an RL task, say, so that a trust-region step can
      reuse them instead of sampling again). Holds N batches per task.
    has_aux: ``loss_fn`` returns ``(loss, aux)`` (accuracy, logits, model
      statistics); the aux of the query loss at w_N and at w_0 is reported in
      ``EstimatorAux.query_aux_after`` / ``query_aux_before``.
    loss_before: also compute the query loss at w_0, l(w_0; T), for
      monitoring: one more forward pass of the query batch per task (for a
      conv net ~15-20% of a step), for a ``Sampled`` query one more sample
      (a rollout). Off by default, as in a plain PyTorch MAML loop; when not
      computed, ``aux.query_loss_before`` (and the train step's
      'loss_before' metric) is None / absent.

  Returns:
    ``est(params, task, key) -> (meta_grads, EstimatorAux)`` for one task;
    with a ``LearnedInnerLR`` as params, meta_grads is a ``LearnedInnerLR``
    (the gradients w.r.t. w_0 and w.r.t. the step sizes).

  Example:
    >>> my_hvp = lambda params, batch, v, key: ...      # H v, any estimate
    >>> est = mj.custom_estimator(loss_fn, my_hvp, inner_lr=0.01,
    ...                           num_inner_steps=3)
    >>> fo = mj.custom_estimator(loss_fn, None, inner_lr=0.01,
    ...                          num_inner_steps=3)      # = mj.fo_maml
  """
  s = _settings(loss_fn, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                sampler=sampler, remat=remat, keep_batches=keep_batches,
                loss_before=loss_before, has_aux=has_aux)
  return _build(s, hvp)


def estimator(loss_fn: base.LossFn,
              hvp: Optional[base.HvpOracle] = None,
              *,
              autodiff: bool = False,
              **kwargs) -> base.MetaEstimator:
  """Deprecated: the old name of ``custom_estimator`` (it warns).

  ``autodiff=True`` (``jax.grad`` through the inner scan, ignoring ``hvp``)
  is ``maml(..., backprop='autodiff')``.
  """
  if autodiff:
    validation.deprecated(
        "maml_jax.estimator(..., autodiff=True) is deprecated; use "
        "maml_jax.maml(..., backprop='autodiff').")
    return maml(loss_fn, backprop='autodiff', **kwargs)
  validation.deprecated('maml_jax.estimator is deprecated; use '
                        'maml_jax.custom_estimator (hvp=None: first order).')
  return custom_estimator(loss_fn, hvp, **kwargs)


def maml(loss_fn: base.LossFn, *, inner_lr=None, num_inner_steps: int,
         sampler: base.Sampler = None, remat=False,
         backprop: str = 'auto', keep_batches: bool = False,
         has_aux: bool = False,
         loss_before: bool = False) -> base.MetaEstimator:
  """Exact N-step MAML meta-gradient, eq. (3)/(8).

      G = (I - alpha H_0) ... (I - alpha H_{N-1}) grad l(w_N; T)

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)``).
    backprop: 'autodiff' (``jax.grad`` through the ``lax.scan``; needs
      ``task.hessian=None``), 'product' (explicit reverse recursion with exact
      forward-over-reverse Hessian-vector products) or 'auto' (autodiff when
      ``task.hessian`` is None, else product). In the finite-sum case both
      agree to float precision, step-size gradients included.
    inner_lr, num_inner_steps, sampler, remat, keep_batches, has_aux,
      loss_before: as ``custom_estimator`` (``inner_lr`` None takes the step
      sizes from a ``LearnedInnerLR`` passed as params).

  Returns:
    ``est(params, task, key) -> (meta_grads, EstimatorAux)``.

  Example:
    >>> est = maml_jax.maml(loss_fn, inner_lr=0.01, num_inner_steps=3)
    >>> grads, aux = jax.jit(est)(params, maml_jax.Task(support, query), key)
  """
  if backprop not in _BACKPROP:
    raise ValueError(f'backprop must be one of {_BACKPROP}, got {backprop!r}.')
  kwargs = dict(inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                sampler=sampler, remat=remat, keep_batches=keep_batches,
                has_aux=has_aux, loss_before=loss_before)
  s = _settings(loss_fn, **kwargs)
  product = _build(s, oracles.exact_hvp(s.value_fn))
  if backprop == 'product':
    return product
  through_scan = _build(s, None, autodiff=True)
  if backprop == 'autodiff':
    return through_scan

  def est(params, task, key):
    if isinstance(task, base.Task) and task.hessian is not None:
      return product(params, task, key)
    return through_scan(params, task, key)

  return est


def fo_maml(loss_fn: base.LossFn, *, inner_lr=None, num_inner_steps: int,
            sampler: base.Sampler = None, remat=False,
            keep_batches: bool = False, has_aux: bool = False,
            loss_before: bool = False) -> base.MetaEstimator:
  """First-order MAML: every Hessian term dropped, G = grad l(w_N; T).

  Memory O(d) whatever N (``remat`` is accepted for a uniform API and has
  nothing to save). With learned step sizes it keeps the N inner gradients
  g_j for dL/d alpha_j = -g_j ⊙ grad l(w_N; T): O(N d). The same as
  ``custom_estimator(loss_fn, None, ...)``: ``hvp=None`` means first order.
  """
  validation.check_remat(remat)
  return custom_estimator(loss_fn, None, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps, sampler=sampler,
                          keep_batches=keep_batches, has_aux=has_aux,
                          loss_before=loss_before)


def zo_maml(loss_fn: base.LossFn, *, inner_lr=None, num_inner_steps: int,
            num_directions: int, delta: float, subtract_identity: bool = False,
            sampler: base.Sampler = None, remat=False,
            keep_batches: bool = False, has_aux: bool = False,
            loss_before: bool = False) -> base.MetaEstimator:
  """ZO-MAML: eq. (8) with the zeroth-order Hessian estimate of eq. (17).

  Fresh Gaussian directions for every task, inner step and call. The default
  is the paper's estimator, biased by (l_delta - l)/delta^2 I (Proposition 5);
  ``subtract_identity=True`` is the ES-MAML (u u^T - I) variant, which is not
  the paper's ZO-MAML. See ``zo_hvp``; other arguments as
  ``custom_estimator``.
  """
  hvp = oracles.zo_hvp(validation.value_only(loss_fn, has_aux),
                       num_directions=num_directions, delta=delta,
                       subtract_identity=subtract_identity)
  return custom_estimator(loss_fn, hvp, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps, sampler=sampler,
                          remat=remat, keep_batches=keep_batches,
                          has_aux=has_aux, loss_before=loss_before)


def ggs_maml(loss_fn: base.LossFn, *, inner_lr=None, num_inner_steps: int,
             num_directions: int, delta: float, sampler: base.Sampler = None,
             remat=False, keep_batches: bool = False, has_aux: bool = False,
             loss_before: bool = False) -> base.MetaEstimator:
  """GGS-MAML (Algorithm 2): eq. (19) with the GGS Hessian estimate of eq. (18).

      G = prod_{j=0}^{N-1} (I - alpha H_ggs(w_j)) grad l(w_N; T)

  The b perturbed gradients of each step are one ``vmap``; fresh directions
  for every task, inner step and call. See ``ggs_hvp``; other arguments as
  ``custom_estimator``.
  """
  hvp = oracles.ggs_hvp(validation.value_only(loss_fn, has_aux),
                        num_directions=num_directions, delta=delta)
  return custom_estimator(loss_fn, hvp, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps, sampler=sampler,
                          remat=remat, keep_batches=keep_batches,
                          has_aux=has_aux, loss_before=loss_before)


def hf_maml(loss_fn: base.LossFn, *, inner_lr=None, num_inner_steps: int,
            delta: float, sampler: base.Sampler = None,
            remat=False, keep_batches: bool = False, has_aux: bool = False,
            loss_before: bool = False) -> base.MetaEstimator:
  """HF-MAML (Fallah et al. 2019): eq. (8) with finite-difference H v products.

  H_j v ~ (grad l(w_j + delta v) - grad l(w_j - delta v)) / (2 delta), applied
  to the running vector v of the backward recursion (to alpha_j ⊙ v for
  per-layer or per-parameter step sizes). See ``fd_hvp``; other arguments as
  ``custom_estimator``.
  """
  hvp = oracles.fd_hvp(validation.value_only(loss_fn, has_aux), delta=delta)
  return custom_estimator(loss_fn, hvp, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps, sampler=sampler,
                          remat=remat, keep_batches=keep_batches,
                          has_aux=has_aux, loss_before=loss_before)


# The registry: one list of estimator names, one dispatcher.
_FACTORIES = {
    'maml': maml,
    'fo_maml': fo_maml,
    'zo_maml': zo_maml,
    'ggs_maml': ggs_maml,
    'hf_maml': hf_maml,
}
ESTIMATORS = tuple(_FACTORIES)


@functools.cache
def hyperparameters(name: str) -> tuple[str, ...]:
  """The keyword arguments the estimator ``name`` takes (besides loss_fn)."""
  _check_name(name)
  sig = inspect.signature(_FACTORIES[name])
  return tuple(p.name for p in sig.parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY)


def estimator_kwargs(name: str, **offered) -> dict:
  """The keyword arguments of ``offered`` that the estimator ``name`` takes.

  For code that builds any estimator from one set of settings (a launcher
  with ``--delta`` and ``--num_directions`` flags, say): it offers them all
  and each estimator gets those it takes (no ``delta`` to 'maml', no
  ``num_directions`` to 'hf_maml'). A separate function, not a lenient mode of
  ``make_estimator``: ``make_estimator`` stays strict, so a misspelt keyword
  passed to it directly is still an error, and the caller says which
  settings are optional by passing them through this function.

  Args:
    name: one of ``ESTIMATORS``.
    **offered: candidate keyword arguments of the estimator's factory.

  Returns:
    A dict of the entries of ``offered`` whose names are in
    ``hyperparameters(name)``, in the order given.

  Raises:
    ValueError: an unknown estimator name.

  Example:
    >>> kwargs = mj.estimator_kwargs('maml', inner_lr=0.01, num_inner_steps=3,
    ...                              num_directions=10, delta=1e-2)
    >>> kwargs
    {'inner_lr': 0.01, 'num_inner_steps': 3}
    >>> est = mj.make_estimator('maml', loss_fn, **kwargs)
  """
  takes = hyperparameters(name)
  return {k: v for k, v in offered.items() if k in takes}


def _check_name(name):
  if name not in _FACTORIES:
    raise ValueError(f'unknown estimator {name!r}; choose one of '
                     f'{", ".join(ESTIMATORS)}.')


def make_estimator(name: str, loss_fn: base.LossFn,
                   **hyperparams) -> base.MetaEstimator:
  """The estimator called ``name`` (one of ``ESTIMATORS``), built from keywords.

  Args:
    name: 'maml', 'fo_maml', 'zo_maml', 'ggs_maml' or 'hf_maml'.
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    **hyperparams: the factory's keyword arguments (``hyperparameters(name)``
      lists them); one the estimator does not take is an error, so a
      launcher passes only what applies (e.g. no ``delta`` to 'maml'):
      ``estimator_kwargs`` picks those from a larger set.

  Raises:
    ValueError: an unknown name, or a hyperparameter the estimator does not
      take (both named in the message).

  Example:
    >>> est = mj.make_estimator('ggs_maml', loss_fn, inner_lr=0.01,
    ...                         num_inner_steps=3, num_directions=10,
    ...                         delta=1e-2)
  """
  _check_name(name)
  accepted = hyperparameters(name)
  unknown = sorted(set(hyperparams) - set(accepted))
  if unknown:
    raise ValueError(f'estimator {name!r} does not take {", ".join(unknown)}; '
                     f'it takes {", ".join(accepted)}.')
  return _FACTORIES[name](loss_fn, **hyperparams)
