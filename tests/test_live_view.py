"""The live view of a hold-only run after its ramp: the panel, the plain lines and the NDJSON records
say what is true in the hold and in the close, not the ramp's last figures.

QA at scale (30,000 connections, --hold 4s): a holding panel showed the ramp's last interval,
"28,986 connects/s" and its connect latency and CPU, for a second after the ramp was over (longer
when the measuring takes seconds), and the close read "closing: 30,000/30,000 open" until a worker
had closed its share. The series is a real SeriesSampler fed by fake workers' cumulative STATS; the
views get Progress snapshots (facts, no clock), so no sockets and no sleeps.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from conftest import FakeWorker
from rich.console import Console

from loopfan.engine.runner import Progress, Totals
from loopfan.engine.timeseries import SeriesSampler
from loopfan.results.live import ProgressSink, describe, last_row, panel

TARGET = 30_000
RAMP_ENDED_S = 0.44  # the ramp ran from 0.01 s to here: 30,000 connections


def stats(t: float, *, established: int, open_: int, closed: int = 0) -> dict[str, Any]:
    return {"t": t, "attempted": established, "established": established, "open": open_, "peak_open": established,
            "closed": closed, "failed": {}, "health": {"fds": open_ + 10, "fd_limit": 65_536, "loop_lag_ms": 0.2}}


def ramp_series() -> tuple[SeriesSampler, FakeWorker]:
    """A row at the start, then one at 1.0 s whose interval holds the whole ramp."""
    s = SeriesSampler(target=TARGET, t0=0.0)
    w = FakeWorker("client", 0, stats(0.0, established=0, open_=0))
    s.sample(0.0, "connecting", [w], {}, 0.0)
    w.stats = stats(0.44, established=TARGET, open_=TARGET)
    s.note_latency({18: 29_000, 213: 1000})
    s.sample(1.0, "measuring", [w], {}, 0.0)
    return s, w


def progress(phase: str, series: SeriesSampler, *, elapsed_s: float, open_: int = TARGET,
             ramp_ended_s: float | None = RAMP_ENDED_S, open_at_close: int | None = None,
             left_s: float | None = None) -> Progress:
    client = Totals(attempted=TARGET, established=TARGET, open=open_, peak_open=TARGET)
    return Progress(phase, elapsed_s, TARGET, client, None, 0.0, left_s, series,
                    ramp_ended_s=ramp_ended_s, open_at_close=open_at_close)


def rendered(p: Progress) -> str:
    console = Console(file=io.StringIO(), record=True, width=100, force_terminal=True)
    console.print(panel(p))
    return console.export_text()


def test_holding_does_not_show_the_ramps_last_rate() -> None:
    series, _ = ramp_series()
    text = rendered(progress("holding", series, elapsed_s=1.7, left_s=3.3))
    assert "28,986" not in text and "30,000 connects/s" not in text and "connects/s" not in text
    assert re.search(r"^rates +- \(the ramp is done; the first interval after it is under way\)", text, re.M), text
    assert "connect, last interval" not in text  # the ramp's connect latency is not the hold's
    assert "cpu -" in text and "30,000 / 30,000 open" in text and "(4s left)" in text


def test_holding_shows_its_own_interval_once_it_is_in() -> None:
    series, w = ramp_series()
    w.stats = stats(2.0, established=TARGET, open_=TARGET - 12, closed=12)
    series.note_latency({18: 100})  # the ramp's last samples, reported after the interval's edge
    series.sample(2.0, "holding", [w], {}, 0.0)
    text = rendered(progress("holding", series, elapsed_s=2.1, open_=TARGET - 12, left_s=2.9))
    assert re.search(r"^rates +12 closes/s  0 failures/s\s*$", text, re.M), text
    assert "connects/s" not in text and "connect, last interval" not in text
    line = describe(progress("holding", series, elapsed_s=2.1, open_=TARGET - 12, left_s=2.9))
    assert line == "holding: 29,988/30,000 open, 12 closes/s, no failures, 2.1s, 3s left"


def test_late_connects_after_a_stalled_ramp_are_shown() -> None:
    """A ramp that stalled ends with connects still in flight: those that land in the hold are news."""
    series, w = ramp_series()
    w.stats = stats(2.0, established=TARGET + 5, open_=TARGET + 5)
    series.note_latency({900_000: 5})
    series.sample(2.0, "holding", [w], {}, 0.0)
    text = rendered(progress("holding", series, elapsed_s=2.1))
    assert "5 connects/s  0 closes/s" in text and "connect, last interval p50 900" in text


def test_the_ramp_shows_its_rates_as_before() -> None:
    series, _ = ramp_series()
    text = rendered(progress("connecting", series, elapsed_s=1.1, ramp_ended_s=None))
    assert "30,000 connects/s" in text and "connect, last interval p50 0.018 ms" in text


def test_closing_says_how_many_are_closed() -> None:
    series, _ = ramp_series()
    before = rendered(progress("closing", series, elapsed_s=5.1, open_at_close=TARGET))
    assert "0 of 30,000 closed" in before and "30,000 / 30,000 open" not in before
    half = progress("closing", series, elapsed_s=5.3, open_=15_000, open_at_close=TARGET)
    assert re.search(r"^close +\S+ 15,000 of 30,000 closed", rendered(half), re.M)
    assert describe(half).startswith("closing: 15,000 of 30,000 closed, ")
    # Connections that failed or were closed by the server before the close are not "to close".
    short = progress("closing", series, elapsed_s=5.3, open_=0, open_at_close=29_000)
    assert "29,000 of 29,000 closed" in rendered(short)
    # The last frame, once every worker stopped, stays on screen above the report.
    last = progress("stopping", series, elapsed_s=6.5, open_=0, open_at_close=TARGET)
    assert "30,000 of 30,000 closed" in rendered(last)


def test_plain_and_ndjson_after_the_ramp() -> None:
    series, _ = ramp_series()
    p = progress("holding", series, elapsed_s=1.7, left_s=3.3)
    assert describe(p) == "holding: 30,000/30,000 open, no failures, 1.7s, 4s left"
    stream = io.StringIO()
    sink = ProgressSink("ndjson", stream=stream, console=Console(file=io.StringIO()))
    sink(p)
    sink(progress("closing", series, elapsed_s=5.3, open_=15_000, open_at_close=TARGET))  # no new row: no line
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    # A record is one interval's, and says which: [0, 1] s, the ramp's (its phase when sampled aside).
    assert (record["from_t_s"], record["t_s"], record["connects_per_s"]) == (0.0, 1.0, 30_000)
    row = last_row(progress("closing", series, elapsed_s=5.3, open_=15_000, open_at_close=TARGET))
    assert row["closing"] == {"closed": 15_000, "of": TARGET}
