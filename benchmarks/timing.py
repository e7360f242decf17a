"""Wall-clock timing of blocking callables, shared by the benchmark scripts."""

import statistics
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


def interleaved(cases, *, rounds, repeats, peak_rss=None):
  """Times several cases in alternating rounds, so that load drift hits all.

  Args:
    cases: {name: {'once': blocking callable, 'divisor': calls -> per-unit
      time, 'info': dict copied into the result, optional 'enter': called
      before each of the case's rounds (e.g. to set a thread count)}}.
    rounds: number of rounds; round r calls every case ``repeats[name]``
      times (after one untimed warm-up call in round 0).
    repeats: {name: timed calls per round}.
    peak_rss: optional context-manager factory with ``peak`` and ``increase``
      attributes (``benchmarks.memory.PeakRSS``), entered around each case's
      first round.

  Returns:
    {name: info + ms (median of all calls, per unit), times_ms, round_ms (the
    median of each round) and, with ``peak_rss``, rss_peak_mib and
    rss_increase_mib}.
  """
  out = {name: dict(c['info'], times_ms=[], round_ms=[]) for name, c in cases.items()}
  for r in range(rounds):
    for name, c in cases.items():
      if 'enter' in c:
        c['enter']()
      if peak_rss is not None and r == 0:
        with peak_rss() as rss:
          times = time_ms(c['once'], repeats[name], warmup=1)
        out[name].update(rss_peak_mib=rss.peak, rss_increase_mib=rss.increase)
      else:
        times = time_ms(c['once'], repeats[name], warmup=1 if r == 0 else 0)
      times = [t / c['divisor'] for t in times]
      out[name]['times_ms'] += times
      out[name]['round_ms'].append(statistics.median(times))
  for res in out.values():
    res['ms'] = statistics.median(res['times_ms'])
  return out


def ratio_stats(num, den):
  """Speedup num/den: ratio of medians, and median/min/max of per-round ratios."""
  per_round = [a / b for a, b in zip(num['round_ms'], den['round_ms'])]
  return {'ratio': num['ms'] / den['ms'], 'round_median': statistics.median(per_round),
          'round_min': min(per_round), 'round_max': max(per_round),
          'per_round': per_round}
