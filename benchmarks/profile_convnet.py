r"""Where one task's conv-net meta-gradient spends its time: XLA:CPU ops vs PyTorch ops.

    python -m benchmarks.profile_convnet [--iters=5] [--flags] [--name=profile_convnet]

Issue 14: on Finn et al.'s conv net maml_jax was slower than a PyTorch loop,
and its FO-MAML cost about as much as its MAML, so the gap is in the plain
forward/backward. This script profiles, for ONE task of the benchmark's
configuration (5-way 1-shot, 15 query images per class: 5 support and 75
query 28x28x1 images, 4 blocks of 64 filters, N = 1, alpha = 0.4):

* ``fwd_bwd``: value and gradient of the query loss (75 images);
* ``fo_maml``: the FO-MAML meta-gradient of the task (``mj.fo_maml``);
* ``maml``: the exact MAML meta-gradient (``mj.maml``).

maml_jax side: each jitted program is run under ``jax.profiler.trace``; the
trace has one event per executed XLA:CPU thunk, tagged with its HLO
instruction (``hlo_op``). Event self times (nested events, e.g. a while loop,
minus their children) are summed per instruction and the instruction is put
in a category from the optimized HLO (``compiled.as_text()``): a fusion by
the ops it contains (a convolution or dot inside wins, then pooling windows,
reductions, data movement, else elementwise). Every convolution and dot is
also listed with its shapes and dimension numbers, labelled forward/grad-input
or weight-gradient, so the transposed convolutions XLA emits for the backward
pass can be read off.

PyTorch side: the same computation (``benchmarks.torch_reference``: the loss,
``loop_task_meta_gradient``) under ``torch.profiler``, self CPU time per aten
op, in the same categories.

Wall times are measured in alternating rounds in this process, so the ratio
is trustworthy on a shared machine even when the absolute times are not.
PyTorch runs on ``--torch_threads`` (default 1: on a loaded 2-core machine
its 2-thread OpenMP loops slow down many times, 1 thread is its best), XLA on
its own thread pool.

``--flags`` also runs a child process per candidate XLA:CPU flag set (flags
must be set before JAX starts): whether XLA accepts the flag, how many
YNNPACK fusions the fwd_bwd program has ('matmul' and 'xla_vjp' in a
lax.map), and its wall time as a ratio to PyTorch's in that child.

Writes ``benchmarks/results/<name>.{json,md}``.
"""

import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import maml_jax as mj
from experiments import models

_ITERS = flags.DEFINE_integer('iters', 5, 'Traced (and timed) calls per program.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating timing rounds.')
_FLAGS = flags.DEFINE_bool('flags', False, 'Also try XLA:CPU flag sets in child processes.')
_NAME = flags.DEFINE_string('name', 'profile_convnet', 'Result file stem.')
_THREADS = flags.DEFINE_integer('torch_threads', 1, 'PyTorch threads (1: robust under load).')
_CHILD = flags.DEFINE_string('child', None, 'Internal: run the flag probe (value: rounds).')

RESULTS_DIR = os.path.join(os.path.dirname(__file__), 'results')

# One task of the benchmark's configuration (benchmarks/configs.py, CONVNET).
WAYS, SHOTS, QUERY, FILTERS, BLOCKS = 5, 1, 15, 64, 4
INNER_LR, NUM_INNER_STEPS = 0.4, 1
PROGRAMS = ('fwd_bwd', 'fo_maml', 'maml')

