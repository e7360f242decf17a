"""Trust-region policy optimisation step on pytrees (Schulman et al. 2015).

The step used as the outer (meta) update of MAML-RL: given the gradient g of a
surrogate loss at the current parameters, solve F x = g by conjugate gradient
on (damped) KL Hessian-vector products, scale the step to the KL bound,
s = sqrt(2 max_kl / x^T F x) x, and backtrack w - step_frac s, step_frac in
{1, 0.8, 0.8^2, ...}, until the surrogate decreases and the KL is below
max_kl. If no trial is accepted the parameters stay where they are, so an
accepted step never exceeds the bound.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class TRPOInfo(NamedTuple):
  """What one TRPO step did.

  Attributes:
    accepted: whether a line-search trial was accepted.
    step_frac: the accepted backtracking factor (0 when none was).
    kl: KL at the returned parameters (0 when nothing was accepted).
    improve: surrogate change loss(new) - loss(old) (0 when nothing was accepted).
    num_trials: line-search trials evaluated.
  """
  accepted: jax.Array
  step_frac: jax.Array
  kl: jax.Array
  improve: jax.Array
  num_trials: jax.Array


def conjugate_gradient(matvec, b, *, num_iters=10, residual_tol=1e-10):
  """Approximately solve A x = b (A symmetric positive definite) on pytrees.

  Plain CG as in MAML-RL: x_0 = 0, at most ``num_iters`` iterations, stops once
  the squared residual is below ``residual_tol``.
  """
  x0 = jax.tree.map(jnp.zeros_like, b)
  rdotr0 = optax.tree.vdot(b, b)

  def cond(carry):
    i, _, _, _, rdotr = carry
    return jnp.logical_and(i < num_iters, rdotr >= residual_tol)

  def body(carry):
    i, x, r, p, rdotr = carry
    z = matvec(p)
    v = rdotr / optax.tree.vdot(p, z)
    x = optax.tree.add_scale(x, v, p)
    r = optax.tree.add_scale(r, -v, z)
    new_rdotr = optax.tree.vdot(r, r)
    p = optax.tree.add_scale(r, new_rdotr / rdotr, p)
    return i + 1, x, r, p, new_rdotr

  _, x, _, _, _ = jax.lax.while_loop(cond, body, (0, x0, b, b, rdotr0))
  return x


def trpo_step(params, grads, kl_hvp, loss_and_kl, *, max_kl=1e-2, cg_iters=10,
              cg_damping=1e-5, ls_max_steps=15, ls_backtrack_ratio=0.8,
              old_loss=None):
  """One TRPO update of ``params`` (minimising a surrogate loss).

  Args:
    params: current parameters w.
    grads: gradient g of the surrogate loss at w (any estimate of it).
    kl_hvp: ``v -> F v``, the Hessian of the KL constraint at w times v.
    loss_and_kl: ``params -> (loss, kl)`` evaluated at trial parameters.
    max_kl: trust-region radius delta_KL.
    cg_iters: conjugate-gradient iterations.
    cg_damping: added to F (F + damping I) for CG.
    ls_max_steps: backtracking line-search trials.
    ls_backtrack_ratio: step shrink factor between trials.
    old_loss: the surrogate loss at ``params`` when the caller knows it (an
      importance-weighted surrogate equals -mean(A) there); None evaluates
      ``loss_and_kl(params)``.

  Returns:
    ``(new_params, TRPOInfo)``.
  """
  damped = lambda v: optax.tree.add_scale(kl_hvp(v), cg_damping, v)
  x = conjugate_gradient(damped, grads, num_iters=cg_iters)
  shs = 0.5 * optax.tree.vdot(x, damped(x))
  lagrange = jnp.sqrt(shs / max_kl)
  step = jax.tree.map(lambda s: s / lagrange, x)
  if old_loss is None:
    old_loss, _ = loss_and_kl(params)
  ok_step = jnp.isfinite(lagrange) & (lagrange > 0)

  def trial(frac):
    new = optax.tree.add_scale(params, -frac, step)
    loss, kl = loss_and_kl(new)
    improve = loss - old_loss
    accept = ok_step & (improve < 0) & (kl < max_kl) & jnp.isfinite(loss)
    return accept, improve, kl

  def cond(carry):
    i, _, accepted, _, _ = carry
    return jnp.logical_and(i < ls_max_steps, jnp.logical_not(accepted))

  def body(carry):
    i, frac, _, _, _ = carry
    accept, improve, kl = trial(frac)
    next_frac = jnp.where(accept, frac, frac * ls_backtrack_ratio)
    return i + 1, next_frac, accept, improve, kl

  zero = jnp.zeros((), old_loss.dtype)
  init = (0, jnp.ones((), old_loss.dtype), jnp.zeros((), bool), zero, zero)
  num_trials, frac, accepted, improve, kl = jax.lax.while_loop(cond, body, init)
  frac = jnp.where(accepted, frac, 0.0)
  new_params = optax.tree.add_scale(params, -frac, step)
  info = TRPOInfo(accepted=accepted, step_frac=frac, kl=jnp.where(accepted, kl, 0.0),
                  improve=jnp.where(accepted, improve, 0.0), num_trials=num_trials)
  return new_params, info
