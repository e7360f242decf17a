"""Figures of the experiments (matplotlib, Agg backend, small PNGs)."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import rundir  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.summaries import arm_label  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.summaries import row_arm  # pylint: disable=g-import-not-at-top,wrong-import-position

COLORS = {
    'maml': 'tab:blue',
    'fo_maml': 'tab:orange',
    'zo_maml': 'tab:green',
    'ggs_maml': 'tab:red',
    'hf_maml': 'tab:purple',
}
DPI = 100


def save_figure(fig, path):
  """Saves ``fig`` to ``path`` (process 0 of a multi-process run only)."""
  if rundir.is_writer():
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def curves_by_algorithm(rows, metric):
  """``{arm: (iterations [T], values [num_seeds, T])}`` from metric rows.

  The arm is the algorithm, or 'algorithm@alpha=<value>' for the rows of an
  ``--inner_lrs`` grid (``summaries.row_arm``). Missing (None) values become NaN.
  """
  data = {}
  for r in rows:
    if r.get(metric, None) is None and metric not in r:
      continue
    v = r.get(metric)
    data.setdefault(row_arm(r), {}).setdefault(r['seed'], {})[
        r['iteration']] = np.nan if v is None else v
  out = {}
  for algorithm, by_seed in data.items():
    iterations = sorted(set().union(*[set(d) for d in by_seed.values()]))
    values = np.array([[d.get(i, np.nan) for i in iterations]
                       for _, d in sorted(by_seed.items())], float)
    out[algorithm] = (np.asarray(iterations), values)
  return out


def plot_learning_curves(rows, path, *, metric='test_loss',
                         ylabel='meta-test loss', title=None, logy=True,
                         band='std', reference=None):
  """Loss vs meta-iterations per algorithm, mean over seeds with a band.

  Args:
    rows: metric rows (``algorithm``, ``seed``, ``iteration``, ``metric``).
    path: output PNG path.
    metric: row key to plot.
    ylabel: y axis label.
    title: figure title.
    logy: log-scale y axis.
    band: 'std' (mean +- std over seeds) or 'minmax'.
    reference: optional (value, label) drawn as a horizontal line.

  Returns:
    ``path``.
  """
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for algorithm, (its, values) in curves_by_algorithm(rows, metric).items():
    mean = np.nanmean(values, axis=0)
    if band == 'minmax':
      lo, hi = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    else:
      std = np.nanstd(values, axis=0)
      lo, hi = mean - std, mean + std
      if logy:
        lo = np.where(lo > 0, lo, mean)
    line, = ax.plot(its, mean, label=f'{arm_label(algorithm)} '
                    f'({values.shape[0]} seeds)', color=COLORS.get(algorithm))
    color = line.get_color()
    if values.shape[0] > 1:
      ax.fill_between(its, lo, hi, color=color, alpha=0.2, linewidth=0)
  if reference is not None:
    ax.axhline(reference[0], color='k', ls=':', lw=1, label=reference[1])
  if logy:
    ax.set_yscale('log')
  ax.set_xlabel('meta-iteration')
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def load_k_step_curves(kshot_json, arms=None):
  """``{arm: [num_seeds, K + 1] array}`` from a sine run's kshot.json."""
  import json  # pylint: disable=g-import-not-at-top
  with open(kshot_json) as f:
    mse = json.load(f)['mse']
  return {a: np.asarray(v, float) for a, v in mse.items()
          if arms is None or a in arms}


def plot_k_step_curves(curves, path, *, title=None, logy=False, styles=None,
                       marks=None, ylim=None):
  """Meta-test MSE vs adaptation steps k.

  Args:
    curves: ``{arm: array [num_seeds, K + 1]}`` (MSE after k = 0..K steps,
      per seed); an arm is an algorithm or ``summaries.arm_name``'s
      'algorithm@alpha=<value>'.
    path: output PNG path.
    title: figure title.
    logy: log-scale y axis.
    styles: optional ``{arm: (label, color, linestyle)}`` overriding the
      defaults (the algorithm's label and color, solid line).
    marks: optional x positions of dotted vertical lines (e.g. k = N).
    ylim: optional (bottom, top) of the y axis (curves beyond it are cut).

  Returns:
    ``path``.
  """
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for algorithm, values in curves.items():
    values = np.asarray(values, float)
    ks = np.arange(values.shape[1])
    mean, std = values.mean(0), values.std(0)
    label, color, ls = (styles or {}).get(
        algorithm, (arm_label(algorithm), COLORS.get(algorithm), '-'))
    line, = ax.plot(ks, mean, marker='o', ls=ls, ms=3, color=color,
                    label=label)
    color = line.get_color()
    if values.shape[0] > 1:
      lo = mean - std
      if logy:  # a band reaching 0 or below would cover the whole axis
        lo = np.where(lo > 0, lo, mean)
      ax.fill_between(ks, lo, mean + std, color=color, alpha=0.2,
                      linewidth=0)
  for x in marks or ():
    ax.axvline(x, color='k', ls=':', lw=1)
  if logy:
    ax.set_yscale('log')
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel('adaptation steps k')
  ax.set_ylabel('meta-test MSE')
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_sine_fit(x, y_true, support, predictions, path, *, title=None):
  """The classic sine picture: true curve, support points, predictions.

  Args:
    x: [P] grid.
    y_true: [P] true curve on the grid.
    support: (x [K], y [K]) support points.
    predictions: ``{label: [P]}`` (e.g. before and after k steps).
    path: output PNG path.
    title: figure title.

  Returns:
    ``path``.
  """
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.plot(x, y_true, 'k-', lw=2, label='true function')
  styles = ['--', '-', '-.', ':']
  for i, (label, y) in enumerate(predictions.items()):
    ax.plot(x, y, styles[i % len(styles)], label=label)
  ax.plot(np.ravel(support[0]), np.ravel(support[1]), '^', color='tab:red',
          ms=7, label=f'support ({np.size(support[0])} points)')
  ax.set_xlabel('x')
  ax.set_ylabel('y')
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return save_figure(fig, path)


