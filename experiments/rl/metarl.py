"""Meta-RL with maml_jax: rollouts, the inner surrogate, the sampler, the TRPO meta-step.

The whole meta-iteration is one pure function of (TrainState, key), compiled
once; any number of iterations run in one ``lax.scan``.

Inner loss (REINFORCE with a baseline, as in MAML-RL): on a batch of episodes
collected with the current inner parameters w_j,

    l(w; S) = - mean_{e, t} log pi_w(a_t^e | s_t^e) A_t^e,

A the GAE(gamma, tau) advantages from the task's linear feature baseline
(fitted on the same episodes), normalised to zero mean and unit variance over
the batch. The sampler ``sampler(params, goal, key) -> batch`` rolls out
``num_episodes`` episodes and returns ``{'obs', 'actions', 'advantages',
'rewards'}``; maml_jax calls it at w_j for S_j (and D_j) and at w_N for T
(``mj.Sampled``), always under ``stop_gradient``: like MAML-RL, the meta-
gradient ignores the score-function term of the sampling distribution of S_j.

Meta-gradient: ``mj.meta_gradient`` of the chosen estimator (maml, fo_maml,
zo_maml, ggs_maml, hf_maml) with that same loss as the query loss l(w_N; T).
At w its gradient equals the gradient of MAML-RL's importance-weighted TRPO
surrogate (the ratio pi_{w_N(w)} / pi_{w_N(w_old)} is 1 at w = w_old, where
grad ratio = grad log pi), so the estimator's output is (an estimate of) the
TRPO gradient, with that estimator's Hessian terms.

TRPO meta-step (``trpo.trpo_step``), what is exact and what is not:
- Line search (15 x 0.8, accept iff the surrogate decreases and KL < max_kl):
  evaluated THROUGH the adaptation for every estimator, exactly as MAML-RL:
  at trial parameters w' the inner steps are re-run on the stored episodes
  S_j (first-order gradients only), then the importance-weighted surrogate
  -mean(pi_{w'_N}/pi_{w_N} A) and mean KL(pi_{w_N} || pi_{w'_N}) are taken on
  the query episodes T. So no accepted step exceeds the KL bound.
- CG metric (the KL Hessian-vector products, 10 CG iterations, damping 1e-5):
  ``kl_hvp='adapted'`` (default) uses the mean over tasks of the Hessian of
  KL(pi_{w_N} || pi_theta) in theta at theta = w_N, i.e. the Fisher matrix of
  each adapted policy (``fisher_vector_product``), applied to vectors of the
  meta-parameter space: it takes d w_N / d w = I. This needs no second-order
  information through the inner loop, so the Hessian-free arms stay
  Hessian-free and every arm gets the same TRPO. By default the products use
  the first ``cg_subsample`` = 20% of each task's query episodes (as OpenAI
  Baselines' TRPO uses every 5th state); 1.0 uses all of them.
  ``kl_hvp='through_adaptation'`` is MAML-RL's exact choice: the Hessian of
  KL(pi_{w_N(w_old)} || pi_{w_N(w)}) in w on all query states, which
  differentiates through the inner gradient steps (third-order derivatives
  of log pi) whatever the estimator.
The estimators are built with ``keep_batches=True``, so they hand back the
episodes S_j and T they sampled and the adapted parameters w_N
(``aux.per_task``); the TRPO step uses those very episodes and samples
nothing itself (checked in tests/experiments/test_rl_metarl.py).

Every episode simulated in a meta-iteration is one the algorithm needs
(S_j, D_j, T): the surrogate loss at w_0 on a query batch sampled at w_0
(``aux.query_loss_before``) would cost one more rollout per task, so the
estimators are built with ``loss_before=False``. The pre-update performance
is reported instead as ``returns[0]``, the mean return of the support
episodes S_0, which are sampled at w_0 anyway.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import maml_jax as mj
from experiments.rl import baseline as baseline_lib
from experiments.rl import gae as gae_lib
from experiments.rl import policy as policy_lib
from experiments.rl import trpo as trpo_lib

OUTER_OPTIMIZERS = ('trpo', 'adam')
KL_HVPS = ('adapted', 'through_adaptation')


class Episodes(NamedTuple):
  """A batch of episodes: obs [E, T, d], actions [E, T, a], rewards [E, T]."""
  obs: jax.Array
  actions: jax.Array
  rewards: jax.Array


class RLConfig(NamedTuple):
  """Static settings of meta-RL training (defaults: MAML-RL, 2D navigation)."""
  algorithm: str = 'maml'
  num_tasks: int = 20
  num_episodes: int = 20
  num_inner_steps: int = 1
  inner_lr: float = 0.1
  gamma: float = 0.95
  gae_tau: float = 1.0
  baseline_reg: float = 1e-5
  separate_hessian_batch: bool = True
  num_directions: int = 10
  delta: float = 1e-2
  outer_optimizer: str = 'trpo'
  outer_lr: float = 1e-3
  max_kl: float = 1e-2
  cg_iters: int = 10
  cg_damping: float = 1e-5
  ls_max_steps: int = 15
  ls_backtrack_ratio: float = 0.8
  kl_hvp: str = 'adapted'
  cg_subsample: float = 0.2
  hidden: tuple = (100, 100)
  remat: bool = False


def validate_config(cfg: RLConfig):
  """Raises ``ValueError`` on any invalid setting (fail fast, before compiling)."""
  if cfg.algorithm not in mj.ESTIMATORS:
    raise ValueError(f'unknown algorithm {cfg.algorithm!r}; one of '
                     f'{mj.ESTIMATORS}')
  if cfg.outer_optimizer not in OUTER_OPTIMIZERS:
    raise ValueError(f'outer_optimizer must be one of {OUTER_OPTIMIZERS}')
  if cfg.kl_hvp not in KL_HVPS:
    raise ValueError(f'kl_hvp must be one of {KL_HVPS}')
  for name in ('num_tasks', 'num_episodes', 'num_inner_steps', 'num_directions',
               'cg_iters', 'ls_max_steps'):
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')
  for name in ('inner_lr', 'delta', 'outer_lr', 'max_kl'):
    if not getattr(cfg, name) > 0:
      raise ValueError(f'{name} must be > 0, got {getattr(cfg, name)!r}')
  if not 0 < cfg.gamma <= 1 or not 0 <= cfg.gae_tau <= 1:
    raise ValueError('need 0 < gamma <= 1 and 0 <= gae_tau <= 1')
  if not 0 < cfg.cg_subsample <= 1:
    raise ValueError('cg_subsample must be in (0, 1]')
  if not 0 < cfg.ls_backtrack_ratio < 1:
    raise ValueError('ls_backtrack_ratio must be in (0, 1)')
  if cfg.cg_damping < 0 or cfg.baseline_reg < 0:
    raise ValueError('cg_damping and baseline_reg must be >= 0')
  return cfg


def rollout(env, policy, params, task, key, num_episodes):
  """``num_episodes`` episodes of ``env`` for ONE task with the Gaussian policy.

  ``lax.scan`` over the horizon of the step vmapped over episodes.
  """
  k_reset, k_act = jax.random.split(key)
  state = jax.vmap(env.reset, in_axes=(None, 0))(
      task, jax.random.split(k_reset, num_episodes))

  def body(state, k):
    obs = jax.vmap(env.observe)(state)
    mean, log_std = policy.apply(params, obs)
    action = policy_lib.sample_action(mean, log_std, k)
    state, reward = jax.vmap(env.step, in_axes=(0, 0, None))(state, action, task)
    return state, (obs, action, reward)

  _, (obs, actions, rewards) = jax.lax.scan(
      body, state, jax.random.split(k_act, env.horizon))
  swap = lambda x: jnp.swapaxes(x, 0, 1)
  return Episodes(swap(obs), swap(actions), swap(rewards))


def advantages(episodes, *, gamma, gae_tau, baseline_reg, normalize=True):
  """GAE advantages [E, T] from the task's linear baseline fitted on ``episodes``."""
  returns = jax.vmap(gae_lib.discounted_returns, in_axes=(0, None))(
      episodes.rewards, gamma)
  coef = baseline_lib.fit_linear_baseline(episodes.obs, returns, baseline_reg)
  values = baseline_lib.predict_linear_baseline(coef, episodes.obs)
  adv = jax.vmap(gae_lib.gae_advantages, in_axes=(0, 0, None, None))(
      episodes.rewards, values, gamma, gae_tau)
  if normalize:
    adv = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
  return adv


