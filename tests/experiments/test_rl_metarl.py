"""Tests of the meta-RL training step and the launcher (tiny sizes)."""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
from experiments import loop
from experiments import rundir
from experiments.rl import envs
from experiments.rl import evaluate
from experiments.rl import metarl
from experiments.rl import registry
from experiments.rl import report
from experiments.rl import train

TINY = dict(num_tasks=2, num_episodes=3, hidden=(8,))
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def tiny(algorithm='maml', **kw):
  return metarl.RLConfig(algorithm=algorithm, **{**TINY, **kw})


@pytest.mark.slow
def test_the_estimators_kept_episodes_are_what_trpo_needs():
  """TRPO reuses the estimator's S_j, T and w_N: check they are the real ones."""
  env = envs.navigation2d()
  # D_j = S_j here, so exact MAML is autodiff through the stored episodes.
  meta = metarl.build(env, tiny(num_inner_steps=2, separate_hessian_batch=False))
  params = meta.init(jax.random.PRNGKey(0)).params
  goal = jnp.array([0.3, -0.2])
  key = jax.random.PRNGKey(7)
  task = metarl.make_tasks(goal, meta.cfg)
  grads, aux = jax.jit(meta.estimator)(params, task, key)
  support, query, w_n = aux.support_batches, aux.query_batch, aux.adapted_params
  assert support['obs'].shape[:2] == (2, 3) and query['obs'].shape[0] == 3
  # The episodes are the sampler's, drawn at w_j with the estimator's keys.
  loss = meta.loss_fn
  keys = mj.task_keys(key, 2)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)
  # Episodes drawn at a w_j that differs in the last float bit (jit vs eager)
  # drift apart a little over the horizon.
  close_ep = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
  w = params
  for j in range(2):
    s_j = meta.sampler(w, goal, keys.support[j])
    jax.tree.map(close_ep, s_j, jax.tree.map(lambda x, j=j: x[j], support))
    w = jax.tree.map(lambda p, g: p - 0.1 * g, w, jax.grad(loss)(w, s_j))
  jax.tree.map(close, w, w_n)
  jax.tree.map(close_ep, meta.sampler(w_n, goal, keys.query), query)
  np.testing.assert_allclose(loss(w_n, query), aux.query_loss_after, rtol=1e-3, atol=1e-5)
  # Meta-RL pays no rollout for l(w_0; T): returns[0] measures w_0 instead.
  assert aux.query_loss_before is None
  # Asked for it, maml_jax reports l(w_0; T) on a query batch sampled at w_0
  # (same key), and nothing else changes.
  est_before = metarl.make_estimator(loss, meta.sampler, meta.cfg,
                                     loss_before=True)
  grads_b, aux_b = jax.jit(est_before)(params, task, key)
  query_0 = meta.sampler(params, goal, keys.query)
  np.testing.assert_allclose(loss(params, query_0), aux_b.query_loss_before,
                             rtol=1e-3, atol=1e-5)
  jax.tree.map(close, grads_b, grads)
  jax.tree.map(close_ep, aux_b.query_batch, query)
  s0 = jax.tree.map(lambda x: x[0], support)
  np.testing.assert_allclose(loss(params, s0), aux.inner_losses[0], rtol=1e-3, atol=1e-5)
  # Re-running the adaptation on the kept episodes gives w_N again, so the TRPO
  # surrogate at w_old is -mean(A) (every ratio 1), as the step assumes.
  adapt = lambda w: mj.adapt(loss, w, mj.PerStep(support), inner_lr=0.1,
                             num_inner_steps=2)[0]
  jax.tree.map(close, adapt(params), w_n)
  # Exact MAML = gradient of the outer loss through the adaptation on the
  # kept episodes, which is the gradient of the TRPO surrogate at w_old.
  ref = jax.grad(lambda w: loss(adapt(w), query))(params)
  jax.tree.map(close, grads, ref)


