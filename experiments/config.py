"""Flags and the resolved training configuration of the experiment launchers.

Every launcher defines the flags it needs with the idempotent ``define_*``
functions (``define_output_flags``: where outputs go, which seeds;
``define_training_flags``: the meta-training hyperparameters;
``define_inner_lr_flags``: learned or several fixed inner step sizes).
Hyperparameter flags default to None, "the experiment's setting": the
launcher's ``DEFAULTS``, which ``set_defaults`` shows in ``--help``.
``training_config`` reads and checks them all into a ``TrainConfig`` before
anything is compiled, so a bad flag fails in a second with a one-line
``app.UsageError`` (``cli_main``).

Many processes (docs/design.md, 'Sharding'): ``define_output_flags`` also defines
--coordinator_address, --num_processes, --process_id (or none of them:
``jax.distributed.initialize()`` reads them from SLURM's srun or Open MPI's
mpirun), --distributed_timeout and --shard_tasks, and ``cli_main`` calls
``jax.distributed.initialize`` before the launcher runs, so no JAX
computation precedes it. ``task_sharding`` says whether the task batches are
split over every device of every process (``training_config`` stores it in
``TrainConfig.shard_tasks``, which ``training.train`` reads); ``rundir``
makes process 0 the only one that writes files.
"""

import ctypes
import ctypes.util
import dataclasses
import inspect
import math
import os
import socket
import sys
import tempfile
import threading
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax
import optax

import maml_jax as mj

from experiments import stopping

# The estimator names come from the library's registry.
ALGORITHMS = mj.ESTIMATORS
PAPER_ALGORITHMS = ('maml', 'fo_maml', 'zo_maml', 'ggs_maml')
# Algorithms with a smoothing / finite-difference radius delta.
DELTA_ALGORITHMS = tuple(a for a in mj.ESTIMATORS
                         if 'delta' in mj.estimator_hyperparameters(a))
# Algorithms with Gaussian directions (num_directions = b).
DIRECTION_ALGORITHMS = tuple(
    a for a in mj.ESTIMATORS
    if 'num_directions' in mj.estimator_hyperparameters(a))
# --learn_inner_lr values: 'none' or a kind of mj.init_inner_lr.
LEARN_INNER_LR = ('none', 'scalar', 'per_layer', 'per_parameter')
# Learning rate of learned step sizes / meta lr of w_0, unless
# --inner_lr_meta_lr is given (EXPERIMENTS.md, 'Learned step sizes').
INNER_LR_META_LR_SCALE = 0.1

FLAGS = flags.FLAGS


def define_once(define, name, *args, **kwargs):
  """``define(name, ...)`` unless flag ``name`` exists (launchers share flags)."""
  if name not in FLAGS:
    define(name, *args, **kwargs)


def define_output_flags():
  """Flags of every launcher: where outputs go, which seeds (idempotent)."""
  define_once(flags.DEFINE_string, 'workdir', '/tmp/maml_jax_experiments',
               'Parent folder of the run folders; each run writes to '
               '<workdir>/<run_name>/.')
  define_once(flags.DEFINE_string, 'run_name', None,
               'Name of the run folder. Default: the experiment name, with a '
               'numeric suffix if that folder is taken (with --resume: the '
               'latest such folder).')
  define_once(flags.DEFINE_list, 'seeds', ['0', '1', '2'],
               'Comma-separated integer seeds. Several seeds give mean and '
               'spread bands; seeds are batched with jax.vmap.')
  define_distributed_flags()


