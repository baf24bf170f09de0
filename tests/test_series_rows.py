"""The time series' rate columns add up: every rate column integrates over t_s to its total, the
per-cause columns sum to their row's total, and no row is negative - on the pure sampler fed random
reports (property tests), and on real loopback runs that span several rows.

QA found the rows overstating the end of every ramp (100,000 connects integrated to 110,835) and
failures_per_s disagreeing with its only cause within a row: the rows were extrapolated past the
workers' reports and could never take an overshoot back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeWorker, free_port
from hypothesis import example, given
from hypothesis import strategies as st

from loopfan.cli import main
from loopfan.engine.timeseries import SeriesSampler, edge_time, value_at
from loopfan.hostfacts import raise_nofile_soft_limit
from loopfan.results.live import so_far

RATE_COLUMNS = {"connects_per_s": "established", "closes_per_s": "closed", "failures_per_s": "failed",
                "messages_per_s": "messages"}


def integral(per_s: list[float], t_s: list[float]) -> float:
    """Each row's rate x its span; the first row's span starts at the run's start (t 0)."""
    return sum(r * (t - (t_s[j - 1] if j else 0.0)) for j, (r, t) in enumerate(zip(per_s, t_s, strict=True)))


def assert_rows_add_up(series: dict[str, Any], totals: dict[str, int]) -> None:
    t_s = series["t_s"]
    n = len(t_s)
    slack = 0.06 * t_s[-1] + 1  # rates are rounded to 0.1/s
    assert t_s == sorted(t_s)
    for col, key in RATE_COLUMNS.items():
        assert min(series[col]) >= 0, col
        assert integral(series[col], t_s) == pytest.approx(totals[key], abs=slack), col
    assert series["established"][-1] == totals["established"]
    for cause, col in series["failures_by_cause_per_s"].items():
        assert integral(col, t_s) == pytest.approx(totals["failed:" + cause], abs=slack), cause
    by_cause = series["failures_by_cause_per_s"]
    for j in range(n):
        causes = sum(col[j] for col in by_cause.values())
        assert causes == pytest.approx(series["failures_per_s"][j], abs=0.1 * len(by_cause) + 0.01)
    for j in range(1, n):  # the rate is the established column's slope
        span = t_s[j] - t_s[j - 1]
        if span > 0:
            slope = (series["established"][j] - series["established"][j - 1]) / span
            assert series["connects_per_s"][j] == pytest.approx(slope, abs=1 / span + 0.1)


# -- pure: the knots and the edge ----------------------------------------------------------------
knot_lists = st.lists(st.tuples(st.floats(0.001, 1.0), st.integers(0, 1000)), min_size=1, max_size=8).map(
    lambda steps: [(sum(s[0] for s in steps[: i + 1]), {"n": float(sum(s[1] for s in steps[: i + 1]))})
                   for i in range(len(steps))])


@given(knot_lists, st.lists(st.floats(0, 10), min_size=2, max_size=10))
def test_value_at_is_exact_at_knots_monotone_and_never_ahead_of_the_last(knots: list[Any], ts: list[float]) -> None:
    for t, counts in knots:
        assert value_at(knots, t)["n"] == pytest.approx(counts["n"])
    values = [value_at(knots, t)["n"] for t in sorted(ts)]
    assert values == sorted(values) or all(abs(a - b) < 1e-6 for a, b in zip(values, sorted(values), strict=True))
    assert max(values) <= knots[-1][1]["n"] + 1e-9


@given(st.floats(0, 100), st.floats(0, 5), st.lists(st.floats(0, 110), max_size=6))
def test_edge_time_is_after_the_last_edge_and_not_after_now(last: float, ahead: float, stamps: list[float]) -> None:
    now = last + ahead
    e = edge_time(last, now, stamps)
    assert e <= now and (e > last or now == last)
    fresh = [s for s in stamps if last < s <= now and s >= now - 0.5]
    assert e == (min(fresh) if fresh else now)


# -- pure: the sampler fed random reports ------------------------------------------------------
@st.composite
def runs(draw: st.DrawFn) -> tuple[list[tuple[float, list[tuple[float, dict[str, Any]] | None]]], dict[str, int]]:
    """Samples (the sampler's time, each worker's latest report or None) of workers whose counts
    grow in bursts and stop, reports every ~0.25 s, some late; then everyone finished."""
    n_workers = draw(st.integers(1, 3))
    t, samples = 0.0, []
    counts = [{"established": 0, "closed": 0, "messages": 0, "refused": 0, "reset": 0} for _ in range(n_workers)]
    latest: list[tuple[float, dict[str, Any]] | None] = [None] * n_workers
    for _ in range(draw(st.integers(1, 12))):
        for _ in range(draw(st.integers(0, 5))):  # reports between two samples
            t += draw(st.floats(0.01, 0.4))
            i = draw(st.integers(0, n_workers - 1))
            c = counts[i]
            for k in c:
                c[k] += draw(st.sampled_from([0, 0, 1, 7, 300]))
            latest[i] = (t, dict(c))
        t += draw(st.floats(0.0, 0.6))
        samples.append((t, list(latest)))
    totals = {k: sum(c[k] for c in counts) for k in counts[0]}
    for i, c in enumerate(counts):
        latest[i] = (t, dict(c))
    samples.append((t + 0.3, list(latest)))  # the last sample: every worker finished, its final count
    return samples, totals


