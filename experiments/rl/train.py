r"""Meta-RL launcher: 2D navigation with MAML / FO / ZO / GGS(/ HF)-MAML and TRPO.

  python -m experiments.rl --env=navigation2d \
      --algorithms=maml,fo_maml,zo_maml,ggs_maml --seeds=0,1 \
      --num_iterations=200 --workdir=/tmp/rl

Every algorithm runs for every seed (seeds batched with ``jax.vmap``) in
compiled chunks of ``--eval_every`` meta-iterations (``lax.scan``), in the
launchers' shared loop (``experiments.loop``); after each chunk: held-out
evaluation (return after 0..--eval_steps inner steps on fixed tasks),
metrics.jsonl/.csv, an Orbax checkpoint. ``--resume`` continues from the
latest checkpoint with exactly the metrics of an uninterrupted run
(iteration i draws its tasks, episodes and directions from
``fold_in(key, i)``). At the end: summary.md, learning curves and a picture
of trajectories before/after adaptation (figures/ in the run folder).

Shared flags (see experiments/launcher_flags.py) keep their meaning: --tasks_per_batch
(tasks per meta-batch), --meta_optimizer (here 'trpo' or 'adam'), --meta_lr
(Adam only), --inner_lr/--zo_inner_lr, --num_directions, --delta. --sweep is
not supported for RL.
"""

import functools
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

import maml_jax as mj
from experiments import cli
from experiments import launcher_flags
from experiments import loop
from experiments import rundir
from experiments import runtime
from experiments import summaries
from experiments.rl import brax_envs
from experiments.rl import metarl
from experiments.rl import plots
from experiments.rl import registry

NAME = 'rl'
# MAML-RL's 2D-navigation settings (docs/design.md, 'Experiments').
DEFAULTS = dict(
    algorithms=('maml', 'fo_maml', 'zo_maml', 'ggs_maml'),
    num_inner_steps=1,
    inner_lr=0.1,
    meta_lr=1e-3,
    meta_optimizer='trpo',
    num_directions=10,
    delta=1e-2,
    tasks_per_batch=20,
    num_iterations=200,
    eval_every=10,
)
EVAL_SEED = 20260  # held-out evaluation tasks: the same for every run

FLAGS = flags.FLAGS


def define_flags():
  """The shared training flags plus the RL-specific ones (idempotent)."""
  launcher_flags.define_training_flags()
  d = launcher_flags.define_once
  d(flags.DEFINE_string, 'env', 'navigation2d',
    'Environment: navigation2d, halfcheetah_vel or halfcheetah_dir (the '
    "HalfCheetah tasks need Brax: pip install -e '.[brax]').")
  d(flags.DEFINE_integer, 'horizon', None,
    'Episode length (default: the environment\'s, 100 for navigation2d, 200 '
    'for HalfCheetah; smaller only for smoke tests).')
  d(flags.DEFINE_enum, 'brax_backend', 'generalized', list(brax_envs.BACKENDS),
    'Brax physics pipeline of the HalfCheetah tasks.')
  d(flags.DEFINE_integer, 'num_episodes', 20, 'Episodes per task per batch.')
  d(flags.DEFINE_float, 'gamma', 0.95, 'Discount.')
  d(flags.DEFINE_float, 'gae_tau', 1.0, 'GAE lambda (tau).')
  d(flags.DEFINE_float, 'baseline_reg', 1e-5, 'Ridge term of the linear baseline.')
  d(flags.DEFINE_boolean, 'separate_hessian_batch', True,
    'Sample the Hessian batches D_j separately from S_j (Algorithm 1).')
  d(flags.DEFINE_float, 'max_kl', 1e-2, 'TRPO KL bound.')
  d(flags.DEFINE_integer, 'cg_iters', 10, 'TRPO conjugate-gradient iterations.')
  d(flags.DEFINE_float, 'cg_damping', 1e-5,
    'TRPO CG damping (MAML-RL: 1e-5). 0.1 kept GGS-MAML from collapsing with '
    'either --kl_hvp (experiments/rl/RESULTS.md).')
  d(flags.DEFINE_integer, 'ls_max_steps', 15, 'TRPO line-search trials.')
  d(flags.DEFINE_float, 'ls_backtrack_ratio', 0.8, 'TRPO line-search shrink factor.')
  d(flags.DEFINE_enum, 'kl_hvp', 'adapted', list(metarl.KL_HVPS),
    'KL Hessian for CG: of the adapted policy (dw_N/dw = I) or through the '
    'adaptation (MAML-RL; second order through the inner loop).')
  d(flags.DEFINE_float, 'cg_subsample', 0.2,
    'Fraction of each task\'s query episodes used in the Fisher-vector '
    'products of CG (OpenAI-Baselines TRPO uses every 5th state; 1.0 = all, '
    'as MAML-RL). The line search always uses all episodes.')
  d(flags.DEFINE_list, 'hidden', ['100', '100'], 'Policy hidden sizes.')
  d(flags.DEFINE_integer, 'eval_tasks', 40, 'Held-out tasks for evaluation.')
  d(flags.DEFINE_integer, 'eval_steps', 3, 'Inner steps evaluated (0..K).')


