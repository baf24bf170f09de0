"""Run a plan: start the built-in server if the plan has one, ramp the clients, hold, close, measure.

Rules of this file: this is the orchestration edge. It owns the worker fleet for the run's whole
life and always shuts it down (try/finally), so an exception, Ctrl-C or SIGTERM at any moment
still ends every child and still yields a (partial) RunResult. Progress is reported through a
callback; rendering is the CLI's business.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from loopfan.engine import measure
from loopfan.engine import protocol as P
from loopfan.engine.client import client_main
from loopfan.engine.fleet import Fleet, Worker
from loopfan.engine.live_rates import Recent, RecentCounts
from loopfan.engine.ramp import Stagger, client_config_for, ramp_concurrency
from loopfan.engine.timeseries import DEFAULT_INTERVAL_S, SeriesSampler, read_proc
from loopfan.engine.traffic_client import traffic_client_main
from loopfan.engine.traffic_phase import RampSpan, all_talking, await_traffic, traffic_of
from loopfan.engine.traffic_server import server_main_for
from loopfan.errors import LoopfanError, ServerStartError
from loopfan.planner import Plan
from loopfan.traffic.config import TrafficConfig

# Half-open connections at the end of the ramp, and connections still in the targets' accept
# queues, are counted again for this long before they are reported: a server that was only briefly
# behind completes the handshakes at its first SYN-ACK retransmit, and a healthy server drains its
# accept queue in milliseconds once the ramp stops feeding it.
KERNEL_SETTLE_S = 1.5
# ... and for as long as the count keeps falling (a server accepting 1,000/s still drains a queue of
# 2,000 - it is slow, not stuck), up to this long in all.
KERNEL_SETTLE_MAX_S = 15.0
# How long the kernel check waits for every client worker's next report once the kernel counted.
FRESH_REPORT_WAIT_S = 2.0

# Latency histograms in microseconds: 1 us .. 10 min at 3 significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 600_000_000
HIST_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    hold_s: float | None = 0.0  # None: until interrupted
    connect_rate_per_s: float = 0.0  # the whole run's; shared evenly by the client workers
    client: P.ClientConfig = field(default_factory=P.ClientConfig)
    server: P.ServerConfig = field(default_factory=P.ServerConfig)
    ready_timeout_s: float = 15.0
    close_timeout_s: float = 60.0
    # Client workers connecting at once (0: one per core, at least 2). On loopback the handshake
    # is CPU work in the connecting process; a hundred workers ramping together on two cores
    # mostly switch contexts and starve the acceptors, so the ramp is staggered: bench/ramp.py.
    ramp_concurrency: int = 0
    # A ramp that stops making progress for this long ends (the rest are counted as not opened).
    stall_timeout_s: float = 60.0
    # The time series' interval (report.json "series"): one row of rates, latency and health each.
    series_interval_s: float = DEFAULT_INTERVAL_S
    # Talk over the connections once open (issue 4: raw TCP, HTTP/1.1, WebSocket); None: hold only.
    traffic: TrafficConfig | None = None


@dataclass(slots=True)
class Totals:
    """Sums over workers of one role, from their latest cumulative snapshots."""

    attempted: int = 0
    established: int = 0
    open: int = 0
    peak_open: int = 0
    closed: int = 0
    peer_closed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    # (cause, source, source port, destination, destination port) of the first failures per worker.
    failed_samples: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    failed_by_source: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, workers: list[Worker]) -> Totals:
        t = cls()
        for w in workers:
            s = w.stats
            if not s:
                continue
            t.attempted += s["attempted"]
            t.established += s["established"]
            t.peak_open += s["peak_open"]
            t.closed += s["closed"]
            t.peer_closed += s.get("peer_closed", 0)
            if w.state == "dead" or w.state == "error":
                lost = s["open"]
                if lost:
                    t.failed["worker-died"] = t.failed.get("worker-died", 0) + lost
            else:
                t.open += s["open"]
            for cause, n in s["failed"].items():
                t.failed[cause] = t.failed.get(cause, 0) + n
            t.failed_samples.extend(s.get("failed_samples", ()))
            for source, n in s.get("failed_by_source", {}).items():
                t.failed_by_source[source] = t.failed_by_source.get(source, 0) + n
        return t

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str
    elapsed_s: float
    target: int
    client: Totals
    server: Totals | None
    rate_per_s: float
    hold_left_s: float | None
    # The time series so far (its last row is the last interval): for live panels and exporters.
    series: SeriesSampler | None = None
    # WebSocket opening handshakes still under way at the start of the traffic phase (no messages yet).
    handshakes_waiting: int = 0
    # The protocol the traffic phase speaks (None: no traffic): what its figures are called.
    traffic_kind: str | None = None
    # When the ramp ended (s since the start; None while it runs): an interval of the series that
    # began before it holds the ramp's connects, not what is true in the hold (QA: a holding panel
    # showed the ramp's last 28,986 connects/s for a second, at scale longer).
    ramp_ended_s: float | None = None
    # Our open count when the close began (None before): the close's progress is what left since.
    # (Each worker closes all its connections at once and then reports, so the count falls in
    # steps of a worker's share; QA read "closing: 30,000/30,000 open" until then.)
    open_at_close: int | None = None
    # The client workers' recent reports, for rates as they are now (live_rates; None: none kept),
    # and when what those rates cover began: the current phase's start, or, in the traffic phase,
    # when every client was talking (WebSocket handshakes before that send no messages).
    recent: Recent | None = None
    rates_since_s: float = 0.0
    # (established, seconds) of the ramp once it is over, the report's mean rate: a ramp shorter
    # than a worker's report interval is over before the live rates can say its rate.
    ramp_done: tuple[int, float] | None = None
    # The traffic's protocol and model in words ('ws pings, closed loop'; None: no traffic): the
    # live view says what load it is showing, as the report's first traffic line does.
    traffic_mode: str | None = None


@dataclass(slots=True)
class RunResult:
    plan: Plan
    config: RunConfig
    client: Totals = field(default_factory=Totals)
    server: Totals | None = None
    connect_latency: HdrHistogram = field(default_factory=new_histogram)
    phases_s: dict[str, float] = field(default_factory=dict)
    rate_series: list[tuple[float, int]] = field(default_factory=list)  # (t since start, established)
    peak_rate_per_s: float = 0.0
    interrupted: str | None = None  # "SIGINT" / "SIGTERM": the first signal, the one that stopped the run
    signals_after: list[str] = field(default_factory=list)  # signals while it closed after that one
    worker_failures: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, int | None] = field(default_factory=dict)
    cpu_s: float = 0.0
    listen_overflows: int | None = None  # host-wide: any process's accept queue counts
    # Host-wide drops by listening sockets for any reason (TcpExtListenDrops, a superset of the
    # overflows): the figure the target's listeners' own drop counts compare with.
    listen_drops: int | None = None
    # Drops counted by the listeners serving the targets during the run (their own sk_drops, for any
    # reason: a full accept queue is one): the target's share of listen_drops. None: not read.
    target_listen_drops: int | None = None
    # The targets' listening sockets once the ramp was done: accept queue now and its size.
    target_listeners: list[measure.Listener] | None = None
    # TCP sockets in use host-wide (/proc/net/sockstat) before the run and once the ramp is done:
    # the kernel's own count, to check the report against (2 per connection + the listeners).
    # The kernel's counts are filtered by the targets' addresses and ports (other runs share ports).
    kernel_client_side: int | None = None  # ESTABLISHED to the targets, per the kernel
    # ESTABLISHED on the targets' side: every target is on this host (loopback), built-in or not.
    # It includes connections in an accept queue (handshake done, not yet accept()ed).
    kernel_server_side: int | None = None
    # Server-side SYN-RECV, read when the server side fell short of the client side: handshakes
    # whose last ACK the server dropped (a full accept queue) though the client counts them open.
    kernel_server_syn_recv: int | None = None
    kernel_check_skipped: str | None = None  # why the kernel was not asked (an interrupted ramp)
    # Client sockets in CLOSE-WAIT when the kernel's count fell short of ours: closed by the
    # server moments before, not yet read by our workers (their open count is a moment old).
    kernel_client_closing: int | None = None
    open_at_peak: int | None = None  # our clients' open count when the kernel was asked
    # ... and again from reports made after the kernel's count: closes meanwhile lie between.
    open_after_count: int | None = None
    ramp_established: int | None = None  # established when the ramp ended (its mean rate's count)
    hold_ended_early: str | None = None  # why the hold stopped before --hold was up
    started_at: float = 0.0
    server_pids: list[int] = field(default_factory=list)
    traffic: Any = None  # traffic.results.TrafficTotals when the run talked
    series: SeriesSampler | None = None
    error: str | None = None  # a run-level failure after clients started: the report is still made

    @property
    def exit_status(self) -> int:
        if self.interrupted == "SIGINT":
            return 130
        if self.interrupted == "SIGTERM":
            return 143
        return 1 if self.worker_failures or self.error or self.half_open or self.never_accepted else 0

    @property
    def half_open(self) -> int:
        """Connections established for the client but not for the server, per the kernel: the
        server's accept queue overflowed and it dropped the handshake's last ACK (the client never
        learns), or it is not accepting at all. Both ends live on this host, so every connection
        to the targets is counted on both sides, other clients' included."""
        if self.kernel_client_side is None or self.kernel_server_side is None:
            return 0
        return max(0, self.kernel_client_side - self.kernel_server_side)

    @property
    def never_accepted(self) -> int:
        """Connections still in the targets' accept queues when the kernel was last asked (after
        KERNEL_SETTLE_S without the queue falling, KERNEL_SETTLE_MAX_S at most): the kernel
        completed the handshake, but the server application never accept()ed them - it is not
        calling accept(), is out of file descriptors (EMFILE), or its accept loop is too slow. The
        server does not hold them: for "how many connections can my server hold" they do not count."""
        return sum(ln.queued for ln in self.target_listeners or ())


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag the run loop checks, so the run can close and report.

    The first signal is the one that interrupted the run, and stays so: a Ctrl-C followed by a
    SIGTERM while loopfan closes (a supervisor's timeout, `timeout`, CI cancelling) named the
    SIGTERM in the report and its exit status. Later signals are kept apart, for a note."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.later: list[str] = []  # signals after the first, each named once, in order

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
        elif name not in self.later:
            self.later.append(name)


@contextmanager
def _trap_signals() -> Iterator[_Interrupt]:
    flag = _Interrupt()
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run_plan(
    plan: Plan,
    config: RunConfig,
    on_progress: Callable[[Progress], None] | None = None,
    on_started: Callable[[], None] | None = None,
) -> RunResult:
    """Execute `plan`. Always returns a result (partial when interrupted); never leaves a worker."""
    result = RunResult(plan=plan, config=config, started_at=time.time())
    t0 = time.monotonic()
    series = result.series = SeriesSampler(
        target=plan.request.connections, interval_s=config.series_interval_s, t0=t0,
        lowest_us=HIST_LOWEST_US, highest_us=HIST_HIGHEST_US, digits=HIST_DIGITS, where=_where(plan),
    )

    def on_latency(lat: dict[int, int]) -> None:
        _record(result.connect_latency, lat)
        series.note_latency(lat)

    fleet = Fleet(on_latency=on_latency)
    recent = RecentCounts(t0)
    cpu_before = _children_cpu_s()
    slab_before = measure.slab_bytes()
    overflows_before = measure.listen_overflows()
    listen_drops_before = measure.listen_drops()
    targets = [(t.address, t.port) for t in plan.targets]
    # The targets' listeners' drop counts before the run (started now, read later: not in the way;
    # the built-in server does not exist yet, so its "before" is none - 0 drops).
    listeners_before = measure.start_listeners(targets)
    n_servers = len(plan.server_shards)
    phase = "starting"
    rates_since = t0  # (for the live view: see Progress)
    hold_until: float | None = None
    # When the traffic's warm-up and window end, once every client is talking (after WebSocket
    # handshakes, whose length nobody knows ahead): the live view's "left" for the traffic phase.
    traffic_until: float | None = None
    ramp_ended_s: float | None = None  # (for the live view: see Progress)
    ramp_done: tuple[int, float] | None = None
    open_at_close: int | None = None
    traffic_mode = config.traffic.mode if config.traffic is not None else None
    last_sample = (t0, 0)

    def totals() -> tuple[Totals, Totals | None]:
        c = Totals.of(fleet.of("client"))
        s = Totals.of(fleet.of("server")) if n_servers else None
        return c, s

    def enter(name: str) -> None:
        """The run's phase is now `name`: the live rates count from here (never a phase before)."""
        nonlocal phase, rates_since
        phase, rates_since = name, time.monotonic()

    def tick() -> None:
        nonlocal last_sample, traffic_until, rates_since
        now = time.monotonic()
        c, s = totals()
        if now - last_sample[0] >= 1.0 or not result.rate_series:
            dt = now - last_sample[0]
            if dt > 0 and result.rate_series:
                result.peak_rate_per_s = max(result.peak_rate_per_s, (c.established - last_sample[1]) / dt)
            result.rate_series.append((round(now - t0, 3), c.established))
            last_sample = (now, c.established)
        # Time to reach X % of the target open at once: connections reset as soon as they were
        # established count in `established`, never in what the run holds.
        series.note_progress(now, c.open)
        series.note_reports(fleet.of("client"), now)
        if on_progress:  # (only a live view reads them)
            recent.note(now, fleet.of("client"))
        if series.due(now):
            take_sample(now)
        if on_progress:
            left = None if hold_until is None else max(0.0, hold_until - now)
            if phase == "traffic" and config.traffic is not None:
                if traffic_until is None and all_talking(fleet.of("client")):
                    traffic_until = now + config.traffic.warmup_s + config.traffic.duration_s
                    rates_since = max(rates_since, now)
                if traffic_until is not None:
                    left = max(0.0, traffic_until - now)
            rate = result.peak_rate_per_s
            if result.rate_series and len(result.rate_series) > 1:
                (ta, ea), (tb, eb) = result.rate_series[-2], result.rate_series[-1]
                rate = (eb - ea) / (tb - ta) if tb > ta else 0.0
            on_progress(Progress(phase, now - t0, plan.request.connections, c, s, rate, left, series,
                                 _handshakes_waiting(fleet) if phase == "traffic" else 0,
                                 config.traffic.kind if config.traffic is not None else None,
                                 ramp_ended_s, open_at_close, recent.snapshot(), rates_since - t0,
                                 ramp_done, traffic_mode=traffic_mode))

    def take_sample(now: float) -> None:
        procs = {w.pid: read_proc(w.pid) for w in fleet.workers if not w.finished}
        series.sample(now, phase, fleet.workers, procs, _self_cpu_s())

    with _trap_signals() as interrupt:
        try:
            # 1. The built-in server, if the plan has one: every shard listening before any client.
            if n_servers:
                enter("starting server")
                for shard in plan.server_shards:
                    fleet.spawn("server", shard.index, server_main_for(config.server), shard, config.server)
                ok = fleet.wait_until(
                    lambda: all(w.state != "starting" for w in fleet.of("server")) or interrupt.signal is not None,
                    config.ready_timeout_s,
                )
                errors = [w.error for w in fleet.of("server") if w.state in ("error", "dead")]
                if errors:
                    raise ServerStartError(f"the built-in server could not start: {errors[0]}")
                if not ok:
                    raise ServerStartError("the built-in server did not start listening within "
                                    f"{config.ready_timeout_s:.0f} s")
                result.server_pids = [w.pid for w in fleet.of("server")]
            listeners_before(measure.never)  # the targets' listeners' drops so far, read before any client (kept)
            result.phases_s["start"] = time.monotonic() - t0

            # 2. Ramp: every client worker opens its shard.
            enter("connecting")
            t_ramp = time.monotonic()
            # The --hdr-log's time origin: its connect interval spans the ramp (traffic_phase.RampSpan).
            ramp_started = (time.time(), time.perf_counter())
            recent.workers_start_now(t_ramp)
            n_clients = len(plan.client_shards)
            concurrency = ramp_concurrency(config.ramp_concurrency, n_clients)
            client_config = client_config_for(config.client, n_clients, concurrency, config.connect_rate_per_s)
            for client_shard in plan.client_shards:
                if config.traffic is not None:
                    fleet.spawn("client", client_shard.index, traffic_client_main, client_shard, client_config,
                                config.traffic)
                else:
                    fleet.spawn("client", client_shard.index, client_main, client_shard, client_config)
            if on_started:
                on_started()  # after the last fork: a progress display may start its thread now
            clients = fleet.of("client")
            stagger = Stagger(clients, concurrency)
            last_progress = (time.monotonic(), -1)
            while interrupt.signal is None:
                stagger.release(fleet)
                fleet.pump(0.1 if not stagger.waiting else 0.02)
                tick()
                if stagger.done:
                    break
                now = time.monotonic()
                resolved = sum(w.stats.get("established", 0) + sum(w.stats.get("failed", {}).values())
                               for w in clients)
                if resolved != last_progress[1]:
                    last_progress = (now, resolved)
                elif now - last_progress[0] > config.stall_timeout_s:
                    break
            result.phases_s["connect"] = time.monotonic() - t_ramp
            ramp_end_clock = time.perf_counter()
            ramp_ended_s = time.monotonic() - t0
            result.ramp_established = Totals.of(clients).established
            ramp_done = (result.ramp_established, result.phases_s["connect"])
            ramp_complete = stagger.done
            _note_failures(fleet, result)

            # Peak readings: after the ramp, while everything is held.
            enter("measuring")
            tick()  # (the live view and /metrics say so: the readings take up to seconds)
            t_measure = time.monotonic()
            result.memory = {
                "user_client": measure.sum_uss(w.pid for w in clients if not w.finished),
                "user_server": measure.sum_uss(w.pid for w in fleet.of("server") if not w.finished),
                "kernel": _delta(measure.slab_bytes(), slab_before),
                # The orchestrating parent counts on the client side too.
                "user_parent": measure.uss_bytes(os.getpid()),
            }
            if interrupt.signal is None:
                _ask_the_kernel(result, fleet, clients, targets, lambda: interrupt.signal is not None, tick)
            else:
                # The clients are still connecting (only CLOSE stops them): counts read now would
                # be of different moments and keep growing past the signal. Close at once instead.
                result.kernel_check_skipped = "the run was interrupted during the ramp"
            result.phases_s["measure"] = time.monotonic() - t_measure

            # 2b. Traffic: every client worker talks over its connections, all starting together.
            if config.traffic is not None and interrupt.signal is None:
                enter("traffic")
                t_traffic = time.monotonic()
                ramp = RampSpan(started_at=ramp_started[0], start_clock=ramp_started[1], end_clock=ramp_end_clock,
                                connect_latency=result.connect_latency)
                result.traffic = await_traffic(fleet, clients, config.traffic, tick,
                                               lambda: interrupt.signal is not None, ramp)
                result.phases_s["traffic"] = time.monotonic() - t_traffic
                # Again once the traffic is over, its connections still open: what talking costs on
                # top of holding (a TLS session and its buffers: ~50 KB a connection against ~2 KB held).
                result.memory["user_client_traffic"] = measure.sum_uss(w.pid for w in clients if not w.finished)

            # 3. Hold.
            if interrupt.signal is None:
                enter("holding")
                t_hold = time.monotonic()
                hold_until = None if config.hold_s is None else t_hold + config.hold_s
                while interrupt.signal is None and (hold_until is None or time.monotonic() < hold_until):
                    if ramp_complete and Totals.of(clients).open == 0:
                        # Every connect resolved and none is open: holding would hold nothing.
                        result.hold_ended_early = "no connection was open and none could open any more"
                        break
                    fleet.pump(min(0.25, max(0.0, (hold_until or 1e18) - time.monotonic())))
                    tick()
                    if all(w.finished for w in clients):
                        break
                result.phases_s["hold"] = time.monotonic() - t_hold
                hold_until = None

            # 4. Close: clients first (the server sees orderly closes), then the server.
            enter("closing")
            t_close = time.monotonic()
            open_at_close = Totals.of(clients).open
            fleet.send(clients, P.CLOSE)
            fleet.wait_until(lambda: all(w.finished for w in clients), config.close_timeout_s, tick)
            result.phases_s["close"] = time.monotonic() - t_close
        except Exception as exc:
            # Before any client started there is nothing to report: let the one-line error through.
            # After, keep what was measured: the partial report matters more than the exception.
            if not fleet.of("client"):
                raise
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LoopfanError) else str(exc)
        finally:
            enter("stopping")
            t_stop = time.monotonic()
            result.client, result.server = totals()
            # Before the built-in server stops: its listeners' drop counts go with them.
            drops_before = _listener_drops(listeners_before(measure.never))  # read before the clients (cached)
            drops_after = _listener_drops(measure.target_listeners(targets))
            result.target_listen_drops = _drops_during(drops_after, drops_before)
            fleet.send(fleet.of("server"), P.STOP)
            fleet.wait_until(lambda: all(w.finished for w in fleet.workers), 10.0)
            result.client, result.server = totals()
            if config.traffic is not None:
                result.traffic = traffic_of(fleet.of("client"))
            take_sample(time.monotonic())  # the last, partial interval: the close phase's end
            _note_failures(fleet, result)
            fleet.shutdown()
            result.interrupted = interrupt.signal
            result.signals_after = list(interrupt.later)
            result.cpu_s = _children_cpu_s() - cpu_before
            after = measure.listen_overflows()
            result.listen_overflows = _delta(after, overflows_before)
            result.listen_drops = _delta(measure.listen_drops(), listen_drops_before)
            result.phases_s["stop"] = time.monotonic() - t_stop
            result.phases_s["total"] = time.monotonic() - t0
            if on_progress and fleet.of("client"):  # (none: an error before the run, said alone)
                # The live view's last frame stays on screen above the report: every worker's final
                # counts, not the last tick's (QA: the server still "open 21,507" after the close).
                on_progress(Progress(phase, result.phases_s["total"], plan.request.connections, result.client,
                                     result.server, 0.0, None, series, 0,
                                     config.traffic.kind if config.traffic is not None else None,
                                     ramp_ended_s, open_at_close, recent.snapshot(), rates_since - t0,
                                     ramp_done, traffic_mode=traffic_mode))
    return result


