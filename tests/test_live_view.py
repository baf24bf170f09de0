"""The live view of a hold-only run: the panel, the plain lines and the NDJSON records say what is
true now - the ramp's rate while it ramps, the hold's and the close's own figures after it.

QA at scale (30,000 connections, --hold 4s): a holding panel showed the ramp's last interval,
"28,986 connects/s" and its connect latency and CPU, for a second after the ramp was over (longer
when the measuring takes seconds), and the close read "closing: 30,000/30,000 open" until a worker
had closed its share. And while ramping at ~30K/s the panel read "3,368 connects/s" (the last
completed interval, which held the ramp's first moments), "0 connects/s" before the first one.
The series is a real SeriesSampler and the recent reports a real RecentCounts, both fed by fake
workers' cumulative STATS; the views get Progress snapshots (facts, no clock), so no sockets and
no sleeps.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from conftest import FakeWorker
from rich.console import Console

from loopfan.engine.live_rates import Recent, RecentCounts
from loopfan.engine.runner import Progress, Totals
from loopfan.engine.timeseries import SeriesSampler
from loopfan.results.live import RATES_WAITING, ProgressSink, describe, last_row, panel

TARGET = 30_000
RAMP_ENDED_S = 0.44  # the ramp ran from 0.01 s to here: 30,000 connections
HOLD_BEGAN_S = 1.5  # after the measuring


def stats(t: float, *, established: int, open_: int, closed: int = 0) -> dict[str, Any]:
    return {"t": t, "attempted": established, "established": established, "open": open_, "peak_open": established,
            "closed": closed, "failed": {}, "health": {"fds": open_ + 10, "fd_limit": 65_536, "loop_lag_ms": 0.2}}


class Run:
    """The series and the recent reports of one fake client worker, fed as the runner feeds them."""

    def __init__(self) -> None:
        self.series = SeriesSampler(target=TARGET, t0=0.0)
        self.recent = RecentCounts(t0=0.0)
        self.recent.workers_start_now(0.01)
        self.worker = FakeWorker("client", 0, stats(0.0, established=0, open_=0))

    def report(self, t: float, **counts: Any) -> None:
        self.worker.stats = stats(t, **counts)
        self.series.note_reports([self.worker], t)
        self.recent.note(t, [self.worker])

    def sample(self, t: float, phase: str) -> None:
        self.series.sample(t, phase, [self.worker], {}, 0.0)

    def snapshot(self) -> tuple[SeriesSampler, Recent]:
        return self.series, self.recent.snapshot()


def ramp_series() -> tuple[SeriesSampler, Recent]:
    return ramp_run().snapshot()


def ramp_run() -> Run:
    """A row at the start, then one at 1.0 s whose interval holds the whole ramp (reports at 0.25 s
    and at its end), and reports every 0.25 s after it (the measuring, until the hold began)."""
    run = Run()
    run.sample(0.0, "connecting")
    run.report(0.25, established=16_500, open_=16_500)
    run.report(RAMP_ENDED_S, established=TARGET, open_=TARGET)
    run.series.note_latency({18: 29_000, 213: 1000})
    run.report(0.75, established=TARGET, open_=TARGET)
    run.report(1.0, established=TARGET, open_=TARGET)
    run.sample(1.0, "measuring")
    for t in (1.25, HOLD_BEGAN_S):
        run.report(t, established=TARGET, open_=TARGET)
    return run


def progress(phase: str, fed: tuple[SeriesSampler, Recent], *, elapsed_s: float, open_: int = TARGET,
             ramp_ended_s: float | None = RAMP_ENDED_S, open_at_close: int | None = None,
             left_s: float | None = None, since_s: float | None = None) -> Progress:
    client = Totals(attempted=TARGET, established=TARGET, open=open_, peak_open=TARGET)
    if since_s is None:  # when the phase began
        since_s = {"connecting": 0.01, "measuring": RAMP_ENDED_S, "holding": HOLD_BEGAN_S}.get(phase, 5.0)
    series, recent = fed
    return Progress(phase, elapsed_s, TARGET, client, None, 0.0, left_s, series,
                    ramp_ended_s=ramp_ended_s, open_at_close=open_at_close, recent=recent, rates_since_s=since_s)


def rendered(p: Progress) -> str:
    console = Console(file=io.StringIO(), record=True, width=100, force_terminal=True)
    console.print(panel(p))
    return console.export_text()


def test_holding_does_not_show_the_ramps_last_rate() -> None:
    fed = ramp_series()
    text = rendered(progress("holding", fed, elapsed_s=1.7, left_s=3.3))
    assert "28,986" not in text and "30,000 connects/s" not in text and "connects/s" not in text
    assert re.search(r"^rates +" + re.escape(RATES_WAITING), text, re.M), text
    assert "connect, last interval" not in text  # the ramp's connect latency is not the hold's
    assert "cpu -" in text and "30,000 / 30,000 open" in text and "(4s left)" in text
    # Prometheus and NDJSON say the same: nothing known of the hold yet, not the ramp's rate.
    assert last_row(progress("holding", fed, elapsed_s=1.7))["now_per_s"]["connects"] is None


def test_holding_shows_its_own_rates_from_its_first_reports() -> None:
    """The hold began at 1.5 s; the worker reports every 0.25 s, closing 40 a second from 1.5 s."""
    run = ramp_run()
    run.report(1.6, established=TARGET, open_=TARGET - 4, closed=4)  # 0.1 s into the hold: too soon
    assert re.search(r"^rates +" + re.escape(RATES_WAITING), rendered(progress("holding", run.snapshot(),
                                                                               elapsed_s=1.65)), re.M)
    for t in (1.75, 2.0, 2.25, 2.5):
        closed = round(40 * (t - HOLD_BEGAN_S))
        run.report(t, established=TARGET, open_=TARGET - closed, closed=closed)
        if t == 2.0:
            run.series.note_latency({18: 100})  # the ramp's last samples, reported after the interval's edge
            run.sample(2.0, "holding")
    p = progress("holding", run.snapshot(), elapsed_s=2.5, open_=TARGET - 40, left_s=2.5)
    text = rendered(p)
    assert re.search(r"^rates +40 closes/s  0 failures/s\s*$", text, re.M), text
    assert "connects/s" not in text and "connect, last interval" not in text
    assert describe(p) == "holding: 29,960/30,000 open, 40 closes/s, no failures, 2.5s, 3s left"


def test_late_connects_after_a_stalled_ramp_are_shown() -> None:
    """A ramp that stalled ends with connects still in flight: those that land in the hold are news."""
    run = ramp_run()
    for k, t in enumerate((1.75, 2.0, 2.25, 2.5)):
        run.report(t, established=TARGET + 5 * (k + 1), open_=TARGET + 5 * (k + 1))
    run.series.note_latency({900_000: 5})
    run.sample(2.0, "holding")
    text = rendered(progress("holding", run.snapshot(), elapsed_s=2.5))
    assert "20 connects/s  0 closes/s" in text and "connect, last interval p50 900" in text


def test_the_ramp_shows_its_rate_as_it_ramps() -> None:
    """QA: "3,368 connects/s" while ramping at ~30K/s, "0 connects/s" before the first interval. The
    ramp began at 0.01 s, 66,000 connects a second; its first report at 0.25 s says so."""
    run = Run()
    run.sample(0.0, "connecting")
    waiting = rendered(progress("connecting", run.snapshot(), elapsed_s=0.2, ramp_ended_s=None))
    assert re.search(r"^rates +" + re.escape(RATES_WAITING), waiting, re.M), waiting  # no report yet: not "0"
    assert "- connects/s" in describe(progress("connecting", run.snapshot(), elapsed_s=0.2, ramp_ended_s=None))
    run.report(0.25, established=15_840, open_=15_840)
    p = progress("connecting", run.snapshot(), elapsed_s=0.26, open_=15_840, ramp_ended_s=None)
    assert "66,000 connects/s  0 closes/s  0 failures/s" in rendered(p)
    assert describe(p).startswith("connecting: 15,840/30,000 open, 66,000 connects/s, ")
    assert last_row(p)["now_per_s"]["connects"] == 66_000
    # Once an interval is in, its latency shows beside the rate as it is now.
    run.series.note_latency({18: 15_000, 213: 840})
    run.sample(0.26, "connecting")
    assert "connect, last interval p50 0.018 ms" in rendered(progress("connecting", run.snapshot(), elapsed_s=0.3,
                                                                      ramp_ended_s=None))


def test_a_ramp_too_short_to_read_live_is_said_once_it_is_over() -> None:
    """QA: a ramp under a second never showed its rate live. One shorter than a worker's report
    interval (0.25 s) is over before any rate can be read: the panel says the report's figure."""
    series, recent = ramp_series()
    p = Progress("holding", 1.7, TARGET, Totals(attempted=TARGET, established=TARGET, open=TARGET,
                                                peak_open=TARGET), None, 0.0, 3.3, series,
                 ramp_ended_s=RAMP_ENDED_S, recent=recent, rates_since_s=HOLD_BEGAN_S, ramp_done=(TARGET, 0.43))
    assert re.search(r"^ramp +30,000 in 0.43 s: 69,767 connects/s mean", rendered(p), re.M)
    assert "ramp " not in rendered(progress("connecting", series_only_ramp(), elapsed_s=0.3, ramp_ended_s=None))