def resolve(name):
  return launcher_flags.flag_or_default(name, DEFAULTS)


def make_configs():
  """``(env, {algorithm: RLConfig}, settings)`` from the flags; fails fast."""
  env_name = FLAGS.env
  if env_name not in registry.ENVS:
    raise app.UsageError(f'--env={env_name!r}: choose from '
                         f'{sorted(registry.ENVS)}')
  if FLAGS.horizon is not None and FLAGS.horizon < 1:
    raise app.UsageError('--horizon must be a positive integer')
  env_kwargs = registry.env_kwargs(env_name, horizon=FLAGS.horizon,
                                   brax_backend=FLAGS.brax_backend)
  if FLAGS.sweep:
    raise app.UsageError('--sweep is not supported by the RL launcher')
  algorithms = launcher_flags.parse_algorithms(resolve('algorithms'))
  seeds = launcher_flags.parse_seeds(FLAGS.seeds)
  hidden = launcher_flags.parse_ints('hidden', FLAGS.hidden)
  if not hidden or min(hidden) < 1:
    raise app.UsageError('--hidden must list positive integers')
  optimizer = resolve('meta_optimizer')
  if optimizer not in metarl.OUTER_OPTIMIZERS:
    raise app.UsageError(f'--meta_optimizer must be one of '
                         f'{metarl.OUTER_OPTIMIZERS} for RL, got {optimizer!r}')
  for name in ('num_iterations', 'eval_every', 'eval_tasks'):
    if resolve(name) is None or resolve(name) < 1:
      raise app.UsageError(f'--{name} must be a positive integer')
  if FLAGS.eval_steps < 0:
    raise app.UsageError('--eval_steps must be >= 0')
  inner_lr = resolve('inner_lr')
  zo_inner_lr = resolve('zo_inner_lr')
  configs = {}
  for algorithm in algorithms:
    cfg = metarl.RLConfig(
        algorithm=algorithm,
        num_tasks=resolve('tasks_per_batch'),
        num_episodes=FLAGS.num_episodes,
        num_inner_steps=resolve('num_inner_steps'),
        inner_lr=(zo_inner_lr if algorithm == 'zo_maml' and zo_inner_lr
                  else inner_lr),
        gamma=FLAGS.gamma, gae_tau=FLAGS.gae_tau, baseline_reg=FLAGS.baseline_reg,
        separate_hessian_batch=FLAGS.separate_hessian_batch,
        num_directions=resolve('num_directions'), delta=resolve('delta'),
        outer_optimizer=optimizer, outer_lr=resolve('meta_lr'),
        max_kl=FLAGS.max_kl, cg_iters=FLAGS.cg_iters, cg_damping=FLAGS.cg_damping,
        ls_max_steps=FLAGS.ls_max_steps,
        ls_backtrack_ratio=FLAGS.ls_backtrack_ratio, kl_hvp=FLAGS.kl_hvp,
        cg_subsample=FLAGS.cg_subsample,
        hidden=hidden, remat=FLAGS.remat)
    try:
      metarl.validate_config(cfg)
    except (ValueError, TypeError) as e:
      raise app.UsageError(str(e)) from None
    configs[algorithm] = cfg
  launcher_flags.check_workdir(FLAGS.workdir)
  shard_tasks = runtime.task_sharding(resolve('tasks_per_batch'))
  settings = dict(env=env_name, env_kwargs=env_kwargs, algorithms=algorithms,
                  seeds=seeds, shard_tasks=shard_tasks,
                  num_iterations=resolve('num_iterations'),
                  eval_every=resolve('eval_every'), eval_tasks=FLAGS.eval_tasks,
                  eval_steps=FLAGS.eval_steps)
  try:
    env = registry.make_env(env_name, **env_kwargs)
  except ImportError as e:  # Brax, an optional extra, is missing
    raise app.UsageError(f'--env={env_name}: {e} (see experiments/rl/RESULTS.md '
                         'for its speed on a CPU)') from None
  return env, configs, settings


