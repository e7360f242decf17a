"""Running an absl launcher in-process from a test (one JAX process, one compile cache)."""

from absl import flags
from absl.testing import flagsaver

FLAGS = flags.FLAGS


def run_launcher(module, args, **kwargs):
  """Runs ``module.run`` in-process with ``args`` parsed as its command line."""
  saved = flagsaver.save_flag_values()
  try:
    FLAGS.unparse_flags()
    FLAGS(['prog'] + list(args))
    return module.run(['prog'], **kwargs)
  finally:
    FLAGS.unparse_flags()
    flagsaver.restore_flag_values(saved)
