r"""Quality of the Hessian-free estimators (Propositions 5-7 made visible).

On the rank-one matrix-factorization loss (d = 20) and on the sine MLP loss
(1-40-40-1, d = 1761), at a random point w, batch and unit vector v, this
measures the relative error

    ||H_est v - H v|| / ||H v||

of ``mj.zo_hvp`` (ZO, eq. 17), ``mj.ggs_hvp`` (GGS, eq. 18) and, as a
reference, ZO with (u u^T - I) (``subtract_identity=True``, not the paper's
ZO), against ``mj.exact_hvp``; swept over delta (b fixed) and over b (delta
fixed), mean and spread over ``--num_draws`` independent draws of the
directions (one ``jax.vmap`` over keys).

Two parts of the error are separated, with the same directions u_m:
  total        the error above.
  smoothing    ||H_est v - H_est^{delta->0} v|| / ||H v||, where the limit
               replaces the differences by exact second derivatives:
               GGS -> (1/b) sum (H u_m)(u_m . v),
               ZO  -> (1/b) sum (u_m^T H u_m / 2) u_m (u_m . v).
               It shrinks like delta for GGS (bias O(rho delta sqrt(d))) and
               shows the float round-off at small delta.
The ZO bias floor |tr H| / 2 * ||v|| / ||H v|| (E H_zo = H + tr(H)/2 I to
leading order: the constant bias of the paper's Proposition 5) is drawn as a horizontal line: ZO's error
cannot go below it however large b or small delta, while GGS's error falls
like 1/sqrt(b).

  python -m experiments.hessian_estimators --workdir=/tmp/hvp
"""

import json

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

import maml_jax as mj
from experiments import cli
from experiments import launcher_flags
from experiments import plotting
from experiments import rundir
from experiments import summaries

NAME = 'hessian_estimators'
PROBLEMS = ('matrix_factorization', 'sine_mlp')
ESTIMATORS = ('zo', 'ggs', 'zo_centered')

launcher_flags.define_output_flags()
flags.adopt_module_key_flags(launcher_flags)
flags.DEFINE_list('problems', list(PROBLEMS),
                  'Losses to measure on: ' + ', '.join(PROBLEMS) + '.')
flags.DEFINE_list('estimators', list(ESTIMATORS),
                  'Estimators to measure: zo (eq. 17), ggs (eq. 18), '
                  'zo_centered (eq. 17 with u u^T - I; not the paper\'s).')
flags.DEFINE_list('deltas', ['1e-4', '3e-4', '1e-3', '3e-3', '1e-2', '3e-2',
                             '0.1', '0.3', '1'],
                  'Smoothing radii delta of the delta sweep.')
flags.DEFINE_list('num_directions_list', ['1', '2', '5', '10', '20', '50', '100'],
                  'Numbers of directions b of the b sweep.')
flags.DEFINE_integer('delta_sweep_b', 10, 'b used in the delta sweep.')
flags.DEFINE_float('b_sweep_delta', 1e-2, 'delta used in the b sweep.')
flags.DEFINE_integer('num_draws', 100,
                     'Independent draws of the b directions per setting '
                     '(mean and std of the error over draws).')
flags.DEFINE_list('dtypes', ['float64', 'float32'],
                  'Float precisions to measure in (float64 shows the math, '
                  'float32 adds round-off at small delta).')
FLAGS = flags.FLAGS


def _norm(tree):
  return jnp.linalg.norm(ravel_pytree(tree)[0])


def _sub(a, b):
  return jax.tree.map(jnp.subtract, a, b)


def make_point(problem, key, dtype):
  """(loss_fn, params w, batch, unit vector v) of one problem at one point."""
  k_w, k_b, k_v = jax.random.split(key, 3)
  if problem == 'matrix_factorization':
    loss_fn = mj.models.mf_loss
    params = mj.models.init_mf_params(k_w, mj.models.MF_DIM, dtype)
    task = mj.tasks.matrix_factorization_tasks(k_b, 1, dtype=dtype)
    batch = jax.tree.map(lambda x: x[0], task.support)
  elif problem == 'sine_mlp':
    loss_fn = mj.models.sine_loss
    params = mj.models.init_sine_params(k_w, dtype=dtype)
    task = mj.tasks.sine_tasks(k_b, 1, dtype=dtype)
    batch = jax.tree.map(lambda x: x[0], task.support)
  else:
    raise ValueError(problem)
  flat, unravel = ravel_pytree(params)
  v = jax.random.normal(k_v, flat.shape, dtype)
  return loss_fn, params, batch, unravel(v / jnp.linalg.norm(v))


def exact_quantities(loss_fn, params, batch, v):
  """(H v, tr H) with the full Hessian of the flattened parameters."""
  flat, unravel = ravel_pytree(params)
  flat_loss = lambda x: loss_fn(unravel(x), batch)
  hess = jax.hessian(flat_loss)(flat)
  hv = mj.exact_hvp(loss_fn)(params, batch, v, None)
  return hv, jnp.trace(hess)


