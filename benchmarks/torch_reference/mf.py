"""Matrix factorization's loss (1/4)||w w^T - z z^T||_F^2 in PyTorch, formed explicitly."""

import numpy as np
import torch

from benchmarks.torch_reference.estimators import Tensors


def loss(params: Tensors, batch: dict) -> torch.Tensor:
  """(1/4)||w w^T - z z^T||_F^2 averaged over ``batch = {'z': [n, d]}``.

  Forms the d x d matrices explicitly (d = 20), unlike the JAX experiment
  code, which uses the expanded form; the two agreeing checks both.
  """
  (w,) = params
  z = batch['z']
  diff = torch.outer(w, w)[None] - z[:, :, None] * z[:, None, :]
  return 0.25 * torch.mean(torch.sum(diff ** 2, dim=(1, 2)))


def to_flat(tree):
  return [np.asarray(tree)]


def from_flat(arrays):
  return arrays[0]
