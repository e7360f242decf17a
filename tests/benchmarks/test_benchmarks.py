"""Smoke test: ``python -m benchmarks.run --quick`` runs end to end and writes its results.

Runs the CLI in a subprocess (a fresh JAX, as a user would run it) with tiny
shapes and XLA backend optimizations off, then checks the structure and the
internal consistency of the JSON (every configured row present; medians,
ratios and fits are those of the times it reports), the markdown and the
plots, and that ``benchmarks.report`` rebuilds the same markdown from the JSON
alone. Timing values are not checked: the machine may be shared.
"""

import json
import os
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip('torch')

import maml_jax as mj

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
ALGORITHMS = mj.ESTIMATORS


@pytest.fixture(scope='module')
def quick_results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('bench')
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--quick', '--rounds=2',
       f'--out_dir={out_dir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out_dir / 'quick.json') as f:
    return out_dir, json.load(f), proc.stdout


def _product(*axes):
  """The (problem, algorithm, ...) row keys a config asks for, in run order."""
  keys = [()]
  for axis in axes:
    keys = [k + (v,) for k in keys for v in axis]
  return keys


def _chunks(xs, n):
  return [xs[i:i + n] for i in range(0, len(xs), n)]


def test_agreement_section(quick_results):
  """One row per problem, algorithm and torch implementation; ok means <= 1e-4."""
  _, res, _ = quick_results
  cfg = res['meta']['config']
  assert set(cfg['algorithms']) == set(ALGORITHMS)
  rows = res['agreement']
  assert [(r['problem'], r['algorithm'], r['impl']) for r in rows] == _product(
      cfg['problems'], cfg['algorithms'], cfg['agreement_impls'])
  for r in rows:
    assert r['ok'] and r['all_finite'], r
    assert 0 <= r['max_rel_err'] <= 1e-4
    assert r['dtype'] == 'float32'
    # --quick checks the task mean of GGS-MAML only (the other means are the
    # same vmapped code).
    assert (r['mean_rel_err'] is not None) == (r['algorithm'] == 'ggs_maml'), r
    if r['mean_rel_err'] is not None:
      assert 0 <= r['mean_rel_err'] <= 1e-4


def test_main_table(quick_results):
  """Every row present; ms, per-round medians and speedups are the quotients
  and medians of the times the JSON itself reports."""
  _, res, _ = quick_results
  cfg = res['meta']['config']
  rows = res['main']
  assert [(r['problem'], r['algorithm']) for r in rows] == _product(
      cfg['problems'], cfg['algorithms'])
  calls = {'torch_loop': cfg['torch_repeats'], 'torch_func': cfg['torch_repeats'],
           'jax_step': cfg['repeats'], 'jax_fused': cfg['fused_repeats']}
  for r in rows:
    assert r['hparams'] == cfg['hp'][r['problem']]
    for impl, n in calls.items():
      t = r[impl]
      assert len(t['times_ms']) == cfg['rounds'] * n, (r['algorithm'], impl)
      assert all(x > 0 for x in t['times_ms'])
      assert t['ms'] == pytest.approx(statistics.median(t['times_ms']))
      assert t['round_ms'] == pytest.approx(
          [statistics.median(c) for c in _chunks(t['times_ms'], n)])
      assert t['rss_peak_mib'] > 0
    for impl in ('torch_loop', 'torch_func'):  # the best thread count's times
      t = r[impl]
      assert list(t['by_threads']) == [str(n) for n in cfg['torch_threads']]
      assert t['ms'] == min(t['by_threads'].values())
      assert t['by_threads'][str(t['threads'])] == t['ms']
    best = r['torch_' + r['best_torch']['impl']]
    assert r['best_torch']['ms'] == best['ms'] == min(r['torch_loop']['ms'],
                                                      r['torch_func']['ms'])
    assert r['jax_fused']['num_iterations'] == cfg['fused_iterations']
    assert r['jax_fused']['params_finite']
    for impl in ('jax_step', 'jax_fused'):
      assert r[impl]['compile_s'] > 0
      xla = r[impl]['xla_memory']
      assert xla['peak'] == xla['argument'] + xla['output'] + xla['temp'] - xla['alias'] > 0
    pairs = {'fused_vs_torch_loop': (r['torch_loop'], r['jax_fused']),
             'fused_vs_best_torch': (best, r['jax_fused']),
             'step_vs_torch_loop': (r['torch_loop'], r['jax_step']),
             'step_vs_best_torch': (best, r['jax_step'])}
    assert set(r['speedup_stats']) == set(r['speedup']) == set(pairs)
    for name, (num, den) in pairs.items():
      st = r['speedup_stats'][name]
      assert st['ratio'] == pytest.approx(num['ms'] / den['ms'])
      assert st['per_round'] == pytest.approx(
          [a / b for a, b in zip(num['round_ms'], den['round_ms'])])
      assert len(st['per_round']) == cfg['rounds']
      assert st['round_median'] == pytest.approx(statistics.median(st['per_round']))
      assert (st['round_min'], st['round_max']) == (min(st['per_round']),
                                                    max(st['per_round']))
      assert r['speedup'][name] == st['round_median']


