"""Smoke test: ``python -m benchmarks.run --quick`` runs end to end and writes its results.

Runs the CLI in a subprocess (a fresh JAX, as a user would run it) with tiny
shapes and XLA backend optimizations off, then checks the JSON, the markdown
and the plots. Timings are not checked: the machine may be shared.
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

pytest.importorskip('torch')

import maml_jax as mj

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def test_agreement_section(quick_results):
  _, res, _ = quick_results
  rows = res['agreement']
  assert {r['algorithm'] for r in rows} == set(ALGORITHMS)
  for r in rows:
    assert r['ok'], r
    assert r['max_rel_err'] <= 1e-4


def test_main_table(quick_results):
  _, res, _ = quick_results
  rows = res['main']
  assert {r['algorithm'] for r in rows} == set(ALGORITHMS)
  for r in rows:
    for impl in ('torch_loop', 'torch_func', 'jax_step', 'jax_fused'):
      assert r[impl]['ms'] > 0, (r['algorithm'], impl)
    assert r['jax_step']['compile_s'] > 0
    assert r['jax_fused']['params_finite']
    assert r['jax_step']['xla_memory']['peak'] > 0
    assert r['best_torch']['ms'] == min(r['torch_loop']['ms'], r['torch_func']['ms'])
    for impl in ('torch_loop', 'torch_func', 'jax_step', 'jax_fused'):
      assert len(r[impl]['round_ms']) == 2, (r['algorithm'], impl)
    per_round = [a / b for a, b in zip(r['torch_loop']['round_ms'],
                                       r['jax_fused']['round_ms'])]
    st = r['speedup_stats']['fused_vs_torch_loop']
    assert r['speedup']['fused_vs_torch_loop'] == pytest.approx(statistics.median(per_round))
    assert st['round_min'] <= st['round_median'] <= st['round_max']
    assert st['ratio'] == pytest.approx(r['torch_loop']['ms'] / r['jax_fused']['ms'])


def test_sweeps_and_fits(quick_results):
  _, res, _ = quick_results
  for name in ('steps', 'directions', 'tasks'):
    sw = res['sweeps'][name]
    for algorithm, ms in sw['jax_step_ms'].items():
      assert len(ms) == len(sw['values']) and all(t > 0 for t in ms)
      assert 'slope_ms' in sw['fit_jax'][algorithm]


def test_memory_section(quick_results):
  _, res, _ = quick_results
  mem = res['memory']
  for label, peaks in mem['analysis_mib'].items():
    assert len(peaks) == len(mem['steps']) and all(p > 0 for p in peaks), label
  probes = [r for per_n in mem['rss'].values() for r in per_n.values()]
  assert probes and all('error' not in r for r in probes), probes
  assert all(r['analysis']['peak'] > 0 for r in probes)


def test_learned_lr_section(quick_results):
  """Meta-SGD vs fixed step size: both variants per row, consistent ratios."""
  _, res, _ = quick_results
  rows = res['learned_lr']
  assert [(r['algorithm'], r['mode']) for r in rows] == [('maml', 'step'),
                                                         ('ggs_maml', 'step')]
  for r in rows:
    assert r['problem'] == 'sine' and r['kind'] == 'per_parameter'
    for variant in ('fixed', 'learned'):
      assert r[variant]['ms'] > 0 and r[variant]['compile_s'] > 0, variant
      assert len(r[variant]['round_ms']) == 2, variant
      assert r[variant]['ms'] == pytest.approx(
          statistics.median(r[variant]['times_ms']))
    assert r['ratio'] == pytest.approx(r['learned']['ms'] / r['fixed']['ms'])
    st = r['ratio_stats']
    assert st['ratio'] == r['ratio']
    assert st['per_round'] == pytest.approx(
        [a / b for a, b in zip(r['learned']['round_ms'], r['fixed']['round_ms'])])
    assert st['round_median'] == pytest.approx(statistics.median(st['per_round']))
  # One target per row, on the ratio reported.
  targets = [t for t in res['targets'] if 'step size' in t['target']]
  assert [t['measured'] for t in targets] == [r['ratio'] for r in rows]
  assert all(t['met'] == (t['measured'] <= 1.15) for t in targets)


def test_outputs_written(quick_results):
  out_dir, res, stdout = quick_results
  md = (out_dir / 'quick.md').read_text()
  assert '## Time per meta-iteration' in md and '## Targets' in md
  assert '## Learned vs fixed inner step size' in md
  assert '## Time per meta-iteration' in stdout
  for name in res['plots']:
    assert (out_dir / name).stat().st_size > 0
  assert res['meta']['quick'] and res['meta']['command'].endswith(f'--out_dir={out_dir}')


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
