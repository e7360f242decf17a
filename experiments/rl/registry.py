"""The meta-RL environments by name, for the launcher, the benchmarks and the tests.

``make_env(name, **kwargs)`` builds the ``envs.Env`` named ``name``:

* ``navigation2d``: 2D navigation (``experiments/rl/envs.py``);
* ``halfcheetah_vel``, ``halfcheetah_dir``: HalfCheetah velocity and direction
  tasks (``experiments/rl/brax_envs.py``), which import Brax only when created.

The registry is a module of its own so that the environment modules need not
know each other: ``brax_envs`` builds on ``envs.Env``, and this module on both.
"""

import functools

from experiments.rl import brax_envs
from experiments.rl import envs

ENVS = {'navigation2d': envs.navigation2d,
        'halfcheetah_vel': functools.partial(brax_envs.halfcheetah, 'vel'),
        'halfcheetah_dir': functools.partial(brax_envs.halfcheetah, 'dir')}
BRAX_ENVS = ('halfcheetah_vel', 'halfcheetah_dir')
# Figure file prefixes and titles.
ENV_NAMES = {'navigation2d': ('nav2d', '2D navigation'),
             'halfcheetah_vel': ('halfcheetah_vel', 'HalfCheetah-vel'),
             'halfcheetah_dir': ('halfcheetah_dir', 'HalfCheetah-dir')}


def env_kwargs(name, *, horizon=None, brax_backend='generalized'):
  """``make_env`` keyword arguments of the launchers' flags for env ``name``."""
  kwargs = {} if horizon is None else {'horizon': horizon}
  if name in BRAX_ENVS:
    kwargs['backend'] = brax_backend
  return kwargs


def make_env(name, **kwargs):
  """Env by name (``kwargs`` go to its factory, e.g. ``horizon``, ``backend``).

  Raises:
    ValueError: for unknown names.
    ImportError: for a Brax environment when Brax is not installed.
  """
  if name not in ENVS:
    raise ValueError(f'unknown env {name!r}; available: {sorted(ENVS)}')
  return ENVS[name](**kwargs)