def test_sweeps_and_fits(quick_results):
  """Each sweep has the configured grid and algorithms; the fits are those of
  the times reported."""
  _, res, _ = quick_results
  cfg = res['meta']['config']
  assert list(res['sweeps']) == ['steps', 'directions', 'tasks']
  for name, spec in cfg['sweeps'].items():
    sw = res['sweeps'][name]
    assert (sw['param'], sw['values'], sw['problem']) == (
        spec['param'], spec['values'], cfg['sweep_problem'])
    assert list(sw['jax_step_ms']) == list(sw['fit_jax']) == spec['algorithms']
    assert list(sw['compile_s']) == spec['algorithms']
    assert list(sw['torch_loop_ms']) == list(sw['fit_torch']) == (
        spec['torch_algorithms'] if cfg['sweep_torch'] else [])
    for times, fits in ((sw['jax_step_ms'], sw['fit_jax']),
                        (sw['torch_loop_ms'], sw['fit_torch'])):
      for algorithm, ms in times.items():
        assert len(ms) == len(sw['values']) and all(t > 0 for t in ms), algorithm
        slope, intercept = np.polyfit(sw['values'], ms, 1)
        fit = fits[algorithm]
        assert fit['slope_ms'] == pytest.approx(slope)
        assert fit['intercept_ms'] == pytest.approx(intercept, abs=1e-9)
        assert fit['r2'] == pytest.approx(1.0)  # two points: an exact line
    for comp in sw['compile_s'].values():
      assert len(comp) == len(sw['values']) and all(c > 0 for c in comp)


def test_memory_section(quick_results):
  """Every configured label and N; the subprocess probes compiled the same
  programs as the in-process analysis."""
  _, res, _ = quick_results
  spec = res['meta']['config']['memory']
  mem = res['memory']
  assert (mem['width'], mem['num_directions'], mem['steps']) == (
      spec['width'], spec['num_directions'], spec['steps'])
  from benchmarks import memory  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda k: memory.mlp_params(k, spec['width']),
                          jax.random.PRNGKey(0))
  assert mem['num_params'] == sum(x.size for x in jax.tree.leaves(shapes))
  labels = [a + s for a in spec['algorithms'] for s in ('', '+remat')]
  assert list(mem['analysis_mib']) == list(mem['temp_mib']) == list(mem['rss']) == labels
  for label in labels:
    peaks, temps = mem['analysis_mib'][label], mem['temp_mib'][label]
    assert len(peaks) == len(temps) == len(mem['steps'])
    assert all(p >= t > 0 for p, t in zip(peaks, temps)), label
    probed = spec['rss_steps'] if label in spec['rss_configs'] else []
    assert list(mem['rss'][label]) == [str(n) for n in probed]
    for n, probe in mem['rss'][label].items():
      assert 'error' not in probe, probe
      assert probe['analysis']['peak'] / 2.0 ** 20 == pytest.approx(
          peaks[mem['steps'].index(int(n))])
      assert probe['run_s'] > 0 and probe['rss_peak_mib'] > 0
  assert any(mem['rss'].values())
  has_ratio = 16 in mem['steps'] and 256 in mem['steps']
  assert ('ratio_256_vs_16' in mem) == has_ratio


