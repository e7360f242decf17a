"""The global task mesh on one process (4 forced CPU devices, tests/conftest.py).

Many processes: tests/experiments/test_distributed.py.
"""

import functools
import re

import jax
import numpy as np
import optax
import pytest

import maml_jax as mj

KEY = jax.random.PRNGKey(0)
EST = mj.ggs_maml(mj.models.mf_loss, inner_lr=0.01, num_inner_steps=1,
                  num_directions=2, delta=1e-2)
OPT = optax.adam(1e-2)


def _mesh():
  assert jax.device_count() >= 4, 'tests/conftest.py forces 4 CPU devices'
  return mj.task_mesh(jax.devices()[:4])


def test_fused_train_on_mesh_equals_one_device_under_vmap_over_seeds():
  mesh = _mesh()
  sample = functools.partial(mj.tasks.matrix_factorization_tasks, num_tasks=8)
  init = jax.vmap(lambda k: mj.init_train_state(mj.models.init_mf_params(k), OPT))
  keys = jax.random.split(KEY, 2)  # two seeds, vmapped as the launchers do
  plain = jax.jit(jax.vmap(mj.make_fused_train(EST, OPT, sample, 3)))
  sharded = jax.jit(jax.vmap(mj.make_fused_train(EST, OPT, sample, 3,
                                                 mesh=mesh)))
  state, train_keys = mj.replicate((init(keys), keys), mesh)
  assert len(jax.tree.leaves(state)[0].sharding.device_set) == 4
  compiled = sharded.lower(state, train_keys).compile()
  # The tasks really are split: the program reduces across devices.
  assert 'all-reduce' in compiled.as_text()
  s4, m4 = compiled(state, train_keys)
  s1, m1 = plain(init(keys), keys)
  np.testing.assert_allclose(s4.params, s1.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m4['loss_after'], m1['loss_after'], rtol=1e-5)
  one_seed = jax.tree.map(lambda x: x[0], init(keys))
  with pytest.raises(ValueError, match='multiple of 4'):
    mj.make_fused_train(EST, OPT, functools.partial(mj.tasks.matrix_factorization_tasks, num_tasks=6),
                        1, mesh=mesh)(one_seed, KEY)


def test_process_local_tasks_make_the_global_batch():
  mesh = _mesh()
  tasks = mj.tasks.matrix_factorization_tasks(KEY, 8)
  mine = mj.process_tasks(8, mesh)
  assert mine == slice(0, 8)  # one process holds every task
  local = jax.tree.map(lambda x: x[mine], tasks)
  global_tasks = mj.shard_process_tasks(local, mesh)
  assert mj.num_tasks(global_tasks) == 8
  assert len(global_tasks.support['z'].sharding.device_set) == 4
  np.testing.assert_array_equal(global_tasks.support['z'], tasks.support['z'])
  with pytest.raises(ValueError, match='evenly'):
    mj.shard_process_tasks(jax.tree.map(lambda x: x[:6], tasks), mesh)
  with pytest.raises(ValueError, match='multiple of 4'):
    mj.process_tasks(6, mesh)



@pytest.mark.parametrize('task_batching', ['map', 2, 'vmap'])
def test_train_step_on_mesh_equals_one_device(task_batching):
  mesh = _mesh()
  est = mj.fo_maml(mj.models.mf_loss, inner_lr=0.01, num_inner_steps=1)
  state = mj.init_train_state(mj.models.init_mf_params(KEY), OPT)
  tasks = mj.tasks.matrix_factorization_tasks(KEY, 8)
  plain = mj.make_train_step(est, OPT, task_batching=task_batching)
  sharded = mj.make_train_step(est, OPT, task_batching=task_batching, mesh=mesh)
  s1, m1 = plain(state, tasks, KEY)
  state4, key4 = mj.replicate((state, KEY), mesh)
  s4, m4 = sharded(state4, mj.shard_tasks(tasks, mesh), key4)
  np.testing.assert_allclose(s4.params, s1.params, rtol=1e-5, atol=1e-6)
  for name in ('loss_after', 'grad_norm', 'num_nonfinite'):
    np.testing.assert_allclose(m4[name], m1[name], rtol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match='multiple of 4'):
    sharded(state, mj.tasks.matrix_factorization_tasks(KEY, 6), KEY)


def test_train_step_on_mesh_splits_a_lax_map_over_the_devices():
  """Each device loops over its own 2 tasks; GSPMD alone would loop over all 8."""
  mesh = _mesh()
  est = mj.fo_maml(mj.models.mf_loss, inner_lr=0.01, num_inner_steps=1)
  state, key = mj.replicate((mj.init_train_state(mj.models.init_mf_params(KEY), OPT),
                             KEY), mesh)
  tasks = mj.shard_tasks(mj.tasks.matrix_factorization_tasks(KEY, 8), mesh)

  def trip_counts(step):
    text = step.lower(state, tasks, key).compile().as_text()
    return set(re.findall(r'known_trip_count":\{"n":"(\d+)"', text)) - {'1'}

  assert trip_counts(mj.make_train_step(est, OPT, task_batching='map',
                                        mesh=mesh)) == {'2'}
  # The same step without the mesh, on the same sharded tasks (GSPMD).
  assert trip_counts(mj.make_train_step(est, OPT, task_batching='map')) == {'8'}
