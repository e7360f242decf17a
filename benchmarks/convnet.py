"""The ``convnet`` section of ``benchmarks.run``: few-shot conv net meta-training speed.

Finn et al.'s 4-block conv net (``mj.models.ConvNet``: 3x3 conv,
batch-statistics BatchNorm, ReLU, 2x2 max-pool; linear head) on 28x28 grey
images, N-way K-shot tasks with Q query images per class (docs/design.md, 'Experiments').
The images are Gaussian noise: the time of a meta-iteration depends on the
shapes only, and the benchmark needs no data set.

Every task adapts its own copy of the weights, so ``jax.vmap`` over tasks turns
each convolution into a grouped one (feature_group_count = number of tasks),
which XLA:CPU runs slowly. The timed maml_jax configurations therefore name
how the task axis is batched (``task_batching``, see ``mj.meta_gradient``) and
how the convolutions are computed (``conv_impl``, see
``experiments.models.conv_op``: 'xla_vjp' is ``mj.nn.conv_general_dilated``).
Each row (one algorithm) times, in alternating rounds:

* ``jax_step``: the jitted ``mj.make_train_step`` with the section's
  ``task_batching`` / ``conv_impl`` (configs: 'map' / 'xla_vjp');
* ``jax_step_devices`` (when the process has several devices, e.g. one
  CPU device per core: ``benchmarks.run --cpu_devices``): the same step
  with the tasks split over the devices (``make_train_step(..., mesh=)``);
* ``jax_step_vmap_xla`` (MAML row only, by default): the same with 'vmap' /
  'xla', the naive configuration, for contrast;
* ``jax_user_model``: ``UserConvNet``, the net as a user writes it in Flax
  with the library's layers, and ``mj.make_train_step`` with every default
  (``task_batching='auto'``, one device), against the PyTorch loop itself;
* ``jax_fused``: ``mj.make_fused_train`` (tasks sampled on device, several
  meta-iterations per compiled call), best configuration (over the devices
  when there are several);
* ``torch_loop`` / ``torch_func``: the PyTorch reference
  (``benchmarks.torch_reference``: Python loop with ``create_graph``, and
  ``torch.func`` vmapped over tasks), best of the thread counts tried;
* ``torchopt`` (MAML and FO-MAML, when TorchOpt is installed): the loop with
  TorchOpt's differentiable functional SGD as the inner step.

All PyTorch versions and maml_jax run the same meta-optimizer (Adam).
"""


from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import maml_jax as mj
from benchmarks import agreement
from benchmarks import cases as cases_lib
from benchmarks import timing
from benchmarks import torch_reference as tr
from experiments import models


def torchopt_available():
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec('torchopt') is not None


def sample_tasks(key, num_tasks, *, ways, shots, query, image_shape=(28, 28, 1),
                 dtype=jnp.float32):
  """``num_tasks`` synthetic N-way K-shot tasks: Gaussian images, labels 0..N-1.

  Returns:
    ``mj.Task`` with support ``{'x': [T, N K, *image_shape], 'y': [T, N K]}``
    and query ``{'x': [T, N Q, *image_shape], 'y': [T, N Q]}``.
  """
  k_s, k_q = jax.random.split(key)

  def batch(k, per_class):
    x = jax.random.normal(k, (num_tasks, ways * per_class) + tuple(image_shape), dtype)
    y = jnp.tile(jnp.repeat(jnp.arange(ways), per_class), (num_tasks, 1))
    return {'x': x, 'y': y}

  return mj.Task(batch(k_s, shots), batch(k_q, query))


def setup(hp, *, conv_impl=None, key=None, dtype=jnp.float32):
  """(loss_fn, params, tasks) of the conv net with the hyperparameters ``hp``."""
  key = jax.random.PRNGKey(0) if key is None else key
  k_p, k_t = jax.random.split(key)
  model = models.ConvNet(hp['ways'], filters=hp['filters'], blocks=hp['blocks'],
                         conv_impl=conv_impl)
  params = models.init_convnet_params(k_p, model, dtype=dtype)
  tasks = sample_tasks(k_t, hp['num_tasks'], ways=hp['ways'], shots=hp['shots'],
                       query=hp['query'], dtype=dtype)
  return models.make_convnet_loss(model), params, tasks