def make_sampler(env, policy, cfg: RLConfig):
  """``sampler(params, task, key) -> batch`` for ``mj.Sampled`` tasks."""

  def sampler(params, task, key):
    episodes = rollout(env, policy, params, task, key, cfg.num_episodes)
    adv = advantages(episodes, gamma=cfg.gamma, gae_tau=cfg.gae_tau,
                     baseline_reg=cfg.baseline_reg)
    return {'obs': episodes.obs, 'actions': episodes.actions,
            'advantages': adv, 'rewards': episodes.rewards}

  return sampler


def make_loss(policy):
  """The inner (and query) loss -mean(log pi(a|s) A) of a sampled batch."""

  def loss_fn(params, batch):
    mean, log_std = policy.apply(params, batch['obs'])
    logp = policy_lib.gaussian_log_prob(mean, log_std, batch['actions'])
    return -jnp.mean(logp * batch['advantages'])

  return loss_fn


# The RL config's fields that are estimator hyperparameters; each estimator
# gets those it takes (``mj.estimator_kwargs``).
_ESTIMATOR_FIELDS = ('inner_lr', 'num_inner_steps', 'num_directions', 'delta',
                     'remat')


def make_estimator(loss_fn, sampler, cfg: RLConfig, *, loss_before=False):
  """The maml_jax estimator ``cfg.algorithm`` (``mj.make_estimator``).

  Built with the RL sampler and ``keep_batches=True`` (the TRPO step reuses
  the episodes). ``loss_before=False``: no query rollout at w_0 (see the
  module docstring); True only where l(w_0; T) itself is wanted (a test).
  """
  hyperparams = mj.estimator_kwargs(
      cfg.algorithm, **{name: getattr(cfg, name) for name in _ESTIMATOR_FIELDS})
  return mj.make_estimator(cfg.algorithm, loss_fn, sampler=sampler,
                           keep_batches=True, loss_before=loss_before,
                           **hyperparams)


