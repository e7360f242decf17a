"""Figures of the meta-RL runs (small PNGs, matplotlib Agg)."""

import numpy as np

from experiments import plotting
from experiments.plotting import COLORS, plt  # pylint: disable=unused-import
from experiments.summaries import LABELS


def _smooth(x, window):
  if window <= 1 or x.shape[-1] < window:
    return x
  kernel = np.ones(window) / window
  return np.stack([np.convolve(row, kernel, mode='valid') for row in x])


def plot_returns(rows, path, *, title=None, window=10):
  """Training return before (dashed) and after (solid) adaptation vs iteration.

  Mean over seeds of a ``window``-iteration moving average, band = std over seeds.
  """
  train = [r for r in rows if r.get('kind') == 'train']
  fig, ax = plt.subplots(figsize=(6, 4))
  for metric, style in (('return_before', '--'), ('return_after', '-')):
    for algorithm, (its, values) in plotting.curves_by_algorithm(train, metric).items():
      values = _smooth(values, window)
      its = its[len(its) - values.shape[1]:]
      mean, std = values.mean(0), values.std(0)
      color = COLORS.get(algorithm)
      label = LABELS.get(algorithm, algorithm) if style == '-' else None
      ax.plot(its, mean, style, color=color, label=label)
      if values.shape[0] > 1 and style == '-':
        ax.fill_between(its, mean - std, mean + std, color=color, alpha=0.15,
                        linewidth=0)
  ax.set_xlabel('meta-iteration')
  ax.set_ylabel('average return')
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plotting.save_figure(fig, path)


def finite_values(values):
  """The values as floats with None (a NaN/inf written to JSON) as NaN."""
  return np.array([np.nan if v is None else v for v in values], dtype=float)


def fmt_mean_std(values, digits=1):
  """'mean +- std' over the finite values, saying how many were not finite."""
  v = finite_values(values)
  ok = np.isfinite(v)
  if not ok.any():
    return f'non-finite ({v.size}/{v.size})'
  text = f'{np.mean(v[ok]):.{digits}f} +- {np.std(v[ok]):.{digits}f}'
  if not ok.all():
    text += f' (non-finite in {int((~ok).sum())}/{v.size})'
  return text


def plot_eval_steps(rows, path, *, title=None):
  """Held-out return after k = 0..K inner steps at the last evaluation."""
  ev = [r for r in rows if r.get('kind') == 'eval']
  if not ev:
    return None
  last = max(r['iteration'] for r in ev)
  ev = [r for r in ev if r['iteration'] == last]
  ks = sorted(int(k.rsplit('_', 1)[1]) for k in ev[0] if k.startswith('eval_return_'))
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for algorithm in dict.fromkeys(r['algorithm'] for r in ev):
    values = np.array([finite_values([r[f'eval_return_{k}'] for k in ks])
                       for r in ev if r['algorithm'] == algorithm])
    # Non-finite returns (a diverged inner step) are left out of mean and std.
    mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
    color = COLORS.get(algorithm)
    ax.plot(ks, mean, 'o-', ms=3, color=color, label=LABELS.get(algorithm, algorithm))
    if values.shape[0] > 1:
      ax.fill_between(ks, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
  ax.set_xticks(ks)
  ax.set_xlabel('inner policy-gradient steps k')
  ax.set_ylabel('average return (held-out tasks)')
  ax.set_title((title or '') + f' (iteration {last})', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plotting.save_figure(fig, path)


def plot_trajectories(goals, obs, path, *, title=None, num_episodes=3):
  """2D-navigation trajectories after 0..K inner steps, one panel per task.

  Args:
    goals: [num_tasks, 2].
    obs: positions [num_tasks, K + 1, E, T, 2] (from ``metarl.evaluate``).
    path: output PNG.
    title: figure title.
    num_episodes: episodes drawn per step.
  """
  num_tasks, num_k = goals.shape[0], obs.shape[1]
  fig, axes = plt.subplots(1, num_tasks, figsize=(3 * num_tasks, 3.2))
  axes = np.atleast_1d(axes)
  cmap = plt.get_cmap('viridis')
  for i, ax in enumerate(axes):
    for k in range(num_k):
      color = cmap(k / max(num_k - 1, 1))
      for e in range(min(num_episodes, obs.shape[2])):
        xy = obs[i, k, e]  # starts at the origin
        ax.plot(xy[:, 0], xy[:, 1], '-', color=color, lw=1, alpha=0.8,
                label=(f'after {k} step' + ('s' if k != 1 else '')) if e == 0 else None)
    ax.plot(*goals[i], 'r*', ms=12, label='goal')
    ax.plot(0, 0, 'ko', ms=4)
    ax.set_xlim(-0.7, 0.7)
    ax.set_ylim(-0.7, 0.7)
    ax.set_aspect('equal')
    ax.grid(alpha=0.3)
    if i == 0:
      ax.legend(fontsize=6, loc='lower left')
  if title:
    fig.suptitle(title, fontsize=9)
  return plotting.save_figure(fig, path)
