"""Meta-training: jitted step, fused scan, resume, skipped non-finite updates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import maml_jax as mj

KEY = jax.random.PRNGKey(0)
SAMPLE = functools.partial(mj.tasks.matrix_factorization_tasks, num_tasks=5)
EST = mj.ggs_maml(mj.models.mf_loss, inner_lr=0.01, num_inner_steps=3,
                  num_directions=4, delta=1e-2)
OPT = optax.sgd(0.05)


def _init():
  return mj.init_train_state(mj.models.init_mf_params(KEY), OPT)


def test_fused_run_equals_loop_of_steps_and_resumes_exactly():
  run = mj.make_fused_train(EST, OPT, SAMPLE, num_iterations=6)
  state, metrics = run(_init(), KEY)
  assert metrics['loss_after'].shape == (6,)
  assert int(state.iteration) == 6

  step = mj.make_train_step(EST, OPT)
  loop_state, losses = _init(), []
  for i in range(6):
    k_tasks, k_est = mj.iteration_keys(KEY, i)
    loop_state, m = step(loop_state, SAMPLE(k_tasks), k_est)
    losses.append(m['loss_after'])
  np.testing.assert_allclose(loop_state.params, state.params, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(losses, metrics['loss_after'], rtol=1e-5)

  half = mj.make_fused_train(EST, OPT, SAMPLE, num_iterations=3)
  resumed, m1 = half(_init(), KEY)
  resumed, m2 = half(resumed, KEY)
  np.testing.assert_array_equal(resumed.params, state.params)
  np.testing.assert_array_equal(
      np.concatenate([m1['loss_after'], m2['loss_after']]),
      metrics['loss_after'])


def test_meta_training_reduces_meta_loss():
  est = mj.maml(mj.models.mf_loss, inner_lr=0.01, num_inner_steps=3)
  opt = optax.sgd(0.05)
  sample = functools.partial(mj.tasks.matrix_factorization_tasks, num_tasks=10)
  run = mj.make_fused_train(est, opt, sample, num_iterations=200)
  w0 = 1.5 * jnp.ones(20) / jnp.sqrt(20.0)
  state, metrics = run(mj.init_train_state(w0, opt), KEY)
  first, last = metrics['loss_after'][:20].mean(), metrics['loss_after'][-20:].mean()
  assert last < 0.1 * first, (first, last)
  assert int(metrics['num_nonfinite'].sum()) == 0


def test_all_nonfinite_tasks_skip_the_update():
  step = mj.make_train_step(EST, optax.adam(0.1))
  state = mj.init_train_state(mj.models.init_mf_params(KEY), optax.adam(0.1))
  tasks = SAMPLE(KEY)
  tasks = tasks._replace(query={'z': jnp.full_like(tasks.query['z'], jnp.nan)})
  new, metrics = step(state, tasks, KEY)
  assert int(metrics['num_nonfinite']) == 5
  np.testing.assert_array_equal(new.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, state.opt_state)
  assert int(new.iteration) == 1


def test_step_compiles_once_for_new_data_and_keys():
  traces = []

  def loss(w, batch):
    traces.append(1)
    return mj.models.mf_loss(w, batch)

  est = mj.maml(loss, inner_lr=0.01, num_inner_steps=2)
  step = mj.make_train_step(est, OPT)
  state = _init()
  state, _ = step(state, SAMPLE(KEY), KEY)
  n = len(traces)
  assert n > 0
  for i in range(3):
    state, _ = step(state, SAMPLE(jax.random.PRNGKey(i + 1)),
                    jax.random.PRNGKey(i))
  assert len(traces) == n