def uses_hessian_batch(cfg: RLConfig):
  """Whether the estimator has Hessian terms (so D_j is sampled at all)."""
  return cfg.algorithm != 'fo_maml'


def make_tasks(goals, cfg: RLConfig):
  """``mj.Task`` with sampled S_j, T and (separate, unless disabled) D_j."""
  hessian = (mj.Sampled(goals)
             if cfg.separate_hessian_batch and uses_hessian_batch(cfg) else None)
  return mj.Task(support=mj.Sampled(goals), query=mj.Sampled(goals),
                 hessian=hessian)


def fisher_vector_product(apply_fn, thetas, obs):
  """``v -> F v``, F the mean over tasks of each adapted policy's Fisher matrix.

  For task i, F_i is the Hessian in theta of mean_s KL(pi_{theta_i}(.|s) ||
  pi_theta(.|s)) at theta = theta_i (the KL's gradient in the policy outputs
  vanishes there, so the Hessian is exactly Gauss-Newton): F_i v = J^T M J v,
  J the Jacobian of (mean, log_std) in theta, M = diag(1/sigma^2, 2) / #states.
  ``v`` lives in the meta-parameter space (d w_N / d w taken as I). The
  linearisation is computed once; each product costs one JVP and one VJP.

  Args:
    apply_fn: ``apply_fn(theta, obs) -> (mean, log_std)``.
    thetas: adapted parameters with a leading task axis [num_tasks, ...].
    obs: observations [num_tasks, E, T, d].

  Returns:
    The linear map ``v -> (1/num_tasks) sum_i F_i v``.
  """
  num_tasks = obs.shape[0]
  outputs = lambda ts: jax.vmap(apply_fn)(ts, obs)
  (mean, log_std), out_jvp = jax.linearize(outputs, thetas)
  out_vjp = jax.linear_transpose(out_jvp, thetas)
  num_states = mean.size // mean.shape[-1]
  m_mean = jnp.exp(-2 * log_std) / num_states
  m_log_std = jnp.full_like(log_std, 2.0 / num_states)

  def fvp(v):
    tangent = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (num_tasks,) + x.shape), v)
    d_mean, d_log_std = out_jvp(tangent)
    (cot,) = out_vjp((m_mean * d_mean, m_log_std * d_log_std))
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), cot)

  return fvp


