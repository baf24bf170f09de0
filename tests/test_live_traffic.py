"""The live view during traffic: the panel, the plain lines and the NDJSON records show messages/s,
request latency and traffic errors while the phase is "traffic", and connect figures before; the
Prometheus exporter serves the same figures (scraped over loopback, text parsed).

The series is a real SeriesSampler and the recent reports (the rates as they are now) a real
RecentCounts, both fed by fake workers (the cumulative STATS a client worker sends, with its
"traffic" part), so the figures come out of the same code a run uses; no sockets, no sleeps.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import urllib.request
from typing import Any

import pytest
from conftest import FakeWorker
from rich.console import Console

from loopfan.engine.live_rates import Recent, RecentCounts
from loopfan.engine.runner import Progress, Totals
from loopfan.engine.timeseries import SeriesSampler
from loopfan.results.live import ProgressSink, describe, last_row, panel
from loopfan.results.prometheus import Exporter, listen


def client_stats(t: float, *, replies: int = 0, errors: dict[str, int] | None = None,
                 latency_us: dict[int, int] | None = None, failed: dict[str, int] | None = None) -> dict[str, Any]:
    return {"t": t, "attempted": 100, "established": 100, "open": 100, "peak_open": 100, "closed": 0,
            "failed": failed or {}, "bytes_in": replies * 200, "bytes_out": replies * 80,
            "traffic": {"replies": replies, "sent": replies, "awaits": True, "errors": errors or {},
                        "latency_us": latency_us or {}}}


Fed = tuple[SeriesSampler, Recent]


def fed_by(*reports: tuple[float, dict[str, Any], str]) -> Fed:
    """A series and the recent reports of one worker that reported these (t, stats, phase), each
    sampled as a row at its time."""
    s = SeriesSampler(target=100, t0=0.0)
    recent = RecentCounts(t0=0.0)
    w = FakeWorker("client", 0)
    for t, stats, phase in reports:
        w.stats = stats
        recent.note(t, [w])
        s.sample(t, phase, [w], {}, 0.0)
    return s, recent.snapshot()


def traffic_series() -> Fed:
    """Connect at t=0; then two traffic intervals: 50,000 replies each; errors 10, then 25 more."""
    return fed_by(
        (0.0, client_stats(0.0), "connecting"),
        (1.0, client_stats(1.0, replies=50_000, errors={"http-5xx": 10}, latency_us={1000: 40_000, 5000: 10_000}),
         "traffic"),
        (2.0, client_stats(2.0, replies=100_000, errors={"http-5xx": 30, "reply-timeout": 5},
                           latency_us={1000: 80_000, 5000: 19_000, 20_000: 1000}), "traffic"))


def progress(phase: str, fed: Fed, failed: dict[str, int] | None = None,
             kind: str | None = "echo") -> Progress:
    """At 2.0 s; the traffic (or the phase) began at 0.0 s."""
    client = Totals(attempted=100, established=100, open=100, peak_open=100, failed=failed or {})
    series, recent = fed
    return Progress(phase, 2.0, 100, client, None, 0.0, None, series, traffic_kind=kind, recent=recent)


def rendered(p: Progress) -> str:
    console = Console(file=io.StringIO(), record=True, width=160)
    console.print(panel(p))
    return console.export_text()


def test_the_last_row_carries_the_interval_traffic() -> None:
    row = last_row(progress("traffic", traffic_series()))
    assert row["messages_per_s"] == 50_000
    lat = row["message_latency_ms"]
    assert lat["count"] == 50_000 and lat["p50"] == pytest.approx(1.0, rel=1e-2)
    assert lat["p99"] == pytest.approx(20.0, rel=1e-2)  # the last interval's 2 % at 20 ms
    assert row["errors_per_s"] == 25 and row["errors_by_cause_per_s"] == {"http-5xx": 20, "reply-timeout": 5}
    assert row["errors_so_far"] == 35 and row["errors_by_cause_so_far"] == {"http-5xx": 30, "reply-timeout": 5}


def test_panel_shows_traffic_during_the_traffic_phase() -> None:
    text = rendered(progress("traffic", traffic_series(), failed={"ECONNRESET": 2}))
    assert "50,000 messages/s" in text and "in 10.00 MB/s  out 4.00 MB/s" in text
    assert "message, last interval p50 1.000 ms  p99 20.0" in text and "request" not in text
    assert "25/s, 35 so far (http-5xx 30, reply-timeout 5)" in text
    assert "ECONNRESET 2" in text  # connection failures still shown
    assert "connects/s" not in text and "connect, last interval" not in text


def test_panel_keeps_the_connect_figures_while_connecting() -> None:
    s = SeriesSampler(target=100, t0=0.0)
    s.note_latency({400: 100})
    w = FakeWorker("client", 0, client_stats(1.5))
    s.sample(1.5, "connecting", [w], {}, 0.0)
    recent = RecentCounts(t0=0.0)
    recent.workers_start_now(1.0)
    recent.note(1.5, [w])
    text = rendered(progress("connecting", (s, recent.snapshot())))
    assert "connects/s" in text and "connect, last interval p50 0.400 ms" in text
    assert "messages/s" not in text and "so far" not in text


def test_panel_says_none_when_the_traffic_has_no_errors() -> None:
    fed = fed_by((0.0, client_stats(0.0), "connecting"),
                 (1.0, client_stats(1.0, replies=1000, latency_us={2000: 1000}), "traffic"),
                 (2.0, client_stats(2.0, replies=2000, latency_us={2000: 2000}), "traffic"))
    text = rendered(progress("traffic", fed))
    assert "1,000 messages/s" in text and re.search(r"^errors +none", text, re.M)


def test_plain_line_during_traffic_names_the_errors() -> None:
    """QA saw 'traffic: 0/2,000 open, 0 connects/s, p99 - ms, no failures' while errors happened."""
    line = describe(progress("traffic", traffic_series()))
    assert line.startswith("traffic: 100/100 open, 50,000 messages/s, message p50 1.000 ms p99 20.0 ms, ")
    assert "errors 25/s, 35 so far (http-5xx 30, reply-timeout 5)" in line
    assert "no connection failures" in line and "connects/s" not in line
    http = describe(progress("traffic", traffic_series(), kind="http"))
    assert http.startswith("traffic: 100/100 open, 50,000 requests/s, request p50 1.000 ms")
    assert "50,000 requests/s" in rendered(progress("traffic", traffic_series(), kind="http"))
    before = describe(progress("connecting", traffic_series()))
    assert before.startswith("connecting: 100/100 open, 0 connects/s, p99 - ms, no failures")


@pytest.mark.parametrize(("kind", "sent", "one"), [("http", "requests", "request"), ("raw", "messages", "message"),
                                                   ("ws", "messages", "message"), (None, "messages", "message")])
def test_the_live_view_names_the_traffic_as_the_report_does(kind: str | None, sent: str, one: str) -> None:
    """QA: the latency row read 'request, last interval' and the plain line 'request p50' for echo
    and WebSocket too, where the final report says messages: each kind's words (wording.traffic_nouns)
    in the panel, the plain line and the handshakes line; 'request' for HTTP alone."""
    p = progress("traffic", traffic_series(), kind=kind)
    text, line = rendered(p), describe(p)
    assert f"50,000 {sent}/s" in text and f"{one}, last interval p50 1.000 ms" in text
    assert f"50,000 {sent}/s, {one} p50 1.000 ms p99 20.0 ms, " in line
    waiting = dataclasses.replace(p, handshakes_waiting=40)
    assert f"handshakes 60/100 done, {sent} start after them" in describe(waiting)
    if kind != "http":
        assert "request" not in text and "request" not in line and "request" not in describe(waiting)


def test_sinks_write_traffic_in_plain_and_ndjson() -> None:
    p = progress("traffic", traffic_series())
    stream = io.StringIO()
    ProgressSink("ndjson", stream=stream, console=Console(file=io.StringIO()))(p)
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["phase"] == "traffic" and record["messages_per_s"] == 50_000
    assert record["message_latency_ms"]["p99"] == pytest.approx(20.0, rel=1e-2)
    assert record["errors_per_s"] == 25 and record["errors_so_far"] == 35
    assert record["errors_by_cause_so_far"] == {"http-5xx": 30, "reply-timeout": 5}
    stream = io.StringIO()
    ProgressSink("plain", stream=stream, console=Console(file=io.StringIO()))(p)
    assert "35 so far" in stream.getvalue()


def test_a_hold_only_row_has_empty_traffic_columns() -> None:
    fed = fed_by((0.5, {"t": 0.5, "established": 100, "open": 100, "failed": {}}, "holding"))
    row = last_row(progress("holding", fed))
    assert row["errors_per_s"] == 0 and row["errors_so_far"] == 0 and row["errors_by_cause_so_far"] == {}
    assert row["message_latency_ms"]["p99"] is None


# --- the Prometheus exporter -------------------------------------------------------------------------


def scrape(*updates: Progress) -> str:
    """The exporter on a free loopback port, handed these Progress updates in turn, scraped once."""
    pytest.importorskip("prometheus_client")
    exporter = Exporter(listen("127.0.0.1", 0))
    exporter.start()
    try:
        for p in updates:
            exporter.update(p)
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    finally:
        exporter.stop()


def samples(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """({family: type}, {'name{label="value"}': value}) of a scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    values = {s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}" if s.labels else ""):
              s.value for f in families for s in f.samples}
    return {f.name: f.type for f in families}, values


