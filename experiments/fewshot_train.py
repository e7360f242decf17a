"""Few-shot classification: the data, the problem, training and the final evaluation.

``train_and_evaluate(cfg, settings)`` is the few-shot launcher's work once
its flags are read (``experiments.fewshot``, the flax examples' main.py /
train.py split): it reads the data set (``load_splits``), builds the
``problems.Problem`` of N-way K-shot classification with the conv net of
Finn et al. (``make_problem``), meta-trains every algorithm
(``training.run_experiment``), evaluates every arm and seed on other
test-split tasks (``final_evaluation``) and writes final.json, the figures
and summary.md (``write_report``).
"""

import functools
import json
import math
import time
from typing import NamedTuple, Optional

from absl import app
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import fewshot_data
from experiments import models
from experiments import plotting
from experiments import problems
from experiments import rundir
from experiments import summaries
from experiments import training


class Settings(NamedTuple):
  """The few-shot flags, read and checked (``fewshot.settings_from_flags``).

  The shared meta-training flags are the ``TrainConfig``'s; these are the
  data set, the tasks, the conv net and the held-out evaluation. Each field
  is the flag of its name, except: ``cache_dir`` defaults to <workdir>/data,
  ``task_batching`` is checked (``mj.check_task_batching``) and
  ``num_test_tasks`` is the flag or the launcher's default. ``conv_impl``
  may be 'auto' (``train_and_evaluate`` resolves it).
  """
  dataset: str
  data_dir: Optional[str]
  cache_dir: str
  data_seed: int
  glyphs_max_classes: Optional[int]
  omniglot_train_characters: int
  omniglot_val_characters: int
  ways: int
  shots: int
  query_shots: int
  train_query_shots: int
  eval_inner_steps: int
  filters: int
  blocks: int
  conv_impl: str
  task_batching: object
  member_batching: str
  num_test_tasks: int
  num_final_tasks: int
  eval_chunk: int
  eval_seed: int


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
        loss_fn, params, support, inner_lr=inner_lr, num_inner_steps=num_steps,
        inner_lr_steps=num_inner_steps, has_aux=True,
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


def load_splits(settings):
  """The data set's ``Splits``; ``app.UsageError`` if it cannot serve the tasks.

  A split with fewer classes than --ways or fewer images per class than
  --shots plus the query shots is an error, before anything compiles.
  """
  start = time.time()
  extra = dict(max_classes=settings.glyphs_max_classes) if (
      settings.dataset == 'glyphs') else dict(
      num_train_characters=settings.omniglot_train_characters,
      num_val_characters=settings.omniglot_val_characters)
  try:
    splits = fewshot_data.load(settings.dataset, data_dir=settings.data_dir,
                               cache_dir=settings.cache_dir,
                               seed=settings.data_seed, **extra)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  logging.info('%s data (%.1fs): %s (classes, images per class, H, W)',
               settings.dataset, time.time() - start, split_sizes(splits))
  for split_name, data in zip(('train', 'val', 'test'), splits):
    classes, instances = data.images.shape[:2]
    need = settings.shots + (settings.train_query_shots
                             if split_name == 'train' else settings.query_shots)
    if classes < settings.ways:
      raise app.UsageError(f'the {split_name} split has {classes} classes, '
                           f'fewer than --ways={settings.ways}')
    if instances < need:
      raise app.UsageError(
          f'the {split_name} split has {instances} images per class, fewer '
          f'than --shots + query shots = {need}')
  return splits


def split_sizes(splits):
  """``{split: (classes, images per class, H, W)}``."""
  return {name: tuple(int(s) for s in d.images.shape)
          for name, d in zip(('train', 'val', 'test'), splits)}