def test_learned_lr_section(quick_results):
  """Meta-SGD vs fixed step size: both variants per row, consistent ratios."""
  _, res, _ = quick_results
  cfg = res['meta']['config']
  spec = cfg['learned_lr']
  rows = res['learned_lr']
  assert [(r['algorithm'], r['mode']) for r in rows] == _product(
      spec['algorithms'], spec['modes'])
  assert [(r['algorithm'], r['mode']) for r in rows] == [('maml', 'step'),
                                                         ('ggs_maml', 'step')]
  for r in rows:
    assert r['problem'] == 'sine' and r['kind'] == 'per_parameter'
    assert r['hparams'] == cfg['hp']['sine']
    for variant in ('fixed', 'learned'):
      assert r[variant]['ms'] > 0 and r[variant]['compile_s'] > 0, variant
      assert len(r[variant]['round_ms']) == cfg['rounds'], variant
      assert len(r[variant]['times_ms']) == cfg['rounds'] * cfg['repeats'], variant
      assert r[variant]['ms'] == pytest.approx(
          statistics.median(r[variant]['times_ms']))
    assert r['ratio'] == pytest.approx(r['learned']['ms'] / r['fixed']['ms'])
    st = r['ratio_stats']
    assert st['ratio'] == r['ratio']
    assert st['per_round'] == pytest.approx(
        [a / b for a, b in zip(r['learned']['round_ms'], r['fixed']['round_ms'])])
    assert st['round_median'] == pytest.approx(statistics.median(st['per_round']))


def test_targets(quick_results):
  """The targets are those of the results written (recomputed from the JSON):
  in the quick run, one per learned_lr row, on the ratio that row reports."""
  from benchmarks import configs  # pylint: disable=g-import-not-at-top
  _, res, _ = quick_results
  assert res['targets'] == configs.check_targets(res)
  limit = configs.TARGETS['learned_lr_overhead']
  assert res['targets'] == [
      {'target': f'sine {r["algorithm"]} {r["mode"]} learned {r["kind"]} / fixed '
                 f'step size <= {limit:g}x',
       'measured': r['ratio'], 'met': r['ratio'] <= limit}
      for r in res['learned_lr']]


def test_check_targets_names_every_target():
  """On results of the full run's shape, every target gets a row: the sine
  speedups of the algorithms that have one, each learned_lr row, each remat
  memory ratio; other problems, algorithms and labels get none."""
  from benchmarks import configs  # pylint: disable=g-import-not-at-top
  speedup = {'fused_vs_torch_loop': 40.0, 'fused_vs_best_torch': 5.0}
  results = {
      'main': [{'problem': p, 'algorithm': a, 'speedup': speedup}
               for p in ('sine', 'mf') for a in ('maml', 'fo_maml', 'ggs_maml')],
      'learned_lr': [{'problem': 'sine', 'algorithm': 'maml', 'mode': m,
                      'kind': 'per_parameter', 'ratio': q}
                     for m, q in (('step', 1.1), ('fused', 1.2))],
      'memory': {'ratio_256_vs_16': {'maml': 12.0, 'maml+remat': 3.0,
                                     'ggs_maml+remat': 4.5}},
  }
  checks = configs.check_targets(results)
  assert [(c['target'], c['measured'], c['met']) for c in checks] == [
      ('sine maml fused_vs_torch_loop >= 30x', 40.0, True),
      ('sine maml fused_vs_best_torch >= 10x', 5.0, False),
      ('sine ggs_maml fused_vs_torch_loop >= 25x', 40.0, True),
      ('sine ggs_maml fused_vs_best_torch >= 10x', 5.0, False),
      ('sine maml step learned per_parameter / fixed step size <= 1.15x', 1.1, True),
      ('sine maml fused learned per_parameter / fixed step size <= 1.15x', 1.2, False),
      ('maml+remat peak(N=256)/peak(N=16) <= 4', 3.0, True),
      ('ggs_maml+remat peak(N=256)/peak(N=16) <= 4', 4.5, False),
  ]
  assert configs.check_targets({}) == []


