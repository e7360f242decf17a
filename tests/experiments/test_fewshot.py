"""The few-shot launcher: end to end on a tiny Omniglot written in the real layout.

One compiled run (MAML, 2 meta-iterations, 4 filters) checks the whole
pipeline: the loader, on-device task sampling in the fused loop, the has_aux
accuracy rows, the final evaluation with confidence intervals, figures and
summary. Flag and data errors are checked before anything compiles.
"""

import json
import math
import os
import types

from absl import app
import jax
import numpy as np
import pytest

from experiments import fewshot
from experiments import fewshot_train
from experiments import plotting
import launcher_util
from test_fewshot_data import _write_omniglot

# 5 characters: 3 train (12 rotation classes), 1 validation, 1 test (4 each).
LAYOUT = {'images_background': {'Greek': 2, 'Latin': 1},
          'images_evaluation': {'Runic': 2}}
TINY = ['--dataset=omniglot', '--omniglot_train_characters=3',
        '--omniglot_val_characters=1', '--ways=3', '--shots=1',
        '--train_query_shots=1', '--query_shots=2', '--filters=4', '--blocks=2',
        '--tasks_per_batch=2', '--algorithms=maml', '--seeds=0',
        '--num_iterations=2', '--eval_every=1', '--num_test_tasks=2',
        '--num_final_tasks=4', '--eval_chunk=2', '--eval_inner_steps=1',
        '--conv_impl=xla']  # XLA's conv compiles in half the time of im2col.


@pytest.fixture(scope='module')
def omniglot_dir(tmp_path_factory):
  return _write_omniglot(tmp_path_factory.mktemp('omniglot'), LAYOUT)


@pytest.mark.slow
def test_launcher_end_to_end_on_omniglot_layout(omniglot_dir, tmp_path):
  result, final = launcher_util.run_launcher(
      fewshot, TINY + [f'--data_dir={omniglot_dir}', f'--workdir={tmp_path}'])
  run = tmp_path / 'fewshot'
  for name in ('metrics.csv', 'metrics.jsonl', 'config.json', 'summary.md',
               'final.json', 'accuracy.png', 'example_task.png'):
    assert (run / name).exists(), name
  rows = result.rows
  assert [r['iteration'] for r in rows] == [0, 1, 2]
  for r in rows:
    assert 0.0 <= r['test_accuracy'] <= 1.0
    assert math.isfinite(r['test_loss'])
  # The query accuracy comes from the loss's aux output (has_aux) into the rows.
  assert all(0.0 <= r['train_accuracy'] <= 1.0 for r in rows[1:])
  assert final['splits'] == {'train': (12, 20, 28, 28), 'val': (4, 20, 28, 28),
                             'test': (4, 20, 28, 28)}
  arm = final['arms']['maml']
  assert len(arm['accuracy_by_step'][0]) == 2  # k = 0, 1
  # Accuracies of 4 tasks x 6 query images are multiples of 1/24; the
  # interval is 1.96 std / sqrt(4) of the per-task accuracies.
  assert arm['accuracy'][0] * 24 == pytest.approx(round(arm['accuracy'][0] * 24))
  assert arm['accuracy_by_step'][0][-1] == pytest.approx(arm['accuracy'][0])
  assert 0.0 <= arm['ci95'][0] <= 1.96 * 0.5 / 2 + 1e-9
  with open(run / 'final.json') as f:
    assert json.load(f)['arms']['maml']['accuracy'] == arm['accuracy']
  summary = (run / 'summary.md').read_text()
  assert 'Omniglot' in summary or 'omniglot' in summary
  assert f'{100 * arm["accuracy"][0]:.1f} +- {100 * arm["ci95"][0]:.1f}' in summary


def test_split_accuracy_interval():
  mean, half = fewshot_train.split_accuracy([0.0, 1.0, 0.0, 1.0])
  assert mean == 0.5
  assert half == pytest.approx(1.96 * 0.5 / 2)


@pytest.mark.parametrize('args, message', [
    (['--ways=1'], '--ways must be at least 2'),
    (['--shots=0'], '--shots must be a positive integer'),
    (['--task_batching=loop'], '--task_batching: task_batching must be one of'),
    (['--num_final_tasks=5', '--eval_chunk=2'], 'multiple of --eval_chunk'),
    (['--data_dir='], 'needs --data_dir'),
    (['--data_dir=/nonexistent/omniglot'], '/nonexistent/omniglot'),
    (['--ways=13'], 'fewer than --ways=13'),
])
def test_bad_flags_and_data_fail_before_compiling(omniglot_dir, tmp_path,
                                                   args, message):
  flags = dict(a.split('=', 1) for a in TINY + [f'--data_dir={omniglot_dir}'])
  flags.update(a.split('=', 1) for a in args)
  argv = [f'{k}={v}' for k, v in flags.items() if v]
  with pytest.raises(app.UsageError, match=message):
    launcher_util.run_launcher(fewshot, argv + [f'--workdir={tmp_path}'])
  assert not os.path.exists(tmp_path / 'fewshot')


