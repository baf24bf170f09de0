"""--check and --gate expressions, metrics read from a report, comparison rows and Markdown: pure, no runs.

Reports here are synthetic dicts with real HDR histograms, so percentiles are exact and known.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopfan.engine.report import histogram_dict
from loopfan.engine.runner import new_histogram
from loopfan.errors import UsageError
from loopfan.results.checks import (
    histogram_is_compressed,
    parse_check,
    parse_gate,
    report_metrics,
    run_checks,
    run_gates,
)
from loopfan.results.compare import markdown, rows, trend_rows, trend_summary


def fake_report(latencies_us: list[int], *, established: int = 1000, failed: dict[str, int] | None = None,
                rate: float = 5000.0) -> dict[str, Any]:
    h = new_histogram()
    for us in latencies_us:
        h.record_value(us)
    failed = failed or {}
    return {
        "schema": "loopfan.report/1", "started_at": 1.0, "target_connections": 1000, "established": established,
        "peak_concurrent": established, "failed": failed, "failed_total": sum(failed.values()),
        "connect_rate_per_s": {"mean": rate, "peak": rate * 1.5},
        "connect_latency_ms": {"p50": 999.0, "p90": 999.0, "p99": 999.0, "p999": 999.0, "p9999": 999.0, "max": 999.0},
        "duration_s": {"connect": 0.2, "total": 1.0}, "memory_bytes": {"user_client": 10_000_000},
        "cpu_s": 0.5, "histograms": {"connect_latency": histogram_dict(h)},
        "time_to_target_s": {"50%": 0.1, "100%": 0.2}, "checks": [],
    }


def test_percentiles_come_from_the_histogram_not_the_rounded_summary() -> None:
    m = report_metrics(fake_report([100] * 99 + [5000]))
    assert m["connect_latency.p50"] == pytest.approx(0.1, rel=1e-3)
    assert m["connect_latency.max"] == pytest.approx(5.0, rel=1e-3)  # summary says 999: ignored


def test_histogram_uses_the_standard_compressed_encoding() -> None:
    rep = fake_report([10, 20, 30])
    assert histogram_is_compressed(rep["histograms"]["connect_latency"]["data"])


@pytest.mark.parametrize("expr, passed", [
    ("connect_latency.p99<50ms", True),
    ("connect_latency.p99 < 50us", False),
    ("latency.p99.9<=0.2", True),
    ("failed==0", True),
    ("established>=1k", True),
    ("established>=1M", False),
    ("connect_rate.mean>4.9k/s", True),
    ("memory.client<100MB", True),
    ("failed.ETIMEDOUT==0", True),
    ("time_to_target<1s", True),
])
def test_checks(expr: str, passed: bool) -> None:
    [result] = run_checks([parse_check(expr)], fake_report([100] * 100))
    assert result["passed"] is passed, result


def test_every_phase_a_check_may_name_is_read_from_the_report() -> None:
    """Review: duration.measure / stop / traffic were accepted as metrics but never read from the
    report, so such a check always failed as 'not measured in this run'."""
    from loopfan.results.checks import PHASES

    rep = fake_report([100] * 100)
    rep["duration_s"] = {k: 0.5 for k in PHASES}
    results = run_checks([parse_check(f"duration.{k}<1s") for k in PHASES], rep)
    assert all(r["passed"] for r in results), [r for r in results if not r["passed"]]


@pytest.mark.parametrize("expr, fragment", [
    ("p99<5", "unknown metric 'p99'"),
    ("connect_latency.p99<5kg", "unit 'kg' does not fit"),
    ("established>=5ms", "unit 'ms' does not fit"),
    ("failed", "not METRIC OP VALUE"),
    ("failed==lots", "not a number"),
])
def test_bad_checks_say_what_to_write(expr: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_check(expr)


def test_gates_judge_the_change_in_the_bad_direction() -> None:
    base = fake_report([100] * 100)
    slower = fake_report([120] * 100, rate=4000.0, failed={"ETIMEDOUT": 3})
    results = {g["expression"]: g["passed"] for g in run_gates(
        [parse_gate(e) for e in ("latency.p99:+10%", "latency.p99:+25%", "connect_rate.mean:-5%", "failed:0",
                                 "failed:5", "latency.p50:30us", "failed==0")], base, slower)}
    assert results == {"latency.p99:+10%": False, "latency.p99:+25%": True, "connect_rate.mean:-5%": False,
                       "failed:0": False, "failed:5": True, "latency.p50:30us": True, "failed==0": False}


@pytest.mark.parametrize("expr", ["latency.p99", "bogus:1", "latency.p99:+10kg", "failed:-x"])
def test_bad_gates(expr: str) -> None:
    with pytest.raises(UsageError):
        parse_gate(expr)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 10_000_000), min_size=1, max_size=50), st.sampled_from(
    ["latency.p99:+0%", "latency.max:0", "connect_rate.mean:-0%", "failed:0", "established:0"]))
def test_a_run_never_fails_a_gate_against_itself(latencies: list[int], expr: str) -> None:
    rep = fake_report(latencies)
    [g] = run_gates([parse_gate(expr)], rep, copy.deepcopy(rep))
    assert g["passed"], g


def test_compare_rows_and_markdown() -> None:
    base, new = fake_report([100] * 100), fake_report([200] * 100, failed={"ECONNREFUSED": 2})
    by_name = {r.metric.name: r for r in rows(base, new)}
    assert by_name["connect_latency.p50"].verdict() == "worse"
    assert by_name["connect_latency.p50"].delta_pct == pytest.approx(100.0, rel=1e-2)
    assert by_name["established"].verdict() == "same"
    assert "failed.ECONNREFUSED" in by_name
    gates = run_gates([parse_gate("latency.p99:+10%")], base, new)
    md = markdown(base, new, gates, "base.json", "new.json")
    assert md.startswith("### loopfan compare: ❌ 1 of 1 gates failed")
    assert "| connect_latency.p50 | 0.100 ms | 0.200 ms | +0.1 ms (+100.0%) | **worse** |" in md


def test_trend_is_oldest_first_with_the_last_run_against_the_others() -> None:
    reps = []
    for i, us in enumerate([100, 110, 90, 300]):
        r = fake_report([us] * 10)
        r["started_at"] = 100.0 - i if i < 3 else 200.0
        reps.append((f"run{i}", r))
    table = trend_rows(reps)
    assert [r["name"] for r in table] == ["run2", "run1", "run0", "run3"]
    change = trend_summary(table)["connect_latency.p50"]["last_vs_median_pct"]
    assert change == pytest.approx(200.0, rel=0.02)


@pytest.mark.parametrize("expr, fragment", [
    ("failed=0", "write 'failed==0'"),  # a lone '=' was taken as == without a word in the docs
    ("failed.TYPO==0", "known causes: EADDRNOTAVAIL@connect"),  # would always pass: never counted
    ("failed.etimedout==0", "did you mean failed.ETIMEDOUT?"),
    ("failed.EADDRNOTAVAIL==0", "did you mean failed.EADDRNOTAVAIL@"),  # counted with where it happened
    ("traffic.statuses.http-200==0", "statuses are http-1xx"),
])
def test_checks_that_could_never_judge_anything_are_refused(expr: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)):
        parse_check(expr)


@pytest.mark.parametrize("expr", ["failed.ETIMEDOUT==0", "failed.closed-by-peer==0", "failed.EHOSTUNREACH==0",
                                  "failed.errno200==0"])
def test_a_cause_that_did_not_occur_in_this_run_is_still_valid(expr: str) -> None:
    [result] = run_checks([parse_check(expr)], fake_report([100] * 10))
    assert result["passed"], result
    parse_check("traffic.statuses.ws-close-1011==0")  # (a hold-only report measures no statuses)


def test_a_cause_that_says_where_it_happened_can_be_checked() -> None:
    """failed.EADDRNOTAVAIL==0 is refused with 'did you mean failed.EADDRNOTAVAIL@connect?' - and
    that name, the one the report counts, was then refused too: '@' was no character of a name."""
    rep = fake_report([100] * 10, failed={"EADDRNOTAVAIL@connect": 3})
    checks = [parse_check("failed.EADDRNOTAVAIL@connect==0"), parse_check("failed.EADDRNOTAVAIL@bind==0")]
    assert [(c["actual"], c["passed"]) for c in run_checks(checks, rep)] == [(3, False), (0, True)]
    [gate] = run_gates([parse_gate("failed.EADDRNOTAVAIL@connect:0")], fake_report([100] * 10), rep)
    assert (gate["baseline"], gate["actual"], gate["passed"]) == (0, 3, False)
    parse_check("traffic.errors.EADDRNOTAVAIL@connect==0")  # (cause_for names it so after a send or recv too)
    with pytest.raises(UsageError, match=re.escape("did you mean failed.EADDRNOTAVAIL@connect?")):
        parse_check("failed.EADDRNOTAVAIL@conect==0")


@pytest.mark.parametrize("expr, fragment", [
    ("latency.p99:+abc%", "'abc%' is not a percentage; write e.g. 10%"),
    ("latency.p99:+%", "is not a percentage"),
])
def test_bad_gate_percentages_are_said_in_words(expr: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)):
        parse_gate(expr)


def test_memory_client_is_the_figure_the_run_report_shows_incl_the_parent() -> None:
    rep = fake_report([100])
    rep["memory_bytes"] = {"user_client": 7_800_000, "user_parent": 4_200_000, "user_server": 1, "kernel": 2}
    assert report_metrics(rep)["memory.client"] == 12_000_000
    rep["memory_bytes"] = {"user_client": 7_800_000}  # an older report: the workers alone
    assert report_metrics(rep)["memory.client"] == 7_800_000


def test_loop_lag_max_leaves_the_close_out() -> None:
    """QA: a 300,000-connection hold run's loop_lag.max was 2,218 ms, all of it its close (servers
    reading 18,750 FINs each); while connecting the worst was 225 ms and while holding none."""
    rep = fake_report([100])
    rep["series"] = {"phase": ["connecting", "holding", "closing", "stopping"],
                     "health": {"loop_lag_ms_max": [225.5, 0.3, 2217.8, None]}}
    assert report_metrics(rep)["loop_lag.max"] == 225.5
    del rep["series"]["phase"]  # a series without phases: every row, as before
    assert report_metrics(rep)["loop_lag.max"] == 2217.8


@pytest.mark.parametrize("gate, fix", [
    ("latency.p99:+10", "latency.p99:+10% (relative to the baseline) or latency.p99:+10ms (absolute)"),
    ("memory.client:+5", "memory.client:+5% (relative to the baseline) or memory.client:+5B (absolute)"),
])
def test_a_gate_with_a_bare_number_where_a_unit_belongs_asks_which(gate: str, fix: str) -> None:
    """QA: 'latency.p99:+10' meant +10 ms, silently, where +10 % was meant: a gate that never fails."""
    with pytest.raises(UsageError, match=re.escape(fix)):
        parse_gate(gate)
    assert parse_gate(gate + "%").relative and parse_gate("latency.p99:0").amount == 0
    assert parse_gate("failed:3").amount == 3 and parse_gate("connect_rate.mean:-500").amount == 500


def test_a_check_on_an_interrupted_run_fails_and_says_it_was_partial() -> None:
    """QA: `run --check failed==0` stopped by SIGINT said 'check pass' and wrote "passed": true,
    while compare failed every gate of that same report. A run stopped half-way passes no check;
    the record says why (partial), and keeps the figure it had."""
    rep = fake_report([100] * 100, established=400)
    [whole] = run_checks([parse_check("failed==0")], rep)
    assert whole["passed"] is True and "partial" not in whole
    rep["interrupted"] = "SIGINT"
    [check] = run_checks([parse_check("failed==0")], rep)
    assert (check["passed"], check["partial"], check["actual"]) == (False, True, 0)
    assert check["detail"] == "the run was interrupted (SIGINT): a partial run passes no check"
    [gate] = run_gates([parse_gate("failed==0")], fake_report([100] * 100), rep)  # compare: the same rule
    assert (gate["passed"], gate["partial"]) == (False, True)
    assert gate["detail"] == "the new run was interrupted (SIGINT): partial, not comparable"
