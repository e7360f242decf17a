"""Per-task N-step MAML meta-gradient estimators (Algorithms 1 and 2).

Every estimator is the same two pieces, differing only in the Hessian-vector
oracle plugged into the backward recursion:

  forward   w_{j+1} = w_j - alpha grad l(w_j; S_j)                  eq. (1)
  backward  v = grad l(w_N; T);  for j = N-1..0: v <- v - alpha H_j v   eq. (8)

so that v = prod_j (I - alpha H_j) grad l(w_N; T), with H_j v from
``exact_hvp`` (MAML), nothing (FO-MAML), ``zo_hvp`` (eq. 17, ZO-MAML),
``ggs_hvp`` (eq. 18/19, GGS-MAML) or ``fd_hvp`` (HF-MAML). The backward
recursion stores the iterates w_j (O(N d)) and recomputes step j's directions,
gradient differences and batches inside the recursion, so the random
estimators never keep b x d arrays across steps. With ``remat`` only every
k-th iterate (k ~ sqrt(N)) is kept and each segment is recomputed.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import inner
from maml_jax._src import oracles
from maml_jax._src import validation

_BACKPROP = ('auto', 'autodiff', 'product')


def _check_task(task, params, loop, num_steps, sampler):
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
  validation.check_scalar_loss(loop.loss_fn, params, support, 'task.support')
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


def estimator(loss_fn: base.LossFn,
              hvp: Optional[base.HvpOracle] = None,
              *,
              inner_lr: float,
              num_inner_steps: int,
              sampler: base.Sampler = None,
              remat=False,
              autodiff: bool = False,
              keep_batches: bool = False) -> base.MetaEstimator:
  """Builds a per-task meta-gradient estimator from a Hessian-vector oracle.

  G = prod_{j=0}^{N-1} (I - alpha H_j) grad l(w_N; T)     (eq. 8 / eq. 19)

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; the whole model contract.
    hvp: ``hvp(params, batch, v, key) -> H v`` for the H_j terms (evaluated on
      the Hessian batch D_j at w_j with step j's direction key), or None for
      first-order MAML (no Hessian terms: G = grad l(w_N; T)).
    inner_lr: alpha, the inner stepsize.
    num_inner_steps: N >= 1.
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` batches.
    remat: False (keep every iterate, memory O(N d)), True (keep every
      ceil(sqrt(N))-th and recompute, memory O(sqrt(N) d)) or an int segment
      length.
    autodiff: compute the meta-gradient as ``jax.grad`` of l(w_N(w); T)
      through the scan instead of the explicit product (exact Hessians only;
      requires ``task.hessian is None``). Ignores ``hvp``.
    keep_batches: also return the batches the estimator used, S_0..S_{N-1}
      stacked ([N, ...]) and T, in ``aux.support_batches`` / ``aux.query_batch``
      (the sampled episodes of an RL task, say, so that a trust-region step can
      reuse them instead of sampling again). Holds N batches per task.

  Returns:
    ``est(params, task, key) -> (meta_grads, EstimatorAux)`` for one task.
  """
  validation.check_callable(loss_fn, 'loss_fn')
  if hvp is not None:
    validation.check_callable(hvp, 'hvp')
  if sampler is not None:
    validation.check_callable(sampler, 'sampler')
  inner_lr = validation.check_positive_float(inner_lr, 'inner_lr')
  num_steps = validation.check_positive_int(num_inner_steps, 'num_inner_steps')
  remat = validation.check_remat(remat)
  seg = inner.segmentation(num_steps, remat)
  grad_fn = jax.value_and_grad(loss_fn)

  def est(params, task, key):
    keys = oracles.task_keys(key, num_steps)
    loop = inner.InnerLoop(loss_fn, task, keys, inner_lr=inner_lr,
                           num_steps=num_steps, sampler=sampler, seg=seg,
                           keep_batches=keep_batches)
    _check_task(task, params, loop, num_steps, sampler)

    def query_batch(w):
      return inner.step_batch(task.query, 0, w, keys.query, sampler,
                              'task.query')

    if autodiff:
      if task.hessian is not None:
        raise ValueError(
            'autodiff meta-gradients need task.hessian=None (Hessians of the '
            'support loss); use the explicit product for a separate Hessian '
            'batch.')

      def outer_loss(w):
        w_n, _, losses, support = loop.forward(w, keep_segment_starts=False,
                                               checkpoint=remat is not False)
        query = query_batch(w_n)
        return loss_fn(w_n, query), (losses, w_n, support, query)

      (loss_after, (losses, w_n, support, query)), grads = jax.value_and_grad(
          outer_loss, has_aux=True)(params)
    elif hvp is None:
      w_n, _, losses, support = loop.forward(params, keep_segment_starts=False,
                                             checkpoint=False)
      query = query_batch(w_n)
      loss_after, grads = grad_fn(w_n, query)
    else:

      def backward_step(v, xs):
        j, w_j, s_j = xs
        if task.hessian is None and s_j is None:
          s_j = loop.support(j, w_j)
        d_j = loop.hessian(j, w_j, s_j)
        hv = hvp(w_j, d_j, v, keys.directions[jnp.minimum(j, num_steps - 1)])
        v_next = optax.tree.add_scale(v, -inner_lr, hv)
        if seg.padded:
          v_next = optax.tree.where(j < num_steps, v_next, v)
        return v_next, None

      if remat is False:
        w_n, (ws, support), losses = loop.trajectory(params)
        query = query_batch(w_n)
        loss_after, grads = grad_fn(w_n, query)
        grads, _ = jax.lax.scan(backward_step, grads,
                                (jnp.arange(num_steps), ws, support),
                                reverse=True)
      else:
        w_n, starts, losses, support = loop.forward(
            params, keep_segment_starts=True, checkpoint=False)
        query = query_batch(w_n)
        loss_after, grads = grad_fn(w_n, query)

        def backward_segment(v, xs):
          s, w_start = xs
          first = s * seg.length
          _, (ws, batches, _) = loop.run(w_start, first, seg.length, store=True)
          v, _ = jax.lax.scan(backward_step, v,
                              (first + jnp.arange(seg.length), ws, batches),
                              reverse=True)
          return v, None

        grads, _ = jax.lax.scan(backward_segment, grads,
                                (jnp.arange(seg.num_segments), starts),
                                reverse=True)

    loss_before = loss_fn(params, query_batch(params))
    aux = base.EstimatorAux(query_loss_before=loss_before,
                            query_loss_after=loss_after,
                            inner_losses=losses,
                            finite=_all_finite(grads),
                            adapted_params=jax.lax.stop_gradient(w_n),
                            support_batches=support if keep_batches else None,
                            query_batch=query if keep_batches else None)
    return grads, aux

  return est


def maml(loss_fn: base.LossFn, *, inner_lr: float, num_inner_steps: int,
         sampler: base.Sampler = None, remat=False,
         backprop: str = 'auto', keep_batches: bool = False) -> base.MetaEstimator:
  """Exact N-step MAML meta-gradient, eq. (3)/(8).

      G = (I - alpha H_0) ... (I - alpha H_{N-1}) grad l(w_N; T)

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    inner_lr: alpha.
    num_inner_steps: N.
    sampler: ``sampler(params, data, key) -> batch`` for ``Sampled`` batches.
    remat: rematerialize the inner loop (memory ~ sqrt(N)); see ``estimator``.
    backprop: 'autodiff' (``jax.grad`` through the ``lax.scan``; needs
      ``task.hessian=None``), 'product' (explicit reverse recursion with exact
      forward-over-reverse Hessian-vector products) or 'auto' (autodiff when
      ``task.hessian`` is None, else product). In the finite-sum case both
      agree to float precision.
    keep_batches: return the batches used in the aux (see ``estimator``).

  Returns:
    ``est(params, task, key) -> (meta_grads, EstimatorAux)``.

  Example:
    >>> est = maml_jax.maml(loss_fn, inner_lr=0.01, num_inner_steps=3)
    >>> grads, aux = jax.jit(est)(params, maml_jax.Task(support, query), key)
  """
  if backprop not in _BACKPROP:
    raise ValueError(f'backprop must be one of {_BACKPROP}, got {backprop!r}.')
  kwargs = dict(inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                sampler=sampler, remat=remat, keep_batches=keep_batches)
  product = estimator(loss_fn, oracles.exact_hvp(loss_fn), **kwargs)
  if backprop == 'product':
    return product
  through_scan = estimator(loss_fn, None, autodiff=True, **kwargs)
  if backprop == 'autodiff':
    return through_scan

  def est(params, task, key):
    if isinstance(task, base.Task) and task.hessian is not None:
      return product(params, task, key)
    return through_scan(params, task, key)

  return est


def fo_maml(loss_fn: base.LossFn, *, inner_lr: float, num_inner_steps: int,
            sampler: base.Sampler = None, remat=False,
            keep_batches: bool = False) -> base.MetaEstimator:
  """First-order MAML: every Hessian term dropped, G = grad l(w_N; T).

  Memory O(d) whatever N (``remat`` is accepted for a uniform API and has
  nothing to save).
  """
  validation.check_remat(remat)
  return estimator(loss_fn, None, inner_lr=inner_lr,
                   num_inner_steps=num_inner_steps, sampler=sampler,
                   keep_batches=keep_batches)


def zo_maml(loss_fn: base.LossFn, *, inner_lr: float, num_inner_steps: int,
            num_directions: int, delta: float, subtract_identity: bool = False,
            sampler: base.Sampler = None, remat=False,
            keep_batches: bool = False) -> base.MetaEstimator:
  """ZO-MAML: eq. (8) with the zeroth-order Hessian estimate of eq. (17).

  Fresh Gaussian directions for every task, inner step and call. The default
  is the paper's estimator, biased by (l_delta - l)/delta^2 I (Proposition 5);
  ``subtract_identity=True`` is the ES-MAML (u u^T - I) variant, which is not
  the paper's ZO-MAML. See ``zo_hvp``.
  """
  return estimator(
      loss_fn,
      oracles.zo_hvp(loss_fn, num_directions=num_directions, delta=delta,
                     subtract_identity=subtract_identity),
      inner_lr=inner_lr, num_inner_steps=num_inner_steps, sampler=sampler,
      remat=remat, keep_batches=keep_batches)


def ggs_maml(loss_fn: base.LossFn, *, inner_lr: float, num_inner_steps: int,
             num_directions: int, delta: float, sampler: base.Sampler = None,
             remat=False, keep_batches: bool = False) -> base.MetaEstimator:
  """GGS-MAML (Algorithm 2): eq. (19) with the GGS Hessian estimate of eq. (18).

      G = prod_{j=0}^{N-1} (I - alpha H_ggs(w_j)) grad l(w_N; T)

  The b perturbed gradients of each step are one ``vmap``; fresh directions
  for every task, inner step and call. See ``ggs_hvp``.
  """
  return estimator(
      loss_fn,
      oracles.ggs_hvp(loss_fn, num_directions=num_directions, delta=delta),
      inner_lr=inner_lr, num_inner_steps=num_inner_steps, sampler=sampler,
      remat=remat, keep_batches=keep_batches)


def hf_maml(loss_fn: base.LossFn, *, inner_lr: float, num_inner_steps: int,
            delta: float, sampler: base.Sampler = None,
            remat=False, keep_batches: bool = False) -> base.MetaEstimator:
  """HF-MAML (Fallah et al. 2019): eq. (8) with finite-difference H v products.

  H_j v ~ (grad l(w_j + delta v) - grad l(w_j - delta v)) / (2 delta), applied
  to the running vector v of the backward recursion. See ``fd_hvp``.
  """
  return estimator(loss_fn, oracles.fd_hvp(loss_fn, delta=delta),
                   inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                   sampler=sampler, remat=remat, keep_batches=keep_batches)
