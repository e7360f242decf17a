r"""N-way K-shot image classification with the conv net of Finn et al. (2017).

The benchmark every MAML user runs first, at conv-net scale:
``maml_jax.models.ConvNet`` (4 blocks of 3x3 conv, batch-statistics
BatchNorm, ReLU, 2x2 max-pool; linear N-way head), cross-entropy loss, query
accuracy from the loss's auxiliary output (``has_aux``).

Data (``experiments.fewshot_data``), held on the device as one uint8 array per
split; tasks are drawn by indexing inside the compiled training loop
(``maml_jax.tasks.fewshot_tasks``):
  --dataset=glyphs (default, offline): characters rendered from the fonts that
    matplotlib ships, an Omniglot-like data set generated once per seed and
    cached as .npz under --cache_dir (default <workdir>/data).
  --dataset=omniglot --data_dir=DIR: the standard layout
    (DIR/images_background, DIR/images_evaluation, alphabet/character/*.png),
    Finn et al.'s 1200 training characters, rotations as extra classes.

Training tasks have --train_query_shots query images per class (a CPU
sizing choice; Finn et al. use K); the held-out evaluation uses
--query_shots (15) and --eval_inner_steps adaptation steps (Finn et al.: 1
step in training, 3 at test for 5-way). During training the learning curve is
the accuracy on --num_test_tasks fixed test-split tasks; at the end every
algorithm and seed is evaluated on --num_final_tasks (600) other test-split
tasks: mean accuracy with its 95% confidence interval (1.96 std / sqrt(n)),
accuracy after k = 0..--eval_inner_steps steps, and a figure of one task's
support and query images with each algorithm's predictions.

Sizes for a 2-core CPU (defaults): 32 filters (Finn et al.: 64), 8 tasks per
meta-iteration (Finn et al.: 32), 500 meta-iterations, one seed, MAML only.
Finn et al.'s setting: --filters=64 --tasks_per_batch=32
--train_query_shots=1 (5-way 1-shot) --num_iterations=60000.

Conv nets on CPU run the tasks of a meta-gradient one after another
(--task_batching=auto picks map there) and the seeds too
(--member_batching=map): vmapping over per-task weights turns every
convolution into a grouped one, slow on XLA:CPU (docs/conv_nets.md).

This module reads and checks the flags (``settings_from_flags``);
``experiments.fewshot_train.train_and_evaluate`` does the work.

  python -m experiments.fewshot --workdir=/tmp/fewshot
  python -m experiments.fewshot --quick
  python -m experiments.fewshot --algorithms=maml,fo_maml,ggs_maml,zo_maml --shots=5
  python -m experiments.fewshot --dataset=omniglot --data_dir=/data/omniglot \
      --filters=64 --tasks_per_batch=32 --train_query_shots=1
"""

import os

from absl import app
from absl import flags

import maml_jax as mj
from experiments import cli
from experiments import config
from experiments import fewshot_data
from experiments import fewshot_train
from experiments import launcher_flags
from experiments import models


NAME = 'fewshot'
DEFAULTS = dict(
    algorithms=['maml'],
    num_inner_steps=1,
    inner_lr=0.4,
    meta_lr=1e-3,
    meta_optimizer='adam',
    num_directions=10,
    delta=1e-2,
    tasks_per_batch=8,
    num_iterations=500,
    eval_every=100,
    num_test_tasks=100,
    sweep_meta_lrs=['3e-4', '1e-3', '3e-3'],
)
QUICK = dict(num_iterations=100, eval_every=50, num_test_tasks=60,
             num_final_tasks=100)

launcher_flags.define_training_flags()
launcher_flags.define_inner_lr_flags()
flags.adopt_module_key_flags(launcher_flags)
flags.DEFINE_enum('dataset', 'glyphs', list(fewshot_data.DATASETS),
                  'glyphs: generated offline from the fonts matplotlib ships; '
                  'omniglot: the standard files under --data_dir.')
flags.DEFINE_string('data_dir', None,
                    'Omniglot folder holding images_background/ and '
                    'images_evaluation/ (--dataset=omniglot).')
flags.DEFINE_string('cache_dir', None,
                    'Where the generated glyphs data set is cached (.npz). '
                    'Default: <workdir>/data.')
flags.DEFINE_integer('omniglot_train_characters', 1200,
                     'Omniglot characters of the meta-training split (Finn et '
                     'al.: 1200; each gives 4 rotation classes).')
flags.DEFINE_integer('omniglot_val_characters', 100,
                     'Held-out Omniglot characters used for validation '
                     '(--sweep); the rest are the test split.')
flags.DEFINE_integer('glyphs_max_classes', None,
                     'Build glyphs from only its first n candidate characters '
                     '(a small data set for smoke tests; default: all).')
flags.DEFINE_integer('data_seed', 0,
                     'Seed of the data set: glyph distortions and the '
                     'train/validation/test character splits.')
flags.DEFINE_integer('ways', 5, 'N, classes per task.')
flags.DEFINE_integer('shots', 1, 'K, support images per class.')
flags.DEFINE_integer('query_shots', 15,
                     'Query images per class of the held-out evaluation tasks.')
flags.DEFINE_integer('train_query_shots', 5,
                     'Query images per class of the meta-training tasks.')
