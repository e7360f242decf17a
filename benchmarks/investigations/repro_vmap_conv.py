r"""Standalone repro: a jitted second-order gradient through a max-pool loses windows.

    python -m benchmarks.investigations.repro_vmap_conv

Investigation (issue 14), not tested. Valid at 452c9e4 (written there; its
output quoted in BENCHMARKS.md, 'Correctness findings', from a48c2f8); last
changed in 9679a65 (imports only), not rerun since. Found: under ``jit`` the
``jnp.max`` pool after BatchNorm + ReLU, 2 blocks, drops windows of the
second-order gradient (relative error 2.9e-2 against op by op, float64, JAX
0.10.2, XLA:CPU); the ``where`` pool is right (8.8e-16). The conv net's pool
became ``mj.nn.max_pool`` (three ``where``), and tests/experiments/test_convnet.py and
tests/benchmarks/test_torch_agreement.py check the fixed net.

Issue 14 found the MAML meta-gradient of the conv net with XLA convolutions
vmapped over tasks off by a relative error of 0.67 (float64, JAX 0.10.2,
XLA:CPU), while the same with ``lax.map`` over tasks, with im2col
convolutions, and the PyTorch reference agreed to 1e-15. This script
rebuilds the case from ``jax.lax`` alone: two blocks of 3x3 convolution
(``lax.conv_general_dilated``), batch-statistics normalisation, ReLU and 2x2
max-pooling, a linear head and cross-entropy; one inner SGD step per task
and ``jax.grad`` of the query loss through it, ``jax.vmap`` over two tasks
(so the adapted kernels are per task and the convolutions grouped).

For each variant it prints the relative error of the jitted program against
the same function run op by op (``jax.disable_jit``: every primitive
compiled alone, no fusion across them), which is JAX's own math:

* ``pool=jnp.max``: the max-pool as ``jnp.max`` over a reshaped 2x2 window
  (the conv net's pool before the fix). Wrong under ``jit``.
* ``pool=where``: the same max as three ``where(a >= b, a, b)`` (the pool of
  the conv net now, ``maml_jax.nn.max_pool``). Right.
* without BatchNorm, without ReLU (tanh), or with one block: right.

Reading: the JVP of a max reduction (``_reduce_chooser_jvp_rule`` in
``jax/_src/lax``) marks the maximum by ``operand == result`` and divides by
the number of matches. When XLA fuses the normalisation + ReLU into both the
reduction and the mask computation, the two copies can round differently
(the error also moves with XLA's options: child processes below), so some
windows match nothing and their gradient is dropped, or divided by zero
(NaN at ``--xla_backend_optimization_level=0``). JAX's batching rules are
not at fault (op by op is right). The same mechanism as
https://github.com/jax-ml/jax/issues/40564 (``jnp.maximum``'s JVP on GPU,
operand rematerialised with different rounding). A ``where`` picks one
branch by its own comparison, so a rounding difference cannot drop the
gradient.

``--flags`` reruns the failing variant in child processes with a few XLA
flag sets (flags must be set before JAX starts).
"""

import itertools
import os
import subprocess
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

_FLAGS = flags.DEFINE_bool('flags', True, 'Also run the failing variant under other XLA flags.')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: print the failing variant only.')

FLAG_SETS = ('', '--xla_cpu_experimental_ynn_fusion_type=',
             '--xla_backend_optimization_level=0')
TASKS, IMAGES, SIZE, CHANNELS, CLASSES, INNER_LR = 2, 6, 12, 4, 3, 0.4


def conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def batch_norm(x):
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + 1e-5)


def pool_reduce_max(x):
  b, h, w, c = x.shape
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def pool_where(x):
  first_max = lambda a, b: jnp.where(a >= b, a, b)
  top = first_max(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
  bottom = first_max(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
  return first_max(top, bottom)


def meta_gradient_fn(*, pool, use_bn, act, blocks):
  """Per-task MAML meta-gradients (one inner step), vmapped over tasks."""

  def loss(p, batch):
    x = batch['x']
    for kernel in p['kernels'][:blocks]:
      x = conv(x, kernel)
      x = pool(act(batch_norm(x) if use_bn else x))
    logits = x.reshape(x.shape[0], -1) @ p['head'][:x[0].size]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']))

  def task_meta_gradient(p, support, query):
    adapted = jax.tree.map(lambda w, g: w - INNER_LR * g, p, jax.grad(loss)(p, support))
    return loss(adapted, query)

  return jax.vmap(jax.grad(task_meta_gradient), in_axes=(None, 0, 0))


def inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  params = {'kernels': [0.5 * jax.random.normal(keys[0], (3, 3, 1, CHANNELS)),
                        0.3 * jax.random.normal(keys[1], (3, 3, CHANNELS, CHANNELS))],
            'head': 0.1 * jax.random.normal(keys[2], (SIZE * SIZE * CHANNELS // 4, CLASSES))}

  def batch(k):
    return {'x': jax.random.normal(k, (TASKS, IMAGES, SIZE, SIZE, 1)),
            'y': jnp.tile(jnp.arange(CLASSES).repeat(IMAGES // CLASSES), (TASKS, 1))}

  return params, batch(keys[3]), batch(keys[4])


def jit_vs_op_by_op(**variant):
  """Relative error of the jitted meta-gradients against op-by-op execution."""
  fn = meta_gradient_fn(**variant)
  args = inputs()
  jitted = jax.jit(fn)(*args)
  with jax.disable_jit():
    eager = fn(*args)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  return float(np.linalg.norm(flat(jitted) - flat(eager)) / np.linalg.norm(flat(eager)))


FAILING = dict(pool=pool_reduce_max, use_bn=True, act=jax.nn.relu, blocks=2)


def main(argv):
  del argv
  jax.config.update('jax_enable_x64', True)
  if _CHILD.value:
    print(f'{jit_vs_op_by_op(**FAILING):.3g}')
    return
  print(f'JAX {jax.__version__}, {jax.default_backend()}, float64; '
        'relative error of jit vs op by op:')
  pools = {'jnp.max': pool_reduce_max, 'where': pool_where}
  acts = {'relu': jax.nn.relu, 'tanh': jnp.tanh}
  for (pool_name, pool), use_bn, (act_name, act), blocks in itertools.product(
      pools.items(), (True, False), acts.items(), (2, 1)):
    err = jit_vs_op_by_op(pool=pool, use_bn=use_bn, act=act, blocks=blocks)
    print(f'  pool={pool_name:7s} batch_norm={use_bn!s:5s} act={act_name} '
          f'blocks={blocks}: {err:.2e}{"  <-- wrong" if err > 1e-8 else ""}')
  if _FLAGS.value:
    print('pool=jnp.max, batch_norm, relu, 2 blocks, under other XLA flags:')
    for flag in FLAG_SETS:
      env = dict(os.environ, XLA_FLAGS=flag)
      out = subprocess.run(
          [sys.executable, '-m', 'benchmarks.investigations.repro_vmap_conv', '--child'],
          env=env, capture_output=True, text=True, check=False)
      result = out.stdout.strip().splitlines()[-1:] or [out.stderr.strip()[-200:]]
      print(f'  XLA_FLAGS={flag!r}: {result[0]}')


if __name__ == '__main__':
  app.run(main)
