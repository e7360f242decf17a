"""The resolved meta-training configuration of the supervised and RL launchers.

``training_config`` reads the flags of ``launcher_flags.define_training_flags``
(and ``define_inner_lr_flags`` where a launcher defines them), fills those
left at None from the launcher's ``DEFAULTS`` and checks them all into a
frozen ``TrainConfig`` before anything is compiled, so a bad flag fails in a
second with a one-line ``app.UsageError`` (``experiments.cli``).
``TrainConfig.hparams`` gives one algorithm's ``HParams``, the part that
``--sweep`` may change.
"""

import dataclasses
import math
from typing import Optional

from absl import app
from absl import flags

import maml_jax as mj
from experiments import launcher_flags
from experiments import runtime

# Algorithms with a smoothing / finite-difference radius delta (--sweep tries
# --sweep_deltas for these).
DELTA_ALGORITHMS = tuple(a for a in mj.ESTIMATORS
                         if 'delta' in mj.estimator_hyperparameters(a))

FLAGS = flags.FLAGS


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
  # The step sizes' optimizer: None = launcher_flags.INNER_LR_META_LR_SCALE x
  # meta lr and --meta_optimizer (see inner_lr_hparams).
  inner_lr_meta_lr: Optional[float] = None
  inner_lr_optimizer: Optional[str] = None
  # --inner_lrs: fixed inner step sizes trained as one vmapped grid; () = off.
  inner_lrs: tuple = ()
  # Task batches split over every device of every process
  # (runtime.task_sharding).
  shard_tasks: bool = False

  @property
  def learned(self):
    """Whether the inner step sizes are meta-parameters."""
    return self.learn_inner_lr != 'none'

  def inner_lr_hparams(self, meta_lr):
    """(optimizer name, learning rate) of learned step sizes, given w_0's lr."""
    lr = (self.inner_lr_meta_lr if self.inner_lr_meta_lr is not None
          else launcher_flags.INNER_LR_META_LR_SCALE * meta_lr)
    return self.inner_lr_optimizer or self.meta_optimizer, lr

  def hparams(self, algorithm):
    inner_lr = self.zo_inner_lr if algorithm == 'zo_maml' else self.inner_lr
    return HParams(meta_lr=self.meta_lr, delta=self.delta, inner_lr=inner_lr)


def _inner_lr_config():
  """The TrainConfig fields of ``define_inner_lr_flags``; checks them.

  Launchers that do not define those flags (RL) get the defaults.
  """
  if 'learn_inner_lr' not in FLAGS:
    return {}
  learn = FLAGS.learn_inner_lr
  per_step = FLAGS.per_step_inner_lr
  lrs = launcher_flags.parse_floats('inner_lrs', FLAGS.inner_lrs or ())
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
    launcher_flags.check_optimizer_name(FLAGS.inner_lr_optimizer,
                                        'inner_lr_optimizer')
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
  algorithms = launcher_flags.parse_algorithms(
      FLAGS.algorithms
      or defaults.get('algorithms', launcher_flags.PAPER_ALGORITHMS))
  get = lambda name: launcher_flags.flag_or_default(name, defaults)
  inner_lr = get('inner_lr')
  zo_inner_lr = get('zo_inner_lr')
  zo_inner_lr = inner_lr if zo_inner_lr is None else zo_inner_lr
  seeds = launcher_flags.parse_seeds(FLAGS.seeds)
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
      sweep_meta_lrs=launcher_flags.parse_floats(
          'sweep_meta_lrs', get('sweep_meta_lrs') or ()),
      sweep_deltas=launcher_flags.parse_floats('sweep_deltas',
                                               FLAGS.sweep_deltas),
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
  launcher_flags.check_optimizer_name(cfg.meta_optimizer)
  launcher_flags.check_workdir(cfg.workdir)
  return dataclasses.replace(
      cfg, shard_tasks=runtime.task_sharding(cfg.tasks_per_batch))