def test_evaluate_draws_fresh_episodes_at_every_iterate():
  """metarl.evaluate: episodes at w_0..w_K, each step a gradient on its own."""
  env = envs.navigation2d()
  meta = metarl.build(env, tiny())
  params = meta.init(jax.random.PRNGKey(0)).params
  key = jax.random.PRNGKey(5)
  returns, goals, obs = jax.jit(lambda p: metarl.evaluate(
      meta, p, key, num_tasks=2, num_steps=2))(params)
  assert returns.shape == (3,) and goals.shape == (2, 2)
  assert obs.shape == (2, 3, 3, env.horizon, env.obs_dim)
  # By hand: S_k drawn at w_k with the keys of a (K + 1)-step curve.
  task_keys = jax.random.split(jax.random.split(key)[1], 2)
  by_task = []
  for i in range(2):
    keys = mj.task_keys(task_keys[i], 3).support
    w, task_returns = params, []
    for k in range(3):
      batch = meta.sampler(w, goals[i], keys[k])
      np.testing.assert_allclose(batch['obs'], obs[i, k], rtol=2e-3, atol=2e-4)
      task_returns.append(jnp.mean(jnp.sum(batch['rewards'], -1)))
      w = jax.tree.map(lambda p, g: p - 0.1 * g, w,
                       jax.grad(meta.loss_fn)(w, batch))
    by_task.append(jnp.stack(task_returns))
  np.testing.assert_allclose(returns, jnp.mean(jnp.stack(by_task), 0),
                             rtol=2e-3, atol=1e-4)


def test_env_steps_per_iteration_counts_only_what_the_algorithm_samples():
  env = envs.navigation2d()
  batch = 2 * 3 * env.horizon  # tasks x episodes x horizon
  # S_0, S_1, D_0, D_1, T; FO-MAML needs no D_j; no query batch at w_0.
  assert train.env_steps_per_iteration(env, tiny(num_inner_steps=2)) == 5 * batch
  assert train.env_steps_per_iteration(
      env, tiny('fo_maml', num_inner_steps=2)) == 3 * batch
  assert train.env_steps_per_iteration(
      env, tiny(separate_hessian_batch=False)) == 2 * batch


def test_estimators_come_from_the_library_registry():
  env = envs.navigation2d()
  for algorithm in mj.ESTIMATORS:
    metarl.validate_config(tiny(algorithm))
  meta = metarl.build(env, tiny('hf_maml'))
  params = meta.init(jax.random.PRNGKey(0)).params
  task = metarl.make_tasks(jnp.array([0.1, 0.2]), meta.cfg)
  shapes = jax.eval_shape(meta.estimator, params, task, jax.random.PRNGKey(1))
  assert shapes[1].query_loss_before is None
  assert shapes[1].support_batches['obs'].shape[:2] == (1, 3)


def test_fisher_vector_product_is_the_kl_hessian():
  env = envs.navigation2d()
  meta = metarl.build(env, tiny())
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  thetas = jax.vmap(lambda k: meta.init(k).params)(keys[:2])
  obs = jax.random.uniform(keys[2], (2, 3, 5, 2), minval=-0.5, maxval=0.5)
  old = jax.vmap(meta.policy.apply)(thetas, obs)
  from experiments.rl import policy as policy_lib

  def kl(w):  # mean over tasks of mean_s KL(pi_{theta_i} || pi_w)
    mean, log_std = jax.vmap(meta.policy.apply, in_axes=(None, 0))(w, obs)
    return jnp.mean(policy_lib.gaussian_kl(old[0], old[1], mean, log_std))

  v = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(3), x.shape),
                   jax.tree.map(lambda x: x[0], thetas))
  fvp = metarl.fisher_vector_product(meta.policy.apply, thetas, obs)(v)
  # Per task the Hessian at its own theta_i; average over tasks.
  def task_hvp(i):
    theta = jax.tree.map(lambda x: x[i], thetas)
    def kl_i(w):
      mean, log_std = meta.policy.apply(w, obs[i])
      return jnp.mean(policy_lib.gaussian_kl(old[0][i], old[1][i], mean, log_std))
    return jax.jvp(jax.grad(kl_i), (theta,), (v,))[1]
  ref = jax.tree.map(lambda a, b: (a + b) / 2, task_hvp(0), task_hvp(1))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6),
               fvp, ref)


