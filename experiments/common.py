"""Shared pieces of the experiment launchers: flags, training loop, run folders.

A launcher describes its experiment as a ``Problem`` (loss, initial
parameters, on-device task sampler, held-out evaluation) and hands it to
``train``, which runs every algorithm of ``--algorithms`` for every seed of
``--seeds`` with ``maml_jax.make_fused_train``: ``--eval_every`` meta-iterations
per compiled call, seeds batched with ``jax.vmap`` (with ``--inner_lrs``, the
grid of (inner_lr, seed) pairs: the fixed step size is data of the one
compiled program). ``--learn_inner_lr`` makes the inner step sizes
meta-parameters (``mj.LearnedInnerLR``), trained by the same meta optimizer
and checkpointed with w_0. Between two chunks it
evaluates on held-out tasks, logs progress, appends to ``metrics.jsonl`` /
``metrics.csv`` and writes an Orbax checkpoint, so ``--resume`` continues a
killed run with exactly the metrics an uninterrupted run produces (iteration
i of a fused run draws its tasks and directions from
``fold_in(key, state.iteration)``, and the key and state are checkpointed).

Outputs of one run (``RunDir``), in ``<workdir>/<run_name>/``:
  config.json    every flag, the resolved hyperparameters, package versions.
  metrics.jsonl  one row per (algorithm, seed, evaluated iteration), and per
                 inner_lr with --inner_lrs; with --learn_inner_lr the rows
                 hold inner_lr_mean/_min/_max (and inner_lr_step<j>_mean).
  metrics.csv    the same rows as CSV.
  checkpoints/   Orbax checkpoints (train states, PRNG keys, iteration).
  sweep.json     the ``--sweep`` grid and the chosen hyperparameters.
  summary.md     final meta-test loss (mean +- std over seeds), time/iteration.
  tensorboard/   event files, only if tensorboardX or tensorboard is installed.
"""

import csv
import dataclasses
import functools
import importlib.metadata
import inspect
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

import maml_jax as mj

# The estimator names come from the library's registry; ``ALGORITHMS`` stays
# as an alias for code that imported it from here.
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

LABELS = {
    'maml': 'MAML',
    'fo_maml': 'FO-MAML',
    'zo_maml': 'ZO-MAML',
    'ggs_maml': 'GGS-MAML',
    'hf_maml': 'HF-MAML',
}

FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------
# Flags.
# ----------------------------------------------------------------------------

def _define_once(define, name, *args, **kwargs):
  if name not in FLAGS:
    define(name, *args, **kwargs)


def define_output_flags():
  """Flags of every launcher: where outputs go, which seeds (idempotent)."""
  _define_once(flags.DEFINE_string, 'workdir', '/tmp/maml_jax_experiments',
               'Parent folder of the run folders; each run writes to '
               '<workdir>/<run_name>/.')
  _define_once(flags.DEFINE_string, 'run_name', None,
               'Name of the run folder. Default: the experiment name, with a '
               'numeric suffix if that folder is taken (with --resume: the '
               'latest such folder).')
  _define_once(flags.DEFINE_list, 'seeds', ['0', '1', '2'],
               'Comma-separated integer seeds. Several seeds give mean and '
               'spread bands; seeds are batched with jax.vmap.')