def define_distributed_flags():
  """Flags of a run over many processes (idempotent; docs/design.md, 'Sharding')."""
  d = define_once
  d(flags.DEFINE_string, 'coordinator_address', None,
    'host:port of process 0, which runs the jax.distributed coordinator. '
    'Give it with --num_processes and --process_id, or none of the three '
    'under srun (SLURM) or mpirun (Open MPI), which provide them.')
  d(flags.DEFINE_integer, 'num_processes', None,
    'Number of processes of a multi-process run (with --coordinator_address).')
  d(flags.DEFINE_integer, 'process_id', None,
    'This process\'s index, 0..num_processes-1 (with --coordinator_address).')
  d(flags.DEFINE_boolean, 'distributed', None,
    'Call jax.distributed.initialize() with its auto-detection (SLURM, Open '
    'MPI, Cloud TPU) even without srun/mpirun tasks in the environment; '
    '--nodistributed: never. Default: when srun or mpirun started more than '
    'one task, or when --coordinator_address is given.')
  d(flags.DEFINE_integer, 'distributed_timeout', 300,
    'Seconds a process waits for the coordinator and for every process to '
    'join before it exits with an error.')
  d(flags.DEFINE_boolean, 'shard_tasks', None,
    'Split each task batch over every device of every process (data '
    'parallel over tasks; --tasks_per_batch must be a multiple of the '
    'number of devices). Default: on with several processes (required '
    'there) or with --cpu_devices > 1, off otherwise.')
  d(flags.DEFINE_boolean, 'reuse_host_memory', True,
    'Keep freed host memory in the C heap instead of returning it to the '
    'OS (glibc mallopt; no effect elsewhere). XLA:CPU allocates large '
    'buffers on every call; with glibc\'s defaults each one is mmap-ed and '
    'page-faulted in again: the few-shot launcher spent more time in the '
    'kernel than in its own code and ran 1.9x slower. The cost: the process '
    'keeps its peak heap.')
  d(flags.DEFINE_integer, 'cpu_devices', None,
    'Expose this many JAX CPU devices (jax_num_cpu_devices) and split each '
    'task batch over them, to run tasks side by side on the cores. Measure '
    'first: 1.3x faster for the benchmark\'s 32-task, 64-filter conv-net '
    'step on 2 cores, but 1.4x slower for experiments.fewshot at its '
    'defaults (BENCHMARKS.md, "Few-shot conv net"). Default: JAX\'s (one '
    'CPU device).', lower_bound=1)


def define_training_flags():
  """The meta-training flags shared by the launchers (idempotent).

  Hyperparameter flags default to None, meaning "the experiment's setting"
  (each launcher's ``DEFAULTS``; ``set_defaults`` shows them in ``--help``).
  """
  define_output_flags()
  d = define_once
  d(flags.DEFINE_list, 'algorithms', None,
    'Comma-separated subset of ' + ','.join(ALGORITHMS) + '. Default: the '
    "paper's four (" + ','.join(PAPER_ALGORITHMS) + ').')
  d(flags.DEFINE_integer, 'num_inner_steps', None,
    'N, inner gradient steps per task (eq. 1).')
  d(flags.DEFINE_float, 'inner_lr', None, 'alpha, the inner stepsize (eq. 1).')
  d(flags.DEFINE_float, 'zo_inner_lr', None,
    'Inner stepsize alpha for zo_maml only (ZO-MAML needs a smaller one, '
    'Proposition 5). Default: same as --inner_lr.')
  d(flags.DEFINE_float, 'meta_lr', None, 'beta, the meta (outer) learning rate.')
  d(flags.DEFINE_string, 'meta_optimizer', None,
    'Meta optimizer: the name of any optax optimizer taking learning_rate '
    '(sgd, adam, adamw, rmsprop, ...).')
  d(flags.DEFINE_integer, 'num_directions', None,
    'b, Gaussian directions per Hessian estimate (ZO eq. 17, GGS eq. 18).')
  d(flags.DEFINE_float, 'delta', None,
    'Smoothing radius of ZO/GGS (eqs. 17, 18) and finite-difference step '
    'of HF-MAML.')
  d(flags.DEFINE_integer, 'tasks_per_batch', None,
    '|B|, tasks per meta-iteration (eq. 7).')
  d(flags.DEFINE_integer, 'num_iterations', None, 'Meta-iterations to run.')
  d(flags.DEFINE_integer, 'eval_every', None,
    'Meta-iterations per compiled chunk; after each chunk: held-out '
    'evaluation, logging, checkpoint.')
  d(flags.DEFINE_boolean, 'resume', False,
    'Continue the run in <workdir>/<run_name> from its latest checkpoint '
    '(same flags required; --num_iterations may grow).')
  d(flags.DEFINE_boolean, 'remat', False,
    'Rematerialize the inner loop (less memory, more compute).')
  d(flags.DEFINE_boolean, 'sweep', False,
    "Before training, pick each algorithm's meta lr (and delta) from "
    '--sweep_meta_lrs x --sweep_deltas by the validation-task loss after '
    '--sweep_iterations meta-iterations (first seed).')
  d(flags.DEFINE_list, 'sweep_meta_lrs', None,
    'Meta learning rates tried by --sweep. Default: the experiment\'s grid.')
  d(flags.DEFINE_integer, 'num_test_tasks', None,
    'Fixed held-out tasks of the meta-test loss (validation tasks for '
    '--sweep: as many, drawn separately).')
  d(flags.DEFINE_integer, 'eval_seed', 12345,
    'Seed of the fixed held-out test and validation tasks.')
  d(flags.DEFINE_boolean, 'quick', False,
    "The experiment's short preset (fewer meta-iterations, see the launcher's "
    'docstring) unless --num_iterations/--eval_every are given.')
  d(flags.DEFINE_list, 'sweep_deltas', ['1e-3', '1e-2', '1e-1'],
    'Deltas tried by --sweep for zo_maml, ggs_maml, hf_maml.')
  d(flags.DEFINE_integer, 'sweep_iterations', None,
    'Meta-iterations per --sweep candidate. Default: --num_iterations // 4.')


