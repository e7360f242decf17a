"""Task batches: eq. (7) mean, non-finite tasks, sharding over 4 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj
import toy

KEY = jax.random.PRNGKey(0)


def _setup(num_tasks=8):
  params = toy.init_mlp_params(KEY)
  tasks = toy.wave_tasks(jax.random.PRNGKey(1), num_tasks)
  return params, tasks


EST = mj.ggs_maml(toy.mlp_loss, inner_lr=0.01, num_inner_steps=2,
                  num_directions=3, delta=1e-2, loss_before=True)


@pytest.mark.slow
def test_mean_over_tasks_with_split_keys():
  params, tasks = _setup()
  grads, aux = jax.jit(mj.meta_gradient, static_argnums=0)(EST, params, tasks, KEY)
  keys = jax.random.split(KEY, 8)
  est = jax.jit(EST)
  per_task = [est(params, jax.tree.map(lambda x: x[i], tasks), keys[i])
              for i in range(8)]
  expected = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0),
                          *[g for g, _ in per_task])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                       atol=1e-5),
               grads, expected)
  np.testing.assert_allclose(
      aux.query_loss_after, np.mean([a.query_loss_after for _, a in per_task]),
      rtol=1e-5)
  assert aux.per_task.inner_losses.shape == (8, 2)
  assert int(aux.num_nonfinite) == 0


def test_nonfinite_task_is_reported_and_left_out():
  params, tasks = _setup(4)
  bad = tasks._replace(support={
      'x': tasks.support['x'].at[2].set(jnp.nan), 'y': tasks.support['y']})
  est = mj.maml(toy.mlp_loss, inner_lr=0.01, num_inner_steps=2)
  meta_grad = jax.jit(lambda p, t, k: mj.meta_gradient(est, p, t, k))
  grads, aux = meta_grad(params, bad, KEY)
  assert int(aux.num_nonfinite) == 1
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  keep = jnp.array([0, 1, 3])
  good = jax.tree.map(lambda x: x[keep], tasks)
  expected, _ = meta_grad(params, good, KEY)  # maml ignores keys
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               grads, expected)


def test_task_axis_errors():
  params, tasks = _setup(4)
  one = jax.tree.map(lambda x: x[0], tasks)
  with pytest.raises(ValueError, match='leading'):
    mj.meta_gradient(EST, params, one._replace(query={'x': one.query['x'][:3],
                                                      'y': one.query['y'][:3]}),
                     KEY)
  with pytest.raises(ValueError, match='leading task axis'):
    mj.meta_gradient(EST, params,
                     mj.Task(support={'x': jnp.float32(1.0)}, query={'x': jnp.ones(2)}),
                     KEY)
  with pytest.raises(ValueError, match='maml_jax.Task'):
    mj.meta_gradient(EST, params, (tasks.support, tasks.query), KEY)


@pytest.mark.slow
def test_sharded_task_batch_matches_single_device():
  """A train step on tasks sharded over 4 devices == the same step on one device."""
  assert jax.device_count() >= 4, 'tests/conftest.py forces 4 CPU devices'
  import optax
  params, tasks = _setup(8)
  mesh = mj.task_mesh(jax.devices()[:4])
  sharded = mj.shard_tasks(tasks, mesh)
  assert len(sharded.support['x'].sharding.device_set) == 4
  opt = optax.adam(1e-3)
  step = mj.make_train_step(EST, opt)
  s1, m1 = step(mj.init_train_state(params, opt), tasks, KEY)
  s4, m4 = step(mj.init_train_state(params, opt), sharded, KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               s4.params, s1.params)
  for name in ('loss_before', 'loss_after', 'grad_norm'):
    np.testing.assert_allclose(m4[name], m1[name], rtol=1e-5)
  with pytest.raises(ValueError, match='evenly'):
    mj.shard_tasks(jax.tree.map(lambda x: x[:6], tasks), mesh)


def _tanh_loss(params, batch):
  pred = jnp.tanh(batch['x'] @ params['w'] + params['b'])
  return jnp.mean((pred - batch['y']) ** 2)


def _tanh_tasks(num_tasks, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'b': jnp.zeros((2,), jnp.float32)}
  batch = lambda: {'x': jnp.asarray(rng.normal(size=(num_tasks, 5, 3)),
                                    jnp.float32),
                   'y': jnp.asarray(rng.normal(size=(num_tasks, 5, 2)),
                                    jnp.float32)}
  return params, mj.Task(support=batch(), query=batch())


@pytest.mark.parametrize('name', ['maml', 'ggs_maml'])
def test_shard_map_with_axis_name_equals_unsharded(name):
  """Inside shard_map the mean, keys and non-finite count are global (docs/design.md, 'Sharding')."""
  from jax.sharding import PartitionSpec as P
  params, tasks = _tanh_tasks(8)
  # One task with a NaN target: left out on its device, counted globally.
  tasks = tasks._replace(query={**tasks.query,
                                'y': tasks.query['y'].at[5, 0, 0].set(np.nan)})
  meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.1,
                                                    'per_parameter'))
  kwargs = dict(num_directions=3, delta=1e-2) if name == 'ggs_maml' else {}
  est = mj.make_estimator(name, _tanh_loss, num_inner_steps=2,
                          loss_before=True, **kwargs)
  reference, ref_aux = jax.jit(
      lambda p, t, k: mj.meta_gradient(est, p, t, k))(meta, tasks, KEY)
  assert int(ref_aux.num_nonfinite) == 1
  mesh = mj.task_mesh(jax.devices()[:4])

  def sharded(p, t, k):
    grads, aux = mj.meta_gradient(est, p, t, k, axis_name='tasks')
    return grads, aux.num_nonfinite, aux.query_loss_before

  grads, nonfinite, before = jax.jit(jax.shard_map(
      sharded, mesh=mesh, in_specs=(P(), P('tasks'), P()),
      out_specs=(P(), P(), P())))(meta, mj.shard_tasks(tasks, mesh), KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-6),
               grads, reference)
  assert int(nonfinite) == 1
  np.testing.assert_allclose(before, ref_aux.query_loss_before, rtol=1e-6)
  # pmap over the same axis split gives the same result on every device.
  split = jax.tree.map(lambda x: x.reshape((4, 2) + x.shape[1:]), tasks)
  per_device, _ = jax.pmap(
      lambda p, t, k: mj.meta_gradient(est, p, t, k, axis_name='i'),
      axis_name='i', in_axes=(None, 0, None),
      devices=jax.devices()[:4])(meta, split, KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, np.broadcast_to(b, a.shape), rtol=2e-5, atol=1e-6),
               per_device, reference)


@pytest.mark.slow
@pytest.mark.parametrize('task_batching', ['map', 'unroll', 3])
def test_task_batching_modes_equal_vmap(task_batching):
  """'map', 'unroll' and chunks (3 does not divide 4) are a speed choice only."""
  params, tasks = _setup(4)
  meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.01, 'per_layer'))
  grads, aux = jax.jit(lambda p, t, k: mj.meta_gradient(EST, p, t, k))(
      meta, tasks, KEY)
  other, other_aux = jax.jit(lambda p, t, k: mj.meta_gradient(
      EST, p, t, k, task_batching=task_batching))(meta, tasks, KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               other, grads)
  np.testing.assert_allclose(other_aux.per_task.query_loss_after,
                             aux.per_task.query_loss_after, rtol=1e-5)
  assert other_aux.per_task.adapted_params['w1'].shape[0] == 4


@pytest.mark.slow
def test_task_batching_is_validated_and_reaches_the_train_steps():
  import optax
  params, tasks = _setup(4)
  for bad in ('pmap', 0, 2.5):
    with pytest.raises(ValueError, match='task_batching'):
      mj.meta_gradient(EST, params, tasks, KEY, task_batching=bad)
    with pytest.raises(ValueError, match='task_batching'):
      mj.make_train_step(EST, optax.sgd(0.1), task_batching=bad)
  opt = optax.sgd(0.1)
  s1, _ = mj.make_train_step(EST, opt)(mj.init_train_state(params, opt),
                                       tasks, KEY)
  s2, _ = mj.make_train_step(EST, opt, task_batching='map')(
      mj.init_train_state(params, opt), tasks, KEY)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               s2.params, s1.params)
