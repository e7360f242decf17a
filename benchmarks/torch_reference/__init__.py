"""PyTorch reference of multi-step MAML, FO-, ZO-, GGS- and HF-MAML (docs/design.md, 'Estimators').

This is the comparison point of the benchmarks and of the agreement test: the
same math as maml_jax, written the way PyTorch MAML code usually is, in two
flavours:

* ``impl='loop'``: Python loops over tasks, inner steps and Gaussian
  directions; ``torch.autograd.grad(..., create_graph=True)`` through the inner
  loop for second-order MAML (the structure of most public MAML code).
* ``impl='func'``: vectorized with ``torch.func`` (``vmap`` over tasks and over
  the b directions, ``grad`` nested for second order), usually faster.

Everything follows the finite-sum case (docs/design.md, 'Problem and notation'): every inner step
uses the task's support batch, the Hessian (estimate) terms are those of the
support loss at w_j, and the outer gradient is on the query batch:

    w_{j+1} = w_j - alpha grad l_S(w_j)                                  eq. (1)
    G_i = (I - alpha H_0) ... (I - alpha H_{N-1}) grad l_T(w_N)          eq. (3)

with H_j the exact Hessian (MAML: autograd through the loop), zero (FO-MAML),
the zeroth-order estimate of eq. (17) with u u^T (ZO-MAML, no "-I"), the GGS
estimate of eq. (18)/(19) (GGS-MAML), or the finite-difference
Hessian-vector product of HF-MAML. None of the deviations of the authors'
code listed in docs/design.md, 'The published PyTorch code', is reproduced: directions are fresh for every
task and step unless given, the matrix-factorization loss is the matrix loss
(1/4)||w w^T - z z^T||_F^2 (formed explicitly here, so it is an independent
check of the JAX formula), every method takes N steps of size alpha.

Inputs are numpy: parameters as the maml_jax pytrees (the Flax dict of the
sine MLP, the vector w of matrix factorization), task data as the dicts of
``maml_jax.tasks`` with a leading task axis, and optionally the Gaussian
directions as a pytree like the parameters whose leaves carry leading axes
[num_tasks, num_inner_steps, b]. Feeding both sides the same arrays makes the
meta-gradients comparable to float precision.

The conv net of few-shot image classification (``'convnet'``, Finn et al.'s;
``maml_jax.models.ConvNet``) is here too, with a third
implementation for MAML and FO-MAML: ``impl='torchopt'``, the inner step as a
differentiable TorchOpt update (``torchopt.sgd``, ``inplace=False``), loop
over tasks. TorchOpt is optional; only that implementation needs it.

Layout: ``sine``, ``mf`` and ``convnet`` hold each model's loss and its
conversion between maml_jax pytrees and flat tuples of tensors;
``estimators`` the loop, ``torch.func`` and TorchOpt meta-gradients (any
loss); this module the numpy interface (``meta_gradient``, ``MetaTrainer``)
and re-exports the names users import (``from benchmarks import
torch_reference as tr``).
"""

from typing import Any, Optional, Sequence

import numpy as np
import torch

from benchmarks.torch_reference import convnet
from benchmarks.torch_reference import mf
from benchmarks.torch_reference import sine
from benchmarks.torch_reference.estimators import (  # noqa: F401  (re-exported)
    ALGORITHMS, TORCHOPT_ALGORITHMS, Tensors, func_meta_gradient,
    loop_meta_gradient, loop_task_meta_gradient, torchopt_meta_gradient)

PROBLEMS = ('sine', 'mf')
IMPLS = ('loop', 'func')
CONVNET = 'convnet'  # Not in PROBLEMS: its own tests and benchmark section.
# 'torchopt' (MAML and FO-MAML only) needs ``pip install torchopt``.
ALL_IMPLS = IMPLS + ('torchopt',)

# The models by name, and their functions under the names of the single-file
# reference (``tr.sine_loss``, ``tr.convnet_loss``, ...).
MODELS = {'sine': sine, 'mf': mf, CONVNET: convnet}
SINE_LAYERS = sine.LAYERS
CONVNET_BATCH_NORM_EPS = convnet.BATCH_NORM_EPS
sine_forward, sine_loss = sine.forward, sine.loss
mf_loss = mf.loss
convnet_forward, convnet_loss = convnet.forward, convnet.loss
LOSSES = {name: model.loss for name, model in MODELS.items()}


# ----------------------------------------------------------------------------
# Conversion between maml_jax pytrees (numpy) and flat tuples of tensors.
# ----------------------------------------------------------------------------
def to_flat(problem: str, tree: Any) -> list[np.ndarray]:
  """maml_jax parameters (or anything shaped like them) -> flat list of arrays.

  For the sine MLP the pytree is Flax's ``{'params': {'Dense_i': {'kernel',
  'bias'}}}`` and the list is (W0, b0, W1, b1, W2, b2). Leaves may carry extra
  leading axes (e.g. directions [T, N, b, ...]); they are kept.
  """
  if problem not in MODELS:
    raise ValueError(f'problem must be one of {PROBLEMS + (CONVNET,)}, got {problem!r}')
  return MODELS[problem].to_flat(tree)