def _ask_the_kernel(result: RunResult, fleet: Fleet, clients: list[Worker], targets: list[tuple[str, int]],
                    stopped: Callable[[], bool], tick: Callable[[], None] = lambda: None) -> None:
    """The kernel's own counts of the run's connections, both ends, once the ramp is done. An
    interrupt while counting leaves them out (said in the report) rather than holding Ctrl-C for
    the settling and the fresh reports."""
    settle_until = time.monotonic() + KERNEL_SETTLE_S
    settle_hard_limit = time.monotonic() + KERNEL_SETTLE_MAX_S
    fewest_stuck = sys.maxsize
    while True:
        fleet.pump(0.3)  # the latest counts from every worker, so both readings are of one moment
        tick()  # (the live view, /metrics and the series go on while it settles: up to seconds)
        # The workers' counts are up to a report interval old and ss is a snapshot of later: a
        # server closing connections meanwhile moves the truth between them. So our count is
        # read before and again after the kernel's (see _fresh_open), and the kernel's must lie
        # between the two.
        result.open_at_peak = Totals.of(clients).open
        # The three readings side by side: of one moment, and the traffic phase waits for one
        # reading's time instead of three. The server side starts first: a connection the server
        # closes meanwhile then leaves the client side too (CLOSE-WAIT) rather than reading as
        # established for the client only.
        server_side = measure.start_count(targets, "src")
        client_side = measure.start_count(targets, "dst")
        listeners = measure.start_listeners(targets)
        result.kernel_server_side, result.kernel_client_side = server_side(stopped), client_side(stopped)
        result.target_listeners = listeners(stopped)
        counted_at = time.monotonic()
        # A server whose queue was full a moment ago completes the handshake when it retransmits
        # its SYN-ACK (after 1 s) and the queue has room, and a server behind on accept() catches
        # up: count again before calling them half-open or never accepted.
        if stopped():
            result.kernel_client_side = result.kernel_server_side = None
            result.target_listeners = None
            result.kernel_check_skipped = "the run was interrupted while counting"
            return
        stuck = result.half_open + result.never_accepted
        if not stuck or time.monotonic() >= settle_hard_limit:
            break
        if stuck < fewest_stuck:  # draining (a new low, not a count's jitter): another grace from now
            settle_until = max(settle_until, min(time.monotonic() + KERNEL_SETTLE_S, settle_hard_limit))
        fewest_stuck = min(fewest_stuck, stuck)
        if time.monotonic() >= settle_until:
            break
    result.open_after_count = _fresh_open(fleet, clients, counted_at)
    if result.kernel_client_side is not None and result.kernel_client_side < result.open_at_peak:
        result.kernel_client_closing = measure.count_tcp(targets, "dst", state="close-wait")
    if result.half_open:
        result.kernel_server_syn_recv = measure.count_tcp(targets, "src", state="syn-recv")