def test_prometheus_exports_the_traffic_figures() -> None:
    types, values = samples(scrape(progress("traffic", traffic_series())))
    assert {name: types[name] for name in types if name.startswith("loopfan_traffic_")} == {
        "loopfan_traffic_messages": "counter", "loopfan_traffic_messages_per_second": "gauge",
        "loopfan_traffic_received_bytes": "counter", "loopfan_traffic_received_bytes_per_second": "gauge",
        "loopfan_traffic_sent_bytes": "counter", "loopfan_traffic_sent_bytes_per_second": "gauge",
        "loopfan_traffic_latency_seconds": "gauge", "loopfan_traffic_errors": "counter",
        "loopfan_traffic_errors_per_second": "gauge"}
    # Two intervals of 50,000 replies (200 bytes in, 80 out each); counters summed over both.
    assert values["loopfan_traffic_messages_total"] == 100_000
    assert values["loopfan_traffic_messages_per_second"] == 50_000
    assert values["loopfan_traffic_received_bytes_total"] == 20_000_000
    assert values["loopfan_traffic_sent_bytes_total"] == 8_000_000
    assert values["loopfan_traffic_received_bytes_per_second"] == 10_000_000
    assert values["loopfan_traffic_sent_bytes_per_second"] == 4_000_000
    # The last interval's latency in seconds: 49,000 at 1 ms, 1,000 (2 %) at 20 ms.
    assert values['loopfan_traffic_latency_seconds{quantile="0.5"}'] == pytest.approx(0.001, rel=1e-2)
    assert values['loopfan_traffic_latency_seconds{quantile="0.99"}'] == pytest.approx(0.020, rel=1e-2)
    assert values['loopfan_traffic_latency_seconds{quantile="1"}'] == pytest.approx(0.020, rel=1e-2)
    # Errors by cause: 30 and 5 so far; 20/s and 5/s in the last interval (the live view's figures).
    assert values['loopfan_traffic_errors_total{cause="http-5xx"}'] == 30
    assert values['loopfan_traffic_errors_total{cause="reply-timeout"}'] == 5
    assert values['loopfan_traffic_errors_per_second{cause="http-5xx"}'] == 20
    assert values['loopfan_traffic_errors_per_second{cause="reply-timeout"}'] == 5
    assert values["loopfan_connections_open"] == 100  # the connection figures as before