def test_trpo_iteration_respects_kl_bound():
  """MAML-RL's exact metric; the default metric runs in the resume test."""
  kl_hvp = 'through_adaptation'
  env = envs.navigation2d()
  meta = metarl.build(env, tiny('fo_maml', kl_hvp=kl_hvp, max_kl=1e-3))
  state = meta.init(jax.random.PRNGKey(0))
  run = metarl.make_fused(meta, 2)
  new_state, metrics = run(state, jax.random.PRNGKey(1))
  assert int(new_state.iteration) == 2
  # First, that TRPO took steps (with none, the reported KL would be 0 anyway):
  # in this setup both iterations accept one and the parameters move.
  accepted = np.asarray(metrics['trpo_accepted'])
  np.testing.assert_array_equal(accepted, [True, True])
  assert np.all(np.asarray(metrics['trpo_step_frac']) > 0)
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)))
  # Then the bound on those steps: the KL of the adapted policies.
  kl = np.asarray(metrics['trpo_kl'])
  assert np.all(kl > 0) and np.all(kl <= 1e-3), kl
  assert np.all(np.asarray(metrics['trpo_improve']) < 0)
  # The pre-update policy's KL is reported (not bounded): > 0 exactly when a
  # step was taken.
  kl_pre = np.asarray(metrics['trpo_kl_pre_update'])
  assert np.all(np.isfinite(kl_pre)) and np.all(kl_pre > 0)
  assert metrics['returns'].shape == (2, 2)
  assert np.all(np.isfinite(metrics['returns']))


def test_bad_configs_fail_fast():
  with pytest.raises(ValueError, match='algorithm'):
    metarl.validate_config(tiny('reptile'))
  with pytest.raises(ValueError, match='num_episodes'):
    metarl.validate_config(tiny(num_episodes=0))
  with pytest.raises(ValueError, match='outer_optimizer'):
    metarl.validate_config(tiny(outer_optimizer='sgd'))
  with pytest.raises(ValueError, match='cg_subsample'):
    metarl.validate_config(tiny(cg_subsample=0.0))
  with pytest.raises(ValueError, match='unknown env'):
    registry.make_env('cartpole')


@pytest.mark.parametrize('args, message', [
    (['--algorithms=maml,reptile'], 'unknown algorithm'),
    (['--horizon=0'], 'horizon'),
    (['--env=atari'], 'choose from'),
    (['--meta_optimizer=sgd'], 'trpo'),
    (['--num_episodes=0'], 'num_episodes'),
    (['--seeds=1,1'], 'seeds'),
    (['--max_kl=-1'], 'max_kl'),
    (['--sweep'], 'sweep'),
])
def test_launcher_bad_flags_fail_fast(args, message, tmp_path):
  train.define_flags()
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['rl', f'--workdir={tmp_path}'] + args)
    with pytest.raises(app.UsageError, match=message):
      train.make_configs()


def test_halfcheetah_without_brax_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'brax', None)  # import brax -> ImportError
  train.define_flags()
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['rl', f'--workdir={tmp_path}', '--env=halfcheetah_dir'])
    with pytest.raises(app.UsageError, match=r"pip install -e '\.\[brax\]'"):
      train.make_configs()


def test_launcher_cli_rejects_bad_flag_quickly(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl', f'--workdir={tmp_path}',
       '--algorithms=maml,foo'], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert out.returncode != 0
  assert 'unknown algorithm' in out.stderr