# Candidate XLA:CPU flag sets (names found in jaxlib's libjax_common.so; the
# LibraryFusionType values of --xla_cpu_experimental_ynn_fusion_type are dot,
# eltwise, reduce, individual_dot, individual_convolution).
FLAG_SETS = {
    'default': '',
    'ynn off': '--xla_cpu_experimental_ynn_fusion_type=',
    'ynn individual_dot only': '--xla_cpu_experimental_ynn_fusion_type=individual_dot',
    'ynn dot+conv only': ('--xla_cpu_experimental_ynn_fusion_type='
                          'individual_dot,individual_convolution'),
    'xnnpack off': '--xla_cpu_use_xnnpack=false',
    'onednn on': '--xla_cpu_use_onednn=true',
    'onednn custom call': '--xla_cpu_experimental_onednn_custom_call=true',
    'eigen single thread': '--xla_cpu_multi_thread_eigen=false',
    'fast math': '--xla_cpu_enable_fast_math=true',
    'concurrency scheduler off': '--xla_cpu_enable_concurrency_optimized_scheduler=false',
    'not a flag (control)': '--xla_cpu_no_such_flag=true',
}


# ----------------------------------------------------------------------------
# The programs.
# ----------------------------------------------------------------------------
def one_task(dtype=jnp.float32):
  """(params, task) of the benchmark's configuration, one task, no task axis."""
  k_p, k_s, k_q = jax.random.split(jax.random.PRNGKey(0), 3)
  params = mj.models.init_convnet_params(
      k_p, models.ConvNet(WAYS, FILTERS, BLOCKS, conv_impl='xla'), dtype=dtype)

  def batch(k, per_class):
    return {'x': jax.random.normal(k, (WAYS * per_class, 28, 28, 1), dtype),
            'y': jnp.repeat(jnp.arange(WAYS), per_class)}

  return params, mj.Task(batch(k_s, SHOTS), batch(k_q, QUERY))


def jax_program(program, conv_impl):
  """``f(params, task, key)`` of ``program`` with the conv net built on ``conv_impl``."""
  loss_fn = mj.models.make_convnet_loss(
      models.ConvNet(WAYS, FILTERS, BLOCKS, conv_impl=conv_impl))
  if program == 'fwd_bwd':
    return lambda p, t, k: jax.value_and_grad(loss_fn)(p, t.query)
  est = {'fo_maml': mj.fo_maml, 'maml': mj.maml}[program](
      loss_fn, inner_lr=INNER_LR, num_inner_steps=NUM_INNER_STEPS)
  return lambda p, t, k: est(p, t, k)[0]


