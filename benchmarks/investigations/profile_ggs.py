r"""Where GGS-/ZO-MAML spend their time on the sine paper config (CPU diagnosis).

    python -m benchmarks.investigations.profile_ggs [--repeats=15]

Investigation (issue 4's speed targets), not tested. Valid at 7e342c5 (its
16:13 UTC table, committed in 4e90e73) and 1fc7600 (the hand-written MAML
rows, 20:26 UTC, committed there); last changed in 9679a65 (mj.models /
mj.tasks), not rerun since. Found (BENCHMARKS.md, 'Where the time goes'):
drawing GGS-MAML's 1.32M Gaussian numbers takes 5.2 ms of its ~10 ms
meta-gradient on the 2-core CPU (``torch.randn`` 4.5 ms), so 10x torch.func
(2.8-3.9 ms per meta-iteration) is below the cost of the random numbers
alone; in fused MAML maml_jax's own cost is ~0.16-0.19 ms per iteration
(~15%), so MAML could reach ~7x torch.func, not 10x.

Times (min and median ms, interleaved so load noise hits all alike):
  * the maml_jax meta-gradient of 25 tasks (N = 3, b = 10) for ggs/zo/maml;
  * the Gaussian directions alone, exactly as maml_jax draws them
    (25 x 3 x 10 pytrees like the 1,761 parameters: 1.32M normals);
  * one ``jax.random.normal`` of the same size, and ``torch.randn`` of it;
  * the same GGS math with the directions given as an input (no sampling);
  * the jitted train step vs the fused run per iteration;
  * maml_jax's own cost in MAML: a hand-written meta-gradient (no maml_jax:
    N unrolled SGD steps, ``jax.grad``, ``vmap`` over tasks) alone and in a
    fused scan with the same Adam step, with and without on-device task
    sampling.
"""


from absl import app
from absl import flags
import jax
import numpy as np
import optax
import torch

import maml_jax as mj
from benchmarks import agreement
from benchmarks import timing

_REPEATS = flags.DEFINE_integer('repeats', 15, 'Timed repeats per case.')

T, N, B, ALPHA, DELTA = 25, 3, 10, 0.01, 1e-2
FUSED_ITERATIONS = 10  # meta-iterations per fused call


def _ms(fn, repeats):
  times = timing.time_ms(fn, repeats)
  return min(times), float(np.median(times))


def main(argv):
  del argv
  torch.set_num_threads(1)
  loss_fn, params, tasks = agreement.problem_setup('sine', T, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)
  grad_fn = jax.grad(loss_fn)
  cases = {}
  for algo in ('ggs_maml', 'zo_maml', 'maml'):
    est = agreement.jax_estimator(algo, loss_fn, inner_lr=ALPHA,
                                  num_inner_steps=N, num_directions=B, delta=DELTA)
    f = jax.jit(lambda p, t, k, est=est: mj.meta_gradient(est, p, t, k)[0])
    cases[f'maml_jax {algo} meta_gradient'] = lambda f=f: jax.block_until_ready(
        f(params, tasks, key))
  dirs = jax.jit(lambda p, k: agreement.meta_gradient_directions(p, k, T, N, B))
  cases['directions as maml_jax draws them'] = lambda: jax.block_until_ready(
      dirs(params, key))
  size = sum(x.size for x in jax.tree.leaves(params))
  shape = (T, N, B, size)
  normal = jax.jit(lambda k: jax.random.normal(k, shape))
  cases['one jax.random.normal, same count'] = lambda: jax.block_until_ready(
      normal(key))
  gen = torch.Generator().manual_seed(0)
  cases['torch.randn, same count (1 thread)'] = lambda: torch.randn(
      shape, generator=gen)

  # GGS (eq. 18/19) with the directions as an input: compute only.
  def ggs_given(p, support, query, u):  # u: [N] pytrees with leading axis b
    ws, w = [], p
    for _ in range(N):
      ws.append(w)
      w = optax.tree.add_scale(w, -ALPHA, grad_fn(w, support))
    v = grad_fn(w, query)
    for j in reversed(range(N)):
      u_j = jax.tree.map(lambda x, j=j: x[j], u)
      g0 = grad_fn(ws[j], support)
      gp = jax.vmap(lambda du, j=j: grad_fn(
          optax.tree.add_scale(ws[j], DELTA, du), support))(u_j)
      uv = sum(jax.tree.leaves(jax.tree.map(
          lambda a, b: (a.reshape(B, -1) * b.reshape(1, -1)).sum(1), u_j, v)))
      hv = jax.tree.map(lambda g, g0: jax.numpy.tensordot(uv / (B * DELTA), g - g0[None], 1),
                        gp, g0)
      v = optax.tree.add_scale(v, -ALPHA, hv)
    return v

  u_all = dirs(params, key)
  given = jax.jit(lambda p, t, u: jax.vmap(ggs_given, in_axes=(None, 0, 0, 0))(
      p, t.support, t.query, u))
  cases['GGS math, directions given (no sampling)'] = lambda: jax.block_until_ready(
      given(params, tasks, u_all))

  iters = FUSED_ITERATIONS
  opt = optax.adam(1e-3)
  sample_tasks = lambda k: mj.tasks.sine_tasks(k, T)
  for algo in ('ggs_maml', 'maml'):
    est = agreement.jax_estimator(algo, loss_fn, inner_lr=ALPHA,
                                  num_inner_steps=N, num_directions=B, delta=DELTA)
    state = mj.init_train_state(params, opt)
    step = mj.make_train_step(est, opt)
    fused = mj.make_fused_train(est, opt, sample_tasks, iters)
    cases[f'{algo} train step'] = lambda step=step, state=state: jax.block_until_ready(
        step(state, tasks, key))
    cases[f'{algo} fused x{iters} (divide by {iters})'] = (
        lambda fused=fused, state=state: jax.block_until_ready(fused(state, key)))

  # MAML written by hand, for maml_jax's overhead (same math, same Adam step).
  def bare_outer(p, support, query):
    w = p
    for _ in range(N):
      w = optax.tree.add_scale(w, -ALPHA, grad_fn(w, support))
    return loss_fn(w, query)

  def bare_meta_gradient(p, t):
    g = jax.vmap(jax.grad(bare_outer), in_axes=(None, 0, 0))(p, t.support, t.query)
    return jax.tree.map(lambda x: x.mean(0), g)

  bare = jax.jit(bare_meta_gradient)
  cases['maml hand-written meta_gradient'] = lambda: jax.block_until_ready(
      bare(params, tasks))

  def bare_fused(sample):
    def run(p, k):
      def body(carry, i):
        p, o = carry
        k_tasks, _ = mj.iteration_keys(k, i)
        g = bare_meta_gradient(p, sample(k_tasks))
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), None
      return jax.lax.scan(body, (p, opt.init(p)), jax.numpy.arange(iters))[0]
    return jax.jit(run)

  for name, sample in (('', sample_tasks), (', fixed tasks', lambda k: tasks)):
    f = bare_fused(sample)
    cases[f'maml hand-written fused x{iters}{name} (divide by {iters})'] = (
        lambda f=f: jax.block_until_ready(f(params, key)))

  results = {name: [] for name in cases}
  for _ in range(3):  # interleave rounds against load drift
    for name, fn in cases.items():
      results[name].append(_ms(fn, max(1, _REPEATS.value // 3)))
  for name, vals in results.items():
    print(f'{name:56s} min {min(v[0] for v in vals):8.2f} ms   '
          f'median-of-rounds {np.median([v[1] for v in vals]):8.2f} ms')


if __name__ == '__main__':
  app.run(main)