def make_error_fn(estimator, loss_fn, *, num_directions, delta):
  """``errors(params, batch, v, hv, key) -> (total, smoothing)`` for one draw."""
  if estimator == 'ggs':
    oracle = mj.ggs_hvp(loss_fn, num_directions=num_directions, delta=delta)
  else:
    oracle = mj.zo_hvp(loss_fn, num_directions=num_directions, delta=delta,
                       subtract_identity=(estimator == 'zo_centered'))
  exact = mj.exact_hvp(loss_fn)

  def errors(params, batch, v, hv, key):
    est = oracle(params, batch, v, key)
    # The delta -> 0 limit of the same estimator with the same directions.
    u = mj.gaussian_directions(key, params, num_directions)
    hu = jax.vmap(lambda um: exact(params, batch, um, None))(u)
    flat_u = jax.vmap(lambda um: ravel_pytree(um)[0])(u)
    flat_hu = jax.vmap(lambda t: ravel_pytree(t)[0])(hu)
    uv = flat_u @ ravel_pytree(v)[0]
    if estimator == 'ggs':
      limit = jnp.mean(flat_hu * uv[:, None], axis=0)
    else:
      c = jnp.sum(flat_u * flat_hu, axis=1) / 2.0
      limit = jnp.mean((c * uv)[:, None] * flat_u, axis=0)
      if estimator == 'zo_centered':
        limit = limit - jnp.mean(c) * ravel_pytree(v)[0]
    scale = _norm(hv)
    return (_norm(_sub(est, hv)) / scale,
            jnp.linalg.norm(ravel_pytree(est)[0] - limit) / scale)

  return errors


def measure(problem, dtype, *, key, deltas, bs, delta_sweep_b, b_sweep_delta,
            num_draws, estimators=ESTIMATORS):
  """All error statistics of one problem in one dtype (a JSON-able dict)."""
  loss_fn, params, batch, v = make_point(problem, key, dtype)
  hv, trace = exact_quantities(loss_fn, params, batch, v)
  keys = jax.random.split(jax.random.fold_in(key, 1), num_draws)
  floor = float(jnp.abs(trace) / 2.0 * _norm(v) / _norm(hv))
  out = {'dim': int(ravel_pytree(params)[0].size), 'trace_hessian': float(trace),
         'norm_hv': float(_norm(hv)), 'zo_floor': floor,
         'delta': {'x': list(deltas), 'b': delta_sweep_b, 'floor': floor},
         'b': {'x': list(bs), 'delta': b_sweep_delta, 'floor': floor}}

  def sweep_errors(estimator, settings):
    """Errors [len(settings), num_draws] for (b, delta) settings, one jit."""
    fns = [jax.vmap(make_error_fn(estimator, loss_fn, num_directions=b,
                                  delta=delta),
                    in_axes=(None, None, None, None, 0))
           for b, delta in settings]

    @jax.jit
    def all_settings(params, batch, v, hv, keys):
      outs = [fn(params, batch, v, hv, keys) for fn in fns]
      return (jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))

    total, smooth = all_settings(params, batch, v, hv, keys)
    total, smooth = np.asarray(total, float), np.asarray(smooth, float)
    return ((np.nanmean(total, 1).tolist(), np.nanstd(total, 1).tolist()),
            (np.nanmean(smooth, 1).tolist(), np.nanstd(smooth, 1).tolist()))

  for estimator in estimators:
    for sweep, settings in (
        ('delta', [(delta_sweep_b, float(d)) for d in deltas]),
        ('b', [(int(b), b_sweep_delta) for b in bs])):
      out[sweep][estimator], out[sweep][estimator + '_smoothing'] = (
          sweep_errors(estimator, settings))
    logging.info('%s %s %s: total error vs delta %s', problem, dtype.__name__
                 if hasattr(dtype, '__name__') else dtype, estimator,
                 ', '.join(f'{e:.3g}' for e in out['delta'][estimator][0]))
  return out


