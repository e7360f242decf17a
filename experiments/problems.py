"""What a supervised launcher tells ``training`` about its experiment.

A launcher describes its experiment as a ``Problem``: the loss, the initial
parameters, an on-device task sampler and the held-out evaluation.
``supervised_problem`` builds one for tasks with fixed support/query batches
(sine, matrix factorization), whose held-out metric is the query loss after
``held_out_loss``'s adaptation; the few-shot launcher builds its own.
"""

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

import maml_jax as mj


class Problem(NamedTuple):
  """What a launcher tells ``training.train`` about its experiment.

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
    has_aux: ``loss_fn`` returns ``(loss, {name: scalar})`` (e.g. accuracy);
      the estimators are built with ``has_aux=True`` and the metric rows get
      ``train_<name>``, the mean over the chunk of the query aux after
      adaptation.
    task_batching: how the task axis of a meta-gradient is batched
      (``mj.meta_gradient``); 'auto' (default) picks 'vmap' for MLPs and
      'map' for conv nets on CPU.
    member_batching: how the members (seeds, grid points) of a chunk run:
      'vmap' (one batched program, right for small models) or 'map'
      (``lax.map``, one after another: a vmapped conv net with per-seed
      weights runs grouped convolutions, slow on CPU).
  """
  loss_fn: Callable
  init_params: Callable
  sample_tasks: Callable
  evaluate: Callable
  validate: Optional[Callable] = None
  sampler: Optional[Callable] = None
  has_aux: bool = False
  task_batching: object = 'auto'
  member_batching: str = 'vmap'


def split_meta_params(params, inner_lr=None):
  """(w_0, alpha): of ``mj.LearnedInnerLR`` params, else (params, inner_lr)."""
  if isinstance(params, mj.LearnedInnerLR):
    return params.params, params.inner_lr
  return params, inner_lr


def held_out_loss(loss_fn, params, tasks, *, inner_lr, num_inner_steps):
  """Mean query loss over ``tasks`` before and after ``num_inner_steps`` (mj.adapt).

  ``params`` may be ``mj.LearnedInnerLR`` (then its step sizes are used);
  ``inner_lr`` may be a float or a traced scalar (``--inner_lrs``).
  """
  w0, _ = split_meta_params(params)

  def one(support, query):
    adapted, _ = mj.adapt(loss_fn, params, support, inner_lr=inner_lr,
                          num_inner_steps=num_inner_steps)
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