ESTIMATOR_STYLES = {
    'zo': ('ZO (eq. 17)', 'tab:green'),
    'ggs': ('GGS (eq. 18)', 'tab:red'),
    'zo_centered': ('ZO with (uu^T - I) (not the paper\'s)', 'tab:gray'),
}


def plot_task_predictions(task, predictions, path, *, title, max_query=10):
  """One task: support images (with labels), then a row of query images per arm.

  Args:
    task: ``mj.Task`` of ONE task (host arrays; images [n, H, W, 1]).
    predictions: ``{arm: [num_query] predicted labels}`` after adaptation.
    path: PNG path.
    title: figure title.
    max_query: query images shown per row.
  """
  sx, sy = np.asarray(task.support['x'])[..., 0], np.asarray(task.support['y'])
  qx, qy = np.asarray(task.query['x'])[..., 0], np.asarray(task.query['y'])
  order = np.argsort(qy, kind='stable')
  show = order[np.linspace(0, len(order) - 1, min(max_query, len(order))
                           ).astype(int)]
  cols = max(len(sy), len(show))
  rows = 1 + len(predictions)
  fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols + 1.2, 1.15 * rows),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for i in range(len(sy)):
    axes[0, i].imshow(sx[i], cmap='gray_r', vmin=0, vmax=1)
    axes[0, i].set_title(f'class {sy[i]}', fontsize=7)
  axes[0, 0].text(-0.3, 0.5, 'support', transform=axes[0, 0].transAxes,
                  ha='right', va='center', fontsize=8)
  for r, (arm, pred) in enumerate(predictions.items(), start=1):
    pred = np.asarray(pred)
    for c, q in enumerate(show):
      ax = axes[r, c]
      ax.imshow(qx[q], cmap='gray_r', vmin=0, vmax=1)
      ok = pred[q] == qy[q]
      ax.set_title(f'{pred[q]} ({qy[q]})', fontsize=7,
                   color='tab:green' if ok else 'tab:red')
    axes[r, 0].text(-0.3, 0.5, arm_label(arm),
                    transform=axes[r, 0].transAxes, ha='right', va='center',
                    fontsize=8)
  fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)


def plot_estimator_errors(results, path, *, title=None):
  """Relative Hessian-vector-product error vs delta and vs b.

  Args:
    results: ``{problem: {'delta': sweep, 'b': sweep}}`` where a sweep is
      ``{'x': grid, 'b' or 'delta': the fixed value, 'floor': ZO bias floor,
      est: (mean [G], std [G]), est + '_smoothing': (mean, std)}`` for the
      estimators of ``ESTIMATOR_STYLES`` (total error solid, smoothing part
      dashed, delta sweep only).
    path: output PNG path.
    title: figure title.

  Returns:
    ``path``.
  """
  problems = list(results)
  fig, axes = plt.subplots(len(problems), 2, figsize=(10, 3.6 * len(problems)),
                           squeeze=False)
  for row, name in enumerate(problems):
    for col, sweep in enumerate(('delta', 'b')):
      ax = axes[row, col]
      data = results[name][sweep]
      x = np.asarray(data['x'], float)
      for est, (label, color) in ESTIMATOR_STYLES.items():
        if est not in data:
          continue
        mean, std = (np.asarray(v, float) for v in data[est])
        ax.plot(x, mean, 'o-', ms=3, color=color, label=label + ': total')
        lo = np.where(mean - std > 0, mean - std, mean)
        ax.fill_between(x, lo, mean + std, color=color, alpha=0.15,
                        linewidth=0)
        if sweep == 'delta' and est + '_smoothing' in data and est != 'zo_centered':
          smooth = np.asarray(data[est + '_smoothing'][0], float)
          ax.plot(x, smooth, 's--', ms=2, lw=1, color=color,
                  label=label.split(' ')[0] + ': smoothing part')
      if sweep == 'b':
        ggs = np.asarray(data['ggs'][0], float)
        ax.plot(x, ggs[0] * np.sqrt(x[0] / x), 'k:', lw=1,
                label=r'$\propto 1/\sqrt{b}$')
        ax.set_xlabel(f'directions b (delta = {data["delta"]:g})')
      else:
        ax.set_xlabel(f'delta (b = {data["b"]})')
      if 'floor' in data:
        ax.axhline(data['floor'], color='tab:green', ls='-.', lw=1,
                   label='ZO bias floor |tr H|/2 / |Hv|')
      ax.set_xscale('log')
      ax.set_yscale('log')
      ax.set_ylabel('relative error of Hv')
      ax.set_title(name, fontsize=10)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=6)
  if title:
    fig.suptitle(title, fontsize=11)
  return save_figure(fig, path)
