r"""Where a HalfCheetah meta-iteration's time goes, on this machine.

One meta-iteration of MAML-RL (``experiments.rl.metarl``: sample S_0 at w,
adapt, sample T at w_1, the meta-gradient, a TRPO step) split into:

  simulation   the Brax physics alone: ``lax.scan`` over the horizon of
               ``env.step`` vmapped over tasks x episodes, actions drawn
               from N(0, 1) without a policy;
  policy       the rollout with the Gaussian MLP acting, minus simulation;
  GAE/baseline the sampler (rollout + linear baseline fit + GAE), minus the
               rollout;
  gradients    the estimator's meta-gradient (which samples S_0 and T),
               minus its two sampled batches;
  TRPO         the whole meta-iteration, minus the meta-gradient: the
               Fisher-vector products of CG and the line search through the
               adaptation.

Each part is compiled once and timed as the best of ``--repeats`` calls;
differences of best times are estimates (XLA fuses differently inside a
bigger program). Also: env steps/s of the simulation for every Brax
pipeline asked for (``--backends``; 'mjx' if MuJoCo's MJX imports) and for
several horizons (``--horizons``, spring).

  python -m benchmarks.rl_profile --output=benchmarks/results/rl_profile.json

writes the JSON and a markdown table (``.md`` next to it).
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

import maml_jax as mj

from experiments.rl import brax_envs
from experiments.rl import metarl
from experiments.rl import registry

flags.DEFINE_enum('env', 'halfcheetah_vel', sorted(registry.ENVS),
                  'Environment (navigation2d has no pipelines: --backends is '
                  'ignored there; it keeps the smoke test cheap).')
flags.DEFINE_integer('num_tasks', 10, 'Tasks per batch.')
flags.DEFINE_integer('num_episodes', 10, 'Episodes per task.')
flags.DEFINE_integer('horizon', 100, 'Episode length of the iteration profile.')
flags.DEFINE_string('backend', 'spring', 'Brax pipeline of the iteration profile.')
flags.DEFINE_list('backends', ['spring', 'positional', 'generalized', 'mjx'],
                  'Pipelines whose simulation speed is measured.')
flags.DEFINE_list('horizons', ['50', '100', '200'],
                  'Horizons whose simulation speed is measured (spring).')
flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (best kept).')
flags.DEFINE_boolean('separate_hessian_batch', False,
                     'As the launcher flag (False: S_0 also serves the Hessian).')
flags.DEFINE_float('cg_subsample', 1.0, 'As the launcher flag.')
flags.DEFINE_string('output', None, 'JSON output path (and .md next to it).')
FLAGS = flags.FLAGS


def make_env(name, horizon, backend):
  return registry.make_env(name, **registry.env_kwargs(
      name, horizon=horizon, brax_backend=backend))


def _time(fn, repeats):
  """(first call seconds, best of ``repeats`` later calls)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return first, best


def simulation(env, num_tasks, num_episodes):
  """A jitted function: the physics of one batch, no policy."""
  def one_task(task, key):
    k_reset, k_act = jax.random.split(key)
    state = jax.vmap(env.reset, in_axes=(None, 0))(
        task, jax.random.split(k_reset, num_episodes))

    def body(state, k):
      action = jax.random.normal(k, (num_episodes, env.action_dim))
      state, reward = jax.vmap(env.step, in_axes=(0, 0, None))(state, action, task)
      return state, reward

    _, rewards = jax.lax.scan(body, state, jax.random.split(k_act, env.horizon))
    return jnp.sum(rewards)

  tasks = env.sample_tasks(jax.random.PRNGKey(1), num_tasks)
  keys = jax.random.split(jax.random.PRNGKey(2), num_tasks)
  run = jax.jit(jax.vmap(one_task))
  return lambda: run(tasks, keys)


def sim_speed(name, horizon, backend, num_tasks, num_episodes, repeats):
  env = make_env(name, horizon, backend)
  first, best = _time(simulation(env, num_tasks, num_episodes), repeats)
  steps = num_tasks * num_episodes * horizon
  return {'backend': backend, 'horizon': horizon, 'env_steps': steps,
          'first_call_s': first, 'seconds': best, 'env_steps_per_s': steps / best}