def torch_program(program, params, task):
  """The same computation in PyTorch (``benchmarks.torch_reference``), a thunk."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference as tr  # pylint: disable=g-import-not-at-top
  flat = [torch.tensor(a) for a in tr.to_flat(tr.CONVNET, jax.tree.map(np.asarray, params))]
  support = tr.to_torch_batch(jax.tree.map(np.asarray, task.support))
  query = tr.to_torch_batch(jax.tree.map(np.asarray, task.query))
  if program == 'fwd_bwd':
    def run():
      w = [p.detach().requires_grad_() for p in flat]
      loss = tr.convnet_loss(w, query)
      return torch.autograd.grad(loss, w)
    return run
  return lambda: tr.loop_task_meta_gradient(
      tr.convnet_loss, program, flat, support, query, inner_lr=INNER_LR,
      num_inner_steps=NUM_INNER_STEPS)


# ----------------------------------------------------------------------------
# Optimized HLO: instruction -> category, convolution / dot details.
# ----------------------------------------------------------------------------
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z\-]*)\((.*)$')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition)=%?([\w.\-]+)')
_SHAPE = re.compile(r'[a-z]\d*\[([\d,]*)\]')
_OP_NAME = re.compile(r'op_name="([^"]*)"')

# Opcode -> category, by priority: a fusion takes the first category of the
# opcodes it contains.
CATEGORY_ORDER = (
    ('convolution', {'convolution'}),
    ('dot', {'dot'}),
    ('pool window', {'reduce-window', 'select-and-scatter'}),
    ('reduce', {'reduce'}),
    ('scatter/gather', {'scatter', 'gather'}),
    ('concatenate', {'concatenate'}),
    ('pad', {'pad'}),
    ('slice', {'slice', 'dynamic-slice', 'dynamic-update-slice'}),
    ('transpose/copy', {'transpose', 'copy'}),
)
CONTROL = {'while', 'call', 'conditional'}


def parse_hlo(text):
  """{instruction name: {'opcode', 'shape', 'calls', 'rest', 'op_name'}} of an HLO module."""
  insts, comps, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, shape, opcode, rest = m.groups()
      op_name = _OP_NAME.search(rest)
      insts[name] = {'opcode': opcode, 'shape': shape, 'rest': rest,
                     'calls': _CALLS.findall(rest), 'computation': current,
                     'op_name': op_name.group(1) if op_name else ''}
      comps[current].append(name)
      continue
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
  return insts, comps


def _opcodes_in(comp, comps, insts, seen=None):
  seen = set() if seen is None else seen
  out = set()
  if comp in seen:
    return out
  seen.add(comp)
  for name in comps.get(comp, ()):
    inst = insts[name]
    out.add(inst['opcode'])
    if inst['opcode'] == 'fusion':
      for c in inst['calls']:
        out |= _opcodes_in(c, comps, insts, seen)
  return out


def categorize(name, insts, comps):
  """Category of the HLO instruction ``name`` (see CATEGORY_ORDER)."""
  inst = insts.get(name)
  if inst is None:
    return 'unknown'
  opcode = inst['opcode']
  if opcode in CONTROL:
    return 'control (while/call)'
  ops = {opcode}
  if opcode == 'fusion':
    ops = set()
    for c in inst['calls']:
      ops |= _opcodes_in(c, comps, insts)
  for category, members in CATEGORY_ORDER:
    if ops & members:
      return category
  return 'elementwise'


def _dims(shape):
  m = _SHAPE.search(shape)
  return tuple(int(d) for d in m.group(1).split(',') if d) if m else ()


def contractions(insts, comps):
  """Every convolution and dot: {fusion or instruction name: description}.

  The key is the executed instruction (the fusion that holds the op, found
  through ``calls``), so that it joins with the profile.
  """
  owner = {}
  for name, inst in insts.items():
    if inst['opcode'] == 'fusion':
      stack = list(inst['calls'])
      while stack:
        c = stack.pop()
        for n in comps.get(c, ()):
          owner.setdefault(n, name)
          stack += insts[n]['calls'] if insts[n]['opcode'] == 'fusion' else []
  out = {}
  for name, inst in insts.items():
    if inst['opcode'] not in ('convolution', 'dot'):
      continue
    operands = re.findall(r'%([\w.\-]+)', inst['rest'].split(')')[0])
    shapes = [_dims(insts[o]['shape']) if o in insts else () for o in operands]
    attrs = dict(re.findall(r'(\w+)=([^\s,]+(?:\s*pad=[^\s,]+)?)', inst['rest']))
    out_shape = _dims(inst['shape'])
    desc = {'op': inst['opcode'], 'operands': shapes, 'out': out_shape,
            'op_name': inst['op_name']}
    if inst['opcode'] == 'convolution':
      window = re.search(r'window=\{size=([\dx]+)', inst['rest'])
      desc['window'] = window.group(1) if window else ''
      desc['dim_labels'] = attrs.get('dim_labels', '')
      for k in ('feature_group_count', 'batch_group_count'):
        if k in attrs:
          desc[k] = int(attrs[k])
      # A 3x3 window computes the output (forward) or the input gradient; a
      # window as large as the image is the kernel gradient (the images and
      # the output gradients convolved, batch contracted).
      size = [int(s) for s in desc['window'].split('x')] if desc['window'] else []
      desc['role'] = 'weight grad' if size and max(size) > 3 else 'fwd or input grad'
    else:
      for k in ('lhs_contracting_dims', 'rhs_contracting_dims', 'lhs_batch_dims',
                'rhs_batch_dims'):
        m = re.search(k + r'=\{([\d,]*)\}', inst['rest'])
        if m:
          desc[k] = m.group(1)
      # im2col: the kernel gradient is [9 C_in, C_out] (or its transpose), a
      # contraction over the batch x pixels axis.
      desc['role'] = ('weight grad' if len(out_shape) == 2 and min(out_shape) >= 9
                      and max(out_shape) <= 9 * FILTERS and out_shape[0] != out_shape[1]
                      and (out_shape[0] % 9 == 0 or out_shape[1] % 9 == 0)
                      else 'fwd or input grad')
    out[owner.get(name, name)] = desc
  return out


# ----------------------------------------------------------------------------
# Traces.
# ----------------------------------------------------------------------------
def _self_times(events):
  """Self time (ns) of each event: its duration minus its direct children's."""
  events = sorted(events, key=lambda e: (e[0], -e[1]))
  self_ns = [e[1] - e[0] for e in events]
  stack = []
  for i, (start, end, _) in enumerate(events):
    while stack and events[stack[-1]][1] <= start:
      stack.pop()
    if stack:
      self_ns[stack[-1]] -= end - start
    stack.append(i)
  return [(e[2], s) for e, s in zip(events, self_ns)]


