"""The standard MAML benchmark models, as ``loss_fn(params, batch)`` builders.

* ``SineMLP``: the 1-40-40-1 ReLU network of Finn et al. (2017) for sine-wave
  regression, with a mean-squared-error loss (``sine_loss``,
  ``make_mse_loss``).
* ``ConvNet``: Finn et al.'s few-shot image classifier: ``blocks`` blocks of
  3x3 convolution (no bias), BatchNorm on the statistics of the batch itself
  (no running averages), ReLU and 2x2 max pooling, then a linear head; with a
  cross-entropy loss (``make_convnet_loss``) that can also report accuracy.
* ``mf_loss``: the rank-one matrix factorization of Ji, Yang and Liang's
  section 5.1, (1/4)||w w^T - z z^T||_F^2 (``init_mf_params``).

The conv net's convolution is a field (``conv``, any function with the
signature of ``jax.lax.conv_general_dilated``); the default is
``maml_jax.nn.conv_general_dilated``, whose derivatives stay fast on XLA:CPU
inside the loops MAML runs, and the pooling is ``maml_jax.nn.max_pool``,
whose gradient survives XLA's fusion (see ``maml_jax.nn``).
"""

from typing import Any, Callable, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import optax

from maml_jax._src import nn as mj_nn
from maml_jax._src import tasks

# PyTorch's default epsilon, so that a PyTorch version of the net matches.
BATCH_NORM_EPS = 1e-5
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _cast(params, dtype):
  return jax.tree.map(lambda p: p.astype(dtype), params)


# ----------------------------------------------------------------------------
# Sine-wave regression.


class SineMLP(nn.Module):
  """The MLP 1-40-40-1 with ReLU of Finn et al. (2017) for sine regression.

  Attributes:
    hidden: widths of the hidden layers (Finn et al.: (40, 40)).
    outputs: width of the linear output layer.

  Example:
    >>> model = mj.models.SineMLP()
    >>> params = mj.models.init_sine_params(key, model)
    >>> model.apply(params, jnp.zeros((5, 1))).shape
    (5, 1)
  """
  hidden: tuple = (40, 40)
  outputs: int = 1

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.outputs)(x)


SINE_MODEL = SineMLP()


def init_sine_params(key, model: Optional[SineMLP] = None,
                     dtype=jnp.float32):
  """Parameters of a ``SineMLP`` (Flax's default initialisers), in ``dtype``.

  Args:
    key: PRNG key.
    model: the ``SineMLP`` (default: Finn et al.'s 1-40-40-1).
    dtype: the parameters' float dtype.

  Returns:
    The Flax variables ``{'params': ...}``, a pytree for any estimator.

  Example:
    >>> params = mj.models.init_sine_params(jax.random.PRNGKey(0))
  """
  model = SINE_MODEL if model is None else model
  return _cast(model.init(key, jnp.zeros((1, 1), dtype)), dtype)


def make_mse_loss(model: nn.Module) -> Callable:
  """Mean-squared-error ``loss_fn(params, batch)`` of a regression ``model``.

  Args:
    model: a Flax module mapping inputs [B, ...] to predictions shaped like
      the targets.

  Returns:
    ``loss_fn(params, batch)`` with ``batch = {'x': inputs, 'y': targets}``:
    mean((model.apply(params, x) - y)^2), a scalar.

  Example:
    >>> loss_fn = mj.models.make_mse_loss(mj.models.SineMLP(hidden=(64, 64)))
    >>> est = mj.maml(loss_fn, inner_lr=0.01, num_inner_steps=3)
  """

  def loss_fn(params, batch):
    pred = model.apply(params, batch['x'])
    return jnp.mean((pred - batch['y']) ** 2)

  return loss_fn


_SINE_MSE = make_mse_loss(SINE_MODEL)


def sine_loss(params, batch):
  """Mean squared error of Finn et al.'s sine MLP (``make_mse_loss(SineMLP())``).

  Args:
    params: from ``init_sine_params``.
    batch: ``{'x': [K, 1], 'y': [K, 1]}`` (``maml_jax.tasks.sine_tasks``
      gives these with a leading task axis).

  Returns:
    The scalar loss.

  Example:
    >>> est = mj.ggs_maml(mj.models.sine_loss, inner_lr=0.01,
    ...                   num_inner_steps=3, num_directions=10, delta=1e-2)
  """
  return _SINE_MSE(params, batch)


# ----------------------------------------------------------------------------
# Rank-one matrix factorization (Ji, Yang, Liang, section 5.1).

MF_DIM = tasks.MF_DIM  # d, the dimension of w and z


def init_mf_params(key, dim: int = MF_DIM, dtype=jnp.float32):
  """w_0 ~ N(0, 2 / (d + 1) I_d), a vector of ``dim`` parameters."""
  return jnp.sqrt(2.0 / (dim + 1)) * jax.random.normal(key, (dim,), dtype)


def mf_loss(w, batch):
  """Rank-one matrix factorization loss (1/4)||w w^T - z z^T||_F^2, averaged over z.

  Uses ||w w^T - z z^T||_F^2 = |w|^4 - 2 (w.z)^2 + |z|^4, which never forms the
  d x d matrices. (The authors' published code computes (1/4)(|w|^2 - |z|^2)^2
  instead, a different function; docs/design.md.)

  Args:
    w: the parameter vector [d] (``init_mf_params``).
    batch: ``{'z': [n, d]}`` (``maml_jax.tasks.matrix_factorization_tasks``
      gives these with a leading task axis).

  Returns:
    The scalar loss.
  """
  z = batch['z']
  ww = jnp.dot(w, w)
  wz = z @ w
  zz = jnp.sum(z * z, axis=-1)
  return 0.25 * jnp.mean(ww ** 2 - 2.0 * wz ** 2 + zz ** 2)


