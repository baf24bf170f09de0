"""Traffic figures of a whole run, merged from every client worker's cumulative counters (pure).

Rules of this file: workers send cumulative counts and cumulative {microseconds: count} histograms,
so merging is a sum over each worker's latest snapshot; a lost message loses nothing but freshness.
Throughput counts only replies completed inside the measured window (after the warm-up, before the
end); latency counts every message started inside it (open model: one due in it but never sent goes
in at its age at the end, a lower bound). Errors and statuses are those after the warm-up (the
drain included); the warm-up's are kept apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

HIST_LOWEST_US = 1
HIST_HIGHEST_US = 600_000_000
HIST_DIGITS = 3


# One worker's interval on the one-second grid: (start, end) on the clock every process shares
# (time.perf_counter), then the request latency and the time to first byte recorded in it, each
# {microseconds: count}. The parent merges interval k of every worker into the --hdr-log's lines.
Interval = tuple[float, float, dict[int, int], dict[int, int]]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def record(hist: HdrHistogram, samples: Mapping[int, int]) -> None:
    for us, count in samples.items():
        if count > 0:
            hist.record_value(max(HIST_LOWEST_US, min(int(us), HIST_HIGHEST_US)), count)


def subtract(now: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    """The samples recorded between two cumulative snapshots."""
    return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0) > 0}


@dataclass(slots=True)
class TrafficTotals:
    workers: int = 0
    workers_done: int = 0
    sent: int = 0
    sent_in_window: int = 0
    replies: int = 0
    window_replies: int = 0
    window_bytes_in: int = 0
    window_bytes_out: int = 0
    window_s: float = 0.0  # the longest worker window (they run side by side)
    unanswered_at_end: int = 0
    unsent_at_end: int = 0
    unsent_sampled: int = 0
    reopened: int = 0
    reopening_at_end: int = 0
    lost_in_flight: int = 0
    reopen_failures: dict[str, int] = field(default_factory=dict)
    talking: int = 0
    talking_at_start: int = 0
    warmup_replies: int = 0
    handshakes_waiting: int = 0  # WebSocket opening handshakes under way (before the traffic starts)
    handshakes_unfinished: int = 0  # ... still under way at an interrupt (those connections never talked)
    interrupted: bool = False  # some worker's traffic was cut short by an interrupt (no drain)
    # TLS: what the first worker to complete a handshake agreed (version, cipher), and the first
    # certificate verification failure's words; empty without TLS.
    tls: dict[str, str] = field(default_factory=dict)
    # The first HTTP error response a worker kept ({"status": 400, "body": "<html>..."}): the server's
    # own words, which say more than the status class (nginx: "The plain HTTP request was sent to HTTPS port").
    first_error_response: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors_by_source: dict[str, int] = field(default_factory=dict)
    warmup_errors: dict[str, int] = field(default_factory=dict)
    warmup_statuses: dict[str, int] = field(default_factory=dict)
    latency: HdrHistogram = field(default_factory=new_histogram)
    ttfb: HdrHistogram = field(default_factory=new_histogram)
    # Opening handshakes (TLS, WebSocket), each from its first flight to ready: the phase's and reopens'.
    handshake: HdrHistogram = field(default_factory=new_histogram)

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def merge(snapshots: Iterable[Mapping[str, Any]]) -> TrafficTotals:
    """Sum the latest "traffic" snapshot of each worker (a worker's stats dict may lack it)."""
    t = TrafficTotals()
    for s in snapshots:
        if not s:
            continue
        t.workers += 1
        t.workers_done += 1 if s.get("done") else 0
        for name in ("sent", "sent_in_window", "replies", "window_replies", "window_bytes_in", "window_bytes_out",
                     "unanswered_at_end", "unsent_at_end", "unsent_sampled", "reopened", "reopening_at_end",
                     "lost_in_flight", "talking", "talking_at_start", "warmup_replies", "handshakes_waiting",
                     "handshakes_unfinished"):
            setattr(t, name, getattr(t, name) + int(s.get(name, 0)))
        t.window_s = max(t.window_s, float(s.get("window_s", 0.0)))
        t.interrupted = t.interrupted or bool(s.get("interrupted"))
        for k, v in (s.get("tls") or {}).items():
            t.tls.setdefault(k, str(v))
        if not t.first_error_response and s.get("first_error_response"):
            t.first_error_response = dict(s["first_error_response"])
        _add(t.errors, s.get("errors", {}))
        _add(t.statuses, s.get("statuses", {}))
        _add(t.errors_by_source, s.get("errors_by_source", {}))
        _add(t.warmup_errors, s.get("warmup_errors", {}))
        _add(t.warmup_statuses, s.get("warmup_statuses", {}))
        _add(t.reopen_failures, s.get("reopen_failures", {}))
        record(t.latency, s.get("latency_us", {}))
        record(t.ttfb, s.get("ttfb_us", {}))
        record(t.handshake, s.get("handshake_us", {}))
    return t


_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}


def percentiles_ms(h: HdrHistogram) -> dict[str, float | None]:
    if h.get_total_count() == 0:
        return {**dict.fromkeys(_PERCENTILES), "max": None, "mean": None}
    out: dict[str, float | None] = {k: h.get_value_at_percentile(v) / 1000 for k, v in _PERCENTILES.items()}
    out["max"] = h.get_max_value() / 1000
    out["mean"] = round(h.get_mean_value() / 1000, 3)
    return out