def _fresh_open(fleet: Fleet, clients: list[Worker], since: float) -> int | None:
    """Our clients' open count from reports every live worker made after `since` (a report
    interval away: each reports every 0.25 s while it holds); None if one did not report in time."""
    deadline = time.monotonic() + FRESH_REPORT_WAIT_S

    def fresh() -> bool:
        return all(w.finished or float(w.stats.get("t", 0.0)) >= since for w in clients)

    while not fresh():
        if time.monotonic() >= deadline:
            return None
        fleet.pump(0.05)
    return Totals.of(clients).open


def _listener_drops(listeners: list[measure.Listener] | None) -> int | None:
    return None if listeners is None else sum(ln.drops for ln in listeners)


def _drops_during(after: int | None, before: int | None) -> int | None:
    # A target that restarted during the run took its listeners' counts with it: unknown then.
    d = _delta(after, before)
    return None if d is None or d < 0 else d


def _record(hist: HdrHistogram, latency: dict[int, int]) -> None:
    for us, count in latency.items():
        hist.record_value(max(HIST_LOWEST_US, min(us, HIST_HIGHEST_US)), count)


def _handshakes_waiting(fleet: Fleet) -> int:
    return sum(int((w.stats.get("traffic") or {}).get("handshakes_waiting", 0)) for w in fleet.of("client"))


