r"""K-shot sine-wave regression (paper section 5.2, after Finn et al. 2017).

Tasks: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5];
K = 10 support and 10 query points per task; the model is the Flax MLP
1-40-40-1 with ReLU (``experiments.models.SineMLP``); MSE loss.

The authors' inner and meta lr (1e-4) barely learn (SPEC section 4); the
defaults here are the usual MAML sine setting of Finn et al.: alpha = 0.01,
Adam with meta lr 1e-3, 25 tasks per meta-iteration, N = 3 (the authors' N).
During training the meta-test loss is the query MSE after N steps on a fixed
set of held-out tasks. At the end, every algorithm and seed is evaluated on
the held-out tasks after k = 0..--kshot_steps adaptation steps (kshot.json,
kshot_mse.png), and one held-out task is drawn in the classic picture
(sine_fit_<algorithm>.png).

  python -m experiments.sine --workdir=/tmp/sine
  python -m experiments.sine --quick
"""

import functools
import json

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import models
from experiments import plotting
from experiments import tasks as task_lib


NAME = 'sine'
DEFAULTS = dict(
    num_inner_steps=3,
    inner_lr=0.01,
    meta_lr=1e-3,
    meta_optimizer='adam',
    num_directions=10,
    delta=1e-2,
    tasks_per_batch=25,
    num_iterations=10000,
    eval_every=1000,
    num_test_tasks=500,
    sweep_meta_lrs=['3e-4', '1e-3', '3e-3'],
)
QUICK = dict(num_iterations=1000, eval_every=250)

common.define_training_flags()
flags.adopt_module_key_flags(common)
flags.DEFINE_integer('num_support', 10, 'K, support points per task.')
flags.DEFINE_integer('num_query', 10, 'Query points per task.')
flags.DEFINE_integer('kshot_steps', 10,
                     'Largest k of the final MSE-vs-adaptation-steps curve '
                     '(k = 0..kshot_steps, stepsize --inner_lr).')
FLAGS = flags.FLAGS


def k_step_mse(params, tasks, *, inner_lr, max_steps):
  """Mean query MSE over ``tasks`` after k = 0..max_steps inner steps [K + 1]."""
  def one(support, query):
    def body(p, _):
      loss = models.sine_loss(p, query)
      grads = jax.grad(models.sine_loss)(p, support)
      return jax.tree.map(lambda w, g: w - inner_lr * g, p, grads), loss
    p_k, losses = jax.lax.scan(body, params, None, length=max_steps)
    return jnp.append(losses, models.sine_loss(p_k, query))
  return jnp.mean(jax.vmap(one)(tasks.support, tasks.query), axis=0)


def make_problem(cfg, *, num_support, num_query, num_test_tasks, eval_seed):
  """The ``common.Problem`` of sine regression, and the held-out test tasks."""
  sample = functools.partial(task_lib.sine_tasks, num_support=num_support,
                             num_query=num_query)
  return common.supervised_problem(
      cfg, loss_fn=models.sine_loss, init_params=models.init_sine_params,
      sample=sample, num_test_tasks=num_test_tasks, eval_seed=eval_seed)


def fit_picture(params, run_dir, algorithm, *, key, num_support, inner_lr,
                steps):
  """The classic picture for one held-out task and one set of meta params."""
  amp, phase = task_lib.sine_task_params(key, 1)
  support = task_lib.sine_points(jax.random.fold_in(key, 7), amp, phase,
                                 num_support)
  support = jax.tree.map(lambda x: x[0], support)
  x = jnp.linspace(*task_lib.SINE_X, 200)[:, None]
  predictions = {'meta-learned init (k=0)':
                     models.SINE_MODEL.apply(params, x)[:, 0]}
  p = params
  for k in range(1, max(steps) + 1):
    p = jax.tree.map(lambda w, g: w - inner_lr * g, p,
                     jax.grad(models.sine_loss)(p, support))
    if k in steps:
      predictions[f'after {k} step{"s" if k > 1 else ""}'] = (
          models.SINE_MODEL.apply(p, x)[:, 0])
  return plotting.plot_sine_fit(
      np.asarray(x[:, 0]), np.asarray(amp[0] * jnp.sin(x[:, 0] - phase[0])),
      (np.asarray(support['x']), np.asarray(support['y'])),
      {k: np.asarray(v) for k, v in predictions.items()},
      run_dir.file(f'sine_fit_{algorithm}.png'),
      title=f'{plotting.LABELS.get(algorithm, algorithm)}: K={num_support} '
      f'held-out task, alpha={inner_lr:g}')


