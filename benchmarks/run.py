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

Writes ``<out_dir>/<name>.json``, ``<out_dir>/<name>.md`` and PNG plots.
JAX runs on its default device (CPU here, a GPU if one is present); PyTorch
runs on the CPU.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import maml_jax as mj
from benchmarks import agreement
from benchmarks import memory
from benchmarks import timing
from benchmarks import torch_reference as tr
from experiments import tasks as task_lib

_QUICK = flags.DEFINE_bool('quick', False, 'CI-sized run: tiny shapes, few repeats.')
_OUT_DIR = flags.DEFINE_string('out_dir', 'benchmarks/results', 'Where results go.')
_NAME = flags.DEFINE_string('name', None, 'Results file stem (default: latest / quick).')
_SECTIONS = flags.DEFINE_list(
    'sections', ['agreement', 'main', 'steps', 'directions', 'tasks', 'memory',
                 'learned_lr'],
    'Which sections to run.')
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
_FAST_COMPILE = flags.DEFINE_bool(
    'fast_compile', None,
    'Compile with XLA backend optimizations off (default: only with --quick).')

# Problem settings of the main table (SPEC section 4). meta_lr/optimizer only
# matter for the update's cost; the same optimizer runs on both sides.
FULL = {
    'sine': dict(num_tasks=25, num_support=10, num_inner_steps=3,
                 num_directions=10, delta=1e-2, inner_lr=0.01, meta_lr=1e-3,
                 optimizer='adam'),
    'mf': dict(num_tasks=10, num_support=1, num_inner_steps=3, num_directions=10,
               delta=1e-2, inner_lr=0.01, meta_lr=3e-3, optimizer='sgd'),
}
QUICK = {
    'sine': dict(FULL['sine'], num_tasks=4, num_support=5, num_inner_steps=2,
                 num_directions=2),
    'mf': dict(FULL['mf'], num_tasks=4, num_inner_steps=2, num_directions=2),
}
# Grids sized so the full run stays ~10 min on a loaded 2-core CPU (each
# GGS-MAML point is one XLA compile of ~5-20 s there).
SWEEPS_FULL = {
    'steps': dict(param='num_inner_steps', values=[1, 4, 8, 16, 32],
                  algorithms=['maml', 'ggs_maml'],
                  torch_algorithms=['maml', 'ggs_maml']),
    'directions': dict(param='num_directions', values=[1, 10, 25, 50, 100],
                       algorithms=['ggs_maml'], torch_algorithms=['ggs_maml']),
    'tasks': dict(param='num_tasks', values=[5, 25, 50, 100, 200],
                  algorithms=['maml', 'ggs_maml'],
                  torch_algorithms=['maml', 'ggs_maml']),
}
SWEEPS_QUICK = {
    'steps': dict(SWEEPS_FULL['steps'], values=[1, 2], algorithms=['maml'],
                  torch_algorithms=['maml']),
    'directions': dict(SWEEPS_FULL['directions'], values=[1, 2],
                       algorithms=['ggs_maml'], torch_algorithms=['ggs_maml']),
    'tasks': dict(SWEEPS_FULL['tasks'], values=[2, 4], algorithms=['maml'],
                  torch_algorithms=[]),
}
MEMORY_FULL = dict(width=1000, num_directions=10, steps=[1, 16, 64, 256],
                   rss_steps=[16, 256], algorithms=['maml', 'ggs_maml'],
                   rss_configs=['maml', 'maml+remat', 'ggs_maml+remat'])
MEMORY_QUICK = dict(width=32, num_directions=2, steps=[4, 16], rss_steps=[16],
                    algorithms=['maml'], rss_configs=['maml+remat'])
# Learned vs fixed inner step size (sine setting of the main table).
LEARNED_LR_FULL = dict(problem='sine', algorithms=['maml', 'ggs_maml'],
                       kind='per_parameter', modes=['step', 'fused'])