flags.DEFINE_integer('eval_inner_steps', 3,
                     'Adaptation steps of the held-out evaluation (Finn et '
                     'al.: 3 for 5-way; training uses --num_inner_steps). With '
                     '--per_step_inner_lr, steps past N use the last one.')
flags.DEFINE_integer('filters', 32, 'Filters of every conv block (Finn et al.: 64).')
flags.DEFINE_integer('blocks', 4, 'Conv blocks (Finn et al.: 4, which pool 28x28 '
                     'to 1x1; fewer make a smaller, faster-compiling net).')
flags.DEFINE_enum('conv_impl', 'auto', ['auto'] + list(models.CONV_IMPLS),
                  'How convolutions are computed: auto (xla_vjp on CPU, xla '
                  'elsewhere), xla, matmul (im2col), xla_vjp '
                  '(mj.nn.conv_general_dilated). Same math.')
flags.DEFINE_string('task_batching', 'auto',
                    'How the tasks of a meta-gradient are batched: auto (map '
                    'for this conv net on CPU, vmap elsewhere), vmap, map, '
                    'unroll or a chunk size (mj.meta_gradient).')
flags.DEFINE_enum('member_batching', 'map', ['vmap', 'map'],
                  'How seeds (members) run in one compiled chunk: vmap or '
                  'map (one after another).')
flags.DEFINE_integer('num_final_tasks', 600,
                     'Test-split tasks of the final evaluation (mean accuracy '
                     'with a 95% confidence interval).')
flags.DEFINE_integer('eval_chunk', 20,
                     'Held-out tasks evaluated together (vmapped) per step of '
                     'the evaluation loop.')
FLAGS = flags.FLAGS


def settings_from_flags():
  """The ``TrainConfig`` and the few-shot ``fewshot_train.Settings``; ``app.UsageError`` if bad.

  With --quick, the launcher's short preset (``QUICK``) for every flag left
  unset. Reads nothing but flags: a bad flag fails before any data is read.
  """
  defaults = launcher_flags.experiment_defaults(DEFAULTS, QUICK)
  if FLAGS.quick and not FLAGS['num_final_tasks'].present:
    FLAGS.num_final_tasks = QUICK['num_final_tasks']
  cfg = config.training_config(NAME, defaults)
  positive = ['ways', 'shots', 'query_shots', 'train_query_shots', 'filters',
              'blocks',
              'num_final_tasks', 'eval_chunk']
  for name in positive:
    if FLAGS[name].value < 1:
      raise app.UsageError(f'--{name} must be a positive integer, got '
                           f'{FLAGS[name].value}')
  if FLAGS.eval_inner_steps < 0:
    raise app.UsageError('--eval_inner_steps must be >= 0')
  if FLAGS.ways < 2:
    raise app.UsageError(f'--ways must be at least 2, got {FLAGS.ways}')
  num_test = launcher_flags.flag_or_default('num_test_tasks', defaults)
  if num_test < 1:
    raise app.UsageError(f'--num_test_tasks must be positive, got {num_test}')
  task_batching = FLAGS.task_batching.strip()
  try:
    task_batching = mj.check_task_batching(
        int(task_batching) if task_batching.isdigit() else task_batching)
  except ValueError as error:
    raise app.UsageError(f'--task_batching: {error}') from None
  if FLAGS.dataset == 'omniglot' and not FLAGS.data_dir:
    raise app.UsageError('--dataset=omniglot needs --data_dir (the folder '
                         'holding images_background/ and images_evaluation/)')
  for name in ('num_test_tasks', 'num_final_tasks'):
    n = num_test if name == 'num_test_tasks' else FLAGS.num_final_tasks
    chunk = min(FLAGS.eval_chunk, n)
    if n % chunk:
      raise app.UsageError(f'--{name}={n} must be a multiple of '
                           f'--eval_chunk={FLAGS.eval_chunk}')
  settings = fewshot_train.Settings(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      cache_dir=FLAGS.cache_dir or os.path.join(cfg.workdir, 'data'),
      data_seed=FLAGS.data_seed, glyphs_max_classes=FLAGS.glyphs_max_classes,
      omniglot_train_characters=FLAGS.omniglot_train_characters,
      omniglot_val_characters=FLAGS.omniglot_val_characters,
      ways=FLAGS.ways, shots=FLAGS.shots, query_shots=FLAGS.query_shots,
      train_query_shots=FLAGS.train_query_shots,
      eval_inner_steps=FLAGS.eval_inner_steps, filters=FLAGS.filters,
      blocks=FLAGS.blocks, conv_impl=FLAGS.conv_impl,
      task_batching=task_batching, member_batching=FLAGS.member_batching,
      num_test_tasks=num_test, num_final_tasks=FLAGS.num_final_tasks,
      eval_chunk=FLAGS.eval_chunk, eval_seed=FLAGS.eval_seed)
  return cfg, settings


def run(argv, chunk_hook=None):
  """``main`` returning ``(training.TrainResult, final results dict)``."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cfg, settings = settings_from_flags()
  return fewshot_train.train_and_evaluate(cfg, settings, chunk_hook=chunk_hook)


main = cli.cli_main(run)

if __name__ == '__main__':
  launcher_flags.set_defaults(dict(DEFAULTS, seeds=['0']))
  app.run(main)
