"""What one algorithm's meta-training is built of, from the ``TrainConfig``.

The estimator (``make_estimator``: the library's registry with the
launcher's hyperparameters; ``estimator``: the one of a ``problems.Problem``),
the meta optimizer (``make_optimizer``, ``meta_optimizer``: with
``--learn_inner_lr`` the step sizes get their own) and the initial meta
parameters (``meta_params``). ``training.sweep`` and ``training.train`` build
every arm from these.
"""

import optax

import maml_jax as mj
from experiments import launcher_flags


def make_estimator(algorithm, loss_fn, *, inner_lr, num_inner_steps,
                   num_directions, delta, sampler=None, remat=False,
                   has_aux=False, loss_before=True):
  """The ``maml_jax`` estimator named ``algorithm`` (one of ``mj.ESTIMATORS``).

  Built by the library's registry (``mj.make_estimator``) from the launcher's
  hyperparameters, passing only those the estimator takes
  (``mj.estimator_kwargs``): no delta to MAML, no b to HF-MAML.
  ``inner_lr`` may be a float, an array or tracer (``--inner_lrs``), or None
  (the step sizes come with ``mj.LearnedInnerLR`` params). ``loss_before``:
  the launchers log the query loss at w_0 ('train_loss_before' in
  metrics.jsonl), one forward pass of the query batch per task that the
  library computes only when asked.
  """
  return mj.make_estimator(algorithm, loss_fn, **mj.estimator_kwargs(
      algorithm, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
      num_directions=num_directions, delta=delta, sampler=sampler,
      remat=remat, has_aux=has_aux, loss_before=loss_before))


def make_optimizer(name, learning_rate):
  """``optax.<name>`` with its learning rate held in the optimizer state.

  ``optax.inject_hyperparams`` keeps the learning rate an array of the state,
  so states with different learning rates share one compiled update (used by
  ``--sweep`` to train every candidate meta lr in one vmapped call).
  """
  launcher_flags.check_optimizer_name(name)
  return optax.inject_hyperparams(getattr(optax, name))(
      learning_rate=learning_rate)


def meta_optimizer(cfg, meta_lr):
  """The meta optimizer of ``cfg`` with w_0's learning rate ``meta_lr``.

  ``make_optimizer(cfg.meta_optimizer, meta_lr)``; with ``--learn_inner_lr``
  the step sizes get their own (``mj.partition_inner_lr``):
  ``--inner_lr_optimizer`` at ``--inner_lr_meta_lr``, by default the same
  optimizer at ``launcher_flags.INNER_LR_META_LR_SCALE`` x ``meta_lr``
  (EXPERIMENTS.md, 'Learned step sizes that train'). Both learning rates are
  state arrays, so ``--sweep`` vmaps over ``meta_lr``.
  """
  optimizer = make_optimizer(cfg.meta_optimizer, meta_lr)
  if not cfg.learned:
    return optimizer
  name, lr = cfg.inner_lr_hparams(meta_lr)
  return mj.partition_inner_lr(optimizer, make_optimizer(name, lr))


def meta_params(params, cfg, inner_lr):
  """The meta parameters of one member: w_0, or with ``--learn_inner_lr``
  ``mj.LearnedInnerLR(w_0, step sizes of that kind, all = inner_lr)``."""
  if not cfg.learned:
    return params
  return mj.LearnedInnerLR(params, mj.init_inner_lr(
      params, inner_lr, cfg.learn_inner_lr,
      num_inner_steps=cfg.num_inner_steps if cfg.per_step_inner_lr else None))


def estimator(problem, cfg, algorithm, inner_lr, delta):
  """The estimator of ``algorithm``; learned step sizes come with the params."""
  return make_estimator(
      algorithm, problem.loss_fn, inner_lr=None if cfg.learned else inner_lr,
      num_inner_steps=cfg.num_inner_steps, num_directions=cfg.num_directions,
      delta=delta, sampler=problem.sampler, remat=cfg.remat,
      has_aux=problem.has_aux)
