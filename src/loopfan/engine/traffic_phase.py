"""The parent's side of the traffic phase: wait for every client worker to finish talking, write the
HdrHistogram interval log as it goes, and merge the workers' figures.

Rules of this file: called by runner.run_plan between the ramp and the hold; never raises for a
worker's failure (the fleet notes those); the log file is opened and closed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any

from hdrh.log import HistogramLogWriter  # type: ignore[import-untyped]

from loopfan.engine.fleet import Fleet, Worker
from loopfan.traffic.config import TrafficConfig
from loopfan.traffic.results import TrafficTotals, merge, new_histogram, record, subtract

_LOG_INTERVAL_S = 1.0
# Beyond its duration, a worker may need the reply timeout to drain, and a little to report.
_GRACE_S = 10.0


def traffic_of(workers: list[Worker]) -> TrafficTotals:
    return merge(w.stats.get("traffic") or {} for w in workers)


class HdrIntervalLog:
    """Latency interval histograms in the HdrHistogram log format (values in microseconds)."""

    def __init__(self, path: str) -> None:
        self.fh: IO[str] = open(path, "w")  # noqa: SIM115 - closed by close()
        self.writer = HistogramLogWriter(self.fh)
        self.t0 = time.time()
        self.last_t = self.t0
        self.seen: dict[int, dict[int, int]] = {}  # worker pid -> its cumulative latency at the last write
        self.writer.output_comment("[Logged with loopfan: request/response latency, microseconds]")
        self.writer.output_log_format_version()
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.t0))
        self.fh.write(f"#[StartTime: {self.t0:.3f} (seconds since epoch), {iso}]\n")
        self.writer.output_legend()

    def maybe_write(self, workers: list[Worker], force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_t < _LOG_INTERVAL_S:
            return
        h = new_histogram()
        for w in workers:
            cum: dict[int, int] = (w.stats.get("traffic") or {}).get("latency_us", {})
            record(h, subtract(cum, self.seen.get(w.pid, {})))
            self.seen[w.pid] = cum
        if h.get_total_count() or not force:
            h.set_start_time_stamp(int(self.last_t * 1000))
            h.set_end_time_stamp(int(now * 1000))
            # Timestamps relative to the start time; the max column in milliseconds (us / 1000).
            self.writer.output_interval_histogram(h, max(self.last_t - self.t0, 1e-6), now - self.t0, 1000.0)
        self.last_t = now

    def close(self) -> None:
        self.fh.close()


def await_traffic(fleet: Fleet, clients: list[Worker], tc: TrafficConfig, tick: Callable[[], None],
                  stopped: Callable[[], bool]) -> TrafficTotals:
    """Pump the fleet until every client worker says its traffic phase is done (or died)."""
    log = HdrIntervalLog(tc.hdr_log) if tc.hdr_log else None
    deadline = time.monotonic() + tc.warmup_s + tc.duration_s + tc.reply_timeout_s + _GRACE_S
    try:
        while not stopped() and time.monotonic() < deadline:
            fleet.pump(0.1)
            tick()
            if log:
                log.maybe_write(clients)
            if all(w.finished or _done(w.stats) for w in clients):
                break
        if log:
            log.maybe_write(clients, force=True)
    finally:
        if log:
            log.close()
    return traffic_of(clients)


def _done(stats: dict[str, Any]) -> bool:
    return bool((stats.get("traffic") or {}).get("done"))
