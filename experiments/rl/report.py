r"""Combines the metrics of several meta-RL runs (e.g. one per seed) into figures and a table.

  python -m experiments.rl.report --runs=/tmp/rl/nav_seed0,/tmp/rl/nav_seed1 \
      --out=experiments/rl/figures --iterations=200

Uses the rows of each run's metrics.jsonl up to ``--iterations`` (all by
default), so runs of different lengths can be compared on a common prefix.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments.rl import plots
from experiments.rl import registry

flags.DEFINE_list('runs', None, 'Run folders (each with metrics.jsonl).')
flags.DEFINE_string('out', 'experiments/rl/figures', 'Output folder for the PNGs.')
flags.DEFINE_integer('iterations', None, 'Use iterations <= this (default: all).')
flags.DEFINE_string('trajectories_from', None,
                    'Run folder whose latest checkpoint gives the policies of '
                    'the trajectory pictures (first seed).')
flags.DEFINE_list('trajectory_algorithms', ['maml', 'fo_maml'],
                  'Algorithms drawn by --trajectories_from.')
flags.DEFINE_integer('last', 10, 'Average the training returns over the last N iterations.')
FLAGS = flags.FLAGS


def load_rows(runs, max_iteration=None):
  rows = []
  for run in runs:
    with open(os.path.join(run, 'metrics.jsonl')) as f:
      for line in f:
        r = json.loads(line)
        if max_iteration is None or r['iteration'] <= max_iteration:
          rows.append(r)
  return rows


def env_of(runs):
  """The environment of the runs (from their config.json); they must share one."""
  names = set()
  for run in runs:
    with open(os.path.join(run, 'config.json')) as f:
      names.add(json.load(f)['settings']['env'])
  if len(names) != 1:
    raise ValueError(f'--runs mixes environments: {sorted(names)}')
  return names.pop()


def table(rows, last=10):
  """Markdown: per algorithm, mean +- std over seeds of the final metrics."""
  algorithms = list(dict.fromkeys(r['algorithm'] for r in rows))
  ev_keys = sorted({k for r in rows for k in r if k.startswith('eval_return_')},
                   key=lambda k: int(k.rsplit('_', 1)[1]))
  head = ('| algorithm | seeds | iterations | train return before (last '
          f'{last}) | train return after | '
          + ' | '.join(f'held-out, {k.rsplit("_", 1)[1]} steps' for k in ev_keys)
          + ' | TRPO accepted step fraction (mean) | wall s / it |')
  lines = [head, '|---' * (7 + len(ev_keys)) + '|']
  fmt = plots.fmt_mean_std
  for a in algorithms:
    tr = [r for r in rows if r['algorithm'] == a and r.get('kind') == 'train']
    seeds = sorted({r['seed'] for r in tr})
    last_it = {s: max(r['iteration'] for r in tr if r['seed'] == s) for s in seeds}
    per_seed = lambda key: [np.mean(plots.finite_values(
        [r[key] for r in tr if r['seed'] == s and r['iteration'] > last_it[s] - last]))
                            for s in seeds]
    ev = [r for r in rows if r['algorithm'] == a and r.get('kind') == 'eval'
          and r['iteration'] == last_it.get(r['seed'])]
    frac = np.mean([r['trpo_step_frac'] for r in tr if 'trpo_step_frac' in r] or [np.nan])
    walls = [r['wall_time'] / r['iteration'] for r in ev if r.get('wall_time')]
    its = sorted(set(last_it.values()))
    lines.append(
        f'| {plots.LABELS.get(a, a)} | {len(seeds)} | {",".join(map(str, its))} | '
        f'{fmt(per_seed("return_before"))} | {fmt(per_seed("return_after"))} | '
        + ' | '.join(fmt([r[k] for r in ev]) for k in ev_keys)
        + f' | {frac:.2f} | {np.mean(walls) if walls else float("nan"):.2f} |')
  return '\n'.join(lines) + '\n'


def plot_trajectories_from(run, algorithms, out):
  """Trajectory pictures of the latest checkpoint of ``run`` (first seed).

  2D navigation only; for other environments nothing is drawn and ``[]`` is
  returned (with a warning).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from experiments.rl import metarl  # pylint: disable=g-import-not-at-top
  from experiments.rl import train  # pylint: disable=g-import-not-at-top
  _, _, settings, metas, states, step = train.load_run(run)
  if settings['env'] != 'navigation2d':
    logging.warning('trajectory pictures are drawn for navigation2d runs only; '
                    '%s is a %s run', run, settings['env'])
    return []
  paths = []
  for a in algorithms:
    if a not in metas:
      continue
    params = jax.tree.map(lambda x: x[0], states[a].params)
    _, goals, obs = jax.jit(lambda p, m=metas[a]: metarl.evaluate(
        m, p, jax.random.PRNGKey(train.EVAL_SEED), num_tasks=4, num_steps=2))(params)
    path = os.path.join(out, f'nav2d_trajectories_{a}.png')
    plots.plot_trajectories(np.asarray(goals), np.asarray(obs), path,
                            title=f'{plots.LABELS.get(a, a)}, seed {settings["seeds"][0]}, '
                            f'iteration {step}: 3 episodes after 0 / 1 / 2 inner steps')
    paths.append(path)
  return paths


def main(argv):
  del argv
  rows = load_rows(FLAGS.runs, FLAGS.iterations)
  prefix, env_title = registry.ENV_NAMES[env_of(FLAGS.runs)]
  os.makedirs(FLAGS.out, exist_ok=True)
  plots.plot_returns(rows, os.path.join(FLAGS.out, f'{prefix}_returns.png'),
                     title=f'{env_title}: return before (dashed) / after (solid)'
                     ', training batches')
  plots.plot_eval_steps(rows, os.path.join(FLAGS.out, f'{prefix}_eval_steps.png'),
                        title=f'{env_title}, held-out tasks')
  print(table(rows, FLAGS.last))
  if FLAGS.trajectories_from:
    print(plot_trajectories_from(FLAGS.trajectories_from,
                                 FLAGS.trajectory_algorithms, FLAGS.out))


if __name__ == '__main__':
  app.run(main)