LEARNED_LR_QUICK = dict(LEARNED_LR_FULL, modes=['step'])
TARGETS = {  # (problem, algorithm): minimum speedup of fused maml_jax
    'fused_vs_torch_loop': {'maml': 30.0, 'ggs_maml': 25.0},
    'fused_vs_best_torch': {'maml': 10.0, 'ggs_maml': 10.0},
    'remat_peak_ratio_256_vs_16': 4.0,
    # Maximum time ratio learned / fixed step size, per meta-iteration.
    'learned_lr_overhead': 1.15,
}
MiB = 2.0 ** 20
_DEFAULT_TORCH_THREADS = torch.get_num_threads()


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------
def _optimizer(hp):
  return (optax.adam(hp['meta_lr']) if hp['optimizer'] == 'adam'
          else optax.sgd(hp['meta_lr']))


def _sampler(problem, hp, dtype=jnp.float32):
  if problem == 'sine':
    return lambda k: task_lib.sine_tasks(k, hp['num_tasks'],
                                         num_support=hp['num_support'],
                                         num_query=hp['num_support'], dtype=dtype)
  return lambda k: task_lib.matrix_factorization_tasks(
      k, hp['num_tasks'], num_samples=hp['num_support'], dtype=dtype)


def _linear_fit(xs, ys):
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  if len(xs) < 2:
    return None
  slope, intercept = np.polyfit(xs, ys, 1)
  pred = slope * xs + intercept
  ss_tot = float(np.sum((ys - ys.mean()) ** 2))
  r2 = 1.0 - float(np.sum((ys - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
  return {'slope_ms': float(slope), 'intercept_ms': float(intercept), 'r2': r2}


def _setup(problem, hp, seed=0, learned_lr=None):
  """(loss_fn, params, tasks); with ``learned_lr`` (a kind of
  ``mj.init_inner_lr``) params is ``mj.LearnedInnerLR(params, alpha)``, alpha
  initialised to ``hp['inner_lr']``."""
  loss_fn, params, tasks = agreement.problem_setup(
      problem, hp['num_tasks'], jax.random.PRNGKey(seed),
      num_support=hp['num_support'])
  if learned_lr is not None:
    params = mj.LearnedInnerLR(
        params, mj.init_inner_lr(params, hp['inner_lr'], learned_lr))
  return loss_fn, params, tasks


def _estimator(algorithm, loss_fn, hp):
  return agreement.jax_estimator(
      algorithm, loss_fn, inner_lr=hp['inner_lr'],
      num_inner_steps=hp['num_inner_steps'],
      num_directions=hp['num_directions'], delta=hp['delta'])


# ----------------------------------------------------------------------------
# Timers. Each ``prepare_*`` builds (and compiles) one implementation and
# returns a case: ``once`` runs one timed call, ``enter`` (optional) is called
# before each round of calls (PyTorch's thread count), ``divisor`` converts
# call time to time per meta-iteration, ``info`` carries compile time etc.
# ----------------------------------------------------------------------------
def prepare_jax_step(problem, algorithm, hp, *, compiler_options,
                     learned_lr=None):
  """maml_jax jitted meta-train step on a fixed task batch.

  ``learned_lr``: None (alpha fixed at ``hp['inner_lr']``) or the kind of
  learned step size (``mj.init_inner_lr``), trained with the parameters.
  """
  loss_fn, params, tasks = _setup(problem, hp, learned_lr=learned_lr)
  opt = _optimizer(hp)
  step = mj.make_train_step(_estimator(algorithm, loss_fn, hp), opt)
  state = mj.init_train_state(params, opt)
  key = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = step.lower(state, tasks, key).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - t0
  holder = {'state': state, 'i': 0}

  def once():
    holder['i'] += 1
    new_state, metrics = compiled(holder['state'], tasks,
                                  jax.random.fold_in(key, holder['i']))
    jax.block_until_ready((new_state, metrics))
    holder['state'] = new_state

  return {'once': once, 'divisor': 1,
          'info': {'compile_s': compile_s, 'xla_memory': memory.analysis_bytes(compiled)}}


def prepare_jax_fused(problem, algorithm, hp, *, num_iterations, compiler_options,
                      learned_lr=None):
  """maml_jax fused run: ``num_iterations`` meta-iterations per compiled call.

  ``learned_lr`` as in ``prepare_jax_step``.
  """
  loss_fn, params, _ = _setup(problem, hp, learned_lr=learned_lr)
  opt = _optimizer(hp)
  run = mj.make_fused_train(_estimator(algorithm, loss_fn, hp), opt,
                            _sampler(problem, hp), num_iterations)
  state = mj.init_train_state(params, opt)
  key = jax.random.PRNGKey(2)
  t0 = time.perf_counter()
  compiled = run.lower(state, key).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - t0
  holder = {'state': state}

  def once():
    new_state, metrics = compiled(holder['state'], key)
    jax.block_until_ready((new_state, metrics))
    holder['state'] = new_state

  def finite():
    return bool(np.all(np.isfinite(jax.tree.leaves(holder['state'].params)[0])))

  return {'once': once, 'divisor': num_iterations, 'finite': finite,
          'info': {'num_iterations': num_iterations, 'compile_s': compile_s,
                   'xla_memory': memory.analysis_bytes(compiled)}}


def prepare_torch(problem, algorithm, hp, *, impl, threads=None):
  """PyTorch meta-iteration on a fixed task batch, with ``threads`` intra-op threads."""
  _, params, tasks = _setup(problem, hp)
  np_params = jax.tree.map(np.asarray, params)
  tt = {'support': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.support)),
        'query': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.query))}
  trainer = tr.MetaTrainer(problem, algorithm, np_params, impl=impl,
                           inner_lr=hp['inner_lr'],
                           num_inner_steps=hp['num_inner_steps'],
                           meta_lr=hp['meta_lr'],
                           num_directions=hp['num_directions'], delta=hp['delta'])
  if hp['optimizer'] == 'sgd':
    trainer.optimizer = torch.optim.SGD(trainer.params, lr=hp['meta_lr'])
  n = _DEFAULT_TORCH_THREADS if threads is None else int(threads)
  return {'once': lambda: trainer.step(tt), 'divisor': 1,
          'enter': lambda: torch.set_num_threads(n), 'info': {'threads': n}}


