"""Models and losses of the paper's experiments (each a ``loss_fn(params, batch)``)."""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class SineMLP(nn.Module):
  """The MLP 1-40-40-1 with ReLU of Finn et al. (2017) for sine regression."""
  hidden: tuple = (40, 40)

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(1)(x)


SINE_MODEL = SineMLP()


def init_sine_params(key, dtype=jnp.float32):
  """Parameters of ``SINE_MODEL`` (Flax's default init), cast to ``dtype``."""
  params = SINE_MODEL.init(key, jnp.zeros((1, 1), dtype))
  return jax.tree.map(lambda p: p.astype(dtype), params)


def sine_loss(params, batch):
  """Mean squared error of the sine MLP on ``batch = {'x': [K, 1], 'y': [K, 1]}``."""
  pred = SINE_MODEL.apply(params, batch['x'])
  return jnp.mean((pred - batch['y']) ** 2)


def init_mf_params(key, dim=20, dtype=jnp.float32):
  """w_0 ~ N(0, 2/(d+1)) as in the authors' setup (SPEC section 4)."""
  return jnp.sqrt(2.0 / (dim + 1)) * jax.random.normal(key, (dim,), dtype)


def mf_loss(w, batch):
  """Rank-one matrix factorization loss (1/4)||w w^T - z z^T||_F^2, averaged over z.

  Uses ||w w^T - z z^T||_F^2 = |w|^4 - 2 (w.z)^2 + |z|^4, which never forms the
  d x d matrices (and, unlike the authors' code, is the matrix loss, not
  (1/4)(|w|^2 - |z|^2)^2; SPEC section 5).

  Args:
    w: parameter vector [d].
    batch: ``{'z': [n, d]}``.
  """
  z = batch['z']
  ww = jnp.dot(w, w)
  wz = z @ w
  zz = jnp.sum(z * z, axis=-1)
  return 0.25 * jnp.mean(ww ** 2 - 2.0 * wz ** 2 + zz ** 2)


# ----------------------------------------------------------------------------
# Few-shot image classification: the 4-block conv net of Finn et al. (2017).
# ----------------------------------------------------------------------------
CONV_IMPLS = ('xla', 'matmul', 'xla_vjp')
BATCH_NORM_EPS = 1e-5  # PyTorch's default, so that the reference matches.
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def default_conv_impl(backend=None):
  """'xla_vjp' on CPU, 'xla' on every other backend.

  On CPU, XLA's convolution is fast only in the canonical NHWC x HWIO form
  and, in a loop body (``task_batching='map'``), JAX's backward convolutions
  are not; 'xla_vjp' (``canonical_conv``) keeps every convolution canonical
  and computes the kernel gradient as a matmul: 1.3x faster per task than
  'matmul' (im2col) and 30x faster than 'xla' in a ``lax.map`` (BENCHMARKS.md,
  "Conv net"). It is reverse mode only: for forward-mode derivatives
  (``backprop='product'``, ``mj.exact_hvp``) build the model with 'matmul'.
  On GPU/TPU convolutions take other kernels, which nothing in this
  repository measures, so the default there stays XLA's convolution.
  """
  backend = backend or jax.default_backend()
  return 'xla_vjp' if backend == 'cpu' else 'xla'


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def canonical_conv(x, kernel, padding):
  """Stride-1 NHWC x HWIO convolution whose derivatives XLA:CPU runs fast everywhere.

  The same function as ``lax.conv_general_dilated(x, kernel, (1, 1), padding,
  ('NHWC', 'HWIO', 'NHWC'))``, with a custom VJP:

  * the input gradient is the output gradient convolved with the spatially
    flipped kernel (input and output channels swapped): a call of this
    function, so every derivative order stays in this form;
  * the kernel gradient is one matmul, ``kernel_gradient``: the KH KW shifted
    views of the padded input (im2col, [B H' W', KH KW C_in]) contracted with
    the output gradient ([B H' W', C_out]) over the batch and pixels. Its own
    derivatives are pads, slices and matmuls.

  Why: XLA:CPU runs a convolution on its fast library kernels (YNNPACK/Eigen)
  only in the "canonical" form NHWC x HWIO; JAX's own transpose rules emit the
  backward convolutions in other dimension orders, which XLA rewrites to
  canonical ones only in the entry computation (``ConvCanonicalization``
  visits ``module->entry_computation()`` only). In a loop body (``lax.map``
  over tasks, ``lax.scan``) they run on XLA's generic loop emitter instead,
  one or two orders of magnitude slower. And the kernel gradient as a
  canonical convolution (the input read as [C_in, H, W, B] against a
  [H', W', B, C_out] "kernel" as large as the image) ran 2.5x slower than the
  matmul (benchmarks/profile_convnet.py, BENCHMARKS.md "Conv net").

  Reverse mode only: ``jax.jvp`` of a custom-VJP function raises, so
  forward-over-reverse Hessian-vector products (``mj.maml(...,
  backprop='product')``, ``mj.exact_hvp``) need conv_impl 'xla' or 'matmul'.

  Args:
    x: [B, H, W, C_in].
    kernel: [KH, KW, C_in, C_out].
    padding: ((top, bottom), (left, right)), each at most KH - 1 / KW - 1.

  Returns:
    [B, H + top + bottom - KH + 1, W + left + right - KW + 1, C_out].
  """
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                      dimension_numbers=_NHWC)


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


