"""Clean stops: preemption (SIGTERM), Ctrl-C (SIGINT) and failed writes.

A scheduler that preempts a job sends SIGTERM and, some seconds later,
SIGKILL. A launcher run by ``loop.train_loop`` turns the first SIGTERM or
SIGINT into a stop at its next safe point: the end of the compiled chunk in
flight, whose checkpoint it then writes. It prints one line with the exact
command that resumes the run and exits with ``PREEMPTED_EXIT_CODE`` (75,
``EX_TEMPFAIL``: "try again later"), which a requeue script can test for. A
second signal exits at once (exit code 128 + the signal's number), keeping
the checkpoint of the last completed chunk.

The chunk in flight runs in XLA, where Python cannot run a signal handler
until it returns. The signals are therefore read by a thread, from the pipe
that Python's C-level handler writes every caught signal's number to
(``signal.set_wakeup_fd``): it notes the first signal at once (and says so on
stderr) and acts on the second at once.

With several processes, each process's request is shared at every chunk
boundary (``any_process``), so all of them stop after the same iteration
even when only one received the signal.
"""

import os
import shlex
import signal
import sys
import threading

PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """The run stopped on request at a chunk boundary, with a checkpoint."""


class RunFailed(Exception):
  """The run cannot go on (a failed write, a lost process); one-line message."""


def signal_name(signum):
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f'signal {signum}'


def program_name():
  """'experiments.rl' for ``python -m experiments.rl``, else the script's name."""
  argv = list(getattr(sys, 'orig_argv', None) or ())
  if '-m' in argv[:-1]:
    return argv[argv.index('-m') + 1]
  return os.path.basename(sys.argv[0])


def say(text):
  """One line on stderr, prefixed with the program's name."""
  try:
    print(f'{program_name()}: {text}', file=sys.stderr, flush=True)
  except (OSError, ValueError):  # stderr closed or full: nothing to do
    pass


class StopRequests:
  """Catches SIGTERM and SIGINT for the duration of a ``with`` block.

  ``requested`` is the first caught signal's number (None before any). A
  second signal ends the process at once with ``os._exit(128 + signum)``,
  after calling ``on_exit_now()`` (which may say where the run stands) and
  printing one line.

  Outside the main thread (where Python cannot set signal handlers, e.g. a
  launcher run from a notebook's worker thread) the block installs nothing
  and ``requested`` stays None.
  """

  def __init__(self, signals=SIGNALS, on_exit_now=None):
    self.signals = tuple(signals)
    self.on_exit_now = on_exit_now
    self.requested = None
    self._old_handlers = {}
    self._old_wakeup = None
    self._pipe = None
    self._thread = None
    self._count = 0
    self.active = False

  def _watch(self, read_fd):
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum == 0:  # the sentinel written by __exit__
          return
        if signum not in self.signals:
          continue
        self._count += 1
        if self._count == 1:
          if self.requested is None:
            self.requested = signum
          say(f'{signal_name(signum)} received: stopping after the chunk in flight '
               'and its checkpoint (send it again to exit at once).')
        else:
          where = ''
          if self.on_exit_now is not None:
            try:
              where = self.on_exit_now() or ''
            except Exception:  # pylint: disable=broad-except
              where = ''
          say(f'second {signal_name(signum)}: exiting now. {where}'.rstrip())
          os._exit(128 + signum)

  def _noted(self, signum, frame):
    """The Python-level handler (main thread, once XLA returns): notes it.

    The watcher thread counts the signals and acts on a second one.
    """
    del frame
    if self.requested is None:
      self.requested = signum

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    for signum in self.signals:
      self._old_handlers[signum] = signal.signal(signum, self._noted)
    self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                    name='stop-requests', daemon=True)
    self._thread.start()
    self.active = True
    return self

  def __exit__(self, *exc):
    if not self.active:
      return False
    self.active = False
    signal.set_wakeup_fd(self._old_wakeup)
    for signum, old in self._old_handlers.items():
      # A handler set outside Python (JAX's preemption notifier) reads as None.
      signal.signal(signum, old if old is not None else signal.SIG_DFL)
    read_fd, write_fd = self._pipe
    try:
      os.write(write_fd, b'\0')
    except OSError:
      pass
    self._thread.join(timeout=5)
    os.close(write_fd)
    os.close(read_fd)
    return False


def any_process(flag):
  """Whether ``flag`` is true on any process (a collective; every process calls it)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return bool(flag)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
  return bool(np.any(flags))


_DROPPED = ('--resume', '--noresume', '--resume=true', '--resume=false',
            '--resume=True', '--resume=False')


def resume_command(run_path):
  """The command line that resumes the run in ``run_path``.

  This process's own command (``sys.orig_argv``: ``python -m
  experiments.sine ...``), with ``--run_name`` set to the run's folder name
  and ``--resume`` added.
  """
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable] + sys.argv)
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    if arg in _DROPPED or arg.startswith('--run_name='):
      continue
    if arg == '--run_name':
      skip = True
      continue
    out.append(arg)
  if out and os.path.basename(out[0]).startswith('python'):
    out[0] = 'python'
  out += [f'--run_name={os.path.basename(os.path.normpath(run_path))}',
          '--resume']
  return shlex.join(out)


DEFAULT_TIMEOUT = 300.0


def collective_timeout():
  """Seconds a multi-process barrier may take: --distributed_timeout if defined."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if 'distributed_timeout' in flags.FLAGS:
    try:
      return float(flags.FLAGS.distributed_timeout)
    except flags.UnparsedFlagAccessError:
      pass
  return DEFAULT_TIMEOUT


class Deadline:
  """Ends the process with one line if a multi-process step outlasts ``seconds``.

  A barrier, a checkpoint save or an all-gather waits for every process; when
  one has died or hangs, the others would wait forever. Inside this block a
  timer thread prints ``what`` did not finish, and why that usually happens,
  and calls ``os._exit(1)``. With one process it does nothing.

  Args:
    what: the step, for the message ('the checkpoint of iteration 40').
    seconds: the limit (default: ``collective_timeout()``).
    where: optional callable returning a sentence about what is kept (the
      last checkpoint, the resume command), added to the message.
  """

  def __init__(self, what, seconds=None, where=None):
    self.what = what
    self.seconds = seconds
    self.where = where
    self._timer = None

  def _fire(self):
    import jax  # pylint: disable=g-import-not-at-top
    extra = ''
    if self.where is not None:
      try:
        extra = ' ' + (self.where() or '')
      except Exception:  # pylint: disable=broad-except
        extra = ''
    say(f'error: process {jax.process_index()} of {jax.process_count()}: '
         f'{self.what} did not finish within {self.seconds:g} s '
         '(--distributed_timeout): another process has died, hangs, or does '
         f'not see the same run folder.{extra}'.rstrip())
    os._exit(1)

  def __enter__(self):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      if self.seconds is None:
        self.seconds = collective_timeout()
      self._timer = threading.Timer(self.seconds, self._fire)
      self._timer.daemon = True
      self._timer.start()
    return self

  def __exit__(self, *exc):
    if self._timer is not None:
      self._timer.cancel()
    return False
