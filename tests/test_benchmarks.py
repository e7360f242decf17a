"""Smoke test: ``python -m benchmarks.run --quick`` runs end to end and writes its results.

Runs the CLI in a subprocess (a fresh JAX, as a user would run it) with tiny
shapes and XLA backend optimizations off, then checks the JSON, the markdown
and the plots. Timings are not checked: the machine may be shared.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('torch')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ('maml', 'fo_maml', 'zo_maml', 'ggs_maml', 'hf_maml')


@pytest.fixture(scope='module')
def quick_results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('bench')
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--quick', f'--out_dir={out_dir}'],
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
    assert r['speedup']['fused_vs_torch_loop'] == pytest.approx(
        r['torch_loop']['ms'] / r['jax_fused']['ms'])


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


def test_outputs_written(quick_results):
  out_dir, res, stdout = quick_results
  md = (out_dir / 'quick.md').read_text()
  assert '## Time per meta-iteration' in md and '## Targets' in md
  assert '## Time per meta-iteration' in stdout
  for name in res['plots']:
    assert (out_dir / name).stat().st_size > 0
  assert res['meta']['quick'] and res['meta']['command'].endswith(f'--out_dir={out_dir}')
