"""HalfCheetah velocity/direction tasks (experiments/rl/brax_envs.py).

The task sampling and rewards are checked without Brax; the environment
itself and a launcher run need the optional ``brax`` extra
(``pip install -e '.[brax]'``) and are skipped where it is not installed.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.rl import brax_envs
from experiments.rl import registry

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_task_sampling():
  v = brax_envs.sample_velocities(jax.random.PRNGKey(0), 2000)
  assert v.shape == (2000,) and float(v.min()) >= 0.0 and float(v.max()) <= 2.0
  assert abs(float(v.mean()) - 1.0) < 0.05
  d = brax_envs.sample_directions(jax.random.PRNGKey(1), 2000)
  assert set(np.unique(np.asarray(d)).tolist()) == {-1.0, 1.0}
  assert abs(float(d.mean())) < 0.1


def test_cpu_xla_workaround_adds_its_flag_once(monkeypatch):
  flag = '--xla_cpu_enable_concurrency_optimized_scheduler'
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
  assert brax_envs.use_cpu_xla_workaround() == [f'{flag}=false']
  assert os.environ['XLA_FLAGS'] == f'--xla_dump_to=/tmp/x {flag}=false'
  assert brax_envs.use_cpu_xla_workaround() == []  # not repeated
  assert os.environ['XLA_FLAGS'].count(flag) == 1
  monkeypatch.setenv('XLA_FLAGS', f'{flag}=true')  # a user's own choice stays
  assert brax_envs.use_cpu_xla_workaround() == []
  assert os.environ['XLA_FLAGS'] == f'{flag}=true'
  monkeypatch.delenv('XLA_FLAGS')
  assert brax_envs.use_cpu_xla_workaround() == [f'{flag}=false']


def test_env_modules_do_not_import_each_other():
  """envs.py knows no HalfCheetah and no registry; brax_envs.py no Brax until used."""
  code = ('import sys\n'
          'from experiments.rl import envs\n'
          'assert "experiments.rl.brax_envs" not in sys.modules\n'
          'assert "experiments.rl.registry" not in sys.modules\n'
          'from experiments.rl import registry\n'
          'assert "brax" not in sys.modules\n'
          'assert sorted(registry.ENVS) == '
          '["halfcheetah_dir", "halfcheetah_vel", "navigation2d"]\n'
          'assert registry.make_env("navigation2d", horizon=7).horizon == 7\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert registry.env_kwargs('navigation2d', horizon=5) == {'horizon': 5}
  assert registry.env_kwargs('halfcheetah_dir', brax_backend='spring') == {
      'backend': 'spring'}
  with pytest.raises(ValueError, match='available'):
    registry.make_env('cartpole')


def test_task_rewards_by_hand():
  action = jnp.array([1.0, -1.0, 0.5, 0.0, 0.0, 0.0])  # ||a||^2 = 2.25
  ctrl = 0.05 * 2.25
  np.testing.assert_allclose(brax_envs.task_reward('vel', 1.5, action, 0.5), -1.0 - ctrl)
  np.testing.assert_allclose(brax_envs.task_reward('vel', 0.2, action, 0.5), -0.3 - ctrl,
                             rtol=1e-6)
  np.testing.assert_allclose(brax_envs.task_reward('dir', 1.5, action, -1.0), -1.5 - ctrl)
  np.testing.assert_allclose(brax_envs.task_reward('dir', 1.5, action, 1.0), 1.5 - ctrl)


def test_bad_arguments():
  with pytest.raises(ValueError, match='kind'):
    brax_envs.halfcheetah('run')
  with pytest.raises(ValueError, match='backend'):
    brax_envs.halfcheetah('vel', backend='bullet')
  with pytest.raises(ValueError, match='horizon'):
    brax_envs.halfcheetah('vel', horizon=0)


@pytest.fixture(scope='module')
def cheetah():
  pytest.importorskip('brax')
  return registry.make_env('halfcheetah_vel', horizon=5, backend='spring')


def test_step_reward_is_the_velocity_task_reward(cheetah):
  """r = -|v - v*| - 0.05 ||clip(a)||^2 with v = (x' - x) / dt of the torso."""
  assert (cheetah.obs_dim, cheetah.action_dim, cheetah.horizon) == (17, 6, 5)
  goal = jnp.float32(0.7)
  state = cheetah.reset(goal, jax.random.PRNGKey(0))
  assert cheetah.observe(state).shape == (17,)
  step = jax.jit(cheetah.step)
  action = jnp.array([3.0, -0.5, 0.2, -2.0, 0.0, 0.9])  # two entries beyond +-1
  clipped = jnp.clip(action, -1.0, 1.0)
  x0 = float(state.pipeline_state.x.pos[0, 0])
  nxt, reward = step(state, action, goal)
  x1 = float(nxt.pipeline_state.x.pos[0, 0])
  from brax import envs as brax_envs_lib  # pylint: disable=g-import-not-at-top
  dt = float(brax_envs_lib.get_environment('halfcheetah', backend='spring').dt)
  velocity = (x1 - x0) / dt
  expected = -abs(velocity - 0.7) - 0.05 * float(jnp.sum(clipped ** 2))
  np.testing.assert_allclose(float(reward), expected, rtol=1e-4, atol=1e-5)
  # Actions are clipped to Brax's actuator range before the physics step.
  nxt_clipped, _ = step(state, clipped, goal)
  np.testing.assert_allclose(nxt.obs, nxt_clipped.obs, rtol=1e-6, atol=1e-6)


def test_launcher_runs_halfcheetah(tmp_path, cheetah):
  """One FO-MAML meta-iteration on halfcheetah_dir, tiny sizes, Adam outer step."""
  del cheetah
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.rl', f'--workdir={tmp_path}',
       '--run_name=hc', '--env=halfcheetah_dir', '--brax_backend=spring',
       '--horizon=5', '--algorithms=fo_maml', '--seeds=0', '--num_iterations=1',
       '--eval_every=1', '--tasks_per_batch=2', '--num_episodes=2', '--hidden=8',
       '--eval_tasks=2', '--eval_steps=1', '--meta_optimizer=adam'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / 'hc' / 'metrics.jsonl')]
  train_rows = [r for r in rows if r['kind'] == 'train']
  assert [r['iteration'] for r in train_rows] == [1]
  assert np.isfinite(train_rows[0]['return_after'])
  for name in ('summary.md', 'figures/returns.png', 'figures/eval_steps.png'):
    assert (tmp_path / 'hc' / name).exists(), name
  assert not (tmp_path / 'hc' / 'figures' / 'trajectories.png').exists()