def define_inner_lr_flags():
  """Flags of learned or several fixed inner step sizes (idempotent).

  Defined by the supervised launchers (sine, matrix factorization), whose
  arms ``training.train`` builds; the RL launcher does not take them.
  """
  d = define_once
  d(flags.DEFINE_enum, 'learn_inner_lr', 'none', list(LEARN_INNER_LR),
    'Meta-learn the inner step sizes alpha together with w_0 (docs/design.md, '
    '"Step sizes"): none (fixed --inner_lr), scalar (one '
    'alpha), per_layer (one per parameter array) or per_parameter '
    '(Meta-SGD). They start at --inner_lr (--zo_inner_lr for zo_maml), are '
    'trained by their own optimizer (--inner_lr_optimizer, '
    '--inner_lr_meta_lr), checkpointed, and the held-out evaluation adapts '
    'with them.')
  d(flags.DEFINE_boolean, 'per_step_inner_lr', False,
    'With --learn_inner_lr: one step size per inner step (MAML++), N of '
    'them. An evaluation with more than N steps (the sine k-step curve) uses '
    "the last step's value for the steps after N.")
  d(flags.DEFINE_float, 'inner_lr_meta_lr', None,
    'With --learn_inner_lr: the learning rate of the step sizes\' optimizer. '
    f'Default: {INNER_LR_META_LR_SCALE:g} x the meta lr of w_0 (--meta_lr, '
    'or the one --sweep picks): with one shared Adam at 1e-3, Meta-SGD '
    'diverges at N >= 2 inner steps (EXPERIMENTS.md). --inner_lr_meta_lr '
    'equal to --meta_lr is one shared rate, as in Li et al. (2017).')
  d(flags.DEFINE_string, 'inner_lr_optimizer', None,
    'With --learn_inner_lr: the optax optimizer of the step sizes (a name, '
    'as --meta_optimizer). Default: --meta_optimizer.')
  d(flags.DEFINE_list, 'inner_lrs', None,
    'Comma-separated fixed inner step sizes trained and evaluated as ONE '
    'vmapped program per algorithm (a grid of inner_lr x seed); metrics rows '
    'carry inner_lr and the summary has one line per value. Replaces '
    '--inner_lr; not with --learn_inner_lr, --zo_inner_lr or --sweep.')


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
  prog = stopping.program_name()
  warning = threading.Timer(
      max(timeout - 1.0, 0.8 * timeout), lambda: print(
          f'{prog}: error: {who}: not every process joined the run within '
          f'{timeout} s (--distributed_timeout); JAX ends the process now.',
          file=sys.stderr, flush=True))
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


