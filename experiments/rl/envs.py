"""Meta-RL environments as pure JAX functions, plus a NumPy twin for benchmarks.

An environment is a NamedTuple of pure functions over arrays (``Env``): a task
(e.g. a goal position) is data, the state is a pytree, and ``step`` has no side
effects, so whole batches of episodes are rolled out by ``jax.vmap`` over
episodes and tasks and ``jax.lax.scan`` over time inside one ``jax.jit``
(``experiments.rl.rollout``). Environments by name: ``experiments/rl/registry.py``.

2D navigation (Finn et al. 2017, sec. 5.3; paper App. A): a point agent starts
at the origin; the task is a goal g ~ U[-0.5, 0.5]^2; the action a is clipped
to [-0.1, 0.1]^2 and moves the agent, p' = p + clip(a); the reward is minus the
distance of the new position to the goal, r = -||p' - g||; horizon 100. The
observation is the position. There is no early termination: every episode
lasts the full horizon (MAML-RL's rllab version ends an episode within 0.01 of
the goal, which changes returns only by the few steps spent there).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NAV_GOAL_RANGE = (-0.5, 0.5)
NAV_ACTION_BOUND = 0.1
NAV_HORIZON = 100


class Env(NamedTuple):
  """A task-conditioned environment as pure functions.

  Attributes:
    sample_tasks: ``(key, num_tasks) -> tasks`` (leading task axis).
    reset: ``(task, key) -> state`` for ONE episode.
    observe: ``state -> obs [obs_dim]``.
    step: ``(state, action, task) -> (next_state, reward)`` for ONE episode.
    horizon: episode length (static).
    obs_dim: observation size.
    action_dim: action size.
  """
  sample_tasks: Callable[[jax.Array, int], Any]
  reset: Callable[[Any, jax.Array], Any]
  observe: Callable[[Any], jax.Array]
  step: Callable[[Any, jax.Array, Any], tuple[Any, jax.Array]]
  horizon: int
  obs_dim: int
  action_dim: int


def nav_sample_goals(key, num_tasks, dtype=jnp.float32):
  """Goals g ~ U[-0.5, 0.5]^2 of ``num_tasks`` 2D-navigation tasks: [num_tasks, 2]."""
  return jax.random.uniform(key, (num_tasks, 2), dtype, *NAV_GOAL_RANGE)


def nav_reset(goal, key):
  """The agent starts at the origin (``key`` unused: the start is fixed)."""
  del key
  return jnp.zeros_like(goal)


def nav_observe(position):
  """The observation is the position."""
  return position


def nav_step(position, action, goal):
  """p' = p + clip(a, -0.1, 0.1); r = -||p' - g||."""
  next_position = position + jnp.clip(action, -NAV_ACTION_BOUND, NAV_ACTION_BOUND)
  reward = -jnp.sqrt(jnp.sum((next_position - goal) ** 2, axis=-1))
  return next_position, reward


def navigation2d(horizon=NAV_HORIZON):
  """The 2D-navigation ``Env``."""
  return Env(sample_tasks=nav_sample_goals, reset=nav_reset, observe=nav_observe,
             step=nav_step, horizon=horizon, obs_dim=2, action_dim=2)


class NumpyNavigation2D:
  """The same 2D navigation as a stateful NumPy batch env (Gym vector-env style).

  Used as the reference implementation in tests and as the "Python loop"
  baseline of ``benchmarks/rl_speed.py``: the caller steps it one batch at a
  time from Python, as Gym-based MAML-RL code does.
  """

  def __init__(self, goals):
    self.goals = np.asarray(goals, np.float64)  # [B, 2]
    self.position = np.zeros_like(self.goals)

  def reset(self):
    self.position = np.zeros_like(self.goals)
    return self.position.copy()

  def step(self, actions):
    actions = np.clip(np.asarray(actions, np.float64), -NAV_ACTION_BOUND, NAV_ACTION_BOUND)
    self.position = self.position + actions
    reward = -np.sqrt(np.sum((self.position - self.goals) ** 2, axis=-1))
    return self.position.copy(), reward
