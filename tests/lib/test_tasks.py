"""maml_jax.tasks: the sine and few-shot task samplers match their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maml_jax as mj

KEY = jax.random.PRNGKey(0)


def test_sine_tasks_distribution():
  tasks = mj.tasks.sine_tasks(KEY, 500)
  amp, phase = mj.tasks.sine_task_params(KEY, 500)
  x, y = np.asarray(tasks.support['x']), np.asarray(tasks.support['y'])
  assert x.shape == (500, 10, 1) and tasks.query['x'].shape == (500, 10, 1)
  assert x.min() >= -5 and x.max() <= 5
  assert amp.min() >= 0.1 and amp.max() <= 5 and phase.max() <= np.pi
  np.testing.assert_allclose(
      y, np.asarray(amp)[:, None, None] * np.sin(x - np.asarray(phase)[:, None, None]),
      rtol=1e-5, atol=1e-5)
  assert tasks.hessian is None
  assert not np.allclose(tasks.support['x'], tasks.query['x'])
  jax.tree.map(np.testing.assert_array_equal, tasks, mj.tasks.sine_tasks(KEY, 500))


def test_sine_tasks_sizes_and_dtype():
  with jax.enable_x64(True):
    tasks = mj.tasks.sine_tasks(KEY, 3, num_support=5, num_query=7,
                                dtype=jnp.float64)
  assert tasks.support['y'].shape == (3, 5, 1) and tasks.query['x'].shape == (3, 7, 1)
  assert tasks.support['x'].dtype == jnp.float64


# Few-shot tasks.

C, M = 12, 6  # classes and instances of the synthetic image array.


def _ids():
  """Float images [C, M, 2, 3] whose every pixel is the image's id c * M + m, scaled."""
  ids = np.arange(C * M, dtype=np.float32).reshape(C, M) / (C * M)
  return jnp.asarray(np.broadcast_to(ids[:, :, None, None], (C, M, 2, 3)))


def _decode(x):
  ids = np.rint(np.asarray(x)[..., 0, 0, 0] * C * M).astype(int)
  return ids // M, ids % M  # class, instance.


def test_fewshot_tasks_shapes_and_label_structure():
  ways, shots, query_shots, num_tasks = 4, 2, 3, 50
  sample = jax.jit(mj.tasks.fewshot_tasks, static_argnums=2,
                   static_argnames=('ways', 'shots', 'query_shots'))
  tasks = sample(jax.random.key(0), _ids(), num_tasks, ways=ways, shots=shots,
                 query_shots=query_shots)
  assert tasks.support['x'].shape == (num_tasks, ways * shots, 2, 3, 1)
  assert tasks.query['x'].shape == (num_tasks, ways * query_shots, 2, 3, 1)
  assert tasks.support['x'].dtype == jnp.float32
  assert tasks.support['y'].dtype == tasks.query['y'].dtype == jnp.int32
  s_class, s_inst = _decode(tasks.support['x'])
  q_class, q_inst = _decode(tasks.query['x'])
  s_y, q_y = np.asarray(tasks.support['y']), np.asarray(tasks.query['y'])
  first_classes = []
  for t in range(num_tasks):
    np.testing.assert_array_equal(np.bincount(s_y[t], minlength=ways), [shots] * ways)
    np.testing.assert_array_equal(np.bincount(q_y[t], minlength=ways), [query_shots] * ways)
    label_class = {}
    for y, c in zip(np.concatenate([s_y[t], q_y[t]]), np.concatenate([s_class[t], q_class[t]])):
      assert label_class.setdefault(y, c) == c  # one class per label, in support and query.
    assert len(set(label_class.values())) == ways  # distinct classes.
    for y in range(ways):
      used = list(s_inst[t][s_y[t] == y]) + list(q_inst[t][q_y[t] == y])
      assert len(used) == len(set(used)) == shots + query_shots  # distinct instances.
    first_classes.append(label_class[0])
  # Labels are assigned at random: label 0 is not always the smallest class.
  assert len(set(first_classes)) > 3
  assert (np.array(first_classes) != s_class.min(axis=1)).any()


def test_fewshot_tasks_are_deterministic_jittable_and_indexed_per_task():
  images = _ids()
  sample = lambda key, n, start=0: mj.tasks.fewshot_tasks(
      key, images, n, ways=3, shots=1, query_shots=2, start_index=start)
  key = jax.random.key(7)
  jitted = jax.jit(sample, static_argnums=1)
  tasks = jitted(key, 5)
  for i in range(5):
    alone = jitted(key, 1, i)  # start_index is traced: one compilation.
    jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(a[i], b[0]), tasks, alone)
  jax.tree.map(np.testing.assert_array_equal, tasks, jitted(key, 5))  # the same key again.
  other = jitted(jax.random.key(8), 5)
  assert not np.array_equal(tasks.support['x'], other.support['x'])


def test_fewshot_tasks_scale_uint8_and_check_sizes():
  images = jnp.full((5, 3, 4, 4), 255, jnp.uint8)
  sample = jax.jit(lambda key: mj.tasks.fewshot_tasks(key, images, 2, ways=5, shots=1,
                                                      query_shots=2))
  tasks = sample(jax.random.key(0))
  np.testing.assert_array_equal(tasks.support['x'], 1.0)
  with pytest.raises(ValueError, match='ways=6'):
    mj.tasks.fewshot_tasks(jax.random.key(0), images, 2, ways=6, shots=1, query_shots=1)
  with pytest.raises(ValueError, match='3 instances'):
    mj.tasks.fewshot_tasks(jax.random.key(0), images, 2, ways=2, shots=2, query_shots=2)
  with pytest.raises(ValueError, match='images must be'):
    mj.tasks.fewshot_tasks(jax.random.key(0), images[0], 2, ways=2, shots=1, query_shots=1)


def test_fewshot_tasks_keep_colour_channels():
  """miniImageNet-style [C, M, H, W, 3] images keep their channel axis."""
  gray = _ids()
  rgb = jnp.stack([gray, 0.5 * gray, 0.25 * gray], axis=-1)
  kwargs = dict(ways=3, shots=1, query_shots=2)
  tasks = mj.tasks.fewshot_tasks(jax.random.key(3), rgb, 4, **kwargs)
  assert tasks.support['x'].shape == (4, 3, 2, 3, 3)
  same = mj.tasks.fewshot_tasks(jax.random.key(3), gray, 4, **kwargs)
  np.testing.assert_array_equal(tasks.support['x'][..., :1], same.support['x'])
  np.testing.assert_array_equal(tasks.query['y'], same.query['y'])
  np.testing.assert_allclose(tasks.query['x'][..., 2], 0.25 * same.query['x'][..., 0])


def test_matrix_factorization_tasks_distribution():
  tasks = mj.tasks.matrix_factorization_tasks(jax.random.PRNGKey(0), 2000)
  z_s, z_q = np.asarray(tasks.support['z']), np.asarray(tasks.query['z'])
  assert z_s.shape == (2000, 1, 20)
  scale_s, scale_q = z_s.std(axis=(1, 2)), z_q.std(axis=(1, 2))
  assert scale_s.max() < 0.1 * 2.5 and np.corrcoef(scale_s, scale_q)[0, 1] > 0.8
  assert not np.allclose(z_s, z_q)  # independent draws, same sigma_i

