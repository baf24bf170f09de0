"""The parent's side of the traffic phase: wait for every client worker to finish talking, write the
HdrHistogram interval log as it goes, and merge the workers' figures.

Rules of this file: called by runner.run_plan between the ramp and the hold; never raises for a
worker's failure (the fleet notes those); the log file is opened and closed here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from hdrh.log import HistogramLogWriter  # type: ignore[import-untyped]

from loopfan.engine import protocol as P
from loopfan.engine.fleet import Fleet, Worker
from loopfan.engine.traffic_client import TRAFFIC
from loopfan.traffic.config import TrafficConfig
from loopfan.traffic.results import TrafficTotals, merge, new_histogram, record

_LATE_S = 0.3  # how long after a grid second its intervals may still be on their way
# Beyond its duration, a worker may need the reply timeout to drain, and a little to report.
_GRACE_S = 10.0
# Interrupted: how long the workers have to stop talking and send their last figures and intervals
# (each leaves its loop within a poll, 50 ms; the rest is a report through the pipe).
_STOP_GRACE_S = 3.0


def traffic_of(workers: list[Worker]) -> TrafficTotals:
    return merge(w.stats.get("traffic") or {} for w in workers)


# The log's tags (HdrHistogram log format 1.3: "Tag=NAME," opens an interval line). Untagged lines
# are the request/response latency, as they were before tags: readers that know no tags keep
# reading what they always read, and HistogramLogProcessor without -tag selects just those.
TTFB_TAG = "ttfb"  # time to first byte, per interval, like the request latency
CONNECT_TAG = "connect"  # connect latency: one interval spanning the ramp


@dataclass(frozen=True, slots=True)
class RampSpan:
    """The ramp as the log places it: when it began (wall clock, and the clock the workers stamp
    their intervals with: time.perf_counter), when it ended, and the connect latency it measured."""

    started_at: float  # time.time() as the ramp began: the log's StartTime
    start_clock: float  # time.perf_counter() then
    end_clock: float
    connect_latency: HdrHistogram


def interval_line(start_s: float, length_s: float, hist: HdrHistogram, tag: str | None = None) -> str:
    """One interval as HdrHistogram's Java HistogramLogWriter writes it ("Tag=%s,%.3f,%.3f,%.3f,%s"):
    start and length in seconds relative to StartTime, the max in milliseconds (us / 1000) - hdrh's
    own writer floors it to whole ms, and has no tags."""
    prefix = f"Tag={tag}," if tag else ""
    return f"{prefix}{start_s:.3f},{length_s:.3f},{hist.get_max_value() / 1000:.3f},{hist.encode().decode()}\n"


class HdrIntervalLog:
    """Latency interval histograms in the HdrHistogram log format (values in microseconds).

    Each client worker closes its intervals itself, on whole seconds of the monotonic clock all
    processes share (TrafficClientWorker._close_interval), so an interval holds the replies that
    completed in it - not the ones that reached the parent then, up to a report late. Interval k
    of every worker is merged into one line per series (untagged: request latency; Tag=ttfb: time
    to first byte), written once every worker has moved past it. With the ramp given, StartTime is
    the ramp's start and the connect latency comes first, as one Tag=connect interval spanning it
    (the traffic's lines follow, at their time since then); without, StartTime is now.
    """

    def __init__(self, path: str, ramp: RampSpan | None = None) -> None:
        self.fh: IO[str] = open(path, "w")  # noqa: SIM115 - closed by close()
        self.writer = HistogramLogWriter(self.fh)
        if ramp is not None:
            self.t0, self.t0_clock = ramp.started_at, ramp.start_clock
        else:
            self.t0 = time.time()
            self.t0_clock = time.perf_counter()  # the workers' clock at t0
        # second -> start, end, merged latency, merged time to first byte
        self.pending: dict[int, tuple[float, float, HdrHistogram, HdrHistogram]] = {}
        self.written_upto = -1  # the last second written
        self.writer.output_comment("[Logged with loopfan: microseconds; untagged lines: request/response latency, "
                                   f"Tag={TTFB_TAG}: time to first byte, Tag={CONNECT_TAG}: connect latency]")
        # Written here, not by hdrh's writer (which says 1.2): tags came with version 1.3.
        self.writer.output_comment("[Histogram log format version 1.3]")
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.t0))
        self.fh.write(f"#[StartTime: {self.t0:.3f} (seconds since epoch), {iso}]\n")
        self.writer.output_legend()
        if ramp is not None:
            length_s = max(0.0, ramp.end_clock - ramp.start_clock)
            self.fh.write(interval_line(0.0, length_s, ramp.connect_latency, CONNECT_TAG))

    def collect(self, workers: list[Worker]) -> None:
        for w in workers:
            for start, end, samples, ttfb in w.intervals:
                second = math.floor(start)
                if second <= self.written_upto:  # late for a line already written: into the next one
                    second = self.written_upto + 1
                lo, hi, h, h_ttfb = self.pending.get(second) or (start, end, new_histogram(), new_histogram())
                record(h, {int(us): n for us, n in samples.items()})
                record(h_ttfb, {int(us): n for us, n in ttfb.items()})
                self.pending[second] = (min(lo, start), max(hi, end), h, h_ttfb)
            w.intervals.clear()

    def maybe_write(self, workers: list[Worker], force: bool = False) -> None:
        self.collect(workers)
        # Every worker still talking closes second k within a loop turn of k + 1; a little slack
        # for its report to arrive, then the line is complete.
        ready_upto = math.floor(time.perf_counter() - _LATE_S) - 1
        for second in sorted(self.pending):
            if not force and second > ready_upto:
                break
            start, end, h, h_ttfb = self.pending.pop(second)
            # Lines tile the time: a middle second is [k, k + 1) whatever each worker's loop turn
            # added (1-10 ms of overlap otherwise); the first and the last keep their true edges.
            start = max(start, float(second))
            if self.pending or not force:
                end = min(end, second + 1.0)
            rel_start = max(0.0, start - self.t0_clock)
            rel_end = max(rel_start, end - self.t0_clock)
            h.set_start_time_stamp(int((self.t0 + rel_start) * 1000))
            h.set_end_time_stamp(int((self.t0 + rel_end) * 1000))
            self.fh.write(interval_line(rel_start, rel_end - rel_start, h))
            self.fh.write(interval_line(rel_start, rel_end - rel_start, h_ttfb, TTFB_TAG))
            self.written_upto = second

    def close(self) -> None:
        self.fh.close()


def await_traffic(fleet: Fleet, clients: list[Worker], tc: TrafficConfig, tick: Callable[[], None],
                  stopped: Callable[[], bool], ramp: RampSpan | None = None) -> TrafficTotals:
    """Start the traffic phase on every client worker, then pump the fleet until each says it is
    done (or died), writing the HdrHistogram log as intervals come in. Interrupted, the workers are
    told to stop and their last figures and intervals awaited (briefly), so the report and the log
    both hold what was measured up to the interrupt. `ramp`: the connect latency for the log."""
    log = HdrIntervalLog(tc.hdr_log, ramp) if tc.hdr_log else None
    fleet.send(clients, TRAFFIC)
    # How long the workers may take once they all talk: warm-up, window, the drain (up to the reply
    # timeout) and a report. Before that, WebSocket opening handshakes (each worker gives them up to
    # the reply timeout, after writing every request): the clock starts when they are done. QA: at
    # 120,000 connections they took 22 s, the parent gave up at 25 s with 2.7 s of the 5 s window
    # measured, and its CLOSE made the report say "interrupted" - nobody had interrupted anything.
    talk_s = tc.warmup_s + tc.duration_s + tc.reply_timeout_s + _GRACE_S
    deadline = time.monotonic() + (tc.reply_timeout_s if tc.kind == "ws" else 0.0) + talk_s
    talking = False
    try:
        while not stopped() and time.monotonic() < deadline:
            fleet.pump(0.1)
            tick()
            if not talking and all_talking(clients):
                talking = True
                deadline = max(deadline, time.monotonic() + talk_s)
            if log:
                log.maybe_write(clients)
            if all(w.finished or _done(w.stats) for w in clients):
                break
        if stopped():
            # The close the run sends next, sent now: each worker ends its traffic at once and reports
            # its last intervals (a log written before they came lost the last seconds).
            fleet.send(clients, P.CLOSE)
            fleet.wait_until(lambda: all(w.finished or _done(w.stats) for w in clients), _STOP_GRACE_S, tick)
        if log:
            log.maybe_write(clients, force=True)
    finally:
        if log:
            log.close()
    return traffic_of(clients)


def all_talking(clients: list[Worker]) -> bool:
    """Every client worker has begun its traffic: it reported a traffic phase (a report from before,
    of the connect loop, says nothing of it) with its WebSocket handshakes done."""
    return all(w.finished or ((w.stats.get("traffic") or {}).get("phase", "connecting") != "connecting"
                              and not w.stats["traffic"].get("handshakes_waiting"))
               for w in clients)


def _done(stats: dict[str, Any]) -> bool:
    return bool((stats.get("traffic") or {}).get("done"))