def cli_main(run):
  """``main(argv)`` for ``app.run``: a usage error is one line and exit code 2.

  absl's own handling of ``app.UsageError`` prints the whole module docstring;
  a launcher's flag mistakes should be one line on stderr instead. Before
  ``run``, and before any JAX computation: ``reuse_host_memory`` (unless
  --noreuse_host_memory), ``apply_cpu_devices`` (--cpu_devices), then
  ``initialize_distributed``, which joins a multi-process run if the flags
  or the cluster environment ask for one; failing to join is one line too
  (exit code 1). So is a run that cannot go on (``stopping.RunFailed``: a
  failed write, processes that do not share the run folder), and a run
  stopped by SIGTERM or Ctrl-C at a chunk boundary (``stopping.Preempted``)
  prints the command that resumes it and exits with
  ``stopping.PREEMPTED_EXIT_CODE`` (75).
  """
  def main(argv):
    try:
      if 'reuse_host_memory' not in FLAGS or FLAGS.reuse_host_memory:
        reuse_host_memory()
      apply_cpu_devices()
      initialize_distributed()
      run(argv)
    except app.UsageError as e:
      stopping.say(f'error: {e}')
      sys.exit(2)
    except (DistributedError, stopping.RunFailed) as e:
      stopping.say(f'error: {e}')
      sys.exit(1)
    except stopping.Preempted as e:
      stopping.say(str(e))
      sys.exit(stopping.PREEMPTED_EXIT_CODE)
  return main


def set_defaults(defaults):
  """Sets experiment defaults of flags (call before ``app.run``, for --help)."""
  for name, value in defaults.items():
    if name in FLAGS:
      FLAGS.set_default(name, value)


def parse_algorithms(values):
  """``--algorithms`` as a tuple of estimator names; ``app.UsageError`` if bad."""
  algorithms = tuple(a.strip() for a in (values or ()) if a.strip())
  unknown = [a for a in algorithms if a not in ALGORITHMS]
  if unknown or not algorithms:
    raise app.UsageError(f'--algorithms: unknown algorithm(s) {unknown} '
                         f'(choose from {",".join(ALGORITHMS)})')
  if len(set(algorithms)) != len(algorithms):
    raise app.UsageError('--algorithms lists an algorithm twice')
  return algorithms


def parse_seeds(values):
  """``--seeds`` as a tuple of distinct ints; ``app.UsageError`` if bad."""
  seeds = tuple(parse_ints('seeds', values))
  if not seeds:
    raise app.UsageError('--seeds must list at least one seed')
  if len(set(seeds)) != len(seeds):
    raise app.UsageError('--seeds lists a seed twice')
  return seeds


def flag_or_default(name, defaults):
  """The value of flag ``name``, or ``defaults[name]`` if it is left at None."""
  value = FLAGS[name].value
  return defaults.get(name) if value is None else value



@dataclasses.dataclass(frozen=True)
class HParams:
  """Per-algorithm hyperparameters that ``--sweep`` may change.

  ``inner_lr`` is alpha, or the initial alpha with ``--learn_inner_lr``.
  """
  meta_lr: float
  delta: float
  inner_lr: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Resolved meta-training configuration (flags + experiment defaults)."""
  experiment: str
  algorithms: tuple
  num_inner_steps: int
  inner_lr: float
  zo_inner_lr: float
  meta_lr: float
  meta_optimizer: str
  num_directions: int
  delta: float
  tasks_per_batch: int
  num_iterations: int
  eval_every: int
  seeds: tuple
  workdir: str
  run_name: Optional[str]
  resume: bool
  remat: bool
  sweep: bool
  sweep_meta_lrs: tuple
  sweep_deltas: tuple
  sweep_iterations: int
  # 'none', or the kind of learned inner step sizes (--learn_inner_lr).
  learn_inner_lr: str = 'none'
  per_step_inner_lr: bool = False
  # The step sizes' optimizer: None = INNER_LR_META_LR_SCALE x meta lr and
  # --meta_optimizer (see inner_lr_hparams).
  inner_lr_meta_lr: Optional[float] = None
  inner_lr_optimizer: Optional[str] = None
  # --inner_lrs: fixed inner step sizes trained as one vmapped grid; () = off.
  inner_lrs: tuple = ()
  # Task batches split over every device of every process (task_sharding).
  shard_tasks: bool = False

  @property
  def learned(self):
    """Whether the inner step sizes are meta-parameters."""
    return self.learn_inner_lr != 'none'

  def inner_lr_hparams(self, meta_lr):
    """(optimizer name, learning rate) of learned step sizes, given w_0's lr."""
    lr = (self.inner_lr_meta_lr if self.inner_lr_meta_lr is not None
          else INNER_LR_META_LR_SCALE * meta_lr)
    return self.inner_lr_optimizer or self.meta_optimizer, lr

  def hparams(self, algorithm):
    inner_lr = self.zo_inner_lr if algorithm == 'zo_maml' else self.inner_lr
    return HParams(meta_lr=self.meta_lr, delta=self.delta, inner_lr=inner_lr)


