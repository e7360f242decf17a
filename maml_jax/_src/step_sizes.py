"""Inner step sizes alpha_j: fixed or learned, scalar, per layer, per parameter, per step.

docs/design.md, 'Step sizes' (Meta-SGD, MAML++). The inner step is

    w_{j+1} = w_j - alpha_j ⊙ g_j,        g_j = grad l(w_j; S_j)

with alpha_j broadcast elementwise against the parameters. Its Jacobian is
I - diag(alpha_j) H_j, so the backward recursion of eq. (8)/(19) reads

    v_j = v_{j+1} - H_j (alpha_j ⊙ v_{j+1}),    dL/d alpha_j = -g_j ⊙ v_{j+1}

summed over the entries that share one step size. ``StepSizes`` resolves the
form of ``inner_lr`` once, at trace time, from its shapes and the parameters':

  scalar         a Python number or a 0-d array: one alpha for everything;
  per_layer      a pytree shaped like ``params`` with one scalar per leaf;
  per_parameter  a pytree shaped like ``params`` (Meta-SGD);

each optionally with a leading axis of length N (one value per inner step, as
in MAML++): a [N] array, or a pytree whose leaves are [N] or [N, *leaf.shape].
When a parameter leaf itself has shape [N] the per-parameter reading wins.
"""

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from maml_jax._src import validation

SCALAR = 'scalar'
PER_LAYER = 'per_layer'
PER_PARAMETER = 'per_parameter'


class LearnedInnerLR(NamedTuple):
  """Meta-parameters that include the inner step sizes: (w_0, alpha).

  Pass one to any estimator in place of ``params`` and the estimator uses
  ``inner_lr`` for its inner steps and returns its meta-gradient as a
  ``LearnedInnerLR`` too: the gradient w.r.t. w_0 in ``params`` and the
  gradient w.r.t. the step sizes in ``inner_lr`` (shaped like ``inner_lr``).
  An Optax optimizer then updates both; at N >= 2 inner steps give the step
  sizes their own, smaller learning rate (``partition_inner_lr``).

  Attributes:
    params: w_0, the model's meta parameters (any pytree).
    inner_lr: alpha: a scalar; a pytree shaped like ``params`` (Meta-SGD, one
      step size per parameter); a pytree with one scalar per leaf of
      ``params`` (per layer); or any of these with a leading axis of length
      N = num_inner_steps (one per inner step, as in MAML++).

  Example:
    >>> meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.01,
    ...                                                   'per_parameter'))
    >>> grads, aux = est(meta, task, key)   # grads.inner_lr like meta.inner_lr
  """
  params: Any
  inner_lr: Any


KINDS = (SCALAR, PER_LAYER, PER_PARAMETER)

# Labels of ``partition_inner_lr``.
PARAMS_LABEL = 'params'
INNER_LR_LABEL = 'inner_lr'


def _labels(meta_params):
  if isinstance(meta_params, LearnedInnerLR):
    return LearnedInnerLR(PARAMS_LABEL, INNER_LR_LABEL)
  return PARAMS_LABEL  # plain w_0: all of it is 'params'


