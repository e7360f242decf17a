r"""Rank-one matrix factorization (paper section 5.1, Figure 1).

Task i: z_i ~ N(0, sigma_i^2 I_d), sigma_i ~ U(0, 0.1); loss
l_i(w) = (1/4) ||w w^T - z_i z_i^T||_F^2 with w in R^d (the matrix loss, not
the authors' (1/4)(|w|^2 - |z|^2)^2; docs/design.md, 'The published PyTorch code'). Every meta-iteration
draws fresh tasks, each with an independent support and query draw; the
meta-test loss is the query loss after N inner steps on a fixed set of
held-out tasks, i.e. the meta objective L(w) of eq. (2).

Defaults are the authors' settings: d = 20, N = 3, alpha = 0.01, SGD meta lr
3e-3, b = 10, delta = 1e-2, 10 tasks per meta-iteration, 2000
meta-iterations, 3 seeds.

  python -m experiments.matrix_factorization --workdir=/tmp/mf
  python -m experiments.matrix_factorization --quick     # ~1 minute
  python -m experiments.matrix_factorization --sweep     # paper's lr/delta grid

Inner step sizes (flags shared with the sine launcher): --learn_inner_lr=
scalar|per_layer|per_parameter meta-learns alpha with w_0 by the same meta
optimizer (per_parameter: Meta-SGD; w is one array, so per_layer is one
alpha), --per_step_inner_lr one per inner step (MAML++); the held-out loss
adapts with the learned values. --inner_lrs=a,b,c trains several fixed
alphas as one vmapped program (metrics rows carry inner_lr):

  python -m experiments.matrix_factorization --learn_inner_lr=per_parameter
  python -m experiments.matrix_factorization --inner_lrs=0.003,0.01,0.03,0.1
"""

import functools

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp

import maml_jax as mj
from experiments import cli
from experiments import config
from experiments import launcher_flags
from experiments import plotting
from experiments import problems
from experiments import rundir
from experiments import summaries
from experiments import training

NAME = 'matrix_factorization'
DEFAULTS = dict(
    num_inner_steps=3,
    inner_lr=0.01,
    meta_lr=3e-3,
    meta_optimizer='sgd',
    num_directions=10,
    delta=1e-2,
    tasks_per_batch=10,
    num_iterations=2000,
    eval_every=100,
    num_test_tasks=1000,
    sweep_meta_lrs=['1e-3', '3e-3', '1e-2', '3e-2'],
)
# --quick: a short real comparison for the README (all four algorithms).
QUICK = dict(num_iterations=500, eval_every=50)

launcher_flags.define_training_flags()
launcher_flags.define_inner_lr_flags()
flags.adopt_module_key_flags(launcher_flags)
flags.DEFINE_integer('dim', mj.models.MF_DIM, 'd, the dimension of w and z.')
flags.DEFINE_integer('num_samples', 1,
                     'Draws of z per support/query batch (the loss averages '
                     'over them).')
FLAGS = flags.FLAGS


def make_problem(cfg, *, dim, num_samples, num_test_tasks, eval_seed):
  """(``problems.Problem`` of rank-one matrix factorization, test loss at 0)."""
  sample = functools.partial(mj.tasks.matrix_factorization_tasks, dim=dim,
                             num_samples=num_samples)
  problem, test_tasks, _ = problems.supervised_problem(
      cfg, loss_fn=mj.models.mf_loss,
      init_params=lambda key: mj.models.init_mf_params(key, dim),
      sample=sample, num_test_tasks=num_test_tasks, eval_seed=eval_seed)
  # The meta-test loss at w = 0, (1/4) E|z|^4: w = 0 is a stationary point and
  # the optimum is only (1/4)(E sigma^2)^2 ~ 3e-6 below it.
  zero = jnp.mean(jax.vmap(mj.models.mf_loss, in_axes=(None, 0))(
      jnp.zeros((dim,)), test_tasks.query))
  return problem, float(zero)


def run(argv, chunk_hook=None):
  """``main`` returning the ``training.TrainResult`` (tests, notebooks)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  defaults = launcher_flags.experiment_defaults(DEFAULTS, QUICK)
  cfg = config.training_config(NAME, defaults)
  num_test_tasks = launcher_flags.flag_or_default('num_test_tasks', defaults)
  for name, value in [(n, FLAGS[n].value) for n in ('dim', 'num_samples')] + [
      ('num_test_tasks', num_test_tasks)]:
    if value < 1:
      raise app.UsageError(f'--{name} must be a positive integer, '
                           f'got {value}')
  run_dir = rundir.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=NAME)
  run_dir.write_config(rundir.config_dict(cfg), resume=cfg.resume)
  logging.info('run folder: %s', run_dir.path)
  problem, zero_loss = make_problem(
      cfg, dim=FLAGS.dim, num_samples=FLAGS.num_samples,
      num_test_tasks=num_test_tasks, eval_seed=FLAGS.eval_seed)
  result = training.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)

  figure = plotting.plot_learning_curves(
      result.rows, run_dir.file('meta_loss.png'), metric='test_loss',
      ylabel=f'meta-test loss (after N={cfg.num_inner_steps} steps)',
      title=f'Rank-one matrix factorization, d={FLAGS.dim} '
      f'(mean +- std over {len(cfg.seeds)} seeds)',
      reference=(zero_loss, f'loss at w = 0 ({zero_loss:.3g})'))
  plotting.plot_learning_curves(
      result.rows, run_dir.file('train_loss.png'), metric='train_loss',
      ylabel='train meta loss (chunk mean)',
      title='Rank-one matrix factorization: training tasks')
  summary = summaries.write_summary(run_dir, 'Rank-one matrix factorization', [
      f'{cfg.num_iterations} meta-iterations, N = {cfg.num_inner_steps}, '
      f'{cfg.tasks_per_batch} tasks/iteration, meta optimizer '
      f'{cfg.meta_optimizer}, b = {cfg.num_directions}, seeds {list(cfg.seeds)}'
      f'{", hyperparameters from --sweep (sweep.json)" if cfg.sweep else ""}.'
      f' Meta-test loss on {num_test_tasks} fixed held-out tasks; '
      f'its value at w = 0 is {zero_loss:.4g} (the minimum is ~3e-6 lower).',
      summaries.summary_table(result, cfg=cfg),
      summaries.learned_inner_lr_section(result, cfg),
      '![meta-test loss](meta_loss.png)',
  ])
  print(f'Figure: {figure}\nSummary: {summary}\nMetrics: '
        f'{run_dir.file("metrics.csv")}')
  return result


main = cli.cli_main(run)

if __name__ == '__main__':
  launcher_flags.set_defaults(DEFAULTS)
  app.run(main)
