"""Traffic metrics in --check, --gate and compare: read from the report's "traffic" block, the
latency.X alias, directions, missing values, the compare table; then one short run end to end.

Reports here are synthetic dicts (a connect histogram with known values and a traffic block shaped
like a real run's), so every figure is known; the end-to-end test is one small loopback run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from loopfan.cli import main
from loopfan.engine.report import histogram_dict
from loopfan.engine.runner import new_histogram
from loopfan.errors import UsageError
from loopfan.results.checks import (
    METRICS,
    described,
    metric_for,
    parse_check,
    parse_gate,
    report_metrics,
    run_checks,
    run_gates,
)
from loopfan.results.compare import KEY_METRICS, TRAFFIC_KEY_METRICS, markdown, rows


def hold_report(connect_us: int = 400) -> dict[str, Any]:
    """A hold-only run: 1,000 connects of `connect_us` each, no traffic."""
    h = new_histogram()
    h.record_value(connect_us, 1000)
    return {
        "schema": "loopfan.report/1", "started_at": 1.0, "target_connections": 1000, "established": 1000,
        "peak_concurrent": 1000, "failed": {}, "failed_total": 0,
        "connect_rate_per_s": {"mean": 5000.0, "peak": 7500.0},
        "connect_latency_ms": dict.fromkeys(("p50", "p90", "p99", "p999", "p9999", "max"), connect_us / 1000),
        "duration_s": {"connect": 0.2, "total": 1.0}, "cpu_s": 0.5,
        "histograms": {"connect_latency": histogram_dict(h)}, "traffic": None, "checks": [],
    }


def traffic_report(*, status: str = "http-2xx", p99_ms: float = 12.7, rate: float = 100_000.0) -> dict[str, Any]:
    """A run with HTTP traffic whose every reply had `status` (4xx and 5xx count as errors too)."""
    rep = hold_report()
    n = 50_000
    errors = {status: n} if status in ("http-4xx", "http-5xx") else {}
    rep["traffic"] = {
        "kind": "http", "model": "closed loop", "warmup_s": 0.0, "window_s": 0.5,
        "sent": n, "sent_in_window": n, "replies": n, "replies_in_window": n - 200,
        "messages_per_s": rate, "bytes_in_per_s": 21e6, "bytes_out_per_s": 4.5e6,
        "latency_ms": {"p50": 1.7, "p90": 2.1, "p99": p99_ms, "p999": 14.0, "p9999": 15.3, "max": 15.4,
                       "mean": 1.82},
        "ttfb_ms": {"p50": 1.6, "p90": 2.0, "p99": 6.9, "p999": 11.8, "p9999": 15.2, "max": 15.3, "mean": 1.8},
        "samples": n, "statuses": {status: n}, "errors": errors, "errors_total": sum(errors.values()),
        "error_causes": [{"cause": c, "count": k, "meaning": "the server answered with that status",
                          "fix": "see the server's log"} for c, k in errors.items()],
        "errors_by_source": {"127.0.0.2": sum(errors.values())} if errors else {},
        "sources_with_errors": 1 if errors else 0, "hdr_log": None,
        "unanswered_at_end": 3, "unsent_at_end": 0, "connections_talking_at_start": 1000,
        "lost_in_flight": 2, "connections_reopened": 5,
        "connections_talking_at_end": 998,
    }
    return rep


# --- every metric, from the traffic block ---------------------------------------------------------------

EXPECTED = {
    "traffic.messages_per_s": 100_000.0, "traffic.bytes_in_per_s": 21e6, "traffic.bytes_out_per_s": 4.5e6,
    "traffic.latency.p50": 1.7, "traffic.latency.p90": 2.1, "traffic.latency.p99": 12.7,
    "traffic.latency.p999": 14.0, "traffic.latency.p9999": 15.3, "traffic.latency.max": 15.4,
    "traffic.latency.mean": 1.82, "traffic.ttfb.p50": 1.6, "traffic.ttfb.p90": 2.0, "traffic.ttfb.p99": 6.9,
    "traffic.ttfb.p999": 11.8, "traffic.ttfb.p9999": 15.2, "traffic.ttfb.max": 15.3, "traffic.ttfb.mean": 1.8,
    "traffic.errors": 0, "traffic.replies": 49_800, "traffic.sent": 50_000, "traffic.samples": 50_000,
    "traffic.unanswered": 3, "traffic.unsent": 0, "traffic.talking.start": 1000, "traffic.talking.end": 998,
    "traffic.lost": 2, "traffic.reopened": 5,
    "traffic.statuses.http-2xx": 50_000,
}


def test_every_traffic_metric_is_read_from_the_traffic_block() -> None:
    assert {n for n in METRICS if n.startswith("traffic.")} <= EXPECTED.keys()
    m = report_metrics(traffic_report())
    assert {name: m[name] for name in EXPECTED} == EXPECTED


def test_a_hold_only_report_has_no_traffic_figures_not_zeros() -> None:
    m = report_metrics(hold_report())
    assert all(m[name] is None for name in METRICS if name.startswith("traffic."))
    judged = run_checks([parse_check("traffic.errors==0"), parse_check("traffic.errors.http-5xx==0"),
                         parse_check("traffic.statuses.http-5xx==0")], hold_report())
    assert [(c["passed"], c["actual"], c["detail"]) for c in judged] == [(False, None, "not measured in this run")] * 3


def never_ran_report() -> dict[str, Any]:
    """A traffic run whose every connect was refused: the block is there, but nothing talked."""
    rep = traffic_report()
    rep["established"] = rep["peak_concurrent"] = 0
    rep["failed"], rep["failed_total"] = {"ECONNREFUSED": 1000}, 1000
    rep["traffic"].update(window_s=0.0, sent=0, sent_in_window=0, replies=0, replies_in_window=0, samples=0,
                          messages_per_s=None, bytes_in_per_s=None, bytes_out_per_s=None, statuses={},
                          unanswered_at_end=0, lost_in_flight=0, connections_reopened=0,
                          connections_talking_at_start=0, connections_talking_at_end=0)
    return rep


def test_a_run_whose_traffic_never_ran_passes_no_traffic_check_or_gate() -> None:
    """QA: every connect refused, 'Traffic: not run' - yet traffic.errors==0 passed (actual 0), and
    `compare --gate traffic.errors:0` passed against a clean baseline, while trend said '-'."""
    never = never_ran_report()
    m = report_metrics(never)
    assert all(m[name] is None for name in METRICS if name.startswith("traffic."))
    exprs = ("traffic.errors==0", "traffic.errors.http-5xx==0", "traffic.lost==0", "traffic.unanswered==0",
             "traffic.statuses.http-2xx>=0")
    judged = run_checks([parse_check(e) for e in exprs], never)
    assert [(c["passed"], c["detail"]) for c in judged] == [(False, "not measured in this run")] * len(exprs)
    gates = run_gates([parse_gate("traffic.errors:0"), parse_gate("traffic.lost:0")], traffic_report(), never)
    assert [g["passed"] for g in gates] == [False, False]
    row = {r.metric.name: r for r in rows(traffic_report(), never, traffic=True)}["traffic.errors"]
    assert row.base == 0 and row.new is None


@pytest.mark.parametrize("expr, passed", [
    ("traffic.latency.p99<10ms", False),
    ("traffic.latency.p99<=12.7", True),  # a bare number is the metric's unit: ms
    ("traffic.latency.p99.9<20ms", True),
    ("traffic.latency.median<2ms", True),
    ("traffic.ttfb.p99<10ms", True),
    ("traffic.ttfb.max<1s", True),
    ("traffic.messages_per_s>=100k/s", True),
    ("traffic.messages_per_s>100k", False),
    ("traffic.bytes_in_per_s>20MB/s", True),
    ("traffic.bytes_out_per_s<4MB", False),
    ("traffic.errors==0", True),
    ("traffic.errors.http-5xx==0", True),  # never seen, in a run that counted errors: 0
    ("traffic.statuses.http-2xx>=50k", True),
    ("traffic.statuses.http-4xx==0", True),
    ("traffic.unanswered==0", False),
    ("traffic.unsent==0", True),
    ("traffic.talking.end>=1000", False),
    ("traffic.replies>40k", True),
])
def test_traffic_checks(expr: str, passed: bool) -> None:
    [result] = run_checks([parse_check(expr)], traffic_report())
    assert result["passed"] is passed, result


def test_errors_and_statuses_by_name() -> None:
    rep = traffic_report(status="http-5xx")
    judged = run_checks([parse_check(e) for e in ("traffic.errors==0", "traffic.errors.http-5xx<100",
                                                  "traffic.statuses.http-5xx==0", "traffic.statuses.http-2xx>0")], rep)
    assert [(c["metric"], c["actual"], c["passed"]) for c in judged] == [
        ("traffic.errors", 50_000, False), ("traffic.errors.http-5xx", 50_000, False),
        ("traffic.statuses.http-5xx", 50_000, False), ("traffic.statuses.http-2xx", 0, False)]


# --- latency.X ------------------------------------------------------------------------------------------


def test_latency_alias_is_the_request_latency_on_a_traffic_run_and_says_so() -> None:
    """QA's run: connects 0.4 ms, requests p99 12.7 ms; 'latency.p99<5ms' passed on the connects."""
    [c] = run_checks([parse_check("latency.p99<5ms")], traffic_report())
    assert c["passed"] is False and c["actual"] == 12.7
    # The expression stays as typed (report.json's schema); the meaning is beside it, and joined for people.
    assert c["metric"] == "traffic.latency.p99" and c["expression"] == "latency.p99<5ms"
    assert c["label"] == "request latency" and described(c) == "latency.p99 (request latency)<5ms"
    [c] = run_checks([parse_check("latency.p99.9 <= 20ms")], traffic_report())
    assert c["passed"] and described(c) == "latency.p99.9 (request latency) <= 20ms"
    # Connect latency stays reachable by its own name.
    [c] = run_checks([parse_check("connect_latency.p99<5ms")], traffic_report())
    assert c["passed"] and c["actual"] == pytest.approx(0.4, rel=1e-2)