def env_steps_per_iteration(env, cfg):
  """Env steps simulated per meta-iteration (evaluation aside).

  Exactly what the algorithm needs: S_0..S_{N-1}, D_0..D_{N-1} (if separate
  and used) and T. The TRPO step reuses the estimator's episodes, and no
  query batch is sampled at w_0 (the estimators are built with
  ``loss_before=False``).
  """
  batch = cfg.num_tasks * cfg.num_episodes * env.horizon
  n = cfg.num_inner_steps
  hessian = n if (cfg.separate_hessian_batch and metarl.uses_hessian_batch(cfg)) else 0
  return batch * (n + hessian + 1)


def _state_tree(state):
  """A TrainState as a checkpointable dict (TRPO has no optimizer state)."""
  out = {'params': state.params, 'iteration': state.iteration}
  if jax.tree.leaves(state.opt_state):
    out['opt_state'] = state.opt_state
  return out


def _from_tree(tree, like):
  return mj.TrainState(params=tree['params'],
                       opt_state=tree.get('opt_state', like.opt_state),
                       iteration=tree['iteration'])


# TRPO states are saved without their (empty) optimizer state, and with each
# algorithm's wall time.
CHECKPOINTS = loop.Checkpoints(state_to_tree=_state_tree,
                               state_from_tree=_from_tree, with_wall=True)


def load_run(path, step=None, checkpoint_dir=None):
  """``(env, configs, settings, metas, states, step)`` of the run folder ``path``.

  Rebuilds the environment and algorithms from its ``config.json`` and restores
  a checkpoint (``states`` stacked over seeds): the latest by default, or
  ``step``; ``step=0`` is the initial state (w_0 of each seed, as training
  started), which needs no checkpoint. ``checkpoint_dir`` (default
  ``path/checkpoints``) reads checkpoints kept elsewhere.
  """
  env, configs, settings, metas, by_step = load_checkpoints(path, [step],
                                                            checkpoint_dir)
  (step, states), = by_step.items()
  return env, configs, settings, metas, states, step


def load_checkpoints(path, steps, checkpoint_dir=None):
  """``(env, configs, settings, metas, {step: states})`` for several checkpoints.

  As :func:`load_run` for each of ``steps`` (``None``: the latest; ``0``: the
  initial state), with the environment and algorithms built once.
  """
  with open(os.path.join(path, 'config.json')) as f:
    saved = json.load(f)
  settings = saved['settings']
  env = registry.make_env(settings['env'], **settings.get('env_kwargs', {}))
  configs = {a: metarl.RLConfig(**dict(c, hidden=tuple(c['hidden'])))
             for a, c in saved['rl_configs'].items()}
  metas = {a: metarl.build(env, c) for a, c in configs.items()}
  init_keys, train_keys = loop.seed_keys(settings['seeds'])
  init = {a: jax.vmap(m.init)(init_keys) for a, m in metas.items()}
  by_step = {0: init} if 0 in steps else {}
  if any(step != 0 for step in steps):
    checkpoint_dir = checkpoint_dir or os.path.join(path, 'checkpoints')
    # Read-only: keep every checkpoint there (no saves, nothing deleted).
    checkpointer = rundir.Checkpointer(checkpoint_dir, max_to_keep=None)
    try:
      kept = checkpointer.all_steps()
      for step in steps:
        if step is None:
          step = checkpointer.latest_step()
          if step is None:
            raise ValueError(f'{checkpoint_dir} has no checkpoint yet')
        elif step == 0:
          continue
        elif step not in kept:
          raise ValueError(f'{checkpoint_dir} has no checkpoint {step}; it has '
                           f'{sorted(kept)}')
        by_step[step], _, _, _ = loop.restore(checkpointer, step, CHECKPOINTS, init,
                                              train_keys)
    finally:
      checkpointer.close()
  return env, configs, settings, metas, by_step