def from_flat(problem: str, arrays: Sequence[Any]) -> Any:
  """Inverse of ``to_flat``: a flat list of arrays -> the maml_jax pytree (numpy)."""
  arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            for a in arrays]
  if problem not in MODELS:
    raise ValueError(f'problem must be one of {PROBLEMS + (CONVNET,)}, got {problem!r}')
  return MODELS[problem].from_flat(arrays)


def _tensor(x, dtype=None):
  """A tensor copy of ``x``; floating arrays cast to ``dtype`` (labels stay ints)."""
  t = torch.as_tensor(np.array(x))
  return t if dtype is None or not t.is_floating_point() else t.to(dtype)


def to_torch_batch(batch: dict, dtype=None) -> dict:
  return {k: _tensor(v, dtype) for k, v in batch.items()}


_META_GRADIENTS = {'loop': loop_meta_gradient, 'func': func_meta_gradient,
                   'torchopt': torchopt_meta_gradient}


def meta_gradient(problem: str, algorithm: str, params: Any, tasks: Any, *,
                  inner_lr: float, num_inner_steps: int,
                  num_directions: Optional[int] = None,
                  delta: Optional[float] = None, directions: Any = None,
                  impl: str = 'loop', seed: int = 0):
  """Numpy in, numpy out: the mean and per-task meta-gradients of a task batch.

  Args:
    problem: 'sine', 'mf' or 'convnet'.
    algorithm: one of ``ALGORITHMS``.
    params: maml_jax parameters (numpy or jax arrays): the Flax dict of the sine
      MLP or the vector w.
    tasks: ``maml_jax.Task`` or dict with 'support'/'query' batches (leading
      task axis). The dtype of the parameters is used throughout.
    inner_lr, num_inner_steps, num_directions, delta: the hyperparameters.
    directions: None, or a pytree like ``params`` with leaves
      [T, N, b, *shape] (e.g. ``mj.gaussian_directions`` stacked per task and
      step); drawn in torch when None.
    impl: 'loop', 'func' or 'torchopt' (MAML and FO-MAML).
    seed: seed of the torch generator drawing directions when not given.

  Returns:
    (mean meta-gradient, per-task meta-gradients with a leading task axis),
    both as maml_jax-shaped numpy pytrees.
  """
  if impl not in ALL_IMPLS:
    raise ValueError(f'impl must be one of {ALL_IMPLS}, got {impl!r}')
  flat = [_tensor(p) for p in to_flat(problem, params)]
  dtype = flat[0].dtype
  support, query = ((tasks.support, tasks.query) if hasattr(tasks, 'support')
                    else (tasks['support'], tasks['query']))
  tt = {'support': to_torch_batch(support, dtype), 'query': to_torch_batch(query, dtype)}
  dirs = None
  if directions is not None:
    dirs = [_tensor(d, dtype) for d in to_flat(problem, directions)]
  fn = _META_GRADIENTS[impl]
  generator = torch.Generator().manual_seed(seed)
  mean, per_task = fn(LOSSES[problem], algorithm, flat, tt,
                      inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                      num_directions=num_directions, delta=delta,
                      directions=dirs, generator=generator)
  return from_flat(problem, mean), from_flat(problem, per_task)


class MetaTrainer:
  """A PyTorch meta-training loop (eq. (7) with Adam), one meta-iteration per ``step``.

  Used by the benchmarks: ``step(tasks)`` computes the mean meta-gradient of a
  task batch (dict of tensors with a leading task axis) with fresh Gaussian
  directions and applies one ``torch.optim.Adam`` update.
  """

  def __init__(self, problem: str, algorithm: str, params: Any, *,
               inner_lr: float, num_inner_steps: int, meta_lr: float,
               num_directions: Optional[int] = None,
               delta: Optional[float] = None, impl: str = 'loop', seed: int = 0):
    if impl not in ALL_IMPLS:
      raise ValueError(f'impl must be one of {ALL_IMPLS}, got {impl!r}')
    if algorithm not in ALGORITHMS:
      raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
    self.loss_fn = LOSSES[problem]
    self.algorithm = algorithm
    self.params = [_tensor(p).clone().requires_grad_() for p in to_flat(problem, params)]
    self.optimizer = torch.optim.Adam(self.params, lr=meta_lr)
    self.hparams = dict(inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                        num_directions=num_directions, delta=delta)
    self.meta_gradient = _META_GRADIENTS[impl]
    self.generator = torch.Generator().manual_seed(seed)

  def step(self, tasks: dict) -> None:
    mean, _ = self.meta_gradient(self.loss_fn, self.algorithm, self.params, tasks,
                                 generator=self.generator, **self.hparams)
    for p, g in zip(self.params, mean):
      p.grad = g.detach()
    self.optimizer.step()