def kernel_gradient(x, g, kernel_size, padding):
  """d/d kernel of <g, conv(x, kernel)> for a stride-1 NHWC x HWIO convolution.

      dK[dy, dx, c, o] = sum_{b, h, w} x_pad[b, h + dy, w + dx, c] g[b, h, w, o]

  computed as one matmul of the im2col patches of ``x`` with ``g``.

  Args:
    x: [B, H, W, C_in], the convolution's input.
    g: [B, H', W', C_out], the gradient of its output.
    kernel_size: (KH, KW).
    padding: ((top, bottom), (left, right)) of the convolution.

  Returns:
    [KH, KW, C_in, C_out].
  """
  kh, kw = kernel_size
  c_in, c_out = x.shape[-1], g.shape[-1]
  patches = im2col(x, kernel_size, padding, g.shape[1:3])
  dk = jax.lax.dot_general(patches.reshape(-1, kh * kw * c_in),
                           g.reshape(-1, c_out), (((0,), (0,)), ((), ())))
  return dk.reshape(kh, kw, c_in, c_out)


def _canonical_conv_fwd(x, kernel, padding):
  # The primal is a call of the custom-VJP function itself, so that a second
  # derivative (MAML through the inner steps) also uses the custom rule.
  return canonical_conv(x, kernel, padding), (x, kernel)


def _canonical_conv_bwd(padding, residuals, g):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  (top, bottom), (left, right) = padding
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  dx = canonical_conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom),
                                   (kw - 1 - left, kw - 1 - right)))
  return dx, kernel_gradient(x, g, (kh, kw), padding)


canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def conv3x3(x, kernel, conv_impl):
  """3x3 'SAME' convolution, stride 1, NHWC input, HWIO kernel.

  Args:
    x: [B, H, W, C_in].
    kernel: [3, 3, C_in, C_out].
    conv_impl: 'xla' (``lax.conv_general_dilated``), 'matmul' (im2col: the
      nine shifted views of the zero-padded input concatenated on the channel
      axis, one matmul with the [9 C_in, C_out] kernel) or 'xla_vjp'
      (``canonical_conv``: XLA's convolution with backward convolutions that
      stay fast inside ``lax.map``; reverse mode only). Same math.

  Returns:
    [B, H, W, C_out].
  """
  if conv_impl == 'xla':
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding='SAME',
        dimension_numbers=_NHWC)
  if conv_impl == 'xla_vjp':
    return canonical_conv(x, kernel, ((1, 1), (1, 1)))
  if conv_impl != 'matmul':
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}')
  kh, kw, c_in, c_out = kernel.shape
  patches = im2col(x, (kh, kw), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                   x.shape[1:3])
  return patches @ kernel.reshape(kh * kw * c_in, c_out)