@pytest.mark.parametrize("kind", ["echo", "raw", "ws"])
def test_latency_alias_is_said_in_the_words_of_the_runs_traffic(kind: str) -> None:
    """An echo, raw or WebSocket run sends messages, not requests (the report says so): the alias's
    label says "message latency" there, in a check and in a gate alike; HTTP's stays "request latency"."""
    talked = traffic_report()
    talked["traffic"]["kind"] = kind
    [c] = run_checks([parse_check("latency.p99<5ms")], talked)
    assert c["metric"] == "traffic.latency.p99" and described(c) == "latency.p99 (message latency)<5ms"
    [g] = run_gates([parse_gate("latency.p99:+10%")], hold_report(), talked)
    assert g["metric"] == "traffic.latency.p99" and described(g) == "latency.p99 (message latency):+10%"
    [g] = run_gates([parse_gate("latency.max<=15.4ms")], talked, hold_report())  # only the baseline talked
    assert described(g) == "latency.max (message latency)<=15.4ms"
    [g] = run_gates([parse_gate("latency.p99:+10%")], talked, traffic_report())  # the new run's words
    assert described(g) == "latency.p99 (request latency):+10%"


def test_latency_alias_on_a_hold_only_run_is_the_connect_latency_as_before() -> None:
    [c] = run_checks([parse_check("latency.p99<5ms")], hold_report())
    assert c["passed"] and c["metric"] == "connect_latency.p99" and c["expression"] == "latency.p99<5ms"
    assert "label" not in c and described(c) == "latency.p99<5ms"
    assert c["actual"] == pytest.approx(0.4, rel=1e-2)


