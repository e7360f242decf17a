"""HalfCheetah meta-RL tasks on Brax (optional: ``pip install -e '.[brax]'``).

The tasks of MAML-RL (Finn et al. 2017, sec. 5.3; paper App. A), horizon 200:

* ``halfcheetah_vel``: a target forward velocity v* ~ U[0, 2] per task;
  r = -|v - v*| - 0.05 ||a||^2.
* ``halfcheetah_dir``: a direction d in {-1, +1} per task (each with
  probability 1/2); r = d v - 0.05 ||a||^2.

v is the forward velocity of the torso over the step, (x' - x) / dt, which
Brax's HalfCheetah reports as ``metrics['x_velocity']``; actions are clipped
to [-1, 1]^6 (Brax's actuator range). The rest of the state, the observation
(17 numbers: joint positions without the torso's x, and velocities) and the
reset noise (0.1) are Brax's HalfCheetah; Brax's own reward is not used.

Brax is imported only when one of these environments is created, so the rest
of ``experiments.rl`` works without it.

On a CPU, call ``use_cpu_xla_workaround()`` before JAX starts its backend:
with XLA:CPU's default (concurrency-optimised) scheduler the compiled
HalfCheetah meta-iteration deadlocks on a 2-core machine (experiments/rl/
RESULTS.md); the launcher and ``benchmarks.rl_speed`` do this for HalfCheetah.
"""

import os

import jax
import jax.numpy as jnp

from experiments.rl import envs

HC_HORIZON = 200
HC_CTRL_COST = 0.05
HC_VELOCITY_RANGE = (0.0, 2.0)
HC_ACTION_BOUND = 1.0
BACKENDS = ('generalized', 'positional', 'spring', 'mjx')
KINDS = ('vel', 'dir')
# Without it the Brax meta-iteration of 41442f0 stalled at its first call in 4
# of 4 runs on the 2-core CPU (default flags twice, async dispatch off, fusion
# emitters off); with it, 15 of 15 calls in 3 runs returned. The current
# iteration (which no longer re-samples inside the TRPO step) has not stalled
# without it either (9 of 9 calls); see RESULTS.md. It only changes XLA:CPU's
# instruction schedule.
CPU_XLA_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)


def use_cpu_xla_workaround():
  """Adds ``CPU_XLA_FLAGS`` to the XLA_FLAGS environment variable.

  XLA reads the variable once, when JAX starts its backend (the first JAX
  computation or device query), so call this first thing in ``main``, before
  anything touches JAX, as the meta-RL launcher and ``benchmarks.rl_speed`` do;
  called later it changes the variable but not the running XLA. (JAX has no
  public API that tells whether the backend has started, so this cannot warn
  about a late call.)

  Returns:
    The flags that were added (those already present are not repeated).
  """
  current = os.environ.get('XLA_FLAGS', '').split()
  names = {f.split('=')[0] for f in current}
  added = [f for f in CPU_XLA_FLAGS if f.split('=')[0] not in names]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join(current + added)
  return added


def _brax_halfcheetah(backend):
  try:
    from brax import envs as brax_envs  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "HalfCheetah needs Brax, an optional extra: pip install -e '.[brax]'") from e
  return brax_envs.get_environment('halfcheetah', backend=backend)


def sample_velocities(key, num_tasks, dtype=jnp.float32):
  """Target velocities v* ~ U[0, 2]: [num_tasks]."""
  return jax.random.uniform(key, (num_tasks,), dtype, *HC_VELOCITY_RANGE)


def sample_directions(key, num_tasks, dtype=jnp.float32):
  """Directions d = +1 or -1 with probability 1/2 each: [num_tasks]."""
  return jnp.where(jax.random.bernoulli(key, 0.5, (num_tasks,)), 1.0, -1.0).astype(dtype)


def task_reward(kind, velocity, action, task):
  """The task reward of one step from the forward velocity and the (clipped) action."""
  ctrl = HC_CTRL_COST * jnp.sum(jnp.square(action), axis=-1)
  if kind == 'vel':
    return -jnp.abs(velocity - task) - ctrl
  return task * velocity - ctrl


def halfcheetah(kind, *, backend='generalized', horizon=HC_HORIZON):
  """The HalfCheetah velocity (``kind='vel'``) or direction (``'dir'``) ``Env``.

  Args:
    kind: 'vel' or 'dir'.
    backend: Brax physics pipeline ('generalized' is Brax's default and the
      closest to MuJoCo; 'spring' is ~3x faster on a CPU and coarser).
    horizon: episode length (200 in the paper; smaller only for smoke tests).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if backend not in BACKENDS:
    raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
  if int(horizon) < 1:
    raise ValueError(f'horizon must be >= 1, got {horizon!r}')
  base = _brax_halfcheetah(backend)

  def reset(task, key):
    del task  # the task only enters the reward
    return base.reset(key)

  def observe(state):
    return state.obs

  def step(state, action, task):
    action = jnp.clip(action, -HC_ACTION_BOUND, HC_ACTION_BOUND)
    state = base.step(state, action)
    return state, task_reward(kind, state.metrics['x_velocity'], action, task)

  sample = sample_velocities if kind == 'vel' else sample_directions
  return envs.Env(sample_tasks=sample, reset=reset, observe=observe, step=step,
                  horizon=int(horizon), obs_dim=base.observation_size,
                  action_dim=base.action_size)