def measure(case, repeats):
  """Times one case alone: median ms per meta-iteration and the raw times."""
  if 'enter' in case:
    case['enter']()
  try:
    times = timing.time_ms(case['once'], repeats)
  finally:
    torch.set_num_threads(_DEFAULT_TORCH_THREADS)
  d = case['divisor']
  return dict(case['info'], ms=statistics.median(times) / d,
              times_ms=[t / d for t in times])


# ----------------------------------------------------------------------------
# Sections.
# ----------------------------------------------------------------------------
def run_agreement(cfg):
  rows = []
  for problem in cfg['problems']:
    for algorithm in cfg['algorithms']:
      hp = cfg['hp'][problem]
      impls = cfg['agreement_impls']
      # Agreement is about numbers, not speed: always the fast XLA compile.
      first = agreement.compare(
          problem, algorithm, num_tasks=3,
          num_inner_steps=hp['num_inner_steps'],
          num_directions=min(hp['num_directions'], 5),
          delta=0.1 if algorithm == 'zo_maml' else hp['delta'],
          impl=impls[0], other_impls=tuple(impls[1:]),
          check_mean=not cfg['quick'] or algorithm == 'ggs_maml',
          compiler_options=agreement.FAST_COMPILE)
      for impl in impls:
        res = first if impl == impls[0] else first['other_impls'][impl]
        rows.append({'problem': problem, 'algorithm': algorithm, 'impl': impl,
                     'dtype': res['dtype'], 'max_rel_err': res['max_per_task'],
                     'mean_rel_err': res['mean'], 'all_finite': res['all_finite'],
                     'ok': res['all_finite'] and res['max_per_task'] <= 1e-4})
        logging.info('agreement %s %s %s: %.2e', problem, algorithm, impl,
                     res['max_per_task'])
  return rows