def test_outputs_written(quick_results):
  out_dir, res, stdout = quick_results
  md = (out_dir / 'quick.md').read_text()
  for section in ('## Agreement with PyTorch', '## Time per meta-iteration',
                  '## Time vs num_inner_steps', '## Time vs num_directions',
                  '## Time vs num_tasks', '## Peak memory', '## Learned vs fixed',
                  '## Targets'):
    assert md.count(section) == 1, section
  assert stdout.startswith(md)  # run prints the report it writes
  # One table line per row of the JSON.
  sections = {part.split('\n', 1)[0]: part for part in md.split('\n## ')[1:]}
  agreement = sections['Agreement with PyTorch (same params, tasks, directions)']
  for r in res['agreement']:
    assert agreement.count(f'| {r["problem"]} | {r["algorithm"]} | {r["impl"]} |') == 1
  times = sections['Time per meta-iteration']
  for r in res['main']:  # the time table and the RSS table
    assert times.count(f'| {r["problem"]} | {r["algorithm"]} | ') == 2
  assert times.count('\n| ') == 2 * (1 + len(res['main']))  # + header lines
  targets = sections['Targets']
  for t in res['targets']:
    assert targets.count(f'| {t["target"]} | {t["measured"]:.2f} | {t["met"]} |') == 1
  assert res['plots'] == [f'quick_time_vs_{name}.png' for name in res['sweeps']] + [
      'quick_memory_vs_steps.png']
  for name in res['plots']:
    assert (out_dir / name).stat().st_size > 0
  assert res['meta']['quick'] and res['meta']['name'] == 'quick'
  assert res['meta']['command'].endswith(f'--out_dir={out_dir}')
  assert list(res['meta']['section_s']) == res['meta']['config']['sections']


