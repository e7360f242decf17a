r"""K-shot sine-wave regression (paper section 5.2, after Finn et al. 2017).

Tasks: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5];
K = 10 support and 10 query points per task; the model is the Flax MLP
1-40-40-1 with ReLU (``maml_jax.models.SineMLP``); MSE loss. Tasks come from
``maml_jax.tasks.sine_tasks``.

The inner and meta lr of the authors' setup (1e-4) barely learn; the
defaults here are the usual MAML sine setting of Finn et al.: alpha = 0.01,
Adam with meta lr 1e-3, 25 tasks per meta-iteration, N = 3 (the authors' N).
During training the meta-test loss is the query MSE after N steps on a fixed
set of held-out tasks. At the end, every algorithm and seed is evaluated on
the held-out tasks after k = 0..--kshot_steps adaptation steps (kshot.json,
kshot_mse.png), and one held-out task is drawn in the classic picture
(sine_fit_<algorithm>.png).

Inner step sizes (flags shared with the matrix-factorization launcher):
--learn_inner_lr=scalar|per_layer|per_parameter meta-learns alpha with w_0
(per_parameter is Meta-SGD; by default alpha trains at 0.1x the meta lr,
--inner_lr_meta_lr, --inner_lr_optimizer), --per_step_inner_lr gives one per inner step
(MAML++); the held-out evaluation, the k-step curve and the picture adapt
with the learned step sizes, and the curve uses the last step's value for
k > N. --inner_lrs=a,b,c trains and evaluates several fixed alphas as one
vmapped program (one curve and summary line per value).

  python -m experiments.sine --workdir=/tmp/sine
  python -m experiments.sine --quick
  python -m experiments.sine --algorithms=ggs_maml --learn_inner_lr=per_parameter
  python -m experiments.sine --algorithms=maml --inner_lrs=0.003,0.01,0.03,0.1
"""

import functools
import json

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import cli
from experiments import config
from experiments import launcher_flags
from experiments import plotting
from experiments import problems
from experiments import rundir
from experiments import summaries
from experiments import training


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

launcher_flags.define_training_flags()
launcher_flags.define_inner_lr_flags()
flags.adopt_module_key_flags(launcher_flags)
flags.DEFINE_integer('num_support', 10, 'K, support points per task.')
flags.DEFINE_integer('num_query', 10, 'Query points per task.')
flags.DEFINE_integer('kshot_steps', 10,
                     'Largest k of the final MSE-vs-adaptation-steps curve '
                     '(k = 0..kshot_steps, stepsize --inner_lr, or the '
                     "learned ones, the last step's for k > N with "
                     '--per_step_inner_lr).')
FLAGS = flags.FLAGS


def k_step_mse(params, tasks, *, inner_lr, max_steps, num_inner_steps=None):
  """Mean query MSE over ``tasks`` after k = 0..max_steps inner steps [K + 1].

  ``params`` may be ``mj.LearnedInnerLR``: its step sizes are used, and
  per-step ones (a leading axis of length ``num_inner_steps`` = N) use the
  last one, alpha_{N-1}, for the steps k >= N (``mj.adaptation_curve``).
  ``inner_lr`` may be traced.
  """

  def one(support, query):
    return mj.adaptation_curve(
        mj.models.sine_loss, params, support, inner_lr=inner_lr,
        num_inner_steps=max_steps, inner_lr_steps=num_inner_steps,
        evaluate=lambda w: mj.models.sine_loss(w, query)).evaluations

  return jnp.mean(jax.vmap(one)(tasks.support, tasks.query), axis=0)


def make_problem(cfg, *, num_support, num_query, num_test_tasks, eval_seed):
  """The ``problems.Problem`` of sine regression, the held-out test tasks."""
  sample = functools.partial(mj.tasks.sine_tasks, num_support=num_support,
                             num_query=num_query)
  return problems.supervised_problem(
      cfg, loss_fn=mj.models.sine_loss, init_params=mj.models.init_sine_params,
      sample=sample, num_test_tasks=num_test_tasks, eval_seed=eval_seed)


def fit_picture(params, run_dir, algorithm, *, key, num_support, inner_lr,
                steps, num_inner_steps=None):
  """The classic picture for one held-out task and one set of meta params.

  ``algorithm`` names the file and title (an arm name with ``--inner_lrs``);
  ``params`` may be ``mj.LearnedInnerLR`` (as in ``k_step_mse``).
  """
  learned = isinstance(params, mj.LearnedInnerLR)
  amp, phase = mj.tasks.sine_task_params(key, 1)
  support = mj.tasks.sine_points(jax.random.fold_in(key, 7), amp, phase,
                                 num_support)
  support = jax.tree.map(lambda x: x[0], support)
  x = jnp.linspace(*mj.tasks.SINE_X, 200)[:, None]
  curve = mj.adaptation_curve(
      mj.models.sine_loss, params, support, inner_lr=inner_lr,
      num_inner_steps=max(steps), inner_lr_steps=num_inner_steps,
      evaluate=lambda w: mj.models.SineMLP().apply(w, x)[:, 0])
  predictions = {'meta-learned init (k=0)': curve.evaluations[0]}
  for k in steps:
    predictions[f'after {k} step{"s" if k > 1 else ""}'] = curve.evaluations[k]
  alpha_text = (f'learned alpha (init {inner_lr:g})' if learned
                else f'alpha={inner_lr:g}')
  return plotting.plot_sine_fit(
      np.asarray(x[:, 0]), np.asarray(amp[0] * jnp.sin(x[:, 0] - phase[0])),
      (np.asarray(support['x']), np.asarray(support['y'])),
      {k: np.asarray(v) for k, v in predictions.items()},
      run_dir.file(f'sine_fit_{algorithm.replace("@alpha=", "_alpha")}.png'),
      title=f'{summaries.arm_label(algorithm.partition("@")[0])}: '
      f'K={num_support} held-out task, {alpha_text}')


