"""Tests of the launchers' shared modules: run folders, checkpoints, resume."""

import json
import os
import shutil
import types

from absl import app
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
from experiments import builders
from experiments import config
from experiments import launcher_flags
from experiments import loop
from experiments import rundir
from experiments import summaries
from launcher_util import run_launcher
from experiments import matrix_factorization as mf

TIME_KEYS = ('wall_time', 'chunk_seconds')


def load_rows(path, drop=TIME_KEYS):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in f]


class Killed(Exception):
  pass


# zo_maml: its random directions must also be reproduced after a resume.
MF_ARGS = ['--algorithms=zo_maml', '--seeds=0,1', '--num_iterations=6',
           '--eval_every=2', '--num_test_tasks=8', '--tasks_per_batch=3',
           '--num_directions=3']


@pytest.mark.slow
def test_resume_after_kill_gives_identical_metrics(tmp_path):
  """Kill after chunk 2 (before its checkpoint is complete), resume, compare."""
  full = run_launcher(mf, MF_ARGS + [f'--workdir={tmp_path}/full'])

  def kill(iteration):
    if iteration == 4:
      raise Killed()

  with pytest.raises(Killed):
    run_launcher(mf, MF_ARGS + [f'--workdir={tmp_path}/killed'],
                 chunk_hook=kill)
  run = tmp_path / 'killed' / mf.NAME
  # Simulate a kill while checkpoint 4 was being written: metrics.jsonl
  # already holds iteration 4, the latest complete checkpoint is 2.
  assert max(r['iteration'] for r in load_rows(run / 'metrics.jsonl')) == 4
  shutil.rmtree(run / 'checkpoints' / '4')
  (run / 'checkpoints' / '4.orbax-checkpoint-tmp-123').mkdir()

  resumed = run_launcher(mf, MF_ARGS + [f'--workdir={tmp_path}/killed',
                                        '--resume'])
  expected = load_rows(tmp_path / 'full' / mf.NAME / 'metrics.jsonl')
  got = load_rows(run / 'metrics.jsonl')
  assert len(expected) == 2 * 4  # seeds x (1 + 3 chunks)
  assert got == expected
  for algorithm in full.states:
    jax.tree.map(np.testing.assert_array_equal, full.states[algorithm],
                 resumed.states[algorithm])
  # The CSV holds the same rows.
  with open(run / 'metrics.csv') as f:
    assert len(f.readlines()) == 1 + len(expected)


def test_resume_rejects_changed_flags(tmp_path):
  args = ['--algorithms=fo_maml', '--seeds=0', '--num_iterations=2',
          '--eval_every=2', '--num_test_tasks=4', '--tasks_per_batch=2',
          f'--workdir={tmp_path}']
  run_launcher(mf, args)
  with pytest.raises(app.UsageError, match='inner_lr'):
    run_launcher(mf, args + ['--resume', '--inner_lr=0.02'])
  # A run folder moved elsewhere resumes there (--workdir may change).
  moved = tmp_path / 'moved'
  shutil.copytree(tmp_path / mf.NAME, moved / mf.NAME)
  run_launcher(mf, [a for a in args if not a.startswith(('--workdir', '--num_iter'))]
               + [f'--workdir={moved}', '--num_iterations=3', '--resume'])
  rows = load_rows(moved / mf.NAME / 'metrics.jsonl')
  assert max(r['iteration'] for r in rows) == 3
  shutil.rmtree(moved)
  # Without --resume a second run goes to a new folder.
  run_launcher(mf, args)
  assert sorted(os.listdir(tmp_path)) == [mf.NAME, mf.NAME + '_2']


@pytest.mark.slow
def test_sweep_picks_and_records_hyperparameters(tmp_path):
  result = run_launcher(mf, [
      '--algorithms=ggs_maml', '--seeds=0', '--num_iterations=2',
      '--eval_every=2', '--num_test_tasks=4', '--tasks_per_batch=2',
      '--num_directions=2', '--sweep', '--sweep_iterations=3',
      '--sweep_meta_lrs=1e-3,1e-1', '--sweep_deltas=1e-2,1e-1',
      f'--workdir={tmp_path}'])
  with open(tmp_path / mf.NAME / 'sweep.json') as f:
    sweep = json.load(f)
  assert len(sweep['grid']) == 2 * 2  # meta lrs x deltas
  for algorithm in ('ggs_maml',):
    chosen = sweep['chosen'][algorithm]
    assert config.HParams(**chosen) == result.hparams[algorithm]
    grid = [g for g in sweep['grid'] if g['algorithm'] == algorithm]
    best = min(grid, key=lambda g: g['validation_loss'])
    assert (best['meta_lr'], best['delta']) == (chosen['meta_lr'],
                                                 chosen['delta'])
  summary = (tmp_path / mf.NAME / 'summary.md').read_text()
  assert f"{sweep['chosen']['ggs_maml']['meta_lr']:g}" in summary