def test_example_task_figure(tmp_path):
  import maml_jax as mj  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  task = mj.Task(support={'x': rng.random((3, 28, 28, 1)), 'y': np.arange(3)},
                 query={'x': rng.random((6, 28, 28, 1)),
                        'y': np.repeat(np.arange(3), 2)})
  path = plotting.plot_task_predictions(
      task, {'maml': np.array([0, 0, 1, 2, 2, 2])}, str(tmp_path / 'f.png'),
      title='t')
  assert os.path.getsize(path) > 1000


def _settings(args):
  """``fewshot.settings_from_flags`` with ``args`` as the command line."""
  read = types.SimpleNamespace(run=lambda argv: fewshot.settings_from_flags())
  return launcher_util.run_launcher(read, args)


def test_settings_from_flags(tmp_path):
  cfg, settings = _settings(TINY + [f'--workdir={tmp_path}', '--data_dir=d'])
  assert cfg.experiment == fewshot.NAME and cfg.num_iterations == 2
  assert settings.cache_dir == str(tmp_path / 'data')
  assert (settings.dataset, settings.data_dir) == ('omniglot', 'd')
  assert (settings.ways, settings.shots, settings.query_shots) == (3, 1, 2)
  assert settings.num_test_tasks == 2 and settings.num_final_tasks == 4
  assert settings.conv_impl == 'xla' and settings.member_batching == 'map'
  _, glyphs = _settings(['--seeds=0', f'--workdir={tmp_path}',
                         '--cache_dir=c', '--task_batching=4'])
  assert (glyphs.dataset, glyphs.cache_dir, glyphs.task_batching) == (
      'glyphs', 'c', 4)
  assert glyphs.num_test_tasks == fewshot.DEFAULTS['num_test_tasks']


def test_results_table_has_a_row_per_arm():
  arms = {'maml': {'accuracy': [0.5, 0.7], 'ci95': [0.01, 0.02],
                   'accuracy_by_step': [[0.2, 0.5], [0.2, 0.7]]},
          'fo_maml@alpha=0.1': {'accuracy': [0.4], 'ci95': [0.03],
                                'accuracy_by_step': [[0.25, 0.4]]}}
  table = fewshot_train.results_table(arms, {'maml': 0.125}, 1)
  lines = table.splitlines()
  assert len(lines) == 4 and 'k = 0..1' in lines[0]
  assert lines[2] == ('| MAML | 50.0 +- 1.0, 70.0 +- 2.0 | 60.0 | 20.0 / 60.0 '
                      '| 0.125 |')
  assert lines[3].endswith('| 40.0 | 25.0 / 40.0 | n/a |')


@pytest.mark.slow
def test_launcher_learns_per_layer_per_step_inner_lr(omniglot_dir, tmp_path):
  """--learn_inner_lr=per_layer --per_step_inner_lr (MAML++ LSLR) end to end:
  the step sizes are meta-parameters with one value per step and layer, the
  rows and summary report them, and the final evaluation adapts past N."""
  import maml_jax as mj  # pylint: disable=g-import-not-at-top
  flags = dict(a.split('=', 1) for a in TINY)
  flags.update({'--algorithms': 'maml,ggs_maml', '--num_directions': '2',
                '--num_inner_steps': '2', '--eval_inner_steps': '3',
                '--inner_lr': '0.1'})
  argv = [f'{k}={v}' for k, v in flags.items()] + [
      f'--data_dir={omniglot_dir}', f'--workdir={tmp_path}',
      '--learn_inner_lr=per_layer', '--per_step_inner_lr']
  result, final = launcher_util.run_launcher(fewshot, argv)
  assert [arm.name for arm in result.arms()] == ['maml', 'ggs_maml']
  for arm in result.arms():
    assert isinstance(arm.params, mj.LearnedInnerLR)
    w0 = jax.tree.leaves(arm.params.params)
    alphas = jax.tree.leaves(arm.params.inner_lr)
    assert len(alphas) == len(w0)  # one per layer (parameter array)
    for a in alphas:
      assert a.shape == (1, 2)  # [seeds, N steps]
    # Trained (their own Adam at 1e-4), moved a little from 0.1.
    assert any(not np.allclose(a, 0.1) for a in alphas)
    assert all(np.all(np.abs(np.asarray(a) - 0.1) < 0.01) for a in alphas)
    by_step = final['arms'][arm.name]['accuracy_by_step'][0]
    assert len(by_step) == 4  # k = 0..3, steps past N = 2 use the last alpha
  last = [r for r in result.rows if r['iteration'] == 2]
  for r in last:
    for key in ('inner_lr_mean', 'inner_lr_step0_mean', 'inner_lr_step1_mean'):
      assert math.isfinite(r[key]), key
  summary = (tmp_path / 'fewshot' / 'summary.md').read_text()
  assert 'learned per_layer per step' in summary
  assert 'Learned inner step sizes' in summary
