"""One run's folder: config.json, metrics files, Orbax checkpoints.

Outputs of one run (``RunDir``), in ``<workdir>/<run_name>/``:
  config.json    every flag, the resolved hyperparameters, package versions
                 (``config_dict``).
  metrics.jsonl  one row per (algorithm, seed, evaluated iteration), and per
                 inner_lr with --inner_lrs; with --learn_inner_lr the rows
                 hold inner_lr_mean/_min/_max (and inner_lr_step<j>_mean).
  metrics.csv    the same rows as CSV.
  checkpoints/   Orbax checkpoints (``Checkpointer``: train states, PRNG
                 keys, iteration).
  sweep.json     the ``--sweep`` grid and the chosen hyperparameters.
  summary.md     final meta-test loss (mean +- std over seeds), time/iteration.
  tensorboard/   event files, only if tensorboardX or tensorboard is installed.

With several processes (``jax.distributed``), every process runs the same
code but only process 0 writes files (``is_writer``: ``atomic_write_text``,
``RunDir``, ``plotting``), while every process takes part in the Orbax
checkpoints, which need a folder every process sees (a shared file system).
"""

import csv
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from experiments import stopping

FLAGS = flags.FLAGS

_VERSIONED = ('jax', 'jaxlib', 'optax', 'flax', 'chex', 'numpy', 'absl-py',
              'orbax-checkpoint', 'matplotlib', 'maml_jax')


def package_versions():
  """Versions of the packages the results depend on (+ Python, platform)."""
  out = {'python': sys.version.split()[0], 'platform': platform.platform()}
  for name in _VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  out['jax_backend'] = jax.default_backend()
  out['jax_devices'] = [str(d) for d in jax.devices()]
  return out


def flag_values(module_prefix='experiments'):
  """Every flag defined by the ``experiments`` modules, as a dict."""
  out = {}
  for module, module_flags in FLAGS.flags_by_module_dict().items():
    if module.startswith(module_prefix) or module == '__main__':
      for f in module_flags:
        out[f.name] = f.value
  return dict(sorted(out.items()))


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if dataclasses.is_dataclass(x):
    return dataclasses.asdict(x)
  if isinstance(x, tuple):
    return list(x)
  return str(x)


def is_writer():
  """Whether this process writes the run's files: process 0 of a run."""
  return jax.process_index() == 0


def sync_processes(name):
  """Waits until every process reaches this point (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def atomic_write_text(path, text):
  """Writes ``text`` to ``path`` via a temporary file and ``os.replace``.

  Only on the writing process (``is_writer``); a no-op on the others.
  """
  if not is_writer():
    return
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp_')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def json_scalar(value):
  """JSON-safe scalar: NaN/inf become None."""
  if value is None:
    return None
  if isinstance(value, (str, bool)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else None


SHARED_CHECK_FILE = '.processes_see_this_folder'


def check_shared_folder(path):
  """Raises ``stopping.RunFailed`` unless every process sees ``path`` as one folder.

  Process 0 writes a token (a random number it shares with the others) into
  ``path``; every process reads it back. Orbax's checkpoints need a folder
  that all processes see; without this check, processes with a local folder
  each would wait for each other at the first checkpoint forever. A no-op
  with one process.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  token_file = os.path.join(path, SHARED_CHECK_FILE)
  with stopping.Deadline(f'the check that every process sees {path!r}'):
    mine = np.asarray(np.random.SeedSequence().entropy % (2**31 - 1), np.int32)
    token = str(int(multihost_utils.broadcast_one_to_all(mine)))
    atomic_write_text(token_file, token)
    sync_processes('rundir.shared_check.written')
    try:
      with open(token_file) as f:
        seen = f.read().strip() == token
    except OSError:
      seen = False
    seen_by = np.asarray(multihost_utils.process_allgather(
        np.asarray(seen, np.int32))).reshape(-1)
  if is_writer() and os.path.exists(token_file):
    os.remove(token_file)
  blind = [i for i, s in enumerate(seen_by) if not s]
  if blind:
    raise stopping.RunFailed(
        f'process(es) {", ".join(map(str, blind))} of {len(seen_by)} do not see '
        f'the run folder {path!r} that process 0 created: --workdir must be '
        'one folder that every process sees (a shared file system: NFS, a '
        'mounted bucket), not a local folder on each host')


