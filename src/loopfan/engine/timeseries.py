"""The run's time series: one row per interval (default 1 s) of rates, latency and generator health.

Rules of this file: the sampler is pure bookkeeping - the runner hands it the time, the workers'
latest cumulative STATS and the /proc readings it took, and the sampler turns differences of
cumulative counters into per-second rates. It must stay cheap at 2 million connections: its cost
is O(workers) per interval (never O(connections)), one interval HDR histogram is reset per
interval, and per-process columns are decimated (every other sample dropped, stride doubled)
once they pass PROCESS_POINTS_MAX, so an hour-long run with 200 workers stays a few MB.
The columnar layout (one list per quantity) is what report.json stores, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

DEFAULT_INTERVAL_S = 1.0
PROCESS_POINTS_MAX = 1200
# Progress milestones: when did the run first reach these fractions of its target?
MILESTONES = (0.5, 0.9, 0.99, 1.0)
LATENCY_KEYS = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))

_CLOCK_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class WorkerLike(Protocol):
    role: str
    index: int
    stats: dict[str, Any]

    @property
    def pid(self) -> int: ...

    @property
    def finished(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProcReading:
    """One /proc/PID/stat reading: CPU seconds so far and resident memory."""

    cpu_s: float
    rss_bytes: int


def read_proc(pid: int) -> ProcReading | None:
    """/proc/PID/stat: utime+stime and rss (about 20 us; None off Linux or once the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcReading((int(fields[11]) + int(fields[12])) / _CLOCK_HZ, int(fields[21]) * _PAGE)
    except (IndexError, ValueError):
        return None


@dataclass(slots=True)
class _ProcessSeries:
    role: str
    index: int
    pid: int
    where: list[str]
    fd_limit: int | None = None
    open: list[int] = field(default_factory=list)
    failures_per_s: list[float] = field(default_factory=list)
    cpu_pct: list[float | None] = field(default_factory=list)
    rss_bytes: list[int | None] = field(default_factory=list)
    fds: list[int | None] = field(default_factory=list)
    loop_lag_ms: list[float | None] = field(default_factory=list)
    # Counters at the previous sample, for rates.
    last_failed: int = 0
    last_cpu_s: float | None = None

    def columns(self) -> tuple[list[Any], ...]:
        return (self.open, self.failures_per_s, self.cpu_pct, self.rss_bytes, self.fds, self.loop_lag_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "index": self.index,
            "pid": self.pid,
            "where": self.where,
            "fd_limit": self.fd_limit,
            "open": self.open,
            "failures_per_s": self.failures_per_s,
            "cpu_pct": self.cpu_pct,
            "rss_bytes": self.rss_bytes,
            "fds": self.fds,
            "loop_lag_ms": self.loop_lag_ms,
        }


_RATED = ("established", "closed", "failed", "bytes_in", "bytes_out", "messages")
_AHEAD_S = 0.5  # how far past a worker's last report its count is carried at its recent rate


def _failed(stats: dict[str, Any]) -> int:
    return sum(stats.get("failed", {}).values())


def _r(v: float, nd: int = 1) -> float:
    return round(v, nd)


class SeriesSampler:
    """Accumulates the time series of one run. Call note_latency() for every latency delta,
    note_progress() on every tick (cheap), and sample() when due() says an interval has passed."""

    def __init__(self, *, target: int, interval_s: float = DEFAULT_INTERVAL_S, t0: float = 0.0,
                 lowest_us: int = 1, highest_us: int = 600_000_000, digits: int = 3,
                 where: dict[tuple[str, int], list[str]] | None = None) -> None:
        self.target = target
        self.where = where or {}
        self.interval_s = interval_s
        self.t0 = t0
        self.next_due = t0
        self.hist = HdrHistogram(lowest_us, highest_us, digits)
        self.message_hist = HdrHistogram(lowest_us, highest_us, digits)
        self._hist_range = (lowest_us, highest_us)
        self.milestones_s: dict[str, float | None] = {f"{m:.0%}": None for m in MILESTONES}
        self._milestone_counts = [(f"{m:.0%}", max(1, int(target * m))) for m in MILESTONES]
        self.cols: dict[str, list[Any]] = {
            name: []
            for name in (
                "t_s", "phase", "open", "established", "server_open", "connects_per_s", "closes_per_s",
                "failures_per_s", "bytes_in_per_s", "bytes_out_per_s", "messages_per_s",
            )
        }
        self.latency: dict[str, list[float | None]] = {k: [] for k in ("count", "p50", "p90", "p99", "p999", "max")}
        # Traffic: request/response latency and errors per interval (empty for a hold-only run).
        self.message_latency: dict[str, list[float | None]] = {k: [] for k in self.latency}
        self.errors_per_s: list[float] = []
        self.errors_by_cause: dict[str, list[float]] = {}
        self.by_cause: dict[str, list[float]] = {}
        self.health: dict[str, list[float | int | None]] = {
            k: [] for k in ("parent_cpu_pct", "workers_cpu_pct", "rss_bytes", "fds_used_max_pct", "loop_lag_ms_max")
        }
        self.processes: dict[tuple[str, int], _ProcessSeries] = {}
        self.process_t_s: list[float] = []
        self.process_stride = 1
        self._n = 0
        self._last_t: float | None = None
        # Per worker: (its stamp, its counters, its last rates) at the previous sample.
        self._last_w: dict[tuple[str, int], tuple[float, dict[str, int], dict[str, float]]] = {}
        self._edge_w: dict[tuple[str, int], dict[str, float]] = {}  # per worker: its counts at the last row's end
        self._last_latency_w: dict[tuple[str, int], dict[int, int]] = {}
        self._last_causes: dict[str, int] = {}
        self._last_errors: dict[str, int] = {}
        self._last_parent_cpu: float | None = None

    # -- cheap, per tick -------------------------------------------------------------------------
    def note_latency(self, latency: dict[int, int]) -> None:
        lo, hi = self._hist_range
        rec = self.hist.record_value
        for us, count in latency.items():
            rec(lo if us < lo else hi if us > hi else us, count)

    def note_progress(self, now: float, established: int) -> None:
        for name, count in self._milestone_counts:
            if self.milestones_s[name] is None and established >= count:
                self.milestones_s[name] = _r(now - self.t0, 3)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    # -- once per interval -----------------------------------------------------------------------
    def sample(self, now: float, phase: str, workers: Sequence[WorkerLike],
               procs: dict[int, ProcReading | None], parent_cpu_s: float) -> None:
        while self.next_due <= now:
            self.next_due += self.interval_s
        t = now - self.t0
        dt = None if self._last_t is None else t - self._last_t
        self._last_t = t

        opened = established = server_open = 0
        rates = dict.fromkeys(_RATED, 0.0)
        causes: dict[str, int] = {}
        errors: dict[str, int] = {}
        has_server = False
        for w in workers:
            s = w.stats
            if not s:
                continue
            if w.role == "server":
                has_server = True
                if not w.finished:
                    server_open += s.get("open", 0)
                continue
            if not w.finished:
                opened += s.get("open", 0)
            established += s.get("established", 0)
            for cause, n in s.get("failed", {}).items():
                causes[cause] = causes.get(cause, 0) + n
            traffic = s.get("traffic") or {}
            for part in ("errors", "warmup_errors"):
                for cause, n in traffic.get(part, {}).items():
                    errors[cause] = errors.get(cause, 0) + n
            self._note_message_latency((w.role, w.index), traffic.get("latency_us"))
            for key, r in self._worker_rates(w, now, dt).items():
                rates[key] += r

        c = self.cols
        c["t_s"].append(_r(t, 3))
        c["phase"].append(phase)
        c["open"].append(opened)
        c["established"].append(established)
        c["server_open"].append(server_open if has_server else None)
        c["connects_per_s"].append(_r(rates["established"]))
        c["closes_per_s"].append(_r(rates["closed"]))
        c["failures_per_s"].append(_r(rates["failed"]))
        c["bytes_in_per_s"].append(_r(rates["bytes_in"]))
        c["bytes_out_per_s"].append(_r(rates["bytes_out"]))
        c["messages_per_s"].append(_r(rates["messages"]))
        self._per_cause(self.by_cause, causes, self._last_causes, dt)
        self._last_causes = causes
        self.errors_per_s.append(_r(max(0, sum(errors.values()) - sum(self._last_errors.values())) / dt) if dt else 0.0)
        self._per_cause(self.errors_by_cause, errors, self._last_errors, dt)
        self._last_errors = errors

        self._sample_latency(self.hist, self.latency)
        self._sample_latency(self.message_hist, self.message_latency)
        self._sample_health(dt, workers, procs, parent_cpu_s)
        self._n += 1

    def _worker_rates(self, w: WorkerLike, now: float, dt: float | None) -> dict[str, float]:
        """This worker's rates over the row that ends now. Its counts are known at its reports
        (stamped with its own clock, every 0.25 s); the row's edges fall between reports, so the
        count at each edge is the last report's plus its recent rate for the time since (at most
        _AHEAD_S; none once the worker or its traffic phase is done), and never less than the
        estimate at the previous edge. Each edge is estimated once, so the rows add up to the
        worker's totals; a late report shifts counts by a fraction of a row, not the whole report
        (dividing each report's delta by the row made rows swing; dividing by the report's own
        span undercounted a first traffic row by ~40 %, QA)."""
        s = w.stats
        traffic = s.get("traffic") or {}
        values = {
            "established": s.get("established", 0),
            "closed": s.get("closed", 0) + s.get("peer_closed", 0),
            "failed": _failed(s),
            "bytes_in": s.get("bytes_in", 0),
            "bytes_out": s.get("bytes_out", 0),
            "messages": traffic.get("replies", 0) if traffic.get("awaits", True) else traffic.get("sent", 0),
        }
        stamp = float(s.get("t", now))
        key = (w.role, w.index)
        last = self._last_w.get(key)
        if last is None or stamp > last[0]:
            recent = ({k: max(0, values[k] - last[1][k]) / (stamp - last[0]) for k in _RATED} if last is not None
                      else dict.fromkeys(_RATED, 0.0))
            last = self._last_w[key] = (stamp, values, recent)
        ended = w.finished or bool(traffic.get("done"))
        ahead = 0.0 if ended else min(max(0.0, now - last[0]), _AHEAD_S)
        before = self._edge_w.get(key) or dict.fromkeys(_RATED, 0.0)  # (a worker starts from zero)
        if not dt:  # the first row: no interval yet to spread counts over
            return dict.fromkeys(_RATED, 0.0)
        edge = {k: max(last[1][k] + last[2][k] * ahead, before[k]) for k in _RATED}
        self._edge_w[key] = edge
        return {k: (edge[k] - before[k]) / dt for k in _RATED}

    def _note_message_latency(self, key: tuple[str, int], cumulative: dict[int, int] | None) -> None:
        if not cumulative:
            return
        before = self._last_latency_w.get(key, {})
        lo, hi = self._hist_range
        rec = self.message_hist.record_value
        for us, n in cumulative.items():
            d = n - before.get(us, 0)
            if d > 0:
                rec(lo if us < lo else hi if us > hi else us, d)
        self._last_latency_w[key] = cumulative

    def _per_cause(self, cols: dict[str, list[float]], now: dict[str, int], before: dict[str, int],
                   dt: float | None) -> None:
        for cause in now.keys() - cols.keys():
            cols[cause] = [0.0] * self._n
        for cause, col in cols.items():
            col.append(_r(max(0, now.get(cause, 0) - before.get(cause, 0)) / dt) if dt else 0.0)

    @staticmethod
    def _sample_latency(h: HdrHistogram, lat: dict[str, list[float | None]]) -> None:
        n = h.get_total_count()
        lat["count"].append(n)
        if n:
            values = h.get_percentile_to_value_dict([p for _, p in LATENCY_KEYS])
            for key, p in LATENCY_KEYS:
                lat[key].append(values[p] / 1000)
            lat["max"].append(h.get_max_value() / 1000)
            h.reset()
        else:
            for key in ("p50", "p90", "p99", "p999", "max"):
                lat[key].append(None)

    def _sample_health(self, dt: float | None, workers: Sequence[WorkerLike],
                       procs: dict[int, ProcReading | None], parent_cpu_s: float) -> None:
        keep_process = self._n % self.process_stride == 0
        if keep_process:
            self.process_t_s.append(self.cols["t_s"][-1])
        cpu_total = 0.0
        rss_total = 0
        fds_pct_max: float | None = None
        lag_max: float | None = None
        for w in workers:
            key = (w.role, w.index)
            ps = self.processes.get(key)
            if ps is None:
                ps = self.processes[key] = _ProcessSeries(w.role, w.index, w.pid, self.where.get(key, []))
                pad = len(self.process_t_s) - (1 if keep_process else 0)
                for col in ps.columns():
                    col.extend([None] * pad)
            s = w.stats or {}
            health = s.get("health") or {}
            if ps.fd_limit is None:
                ps.fd_limit = health.get("fd_limit")
            reading = None if w.finished else procs.get(w.pid)
            cpu_pct = None
            if reading is not None:
                if ps.last_cpu_s is not None and dt:
                    cpu_pct = _r(100.0 * max(0.0, reading.cpu_s - ps.last_cpu_s) / dt)
                    cpu_total += cpu_pct
                ps.last_cpu_s = reading.cpu_s
                rss_total += reading.rss_bytes
            failed = _failed(s)
            fail_rate = _r(max(0, failed - ps.last_failed) / dt) if dt else 0.0
            ps.last_failed = failed
            fds = None if w.finished else health.get("fds")
            lag = None if w.finished else health.get("loop_lag_ms")
            if fds is not None and ps.fd_limit:
                pct = 100.0 * fds / ps.fd_limit
                fds_pct_max = pct if fds_pct_max is None else max(fds_pct_max, pct)
            if lag is not None:
                lag_max = lag if lag_max is None else max(lag_max, lag)
            if keep_process:
                ps.open.append(0 if w.finished else s.get("open", 0))
                ps.failures_per_s.append(fail_rate)
                ps.cpu_pct.append(cpu_pct)
                ps.rss_bytes.append(None if reading is None else reading.rss_bytes)
                ps.fds.append(fds)
                ps.loop_lag_ms.append(lag)
        hl = self.health
        parent_pct = None
        if self._last_parent_cpu is not None and dt:
            parent_pct = _r(100.0 * (parent_cpu_s - self._last_parent_cpu) / dt)
        self._last_parent_cpu = parent_cpu_s
        hl["parent_cpu_pct"].append(parent_pct)
        hl["workers_cpu_pct"].append(_r(cpu_total) if dt else None)
        hl["rss_bytes"].append(rss_total or None)
        hl["fds_used_max_pct"].append(None if fds_pct_max is None else _r(fds_pct_max))
        hl["loop_lag_ms_max"].append(None if lag_max is None else _r(lag_max, 2))
        if len(self.process_t_s) > PROCESS_POINTS_MAX:
            self._decimate()

    def _decimate(self) -> None:
        """Keep every other per-process point and sample them half as often from now on."""
        self.process_t_s = self.process_t_s[::2]
        for ps in self.processes.values():
            for col in ps.columns():
                col[:] = col[::2]
        self.process_stride *= 2

    # -- the report ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "target": self.target,
            **self.cols,
            "failures_by_cause_per_s": self.by_cause,
            "latency_ms": self.latency,
            "message_latency_ms": self.message_latency,
            "errors_per_s": self.errors_per_s,
            "errors_by_cause_per_s": self.errors_by_cause,
            "health": self.health,
            "time_to_target_s": self.milestones_s,
            "processes": {
                "t_s": self.process_t_s,
                "stride": self.process_stride,
                "items": [ps.as_dict() for ps in self.processes.values()],
            },
        }