class MetaRL(NamedTuple):
  """Everything built from a config: pure functions, closed over static settings."""
  cfg: RLConfig
  env: Any
  policy: Any
  loss_fn: Any
  sampler: Any
  estimator: Any
  optimizer: Any
  init: Any       # key -> TrainState
  iteration: Any  # (TrainState, key) -> (TrainState, metrics)


def build(env, cfg: RLConfig, *, mesh=None) -> MetaRL:
  """Builds the meta-RL training functions for ``env`` and ``cfg``.

  With a task ``mesh`` (``mj.task_mesh()``), each iteration's tasks (goals
  and their episodes) are split over its devices, on one process or many.
  """
  validate_config(cfg)
  policy = policy_lib.GaussianMLPPolicy(action_dim=env.action_dim,
                                        hidden=tuple(cfg.hidden))
  loss_fn = make_loss(policy)
  sampler = make_sampler(env, policy, cfg)
  estimator = make_estimator(loss_fn, sampler, cfg)
  num_steps = cfg.num_inner_steps
  optimizer = optax.adam(cfg.outer_lr) if cfg.outer_optimizer == 'adam' else None

  def init(key):
    params = policy_lib.init_policy(policy, key, env.obs_dim)
    opt_state = optimizer.init(params) if optimizer is not None else ()
    return mj.TrainState(params=params, opt_state=opt_state,
                         iteration=jnp.zeros((), jnp.int32))

  def adapt_on(params, support):
    """w_N(params) on the stored episodes S_j (deterministic, differentiable)."""
    w_n, _ = mj.adapt(loss_fn, params, mj.PerStep(support),
                      inner_lr=cfg.inner_lr, num_inner_steps=num_steps)
    return w_n

  def policy_dist(params, obs):
    return policy.apply(params, obs)

  def iteration(state, key):
    k_tasks, k_est = mj.iteration_keys(key, state.iteration)
    goals = env.sample_tasks(k_tasks, cfg.num_tasks)
    tasks = make_tasks(goals, cfg)
    if mesh is not None:
      tasks = mj.constrain_tasks(tasks, mesh)
    params = state.params
    grads, aux = mj.meta_gradient(estimator, params, tasks, k_est)
    # The episodes the estimator sampled (S_j [tasks, N, ...], T) and its w_N.
    support = aux.per_task.support_batches
    query = aux.per_task.query_batch
    adapted_old = aux.per_task.adapted_params
    # Undiscounted return per episode, averaged, at w_0 .. w_{N-1} and w_N.
    returns = jnp.concatenate([
        jnp.mean(jnp.sum(support['rewards'], -1), axis=(0, 2, )),
        jnp.mean(jnp.sum(query['rewards'], -1))[None]])
    # No 'loss_before': returns[0] is the pre-update measure (module docstring).
    metrics = {'returns': returns, 'loss_after': aux.query_loss_after,
               'grad_norm': optax.tree.norm(grads),
               'num_nonfinite': aux.num_nonfinite}

    if cfg.outer_optimizer == 'adam':
      updates, opt_state = optimizer.update(grads, state.opt_state, params)
      new_params = optax.apply_updates(params, updates)
      new_state = mj.TrainState(new_params, opt_state, state.iteration + 1)
      return new_state, metrics

    old_mean, old_log_std = jax.lax.stop_gradient(
        jax.vmap(policy_dist)(adapted_old, query['obs']))
    old_logp = policy_lib.gaussian_log_prob(old_mean, old_log_std, query['actions'])

    def task_loss_kl(w_n, q, o_mean, o_log_std, o_logp):
      mean, log_std = policy_dist(w_n, q['obs'])
      logp = policy_lib.gaussian_log_prob(mean, log_std, q['actions'])
      loss = -jnp.mean(jnp.exp(logp - o_logp) * q['advantages'])
      kl = jnp.mean(policy_lib.gaussian_kl(o_mean, o_log_std, mean, log_std))
      return loss, kl

    def loss_and_kl(w):
      adapted = jax.vmap(adapt_on, in_axes=(None, 0))(w, support)
      loss, kl = jax.vmap(task_loss_kl)(adapted, query, old_mean, old_log_std,
                                        old_logp)
      return jnp.mean(loss), jnp.mean(kl)

    if cfg.kl_hvp == 'through_adaptation':
      kl_fn = lambda w: loss_and_kl(w)[1]
      kl_hvp = lambda v: jax.jvp(jax.grad(kl_fn), (params,), (v,))[1]
    else:
      num_sub = max(1, int(round(cfg.cg_subsample * cfg.num_episodes)))
      kl_hvp = fisher_vector_product(policy.apply, adapted_old,
                                     query['obs'][:, :num_sub])

    # At w_old every ratio is 1, so the surrogate is -mean(A): no need to re-run
    # the adaptation (a gradient on every support state) to get it.
    old_loss = jnp.mean(-jnp.mean(query['advantages'], axis=(1, 2)))
    new_params, info = trpo_lib.trpo_step(
        params, grads, kl_hvp, loss_and_kl, max_kl=cfg.max_kl,
        cg_iters=cfg.cg_iters, cg_damping=cfg.cg_damping,
        ls_max_steps=cfg.ls_max_steps, ls_backtrack_ratio=cfg.ls_backtrack_ratio,
        old_loss=old_loss)
    # TRPO bounds the KL of the *adapted* policies; also report how far the
    # pre-update policy moved (KL on the states of S_0), which it does not bound.
    pre_obs = support['obs'][:, 0]
    kl_pre = jnp.mean(policy_lib.gaussian_kl(*policy_dist(params, pre_obs),
                                             *policy_dist(new_params, pre_obs)))
    metrics.update({'trpo_accepted': info.accepted, 'trpo_step_frac': info.step_frac,
                    'trpo_kl': info.kl, 'trpo_improve': info.improve,
                    'trpo_kl_pre_update': kl_pre})
    return mj.TrainState(new_params, state.opt_state, state.iteration + 1), metrics

  return MetaRL(cfg=cfg, env=env, policy=policy, loss_fn=loss_fn, sampler=sampler,
                estimator=estimator, optimizer=optimizer, init=init,
                iteration=iteration)