def test_checkpointer_round_trip_with_optax_state(tmp_path):
  opt = builders.make_optimizer('adam', 1e-3)
  params = {'w': jnp.arange(3.0), 'b': jnp.ones((2, 2))}
  state = jax.vmap(lambda p: mj.init_train_state(p, opt))(
      jax.tree.map(lambda x: jnp.stack([x, x + 1]), params))
  tree = {'states': {'maml': state}, 'train_keys': loop.seed_keys([0, 1])[1],
          'iteration': jnp.asarray(7, jnp.int32)}
  ckpt = rundir.Checkpointer(tmp_path / 'ckpt')
  ckpt.save(7, tree)
  assert ckpt.latest_step() == 7
  like = jax.tree.map(jnp.zeros_like, tree)
  restored = ckpt.restore(7, like)
  ckpt.close()
  assert jax.tree.structure(restored) == jax.tree.structure(tree)
  jax.tree.map(np.testing.assert_array_equal, restored, tree)


def test_make_optimizer_by_name():
  for name in ('sgd', 'adam', 'rmsprop', 'adamw'):
    opt = builders.make_optimizer(name, 0.1)
    state = opt.init(jnp.zeros(2))
    updates, _ = opt.update(jnp.ones(2), state, jnp.zeros(2))
    assert jnp.all(jnp.isfinite(updates))
  with pytest.raises(app.UsageError, match='not an optax optimizer'):
    builders.make_optimizer('not_an_optimizer', 0.1)
  with pytest.raises(app.UsageError):
    launcher_flags.check_optimizer_name('apply_updates')
  # The learning rate lives in the state: the same update function serves
  # every learning rate (what --sweep vmaps over).
  opt = builders.make_optimizer('sgd', 1.0)
  state = jax.vmap(lambda lr: builders.make_optimizer('sgd', lr).init(
      jnp.zeros(1)))(jnp.array([0.1, 0.2]))
  updates, _ = jax.vmap(lambda s: opt.update(jnp.ones(1), s))(state)
  np.testing.assert_allclose(updates[:, 0], [-0.1, -0.2], rtol=1e-6)


def test_run_dir_atomic_files_and_truncate(tmp_path):
  run = rundir.RunDir.create(str(tmp_path), None, resume=False,
                             default_name='exp')
  run.append([{'algorithm': 'maml', 'seed': 0, 'iteration': i,
               'test_loss': float(i), 'train_loss': None if i == 0 else np.nan}
              for i in range(3)])
  run.flush()
  rows = load_rows(tmp_path / 'exp' / 'metrics.jsonl', drop=())
  assert [r['iteration'] for r in rows] == [0, 1, 2]
  assert rows[1]['train_loss'] is None  # NaN is written as null
  run.truncate(1)
  assert [r['iteration'] for r in
          load_rows(tmp_path / 'exp' / 'metrics.jsonl', drop=())] == [0, 1]
  assert not [n for n in os.listdir(tmp_path / 'exp') if n.startswith('.tmp')]
  with pytest.raises(app.UsageError, match='already holds a run'):
    rundir.RunDir.create(str(tmp_path), 'exp', resume=False,
                         default_name='exp')
  with pytest.raises(app.UsageError, match='no run'):
    rundir.RunDir.create(str(tmp_path), None, resume=True,
                         default_name='other')
  assert rundir.RunDir.create(str(tmp_path), None, resume=True,
                              default_name='exp').rows == rows[:2]


def test_final_rows_and_curves():
  rows = [{'algorithm': a, 'seed': s, 'iteration': i, 'test_loss': i + s}
          for a in ('maml', 'fo_maml') for s in (0, 1) for i in (0, 5)]
  assert summaries.final_rows(rows) == {'maml': [5, 6], 'fo_maml': [5, 6]}
  from experiments import plotting  # pylint: disable=g-import-not-at-top
  its, values = plotting.curves_by_algorithm(rows, 'test_loss')['maml']
  np.testing.assert_array_equal(its, [0, 5])
  np.testing.assert_array_equal(values, [[0, 5], [1, 6]])


def test_seed_keys_are_distinct_and_deterministic():
  init, train = loop.seed_keys([0, 1])
  assert init.shape == train.shape == (2, 2)
  assert not np.array_equal(init[0], init[1])
  np.testing.assert_array_equal(loop.seed_keys([1])[1][0], train[1])


def test_reuse_host_memory_takes_on_glibc():
  """The launchers' mallopt call (--reuse_host_memory) is accepted by glibc."""
  import platform  # pylint: disable=g-import-not-at-top
  from experiments import runtime  # pylint: disable=g-import-not-at-top
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    pytest.skip('mallopt is glibc only')
  assert runtime.reuse_host_memory() is True


def test_quick_preset_applies_under_python_m_and_yields_to_given_flags():
  """``python -m experiments.matrix_factorization --quick``: the module's
  ``__main__`` has written DEFAULTS into the flags (for --help), and --quick
  still gives the QUICK preset for every flag the command line left unset."""
  read = types.SimpleNamespace(run=lambda argv: config.training_config(
      mf.NAME, launcher_flags.experiment_defaults(mf.DEFAULTS, mf.QUICK)))
  with flagsaver.flagsaver():  # set_defaults changes the flags' defaults
    launcher_flags.set_defaults(mf.DEFAULTS)
    for argv, preset, iterations in [
        (['--quick'], mf.QUICK, mf.QUICK['num_iterations']),
        (['--quick', '--num_iterations=7'], mf.QUICK, 7),
        ([], mf.DEFAULTS, mf.DEFAULTS['num_iterations'])]:
      cfg = run_launcher(read, argv)
      assert cfg.num_iterations == iterations, argv
      assert cfg.eval_every == preset['eval_every'], argv