def partition_inner_lr(
    params_optimizer: optax.GradientTransformation,
    inner_lr_optimizer: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """One meta optimizer that updates w_0 and the learned step sizes apart.

  An ``optax.multi_transform`` that gives ``LearnedInnerLR.params`` (w_0) to
  ``params_optimizer`` and ``LearnedInnerLR.inner_lr`` (alpha) to
  ``inner_lr_optimizer``, each with its own state. Plain parameters (not a
  ``LearnedInnerLR``) all go to ``params_optimizer``.

  Why (docs/design.md, 'Step sizes'): Adam moves every coordinate by about
  its learning rate per iteration, whatever the size of its gradient. With
  step sizes that start at 0.01, a meta lr of 1e-3 changes each of them by
  about 10% per iteration; at N >= 2 inner steps some reach the values
  where the inner loop of a task diverges within a few hundred iterations
  (Meta-SGD on sine at N = 3). The same Adam with a 10x smaller learning
  rate for the step sizes trains them stably. ``inner_lr_optimizer`` may
  also be chained with ``optax.keep_params_nonnegative()`` or anything else
  that acts on the step sizes alone.

  Args:
    params_optimizer: the optimizer of w_0 (e.g. ``optax.adam(1e-3)``).
    inner_lr_optimizer: the optimizer of the step sizes (e.g.
      ``optax.adam(1e-4)``).

  Returns:
    An ``optax.GradientTransformation`` to use with ``LearnedInnerLR`` meta
    parameters (``init_train_state``, ``make_train_step``,
    ``make_fused_train``); ``state.inner_states`` holds the two states,
    under 'params' and 'inner_lr'.

  Example:
    >>> meta = mj.LearnedInnerLR(params, mj.init_inner_lr(params, 0.01))
    >>> opt = mj.partition_inner_lr(optax.adam(1e-3), optax.adam(1e-4))
    >>> state = mj.init_train_state(meta, opt)
  """
  return optax.multi_transform(
      {PARAMS_LABEL: params_optimizer, INNER_LR_LABEL: inner_lr_optimizer},
      _labels)


def init_inner_lr(params, value: float, kind: str = PER_PARAMETER,
                  num_inner_steps=None, *, num_steps=None):
  """Initial step sizes of the given ``kind``, all equal to ``value``.

  Args:
    params: the meta parameters w_0 (a pytree of arrays); dtypes are kept.
    value: the initial alpha.
    kind: 'scalar', 'per_layer' or 'per_parameter' (Meta-SGD).
    num_inner_steps: if given, N: a leading axis of this length, one step
      size per inner step (MAML++).
    num_steps: the old name of ``num_inner_steps`` (deprecated: it warns).

  Returns:
    A pytree to use as ``LearnedInnerLR.inner_lr``.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}.')
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError('params has no array leaves.')
  if num_steps is not None:
    num_inner_steps = validation.renamed(
        num_inner_steps, num_steps, name='num_inner_steps',
        old_name='num_steps', where='init_inner_lr')
  lead = () if num_inner_steps is None else (int(num_inner_steps),)
  if kind == SCALAR:
    return jnp.full(lead, value, jnp.result_type(*leaves))
  if kind == PER_LAYER:
    return jax.tree.map(lambda x: jnp.full(lead, value, jnp.result_type(x)),
                        params)
  return jax.tree.map(
      lambda x: jnp.full(lead + jnp.shape(x), value, jnp.result_type(x)), params)


def _describe(tree):
  return jax.tree.map(lambda x: tuple(jnp.shape(x)), tree)


class StepSizes:
  """``inner_lr`` with its form resolved against ``params`` and N (trace time).

  ``kind`` and ``per_step`` are static; ``value`` is data (may be traced).
  """

  def __init__(self, value, kind, per_step, num_steps):
    self.value = value
    self.kind = kind
    self.per_step = per_step
    self.num_steps = num_steps

  @classmethod
  def resolve(cls, inner_lr, params, num_steps):
    """Reads the form of ``inner_lr`` from its shapes; ValueError if none fits."""
    if inner_lr is None:
      raise ValueError(
          'no inner step size: the estimator was built with inner_lr=None, so '
          'call it with maml_jax.LearnedInnerLR(params, inner_lr) as params.')
    if isinstance(inner_lr, numbers.Number):
      return cls(inner_lr, SCALAR, False, num_steps)
    p_leaves, p_def = jax.tree.flatten(params)
    leaves, l_def = jax.tree.flatten(inner_lr)
    for leaf in leaves:
      if not isinstance(leaf, numbers.Real) and not jnp.issubdtype(
          jnp.result_type(leaf), jnp.floating):
        raise ValueError('inner_lr must hold floating-point values; found a '
                         f'leaf of dtype {jnp.result_type(leaf)}.')
    n = (num_steps,)
    if l_def == p_def:  # shaped like params (for one-array params: any array)
      shapes = [jnp.shape(x) for x in leaves]
      p_shapes = [jnp.shape(x) for x in p_leaves]
      if shapes == p_shapes:
        return cls(inner_lr, PER_PARAMETER, False, num_steps)
      if all(s == () for s in shapes):
        return cls(inner_lr, PER_LAYER, False, num_steps)
      if shapes == [n + s for s in p_shapes]:
        return cls(inner_lr, PER_PARAMETER, True, num_steps)
      if all(s == n for s in shapes):
        return cls(inner_lr, PER_LAYER, True, num_steps)
    elif l_def.num_leaves == 1 and l_def == jax.tree.structure(0.0):
      shape = jnp.shape(leaves[0])
      if shape == ():
        return cls(inner_lr, SCALAR, False, num_steps)
      if shape == n:
        return cls(inner_lr, SCALAR, True, num_steps)
    raise ValueError(
        'inner_lr does not fit params: expected a scalar, a [N] array, or a '
        'pytree like params with leaves shaped like the parameters, scalars, '
        f'[N, *shape] or [N] (N = num_inner_steps = {num_steps}); got shapes '
        f'{_describe(inner_lr)} for params of shapes {_describe(params)}.')

  def with_value(self, value):
    return StepSizes(value, self.kind, self.per_step, self.num_steps)

  def at(self, j):
    """alpha_j: the value of step ``j`` (a traced index), per-step axis removed."""
    if not self.per_step:
      return self.value
    return jax.tree.map(lambda a: a[jnp.minimum(j, self.num_steps - 1)],
                        self.value)

  def scale(self, alpha_j, tree):
    """alpha_j ⊙ tree (tree shaped like params)."""
    if self.kind == SCALAR:
      return jax.tree.map(lambda x: (alpha_j * x).astype(x.dtype), tree)
    return jax.tree.map(lambda a, x: (a * x).astype(x.dtype), alpha_j, tree)

  def reduce(self, product):
    """Sums an elementwise product shaped like params to one step's alpha shape."""
    if self.kind == SCALAR:
      return sum(jnp.sum(x) for x in jax.tree.leaves(product))
    if self.kind == PER_LAYER:
      return jax.tree.map(jnp.sum, product)
    return product

  def step_grad(self, g_j, v_next):
    """dL/d alpha_j = -g_j ⊙ v_{j+1}, reduced to the shape of alpha_j."""
    return self.reduce(jax.tree.map(lambda g, v: -(g * v), g_j, v_next))

  def collect(self, per_step_grads):
    """[N]-stacked per-step gradients -> the gradient shaped like ``value``."""
    if self.per_step:
      grads = per_step_grads
    else:
      grads = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_step_grads)
    if isinstance(self.value, numbers.Number):
      return grads
    return jax.tree.map(lambda g, a: jnp.asarray(g, jnp.result_type(a)),
                        grads, self.value)
