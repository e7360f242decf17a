"""Argument checks shared by the factories: fail early, name the argument."""

import math
import numbers

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
