"""The live rates as they are now (engine/live_rates.py): per second over the last second of each
worker's own reports, cut where the phase began - property tests of the pure functions, and the
tracker the runner feeds, with fake workers' cumulative STATS (no processes, no sleeps).

QA: a 30K/s ramp read "3,368 connects/s" (the series' last completed interval, which held the
ramp's first moments), "0 connects/s" before the first interval, and a ramp under a second never
showed its rate; Prometheus' connects_per_second kept the ramp's figure into the hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FakeWorker
from hypothesis import given
from hypothesis import strategies as st

from loopfan.engine.live_rates import (
    COUNTERS,
    MIN_SPAN_S,
    WINDOW_S,
    RecentCounts,
    count_at,
    total_rate,
    window_rate,
)

# Report times: ascending, from 0 s to 10 s, at least 1 ms apart (a worker's stamps never repeat).
gaps = st.lists(st.floats(0.001, 0.6), min_size=1, max_size=30)
rates = st.floats(0, 1e6)


def times(first: float, steps: list[float]) -> list[float]:
    out = [first]
    for g in steps:
        out.append(out[-1] + g)
    return out


@given(st.floats(0, 5), gaps, rates, st.floats(0, 12), st.floats(0, 12))
def test_a_steady_rate_reads_as_itself_however_the_reports_fall(first: float, steps: list[float], rate: float,
                                                                now_s: float, since_s: float) -> None:
    """Any report cadence, any window position: a count growing at `rate` reads `rate` (or None
    when too little of the window is known), never another figure."""
    samples = [(t, rate * t) for t in times(first, steps)]
    got = window_rate(samples, now_s=now_s, since_s=since_s)
    start = max(now_s - WINDOW_S, since_s, samples[0][0])
    if samples[-1][0] - start < MIN_SPAN_S:
        assert got is None
    else:
        assert got == pytest.approx(rate, rel=1e-6, abs=1e-6)


@given(st.floats(0, 5), gaps, st.lists(rates, min_size=30, max_size=30), st.floats(0, 0.5), st.floats(0, 1))
def test_the_rate_lies_between_the_slowest_and_fastest_stretch_of_the_window(
        first: float, steps: list[float], slopes: list[float], now_after: float, since_frac: float) -> None:
    """Counts that only grow: the rate is an average of the window's stretches, never below the
    slowest nor above the fastest, and never negative. (`now` and the phase start are drawn within
    the samples' reach: drawn anywhere, most examples had no rate and Hypothesis gave up on them.)"""
    ts = times(first, steps)
    samples = [(ts[0], 0.0)]
    for t, slope in zip(ts[1:], slopes, strict=False):
        samples.append((t, samples[-1][1] + slope * (t - samples[-1][0])))
    now_s = ts[-1] + now_after
    since_s = ts[0] + since_frac * (ts[-1] - ts[0])
    got = window_rate(samples, now_s=now_s, since_s=since_s)
    if got is None:  # (too little of the phase reported yet: the other tests hold that rule)
        return
    start = max(now_s - WINDOW_S, since_s, samples[0][0])
    inside = [slopes[i] for i in range(len(samples) - 1) if samples[i + 1][0] > start]
    assert min(inside) * (1 - 1e-9) - 1e-6 <= got <= max(inside) * (1 + 1e-9) + 1e-6
    assert got >= 0


@given(st.floats(0.1, 5), gaps, rates, gaps, st.floats(0, 2))
def test_a_phase_with_no_counts_reads_zero_however_fast_the_phase_before(
        first: float, before: list[float], rate: float, after: list[float], wait_s: float) -> None:
    """The ramp's connects never show in the hold: counts that stopped growing where the phase
    began (a report there or before it) read 0 in the new phase, from its first reports on."""
    ramp = [(t, rate * t) for t in times(first, before)]
    since = ramp[-1][0] + 0.001  # the ramp ends after its last report (it ends on that report)
    hold = [(t, ramp[-1][1]) for t in times(since + 0.001, after)]
    got = window_rate(ramp + hold, now_s=hold[-1][0] + wait_s, since_s=since)
    assert got is None or got == 0


@given(st.floats(0, 5), gaps, rates, st.floats(-1e6, 1e6))
def test_only_differences_count(first: float, steps: list[float], rate: float, offset: float) -> None:
    """A counter's level is no rate: the same reports shifted by any amount read the same."""
    samples = [(t, rate * t) for t in times(first, steps)]
    shifted = [(t, c + offset) for t, c in samples]
    now = samples[-1][0]
    a, b = window_rate(samples, now_s=now), window_rate(shifted, now_s=now)
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert b == pytest.approx(a, rel=1e-6, abs=1e-3)


@given(st.lists(st.tuples(st.floats(0, 0.25), rates), min_size=1, max_size=8), st.floats(1, 5))
def test_workers_rates_add_up(workers: list[tuple[float, float]], now_s: float) -> None:
    """Workers reporting every 0.25 s, each at its own phase and rate: the total is the sum of
    their rates, once every worker's reports span enough of the window."""
    per_worker = [[(t, rate * t) for t in times(offset, [0.25] * 40) if t <= now_s] for offset, rate in workers]
    got = total_rate(per_worker, now_s=now_s)
    assert got == pytest.approx(sum(rate for _, rate in workers), rel=1e-6, abs=1e-6)


def test_a_worker_too_new_to_the_window_holds_the_total_back() -> None:
    """One worker's reports span the window, the other's only 0.05 s of it: the sum of one alone
    would read as a drop to half, so there is no total until the second has enough."""
    steady = [(t, 1000.0 * t) for t in (0.0, 0.25, 0.5)]
    fresh = [(0.45, 0.0), (0.5, 50.0)]  # since its first report, 0.05 s
    assert total_rate([steady, fresh], now_s=0.5) is None
    assert total_rate([steady, [*fresh, (0.75, 300.0)]], now_s=0.75) == pytest.approx(2000)


def test_a_worker_silent_through_the_window_adds_nothing() -> None:
    """Not started, or stalled: no report in the window, no progress known of it."""
    steady = [(t, 1000.0 * t) for t in (1.0, 1.25, 1.5, 1.75, 2.0)]
    stalled = [(0.0, 0.0), (0.5, 9999.0)]
    assert total_rate([steady, stalled], now_s=2.0) == pytest.approx(1000)
    assert total_rate([stalled], now_s=2.0) is None  # nothing known of the window at all


def test_count_at_is_on_the_lines_between_reports_and_never_ahead() -> None:
    samples = [(1.0, 10.0), (2.0, 30.0)]
    assert (count_at(samples, 0.0), count_at(samples, 1.5), count_at(samples, 9.0)) == (10.0, 20.0, 30.0)


# --- the tracker the runner feeds --------------------------------------------------------------------


def stats(t: float, **counts: Any) -> dict[str, Any]:
    traffic = {"replies": counts.pop("replies", 0), "awaits": True, "errors": counts.pop("errors", {})}
    return {"t": t, "established": 0, "open": 0, "closed": 0, "failed": {}, "traffic": traffic, **counts}


def test_a_ramp_shows_its_rate_from_its_first_report() -> None:
    """30,000 connects/s from the ramp's start at 0.1 s; the worker reports every 0.25 s."""
    recent = RecentCounts(t0=100.0)
    recent.workers_start_now(100.1)
    w = FakeWorker("client", 0)
    assert recent.snapshot().rate_per_s("established", now_s=0.2, since_s=0.1) is None  # no report yet
    w.stats = stats(100.35, established=7_500)
    recent.note(100.36, [w])
    first = recent.snapshot().rate_per_s("established", now_s=0.36, since_s=0.1)
    assert first == pytest.approx(30_000)  # one report: counted from zero at the ramp's start
    for k in range(2, 12):
        w.stats = stats(100.1 + 0.25 * k, established=7_500 * k)
        recent.note(100.1 + 0.25 * k + 0.01, [w])
    assert recent.snapshot().rate_per_s("established", now_s=2.86, since_s=0.1) == pytest.approx(30_000)


def test_the_tracker_keeps_one_window_and_moves_the_knot_of_unchanged_counts() -> None:
    recent = RecentCounts(t0=0.0)
    w = FakeWorker("client", 0)
    server = FakeWorker("server", 0, stats(0.0, established=5))
    for k in range(1, 200):  # 50 s of a hold: counts unchanged
        w.stats = stats(0.25 * k, established=100)
        recent.note(0.25 * k, [w, server])
    [knots] = recent.snapshot().workers  # the server's accepts are not the clients' connects
    assert len(knots) <= 3 and knots[-1][0] == pytest.approx(49.75)
    assert recent.snapshot().rate_per_s("established", now_s=49.75, since_s=0.0) == 0
    assert len(knots[-1][1]) == len(COUNTERS)


def test_a_finished_worker_counts_as_final_up_to_now() -> None:
    """A worker that closed its share and exited reports no more: its counts are final, so its
    rate decays over the window instead of staying at its last report's."""
    recent = RecentCounts(t0=0.0)
    w = FakeWorker("client", 0)
    for k in range(0, 5):
        w.stats = stats(10.0 + 0.25 * k, established=1000, closed=0)
        recent.note(10.0 + 0.25 * k, [w])
    w.stats, w.finished = stats(11.05, established=1000, closed=1000), True  # closed all at once
    recent.note(11.3, [w])
    mid = recent.snapshot().rate_per_s("closed", now_s=11.3, since_s=11.0)
    assert mid == pytest.approx(1000 / 0.3, rel=0.2)
    recent.note(12.5, [w])
    assert recent.snapshot().rate_per_s("closed", now_s=12.5, since_s=11.0) == 0


def test_traffic_counters_are_the_series_ones() -> None:
    """messages: replies (sends where no reply is awaited); errors: every cause's, warm-up's too."""
    recent = RecentCounts(t0=0.0)
    w = FakeWorker("client", 0, stats(1.0))
    recent.note(1.0, [w])
    w.stats = stats(2.0, replies=5000, bytes_in=10_000, errors={"http-5xx": 7})
    w.stats["traffic"]["warmup_errors"] = {"reply-timeout": 3}
    recent.note(2.0, [w])
    snap = recent.snapshot()
    got = {c: snap.rate_per_s(c, now_s=2.0, since_s=1.0) for c in ("messages", "bytes_in", "errors")}
    assert got == {"messages": 5000, "bytes_in": 10_000, "errors": 10}