def estimator(algorithm, loss_fn, hp):
  """The maml_jax estimator of a row, doing the PyTorch versions' work.

  ``loss_before=False`` (the library's default): the PyTorch loops do not
  evaluate the query loss at w_0 either; on this net it would be one more
  forward pass of the 75 query images per task, ~20% of a FO-MAML step.
  """
  return agreement.jax_estimator(
      algorithm, loss_fn, inner_lr=hp['inner_lr'],
      num_inner_steps=hp['num_inner_steps'],
      num_directions=hp['num_directions'], delta=hp['delta'], loss_before=False)


def task_devices(num_tasks):
  """The largest number of this process's devices that divides ``num_tasks``."""
  return max(n for n in range(1, jax.local_device_count() + 1)
             if num_tasks % n == 0)


def _mesh(devices):
  return None if devices <= 1 else mj.task_mesh(jax.local_devices()[:devices])


def prepare_jax_step(algorithm, hp, *, task_batching, conv_impl,
                     compiler_options=None, devices=1):
  """The jitted ``mj.make_train_step`` on a fixed task batch (a timing case).

  ``devices`` > 1: the tasks are split over that many devices
  (``make_train_step(..., mesh=)``, one ``shard_map`` program per device).
  """
  loss_fn, params, tasks = setup(hp, conv_impl=conv_impl)
  opt = optax.adam(hp['meta_lr'])
  mesh = _mesh(devices)
  step = mj.make_train_step(estimator(algorithm, loss_fn, hp), opt,
                            task_batching=task_batching, mesh=mesh)
  state = mj.init_train_state(params, opt)
  if mesh is not None:
    state, tasks = mj.replicate(state, mesh), mj.shard_tasks(tasks, mesh)
  return cases_lib.step_case(step, state, tasks, compiler_options,
                             task_batching=task_batching, conv_impl=conv_impl,
                             devices=devices)


def prepare_jax_fused(algorithm, hp, *, task_batching, conv_impl, num_iterations,
                      compiler_options=None, devices=1):
  """``mj.make_fused_train``: ``num_iterations`` meta-iterations per call."""
  loss_fn, params, _ = setup(hp, conv_impl=conv_impl)
  opt = optax.adam(hp['meta_lr'])
  sampler = lambda k: sample_tasks(k, hp['num_tasks'], ways=hp['ways'],
                                   shots=hp['shots'], query=hp['query'])
  mesh = _mesh(devices)
  run = mj.make_fused_train(estimator(algorithm, loss_fn, hp), opt, sampler,
                            num_iterations, task_batching=task_batching,
                            mesh=mesh)
  state = mj.init_train_state(params, opt)
  if mesh is not None:
    state = mj.replicate(state, mesh)
  return cases_lib.fused_case(run, state, num_iterations, compiler_options,
                              task_batching=task_batching, conv_impl=conv_impl,
                              devices=devices)


class UserConvNet(nn.Module):
  """Finn et al.'s conv net as a user writes it in Flax, with the library's layers.

  ``nn.Conv`` (bias and all Flax defaults) given
  ``conv_general_dilated=mj.nn.conv_general_dilated``, Flax's
  ``nn.BatchNorm`` on batch statistics, and ``mj.nn.max_pool`` in place of
  ``nn.max_pool`` (same signature): the keyword and the pool are the only
  maml_jax-specific lines. (With Flax's ``nn.max_pool``, whose second-order
  derivatives go through XLA's select-and-scatter, the MAML step took 1.28x
  as long in one interleaved run: 1033 vs 808 ms.)
  ``conv=jax.lax.conv_general_dilated`` is the same model on lax's conv.
  """
  ways: int
  filters: int
  blocks: int
  conv: object = mj.nn.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    for _ in range(self.blocks):
      x = nn.Conv(self.filters, (3, 3), conv_general_dilated=self.conv)(x)
      x = nn.BatchNorm(use_running_average=False)(x)
      x = mj.nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return nn.Dense(self.ways)(x.reshape(x.shape[0], -1))


def user_model_setup(hp, *, conv=mj.nn.conv_general_dilated, key=None):
  """(loss_fn, params, tasks) of ``UserConvNet``: cross-entropy, batch statistics."""
  key = jax.random.PRNGKey(0) if key is None else key
  k_p, k_t = jax.random.split(key)
  model = UserConvNet(hp['ways'], hp['filters'], hp['blocks'], conv)
  variables = model.init(k_p, jnp.zeros((1, 28, 28, 1)))
  batch_stats = variables['batch_stats']  # running averages: unused, dropped

  def loss_fn(params, batch):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                            batch['x'], mutable=['batch_stats'])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['y']))

  tasks = sample_tasks(k_t, hp['num_tasks'], ways=hp['ways'], shots=hp['shots'],
                       query=hp['query'])
  return loss_fn, variables['params'], tasks


