"""Running launchers from tests: in-process (one JAX process, one compile
cache), or as processes with a timeout (``run_processes``)."""

import os
import socket
import subprocess
import time

from absl import flags
from absl.testing import flagsaver
import pytest

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, 'tests', 'distributed_worker.py')


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def xla_flags(*flags_):
  """XLA_FLAGS for a process a test starts: ``flags_`` and the session's own.

  The session's compile flags (tests/conftest.py, ``MAML_JAX_TEST_XLA_FLAGS``)
  come first, so a test's own flags can override them.
  """
  return ' '.join(f for f in (os.environ.get('MAML_JAX_TEST_XLA_FLAGS', ''),) + flags_
                  if f)


def process_env(cache=None):
  """The environment of a test's launcher processes: 2 CPU devices each.

  ``cache``: a persistent compilation cache folder, so that later processes
  reuse the compiled programs of earlier ones.
  """
  env = dict(os.environ, XLA_FLAGS=xla_flags('--xla_force_host_platform_device_count=2'),
             PYTHONUNBUFFERED='1')
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return env


def start(command, cache=None):
  """A launcher process (output: stdout and stderr together, as text)."""
  return subprocess.Popen(command, cwd=REPO, env=process_env(cache),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def run_processes(commands, timeout=240, cache=None):
  """Runs the commands at once; ``[(returncode, output)]``; kills on timeout."""
  procs = [start(c, cache) for c in commands]
  deadline = time.monotonic() + timeout
  out = []
  try:
    for p in procs:
      text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      out.append((p.returncode, text))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f'processes still running after {timeout} s: '
                + ' | '.join(str(c[2:]) for c in commands))
  return out


def run_launcher(module, args, **kwargs):
  """Runs ``module.run`` in-process with ``args`` parsed as its command line."""
  saved = flagsaver.save_flag_values()
  try:
    FLAGS.unparse_flags()
    rest = FLAGS(['prog'] + list(args))
    if len(rest) > 1:  # an argument without '--' would be dropped silently
      raise ValueError(f'not flags: {rest[1:]}')
    return module.run(['prog'], **kwargs)
  finally:
    FLAGS.unparse_flags()
    flagsaver.restore_flag_values(saved)
