"""Live view of a run: a compact panel on a terminal, plain lines or NDJSON otherwise, or nothing.

Rules of this file: the runner calls the sink on every tick (~10 times a second), so __call__ only
stores the latest Progress and, for the line modes, prints when due: O(1) work. The panel is drawn
by rich's refresh thread (PANEL_REFRESH_PER_S) from that stored Progress; the thread starts in
start(), after the runner's last fork (forking with a live thread is unsafe). Output goes to
stderr, so stdout keeps the report (and `--json -`). The panel's cost is measured by
bench/report_overhead.py (docs/benchmarks.md "Reporting overhead").

What is shown follows the phase: connects, connect latency and failures while connecting;
messages/s, message latency and traffic errors while the phase is "traffic", when the connect
figures are all zero (requests/s and request latency for HTTP, as the final report says them:
wording.traffic_nouns). Once the ramp is over (measuring, holding, closing) the connects are done;
while closing, the open count becomes how many of the connections open at the close are closed.
Connection failures are shown in every phase.

The rates (connects, closes, failures, messages, bytes and errors per second) are as they are now:
over the last second of the workers' reports, cut where the phase began (live_rates), so a 30K/s
ramp reads about 30K/s from its first reports on, and a phase never shows the one before's. The
latency percentiles, CPU and loop lag are the series' last interval's (a percentile needs the
interval's histogram); after the ramp, CPU and loop lag only from an interval that began after it.
Everything shown comes from the Progress handed over (facts, not the clock), so the panel and
the lines are pure functions of it. The refresh thread reads
the sampler's columns while the runner appends to them: it reads each column's last element and
copies dicts before iterating, so a row half appended shows at worst one column's previous value.
"""

from __future__ import annotations

import json
import math
import sys
import time
from types import TracebackType
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from loopfan.engine.live_rates import COUNTERS
from loopfan.engine.runner import Progress
from loopfan.wording import traffic_nouns

PANEL_REFRESH_PER_S = 4
PLAIN_EVERY_S = 5.0
MODES = ("auto", "panel", "plain", "ndjson", "none")
# The rates as they are now, named as the NDJSON's now_per_s says them (the live_rates counters').
NOW_KEYS = {"established": "connects", "closed": "closes", "failed": "failures", "messages": "messages",
            "bytes_in": "bytes_in", "bytes_out": "bytes_out", "errors": "errors"}


def rates_now_per_s(p: Progress) -> dict[str, float | None]:
    """{'connects': 29_850.0, 'closes': 0.0, ...} per second as they are now: over the last second of
    the client workers' reports, since the phase began (live_rates.total_rate). None, every one,
    when too little of the phase is known yet (it began a moment ago) or no reports are kept."""
    if p.recent is None:
        return dict.fromkeys(NOW_KEYS.values())
    return {NOW_KEYS[c]: p.recent.rate_per_s(c, now_s=p.elapsed_s, since_s=p.rates_since_s) for c in COUNTERS}


def last_row(p: Progress) -> dict[str, Any]:
    """The latest interval of the run's time series as one flat dict (NDJSON line, panel, exporter)."""
    row: dict[str, Any] = {"phase": p.phase, "elapsed_s": round(p.elapsed_s, 3), "target": p.target,
                           "open": p.client.open, "established": p.client.established,
                           "failed": dict(p.client.failed)}
    if p.hold_left_s is not None:  # the hold's time left, or the traffic's (warm-up and window)
        row["left_s"] = round(p.hold_left_s, 3)
    if p.phase == "traffic" and p.handshakes_waiting:  # (the panel's "handshakes N/M done")
        row["handshakes_waiting"] = p.handshakes_waiting
    close = closing(p)
    if close is not None:
        row["closing"] = {"closed": close[0], "of": close[1]}
    row["now_per_s"] = {k: None if v is None else round(v, 1) for k, v in rates_now_per_s(p).items()}
    s = p.series
    if s is None or not s.cols["t_s"]:
        return row
    i = -1
    t_s = s.cols["t_s"]
    row["t_s"] = t_s[i]
    # The interval this row covers began at the previous row's edge (the first at the start).
    row["from_t_s"] = t_s[-2] if len(t_s) > 1 else 0.0
    for key in ("connects_per_s", "closes_per_s", "failures_per_s", "bytes_in_per_s", "bytes_out_per_s",
                "messages_per_s"):
        row[key] = s.cols[key][i]
    row["failures_by_cause_per_s"] = {c: col[i] for c, col in dict(s.by_cause).items() if col[i]}
    row["latency_ms"] = {k: col[i] for k, col in s.latency.items()}
    # Traffic: the interval's message latency, and errors (the warm-up's included) per second and
    # so far. Hold-only runs carry them too, empty, as report.json's series does.
    row["message_latency_ms"] = {k: col[i] for k, col in s.message_latency.items()}
    row["errors_per_s"] = s.errors_per_s[i]
    by_cause = dict(s.errors_by_cause)
    row["errors_by_cause_per_s"] = {c: col[i] for c, col in by_cause.items() if col[i]}
    row["errors_so_far"] = so_far(s.errors_per_s, t_s)
    row["errors_by_cause_so_far"] = {c: n for c, col in by_cause.items() if (n := so_far(col, t_s))}
    row["health"] = {k: col[i] for k, col in s.health.items()}
    return row