def stats(t: float, c: dict[str, int]) -> dict[str, Any]:
    return {"t": t, "established": c["established"], "closed": c["closed"], "open": 0,
            "failed": {k: v for k, v in (("ECONNREFUSED", c["refused"]), ("ECONNRESET", c["reset"])) if v},
            "traffic": {"replies": c["messages"], "awaits": True}}


_ZERO = {"established": 0, "closed": 0, "messages": 0, "refused": 0, "reset": 0}
_300 = {**_ZERO, "established": 300}


@given(runs())
# Found by hypothesis: a row within 1 ms of the last (no span) showed its own count in `established`
# while its connects went to the next row, so the column and its rate disagreed.
@example(([(0.0, [None, None]), (0.0, [None, None]), (0.0625, [None, (0.0625, _ZERO)]),
           (0.125, [(0.125, _300), (0.0625, _ZERO)]), (0.425, [(0.125, _300), (0.125, _ZERO)])], _300))
def test_the_rows_of_any_run_add_up_to_its_totals(run: Any) -> None:
    samples, totals = run
    s = SeriesSampler(target=100, t0=0.0)
    workers = [FakeWorker("client", i) for i in range(len(samples[-1][1]))]
    for j, (now, latest) in enumerate(samples):
        for w, report in zip(workers, latest, strict=True):
            w.finished = j == len(samples) - 1
            if report is not None:
                w.stats = stats(*report)
        s.sample(now, "run", workers, {}, 0.0)
    series = s.as_dict()
    failed = {"failed:ECONNREFUSED": totals["refused"], "failed:ECONNRESET": totals["reset"]}
    assert_rows_add_up(series, {**totals, "failed": totals["refused"] + totals["reset"], **failed})
    assert so_far(series["connects_per_s"], series["t_s"]) == pytest.approx(totals["established"], abs=2)


# -- real runs ---------------------------------------------------------------------------------
def run_json(argv: list[str], path: Path) -> dict[str, Any]:
    raise_nofile_soft_limit()
    main(["run", *argv, "--progress", "none", "--json", str(path)])
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def report_totals(rep: dict[str, Any], closed: int) -> dict[str, int]:
    return {"established": rep["established"], "closed": closed, "failed": rep["failed_total"], "messages": 0,
            **{"failed:" + c: n for c, n in rep["failed"].items()}}


def test_a_paced_ramp_adds_up(tmp_path: Path) -> None:
    """6,000 connects at 2,500/s: the ramp spans three rows and ends inside one (where QA saw the
    overshoot); then held and closed."""
    port = free_port("127.91.0.1")
    rep = run_json(["-c", "6000", "--connect-rate", "2500", "--hold", "1s", "--listen", f"127.91.0.1-127.91.0.4:{port}",
                    "--sources", "127.92.0.0/24", "--per-process", "3000"], tmp_path / "r.json")
    assert rep["established"] == 6000
    series = rep["series"]
    assert len(series["t_s"]) >= 4
    assert_rows_add_up(series, report_totals(rep, closed=6000))
    assert max(series["connects_per_s"]) < 2500 * 1.3  # no row far above the pace


def test_a_fast_ramp_stays_in_its_row(tmp_path: Path) -> None:
    """QA: the rows' counts were drawn on a straight line between the reports kept at two samples a
    second apart, so a 0.3 s ramp was spread over the second (connects/s after the ramp ended, and
    `established` below `open` in the same row). Every report is a point now."""
    port = free_port("127.91.1.1")
    rep = run_json(["-c", "4000", "--traffic", "echo", "--duration", "2s", "--listen",
                    f"127.91.1.1-127.91.1.2:{port}", "--sources", "127.92.1.0/24", "--per-process", "2000"],
                   tmp_path / "r.json")
    series = rep["series"]
    rows = list(zip(series["phase"], series["open"], series["established"], series["connects_per_s"], strict=True))
    # (A row in the middle of the ramp may show `open` a report ahead of `established`: open is
    # each worker's latest, established is read at the row's edge. Past the ramp they agree.)
    assert all(established >= opened for phase, opened, established, _ in rows if phase != "connecting"), rows
    # Once the traffic phase's second row is reached, the ramp is long over: no connects.
    traffic = [connects for phase, _, _, connects in rows if phase == "traffic"]
    assert traffic[1:] and not any(traffic[1:]), rows


def test_refused_connects_add_up_by_cause(tmp_path: Path) -> None:
    """Nothing listens: every connect fails with ECONNREFUSED, over several rows."""
    port = free_port("127.93.0.1")
    rep = run_json(["-c", "5000", f"127.93.0.1:{port}", "--connect-rate", "2500", "--sources", "127.94.0.0/24",
                    "--hold", "0s"], tmp_path / "r.json")
    assert rep["failed"] == {"ECONNREFUSED": 5000}
    assert_rows_add_up(rep["series"], report_totals(rep, closed=0))
