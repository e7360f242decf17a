r"""maml_jax vs PyTorch: agreement, speed, compile time, memory and scaling.

    python -m benchmarks.run            # full run (about 10 min on a 2-core CPU)
    python -m benchmarks.run --quick    # CI-sized smoke run (tiny shapes)

Sections (``--sections``, all by default):

* ``agreement``: maml_jax and the PyTorch reference get the same parameters,
  tasks and Gaussian directions; relative error of the meta-gradients.
* ``main``: for each problem (sine regression, paper config: 25 tasks, K = 10,
  N = 3, MLP 1-40-40-1, b = 10; rank-one matrix factorization, d = 20, 10
  tasks) and algorithm, ms per meta-iteration (meta-gradient + optimizer
  update) of the PyTorch loop version, the torch.func version, the maml_jax
  jitted step and the maml_jax fused run (``mj.make_fused_train``, many
  iterations per compiled call, tasks sampled on device), compile times,
  XLA's memory analysis, the peak RSS of each timed phase, and the speedups.
  Medians over repeats, all in the same process and run.
* ``steps`` / ``directions`` / ``tasks``: time per meta-iteration vs N, b and
  the number of tasks per batch (sine config otherwise), with linear fits.
* ``memory``: peak memory of one task's meta-gradient vs N (MAML and GGS-MAML,
  with and without ``remat=True``) on an MLP 1-1000-1000-1 (~1M parameters),
  from XLA's compiled memory analysis, plus a fresh subprocess per
  configuration for the measured peak RSS of a run at a few N.
* ``learned_lr``: the cost of learning the inner step size. On the sine
  setting of the main table, MAML and GGS-MAML with a fixed alpha against the
  same estimator called with ``mj.LearnedInnerLR(params, init_inner_lr(params,
  alpha, 'per_parameter'))`` (Meta-SGD: one alpha per parameter, updated by
  the same Adam): ms per meta-iteration of the jitted step and the fused run,
  both variants timed in alternating rounds, and the ratio learned / fixed.
* ``convnet`` (not run by default: ~15 min on a loaded 2-core CPU): the
  few-shot conv net of Finn et al. (5-way 1-shot, 15 query images per class,
  32 tasks, N = 1, alpha = 0.4; MAML, FO-MAML, GGS-MAML with b = 10): the
  maml_jax step (task_batching='map', conv_impl='xla_vjp'; MAML also with the
  naive 'vmap' / 'xla'), the fused run, the PyTorch loop, torch.func and
  TorchOpt (if installed), timed in alternating rounds
  (``benchmarks/convnet.py``).

Writes ``<out_dir>/<name>.json``, then ``<out_dir>/<name>.md`` and PNG plots
from it (``benchmarks.report``, which rebuilds them from the JSON alone).
The settings and targets are in ``benchmarks/configs.py``, the timed
implementations in ``benchmarks/cases.py``, the sections in
``benchmarks/sections.py``.
JAX runs on its default device (CPU here, a GPU if one is present); PyTorch
runs on the CPU.
"""

import datetime
import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import torch

import maml_jax as mj
from benchmarks import agreement
from benchmarks import configs
from benchmarks import convnet
from benchmarks import report
from benchmarks import sections
from benchmarks import torch_reference as tr
from experiments import runtime

_QUICK = flags.DEFINE_bool('quick', False, 'CI-sized run: tiny shapes, few repeats.')
_OUT_DIR = flags.DEFINE_string('out_dir', 'benchmarks/results', 'Where results go.')
_NAME = flags.DEFINE_string('name', None, 'Results file stem (default: latest / quick).')
_SECTIONS = flags.DEFINE_list(
    'sections', ['agreement', 'main', 'steps', 'directions', 'tasks', 'memory',
                 'learned_lr'],
    'Which sections to run (also: convnet, not run by default).')
_PROBLEMS = flags.DEFINE_list('problems', ['sine', 'mf'], 'Problems of the main table.')
_ALGORITHMS = flags.DEFINE_list('algorithms', list(mj.ESTIMATORS),
                                'Algorithms of the main table and of the '
                                'agreement section (mj.ESTIMATORS names).')
_REPEATS = flags.DEFINE_integer(
    'repeats', None, 'Timed calls per case (per round in the main table; '
    'default: main 4 per round for the jitted step, 2 for PyTorch and the fused '
    'run; sweeps 5).', lower_bound=1)
_ROUNDS = flags.DEFINE_integer(
    'rounds', None, 'Main table: rounds in which every implementation of a row '
    'is timed in turn (default 5; 1 with --quick).', lower_bound=1)
_FUSED_ITERATIONS = flags.DEFINE_integer(
    'fused_iterations', None, 'Meta-iterations per fused compiled call.')
_SWEEP_TORCH = flags.DEFINE_bool('sweep_torch', True,
                                 'Also time the PyTorch loop version in the sweeps.')
_PLOTS = flags.DEFINE_bool('plots', True, 'Write PNG plots.')
_TORCH_THREADS = flags.DEFINE_list(
    'torch_threads', None,
    'PyTorch intra-op thread counts to try, e.g. 1,2; each torch figure is the '
    'best of them. Default 1,2 (1 with --quick): on a loaded machine 1 thread '
    'is much faster for these small tensors, on a quiet one 2 threads help '
    'torch.func a little (see BENCHMARKS.md).')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', None,
    'CPU devices to expose (jax_num_cpu_devices, set before JAX starts); the '
    'convnet section splits its tasks over them. Default: one per CPU core '
    'when the convnet section runs, else 1.', lower_bound=1)
