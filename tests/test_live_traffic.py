"""The live view during traffic: the panel, the plain lines and the NDJSON records show messages/s,
request latency and traffic errors while the phase is "traffic", and connect figures before.

The series is a real SeriesSampler fed by fake workers (the cumulative STATS a client worker sends,
with its "traffic" part), so the figures come out of the same code a run uses; no sockets, no sleeps.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from loopfan.engine.runner import Progress, Totals
from loopfan.engine.timeseries import SeriesSampler
from loopfan.results.live import ProgressSink, describe, last_row, panel


@dataclass
class FakeWorker:
    role: str
    index: int
    stats: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    finished: bool = False


def client_stats(t: float, *, replies: int = 0, errors: dict[str, int] | None = None,
                 latency_us: dict[int, int] | None = None, failed: dict[str, int] | None = None) -> dict[str, Any]:
    return {"t": t, "attempted": 100, "established": 100, "open": 100, "peak_open": 100, "closed": 0,
            "failed": failed or {}, "bytes_in": replies * 200, "bytes_out": replies * 80,
            "traffic": {"replies": replies, "sent": replies, "awaits": True, "errors": errors or {},
                        "latency_us": latency_us or {}}}


def traffic_series() -> SeriesSampler:
    """Connect at t=0; then two traffic intervals: 50,000 replies each; errors 10, then 25 more."""
    s = SeriesSampler(target=100, t0=0.0)
    w = FakeWorker("client", 0)
    w.stats = client_stats(0.0)
    s.sample(0.0, "connecting", [w], {}, 0.0)
    w.stats = client_stats(1.0, replies=50_000, errors={"http-5xx": 10}, latency_us={1000: 40_000, 5000: 10_000})
    s.sample(1.0, "traffic", [w], {}, 0.0)
    w.stats = client_stats(2.0, replies=100_000, errors={"http-5xx": 30, "reply-timeout": 5},
                           latency_us={1000: 80_000, 5000: 19_000, 20_000: 1000})
    s.sample(2.0, "traffic", [w], {}, 0.0)
    return s


def progress(phase: str, series: SeriesSampler, failed: dict[str, int] | None = None) -> Progress:
    client = Totals(attempted=100, established=100, open=100, peak_open=100, failed=failed or {})
    return Progress(phase, 2.0, 100, client, None, 0.0, None, series)


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
    assert "request, last interval p50 1.000 ms  p99 20.0" in text
    assert "25/s, 35 so far (http-5xx 30, reply-timeout 5)" in text
    assert "ECONNRESET 2" in text  # connection failures still shown
    assert "connects/s" not in text and "connect, last interval" not in text


def test_panel_keeps_the_connect_figures_while_connecting() -> None:
    s = SeriesSampler(target=100, t0=0.0)
    s.note_latency({400: 100})
    s.sample(0.5, "connecting", [FakeWorker("client", 0, client_stats(0.5))], {}, 0.0)
    text = rendered(progress("connecting", s))
    assert "connects/s" in text and "connect, last interval p50 0.400 ms" in text
    assert "messages/s" not in text and "so far" not in text


def test_panel_says_none_when_the_traffic_has_no_errors() -> None:
    s = SeriesSampler(target=100, t0=0.0)
    w = FakeWorker("client", 0, client_stats(0.0))
    s.sample(0.0, "connecting", [w], {}, 0.0)
    w.stats = client_stats(1.0, replies=1000, latency_us={2000: 1000})
    s.sample(1.0, "traffic", [w], {}, 0.0)
    text = rendered(progress("traffic", s))
    assert "1,000 messages/s" in text and re.search(r"^errors +none", text, re.M)


def test_plain_line_during_traffic_names_the_errors() -> None:
    """QA saw 'traffic: 0/2,000 open, 0 connects/s, p99 - ms, no failures' while errors happened."""
    line = describe(progress("traffic", traffic_series()))
    assert line.startswith("traffic: 100/100 open, 50,000 messages/s, request p50 1.000 ms p99 20.0 ms, ")
    assert "errors 25/s, 35 so far (http-5xx 30, reply-timeout 5)" in line
    assert "no connection failures" in line and "connects/s" not in line
    before = describe(progress("connecting", traffic_series()))
    assert before.startswith("connecting: 100/100 open, 0 connects/s, p99 - ms, no failures")


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
    s = SeriesSampler(target=100, t0=0.0)
    s.sample(0.5, "holding", [FakeWorker("client", 0, {"t": 0.5, "established": 100, "open": 100, "failed": {}})],
             {}, 0.0)
    row = last_row(progress("holding", s))
    assert row["errors_per_s"] == 0 and row["errors_so_far"] == 0 and row["errors_by_cause_so_far"] == {}
    assert row["message_latency_ms"]["p99"] is None