def run(argv, chunk_hook=None):
  """``main`` returning the ``common.TrainResult`` (for tests and notebooks)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  defaults = dict(DEFAULTS, **(QUICK if FLAGS.quick else {}))
  cfg = common.training_config(NAME, defaults)
  num_test_tasks = common.flag_or_default('num_test_tasks', defaults)
  for name, value in [(n, FLAGS[n].value) for n in (
      'num_support', 'num_query', 'kshot_steps')] + [
          ('num_test_tasks', num_test_tasks)]:
    if value < 1:
      raise app.UsageError(f'--{name} must be a positive integer, '
                           f'got {value}')
  run_dir = common.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=NAME)
  run_dir.write_config(common.config_dict(cfg), resume=cfg.resume)
  logging.info('run folder: %s', run_dir.path)
  problem, test_tasks, test_key = make_problem(
      cfg, num_support=FLAGS.num_support, num_query=FLAGS.num_query,
      num_test_tasks=num_test_tasks, eval_seed=FLAGS.eval_seed)
  result = common.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)

  # Meta-test MSE after k = 0..kshot_steps steps, every algorithm and seed.
  curves = {}
  for algorithm, state in result.states.items():
    inner_lr = result.hparams[algorithm].inner_lr
    fn = jax.jit(jax.vmap(functools.partial(
        k_step_mse, tasks=test_tasks, inner_lr=inner_lr,
        max_steps=FLAGS.kshot_steps)))
    curves[algorithm] = np.asarray(fn(state.params))
    fit_picture(jax.tree.map(lambda x: x[0], state.params), run_dir,
                algorithm, key=jax.random.fold_in(test_key, 99),
                num_support=FLAGS.num_support, inner_lr=inner_lr,
                steps=(1, FLAGS.kshot_steps))
  common.atomic_write_text(run_dir.file('kshot.json'), json.dumps({
      'steps': list(range(FLAGS.kshot_steps + 1)),
      'seeds': list(cfg.seeds),
      'num_test_tasks': num_test_tasks,
      'mse': {a: c.tolist() for a, c in curves.items()}}, indent=1) + '\n')
  kshot = plotting.plot_k_step_curves(
      curves, run_dir.file('kshot_mse.png'), logy=True,
      title=f'Sine K={FLAGS.num_support}, {num_test_tasks} held-out tasks')
  figure = plotting.plot_learning_curves(
      result.rows, run_dir.file('meta_loss.png'), metric='test_loss',
      ylabel=f'meta-test MSE (after N={cfg.num_inner_steps} steps)',
      title=f'Sine regression K={FLAGS.num_support} (mean +- std over '
      f'{len(cfg.seeds)} seeds)')

  shown = sorted({0, 1, 5, FLAGS.kshot_steps} & set(range(FLAGS.kshot_steps + 1)))
  lines = ['| algorithm | ' + ' | '.join(f'k={k}' for k in shown) + ' |',
           '|---|' + '---|' * len(shown)]
  for algorithm, c in curves.items():
    lines.append(f'| {plotting.LABELS.get(algorithm, algorithm)} | ' + ' | '.join(
        f'{c[:, k].mean():.3f} +- {c[:, k].std():.3f}' for k in shown) + ' |')
  summary = common.write_summary(run_dir, f'Sine regression, K = {FLAGS.num_support}', [
      f'{cfg.num_iterations} meta-iterations, N = {cfg.num_inner_steps}, '
      f'{cfg.tasks_per_batch} tasks/iteration, meta optimizer '
      f'{cfg.meta_optimizer}, b = {cfg.num_directions}, seeds {list(cfg.seeds)}'
      f'{", hyperparameters from --sweep (sweep.json)" if cfg.sweep else ""}.'
      f' Meta-test MSE on {num_test_tasks} fixed held-out tasks.',
      common.summary_table(result, metric_label='meta-test MSE after N steps'),
      'Meta-test MSE after k adaptation steps (mean +- std over seeds):\n',
      '\n'.join(lines) + '\n',
      '![meta-test MSE](meta_loss.png) ![k-shot](kshot_mse.png)',
  ])
  print(f'Figures: {figure}, {kshot}, {run_dir.file("sine_fit_*.png")}\n'
        f'Summary: {summary}\nMetrics: {run_dir.file("metrics.csv")}')
  return result


main = common.cli_main(run)

if __name__ == '__main__':
  common.set_defaults(DEFAULTS)
  app.run(main)