class RunDir:
  """One run's folder: config.json, metrics.jsonl/.csv, summary, TensorBoard.

  Metrics are kept in memory and both files are rewritten atomically after
  every chunk, so a kill never leaves a half-written line. Every process
  keeps the rows; only process 0 writes files (``is_writer``).
  """

  def __init__(self, path, rows=None):
    self.path = path
    self.rows = list(rows or [])
    self._tb = None
    self._tb_tried = False

  @classmethod
  def create(cls, workdir, run_name, *, resume, default_name):
    """Picks the run folder (see --run_name) and loads metrics on resume.

    With several processes each decides from the same folder listing, and
    all wait for each other before anything is created, so they agree.
    """
    if run_name is None:
      taken = sorted(
          (n for n in os.listdir(workdir)
           if n == default_name or (n.startswith(default_name + '_')
                                    and n[len(default_name) + 1:].isdigit())),
          key=lambda n: 0 if n == default_name else int(n.rsplit('_', 1)[1]))
      if resume:
        if not taken:
          raise app.UsageError(f'--resume: no run {default_name!r} in '
                               f'{workdir!r} (pass --run_name)')
        run_name = taken[-1]
      elif default_name not in taken:
        run_name = default_name
      else:
        last = 0 if taken[-1] == default_name else int(taken[-1].rsplit('_', 1)[1])
        run_name = f'{default_name}_{max(last, 1) + 1}'
    path = os.path.join(workdir, run_name)
    if resume and not os.path.isdir(path):
      raise app.UsageError(f'--resume: {path!r} does not exist')
    if not resume and os.path.exists(os.path.join(path, 'metrics.jsonl')):
      raise app.UsageError(f'{path!r} already holds a run: pass --resume or '
                           'another --run_name')
    with stopping.Deadline(f'creating the run folder {path!r}'):
      sync_processes('rundir.create')
    os.makedirs(path, exist_ok=True)
    check_shared_folder(path)
    rows = []
    metrics = os.path.join(path, 'metrics.jsonl')
    if resume and os.path.exists(metrics):
      with open(metrics) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return cls(path, rows)

  def file(self, *names):
    return os.path.join(self.path, *names)

  def write_config(self, config, *, resume):
    """Writes config.json; on --resume checks that the settings match."""
    config = json.loads(json.dumps(config, default=_json_default))
    path = self.file('config.json')
    if resume and os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      # Where the run folder lives (moved to another disk, say) and where
      # and how many processes run may change on resume.
      ignore = {'resume', 'num_iterations', 'run_name', 'workdir', 'versions',
                'sweep_iterations', 'coordinator_address', 'num_processes',
                'process_id', 'distributed', 'distributed_timeout',
                'shard_tasks'}
      old_flags = {k: v for k, v in old.get('flags', {}).items()
                   if k not in ignore}
      new_flags = {k: v for k, v in config.get('flags', {}).items()
                   if k not in ignore}
      # A flag added after the run was made matches if it keeps its default.
      for k in set(new_flags) - set(old_flags):
        if k in FLAGS:
          old_flags[k] = json.loads(json.dumps(FLAGS[k].default,
                                               default=_json_default))
      diff = sorted(k for k in set(old_flags) | set(new_flags)
                    if old_flags.get(k) != new_flags.get(k))
      if diff:
        raise app.UsageError(f'--resume with different flags than the run in '
                             f'{self.path!r}: {", ".join(diff)}')
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True,
                                       default=_json_default) + '\n')

  def truncate(self, iteration):
    """Drops metric rows after ``iteration`` (the restored checkpoint)."""
    self.rows = [r for r in self.rows if r['iteration'] <= iteration]
    self.flush()

  def append(self, rows):
    rows = [{k: json_scalar(v) for k, v in r.items()} for r in rows]
    self.rows.extend(rows)
    self._tensorboard(rows)

  def flush(self):
    """Rewrites metrics.jsonl and metrics.csv atomically (process 0 only)."""
    if not is_writer():
      return
    atomic_write_text(self.file('metrics.jsonl'), ''.join(
        json.dumps(r, sort_keys=True) + '\n' for r in self.rows))
    keys = []
    for r in self.rows:
      keys.extend(k for k in r if k not in keys)
    lead = [k for k in ('algorithm', 'seed', 'iteration') if k in keys]
    keys = lead + sorted(k for k in keys if k not in lead)
    directory = os.path.dirname(self.file('metrics.csv'))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp_')
    with os.fdopen(fd, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=keys)
      writer.writeheader()
      writer.writerows(self.rows)
    os.chmod(tmp, 0o644)
    os.replace(tmp, self.file('metrics.csv'))

  def _tensorboard(self, rows):
    if not is_writer():
      return
    if not self._tb_tried:
      self._tb_tried = True
      writer_cls = None
      try:
        from tensorboardX import SummaryWriter as writer_cls  # pylint: disable=g-import-not-at-top
      except ImportError:
        try:
          from torch.utils.tensorboard import SummaryWriter as writer_cls  # pylint: disable=g-import-not-at-top
        except ImportError:
          logging.info('tensorboard not installed: no event files written')
      if writer_cls is not None:
        self._tb = writer_cls(self.file('tensorboard'))
    if self._tb is None:
      return
    for r in rows:
      tag = f"{r.get('algorithm')}/seed{r.get('seed')}"
      for k, v in r.items():
        if k not in ('algorithm', 'seed', 'iteration') and isinstance(
            v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(f'{tag}/{k}', v, r['iteration'])
    self._tb.flush()


class _DropFrom:
  """Logging filter: drops one library's records below a level (default: INFO and below)."""

  def __init__(self, marker, below=21):
    self.marker = marker
    self.below = below

  def filter(self, record):
    return (record.levelno >= self.below
            or self.marker not in (record.pathname or ''))



def quiet_orbax():
  """Hides Orbax's per-save INFO lines from the absl log (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropFrom) for f in handler.filters):
    handler.addFilter(_DropFrom(os.sep + 'orbax' + os.sep))


class Checkpointer:
  """Orbax checkpoints of a pytree, written atomically, latest 2 kept.

  Orbax writes each step into a temporary folder and renames it when
  complete, so a kill mid-write leaves the previous checkpoint as latest.
  With several processes every process saves and restores (Orbax's
  multi-process protocol: each writes the shards it owns, process 0 the
  metadata and the commit), so replicated global arrays are written once
  and restored onto the same sharding.
  """

  def __init__(self, directory, max_to_keep=2):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    quiet_orbax()
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    """The steps of every complete checkpoint (a save cut off is not one)."""
    return list(self._manager.all_steps())

  def save(self, step, tree):
    """Saves ``tree`` as ``step`` and waits until it is complete.

    A failed save raises (Orbax reports a full disk as ``ValueError:
    RESOURCE_EXHAUSTED ...``) and leaves the previous checkpoint the newest.
    Orbax's own error logs of its writer threads (a traceback per thread)
    are held back meanwhile: the caller reports the failure in one line.
    """
    handler = logging.get_absl_handler()
    hold = _DropFrom(os.sep + 'orbax' + os.sep, below=50)  # Python's CRITICAL
    handler.addFilter(hold)
    try:
      self._manager.save(step, args=self._ocp.args.StandardSave(tree))
      self._manager.wait_until_finished()
    finally:
      handler.removeFilter(hold)

  def restore(self, step, like):
    """Restores ``step`` into the structure, dtypes and placement of ``like``.

    ``jax.Array`` leaves come back with their sharding (global arrays of a
    multi-process run), other leaves as numpy arrays.
    """
    def target(x):
      if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      return np.asarray(x)
    abstract = jax.tree.map(target, like)
    return self._manager.restore(
        step, args=self._ocp.args.StandardRestore(abstract))

  def close(self):
    self._manager.close()


def config_dict(cfg, extra=None):
  """The content of config.json: resolved config, all flags, versions."""
  out = {'config': dataclasses.asdict(cfg) if cfg is not None else None,
         'flags': flag_values(), 'versions': package_versions(),
         'command': ' '.join(sys.argv)}
  if extra:
    out.update(extra)
  return out
