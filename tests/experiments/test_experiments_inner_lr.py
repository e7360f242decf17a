"""Learned (--learn_inner_lr) and gridded (--inner_lrs) inner step sizes in the launchers."""

import json
import shutil

from absl import app
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
from experiments import matrix_factorization as mf
from experiments import sine
from experiments import summaries
from launcher_util import run_launcher

TIME_KEYS = ('wall_time', 'chunk_seconds')
MF_TINY = ['--num_test_tasks=8', '--tasks_per_batch=3', '--num_directions=3']


def load_rows(path):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS}
            for line in f]


class Killed(Exception):
  pass


def test_learned_inner_lr_trains_and_resumes_exactly(tmp_path):
  """Per-step Meta-SGD step sizes move, and a killed run resumes them exactly."""
  args = ['--algorithms=maml', '--seeds=0,1', '--num_iterations=6',
          '--eval_every=2', '--learn_inner_lr=per_parameter',
          '--per_step_inner_lr'] + MF_TINY
  full = run_launcher(mf, args + [f'--workdir={tmp_path}/full'])
  alpha = full.states['maml'].params.inner_lr
  assert isinstance(full.states['maml'].params, mj.LearnedInnerLR)
  assert alpha.shape == (2, 3, 20)  # seeds x N x d
  assert np.max(np.abs(np.asarray(alpha) - 0.01)) > 1e-4  # they were learned

  def kill(iteration):
    if iteration == 4:
      raise Killed()

  with pytest.raises(Killed):
    run_launcher(mf, args + [f'--workdir={tmp_path}/killed'], chunk_hook=kill)
  run = tmp_path / 'killed' / mf.NAME
  shutil.rmtree(run / 'checkpoints' / '4')  # killed while saving chunk 2
  resumed = run_launcher(mf, args + [f'--workdir={tmp_path}/killed',
                                     '--resume'])
  expected = load_rows(tmp_path / 'full' / mf.NAME / 'metrics.jsonl')
  assert load_rows(run / 'metrics.jsonl') == expected
  jax.tree.map(np.testing.assert_array_equal, full.states['maml'],
               resumed.states['maml'])
  last = [r for r in expected if r['iteration'] == 6]
  for r in last:
    assert r['inner_lr_min'] <= r['inner_lr_step2_mean'] <= r['inner_lr_max']
    assert r['inner_lr_mean'] != pytest.approx(0.01, abs=1e-6)
  summary = (run / 'summary.md').read_text()
  assert 'learned per_parameter per step (init 0.01, sgd lr 0.0003)' in summary
  assert 'step2 mean' in summary


def test_resume_of_a_run_made_before_the_inner_lr_flags(tmp_path):
  args = ['--algorithms=fo_maml', '--seeds=0', '--num_iterations=2',
          '--eval_every=2', f'--workdir={tmp_path}'] + MF_TINY
  run_launcher(mf, args)
  path = tmp_path / mf.NAME / 'config.json'
  config = json.loads(path.read_text())
  for name in ('learn_inner_lr', 'per_step_inner_lr', 'inner_lrs'):
    del config['flags'][name]
  path.write_text(json.dumps(config))
  run_launcher(mf, args + ['--resume', '--num_iterations=4'])
  rows = load_rows(tmp_path / mf.NAME / 'metrics.jsonl')
  assert max(r['iteration'] for r in rows) == 4
  with pytest.raises(app.UsageError, match='learn_inner_lr'):
    run_launcher(mf, args + ['--resume', '--num_iterations=6',
                             '--learn_inner_lr=scalar'])


def test_inner_lrs_grid_equals_separate_runs(tmp_path):
  """One vmapped (alpha, seed) grid gives each single --inner_lr run's numbers."""
  # zo_maml: each grid member must draw the directions of its single run.
  base = ['--algorithms=zo_maml', '--seeds=0,1', '--num_iterations=4',
          '--eval_every=2'] + MF_TINY
  lrs = (0.005, 0.02)
  grid = run_launcher(mf, base + ['--inner_lrs=0.005,0.02',
                                  f'--workdir={tmp_path}/grid'])
  grid_rows = load_rows(tmp_path / 'grid' / mf.NAME / 'metrics.jsonl')
  assert {r['inner_lr'] for r in grid_rows} == set(lrs)
  arms = {arm.name: arm for arm in grid.arms()}
  assert sorted(arms) == sorted(summaries.arm_name('zo_maml', lr) for lr in lrs)
  for lr in lrs:
    single = run_launcher(mf, base + [f'--inner_lr={lr}',
                                      f'--workdir={tmp_path}/{lr}'])
    rows = load_rows(tmp_path / str(lr) / mf.NAME / 'metrics.jsonl')
    mine = [{k: v for k, v in r.items() if k != 'inner_lr'}
            for r in grid_rows if r['inner_lr'] == lr]
    key = lambda r: (r['algorithm'], r['seed'], r['iteration'])
    assert sorted(map(key, mine)) == sorted(map(key, rows))
    for a, b in zip(sorted(mine, key=key), sorted(rows, key=key)):
      assert a.keys() == b.keys()
      for k in a:
        if isinstance(a[k], float):
          assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-7), (k, a, b)
        else:
          assert a[k] == b[k]
    np.testing.assert_allclose(arms[summaries.arm_name('zo_maml', lr)].params,
                               single.states['zo_maml'].params, rtol=1e-4,
                               atol=1e-7)
  summary = (tmp_path / 'grid' / mf.NAME / 'summary.md').read_text()
  assert 'ZO-MAML alpha=0.005' in summary and 'ZO-MAML alpha=0.02' in summary