_FAST_COMPILE = flags.DEFINE_bool(
    'fast_compile', None,
    'Compile with XLA backend optimizations off (default: only with --quick).')


def config_from_flags():
  quick = _QUICK.value
  for algorithm in _ALGORITHMS.value:
    if algorithm not in mj.ESTIMATORS or algorithm not in tr.ALGORITHMS:
      raise app.UsageError(
          f'--algorithms: {algorithm!r} is not an estimator with a PyTorch '
          f'reference; choose from {",".join(mj.ESTIMATORS)}')
  fast = _FAST_COMPILE.value if _FAST_COMPILE.value is not None else quick
  problems = _PROBLEMS.value
  if quick and not flags.FLAGS['problems'].present:
    problems = ['mf']  # cheap compiles; every code path still runs
  return {
      'quick': quick,
      'problems': problems,
      'algorithms': _ALGORITHMS.value,
      'agreement_impls': ['loop'] if quick else list(tr.IMPLS),
      'sweep_problem': 'mf' if quick else 'sine',
      'torch_threads': _TORCH_THREADS.value or ([1] if quick else [1, 2]),
      'hp': configs.QUICK if quick else configs.FULL,
      'rounds': _ROUNDS.value or (1 if quick else 5),
      'repeats': _REPEATS.value or (2 if quick else 4),
      'fused_repeats': _REPEATS.value or 2,
      'sweep_repeats': _REPEATS.value or (2 if quick else 5),
      'torch_repeats': _REPEATS.value or 2,
      'sweep_torch_repeats': 1 if quick else 2,
      'fused_iterations': _FUSED_ITERATIONS.value or (2 if quick else 20),
      'sweeps': configs.SWEEPS_QUICK if quick else configs.SWEEPS_FULL,
      'sweep_torch': _SWEEP_TORCH.value,
      'memory': configs.MEMORY_QUICK if quick else configs.MEMORY_FULL,
      'learned_lr': configs.LEARNED_LR_QUICK if quick else configs.LEARNED_LR_FULL,
      'convnet': configs.CONVNET_QUICK if quick else configs.CONVNET_FULL,
      'compiler_options': agreement.FAST_COMPILE if fast else None,
      'sections': _SECTIONS.value,
  }


def run_benchmarks(cfg):
  t_start = time.time()
  load_start = os.getloadavg() if hasattr(os, 'getloadavg') else None
  results = {'sweeps': {}}
  section_s = {}
  for name in cfg['sections']:
    t0 = time.time()
    if name == 'agreement':
      results['agreement'] = sections.run_agreement(cfg)
    elif name == 'main':
      results['main'] = sections.run_main(cfg)
    elif name in ('steps', 'directions', 'tasks'):
      results['sweeps'][name] = sections.run_sweep(name, cfg)
    elif name == 'memory':
      results['memory'] = sections.run_memory(cfg)
    elif name == 'learned_lr':
      results['learned_lr'] = sections.run_learned_lr(cfg)
    elif name == 'convnet':
      results['convnet'] = convnet.run_section(cfg)
    else:
      raise ValueError(f'unknown section {name!r}')
    section_s[name] = time.time() - t0
  results['targets'] = configs.check_targets(results)
  dev = jax.devices()[0]
  results['meta'] = {
      'command': ' '.join(['python -m benchmarks.run'] + sys.argv[1:]),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
      'wall_s': time.time() - t_start,
      'section_s': section_s,
      'git_commit': report.git_commit(),
      'jax': jax.__version__, 'torch': torch.__version__,
      'jax_devices': f'{dev.platform}: {getattr(dev, "device_kind", "")} '
                     f'x{jax.device_count()}',
      'torch_threads': torch.get_num_threads(),
      'cpu_count': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
      'load_start': None if load_start is None else [round(x, 1) for x in load_start],
      'load_end': ([round(x, 1) for x in os.getloadavg()]
                   if hasattr(os, 'getloadavg') else None),
      'fast_compile': cfg['compiler_options'] is not None,
      'quick': cfg['quick'],
      'config': {k: v for k, v in cfg.items() if k != 'compiler_options'},
  }
  return results


def set_cpu_devices(sections):
  """One JAX CPU device per core for the convnet section (or --cpu_devices).

  XLA:CPU runs one task's conv-net program on about one core; with one
  device per core, ``make_train_step(..., mesh=)`` runs a share of the tasks
  on each (BENCHMARKS.md, "Conv net"). Single-device programs (every other
  section) run on device 0 as before.
  """
  n = _CPU_DEVICES.value
  if n is None:
    n = (os.cpu_count() or 1) if 'convnet' in sections else 1
  if n > 1:
    have = runtime.set_cpu_device_count(n)
    if have != n:  # JAX already started (e.g. under pytest)
      logging.warning('--cpu_devices=%d not applied: JAX has %d CPU devices',
                      n, have)


def main(argv):
  del argv
  cfg = config_from_flags()
  set_cpu_devices(cfg['sections'])
  stem = _NAME.value or ('quick' if cfg['quick'] else 'latest')
  out_dir = _OUT_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  results = run_benchmarks(cfg)
  results['meta']['name'] = stem
  if _PLOTS.value:
    results['plots'] = [os.path.basename(p) for p in report.plots(results, out_dir, stem)]
  with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
    json.dump(results, f, indent=1, default=float)
  print(report.write_markdown(results, out_dir, stem))


if __name__ == '__main__':
  app.run(main)
