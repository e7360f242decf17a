"""Argument checks shared by the factories: fail early, name the argument."""

import math
import numbers
import warnings

import jax
import jax.numpy as jnp


def check_positive_int(value, name):
  """Returns ``value`` as an int, or raises ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  if value < 1:
    raise ValueError(f'{name} must be >= 1, got {value}.')
  return int(value)


def check_positive_float(value, name):
  """Returns ``value`` as a float, or raises ValueError if not finite and > 0."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f'{name} must be a finite positive number, got {value!r}.')
  value = float(value)
  if not math.isfinite(value) or value <= 0.0:
    raise ValueError(f'{name} must be a finite positive number, got {value}.')
  return value


def check_remat(remat):
  """``remat`` is False/True or a positive segment length; returns it normalised."""
  if isinstance(remat, bool):
    return remat
  return check_positive_int(remat, 'remat')


def check_callable(fn, name):
  if not callable(fn):
    raise ValueError(f'{name} must be callable, got {type(fn).__name__}.')
  return fn


def check_params(params):
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError('params has no array leaves: nothing to meta-learn.')
  for leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise ValueError(
          'params must hold floating-point arrays only; found a leaf of dtype '
          f'{jnp.result_type(leaf)}.')


def check_scalar_loss(loss_fn, params, batch, where):
  """Raises ValueError unless ``loss_fn(params, batch)`` is a scalar (abstractly)."""
  out = jax.eval_shape(loss_fn, params, batch)
  shape = getattr(out, 'shape', None)
  if shape != ():
    raise ValueError(
        f'loss_fn must return a scalar, got {type(out).__name__} with shape '
        f'{shape} on {where}.')


def check_batch_fits(batch, reference, name, reference_name):
  """``batch`` must have the pytree structure and leaf ranks of ``reference``."""
  s_batch = jax.tree.structure(batch)
  s_ref = jax.tree.structure(reference)
  if s_batch != s_ref:
    raise ValueError(
        f'{name} does not fit {reference_name}: pytree structure {s_batch} vs '
        f'{s_ref}.')
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(reference)):
    if jnp.ndim(a) != jnp.ndim(b):
      raise ValueError(
          f'{name} does not fit {reference_name}: a leaf has shape '
          f'{jnp.shape(a)} where {reference_name} has {jnp.shape(b)}.')


def check_inner_lr(inner_lr, *, allow_none: bool):
  """A Python number must be finite and > 0; arrays and pytrees are data.

  Step sizes given as arrays or tracers (to be learned, swept or vmapped) are
  checked for their form against the parameters at trace time
  (``StepSizes.resolve``), not for their values: a learned step size may go
  negative, and a traced one has no value to check.
  """
  if inner_lr is None:
    if allow_none:
      return None
    raise ValueError('inner_lr is None: give a step size, or pass a '
                     'maml_jax.LearnedInnerLR as params.')
  if isinstance(inner_lr, (bool, numbers.Number)):
    return check_positive_float(inner_lr, 'inner_lr')
  leaves = jax.tree.leaves(inner_lr)
  if not leaves:
    raise ValueError(f'inner_lr has no values: {inner_lr!r}.')
  for leaf in leaves:
    if isinstance(leaf, bool) or not (
        isinstance(leaf, numbers.Real)
        or jnp.issubdtype(jnp.result_type(leaf), jnp.floating)):
      raise ValueError('inner_lr must hold floating-point values; got a leaf '
                       f'{leaf!r}.')
  return inner_lr


def value_only(loss_fn, has_aux: bool):
  """``loss_fn`` as a scalar function (drops the aux of a ``has_aux`` loss)."""
  if not has_aux:
    return loss_fn

  def value_fn(params, batch):
    out = loss_fn(params, batch)
    check_aux_output(out)
    return out[0]

  return value_fn


def with_aux(loss_fn, has_aux: bool):
  """``loss_fn`` as ``(params, batch) -> (loss, aux)`` (aux None without has_aux)."""
  if has_aux:

    def loss_and_aux(params, batch):
      out = loss_fn(params, batch)
      check_aux_output(out)
      return out

    return loss_and_aux
  return lambda params, batch: (loss_fn(params, batch), None)


def check_aux_output(out):
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError(
        'has_aux=True: loss_fn must return a (loss, aux) pair, got '
        f'{type(out).__name__}.')


def check_delta(delta, params, name):
  """Refuses a smoothing radius too small to move ``params`` in their dtype.

  w + delta u rounds back to w for |w| >~ delta / eps: with delta below ten
  ulps of 1 (float32: 1.2e-6) a perturbation of unit-scale weights is lost to
  rounding, and a gradient difference (GGS, HF) or loss difference (ZO) is
  pure noise or exactly zero (GGS then silently returns the FO-MAML
  gradient). Below sqrt(eps) (float32: 3.5e-4) a warning says that rounding
  dominates the finite difference. Runs at trace time, on the dtypes.
  """
  dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not dtypes:
    return
  eps = max(float(jnp.finfo(d).eps) for d in dtypes)
  dtype = next(d for d in dtypes if float(jnp.finfo(d).eps) == eps)
  if delta < 10 * eps:
    raise ValueError(
        f'{name}: delta={delta:g} cannot move {dtype} parameters: w + delta u '
        f'rounds to w for |w| >~ {delta / eps:.2g} (eps = {eps:.2g}), so the '
        'finite differences are rounding noise. Use delta >= '
        f'{math.sqrt(eps):.1g} in {dtype}, or float64 parameters.')
  if delta < math.sqrt(eps):
    warnings.warn(
        f'{name}: delta={delta:g} is below sqrt(eps) = {math.sqrt(eps):.2g} of '
        f'{dtype}; rounding error dominates the finite differences. Prefer '
        f'delta >= {math.sqrt(eps):.1g} or float64 parameters.', stacklevel=3)


def deprecated(message, *, stacklevel=2):
  """Warns once, with a ``DeprecationWarning``, that an old name was used.

  Every deprecated name of the API goes through here (``renamed`` for
  keywords, the old functions themselves for functions), so that they all
  warn the same way: ``message`` says what to use instead, and
  ``stacklevel`` (counted from the caller of this function) points the
  warning at the user's call.
  """
  warnings.warn(message, DeprecationWarning, stacklevel=stacklevel + 1)


def renamed(value, old_value, *, name, old_name, where):
  """The value of an argument that was renamed, accepting the old name for now.

  Args:
    value: what was passed under the new ``name`` (None if nothing).
    old_value: what was passed under ``old_name`` (None if nothing).
    name, old_name: the new and the deprecated keyword.
    where: the function, for the messages.

  Returns:
    The value; a ``DeprecationWarning`` if it came under the old name.

  Raises:
    TypeError: if neither or both were passed.
  """
  if old_value is None:
    if value is None:
      raise TypeError(f'{where}() missing the keyword argument {name!r}.')
    return value
  if value is not None:
    raise TypeError(f'{where}() got both {name!r} and its old name '
                    f'{old_name!r}; pass {name!r} only.')
  deprecated(f'{where}(..., {old_name}=...) is deprecated; use {name}=...',
             stacklevel=3)
  return old_value
