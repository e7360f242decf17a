r"""2D-navigation sampling speed: compiled JAX rollouts vs a NumPy loop env.

Measures, on this machine and in the same process:
  1. env steps/s of the compiled rollout (``experiments.rl.metarl.rollout``:
     ``lax.scan`` over the horizon, ``vmap`` over episodes and tasks, inside
     ``jit``), with the 2 x 100 Gaussian MLP policy acting;
  2. the same rollout with the NumPy twin of the env
     (``experiments.rl.envs.NumpyNavigation2D``) stepped one batch at a time
     from Python with the same policy in NumPy, as Gym-based MAML-RL code does:
     one vector env of ``num_episodes`` per task, tasks one after another
     ('task'), and all tasks x episodes in one vector env ('all');
  3. the wall time of one meta-iteration (20 tasks x 20 episodes x 100 steps,
     N = 1, TRPO meta-step) for each algorithm, compilation excluded, with
     TRPO's default CG metric or ``--kl_hvp=through_adaptation`` (MAML-RL's),
     and of the estimator's meta-gradient alone (sampling S_0, D_0, T, the
     inner step and the Hessian term), so that the TRPO step's share shows;
  4. the gradient of the inner loss on one batch (40,000 states), the unit
     the estimators' costs are counted in.

With ``--env=halfcheetah_vel|halfcheetah_dir`` (the '.[brax]' extra) it times
1. and 3. only: there is no NumPy twin of a physics engine.

  python -m benchmarks.rl_speed --output=/tmp/rl_speed.json
  python -m benchmarks.rl_speed --env=halfcheetah_vel --brax_backend=spring --algorithms=
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

import maml_jax as mj

from experiments.rl import brax_envs
from experiments.rl import envs
from experiments.rl import metarl
from experiments.rl import registry

flags.DEFINE_enum('env', 'navigation2d', sorted(registry.ENVS),
                  'Environment. The NumPy loop baseline exists for navigation2d '
                  "only; HalfCheetah needs the '.[brax]' extra.")
flags.DEFINE_enum('brax_backend', 'generalized', list(brax_envs.BACKENDS),
                  'Brax physics pipeline of the HalfCheetah tasks.')
flags.DEFINE_integer('num_tasks', 20, 'Tasks per batch.')
flags.DEFINE_integer('num_episodes', 20, 'Episodes per task.')
flags.DEFINE_integer('repeats', 3, 'Timed repeats (the minimum is reported).')
flags.DEFINE_list('algorithms', ['maml', 'fo_maml', 'zo_maml', 'ggs_maml'],
                  'Algorithms (mj.ESTIMATORS names) whose meta-iteration is '
                  'timed (empty: none).')
flags.register_validator(
    'algorithms', lambda names: all(a in mj.ESTIMATORS for a in names if a),
    message=f'--algorithms: choose from {",".join(mj.ESTIMATORS)}')
flags.DEFINE_enum('kl_hvp', 'adapted', list(metarl.KL_HVPS),
                  "TRPO's CG metric in the timed meta-iterations (see "
                  'experiments/rl/metarl.py).')
flags.DEFINE_string('output', None, 'Optional JSON output path.')
FLAGS = flags.FLAGS


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def numpy_policy(params):
  """The Flax Gaussian MLP as NumPy arrays: (layers [(W, b)], log_std)."""
  p = jax.tree.map(np.asarray, params['params'])
  dense = sorted(k for k in p if k.startswith('Dense_'))
  layers = [(p[k]['kernel'], p[k]['bias']) for k in dense]
  return layers, p['log_std']


def numpy_rollout(layers, log_std, goals, num_episodes, horizon, rng, batch):
  """Python loop over time (and tasks), NumPy vector env + NumPy policy."""
  groups = ([goals[i:i + 1] for i in range(len(goals))] if batch == 'task'
            else [goals])
  total = 0.0
  for g in groups:
    env = envs.NumpyNavigation2D(np.repeat(g, num_episodes, axis=0))
    obs = env.reset()
    for _ in range(horizon):
      x = obs
      for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
          x = np.maximum(x, 0.0)
      action = x + np.exp(log_std) * rng.standard_normal(x.shape)
      obs, reward = env.step(action)
      total += reward.sum()
  return total


def main(argv):
  del argv
  if FLAGS.env.startswith('halfcheetah'):
    brax_envs.use_cpu_xla_workaround()
  kwargs = registry.env_kwargs(FLAGS.env, brax_backend=FLAGS.brax_backend)
  env = registry.make_env(FLAGS.env, **kwargs)
  T, E = FLAGS.num_tasks, FLAGS.num_episodes
  steps = T * E * env.horizon
  results = {'env': FLAGS.env, 'env_kwargs': kwargs,
             'num_tasks': T, 'num_episodes': E, 'horizon': env.horizon,
             'env_steps_per_batch': steps, 'devices': [str(d) for d in jax.devices()],
             'cpu_count': os.cpu_count(), 'loadavg_start': os.getloadavg()}
  cfg = metarl.RLConfig(num_tasks=T, num_episodes=E)
  meta = metarl.build(env, cfg)
  params = meta.init(jax.random.PRNGKey(0)).params
  goals = env.sample_tasks(jax.random.PRNGKey(1), T)

  rollout = jax.jit(jax.vmap(
      lambda g, k: metarl.rollout(env, meta.policy, params, g, k, E)))
  keys = jax.random.split(jax.random.PRNGKey(2), T)
  t = time.perf_counter()
  jax.block_until_ready(rollout(goals, keys))
  results['jax_rollout_compile_s'] = time.perf_counter() - t
  sec = _best(lambda: jax.block_until_ready(rollout(goals, keys)), FLAGS.repeats)
  results['jax_rollout_s'] = sec
  results['jax_env_steps_per_s'] = steps / sec
  sampler = jax.jit(jax.vmap(meta.sampler, in_axes=(None, 0, 0)))
  jax.block_until_ready(sampler(params, goals, keys))
  sec = _best(lambda: jax.block_until_ready(sampler(params, goals, keys)),
              FLAGS.repeats)
  results['jax_sampler_with_baseline_gae_s'] = sec
  batch = sampler(params, goals, keys)
  grad = jax.jit(jax.vmap(jax.grad(meta.loss_fn), in_axes=(None, 0)))
  jax.block_until_ready(grad(params, batch))
  results['inner_loss_gradient_s'] = _best(
      lambda: jax.block_until_ready(grad(params, batch)), FLAGS.repeats)

  print(f'compiled rollout: {results["jax_env_steps_per_s"]:,.0f} env steps/s '
        f'(first call {results["jax_rollout_compile_s"]:.1f} s)', flush=True)

  layers, log_std = numpy_policy(params)
  goals_np = np.asarray(goals, np.float64)
  rng = np.random.default_rng(0)
  for batch in (('task', 'all') if FLAGS.env == 'navigation2d' else ()):
    sec = _best(lambda b=batch: numpy_rollout(layers, log_std, goals_np, E,
                                              env.horizon, rng, b), FLAGS.repeats)
    results[f'numpy_loop_{batch}_s'] = sec
    results[f'numpy_loop_{batch}_env_steps_per_s'] = steps / sec
    results[f'speedup_vs_numpy_{batch}'] = results[f'numpy_loop_{batch}_s'] / results['jax_rollout_s']

  results['meta_iteration_s'] = {}
  results['kl_hvp'] = FLAGS.kl_hvp
  for algorithm in [a for a in FLAGS.algorithms if a]:
    m = metarl.build(env, metarl.RLConfig(algorithm=algorithm, num_tasks=T,
                                          num_episodes=E, kl_hvp=FLAGS.kl_hvp))
    tasks = metarl.make_tasks(goals, m.cfg)
    est = jax.jit(lambda p, k, m=m, tasks=tasks: mj.meta_gradient(
        m.estimator, p, tasks, k)[0])
    jax.block_until_ready(est(params, keys[0]))
    est_s = _best(lambda: jax.block_until_ready(est(params, keys[0])),
                  FLAGS.repeats)
    state = m.init(jax.random.PRNGKey(0))
    step = jax.jit(m.iteration)
    key = jax.random.PRNGKey(3)
    t = time.perf_counter()
    state = jax.block_until_ready(step(state, key))[0]
    compile_s = time.perf_counter() - t

    def one():
      nonlocal state
      state = jax.block_until_ready(step(state, key))[0]

    sec = _best(one, FLAGS.repeats)
    results['meta_iteration_s'][algorithm] = {'seconds': sec,
                                              'first_call_s': compile_s,
                                              'meta_gradient_s': est_s}
    print(f'{algorithm}: meta-iteration {sec:.3f} s (first call {compile_s:.1f} s; '
          f'meta-gradient alone {est_s:.3f} s)', flush=True)
  results['loadavg_end'] = os.getloadavg()
  print(json.dumps(results, indent=2))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
