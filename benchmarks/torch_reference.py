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
``maml_jax.tasks`` and ``experiments.tasks`` with a leading task axis, and optionally the Gaussian
directions as a pytree like the parameters whose leaves carry leading axes
[num_tasks, num_inner_steps, b]. Feeding both sides the same arrays makes the
meta-gradients comparable to float precision.

The conv net of few-shot image classification (``'convnet'``, Finn et al.'s;
``maml_jax.models.ConvNet``) is here too, with a third
implementation for MAML and FO-MAML: ``impl='torchopt'``, the inner step as a
differentiable TorchOpt update (``torchopt.sgd``, ``inplace=False``), loop
over tasks. TorchOpt is optional; only that implementation needs it.
"""

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import func as tfunc
import torch.nn.functional as F

# The estimators implemented here: exactly maml_jax's registry
# (``mj.ESTIMATORS``, checked in tests/test_torch_agreement.py), written out
# so that this reference imports neither JAX nor maml_jax.
ALGORITHMS = ('maml', 'fo_maml', 'zo_maml', 'ggs_maml', 'hf_maml')
PROBLEMS = ('sine', 'mf')
IMPLS = ('loop', 'func')
CONVNET = 'convnet'  # Not in PROBLEMS: its own tests and benchmark section.
# 'torchopt' (MAML and FO-MAML only) needs ``pip install torchopt``.
ALL_IMPLS = IMPLS + ('torchopt',)
TORCHOPT_ALGORITHMS = ('maml', 'fo_maml')
CONVNET_BATCH_NORM_EPS = 1e-5

Tensors = Sequence[torch.Tensor]

# ----------------------------------------------------------------------------
# Models and losses (parameters are flat tuples of tensors).
# ----------------------------------------------------------------------------
SINE_LAYERS = ('Dense_0', 'Dense_1', 'Dense_2')


def sine_forward(params: Tensors, x: torch.Tensor) -> torch.Tensor:
  """MLP 1-40-40-1 with ReLU; params = (W0, b0, W1, b1, W2, b2), W as [in, out]."""
  w0, b0, w1, b1, w2, b2 = params
  h = torch.relu(x @ w0 + b0)
  h = torch.relu(h @ w1 + b1)
  return h @ w2 + b2


def sine_loss(params: Tensors, batch: dict) -> torch.Tensor:
  """Mean squared error on ``batch = {'x': [K, 1], 'y': [K, 1]}``."""
  return torch.mean((sine_forward(params, batch['x']) - batch['y']) ** 2)


def mf_loss(params: Tensors, batch: dict) -> torch.Tensor:
  """(1/4)||w w^T - z z^T||_F^2 averaged over ``batch = {'z': [n, d]}``.

  Forms the d x d matrices explicitly (d = 20), unlike the JAX experiment
  code, which uses the expanded form; the two agreeing checks both.
  """
  (w,) = params
  z = batch['z']
  diff = torch.outer(w, w)[None] - z[:, :, None] * z[:, None, :]
  return 0.25 * torch.mean(torch.sum(diff ** 2, dim=(1, 2)))


def convnet_forward(params: Tensors, x: torch.Tensor) -> torch.Tensor:
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
                     eps=CONVNET_BATCH_NORM_EPS)
    x = F.max_pool2d(F.relu(x), 2)
  x = x.permute(0, 2, 3, 1).flatten(1)  # flattened in JAX's (H, W, C) order
  return x @ params[-2] + params[-1]


def convnet_loss(params: Tensors, batch: dict) -> torch.Tensor:
  """Mean cross-entropy on ``batch = {'x': [B, H, W, C], 'y': [B] int}``."""
  return F.cross_entropy(convnet_forward(params, batch['x']), batch['y'].long())


LOSSES = {'sine': sine_loss, 'mf': mf_loss, CONVNET: convnet_loss}


def _hwio_to_oihw(a):
  """[..., H, W, I, O] -> [..., O, I, H, W], leading axes kept."""
  lead = list(range(a.ndim - 4))
  n = a.ndim
  return np.ascontiguousarray(np.transpose(a, lead + [n - 1, n - 2, n - 4, n - 3]))


def _oihw_to_hwio(a):
  lead = list(range(a.ndim - 4))
  n = a.ndim
  return np.ascontiguousarray(np.transpose(a, lead + [n - 2, n - 1, n - 3, n - 4]))


# ----------------------------------------------------------------------------
# Conversion between maml_jax pytrees (numpy) and flat tuples of tensors.
# ----------------------------------------------------------------------------
def to_flat(problem: str, tree: Any) -> list[np.ndarray]:
  """maml_jax parameters (or anything shaped like them) -> flat list of arrays.

  For the sine MLP the pytree is Flax's ``{'params': {'Dense_i': {'kernel',
  'bias'}}}`` and the list is (W0, b0, W1, b1, W2, b2). Leaves may carry extra
  leading axes (e.g. directions [T, N, b, ...]); they are kept.
  """
  if problem == 'sine':
    p = tree['params']
    out = []
    for layer in SINE_LAYERS:
      out += [np.asarray(p[layer]['kernel']), np.asarray(p[layer]['bias'])]
    return out
  if problem == 'mf':
    return [np.asarray(tree)]
  if problem == CONVNET:
    p = tree['params']
    out = []
    for i in range(len(p) - 1):
      block = p[f'block_{i}']
      out += [_hwio_to_oihw(np.asarray(block['kernel'])), np.asarray(block['scale']),
              np.asarray(block['offset'])]
    return out + [np.asarray(p['head']['kernel']), np.asarray(p['head']['bias'])]
  raise ValueError(f'problem must be one of {PROBLEMS + (CONVNET,)}, got {problem!r}')


def from_flat(problem: str, arrays: Sequence[Any]) -> Any:
  """Inverse of ``to_flat``: a flat list of arrays -> the maml_jax pytree (numpy)."""
  arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            for a in arrays]
  if problem == 'sine':
    return {'params': {layer: {'kernel': arrays[2 * i], 'bias': arrays[2 * i + 1]}
                       for i, layer in enumerate(SINE_LAYERS)}}
  if problem == 'mf':
    return arrays[0]
  if problem == CONVNET:
    blocks = {f'block_{i}': {'kernel': _oihw_to_hwio(arrays[3 * i]),
                             'scale': arrays[3 * i + 1],
                             'offset': arrays[3 * i + 2]}
              for i in range((len(arrays) - 2) // 3)}
    return {'params': dict(blocks, head={'kernel': arrays[-2], 'bias': arrays[-1]})}
  raise ValueError(f'problem must be one of {PROBLEMS + (CONVNET,)}, got {problem!r}')


def _tensor(x, dtype=None):
  """A tensor copy of ``x``; floating arrays cast to ``dtype`` (labels stay ints)."""
  t = torch.as_tensor(np.array(x))
  return t if dtype is None or not t.is_floating_point() else t.to(dtype)


def to_torch_batch(batch: dict, dtype=None) -> dict:
  return {k: _tensor(v, dtype) for k, v in batch.items()}


# ----------------------------------------------------------------------------
# Loop implementation: one task at a time, Python loops everywhere.
# ----------------------------------------------------------------------------
def _dot(xs: Tensors, ys: Tensors) -> torch.Tensor:
  return sum(torch.sum(x * y) for x, y in zip(xs, ys))


def _grad(loss_fn, params, batch, create_graph=False):
  params = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
  loss = loss_fn(params, batch)
  return loss, torch.autograd.grad(loss, params, create_graph=create_graph)


def loop_task_meta_gradient(
    loss_fn: Callable, algorithm: str, params: Tensors, support: dict,
    query: dict, *, inner_lr: float, num_inner_steps: int,
    num_directions: Optional[int] = None, delta: Optional[float] = None,
    directions: Optional[Sequence[Tensors]] = None,
    generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
  """Meta-gradient G_i of ONE task, eq. (3)/(19), the usual PyTorch way.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` on tuples of tensors.
    algorithm: one of ``ALGORITHMS``.
    params: the meta parameters w (tensors, not modified).
    support: the support batch S (every inner step and every Hessian term).
    query: the query batch T.
    inner_lr: alpha.
    num_inner_steps: N.
    num_directions: b (ZO/GGS).
    delta: smoothing radius (ZO/GGS) or finite-difference step (HF).
    directions: for ZO/GGS, ``directions[j][k]`` is the [b, *shape] stack of
      direction components for leaf k at inner step j; drawn with
      ``torch.randn`` (fresh per step) when None.
    generator: torch generator for the directions drawn here.

  Returns:
    The meta-gradient, a list of tensors like ``params``.
  """
  alpha = inner_lr
  if algorithm == 'maml':
    # Second order: differentiate through the whole inner loop.
    w0 = [p.detach().requires_grad_() for p in params]
    fast = w0
    for _ in range(num_inner_steps):
      loss = loss_fn(fast, support)
      grads = torch.autograd.grad(loss, fast, create_graph=True)
      fast = [w - alpha * g for w, g in zip(fast, grads)]
    return list(torch.autograd.grad(loss_fn(fast, query), w0))

  # All other methods: forward pass storing the trajectory w_0..w_N, then
  # v = grad l_T(w_N) and v <- v - alpha H_j v for j = N-1 .. 0.
  trajectory, support_grads = [], []
  fast = [p.detach() for p in params]
  for _ in range(num_inner_steps):
    _, grads = _grad(loss_fn, fast, support)
    trajectory.append(fast)
    support_grads.append(grads)
    fast = [w - alpha * g for w, g in zip(fast, grads)]
  _, v = _grad(loss_fn, fast, query)
  v = list(v)
  if algorithm == 'fo_maml':
    return v

  for j in reversed(range(num_inner_steps)):
    w = trajectory[j]
    if algorithm == 'hf_maml':
      _, g_plus = _grad(loss_fn, [x + delta * y for x, y in zip(w, v)], support)
      _, g_minus = _grad(loss_fn, [x - delta * y for x, y in zip(w, v)], support)
      hv = [(gp - gm) / (2 * delta) for gp, gm in zip(g_plus, g_minus)]
    else:
      if directions is None:
        u_j = [torch.randn((num_directions,) + tuple(p.shape), dtype=p.dtype,
                           generator=generator) for p in w]
      else:
        u_j = directions[j]
      hv = [torch.zeros_like(x) for x in w]
      if algorithm == 'zo_maml':  # eq. (17)
        with torch.no_grad():
          l_zero = loss_fn(w, support)
          for m in range(num_directions):
            u = [d[m] for d in u_j]
            l_plus = loss_fn([x + delta * y for x, y in zip(w, u)], support)
            l_minus = loss_fn([x - delta * y for x, y in zip(w, u)], support)
            c = (l_plus + l_minus - 2 * l_zero) / (2 * delta ** 2)
            coef = c * _dot(u, v) / num_directions
            hv = [h + coef * y for h, y in zip(hv, u)]
      elif algorithm == 'ggs_maml':  # eq. (18)
        g_zero = support_grads[j]
        for m in range(num_directions):
          u = [d[m] for d in u_j]
          _, g_pert = _grad(loss_fn, [x + delta * y for x, y in zip(w, u)], support)
          coef = _dot(u, v) / (num_directions * delta)
          hv = [h + coef * (gp - g0) for h, gp, g0 in zip(hv, g_pert, g_zero)]
      else:
        raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
    v = [x - alpha * h for x, h in zip(v, hv)]
  return v


def loop_meta_gradient(loss_fn, algorithm, params, tasks, *, directions=None,
                       **kwargs):
  """Mean over tasks of ``loop_task_meta_gradient`` (Python loop over tasks).

  Args:
    loss_fn, algorithm, kwargs: as ``loop_task_meta_gradient``.
    params: tuple of tensors.
    tasks: ``{'support': batch, 'query': batch}``, leaves with a leading task axis.
    directions: None, or a list over leaves of tensors [T, N, b, *shape].

  Returns:
    (mean meta-gradient, per-task meta-gradients) as lists of tensors.
  """
  num_tasks = next(iter(tasks['support'].values())).shape[0]
  per_task = []
  for i in range(num_tasks):
    support = {k: v[i] for k, v in tasks['support'].items()}
    query = {k: v[i] for k, v in tasks['query'].items()}
    dirs = None
    if directions is not None:
      num_steps = directions[0].shape[1]
      dirs = [[d[i, j] for d in directions] for j in range(num_steps)]
    per_task.append(loop_task_meta_gradient(
        loss_fn, algorithm, params, support, query, directions=dirs, **kwargs))
  mean = [torch.stack(gs).mean(0) for gs in zip(*per_task)]
  stacked = [torch.stack(gs) for gs in zip(*per_task)]
  return mean, stacked


# ----------------------------------------------------------------------------
# Vectorized torch.func implementation.
# ----------------------------------------------------------------------------
def _func_task_meta_gradient(loss_fn, algorithm, *, inner_lr, num_inner_steps,
                             num_directions=None, delta=None):
  """Returns ``g(params, support, query, directions) -> G_i`` built on torch.func."""
  alpha = inner_lr
  grad_fn = tfunc.grad(loss_fn)

  def adapt(params, support):
    trajectory = []
    for _ in range(num_inner_steps):
      trajectory.append(params)
      params = tuple(w - alpha * g for w, g in zip(params, grad_fn(params, support)))
    return params, trajectory

  if algorithm == 'maml':
    def task_grad(params, support, query, directions):
      del directions
      return tfunc.grad(lambda p: loss_fn(adapt(p, support)[0], query))(params)
    return task_grad

  def hvp(w, support, v, u):
    if algorithm == 'hf_maml':
      g_plus = grad_fn(tuple(x + delta * y for x, y in zip(w, v)), support)
      g_minus = grad_fn(tuple(x - delta * y for x, y in zip(w, v)), support)
      return tuple((a - b) / (2 * delta) for a, b in zip(g_plus, g_minus))
    uv = sum((d.reshape(d.shape[0], -1) @ x.reshape(-1)) for d, x in zip(u, v))  # [b]
    shift = lambda du, s: tuple(x + s * y for x, y in zip(w, du))
    if algorithm == 'zo_maml':  # eq. (17)
      l_plus = tfunc.vmap(lambda du: loss_fn(shift(du, delta), support))(u)
      l_minus = tfunc.vmap(lambda du: loss_fn(shift(du, -delta), support))(u)
      c = (l_plus + l_minus - 2 * loss_fn(w, support)) / (2 * delta ** 2)
      coef = c * uv / num_directions
      return tuple(torch.tensordot(coef, d, dims=1) for d in u)
    if algorithm == 'ggs_maml':  # eq. (18)
      g_zero = grad_fn(w, support)
      g_pert = tfunc.vmap(lambda du: grad_fn(shift(du, delta), support))(u)
      coef = uv / (num_directions * delta)
      return tuple(torch.tensordot(coef, gp - g0[None], dims=1)
                   for gp, g0 in zip(g_pert, g_zero))
    raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')

  def task_grad(params, support, query, directions):
    w_n, trajectory = adapt(params, support)
    v = grad_fn(w_n, query)
    if algorithm == 'fo_maml':
      return v
    for j in reversed(range(num_inner_steps)):
      u_j = None if directions is None else tuple(d[j] for d in directions)
      hv = hvp(trajectory[j], support, v, u_j)
      v = tuple(x - alpha * h for x, h in zip(v, hv))
    return v

  return task_grad


def func_meta_gradient(loss_fn, algorithm, params, tasks, *, inner_lr,
                       num_inner_steps, num_directions=None, delta=None,
                       directions=None, generator=None):
  """Mean meta-gradient over tasks, vectorized with ``torch.func.vmap``.

  Same arguments and returns as ``loop_meta_gradient``; the ZO/GGS directions
  (a list over leaves of [T, N, b, *shape]) are drawn with ``torch.randn``
  when not given.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
  params = tuple(p.detach() for p in params)
  num_tasks = next(iter(tasks['support'].values())).shape[0]
  if algorithm in ('zo_maml', 'ggs_maml'):
    if directions is None:
      directions = [torch.randn((num_tasks, num_inner_steps, num_directions)
                                + tuple(p.shape), dtype=p.dtype, generator=generator)
                    for p in params]
    directions = tuple(directions)
    dir_axis = 0
  else:
    directions, dir_axis = None, None
  task_grad = _func_task_meta_gradient(
      loss_fn, algorithm, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
      num_directions=num_directions, delta=delta)
  stacked = tfunc.vmap(task_grad, in_dims=(None, 0, 0, dir_axis))(
      params, tasks['support'], tasks['query'], directions)
  return [g.mean(0) for g in stacked], list(stacked)


def torchopt_meta_gradient(loss_fn, algorithm, params, tasks, *, inner_lr,
                           num_inner_steps, num_directions=None, delta=None,
                           directions=None, generator=None):
  """MAML / FO-MAML with TorchOpt's differentiable functional SGD, loop over tasks.

  The inner step is ``torchopt.sgd(inner_lr)`` applied with ``inplace=False``
  (TorchOpt's differentiable-optimization path); for MAML the support
  gradients keep their graph (``create_graph=True``), for FO-MAML they are
  constants, so the query gradient w.r.t. w_0 is grad l_T(w_N). Same arguments
  and returns as ``loop_meta_gradient`` (no directions: neither method uses
  any).
  """
  import torchopt  # pylint: disable=g-import-not-at-top
  del num_directions, delta, directions, generator
  if algorithm not in TORCHOPT_ALGORITHMS:
    raise ValueError(f'impl torchopt supports {TORCHOPT_ALGORITHMS}, got {algorithm!r}')
  inner = torchopt.sgd(lr=inner_lr)
  num_tasks = next(iter(tasks['support'].values())).shape[0]
  per_task = []
  for i in range(num_tasks):
    support = {k: v[i] for k, v in tasks['support'].items()}
    query = {k: v[i] for k, v in tasks['query'].items()}
    w0 = tuple(p.detach().requires_grad_() for p in params)
    fast, state = w0, inner.init(w0)
    for _ in range(num_inner_steps):
      grads = torch.autograd.grad(loss_fn(fast, support), fast,
                                  create_graph=algorithm == 'maml')
      updates, state = inner.update(grads, state, inplace=False)
      fast = torchopt.apply_updates(fast, updates, inplace=False)
    per_task.append(list(torch.autograd.grad(loss_fn(fast, query), w0)))
  mean = [torch.stack(gs).mean(0) for gs in zip(*per_task)]
  return mean, [torch.stack(gs) for gs in zip(*per_task)]


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
