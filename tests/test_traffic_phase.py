"""The parent's side of the traffic phase (engine/traffic_phase.py), with a fake fleet and clock."""

from __future__ import annotations

from dataclasses import dataclass, field
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
