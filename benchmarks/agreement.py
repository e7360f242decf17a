"""maml_jax vs the PyTorch reference on identical inputs (used by run.py and the tests).

Both sides get the same initial parameters, the same task data and the same
Gaussian directions: the directions are those maml_jax draws inside
``mj.meta_gradient`` (task i gets ``jax.random.split(key, T)[i]``, inner step j
``mj.gaussian_directions(mj.task_keys(k_i, N).directions[j], params, b)``),
converted to numpy and fed to torch.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj

# Backend optimizations off: same math, ~4x faster XLA compiles (tests, --quick).
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def problem_setup(problem: str, num_tasks: int, key, dtype=jnp.float32,
                  num_support: int = 10):
  """(loss_fn, params, tasks) of the sine (MLP 1-40-40-1) or matrix-factorization problem."""
  key_p, key_t = jax.random.split(key)
  if problem == 'sine':
    return (mj.models.sine_loss, mj.models.init_sine_params(key_p, dtype=dtype),
            mj.tasks.sine_tasks(key_t, num_tasks, num_support=num_support,
                                num_query=num_support, dtype=dtype))
  if problem == 'mf':
    return (mj.models.mf_loss, mj.models.init_mf_params(key_p, dtype=dtype),
            mj.tasks.matrix_factorization_tasks(key_t, num_tasks,
                                                num_samples=num_support,
                                                dtype=dtype))
  raise ValueError(f"problem must be 'sine' or 'mf', got {problem!r}")


def jax_estimator(algorithm: str, loss_fn, *, inner_lr: float,
                  num_inner_steps: int, num_directions: int = 10,
                  delta: float = 1e-2, remat=False, loss_before=False):
  """The maml_jax estimator named ``algorithm`` (``mj.make_estimator``).

  ``num_directions`` and ``delta`` go to the estimators that take them
  (``mj.estimator_kwargs``); an unknown name is a ValueError.
  ``loss_before=False`` (the library's default) skips the query loss at w_0,
  a reported metric that the PyTorch versions do not compute.
  """
  return mj.make_estimator(
      algorithm, loss_fn, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
      remat=remat, **mj.estimator_kwargs(
          algorithm, num_directions=num_directions, delta=delta,
          loss_before=loss_before))


def meta_gradient_directions(params, key, num_tasks: int, num_inner_steps: int,
                             num_directions: int):
  """The directions ``mj.meta_gradient(est, params, tasks, key)`` uses: leaves [T, N, b, ...]."""

  def per_task(k):
    keys = mj.task_keys(k, num_inner_steps)
    return jax.vmap(lambda kd: mj.gaussian_directions(kd, params, num_directions))(
        keys.directions)

  return jax.vmap(per_task)(jax.random.split(key, num_tasks))


def compiled_call(fn, *args, compiler_options: Optional[dict] = None):
  """``jax.jit(fn)(*args)``, compiled ahead of time with ``compiler_options``."""
  return jax.jit(fn).lower(*args).compile(compiler_options=compiler_options)(*args)


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def rel_err(a, b) -> float:
  """||a - b|| / ||b|| over all leaves, in float64."""
  a, b = flat(a).astype(np.float64), flat(b).astype(np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(problem: str, algorithm: str, *, num_tasks: int = 3,
            num_inner_steps: int = 3, num_directions: int = 5,
            inner_lr: float = 0.01, delta: float = 1e-2, dtype=jnp.float32,
            impl: str = 'loop', check_mean: bool = True, seed: int = 42,
            compiler_options: Optional[dict] = None,
            other_impls: tuple[str, ...] = ()) -> dict[str, Any]:
  """Relative errors between maml_jax and torch meta-gradients on one task batch.

  Matmuls run at full float32 precision on both sides (no TF32 on GPUs).
  (torch is imported here, so that the memory probes stay torch-free.)

  Returns:
    dict with 'per_task' (list of per-task relative errors vs the torch
    ``impl``), 'max_per_task', 'mean' (error of the task mean from
    ``mj.meta_gradient``, or None), 'all_finite', 'dtype', and 'other_impls':
    the same errors vs each torch implementation in ``other_impls`` (the JAX
    side is computed once).
  """
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
  key_setup, key = jax.random.split(jax.random.PRNGKey(seed))
  with jax.default_matmul_precision('highest'):
    loss_fn, params, tasks = problem_setup(problem, num_tasks, key_setup,
                                           dtype=dtype)
    est = jax_estimator(algorithm, loss_fn, inner_lr=inner_lr,
                        num_inner_steps=num_inner_steps,
                        num_directions=num_directions, delta=delta)
    per_task_jax, aux = compiled_call(
        lambda p, t, k: jax.vmap(est, in_axes=(None, 0, 0))(
            p, t, jax.random.split(k, num_tasks)),
        params, tasks, key, compiler_options=compiler_options)
    mean_jax = None
    if check_mean:
      mean_jax, meta_aux = compiled_call(
          lambda p, t, k: mj.meta_gradient(est, p, t, k), params, tasks, key,
          compiler_options=compiler_options)
    directions = None
    if 'num_directions' in mj.estimator_hyperparameters(algorithm):
      directions = jax.tree.map(np.asarray, compiled_call(
          lambda p, k: meta_gradient_directions(p, k, num_tasks, num_inner_steps,
                                                num_directions),
          params, key, compiler_options=compiler_options))
  all_finite = bool(np.all(np.asarray(aux.finite)))
  if check_mean:
    all_finite = all_finite and int(meta_aux.num_nonfinite) == 0

  def errors(torch_impl):
    mean_torch, per_task_torch = tr.meta_gradient(
        problem, algorithm, jax.tree.map(np.asarray, params),
        jax.tree.map(np.asarray, tasks), inner_lr=inner_lr,
        num_inner_steps=num_inner_steps, num_directions=num_directions,
        delta=delta, directions=directions, impl=torch_impl)
    per_task = [rel_err(jax.tree.map(lambda x, i=i: x[i], per_task_jax),
                        jax.tree.map(lambda x, i=i: x[i], per_task_torch))
                for i in range(num_tasks)]
    return {
        'per_task': per_task,
        'max_per_task': max(per_task),
        'mean': rel_err(mean_jax, mean_torch) if check_mean else None,
        'all_finite': all_finite,
        'dtype': str(np.dtype(flat(mean_torch).dtype)),
        'torch_dtype_ok': flat(mean_torch).dtype == np.dtype(jnp.dtype(dtype)),
    }

  out = errors(impl)
  out['other_impls'] = {name: errors(name) for name in other_impls}
  return out
