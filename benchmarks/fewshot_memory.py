r"""Peak memory of one few-shot task's meta-gradient vs inner steps N (conv net).

The model of ``experiments.fewshot``: Finn et al.'s conv net (4 blocks of
``--filters`` 3x3 filters, batch-statistics BatchNorm, 2x2 max-pool, linear
head) on one N-way K-shot task of 28x28 images. For MAML and GGS-MAML, with
and without ``remat``, and N in ``--steps``: XLA's buffer assignment of the
jitted one-task meta-gradient (``compiled.memory_analysis()``: arguments +
outputs + temporaries - aliased; the same measure as ``benchmarks.memory``),
which is static and exact for the compiled program and unaffected by
anything else on the machine. Target (issue 15): N = 50 with remat at most
3x N = 5 with remat.

  python -m benchmarks.fewshot_memory                # writes benchmarks/results/fewshot_memory.{json,md}
  python -m benchmarks.fewshot_memory --steps=1,5 --algorithms=maml --name=quick
"""

import os
import platform
import time

from absl import app
from absl import flags
from absl import logging
import jax

import maml_jax as mj
from benchmarks import convnet
from benchmarks import memory
from benchmarks import report
from experiments import models

flags.DEFINE_list('steps', ['1', '2', '5', '10', '20', '50'], 'Inner steps N.')
flags.DEFINE_list('algorithms', ['maml', 'ggs_maml'], 'Estimators.')
flags.DEFINE_integer('filters', 64, 'Filters per conv block (Finn et al.: 64).')
flags.DEFINE_integer('ways', 5, 'Classes per task.')
flags.DEFINE_integer('shots', 1, 'Support images per class.')
flags.DEFINE_integer('query_shots', 15, 'Query images per class.')
flags.DEFINE_integer('num_directions', 10, 'b of GGS-MAML.')
flags.DEFINE_string('conv_impl', None, 'xla or matmul; default: the backend default.')
flags.DEFINE_string('name', 'fewshot_memory', 'Output name under --out_dir.')
flags.DEFINE_string('out_dir', os.path.join(os.path.dirname(__file__), 'results'),
                    'Where the JSON and markdown go.')
FLAGS = flags.FLAGS
MiB = 2.0 ** 20


def setup(algorithm, num_inner_steps, remat, *, filters, ways, shots,
          query_shots, num_directions, conv_impl=None):
  """(estimator, (params, task, key)) of one few-shot task."""
  model = models.ConvNet(ways, filters=filters, conv_impl=conv_impl)
  k_p, k_t, _, key = jax.random.split(jax.random.PRNGKey(0), 4)
  params = mj.models.init_convnet_params(k_p, model)
  # The images' values do not enter XLA's buffer assignment, only their shapes.
  task = jax.tree.map(lambda x: x[0], convnet.sample_tasks(
      k_t, 1, ways=ways, shots=shots, query=query_shots))
  est = mj.make_estimator(algorithm, mj.models.make_convnet_loss(model),
                          **mj.estimator_kwargs(
                              algorithm, inner_lr=0.4,
                              num_inner_steps=num_inner_steps, remat=remat,
                              num_directions=num_directions, delta=1e-2))
  return est, (params, task, key)


def measure(algorithm, num_inner_steps, remat, **kwargs):
  """``memory.analysis_bytes`` of the compiled one-task meta-gradient + compile_s."""
  est, args = setup(algorithm, num_inner_steps, remat, **kwargs)
  start = time.perf_counter()
  compiled = jax.jit(est).lower(*args).compile()
  out = memory.analysis_bytes(compiled)
  out['compile_s'] = time.perf_counter() - start
  return out


def main(argv):
  del argv
  steps = [int(s) for s in FLAGS.steps]
  if min(steps) < 1:
    raise app.UsageError('--steps must be positive integers')
  kwargs = dict(filters=FLAGS.filters, ways=FLAGS.ways, shots=FLAGS.shots,
                query_shots=FLAGS.query_shots,
                num_directions=FLAGS.num_directions, conv_impl=FLAGS.conv_impl)
  model = models.ConvNet(FLAGS.ways, filters=FLAGS.filters)
  num_params = sum(x.size for x in jax.tree.leaves(
      mj.models.init_convnet_params(jax.random.PRNGKey(0), model)))
  result = {
      'command': 'python -m benchmarks.fewshot_memory ' + ' '.join(
          f'--{k}={",".join(map(str, v)) if isinstance(v, list) else v}'
          for k, v in (('steps', steps), ('algorithms', FLAGS.algorithms),
                       ('filters', FLAGS.filters))),
      'date': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
      'jax': jax.__version__, 'backend': jax.default_backend(),
      'machine': platform.machine(),
      'conv_impl': FLAGS.conv_impl or models.default_conv_impl(),
      'num_params': int(num_params), 'steps': steps, 'peak_mib': {},
      'temp_mib': {}, 'compile_s': {}, **{k: v for k, v in kwargs.items()
                                         if k != 'conv_impl'}}
  for algorithm in FLAGS.algorithms:
    for remat in (False, True):
      label = f'{algorithm}{" + remat" if remat else ""}'
      peaks, temps, compiles = [], [], []
      for n in steps:
        res = measure(algorithm, n, remat, **kwargs)
        peaks.append(res['peak'] / MiB)
        temps.append(res['temp'] / MiB)
        compiles.append(res['compile_s'])
        logging.info('%s N=%d: %.1f MiB (compile %.1fs)', label, n, peaks[-1],
                     compiles[-1])
        print(f'{label:20s} N={n:3d}: {peaks[-1]:8.1f} MiB', flush=True)
      result['peak_mib'][label] = peaks
      result['temp_mib'][label] = temps
      result['compile_s'][label] = compiles
  targets = {}
  if 5 in steps and 50 in steps:
    for algorithm in FLAGS.algorithms:
      values = result['peak_mib'][f'{algorithm} + remat']
      ratio = values[steps.index(50)] / values[steps.index(5)]
      targets[f'{algorithm} + remat: N=50 / N=5 <= 3'] = {
          'measured': ratio, 'met': bool(ratio <= 3.0)}
  result['targets'] = targets
  report.save_json_and_markdown(result, FLAGS.out_dir, FLAGS.name)


if __name__ == '__main__':
  app.run(main)
