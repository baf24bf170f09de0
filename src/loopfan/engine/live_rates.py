"""Rates as they are now, for the live view: over the last second of the workers' own reports.

Rules of this file: pure. The runner hands RecentCounts the time and the client workers' latest
cumulative STATS on every tick; Progress carries a snapshot of it (Recent), and the views turn that
into rates with window_rate() / total_rate(), given the time and when the current phase began.

Why not the time series' last row: a row is a *completed* interval (1 s), so its rates are up to
a second old - during a 30K/s ramp the panel read "3,368 connects/s" (the interval that held the
ramp's first moments), a ramp under a second never showed its rate at all, and the first traffic
row held measuring time too. A window of the most recent reports (WINDOW_S), cut at the phase's
start, says what is true now and never mixes two phases' counts.

Why per worker: each report is stamped with the worker's own clock (CLOCK_MONOTONIC, system-wide),
so a worker's counts are known exactly at its stamps. The sum of the workers' latest counts is of
no single moment (each is up to a report interval, 0.25 s, old, more when a busy loop reports
late), so a window over that sum would be off by up to a quarter at each end. Each worker's rate
over its own reports, summed, is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

from loopfan.engine.timeseries import counters

# How far back the live rates look: about four reports of each worker (every 0.25 s).
WINDOW_S = 1.0
# A shorter span says too little: one report of a burst read as its rate. It is less than a report
# interval, so a phase's rates show from its first or second report on.
MIN_SPAN_S = 0.2

# The counters the live view shows rates of (the series' definitions: timeseries.counters).
COUNTERS = ("established", "closed", "failed", "messages", "bytes_in", "bytes_out", "errors")

Sample = tuple[float, float]  # (seconds since the run's start, a cumulative count then)
Knot = tuple[float, tuple[float, ...]]  # (seconds since the start, every COUNTERS count then)


def count_at(samples: Sequence[Sample], t: float) -> float:
    """The count at time t on the straight lines between the samples (times ascending): the first
    sample's count before it, the last one's after it (never guessed ahead of a report)."""
    if t <= samples[0][0]:
        return samples[0][1]
    for (ta, ca), (tb, cb) in pairwise(samples):
        if t <= tb:
            return ca + (cb - ca) * (t - ta) / (tb - ta) if tb > ta else cb
    return samples[-1][1]


def window_rate(samples: Sequence[Sample], *, now_s: float, since_s: float = 0.0,
                window_s: float = WINDOW_S, min_span_s: float = MIN_SPAN_S) -> float | None:
    """Per second, from the window's start to the last sample: the window is the last window_s
    seconds up to now_s, cut at since_s (when the phase began: an earlier count is another
    phase's) and at the first sample (nothing is known before it). None when that span is shorter
    than min_span_s: too little is known yet to say a rate."""
    if not samples:
        return None
    start = max(now_s - window_s, since_s, samples[0][0])
    t_end, c_end = samples[-1]
    span = t_end - start
    if span < min_span_s:
        return None
    # (max: a count that went down - a worker's restart - is no negative rate)
    return max(0.0, c_end - count_at(samples, start)) / span


def total_rate(per_worker: Sequence[Sequence[Sample]], *, now_s: float, since_s: float = 0.0,
               window_s: float = WINDOW_S, min_span_s: float = MIN_SPAN_S) -> float | None:
    """The workers' rates summed. A worker with no report in the window adds nothing (not started,
    or stalled: no progress is known of it). A worker that reported in it, but too soon after the
    window's start to say a rate, makes the sum None: the sum of the others alone would read as a
    drop. None too when no worker reported in the window (a phase just begun)."""
    start = max(now_s - window_s, since_s)
    total, known = 0.0, False
    for samples in per_worker:
        if not samples or samples[-1][0] <= start:
            continue
        rate = window_rate(samples, now_s=now_s, since_s=since_s, window_s=window_s, min_span_s=min_span_s)
        if rate is None:
            return None
        total, known = total + rate, True
    return total if known else None


@dataclass(frozen=True, slots=True)
class Recent:
    """The client workers' recent cumulative counts (COUNTERS), per worker in time order: the
    snapshot a Progress carries, so the views stay pure functions of it."""

    workers: tuple[tuple[Knot, ...], ...] = ()

    def rate_per_s(self, counter: str, *, now_s: float, since_s: float = 0.0) -> float | None:
        i = COUNTERS.index(counter)
        return total_rate([[(t, counts[i]) for t, counts in knots] for knots in self.workers],
                          now_s=now_s, since_s=since_s)


class WorkerLike(Protocol):
    role: str
    index: int
    stats: dict[str, Any]

    @property
    def finished(self) -> bool: ...


def counts_of(stats: dict[str, Any]) -> tuple[float, ...]:
    """A client worker's COUNTERS from its cumulative STATS (traffic errors: every cause's, warm-up's too)."""
    c = counters(stats)
    errors = sum(v for k, v in c.items() if k.startswith("error:"))
    return tuple(errors if name == "errors" else c.get(name, 0) for name in COUNTERS)


class RecentCounts:
    """Keeps each client worker's reports of the last WINDOW_S (and the one before, to interpolate
    the window's start). O(workers) a tick; a handful of knots per worker."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0  # the run's start, on the clock the workers stamp their reports with
        self._knots: dict[tuple[str, int], list[Knot]] = {}
        self._zero_at_s: float | None = None

    def workers_start_now(self, now: float) -> None:
        """Workers spawned from now on count from zero here (the ramp's start): their first report
        gives a rate at once, instead of waiting for a second one."""
        self._zero_at_s = now - self.t0

    def note(self, now: float, workers: Sequence[WorkerLike]) -> None:
        now_s = now - self.t0
        for w in workers:
            if w.role != "client" or not w.stats:
                continue
            knots = self._knots.get((w.role, w.index))
            if knots is None:
                knots = self._knots[(w.role, w.index)] = []
                if self._zero_at_s is not None:
                    knots.append((self._zero_at_s, (0.0,) * len(COUNTERS)))
            # A finished worker's counts are final: known at every moment since, now included.
            t_s = now_s if w.finished else float(w.stats.get("t", now)) - self.t0
            if knots and t_s <= knots[-1][0]:
                continue  # nothing new since its last knot
            knot = (t_s, counts_of(w.stats))
            if len(knots) >= 2 and knot[1] == knots[-1][1] == knots[-2][1]:
                knots[-1] = knot  # counts unchanged (a hold): move the last knot, keep the list short
            else:
                knots.append(knot)
            # Keep the window's knots and the last one before it (the window's start lies after it).
            cut = now_s - WINDOW_S
            while len(knots) > 2 and knots[1][0] <= cut:
                del knots[0]

    def snapshot(self) -> Recent:
        return Recent(tuple(tuple(knots) for knots in self._knots.values()))