def define_training_flags():
  """The meta-training flags shared by the launchers (idempotent).

  Hyperparameter flags default to None, meaning "the experiment's setting"
  (each launcher's ``DEFAULTS``; ``set_defaults`` shows them in ``--help``).
  """
  define_output_flags()
  d = _define_once
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

  Defined by the launchers whose training loop is ``train`` (sine, matrix
  factorization); the RL launcher has its own loop and does not take them.
  """
  d = _define_once
  d(flags.DEFINE_enum, 'learn_inner_lr', 'none', list(LEARN_INNER_LR),
    'Meta-learn the inner step sizes alpha together with w_0 (SPEC section '
    '6), with the same meta optimizer: none (fixed --inner_lr), scalar (one '
    'alpha), per_layer (one per parameter array) or per_parameter '
    '(Meta-SGD). They start at --inner_lr (--zo_inner_lr for zo_maml), are '
    'checkpointed, and the held-out evaluation adapts with them.')
  d(flags.DEFINE_boolean, 'per_step_inner_lr', False,
    'With --learn_inner_lr: one step size per inner step (MAML++), N of '
    'them. An evaluation with more than N steps (the sine k-step curve) uses '
    "the last step's value for the steps after N.")
  d(flags.DEFINE_list, 'inner_lrs', None,
    'Comma-separated fixed inner step sizes trained and evaluated as ONE '
    'vmapped program per algorithm (a grid of inner_lr x seed); metrics rows '
    'carry inner_lr and the summary has one line per value. Replaces '
    '--inner_lr; not with --learn_inner_lr, --zo_inner_lr or --sweep.')


def cli_main(run):
  """``main(argv)`` for ``app.run``: a usage error is one line and exit code 2.

  absl's own handling of ``app.UsageError`` prints the whole module docstring;
  a launcher's flag mistakes should be one line on stderr instead.
  """
  def main(argv):
    try:
      run(argv)
    except app.UsageError as e:
      print(f'{os.path.basename(sys.argv[0])}: error: {e}', file=sys.stderr)
      sys.exit(2)
  return main


def set_defaults(defaults):
  """Sets experiment defaults of flags (call before ``app.run``, for --help)."""
  for name, value in defaults.items():
    if name in FLAGS:
      FLAGS.set_default(name, value)


def flag_or_default(name, defaults):
  """The value of flag ``name``, or ``defaults[name]`` if it is left at None."""
  value = FLAGS[name].value
  return defaults.get(name) if value is None else value


_value = flag_or_default


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
  # --inner_lrs: fixed inner step sizes trained as one vmapped grid; () = off.
  inner_lrs: tuple = ()

  @property
  def learned(self):
    """Whether the inner step sizes are meta-parameters."""
    return self.learn_inner_lr != 'none'

  def hparams(self, algorithm):
    inner_lr = self.zo_inner_lr if algorithm == 'zo_maml' else self.inner_lr
    return HParams(meta_lr=self.meta_lr, delta=self.delta, inner_lr=inner_lr)


def _floats(name, values):
  try:
    return tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise app.UsageError(f'--{name} must be a comma-separated list of numbers, '
                         f'got {values!r}') from None


def _ints(name, values):
  try:
    return tuple(int(v) for v in values)
  except (TypeError, ValueError):
    raise app.UsageError(f'--{name} must be a comma-separated list of integers, '
                         f'got {values!r}') from None


def check_optimizer_name(name):
  """Raises ``app.UsageError`` unless ``optax.<name>(learning_rate=...)`` exists."""
  fn = getattr(optax, name, None) if name and not name.startswith('_') else None
  ok = callable(fn)
  if ok:
    try:
      ok = 'learning_rate' in inspect.signature(fn).parameters
    except (TypeError, ValueError):
      ok = False
  if not ok:
    raise app.UsageError(f'--meta_optimizer={name!r} is not an optax optimizer '
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
  lrs = _floats('inner_lrs', FLAGS.inner_lrs or ())
  if per_step and learn == 'none':
    raise app.UsageError('--per_step_inner_lr needs --learn_inner_lr '
                         '(scalar, per_layer or per_parameter)')
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
              inner_lrs=lrs)


def training_config(experiment, defaults):
  """Reads and validates the training flags; raises ``app.UsageError``.

  Runs before anything is compiled, so a bad flag fails in a second.

  Args:
    experiment: name of the experiment (the default run folder name).
    defaults: the launcher's defaults for flags left at None.

  Returns:
    A ``TrainConfig``.
  """
  algorithms = FLAGS.algorithms or defaults.get('algorithms', PAPER_ALGORITHMS)
  algorithms = tuple(a.strip() for a in algorithms if a.strip())
  unknown = [a for a in algorithms if a not in ALGORITHMS]
  if unknown or not algorithms:
    raise app.UsageError(f'--algorithms: unknown algorithm(s) {unknown} '
                         f'(choose from {",".join(ALGORITHMS)})')
  if len(set(algorithms)) != len(algorithms):
    raise app.UsageError('--algorithms lists an algorithm twice')
  get = lambda name: _value(name, defaults)
  inner_lr = get('inner_lr')
  zo_inner_lr = get('zo_inner_lr')
  zo_inner_lr = inner_lr if zo_inner_lr is None else zo_inner_lr
  seeds = _ints('seeds', FLAGS.seeds)
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
      sweep_meta_lrs=_floats('sweep_meta_lrs', get('sweep_meta_lrs') or ()),
      sweep_deltas=_floats('sweep_deltas', FLAGS.sweep_deltas),
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
  if not seeds:
    raise app.UsageError('--seeds must list at least one seed')
  if len(set(seeds)) != len(seeds):
    raise app.UsageError('--seeds lists a seed twice')
  if cfg.sweep:
    if not cfg.sweep_meta_lrs or min(cfg.sweep_meta_lrs) <= 0:
      raise app.UsageError('--sweep_meta_lrs must be positive numbers')
    if not cfg.sweep_deltas or min(cfg.sweep_deltas) <= 0:
      raise app.UsageError('--sweep_deltas must be positive numbers')
  check_optimizer_name(cfg.meta_optimizer)
  check_workdir(cfg.workdir)
  return cfg


# ----------------------------------------------------------------------------
# Estimators and optimizers by name.
# ----------------------------------------------------------------------------

def make_estimator(algorithm, loss_fn, *, inner_lr, num_inner_steps,
                   num_directions, delta, sampler=None, remat=False):
  """The ``maml_jax`` estimator named ``algorithm`` (one of ``mj.ESTIMATORS``).

  Built by the library's registry (``mj.make_estimator``) from the launcher's
  hyperparameters, passing only those the estimator takes
  (``mj.estimator_hyperparameters``): no delta to MAML, no b to HF-MAML.
  ``inner_lr`` may be a float, an array or tracer (``--inner_lrs``), or None
  (the step sizes come with ``mj.LearnedInnerLR`` params).
  """
  offered = dict(inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                 num_directions=num_directions, delta=delta, sampler=sampler,
                 remat=remat)
  takes = mj.estimator_hyperparameters(algorithm)
  return mj.make_estimator(
      algorithm, loss_fn, **{k: v for k, v in offered.items() if k in takes})


def make_optimizer(name, learning_rate):
  """``optax.<name>`` with its learning rate held in the optimizer state.

  ``optax.inject_hyperparams`` keeps the learning rate an array of the state,
  so states with different learning rates share one compiled update (used by
  ``--sweep`` to train every candidate meta lr in one vmapped call).
  """
  check_optimizer_name(name)
  return optax.inject_hyperparams(getattr(optax, name))(
      learning_rate=learning_rate)


# ----------------------------------------------------------------------------
# Run folder: config, metrics, checkpoints.
# ----------------------------------------------------------------------------

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


def atomic_write_text(path, text):
  """Writes ``text`` to ``path`` via a temporary file and ``os.replace``."""
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


def _clean(value):
  """JSON-safe scalar: NaN/inf become None."""
  if value is None:
    return None
  if isinstance(value, (str, bool)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else None


class RunDir:
  """One run's folder: config.json, metrics.jsonl/.csv, summary, TensorBoard.

  Metrics are kept in memory and both files are rewritten atomically after
  every chunk, so a kill never leaves a half-written line.
  """

  def __init__(self, path, rows=None):
    self.path = path
    self.rows = list(rows or [])
    self._tb = None
    self._tb_tried = False

  @classmethod
  def create(cls, workdir, run_name, *, resume, default_name):
    """Picks the run folder (see --run_name) and loads metrics on resume."""
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
    os.makedirs(path, exist_ok=True)
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
      ignore = {'resume', 'num_iterations', 'run_name', 'versions',
                'sweep_iterations'}
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
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    self.rows.extend(rows)
    self._tensorboard(rows)

  def flush(self):
    """Rewrites metrics.jsonl and metrics.csv atomically."""
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


class _DropInfoFrom:
  """Logging filter: drops INFO records of one library (Orbax is chatty)."""

  def __init__(self, marker):
    self.marker = marker

  def filter(self, record):
    return (record.levelno > 20  # logging.INFO
            or self.marker not in (record.pathname or ''))


def quiet_orbax():
  """Hides Orbax's per-save INFO lines from the absl log (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropInfoFrom) for f in handler.filters):
    handler.addFilter(_DropInfoFrom(os.sep + 'orbax' + os.sep))


