"""The flags every launcher shares, and the helpers that read them.

Every launcher defines the flags it needs with the idempotent ``define_*``
functions (``define_output_flags``: where outputs go, which seeds, and the
runtime flags of ``experiments.runtime``; ``define_training_flags``: the
meta-training hyperparameters; ``define_inner_lr_flags``: learned or several
fixed inner step sizes). Hyperparameter flags default to None, "the
experiment's setting": the launcher's ``DEFAULTS``, which ``set_defaults``
shows in ``--help`` and ``flag_or_default`` reads. The ``parse_*`` and
``check_*`` helpers turn a flag's value into what the run needs, or raise a
one-line ``app.UsageError`` that names the flag (``experiments.cli``).
"""

import inspect
import os
import tempfile

from absl import app
from absl import flags
import optax

import maml_jax as mj

# The estimator names come from the library's registry.
ALGORITHMS = mj.ESTIMATORS
PAPER_ALGORITHMS = ('maml', 'fo_maml', 'zo_maml', 'ggs_maml')
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
    '(same flags required; --num_iterations may grow, and --workdir may '
    'name the folder the run was moved to).')
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


def experiment_defaults(defaults, quick):
  """A launcher's ``DEFAULTS``, with its ``QUICK`` preset on top under --quick."""
  return dict(defaults, **(quick if FLAGS.quick else {}))


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
  """The value the user gave flag ``name``, else ``defaults[name]``.

  A flag the command line (or code) did not set reads ``defaults``: the
  launcher's ``DEFAULTS``, with its ``QUICK`` preset on top under ``--quick``.
  Checking only for None would miss ``--quick`` under ``python -m``, where
  ``set_defaults`` has already written ``DEFAULTS`` into the flags (for
  ``--help``).
  """
  flag = FLAGS[name]
  if flag.value is None or (flag.using_default_value and name in defaults):
    return defaults.get(name)
  return flag.value


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

