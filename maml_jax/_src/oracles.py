"""Hessian-vector oracles: exact, zeroth-order (eq. 17), GGS (eq. 18), finite-difference.

An oracle is a pure function ``hvp(params, batch, v, key) -> H v`` where H is
(an estimate of) the Hessian of ``loss_fn(., batch)`` at ``params``. All of
them are matrix-free: nothing forms a d x d matrix, and the random estimators
hold at most ``num_directions`` gradients (b x d) at once, all computed by one
``jax.vmap``.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from maml_jax._src import base
from maml_jax._src import validation


def gaussian_directions(key: chex.PRNGKey, params: base.Params,
                        num_directions: int) -> base.Params:
  """Draws u_1..u_b ~ N(0, I) shaped like ``params``.

  Args:
    key: PRNG key.
    params: pytree whose structure, shapes and dtypes the directions take.
    num_directions: b.

  Returns:
    A pytree like ``params`` whose leaves carry a leading axis of size b.
  """
  keys = jax.random.split(key, num_directions)
  return jax.vmap(lambda k: optax.tree.random_like(k, params))(keys)


def _batched_vdot(directions, v):
  """[b] inner products u_m . v for directions with a leading axis b."""
  per_leaf = jax.tree.map(
      lambda u, x: jnp.sum(u.reshape(u.shape[0], -1) * x.reshape(1, -1), axis=1),
      directions, v)
  return sum(jax.tree.leaves(per_leaf))


def _weighted_sum(weights, stacked):
  """sum_m weights[m] * stacked[m] for each leaf (stacked has leading axis b)."""
  return jax.tree.map(lambda s: jnp.tensordot(weights.astype(s.dtype), s, axes=1),
                      stacked)


_HVP_MODES = ('auto', 'forward', 'reverse')


def exact_hvp(loss_fn: base.LossFn, *, mode: str = 'auto') -> base.HvpOracle:
  """Exact Hessian-vector product H v of ``loss_fn(., batch)`` at ``params``.

  This is the H_j v of eq. (3)/(8), at the cost of about two gradients.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    mode: 'forward' (forward-over-reverse, d/de grad l(w + e v): the
      cheapest), 'reverse' (reverse-over-reverse, grad_w <grad l(w), v>: works
      for models with custom-VJP layers such as
      ``maml_jax.nn.conv_general_dilated``, which forward mode cannot
      differentiate) or 'auto' (forward, and reverse where the model has a
      custom-VJP function; decided at trace time).

  Returns:
    ``hvp(params, batch, v, key) -> H v`` (``key`` unused).
  """
  if mode not in _HVP_MODES:
    raise ValueError(f'mode must be one of {_HVP_MODES}, got {mode!r}.')
  grad_fn = jax.grad(loss_fn)

  def forward(params, batch, v):
    return jax.jvp(lambda p: grad_fn(p, batch), (params,), (v,))[1]

  def reverse(params, batch, v):
    return jax.grad(lambda p: optax.tree.vdot(grad_fn(p, batch), v))(params)

  def hvp(params, batch, v, key):
    del key
    if mode == 'reverse':
      return reverse(params, batch, v)
    try:
      return forward(params, batch, v)
    except TypeError as error:  # jvp of a custom_vjp function
      if mode == 'forward' or 'custom_vjp' not in str(error):
        raise
      return reverse(params, batch, v)

  return hvp


def no_hvp(loss_fn: base.LossFn) -> base.HvpOracle:
  """Deprecated (it warns): first order is ``hvp=None``.

  The zero Hessian, H v = 0: ``custom_estimator(loss_fn, no_hvp(loss_fn),
  ...)`` runs the explicit product recursion for FO-MAML's meta-gradient.
  Say first order with ``hvp=None`` (``custom_estimator(loss_fn, None,
  ...)``, ``fo_maml``), which skips the recursion and its memory.
  """
  del loss_fn
  validation.deprecated('maml_jax.no_hvp is deprecated; pass hvp=None for '
                        'first-order MAML (maml_jax.fo_maml).')

  def hvp(params, batch, v, key):
    del params, batch, key
    return jax.tree.map(jnp.zeros_like, v)

  return hvp


def zo_hvp(loss_fn: base.LossFn, *, num_directions: int, delta: float,
           subtract_identity: bool = False) -> base.HvpOracle:
  """Zeroth-order (ES-MAML style) Hessian estimate of eq. (17), applied to v.

      H_zo = (1/b) sum_m [(l(w + delta u_m) + l(w - delta u_m) - 2 l(w))
                          / (2 delta^2)] u_m u_m^T

  Only loss values are used. In expectation H_zo = Hess l_delta(w) +
  ((l_delta(w) - l(w)) / delta^2) I; for a quadratic with Hessian A that is
  A + (tr(A)/2) I, a constant-level bias that does not vanish as delta -> 0
  or b -> inf (Proposition 5). This is the paper's ZO-MAML and the default.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    num_directions: b, Gaussian directions per estimate.
    delta: smoothing radius.
    subtract_identity: use (u u^T - I) instead of u u^T, which removes the
      bias for quadratics. NOT the paper's ZO-MAML; offered as an option.

  Returns:
    ``hvp(params, batch, v, key) -> H_zo v``.
  """
  num_directions = validation.check_positive_int(num_directions, 'num_directions')
  delta = validation.check_positive_float(delta, 'delta')

  def hvp(params, batch, v, key):
    validation.check_delta(delta, params, 'zo_hvp')
    u = gaussian_directions(key, params, num_directions)
    loss_at = lambda du: loss_fn(optax.tree.add_scale(params, delta, du), batch)
    l_plus = jax.vmap(loss_at)(u)
    l_minus = jax.vmap(loss_at)(optax.tree.scale(-1.0, u))
    l_zero = loss_fn(params, batch)
    c = (l_plus + l_minus - 2.0 * l_zero) / (2.0 * delta ** 2)  # [b]
    hv = _weighted_sum(c * _batched_vdot(u, v) / num_directions, u)
    if subtract_identity:
      hv = optax.tree.add_scale(hv, -jnp.mean(c), v)
    return hv

  return hvp


def ggs_hvp(loss_fn: base.LossFn, *, num_directions: int,
            delta: float) -> base.HvpOracle:
  """Gradient-based Gaussian smoothing Hessian estimate of eq. (18), applied to v.

      H_ggs = (1/b) sum_m [grad l(w + delta u_m) - grad l(w)] u_m^T / delta
      H_ggs v = (1/b) sum_m g_m (u_m . v) / delta

  One-sided gradient differences on the same batch; the b perturbed gradients
  are one ``vmap``. Unbiased for the Hessian of the smoothed loss, exactly
  unbiased on quadratics for every delta, bias O(rho delta sqrt(d)) otherwise.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    num_directions: b.
    delta: smoothing radius.

  Returns:
    ``hvp(params, batch, v, key) -> H_ggs v``.
  """
  num_directions = validation.check_positive_int(num_directions, 'num_directions')
  delta = validation.check_positive_float(delta, 'delta')
  grad_fn = jax.grad(loss_fn)

  def hvp(params, batch, v, key):
    validation.check_delta(delta, params, 'ggs_hvp')
    u = gaussian_directions(key, params, num_directions)
    g_zero = grad_fn(params, batch)
    g_pert = jax.vmap(
        lambda du: grad_fn(optax.tree.add_scale(params, delta, du), batch))(u)
    diff = jax.tree.map(lambda gp, g0: gp - g0[None], g_pert, g_zero)
    return _weighted_sum(_batched_vdot(u, v) / (num_directions * delta), diff)

  return hvp


def fd_hvp(loss_fn: base.LossFn, *, delta: float) -> base.HvpOracle:
  """Finite-difference Hessian-vector product of HF-MAML (Fallah et al. 2019).

      H v ~ (grad l(w + delta v) - grad l(w - delta v)) / (2 delta)

  Applied directly to the running vector v of the product in eq. (3); exact
  on quadratics for every delta.
  """
  delta = validation.check_positive_float(delta, 'delta')
  grad_fn = jax.grad(loss_fn)

  def hvp(params, batch, v, key):
    del key
    validation.check_delta(delta, params, 'fd_hvp')
    g_plus = grad_fn(optax.tree.add_scale(params, delta, v), batch)
    g_minus = grad_fn(optax.tree.add_scale(params, -delta, v), batch)
    return optax.tree.scale(1.0 / (2.0 * delta), optax.tree.sub(g_plus, g_minus))

  return hvp


class TaskKeys(NamedTuple):
  """The keys one task's estimator uses, derived from its key by ``task_keys``.

  Attributes:
    support: [N] keys, sampling S_j (``Sampled`` support) at step j.
    hessian: [N] keys, sampling D_j (``Sampled`` hessian) at step j.
    query: key sampling T (``Sampled`` query).
    directions: [N] keys; step j's Gaussian directions are
      ``gaussian_directions(directions[j], params, b)``.
  """
  support: chex.PRNGKey
  hessian: chex.PRNGKey
  query: chex.PRNGKey
  directions: chex.PRNGKey


def task_keys(key: chex.PRNGKey, num_inner_steps: int) -> TaskKeys:
  """Splits one task's key into the keys of every inner step (see TaskKeys)."""
  k_s, k_h, k_q, k_d = jax.random.split(key, 4)
  return TaskKeys(support=jax.random.split(k_s, num_inner_steps),
                  hessian=jax.random.split(k_h, num_inner_steps),
                  query=k_q,
                  directions=jax.random.split(k_d, num_inner_steps))