def batch_norm(x, scale, offset, eps=BATCH_NORM_EPS):
  """Normalizes each channel with the statistics of this batch (no running averages).

  y = (x - mean) / sqrt(var + eps) * scale + offset, mean and (biased)
  variance over batch and spatial axes, as PyTorch's ``batch_norm`` in
  training mode and Finn et al.'s ``tf.contrib.layers.batch_norm`` without
  moving averages.
  """
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + offset


def _first_max(a, b):
  return jnp.where(a >= b, a, b)


def max_pool_2x2(x):
  """2x2 max pooling, stride 2, 'VALID' (odd sizes floor, as PyTorch's max_pool2d).

  Written as three ``where(a >= b, a, b)`` of the four strided views, so that
  the gradient goes to one element of each window: the first maximum in
  row-major order, PyTorch's rule. Not ``jnp.max`` over a reshaped window:
  the JVP of a max reduction finds the maximum by comparing the operand with
  the result for equality, and XLA may recompute the operand (BatchNorm and
  ReLU, fused) in two fusions that round differently, so that no element
  matches and the window's gradient is lost (seen under ``jax.vmap``:
  benchmarks/repro_vmap_conv.py). A ``where`` routes the gradient by its own
  comparison, whatever the rounding.
  """
  _, h, w, _ = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :]
  top = _first_max(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
  bottom = _first_max(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  return _first_max(top, bottom)


class ConvBlock(nn.Module):
  """3x3 conv (no bias) -> batch-statistics BatchNorm -> ReLU -> 2x2 max-pool.

  The convolution has no bias: BatchNorm subtracts the batch mean of each
  channel right after it, so a bias would cancel exactly (and get a zero
  gradient). The learned per-channel 'scale' and 'offset' follow.
  """
  features: int
  conv_impl: str

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), x.dtype)
    scale = self.param('scale', nn.initializers.ones, (self.features,), x.dtype)
    offset = self.param('offset', nn.initializers.zeros, (self.features,), x.dtype)
    x = batch_norm(conv3x3(x, kernel, self.conv_impl), scale, offset)
    return max_pool_2x2(nn.relu(x))


class ConvNet(nn.Module):
  """Finn et al.'s (2017) few-shot conv net: ``blocks`` ConvBlocks, linear head.

  On 28x28 images four blocks pool to 1x1, so the head sees ``filters``
  features. ``conv_impl`` ('xla', 'matmul' or 'xla_vjp', see ``conv3x3``) changes how the
  convolutions are computed, not the parameters or the math; None picks
  ``default_conv_impl()`` for the backend at trace time.
  """
  ways: int
  filters: int = 64
  blocks: int = 4
  conv_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    conv_impl = self.conv_impl or default_conv_impl()
    for i in range(self.blocks):
      x = ConvBlock(self.filters, conv_impl, name=f'block_{i}')(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.ways, name='head')(x)


def init_convnet_params(key, model, image_shape=(28, 28, 1), dtype=jnp.float32):
  """Parameters of ``model`` (a ``ConvNet``) for images of ``image_shape``, in ``dtype``."""
  params = model.init(key, jnp.zeros((1,) + tuple(image_shape), dtype))
  return jax.tree.map(lambda p: p.astype(dtype), params)


def make_convnet_loss(model, has_aux=False):
  """Cross-entropy ``loss_fn(params, batch)`` of ``model`` (a ``ConvNet``).

  Args:
    model: the ``ConvNet``.
    has_aux: if True, ``loss_fn`` returns ``(loss, {'accuracy': ...})`` (for
      estimators built with ``has_aux=True``).

  Returns:
    ``loss_fn(params, batch)`` with ``batch = {'x': [B, H, W, C] images,
    'y': [B] int labels in [0, ways)}``; the mean cross-entropy.
  """

  def loss_fn(params, batch):
    logits = model.apply(params, batch['x'])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['y']))
    if not has_aux:
      return loss
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == batch['y'])
    return loss, {'accuracy': accuracy}

  return loss_fn
