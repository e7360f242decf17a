r"""Data-parallel scaling over tasks: tasks per second vs devices and processes.

    python -m benchmarks.scaling                  # CPU: 1, 2, 4, 8 forced host devices x 1, 2 processes
    python -m benchmarks.scaling --quick          # CI-sized (tests/benchmarks/test_accelerator_check.py runs it)
    python -m benchmarks.scaling --platform=accelerator   # 1, 2, 4, ... of the GPUs/TPUs JAX finds, 1 process

Every configuration runs in fresh processes (``XLA_FLAGS`` is read once, when
JAX starts): with P processes, P of them on 127.0.0.1 joined by
``jax.distributed`` (a free port), each with D / P devices, the task batch
split over all D devices of the global ``mj.task_mesh()``. The timed program
is ``mj.make_fused_train(..., mesh=mesh)``: ``--iterations`` meta-iterations of
sine regression (the paper's setting: MLP 1-40-40-1, K = 10, N = 3, Adam,
``--tasks_per_batch`` tasks drawn on device) per compiled call, the median
of ``--repeats`` calls after a warm-up. Tasks per second = tasks per batch x
iterations / seconds.

What forced host devices can and cannot show: ``--xla_force_host_platform_
device_count=D`` splits ONE CPU into D XLA devices that share its cores. A
ratio above 1 is XLA running the devices' shares on different cores at once
(small per-task ops often leave a core idle on one device), bounded by the
number of cores, not by D; across processes every all-reduce goes through
gloo over TCP on 127.0.0.1. The table shows that the sharded program runs and
what partitioning and cross-process reductions cost on this machine; it says
nothing about the speedup of real devices, which have their own compute and
interconnect.

Writes ``<out_dir>/<name>.json`` and ``<name>.md`` (default name: scaling,
quick_scaling with --quick); ``--report=<name>.json`` rebuilds the markdown.
"""

import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import report

_QUICK = flags.DEFINE_bool('quick', False, 'CI-sized run: tiny shapes, 2 configurations.')
_PLATFORM = flags.DEFINE_enum(
    'platform', 'cpu', ['cpu', 'accelerator'],
    'cpu: forced host devices, 1 and 2 processes; accelerator: the first 1, '
    "2, 4, ... of JAX's default devices, 1 process.")
_DEVICES = flags.DEFINE_list('devices', None,
                             'Device counts (default 1,2,4,8; quick: 1,2).')
_PROCESSES = flags.DEFINE_list('processes', None,
                               'Process counts, cpu platform (default 1,2).')
_ALGORITHMS = flags.DEFINE_list('algorithms', ['maml', 'ggs_maml'],
                                'Estimators timed (mj.ESTIMATORS names).')
_TASKS = flags.DEFINE_integer('tasks_per_batch', None,
                              'Tasks per meta-iteration (default 32; quick 4).')
_ITERATIONS = flags.DEFINE_integer('iterations', None,
                                   'Meta-iterations per timed call (default 10).')
_REPEATS = flags.DEFINE_integer('repeats', None, 'Timed calls (default 5).')
_OUT_DIR = flags.DEFINE_string('out_dir', 'benchmarks/results', 'Where results go.')
_NAME = flags.DEFINE_string('name', None, 'Results file stem.')
_TIMEOUT = flags.DEFINE_integer('timeout', 600, 'Seconds per configuration.')
_REPORT = flags.DEFINE_string('report', None,
                              'Rebuild <name>.md from this JSON and exit.')
# Internal: one process of one configuration.
_WORKER = flags.DEFINE_string('worker', None, 'JSON settings of a worker process.')


def settings_from_flags():
  quick = _QUICK.value
  accelerator = _PLATFORM.value == 'accelerator'
  devices = [int(d) for d in (_DEVICES.value or (['1', '2'] if quick else
                                                 ['1', '2', '4', '8']))]
  processes = [1] if accelerator else [
      int(p) for p in (_PROCESSES.value or ['1', '2'])]
  return dict(
      platform=_PLATFORM.value, devices=devices, processes=processes,
      algorithms=list(_ALGORITHMS.value),
      tasks_per_batch=_TASKS.value or (4 if quick else 32),
      iterations=_ITERATIONS.value or (2 if quick else 10),
      repeats=_REPEATS.value or (1 if quick else 5),
      num_inner_steps=1 if quick else 3, num_directions=2 if quick else 10,
      quick=quick)


def configurations(s):
  """(processes, devices) pairs to run: devices divisible by processes."""
  return [(p, d) for p in s['processes'] for d in s['devices']
          if d % p == 0 and d >= p and s['tasks_per_batch'] % d == 0]


# ---------------------------------------------------------------- worker side