def run_main(cfg):
  """The main table: every implementation of a row timed in interleaved rounds."""
  rows = []
  for problem in cfg['problems']:
    hp = cfg['hp'][problem]
    for algorithm in cfg['algorithms']:
      row = {'problem': problem, 'algorithm': algorithm, 'hparams': hp}
      cases, repeats = {}, {}
      for impl in ('loop', 'func'):
        for n in cfg['torch_threads']:
          name = f'torch_{impl}@{n}'
          cases[name] = prepare_torch(problem, algorithm, hp, impl=impl, threads=n)
          repeats[name] = cfg['torch_repeats']
      cases['jax_step'] = prepare_jax_step(problem, algorithm, hp,
                                           compiler_options=cfg['compiler_options'])
      repeats['jax_step'] = cfg['repeats']
      cases['jax_fused'] = prepare_jax_fused(
          problem, algorithm, hp, num_iterations=cfg['fused_iterations'],
          compiler_options=cfg['compiler_options'])
      repeats['jax_fused'] = cfg['fused_repeats']
      try:
        res = timing.interleaved(cases, rounds=cfg['rounds'], repeats=repeats,
                                 peak_rss=memory.PeakRSS)
      finally:
        torch.set_num_threads(_DEFAULT_TORCH_THREADS)
      for impl in ('loop', 'func'):  # fastest thread count of each PyTorch version
        by_threads = {str(n): res[f'torch_{impl}@{n}'] for n in cfg['torch_threads']}
        best = min(by_threads, key=lambda n: by_threads[n]['ms'])
        row[f'torch_{impl}'] = dict(by_threads[best], by_threads={
            n: r['ms'] for n, r in by_threads.items()})
      row['jax_step'] = res['jax_step']
      row['jax_fused'] = dict(res['jax_fused'],
                              params_finite=cases['jax_fused']['finite']())
      loop, func = row['torch_loop'], row['torch_func']
      best = loop if loop['ms'] <= func['ms'] else func
      row['best_torch'] = {'ms': best['ms'], 'impl': 'loop' if best is loop else 'func'}
      stats = {
          'fused_vs_torch_loop': timing.ratio_stats(loop, row['jax_fused']),
          'fused_vs_best_torch': timing.ratio_stats(best, row['jax_fused']),
          'step_vs_torch_loop': timing.ratio_stats(loop, row['jax_step']),
          'step_vs_best_torch': timing.ratio_stats(best, row['jax_step']),
      }
      row['speedup_stats'] = stats
      # Headline: the median of the per-round ratios (robust to load drift).
      row['speedup'] = {k: v['round_median'] for k, v in stats.items()}
      logging.info('%s %s: torch loop %.2f ms, func %.2f ms, jax step %.3f ms, '
                   'fused %.3f ms (x%.1f vs loop, x%.1f vs best)', problem,
                   algorithm, loop['ms'], func['ms'], row['jax_step']['ms'],
                   row['jax_fused']['ms'], row['speedup']['fused_vs_torch_loop'],
                   row['speedup']['fused_vs_best_torch'])
      rows.append(row)
  return rows


def run_sweep(name, cfg):
  spec = cfg['sweeps'][name]
  param = spec['param']
  out = {'param': param, 'values': spec['values'], 'problem': cfg['sweep_problem'],
         'jax_step_ms': {},
         'torch_loop_ms': {}, 'fit_jax': {}, 'fit_torch': {}, 'compile_s': {}}
  problem = cfg['sweep_problem']
  base = cfg['hp'][problem]
  for algorithm in spec['algorithms']:
    ms, comp = [], []
    for v in spec['values']:
      hp = dict(base, **{param: v})
      res = measure(prepare_jax_step(problem, algorithm, hp,
                                     compiler_options=cfg['compiler_options']),
                    cfg['sweep_repeats'])
      ms.append(res['ms'])
      comp.append(res['compile_s'])
      logging.info('sweep %s=%s %s: jax %.3f ms', param, v, algorithm, res['ms'])
    out['jax_step_ms'][algorithm] = ms
    out['compile_s'][algorithm] = comp
    out['fit_jax'][algorithm] = _linear_fit(spec['values'], ms)
  if cfg['sweep_torch']:
    for algorithm in spec['torch_algorithms']:
      ms = []
      for v in spec['values']:
        hp = dict(base, **{param: v})
        ms.append(min(
            measure(prepare_torch(problem, algorithm, hp, impl='loop', threads=n),
                    cfg['sweep_torch_repeats'])['ms']
            for n in cfg['torch_threads']))
        logging.info('sweep %s=%s %s: torch loop %.2f ms', param, v, algorithm, ms[-1])
      out['torch_loop_ms'][algorithm] = ms
      out['fit_torch'][algorithm] = _linear_fit(spec['values'], ms)
  return out