def user_estimator(algorithm, loss_fn, hp):
  """The estimator a user builds: the row's hyperparameters, every default else."""
  return mj.make_estimator(algorithm, loss_fn, **mj.estimator_kwargs(
      algorithm, inner_lr=hp['inner_lr'], num_inner_steps=hp['num_inner_steps'],
      num_directions=hp['num_directions'], delta=hp['delta']))


def prepare_user_model_step(algorithm, hp, *, compiler_options=None):
  """``UserConvNet`` with the library op and every default, one device.

  ``mj.make_train_step(est, optax.adam(lr))`` as is: ``task_batching='auto'``
  (it picks 'map' for this conv net on CPU), the query loss at w_0 computed
  (the default), no mesh. Also records how far its meta-gradient is from
  the same model built on ``jax.lax.conv_general_dilated`` (relative L2
  error over all parameters, float32).
  """
  loss_fn, params, tasks = user_model_setup(hp)
  opt = optax.adam(hp['meta_lr'])
  est = user_estimator(algorithm, loss_fn, hp)
  step = mj.make_train_step(est, opt)
  batching = mj.choose_task_batching(est, params, tasks, jax.random.PRNGKey(0))
  case = cases_lib.step_case(step, mj.init_train_state(params, opt), tasks,
                             compiler_options, task_batching=batching,
                             conv_impl='mj.nn.conv_general_dilated')
  case['info']['meta_gradient_rel_error_vs_lax'] = user_model_gradient_error(
      algorithm, hp)
  return case


def user_model_gradient_error(algorithm, hp):
  """||G_op - G_lax|| / ||G_lax|| of one meta-gradient of ``UserConvNet``.

  MAML only (the row of the target; FO-MAML's gradient is a sub-computation
  of it, and GGS's random directions would add noise to the comparison).
  None for the others.
  """
  if algorithm != 'maml':
    return None
  key = jax.random.PRNGKey(3)
  grads = []
  for conv in (mj.nn.conv_general_dilated, jax.lax.conv_general_dilated):
    loss_fn, params, tasks = user_model_setup(hp, conv=conv)
    est = user_estimator(algorithm, loss_fn, hp)
    grads.append(jax.jit(lambda p, t, k, est=est: mj.meta_gradient(
        est, p, t, k, task_batching='vmap')[0])(params, tasks, key))
  diff = optax.tree.norm(optax.tree.sub(grads[0], grads[1]))
  return float(diff / optax.tree.norm(grads[1]))


def prepare_torch(algorithm, hp, *, impl, threads):
  """A PyTorch meta-iteration (``tr.MetaTrainer``, Adam) on the same fixed task batch."""
  _, params, tasks = setup(hp)
  trainer = tr.MetaTrainer(
      tr.CONVNET, algorithm, jax.tree.map(np.asarray, params), impl=impl,
      inner_lr=hp['inner_lr'], num_inner_steps=hp['num_inner_steps'],
      meta_lr=hp['meta_lr'], num_directions=hp['num_directions'], delta=hp['delta'])
  tt = {'support': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.support)),
        'query': tr.to_torch_batch(jax.tree.map(np.asarray, tasks.query))}
  n = int(threads)
  return {'once': lambda: trainer.step(tt), 'divisor': 1,
          'enter': lambda: torch.set_num_threads(n), 'info': {'threads': n}}


def _best_over_threads(res, name, threads):
  by_threads = {str(n): res[f'{name}@{n}'] for n in threads}
  best = min(by_threads, key=lambda n: by_threads[n]['ms'])
  return dict(by_threads[best], by_threads={n: r['ms'] for n, r in by_threads.items()})


