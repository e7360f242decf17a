r"""Re-evaluates a meta-RL run's checkpoints on many held-out tasks.

  python -m experiments.rl.evaluate --run=/tmp/rlruns/hc_vel \
      --checkpoints=0,500,1000 --eval_tasks=40 --out=experiments/rl/figures/hc_vel_eval

The launcher evaluates on ``--eval_tasks`` tasks (10 in the CPU runs) while it
trains, and a single evaluation on 10 tasks swings by several points. This
evaluates chosen checkpoints (``0`` is w_0 as training started) of every
algorithm and seed of a run on the same ``--eval_tasks`` fresh tasks, with the
same episode noise at every checkpoint, after 0..K inner steps. Because every
checkpoint meets the same tasks, the gain of adaptation (return after k steps
minus before, per task) has a paired standard error over tasks.

Writes ``evaluation.json`` (per algorithm, seed and checkpoint: per-task
returns, means and standard errors), ``evaluation.md`` (the table) and
``<env>_adaptation.png`` (return vs training iteration after 0..K steps, and
the gain of adaptation with its standard error) into ``--out``; for tasks
given by one number (HalfCheetah's target velocity or direction) also
``<env>_gain_by_task.png``, the gain of one step per task at the first and
the last checkpoint. Checkpoints
kept outside the run folder are read with ``--checkpoint_dir``. Run it again
as training goes on: checkpoints already in ``--out`` with the same settings
are kept, and only the new ones are evaluated.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import stopping

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined when run as a program only: the launcher
  and report define some of the same names)."""
  flags.DEFINE_string('run', None, 'Run folder of experiments.rl (config.json, checkpoints/).')
  flags.DEFINE_string('checkpoint_dir', None,
                      'Folder of the checkpoints (default: <run>/checkpoints).')
  flags.DEFINE_list('checkpoints', None,
                    'Checkpoint steps to evaluate; 0 is the initial policy '
                    '(default: 0 and every checkpoint in --checkpoint_dir).')
  flags.DEFINE_list('algorithms', None, 'Algorithms of the run to evaluate (default: all).')
  flags.DEFINE_integer('eval_tasks', 40, 'Held-out tasks (the same at every checkpoint).')
  flags.DEFINE_integer('eval_steps', None,
                       'Inner steps K: returns after 0..K steps (default: the run\'s).')
  flags.DEFINE_integer('eval_seed', 2026, 'Seed of the held-out tasks and episodes.')
  flags.DEFINE_string('out', None,
                      'Output folder (default: <run>/evaluation). Its evaluation.json '
                      'accumulates: checkpoints evaluated there before with the same '
                      '--eval_tasks, --eval_steps and --eval_seed are reused, not re-run '
                      '(delete the folder to start over).')