def profile_iteration(name, cfg, backend, horizon, repeats):
  env = make_env(name, horizon, backend)
  meta = metarl.build(env, cfg)
  state = meta.init(jax.random.PRNGKey(0))
  params = state.params
  goals = env.sample_tasks(jax.random.PRNGKey(1), cfg.num_tasks)
  keys = jax.random.split(jax.random.PRNGKey(2), cfg.num_tasks)
  out = {}
  sim = simulation(env, cfg.num_tasks, cfg.num_episodes)
  out['simulation'] = _time(sim, repeats)
  rollout = jax.jit(jax.vmap(
      lambda g, k: metarl.rollout(env, meta.policy, params, g, k, cfg.num_episodes)))
  out['rollout'] = _time(lambda: rollout(goals, keys), repeats)
  sampler = jax.jit(jax.vmap(meta.sampler, in_axes=(None, 0, 0)))
  out['sampler'] = _time(lambda: sampler(params, goals, keys), repeats)
  tasks = metarl.make_tasks(goals, cfg)
  est = jax.jit(lambda p, k: mj.meta_gradient(meta.estimator, p, tasks, k)[0])
  out['meta_gradient'] = _time(lambda: est(params, keys[0]), repeats)
  step = jax.jit(meta.iteration)
  key = jax.random.PRNGKey(3)
  out['meta_iteration'] = _time(lambda: step(state, key)[0], repeats)
  batches = 1 + cfg.num_inner_steps + (
      cfg.num_inner_steps if cfg.separate_hessian_batch
      and metarl.uses_hessian_batch(cfg) else 0)
  best = {k: v[1] for k, v in out.items()}
  split = {
      'simulation': batches * best['simulation'],
      'policy': batches * max(best['rollout'] - best['simulation'], 0.0),
      'GAE/baseline': batches * max(best['sampler'] - best['rollout'], 0.0),
      'gradients': max(best['meta_gradient'] - batches * best['sampler'], 0.0),
      'TRPO (CG + line search)': max(best['meta_iteration'] - best['meta_gradient'], 0.0),
  }
  steps = cfg.num_tasks * cfg.num_episodes * horizon
  return {'backend': backend, 'horizon': horizon, 'batches_sampled': batches,
          'env_steps_per_batch': steps,
          'timings': {k: {'first_call_s': v[0], 'seconds': v[1]}
                      for k, v in out.items()},
          'split_s': split, 'meta_iteration_s': best['meta_iteration']}


def markdown(results):
  it = results['iteration']
  lines = [f"## One meta-iteration of {results['env']} "
           f"({results['num_tasks']} tasks x {results['num_episodes']} episodes "
           f"x {it['horizon']} steps, {it['backend']}, MAML N = 1, TRPO)", '',
           f"{it['batches_sampled']} batches of {it['env_steps_per_batch']:,} env "
           f"steps sampled; the whole iteration: {it['meta_iteration_s']:.2f} s "
           f"(load average {results['loadavg_start'][0]:.1f} at the start, "
           f"{results['loadavg_end'][0]:.1f} at the end).", '',
           '| part | seconds | share |', '|---|---|---|']
  total = sum(it['split_s'].values())
  for part, sec in it['split_s'].items():
    lines.append(f'| {part} | {sec:.2f} | {100 * sec / total:.0f}% |')
  lines += ['', 'The programs timed (best of the repeats; the split above is their '
            'differences, clipped at 0 where noise makes one negative):', '',
            '| program | seconds | first call (compile) s |', '|---|---|---|']
  for name, t in it['timings'].items():
    lines.append(f"| {name} | {t['seconds']:.3f} | {t['first_call_s']:.1f} |")
  lines += ['', '## Simulation speed (no policy, N(0, 1) actions)', '',
            '| pipeline | horizon | env steps/s | first call (compile) s |',
            '|---|---|---|---|']
  for r in results['simulation']:
    if 'error' in r:
      lines.append(f"| {r['backend']} | {r['horizon']} | not measured: "
                   f"{r['error']} | |")
    else:
      lines.append(f"| {r['backend']} | {r['horizon']} | "
                   f"{r['env_steps_per_s']:,.0f} | {r['first_call_s']:.1f} |")
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  brax = FLAGS.env in registry.BRAX_ENVS
  if brax:
    brax_envs.use_cpu_xla_workaround()
  results = {'env': FLAGS.env, 'num_tasks': FLAGS.num_tasks,
             'num_episodes': FLAGS.num_episodes, 'cpu_count': os.cpu_count(),
             'devices': [str(d) for d in jax.devices()],
             'loadavg_start': os.getloadavg()}
  cfg = metarl.RLConfig(algorithm='maml', num_tasks=FLAGS.num_tasks,
                        num_episodes=FLAGS.num_episodes,
                        separate_hessian_batch=FLAGS.separate_hessian_batch,
                        cg_subsample=FLAGS.cg_subsample)
  results['iteration'] = profile_iteration(FLAGS.env, cfg, FLAGS.backend if brax else '-',
                                           FLAGS.horizon, FLAGS.repeats)
  print(json.dumps(results['iteration']['split_s'], indent=2), flush=True)
  sims = []
  cases = [(b, FLAGS.horizon) for b in (FLAGS.backends if brax else ['-'])]
  cases += [(FLAGS.backend if brax else '-', int(h)) for h in FLAGS.horizons
            if int(h) != FLAGS.horizon]
  for backend, horizon in cases:
    try:
      r = sim_speed(FLAGS.env, horizon, backend, FLAGS.num_tasks,
                    FLAGS.num_episodes, FLAGS.repeats)
    except Exception as e:  # pylint: disable=broad-except
      r = {'backend': backend, 'horizon': horizon,
           'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
    print(r, flush=True)
    sims.append(r)
  results['simulation'] = sims
  results['loadavg_end'] = os.getloadavg()
  text = markdown(results)
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)
    with open(os.path.splitext(FLAGS.output)[0] + '.md', 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
