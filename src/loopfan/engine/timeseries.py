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
from itertools import pairwise
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


_FAILED, _ERROR = "failed:", "error:"  # the per-cause counters' keys, beside the totals' ("failed")
_STALE_S = 0.5  # a running worker whose last report is older than this does not hold the row's edge back


def _failed(stats: dict[str, Any]) -> int:
    return sum(stats.get("failed", {}).values())


def _r(v: float, nd: int = 1) -> float:
    return round(v, nd)


def counters(stats: dict[str, Any]) -> dict[str, float]:
    """A client worker's cumulative counters that the rows are rates of, per-cause ones included."""
    traffic = stats.get("traffic") or {}
    out: dict[str, float] = {
        "established": stats.get("established", 0),
        "closed": stats.get("closed", 0) + stats.get("peer_closed", 0),
        "failed": _failed(stats),
        "bytes_in": stats.get("bytes_in", 0),
        "bytes_out": stats.get("bytes_out", 0),
        "messages": traffic.get("replies", 0) if traffic.get("awaits", True) else traffic.get("sent", 0),
    }
    for cause, n in stats.get("failed", {}).items():
        out[_FAILED + cause] = n
    for part in ("errors", "warmup_errors"):
        for cause, n in traffic.get(part, {}).items():
            out[_ERROR + cause] = out.get(_ERROR + cause, 0) + n
    return out


Knot = tuple[float, dict[str, float]]  # a worker's counters at one moment


def value_at(knots: Sequence[Knot], t: float) -> dict[str, float]:
    """The counters at time t, on the straight lines between the knots (times ascending): exact at
    a knot, never above the next knot (counters only grow), and the last knot's past the last -
    a count is never guessed ahead of what the worker reported, so no row can overshoot and have
    to be taken back later (QA: extrapolating a worker's rate past its last report overstated the
    end of every ramp by up to 10 %, and the rows no longer added up to the totals)."""
    if t <= knots[0][0]:
        return dict(knots[0][1])
    for (ta, a), (tb, b) in pairwise(knots):
        if t <= tb:
            f = (t - ta) / (tb - ta)
            return {k: a.get(k, 0) + (b.get(k, 0) - a.get(k, 0)) * f for k in a.keys() | b.keys()}
    return dict(knots[-1][1])