def run_learned_lr(cfg):
  """Learned (Meta-SGD) vs fixed inner step size, timed in alternating rounds.

  One row per algorithm and timed mode ('step': the jitted train step on a
  fixed batch; 'fused': ``mj.make_fused_train``, per meta-iteration). The
  same estimator serves both variants; only the params differ (a
  ``LearnedInnerLR`` for 'learned'). ``ratio`` = learned ms / fixed ms (the
  medians of all calls); ``ratio_stats`` adds the per-round ratios.
  """
  spec = cfg['learned_lr']
  problem = spec['problem']
  hp = cfg['hp'][problem]
  prepare = {
      'step': lambda algorithm, kind: prepare_jax_step(
          problem, algorithm, hp, compiler_options=cfg['compiler_options'],
          learned_lr=kind),
      'fused': lambda algorithm, kind: prepare_jax_fused(
          problem, algorithm, hp, num_iterations=cfg['fused_iterations'],
          compiler_options=cfg['compiler_options'], learned_lr=kind),
  }
  repeats = {'step': cfg['repeats'], 'fused': cfg['fused_repeats']}
  rows = []
  for algorithm in spec['algorithms']:
    for mode in spec['modes']:
      cases = {'fixed': prepare[mode](algorithm, None),
               'learned': prepare[mode](algorithm, spec['kind'])}
      res = timing.interleaved(cases, rounds=cfg['rounds'],
                               repeats={k: repeats[mode] for k in cases})
      stats = timing.ratio_stats(res['learned'], res['fixed'])
      row = {'problem': problem, 'algorithm': algorithm, 'mode': mode,
             'kind': spec['kind'], 'hparams': hp,
             'fixed': res['fixed'], 'learned': res['learned'],
             'ratio': stats['ratio'], 'ratio_stats': stats}
      if mode == 'fused':
        for k in cases:
          row[k]['params_finite'] = cases[k]['finite']()
      logging.info('learned_lr %s %s %s: fixed %.3f ms, learned %.3f ms, '
                   'ratio %.3f (rounds %.3f-%.3f)', problem, algorithm, mode,
                   res['fixed']['ms'], res['learned']['ms'], stats['ratio'],
                   stats['round_min'], stats['round_max'])
      rows.append(row)
  return rows


def run_memory(cfg):
  spec = cfg['memory']
  out = {'width': spec['width'], 'num_params': memory.num_params(spec['width']),
         'num_directions': spec['num_directions'], 'steps': spec['steps'],
         'analysis_mib': {}, 'temp_mib': {}, 'rss': {}}
  for algorithm in spec['algorithms']:
    for remat in (False, True):
      label = f'{algorithm}{"+remat" if remat else ""}'
      peaks, temps = [], []
      for n in spec['steps']:
        res = memory.compiled_memory(algorithm, n, remat, width=spec['width'],
                                     num_directions=spec['num_directions'],
                                     compiler_options=cfg['compiler_options'])
        peaks.append(res['peak'] / MiB)
        temps.append(res['temp'] / MiB)
        logging.info('memory %s N=%d: %.1f MiB', label, n, peaks[-1])
      out['analysis_mib'][label] = peaks
      out['temp_mib'][label] = temps
      rss = {}
      for n in (spec['rss_steps'] if label in spec['rss_configs'] else []):
        cmd = [sys.executable, '-m', 'benchmarks.memory', algorithm, str(n),
               'remat' if remat else 'none', str(spec['width']),
               str(spec['num_directions']),
               'fast' if cfg['compiler_options'] else 'default']
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              cwd=os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__))))
        line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
        if proc.returncode or not line:
          rss[str(n)] = {'error': proc.stderr[-2000:]}
        else:
          rss[str(n)] = json.loads(line[-1][len('RESULT '):])
        logging.info('memory rss %s N=%d: %s', label, n, rss[str(n)].get(
            'rss_increase_mib', rss[str(n)].get('error', '')[-200:]))
      out['rss'][label] = rss
  steps = spec['steps']
  if 16 in steps and 256 in steps:
    i16, i256 = steps.index(16), steps.index(256)
    out['ratio_256_vs_16'] = {k: v[i256] / v[i16]
                              for k, v in out['analysis_mib'].items()}
  return out