def test_sine_launcher_with_grid_and_learned_step_sizes(tmp_path):
  small = ['--algorithms=maml', '--seeds=0', '--num_iterations=2',
           '--eval_every=2', '--num_test_tasks=4', '--tasks_per_batch=2',
           '--kshot_steps=4', '--num_inner_steps=2']
  run_launcher(sine, small + ['--inner_lrs=0.003,0.01',
                              f'--workdir={tmp_path}/grid'])
  run = tmp_path / 'grid' / sine.NAME
  kshot = json.loads((run / 'kshot.json').read_text())
  assert kshot['inner_lrs'] == [0.003, 0.01]
  assert set(kshot['mse']) == {'maml@alpha=0.003', 'maml@alpha=0.01'}
  assert (run / 'sine_fit_maml_alpha0.003.png').stat().st_size > 1000
  result = run_launcher(sine, small + [
      '--learn_inner_lr=per_layer', '--per_step_inner_lr',
      f'--workdir={tmp_path}/learned'])
  run = tmp_path / 'learned' / sine.NAME
  kshot = json.loads((run / 'kshot.json').read_text())
  assert kshot['learn_inner_lr'] == 'per_layer' and 'last step' in kshot['note']
  assert len(kshot['mse']['maml'][0]) == 5
  alpha = result.states['maml'].params.inner_lr
  assert {x.shape for x in jax.tree.leaves(alpha)} == {(1, 2)}  # seed x N
  assert (run / 'sine_fit_maml.png').stat().st_size > 1000


def test_k_step_curve_uses_the_last_learned_step_past_n():
  params = mj.models.init_sine_params(jax.random.PRNGKey(0))
  alpha = mj.init_inner_lr(params, 0.01, 'per_layer', num_inner_steps=2)
  alpha = jax.tree.map(lambda a: a * jnp.array([1.0, 3.0]), alpha)
  meta = mj.LearnedInnerLR(params, alpha)
  tasks = mj.tasks.sine_tasks(jax.random.PRNGKey(1), 3, num_support=5,
                              num_query=5)
  got = sine.k_step_mse(meta, tasks, inner_lr=None, max_steps=4,
                        num_inner_steps=2)

  def manual(support, query):
    w, out = params, []
    for j in range(4):
      out.append(mj.models.sine_loss(w, query))
      a = jax.tree.map(lambda x, j=j: x[min(j, 1)], alpha)
      g = jax.grad(mj.models.sine_loss)(w, support)
      w = jax.tree.map(lambda w_, a_, g_: w_ - a_ * g_, w, a, g)
    return jnp.stack(out + [mj.models.sine_loss(w, query)])

  want = jnp.mean(jax.vmap(manual)(tasks.support, tasks.query), axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # For k <= N the curve matches mj.adapt with the same learned step sizes.
  adapted = jax.vmap(lambda s: mj.adapt(
      mj.models.sine_loss, meta, s, inner_lr=None, num_inner_steps=2)[0])(tasks.support)
  after_n = jnp.mean(jax.vmap(mj.models.sine_loss)(adapted, tasks.query))
  np.testing.assert_allclose(got[2], after_n, rtol=1e-5)


@pytest.mark.parametrize('args, match', [
    (['--inner_lrs=0.01,0.1', '--learn_inner_lr=scalar'], '--learn_inner_lr'),
    (['--inner_lrs=0.01,0.1', '--inner_lr=0.01'], '--inner_lr'),
    (['--inner_lrs=0.01,0.1', '--zo_inner_lr=0.01'], '--zo_inner_lr'),
    (['--inner_lrs=0.01,0.1', '--sweep'], '--sweep'),
    (['--per_step_inner_lr'], 'needs --learn_inner_lr'),
    (['--inner_lr_meta_lr=1e-4'], 'inner_lr_meta_lr needs --learn_inner_lr'),
    (['--inner_lr_optimizer=adam'], 'needs --learn_inner_lr'),
    (['--learn_inner_lr=scalar', '--inner_lr_meta_lr=0'], 'positive'),
    (['--learn_inner_lr=scalar', '--inner_lr_optimizer=nope'],
     '--inner_lr_optimizer=.nope. is not an optax optimizer'),
    (['--inner_lrs=0.01,0.01'], 'twice'),
    (['--inner_lrs=0,0.1'], 'positive'),
    (['--inner_lrs=0.1,x'], 'inner_lrs'),
])
def test_bad_inner_lr_flag_combinations_fail_fast(tmp_path, args, match):
  with pytest.raises(app.UsageError, match=match):
    run_launcher(mf, args + [f'--workdir={tmp_path}'])
  assert not (tmp_path / mf.NAME).exists()
