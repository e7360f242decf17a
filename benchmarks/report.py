"""Rebuilds a benchmark report from its results JSON: markdown tables and plots.

    python -m benchmarks.report benchmarks/results/latest.json
    python -m benchmarks.report results/latest.json   # relative to benchmarks/
    python -m benchmarks.report latest                # benchmarks/results/latest.json

Writes ``<stem>.md`` (and, with ``--plots``, the PNG plots) next to the JSON or
in ``--out_dir``, and prints the markdown. ``python -m benchmarks.run``,
``benchmarks.scaling`` and ``benchmarks.fewshot_memory`` write their reports
with these same functions after measuring (the renderers of ``benchmarks.tables``), so a
report rebuilt from a run's JSON is the one that run wrote. Only the JSON is read: this module
imports neither PyTorch nor JAX (matplotlib only for the plots) and measures
nothing.
"""

import json
import os
import subprocess

from absl import app
from absl import flags

from benchmarks import tables

_HERE = os.path.dirname(os.path.abspath(__file__))


def git_commit():
  """The short commit of this checkout, recorded in every results file.

  ``'<commit> (maml_jax/ modified)'`` when the library has uncommitted
  changes; None outside a git checkout or without git.
  """
  repo = os.path.dirname(_HERE)
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True, check=True, cwd=repo)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'maml_jax'],
                           capture_output=True, text=True, check=False, cwd=repo)
  except (OSError, subprocess.CalledProcessError):
    return None
  return out.stdout.strip() + (' (maml_jax/ modified)' if dirty.stdout.strip() else '')


def report_markdown(results):
  """The report of any results JSON: ``benchmarks.run``'s (``markdown``),
  ``benchmarks.scaling``'s or ``benchmarks.fewshot_memory``'s, told apart by
  their keys."""
  if 'peak_mib' in results:
    return tables.fewshot_memory_markdown(results)
  if 'settings' in results and 'rows' in results:
    return tables.scaling_markdown(results)
  return tables.markdown(results)


def plots(results, out_dir, stem):
  """Writes the sweep and memory plots as ``<out_dir>/<stem>_*.png``; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  for name, sw in results.get('sweeps', {}).items():
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    for a, ms in sw['jax_step_ms'].items():
      ax.plot(sw['values'], ms, 'o-', label=f'maml_jax {a}')
    for a, ms in sw['torch_loop_ms'].items():
      ax.plot(sw['values'], ms, 's--', label=f'PyTorch loop {a}')
    ax.set_xlabel(sw['param'])
    ax.set_ylabel('ms / meta-iteration')
    ax.set_yscale('log')
    ax.set_title(f'{sw["problem"]}: time vs {sw["param"]}')
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f'{stem}_time_vs_{name}.png')
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  mem = results.get('memory')
  if mem:
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=80)
    for label, mib in mem['analysis_mib'].items():
      ax.plot(mem['steps'], mib, 'o-' if 'remat' in label else 's--', label=label)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('inner steps N')
    ax.set_ylabel('peak MiB (XLA analysis)')
    ax.set_title(f'one task, MLP 1-{mem["width"]}-{mem["width"]}-1')
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f'{stem}_memory_vs_steps.png')
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written


def write_markdown(results, out_dir, stem):
  """Writes ``<out_dir>/<stem>.md`` (``report_markdown``) and returns the markdown."""
  md = report_markdown(results)
  with open(os.path.join(out_dir, f'{stem}.md'), 'w') as f:
    f.write(md + '\n')
  return md


def resolve(path):
  """The results JSON ``path`` names: a path, one relative to benchmarks/, or a stem.

  ``latest`` and ``results/latest.json`` both name
  ``benchmarks/results/latest.json``.
  """
  candidates = [path, os.path.join(_HERE, path)]
  if not path.endswith('.json'):
    candidates.append(os.path.join(_HERE, 'results', path + '.json'))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f'no results JSON at {path!r} (tried {candidates})')


def rebuild(path, *, out_dir=None, with_plots=True):
  """Rebuilds the report of the results JSON at ``path`` (see ``resolve``).

  Returns:
    The markdown, also written to ``<out_dir>/<stem>.md``; ``out_dir``
    defaults to the JSON's directory and ``stem`` is the JSON's file name
    without ``.json``.
  """
  path = resolve(path)
  with open(path) as f:
    results = json.load(f)
  out_dir = out_dir or os.path.dirname(os.path.abspath(path))
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.splitext(os.path.basename(path))[0]
  if with_plots:
    plots(results, out_dir, stem)
  return write_markdown(results, out_dir, stem)


def save_json_and_markdown(results, out_dir, name):
  """Writes ``<out_dir>/<name>.json`` and its report ``.md``, prints the report and where.

  For the standalone benchmark scripts (scaling, fewshot_memory);
  ``benchmarks.run`` writes its own JSON and plots, then ``write_markdown``.
  """
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, name)
  with open(base + '.json', 'w') as f:
    json.dump(results, f, indent=1)
  print(write_markdown(results, out_dir, name))
  print(f'Wrote {base}.json and {base}.md')


def define_flags():
  """The command line's flags (not defined on import: ``benchmarks.run``
  imports this module and has flags of the same names)."""
  flags.DEFINE_string('out_dir', None,
                      'Where the report goes (default: the directory of the JSON).')
  flags.DEFINE_bool('plots', True, 'Also redraw the PNG plots.')


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('usage: python -m benchmarks.report RESULTS.json [...]')
  for path in argv[1:]:
    print(rebuild(path, out_dir=flags.FLAGS.out_dir, with_plots=flags.FLAGS.plots))


if __name__ == '__main__':
  define_flags()
  app.run(main)