def make_fused(meta: MetaRL, num_iterations):
  """jit ``(state, key) -> (state, stacked metrics)`` over ``num_iterations``."""

  def run(state, key):
    return jax.lax.scan(lambda s, _: meta.iteration(s, key), state, None,
                        length=num_iterations)

  return jax.jit(run)


def evaluate(meta: MetaRL, params, key, *, num_tasks, num_steps):
  """Returns [num_steps + 1] on fresh tasks after 0..num_steps inner steps.

  The mean over tasks of :func:`evaluate_tasks`' returns, with its goals and
  positions (``[num_tasks, num_steps + 1, E, T, obs_dim]``, for trajectory
  pictures).
  """
  returns, goals, obs = evaluate_tasks(meta, params, key, num_tasks=num_tasks,
                                       num_steps=num_steps)
  return jnp.mean(returns, axis=0), goals, obs


def evaluate_tasks(meta: MetaRL, params, key, *, num_tasks, num_steps):
  """Per-task returns ``[num_tasks, num_steps + 1]`` after 0..num_steps steps.

  Fresh episodes (``cfg.num_episodes`` per task) at every step, as in training;
  each entry is the mean return of a task's episodes. ``key`` fixes the tasks
  and the episodes' noise, so two parameter sets evaluated with one key face
  the same tasks (paired comparisons). Also returns the goals and the
  positions of the episodes at every step.

  The episodes are the support batches of ``mj.adaptation_curve`` run for
  K + 1 = ``num_steps`` + 1 steps: S_k is drawn at w_k, k = 0..K (the update
  of the last step is not used).
  """
  cfg = meta.cfg
  k_tasks, k_run = jax.random.split(key)
  goals = meta.env.sample_tasks(k_tasks, num_tasks)

  def one_task(goal, k):
    episodes = mj.adaptation_curve(
        meta.loss_fn, params, mj.Sampled(goal), inner_lr=cfg.inner_lr,
        num_inner_steps=num_steps + 1, sampler=meta.sampler, key=k,
        keep_batches=True).support_batches
    return jnp.mean(jnp.sum(episodes['rewards'], -1), axis=-1), episodes['obs']

  returns, obs = jax.vmap(one_task)(goals, jax.random.split(k_run, num_tasks))
  return returns, goals, obs
