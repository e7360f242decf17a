"""The estimators of the PyTorch reference: Python loops, ``torch.func``, TorchOpt.

Model-independent: every function takes ``loss_fn(params, batch)`` on tuples
of tensors (``sine``, ``mf``, ``convnet`` in this package). See the package
docstring for the math and the flavours (loop, func, torchopt).
"""

from typing import Callable, Optional, Sequence

import torch
from torch import func as tfunc

# The estimators implemented here: exactly maml_jax's registry
# (``mj.ESTIMATORS``, checked in tests/benchmarks/test_torch_agreement.py), written out
# so that this reference imports neither JAX nor maml_jax.
ALGORITHMS = ('maml', 'fo_maml', 'zo_maml', 'ggs_maml', 'hf_maml')
TORCHOPT_ALGORITHMS = ('maml', 'fo_maml')

Tensors = Sequence[torch.Tensor]


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
