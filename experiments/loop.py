"""The one chunked training loop of the launchers, with its one resume path.

Every launcher trains several algorithms side by side, each as one state
whose leaves have a leading member axis (the seeds, or with ``--inner_lrs``
the grid (inner_lr, seed), batched with ``jax.vmap``). ``train_loop`` runs
them in compiled chunks of ``eval_every`` iterations; after each chunk it
appends the metric rows of every algorithm, rewrites metrics.jsonl/.csv,
saves an Orbax checkpoint (states, train keys, iteration) and logs progress.

``resume`` continues from the latest complete checkpoint, dropping the rows
written after it, and reproduces exactly the metrics of an uninterrupted
run: iteration i of a fused run draws its tasks (episodes, directions) from
``fold_in(key, i)``, and the keys and states are in the checkpoint.

With a task ``mesh`` (``--shard_tasks``, always with several processes) the
states and train keys are global arrays replicated over its devices: every
process holds the same ones, checkpoints them together (Orbax) and restores
them onto the same placement; ``run_chunk`` splits the tasks over the mesh.

What differs between the supervised launchers (``training.train``) and
meta-RL (``experiments/rl/train.py``) is in ``Hooks``: how a chunk runs,
what the rows after it hold (held-out evaluation, training metrics), what
the progress line says, and how a state is checkpointed (``Checkpoints``).
"""

import math
import time
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import rundir
from experiments import stopping


class Chunk(NamedTuple):
  """What ``Hooks.rows`` learns of the chunk that just ran.

  Attributes:
    length: its number of iterations.
    metrics: the chunk's metrics (host numpy), leading axis: the members.
    seconds: its wall time (compilation included for the first chunk).
  """
  length: int
  metrics: object
  seconds: float


def _as_is(state):
  return state


def _restored(tree, like):
  del like  # the restored tree already has the structure of the state
  return tree


class Checkpoints(NamedTuple):
  """How the states of one launcher are checkpointed.

  Attributes:
    state_to_tree: a state as saved (default: as it is).
    state_from_tree: ``state_from_tree(tree, like)``, the state of a restored
      ``tree``; ``like`` is a fresh state (default: the tree as it is).
    with_wall: whether checkpoints also hold each algorithm's training wall
      time (meta-RL's do); otherwise a resume reads it from the metric rows
      of the restored iteration.
  """
  state_to_tree: Callable = _as_is
  state_from_tree: Callable = _restored
  with_wall: bool = False


class Hooks(NamedTuple):
  """What one launcher's training does in ``train_loop``.

  Attributes:
    run_chunk: ``run_chunk(algorithm, length, state, train_keys) -> (state,
      metrics)``: ``length`` iterations of every member (compiled).
    rows: ``rows(algorithm, iteration, state, wall_time, chunk) -> [row]``,
      the metric rows (dicts with 'algorithm', 'seed', 'iteration') at
      ``iteration``: after a chunk (``chunk`` a ``Chunk``), or of the
      initial state (``chunk`` None, iteration 0). ``wall_time``: the
      algorithm's seconds of training so far.
    describe: ``describe(algorithm, rows, chunk) -> str``, the algorithm's
      part of the progress line logged after each chunk.
    checkpoints: ``Checkpoints``.
  """
  run_chunk: Callable
  rows: Callable
  describe: Callable
  checkpoints: Checkpoints = Checkpoints()


class LoopResult(NamedTuple):
  """Output of ``train_loop``.

  Attributes:
    states: ``{algorithm: state}``, the final states.
    wall: ``{algorithm: float}``, seconds of training (all runs of a resumed
      training together).
    seconds_per_iteration: ``{algorithm: float}``, wall seconds per
      iteration for all members together, over the chunks of this call after
      the first (which includes compilation) when there were several.
  """
  states: dict
  wall: dict
  seconds_per_iteration: dict


def seed_keys(seeds):
  """(init keys, train keys), one per seed, each of shape [num_seeds, 2]."""
  keys = [jax.random.PRNGKey(s) for s in seeds]
  init = jnp.stack([jax.random.fold_in(k, 0) for k in keys])
  train_keys = jnp.stack([jax.random.fold_in(k, 1) for k in keys])
  return init, train_keys