def final_evaluation(result, cfg, settings, *, loss_fn, model, sample_test):
  """Every arm and seed on --num_final_tasks other test-split tasks.

  Other tasks than the learning curve's: drawn from ``eval_seed`` folded
  with 600. One more test-split task is the example of the figure.

  Returns:
    (``{arm: {'accuracy': [per seed], 'ci95': [per seed], 'accuracy_by_step':
    [per seed [k = 0..eval_inner_steps]], 'seconds'}}``, the example task,
    ``{arm: its query labels predicted by the first seed}``).
  """
  final_key = jax.random.fold_in(jax.random.PRNGKey(settings.eval_seed), 600)
  final_tasks = sample_test(final_key, settings.num_final_tasks)
  evaluate_final = jax.jit(functools.partial(
      adaptation_curve, loss_fn, tasks=final_tasks,
      num_steps=settings.eval_inner_steps, num_inner_steps=cfg.num_inner_steps,
      chunk=settings.eval_chunk))
  example = jax.tree.map(lambda x: x[0], sample_test(
      jax.random.fold_in(final_key, 1), 1))

  @jax.jit
  def predict(params, inner_lr):
    """Query labels predicted for ``example`` after the evaluation's steps."""
    adapted = mj.adaptation_curve(
        loss_fn, params, example.support, inner_lr=inner_lr,
        num_inner_steps=settings.eval_inner_steps,
        inner_lr_steps=cfg.num_inner_steps, has_aux=True).adapted
    return jnp.argmax(model.apply(adapted, example.query['x']), axis=-1)

  arms, predictions = {}, {}
  for arm in result.arms():
    start = time.time()
    per_seed = []
    for s in range(len(cfg.seeds)):
      params = jax.tree.map(lambda x, s=s: x[s], arm.params)
      _, accs = evaluate_final(params, inner_lr=arm.inner_lr)
      per_seed.append(np.asarray(accs))
    accs = np.stack(per_seed)  # [seeds, tasks, steps + 1]
    seeds = [split_accuracy(a[:, -1]) for a in accs]
    arms[arm.name] = {
        'accuracy': [m for m, _ in seeds], 'ci95': [c for _, c in seeds],
        'accuracy_by_step': accs.mean(axis=1).tolist(),
        'seconds': time.time() - start}
    logging.info('final %s: accuracy %s (%.0fs)', arm.name, ', '.join(
        f'{100 * m:.2f} +- {100 * c:.2f}%' for m, c in seeds),
                 time.time() - start)
    predictions[arm.name] = np.asarray(predict(
        jax.tree.map(lambda x: x[0], arm.params), arm.inner_lr))
  return arms, example, predictions


def results_table(arms, seconds_per_iteration, eval_inner_steps):
  """The summary's markdown table of the final evaluation, one row per arm."""
  lines = ['| algorithm | accuracy, % (95% CI over tasks) per seed | mean over '
           'seeds, % | accuracy by adaptation step k = 0..'
           f'{eval_inner_steps}, % | s / meta-iteration |',
           '|---|---|---|---|---|']
  for name, r in arms.items():
    by_step = np.mean(r['accuracy_by_step'], axis=0)
    spi = seconds_per_iteration.get(name.partition('@')[0])
    lines.append(
        f'| {summaries.arm_label(name)} | ' + ', '.join(
            f'{100 * m:.1f} +- {100 * c:.1f}'
            for m, c in zip(r['accuracy'], r['ci95']))
        + f' | {100 * np.mean(r["accuracy"]):.1f} | '
        + ' / '.join(f'{100 * v:.1f}' for v in by_step)
        + f' | {"n/a" if spi is None else f"{spi:.3g}"} |')
  return '\n'.join(lines) + '\n'


