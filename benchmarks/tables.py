"""The markdown of benchmark results: one renderer per results JSON kind.

``markdown`` renders ``benchmarks.run``'s results (every section it ran),
``convnet_markdown`` its conv-net section, ``scaling_markdown`` and
``fewshot_memory_markdown`` the results of ``benchmarks.scaling`` and
``benchmarks.fewshot_memory``; ``table`` is the one table writer they share.
Pure Python over the JSON: neither PyTorch nor JAX is imported.
"""

from benchmarks import configs


def _fmt(x, digits=2):
  if x is None:
    return '-'
  if isinstance(x, float):
    return f'{x:.{digits}f}'
  return str(x)


def table(header, rows):
  """Markdown table lines: ``header`` cells, then a line per row of cells."""
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def cfg_rounds(results):
  """Rounds of the interleaved timings of the run that wrote ``results``."""
  return results['meta']['config']['rounds']


def markdown(results):
  """The markdown report of a run's ``results`` (the dict its JSON holds)."""
  meta = results['meta']
  lines = [f'# maml_jax benchmark results ({meta["name"]})', '',
           f'- Command: `{meta["command"]}`',
           f'- Date (UTC): {meta["date"]}; wall time {meta["wall_s"]:.0f} s',
           f'- Git commit: {meta.get("git_commit")}',
           f'- JAX {meta["jax"]} on {meta["jax_devices"]}; PyTorch {meta["torch"]} '
           f'(CPU, {meta["torch_threads"]} threads); {meta["cpu_count"]} CPUs '
           f'({meta["processor"]})',
           f'- Load average at start / end: {meta["load_start"]} / {meta["load_end"]}',
           '- Seconds per section: ' + ', '.join(
               f'{k} {v:.0f}' for k, v in meta['section_s'].items()),
           f'- XLA fast compile (backend optimizations off): {meta["fast_compile"]}',
           '- Times are medians over repeats, ms per meta-iteration (meta-gradient '
           'of the task batch + optimizer update).', '']
  if results.get('agreement'):
    lines += ['## Agreement with PyTorch (same params, tasks, directions)', '',
              '| problem | algorithm | torch impl | dtype | max rel. err (per task) '
              '| rel. err (task mean) | ok |', '|---|---|---|---|---|---|---|']
    for r in results['agreement']:
      mean = '-' if r['mean_rel_err'] is None else f'{r["mean_rel_err"]:.1e}'
      lines.append(f'| {r["problem"]} | {r["algorithm"]} | {r["impl"]} | {r["dtype"]} '
                   f'| {r["max_rel_err"]:.1e} | {mean} | {r["ok"]} |')
    lines.append('')
  if results.get('main'):
    lines += ['## Time per meta-iteration', '',
              f'Every implementation of a row is timed in turn, in {cfg_rounds(results)} '
              'rounds, so that load drift hits all of them; ms are medians over all '
              'calls, speedups are the median of the per-round ratios, with their '
              'range over the rounds in brackets.', '',
              '| problem | algorithm | torch loop ms | torch.func ms | jax step ms '
              '| jax fused ms | fused vs loop | fused vs best torch | step vs loop '
              '| compile s (step / fused) | XLA peak MiB (step) | torch threads (loop / func) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']

    def speedup(r, name):
      st = r['speedup_stats'][name]
      return f'{st["round_median"]:.1f}x ({st["round_min"]:.1f}-{st["round_max"]:.1f})'

    for r in results['main']:
      xla = r['jax_step']['xla_memory'].get('peak')
      lines.append(
          f'| {r["problem"]} | {r["algorithm"]} | {r["torch_loop"]["ms"]:.2f} '
          f'| {r["torch_func"]["ms"]:.2f} | {r["jax_step"]["ms"]:.3f} '
          f'| {r["jax_fused"]["ms"]:.3f} | {speedup(r, "fused_vs_torch_loop")} '
          f'| {speedup(r, "fused_vs_best_torch")} | {speedup(r, "step_vs_torch_loop")} '
          f'| {r["jax_step"]["compile_s"]:.1f} / {r["jax_fused"]["compile_s"]:.1f} '
          f'| {_fmt(None if xla is None else xla / configs.MiB, 3)} '
          f'| {r["torch_loop"]["threads"]} / {r["torch_func"]["threads"]} |')
    lines += ['', 'Peak RSS while each implementation ran its first round (MiB; process '
              'high-water mark reset before it; increase over the RSS at its start in '
              'brackets):', '',
              '| problem | algorithm | torch loop | torch.func | jax step | jax fused |',
              '|---|---|---|---|---|---|']
    for r in results['main']:
      cells = []
      for k in ('torch_loop', 'torch_func', 'jax_step', 'jax_fused'):
        cells.append(f'{_fmt(r[k]["rss_peak_mib"], 0)} (+{_fmt(r[k]["rss_increase_mib"], 1)})')
      lines.append(f'| {r["problem"]} | {r["algorithm"]} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  for name in ('steps', 'directions', 'tasks'):
    sw = results.get('sweeps', {}).get(name)
    if not sw:
      continue
    lines += [f'## Time vs {sw["param"]} ({sw["problem"]}; jax = jitted step, '
              'torch = loop)', '']
    algos = list(sw['jax_step_ms'])
    talgos = list(sw['torch_loop_ms'])
    lines.append('| ' + sw['param'] + ' | ' + ' | '.join(
        [f'jax {a} ms' for a in algos] + [f'torch {a} ms' for a in talgos]) + ' |')
    lines.append('|---' * (1 + len(algos) + len(talgos)) + '|')
    for i, v in enumerate(sw['values']):
      cells = [f'{sw["jax_step_ms"][a][i]:.3f}' for a in algos]
      cells += [f'{sw["torch_loop_ms"][a][i]:.1f}' for a in talgos]
      lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    for side, fits in (('jax', sw['fit_jax']), ('torch loop', sw['fit_torch'])):
      for a, fit in fits.items():
        if fit:
          lines.append(f'- Linear fit, {side} {a}: {fit["slope_ms"]:.4g} ms per unit '
                       f'of {sw["param"]} + {fit["intercept_ms"]:.4g} ms, '
                       f'R^2 = {fit["r2"]:.4f}')
    lines.append('')
  mem = results.get('memory')
  if mem:
    labels = list(mem['analysis_mib'])
    lines += [f'## Peak memory of one task\'s meta-gradient vs N (MLP 1-{mem["width"]}-'
              f'{mem["width"]}-1, {mem["num_params"]:,} parameters, b = '
              f'{mem["num_directions"]} for GGS)', '',
              'XLA compiled memory analysis, arguments + outputs + temporaries (MiB):', '',
              '| N | ' + ' | '.join(labels) + ' |', '|---' * (1 + len(labels)) + '|']
    for i, n in enumerate(mem['steps']):
      lines.append(f'| {n} | ' + ' | '.join(
          f'{mem["analysis_mib"][l][i]:.1f}' for l in labels) + ' |')
    if mem.get('ratio_256_vs_16'):
      lines += ['', 'Ratio peak(N=256) / peak(N=16): ' + ', '.join(
          f'{k} {v:.2f}x' for k, v in mem['ratio_256_vs_16'].items())]
    lines += ['', 'Measured in a fresh subprocess per configuration (compile, reset the '
              'RSS high-water mark, run once): peak RSS increase during the run, MiB:', '',
              '| configuration | N | RSS increase MiB | run s |', '|---|---|---|---|']
    for label, per_n in mem['rss'].items():
      for n, r in per_n.items():
        if 'error' in r:
          lines.append(f'| {label} | {n} | error | - |')
        else:
          lines.append(f'| {label} | {n} | {_fmt(r["rss_increase_mib"], 1)} '
                       f'| {r["run_s"]:.2f} |')
    lines.append('')
  if results.get('learned_lr'):
    lines += ['## Learned vs fixed inner step size', '',
              'Meta-SGD (params = `mj.LearnedInnerLR(params, mj.init_inner_lr('
              'params, alpha, kind))`, alpha trained by the same Adam) against '
              'the same estimator with alpha fixed. ms per meta-iteration (step: '
              'jitted train step on a fixed batch; fused: `mj.make_fused_train`), '
              f'both variants timed in turn in {cfg_rounds(results)} rounds; ratio '
              '= learned ms / fixed ms, with the median and range of the '
              'per-round ratios in brackets.', '',
              '| problem | algorithm | alpha | timed | fixed ms | learned ms | ratio '
              '| per-round ratio | compile s (fixed / learned) '
              '| XLA peak MiB (fixed / learned) |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in results['learned_lr']:
      st = r['ratio_stats']
      mib = [r[k]['xla_memory'].get('peak') for k in ('fixed', 'learned')]
      lines.append(
          f'| {r["problem"]} | {r["algorithm"]} | {r["kind"]} | {r["mode"]} '
          f'| {r["fixed"]["ms"]:.3f} | {r["learned"]["ms"]:.3f} | {r["ratio"]:.3f} '
          f'| {st["round_median"]:.3f} ({st["round_min"]:.3f}-{st["round_max"]:.3f}) '
          f'| {r["fixed"]["compile_s"]:.1f} / {r["learned"]["compile_s"]:.1f} '
          '| ' + ' / '.join(_fmt(None if m is None else m / configs.MiB, 3) for m in mib)
          + ' |')
    lines.append('')
  lines += convnet_markdown(results.get('convnet'))
  lines += ['## Targets', '']
  if not results.get('targets'):
    lines += ['Not evaluated: they need the sine rows of the main table, the '
              'memory sweep at N = 16 and 256 or the learned_lr section (the '
              'full run).', '']
  else:
    if meta['quick'] or meta['fast_compile']:
      lines += ['(Smoke-run shapes or unoptimized XLA: these do NOT evaluate the '
                'targets, which are defined for the full run.)', '']
    lines += ['| target | measured | met |', '|---|---|---|']
    for t in results['targets']:
      lines.append(f'| {t["target"]} | {t["measured"]:.2f} | {t["met"]} |')
    lines.append('')
  return '\n'.join(lines)


CONVNET_COLUMNS = (  # (key in a row, column title)
    ('torch_loop', 'torch loop'), ('torch_func', 'torch.func'),
    ('torch_torchopt', 'TorchOpt'), ('jax_step', 'jax step'),
    ('jax_step_devices', 'jax step, tasks over devices'),
    ('jax_step_vmap_xla', 'jax step, vmap + xla conv'),
    ('jax_user_model', "user's Flax model, library op, defaults"),
    ('jax_fused', 'jax fused'))


def convnet_markdown(conv):
  """The lines of the conv net section (``benchmarks.convnet``), [] without it."""
  if not conv:
    return []
  hp = conv['hparams']
  present = [(k, t) for k, t in CONVNET_COLUMNS
             if any(k in r for r in conv['rows'])]
  lines = [
      '## Few-shot conv net (Finn et al.), time per meta-iteration', '',
      f'{hp["ways"]}-way {hp["shots"]}-shot, {hp["query"]} query images per '
      f'class, {hp["num_tasks"]} tasks, 28x28x1 images, {hp["blocks"]} blocks '
      f'of {hp["filters"]} filters, N = {hp["num_inner_steps"]}, alpha = '
      f'{hp["inner_lr"]}, b = {hp["num_directions"]} (GGS-MAML), Adam. maml_jax: '
      f'task_batching={conv["task_batching"]!r}, conv_impl={conv["conv_impl"]!r} '
      '(the "vmap + xla conv" column: the naive task_batching="vmap", '
      'conv_impl="xla"). ' + (
          f'"tasks over devices" and fused: the tasks split over '
          f'{conv["devices"]} devices (make_train_step / make_fused_train '
          'with mesh=, one CPU device per core). '
          if conv.get('devices', 1) > 1 else '') + 'TorchOpt: ' + ('installed' if conv['torchopt'] else
                                          'not installed') + '. Every '
      f'implementation of a row is timed in turn in {conv["rounds"]} rounds; '
      'PyTorch figures are the best of the thread counts '
      f'{conv["torch_threads"]}. ms are medians over all calls; "x" columns: '
      "the faster PyTorch (loop or torch.func) ms / this implementation's ms, "
      'median of the per-round ratios (range in brackets); > 1 means faster '
      'than PyTorch.', '',
      '| algorithm | ' + ' | '.join(f'{t} ms' for _, t in present)
      + ' | ' + ' | '.join(f'{t} x' for k, t in present
                            if not k.startswith('torch_') or k == 'torch_torchopt')
      + ' | compile s (step / fused) |',
      '|---' * (1 + len(present) + sum(
          1 for k, _ in present if not k.startswith('torch_') or k == 'torch_torchopt')
                + 1) + '|']
  for r in conv['rows']:
    cells = [_fmt(r[k]['ms'], 0) if k in r else '-' for k, _ in present]
    for k, _ in present:
      if k.startswith('torch_') and k != 'torch_torchopt':
        continue
      st = r['speedup_stats'].get(k)
      cells.append('-' if st is None else f'{st["round_median"]:.2f}x '
                   f'({st["round_min"]:.2f}-{st["round_max"]:.2f})')
    cells.append(f'{r["jax_step"]["compile_s"]:.0f} / {r["jax_fused"]["compile_s"]:.0f}')
    lines.append(f'| {r["algorithm"]} | ' + ' | '.join(cells) + ' |')
  users = [r for r in conv['rows'] if 'user_model_vs_torch_loop' in r]
  if users:
    lines += ['', "The user's model (`benchmarks.convnet.UserConvNet`: Flax "
              '`nn.Conv(conv_general_dilated=mj.nn.conv_general_dilated)`, '
              '`nn.BatchNorm`, `mj.nn.max_pool`; `mj.make_train_step` with every '
              'default, one device) against the PyTorch loop itself, and its '
              'meta-gradient against the same model on '
              '`lax.conv_general_dilated` (relative L2 error, float32):', '',
              '| algorithm | user model ms | torch loop ms | x vs torch loop '
              '| task_batching chosen | meta-gradient rel. error |',
              '|---|---|---|---|---|---|']
    for r in users:
      st, info = r['user_model_vs_torch_loop'], r['jax_user_model']
      err = info.get('meta_gradient_rel_error_vs_lax')
      lines.append(
          f'| {r["algorithm"]} | {_fmt(info["ms"], 0)} | '
          f'{_fmt(r["torch_loop"]["ms"], 0)} | {st["round_median"]:.2f}x '
          f'({st["round_min"]:.2f}-{st["round_max"]:.2f}) | '
          f'{info.get("task_batching", "-")} | '
          + ('-' if err is None else f'{err:.1e}') + ' |')
  lines += ['', 'PyTorch threads of the figures above (loop / torch.func'
            + (' / TorchOpt' if conv['torchopt'] else '') + '): ' + '; '.join(
                f'{r["algorithm"]} ' + ' / '.join(
                    str(r[k]['threads']) for k in ('torch_loop', 'torch_func',
                                                   'torch_torchopt') if k in r)
                for r in conv['rows']), '']
  return lines


def scaling_markdown(res):
  """The report of ``benchmarks.scaling`` (its JSON ``res``): tasks/s over devices."""
  s = res['settings']
  lines = [
      f"# Scaling over tasks: {res['meta']['backend']} "
      f"({res['meta']['device_kind']})", '',
      f"Sine MAML-family meta-training, {s['tasks_per_batch']} tasks per batch "
      f"split over the devices of all processes (`mj.task_mesh()`), "
      f"N = {s['num_inner_steps']}, b = {s['num_directions']}, "
      f"{s['iterations']} meta-iterations per fused call, median of "
      f"{s['repeats']} calls. Machine: {res['meta']['machine']}. "
      f"{res['meta']['date']}, commit {res['meta']['commit']}.", '']
  rows = []
  for algorithm in s['algorithms']:
    base = next((r['results'][algorithm]['tasks_per_second']
                 for r in res['rows']
                 if r['processes'] == 1 and r['devices'] == 1), None)
    for r in res['rows']:
      m = r['results'][algorithm]
      ratio = f"{m['tasks_per_second'] / base:.2f}x" if base else '-'
      rows.append([algorithm, r['processes'],
                   f"{r['devices']} ({r['devices'] // r['processes']})",
                   f"{m['ms_per_iteration']:.1f}", f"{m['tasks_per_second']:.0f}",
                   ratio, f"{m['compile_s']:.1f}"])
  lines += table(['algorithm', 'processes', 'devices (per process)', 'ms / iteration',
                  'tasks / s', 'vs 1 device, 1 process', 'compile s'], rows)
  if s['platform'] == 'cpu':
    lines += ['', 'Forced host devices (`--xla_force_host_platform_device_'
              'count`) share this machine\'s CPU cores: a ratio above 1 is '
              'XLA using more of the cores at once (bounded by their number, '
              'not by the device count); across processes each all-reduce '
              'goes through gloo over TCP on 127.0.0.1. Not a measure of '
              'real devices\' speedup.']
  return '\n'.join(lines)


def fewshot_memory_markdown(result):
  """The report of ``benchmarks.fewshot_memory`` (its JSON ``result``): MiB vs N."""
  steps = result['steps']
  lines = [
      '# Few-shot conv net: peak memory of one task\'s meta-gradient vs N',
      '',
      f'- Command: `{result["command"]}`',
      f'- Date (UTC): {result["date"]}; JAX {result["jax"]} on '
      f'{result["backend"]}; conv_impl {result["conv_impl"]}',
      f'- Conv net with {result["filters"]} filters ({result["num_params"]} '
      f'parameters), {result["ways"]}-way {result["shots"]}-shot, '
      f'{result["query_shots"]} query images per class, b = '
      f'{result["num_directions"]} (GGS-MAML).',
      '- MiB = XLA buffer assignment of the jitted one-task meta-gradient '
      '(arguments + outputs + temporaries - aliased).',
      '']
  lines += table(['estimator'] + [f'N={n}' for n in steps],
                 [[label] + [f'{v:.1f}' for v in values]
                  for label, values in result['peak_mib'].items()])
  if result.get('targets'):
    lines += [''] + table(['target', 'measured', 'met'],
                          [[name, f'{t["measured"]:.2f}', t['met']]
                           for name, t in result['targets'].items()])
  return '\n'.join(lines)
