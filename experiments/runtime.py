"""What a launcher's process sets up before it runs: memory, devices, processes.

``experiments.cli.cli_main`` calls, before any JAX computation:
``reuse_host_memory`` (glibc keeps freed memory; --noreuse_host_memory turns
it off), ``apply_cpu_devices`` (--cpu_devices) and ``initialize_distributed``.

Many processes (docs/design.md, 'Sharding'): the flags of
``launcher_flags.define_distributed_flags`` (--coordinator_address,
--num_processes, --process_id, or none of them: ``jax.distributed.initialize()``
reads them from SLURM's srun or Open MPI's mpirun; --distributed_timeout,
--shard_tasks) say whether and how this process joins a multi-process run.
``task_sharding`` says whether the task batches are split over every device
of every process (``config.training_config`` stores it in
``TrainConfig.shard_tasks``, which ``training.train`` reads); ``rundir``
makes process 0 the only one that writes files.
"""

import ctypes
import ctypes.util
import os
import socket
import threading
import time

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import stopping

FLAGS = flags.FLAGS


class DistributedError(Exception):
  """This process could not join the multi-process run."""


_CLUSTER_SIZE_VARS = ('SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE')


def _cluster_tasks():
  """Processes srun (SLURM) or mpirun (Open MPI) started, 1 if neither."""
  for var in _CLUSTER_SIZE_VARS:
    try:
      return max(1, int(os.environ[var]))
    except (KeyError, ValueError):
      continue
  return 1


def distributed_args():
  """The arguments of ``jax.distributed.initialize`` the flags ask for.

  Returns:
    None for a single-process run; ``{}`` to let JAX detect them (srun,
    mpirun, --distributed); else coordinator_address, num_processes and
    process_id. Raises ``app.UsageError`` on inconsistent flags.
  """
  if 'coordinator_address' not in FLAGS:
    return None
  names = ('coordinator_address', 'num_processes', 'process_id')
  given = {n: FLAGS[n].value for n in names if FLAGS[n].value is not None}
  if FLAGS.distributed_timeout < 1:
    raise app.UsageError('--distributed_timeout must be a positive number of '
                         f'seconds, got {FLAGS.distributed_timeout}')
  if given and len(given) < len(names):
    missing = ', '.join(f'--{n}' for n in names if n not in given)
    raise app.UsageError(
        f'{", ".join(f"--{n}" for n in given)} given without {missing}: pass '
        'all three, or none under srun/mpirun, which provide them')
  if given:
    if FLAGS.distributed is False:
      raise app.UsageError('--nodistributed contradicts --coordinator_address')
    num, pid = given['num_processes'], given['process_id']
    if num < 1:
      raise app.UsageError(f'--num_processes must be >= 1, got {num}')
    if not 0 <= pid < num:
      raise app.UsageError(f'--process_id must be in 0..{num - 1} '
                           f'(--num_processes={num}), got {pid}')
    host, _, port = given['coordinator_address'].rpartition(':')
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise app.UsageError('--coordinator_address must be host:port, got '
                           f'{given["coordinator_address"]!r}')
    if num > 1 and FLAGS.shard_tasks is False:
      raise app.UsageError('--noshard_tasks with --num_processes > 1: every '
                           'process must hold its share of the task batch')
    return given
  if FLAGS.distributed or (FLAGS.distributed is None and _cluster_tasks() > 1):
    return {}
  return None


def _wait_for_coordinator(address, timeout):
  """Returns once ``address`` accepts TCP connections; else DistributedError."""
  host, _, port = address.rpartition(':')
  host = host.strip('[]')
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
            f'could not reach the coordinator at {address} within {timeout} s '
            f'({e.strerror or e}): is process 0 running, and is the address '
            'reachable from this host?') from None
      time.sleep(0.2)


def reuse_host_memory():
  """Makes glibc keep freed memory for reuse; True if it took (glibc only).

  ``mallopt``: no mmap-ed chunks (M_MMAP_MAX = 0), never trim the heap
  (M_TRIM_THRESHOLD = INT_MAX) and grow it 256 MiB at a time (M_TOP_PAD).
  XLA:CPU's per-call buffers (YNNPACK fusions' temporaries, the conv net's
  activations) are then recycled instead of being mapped and faulted in
  afresh on every call. Measured on the 2-core CPU, ``experiments.fewshot
  --algorithms=maml`` at its defaults: 30 meta-iterations 38 s -> 20 s,
  system time 143 s -> 12 s for the whole run, the same results. Safe to call at
  any time; it affects later allocations. Notebooks can call it after
  importing this module.
  """
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
    return False
  m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
  return all(mallopt(option, value) == 1 for option, value in (
      (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 256 << 20)))