def write_report(run_dir, result, final, example, predictions, cfg, settings,
                 *, conv_impl):
  """The figures (accuracy.png, example_task.png) and summary.md; prints where."""
  chance = 1.0 / settings.ways
  setting = f'{settings.ways}-way {settings.shots}-shot'
  steps = settings.eval_inner_steps
  curve_fig = plotting.plot_learning_curves(
      result.rows, run_dir.file('accuracy.png'), metric='test_accuracy',
      ylabel=f'test-task accuracy (after {steps} steps)',
      logy=False, reference=(chance, 'chance'),
      title=f'{settings.dataset} {setting}, {settings.num_test_tasks} held-out '
      f'tasks (mean +- std over {len(cfg.seeds)} seeds)')
  grid_fig = plotting.plot_task_predictions(
      example, predictions, run_dir.file('example_task.png'),
      title=f'One held-out {setting} task: support (top); query predictions '
      f'after {steps} steps, "pred (true)", first seed')
  summary = summaries.write_summary(
      run_dir, f'Few-shot classification: {settings.dataset}, {setting}', [
          f'Conv net of Finn et al. with {settings.blocks} blocks of '
          f'{settings.filters} filters '
          f'({conv_impl} convolutions), '
          f'{cfg.num_iterations} meta-iterations of {cfg.tasks_per_batch} '
          f'tasks ({settings.shots} support + {settings.train_query_shots} '
          f'query images per class), N = {cfg.num_inner_steps}, alpha = '
          f'{cfg.inner_lr:g}, meta optimizer {cfg.meta_optimizer} lr '
          f'{cfg.meta_lr:g}, b = {cfg.num_directions}, delta = {cfg.delta:g}, '
          f'seeds {list(cfg.seeds)}. Splits (classes, images per class, H, '
          f'W): {final["splits"]}. Chance: {100 * chance:.0f}%.',
          f'Final: {settings.num_final_tasks} held-out test-split tasks, '
          f'{settings.query_shots} query images per class, '
          f'{steps} adaptation steps.\n',
          results_table(final['arms'], result.seconds_per_iteration, steps),
          'During training (metrics.csv, accuracy.png): accuracy on '
          f'{settings.num_test_tasks} other fixed test-split tasks.\n',
          summaries.summary_table(result, metric='test_accuracy',
                                  metric_label='held-out accuracy', cfg=cfg),
          summaries.learned_inner_lr_section(result, cfg),
          '![accuracy](accuracy.png)\n\n![example task](example_task.png)',
      ])
  print(f'Figures: {curve_fig}, {grid_fig}\nSummary: {summary}\n'
        f'Metrics: {run_dir.file("metrics.csv")}')


def train_and_evaluate(cfg, settings, *, chunk_hook=None):
  """Reads the data, meta-trains, evaluates and reports into the run folder.

  Args:
    cfg: the ``TrainConfig`` (its workdir, run name and resume say where).
    settings: the few-shot ``Settings``.
    chunk_hook: optional ``chunk_hook(iteration)`` after each checkpoint
      (``training.train``).

  Returns:
    ``(training.TrainResult, final results dict)``; the dict is final.json.
  """
  splits = load_splits(settings)
  run_dir = rundir.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=cfg.experiment)
  conv_impl = (models.default_conv_impl() if settings.conv_impl == 'auto'
               else settings.conv_impl)
  model = mj.models.ConvNet(settings.ways, filters=settings.filters,
                            blocks=settings.blocks,
                            conv=models.conv_op(conv_impl))
  run_dir.write_config(rundir.config_dict(cfg, extra=dict(conv_impl=conv_impl)),
                       resume=cfg.resume)
  logging.info('run folder: %s', run_dir.path)

  problem, loss_fn, sample_test = make_problem(
      cfg, splits, ways=settings.ways, shots=settings.shots,
      query_shots=settings.query_shots,
      train_query_shots=settings.train_query_shots,
      eval_inner_steps=settings.eval_inner_steps, model=model,
      num_test_tasks=settings.num_test_tasks, eval_seed=settings.eval_seed,
      task_batching=settings.task_batching,
      member_batching=settings.member_batching, eval_chunk=settings.eval_chunk)
  result = training.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)

  arms, example, predictions = final_evaluation(
      result, cfg, settings, loss_fn=loss_fn, model=model,
      sample_test=sample_test)
  final = {'dataset': settings.dataset, 'ways': settings.ways,
           'shots': settings.shots, 'query_shots': settings.query_shots,
           'eval_inner_steps': settings.eval_inner_steps,
           'num_tasks': settings.num_final_tasks, 'seeds': list(cfg.seeds),
           'splits': split_sizes(splits), 'arms': arms}
  rundir.atomic_write_text(run_dir.file('final.json'),
                           json.dumps(final, indent=1) + '\n')
  write_report(run_dir, result, final, example, predictions, cfg, settings,
               conv_impl=conv_impl)
  return result, final