# ----------------------------------------------------------------------------
# Targets, report, plots.
# ----------------------------------------------------------------------------
def check_targets(results):
  checks = []
  for row in results.get('main', []):
    if row['problem'] != 'sine':
      continue
    for name in ('fused_vs_torch_loop', 'fused_vs_best_torch'):
      target = TARGETS[name].get(row['algorithm'])
      if target is not None:
        got = row['speedup'][name]
        checks.append({'target': f'sine {row["algorithm"]} {name} >= {target:g}x',
                       'measured': got, 'met': got >= target})
  limit = TARGETS['learned_lr_overhead']
  for row in results.get('learned_lr', []):
    if row['problem'] == 'sine':
      checks.append({'target': f'sine {row["algorithm"]} {row["mode"]} learned '
                               f'{row["kind"]} / fixed step size <= {limit:g}x',
                     'measured': row['ratio'], 'met': row['ratio'] <= limit})
  ratios = results.get('memory', {}).get('ratio_256_vs_16', {})
  for label, ratio in ratios.items():
    if label.endswith('+remat'):
      limit = TARGETS['remat_peak_ratio_256_vs_16']
      checks.append({'target': f'{label} peak(N=256)/peak(N=16) <= {limit:g}',
                     'measured': ratio, 'met': ratio <= limit})
  return checks


def _fmt(x, digits=2):
  if x is None:
    return '-'
  if isinstance(x, float):
    return f'{x:.{digits}f}'
  return str(x)


def cfg_rounds(results):
  return results['meta']['config']['rounds']


