"""Layers whose derivatives of every order stay fast on XLA:CPU inside loops.

MAML differentiates a model twice (through its inner steps), and on CPU the
tasks of a conv net run one after another in a ``lax.map`` (``meta_gradient``'s
``task_batching``). Two things then go wrong with the plain JAX layers:

* Convolutions. XLA:CPU runs a convolution on its fast library kernels only in
  the canonical form: input [batch, spatial..., features], kernel [spatial...,
  in, out], output like the input. The transposes JAX writes for the backward
  pass of ``lax.conv_general_dilated`` are convolutions in other dimension
  orders, which XLA rewrites into the canonical form only in the entry
  computation of a program, not in a loop body; there they run on XLA's
  generic loop emitter, one or two orders of magnitude slower.
  ``conv_general_dilated`` below has lax's signature and results, and a
  custom VJP that writes every backward convolution in the canonical form
  itself (and the kernel gradient as one matmul), so every derivative order
  stays fast.
* Max pooling. A max written as ``jnp.max`` over a window finds the arg-max in
  its JVP by comparing the operand with the result; XLA may recompute the
  operand in two fusions that round differently, so that nothing compares
  equal and the window's gradient is dropped (seen under ``jax.vmap`` of a
  MAML meta-gradient). ``max_pool`` picks with ``where(a >= b, a, b)``, which
  routes the gradient by its own comparison, whatever the rounding.
"""

import functools
import itertools
import math
from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

Padding = Union[str, Sequence[tuple[int, int]]]


class _Conv(NamedTuple):
  """A canonical convolution's static settings (per spatial axis)."""
  strides: tuple
  padding: tuple  # ((lo, hi), ...)
  lhs_dilation: tuple
  rhs_dilation: tuple
  groups: int
  precision: object


def _canonical_numbers(num_spatial):
  """Dimension numbers of [N, spatial..., C] x [spatial..., I, O] -> [N, spatial..., C]."""
  lhs = (0, num_spatial + 1) + tuple(range(1, num_spatial + 1))
  rhs = (num_spatial + 1, num_spatial) + tuple(range(num_spatial))
  return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def is_canonical(dimension_numbers: lax.ConvDimensionNumbers) -> bool:
  """Whether a convolution's layout is the one XLA:CPU runs on its fast kernels."""
  return dimension_numbers == _canonical_numbers(len(dimension_numbers.lhs_spec) - 2)


def _lax_conv(x, kernel, c: _Conv):
  return lax.conv_general_dilated(
      x, kernel, c.strides, c.padding, lhs_dilation=c.lhs_dilation,
      rhs_dilation=c.rhs_dilation,
      dimension_numbers=_canonical_numbers(len(c.strides)),
      feature_group_count=c.groups, precision=c.precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, c: _Conv):
  return _lax_conv(x, kernel, c)


def _conv_fwd(x, kernel, c):
  # The primal is a call of the custom-VJP function itself, so that the
  # derivatives of the backward pass (MAML's second order) use the rule too.
  return _conv(x, kernel, c), (x, kernel)


def _input_gradient_conv(c: _Conv, in_spatial, kernel_spatial, out_spatial):
  """The convolution that maps the output gradient to the input gradient.

  Per spatial axis, with input length L, lhs dilation l, padding (p_lo, p_hi),
  kernel length K dilated by d (extent E = (K - 1) d + 1), stride s and output
  length O: the output gradient dilated by s, convolved with the flipped
  kernel at dilation d, read at stride l from offset p_lo of the padded,
  dilated input. As a convolution: strides l, lhs dilation s, rhs dilation d,
  padding (E - 1 - p_lo, (L - 1) l + p_lo - (O - 1) s).
  """
  padding = []
  for size, k, o, s, l, d, (lo, _) in zip(in_spatial, kernel_spatial,
                                          out_spatial, c.strides,
                                          c.lhs_dilation, c.rhs_dilation,
                                          c.padding):
    extent = (k - 1) * d + 1
    padding.append((extent - 1 - lo, (size - 1) * l + lo - (o - 1) * s))
  return _Conv(strides=c.lhs_dilation, padding=tuple(padding),
               lhs_dilation=c.strides, rhs_dilation=c.rhs_dilation,
               groups=c.groups, precision=c.precision)


