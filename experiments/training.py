"""Meta-training of the supervised launchers (sine, matrix factorization).

A launcher describes its experiment as a ``Problem`` (loss, initial
parameters, on-device task sampler, held-out evaluation) and hands it to
``run_experiment``: ``sweep`` (with ``--sweep``) then ``train``, which runs
every algorithm of ``--algorithms`` for every seed of ``--seeds`` with
``maml_jax.make_fused_train``: ``--eval_every`` meta-iterations per compiled
call, seeds batched with ``jax.vmap`` (with ``--inner_lrs``, the grid of
(inner_lr, seed) pairs: the fixed step size is data of the one compiled
program). ``--learn_inner_lr`` makes the inner step sizes meta-parameters
(``mj.LearnedInnerLR``), trained by their own optimizer (``meta_optimizer``)
and checkpointed with w_0. The chunks, held-out evaluations, metrics files, checkpoints and
``--resume`` are the shared loop's (``experiments.loop``); this module tells
it how a chunk runs and what a metrics row holds.
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

import maml_jax as mj
from experiments import config
from experiments import launcher_flags
from experiments import loop
from experiments import rundir
from experiments import summaries


class Problem(NamedTuple):
  """What a launcher tells ``train`` about its experiment.

  Attributes:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    init_params: ``init_params(key) -> params`` (w_0 of one seed).
    sample_tasks: ``sample_tasks(key) -> mj.Task`` of ``tasks_per_batch``
      tasks (leading task axis), pure JAX (runs inside the fused loop).
    evaluate: ``evaluate(params, inner_lr) -> {name: scalar}`` on fixed
      held-out tasks, pure JAX; must contain ``'test_loss'`` (the meta-test
      loss after adaptation with stepsize ``inner_lr``, the algorithm's alpha,
      passed as a keyword Python float, or a traced scalar with
      ``--inner_lrs``). ``params`` may be ``mj.LearnedInnerLR``: then its
      step sizes are the ones to adapt with.
    validate: ``validate(params, inner_lr) -> scalar`` on fixed validation
      tasks (other tasks than ``evaluate``'s), used by ``--sweep``.
    sampler: the estimators' sampler for ``mj.Sampled`` batches, or None.
    has_aux: ``loss_fn`` returns ``(loss, {name: scalar})`` (e.g. accuracy);
      the estimators are built with ``has_aux=True`` and the metric rows get
      ``train_<name>``, the mean over the chunk of the query aux after
      adaptation.
    task_batching: how the task axis of a meta-gradient is batched
      (``mj.meta_gradient``); 'auto' (default) picks 'vmap' for MLPs and
      'map' for conv nets on CPU.
    member_batching: how the members (seeds, grid points) of a chunk run:
      'vmap' (one batched program, right for small models) or 'map'
      (``lax.map``, one after another: a vmapped conv net with per-seed
      weights runs grouped convolutions, slow on CPU).
  """
  loss_fn: Callable
  init_params: Callable
  sample_tasks: Callable
  evaluate: Callable
  validate: Optional[Callable] = None
  sampler: Optional[Callable] = None
  has_aux: bool = False
  task_batching: object = 'auto'
  member_batching: str = 'vmap'


def split_meta_params(params, inner_lr=None):
  """(w_0, alpha): of ``mj.LearnedInnerLR`` params, else (params, inner_lr)."""
  if isinstance(params, mj.LearnedInnerLR):
    return params.params, params.inner_lr
  return params, inner_lr


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


def held_out_loss(loss_fn, params, tasks, *, inner_lr, num_inner_steps):
  """Mean query loss over ``tasks`` before and after ``num_inner_steps`` (mj.adapt).

  ``params`` may be ``mj.LearnedInnerLR`` (then its step sizes are used);
  ``inner_lr`` may be a float or a traced scalar (``--inner_lrs``).
  """
  w0, _ = split_meta_params(params)

  def one(support, query):
    adapted, _ = mj.adapt(loss_fn, params, support, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps)
    return loss_fn(w0, query), loss_fn(adapted, query)

  before, after = jax.vmap(one)(tasks.support, tasks.query)
  return jnp.mean(before), jnp.mean(after)


def supervised_problem(cfg, *, loss_fn, init_params, sample, num_test_tasks,
                       eval_seed):
  """The ``Problem`` of tasks with fixed support/query batches (MF, sine).

  Args:
    cfg: the ``TrainConfig`` (for ``num_inner_steps`` and ``tasks_per_batch``).
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    init_params: ``init_params(key) -> params``.
    sample: ``sample(key, num_tasks) -> mj.Task``.
    num_test_tasks: size of the fixed test set and of the validation set.
    eval_seed: seed of both fixed sets.

  Returns:
    (``Problem`` whose evaluate/validate report the query loss after
    ``cfg.num_inner_steps`` adaptation steps, the test tasks, their key).
  """
  k_test, k_val = jax.random.split(jax.random.PRNGKey(eval_seed))
  test_tasks = sample(k_test, num_test_tasks)
  val_tasks = sample(k_val, num_test_tasks)

  def evaluate(params, *, inner_lr):
    before, after = held_out_loss(loss_fn, params, test_tasks,
                                  inner_lr=inner_lr,
                                  num_inner_steps=cfg.num_inner_steps)
    return {'test_loss': after, 'test_loss_before': before}

  def validate(params, *, inner_lr):
    return held_out_loss(loss_fn, params, val_tasks, inner_lr=inner_lr,
                         num_inner_steps=cfg.num_inner_steps)[1]

  problem = Problem(loss_fn=loss_fn, init_params=init_params,
                    sample_tasks=lambda key: sample(key, cfg.tasks_per_batch),
                    evaluate=evaluate, validate=validate)
  return problem, test_tasks, k_test


def make_estimator(algorithm, loss_fn, *, inner_lr, num_inner_steps,
                   num_directions, delta, sampler=None, remat=False,
                   has_aux=False, loss_before=True):
  """The ``maml_jax`` estimator named ``algorithm`` (one of ``mj.ESTIMATORS``).

  Built by the library's registry (``mj.make_estimator``) from the launcher's
  hyperparameters, passing only those the estimator takes
  (``mj.estimator_kwargs``): no delta to MAML, no b to HF-MAML.
  ``inner_lr`` may be a float, an array or tracer (``--inner_lrs``), or None
  (the step sizes come with ``mj.LearnedInnerLR`` params). ``loss_before``:
  the launchers log the query loss at w_0 ('train_loss_before' in
  metrics.jsonl), one forward pass of the query batch per task that the
  library computes only when asked.
  """
  return mj.make_estimator(algorithm, loss_fn, **mj.estimator_kwargs(
      algorithm, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
      num_directions=num_directions, delta=delta, sampler=sampler,
      remat=remat, has_aux=has_aux, loss_before=loss_before))


def make_optimizer(name, learning_rate):
  """``optax.<name>`` with its learning rate held in the optimizer state.

  ``optax.inject_hyperparams`` keeps the learning rate an array of the state,
  so states with different learning rates share one compiled update (used by
  ``--sweep`` to train every candidate meta lr in one vmapped call).
  """
  launcher_flags.check_optimizer_name(name)
  return optax.inject_hyperparams(getattr(optax, name))(
      learning_rate=learning_rate)


def meta_optimizer(cfg, meta_lr):
  """The meta optimizer of ``cfg`` with w_0's learning rate ``meta_lr``.

  ``make_optimizer(cfg.meta_optimizer, meta_lr)``; with ``--learn_inner_lr``
  the step sizes get their own (``mj.partition_inner_lr``):
  ``--inner_lr_optimizer`` at ``--inner_lr_meta_lr``, by default the same
  optimizer at ``launcher_flags.INNER_LR_META_LR_SCALE`` x ``meta_lr``
  (EXPERIMENTS.md, 'Learned step sizes that train'). Both learning rates are state arrays,
  so ``--sweep`` vmaps over ``meta_lr``.
  """
  optimizer = make_optimizer(cfg.meta_optimizer, meta_lr)
  if not cfg.learned:
    return optimizer
  name, lr = cfg.inner_lr_hparams(meta_lr)
  return mj.partition_inner_lr(optimizer, make_optimizer(name, lr))


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


def meta_params(params, cfg, inner_lr):
  """The meta parameters of one member: w_0, or with ``--learn_inner_lr``
  ``mj.LearnedInnerLR(w_0, step sizes of that kind, all = inner_lr)``."""
  if not cfg.learned:
    return params
  return mj.LearnedInnerLR(params, mj.init_inner_lr(
      params, inner_lr, cfg.learn_inner_lr,
      num_inner_steps=cfg.num_inner_steps if cfg.per_step_inner_lr else None))


def _estimator(problem, cfg, algorithm, inner_lr, delta):
  """The estimator of ``algorithm``; learned step sizes come with the params."""
  return make_estimator(
      algorithm, problem.loss_fn, inner_lr=None if cfg.learned else inner_lr,
      num_inner_steps=cfg.num_inner_steps, num_directions=cfg.num_directions,
      delta=delta, sampler=problem.sampler, remat=cfg.remat,
      has_aux=problem.has_aux)


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
      params = meta_params(w0, cfg, base.inner_lr)
      est = _estimator(problem, cfg, algorithm, base.inner_lr, delta)
      optimizer = meta_optimizer(cfg, cfg.meta_lr)
      run = mj.make_fused_train(est, optimizer, problem.sample_tasks,
                                cfg.sweep_iterations, mesh=mesh)
      states = jax.vmap(lambda lr: mj.init_train_state(
          params, meta_optimizer(cfg, lr)))(lrs)
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


def train(problem, cfg, run_dir, *, hparams=None, chunk_hook=None):
  """Meta-trains every algorithm of ``cfg`` for every seed, with checkpoints.

  Every algorithm starts from the same w_0 per seed and sees the same task
  sequence (same train key). Iterations run in chunks of ``cfg.eval_every``
  with ``mj.make_fused_train``, vmapped over the members: the seeds, or with
  ``--inner_lrs`` the grid (inner_lr, seed), whose step size is data of the
  one compiled program (member i of step size a equals a separate run with
  ``--inner_lr=a`` and that seed). With ``--learn_inner_lr`` the meta
  parameters are ``mj.LearnedInnerLR`` and the rows record their summary.

  Args:
    problem: the experiment's ``Problem``.
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
  grid = tuple(cfg.inner_lrs)
  # Members of the vmapped axis: (inner_lr or None, seed), inner_lr major.
  members = ([(lr, seed) for lr in grid for seed in cfg.seeds] if grid
             else [(None, seed) for seed in cfg.seeds])
  init_keys, train_keys = loop.seed_keys([seed for _, seed in members])
  w0 = jax.vmap(problem.init_params)(init_keys)
  member_lrs = jnp.asarray([lr for lr, _ in members], jnp.float32) if grid else None
  members_of = functools.partial(over_members,
                                 batching=problem.member_batching)
  lengths = {cfg.eval_every, cfg.num_iterations % cfg.eval_every} - {0}
  # --shard_tasks (always with several processes): each iteration's tasks
  # are split over every device of every process; states stay replicated.
  mesh = mj.task_mesh() if cfg.shard_tasks else None
  if mesh is not None:
    logging.info('each task batch is split over %d %s devices (%d process(es))',
                 mesh.size, jax.default_backend(), jax.process_count())
  compile_chunk = jax.jit if mesh is None else functools.partial(
      jax.jit, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))
  runs, states, evaluate = {}, {}, {}
  by_lr = {}  # one compiled evaluation per distinct fixed inner lr
  for algorithm in cfg.algorithms:
    hp = hparams[algorithm]
    optimizer = meta_optimizer(cfg, hp.meta_lr)
    runs[algorithm] = {}
    for length in lengths:
      if grid:
        def member_run(lr, state, key, algorithm=algorithm, length=length,
                       optimizer=optimizer, delta=hp.delta):
          est = _estimator(problem, cfg, algorithm, lr, delta)
          return mj.make_fused_train(
              est, optimizer, problem.sample_tasks, length, jit=False,
              task_batching=problem.task_batching, mesh=mesh)(state, key)
        runs[algorithm][length] = functools.partial(
            compile_chunk(members_of(member_run)), member_lrs)
      else:
        est = _estimator(problem, cfg, algorithm, hp.inner_lr, hp.delta)
        runs[algorithm][length] = compile_chunk(members_of(
            mj.make_fused_train(est, optimizer, problem.sample_tasks, length,
                                jit=False, task_batching=problem.task_batching,
                                mesh=mesh)))
    params = jax.vmap(lambda p, lr=hp.inner_lr: meta_params(p, cfg, lr))(w0)
    states[algorithm] = jax.vmap(
        lambda p, opt=optimizer: mj.init_train_state(p, opt))(params)
    if grid:
      if 'grid' not in by_lr:
        grid_eval = jax.jit(members_of(
            lambda p, lr: problem.evaluate(p, inner_lr=lr)))
        by_lr['grid'] = lambda p, f=grid_eval: f(p, member_lrs)
      evaluate[algorithm] = by_lr['grid']
    else:
      if hp.inner_lr not in by_lr:
        by_lr[hp.inner_lr] = jax.jit(members_of(functools.partial(
            problem.evaluate, inner_lr=hp.inner_lr)))
      evaluate[algorithm] = by_lr[hp.inner_lr]

  def run_chunk(algorithm, length, state, keys):
    return runs[algorithm][length](state, keys)

  def rows(algorithm, iteration, state, wall_time, chunk):
    values = loop.to_host(evaluate[algorithm](state.params))
    if cfg.learned:
      values.update(inner_lr_stats(state.params.inner_lr,
                                   per_step=cfg.per_step_inner_lr))
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

  def describe(algorithm, rows, chunk):
    del algorithm, chunk  # the rows say it all
    by_arm = {}
    for r in rows:
      by_arm.setdefault(summaries.row_arm(r), []).append(r)
    mean = lambda rs, k: loop.format_value(np.mean(
        [r[k] or np.nan for r in rs]))
    return ' | '.join(
        f'{arm}: train {mean(rs, "train_loss")} test {mean(rs, "test_loss")}'
        + (f' alpha {mean(rs, "inner_lr_mean")}' if cfg.learned else '')
        for arm, rs in by_arm.items())

  done = loop.train_loop(
      loop.Hooks(run_chunk=run_chunk, rows=rows, describe=describe), run_dir,
      states, train_keys, num_iterations=cfg.num_iterations,
      eval_every=cfg.eval_every, resume=cfg.resume, num_seeds=len(cfg.seeds),
      chunk_hook=chunk_hook, mesh=mesh)
  return TrainResult(states=done.states, hparams=hparams, rows=run_dir.rows,
                     seconds_per_iteration=done.seconds_per_iteration,
                     inner_lrs=grid)


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