def to_host(tree):
  """``tree`` with its arrays copied to host numpy."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def format_value(x):
  """A metric for a log line: 4 significant digits, 'nan' if not finite."""
  return 'nan' if x is None or not math.isfinite(x) else f'{x:.4g}'


def checkpoint_tree(checkpoints, states, train_keys, iteration, wall):
  """What a checkpoint holds (also the structure that restores one)."""
  tree = {'states': {a: checkpoints.state_to_tree(s)
                     for a, s in states.items()},
          'train_keys': train_keys,
          'iteration': np.asarray(iteration, np.int32)}
  if checkpoints.with_wall:
    tree['wall'] = {a: np.asarray(w, np.float32) for a, w in wall.items()}
  return tree


def restore(checkpointer, step, checkpoints, states, train_keys):
  """``(states, train_keys, iteration, wall)`` of checkpoint ``step``.

  Args:
    checkpointer: a ``rundir.Checkpointer``.
    step: the checkpoint to restore.
    checkpoints: the launcher's ``Checkpoints``.
    states: ``{algorithm: state}``, fresh ones: they give the structure.
    train_keys: fresh train keys (``seed_keys``), for the structure.

  Returns:
    The restored states, train keys and iteration, and ``{algorithm: wall
    seconds}`` (None unless ``checkpoints.with_wall``).
  """
  tree = checkpointer.restore(step, checkpoint_tree(
      checkpoints, states, train_keys, 0, {a: 0.0 for a in states}))
  states = {a: checkpoints.state_from_tree(tree['states'][a], s)
            for a, s in states.items()}
  wall = ({a: float(tree['wall'][a]) for a in states}
          if checkpoints.with_wall else None)
  return states, tree['train_keys'], int(tree['iteration']), wall


def _first_line(error):
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'.rstrip(': ')


def restore_newest_good(checkpointer, checkpoints, states, train_keys):
  """``restore`` of the newest checkpoint that can be restored, or None.

  A checkpoint that cannot be read back (cut off by a full disk or a kill in
  a way Orbax's atomic rename did not catch, corrupted, deleted in part) is
  named in a warning, and the previous one is tried. Raises
  ``stopping.RunFailed`` when there are checkpoints and none restores.
  """
  steps = sorted(checkpointer.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      return restore(checkpointer, step, checkpoints, states, train_keys)
    except Exception as e:  # pylint: disable=broad-except
      after = (f'; falling back to checkpoint {steps[i + 1]}'
               if i + 1 < len(steps) else '')
      message = (f'warning: checkpoint {step} in {checkpointer.directory!r} '
                 f'cannot be restored ({_first_line(e)}){after}')
      logging.warning(message)
      stopping.say(message)
  if steps:
    raise stopping.RunFailed(
        f'--resume: none of the checkpoints {steps} in '
        f'{checkpointer.directory!r} can be restored; start the run again '
        '(without --resume, or with another --run_name)')
  return None


def train_loop(hooks, run_dir, states, train_keys, *, num_iterations,
               eval_every, resume, num_seeds, chunk_hook=None, mesh=None):
  """Trains ``states`` to ``num_iterations`` in chunks, with checkpoints.

  Args:
    hooks: the launcher's ``Hooks``.
    run_dir: ``rundir.RunDir`` (the rows of a resumed run already loaded).
    states: ``{algorithm: state}``, the initial states (leading member axis).
    train_keys: the members' train keys, passed to every chunk.
    num_iterations: iterations to reach (may grow on resume).
    eval_every: iterations per chunk (the last one may be shorter).
    resume: continue from the latest checkpoint of ``run_dir``, if any.
    num_seeds: seeds per algorithm (for the progress line).
    chunk_hook: optional ``chunk_hook(iteration)`` called after each
      checkpoint (tests use it to simulate a kill).
    mesh: the task mesh (``mj.task_mesh()``) of a sharded run, or None: the
      states and keys are then replicated over it.

  Returns:
    ``LoopResult``.
  """
  states = dict(states)
  if mesh is not None:
    states, train_keys = mj.replicate((states, train_keys), mesh)
  wall = {a: 0.0 for a in states}
  iteration = 0
  saved = None  # the iteration of the newest checkpoint written or restored
  command = stopping.resume_command(run_dir.path)

  def kept():
    if saved is None:
      return 'No checkpoint was written yet: start the run again.'
    return (f'The checkpoint of iteration {saved} is kept; resume with: '
            f'{command}')

  def write(what, fn):
    """``fn()``: a write of the run's files; a failure ends the run in one line."""
    try:
      with stopping.Deadline(what, where=kept):
        fn()
    except Exception as e:  # pylint: disable=broad-except
      raise stopping.RunFailed(
          f'{what} failed in {run_dir.path!r}: {_first_line(e)}. '
          f'{kept()}') from e

  checkpointer = rundir.Checkpointer(run_dir.file('checkpoints'))
  stops = stopping.StopRequests(on_exit_now=kept)
  try:
    stops.__enter__()
    restored = (restore_newest_good(checkpointer, hooks.checkpoints, states,
                                    train_keys) if resume else None)
    if restored is not None:
      states, train_keys, iteration, saved_wall = restored
      saved = iteration
      write('writing the metrics', lambda: run_dir.truncate(iteration))
      if saved_wall is not None:
        wall = saved_wall
      else:
        for r in run_dir.rows:
          if r['iteration'] == iteration and r.get('wall_time') is not None:
            wall[r['algorithm']] = r['wall_time']
      logging.info('resumed %s at iteration %d', run_dir.path, iteration)
    else:
      write('writing the metrics', lambda: run_dir.truncate(-1))

    if iteration == 0:
      for algorithm, state in states.items():
        run_dir.append(hooks.rows(algorithm, 0, state, wall[algorithm], None))
      write('writing the metrics', run_dir.flush)

    chunk_times = {a: [] for a in states}
    start_iteration, start_time = iteration, None
    while iteration < num_iterations:
      length = min(eval_every, num_iterations - iteration)
      parts = []
      chunk_start = time.time()
      for algorithm in states:
        t0 = time.time()
        states[algorithm], metrics = hooks.run_chunk(
            algorithm, length, states[algorithm], train_keys)
        metrics = to_host(metrics)
        seconds = time.time() - t0
        wall[algorithm] += seconds
        chunk_times[algorithm].append((length, seconds))
        chunk = Chunk(length, metrics, seconds)
        rows = hooks.rows(algorithm, iteration + length, states[algorithm],
                          wall[algorithm], chunk)
        run_dir.append(rows)
        parts.append(hooks.describe(algorithm, rows, chunk))
      iteration += length
      write(f'writing the metrics of iteration {iteration}', run_dir.flush)
      tree = checkpoint_tree(hooks.checkpoints, states, train_keys, iteration,
                             wall)
      write(f'the checkpoint of iteration {iteration}',
            lambda: checkpointer.save(iteration, tree))  # pylint: disable=cell-var-from-loop
      saved = iteration
      # Rate over the chunks after the first (which includes compilation).
      if start_time is None:
        rate = length / max(time.time() - chunk_start, 1e-9)
        start_iteration, start_time = iteration, time.time()
      else:
        rate = (iteration - start_iteration) / max(time.time() - start_time,
                                                   1e-9)
      eta = (num_iterations - iteration) / max(rate, 1e-9)
      logging.info(
          'iteration %d/%d (%.0f%%), %.1f it/s (all algorithms, %d seeds), '
          'ETA %.0fs | %s', iteration, num_iterations,
          100.0 * iteration / num_iterations, rate, num_seeds, eta,
          ' | '.join(parts))
      if chunk_hook is not None:
        chunk_hook(iteration)
      with stopping.Deadline('sharing the stop requests', where=kept):
        stop = stopping.any_process(stops.requested is not None)
      if stop and iteration < num_iterations:
        why = (stopping.signal_name(stops.requested) if stops.requested
               else 'a stop request of another process')
        raise stopping.Preempted(
            f'stopped by {why} after iteration {iteration} of '
            f'{num_iterations}, checkpoint saved in {run_dir.path!r}; resume '
            f'with: {command}')
  finally:
    stops.__exit__(None, None, None)
    checkpointer.close()

  seconds_per_iteration = {}
  for algorithm, times in chunk_times.items():
    steady = times[1:] or times
    if steady:
      seconds_per_iteration[algorithm] = (
          sum(t for _, t in steady) / sum(n for n, _ in steady))
  return LoopResult(states=states, wall=wall,
                    seconds_per_iteration=seconds_per_iteration)