def series_only_ramp() -> tuple[SeriesSampler, Recent]:
    run = Run()
    run.report(0.25, established=16_500, open_=16_500)
    return run.snapshot()


def test_closing_says_how_many_are_closed() -> None:
    fed = ramp_series()
    before = rendered(progress("closing", fed, elapsed_s=5.1, open_at_close=TARGET))
    assert "0 of 30,000 closed" in before and "30,000 / 30,000 open" not in before
    half = progress("closing", fed, elapsed_s=5.3, open_=15_000, open_at_close=TARGET)
    assert re.search(r"^close +\S+ 15,000 of 30,000 closed", rendered(half), re.M)
    assert describe(half).startswith("closing: 15,000 of 30,000 closed, ")
    # Connections that failed or were closed by the server before the close are not "to close".
    short = progress("closing", fed, elapsed_s=5.3, open_=0, open_at_close=29_000)
    assert "29,000 of 29,000 closed" in rendered(short)
    # The last frame, once every worker stopped, stays on screen above the report: no rate is.
    last = rendered(progress("stopping", fed, elapsed_s=6.5, open_=0, open_at_close=TARGET))
    assert "30,000 of 30,000 closed" in last and "rates" not in last


def test_the_close_shows_its_closes_per_second() -> None:
    run = ramp_run()
    for t in (1.75, 2.0, 2.2):
        run.report(t, established=TARGET, open_=TARGET)
    # The close began at 2.2 s; the worker closed its share at once and stopped.
    run.worker.finished = True
    run.report(2.3, established=TARGET, open_=0, closed=TARGET)
    run.recent.note(2.6, [run.worker])
    p = progress("closing", run.snapshot(), elapsed_s=2.6, open_=0, open_at_close=TARGET, since_s=2.2)
    assert "75,000 closes/s" in rendered(p)  # 30,000 in the 0.4 s of the close so far


def test_plain_and_ndjson_after_the_ramp() -> None:
    fed = ramp_series()
    p = progress("holding", fed, elapsed_s=1.7, left_s=3.3)
    assert describe(p) == "holding: 30,000/30,000 open, no failures, 1.7s, 4s left"
    stream = io.StringIO()
    sink = ProgressSink("ndjson", stream=stream, console=Console(file=io.StringIO()))
    sink(p)
    sink(progress("closing", fed, elapsed_s=5.3, open_=15_000, open_at_close=TARGET))  # no new row: no line
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    # A record is one interval's, and says which: [0, 1] s, the ramp's (its phase when sampled aside);
    # the rates as they are now beside it say the hold's: nothing known yet.
    assert (record["from_t_s"], record["t_s"], record["connects_per_s"]) == (0.0, 1.0, 30_000)
    assert record["now_per_s"] == dict.fromkeys(
        ("connects", "closes", "failures", "messages", "bytes_in", "bytes_out", "errors"))
    row = last_row(progress("closing", fed, elapsed_s=5.3, open_=15_000, open_at_close=TARGET))
    assert row["closing"] == {"closed": 15_000, "of": TARGET}