def trace_hlo_ops(fn, iters):
  """Runs ``fn`` ``iters`` times under ``jax.profiler``: {hlo_op: self ns per call}."""
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    for _ in range(iters):
      fn()
    jax.profiler.stop_trace()
    paths = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs
             if f.endswith('.xplane.pb')]
    data = jax.profiler.ProfileData.from_file(paths[0])
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      events = []
      for e in line.events:
        stats = dict(e.stats)
        if 'hlo_op' in stats:
          events.append((e.start_ns, e.start_ns + e.duration_ns, stats['hlo_op']))
      for name, ns in _self_times(events):
        per_op[name] += ns
  return {k: v / iters for k, v in per_op.items()}


# ----------------------------------------------------------------------------
# PyTorch.
# ----------------------------------------------------------------------------
TORCH_CATEGORIES = (
    ('convolution', ('conv', 'mkldnn_convolution')),
    ('dot', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::matmul', 'aten::linear')),
    ('batch norm', ('batch_norm',)),
    ('pool', ('max_pool',)),
    ('relu', ('relu', 'clamp_min', 'threshold_backward')),
    ('loss', ('softmax', 'nll_loss', 'cross_entropy')),
    ('copy/fill/layout', ('copy_', 'fill_', 'zero_', 'permute', 'contiguous', 'clone',
                          'empty', 'to_copy', 'as_strided', 'view', 'reshape',
                          'transpose', 'expand', 'flatten', 'detach', 'slice', 'select')),
)
# Coarse groups shared by both sides.
COARSE = {
    'convolution': 'conv / matmul', 'dot': 'conv / matmul',
    'batch norm': 'BN, ReLU, pool, loss, elementwise', 'pool': 'BN, ReLU, pool, loss, elementwise',
    'relu': 'BN, ReLU, pool, loss, elementwise', 'loss': 'BN, ReLU, pool, loss, elementwise',
    'elementwise': 'BN, ReLU, pool, loss, elementwise',
    'reduce': 'BN, ReLU, pool, loss, elementwise',
    'pool window': 'BN, ReLU, pool, loss, elementwise',
    'scatter/gather': 'BN, ReLU, pool, loss, elementwise',
    'copy/fill/layout': 'data movement', 'transpose/copy': 'data movement',
    'concatenate': 'data movement', 'pad': 'data movement', 'slice': 'data movement',
}


def torch_category(op):
  for category, keys in TORCH_CATEGORIES:
    if any(k in op for k in keys):
      return category
  return 'elementwise' if op.startswith('aten::') else 'autograd/other'


def torch_op_profile(fn, iters):
  """{aten op: self CPU ms per call} of ``fn`` under ``torch.profiler``."""
  from torch import profiler  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(iters):
      fn()
  return {e.key: e.self_cpu_time_total / 1e3 / iters for e in prof.key_averages()
          if e.self_cpu_time_total > 0}


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
# (name, conv_impl, in a loop body?): the benchmark runs each task inside a
# lax.map (task_batching='map'), where XLA does not canonicalize
# convolutions; 'xla, entry' is the same program at the top level.
JAX_VARIANTS = (('xla, entry', 'xla', False), ('xla, in lax.map', 'xla', True),
                ('matmul, in lax.map', 'matmul', True),
                ('xla_vjp, in lax.map', 'xla_vjp', True))


def compile_jax(program, conv_impl, in_map, params, task, key):
  """(blocking thunk, compiled) of one task's ``program``; ``in_map``: as the body of a
  ``lax.map`` over 2 copies of the task, the thunk's time halved by the caller."""
  fn = jax_program(program, conv_impl)
  if in_map:
    tasks = jax.tree.map(lambda x: jnp.stack([x, x]), task)
    jitted = jax.jit(lambda p, t, k: jax.lax.map(lambda tt: fn(p, tt, k), t))
    compiled = jitted.lower(params, tasks, key).compile()
    return (lambda: jax.block_until_ready(compiled(params, tasks, key))), compiled
  compiled = jax.jit(fn).lower(params, task, key).compile()
  return (lambda: jax.block_until_ready(compiled(params, task, key))), compiled


def _round_medians(thunks, rounds, calls, divisors):
  times = {name: [] for name in thunks}
  for _ in range(rounds):
    for name, thunk in thunks.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        thunk()
      times[name].append(1e3 * (time.perf_counter() - t0) / calls / divisors[name])
  return times


def jax_breakdown(ops, compiled, divisor):
  """Per category and per convolution / dot (ms per task) of a traced program."""
  insts, comps = parse_hlo(compiled.as_text())
  cats = collections.Counter()
  for name, ns in ops.items():
    cats[categorize(name, insts, comps)] += ns / 1e6 / divisor
  cons = contractions(insts, comps)
  rows = []
  for name, desc in cons.items():
    rows.append(dict(desc, instruction=name, ms=ops.get(name, 0.0) / 1e6 / divisor,
                     library=name.startswith('ynn_fusion')))
  rows.sort(key=lambda r: -r['ms'])
  return {'categories': dict(cats.most_common()), 'contractions': rows,
          'op_ms_total': sum(cats.values())}


def profile_all(iters, rounds, threads):
  """Traces, torch profiles and alternating wall times of every program."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  params, task = one_task()
  key = jax.random.PRNGKey(1)
  out = {'programs': {}, 'torch_threads': threads}
  for program in PROGRAMS:
    thunks, divisors, compiled = {}, {}, {}
    for name, conv_impl, in_map in JAX_VARIANTS:
      thunks[name], compiled[name] = compile_jax(program, conv_impl, in_map, params,
                                                 task, key)
      divisors[name] = 2 if in_map else 1
    thunks['torch'] = torch_program(program, params, task)
    divisors['torch'] = 1
    for thunk in thunks.values():
      thunk()
    wall = _round_medians(thunks, rounds, 2, divisors)
    entry = {'wall_ms': {k: statistics.median(v) for k, v in wall.items()},
             'wall_ms_min': {k: min(v) for k, v in wall.items()},
             'wall_rounds_ms': wall, 'jax': {}}
    for name, _, _ in JAX_VARIANTS:
      ops = trace_hlo_ops(thunks[name], iters)
      entry['jax'][name] = jax_breakdown(ops, compiled[name], divisors[name])
    torch_ops = torch_op_profile(thunks['torch'], iters)
    cats = collections.Counter()
    for op, ms in torch_ops.items():
      cats[torch_category(op)] += ms
    entry['torch'] = {'categories': dict(cats.most_common()),
                      'top_ops': dict(sorted(torch_ops.items(), key=lambda kv: -kv[1])[:12]),
                      'op_ms_total': sum(cats.values())}
    out['programs'][program] = entry
    logging_line = ', '.join(f'{k} {v:.0f}' for k, v in entry['wall_ms'].items())
    print(f'{program}: wall ms per task: {logging_line}', flush=True)
  return out


# ----------------------------------------------------------------------------
# XLA flags, one child process each.
# ----------------------------------------------------------------------------
def child_probe(rounds):
  """In a child (XLA_FLAGS set): YNN fusion count and wall-time ratio torch / jax."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  params, task = one_task()
  key = jax.random.PRNGKey(1)
  res = {}
  for program in ('fwd_bwd',):
    thunks, divisors, ynn = {}, {}, {}
    for name, conv_impl, in_map in JAX_VARIANTS[2:]:
      thunks[name], compiled = compile_jax(program, conv_impl, in_map, params, task, key)
      divisors[name] = 2
      ynn[name] = compiled.as_text().count('__ynn_fusion')
    thunks['torch'] = torch_program(program, params, task)
    divisors['torch'] = 1
    for thunk in thunks.values():
      thunk()
    wall = _round_medians(thunks, rounds, 1, divisors)
    for name in ynn:
      ratios = [t / j for t, j in zip(wall['torch'], wall[name])]
      res[f'{program} {name}'] = {'ynn_fusions': ynn[name],
                                  'ms': statistics.median(wall[name]),
                                  'torch_over_jax': statistics.median(ratios)}
  print('PROBE ' + json.dumps(res))


def probe_flags(rounds):
  """Runs ``child_probe`` under each of FLAG_SETS; an unknown flag is reported as such."""
  out = {}
  for label, flag in FLAG_SETS.items():
    env = dict(os.environ, XLA_FLAGS=flag)
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.profile_convnet', f'--child={rounds}'],
        env=env, capture_output=True, text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith('PROBE ')]
    if line:
      out[label] = {'flag': flag, 'accepted': True, 'result': json.loads(line[-1][6:])}
    else:
      err = [l for l in proc.stderr.splitlines() if 'flag' in l.lower()] or [proc.stderr[-300:]]
      out[label] = {'flag': flag, 'accepted': False, 'error': err[-1][-300:]}
    print(f'flags {label!r}: {"ok" if line else "refused"}', flush=True)
  return out


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------
def _coarse(categories):
  out = collections.Counter()
  for cat, ms in categories.items():
    out[COARSE.get(cat, 'other')] += ms
  return out


