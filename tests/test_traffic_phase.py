"""The parent's side of the traffic phase (engine/traffic_phase.py), with a fake fleet and clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from loopfan.engine import protocol as P
from loopfan.engine import traffic_phase
from loopfan.traffic.config import TrafficConfig


@dataclass
class FakeWorker:
    finished: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    intervals: list[Any] = field(default_factory=list)


class ScriptedFleet:
    """A fleet whose pump() moves a fake clock and sets each worker's last report from a script:
    [(until_s, traffic snapshot)], the snapshot the worker reports until that time."""

    def __init__(self, workers: list[FakeWorker], script: list[tuple[float, dict[str, Any]]]) -> None:
        self.workers = workers
        self.script = script
        self.now = 0.0
        self.sent: list[str] = []

    def clock(self) -> float:
        return self.now

    def send(self, _workers: list[Any], message: str) -> None:
        self.sent.append(message)

    def pump(self, timeout_s: float) -> None:
        self.now += timeout_s
        snapshot = next((s for until, s in self.script if self.now < until), self.script[-1][1])
        for w in self.workers:
            w.stats = {"traffic": dict(snapshot)}

    def wait_until(self, *_args: Any) -> bool:
        return True


def test_slow_websocket_handshakes_do_not_cut_the_window_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: at 120,000 WebSocket connections the handshakes took 22 s; the parent gave the phase
    duration + reply timeout + 10 s (25 s) from the start, stopped the workers 2.7 s into their 5 s
    window, and the report said "interrupted". The handshakes come first, before the clock starts."""
    workers = [FakeWorker(), FakeWorker()]
    before = {"phase": "connecting", "handshakes_waiting": 0}  # the connect loop's last report
    fleet = ScriptedFleet(workers, [
        (1.0, before),
        (24.0, {"phase": "traffic", "handshakes_waiting": 5_000}),
        (29.0, {"phase": "traffic", "handshakes_waiting": 0, "window_s": 0.0}),
        (30.0, {"phase": "draining", "handshakes_waiting": 0, "window_s": 5.0}),
        (1e9, {"phase": "done", "done": True, "window_s": 5.0}),
    ])
    for w in workers:
        w.stats = {"traffic": dict(before)}
    monkeypatch.setattr(traffic_phase.time, "monotonic", fleet.clock)
    tc = TrafficConfig(kind="ws", duration_s=5.0, reply_timeout_s=10.0)
    totals = traffic_phase.await_traffic(fleet, workers, tc, lambda: None, lambda: False)  # type: ignore[arg-type]
    assert fleet.now >= 30.0 and totals.workers_done == 2 and totals.window_s == 5.0
    assert P.CLOSE not in fleet.sent


def test_a_report_from_the_connect_loop_is_not_talking() -> None:
    """Until a worker reports from its traffic phase, its last report (the connect loop's, with no
    handshakes waiting) says nothing of the traffic: the live view's "left" waited for nothing."""
    w = FakeWorker(stats={"traffic": {"phase": "connecting", "handshakes_waiting": 0}})
    assert not traffic_phase.all_talking([w])  # type: ignore[list-item]
    w.stats = {"traffic": {"phase": "traffic", "handshakes_waiting": 3}}
    assert not traffic_phase.all_talking([w])  # type: ignore[list-item]
    w.stats = {"traffic": {"phase": "traffic", "handshakes_waiting": 0}}
    assert traffic_phase.all_talking([w])  # type: ignore[list-item]
    assert traffic_phase.all_talking([FakeWorker(finished=True)])  # type: ignore[list-item]


# --- the --hdr-log: one series per tag ----------------------------------------------------------


def read_log(path: str) -> dict[str | None, list[Any]]:
    """Every interval of an HdrHistogram log, by tag (None: untagged), as hdrh's reader gives them."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader
    reader = HistogramLogReader(path, HdrHistogram(1, 600_000_000, 3))
    by_tag: dict[str | None, list[Any]] = {}
    while (h := reader.get_next_interval_histogram()) is not None:
        by_tag.setdefault(h.get_tag(), []).append(h)
    reader.close()
    return by_tag


def test_the_hdr_log_has_request_latency_untagged_and_ttfb_and_connect_tagged(tmp_path: Path) -> None:
    """Two workers' intervals of two grid seconds merge into one line per second and series; the
    connect latency is one interval spanning the ramp, at the log's start (StartTime: the ramp's)."""
    from loopfan.traffic.results import new_histogram
    connects = new_histogram()
    connects.record_value(300, 90)
    connects.record_value(1_900, 10)
    ramp = traffic_phase.RampSpan(started_at=1_700_000_000.0, start_clock=100.0, end_clock=102.5,
                                  connect_latency=connects)
    a = FakeWorker(intervals=[(103.2, 104.0, {1_000: 5}, {400: 5}), (104.0, 105.0, {2_000: 3}, {900: 3})])
    b = FakeWorker(intervals=[(103.2, 104.0, {1_500: 1}, {600: 1})])
    path = str(tmp_path / "lat.hlog")
    log = traffic_phase.HdrIntervalLog(path, ramp)
    log.maybe_write([a, b], force=True)  # type: ignore[list-item]
    log.close()
    text = Path(path).read_text()
    assert "#[Histogram log format version 1.3]" in text and "#[StartTime: 1700000000.000 " in text
    by_tag = read_log(path)
    assert set(by_tag) == {None, "ttfb", "connect"}
    untagged, ttfb, (connect,) = by_tag[None], by_tag["ttfb"], by_tag["connect"]
    assert [h.get_total_count() for h in untagged] == [6, 3] and untagged[0].get_max_value() == 1_500
    assert [h.get_total_count() for h in ttfb] == [6, 3] and ttfb[0].get_max_value() == 600
    assert connect.get_total_count() == 100 and connect.get_max_value() == 1_900
    # The times, relative to the ramp's start: connect [0, 2.5], then the traffic's seconds.
    assert connect.get_start_time_stamp() == pytest.approx(1_700_000_000_000.0)
    assert connect.get_end_time_stamp() == pytest.approx(1_700_000_002_500.0)
    assert [h.get_start_time_stamp() for h in ttfb] == [h.get_start_time_stamp() for h in untagged]
    assert untagged[1].get_start_time_stamp() == pytest.approx(1_700_000_004_000.0)
    # Each tagged line is the Java writer's: "Tag=NAME," before start, length, max (ms), histogram.
    assert [ln.split(",")[:4] for ln in text.splitlines() if ln.startswith("Tag=connect")] == \
        [["Tag=connect", "0.000", "2.500", "1.900"]]


def test_without_the_ramp_the_log_starts_now_and_has_no_connect_series(tmp_path: Path) -> None:
    path = str(tmp_path / "lat.hlog")
    log = traffic_phase.HdrIntervalLog(path)
    log.maybe_write([FakeWorker(intervals=[(0.5, 1.0, {10: 1}, {5: 1})])], force=True)  # type: ignore[list-item]
    log.close()
    assert {tag: len(hs) for tag, hs in read_log(path).items()} == {None: 1, "ttfb": 1}
