"""Wall-clock timing of a blocking callable, shared by the benchmark scripts."""

import time


def time_ms(fn, repeats, warmup=1):
  """Calls ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

  ``fn`` must block until its result is ready (``jax.block_until_ready``).

  Returns:
    The list of wall times in milliseconds, one per timed call.
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - t0))
  return times