def test_a_gate_gives_latency_one_meaning_for_both_reports() -> None:
    """Hold-only baseline, traffic run: request latency in both, so the baseline has none to compare
    with - never 0.4 ms connects against 12.7 ms requests."""
    [g] = run_gates([parse_gate("latency.p99:+10%")], hold_report(), traffic_report())
    assert g["passed"] is False and g["detail"] == "not measured in the baseline"
    assert g["expression"] == "latency.p99:+10%" and g["metric"] == "traffic.latency.p99"
    assert described(g) == "latency.p99 (request latency):+10%"
    [g] = run_gates([parse_gate("latency.p99:+10%")], traffic_report(p99_ms=10.0), traffic_report(p99_ms=12.0))
    assert g["passed"] is False and g["baseline"] == 10.0 and g["actual"] == 12.0
    [g] = run_gates([parse_gate("latency.p99:+10%")], hold_report(400), hold_report(420))
    assert g["passed"] and g["metric"] == "connect_latency.p99" and g["expression"] == "latency.p99:+10%"
    [g] = run_gates([parse_gate("latency.max<=15.4ms")], hold_report(), traffic_report())  # a check as a gate
    assert g["passed"] and described(g) == "latency.max (request latency)<=15.4ms"


# --- gate directions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, lower_is_better", [
    ("traffic.latency.p99", True), ("traffic.latency.mean", True), ("traffic.ttfb.p50", True),
    ("traffic.messages_per_s", False), ("traffic.bytes_in_per_s", False), ("traffic.bytes_out_per_s", False),
    ("traffic.errors", True), ("traffic.errors.reply-timeout", True), ("traffic.statuses.http-2xx", False),
    ("traffic.statuses.ws-handshake-ok", False), ("traffic.statuses.http-5xx", True),
    ("traffic.statuses.http-4xx", True), ("traffic.statuses.ws-close-1011", True), ("traffic.unanswered", True),
    ("traffic.unsent", True), ("traffic.replies", False), ("traffic.sent", False), ("traffic.samples", False),
    ("traffic.talking.start", False), ("traffic.talking.end", False), ("latency.p99", True),
    ("traffic.statuses.ws-subprotocol-mqtt", False), ("traffic.statuses.ws-subprotocol-none", True),
    ("traffic.statuses.tls-handshake-ok", False), ("traffic.errors.tls-cert-verify-failed", True),
])
def test_directions(name: str, lower_is_better: bool) -> None:
    assert metric_for(name).lower_is_better is lower_is_better