def summarize(returns):
  """Means and standard errors over tasks of per-task returns ``[tasks, K + 1]``.

  ``gain[k]`` is after k steps minus before (paired per task), ``gain[0] = 0``.
  """
  returns = np.asarray(returns, np.float64)
  n = returns.shape[0]
  gain = returns - returns[:, :1]
  se = lambda x: np.std(x, axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(x.shape[1])
  return {'mean': np.mean(returns, 0).tolist(), 'se': se(returns).tolist(),
          'gain': np.mean(gain, 0).tolist(), 'gain_se': se(gain).tolist()}


def standing_still(env_name, goals, horizon):
  """The return of a cheetah that stands still (zero velocity, zero action).

  Defined for ``halfcheetah_vel`` (-horizon * mean target velocity) and
  ``halfcheetah_dir`` (0); ``None`` for other environments.
  """
  if env_name == 'halfcheetah_vel':
    return float(-horizon * np.mean(np.abs(np.asarray(goals))))
  if env_name == 'halfcheetah_dir':
    return 0.0
  return None


def _steps(k):
  return f'{k} step{"" if k == 1 else "s"}'


def table(rows):
  """Markdown: one line per algorithm, seed and checkpoint."""
  num_steps = len(rows[0]['mean']) - 1
  head = (['algorithm', 'seed', 'iteration']
          + [_steps(k) for k in range(num_steps + 1)]
          + [f'gain, {_steps(k)}' for k in range(1, num_steps + 1)])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['algorithm'], str(r['seed']), str(r['iteration'])]
    cells += [f'{m:.1f} +- {s:.1f}' for m, s in zip(r['mean'], r['se'])]
    cells += [f'{m:+.1f} +- {s:.1f}' for m, s in zip(r['gain'][1:], r['gain_se'][1:])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _by_arm(rows):
  """``{(algorithm, seed): rows}``, each arm's rows by iteration, in first-seen order."""
  arms = {}
  for r in rows:
    arms.setdefault((r['algorithm'], r['seed']), []).append(r)
  return {arm: sorted(own, key=lambda r: r['iteration']) for arm, own in arms.items()}


def plot(rows, path, *, title, reference=None):
  """Return vs training iteration after 0..K steps, and the gain of adaptation."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from experiments import plotting  # pylint: disable=g-import-not-at-top
  from experiments.rl import plots  # pylint: disable=g-import-not-at-top
  fig, (ax, gx) = plt.subplots(1, 2, figsize=(10, 3.8))
  arms = _by_arm(rows)
  num_steps = len(rows[0]['mean']) - 1
  styles = ['o-', 's--', '^:', 'd-.']
  for (algorithm, seed), own in arms.items():
    it = np.array([r['iteration'] for r in own])
    label = plots.LABELS.get(algorithm, algorithm) + (f', seed {seed}' if len(arms) > 1 else '')
    def band(axis, key, k, text):
      """A line of ``key`` (``mean``/``gain``) after k steps, +- its s.e."""
      mean = np.array([r[key][k] for r in own])
      se = np.array([r[key + '_se' if key == 'gain' else 'se'][k] for r in own])
      line, = axis.plot(it, mean, styles[k % len(styles)], ms=3, label=text)
      axis.fill_between(it, mean - se, mean + se, color=line.get_color(), alpha=0.15,
                        linewidth=0)

    for k in range(num_steps + 1):
      steps = _steps(k)
      band(ax, 'mean', k, f'{label}: {steps}')
      if k:
        band(gx, 'gain', k, f'{label}: {steps} - 0 steps')
  if reference is not None:
    ax.axhline(reference, color='gray', ls='--', lw=1, label='standing still')
  gx.axhline(0.0, color='gray', lw=1)
  ax.set_xlabel('meta-iteration')
  ax.set_ylabel(f'average return, {rows[0]["num_tasks"]} held-out tasks')
  ax.set_title(title, fontsize=9)
  gx.set_xlabel('meta-iteration')
  gx.set_ylabel('gain of adaptation (paired, +- s.e.)')
  gx.set_title('return after k inner steps minus before', fontsize=9)
  for a in (ax, gx):
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
  return plotting.save_figure(fig, path)


def plot_gain_by_task(rows, path, *, title, task_label='task parameter'):
  """Per-task gain of one inner step against the task's (scalar) parameter.

  One panel per algorithm and seed, the first and the last checkpoint: where
  the gain of adaptation lands among the tasks (on HalfCheetah-vel, the target
  velocities far from what the pre-update policy runs at). ``None`` (nothing
  drawn) when the tasks are not scalars (2D navigation's goals).
  """
  if np.asarray(rows[0]['goals']).ndim != 1 or len(rows[0]['mean']) < 2:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from experiments import plotting  # pylint: disable=g-import-not-at-top
  from experiments.rl import plots  # pylint: disable=g-import-not-at-top
  arms = _by_arm(rows)
  fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 3.6), squeeze=False)
  for ax, ((algorithm, seed), own) in zip(axes[0], arms.items()):
    for r, style in ((own[0], dict(color='gray', marker='x')),
                     (own[-1], dict(color='C0', marker='o'))):
      returns = np.asarray(r['returns'])
      gain = returns[:, 1] - returns[:, 0]
      ax.scatter(r['goals'], gain, s=14, label=(f'iteration {r["iteration"]}: mean '
                                                f'{np.mean(gain):+.1f}'), **style)
    ax.axhline(0.0, color='gray', lw=1)
    ax.set_xlabel(task_label)
    ax.set_ylabel('return after 1 inner step minus before')
    ax.set_title(f'{title}: {plots.LABELS.get(algorithm, algorithm)}, seed {seed}',
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return plotting.save_figure(fig, path)


def evaluate_run(run, steps, *, algorithms=None, num_tasks=40, num_steps=None,
                 eval_seed=2026, checkpoint_dir=None):
  """Rows (one per algorithm, seed and checkpoint step) of per-task returns.

  Every checkpoint is evaluated on the same tasks with the same keys.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from experiments.rl import metarl  # pylint: disable=g-import-not-at-top
  from experiments.rl import train  # pylint: disable=g-import-not-at-top
  if not steps:
    return []
  key = jax.random.PRNGKey(eval_seed)
  _, _, settings, metas, by_step = train.load_checkpoints(run, steps, checkpoint_dir)
  k = settings['eval_steps'] if num_steps is None else num_steps
  algorithms = algorithms or list(metas)
  for algorithm in algorithms:
    if algorithm not in metas:
      raise app.UsageError(f'--algorithms: {algorithm!r} is not in {run} '
                           f'({", ".join(metas)})')
  compiled = {a: jax.jit(lambda p, m=metas[a]: metarl.evaluate_tasks(
      m, p, key, num_tasks=num_tasks, num_steps=k)) for a in algorithms}
  rows = []
  for step in steps:
    states = by_step[step]
    for algorithm in compiled:
      for s, seed in enumerate(settings['seeds']):
        start = time.time()
        params = jax.tree.map(lambda x, s=s: x[s], states[algorithm].params)
        returns, goals, _ = compiled[algorithm](params)
        returns = np.asarray(returns)
        row = {'algorithm': algorithm, 'seed': seed, 'iteration': int(step),
               'num_tasks': num_tasks, 'eval_seed': eval_seed,
               'returns': returns.tolist(), 'goals': np.asarray(goals).tolist(),
               'standing_still': standing_still(settings['env'], goals,
                                                metas[algorithm].env.horizon)}
        row.update(summarize(returns))
        rows.append(row)
        logging.info('%s seed %s iteration %d: return %s, gain %s (%.1f s)', algorithm,
                     seed, step, ' '.join(f'{m:.1f}' for m in row['mean']),
                     ' '.join(f'{g:+.1f}+-{e:.1f}' for g, e in
                              zip(row['gain'][1:], row['gain_se'][1:])),
                     time.time() - start)
  return rows


def previous_rows(out, algorithms, *, num_tasks, num_steps, eval_seed):
  """The rows of ``out``/evaluation.json made with the same settings (or [])."""
  path = os.path.join(out, 'evaluation.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = json.load(f)
  return [r for r in rows if r['algorithm'] in algorithms and r['num_tasks'] == num_tasks
          and r['eval_seed'] == eval_seed and len(r['mean']) == num_steps + 1]


def checkpoint_steps(run, checkpoint_dir=None):
  """0 and every complete checkpoint step of the run, ascending."""
  from experiments import rundir  # pylint: disable=g-import-not-at-top
  folder = checkpoint_dir or os.path.join(run, 'checkpoints')
  checkpointer = rundir.Checkpointer(folder, max_to_keep=None)
  try:
    return [0] + sorted(checkpointer.all_steps())
  finally:
    checkpointer.close()


def run(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.run or not os.path.exists(os.path.join(FLAGS.run, 'config.json')):
    raise app.UsageError(f'--run: {FLAGS.run!r} is not a run folder (no config.json)')
  if FLAGS.checkpoints:
    try:
      steps = sorted({int(s) for s in FLAGS.checkpoints})
    except ValueError as e:
      raise app.UsageError(f'--checkpoints: integers, got {FLAGS.checkpoints}') from e
  else:
    steps = checkpoint_steps(FLAGS.run, FLAGS.checkpoint_dir)
  if FLAGS.eval_tasks < 2:
    raise app.UsageError('--eval_tasks: at least 2 (for a standard error)')
  from experiments.rl import registry  # pylint: disable=g-import-not-at-top
  with open(os.path.join(FLAGS.run, 'config.json')) as f:
    saved = json.load(f)
  env = saved['settings']['env']
  if env in registry.BRAX_ENVS:  # as the launcher does, before JAX starts
    registry.brax_envs.use_cpu_xla_workaround()
  out = FLAGS.out or os.path.join(FLAGS.run, 'evaluation')
  algorithms = FLAGS.algorithms or list(saved['rl_configs'])
  num_steps = (saved['settings']['eval_steps'] if FLAGS.eval_steps is None
               else FLAGS.eval_steps)
  rows = previous_rows(out, algorithms, num_tasks=FLAGS.eval_tasks,
                       num_steps=num_steps, eval_seed=FLAGS.eval_seed)
  # A checkpoint is done if every algorithm asked for has its rows.
  have = {(r['algorithm'], r['iteration']) for r in rows}
  done = {i for _, i in have if all((a, i) in have for a in algorithms)}
  rows = [r for r in rows if r['iteration'] in done]
  if done & set(steps):
    logging.info('reusing the evaluations of checkpoints %s in %s',
                 sorted(done & set(steps)), out)
  try:
    rows += evaluate_run(FLAGS.run, [s for s in steps if s not in done],
                         algorithms=algorithms, num_tasks=FLAGS.eval_tasks,
                         num_steps=num_steps, eval_seed=FLAGS.eval_seed,
                         checkpoint_dir=FLAGS.checkpoint_dir)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  rows.sort(key=lambda r: (r['iteration'], algorithms.index(r['algorithm']), r['seed']))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'evaluation.json'), 'w') as f:
    json.dump(rows, f)
  text = table(rows)
  with open(os.path.join(out, 'evaluation.md'), 'w') as f:
    f.write(text + '\n')
  short, name = registry.ENV_NAMES.get(env, (env, env))
  path = plot(rows, os.path.join(out, f'{short}_adaptation.png'),
              title=f'{name}: {FLAGS.eval_tasks} held-out tasks, same at every checkpoint',
              reference=rows[0]['standing_still'])
  by_task = plot_gain_by_task(
      rows, os.path.join(out, f'{short}_gain_by_task.png'), title=name,
      task_label={'halfcheetah_vel': 'target velocity',
                  'halfcheetah_dir': 'direction'}.get(env, 'task parameter'))
  print(text)
  print(f'wrote {out}/evaluation.json, evaluation.md, {path}'
        + (f' and {by_task}' if by_task else ''))


def main(argv):
  """``run`` with a flag or input mistake as one line on stderr (exit code 2)."""
  try:
    run(argv)
  except app.UsageError as e:
    stopping.say(f'error: {e}')
    sys.exit(2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