def run_section(cfg):
  """Times every implementation of every row (algorithm) in alternating rounds.

  Returns:
    {'hparams', 'rounds', 'torch_threads', 'torchopt': installed?, 'rows': [...]}
    where a row has one entry per timed implementation (``timing.interleaved``
    results), 'best_torch' (the faster of torch_loop / torch_func) and
    'speedup' / 'speedup_stats': best torch ms / implementation ms, per round.
  """
  spec = cfg['convnet']
  hp = spec['hparams']
  threads = cfg['torch_threads']
  has_torchopt = torchopt_available()
  devices = task_devices(hp['num_tasks'])
  rows = []
  for algorithm in spec['algorithms']:
    cases, repeats = {}, {}
    torch_impls = ['loop', 'func']
    if has_torchopt and algorithm in tr.TORCHOPT_ALGORITHMS:
      torch_impls.append('torchopt')
    for impl in torch_impls:
      for n in threads:
        name = f'torch_{impl}@{n}'
        cases[name] = prepare_torch(algorithm, hp, impl=impl, threads=n)
        repeats[name] = spec['repeats']
    cases['jax_step'] = prepare_jax_step(
        algorithm, hp, task_batching=spec['task_batching'],
        conv_impl=spec['conv_impl'], compiler_options=cfg['compiler_options'])
    repeats['jax_step'] = spec['repeats']
    if devices > 1:
      cases['jax_step_devices'] = prepare_jax_step(
          algorithm, hp, task_batching=spec['task_batching'],
          conv_impl=spec['conv_impl'], compiler_options=cfg['compiler_options'],
          devices=devices)
      repeats['jax_step_devices'] = spec['repeats']
    if algorithm in spec['naive_algorithms']:
      cases['jax_step_vmap_xla'] = prepare_jax_step(
          algorithm, hp, task_batching='vmap', conv_impl='xla',
          compiler_options=cfg['compiler_options'])
      repeats['jax_step_vmap_xla'] = spec['repeats']
    cases['jax_user_model'] = prepare_user_model_step(
        algorithm, hp, compiler_options=cfg['compiler_options'])
    repeats['jax_user_model'] = spec['repeats']
    cases['jax_fused'] = prepare_jax_fused(
        algorithm, hp, task_batching=spec['task_batching'],
        conv_impl=spec['conv_impl'], num_iterations=spec['fused_iterations'],
        compiler_options=cfg['compiler_options'], devices=devices)
    repeats['jax_fused'] = spec['repeats']
    try:
      res = timing.interleaved(cases, rounds=spec['rounds'], repeats=repeats)
    finally:
      cases_lib.restore_torch_threads()
    row = {'algorithm': algorithm}
    for impl in torch_impls:
      row[f'torch_{impl}'] = _best_over_threads(res, f'torch_{impl}', threads)
    for name in ('jax_step', 'jax_step_devices', 'jax_step_vmap_xla',
                 'jax_user_model', 'jax_fused'):
      if name in res:
        row[name] = res[name]
    row['jax_fused']['params_finite'] = cases['jax_fused']['finite']()
    loop, func = row['torch_loop'], row['torch_func']
    best = loop if loop['ms'] <= func['ms'] else func
    row['best_torch'] = {'ms': best['ms'], 'impl': 'loop' if best is loop else 'func'}
    stats = {name: timing.ratio_stats(best, row[name])
             for name in ('jax_step', 'jax_step_devices', 'jax_step_vmap_xla',
                          'jax_user_model', 'jax_fused', 'torch_torchopt')
             if name in row}
    row['speedup_stats'] = stats
    row['speedup'] = {k: v['round_median'] for k, v in stats.items()}
    # The user's model against the PyTorch loop itself (issue 20's target).
    row['user_model_vs_torch_loop'] = timing.ratio_stats(loop,
                                                         row['jax_user_model'])
    logging.info('convnet %s: user model, library op, defaults: %.0f ms (x%.2f '
                 'vs torch loop)', algorithm, row['jax_user_model']['ms'],
                 row['user_model_vs_torch_loop']['round_median'])
    logging.info('convnet %s: torch loop %.0f ms, func %.0f ms, jax step %.0f ms '
                 '(x%.2f vs best torch), on %d devices %s, fused %.0f ms (x%.2f)',
                 algorithm, loop['ms'], func['ms'], row['jax_step']['ms'],
                 row['speedup']['jax_step'], devices,
                 (f"{row['jax_step_devices']['ms']:.0f} ms "
                  f"(x{row['speedup']['jax_step_devices']:.2f})"
                  if 'jax_step_devices' in row else '-'),
                 row['jax_fused']['ms'], row['speedup']['jax_fused'])
    rows.append(row)
  return {'hparams': hp, 'rounds': spec['rounds'], 'repeats': spec['repeats'],
          'torch_threads': [int(n) for n in threads], 'torchopt': has_torchopt,
          'task_batching': spec['task_batching'], 'conv_impl': spec['conv_impl'],
          'devices': devices, 'rows': rows}