@pytest.mark.parametrize("expr, base, new, passed", [
    ("traffic.messages_per_s:5%", 100_000.0, 90_000.0, False),  # fewer messages: worse
    ("traffic.messages_per_s:5%", 100_000.0, 150_000.0, True),
    ("traffic.messages_per_s:+5%", 100_000.0, 150_000.0, False),  # a sign overrides the direction
    ("traffic.latency.p99:10%", 10.0, 12.0, False),  # slower: worse
    ("traffic.latency.p99:10%", 10.0, 5.0, True),
    ("traffic.latency.p99:+2ms", 10.0, 11.9, True),
    ("latency.p99:10%", 10.0, 12.0, False),
])
def test_unsigned_gates_allow_change_in_the_bad_direction_only(expr: str, base: float, new: float,
                                                                passed: bool) -> None:
    key = "messages_per_s" if "messages" in expr else "p99"

    def rep(v: float) -> dict[str, Any]:
        r = traffic_report()
        if key == "p99":
            r["traffic"]["latency_ms"]["p99"] = v
        else:
            r["traffic"]["messages_per_s"] = v
        return r

    [g] = run_gates([parse_gate(expr)], rep(base), rep(new))
    assert g["passed"] is passed, g


def test_error_gates_between_an_all_200_and_an_all_404_run() -> None:
    ok, notfound = traffic_report(), traffic_report(status="http-4xx")
    results = {g["expression"]: g["passed"] for g in run_gates(
        [parse_gate(e) for e in ("traffic.errors:0", "traffic.errors.http-4xx:0", "traffic.statuses.http-2xx:-1%",
                                 "traffic.statuses.http-5xx:0", "traffic.errors==0")], ok, notfound)}
    assert results == {"traffic.errors:0": False, "traffic.errors.http-4xx:0": False,
                       "traffic.statuses.http-2xx:-1%": False, "traffic.statuses.http-5xx:0": True,
                       "traffic.errors==0": False}


