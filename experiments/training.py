"""Meta-training of the supervised launchers (sine, matrix factorization, few-shot).

A launcher describes its experiment as a ``problems.Problem`` (loss, initial
parameters, on-device task sampler, held-out evaluation) and hands it to
``run_experiment``: ``sweep`` (with ``--sweep``) then ``train``, which runs
every algorithm of ``--algorithms`` for every seed of ``--seeds`` with
``maml_jax.make_fused_train``: ``--eval_every`` meta-iterations per compiled
call, seeds batched with ``jax.vmap`` (with ``--inner_lrs``, the grid of
(inner_lr, seed) pairs: the fixed step size is data of the one compiled
program). ``--learn_inner_lr`` makes the inner step sizes meta-parameters
(``mj.LearnedInnerLR``), trained by their own optimizer
(``builders.meta_optimizer``) and checkpointed with w_0. The chunks, held-out
evaluations, metrics files, checkpoints and ``--resume`` are the shared
loop's (``experiments.loop``); ``train`` tells it how a chunk runs
(``build_chunk_runs``), how the members are evaluated
(``build_evaluations``) and what a metrics row holds (``member_rows``).
"""
import dataclasses
import functools
import json
import math
import os
import time
from typing import NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import builders
from experiments import config
from experiments import loop
from experiments import rundir
from experiments import summaries


def inner_lr_stats(inner_lr, *, per_step):
  """Summary of learned step sizes for metric rows (host numpy).

  Args:
    inner_lr: the step sizes with a leading member (seed) axis.
    per_step: whether they have a per-step axis after the member axis.

  Returns:
    ``{name: [num_members] array}``: 'inner_lr_mean', '_min', '_max' over all
    step sizes, and with ``per_step`` 'inner_lr_step<j>_mean' per step j.
  """
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(inner_lr)]
  members = leaves[0].shape[0]
  flat = np.concatenate([x.reshape(members, -1) for x in leaves], axis=1)
  out = {'inner_lr_mean': flat.mean(1), 'inner_lr_min': flat.min(1),
         'inner_lr_max': flat.max(1)}
  if per_step:
    steps = leaves[0].shape[1]
    by_step = np.concatenate([x.reshape(members, steps, -1) for x in leaves],
                             axis=2)
    for j in range(steps):
      out[f'inner_lr_step{j}_mean'] = by_step[:, j].mean(1)
  return out


class Arm(NamedTuple):
  """One trained arm of a ``TrainResult``: an algorithm (and grid step size).

  Attributes:
    name: ``arm_name``: the algorithm, or 'algorithm@alpha=<value>'.
    algorithm: the estimator name.
    inner_lr: the fixed alpha of this arm (the initial one if learned).
    params: its meta parameters with a leading seed axis (``mj.LearnedInnerLR``
      with ``--learn_inner_lr``).
  """
  name: str
  algorithm: str
  inner_lr: float
  params: object


class TrainResult(NamedTuple):
  """Output of ``train``.

  Attributes:
    states: ``{algorithm: mj.TrainState}`` with a leading member axis: the
      seeds, or with ``--inner_lrs`` the grid (inner_lr, seed), inner_lr
      major (``len(inner_lrs) * len(seeds)`` members).
    hparams: ``{algorithm: HParams}`` actually used (after ``--sweep``).
    rows: all metric rows (also in metrics.jsonl).
    seconds_per_iteration: ``{algorithm: float}``, wall seconds per
      meta-iteration for all seeds together (compilation excluded when there
      was more than one chunk).
    inner_lrs: the ``--inner_lrs`` grid, () if off.
  """
  states: dict
  hparams: dict
  rows: list
  seconds_per_iteration: dict
  inner_lrs: tuple = ()

  def arms(self):
    """Every trained arm (``Arm``), params with a leading seed axis."""
    out = []
    for algorithm, state in self.states.items():
      if not self.inner_lrs:
        out.append(Arm(algorithm, algorithm, self.hparams[algorithm].inner_lr,
                       state.params))
        continue
      num_seeds = jax.tree.leaves(state.params)[0].shape[0] // len(
          self.inner_lrs)
      for i, lr in enumerate(self.inner_lrs):
        params = jax.tree.map(
            lambda x, i=i: x[i * num_seeds:(i + 1) * num_seeds], state.params)
        out.append(Arm(summaries.arm_name(algorithm, lr), algorithm, lr,
                       params))
    return out


