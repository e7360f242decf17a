"""Timed cases: each ``prepare_*`` builds (and compiles) one implementation.

A case is a dict: ``once`` runs one timed call, ``enter`` (optional) is called
before each round of calls (PyTorch's thread count), ``divisor`` converts call
time to time per meta-iteration, ``info`` carries compile time etc.
``benchmarks.timing.interleaved`` times several cases in alternating rounds,
``measure`` one case alone.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import maml_jax as mj
from benchmarks import agreement
from benchmarks import memory
from benchmarks import timing
from benchmarks import torch_reference as tr

DEFAULT_TORCH_THREADS = torch.get_num_threads()


def restore_torch_threads():
  """Sets PyTorch's intra-op threads back to the process default."""
  torch.set_num_threads(DEFAULT_TORCH_THREADS)


def _optimizer(hp):
  return (optax.adam(hp['meta_lr']) if hp['optimizer'] == 'adam'
          else optax.sgd(hp['meta_lr']))


def _sampler(problem, hp, dtype=jnp.float32):
  if problem == 'sine':
    return lambda k: mj.tasks.sine_tasks(k, hp['num_tasks'],
                                         num_support=hp['num_support'],
                                         num_query=hp['num_support'], dtype=dtype)
  return lambda k: mj.tasks.matrix_factorization_tasks(
      k, hp['num_tasks'], num_samples=hp['num_support'], dtype=dtype)


def _setup(problem, hp, seed=0, learned_lr=None):
  """(loss_fn, params, tasks); with ``learned_lr`` (a kind of
  ``mj.init_inner_lr``) params is ``mj.LearnedInnerLR(params, alpha)``, alpha
  initialised to ``hp['inner_lr']``."""
  loss_fn, params, tasks = agreement.problem_setup(
      problem, hp['num_tasks'], jax.random.PRNGKey(seed),
      num_support=hp['num_support'])
  if learned_lr is not None:
    params = mj.LearnedInnerLR(
        params, mj.init_inner_lr(params, hp['inner_lr'], learned_lr))
  return loss_fn, params, tasks


def _estimator(algorithm, loss_fn, hp):
  return agreement.jax_estimator(
      algorithm, loss_fn, inner_lr=hp['inner_lr'],
      num_inner_steps=hp['num_inner_steps'],
      num_directions=hp['num_directions'], delta=hp['delta'])



def step_case(step, state, tasks, compiler_options, **info):
  """A timing case: the jitted train ``step`` on a fixed task batch.

  Each call advances the state and folds the call count into the key. ``info``
  (e.g. the task batching) is recorded between the compile time and the XLA
  memory analysis.
  """
  key = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, tasks, key).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - t0
  holder = {'state': state, 'i': 0}

  def once():
    holder['i'] += 1
    new_state, metrics = compiled(holder['state'], tasks,
                                  jax.random.fold_in(key, holder['i']))
    jax.block_until_ready((new_state, metrics))
    holder['state'] = new_state

  return {'once': once, 'divisor': 1,
          'info': {'compile_s': compile_s, **info,
                   'xla_memory': memory.analysis_bytes(compiled)}}


def fused_case(run, state, num_iterations, compiler_options, **info):
  """A timing case: the fused ``run`` (``num_iterations`` meta-iterations per call)."""
  key = jax.random.PRNGKey(2)
  t0 = time.perf_counter()
  compiled = run.lower(state, key).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - t0
  holder = {'state': state}

  def once():
    new_state, metrics = compiled(holder['state'], key)
    jax.block_until_ready((new_state, metrics))
    holder['state'] = new_state

  def finite():
    return bool(all(np.all(np.isfinite(x))
                    for x in jax.tree.leaves(holder['state'].params)))

  return {'once': once, 'divisor': num_iterations, 'finite': finite,
          'info': {'num_iterations': num_iterations, 'compile_s': compile_s,
                   **info, 'xla_memory': memory.analysis_bytes(compiled)}}


def prepare_jax_step(problem, algorithm, hp, *, compiler_options,
                     learned_lr=None):
  """maml_jax jitted meta-train step on a fixed task batch.

  ``learned_lr``: None (alpha fixed at ``hp['inner_lr']``) or the kind of
  learned step size (``mj.init_inner_lr``), trained with the parameters.
  """
  loss_fn, params, tasks = _setup(problem, hp, learned_lr=learned_lr)
  opt = _optimizer(hp)
  step = mj.make_train_step(_estimator(algorithm, loss_fn, hp), opt)
  return step_case(step, mj.init_train_state(params, opt), tasks,
                   compiler_options)


def prepare_jax_fused(problem, algorithm, hp, *, num_iterations, compiler_options,
                      learned_lr=None):
  """maml_jax fused run: ``num_iterations`` meta-iterations per compiled call.

  ``learned_lr`` as in ``prepare_jax_step``.
  """
  loss_fn, params, _ = _setup(problem, hp, learned_lr=learned_lr)
  opt = _optimizer(hp)
  run = mj.make_fused_train(_estimator(algorithm, loss_fn, hp), opt,
                            _sampler(problem, hp), num_iterations)
  return fused_case(run, mj.init_train_state(params, opt), num_iterations,
                    compiler_options)


def prepare_torch(problem, algorithm, hp, *, impl, threads=None):
  """PyTorch meta-iteration on a fixed task batch, with ``threads`` intra-op threads."""
  _, params, tasks = _setup(problem, hp)
  np_params = jax.tree.map(np.asarray, params)
  tt = {'support': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.support)),
        'query': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.query))}
  trainer = tr.MetaTrainer(problem, algorithm, np_params, impl=impl,
                           inner_lr=hp['inner_lr'],
                           num_inner_steps=hp['num_inner_steps'],
                           meta_lr=hp['meta_lr'],
                           num_directions=hp['num_directions'], delta=hp['delta'])
  if hp['optimizer'] == 'sgd':
    trainer.optimizer = torch.optim.SGD(trainer.params, lr=hp['meta_lr'])
  n = DEFAULT_TORCH_THREADS if threads is None else int(threads)
  return {'once': lambda: trainer.step(tt), 'divisor': 1,
          'enter': lambda: torch.set_num_threads(n), 'info': {'threads': n}}


def measure(case, repeats):
  """Times one case alone: median ms per meta-iteration and the raw times."""
  if 'enter' in case:
    case['enter']()
  try:
    times = timing.time_ms(case['once'], repeats)
  finally:
    restore_torch_threads()
  d = case['divisor']
  return dict(case['info'], ms=statistics.median(times) / d,
              times_ms=[t / d for t in times])

