"""Peak memory of one task's meta-gradient vs the number of inner steps N.

Model: a wide MLP 1-W-W-1 with ReLU (W = 1000: ~1M parameters) on K-shot sine
data, so the inner-loop iterates w_j dominate memory. Two measurements:

* ``compiled_memory``: XLA's buffer assignment of the compiled meta-gradient
  (``jax.jit(est).lower(...).compile().memory_analysis()``): arguments +
  outputs + temporaries - aliased bytes. Static, exact for the program, not
  polluted by anything else in the process; the primary number.
* ``python -m benchmarks.memory maml 256 remat 1000 10``: a fresh process compiles the same program, resets the kernel's
  RSS high-water mark (``/proc/self/clear_refs``), runs it once and prints the
  peak RSS increase as JSON (Linux; host memory, so on a GPU it reports host
  RSS only and the device peak from ``memory_stats`` where available).
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp

import maml_jax as mj
from benchmarks import agreement


def mlp_params(key, width: int, dtype=jnp.float32):
  """Parameters of the MLP 1-W-W-1 (He-style init)."""
  k0, k1, k2 = jax.random.split(key, 3)
  return {
      'w0': jax.random.normal(k0, (1, width), dtype),
      'b0': jnp.zeros((width,), dtype),
      'w1': jax.random.normal(k1, (width, width), dtype) * jnp.sqrt(2.0 / width),
      'b1': jnp.zeros((width,), dtype),
      'w2': jax.random.normal(k2, (width, 1), dtype) * jnp.sqrt(2.0 / width),
      'b2': jnp.zeros((1,), dtype),
  }


def mlp_loss(params, batch):
  """MSE of the MLP 1-W-W-1 with ReLU on ``{'x': [K, 1], 'y': [K, 1]}``."""
  h = jax.nn.relu(batch['x'] @ params['w0'] + params['b0'])
  h = jax.nn.relu(h @ params['w1'] + params['b1'])
  return jnp.mean((h @ params['w2'] + params['b2'] - batch['y']) ** 2)


def num_params(width: int) -> int:
  """Parameters of the MLP 1-W-W-1: W + W (layer 0), W^2 + W, W + 1."""
  return width * width + 4 * width + 1


def setup(algorithm: str, num_inner_steps: int, remat: bool, *, width: int,
          num_directions: int = 10, num_support: int = 10):
  """(est, (params, task, key)) for one task of the wide-MLP problem."""
  key_p, key_t, key = jax.random.split(jax.random.PRNGKey(0), 3)
  params = mlp_params(key_p, width)
  tasks = mj.tasks.sine_tasks(key_t, 1, num_support=num_support,
                              num_query=num_support)
  task = jax.tree.map(lambda x: x[0], tasks)
  est = agreement.jax_estimator(algorithm, mlp_loss, inner_lr=1e-3,
                                num_inner_steps=num_inner_steps,
                                num_directions=num_directions, delta=1e-2,
                                remat=remat)
  return est, (params, task, key)


def analysis_bytes(compiled) -> dict:
  """Arguments, outputs, temporaries and their sum (minus aliasing) in bytes."""
  ma = compiled.memory_analysis()
  if ma is None:
    return {}
  out = {name: int(getattr(ma, f'{name}_size_in_bytes', 0) or 0)
         for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  out['peak'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def compiled_memory(algorithm: str, num_inner_steps: int, remat: bool, *,
                    width: int, num_directions: int = 10,
                    compiler_options=None) -> dict:
  """XLA's memory analysis of the jitted one-task meta-gradient (bytes) + compile time."""
  est, args = setup(algorithm, num_inner_steps, remat, width=width,
                    num_directions=num_directions)
  t0 = time.perf_counter()
  compiled = jax.jit(est).lower(*args).compile(compiler_options=compiler_options)
  out = analysis_bytes(compiled)
  out['compile_s'] = time.perf_counter() - t0
  return out


def _status_kb(field: str):
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


class PeakRSS:
  """Context manager: peak resident set size while the block runs (Linux).

  Resets the kernel's high-water mark on entry (``/proc/self/clear_refs``),
  so the peak is that of the block, not of the whole process. Attributes
  (MiB, None where unavailable): ``before``, ``peak``, ``increase``.
  """

  def __enter__(self):
    self.resettable = False
    try:
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
      self.resettable = True
    except OSError:
      pass
    kb = _status_kb('VmRSS')
    self.before = None if kb is None else kb / 1024
    return self

  def __exit__(self, *exc):
    kb = _status_kb('VmHWM') if self.resettable else None
    self.peak = None if kb is None else kb / 1024
    self.increase = (None if self.peak is None or self.before is None
                     else self.peak - self.before)
    return False


def device_peak_bytes():
  """The default device's peak bytes in use (GPU/TPU), or None (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not stats else stats.get('peak_bytes_in_use')


def probe(algorithm: str, num_inner_steps: int, remat: bool, width: int,
          num_directions: int, compiler_options=None) -> dict:
  """Compile, then run once in this process measuring the run's peak RSS."""
  est, args = setup(algorithm, num_inner_steps, remat, width=width,
                    num_directions=num_directions)
  compiled = jax.jit(est).lower(*args).compile(compiler_options=compiler_options)
  out = {'analysis': analysis_bytes(compiled)}
  jax.block_until_ready(args)
  with PeakRSS() as rss:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    out['run_s'] = time.perf_counter() - t0
  out.update(rss_before_mib=rss.before, rss_peak_mib=rss.peak,
             rss_increase_mib=rss.increase, device_peak_bytes=device_peak_bytes())
  return out


def main(argv):
  """``python -m benchmarks.memory ALGORITHM N remat|none WIDTH B [fast]``: one JSON line."""
  algorithm, steps, remat, width, b = argv[1:6]
  fast = len(argv) > 6 and argv[6] == 'fast'
  out = probe(algorithm, int(steps), remat == 'remat', int(width), int(b),
              compiler_options=agreement.FAST_COMPILE if fast else None)
  print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main(sys.argv)