def over_members(fn, batching):
  """``fn`` mapped over a leading member axis of every argument.

  'vmap': ``jax.vmap(fn)``; 'map': ``jax.lax.map`` (members one after
  another, same results).
  """
  if batching == 'vmap':
    return jax.vmap(fn)
  if batching != 'map':
    raise ValueError(f"member_batching must be 'vmap' or 'map', got "
                     f'{batching!r}')
  return lambda *args: jax.lax.map(lambda a: fn(*a), args)


def sweep(problem, cfg, run_dir):
  """``--sweep``: each algorithm's best meta lr (and delta) on validation tasks.

  For every algorithm and delta, all candidate meta lrs train together in one
  vmapped fused run of ``cfg.sweep_iterations`` meta-iterations (first seed);
  the candidate with the lowest validation loss wins (non-finite = worst).

  Returns:
    ``{algorithm: HParams}``; also writes sweep.json.
  """
  if problem.validate is None:
    raise ValueError('--sweep needs Problem.validate')
  init_keys, train_keys = loop.seed_keys(cfg.seeds[:1])
  w0 = problem.init_params(init_keys[0])
  lrs = jnp.asarray(cfg.sweep_meta_lrs, jnp.float32)
  mesh = mj.task_mesh() if cfg.shard_tasks else None
  chosen, grid = {}, []
  for algorithm in cfg.algorithms:
    deltas = (cfg.sweep_deltas if algorithm in config.DELTA_ALGORITHMS
              else (cfg.delta,))
    best = None
    for delta in deltas:
      base = cfg.hparams(algorithm)
      params = builders.meta_params(w0, cfg, base.inner_lr)
      est = builders.estimator(problem, cfg, algorithm, base.inner_lr, delta)
      optimizer = builders.meta_optimizer(cfg, cfg.meta_lr)
      run = mj.make_fused_train(est, optimizer, problem.sample_tasks,
                                cfg.sweep_iterations, mesh=mesh)
      states = jax.vmap(lambda lr: mj.init_train_state(
          params, builders.meta_optimizer(cfg, lr)))(lrs)
      key = train_keys[0]
      if mesh is not None:
        states, key = mj.replicate((states, key), mesh)
      start = time.time()
      states, _ = jax.vmap(run, in_axes=(0, None))(states, key)
      validate = jax.jit(jax.vmap(functools.partial(
          problem.validate, inner_lr=base.inner_lr)))
      losses = np.asarray(validate(states.params))
      logging.info('sweep %s delta=%g: %s (%.1fs)', algorithm, delta,
                   ', '.join(f'lr={lr:g}: {loop.format_value(float(v))}'
                             for lr, v in zip(cfg.sweep_meta_lrs, losses)),
                   time.time() - start)
      for lr, loss in zip(cfg.sweep_meta_lrs, losses):
        loss = float(loss)
        grid.append({'algorithm': algorithm, 'meta_lr': lr, 'delta': delta,
                     'validation_loss': rundir.json_scalar(loss)})
        score = loss if math.isfinite(loss) else math.inf
        if best is None or score < best[0]:
          best = (score, config.HParams(meta_lr=lr, delta=delta,
                                 inner_lr=base.inner_lr))
    chosen[algorithm] = best[1]
    logging.info('sweep %s: chose meta_lr=%g delta=%g (validation loss %s)',
                 algorithm, best[1].meta_lr, best[1].delta,
                 loop.format_value(best[0]))
  rundir.atomic_write_text(run_dir.file('sweep.json'), json.dumps(
      {'iterations': cfg.sweep_iterations, 'seed': cfg.seeds[0],
       'chosen': {a: dataclasses.asdict(h) for a, h in chosen.items()},
       'grid': grid}, indent=2) + '\n')
  return chosen