def markdown(res):
  lines = [f'# Conv net, one task: where the time goes ({res["date"]})', '',
           f'JAX {res["jax"]}, PyTorch {res["torch"]}, {res["cpus"]} CPUs, load average '
           f'{res["load"][0]} at start / {res["load"][1]} at end. One task of the benchmark: '
           f'{WAYS}-way {SHOTS}-shot, {WAYS * SHOTS} support and {WAYS * QUERY} query 28x28x1 '
           f'images, {BLOCKS} blocks of {FILTERS} filters, N = {NUM_INNER_STEPS}. PyTorch on '
           f'{res["profile"]["torch_threads"]} thread(s), XLA on its own pool. "in lax.map": '
           'the program is the body of a lax.map over two copies of the task (as with '
           "task_batching='map'), times halved.", '',
           '## Wall time per task (median of alternating rounds; min in brackets)', '',
           '| program | ' + ' | '.join(n for n, _, _ in JAX_VARIANTS) + ' | PyTorch loop |',
           '|---' * (len(JAX_VARIANTS) + 2) + '|']
  for program, entry in res['profile']['programs'].items():
    cells = [f'{entry["wall_ms"][n]:.0f} ({entry["wall_ms_min"][n]:.0f})'
             for n, _, _ in JAX_VARIANTS + (('torch', None, None),)]
    lines.append(f'| {program} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Op time per task by category (ms, share of the summed op time)', '',
            'maml_jax: self time of the XLA:CPU thunks (``jax.profiler``), by HLO category; '
            'PyTorch: self CPU time of the aten ops (``torch.profiler``). Profiling costs '
            'time on both sides and XLA may run independent thunks at once, so the sums '
            'differ from the wall times; compare the shares.', '']
  for program, entry in res['profile']['programs'].items():
    lines += [f'### {program}', '', '| side | category | ms | share |', '|---|---|---|---|']
    sides = [(n, entry['jax'][n]) for n, _, _ in JAX_VARIANTS] + [('PyTorch', entry['torch'])]
    for side, data in sides:
      total = data['op_ms_total'] or 1.0
      for cat, ms in data['categories'].items():
        if ms >= 0.005 * total:
          lines.append(f'| {side} | {cat} | {ms:.1f} | {100 * ms / total:.0f}% |')
    lines += ['', '| side | coarse group | ms | share |', '|---|---|---|---|']
    for side, data in sides:
      total = data['op_ms_total'] or 1.0
      for cat, ms in _coarse(data['categories']).most_common():
        lines.append(f'| {side} | {cat} | {ms:.1f} | {100 * ms / total:.0f}% |')
    lines.append('')
  lines += ['## Convolutions and dots of one task\'s fwd_bwd, as XLA compiled them', '',
            'library: inside a YNNPACK fusion (``__ynn_fusion``); otherwise XLA\'s own '
            'emitter. Operand shapes in the dimension order the HLO holds them.', '']
  for name, _, _ in JAX_VARIANTS:
    rows = res['profile']['programs']['fwd_bwd']['jax'][name]['contractions']
    lines += [f'### {name}', '', '| ms | op | role | operands -> out | window / dims | library |',
              '|---|---|---|---|---|---|']
    for r in rows:
      if r['op'] == 'convolution':
        dims = f'{r.get("window")} {r.get("dim_labels")}'
      else:
        dims = f'contract {r.get("lhs_contracting_dims")} x {r.get("rhs_contracting_dims")}'
      shapes = ' x '.join(str(list(s)) for s in r['operands'])
      lines.append(f'| {r["ms"]:.2f} | {r["op"]} | {r["role"]} | {shapes} -> '
                   f'{list(r["out"])} | {dims} | {"yes" if r["library"] else "no"} |')
    lines.append('')
  if res.get('flags'):
    lines += ['## XLA:CPU flags (child processes; torch / jax wall-time ratio in the child, '
              '> 1: jax faster)', '', '| flag set | XLA_FLAGS | accepted | result |',
              '|---|---|---|---|']
    for label, r in res['flags'].items():
      if r['accepted']:
        desc = '; '.join(f'{k}: {v["ms"]:.0f} ms, x{v["torch_over_jax"]:.2f}, '
                         f'{v["ynn_fusions"]} ynn' for k, v in r['result'].items())
      else:
        desc = r['error']
      lines.append(f'| {label} | `{r["flag"]}` | {r["accepted"]} | {desc} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  if _CHILD.value is not None:
    child_probe(int(_CHILD.value))
    return
  import torch  # pylint: disable=g-import-not-at-top
  res = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
         'jax': jax.__version__, 'torch': torch.__version__, 'cpus': os.cpu_count(),
         'load': [round(os.getloadavg()[0], 1)]}
  res['profile'] = profile_all(_ITERS.value, _ROUNDS.value, _THREADS.value)
  if _FLAGS.value:
    res['flags'] = probe_flags(_ROUNDS.value)
  res['load'].append(round(os.getloadavg()[0], 1))
  os.makedirs(RESULTS_DIR, exist_ok=True)
  stem = os.path.join(RESULTS_DIR, _NAME.value)
  with open(stem + '.json', 'w') as f:
    json.dump(res, f, indent=1, default=float)
  md = markdown(res)
  with open(stem + '.md', 'w') as f:
    f.write(md)
  print(md)


if __name__ == '__main__':
  app.run(main)
