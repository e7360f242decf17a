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

  python -m experiments.fewshot --workdir=/tmp/fewshot
  python -m experiments.fewshot --quick
  python -m experiments.fewshot --algorithms=maml,fo_maml,ggs_maml,zo_maml --shots=5
  python -m experiments.fewshot --dataset=omniglot --data_dir=/data/omniglot \
      --filters=64 --tasks_per_batch=32 --train_query_shots=1
"""

import functools
import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import cli
from experiments import config
from experiments import fewshot_data
from experiments import launcher_flags
from experiments import models
from experiments import plotting
from experiments import problems
from experiments import rundir
from experiments import summaries
from experiments import training


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
QUICK = dict(num_iterations=100, eval_every=50, num_test_tasks=50,
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


def split_accuracy(values):
  """Mean and 95% confidence half-width (1.96 std / sqrt(n)) of per-task values."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))


def adaptation_curve(loss_fn, params, tasks, *, inner_lr, num_steps,
                     num_inner_steps, chunk):
  """Per-task query loss and accuracy after k = 0..num_steps inner steps.

  ``mj.adaptation_curve`` for every task, with the query loss and accuracy
  as its evaluation.

  Args:
    loss_fn: ``loss_fn(params, batch) -> (loss, {'accuracy': ...})``.
    params: w_0 or ``mj.LearnedInnerLR`` (its step sizes are used).
    tasks: ``mj.Task`` with a leading task axis.
    inner_lr: the fixed alpha (ignored for learned step sizes).
    num_steps: adaptation steps; with a per-step learned alpha, steps past
      ``num_inner_steps`` use the last one.
    num_inner_steps: N of training (the length of a per-step alpha).
    chunk: tasks vmapped together; chunks run one after another (lax.map).

  Returns:
    (losses, accuracies), each [num_tasks, num_steps + 1].
  """

  def one(support, query):
    loss, aux = mj.adaptation_curve(
        loss_fn, params, support, inner_lr=inner_lr, num_steps=num_steps,
        num_inner_steps=num_inner_steps, has_aux=True,
        evaluate=lambda w: loss_fn(w, query)).evaluations
    return loss, aux['accuracy']

  n = jax.tree.leaves(tasks)[0].shape[0]
  chunk = max(1, min(chunk, n))
  if n % chunk:
    raise ValueError(f'{n} evaluation tasks do not split into chunks of {chunk}')
  grouped = jax.tree.map(lambda x: x.reshape((n // chunk, chunk) + x.shape[1:]),
                         (tasks.support, tasks.query))
  losses, accs = jax.lax.map(lambda t: jax.vmap(one)(*t), grouped)
  return losses.reshape(n, -1), accs.reshape(n, -1)


def make_problem(cfg, splits, *, ways, shots, query_shots, train_query_shots,
                 eval_inner_steps, model, num_test_tasks, eval_seed,
                 task_batching, member_batching, eval_chunk):
  """The ``problems.Problem`` of few-shot classification and its test tasks.

  Returns:
    (problem, loss_fn with aux, sampler of test-split tasks
    ``sample(key, n) -> mj.Task`` with ``query_shots`` query images).
  """
  loss_fn = mj.models.make_convnet_loss(model, has_aux=True)
  train_images = jnp.asarray(splits.train.images)
  val_images = jnp.asarray(splits.val.images)
  test_images = jnp.asarray(splits.test.images)
  sample = functools.partial(mj.tasks.fewshot_tasks, ways=ways, shots=shots)
  sample_test = lambda key, n: sample(key, test_images, n,
                                      query_shots=query_shots)
  k_test, k_val = jax.random.split(jax.random.PRNGKey(eval_seed))
  test_tasks = sample_test(k_test, num_test_tasks)
  val_tasks = sample(k_val, val_images, num_test_tasks,
                     query_shots=query_shots)
  curve = functools.partial(
      adaptation_curve, loss_fn, num_steps=eval_inner_steps,
      num_inner_steps=cfg.num_inner_steps, chunk=eval_chunk)

  def evaluate(params, *, inner_lr):
    losses, accs = curve(params, test_tasks, inner_lr=inner_lr)
    return {'test_loss': jnp.mean(losses[:, -1]),
            'test_accuracy': jnp.mean(accs[:, -1]),
            'test_accuracy_before': jnp.mean(accs[:, 0])}

  def validate(params, *, inner_lr):
    return jnp.mean(curve(params, val_tasks, inner_lr=inner_lr)[0][:, -1])

  def init_params(key):
    return mj.models.init_convnet_params(key, model)

  problem = problems.Problem(
      loss_fn=loss_fn, init_params=init_params,
      sample_tasks=lambda key: sample(key, train_images, cfg.tasks_per_batch,
                                      query_shots=train_query_shots),
      evaluate=evaluate, validate=validate, has_aux=True,
      task_batching=task_batching, member_batching=member_batching)
  return problem, loss_fn, sample_test


def plot_task_predictions(task, predictions, path, *, title, max_query=10):
  """One task: support images (with labels), then a row of query images per arm.

  Args:
    task: ``mj.Task`` of ONE task (host arrays; images [n, H, W, 1]).
    predictions: ``{arm: [num_query] predicted labels}`` after adaptation.
    path: PNG path.
    title: figure title.
    max_query: query images shown per row.
  """
  plt = plotting.plt
  sx, sy = np.asarray(task.support['x'])[..., 0], np.asarray(task.support['y'])
  qx, qy = np.asarray(task.query['x'])[..., 0], np.asarray(task.query['y'])
  order = np.argsort(qy, kind='stable')
  show = order[np.linspace(0, len(order) - 1, min(max_query, len(order))
                           ).astype(int)]
  cols = max(len(sy), len(show))
  rows = 1 + len(predictions)
  fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols + 1.2, 1.15 * rows),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis('off')
  for i in range(len(sy)):
    axes[0, i].imshow(sx[i], cmap='gray_r', vmin=0, vmax=1)
    axes[0, i].set_title(f'class {sy[i]}', fontsize=7)
  axes[0, 0].text(-0.3, 0.5, 'support', transform=axes[0, 0].transAxes,
                  ha='right', va='center', fontsize=8)
  for r, (arm, pred) in enumerate(predictions.items(), start=1):
    pred = np.asarray(pred)
    for c, q in enumerate(show):
      ax = axes[r, c]
      ax.imshow(qx[q], cmap='gray_r', vmin=0, vmax=1)
      ok = pred[q] == qy[q]
      ax.set_title(f'{pred[q]} ({qy[q]})', fontsize=7,
                   color='tab:green' if ok else 'tab:red')
    axes[r, 0].text(-0.3, 0.5, summaries.arm_label(arm),
                    transform=axes[r, 0].transAxes, ha='right', va='center',
                    fontsize=8)
  fig.suptitle(title, fontsize=9)
  return plotting._save(fig, path)  # pylint: disable=protected-access


def _check_flags(defaults):
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
  return num_test, task_batching


def _check_data(splits, ways, shots, query_shots, train_query_shots):
  """UsageError if a split has too few classes or instances for the tasks."""
  for split_name, data in zip(('train', 'val', 'test'), splits):
    classes, instances = data.images.shape[:2]
    need = shots + (train_query_shots if split_name == 'train' else query_shots)
    if classes < ways:
      raise app.UsageError(f'the {split_name} split has {classes} classes, '
                           f'fewer than --ways={ways}')
    if instances < need:
      raise app.UsageError(
          f'the {split_name} split has {instances} images per class, fewer '
          f'than --shots + query shots = {need}')


def run(argv, chunk_hook=None):
  """``main`` returning ``(training.TrainResult, final results dict)``."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  defaults = dict(DEFAULTS, **(QUICK if FLAGS.quick else {}))
  if FLAGS.quick and not FLAGS['num_final_tasks'].present:
    FLAGS.num_final_tasks = QUICK['num_final_tasks']
  cfg = config.training_config(NAME, defaults)
  num_test_tasks, task_batching = _check_flags(defaults)
  ways, shots = FLAGS.ways, FLAGS.shots
  cache_dir = FLAGS.cache_dir or os.path.join(cfg.workdir, 'data')
  start = time.time()
  extra = dict(max_classes=FLAGS.glyphs_max_classes) if (
      FLAGS.dataset == 'glyphs') else dict(
      num_train_characters=FLAGS.omniglot_train_characters,
      num_val_characters=FLAGS.omniglot_val_characters)
  try:
    splits = fewshot_data.load(FLAGS.dataset, data_dir=FLAGS.data_dir,
                               cache_dir=cache_dir, seed=FLAGS.data_seed,
                               **extra)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  sizes = {name: tuple(int(s) for s in d.images.shape)
           for name, d in zip(('train', 'val', 'test'), splits)}
  logging.info('%s data (%.1fs): %s (classes, images per class, H, W)',
               FLAGS.dataset, time.time() - start, sizes)
  _check_data(splits, ways, shots, FLAGS.query_shots, FLAGS.train_query_shots)

  run_dir = rundir.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=NAME)
  conv_impl = (models.default_conv_impl() if FLAGS.conv_impl == 'auto'
               else FLAGS.conv_impl)
  model = mj.models.ConvNet(ways, filters=FLAGS.filters, blocks=FLAGS.blocks,
                            conv=models.conv_op(conv_impl))
  run_dir.write_config(rundir.config_dict(cfg, extra=dict(conv_impl=conv_impl)),
                       resume=cfg.resume)
  logging.info('run folder: %s', run_dir.path)

  problem, loss_fn, sample_test = make_problem(
      cfg, splits, ways=ways, shots=shots, query_shots=FLAGS.query_shots,
      train_query_shots=FLAGS.train_query_shots,
      eval_inner_steps=FLAGS.eval_inner_steps, model=model,
      num_test_tasks=num_test_tasks, eval_seed=FLAGS.eval_seed,
      task_batching=task_batching, member_batching=FLAGS.member_batching,
      eval_chunk=FLAGS.eval_chunk)
  result = training.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)

  # Final evaluation: other test-split tasks than the learning curve's.
  final_key = jax.random.fold_in(jax.random.PRNGKey(FLAGS.eval_seed), 600)
  final_tasks = sample_test(final_key, FLAGS.num_final_tasks)
  curve = functools.partial(
      adaptation_curve, loss_fn, tasks=final_tasks,
      num_steps=FLAGS.eval_inner_steps, num_inner_steps=cfg.num_inner_steps,
      chunk=FLAGS.eval_chunk)
  final = {'dataset': FLAGS.dataset, 'ways': ways, 'shots': shots,
           'query_shots': FLAGS.query_shots,
           'eval_inner_steps': FLAGS.eval_inner_steps,
           'num_tasks': FLAGS.num_final_tasks, 'seeds': list(cfg.seeds),
           'splits': sizes, 'arms': {}}
  predictions = {}
  example = jax.tree.map(lambda x: x[0], sample_test(
      jax.random.fold_in(final_key, 1), 1))
  evaluate_final = jax.jit(curve)

  @jax.jit
  def predict(params, inner_lr):
    """Query labels predicted for ``example`` after the evaluation's steps."""
    adapted = mj.adaptation_curve(
        loss_fn, params, example.support, inner_lr=inner_lr,
        num_steps=FLAGS.eval_inner_steps, num_inner_steps=cfg.num_inner_steps,
        has_aux=True).adapted
    return jnp.argmax(model.apply(adapted, example.query['x']), axis=-1)

  for arm in result.arms():
    start = time.time()
    per_seed = []
    for s in range(len(cfg.seeds)):
      params = jax.tree.map(lambda x, s=s: x[s], arm.params)
      _, accs = evaluate_final(params, inner_lr=arm.inner_lr)
      per_seed.append(np.asarray(accs))
    accs = np.stack(per_seed)  # [seeds, tasks, steps + 1]
    seeds = [split_accuracy(a[:, -1]) for a in accs]
    final['arms'][arm.name] = {
        'accuracy': [m for m, _ in seeds], 'ci95': [c for _, c in seeds],
        'accuracy_by_step': accs.mean(axis=1).tolist(),
        'seconds': time.time() - start}
    logging.info('final %s: accuracy %s (%.0fs)', arm.name, ', '.join(
        f'{100 * m:.2f} +- {100 * c:.2f}%' for m, c in seeds),
                 time.time() - start)
    predictions[arm.name] = np.asarray(predict(
        jax.tree.map(lambda x: x[0], arm.params), arm.inner_lr))
  rundir.atomic_write_text(run_dir.file('final.json'),
                           json.dumps(final, indent=1) + '\n')

  chance = 1.0 / ways
  setting = f'{ways}-way {shots}-shot'
  curve_fig = plotting.plot_learning_curves(
      result.rows, run_dir.file('accuracy.png'), metric='test_accuracy',
      ylabel=f'test-task accuracy (after {FLAGS.eval_inner_steps} steps)',
      logy=False, reference=(chance, 'chance'),
      title=f'{FLAGS.dataset} {setting}, {num_test_tasks} held-out tasks '
      f'(mean +- std over {len(cfg.seeds)} seeds)')
  grid_fig = plot_task_predictions(
      example, predictions, run_dir.file('example_task.png'),
      title=f'One held-out {setting} task: support (top); query predictions '
      f'after {FLAGS.eval_inner_steps} steps, "pred (true)", first seed')

  lines = ['| algorithm | accuracy, % (95% CI over tasks) per seed | mean over '
           'seeds, % | accuracy by adaptation step k = 0..'
           f'{FLAGS.eval_inner_steps}, % | s / meta-iteration |',
           '|---|---|---|---|---|']
  for name, r in final['arms'].items():
    by_step = np.mean(r['accuracy_by_step'], axis=0)
    spi = result.seconds_per_iteration.get(name.partition('@')[0])
    lines.append(
        f'| {summaries.arm_label(name)} | ' + ', '.join(
            f'{100 * m:.1f} +- {100 * c:.1f}'
            for m, c in zip(r['accuracy'], r['ci95']))
        + f' | {100 * np.mean(r["accuracy"]):.1f} | '
        + ' / '.join(f'{100 * v:.1f}' for v in by_step)
        + f' | {"n/a" if spi is None else f"{spi:.3g}"} |')
  summary = summaries.write_summary(
      run_dir, f'Few-shot classification: {FLAGS.dataset}, {setting}', [
          f'Conv net of Finn et al. with {FLAGS.blocks} blocks of '
          f'{FLAGS.filters} filters '
          f'({conv_impl} convolutions), '
          f'{cfg.num_iterations} meta-iterations of {cfg.tasks_per_batch} '
          f'tasks ({shots} support + {FLAGS.train_query_shots} query images '
          f'per class), N = {cfg.num_inner_steps}, alpha = {cfg.inner_lr:g}, '
          f'meta optimizer {cfg.meta_optimizer} lr {cfg.meta_lr:g}, b = '
          f'{cfg.num_directions}, delta = {cfg.delta:g}, seeds '
          f'{list(cfg.seeds)}. Splits (classes, images per class, H, W): '
          f'{sizes}. Chance: {100 * chance:.0f}%.',
          f'Final: {FLAGS.num_final_tasks} held-out test-split tasks, '
          f'{FLAGS.query_shots} query images per class, '
          f'{FLAGS.eval_inner_steps} adaptation steps.\n',
          '\n'.join(lines) + '\n',
          'During training (metrics.csv, accuracy.png): accuracy on '
          f'{num_test_tasks} other fixed test-split tasks.\n',
          summaries.summary_table(result, metric='test_accuracy',
                                  metric_label='held-out accuracy', cfg=cfg),
          summaries.learned_inner_lr_section(result, cfg),
          '![accuracy](accuracy.png)\n\n![example task](example_task.png)',
      ])
  print(f'Figures: {curve_fig}, {grid_fig}\nSummary: {summary}\n'
        f'Metrics: {run_dir.file("metrics.csv")}')
  return result, final


main = cli.cli_main(run)

if __name__ == '__main__':
  launcher_flags.set_defaults(dict(DEFAULTS, seeds=['0']))
  app.run(main)