def closing(p: Progress) -> tuple[int, int] | None:
    """(closed, of): while closing, how many of the connections open when the close began are
    closed by now (the workers' reports; a worker closes its share at once, then reports)."""
    if p.phase not in ("closing", "stopping") or p.open_at_close is None:
        return None
    return max(0, p.open_at_close - p.client.open), p.open_at_close


def after_ramp(p: Progress) -> bool:
    """The ramp is over and no traffic runs: the connects are done (measuring, holding, closing)."""
    return p.ramp_ended_s is not None and p.phase != "traffic"


def interval_of_this_phase(p: Progress, row: dict[str, Any]) -> bool:
    """The series' last interval says what is true in this phase (its latency, CPU and loop lag):
    always while ramping; after the ramp only once an interval that began after it ended is in
    (until then the last interval is the ramp's, its busiest second)."""
    if "t_s" not in row:
        return False
    return not after_ramp(p) or row["from_t_s"] >= (p.ramp_ended_s or 0.0) - 1e-3


def so_far(per_s: list[float], t_s: list[float]) -> int:
    """A count back from its per-interval rates: each rate x its interval, summed (the live error
    counts, and the Prometheus exporter's traffic counters). The first interval starts at the run's
    start (t 0). Each row's rates are differences of the workers' counts at its edge, so this is the
    count at the last row's edge, within the rounding of rates and times (0.1/s, 1 ms).
    O(intervals): ~0.3 ms for an hour's column, at the panel's 4 refreshes a second."""
    n = min(len(per_s), len(t_s))
    return round(sum(per_s[j] * (t_s[j] - (t_s[j - 1] if j else 0.0)) for j in range(n) if per_s[j]))


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:,.1f}")


def _pcts(lat: dict[str, Any]) -> str:
    return (f"p50 {_ms(lat.get('p50'))} ms  p99 {_ms(lat.get('p99'))}  p99.9 {_ms(lat.get('p999'))}  "
            f"max {_ms(lat.get('max'))}")


