r"""Where a learned inner step size costs time in MAML (sine paper config, CPU).

    python -m benchmarks.investigations.profile_learned_lr [--rounds=9] [--width=40]

Investigation (issue 11), not tested. Valid at ac9c354 (run at 03:13 UTC,
written up in 61b8485); last changed in 9679a65 (mj.models), not rerun
since. Found (BENCHMARKS.md, 'Learned inner step size'): of MAML's 1.14-1.21x
for a learned per-parameter alpha, about half is JAX's own price for the
step-size gradient (a hand-written MAML pays 1.13x), the other half per-leaf
bookkeeping that doubles with alpha's extra leaves (the estimator,
``meta_gradient``'s masked mean and finite checks, Adam): 184 -> 267 executed
ops in the train step. At width 400 the cost is memory traffic instead
(1.44-1.47x).

``benchmarks.run --sections=learned_lr`` times the whole train step with a
fixed alpha and with a learned per-parameter alpha (Meta-SGD). This script
splits that ratio into layers, each timed fixed vs learned in alternating
rounds (the minimum of each round's calls, so that load spikes drop out):

  * hand-written MAML with no maml_jax: ``jax.grad`` of the query loss
    through N unrolled SGD steps, ``vmap`` over tasks, w.r.t. w (alpha a
    constant) or w.r.t. (w, alpha): JAX's own cost of the step-size gradient;
  * the maml_jax estimator vmapped over tasks (gradients only);
  * ``mj.meta_gradient`` (masked mean over tasks, finite checks) with its aux;
  * ``mj.make_train_step`` with Adam (the unit of ``benchmarks.run``);
  * the Adam update alone.

It also counts the HLO instructions XLA:CPU executes outside fusions (each is
a separate kernel launch). ``--width`` widens the MLP's two hidden layers
(40 is the paper's), to see whether the ratio is a per-kernel or a
per-parameter cost.
"""

import collections
import re
import statistics

from absl import app
from absl import flags
import jax
import optax

import maml_jax as mj
from benchmarks import timing

_ROUNDS = flags.DEFINE_integer('rounds', 9, 'Alternating rounds.', lower_bound=1)
_CALLS = flags.DEFINE_integer('calls', 10, 'Timed calls per case and round.',
                              lower_bound=1)
_WIDTH = flags.DEFINE_integer('width', 40, 'Hidden width of the sine MLP.')

T, N, ALPHA = 25, 3, 0.01


def executed_ops(compiled):
  """Instructions outside fusions of a compiled function (XLA:CPU thunks)."""
  comps, current = collections.defaultdict(list), None
  for line in compiled.as_text().splitlines():
    head = re.match(r'^(ENTRY )?%?([\w.\-]+) ', line)
    if head and not line.startswith(' '):
      current = head.group(2)
      continue
    op = re.match(r'\s+(ROOT )?%?\S+ = \S+ ([\w\-]+)\(', line)
    if op and current:
      comps[current].append(op.group(2))
  free = ('parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast')
  return sum(1 for name, ops in comps.items()
             if not name.startswith(('fused', 'wrapped', 'region'))
             and not ('computation' in name and 'while' not in name)
             for o in ops if o not in free)


def main(argv):
  del argv
  model = mj.models.SineMLP(hidden=(_WIDTH.value, _WIDTH.value))
  params = mj.models.init_sine_params(jax.random.PRNGKey(0), model)
  loss_fn = mj.models.make_mse_loss(model)
  grad_fn = jax.grad(loss_fn)
  tasks = mj.tasks.sine_tasks(jax.random.PRNGKey(2), T)
  key = jax.random.PRNGKey(1)
  learned = mj.LearnedInnerLR(
      params, mj.init_inner_lr(params, ALPHA, 'per_parameter'))
  est = mj.make_estimator('maml', loss_fn, inner_lr=ALPHA, num_inner_steps=N)
  opt = optax.adam(1e-3)

  def outer(p, alpha, support, query):
    w = p
    for _ in range(N):
      w = jax.tree.map(lambda x, a, g: x - a * g, w, alpha, grad_fn(w, support))
    return loss_fn(w, query)

  def hand_fixed(p, t):
    g = jax.vmap(jax.grad(lambda p, s, q: outer(
        p, jax.tree.map(lambda _: ALPHA, p), s, q)), (None, 0, 0))(
            p, t.support, t.query)
    return jax.tree.map(lambda x: x.mean(0), g)

  def hand_learned(m, t):
    g = jax.vmap(jax.grad(outer, (0, 1)), (None, None, 0, 0))(
        m.params, m.inner_lr, t.support, t.query)
    return jax.tree.map(lambda x: x.mean(0), g)

  vmapped = lambda p, t, k: jax.vmap(est, (None, 0, 0))(
      p, t, jax.random.split(k, T))[0]
  meta = lambda p, t, k: mj.meta_gradient(est, p, t, k)
  step = mj.make_train_step(est, opt)
  adam = lambda g, s, p: optax.apply_updates(p, opt.update(g, s, p)[0])
  layers = {
      'hand-written grad (no maml_jax)': ((hand_fixed, params, tasks),
                                          (hand_learned, learned, tasks)),
      'maml_jax estimator, vmapped': ((vmapped, params, tasks, key),
                                      (vmapped, learned, tasks, key)),
      'mj.meta_gradient + aux': ((meta, params, tasks, key),
                                 (meta, learned, tasks, key)),
      'mj.make_train_step (Adam)': (
          (step, mj.init_train_state(params, opt), tasks, key),
          (step, mj.init_train_state(learned, opt), tasks, key)),
      'Adam update alone': ((adam, params, opt.init(params), params),
                            (adam, learned, opt.init(learned), learned)),
  }
  cases, ops = {}, {}
  for name, variants in layers.items():
    for variant, (fn, *args) in zip(('fixed', 'learned'), variants):
      compiled = jax.jit(fn).lower(*args).compile()
      ops[name, variant] = executed_ops(compiled)
      cases[name, variant] = (
          lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
      cases[name, variant]()
  best = {k: [] for k in cases}
  for _ in range(_ROUNDS.value):
    for k, fn in cases.items():
      best[k].append(min(timing.time_ms(fn, _CALLS.value, warmup=0)))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'MLP 1-{_WIDTH.value}-{_WIDTH.value}-1 ({n_params:,} parameters), '
        f'{T} tasks, N = {N}; min of {_CALLS.value} calls per round, '
        f'{_ROUNDS.value} rounds; median over rounds')
  print('| layer | fixed ms | learned ms | extra ms | ratio (per-round range) '
        '| executed ops fixed / learned |')
  print('|---|---|---|---|---|---|')
  for name in layers:
    a, b = best[name, 'fixed'], best[name, 'learned']
    per_round = [y / x for x, y in zip(a, b)]
    fa, fb = statistics.median(a), statistics.median(b)
    print(f'| {name} | {fa:.3f} | {fb:.3f} | {fb - fa:+.3f} '
          f'| {statistics.median(per_round):.3f} ({min(per_round):.3f}-'
          f'{max(per_round):.3f}) | {ops[name, "fixed"]} / '
          f'{ops[name, "learned"]} |')


if __name__ == '__main__':
  app.run(main)