def run(argv):
  """``main`` returning the results dict (for tests)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  problems = [p.strip() for p in FLAGS.problems]
  if not problems or any(p not in PROBLEMS for p in problems):
    raise app.UsageError(f'--problems must be a subset of {",".join(PROBLEMS)}, '
                         f'got {FLAGS.problems}')
  try:
    deltas = [float(d) for d in FLAGS.deltas]
    bs = [int(b) for b in FLAGS.num_directions_list]
  except ValueError:
    raise app.UsageError('--deltas must be numbers and --num_directions_list '
                         'integers') from None
  if not deltas or min(deltas) <= 0:
    raise app.UsageError(f'--deltas must be positive, got {FLAGS.deltas}')
  if not bs or min(bs) < 1 or FLAGS.delta_sweep_b < 1:
    raise app.UsageError('numbers of directions b must be >= 1')
  if not FLAGS.b_sweep_delta > 0:
    raise app.UsageError(f'--b_sweep_delta must be positive, got '
                         f'{FLAGS.b_sweep_delta}')
  if FLAGS.num_draws < 2:
    raise app.UsageError(f'--num_draws must be >= 2, got {FLAGS.num_draws}')
  estimators = [e.strip() for e in FLAGS.estimators]
  if not estimators or any(e not in ESTIMATORS for e in estimators):
    raise app.UsageError(f'--estimators must be a subset of '
                         f'{",".join(ESTIMATORS)}, got {FLAGS.estimators}')
  dtypes = [d.strip() for d in FLAGS.dtypes]
  if not dtypes or any(d not in ('float32', 'float64') for d in dtypes):
    raise app.UsageError(f'--dtypes must be float32 and/or float64, got '
                         f'{FLAGS.dtypes}')
  seeds = launcher_flags.parse_ints('seeds', FLAGS.seeds)
  if not seeds:
    raise app.UsageError('--seeds must list at least one seed')
  launcher_flags.check_workdir(FLAGS.workdir)
  run_dir = rundir.RunDir.create(FLAGS.workdir, FLAGS.run_name, resume=False,
                                 default_name=NAME)
  run_dir.write_config(rundir.config_dict(None), resume=False)
  if 'float64' in dtypes:
    jax.config.update('jax_enable_x64', True)

  results = {}
  rows = []
  for dtype_name in dtypes:
    dtype = jnp.float64 if dtype_name == 'float64' else jnp.float32
    for problem in problems:
      res = measure(problem, dtype, key=jax.random.PRNGKey(seeds[0]),
                    deltas=deltas, bs=bs, delta_sweep_b=FLAGS.delta_sweep_b,
                    b_sweep_delta=FLAGS.b_sweep_delta,
                    num_draws=FLAGS.num_draws, estimators=estimators)
      results.setdefault(dtype_name, {})[problem] = res
      for sweep in ('delta', 'b'):
        for i, x in enumerate(res[sweep]['x']):
          for est in estimators:
            rows.append({
                'dtype': dtype_name, 'problem': problem, 'estimator': est,
                'delta': x if sweep == 'delta' else res[sweep]['delta'],
                'b': res[sweep]['b'] if sweep == 'delta' else x,
                'sweep': sweep,
                'error_mean': res[sweep][est][0][i],
                'error_std': res[sweep][est][1][i],
                'smoothing_error_mean': res[sweep][est + '_smoothing'][0][i],
                'smoothing_error_std': res[sweep][est + '_smoothing'][1][i],
                'zo_floor': res['zo_floor']})
  rundir.atomic_write_text(run_dir.file('errors.json'), json.dumps(
      {'num_draws': FLAGS.num_draws, 'seed': seeds[0], 'results': results},
      indent=1, default=float) + '\n')
  run_dir.rows = rows
  run_dir.flush()
  figures = []
  for dtype_name, res in results.items():
    figures.append(plotting.plot_estimator_errors(
        res, run_dir.file(f'hvp_errors_{dtype_name}.png'),
        title=f'Relative error of Hessian-vector estimates ({dtype_name}, '
        f'mean +- std over {FLAGS.num_draws} draws)'))

  lines = ['| dtype | problem | d | ZO bias floor | estimator | '
           + ' | '.join(f'b={b}' for b in bs) + ' |',
           '|---|---|---|---|---|' + '---|' * len(bs)]
  for dtype_name, res in results.items():
    for problem, r in res.items():
      for est in estimators:
        lines.append(
            f'| {dtype_name} | {problem} | {r["dim"]} | {r["zo_floor"]:.3g} | '
            f'{est} | ' + ' | '.join(f'{e:.3g}' for e in r['b'][est][0]) + ' |')
  summary = summaries.write_summary(run_dir, 'Hessian-vector estimator error', [
      f'Relative error ‖H_est v − H v‖/‖H v‖ vs b (delta = '
      f'{FLAGS.b_sweep_delta:g}), mean over {FLAGS.num_draws} draws (seed '
      f'{seeds[0]}). ZO bias floor = |tr H|/2 ‖v‖/‖H v‖. The delta sweep is '
      'in errors.json / metrics.csv and the figures.',
      '\n'.join(lines) + '\n',
      ' '.join(f'![{d}](hvp_errors_{d}.png)' for d in results),
  ])
  print(f'Figures: {", ".join(figures)}\nSummary: {summary}\n'
        f'Data: {run_dir.file("errors.json")}')
  return results


main = cli.cli_main(run)

if __name__ == '__main__':
  app.run(main)