def test_report_rebuilds_the_run_report_without_torch(quick_results, tmp_path):
  """``python -m benchmarks.report quick.json`` writes the very markdown the
  run wrote, and the plots, importing neither PyTorch nor JAX."""
  out_dir, res, _ = quick_results
  code = ('import runpy, sys\n'
          f'sys.argv = ["report", {str(out_dir / "quick.json")!r}, '
          f'"--out_dir={tmp_path}"]\n'
          'try:\n'
          '  runpy.run_module("benchmarks.report", run_name="__main__")\n'
          'except SystemExit as e:\n'
          '  assert not e.code, e.code\n'
          'loaded = [m for m in ("torch", "jax") if m in sys.modules]\n'
          'assert not loaded, loaded\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  md = (out_dir / 'quick.md').read_text()
  assert (tmp_path / 'quick.md').read_text() == md
  assert proc.stdout == md
  assert sorted(os.listdir(tmp_path)) == sorted(['quick.md'] + res['plots'])


def test_report_rebuilds_the_committed_results(tmp_path):
  """The committed full-run reports are what their JSON rebuilds to."""
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  for stem in ('latest', 'learned_lr'):
    md = report.rebuild(stem, out_dir=str(tmp_path), with_plots=False)
    with open(os.path.join(REPO, 'benchmarks', 'results', f'{stem}.md')) as f:
      assert md + '\n' == f.read(), stem
  with pytest.raises(FileNotFoundError):
    report.resolve('no_such_results')


def test_interleaved_alternates_cases():
  """The main table's timer calls the cases in turn, round by round."""
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  calls = []
  cases = {name: {'once': lambda name=name: calls.append(name), 'divisor': d,
                  'info': {'tag': name}}
           for name, d in (('a', 1), ('b', 4))}
  res = timing.interleaved(cases, rounds=3, repeats={'a': 2, 'b': 1})
  # Round 0 has one untimed warm-up call per case; then the rounds alternate.
  assert calls == ['a'] * 3 + ['b'] * 2 + ['a', 'a', 'b'] * 2
  assert len(res['a']['times_ms']) == 6 and len(res['a']['round_ms']) == 3
  assert len(res['b']['times_ms']) == 3 and res['b']['tag'] == 'b'
  st = timing.ratio_stats({'ms': 8.0, 'round_ms': [8.0, 6.0, 12.0]},
                       {'ms': 2.0, 'round_ms': [2.0, 1.0, 6.0]})
  assert st == {'ratio': 4.0, 'round_median': 4.0, 'round_min': 2.0, 'round_max': 6.0,
                'per_round': [4.0, 6.0, 2.0]}


def test_rl_speed_smoke(tmp_path):
  """``python -m benchmarks.rl_speed`` runs on tiny sizes and writes its JSON."""
  out = tmp_path / 'rl_speed.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.rl_speed', '--num_tasks=2', '--num_episodes=2',
       '--repeats=1', '--algorithms=fo_maml', f'--output={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res['jax_env_steps_per_s'] > 0
  assert res['numpy_loop_task_env_steps_per_s'] > 0
  assert res['kl_hvp'] == 'adapted'
  assert res['meta_iteration_s']['fo_maml']['seconds'] > 0
  assert res['meta_iteration_s']['fo_maml']['meta_gradient_s'] > 0
  assert res['inner_loss_gradient_s'] > 0


def test_rl_profile_smoke(tmp_path):
  """``python -m benchmarks.rl_profile`` (2D navigation, tiny): the split of a
  meta-iteration adds up to its parts, and the report is written."""
  out = tmp_path / 'rl_profile.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.rl_profile', '--env=navigation2d',
       '--num_tasks=2', '--num_episodes=2', '--horizon=5', '--horizons=3',
       '--repeats=1', f'--output={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(out.read_text())
  it = res['iteration']
  assert it['batches_sampled'] == 2 and it['env_steps_per_batch'] == 20
  assert set(it['split_s']) == {'simulation', 'policy', 'GAE/baseline',
                                'gradients', 'TRPO (CG + line search)'}
  assert all(v >= 0 for v in it['split_s'].values())
  assert it['meta_iteration_s'] > 0
  assert [(r['horizon'], r['env_steps']) for r in res['simulation']] == [
      (5, 20), (3, 12)]
  assert all(r['env_steps_per_s'] > 0 for r in res['simulation'])
  text = (tmp_path / 'rl_profile.md').read_text()
  assert '| TRPO (CG + line search) |' in text and 'env steps/s' in text


def test_convnet_section_smoke(tmp_path):
  """``--quick --sections=convnet``: every row and implementation present; the
  speedups are best-torch ms / implementation ms of the per-round medians."""
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--quick', '--sections=convnet',
       f'--out_dir={tmp_path}', '--name=conv', '--noplots'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / 'conv.json') as f:
    res = json.load(f)
  conv = res['convnet']
  spec = res['meta']['config']['convnet']
  assert [r['algorithm'] for r in conv['rows']] == spec['algorithms']
  # 2 tasks over the CPU devices (--cpu_devices defaults to one per core;
  # the tests' XLA_FLAGS force 4): the step is also timed on 2 devices.
  assert conv['devices'] == 2
  for r in conv['rows']:
    want = {'torch_loop', 'torch_func', 'jax_step', 'jax_step_devices',
            'jax_user_model', 'jax_fused'}
    assert r['jax_fused']['devices'] == 2
    if r['algorithm'] in spec['naive_algorithms']:
      want.add('jax_step_vmap_xla')
    if conv['torchopt'] and r['algorithm'] in ('maml', 'fo_maml'):
      want.add('torch_torchopt')
    assert want <= set(r), r.keys()
    assert r['jax_fused']['params_finite']
    # The user's Flax model with the library op: 'auto' picked 'map', and its
    # meta-gradient is lax's (float32) where it is deterministic.
    assert r['jax_user_model']['task_batching'] == 'map'
    err = r['jax_user_model']['meta_gradient_rel_error_vs_lax']
    assert (err is None) == (r['algorithm'] != 'maml')
    assert err is None or err < 5e-3
    assert r['user_model_vs_torch_loop']['round_median'] == pytest.approx(
        statistics.median(a / b for a, b in zip(
            r['torch_loop']['round_ms'], r['jax_user_model']['round_ms'])))
    best = min(r['torch_loop']['ms'], r['torch_func']['ms'])
    assert r['best_torch']['ms'] == best
    for name, st in r['speedup_stats'].items():
      assert len(r[name]['round_ms']) == conv['rounds']
      best_rounds = r[r['best_torch']['impl'].join(['torch_', ''])]['round_ms']
      per_round = [a / b for a, b in zip(best_rounds, r[name]['round_ms'])]
      np.testing.assert_allclose(st['per_round'], per_round)
      assert r['speedup'][name] == pytest.approx(statistics.median(per_round))
  from benchmarks import tables  # pylint: disable=g-import-not-at-top
  md = tables.markdown(res)
  assert '## Few-shot conv net' in md
  assert "user's Flax model, library op, defaults" in md
  for r in conv['rows']:
    assert f'| {r["algorithm"]} |' in md
