r"""One process of a multi-process sine training, for tests/experiments/test_distributed.py.

  python tests/distributed_worker.py --params_out=DIR [--stop_after=K] \
      --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I \
      <experiments.sine flags>

``cli.cli_main`` joins the run with ``jax.distributed`` first, as every
launcher's command line does; then ``train_sine`` runs the sine launcher's
training (``training.run_experiment`` of its problem: metrics, checkpoints,
--resume; not its final curves and pictures, to keep CI short) and this
process's final meta parameters go to DIR/params_<process index>.npz.
``--stop_after=K`` ends the process abruptly (``os._exit``) right after the
checkpoint of iteration K, like a killed job; ``--sigterm_after=K`` sends
this process a SIGTERM there instead, as a scheduler's preemption would.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from experiments import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import config  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import rundir  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import sine  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import training  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('params_out', None, 'Folder of the params_<i>.npz files.')
flags.DEFINE_integer('stop_after', 0, 'Exit abruptly after this checkpoint.')
flags.DEFINE_integer('sigterm_after', 0,
                     'Send this process SIGTERM after this checkpoint.')
FLAGS = flags.FLAGS
KILLED = 3


def flat_params(states):
  """``{algorithm/path: array}`` of the final meta parameters (host numpy)."""
  out = {}
  for algorithm, state in states.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
      out[algorithm + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def train_sine(chunk_hook=None):
  """The sine launcher's training from the parsed flags: ``TrainResult``."""
  cfg = config.training_config(sine.NAME, sine.DEFAULTS)
  run_dir = rundir.RunDir.create(cfg.workdir, cfg.run_name, resume=cfg.resume,
                                 default_name=sine.NAME)
  run_dir.write_config(rundir.config_dict(cfg), resume=cfg.resume)
  problem, _, _ = sine.make_problem(
      cfg, num_support=FLAGS.num_support, num_query=FLAGS.num_query,
      num_test_tasks=FLAGS.num_test_tasks, eval_seed=FLAGS.eval_seed)
  return training.run_experiment(problem, cfg, run_dir, chunk_hook=chunk_hook)


def run(argv):
  del argv
  hook = None
  if FLAGS.stop_after:
    def hook(iteration):
      if iteration >= FLAGS.stop_after:
        sys.stdout.flush()
        os._exit(KILLED)  # no cleanup, as a kill
  elif FLAGS.sigterm_after:
    def hook(iteration):
      if iteration == FLAGS.sigterm_after:
        os.kill(os.getpid(), signal.SIGTERM)
  result = train_sine(chunk_hook=hook)
  np.savez(os.path.join(FLAGS.params_out,
                        f'params_{jax.process_index()}.npz'),
           **flat_params(result.states))


if __name__ == '__main__':
  app.run(cli.cli_main(run))