class Member(NamedTuple):
  """One member of the vmapped axis of a chunk.

  Attributes:
    inner_lr: the member's fixed step size with ``--inner_lrs``, else None
      (the algorithm's own alpha).
    seed: the seed of its w_0 and task sequence.
  """
  inner_lr: Optional[float]
  seed: int


def chunk_members(cfg):
  """The members of ``cfg``: one per seed, or the grid (inner_lr, seed).

  The grid of ``--inner_lrs`` is inner_lr major: member i of step size a
  equals a separate run with ``--inner_lr=a`` and that seed.
  """
  if cfg.inner_lrs:
    return tuple(Member(lr, seed) for lr in cfg.inner_lrs for seed in cfg.seeds)
  return tuple(Member(None, seed) for seed in cfg.seeds)


def chunk_lengths(cfg):
  """The lengths of the compiled chunks: ``eval_every``, and the remainder."""
  return {cfg.eval_every, cfg.num_iterations % cfg.eval_every} - {0}


def train_mesh(cfg):
  """The mesh each task batch is split over (``--shard_tasks``), or None.

  On with several processes (always): each iteration's tasks are split over
  every device of every process; the states stay replicated.
  """
  if not cfg.shard_tasks:
    return None
  mesh = mj.task_mesh()
  logging.info('each task batch is split over %d %s devices (%d process(es))',
               mesh.size, jax.default_backend(), jax.process_count())
  return mesh


def build_chunk_runs(problem, cfg, algorithm, hp, optimizer, *, member_lrs,
                     mesh):
  """One algorithm's compiled chunks: ``{length: run(states, train_keys)}``.

  ``run`` is ``mj.make_fused_train`` of ``length`` meta-iterations mapped
  over the members (``over_members``). With ``member_lrs`` (the ``--inner_lrs``
  grid, one step size per member) the step size is an argument of the one
  compiled program, so every grid point shares it.

  Args:
    problem: the experiment's ``problems.Problem``.
    cfg: ``TrainConfig``.
    algorithm: the estimator name.
    hp: its ``HParams`` (alpha and delta of the estimator).
    optimizer: its meta optimizer (``builders.meta_optimizer``).
    member_lrs: [members] fixed step sizes, or None.
    mesh: ``train_mesh(cfg)``.

  Returns:
    ``{length: run}`` for every length of ``chunk_lengths(cfg)``; ``run``
    returns ``(states, metrics)`` with a leading member axis.
  """
  over = functools.partial(over_members, batching=problem.member_batching)
  compile_chunk = jax.jit if mesh is None else functools.partial(
      jax.jit, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))

  def fused(inner_lr, length):
    est = builders.estimator(problem, cfg, algorithm, inner_lr, hp.delta)
    return mj.make_fused_train(
        est, optimizer, problem.sample_tasks, length, jit=False,
        task_batching=problem.task_batching, mesh=mesh)

  def fixed_run(length):
    return compile_chunk(over(fused(hp.inner_lr, length)))

  def grid_run(length):
    def member_run(lr, state, key):
      return fused(lr, length)(state, key)
    return functools.partial(compile_chunk(over(member_run)), member_lrs)

  build = fixed_run if member_lrs is None else grid_run
  return {length: build(length) for length in chunk_lengths(cfg)}


def init_states(cfg, w0, inner_lr, optimizer):
  """The members' initial ``mj.TrainState``: w_0 (leading member axis), and
  with ``--learn_inner_lr`` step sizes all equal to ``inner_lr``."""
  params = jax.vmap(lambda p: builders.meta_params(p, cfg, inner_lr))(w0)
  return jax.vmap(lambda p: mj.init_train_state(p, optimizer))(params)