def markdown(results):
  meta = results['meta']
  lines = [f'# maml_jax benchmark results ({meta["name"]})', '',
           f'- Command: `{meta["command"]}`',
           f'- Date (UTC): {meta["date"]}; wall time {meta["wall_s"]:.0f} s',
           f'- Git commit: {meta.get("git_commit")}',
           f'- JAX {meta["jax"]} on {meta["jax_devices"]}; PyTorch {meta["torch"]} '
           f'(CPU, {meta["torch_threads"]} threads); {meta["cpu_count"]} CPUs '
           f'({meta["processor"]})',
           f'- Load average at start / end: {meta["load_start"]} / {meta["load_end"]}',
           '- Seconds per section: ' + ', '.join(
               f'{k} {v:.0f}' for k, v in meta['section_s'].items()),
           f'- XLA fast compile (backend optimizations off): {meta["fast_compile"]}',
           '- Times are medians over repeats, ms per meta-iteration (meta-gradient '
           'of the task batch + optimizer update).', '']
  if results.get('agreement'):
    lines += ['## Agreement with PyTorch (same params, tasks, directions)', '',
              '| problem | algorithm | torch impl | dtype | max rel. err (per task) '
              '| rel. err (task mean) | ok |', '|---|---|---|---|---|---|---|']
    for r in results['agreement']:
      mean = '-' if r['mean_rel_err'] is None else f'{r["mean_rel_err"]:.1e}'
      lines.append(f'| {r["problem"]} | {r["algorithm"]} | {r["impl"]} | {r["dtype"]} '
                   f'| {r["max_rel_err"]:.1e} | {mean} | {r["ok"]} |')
    lines.append('')
  if results.get('main'):
    lines += ['## Time per meta-iteration', '',
              f'Every implementation of a row is timed in turn, in {cfg_rounds(results)} '
              'rounds, so that load drift hits all of them; ms are medians over all '
              'calls, speedups are the median of the per-round ratios, with their '
              'range over the rounds in brackets.', '',
              '| problem | algorithm | torch loop ms | torch.func ms | jax step ms '
              '| jax fused ms | fused vs loop | fused vs best torch | step vs loop '
              '| compile s (step / fused) | XLA peak MiB (step) | torch threads (loop / func) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']

    def speedup(r, name):
      st = r['speedup_stats'][name]
      return f'{st["round_median"]:.1f}x ({st["round_min"]:.1f}-{st["round_max"]:.1f})'

    for r in results['main']:
      xla = r['jax_step']['xla_memory'].get('peak')
      lines.append(
          f'| {r["problem"]} | {r["algorithm"]} | {r["torch_loop"]["ms"]:.2f} '
          f'| {r["torch_func"]["ms"]:.2f} | {r["jax_step"]["ms"]:.3f} '
          f'| {r["jax_fused"]["ms"]:.3f} | {speedup(r, "fused_vs_torch_loop")} '
          f'| {speedup(r, "fused_vs_best_torch")} | {speedup(r, "step_vs_torch_loop")} '
          f'| {r["jax_step"]["compile_s"]:.1f} / {r["jax_fused"]["compile_s"]:.1f} '
          f'| {_fmt(None if xla is None else xla / MiB, 3)} '
          f'| {r["torch_loop"]["threads"]} / {r["torch_func"]["threads"]} |')
    lines += ['', 'Peak RSS while each implementation ran its first round (MiB; process '
              'high-water mark reset before it; increase over the RSS at its start in '
              'brackets):', '',
              '| problem | algorithm | torch loop | torch.func | jax step | jax fused |',
              '|---|---|---|---|---|---|']
    for r in results['main']:
      cells = []
      for k in ('torch_loop', 'torch_func', 'jax_step', 'jax_fused'):
        cells.append(f'{_fmt(r[k]["rss_peak_mib"], 0)} (+{_fmt(r[k]["rss_increase_mib"], 1)})')
      lines.append(f'| {r["problem"]} | {r["algorithm"]} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  for name in ('steps', 'directions', 'tasks'):
    sw = results.get('sweeps', {}).get(name)
    if not sw:
      continue
    lines += [f'## Time vs {sw["param"]} ({sw["problem"]}; jax = jitted step, '
              'torch = loop)', '']
    algos = list(sw['jax_step_ms'])
    talgos = list(sw['torch_loop_ms'])
    lines.append('| ' + sw['param'] + ' | ' + ' | '.join(
        [f'jax {a} ms' for a in algos] + [f'torch {a} ms' for a in talgos]) + ' |')
    lines.append('|---' * (1 + len(algos) + len(talgos)) + '|')
    for i, v in enumerate(sw['values']):
      cells = [f'{sw["jax_step_ms"][a][i]:.3f}' for a in algos]
      cells += [f'{sw["torch_loop_ms"][a][i]:.1f}' for a in talgos]
      lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    for side, fits in (('jax', sw['fit_jax']), ('torch loop', sw['fit_torch'])):
      for a, fit in fits.items():
        if fit:
          lines.append(f'- Linear fit, {side} {a}: {fit["slope_ms"]:.4g} ms per unit '
                       f'of {sw["param"]} + {fit["intercept_ms"]:.4g} ms, '
                       f'R^2 = {fit["r2"]:.4f}')
    lines.append('')
  mem = results.get('memory')
  if mem:
    labels = list(mem['analysis_mib'])
    lines += [f'## Peak memory of one task\'s meta-gradient vs N (MLP 1-{mem["width"]}-'
              f'{mem["width"]}-1, {mem["num_params"]:,} parameters, b = '
              f'{mem["num_directions"]} for GGS)', '',
              'XLA compiled memory analysis, arguments + outputs + temporaries (MiB):', '',
              '| N | ' + ' | '.join(labels) + ' |', '|---' * (1 + len(labels)) + '|']
    for i, n in enumerate(mem['steps']):
      lines.append(f'| {n} | ' + ' | '.join(
          f'{mem["analysis_mib"][l][i]:.1f}' for l in labels) + ' |')
    if mem.get('ratio_256_vs_16'):
      lines += ['', 'Ratio peak(N=256) / peak(N=16): ' + ', '.join(
          f'{k} {v:.2f}x' for k, v in mem['ratio_256_vs_16'].items())]
    lines += ['', 'Measured in a fresh subprocess per configuration (compile, reset the '
              'RSS high-water mark, run once): peak RSS increase during the run, MiB:', '',
              '| configuration | N | RSS increase MiB | run s |', '|---|---|---|---|']
    for label, per_n in mem['rss'].items():
      for n, r in per_n.items():
        if 'error' in r:
          lines.append(f'| {label} | {n} | error | - |')
        else:
          lines.append(f'| {label} | {n} | {_fmt(r["rss_increase_mib"], 1)} '
                       f'| {r["run_s"]:.2f} |')
    lines.append('')
  if results.get('learned_lr'):
    lines += ['## Learned vs fixed inner step size', '',
              'Meta-SGD (params = `mj.LearnedInnerLR(params, mj.init_inner_lr('
              'params, alpha, kind))`, alpha trained by the same Adam) against '
              'the same estimator with alpha fixed. ms per meta-iteration (step: '
              'jitted train step on a fixed batch; fused: `mj.make_fused_train`), '
              f'both variants timed in turn in {cfg_rounds(results)} rounds; ratio '
              '= learned ms / fixed ms, with the median and range of the '
              'per-round ratios in brackets.', '',
              '| problem | algorithm | alpha | timed | fixed ms | learned ms | ratio '
              '| per-round ratio | compile s (fixed / learned) '
              '| XLA peak MiB (fixed / learned) |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in results['learned_lr']:
      st = r['ratio_stats']
      mib = [r[k]['xla_memory'].get('peak') for k in ('fixed', 'learned')]
      lines.append(
          f'| {r["problem"]} | {r["algorithm"]} | {r["kind"]} | {r["mode"]} '
          f'| {r["fixed"]["ms"]:.3f} | {r["learned"]["ms"]:.3f} | {r["ratio"]:.3f} '
          f'| {st["round_median"]:.3f} ({st["round_min"]:.3f}-{st["round_max"]:.3f}) '
          f'| {r["fixed"]["compile_s"]:.1f} / {r["learned"]["compile_s"]:.1f} '
          '| ' + ' / '.join(_fmt(None if m is None else m / MiB, 3) for m in mib)
          + ' |')
    lines.append('')
  lines += ['## Targets', '']
  if not results.get('targets'):
    lines += ['Not evaluated: they need the sine rows of the main table, the '
              'memory sweep at N = 16 and 256 or the learned_lr section (the '
              'full run).', '']
  else:
    if meta['quick'] or meta['fast_compile']:
      lines += ['(Smoke-run shapes or unoptimized XLA: these do NOT evaluate the '
                'targets, which are defined for the full run.)', '']
    lines += ['| target | measured | met |', '|---|---|---|']
    for t in results['targets']:
      lines.append(f'| {t["target"]} | {t["measured"]:.2f} | {t["met"]} |')
    lines.append('')
  return '\n'.join(lines)


def plots(results, out_dir, stem):
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


def _git_commit():
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True, check=False,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'maml_jax'],
                           capture_output=True, text=True, check=False,
                           cwd=os.path.dirname(os.path.abspath(__file__)))
    return out.stdout.strip() + (' (maml_jax/ modified)' if dirty.stdout.strip() else '')
  except OSError:
    return None


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
      'hp': QUICK if quick else FULL,
      'rounds': _ROUNDS.value or (1 if quick else 5),
      'repeats': _REPEATS.value or (2 if quick else 4),
      'fused_repeats': _REPEATS.value or 2,
      'sweep_repeats': _REPEATS.value or (2 if quick else 5),
      'torch_repeats': _REPEATS.value or 2,
      'sweep_torch_repeats': 1 if quick else 2,
      'fused_iterations': _FUSED_ITERATIONS.value or (2 if quick else 20),
      'sweeps': SWEEPS_QUICK if quick else SWEEPS_FULL,
      'sweep_torch': _SWEEP_TORCH.value,
      'memory': MEMORY_QUICK if quick else MEMORY_FULL,
      'learned_lr': LEARNED_LR_QUICK if quick else LEARNED_LR_FULL,
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
      results['agreement'] = run_agreement(cfg)
    elif name == 'main':
      results['main'] = run_main(cfg)
    elif name in ('steps', 'directions', 'tasks'):
      results['sweeps'][name] = run_sweep(name, cfg)
    elif name == 'memory':
      results['memory'] = run_memory(cfg)
    elif name == 'learned_lr':
      results['learned_lr'] = run_learned_lr(cfg)
    else:
      raise ValueError(f'unknown section {name!r}')
    section_s[name] = time.time() - t0
  results['targets'] = check_targets(results)
  dev = jax.devices()[0]
  results['meta'] = {
      'command': ' '.join(['python -m benchmarks.run'] + sys.argv[1:]),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
      'wall_s': time.time() - t_start,
      'section_s': section_s,
      'git_commit': _git_commit(),
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


def main(argv):
  del argv
  cfg = config_from_flags()
  stem = _NAME.value or ('quick' if cfg['quick'] else 'latest')
  out_dir = _OUT_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  results = run_benchmarks(cfg)
  results['meta']['name'] = stem
  if _PLOTS.value:
    results['plots'] = [os.path.basename(p) for p in plots(results, out_dir, stem)]
  with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
    json.dump(results, f, indent=1, default=float)
  md = markdown(results)
  with open(os.path.join(out_dir, f'{stem}.md'), 'w') as f:
    f.write(md + '\n')
  print(md)


if __name__ == '__main__':
  app.run(main)
