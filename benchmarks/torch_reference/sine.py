"""The sine-regression MLP 1-40-40-1 (``maml_jax.models``' sine model) in PyTorch."""

import numpy as np
import torch

from benchmarks.torch_reference.estimators import Tensors

LAYERS = ('Dense_0', 'Dense_1', 'Dense_2')


def forward(params: Tensors, x: torch.Tensor) -> torch.Tensor:
  """MLP 1-40-40-1 with ReLU; params = (W0, b0, W1, b1, W2, b2), W as [in, out]."""
  w0, b0, w1, b1, w2, b2 = params
  h = torch.relu(x @ w0 + b0)
  h = torch.relu(h @ w1 + b1)
  return h @ w2 + b2


def loss(params: Tensors, batch: dict) -> torch.Tensor:
  """Mean squared error on ``batch = {'x': [K, 1], 'y': [K, 1]}``."""
  return torch.mean((forward(params, batch['x']) - batch['y']) ** 2)


def to_flat(tree):
  """Flax's ``{'params': {'Dense_i': {'kernel', 'bias'}}}`` -> [W0, b0, W1, b1, W2, b2]."""
  p = tree['params']
  out = []
  for layer in LAYERS:
    out += [np.asarray(p[layer]['kernel']), np.asarray(p[layer]['bias'])]
  return out


def from_flat(arrays):
  return {'params': {layer: {'kernel': arrays[2 * i], 'bias': arrays[2 * i + 1]}
                     for i, layer in enumerate(LAYERS)}}
