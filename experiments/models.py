"""How the experiments' conv net computes its convolutions.

The models themselves (the sine MLP, Finn et al.'s conv net, the rank-one
matrix factorization) are ``maml_jax.models``; here is the experiments'
``conv_impl`` choice of how the conv net computes its convolutions ('xla',
'matmul', 'xla_vjp'), which the few-shot launcher and the conv-net benchmarks
compare.
"""

import jax
import jax.numpy as jnp

import maml_jax as mj


# ----------------------------------------------------------------------------
# How the few-shot conv net (mj.models.ConvNet) computes its convolutions.
CONV_IMPLS = ('xla', 'matmul', 'xla_vjp')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def default_conv_impl(backend=None):
  """'xla_vjp' on CPU, 'xla' on every other backend: what ``conv_impl=None`` runs.

  ``mj.nn.conv_general_dilated`` (the library conv net's default) takes its
  custom VJP on CPU only and is XLA's convolution elsewhere; this names it
  for run records.
  """
  return 'xla_vjp' if mj.nn.uses_fast_path(backend) else 'xla'


def im2col(x, kernel_size, padding, out_hw):
  """The KH KW shifted views of the padded ``x``, concatenated on the channels.

  Args:
    x: [B, H, W, C].
    kernel_size: (KH, KW).
    padding: ((top, bottom), (left, right)).
    out_hw: (H', W'), the stride-1 output size.

  Returns:
    [B, H', W', KH KW C]; channel (dy KW + dx) C + c is x_pad[:, h + dy,
    w + dx, c], the row-major flattening of an HWIO kernel's first three axes.
  """
  kh, kw = kernel_size
  ho, wo = out_hw
  xp = jnp.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
  return jnp.concatenate([xp[:, dy:dy + ho, dx:dx + wo, :]
                          for dy in range(kh) for dx in range(kw)], axis=-1)


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, batch_group_count=1, precision=None,
                preferred_element_type=None):
  """A stride-1 NHWC x HWIO convolution as one im2col matmul (conv_impl 'matmul').

  ``jax.lax.conv_general_dilated``'s signature, for the one case the conv net
  uses: the KH KW shifted views of the padded input concatenated on the
  channel axis, times the [KH KW C_in, C_out] kernel. Pads, slices and a
  matmul, so forward and reverse mode both work and stay fast in a loop body
  on XLA:CPU, ~1.2x slower than 'xla_vjp'.

  Raises:
    ValueError: strides, dilations, groups or a layout other than NHWC x
      HWIO, or a padding that is not 'SAME'/'VALID'/explicit pairs.
  """
  del precision, preferred_element_type
  if (tuple(window_strides) != (1, 1) or lhs_dilation not in (None, (1, 1))
      or rhs_dilation not in (None, (1, 1)) or feature_group_count != 1
      or batch_group_count != 1 or tuple(dimension_numbers or ()) != _NHWC):
    raise ValueError("conv_impl='matmul' covers stride-1 undilated NHWC x HWIO "
                     'convolutions without groups only.')
  kh, kw = rhs.shape[:2]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (1, 1),
                                      padding)
  (top, bottom), (left, right) = padding
  out_hw = (lhs.shape[1] + top + bottom - kh + 1,
            lhs.shape[2] + left + right - kw + 1)
  patches = im2col(lhs, (kh, kw), padding, out_hw)
  return patches @ rhs.reshape(-1, rhs.shape[-1])


def conv_op(conv_impl=None):
  """The convolution of a ``conv_impl``, with ``lax.conv_general_dilated``'s signature.

  Args:
    conv_impl: 'xla' (``jax.lax.conv_general_dilated``), 'matmul'
      (``matmul_conv``), 'xla_vjp' or None (``mj.nn.conv_general_dilated``:
      XLA's convolution whose backward convolutions stay fast in a
      ``lax.map`` on CPU; reverse mode only; lax itself off CPU). Same math.

  Returns:
    The function, to pass as ``mj.models.ConvNet(conv=...)``.
  """
  if conv_impl is None or conv_impl == 'xla_vjp':
    return mj.nn.conv_general_dilated
  if conv_impl == 'xla':
    return jax.lax.conv_general_dilated
  if conv_impl == 'matmul':
    return matmul_conv
  raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}')


def ConvNet(ways, filters=64, blocks=4, conv_impl=None):  # pylint: disable=invalid-name
  """``mj.models.ConvNet`` with the convolution named by ``conv_impl`` (``conv_op``).

  The parameters do not depend on ``conv_impl``.
  """
  return mj.models.ConvNet(ways, filters=filters, blocks=blocks,
                           conv=conv_op(conv_impl))


# The library's, under the names the conv-net benchmark uses with ``ConvNet``.
init_convnet_params = mj.models.init_convnet_params
make_convnet_loss = mj.models.make_convnet_loss