# ----------------------------------------------------------------------------
# Few-shot image classification.


def batch_norm(x, scale, offset, eps: float = BATCH_NORM_EPS):
  """Normalizes each channel with the statistics of this batch (no running averages).

  y = (x - mean) / sqrt(var + eps) * scale + offset, with the mean and the
  biased variance over the batch and spatial axes: PyTorch's ``batch_norm``
  in training mode, and Finn et al.'s BatchNorm without moving averages. In
  MAML every task (support and query set) is normalized with its own
  statistics.

  Args:
    x: [B, H, W, C].
    scale: [C].
    offset: [C].
    eps: added to the variance (PyTorch's default 1e-5).

  Returns:
    [B, H, W, C].

  Example:
    >>> y = mj.models.batch_norm(x, jnp.ones(c), jnp.zeros(c))
  """
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + offset


class ConvBlock(nn.Module):
  """3x3 conv (no bias) -> batch-statistics BatchNorm -> ReLU -> 2x2 max-pool.

  The convolution has no bias: BatchNorm subtracts each channel's batch mean
  right after it, so a bias would cancel exactly (and get a zero gradient).
  The learned per-channel 'scale' and 'offset' follow. The pool is 'VALID'
  with stride 2: odd sizes floor, as PyTorch's ``max_pool2d``.

  Attributes:
    features: output channels.
    conv: the convolution, with ``jax.lax.conv_general_dilated``'s signature.
  """
  features: int
  conv: Callable[..., Any] = mj_nn.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (3, 3, x.shape[-1], self.features), x.dtype)
    scale = self.param('scale', nn.initializers.ones, (self.features,),
                       x.dtype)
    offset = self.param('offset', nn.initializers.zeros, (self.features,),
                        x.dtype)
    x = self.conv(x, kernel, (1, 1), 'SAME', dimension_numbers=_NHWC)
    x = nn.relu(batch_norm(x, scale, offset))
    return mj_nn.max_pool(x, (2, 2))


class ConvNet(nn.Module):
  """Finn et al.'s (2017) few-shot conv net: ``blocks`` ``ConvBlock`` s, linear head.

  Images are NHWC. Four blocks pool Omniglot's 28x28 to 1x1 (the head sees
  ``filters`` features) and miniImageNet's 84x84 to 5x5 (25 ``filters``).
  Finn et al. use 64 filters on Omniglot and 32 on miniImageNet.

  Attributes:
    ways: N, the classes of a task (the head's outputs).
    filters: channels of every block.
    blocks: number of conv blocks.
    conv: the convolution of every block, any function with the signature
      of ``jax.lax.conv_general_dilated``. The default,
      ``maml_jax.nn.conv_general_dilated``, is lax's convolution with
      derivatives that stay fast on XLA:CPU in a ``lax.map`` over tasks; it
      is reverse mode only (``maml_jax.exact_hvp`` switches to reverse mode
      by itself). Pass ``jax.lax.conv_general_dilated`` for forward-mode
      derivatives of your own. The parameters do not depend on it.

  Example:
    >>> model = mj.models.ConvNet(ways=5)
    >>> params = mj.models.init_convnet_params(key, model, (28, 28, 1))
    >>> loss_fn = mj.models.make_convnet_loss(model, has_aux=True)
    >>> est = mj.maml(loss_fn, inner_lr=0.4, num_inner_steps=1, has_aux=True)
  """
  ways: int
  filters: int = 64
  blocks: int = 4
  conv: Callable[..., Any] = mj_nn.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    for i in range(self.blocks):
      x = ConvBlock(self.filters, self.conv, name=f'block_{i}')(x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.ways, name='head')(x)


def init_convnet_params(key, model: ConvNet, image_shape=(28, 28, 1),
                        dtype=jnp.float32):
  """Parameters of ``model`` for images of ``image_shape`` (H, W, C), in ``dtype``.

  Args:
    key: PRNG key.
    model: the ``ConvNet``.
    image_shape: (28, 28, 1) for Omniglot, (84, 84, 3) for miniImageNet.
    dtype: the parameters' float dtype.

  Returns:
    The Flax variables ``{'params': {'block_i': {'kernel', 'scale',
    'offset'}, 'head': {'kernel', 'bias'}}}``.

  Example:
    >>> params = mj.models.init_convnet_params(
    ...     key, mj.models.ConvNet(5, filters=32), (84, 84, 3))
  """
  params = model.init(key, jnp.zeros((1,) + tuple(image_shape), dtype))
  return _cast(params, dtype)


def make_convnet_loss(model: nn.Module, has_aux: bool = False) -> Callable:
  """Cross-entropy ``loss_fn(params, batch)`` of a classifier ``model``.

  Args:
    model: the ``ConvNet`` (any module mapping images to [B, ways] logits).
    has_aux: if True, ``loss_fn`` returns ``(loss, {'accuracy': ...})``,
      for estimators built with ``has_aux=True``.

  Returns:
    ``loss_fn(params, batch)`` with ``batch = {'x': [B, H, W, C] images,
    'y': [B] int labels in [0, ways)}``: the mean cross-entropy (and the
    accuracy of the arg-max predictions).

  Example:
    >>> loss_fn = mj.models.make_convnet_loss(model, has_aux=True)
    >>> loss, aux = loss_fn(params, task.query)   # aux['accuracy']
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