def _per_s(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _errors(row: dict[str, Any], top: int = 4) -> str:
    """'12/s, 340 so far (http-5xx 300, reply-timeout 40)', or '' when there were none (the rate
    as it is now, the count so far from the series)."""
    rate, so_far = row["now_per_s"].get("errors") or 0, row.get("errors_so_far") or 0
    if not rate and not so_far:
        return ""
    causes = sorted((row.get("errors_by_cause_so_far") or {}).items(), key=lambda kv: -kv[1])[:top]
    by_cause = " (" + ", ".join(f"{c} {n:,}" for c, n in causes) + ")" if causes else ""
    return f"{rate:,.0f}/s, {so_far:,} so far{by_cause}"


def _left(left_s: float) -> str:
    # Rounded up, as countdowns are: "0s left" only when nothing is left.
    return f"{math.ceil(left_s - 1e-9)}s left"


# What the rates row says until the phase's first reports are in (it began a moment ago).
RATES_WAITING = "- (the first reports of this phase are under way)"


def _rates(p: Progress, row: dict[str, Any]) -> list[str] | None:
    """['30,120 connects/s', '0 closes/s', '0 failures/s'] as they are now; None until the phase's
    first reports are in."""
    now = row["now_per_s"]
    connects, closes, failures = now["connects"], now["closes"], now["failures"]
    if connects is None or closes is None or failures is None:
        return None
    # Connects after the ramp are news (a stalled ramp's stragglers): said then, else left out.
    said = not after_ramp(p) or round(connects) > 0
    return ([f"{connects:,.0f} connects/s"] if said else []) + [f"{closes:,.0f} closes/s",
                                                                f"{failures:,.0f} failures/s"]


def _ramp(established: int, seconds: float) -> str:
    """'30,000 in 0.44 s: 68,182 connects/s mean' - the report's figure, once the ramp is over."""
    mean = f": {established / seconds:,.0f} connects/s mean" if seconds > 0 and established else ""
    return f"{established:,} in {seconds:,.2f} s{mean}"


def panel(p: Progress) -> Group:
    row = last_row(p)
    head = Text.assemble((f"{p.phase:<12}", "bold"), f" {p.elapsed_s:6.1f}s")
    if p.phase == "traffic" and p.traffic_mode:
        head.append(f"  {p.traffic_mode}", style="bold")  # which load: 'ws pings' are not text messages
    if p.hold_left_s is not None:
        head.append(f"  ({_left(p.hold_left_s)})", style="dim")
    elif p.phase == "holding":
        head.append("  (until Ctrl-C; the report follows)", style="dim")
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    bar = Table.grid(padding=(0, 1))
    close = closing(p)
    if close is not None:
        closed, of = close
        bar.add_row(ProgressBar(total=max(1, of), completed=min(closed, of), width=40),
                    f"{closed:,} of {of:,} closed")
        t.add_row("close", bar)
    else:
        bar.add_row(ProgressBar(total=max(1, p.target), completed=min(p.client.open, p.target), width=40),
                    f"{p.client.open:,} / {p.target:,} open")
        t.add_row("open", bar)
    if p.phase == "traffic" and p.handshakes_waiting:
        t.add_row("traffic", _handshakes(p))
    elif p.phase == "traffic":
        now = row["now_per_s"]
        t.add_row("traffic", f"{_per_s(now['messages'])} {traffic_nouns(p.traffic_kind)[0]}/s  "
                  f"in {_mb(now['bytes_in'])} MB/s  out {_mb(now['bytes_out'])} MB/s")
        one_sent = traffic_nouns(p.traffic_kind, one=True)[0]
        t.add_row("latency", f"{one_sent}, last interval " + _pcts(row.get("message_latency_ms") or {}))
        t.add_row("errors", _errors(row) or Text("none", style="green"))
    else:
        rates = _rates(p, row)
        if p.phase != "stopping":  # (the last frame, kept above the report: the run is over, no rate is)
            t.add_row("rates", "  ".join(rates) if rates is not None else Text(RATES_WAITING, style="dim"))
        if after_ramp(p) and p.ramp_done is not None:
            t.add_row("ramp", _ramp(*p.ramp_done))
        lat = row.get("latency_ms") or {}
        # After the ramp there is no connect to time: the row only when stragglers connected.
        # (Connects, not latency samples: a worker reports the ramp's last ones a moment late.)
        if not after_ramp(p) or (interval_of_this_phase(p, row) and row.get("connects_per_s")):
            t.add_row("latency", "connect, last interval " + _pcts(lat))
    failed = sorted(p.client.failed.items(), key=lambda kv: -kv[1])[:4]
    t.add_row("failures", ", ".join(f"{k} {v:,}" for k, v in failed) if failed else Text("none", style="green"))
    h = row.get("health") or {}
    fds = h.get("fds_used_max_pct")
    # CPU and loop lag are the interval's too: the ramp's busiest second is not the hold's.
    cpu = f"{h.get('workers_cpu_pct') or 0:.0f}%" if interval_of_this_phase(p, row) or not after_ramp(p) else "-"
    lag = _ms(h.get("loop_lag_ms_max")) if interval_of_this_phase(p, row) or not after_ramp(p) else "-"
    t.add_row("generator", f"fds {'-' if fds is None else f'{fds:.0f}%'} of limit (fullest worker)  "
              f"cpu {cpu}  loop lag {lag} ms")
    if p.server is not None:
        t.add_row("server", f"accepted {p.server.established:,}, open {p.server.open:,}")
    return Group(head, t)


class ProgressSink:
    """Callable progress sink for run_plan; a context manager around the run."""

    def __init__(self, mode: str = "auto", *, quiet: bool = False, console: Console | None = None,
                 stream: IO[str] | None = None, exporter: Any | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.stream = stream or sys.stderr
        if quiet and mode == "auto":
            mode = "none"
        if mode == "auto":
            mode = "panel" if self.console.is_terminal else "plain"
        self.mode = mode
        self.exporter = exporter
        self.latest: Progress | None = None
        self._live: Live | None = None
        self._next_plain = 0.0
        self._rows_sent = 0

    def __enter__(self) -> ProgressSink:
        return self

    def start(self) -> None:
        """Start the threads (panel refresh, exporter): call after the last worker is forked."""
        if self.exporter is not None:
            self.exporter.start()
        if self.mode == "panel":
            self._live = Live(console=self.console, refresh_per_second=PANEL_REFRESH_PER_S, transient=False,
                              get_renderable=self._renderable)
            self._live.start()

    def _renderable(self) -> Any:
        p = self.latest
        return Text("starting ...") if p is None else panel(p)

    def __call__(self, p: Progress) -> None:
        self.latest = p
        if self.exporter is not None:
            self.exporter.update(p)
        if self.mode == "plain":
            now = time.monotonic()
            if now >= self._next_plain:
                self._next_plain = now + PLAIN_EVERY_S
                self.stream.write(describe(p) + "\n")
                self.stream.flush()
        elif self.mode == "ndjson":
            n = len(p.series.cols["t_s"]) if p.series is not None else 0
            if n > self._rows_sent:
                self._rows_sent = n
                self.stream.write(json.dumps(last_row(p), separators=(",", ":")) + "\n")
                self.stream.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.exporter is not None:
            self.exporter.stop()


def _mb(bytes_per_s: float | None) -> str:
    return "-" if bytes_per_s is None else f"{bytes_per_s / 1e6:,.2f}"


def _handshakes(p: Progress) -> str:
    """Opening handshakes (TLS, WebSocket) under way: the messages (and the clock) start once they are done."""
    return (f"handshakes {max(0, p.client.open - p.handshakes_waiting):,}/{p.client.open:,} done, "
            f"{traffic_nouns(p.traffic_kind)[0]} start after them")


def describe(p: Progress) -> str:
    row = last_row(p)
    failed = ", ".join(f"{k} {v:,}" for k, v in sorted(p.client.failed.items(), key=lambda kv: -kv[1])[:3])
    left = "" if p.hold_left_s is None else f", {_left(p.hold_left_s)}"
    phase = f"traffic ({p.traffic_mode})" if p.phase == "traffic" and p.traffic_mode else p.phase
    if p.phase == "traffic" and p.handshakes_waiting:
        return f"{phase}: {_handshakes(p)}, {failed or 'no connection failures'}, {p.elapsed_s:.1f}s{left}"
    if p.phase == "traffic":
        lat = row.get("message_latency_ms") or {}
        sent, one_sent = traffic_nouns(p.traffic_kind)[0], traffic_nouns(p.traffic_kind, one=True)[0]
        return (f"{phase}: {p.client.open:,}/{p.target:,} open, {_per_s(row['now_per_s']['messages'])} "
                f"{sent}/s, "
                f"{one_sent} p50 {_ms(lat.get('p50'))} ms p99 {_ms(lat.get('p99'))} ms, "
                f"errors {_errors(row, top=3) or 'none'}, {failed or 'no connection failures'}, "
                f"{p.elapsed_s:.1f}s{left}")
    close = closing(p)
    counts = (f"{close[0]:,} of {close[1]:,} closed" if close is not None
              else f"{p.client.open:,}/{p.target:,} open")
    if after_ramp(p):
        # The connects are done: the closes and failures as they are now, once the phase's first
        # reports are in. (No failures per second said when none: the cumulative failures follow.)
        rates = [r for r in _rates(p, row) or [] if r != "0 failures/s"]
        said = "".join(r + ", " for r in rates)
        return f"{p.phase}: {counts}, {said}{failed or 'no failures'}, {p.elapsed_s:.1f}s{left}"
    lat_p99 = (row.get("latency_ms") or {}).get("p99")
    return (f"{p.phase}: {counts}, {_per_s(row['now_per_s']['connects'])} "
            f"connects/s, p99 {_ms(lat_p99)} ms, {failed or 'no failures'}, {p.elapsed_s:.1f}s{left}")