def _transposed_kernel(kernel, groups):
  """Spatially flipped kernel with in/out swapped per group: [..., O/G, G I]."""
  num_spatial = kernel.ndim - 2
  spatial = kernel.shape[:num_spatial]
  c_in_group, c_out = kernel.shape[-2:]
  k = jnp.flip(kernel, tuple(range(num_spatial)))
  k = k.reshape(spatial + (c_in_group, groups, c_out // groups))
  k = jnp.moveaxis(k, num_spatial, -1)  # [..., G, O/G, I/G]
  k = jnp.swapaxes(k, num_spatial, num_spatial + 1)  # [..., O/G, G, I/G]
  return k.reshape(spatial + (c_out // groups, groups * c_in_group))


def patches(x, kernel_spatial, c: _Conv, out_spatial):
  """The kernel offsets' strided views of the padded, dilated input.

  Returns [B, *out_spatial, prod(kernel_spatial), C]: entry [b, o, t, ch] is
  x_hat[b, o s + t d, ch], x_hat being ``x`` dilated by the lhs dilation and
  padded (negative padding crops), t running over the kernel offsets in
  row-major order (the order of an [spatial..., I, O] kernel's flattening).
  """
  num_spatial = len(kernel_spatial)
  config = [(0, 0, 0)] + [(lo, hi, l - 1) for (lo, hi), l in
                          zip(c.padding, c.lhs_dilation)] + [(0, 0, 0)]
  xp = lax.pad(x, jnp.zeros((), x.dtype), config)
  views = []
  for offset in itertools.product(*(range(k) for k in kernel_spatial)):
    start = [0] + [t * d for t, d in zip(offset, c.rhs_dilation)] + [0]
    limit = ([xp.shape[0]]
             + [t * d + (o - 1) * s + 1 for t, d, o, s in
                zip(offset, c.rhs_dilation, out_spatial, c.strides)]
             + [xp.shape[-1]])
    views.append(lax.slice(xp, start, limit, (1,) + tuple(c.strides) + (1,)))
  return jnp.stack(views, axis=num_spatial + 1)


def _kernel_gradient(x, g, kernel_shape, c: _Conv):
  """d/d kernel of <g, conv(x, kernel)>: one matmul (per group) of im2col patches.

      dK[t, i, o] = sum_{b, p} x_hat[b, p s + t d, i] g[b, p, o]

  (t a kernel offset, p an output position; with G groups, output channel o
  of group o // (O/G) sees input channels of that group only).
  """
  num_spatial = len(c.strides)
  kernel_spatial = kernel_shape[:num_spatial]
  c_in_group, c_out = kernel_shape[-2:]
  groups = c.groups
  taps = math.prod(kernel_spatial)
  cols = patches(x, kernel_spatial, c, g.shape[1:-1])  # [B, P..., T, C]
  rows = math.prod(g.shape[:-1])
  if groups == 1:
    dk = lax.dot_general(cols.reshape(rows, taps * c_in_group),
                         g.reshape(rows, c_out), (((0,), (0,)), ((), ())),
                         precision=c.precision)
    return dk.reshape(kernel_shape)
  cols = cols.reshape(rows, taps, groups, c_in_group)
  cols = jnp.moveaxis(cols, 2, 0).reshape(groups, rows, taps * c_in_group)
  gg = jnp.moveaxis(g.reshape(rows, groups, c_out // groups), 1, 0)
  dk = lax.dot_general(cols, gg, (((1,), (1,)), ((0,), (0,))),
                       precision=c.precision)  # [G, T I/G, O/G]
  dk = dk.reshape(groups, taps, c_in_group, c_out // groups)
  dk = jnp.moveaxis(dk, 0, 2)  # [T, I/G, G, O/G]
  return dk.reshape(kernel_shape)


def _conv_bwd(c, residuals, g):
  x, kernel = residuals
  num_spatial = len(c.strides)
  t = _input_gradient_conv(c, x.shape[1:-1], kernel.shape[:num_spatial],
                           g.shape[1:-1])
  dx = _conv(g, _transposed_kernel(kernel, c.groups), t)
  return dx, _kernel_gradient(x, g, kernel.shape, c)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _tuple(value, n, name):
  if value is None:
    return (1,) * n
  value = tuple(int(v) for v in value)
  if len(value) != n:
    raise ValueError(f'{name} must have one entry per spatial dimension ({n}), '
                     f'got {value}.')
  return value


def _explicit_padding(padding, in_spatial, kernel_spatial, strides,
                      lhs_dilation, rhs_dilation):
  if isinstance(padding, str):
    dilated_in = [(n - 1) * l + 1 for n, l in zip(in_spatial, lhs_dilation)]
    dilated_k = [(k - 1) * d + 1 for k, d in zip(kernel_spatial, rhs_dilation)]
    return tuple(tuple(int(p) for p in pair) for pair in
                 lax.padtype_to_pads(dilated_in, dilated_k, strides, padding))
  pairs = tuple(tuple(int(p) for p in pair) for pair in padding)
  if len(pairs) != len(in_spatial) or any(len(p) != 2 for p in pairs):
    raise ValueError('padding must be a string or one (low, high) pair per '
                     f'spatial dimension, got {padding!r}.')
  return pairs


def uses_fast_path(backend: Optional[str] = None) -> bool:
  """Whether ``conv_general_dilated`` takes its custom VJP on ``backend``.

  CPU only: on GPU and TPU the backward convolutions JAX writes run on the
  vendor libraries in any layout, so the op is ``lax.conv_general_dilated``.
  """
  return (backend or jax.default_backend()) == 'cpu'


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``jax.lax.conv_general_dilated`` whose derivatives stay fast on XLA:CPU.

  Same signature, same results and the same derivatives as lax's convolution.
  On CPU, for the arguments it covers, it transposes the operands to the
  canonical [N, spatial..., C] x [spatial..., I, O] layout (a no-op for Flax's
  NHWC/HWIO) and differentiates with a custom VJP:

  * the input gradient is the output gradient convolved with the spatially
    flipped kernel (in/out channels swapped per group), strides and lhs
    dilation exchanged: a call of this op again, so that every derivative
    order stays canonical;
  * the kernel gradient is one matmul (one per feature group) of the input's
    im2col patches with the output gradient.

  Covered: 1-3 spatial dimensions, any strides, 'SAME'/'VALID'/explicit
  (also negative) padding, lhs and rhs dilation, ``feature_group_count``.
  Anything else (``batch_group_count > 1``, ``preferred_element_type``),
  and every backend but CPU, is ``lax.conv_general_dilated`` itself.

  Use it in Flax with ``nn.Conv(..., conv_general_dilated=
  maml_jax.nn.conv_general_dilated)``, or call it in place of lax's.

  Reverse mode only: ``jax.jvp`` (forward mode) of a custom VJP raises
  ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp
  function``. ``maml_jax.exact_hvp`` and ``maml(..., backprop='product')``
  then take their Hessian-vector products in reverse mode on their own; for
  your own ``jax.jvp``/``jax.linearize``, build the model with
  ``jax.lax.conv_general_dilated`` or write ``H v`` as ``jax.grad`` of
  ``<grad l, v>``.

  Why: see the module docstring. On this repository's 2-core CPU a
  32-filter 4-block conv net's MAML step over 8 tasks in a ``lax.map`` ran
  ~14x faster with this op than with lax's (BENCHMARKS.md, "Conv net").

  Args:
    lhs: input, laid out as ``dimension_numbers`` says (default NCHW as lax).
    rhs: kernel (default OIHW as lax).
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision,
      preferred_element_type: as ``jax.lax.conv_general_dilated``.

  Returns:
    The convolution, exactly as ``jax.lax.conv_general_dilated`` returns it.
  """
  def plain():
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)

  num_spatial = jnp.ndim(lhs) - 2
  if (not uses_fast_path() or batch_group_count != 1
      or preferred_element_type is not None or not 1 <= num_spatial <= 3
      or jnp.ndim(rhs) != jnp.ndim(lhs)):
    return plain()
  dn = lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs),
                                  dimension_numbers)
  lhs_spec, rhs_spec, out_spec = dn
  x = jnp.transpose(lhs, (lhs_spec[0],) + lhs_spec[2:] + (lhs_spec[1],))
  kernel = jnp.transpose(rhs, rhs_spec[2:] + (rhs_spec[1], rhs_spec[0]))
  strides = _tuple(window_strides, num_spatial, 'window_strides')
  lhs_dil = _tuple(lhs_dilation, num_spatial, 'lhs_dilation')
  rhs_dil = _tuple(rhs_dilation, num_spatial, 'rhs_dilation')
  groups = int(feature_group_count)
  if x.shape[-1] != kernel.shape[-2] * groups or kernel.shape[-1] % groups:
    return plain()  # lax raises its own error on the mismatch
  c = _Conv(strides=strides,
            padding=_explicit_padding(padding, x.shape[1:-1],
                                      kernel.shape[:-2], strides, lhs_dil,
                                      rhs_dil),
            lhs_dilation=lhs_dil, rhs_dilation=rhs_dil, groups=groups,
            precision=precision)
  out = _conv(x, kernel, c)
  # out is [N, spatial..., C]; place its axes where out_spec wants them.
  canonical_axes = (out_spec[0],) + tuple(out_spec[2:]) + (out_spec[1],)
  return jnp.transpose(out, np.argsort(canonical_axes))


def max_pool(inputs, window_shape: Sequence[int],
             strides: Optional[Sequence[int]] = None,
             padding: Padding = 'VALID'):
  """Max pooling over the spatial axes of [batch..., spatial..., features] inputs.

  Flax's ``nn.max_pool`` signature. Each window's maximum is folded from its
  strided views with ``where(a >= b, a, b)`` in row-major window order, so the
  gradient goes to one element per window, the first maximum (PyTorch's
  rule), and is never lost to differently rounded recomputations of the
  input under XLA fusion (which a ``jnp.max`` over a reshaped window, whose
  JVP compares the operand with the result, can suffer). Its derivatives are
  selects and strided slices, fast in a loop body on every backend.

  Args:
    inputs: [..., spatial..., features], ``len(window_shape)`` spatial axes
      right before the last one.
    window_shape: the window's size per spatial axis.
    strides: per spatial axis (default: ``window_shape``, non-overlapping).
    padding: 'VALID' (windows that fit; odd sizes floor, as PyTorch),
      'SAME', or one (low, high) pair per spatial axis; padded positions are
      -inf and never chosen unless a window holds nothing else.

  Returns:
    The pooled array, [..., pooled spatial..., features].
  """
  window_shape = tuple(int(w) for w in window_shape)
  num_spatial = len(window_shape)
  strides = window_shape if strides is None else tuple(int(s) for s in strides)
  if len(strides) != num_spatial:
    raise ValueError(f'strides {strides} must have one entry per window axis '
                     f'{window_shape}.')
  if jnp.ndim(inputs) < num_spatial + 1:
    raise ValueError(f'inputs of shape {jnp.shape(inputs)} have too few axes '
                     f'for a {num_spatial}-d window and a feature axis.')
  first = jnp.ndim(inputs) - 1 - num_spatial
  spatial = jnp.shape(inputs)[first:-1]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(spatial, window_shape, strides, padding)
  else:
    pads = tuple(tuple(p) for p in padding)
  if any(lo or hi for lo, hi in pads):
    config = ([(0, 0, 0)] * first + [(lo, hi, 0) for lo, hi in pads]
              + [(0, 0, 0)])
    inputs = lax.pad(inputs, jnp.array(-jnp.inf, inputs.dtype), config)
    spatial = jnp.shape(inputs)[first:-1]
  out = [(n - w) // s + 1 for n, w, s in zip(spatial, window_shape, strides)]
  if min(out) < 1:
    raise ValueError(f'window {window_shape} does not fit the spatial size '
                     f'{tuple(spatial)}.')
  result = None
  for offset in itertools.product(*(range(w) for w in window_shape)):
    index = ((slice(None),) * first
             + tuple(slice(t, t + (o - 1) * s + 1, s)
                     for t, o, s in zip(offset, out, strides))
             + (slice(None),))
    view = inputs[index]
    result = view if result is None else jnp.where(result >= view, result, view)
  return result