def run(env, configs, settings, run_dir, *, resume=False, chunk_hook=None,
        compiled=None):
  """Trains every algorithm for every seed (with checkpoints and metrics).

  Args:
    env: the ``envs.Env``.
    configs: ``{algorithm: metarl.RLConfig}``.
    settings: seeds, num_iterations, eval_every, eval_tasks, eval_steps.
    run_dir: ``rundir.RunDir``.
    resume: continue from the latest checkpoint in ``run_dir``.
    chunk_hook: optional ``chunk_hook(iteration)`` after each checkpoint.
    compiled: optional dict, filled with the jitted functions and reused by
      later calls with the same configs (tests: one compilation per config).

  Returns:
    ``(metas, states, wall)``: built functions, final states, seconds per algorithm.
  """
  seeds = settings['seeds']
  init_keys, train_keys = loop.seed_keys(seeds)
  metas, runs, states, evaluate = {}, {}, {}, {}
  eval_key = jax.random.PRNGKey(EVAL_SEED)
  num_iterations, eval_every = settings['num_iterations'], settings['eval_every']
  compiled = {} if compiled is None else compiled
  # --shard_tasks (always with several processes): tasks split over every
  # device of every process, states replicated (experiments.loop).
  mesh = mj.task_mesh() if settings.get('shard_tasks') else None
  compile_chunk = jax.jit if mesh is None else functools.partial(
      jax.jit, out_shardings=jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec()))
  for algorithm, cfg in configs.items():
    cache_key = (cfg, settings['eval_tasks'], settings['eval_steps'],
                 mesh is not None)
    if cache_key not in compiled:
      meta = metarl.build(env, cfg, mesh=mesh)
      compiled[cache_key] = (meta, {}, jax.jit(jax.vmap(functools.partial(
          metarl.evaluate, meta, key=eval_key, num_tasks=settings['eval_tasks'],
          num_steps=settings['eval_steps']))))
    meta, fused, evaluate[algorithm] = compiled[cache_key]
    for n in {eval_every, num_iterations % eval_every} - {0}:
      if n not in fused:
        fused[n] = compile_chunk(jax.vmap(metarl.make_fused(meta, n)))
    metas[algorithm], runs[algorithm] = meta, fused
    # The same w_0 per seed for every algorithm.
    states[algorithm] = jax.vmap(meta.init)(init_keys)

  def run_chunk(algorithm, length, state, keys):
    return runs[algorithm][length](state, keys)

  def rows(algorithm, iteration, state, wall_time, chunk):
    """Train rows of the chunk's iterations (if any), then the eval rows."""
    out = []
    if chunk is not None:
      metrics = chunk.metrics
      for s, seed in enumerate(seeds):
        for i in range(chunk.length):
          row = {'algorithm': algorithm, 'seed': seed,
                 'iteration': iteration - chunk.length + i + 1,
                 'kind': 'train'}
          ret = metrics['returns'][s, i]
          row.update({f'return_{j}': float(r) for j, r in enumerate(ret)})
          row['return_before'] = float(ret[0])
          row['return_after'] = float(ret[-1])
          for k, v in metrics.items():
            if k != 'returns':
              row[k] = float(v[s, i])
          out.append(row)
    returns, _, _ = evaluate[algorithm](state.params)
    returns = np.asarray(returns)
    for s, seed in enumerate(seeds):
      row = {'algorithm': algorithm, 'seed': seed, 'iteration': iteration,
             'kind': 'eval', 'wall_time': wall_time}
      row.update({f'eval_return_{k}': float(v)
                  for k, v in enumerate(returns[s])})
      if chunk is not None:
        row['chunk_seconds'] = chunk.seconds
      out.append(row)
    return out

  def describe(algorithm, rows, chunk):
    returns = chunk.metrics['returns']
    evals = [r for r in rows if r['kind'] == 'eval']
    return (f'{algorithm}: return before {np.mean(returns[:, -1, 0]):.2f} '
            f'after {np.mean(returns[:, -1, -1]):.2f} (train, mean over '
            'seeds); eval ' + ' '.join(
                f'{k}:{np.mean([r[k] for r in evals]):.2f}'
                for k in evals[0] if k.startswith('eval_return'))
            + f'; {chunk.seconds / chunk.length:.2f}s/it')

  done = loop.train_loop(
      loop.Hooks(run_chunk=run_chunk, rows=rows, describe=describe,
                 checkpoints=CHECKPOINTS),
      run_dir, states, train_keys, num_iterations=num_iterations,
      eval_every=eval_every, resume=resume, num_seeds=len(seeds),
      chunk_hook=chunk_hook, mesh=mesh)
  return metas, done.states, done.wall


