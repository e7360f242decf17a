"""Fault injection: preemption, Ctrl-C, dead processes, unshared folders,
failed writes, torn checkpoints and kill -9 (docs/failures.md).

Every run is a small sine MAML training through the launchers' loop
(``tests/distributed_worker.py``: the sine launcher's training, its
metrics, checkpoints and --resume), in this process where the test only
needs the loop, as processes where it needs signals, exit codes or several
processes. "Exact" means the final metric rows (the held-out losses and
training metrics at every evaluated iteration, wall times aside) and the
parameters equal those of an uninterrupted run bit for bit.
"""

import json
import os
import random
import re
import shlex
import signal
import sys
import time

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest

from experiments import rundir
from experiments import stopping
from launcher_util import free_port
from launcher_util import run_processes
from launcher_util import start
from launcher_util import WORKER
import distributed_worker

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves it out

FLAGS = flags.FLAGS
ARGS = ['--algorithms=maml', '--seeds=0', '--tasks_per_batch=4',
        '--eval_every=1', '--num_test_tasks=4', '--kshot_steps=1',
        '--num_support=5', '--num_query=5', '--num_inner_steps=1']
ITERATIONS = 4
TIMEOUT = 180  # seconds for a launcher process (compiles on 2 busy cores)


def train(workdir, *extra, chunk_hook=None):
  """The sine training in this process; ``TrainResult``."""
  saved = flagsaver.save_flag_values()
  try:
    FLAGS.unparse_flags()
    FLAGS(['prog'] + ARGS + [f'--workdir={workdir}', '--run_name=run',
                             f'--num_iterations={ITERATIONS}'] + list(extra))
    return distributed_worker.train_sine(chunk_hook=chunk_hook)
  finally:
    FLAGS.unparse_flags()
    flagsaver.restore_flag_values(saved)