def build_evaluations(problem, cfg, hparams, member_lrs):
  """The compiled held-out evaluation of each algorithm's members.

  ``problem.evaluate`` mapped over the members, compiled once per step-size
  setting: with ``member_lrs`` (the ``--inner_lrs`` grid) one program that
  takes each member's step size, shared by every algorithm; otherwise one
  program per distinct fixed alpha, shared by the algorithms that use it.

  Returns:
    ``{algorithm: evaluate(params) -> {name: [members]}}``.
  """
  over = functools.partial(over_members, batching=problem.member_batching)
  if member_lrs is not None:
    grid = jax.jit(over(lambda p, lr: problem.evaluate(p, inner_lr=lr)))
    evaluate = lambda params: grid(params, member_lrs)
    return {algorithm: evaluate for algorithm in cfg.algorithms}
  by_inner_lr = {}
  for algorithm in cfg.algorithms:
    lr = hparams[algorithm].inner_lr
    if lr not in by_inner_lr:
      by_inner_lr[lr] = jax.jit(over(functools.partial(problem.evaluate,
                                                       inner_lr=lr)))
  return {a: by_inner_lr[hparams[a].inner_lr] for a in cfg.algorithms}


def member_rows(members, algorithm, iteration, wall_time, chunk, values):
  """The metric rows of one algorithm at ``iteration``, one per member.

  Args:
    members: the ``Member`` s.
    algorithm: the estimator name.
    iteration: meta-iterations done.
    wall_time: the algorithm's seconds of training so far.
    chunk: the ``loop.Chunk`` just run (its training metrics and seconds),
      or None for the initial state.
    values: ``{name: [members]}`` host values: the held-out evaluation and,
      with learned step sizes, their summary (``inner_lr_stats``).

  Returns:
    A list of rows (dicts), in the order of ``members``.
  """
  out = []
  for s, (lr, seed) in enumerate(members):
    row = {'algorithm': algorithm, 'seed': seed, 'iteration': iteration,
           'wall_time': wall_time}
    if lr is not None:
      row['inner_lr'] = lr
    if chunk is not None:
      metrics = chunk.metrics
      row.update(
          train_loss=float(np.mean(metrics['loss_after'][s])),
          grad_norm=float(metrics['grad_norm'][s][-1]),
          num_nonfinite=int(np.sum(metrics['num_nonfinite'][s])),
          chunk_seconds=chunk.seconds)
      if 'loss_before' in metrics:
        row['train_loss_before'] = float(np.mean(metrics['loss_before'][s]))
      for name, value in metrics.get('aux_after', {}).items():
        row[f'train_{name}'] = float(np.mean(value[s]))
    row.update({k: float(v[s]) for k, v in values.items()})
    out.append(row)
  return out


def describe_rows(rows, *, learned):
  """The progress line of one algorithm's rows: per arm, the member means."""
  by_arm = {}
  for r in rows:
    by_arm.setdefault(summaries.row_arm(r), []).append(r)
  mean = lambda rs, k: loop.format_value(np.mean(
      [r[k] or np.nan for r in rs]))
  return ' | '.join(
      f'{arm}: train {mean(rs, "train_loss")} test {mean(rs, "test_loss")}'
      + (f' alpha {mean(rs, "inner_lr_mean")}' if learned else '')
      for arm, rs in by_arm.items())


def make_hooks(cfg, members, runs, evaluations):
  """The ``loop.Hooks`` of ``train``: its chunks, rows and progress line.

  Args:
    cfg: ``TrainConfig``.
    members: the ``Member`` s (``chunk_members``).
    runs: ``{algorithm: {length: run}}`` (``build_chunk_runs``).
    evaluations: ``{algorithm: evaluate}`` (``build_evaluations``).
  """

  def run_chunk(algorithm, length, state, keys):
    return runs[algorithm][length](state, keys)

  def rows(algorithm, iteration, state, wall_time, chunk):
    values = loop.to_host(evaluations[algorithm](state.params))
    if cfg.learned:
      values.update(inner_lr_stats(state.params.inner_lr,
                                   per_step=cfg.per_step_inner_lr))
    return member_rows(members, algorithm, iteration, wall_time, chunk, values)

  def describe(algorithm, rows, chunk):
    del algorithm, chunk  # the rows say it all
    return describe_rows(rows, learned=cfg.learned)

  return loop.Hooks(run_chunk=run_chunk, rows=rows, describe=describe)


