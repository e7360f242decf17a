"""End-to-end smoke tests of the experiment launchers (tiny settings).

Each launcher runs in-process for 2 meta-iterations into a temporary workdir
and its outputs must parse; bad flags must fail before anything compiles.
"""

import csv
import json
import os
import subprocess
import sys
import time

from absl import app
import pytest

from experiments import launcher_flags
from experiments import summaries
from launcher_util import run_launcher
from experiments import hessian_estimators
from experiments import matrix_factorization as mf
from experiments import sine

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def check_training_outputs(run, algorithms, seeds, num_evals):
  with open(run / 'config.json') as f:
    config = json.load(f)
  assert config['config']['algorithms'] == list(algorithms)
  assert config['versions']['jax']
  assert 'meta_lr' in config['flags'] and 'seeds' in config['flags']
  with open(run / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == len(algorithms) * len(seeds) * num_evals
  assert {r['algorithm'] for r in rows} == set(algorithms)
  for r in rows:
    assert r['test_loss'] is not None and r['test_loss'] >= 0
    if r['iteration'] > 0:
      assert r['train_loss'] is not None and r['num_nonfinite'] == 0
  with open(run / 'metrics.csv') as f:
    assert len(list(csv.DictReader(f))) == len(rows)
  summary = (run / 'summary.md').read_text()
  for algorithm in algorithms:
    assert summaries.LABELS[algorithm] in summary
  assert (run / 'meta_loss.png').stat().st_size > 1000
  assert os.listdir(run / 'checkpoints')
  return rows


@pytest.mark.slow
def test_matrix_factorization_end_to_end(tmp_path):
  result = run_launcher(mf, [
      '--algorithms=' + ','.join(launcher_flags.ALGORITHMS), '--seeds=0',
      '--num_iterations=2', '--eval_every=2', '--num_test_tasks=4',
      '--tasks_per_batch=2', '--num_directions=2', f'--workdir={tmp_path}'])
  rows = check_training_outputs(tmp_path / mf.NAME, launcher_flags.ALGORITHMS, [0], 2)
  assert set(result.states) == set(launcher_flags.ALGORITHMS)
  assert max(r['iteration'] for r in rows) == 2


def test_sine_end_to_end(tmp_path):
  run_launcher(sine, [
      '--algorithms=maml,fo_maml', '--seeds=0', '--num_iterations=2',
      '--eval_every=2', '--num_test_tasks=4', '--tasks_per_batch=2',
      '--kshot_steps=2', f'--workdir={tmp_path}'])
  run = tmp_path / sine.NAME
  check_training_outputs(run, ('maml', 'fo_maml'), [0], 2)
  with open(run / 'kshot.json') as f:
    kshot = json.load(f)
  assert kshot['steps'] == [0, 1, 2]
  assert len(kshot['mse']['maml']) == 1 and len(kshot['mse']['maml'][0]) == 3
  for name in ('kshot_mse.png', 'sine_fit_maml.png', 'sine_fit_fo_maml.png'):
    assert (run / name).stat().st_size > 1000


@pytest.mark.slow
def test_sine_launcher_learns(tmp_path):
  """500 MAML meta-iterations (seed 0) cut the held-out post-adaptation MSE
  by at least 20%. Measured: 3.658 -> 2.161 (0.59x) for seed 0; seeds 1 and 2
  gave 0.67x and 0.71x, so the bound holds with room on any seed."""
  run_launcher(sine, [
      '--algorithms=maml', '--seeds=0', '--num_iterations=500',
      '--eval_every=500', '--num_test_tasks=50', '--tasks_per_batch=10',
      '--kshot_steps=1', f'--workdir={tmp_path}'])
  with open(tmp_path / sine.NAME / 'metrics.jsonl') as f:
    loss = {r['iteration']: r['test_loss'] for r in map(json.loads, f)}
  assert set(loss) == {0, 500}
  assert loss[500] < 0.8 * loss[0], loss


@pytest.mark.slow
def test_hessian_estimators_end_to_end(tmp_path):
  results = run_launcher(hessian_estimators, [
      '--problems=matrix_factorization', '--estimators=zo,ggs',
      '--dtypes=float32', '--deltas=1e-2,1', '--num_directions_list=1,4',
      '--delta_sweep_b=2', '--num_draws=3', f'--workdir={tmp_path}'])
  run = tmp_path / hessian_estimators.NAME
  with open(run / 'errors.json') as f:
    saved = json.load(f)
  res = saved['results']['float32']['matrix_factorization']
  assert res['dim'] == 20 and res['zo_floor'] > 0
  for est in ('zo', 'ggs'):
    for sweep in ('delta', 'b'):
      mean, std = res[sweep][est]
      assert len(mean) == len(std) == 2
      assert all(m > 0 for m in mean)
  assert results['float32']['matrix_factorization']['trace_hessian'] != 0
  with open(run / 'metrics.csv') as f:
    assert len(list(csv.DictReader(f))) == 2 * 2 * 2  # sweeps x points x est
  assert (run / 'hvp_errors_float32.png').stat().st_size > 1000


@pytest.mark.parametrize('args, match', [
    (['--algorithms=maml,foo'], 'unknown algorithm'),
    (['--inner_lr=-0.1'], 'inner_lr'),
    (['--meta_lr=0'], 'meta_lr'),
    (['--num_directions=0'], 'num_directions'),
    (['--num_iterations=0'], 'num_iterations'),
    (['--meta_optimizer=adamm'], 'meta_optimizer'),
    (['--seeds=0,x'], 'seeds'),
    (['--workdir=/proc/version/sub'], 'not writable'),
])
def test_invalid_training_flags_fail_fast(tmp_path, args, match):
  if not any(a.startswith('--workdir') for a in args):
    args = args + [f'--workdir={tmp_path}']
  start = time.time()
  with pytest.raises(app.UsageError, match=match):
    run_launcher(mf, args)
  assert time.time() - start < 5  # before any compilation
  assert not (tmp_path / mf.NAME).exists()


def test_invalid_hessian_flags_fail_fast(tmp_path):
  for args, match in ((['--deltas=0,1'], 'deltas'),
                      (['--num_directions_list=0'], 'b must be'),
                      (['--problems=foo'], 'problems'),
                      (['--estimators=zo,hf'], 'estimators'),
                      (['--dtypes=float16'], 'dtypes')):
    with pytest.raises(app.UsageError, match=match):
      run_launcher(hessian_estimators, args + [f'--workdir={tmp_path}'])


def test_cli_error_is_one_line_and_help_lists_flags(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.matrix_factorization',
       '--num_directions=0', f'--workdir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if 'error:' in l]
  assert len(errors) == 1 and '--num_directions' in errors[0]
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.sine', '--helpshort'], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False)
  text = proc.stdout + proc.stderr
  for name in ('algorithms', 'num_inner_steps', 'inner_lr', 'meta_lr',
               'meta_optimizer', 'num_directions', 'delta', 'tasks_per_batch',
               'num_iterations', 'seeds', 'eval_every', 'workdir', 'resume',
               'sweep', 'num_support', 'kshot_steps', 'learn_inner_lr',
               'per_step_inner_lr', 'inner_lrs'):
    assert f'--{name}' in text, name
  assert "(default: '0.001')" in text  # the sine meta lr default is shown