def test_prometheus_traffic_families_come_with_the_traffic_phase_and_stay() -> None:
    series = traffic_series()
    assert "loopfan_traffic_" not in scrape(progress("connecting", series))  # not talking yet
    _, values = samples(scrape(progress("traffic", series), progress("closing", series)))
    assert values["loopfan_traffic_messages_total"] == 100_000  # a counter does not vanish with its phase
    assert values['loopfan_phase{phase="closing"}'] == 1


def test_prometheus_exports_no_traffic_for_a_hold_only_run() -> None:
    fed = fed_by((0.5, {"t": 0.5, "established": 100, "open": 100, "failed": {}}, "holding"))
    text = scrape(progress("connecting", fed), progress("holding", fed))
    assert "loopfan_connections_open 100" in text and "loopfan_traffic" not in text


def test_the_live_line_says_handshakes_are_under_way() -> None:
    """QA: during 9 s of WebSocket handshakes the line read "60,000/60,000 open, 0 messages/s"."""
    p = progress("traffic", traffic_series())
    waiting = Progress(p.phase, p.elapsed_s, p.target, p.client, None, 0.0, None, p.series, handshakes_waiting=40)
    line = describe(waiting)
    assert line.startswith("traffic: handshakes 60/100 done, messages start after them") and "messages/s" not in line
    assert "handshakes 60/100 done" in rendered(waiting)
    assert "handshakes" not in describe(p)  # once they are done: the messages
    # NDJSON too (QA: --progress ndjson said nothing of 5,000 TLS handshakes under way for 6 s).
    assert last_row(waiting)["handshakes_waiting"] == 40 and "handshakes_waiting" not in last_row(p)