def parse_floats(name, values):
  """The list flag ``--name`` as floats; ``app.UsageError`` if one is not."""
  try:
    return tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise app.UsageError(f'--{name} must be a comma-separated list of numbers, '
                         f'got {values!r}') from None


def parse_ints(name, values):
  """The list flag ``--name`` as integers; ``app.UsageError`` if one is not."""
  try:
    return tuple(int(v) for v in values)
  except (TypeError, ValueError):
    raise app.UsageError(f'--{name} must be a comma-separated list of integers, '
                         f'got {values!r}') from None


def check_optimizer_name(name, flag='meta_optimizer'):
  """Raises ``app.UsageError`` unless ``optax.<name>(learning_rate=...)`` exists."""
  fn = getattr(optax, name, None) if name and not name.startswith('_') else None
  ok = callable(fn)
  if ok:
    try:
      ok = 'learning_rate' in inspect.signature(fn).parameters
    except (TypeError, ValueError):
      ok = False
  if not ok:
    raise app.UsageError(f'--{flag}={name!r} is not an optax optimizer '
                         'taking learning_rate (e.g. sgd, adam)')


def check_workdir(workdir):
  """Raises ``app.UsageError`` unless ``workdir`` can be created and written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise app.UsageError(f'--workdir={workdir!r} is not writable: '
                         f'{e.strerror or e}') from None


def _inner_lr_config():
  """The TrainConfig fields of ``define_inner_lr_flags``; checks them.

  Launchers that do not define those flags (RL) get the defaults.
  """
  if 'learn_inner_lr' not in FLAGS:
    return {}
  learn = FLAGS.learn_inner_lr
  per_step = FLAGS.per_step_inner_lr
  lrs = parse_floats('inner_lrs', FLAGS.inner_lrs or ())
  for name, given in (('per_step_inner_lr', per_step),
                      ('inner_lr_meta_lr', FLAGS.inner_lr_meta_lr is not None),
                      ('inner_lr_optimizer',
                       FLAGS.inner_lr_optimizer is not None)):
    if learn == 'none' and given:
      raise app.UsageError(f'--{name} needs --learn_inner_lr '
                           '(scalar, per_layer or per_parameter)')
  inner_meta_lr = FLAGS.inner_lr_meta_lr
  if inner_meta_lr is not None and not (inner_meta_lr > 0
                                        and math.isfinite(inner_meta_lr)):
    raise app.UsageError('--inner_lr_meta_lr must be a positive number, got '
                         f'{inner_meta_lr}')
  if FLAGS.inner_lr_optimizer is not None:
    check_optimizer_name(FLAGS.inner_lr_optimizer, 'inner_lr_optimizer')
  if FLAGS.inner_lrs is not None:
    if not lrs:
      raise app.UsageError('--inner_lrs must list at least one step size')
    if min(lrs) <= 0 or not all(math.isfinite(v) for v in lrs):
      raise app.UsageError(f'--inner_lrs must be positive numbers, got '
                           f'{",".join(FLAGS.inner_lrs)}')
    if len(set(lrs)) != len(lrs):
      raise app.UsageError('--inner_lrs lists a step size twice')
    conflicts = [name for name, given in (
        ('--learn_inner_lr', learn != 'none'),
        ('--inner_lr', FLAGS['inner_lr'].present),
        ('--zo_inner_lr', FLAGS['zo_inner_lr'].present),
        ('--sweep', FLAGS.sweep)) if given]
    if conflicts:
      raise app.UsageError(
          f'--inner_lrs cannot be combined with {", ".join(conflicts)}: it '
          'trains each listed fixed step size (in place of --inner_lr) for '
          'every algorithm with the given meta lr and delta')
  return dict(learn_inner_lr=learn, per_step_inner_lr=per_step,
              inner_lr_meta_lr=inner_meta_lr,
              inner_lr_optimizer=FLAGS.inner_lr_optimizer, inner_lrs=lrs)


def training_config(experiment, defaults):
  """Reads and validates the training flags; raises ``app.UsageError``.

  Runs before anything is compiled, so a bad flag fails in a second.

  Args:
    experiment: name of the experiment (the default run folder name).
    defaults: the launcher's defaults for flags left at None.

  Returns:
    A ``TrainConfig``.
  """
  algorithms = parse_algorithms(
      FLAGS.algorithms or defaults.get('algorithms', PAPER_ALGORITHMS))
  get = lambda name: flag_or_default(name, defaults)
  inner_lr = get('inner_lr')
  zo_inner_lr = get('zo_inner_lr')
  zo_inner_lr = inner_lr if zo_inner_lr is None else zo_inner_lr
  seeds = parse_seeds(FLAGS.seeds)
  num_iterations = get('num_iterations')
  sweep_iterations = get('sweep_iterations') or max(1, num_iterations // 4)
  cfg = TrainConfig(
      experiment=experiment,
      algorithms=algorithms,
      num_inner_steps=get('num_inner_steps'),
      inner_lr=inner_lr,
      zo_inner_lr=zo_inner_lr,
      meta_lr=get('meta_lr'),
      meta_optimizer=get('meta_optimizer'),
      num_directions=get('num_directions'),
      delta=get('delta'),
      tasks_per_batch=get('tasks_per_batch'),
      num_iterations=num_iterations,
      eval_every=get('eval_every'),
      seeds=seeds,
      workdir=FLAGS.workdir,
      run_name=FLAGS.run_name,
      resume=FLAGS.resume,
      remat=FLAGS.remat,
      sweep=FLAGS.sweep,
      sweep_meta_lrs=parse_floats('sweep_meta_lrs',
                                  get('sweep_meta_lrs') or ()),
      sweep_deltas=parse_floats('sweep_deltas', FLAGS.sweep_deltas),
      sweep_iterations=sweep_iterations,
      **_inner_lr_config(),
  )
  positive = {'inner_lr': cfg.inner_lr, 'zo_inner_lr': cfg.zo_inner_lr,
              'meta_lr': cfg.meta_lr, 'delta': cfg.delta}
  for name, value in positive.items():
    if value is None or not value > 0 or not math.isfinite(value):
      raise app.UsageError(f'--{name} must be a positive number, got {value}')
  counts = {'num_inner_steps': cfg.num_inner_steps,
            'num_directions': cfg.num_directions,
            'tasks_per_batch': cfg.tasks_per_batch,
            'num_iterations': cfg.num_iterations,
            'eval_every': cfg.eval_every,
            'sweep_iterations': cfg.sweep_iterations}
  for name, value in counts.items():
    if value is None or value < 1:
      raise app.UsageError(f'--{name} must be a positive integer, got {value}')
  if cfg.sweep:
    if not cfg.sweep_meta_lrs or min(cfg.sweep_meta_lrs) <= 0:
      raise app.UsageError('--sweep_meta_lrs must be positive numbers')
    if not cfg.sweep_deltas or min(cfg.sweep_deltas) <= 0:
      raise app.UsageError('--sweep_deltas must be positive numbers')
  check_optimizer_name(cfg.meta_optimizer)
  check_workdir(cfg.workdir)
  return dataclasses.replace(
      cfg, shard_tasks=task_sharding(cfg.tasks_per_batch))
