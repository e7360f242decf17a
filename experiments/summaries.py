"""Summaries of a finished run: arm names and labels, markdown tables.

An arm is one trained line of a run: an algorithm, or with ``--inner_lrs``
an (algorithm, fixed step size) pair named 'algorithm@alpha=<value>'
(``arm_name``); metric rows carry it (``row_arm``), tables and figures show
its label (``arm_label``).
"""

import numpy as np

from experiments import rundir

LABELS = {
    'maml': 'MAML',
    'fo_maml': 'FO-MAML',
    'zo_maml': 'ZO-MAML',
    'ggs_maml': 'GGS-MAML',
    'hf_maml': 'HF-MAML',
}


def arm_name(algorithm, inner_lr=None):
  """Name of one trained arm: the algorithm, with ``@alpha=`` for ``--inner_lrs``."""
  return algorithm if inner_lr is None else f'{algorithm}@alpha={inner_lr:g}'


def row_arm(row):
  """The arm of a metric row (rows of an ``--inner_lrs`` grid carry inner_lr)."""
  return arm_name(row['algorithm'], row.get('inner_lr'))


def arm_label(arm):
  """Display name of an arm: 'MAML', or 'MAML alpha=0.01' in a grid."""
  algorithm, _, rest = arm.partition('@')
  label = LABELS.get(algorithm, algorithm)
  return f'{label} {rest}' if rest else label


def final_rows(rows, metric='test_loss'):
  """``{arm: [metric at the last iteration, per seed]}`` (arm: ``row_arm``)."""
  last = {}
  for r in rows:
    a = row_arm(r)
    if a not in last or r['iteration'] > last[a]:
      last[a] = r['iteration']
  out = {}
  for r in rows:
    if r['iteration'] == last[row_arm(r)]:
      v = r.get(metric)
      out.setdefault(row_arm(r), []).append(np.nan if v is None else v)
  return out


def _inner_lr_label(cfg, hp, arm):
  if cfg is not None and cfg.learned:
    name, lr = cfg.inner_lr_hparams(hp.meta_lr)
    return (f'learned {cfg.learn_inner_lr}'
            f'{" per step" if cfg.per_step_inner_lr else ""} '
            f'(init {hp.inner_lr:g}, {name} lr {lr:g})')
  _, _, rest = arm.partition('@alpha=')
  return rest or f'{hp.inner_lr:g}'


def summary_table(result, metric='test_loss', metric_label='meta-test loss',
                  cfg=None):
  """Markdown table: final ``metric`` (mean +- std over seeds), hparams, time.

  One line per arm (per algorithm and ``--inner_lrs`` value). With ``cfg``
  of a ``--learn_inner_lr`` run, a column gives the final learned step
  sizes: mean over seeds of their mean, and their min and max over seeds.
  """
  finals = final_rows(result.rows, metric)
  learned = cfg is not None and cfg.learned
  if learned:
    stats = {name: final_rows(result.rows, 'inner_lr_' + name)
             for name in ('mean', 'min', 'max')}
  lines = [
      f'| algorithm | final {metric_label} (mean +- std over seeds) | seeds |'
      ' meta lr | delta | inner lr | s / meta-iteration (all seeds) |'
      + (' learned inner lr: mean [min, max] |' if learned else ''),
      '|---|---|---|---|---|---|---|' + ('---|' if learned else '')]
  for arm, values in finals.items():
    algorithm = arm.partition('@')[0]
    values = np.asarray(values, float)
    hp = result.hparams.get(algorithm)
    spi = result.seconds_per_iteration.get(algorithm)
    line = (
        f'| {arm_label(arm)} | {np.mean(values):.4g} +- '
        f'{np.std(values):.2g} | {len(values)} | '
        f'{hp.meta_lr:g} | '
        f'{hp.delta:g} | {_inner_lr_label(cfg, hp, arm)} | '
        f'{"n/a" if spi is None else f"{spi:.3g}"} |')
    if learned:
      line += (f' {np.mean(stats["mean"][arm]):.4g} '
               f'[{np.min(stats["min"][arm]):.4g}, '
               f'{np.max(stats["max"][arm]):.4g}] |')
    lines.append(line)
  return '\n'.join(lines) + '\n'


def learned_inner_lr_section(result, cfg):
  """Markdown about learned step sizes (per-step means), '' if not learned."""
  if not cfg.learned:
    return ''
  text = (f'Learned inner step sizes (--learn_inner_lr={cfg.learn_inner_lr}'
          f'{", --per_step_inner_lr" if cfg.per_step_inner_lr else ""}), '
          'final values: mean over all step sizes, min and max, mean +- std '
          'over seeds (metrics rows: inner_lr_mean/_min/_max'
          f'{", inner_lr_step<j>_mean" if cfg.per_step_inner_lr else ""}).\n')
  steps = [f'step{j}_' for j in range(cfg.num_inner_steps)] if (
      cfg.per_step_inner_lr) else []
  names = ['mean', 'min', 'max'] + [s + 'mean' for s in steps]
  finals = {n: final_rows(result.rows, 'inner_lr_' + n) for n in names}
  lines = ['| algorithm | ' + ' | '.join(
      n.replace('_', ' ') for n in names) + ' |',
           '|---|' + '---|' * len(names)]
  for arm in finals['mean']:
    lines.append(f'| {arm_label(arm)} | ' + ' | '.join(
        f'{np.mean(finals[n][arm]):.4g} +- {np.std(finals[n][arm]):.2g}'
        for n in names) + ' |')
  return text + '\n' + '\n'.join(lines) + '\n'


def write_summary(run_dir, title, sections):
  """Writes summary.md: ``title`` and ``sections`` (markdown strings)."""
  text = f'# {title}\n\n' + '\n'.join(s.rstrip() + '\n' for s in sections
                                       if s)
  rundir.atomic_write_text(run_dir.file('summary.md'), text)
  return run_dir.file('summary.md')