def train(problem, cfg, run_dir, *, hparams=None, chunk_hook=None):
  """Meta-trains every algorithm of ``cfg`` for every seed, with checkpoints.

  Every algorithm starts from the same w_0 per seed and sees the same task
  sequence (same train key). Iterations run in chunks of ``cfg.eval_every``
  with ``mj.make_fused_train``, mapped over the members (``chunk_members``):
  the seeds, or with ``--inner_lrs`` the grid (inner_lr, seed), whose step
  size is data of the one compiled program (``build_chunk_runs``). With
  ``--learn_inner_lr`` the meta parameters are ``mj.LearnedInnerLR`` and the
  rows record their summary.

  Args:
    problem: the experiment's ``problems.Problem``.
    cfg: ``TrainConfig``.
    run_dir: ``RunDir`` (metrics rows of a resumed run already loaded).
    hparams: optional ``{algorithm: HParams}`` (from ``sweep``); default
      ``cfg.hparams(algorithm)``.
    chunk_hook: optional ``chunk_hook(iteration)`` called after each
      checkpoint (tests use it to simulate a kill).

  Returns:
    ``TrainResult``.
  """
  hparams = dict(hparams or {})
  for algorithm in cfg.algorithms:
    hparams.setdefault(algorithm, cfg.hparams(algorithm))
  members = chunk_members(cfg)
  init_keys, train_keys = loop.seed_keys([m.seed for m in members])
  w0 = jax.vmap(problem.init_params)(init_keys)
  member_lrs = (jnp.asarray([m.inner_lr for m in members], jnp.float32)
                if cfg.inner_lrs else None)
  mesh = train_mesh(cfg)
  runs, states = {}, {}
  for algorithm in cfg.algorithms:
    hp = hparams[algorithm]
    optimizer = builders.meta_optimizer(cfg, hp.meta_lr)
    runs[algorithm] = build_chunk_runs(problem, cfg, algorithm, hp, optimizer,
                                       member_lrs=member_lrs, mesh=mesh)
    states[algorithm] = init_states(cfg, w0, hp.inner_lr, optimizer)
  hooks = make_hooks(cfg, members, runs,
                     build_evaluations(problem, cfg, hparams, member_lrs))
  done = loop.train_loop(
      hooks, run_dir, states, train_keys, num_iterations=cfg.num_iterations,
      eval_every=cfg.eval_every, resume=cfg.resume, num_seeds=len(cfg.seeds),
      chunk_hook=chunk_hook, mesh=mesh)
  return TrainResult(states=done.states, hparams=hparams, rows=run_dir.rows,
                     seconds_per_iteration=done.seconds_per_iteration,
                     inner_lrs=tuple(cfg.inner_lrs))


def run_experiment(problem, cfg, run_dir, *, chunk_hook=None):
  """``sweep`` (if ``cfg.sweep``; reloaded from sweep.json on resume) + ``train``."""
  hparams = None
  if cfg.sweep:
    path = run_dir.file('sweep.json')
    if cfg.resume and os.path.exists(path):
      with open(path) as f:
        chosen = json.load(f)['chosen']
      hparams = {a: config.HParams(**chosen[a]) for a in cfg.algorithms}
      logging.info('resume: using the sweep results in %s', path)
    else:
      hparams = sweep(problem, cfg, run_dir)
  return train(problem, cfg, run_dir, hparams=hparams, chunk_hook=chunk_hook)