def _delta(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _where(plan: Plan) -> dict[tuple[str, int], list[str]]:
    """What each worker serves, for the per-process series: its source addresses or listen endpoints."""
    out: dict[tuple[str, int], list[str]] = {}
    for c in plan.client_shards:
        out[("client", c.index)] = _span(list(c.sources))
    for s in plan.server_shards:
        out[("server", s.index)] = _span([str(e) for e in s.listen])
    return out


def _span(items: list[str]) -> list[str]:
    # A shard may own hundreds of addresses: keep the report readable (first, last and how many).
    return items if len(items) <= 4 else [items[0], f"... {len(items) - 2} more ...", items[-1]]


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _note_failures(fleet: Fleet, result: RunResult) -> None:
    seen = {(f["role"], f["index"]) for f in result.worker_failures}
    for w in fleet.workers:
        if w.state in ("dead", "error") and (w.role, w.index) not in seen:
            shard: dict[str, Any] = {"role": w.role, "index": w.index, "pid": w.pid, "error": w.error}
            if w.role == "client":
                client_shard = result.plan.client_shards[w.index]
                shard["sources"] = list(client_shard.sources)
                shard["connections"] = client_shard.connections
            else:
                shard["listen"] = [str(e) for e in result.plan.server_shards[w.index].listen]
            result.worker_failures.append(shard)