@pytest.mark.slow
def test_launcher_runs_every_algorithm(tmp_path):
  """CI smoke run: 2 meta-iterations of each paper algorithm, tiny sizes.

  With the Adam outer step, to keep compilation short (the TRPO step is
  compiled by the other tests).
  """
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl', f'--workdir={tmp_path}',
       '--run_name=smoke', '--algorithms=maml,fo_maml,zo_maml,ggs_maml',
       '--seeds=0', '--num_iterations=2', '--eval_every=2',
       '--tasks_per_batch=2', '--num_episodes=2', '--hidden=8',
       '--num_directions=2', '--eval_tasks=2', '--eval_steps=1',
       '--meta_optimizer=adam'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  run = tmp_path / 'smoke'
  rows = [json.loads(l) for l in open(run / 'metrics.jsonl')]
  for algorithm in ('maml', 'fo_maml', 'zo_maml', 'ggs_maml'):
    train_rows = [r for r in rows if r['algorithm'] == algorithm and r['kind'] == 'train']
    assert [r['iteration'] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r['return_after']) for r in train_rows)
    # The pre-update measure is the return at w_0; no query loss at w_0.
    assert all(np.isfinite(r['return_before']) and 'loss_before' not in r
               and np.isfinite(r['loss_after']) for r in train_rows)
  for name in ('config.json', 'summary.md', 'metrics.csv', 'figures/returns.png',
               'figures/eval_steps.png', 'figures/trajectories.png'):
    assert (run / name).exists(), name
  assert os.listdir(run / 'checkpoints')
  # The report rebuilds the run from its folder: latest checkpoint, trained params.
  _, configs, settings, metas, states, step = train.load_run(str(run))
  assert step == 2 and settings['seeds'] == [0] and set(configs) == set(metas)
  init = jax.vmap(metas['maml'].init)(loop.seed_keys([0])[0])
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       states['maml'].params, init.params)
  assert max(jax.tree.leaves(moved)) > 0
  # One algorithm is enough (each one compiles its evaluation); 'foo' is skipped.
  paths = report.plot_trajectories_from(str(run), ['foo', 'zo_maml'], str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['nav2d_trajectories_zo_maml.png']
  assert all(os.path.getsize(p) > 0 for p in paths)
  # The report's table: one separator cell per column, one row per algorithm.
  assert report.env_of([str(run)]) == 'navigation2d'
  lines = report.table(report.load_rows([str(run)])).splitlines()
  assert lines[0].count('|') == lines[1].count('|') == lines[2].count('|')
  assert len(lines) == 2 + 4
  # Re-evaluation of chosen checkpoints (0: w_0) on the training's evaluation
  # tasks gives the launcher's own evaluation rows, per task.
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl.evaluate', f'--run={run}',
       '--checkpoints=0,2', '--algorithms=zo_maml', '--eval_tasks=2',
       f'--eval_seed={train.EVAL_SEED}', f'--out={tmp_path / "evaluation"}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  evaluation = json.load(open(tmp_path / 'evaluation' / 'evaluation.json'))
  assert [(r['algorithm'], r['iteration']) for r in evaluation] == [('zo_maml', 0),
                                                                  ('zo_maml', 2)]
  for r in evaluation:
    logged = next(x for x in rows if x['kind'] == 'eval' and x['algorithm'] == 'zo_maml'
                  and x['iteration'] == r['iteration'])
    np.testing.assert_allclose(r['mean'], [logged['eval_return_0'], logged['eval_return_1']],
                               rtol=1e-4)
    returns = np.array(r['returns'])
    np.testing.assert_allclose(r['gain'][1], np.mean(returns[:, 1] - returns[:, 0]), rtol=1e-5)
  assert evaluation[0]['goals'] == evaluation[1]['goals']  # the same tasks
  assert (tmp_path / 'evaluation' / 'nav2d_adaptation.png').stat().st_size > 0
  assert 'zo_maml | 0 | 2 |' in (tmp_path / 'evaluation' / 'evaluation.md').read_text()
  # Run again: what --out holds with the same settings is reused, not re-run.
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl.evaluate', f'--run={run}', '--checkpoints=2',
       '--algorithms=zo_maml', '--eval_tasks=2', f'--eval_seed={train.EVAL_SEED}',
       f'--out={tmp_path / "evaluation"}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and 'reusing the evaluations of checkpoints [2]' in out.stderr
  assert json.load(open(tmp_path / 'evaluation' / 'evaluation.json')) == evaluation
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl.evaluate', f'--run={run}', '--checkpoints=0,7'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 2 and 'has no checkpoint 7; it has [2]' in out.stderr, out.stderr


def test_evaluation_summary_is_paired_over_tasks():
  returns = np.array([[-10.0, -8.0, -7.0], [-20.0, -19.0, -15.0], [-30.0, -27.0, -29.0]])
  s = evaluate.summarize(returns)
  np.testing.assert_allclose(s['mean'], [-20.0, -18.0, -17.0])
  np.testing.assert_allclose(s['gain'], [0.0, 2.0, 3.0])
  # The gain's error is that of the per-task differences, not of the means.
  np.testing.assert_allclose(s['gain_se'][1], np.std([2.0, 1.0, 3.0], ddof=1) / np.sqrt(3))
  np.testing.assert_allclose(s['se'][0], np.std([-10.0, -20.0, -30.0], ddof=1) / np.sqrt(3))
  assert evaluate.standing_still('halfcheetah_vel', [0.5, 1.5], 100) == -100.0
  assert evaluate.standing_still('navigation2d', [[0.1, 0.2]], 100) is None


def test_evaluation_figures(tmp_path):
  rng = np.random.default_rng(0)
  def row(iteration, goals):
    returns = rng.normal(-50.0, 5.0, (len(goals), 3))
    return dict(algorithm='maml', seed=0, iteration=iteration, num_tasks=len(goals),
                goals=goals, returns=returns.tolist(), **evaluate.summarize(returns))
  velocities = rng.uniform(0.0, 2.0, 6).tolist()
  rows = [row(0, velocities), row(100, velocities)]
  assert os.path.getsize(evaluate.plot(rows, str(tmp_path / 'a.png'), title='t',
                                       reference=-100.0)) > 0
  assert os.path.getsize(evaluate.plot_gain_by_task(rows, str(tmp_path / 'g.png'),
                                                    title='t')) > 0
  # 2D goals (navigation) have no scalar task parameter to plot against.
  goals_2d = rng.uniform(-0.5, 0.5, (6, 2)).tolist()
  assert evaluate.plot_gain_by_task([row(0, goals_2d)], str(tmp_path / 'n.png'),
                                    title='t') is None
  assert 'maml | 0 | 100 |' in evaluate.table(rows)


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path):
  env = envs.navigation2d()
  configs = {'fo_maml': tiny('fo_maml')}
  settings = dict(env='navigation2d', algorithms=('fo_maml',), seeds=(0,),
                  num_iterations=2, eval_every=1, eval_tasks=2, eval_steps=1)
  compiled = {}
  full = rundir.RunDir(str(tmp_path / 'full'))
  os.makedirs(full.path)
  train.run(env, configs, settings, full, compiled=compiled)

  class Killed(Exception):
    pass

  def kill(iteration):
    if iteration == 1:
      raise Killed()

  part = rundir.RunDir(str(tmp_path / 'part'))
  os.makedirs(part.path)
  with pytest.raises(Killed):
    train.run(env, configs, settings, part, chunk_hook=kill, compiled=compiled)
  rows = [json.loads(l) for l in open(os.path.join(part.path, 'metrics.jsonl'))]
  resumed = rundir.RunDir(part.path, rows)
  train.run(env, configs, settings, resumed, resume=True, compiled=compiled)
  drop = lambda r: {k: v for k, v in r.items() if k not in ('wall_time', 'chunk_seconds')}
  assert [drop(r) for r in resumed.rows] == [drop(r) for r in full.rows]
  # The default CG metric keeps the bound too, on steps actually taken.
  train_rows = [r for r in full.rows if r['kind'] == 'train']
  assert len(train_rows) == 2 and all(r['trpo_accepted'] for r in train_rows)
  kls = [r['trpo_kl'] for r in train_rows]
  assert min(kls) > 0 and max(kls) <= configs['fo_maml'].max_kl
