"""The named steps of ``experiments.training.train``, each on a tiny problem."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import builders
from experiments import config
from experiments import loop
from experiments import problems
from experiments import training

DIM = 3


def _loss(w, batch):
  return jnp.mean((batch['z'] - w) ** 2)


def _sample(key, num_tasks):
  k_c, k_s, k_q = jax.random.split(key, 3)
  centre = jax.random.normal(k_c, (num_tasks, 1, DIM))
  draw = lambda k: {'z': centre + 0.1 * jax.random.normal(k, (num_tasks, 2, DIM))}
  return mj.Task(support=draw(k_s), query=draw(k_q))


def _cfg(**changes):
  cfg = config.TrainConfig(
      experiment='tiny', algorithms=('maml', 'fo_maml'), num_inner_steps=1,
      inner_lr=0.1, zo_inner_lr=0.1, meta_lr=1e-2, meta_optimizer='sgd',
      num_directions=1, delta=0.1, tasks_per_batch=2, num_iterations=5,
      eval_every=2, seeds=(0, 1), workdir='/tmp', run_name=None, resume=False,
      remat=False, sweep=False, sweep_meta_lrs=(), sweep_deltas=(),
      sweep_iterations=1)
  return dataclasses.replace(cfg, **changes)


def _problem(cfg):
  problem, _, _ = problems.supervised_problem(
      cfg, loss_fn=_loss, init_params=lambda k: jax.random.normal(k, (DIM,)),
      sample=_sample, num_test_tasks=2, eval_seed=0)
  return problem


def test_members_are_the_seeds_or_the_step_size_grid_inner_lr_major():
  assert training.chunk_members(_cfg()) == (
      training.Member(None, 0), training.Member(None, 1))
  assert training.chunk_members(_cfg(inner_lrs=(0.1, 0.2))) == (
      (0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1))


def test_chunk_lengths_are_eval_every_and_the_remainder():
  assert training.chunk_lengths(_cfg(num_iterations=5, eval_every=2)) == {2, 1}
  assert training.chunk_lengths(_cfg(num_iterations=4, eval_every=2)) == {2}


def test_a_grid_member_trains_as_a_run_with_its_fixed_step_size():
  """Member (alpha = 0.2, seed 0) of the grid equals the run at --inner_lr=0.2."""
  grid_cfg = _cfg(algorithms=('maml',), seeds=(0,), inner_lrs=(0.1, 0.2),
                  num_iterations=2)
  fixed_cfg = _cfg(algorithms=('maml',), seeds=(0,), inner_lr=0.2,
                   num_iterations=2)
  problem = _problem(fixed_cfg)
  hp = fixed_cfg.hparams('maml')
  optimizer = builders.meta_optimizer(fixed_cfg, hp.meta_lr)
  w0 = jax.vmap(problem.init_params)(jnp.stack([jax.random.PRNGKey(0)] * 2))
  keys = jnp.stack([jax.random.PRNGKey(1)] * 2)

  grid_runs = training.build_chunk_runs(
      problem, grid_cfg, 'maml', hp, optimizer,
      member_lrs=jnp.asarray([0.1, 0.2]), mesh=None)
  fixed_runs = training.build_chunk_runs(
      problem, fixed_cfg, 'maml', hp, optimizer, member_lrs=None, mesh=None)
  assert set(grid_runs) == set(fixed_runs) == {2}
  states = training.init_states(grid_cfg, w0, hp.inner_lr, optimizer)
  grid_state, _ = grid_runs[2](states, keys)
  one = jax.tree.map(lambda x: x[1:], states)
  fixed_state, metrics = fixed_runs[2](one, keys[1:])
  assert metrics['loss_after'].shape == (1, 2)
  chex.assert_trees_all_close(grid_state.params[1:], fixed_state.params,
                              rtol=1e-6)
  assert not np.allclose(grid_state.params[0], grid_state.params[1])


def test_evaluations_compile_once_per_step_size_setting():
  cfg = _cfg(algorithms=('maml', 'fo_maml', 'zo_maml'))
  problem = _problem(cfg)
  hparams = {'maml': config.HParams(1e-2, 0.1, 0.1),
             'fo_maml': config.HParams(1e-3, 0.1, 0.1),
             'zo_maml': config.HParams(1e-2, 0.1, 0.05)}
  fixed = training.build_evaluations(problem, cfg, hparams, None)
  assert fixed['maml'] is fixed['fo_maml']
  assert fixed['zo_maml'] is not fixed['maml']
  grid = training.build_evaluations(problem, cfg, hparams,
                                    jnp.asarray([0.1, 0.05]))
  assert grid['maml'] is grid['fo_maml'] is grid['zo_maml']
  # Member i is evaluated with its own step size: equal params, the grid's
  # values are the fixed evaluations at 0.1 and at 0.05.
  params = jnp.zeros((2, DIM))
  by_member = grid['maml'](params)['test_loss']
  np.testing.assert_allclose(
      by_member, [fixed['maml'](params)['test_loss'][0],
                  fixed['zo_maml'](params)['test_loss'][1]], rtol=1e-6)


def test_member_rows_hold_the_chunk_and_the_evaluation():
  members = (training.Member(0.1, 0), training.Member(0.2, 0))
  metrics = {'loss_after': np.array([[1.0, 3.0], [2.0, 4.0]]),
             'grad_norm': np.array([[5.0, 6.0], [7.0, 8.0]]),
             'num_nonfinite': np.array([[0, 1], [0, 0]]),
             'aux_after': {'accuracy': np.array([[0.5, 0.7], [0.2, 0.4]])}}
  chunk = loop.Chunk(length=2, metrics=metrics, seconds=1.5)
  values = {'test_loss': np.array([0.25, 0.5])}
  rows = training.member_rows(members, 'maml', 4, 9.0, chunk, values)
  assert rows[0] == {'algorithm': 'maml', 'seed': 0, 'iteration': 4,
                     'wall_time': 9.0, 'inner_lr': 0.1, 'train_loss': 2.0,
                     'grad_norm': 6.0, 'num_nonfinite': 1,
                     'chunk_seconds': 1.5, 'train_accuracy': 0.6,
                     'test_loss': 0.25}
  assert rows[1]['inner_lr'] == 0.2 and rows[1]['train_loss'] == 3.0
  initial = training.member_rows(members[:1], 'maml', 0, 0.0, None,
                                 {'test_loss': np.array([0.75])})
  assert initial == [{'algorithm': 'maml', 'seed': 0, 'iteration': 0,
                      'wall_time': 0.0, 'inner_lr': 0.1, 'test_loss': 0.75}]
  line = training.describe_rows(rows, learned=False)
  assert line == ('maml@alpha=0.1: train 2 test 0.25 | '
                  'maml@alpha=0.2: train 3 test 0.5')