def summarize(env, configs, settings, run_dir, metas, states, wall):
  """summary.md and the figures of a finished run."""
  rows = run_dir.rows
  fig_dir = run_dir.file('figures')
  os.makedirs(fig_dir, exist_ok=True)
  plots.plot_returns(rows, os.path.join(fig_dir, 'returns.png'),
                     title=f"{settings['env']}: return before (dashed) / after "
                     '(solid) adaptation, training tasks')
  plots.plot_eval_steps(rows, os.path.join(fig_dir, 'eval_steps.png'),
                        title=f"{settings['env']}: held-out return vs inner steps")
  if settings['env'] == 'navigation2d':  # trajectory pictures: 2D positions
    algorithm = 'maml' if 'maml' in metas else next(iter(metas))
    params0 = jax.tree.map(lambda x: x[0], states[algorithm].params)
    _, goals, obs = jax.jit(functools.partial(
        metarl.evaluate, metas[algorithm], num_tasks=4,
        num_steps=max(settings['eval_steps'], 1)))(params0, key=jax.random.PRNGKey(EVAL_SEED))
    plots.plot_trajectories(np.asarray(goals), np.asarray(obs),
                            os.path.join(fig_dir, 'trajectories.png'),
                            title=f'{plots.LABELS.get(algorithm, algorithm)}, seed '
                            f"{settings['seeds'][0]}, iteration {settings['num_iterations']}")
  last = settings['num_iterations']
  lines = ['| algorithm | return before (train, last 10 its) | after | '
           + ' | '.join(f'eval after {k}' for k in range(settings['eval_steps'] + 1))
           + ' | env steps / it | s / it (all seeds) |',
           '|---' * (settings['eval_steps'] + 6) + '|']
  for algorithm, cfg in configs.items():
    train = [r for r in rows if r['algorithm'] == algorithm and r['kind'] == 'train'
             and r['iteration'] > last - 10]
    ev = [r for r in rows if r['algorithm'] == algorithm and r['kind'] == 'eval'
          and r['iteration'] == last]
    fmt = lambda v: plots.fmt_mean_std(v, digits=2)
    per_seed = lambda key: [np.mean(plots.finite_values([r[key] for r in train
                                                         if r['seed'] == s]))
                            for s in settings['seeds']]
    env_steps = env_steps_per_iteration(env, cfg)
    lines.append(
        f'| {plots.LABELS.get(algorithm, algorithm)} | {fmt(per_seed("return_before"))}'
        f' | {fmt(per_seed("return_after"))} | '
        + ' | '.join(fmt([r[f'eval_return_{k}'] for r in ev])
                     for k in range(settings['eval_steps'] + 1))
        + f' | {env_steps} | {wall[algorithm] / last:.3g} |')
  text = '\n'.join(lines) + '\n'
  summaries.write_summary(run_dir, f"Meta-RL {settings['env']}", [
      f"{len(settings['seeds'])} seeds (mean +- std over seeds), "
      f"{last} meta-iterations.", text])
  return text


def run_cli(argv):
  """The launcher's command line (after ``jax.distributed`` is set up)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.env.startswith('halfcheetah'):
    brax_envs.use_cpu_xla_workaround()
  env, configs, settings = make_configs()
  run_dir = rundir.RunDir.create(FLAGS.workdir, FLAGS.run_name,
                                 resume=FLAGS.resume, default_name=NAME)
  run_dir.write_config(rundir.config_dict(None, extra={
      'settings': settings,
      'rl_configs': {a: c._asdict() for a, c in configs.items()}}),
      resume=FLAGS.resume)
  metas, states, wall = run(env, configs, settings, run_dir, resume=FLAGS.resume)
  table = summarize(env, configs, settings, run_dir, metas, states, wall)
  print(table)
  logging.info('outputs in %s', run_dir.path)


def entry():
  define_flags()
  launcher_flags.set_defaults(
      {k: (','.join(v) if isinstance(v, tuple) else v)
       for k, v in DEFAULTS.items() if k != 'algorithms'})
  app.run(main)


# One-line usage errors, and jax.distributed.initialize before anything runs.
main = cli.cli_main(run_cli)