def set_cpu_device_count(n: int) -> int:
  """Asks JAX for ``n`` CPU devices; returns how many it has.

  ``jax_num_cpu_devices`` only takes before JAX starts; after that the
  count it started with is returned, for the caller to compare.
  """
  try:
    jax.config.update('jax_num_cpu_devices', n)
    return n
  except RuntimeError:  # JAX already started
    return len(jax.devices('cpu'))


def apply_cpu_devices():
  """--cpu_devices: that many JAX CPU devices (before JAX starts; ``cli_main``).

  Raises ``app.UsageError`` when JAX has already started with another
  number of CPU devices (e.g. a launcher called from a notebook: set
  ``jax.config.update('jax_num_cpu_devices', n)`` right after importing JAX).
  """
  n = FLAGS.cpu_devices if 'cpu_devices' in FLAGS else None
  if n is None:
    return
  have = set_cpu_device_count(n)
  if have != n:
    raise app.UsageError(
        f'--cpu_devices={n}: JAX has already started with {have} CPU '
        'device(s); set it before any JAX computation')


def initialize_distributed():
  """``jax.distributed.initialize`` as the flags ask (``distributed_args``).

  Must run before any JAX computation (``cli_main`` calls it first). A
  process other than 0 first waits up to --distributed_timeout for the
  coordinator's port and raises ``DistributedError`` if it never opens.
  Past that, JAX itself ends every process (DEADLINE_EXCEEDED) if not all
  processes joined in time; a message on stderr says so just before.

  Returns:
    True if this is a multi-controller run.
  """
  args = distributed_args()
  if args is None:
    return False
  timeout = FLAGS.distributed_timeout
  who = (f'process {args["process_id"]} of {args["num_processes"]}'
         if args else 'this process (auto-detected cluster)')
  if args.get('process_id', 0) != 0:
    _wait_for_coordinator(args['coordinator_address'], timeout)
  logging.info('%s: joining the run (coordinator %s, timeout %d s)', who,
               args.get('coordinator_address', 'auto-detected'), timeout)
  warning = threading.Timer(
      max(timeout - 1.0, 0.8 * timeout), lambda: stopping.say(
          f'error: {who}: not every process joined the run within '
          f'{timeout} s (--distributed_timeout); JAX ends the process now.'))
  warning.daemon = True
  warning.start()
  try:
    # A process that dies later is noticed by the others within the
    # heartbeat timeout (JAX then ends them with a message).
    jax.distributed.initialize(initialization_timeout=timeout,
                               heartbeat_timeout_seconds=int(min(timeout, 100)),
                               **args)
  except (ValueError, RuntimeError) as e:  # e.g. nothing to auto-detect
    raise DistributedError(f'jax.distributed.initialize failed: {e}') from None
  finally:
    warning.cancel()
  # No device query here: the launcher may still set XLA_FLAGS (meta-RL).
  logging.info('%s: joined the run', who)
  return True


def task_sharding(tasks_per_batch):
  """Whether task batches are split over ``jax.devices()`` (--shard_tasks).

  On by default with several processes, where it is required, and with
  --cpu_devices > 1 (unless --noshard_tasks). Raises
  ``app.UsageError`` unless ``tasks_per_batch`` divides over the devices.
  """
  requested = FLAGS.shard_tasks if 'shard_tasks' in FLAGS else None
  processes = jax.process_count()
  if processes > 1 and requested is False:
    raise app.UsageError('--noshard_tasks with several processes: every '
                         'process must hold its share of the task batch')
  cpu_devices = (FLAGS.cpu_devices if 'cpu_devices' in FLAGS else None) or 1
  if not (requested or processes > 1 or (cpu_devices > 1 and requested is None)):
    return False
  devices = jax.device_count()
  if tasks_per_batch % devices:
    where = f' of {processes} processes' if processes > 1 else ''
    raise app.UsageError(
        f'--tasks_per_batch={tasks_per_batch} does not split evenly over the '
        f'{devices} devices{where}: use a multiple of {devices}')
  return True

