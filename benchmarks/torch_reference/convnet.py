"""Finn et al.'s few-shot conv net (``maml_jax.models.ConvNet``) in PyTorch."""

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.torch_reference.estimators import Tensors

BATCH_NORM_EPS = 1e-5


def forward(params: Tensors, x: torch.Tensor) -> torch.Tensor:
  """Finn et al.'s conv net, ``maml_jax.models.ConvNet``'s math.

  Args:
    params: (kernel_0, scale_0, offset_0, ..., head_kernel, head_bias); conv
      kernels [C_out, C_in, 3, 3] (PyTorch's layout), head kernel [in, out].
    x: images [B, H, W, C] (maml_jax's NHWC layout).

  Returns:
    logits [B, ways].
  """
  x = x.permute(0, 3, 1, 2)
  for i in range((len(params) - 2) // 3):
    kernel, scale, offset = params[3 * i:3 * i + 3]
    x = F.conv2d(x, kernel, padding=1)
    x = F.batch_norm(x, None, None, scale, offset, training=True,
                     eps=BATCH_NORM_EPS)
    x = F.max_pool2d(F.relu(x), 2)
  x = x.permute(0, 2, 3, 1).flatten(1)  # flattened in JAX's (H, W, C) order
  return x @ params[-2] + params[-1]


def loss(params: Tensors, batch: dict) -> torch.Tensor:
  """Mean cross-entropy on ``batch = {'x': [B, H, W, C], 'y': [B] int}``."""
  return F.cross_entropy(forward(params, batch['x']), batch['y'].long())


def _hwio_to_oihw(a):
  """[..., H, W, I, O] -> [..., O, I, H, W], leading axes kept."""
  lead = list(range(a.ndim - 4))
  n = a.ndim
  return np.ascontiguousarray(np.transpose(a, lead + [n - 1, n - 2, n - 4, n - 3]))


def _oihw_to_hwio(a):
  lead = list(range(a.ndim - 4))
  n = a.ndim
  return np.ascontiguousarray(np.transpose(a, lead + [n - 2, n - 1, n - 3, n - 4]))


def to_flat(tree):
  """``{'params': {'block_i': {'kernel' (HWIO), 'scale', 'offset'}, 'head': ...}}`` ->
  [kernel_0 (OIHW), scale_0, offset_0, ..., head_kernel, head_bias]."""
  p = tree['params']
  out = []
  for i in range(len(p) - 1):
    block = p[f'block_{i}']
    out += [_hwio_to_oihw(np.asarray(block['kernel'])), np.asarray(block['scale']),
            np.asarray(block['offset'])]
  return out + [np.asarray(p['head']['kernel']), np.asarray(p['head']['bias'])]


def from_flat(arrays):
  blocks = {f'block_{i}': {'kernel': _oihw_to_hwio(arrays[3 * i]),
                           'scale': arrays[3 * i + 1],
                           'offset': arrays[3 * i + 2]}
            for i in range((len(arrays) - 2) // 3)}
  return {'params': dict(blocks, head={'kernel': arrays[-2], 'bias': arrays[-1]})}