def test_the_first_traffic_moments_show_the_traffic_rate_not_a_share_of_the_measuring() -> None:
    """QA: the first traffic row spans measuring time too, so messages/s read low (or 0) at first.
    Here the measuring ran 1.0-1.5 s and the traffic began at 1.5 s, 40,000 messages a second."""
    reports = [(t, client_stats(t, replies=max(0, round(40_000 * (t - 1.5)))), "traffic" if t > 1.5 else "measuring")
               for t in (1.0, 1.25, 1.5, 1.75)]
    series, recent = fed_by(*reports)
    p = Progress("traffic", 1.8, 100, Totals(attempted=100, established=100, open=100, peak_open=100), None, 0.0,
                 None, series, traffic_kind="echo", recent=recent, rates_since_s=1.5)
    assert series.cols["messages_per_s"][-1] == 40_000  # (the row's interval is the traffic's alone here)
    assert "40,000 messages/s" in rendered(p) and "in 8.00 MB/s  out 3.20 MB/s" in rendered(p)
    assert "40,000 messages/s" in describe(p)
    early = Progress("traffic", 1.6, 100, p.client, None, 0.0, None, series, traffic_kind="echo",
                     recent=fed_by(*reports[:3])[1], rates_since_s=1.5)
    assert "- messages/s  in - MB/s  out - MB/s" in rendered(early)  # not yet known: not "0 messages/s"


def test_prometheus_connects_per_second_is_the_phases_own() -> None:
    """QA: connects_per_second kept the ramp's figure for up to an interval into the hold."""
    ramp = [(t, {"t": t, "established": min(100, round(400 * t)), "open": min(100, round(400 * t)), "failed": {}},
             "connecting") for t in (0.0, 0.1, 0.2, 0.25)]
    held = [(t, {**ramp[-1][1], "t": t}, "holding") for t in (0.5, 0.75)]
    series, ramp_recent = fed_by(*ramp)  # the series' last row: the ramp's, 400 connects/s
    recent = fed_by(*ramp, *held)[1]
    client = Totals(attempted=100, established=100, open=100, peak_open=100)
    connecting = Progress("connecting", 0.25, 100, client, None, 0.0, None, series, recent=ramp_recent)
    holding = Progress("holding", 0.8, 100, client, None, 0.0, None, series, ramp_ended_s=0.25, recent=recent,
                       rates_since_s=0.3)
    _, values = samples(scrape(connecting))
    assert values["loopfan_connects_per_second"] == pytest.approx(400)
    assert series.cols["connects_per_s"][-1] == 400
    _, values = samples(scrape(holding))
    assert values["loopfan_connects_per_second"] == 0


def test_the_live_view_says_what_load_it_shows() -> None:
    """Audit: a --ws-ping run's live view said "messages/s" and nothing of pings."""
    series, recent = traffic_series()
    p = Progress("traffic", 2.0, 100, Totals(attempted=100, established=100, open=100, peak_open=100, failed={}),
                 None, 0.0, None, series, traffic_kind="ws", recent=recent, traffic_mode="ws pings, closed loop")
    assert describe(p).startswith("traffic (ws pings, closed loop): 100/100 open, 50,000 messages/s")
    assert re.search(r"^traffic +2\.0s  ws pings, closed loop", rendered(p), re.M)