def worker(spec):
  """One process of one configuration; process 0 prints a RESULT line."""
  import jax  # pylint: disable=g-import-not-at-top
  if spec['processes'] > 1:
    jax.distributed.initialize(
        f'127.0.0.1:{spec["port"]}', spec['processes'], spec['process_id'],
        initialization_timeout=120)
  import optax  # pylint: disable=g-import-not-at-top
  import maml_jax as mj  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  if spec['platform'] == 'accelerator':
    devices = devices[:spec['devices']]
  if len(devices) != spec['devices']:
    raise RuntimeError(f'asked for {spec["devices"]} devices, JAX has '
                       f'{len(jax.devices())}')
  mesh = mj.task_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sample = lambda key: mj.tasks.sine_tasks(key, spec['tasks_per_batch'])
  optimizer = optax.adam(1e-3)
  key = jax.random.PRNGKey(0)
  out = {}
  for algorithm in spec['algorithms']:
    hp = dict(inner_lr=0.01, num_inner_steps=spec['num_inner_steps'],
              num_directions=spec['num_directions'], delta=1e-2)
    est = mj.make_estimator(algorithm, mj.models.sine_loss,
                            **mj.estimator_kwargs(algorithm, **hp))
    run = jax.jit(mj.make_fused_train(est, optimizer, sample,
                                      spec['iterations'], jit=False,
                                      mesh=mesh), out_shardings=replicated)
    state, k = mj.replicate(
        (mj.init_train_state(mj.models.init_sine_params(key), optimizer), key),
        mesh)
    t0 = time.perf_counter()
    compiled = run.lower(state, k).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, k)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(spec['repeats']):
      t0 = time.perf_counter()
      state, metrics = compiled(state, k)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    out[algorithm] = dict(
        compile_s=compile_s, seconds_per_call=seconds, times=times,
        ms_per_iteration=1e3 * seconds / spec['iterations'],
        tasks_per_second=spec['tasks_per_batch'] * spec['iterations'] / seconds)
  if jax.process_index() == 0:
    print('RESULT ' + json.dumps(dict(
        backend=jax.default_backend(), device_kind=devices[0].device_kind,
        process_count=jax.process_count(), device_count=len(devices),
        local_devices=jax.local_device_count(), results=out)), flush=True)


# ---------------------------------------------------------------- driver side


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_configuration(s, processes, devices):
  """Runs one configuration's processes; returns process 0's RESULT dict."""
  port = _free_port()
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  if s['platform'] == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
    flags_ = [f for f in env.get('XLA_FLAGS', '').split()
              if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(flags_ + [
        f'--xla_force_host_platform_device_count={devices // processes}'])
  procs = []
  for i in range(processes):
    spec = dict(s, processes=processes, devices=devices, process_id=i,
                port=port)
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.scaling',
         '--worker=' + json.dumps(spec)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  outputs, deadline = [], time.monotonic() + _TIMEOUT.value
  try:
    for p in procs:
      outputs.append(p.communicate(
          timeout=max(1.0, deadline - time.monotonic()))[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise RuntimeError(f'{processes} processes x {devices} devices: timed '
                       f'out after {_TIMEOUT.value} s') from None
  for p, text in zip(procs, outputs):
    if p.returncode != 0:
      raise RuntimeError(f'{processes} processes x {devices} devices failed '
                         f'(exit {p.returncode}):\n{text[-3000:]}')
  for line in outputs[0].splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  raise RuntimeError(f'no RESULT line:\n{outputs[0][-3000:]}')


def main(argv):
  del argv
  if _WORKER.value:
    worker(json.loads(_WORKER.value))
    return
  if _REPORT.value:
    print(report.rebuild(_REPORT.value, with_plots=False))
    return
  s = settings_from_flags()
  rows, meta = [], {}
  start = time.time()
  for processes, devices in configurations(s):
    t0 = time.time()
    result = run_configuration(s, processes, devices)
    meta = dict(backend=result['backend'], device_kind=result['device_kind'])
    rows.append(dict(processes=processes, devices=devices,
                     results=result['results'],
                     wall_s=time.time() - t0))
    print(f'{processes} process(es) x {devices} device(s): ' + ', '.join(
        f"{a} {m['tasks_per_second']:.0f} tasks/s ({m['ms_per_iteration']:.1f}"
        ' ms/it)' for a, m in result['results'].items()), flush=True)
  if not rows:
    raise app.UsageError('no configuration: --tasks_per_batch must divide '
                         'over the device counts')
  meta.update(
      date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
      commit=report.git_commit(), wall_s=time.time() - start,
      machine=f'{platform.machine()}, {os.cpu_count()} CPU threads, load '
      f'{os.getloadavg()[0]:.1f} at the end',
      python=platform.python_version(), command=' '.join(sys.argv))
  res = dict(meta=meta, settings=s, rows=rows)
  name = _NAME.value or ('quick_scaling' if s['quick'] else 'scaling')
  report.save_json_and_markdown(res, _OUT_DIR.value, name)


if __name__ == '__main__':
  app.run(main)