def run(argv, chunk_hook=None):
  """``main`` returning the ``training.TrainResult`` (tests, notebooks)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  defaults = launcher_flags.experiment_defaults(DEFAULTS, QUICK)
  cfg = config.training_config(NAME, defaults)
  num_test_tasks = launcher_flags.flag_or_default('num_test_tasks', defaults)
  for name, value in [(n, FLAGS[n].value) for n in (
      'num_support', 'num_query', 'kshot_steps')] + [
          ('num_test_tasks', num_test_tasks)]:
    if value < 1:
      raise app.UsageError(f'--{name} must be a positive integer, '
                           f'got {value}')
  run_dir = rundir.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=NAME)
  run_dir.write_config(rundir.config_dict(cfg), resume=cfg.resume)
  logging.info('run folder: %s', run_dir.path)
  problem, test_tasks, test_key = make_problem(
      cfg, num_support=FLAGS.num_support, num_query=FLAGS.num_query,
      num_test_tasks=num_test_tasks, eval_seed=FLAGS.eval_seed)
  result = training.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)

  # Meta-test MSE after k = 0..kshot_steps steps, every arm and seed; an
  # --inner_lrs grid is one vmapped program per algorithm over (alpha, seed).
  curves = {}
  curve = functools.partial(k_step_mse, tasks=test_tasks,
                            max_steps=FLAGS.kshot_steps,
                            num_inner_steps=cfg.num_inner_steps)
  for algorithm, state in result.states.items():
    if result.inner_lrs:
      lrs = jnp.repeat(jnp.asarray(result.inner_lrs, jnp.float32),
                       len(cfg.seeds))
      mse = np.asarray(jax.jit(jax.vmap(
          lambda p, lr: curve(p, inner_lr=lr)))(state.params, lrs))
      for i, lr in enumerate(result.inner_lrs):
        curves[summaries.arm_name(algorithm, lr)] = mse[
            i * len(cfg.seeds):(i + 1) * len(cfg.seeds)]
    else:
      curves[algorithm] = np.asarray(jax.jit(jax.vmap(functools.partial(
          curve, inner_lr=result.hparams[algorithm].inner_lr)))(state.params))
  for arm in result.arms():
    fit_picture(jax.tree.map(lambda x: x[0], arm.params), run_dir, arm.name,
                key=jax.random.fold_in(test_key, 99),
                num_support=FLAGS.num_support, inner_lr=arm.inner_lr,
                steps=(1, FLAGS.kshot_steps),
                num_inner_steps=cfg.num_inner_steps)
  kshot_info = {
      'steps': list(range(FLAGS.kshot_steps + 1)),
      'seeds': list(cfg.seeds),
      'num_test_tasks': num_test_tasks,
      'mse': {a: c.tolist() for a, c in curves.items()}}
  if cfg.learned:
    kshot_info['learn_inner_lr'] = cfg.learn_inner_lr
    kshot_info['per_step_inner_lr'] = cfg.per_step_inner_lr
    if cfg.per_step_inner_lr:
      kshot_info['note'] = (f'steps k > N = {cfg.num_inner_steps} use the '
                            "last step's learned step sizes")
  if result.inner_lrs:
    kshot_info['inner_lrs'] = list(result.inner_lrs)
  rundir.atomic_write_text(run_dir.file('kshot.json'),
                           json.dumps(kshot_info, indent=1) + '\n')
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
    lines.append(f'| {summaries.arm_label(algorithm)} | ' + ' | '.join(
        f'{c[:, k].mean():.3f} +- {c[:, k].std():.3f}' for k in shown) + ' |')
  summary = summaries.write_summary(
      run_dir, f'Sine regression, K = {FLAGS.num_support}', [
      f'{cfg.num_iterations} meta-iterations, N = {cfg.num_inner_steps}, '
      f'{cfg.tasks_per_batch} tasks/iteration, meta optimizer '
      f'{cfg.meta_optimizer}, b = {cfg.num_directions}, seeds {list(cfg.seeds)}'
      f'{", hyperparameters from --sweep (sweep.json)" if cfg.sweep else ""}.'
      f' Meta-test MSE on {num_test_tasks} fixed held-out tasks.',
      summaries.summary_table(
          result, metric_label='meta-test MSE after N steps', cfg=cfg),
      summaries.learned_inner_lr_section(result, cfg),
      'Meta-test MSE after k adaptation steps (mean +- std over seeds):\n',
      '\n'.join(lines) + '\n',
      '![meta-test MSE](meta_loss.png) ![k-shot](kshot_mse.png)',
  ])
  print(f'Figures: {figure}, {kshot}, {run_dir.file("sine_fit_*.png")}\n'
        f'Summary: {summary}\nMetrics: {run_dir.file("metrics.csv")}')
  return result


main = cli.cli_main(run)

if __name__ == '__main__':
  launcher_flags.set_defaults(DEFAULTS)
  app.run(main)