def rows_of(run):
  """The metric rows of a run folder, wall times left out (they differ)."""
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [{k: v for k, v in r.items() if 'wall' not in k and 'second' not in k}
          for r in rows]


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """One persistent compilation cache for every launcher process of the module."""
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run: its metric rows and final parameters."""
  workdir = tmp_path_factory.mktemp('reference')
  result = train(workdir)
  return rows_of(workdir / 'run'), distributed_worker.flat_params(result.states)


def assert_exact(run, reference, params=None):
  assert rows_of(run) == reference[0]
  if params is not None:
    assert params.keys() == reference[1].keys()
    for k, v in params.items():
      np.testing.assert_array_equal(v, reference[1][k], err_msg=k)


def test_sigterm_stops_after_the_chunk_and_resume_is_exact(tmp_path, reference):
  def preempt(iteration):
    if iteration == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while the loop runs

  # What the process had before (Python's own, or SIG_IGN for a job a
  # non-interactive shell started in the background).
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  with pytest.raises(stopping.Preempted) as stop:
    train(tmp_path, chunk_hook=preempt)
  message = str(stop.value)
  assert 'stopped by SIGTERM after iteration 2 of 4' in message
  assert '--run_name=run --resume' in message
  run = tmp_path / 'run'
  assert rundir.Checkpointer(str(run / 'checkpoints')).latest_step() == 2
  assert max(r['iteration'] for r in rows_of(run)) == 2  # nothing logged lost
  # The handlers are gone once the loop ends: the process's own are back.
  assert {s: signal.getsignal(s) for s in before} == before
  result = train(tmp_path, '--resume')
  assert_exact(run, reference, distributed_worker.flat_params(result.states))


def test_the_command_line_stops_with_code_75_and_prints_the_resume_command(
    tmp_path, reference, cache):
  command = [sys.executable, WORKER, f'--params_out={tmp_path}'] + ARGS + [
      f'--workdir={tmp_path}', '--run_name=run',
      f'--num_iterations={ITERATIONS}', '--sigterm_after=1']
  [(code, text)] = run_processes([command], timeout=TIMEOUT, cache=cache)
  assert code == stopping.PREEMPTED_EXIT_CODE, text[-3000:]
  [line] = [l for l in text.splitlines() if 'resume with: ' in l]
  assert 'stopped by SIGTERM after iteration 1 of 4' in line
  resume = shlex.split(line.split('resume with: ', 1)[1])
  assert resume[0] == 'python' and resume[-2:] == ['--run_name=run', '--resume']
  [(code, text)] = run_processes([[sys.executable] + resume[1:]],
                                 timeout=TIMEOUT, cache=cache)
  assert code == 0, text[-3000:]
  assert 'resumed' in text and 'at iteration 1' in text
  params = dict(np.load(tmp_path / 'params_0.npz'))
  assert_exact(tmp_path / 'run', reference, params)


def test_a_second_signal_exits_at_once(tmp_path, cache):
  # One long compiled chunk: the first Ctrl-C waits for its end, the second
  # must not.
  command = [sys.executable, WORKER, f'--params_out={tmp_path}'] + ARGS + [
      f'--workdir={tmp_path}', '--run_name=run', '--num_iterations=2000000',
      '--eval_every=1000000']
  proc = start(command, cache)
  try:
    metrics = tmp_path / 'run' / 'metrics.jsonl'
    deadline = time.monotonic() + TIMEOUT
    while not (metrics.exists() and metrics.read_text()):  # iteration 0 logged
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # the first one only asked for a stop
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 10
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGINT, text[-3000:]
  assert 'SIGINT received: stopping after the chunk in flight' in text
  assert 'second SIGINT: exiting now. No checkpoint was written yet' in text


def test_a_failed_checkpoint_ends_the_run_in_one_line_and_keeps_the_last(
    tmp_path, reference, monkeypatch):
  real_save = rundir.Checkpointer.save

  def disk_full_at_3(self, step, tree):
    if step == 3:  # as Orbax reports a full disk (tensorstore's message)
      os.makedirs(os.path.join(self.directory, '3.orbax-checkpoint-tmp'))
      raise ValueError('RESOURCE_EXHAUSTED: Error writing "a/0": No space '
                       "left on device [os_error_code='28']")
    return real_save(self, step, tree)

  monkeypatch.setattr(rundir.Checkpointer, 'save', disk_full_at_3)
  with pytest.raises(stopping.RunFailed) as failure:
    train(tmp_path)
  message = str(failure.value)
  assert '\n' not in message
  assert (f"the checkpoint of iteration 3 failed in '{tmp_path / 'run'}': "
          'ValueError: RESOURCE_EXHAUSTED') in message
  assert 'The checkpoint of iteration 2 is kept; resume with:' in message
  assert message.endswith('--run_name=run --resume')
  monkeypatch.setattr(rundir.Checkpointer, 'save', real_save)
  assert rundir.Checkpointer(str(tmp_path / 'run' / 'checkpoints')).all_steps() == [1, 2]
  train(tmp_path, '--resume')  # the unfinished save is not in the way
  assert_exact(tmp_path / 'run', reference)


def test_a_failed_metrics_write_ends_the_run_in_one_line(tmp_path, monkeypatch):
  real = rundir.atomic_write_text
  calls = []

  def full_disk(path, text):
    if path.endswith('metrics.jsonl'):
      calls.append(path)
      if len(calls) == 4:  # truncate, iterations 0, 1, then 2
        raise OSError(28, 'No space left on device')
    return real(path, text)

  monkeypatch.setattr(rundir, 'atomic_write_text', full_disk)
  with pytest.raises(stopping.RunFailed, match=(
      r"writing the metrics of iteration 2 failed in '.*run': OSError: "
      r'\[Errno 28\] No space left on device\. The checkpoint of iteration 1 '
      r'is kept; resume with: ')):
    train(tmp_path)


def corrupt(checkpoint):
  """Cuts every data file of a checkpoint folder to half its size."""
  cut = 0
  for folder, _, files in os.walk(checkpoint):
    for name in files:
      path = os.path.join(folder, name)
      size = os.path.getsize(path)
      if size > 1:
        os.truncate(path, size // 2)
        cut += 1
  assert cut


def test_a_torn_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, reference, capfd):
  train(tmp_path, '--num_iterations=3')
  checkpoints = tmp_path / 'run' / 'checkpoints'
  assert sorted(os.listdir(checkpoints)) == ['2', '3']
  corrupt(checkpoints / '3')
  train(tmp_path, '--resume')
  err = capfd.readouterr().err
  assert re.search(r"warning: checkpoint 3 in '.*checkpoints' cannot be "
                   r'restored \(.*\); falling back to checkpoint 2', err), err
  assert_exact(tmp_path / 'run', reference)

  corrupt(checkpoints / '4')
  corrupt(checkpoints / '3')
  with pytest.raises(stopping.RunFailed,
                     match=r'none of the checkpoints \[4, 3\] .* can be restored'):
    train(tmp_path, '--resume', '--num_iterations=5')


def last_logged(metrics):
  """The last iteration in a metrics.jsonl (-1 before any)."""
  try:
    with open(metrics) as f:
      return max((json.loads(line)['iteration'] for line in f if line.strip()),
                 default=-1)
  except OSError:
    return -1


def test_kill_9_at_random_points_then_resume_gives_the_same_metrics(
    tmp_path, tmp_path_factory, cache):
  iterations = 12
  reference_dir = tmp_path_factory.mktemp('reference_12')
  reference_params = distributed_worker.flat_params(
      train(reference_dir, f'--num_iterations={iterations}').states)
  command = [sys.executable, WORKER, f'--params_out={tmp_path}'] + ARGS + [
      f'--workdir={tmp_path}', '--run_name=run',
      f'--num_iterations={iterations}']
  metrics = tmp_path / 'run' / 'metrics.jsonl'
  rng = random.Random(0)
  kills = []
  for attempt in range(8):
    proc = start(command + (['--resume'] if metrics.exists() else []), cache)
    if attempt < 3:  # three kills at random points of the loop, then the end
      # Once a random iteration ahead is logged, a random fraction of a
      # chunk later: mid-chunk, mid-metrics write or mid-checkpoint.
      target = (kills[-1] if kills else 0) + rng.randint(1, 3)
      deadline = time.monotonic() + TIMEOUT
      while last_logged(metrics) < target:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.3))
      if proc.poll() is None:
        proc.kill()
        kills.append(last_logged(metrics))
    text, _ = proc.communicate(timeout=TIMEOUT)
    if proc.returncode == 0:
      break
    assert proc.returncode == -signal.SIGKILL, text[-3000:]
  assert proc.returncode == 0 and len(kills) >= 2, (kills, text[-3000:])
  params = dict(np.load(tmp_path / 'params_0.npz'))
  assert_exact(tmp_path / 'run', (rows_of(reference_dir / 'run'),
                                  reference_params), params)


def two_processes(tmp_path, cache, workdirs, extra=()):
  port = free_port()
  return [start([sys.executable, WORKER, f'--params_out={tmp_path}',
                 f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                 f'--process_id={i}', '--distributed_timeout=15'] + ARGS + [
                     f'--workdir={workdirs[i]}', '--run_name=run'] + list(extra),
                cache=cache) for i in range(2)]


def test_processes_that_do_not_share_the_workdir_stop_with_a_clear_error(
    tmp_path, cache):
  began = time.monotonic()
  procs = two_processes(tmp_path, cache, [tmp_path / 'host0', tmp_path / 'host1'],
                        ['--num_iterations=2'])
  out = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  assert time.monotonic() - began < 60 + 60  # startup on a busy CPU + 60 s
  for p, text in zip(procs, out):
    assert p.returncode == 1, text[-3000:]
    [line] = [l for l in text.splitlines() if 'do not see the run folder' in l]
    assert 'process(es) 1 of 2' in line and 'one folder that every process' in line
  assert not (tmp_path / 'host0' / 'run' / 'checkpoints').exists()


def test_a_dead_process_makes_the_other_exit_with_a_message(tmp_path, cache):
  procs = two_processes(tmp_path, cache, [tmp_path, tmp_path],
                        ['--num_iterations=100000'])
  try:
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / 'run' / 'checkpoints' / '2').exists():
      assert procs[0].poll() is None and time.monotonic() < deadline
      time.sleep(0.2)
    procs[1].kill()
    killed = time.monotonic()
    text, _ = procs[0].communicate(timeout=90)
    assert time.monotonic() - killed < 15 + 30  # --distributed_timeout + slack
  finally:
    for p in procs:
      p.kill()
  assert procs[0].returncode != 0
  # JAX's coordination service notices the missing heartbeats and ends the
  # process with a message naming the likely cause.
  assert 'another task died' in text or 'stopped sending heartbeats' in text, (
      text[-3000:])
  # What was checkpointed stays restorable.
  assert rundir.Checkpointer(str(tmp_path / 'run' / 'checkpoints')).latest_step() >= 2


def test_a_barrier_that_outlasts_the_deadline_ends_the_process(monkeypatch, capfd):
  """``stopping.Deadline`` (barriers, checkpoint saves, the stop vote of a
  multi-process run): past the limit, one line and exit code 1."""
  import jax  # pylint: disable=g-import-not-at-top
  exits = []
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(os, '_exit', exits.append)
  with stopping.Deadline('the checkpoint of iteration 4', seconds=0.2,
                         where=lambda: 'The checkpoint of iteration 2 is kept.'):
    time.sleep(1.0)  # a barrier that never completes
  assert exits == [1]
  err = capfd.readouterr().err
  assert ('the checkpoint of iteration 4 did not finish within 0.2 s '
          '(--distributed_timeout): another process has died') in err
  assert err.rstrip().endswith('The checkpoint of iteration 2 is kept.')
  with stopping.Deadline('a quick barrier', seconds=5.0):
    pass  # done in time: the timer is cancelled
  time.sleep(0.1)
  assert exits == [1]
