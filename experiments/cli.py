"""The ``main`` of every launcher: runtime set-up first, one-line errors.

``app.run(cli.cli_main(run))`` runs a launcher's ``run(argv)`` after the
process set-up of ``experiments.runtime`` and turns the ways a run ends early
into one line on stderr and an exit code a script can test.
"""

import sys

from absl import app
from absl import flags

from experiments import runtime
from experiments import stopping

FLAGS = flags.FLAGS


def cli_main(run):
  """``main(argv)`` for ``app.run``: a usage error is one line and exit code 2.

  absl's own handling of ``app.UsageError`` prints the whole module docstring;
  a launcher's flag mistakes should be one line on stderr instead. Before
  ``run``, and before any JAX computation: ``reuse_host_memory`` (unless
  --noreuse_host_memory), ``apply_cpu_devices`` (--cpu_devices), then
  ``initialize_distributed``, which joins a multi-process run if the flags
  or the cluster environment ask for one; failing to join is one line too
  (exit code 1). So is a run that cannot go on (``stopping.RunFailed``: a
  failed write, processes that do not share the run folder), and a run
  stopped by SIGTERM or Ctrl-C at a chunk boundary (``stopping.Preempted``)
  prints the command that resumes it and exits with
  ``stopping.PREEMPTED_EXIT_CODE`` (75).
  """
  def main(argv):
    try:
      if 'reuse_host_memory' not in FLAGS or FLAGS.reuse_host_memory:
        runtime.reuse_host_memory()
      runtime.apply_cpu_devices()
      runtime.initialize_distributed()
      run(argv)
    except app.UsageError as e:
      stopping.say(f'error: {e}')
      sys.exit(2)
    except (runtime.DistributedError, stopping.RunFailed) as e:
      stopping.say(f'error: {e}')
      sys.exit(1)
    except stopping.Preempted as e:
      stopping.say(str(e))
      sys.exit(stopping.PREEMPTED_EXIT_CODE)
  return main
