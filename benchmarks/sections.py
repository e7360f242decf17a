"""The sections of ``benchmarks.run``: each measures and returns its results.

``run_agreement``, ``run_main``, ``run_sweep``, ``run_learned_lr`` and
``run_memory`` take the run's config (``benchmarks.run.config_from_flags``)
and return plain JSON-able results, which ``benchmarks.report`` turns into
tables and plots.
"""

import json
import os
import subprocess
import sys

from absl import logging
import numpy as np

from benchmarks import agreement
from benchmarks import cases as cases_lib
from benchmarks import configs
from benchmarks import memory
from benchmarks import timing


def linear_fit(xs, ys):
  """Least-squares line ys ~ slope xs + intercept and its R^2 (None below 2 points)."""
  xs, ys = np.asarray(xs, float), np.asarray(ys, float)
  if len(xs) < 2:
    return None
  slope, intercept = np.polyfit(xs, ys, 1)
  pred = slope * xs + intercept
  ss_tot = float(np.sum((ys - ys.mean()) ** 2))
  r2 = 1.0 - float(np.sum((ys - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
  return {'slope_ms': float(slope), 'intercept_ms': float(intercept), 'r2': r2}



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
          cases[name] = cases_lib.prepare_torch(problem, algorithm, hp, impl=impl,
                                                threads=n)
          repeats[name] = cfg['torch_repeats']
      cases['jax_step'] = cases_lib.prepare_jax_step(problem, algorithm, hp,
                                           compiler_options=cfg['compiler_options'])
      repeats['jax_step'] = cfg['repeats']
      cases['jax_fused'] = cases_lib.prepare_jax_fused(
          problem, algorithm, hp, num_iterations=cfg['fused_iterations'],
          compiler_options=cfg['compiler_options'])
      repeats['jax_fused'] = cfg['fused_repeats']
      try:
        res = timing.interleaved(cases, rounds=cfg['rounds'], repeats=repeats,
                                 peak_rss=memory.PeakRSS)
      finally:
        cases_lib.restore_torch_threads()
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
      res = cases_lib.measure(
          cases_lib.prepare_jax_step(problem, algorithm, hp,
                                     compiler_options=cfg['compiler_options']),
          cfg['sweep_repeats'])
      ms.append(res['ms'])
      comp.append(res['compile_s'])
      logging.info('sweep %s=%s %s: jax %.3f ms', param, v, algorithm, res['ms'])
    out['jax_step_ms'][algorithm] = ms
    out['compile_s'][algorithm] = comp
    out['fit_jax'][algorithm] = linear_fit(spec['values'], ms)
  if cfg['sweep_torch']:
    for algorithm in spec['torch_algorithms']:
      ms = []
      for v in spec['values']:
        hp = dict(base, **{param: v})
        ms.append(min(
            cases_lib.measure(cases_lib.prepare_torch(problem, algorithm, hp,
                                                      impl='loop', threads=n),
                              cfg['sweep_torch_repeats'])['ms']
            for n in cfg['torch_threads']))
        logging.info('sweep %s=%s %s: torch loop %.2f ms', param, v, algorithm, ms[-1])
      out['torch_loop_ms'][algorithm] = ms
      out['fit_torch'][algorithm] = linear_fit(spec['values'], ms)
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
      'step': lambda algorithm, kind: cases_lib.prepare_jax_step(
          problem, algorithm, hp, compiler_options=cfg['compiler_options'],
          learned_lr=kind),
      'fused': lambda algorithm, kind: cases_lib.prepare_jax_fused(
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
        peaks.append(res['peak'] / configs.MiB)
        temps.append(res['temp'] / configs.MiB)
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