class Checkpointer:
  """Orbax checkpoints of a pytree, written atomically, latest 2 kept.

  Orbax writes each step into a temporary folder and renames it when
  complete, so a kill mid-write leaves the previous checkpoint as latest.
  """

  def __init__(self, directory, max_to_keep=2):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    quiet_orbax()
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step, tree):
    self._manager.save(step, args=self._ocp.args.StandardSave(tree))
    self._manager.wait_until_finished()

  def restore(self, step, like):
    """Restores ``step`` into the structure (and dtypes) of ``like``."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), like)
    return self._manager.restore(
        step, args=self._ocp.args.StandardRestore(abstract))

  def close(self):
    self._manager.close()


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


class Problem(NamedTuple):
  """What a launcher tells ``train`` about its experiment.

  Attributes:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    init_params: ``init_params(key) -> params`` (w_0 of one seed).
    sample_tasks: ``sample_tasks(key) -> mj.Task`` of ``tasks_per_batch``
      tasks (leading task axis), pure JAX (runs inside the fused loop).
    evaluate: ``evaluate(params, inner_lr) -> {name: scalar}`` on fixed
      held-out tasks, pure JAX; must contain ``'test_loss'`` (the meta-test
      loss after adaptation with stepsize ``inner_lr``, the algorithm's alpha,
      passed as a keyword Python float, or a traced scalar with
      ``--inner_lrs``). ``params`` may be ``mj.LearnedInnerLR``: then its
      step sizes are the ones to adapt with.
    validate: ``validate(params, inner_lr) -> scalar`` on fixed validation
      tasks (other tasks than ``evaluate``'s), used by ``--sweep``.
    sampler: the estimators' sampler for ``mj.Sampled`` batches, or None.
  """
  loss_fn: Callable
  init_params: Callable
  sample_tasks: Callable
  evaluate: Callable
  validate: Optional[Callable] = None
  sampler: Optional[Callable] = None


def split_meta_params(params, inner_lr=None):
  """(w_0, alpha): of ``mj.LearnedInnerLR`` params, else (params, inner_lr)."""
  if isinstance(params, mj.LearnedInnerLR):
    return params.params, params.inner_lr
  return params, inner_lr


def step_size_at(inner_lr, j, *, per_step, num_inner_steps):
  """alpha_j of step ``j`` (may be traced) of a fixed or learned step size.

  A per-step ``inner_lr`` (leading axis N = ``num_inner_steps``) has no value
  for j >= N: those steps use the last one, alpha_{N-1}.
  """
  if not per_step:
    return inner_lr
  return jax.tree.map(lambda a: a[jnp.minimum(j, num_inner_steps - 1)],
                      inner_lr)


def inner_step(loss_fn, params, batch, alpha):
  """One inner step w - alpha ⊙ grad l(w; batch); alpha a scalar or a pytree."""
  grads = jax.grad(loss_fn)(params, batch)
  if jax.tree.structure(alpha) == jax.tree.structure(grads):
    return jax.tree.map(lambda w, a, g: w - (a * g).astype(w.dtype), params,
                        alpha, grads)
  return jax.tree.map(lambda w, g: w - (alpha * g).astype(w.dtype), params,
                      grads)


def inner_lr_stats(inner_lr, *, per_step):
  """Summary of learned step sizes for metric rows (host numpy).

  Args:
    inner_lr: the step sizes with a leading member (seed) axis.
    per_step: whether they have a per-step axis after the member axis.

  Returns:
    ``{name: [num_members] array}``: 'inner_lr_mean', '_min', '_max' over all
    step sizes, and with ``per_step`` 'inner_lr_step<j>_mean' per step j.
  """
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(inner_lr)]
  members = leaves[0].shape[0]
  flat = np.concatenate([x.reshape(members, -1) for x in leaves], axis=1)
  out = {'inner_lr_mean': flat.mean(1), 'inner_lr_min': flat.min(1),
         'inner_lr_max': flat.max(1)}
  if per_step:
    steps = leaves[0].shape[1]
    by_step = np.concatenate([x.reshape(members, steps, -1) for x in leaves],
                             axis=2)
    for j in range(steps):
      out[f'inner_lr_step{j}_mean'] = by_step[:, j].mean(1)
  return out


def held_out_loss(loss_fn, params, tasks, *, inner_lr, num_inner_steps):
  """Mean query loss over ``tasks`` before and after ``num_inner_steps`` (mj.adapt).

  ``params`` may be ``mj.LearnedInnerLR`` (then its step sizes are used);
  ``inner_lr`` may be a float or a traced scalar (``--inner_lrs``).
  """
  w0, _ = split_meta_params(params)

  def one(support, query):
    adapted, _ = mj.adapt(loss_fn, params, support, inner_lr=inner_lr,
                          num_steps=num_inner_steps)
    return loss_fn(w0, query), loss_fn(adapted, query)

  before, after = jax.vmap(one)(tasks.support, tasks.query)
  return jnp.mean(before), jnp.mean(after)


def supervised_problem(cfg, *, loss_fn, init_params, sample, num_test_tasks,
                       eval_seed):
  """The ``Problem`` of tasks with fixed support/query batches (MF, sine).

  Args:
    cfg: the ``TrainConfig`` (for ``num_inner_steps`` and ``tasks_per_batch``).
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    init_params: ``init_params(key) -> params``.
    sample: ``sample(key, num_tasks) -> mj.Task``.
    num_test_tasks: size of the fixed test set and of the validation set.
    eval_seed: seed of both fixed sets.

  Returns:
    (``Problem`` whose evaluate/validate report the query loss after
    ``cfg.num_inner_steps`` adaptation steps, the test tasks, their key).
  """
  k_test, k_val = jax.random.split(jax.random.PRNGKey(eval_seed))
  test_tasks = sample(k_test, num_test_tasks)
  val_tasks = sample(k_val, num_test_tasks)

  def evaluate(params, *, inner_lr):
    before, after = held_out_loss(loss_fn, params, test_tasks,
                                  inner_lr=inner_lr,
                                  num_inner_steps=cfg.num_inner_steps)
    return {'test_loss': after, 'test_loss_before': before}

  def validate(params, *, inner_lr):
    return held_out_loss(loss_fn, params, val_tasks, inner_lr=inner_lr,
                         num_inner_steps=cfg.num_inner_steps)[1]

  problem = Problem(loss_fn=loss_fn, init_params=init_params,
                    sample_tasks=lambda key: sample(key, cfg.tasks_per_batch),
                    evaluate=evaluate, validate=validate)
  return problem, test_tasks, k_test


def arm_name(algorithm, inner_lr=None):
  """Name of one trained arm: the algorithm, with ``@alpha=`` for ``--inner_lrs``."""
  return algorithm if inner_lr is None else f'{algorithm}@alpha={inner_lr:g}'


def row_arm(row):
  """The arm of a metric row (rows of an ``--inner_lrs`` grid carry inner_lr)."""
  return arm_name(row['algorithm'], row.get('inner_lr'))


def arm_label(arm):
  """Display name of an arm: 'MAML', or 'MAML alpha=0.01' in a grid."""
  algorithm, _, rest = arm.partition('@')
  label = LABELS.get(algorithm, algorithm)
  return f'{label} {rest}' if rest else label


class Arm(NamedTuple):
  """One trained arm of a ``TrainResult``: an algorithm (and grid step size).

  Attributes:
    name: ``arm_name``: the algorithm, or 'algorithm@alpha=<value>'.
    algorithm: the estimator name.
    inner_lr: the fixed alpha of this arm (the initial one if learned).
    params: its meta parameters with a leading seed axis (``mj.LearnedInnerLR``
      with ``--learn_inner_lr``).
  """
  name: str
  algorithm: str
  inner_lr: float
  params: object


class TrainResult(NamedTuple):
  """Output of ``train``.

  Attributes:
    states: ``{algorithm: mj.TrainState}`` with a leading member axis: the
      seeds, or with ``--inner_lrs`` the grid (inner_lr, seed), inner_lr
      major (``len(inner_lrs) * len(seeds)`` members).
    hparams: ``{algorithm: HParams}`` actually used (after ``--sweep``).
    rows: all metric rows (also in metrics.jsonl).
    seconds_per_iteration: ``{algorithm: float}``, wall seconds per
      meta-iteration for all seeds together (compilation excluded when there
      was more than one chunk).
    inner_lrs: the ``--inner_lrs`` grid, () if off.
  """
  states: dict
  hparams: dict
  rows: list
  seconds_per_iteration: dict
  inner_lrs: tuple = ()

  def arms(self):
    """Every trained arm (``Arm``), params with a leading seed axis."""
    out = []
    for algorithm, state in self.states.items():
      if not self.inner_lrs:
        out.append(Arm(algorithm, algorithm, self.hparams[algorithm].inner_lr,
                       state.params))
        continue
      num_seeds = jax.tree.leaves(state.params)[0].shape[0] // len(
          self.inner_lrs)
      for i, lr in enumerate(self.inner_lrs):
        params = jax.tree.map(
            lambda x, i=i: x[i * num_seeds:(i + 1) * num_seeds], state.params)
        out.append(Arm(arm_name(algorithm, lr), algorithm, lr, params))
    return out


def seed_keys(seeds):
  """(init keys, train keys), one per seed, each of shape [num_seeds, 2]."""
  keys = [jax.random.PRNGKey(s) for s in seeds]
  init = jnp.stack([jax.random.fold_in(k, 0) for k in keys])
  train_keys = jnp.stack([jax.random.fold_in(k, 1) for k in keys])
  return init, train_keys


def _tree_index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _to_host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _format(x):
  return 'nan' if x is None or not math.isfinite(x) else f'{x:.4g}'


def meta_params(params, cfg, inner_lr):
  """The meta parameters of one member: w_0, or with ``--learn_inner_lr``
  ``mj.LearnedInnerLR(w_0, step sizes of that kind, all = inner_lr)``."""
  if not cfg.learned:
    return params
  return mj.LearnedInnerLR(params, mj.init_inner_lr(
      params, inner_lr, cfg.learn_inner_lr,
      num_steps=cfg.num_inner_steps if cfg.per_step_inner_lr else None))


def _estimator(problem, cfg, algorithm, inner_lr, delta):
  """The estimator of ``algorithm``; learned step sizes come with the params."""
  return make_estimator(
      algorithm, problem.loss_fn, inner_lr=None if cfg.learned else inner_lr,
      num_inner_steps=cfg.num_inner_steps, num_directions=cfg.num_directions,
      delta=delta, sampler=problem.sampler, remat=cfg.remat)


def sweep(problem, cfg, run_dir):
  """``--sweep``: each algorithm's best meta lr (and delta) on validation tasks.

  For every algorithm and delta, all candidate meta lrs train together in one
  vmapped fused run of ``cfg.sweep_iterations`` meta-iterations (first seed);
  the candidate with the lowest validation loss wins (non-finite = worst).

  Returns:
    ``{algorithm: HParams}``; also writes sweep.json.
  """
  if problem.validate is None:
    raise ValueError('--sweep needs Problem.validate')
  init_keys, train_keys = seed_keys(cfg.seeds[:1])
  w0 = problem.init_params(init_keys[0])
  lrs = jnp.asarray(cfg.sweep_meta_lrs, jnp.float32)
  chosen, grid = {}, []
  for algorithm in cfg.algorithms:
    deltas = (cfg.sweep_deltas if algorithm in DELTA_ALGORITHMS
              else (cfg.delta,))
    best = None
    for delta in deltas:
      base = cfg.hparams(algorithm)
      params = meta_params(w0, cfg, base.inner_lr)
      est = _estimator(problem, cfg, algorithm, base.inner_lr, delta)
      optimizer = make_optimizer(cfg.meta_optimizer, cfg.meta_lr)
      run = mj.make_fused_train(est, optimizer, problem.sample_tasks,
                                cfg.sweep_iterations)
      states = jax.vmap(lambda lr: mj.init_train_state(
          params, make_optimizer(cfg.meta_optimizer, lr)))(lrs)
      start = time.time()
      states, _ = jax.vmap(run, in_axes=(0, None))(states, train_keys[0])
      validate = jax.jit(jax.vmap(functools.partial(
          problem.validate, inner_lr=base.inner_lr)))
      losses = np.asarray(validate(states.params))
      logging.info('sweep %s delta=%g: %s (%.1fs)', algorithm, delta,
                   ', '.join(f'lr={lr:g}: {_format(float(v))}'
                             for lr, v in zip(cfg.sweep_meta_lrs, losses)),
                   time.time() - start)
      for lr, loss in zip(cfg.sweep_meta_lrs, losses):
        loss = float(loss)
        grid.append({'algorithm': algorithm, 'meta_lr': lr, 'delta': delta,
                     'validation_loss': _clean(loss)})
        score = loss if math.isfinite(loss) else math.inf
        if best is None or score < best[0]:
          best = (score, HParams(meta_lr=lr, delta=delta,
                                 inner_lr=base.inner_lr))
    chosen[algorithm] = best[1]
    logging.info('sweep %s: chose meta_lr=%g delta=%g (validation loss %s)',
                 algorithm, best[1].meta_lr, best[1].delta, _format(best[0]))
  atomic_write_text(run_dir.file('sweep.json'), json.dumps(
      {'iterations': cfg.sweep_iterations, 'seed': cfg.seeds[0],
       'chosen': {a: dataclasses.asdict(h) for a, h in chosen.items()},
       'grid': grid}, indent=2) + '\n')
  return chosen


def train(problem, cfg, run_dir, *, hparams=None, chunk_hook=None):
  """Meta-trains every algorithm of ``cfg`` for every seed, with checkpoints.

  Every algorithm starts from the same w_0 per seed and sees the same task
  sequence (same train key). Iterations run in chunks of ``cfg.eval_every``
  with ``mj.make_fused_train``, vmapped over the members: the seeds, or with
  ``--inner_lrs`` the grid (inner_lr, seed), whose step size is data of the
  one compiled program (member i of step size a equals a separate run with
  ``--inner_lr=a`` and that seed). With ``--learn_inner_lr`` the meta
  parameters are ``mj.LearnedInnerLR`` and the rows record their summary.

  Args:
    problem: the experiment's ``Problem``.
    cfg: ``TrainConfig``.
    run_dir: ``RunDir`` (metrics rows of a resumed run already loaded).
    hparams: optional ``{algorithm: HParams}`` (from ``sweep``); default
      ``cfg.hparams(algorithm)``.
    chunk_hook: optional ``chunk_hook(iteration)`` called after each
      checkpoint (tests use it to simulate a kill).

  Returns:
    ``TrainResult``.
  """
  hparams = dict(hparams or {})
  for algorithm in cfg.algorithms:
    hparams.setdefault(algorithm, cfg.hparams(algorithm))
  grid = tuple(cfg.inner_lrs)
  # Members of the vmapped axis: (inner_lr or None, seed), inner_lr major.
  members = ([(lr, seed) for lr in grid for seed in cfg.seeds] if grid
             else [(None, seed) for seed in cfg.seeds])
  init_keys, train_keys = seed_keys([seed for _, seed in members])
  w0 = jax.vmap(problem.init_params)(init_keys)
  member_lrs = jnp.asarray([lr for lr, _ in members], jnp.float32) if grid else None
  lengths = {cfg.eval_every, cfg.num_iterations % cfg.eval_every} - {0}
  runs, states, evaluate = {}, {}, {}
  by_lr = {}  # one compiled evaluation per distinct fixed inner lr
  for algorithm in cfg.algorithms:
    hp = hparams[algorithm]
    optimizer = make_optimizer(cfg.meta_optimizer, hp.meta_lr)
    runs[algorithm] = {}
    for length in lengths:
      if grid:
        def member_run(lr, state, key, algorithm=algorithm, length=length,
                       optimizer=optimizer, delta=hp.delta):
          est = _estimator(problem, cfg, algorithm, lr, delta)
          return mj.make_fused_train(est, optimizer, problem.sample_tasks,
                                     length, jit=False)(state, key)
        runs[algorithm][length] = functools.partial(
            jax.jit(jax.vmap(member_run)), member_lrs)
      else:
        est = _estimator(problem, cfg, algorithm, hp.inner_lr, hp.delta)
        runs[algorithm][length] = jax.jit(jax.vmap(mj.make_fused_train(
            est, optimizer, problem.sample_tasks, length)))
    params = jax.vmap(lambda p, lr=hp.inner_lr: meta_params(p, cfg, lr))(w0)
    states[algorithm] = jax.vmap(
        lambda p, opt=optimizer: mj.init_train_state(p, opt))(params)
    if grid:
      if 'grid' not in by_lr:
        grid_eval = jax.jit(jax.vmap(
            lambda p, lr: problem.evaluate(p, inner_lr=lr)))
        by_lr['grid'] = lambda p, f=grid_eval: f(p, member_lrs)
      evaluate[algorithm] = by_lr['grid']
    else:
      if hp.inner_lr not in by_lr:
        by_lr[hp.inner_lr] = jax.jit(jax.vmap(functools.partial(
            problem.evaluate, inner_lr=hp.inner_lr)))
      evaluate[algorithm] = by_lr[hp.inner_lr]

  checkpointer = Checkpointer(run_dir.file('checkpoints'))
  ckpt = {'states': states, 'train_keys': train_keys,
          'iteration': jnp.zeros((), jnp.int32)}
  iteration = 0
  wall = {a: 0.0 for a in cfg.algorithms}
  step = checkpointer.latest_step() if cfg.resume else None
  if step is not None:
    ckpt = checkpointer.restore(step, ckpt)
    states, train_keys = ckpt['states'], ckpt['train_keys']
    iteration = int(ckpt['iteration'])
    run_dir.truncate(iteration)
    for r in run_dir.rows:
      if r['iteration'] == iteration and r.get('wall_time') is not None:
        wall[r['algorithm']] = r['wall_time']
    logging.info('resumed %s at iteration %d', run_dir.path, iteration)
  else:
    run_dir.truncate(-1)

  def log_rows(algorithm, it, state, metrics, seconds):
    values = _to_host(evaluate[algorithm](state.params))
    if cfg.learned:
      values.update(inner_lr_stats(state.params.inner_lr,
                                   per_step=cfg.per_step_inner_lr))
    rows = []
    for s, (lr, seed) in enumerate(members):
      row = {'algorithm': algorithm, 'seed': seed, 'iteration': it,
             'wall_time': wall[algorithm]}
      if lr is not None:
        row['inner_lr'] = lr
      if metrics is not None:
        row.update(
            train_loss=float(np.mean(metrics['loss_after'][s])),
            grad_norm=float(metrics['grad_norm'][s][-1]),
            num_nonfinite=int(np.sum(metrics['num_nonfinite'][s])),
            chunk_seconds=seconds)
        if 'loss_before' in metrics:
          row['train_loss_before'] = float(np.mean(metrics['loss_before'][s]))
      row.update({k: float(v[s]) for k, v in values.items()})
      rows.append(row)
    run_dir.append(rows)
    return rows

  if iteration == 0:
    for algorithm in cfg.algorithms:
      log_rows(algorithm, 0, states[algorithm], None, None)
    run_dir.flush()

  chunk_times = {a: [] for a in cfg.algorithms}
  start_iteration, start_time = iteration, None
  while iteration < cfg.num_iterations:
    length = min(cfg.eval_every, cfg.num_iterations - iteration)
    latest = {}
    chunk_start = time.time()
    for algorithm in cfg.algorithms:
      t0 = time.time()
      states[algorithm], metrics = runs[algorithm][length](
          states[algorithm], train_keys)
      metrics = _to_host(metrics)
      seconds = time.time() - t0
      wall[algorithm] += seconds
      chunk_times[algorithm].append((length, seconds))
      for r in log_rows(algorithm, iteration + length, states[algorithm],
                        metrics, seconds):
        latest.setdefault(row_arm(r), []).append(r)
    iteration += length
    run_dir.flush()
    checkpointer.save(iteration, {'states': states, 'train_keys': train_keys,
                                  'iteration': jnp.asarray(iteration,
                                                           jnp.int32)})
    # Rate over the chunks after the first (which includes compilation).
    if start_time is None:
      rate = length / max(time.time() - chunk_start, 1e-9)
      start_iteration, start_time = iteration, time.time()
    else:
      rate = (iteration - start_iteration) / max(time.time() - start_time,
                                                 1e-9)
    eta = (cfg.num_iterations - iteration) / max(rate, 1e-9)
    logging.info(
        'iteration %d/%d (%.0f%%), %.1f it/s (all algorithms, %d seeds), '
        'ETA %.0fs | %s', iteration, cfg.num_iterations,
        100.0 * iteration / cfg.num_iterations, rate, len(cfg.seeds), eta,
        ' | '.join(
            f'{a}: train {_format(np.mean([r["train_loss"] or np.nan for r in rs]))}'
            f' test {_format(np.mean([r["test_loss"] or np.nan for r in rs]))}'
            + (f' alpha {_format(np.mean([r["inner_lr_mean"] for r in rs]))}'
               if cfg.learned else '')
            for a, rs in latest.items()))
    if chunk_hook is not None:
      chunk_hook(iteration)
  checkpointer.close()

  seconds_per_iteration = {}
  for algorithm, times in chunk_times.items():
    steady = times[1:] or times
    if steady:
      seconds_per_iteration[algorithm] = (
          sum(t for _, t in steady) / sum(n for n, _ in steady))
  return TrainResult(states=states, hparams=hparams, rows=run_dir.rows,
                     seconds_per_iteration=seconds_per_iteration,
                     inner_lrs=grid)


def run_experiment(problem, cfg, run_dir, *, chunk_hook=None):
  """``sweep`` (if ``cfg.sweep``; reloaded from sweep.json on resume) + ``train``."""
  hparams = None
  if cfg.sweep:
    path = run_dir.file('sweep.json')
    if cfg.resume and os.path.exists(path):
      with open(path) as f:
        chosen = json.load(f)['chosen']
      hparams = {a: HParams(**chosen[a]) for a in cfg.algorithms}
      logging.info('resume: using the sweep results in %s', path)
    else:
      hparams = sweep(problem, cfg, run_dir)
  return train(problem, cfg, run_dir, hparams=hparams, chunk_hook=chunk_hook)


# ----------------------------------------------------------------------------
# Summaries.
# ----------------------------------------------------------------------------

def final_rows(rows, metric='test_loss'):
  """``{arm: [metric at the last iteration, per seed]}`` (arm: ``row_arm``)."""
  last = {}
  for r in rows:
    a = row_arm(r)
    if a not in last or r['iteration'] > last[a]:
      last[a] = r['iteration']
  out = {}
  for r in rows:
    if r['iteration'] == last[row_arm(r)]:
      v = r.get(metric)
      out.setdefault(row_arm(r), []).append(np.nan if v is None else v)
  return out


def _inner_lr_label(cfg, hp, arm):
  if cfg is not None and cfg.learned:
    return (f'learned {cfg.learn_inner_lr}'
            f'{" per step" if cfg.per_step_inner_lr else ""} '
            f'(init {hp.inner_lr:g})')
  _, _, rest = arm.partition('@alpha=')
  return rest or f'{hp.inner_lr:g}'


def summary_table(result, metric='test_loss', metric_label='meta-test loss',
                  cfg=None):
  """Markdown table: final ``metric`` (mean +- std over seeds), hparams, time.

  One line per arm (per algorithm and ``--inner_lrs`` value). With ``cfg``
  of a ``--learn_inner_lr`` run, a column gives the final learned step
  sizes: mean over seeds of their mean, and their min and max over seeds.
  """
  finals = final_rows(result.rows, metric)
  learned = cfg is not None and cfg.learned
  if learned:
    stats = {name: final_rows(result.rows, 'inner_lr_' + name)
             for name in ('mean', 'min', 'max')}
  lines = [
      f'| algorithm | final {metric_label} (mean +- std over seeds) | seeds |'
      ' meta lr | delta | inner lr | s / meta-iteration (all seeds) |'
      + (' learned inner lr: mean [min, max] |' if learned else ''),
      '|---|---|---|---|---|---|---|' + ('---|' if learned else '')]
  for arm, values in finals.items():
    algorithm = arm.partition('@')[0]
    values = np.asarray(values, float)
    hp = result.hparams.get(algorithm)
    spi = result.seconds_per_iteration.get(algorithm)
    line = (
        f'| {arm_label(arm)} | {np.mean(values):.4g} +- '
        f'{np.std(values):.2g} | {len(values)} | '
        f'{hp.meta_lr:g} | '
        f'{hp.delta:g} | {_inner_lr_label(cfg, hp, arm)} | '
        f'{"n/a" if spi is None else f"{spi:.3g}"} |')
    if learned:
      line += (f' {np.mean(stats["mean"][arm]):.4g} '
               f'[{np.min(stats["min"][arm]):.4g}, '
               f'{np.max(stats["max"][arm]):.4g}] |')
    lines.append(line)
  return '\n'.join(lines) + '\n'


def learned_inner_lr_section(result, cfg):
  """Markdown about learned step sizes (per-step means), '' if not learned."""
  if not cfg.learned:
    return ''
  text = (f'Learned inner step sizes (--learn_inner_lr={cfg.learn_inner_lr}'
          f'{", --per_step_inner_lr" if cfg.per_step_inner_lr else ""}), '
          'final values: mean over all step sizes, min and max, mean +- std '
          'over seeds (metrics rows: inner_lr_mean/_min/_max'
          f'{", inner_lr_step<j>_mean" if cfg.per_step_inner_lr else ""}).\n')
  steps = [f'step{j}_' for j in range(cfg.num_inner_steps)] if (
      cfg.per_step_inner_lr) else []
  names = ['mean', 'min', 'max'] + [s + 'mean' for s in steps]
  finals = {n: final_rows(result.rows, 'inner_lr_' + n) for n in names}
  lines = ['| algorithm | ' + ' | '.join(
      n.replace('_', ' ') for n in names) + ' |',
           '|---|' + '---|' * len(names)]
  for arm in finals['mean']:
    lines.append(f'| {arm_label(arm)} | ' + ' | '.join(
        f'{np.mean(finals[n][arm]):.4g} +- {np.std(finals[n][arm]):.2g}'
        for n in names) + ' |')
  return text + '\n' + '\n'.join(lines) + '\n'


def write_summary(run_dir, title, sections):
  """Writes summary.md: ``title`` and ``sections`` (markdown strings)."""
  text = f'# {title}\n\n' + '\n'.join(s.rstrip() + '\n' for s in sections
                                       if s)
  atomic_write_text(run_dir.file('summary.md'), text)
  return run_dir.file('summary.md')


def config_dict(cfg, extra=None):
  """The content of config.json: resolved config, all flags, versions."""
  out = {'config': dataclasses.asdict(cfg) if cfg is not None else None,
         'flags': flag_values(), 'versions': package_versions(),
         'command': ' '.join(sys.argv)}
  if extra:
    out.update(extra)
  return out