@pytest.mark.parametrize("name", sorted(n for n in METRICS if n.startswith("traffic.")))
def test_a_traffic_run_never_fails_a_gate_against_itself(name: str) -> None:
    rep = traffic_report()
    [g] = run_gates([parse_gate(f"{name}:0")], rep, copy.deepcopy(rep))
    assert g["passed"], g


# --- names and errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("typed, meant", [
    ("request_latency.p99", "traffic.latency.p99"),
    ("first_byte.p99.9", "traffic.ttfb.p999"),
    ("traffic_errors", "traffic.errors"),
    ("traffic_errors.http-5xx", "traffic.errors.http-5xx"),
    ("messages_per_s", "traffic.messages_per_s"),
    ("traffic.latency_ms.p99", "traffic.latency.p99"),
    ("traffic.errors_total", "traffic.errors"),
    ("status.http-5xx", "traffic.statuses.http-5xx"),
    ("unanswered", "traffic.unanswered"),
    ("latency.min", "connect_latency.min"),  # the alias covers what both latencies have
])
def test_unknown_names_say_which_metric_was_meant(typed: str, meant: str) -> None:
    with pytest.raises(UsageError, match=f"unknown metric '{typed}'; did you mean {meant}\\?") as exc:
        parse_check(f"{typed}<1")
    assert "\n" not in str(exc.value)


def test_the_unknown_metric_error_lists_the_traffic_metrics() -> None:
    with pytest.raises(UsageError) as exc:
        parse_gate("bogus:1")
    text = str(exc.value)
    for name in ("connect_latency.{pNN,max,mean,min}", "failed.CAUSE", "traffic.messages_per_s",
                 "traffic.latency.{pNN,max,mean}", "traffic.ttfb.{pNN,max,mean}", "traffic.errors",
                 "traffic.errors.CAUSE", "traffic.statuses.NAME", "traffic.unanswered", "latency.{pNN,max,mean}"):
        assert name in text, name


