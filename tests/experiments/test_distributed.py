"""Many processes (issue 13; docs/design.md, 'Sharding'): jax.distributed on 127.0.0.1.

Two processes with 2 forced CPU devices each run 3 meta-iterations of sine
MAML and GGS-MAML through a launcher command line (tests/distributed_worker.py:
``cli.cli_main`` and the sine launcher's training); process 1 alone gets
a SIGTERM (a preemption) after the checkpoint of iteration 2, both stop
there, and the run is resumed. Both processes must end with identical
parameters, equal to a 1-process run on this process's 4 devices
(tests/conftest.py) with the same seed. Every subprocess has a timeout, so a
hang fails the test instead of blocking CI. More failures (dead processes,
folders that are not shared): tests/experiments/test_faults.py.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl.testing import flagsaver
import jax
import numpy as np
import pytest

from experiments import launcher_flags
from experiments import plotting
from experiments import rundir
from experiments import runtime
from experiments import sine
from experiments import stopping
import launcher_util
from launcher_util import free_port
from launcher_util import REPO
from launcher_util import run_launcher
from launcher_util import run_processes
from launcher_util import WORKER
import distributed_worker

FLAGS = flags.FLAGS
SINE_ARGS = ['--algorithms=maml,ggs_maml', '--seeds=0', '--tasks_per_batch=4',
             '--num_iterations=3', '--eval_every=1', '--num_test_tasks=4',
             '--kshot_steps=1', '--num_support=5', '--num_query=5',
             '--num_inner_steps=2', '--num_directions=2']
TIMEOUT = 240  # seconds for one pair of processes (compiles on 2 busy cores)


def two_processes(args, tmp_path, per_process=((), ())):
  """Both processes of a run; ``per_process[i]``: flags of process i only."""
  port = free_port()
  return run_processes([
      [sys.executable, WORKER, f'--params_out={tmp_path}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}', '--distributed_timeout=60'] + args
      + list(per_process[i])
      for i in range(2)], timeout=TIMEOUT, cache=tmp_path / 'jax_cache')


def one_process_reference(args):
  """The same sine training in this process (its 4 devices)."""
  saved = flagsaver.save_flag_values()
  try:
    FLAGS.unparse_flags()
    FLAGS(['prog'] + args)
    return distributed_worker.train_sine()
  finally:
    FLAGS.unparse_flags()
    flagsaver.restore_flag_values(saved)


@pytest.mark.slow
def test_two_processes_preempted_and_resumed_equal_one_process(tmp_path):
  workdir = tmp_path / 'two'
  args = SINE_ARGS + [f'--workdir={workdir}', '--run_name=run']
  stopped = two_processes(args, tmp_path,
                          per_process=((), ['--sigterm_after=2']))
  for code, text in stopped:  # both stop at the same iteration, cleanly
    assert code == stopping.PREEMPTED_EXIT_CODE, text[-3000:]
    assert 'after iteration 2 of 3' in text and '--resume' in text, text[-3000:]
  assert 'stopped by SIGTERM' in stopped[1][1]
  assert 'stopped by a stop request of another process' in stopped[0][1]
  run = workdir / 'run'
  assert '2' in os.listdir(run / 'checkpoints')
  rows = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  assert max(r['iteration'] for r in rows) == 2

  resumed = two_processes(args + ['--resume'], tmp_path)
  for code, text in resumed:
    assert code == 0, text[-3000:]
  assert 'resumed' in resumed[0][1] and 'at iteration 2' in resumed[0][1]
  p0 = dict(np.load(tmp_path / 'params_0.npz'))
  p1 = dict(np.load(tmp_path / 'params_1.npz'))
  assert p0.keys() == p1.keys() and any(k.startswith('ggs_maml') for k in p0)
  for k in p0:  # one program, replicated: bit for bit the same
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
  rows = [json.loads(line) for line in open(run / 'metrics.jsonl')]
  assert sorted(r['iteration'] for r in rows) == [0, 0, 1, 1, 2, 2, 3, 3]

  # The same seed on 1 process with 4 devices (this pytest process).
  reference = one_process_reference(SINE_ARGS + [
      f'--workdir={tmp_path / "one"}', '--shard_tasks'])
  one = distributed_worker.flat_params(reference.states)
  assert one.keys() == p0.keys()
  for k in one:
    np.testing.assert_allclose(p0[k], one[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)
  ref_rows = {(r['algorithm'], r['iteration']): r['test_loss']
              for r in reference.rows}
  for r in rows:
    np.testing.assert_allclose(
        r['test_loss'], ref_rows[r['algorithm'], r['iteration']], rtol=1e-4)


def test_unreachable_coordinator_is_a_clear_error_not_a_hang(tmp_path):
  start = time.monotonic()
  [(code, text)] = run_processes([[
      sys.executable, '-m', 'experiments.sine',
      f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2',
      '--process_id=1', '--distributed_timeout=2', f'--workdir={tmp_path}']],
                                 timeout=60)
  assert code == 1, text[-2000:]
  assert 'could not reach the coordinator at 127.0.0.1:' in text
  assert time.monotonic() - start < 60
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('args, match', [
    (['--process_id=1'], 'without --coordinator_address, --num_processes'),
    (['--coordinator_address=h:1', '--num_processes=2', '--process_id=2'],
     'process_id must be in 0..1'),
    (['--coordinator_address=nohost', '--num_processes=2', '--process_id=0'],
     'host:port'),
    (['--coordinator_address=h:1', '--num_processes=2', '--process_id=0',
      '--noshard_tasks'], 'noshard_tasks'),
    (['--coordinator_address=h:1', '--num_processes=2', '--process_id=0',
      '--nodistributed'], 'nodistributed'),
    (['--distributed_timeout=0'], 'distributed_timeout'),
])
def test_inconsistent_distributed_flags_are_refused(args, match):
  launcher_flags.define_output_flags()
  with flagsaver.flagsaver():
    FLAGS.unparse_flags()
    FLAGS(['prog'] + args)
    with pytest.raises(app.UsageError, match=match):
      runtime.distributed_args()
    FLAGS.unparse_flags()


def test_no_distributed_flags_means_one_process(monkeypatch):
  launcher_flags.define_output_flags()
  for var in ('SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  with flagsaver.flagsaver():
    FLAGS.unparse_flags()
    FLAGS(['prog'])
    assert runtime.distributed_args() is None
    monkeypatch.setenv('SLURM_STEP_NUM_TASKS', '4')  # srun -n 4: auto-detect
    assert runtime.distributed_args() == {}
    FLAGS.unparse_flags()


def test_tasks_that_do_not_divide_over_the_devices_are_refused(tmp_path):
  with pytest.raises(app.UsageError, match='split evenly over the 4 devices'):
    run_launcher(sine, SINE_ARGS + ['--shard_tasks', '--tasks_per_batch=6',
                                    f'--workdir={tmp_path}'])
  assert not os.listdir(tmp_path)


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  run_dir = rundir.RunDir(str(tmp_path), rows=[{'iteration': 0}])
  run_dir.flush()
  rundir.atomic_write_text(str(tmp_path / 'summary.md'), 'text')
  fig, _ = plotting.plt.subplots()
  plotting.save_figure(fig, str(tmp_path / 'figure.png'))
  assert not os.listdir(tmp_path)
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  run_dir.flush()
  assert (tmp_path / 'metrics.jsonl').exists()


def test_cpu_devices_flag_exposes_devices_and_splits_the_tasks():
  """--cpu_devices: one JAX CPU device per core, task batches split over them."""
  code = ('import sys; from absl import flags; from experiments import launcher_flags, runtime; '
          'launcher_flags.define_output_flags(); flags.FLAGS(sys.argv); '
          'runtime.apply_cpu_devices(); import jax; '
          'print(jax.device_count(), runtime.task_sharding(6))')
  env = dict(os.environ, XLA_FLAGS=launcher_util.xla_flags())
  out = subprocess.run([sys.executable, '-c', code, '--cpu_devices=3'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120,
                       check=True).stdout
  assert out.split()[-2:] == ['3', 'True']
  launcher_flags.define_output_flags()
  with flagsaver.flagsaver():  # this process started JAX with 4 CPU devices
    for args, sharded in ((['--cpu_devices=4'], True),
                          (['--cpu_devices=4', '--noshard_tasks'], False)):
      FLAGS.unparse_flags()
      FLAGS(['prog'] + args)
      runtime.apply_cpu_devices()
      assert runtime.task_sharding(8) is sharded
    FLAGS.unparse_flags()
    FLAGS(['prog', '--cpu_devices=2'])
    with pytest.raises(app.UsageError, match='already started with 4 CPU'):
      runtime.apply_cpu_devices()
    FLAGS.unparse_flags()