def edge_time(last_edge: float, now: float, stamps: Sequence[float]) -> float:
    """Where the row that ends now puts its edge: the latest moment every running worker has
    reported past (the earliest of their last reports), so each worker's count there is known, not
    guessed. Workers silent for over _STALE_S (a stalled loop) do not hold it back: they count what
    they last reported and catch up in a later row. Always after last_edge, at most now."""
    fresh = [s for s in stamps if last_edge < s <= now and s >= now - _STALE_S]
    return min(fresh) if fresh else now


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
        # Per client worker: its counters at the last row's edge, then at each report seen since.
        self._knots: dict[tuple[str, int], list[Knot]] = {}
        # The last row's edge (t_s) and the workers' summed counters there; before the first row,
        # the run's start, where every count is zero.
        self._edge: tuple[float, dict[str, float]] = (0.0, {})
        self._running: dict[tuple[str, int], bool] = {}
        self._last_latency_w: dict[tuple[str, int], dict[int, int]] = {}
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
        t_now = now - self.t0
        dt_now = None if self._last_t is None else t_now - self._last_t  # for CPU: /proc is read now
        self._last_t = t_now

        opened = server_open = 0
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
            self._note_report(w, now)
            self._note_message_latency((w.role, w.index), (s.get("traffic") or {}).get("latency_us"))
        t, counts, rates = self._row_counts(now)

        c = self.cols
        c["t_s"].append(t)
        c["phase"].append(phase)
        c["open"].append(opened)
        c["established"].append(round(counts.get("established", 0)))
        c["server_open"].append(server_open if has_server else None)
        for col, key in (("connects_per_s", "established"), ("closes_per_s", "closed"), ("failures_per_s", "failed"),
                         ("bytes_in_per_s", "bytes_in"), ("bytes_out_per_s", "bytes_out"),
                         ("messages_per_s", "messages")):
            c[col].append(_r(rates.get(key, 0.0)))
        self._per_cause(self.by_cause, _FAILED, rates)
        self._per_cause(self.errors_by_cause, _ERROR, rates)
        self.errors_per_s.append(_r(sum(v for k, v in rates.items() if k.startswith(_ERROR))))

        self._sample_latency(self.hist, self.latency)
        self._sample_latency(self.message_hist, self.message_latency)
        self._sample_health(dt_now, workers, procs, parent_cpu_s)
        self._n += 1

    def note_reports(self, workers: Sequence[WorkerLike], now: float) -> None:
        """Every tick (cheap): keep each client worker's report as a knot as soon as it is new, not
        only the last one before a row is sampled - otherwise the line between two rows' knots
        spread a 0.3 s ramp over the whole second (QA: connects/s after the ramp had ended, and
        `established` below `open` in the same row)."""
        for w in workers:
            if w.role == "server" or not w.stats:
                continue
            knots = self._knots.get((w.role, w.index))
            stamp = w.stats.get("t")
            if knots and stamp is not None and float(stamp) <= knots[-1][0]:
                continue  # nothing new since its last knot
            self._note_report(w, now)

    def _note_report(self, w: WorkerLike, now: float) -> None:
        """Keep this client worker's latest report as a knot (stamped with its own monotonic clock,
        the parent's too: CLOCK_MONOTONIC is system-wide), if it is news."""
        key = (w.role, w.index)
        self._running[key] = not w.finished
        counts = counters(w.stats)
        knots = self._knots.get(key)
        if knots is None:  # a worker starts from zero, at the last edge
            knots = self._knots[key] = [(self.t0 + self._edge[0], {})]
        stamp = float(w.stats.get("t", now))
        if knots and stamp <= knots[-1][0]:
            if counts == knots[-1][1]:
                return
            # Counts newer than a knot but stamped at or before it (a report that arrived after the
            # edge it belongs before): they land just after it, in the next row, never lost.
            stamp = knots[-1][0] + 1e-6
        knots.append((stamp, counts))

    def _row_counts(self, now: float) -> tuple[float, dict[str, float], dict[str, float]]:
        """The row's time (its edge), the workers' summed counters there, and the rates since the
        last edge: the same counts, so every rate column integrates over t_s to its total and the
        per-cause columns sum to their row's total (both within the rounding to 0.1/s)."""
        last_t = self.t0 + self._edge[0]
        stamps = [k[-1][0] for key, k in self._knots.items() if k and self._running.get(key)]
        edge_t = edge_time(last_t, now, stamps)
        counts: dict[str, float] = {}
        for knots in self._knots.values():
            if not knots:
                continue
            at = value_at(knots, edge_t)
            for k, v in at.items():
                counts[k] = counts.get(k, 0) + v
            knots[:] = [(edge_t, at)] + [kn for kn in knots if kn[0] > edge_t]
        t = _r(edge_t - self.t0, 3)
        before = self._edge
        if t <= before[0]:
            # No span (a row at the start, or within 1 ms of the last): its counts go to the next
            # row, and the row shows the last edge's, so `established` stays the integral of the
            # connects column (hypothesis: 2 shown here, then 298 more at a rate of 300).
            return t, before[1], {}
        span = t - before[0]
        self._edge = (t, counts)
        return t, counts, {k: max(0.0, v - before[1].get(k, 0)) / span for k, v in counts.items()}

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

    def _per_cause(self, cols: dict[str, list[float]], prefix: str, rates: dict[str, float]) -> None:
        for key in rates:
            if key.startswith(prefix) and key[len(prefix):] not in cols:
                cols[key[len(prefix):]] = [0.0] * self._n
        for cause, col in cols.items():
            col.append(_r(rates.get(prefix + cause, 0.0)))

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