@pytest.mark.parametrize("expr, fragment", [
    ("traffic.latency.p99<5MB", "unit 'MB' does not fit traffic.latency.p99 (measured in milliseconds)"),
    ("traffic.bytes_in_per_s>5ms", "unit 'ms' does not fit traffic.bytes_in_per_s (measured in bytes per second)"),
    ("traffic.messages_per_s>5MB", "does not fit"),
])
def test_units_that_do_not_fit(expr: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_check(expr)


def test_names_with_dashes_parse() -> None:
    """Causes and statuses hold dashes; connection causes too (failed.closed-by-peer)."""
    assert parse_check("failed.closed-by-peer==0").metric.name == "failed.closed-by-peer"
    gate = parse_gate("traffic.statuses.ws-close-1011:0")
    assert gate.metric.name == "traffic.statuses.ws-close-1011" and gate.direction == "up"
    assert parse_gate("traffic.errors.no-reply-ever:+5").amount == 5


# --- compare --------------------------------------------------------------------------------------------


def test_compare_shows_the_traffic_when_either_run_has_it() -> None:
    ok, notfound = traffic_report(), traffic_report(status="http-4xx")
    by_name = {r.metric.name: r for r in rows(ok, notfound, traffic=True)}
    assert [n for n in by_name if n in TRAFFIC_KEY_METRICS] == TRAFFIC_KEY_METRICS
    assert by_name["traffic.errors"].verdict() == "worse" and by_name["traffic.errors"].base == 0
    assert by_name["traffic.errors.http-4xx"].verdict() == "worse"
    assert by_name["traffic.statuses.http-2xx"].verdict() == "worse"
    assert (by_name["traffic.statuses.http-2xx"].base, by_name["traffic.statuses.http-2xx"].new) == (50_000, 0)
    assert by_name["traffic.latency.p99"].verdict() == "same"
    md = markdown(ok, notfound, [], "post.json", "404.json")
    assert "| traffic.errors | 0 | 50,000 | +50,000 (new) | **worse** |" in md
    assert "| traffic.statuses.http-2xx | 50,000 | 0 | -50,000 (-100.0%) | **worse** |" in md
    assert "| traffic.bytes_in_per_s | 21.0 MB/s | 21.0 MB/s | 0.0 MB/s (0.0%) | ~ |" in md


def test_compare_against_a_hold_only_run_marks_the_traffic_not_measured() -> None:
    by_name = {r.metric.name: r for r in rows(hold_report(), traffic_report(), traffic=True)}
    row = by_name["traffic.latency.p99"]
    assert row.base is None and row.new == 12.7 and row.delta is None and row.verdict() == ""
    assert by_name["traffic.statuses.http-2xx"].base is None  # no traffic: not measured, not 0
    md = markdown(hold_report(), traffic_report(), [])
    assert "| traffic.latency.p99 | - | 12.7 ms | - |  |" in md


def test_compare_without_traffic_is_as_before() -> None:
    names = [r.metric.name for r in rows(hold_report(), hold_report(), traffic=True)]
    assert names == [n for n in KEY_METRICS if n in names] and not any(n.startswith("traffic.") for n in names)
    # Without traffic=True the table has none either, traffic or not.
    assert not any(r.metric.name.startswith("traffic.") for r in rows(traffic_report(), traffic_report()))


def test_compare_puts_each_family_after_the_figures_it_breaks_down() -> None:
    """Connection failure causes after the connection's figures, traffic error causes and statuses
    after the traffic's: a failed.CAUSE row among traffic rows would read as a traffic figure."""
    rep = traffic_report(status="http-5xx")
    rep["failed"], rep["failed_total"] = {"ECONNREFUSED": 3}, 3
    names = [r.metric.name for r in rows(traffic_report(), rep, traffic=True)]
    assert names == [*KEY_METRICS, "failed.ECONNREFUSED", *TRAFFIC_KEY_METRICS, "traffic.errors.http-5xx",
                     "traffic.statuses.http-2xx", "traffic.statuses.http-5xx"]


def test_compare_command_shows_traffic_rows_and_gates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    post, notfound = tmp_path / "post.json", tmp_path / "404.json"
    post.write_text(json.dumps(traffic_report()))
    notfound.write_text(json.dumps(traffic_report(status="http-4xx")))
    assert main(["compare", str(post), str(notfound), "--gate", "latency.p99:+10%"]) == 0
    out = capsys.readouterr().out
    assert "traffic.errors.http-4xx" in out and "traffic.statuses.http-2xx" in out
    assert "gate pass: latency.p99 (request latency):+10%" in out
    assert main(["compare", str(post), str(notfound), "--gate", "traffic.errors:0"]) == 1
    assert "gate FAIL: traffic.errors:0" in capsys.readouterr().out
    assert main(["compare", str(post), str(notfound), "--gate", "traffic_errors:0"]) == 2
    err = capsys.readouterr().err
    assert "did you mean traffic.errors?" in err


# --- traffic error causes: a name no run counts is refused --------------------------------------------------
# traffic.errors.TYPO==0 would always pass (a cause never seen is 0): a CI gate that can never fail.


@pytest.mark.parametrize("cause, fragment", [
    ("timout", "unknown traffic error cause in 'traffic.errors.timout'; did you mean traffic.errors.reply-timeout?"),
    ("TYPO", "known causes: closed-by-peer, "),
    ("http-503", "did you mean traffic.errors.http-5xx?"),  # counted by class
    ("ws-close-normal", "did you mean traffic.errors.ws-close-CODE?"),
    ("ws-rejected-http-4011", "did you mean traffic.errors.ws-rejected-http-STATUS?"),
    ("econnreset", "did you mean traffic.errors.ECONNRESET?"),
    ("http-2xx", "http-2xx in 'traffic.errors.http-2xx' is a status, not a traffic error; "
                 "write traffic.statuses.http-2xx"),
    ("ws-handshake-ok", "write traffic.statuses.ws-handshake-ok"),
])
def test_a_traffic_error_cause_no_run_counts_is_refused(cause: str, fragment: str) -> None:
    for parse, text in ((parse_check, f"traffic.errors.{cause}==0"), (parse_gate, f"traffic.errors.{cause}:0")):
        with pytest.raises(UsageError) as exc:
            parse(text)
        assert fragment in str(exc.value) and "\n" not in str(exc.value), (text, str(exc.value))


@pytest.mark.parametrize("cause", ["reply-timeout", "closed-by-peer", "no-reply-ever", "bad-reply", "http-4xx",
                                   "http-5xx", "ws-close-1011", "ws-rejected-http-401", "ws-handshake-timeout",
                                   "ECONNRESET", "EPIPE", "errno200"])
def test_a_known_cause_absent_from_the_report_counts_as_zero(cause: str) -> None:
    """Known but not seen in this run: 0 where the traffic was counted (passes), not measured on a
    hold-only run (fails), as for failed.CAUSE."""
    check, gate = parse_check(f"traffic.errors.{cause}==0"), parse_gate(f"traffic.errors.{cause}:0")
    [judged] = run_checks([check], traffic_report())
    assert judged["passed"] and judged["actual"] == 0, judged
    [judged] = run_gates([gate], traffic_report(), traffic_report())
    assert judged["passed"] and (judged["baseline"], judged["actual"]) == (0, 0), judged
    [judged] = run_checks([check], hold_report())
    assert not judged["passed"] and judged["detail"] == "not measured in this run"


def test_a_misspelt_traffic_error_cause_stops_the_run_before_it_starts(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import loopfan.commands.run as run_command

    def no_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(run_command, "run_plan", no_run)
    assert main(["run", "-c", "10", "--traffic", "http", "--check", "traffic.errors.timout==0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "unknown traffic error cause in 'traffic.errors.timout'" in err
    assert "did you mean traffic.errors.reply-timeout?" in err


def test_compare_refuses_a_gate_on_a_traffic_error_cause_no_run_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(traffic_report()))
    new.write_text(json.dumps(traffic_report(status="http-5xx")))
    for gate in ("traffic.errors.http-503:0", "traffic.errors.http-503==0"):
        assert main(["compare", str(base), str(new), "--gate", gate]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured
        assert "did you mean traffic.errors.http-5xx?" in captured.err
    # The name it meant judges the run: 50,000 5xx against none.
    assert main(["compare", str(base), str(new), "--gate", "traffic.errors.http-5xx:0"]) == 1
    assert "gate FAIL: traffic.errors.http-5xx:0" in capsys.readouterr().out
    # A known cause neither run had: 0 in both, so the gate passes.
    assert main(["compare", str(base), str(new), "--gate", "traffic.errors.reply-timeout:0"]) == 0


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leaks", "builtin_listen")
def test_traffic_checks_on_a_real_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    argv = ["run", "-c", "100", "--traffic", "http", "--duration", "0.5s", "-q", "--json", str(out)]
    status = main([*argv, "--check", "traffic.latency.p99<10s", "--check", "traffic.errors==0",
                   "--check", "latency.p99<10s", "--check", "traffic.messages_per_s>0"])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "check pass: latency.p99 (request latency)<10s" in text
    checks = json.loads(out.read_text())["checks"]
    assert [c["metric"] for c in checks] == ["traffic.latency.p99", "traffic.errors", "traffic.latency.p99",
                                             "traffic.messages_per_s"]
    assert all(c["passed"] for c in checks) and checks[1]["actual"] == 0
    status = main([*argv, "--check", "traffic.errors==0", "--check", "traffic.messages_per_s>1G"])
    text = capsys.readouterr().out
    assert status == 1, text
    assert "check pass: traffic.errors==0" in text and "check FAIL: traffic.messages_per_s>1G" in text


def test_a_misspelt_traffic_check_stops_the_run_before_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", "10", "--traffic", "http", "--check", "request_latency.p99<10ms"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean traffic.latency.p99?" in err
