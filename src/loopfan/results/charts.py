"""The report's charts as inline SVG: matplotlib's SVG backend, no JavaScript, no fonts to fetch.

Rules of this file: every function takes columns from a report (and optionally a baseline) and
returns one `<svg>` string. Figures are built with matplotlib.figure.Figure directly (no pyplot,
no GUI backend). Text stays text (svg.fonttype none: the browser's own sans-serif,
nothing embedded or fetched), ids are salted with a constant (the same report gives the same
bytes), and long series are thinned to MAX_POINTS by keeping each bucket's maximum, so an
hour-long run's page stays a few hundred KB while a spike stays visible.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any, cast

MAX_POINTS = 400
WIDTH_IN, HEIGHT_IN = 9.0, 2.9
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
          "#bcbd22"]
BASELINE_COLOR = "#999999"

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "loopfan",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.3,
    "path.simplify": True,
    "path.simplify_threshold": 0.5,
}

Column = Sequence[float | None]


def _figure(rows: int = 1, cols: int = 1, height: float = HEIGHT_IN) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    cast(Any, matplotlib.rcParams).update(_RC)  # loopfan's own style: the process draws only these charts
    fig = Figure(figsize=(WIDTH_IN, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    # Drop the XML prolog and DOCTYPE (the <svg> element is inlined into the page) and the RDF
    # metadata block (namespace URIs only, but a page that names no URL is easier to audit).
    text = text[text.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def thin(t: Column, *columns: Column, max_points: int = MAX_POINTS) -> tuple[list[float], ...]:
    """Keep at most max_points points: each bucket keeps its last time and each column's maximum."""
    n = len(t)
    if n <= max_points:
        return ([float(x) if x is not None else math.nan for x in t],
                *[[float(v) if v is not None else math.nan for v in c] for c in columns])
    step = math.ceil(n / max_points)
    out_t: list[float] = []
    outs: list[list[float]] = [[] for _ in columns]
    for i in range(0, n, step):
        out_t.append(float(t[min(i + step, n) - 1] or 0.0))
        for out, c in zip(outs, columns, strict=True):
            known = [v for v in c[i:i + step] if v is not None]
            out.append(max(known) if known else math.nan)
    return (out_t, *outs)


def _label(ax: Any, y: str, x: str = "time since start (s)", span: Sequence[float | None] | None = None) -> None:
    ax.set_xlabel(x)
    known = [v for v in span or [] if v is not None]
    if len(known) > 1:
        ax.set_xlim(known[0], known[-1])  # every time chart spans the whole run, even a sparse series
    ax.set_ylabel(y)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, frameon=False)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")


def connections(series: dict[str, Any]) -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    t, open_, server = thin(series["t_s"], series["open"], series.get("server_open") or [None] * len(series["t_s"]))
    ax.plot(t, open_, color=COLORS[0], label="open (client)")
    if any(not math.isnan(v) for v in server):
        ax.plot(t, server, color=COLORS[2], label="open (server)", linestyle=":")
    ax.axhline(series["target"], color=COLORS[1], linestyle="--", linewidth=1, label=f"target {series['target']:,}")
    for name, at in (series.get("time_to_target_s") or {}).items():
        if at is not None and name in ("50%", "100%"):
            ax.axvline(at, color="#555555", linewidth=0.8, linestyle=":")
            ax.annotate(f"{name} at {at:.2f}s", (at, series["target"] * (0.5 if name == "50%" else 1.0)),
                        fontsize=8, xytext=(4, -10), textcoords="offset points")
    ax.set_ylim(bottom=0)
    _label(ax, "connections", span=series["t_s"])
    _legend(ax)
    return _svg(fig)


def rates(series: dict[str, Any]) -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    t, conn, fail, close = thin(series["t_s"], series["connects_per_s"], series["failures_per_s"],
                                series["closes_per_s"])
    ax.plot(t, conn, color=COLORS[0], label="connects/s")
    ax.plot(t, close, color=COLORS[2], label="closes/s")
    ax.plot(t, fail, color=COLORS[1], label="failures/s")
    ax.set_ylim(bottom=0)
    ylabel = "per second"
    peak_connect = max((v for v in conn if not math.isnan(v)), default=0.0)
    peak_any = max((v for v in (*conn, *close, *fail) if not math.isnan(v)), default=0.0)
    if peak_any > 3 * max(peak_connect, 1.0):
        # The close burst at the end (tens of thousands per second in one interval) would flatten the
        # ramp's line: a symmetric log scale keeps both readable.
        ax.set_yscale("symlog", linthresh=10)
        ylabel = "per second (log)"
    _label(ax, ylabel, span=series["t_s"])
    _legend(ax)
    return _svg(fig)


def has_data(*columns: Column | None) -> bool:
    """True when some column holds a value other than None and 0: a chart of nothing but zeros (a
    column an older engine wrote and never filled) says less than no chart."""
    return any(v for col in columns for v in col or [])


def _fit(col: Column | None, n: int) -> list[float | None]:
    """A column cut or padded with None to n points: columns added to the series later may be missing
    or shorter than t_s in a report written by another loopfan version, and one odd column must not
    cost the whole page."""
    values = list(col or [])[:n]
    return values + [None] * (n - len(values))


LATENCY_KEYS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")]


def _percentiles_over_time(series: dict[str, Any], lat: dict[str, Column], ylabel: str, nothing: str) -> str:
    """Per-interval percentiles on a log scale; `lat` holds a column per key of LATENCY_KEYS."""
    fig, axes = _figure()
    ax = axes[0][0]
    cols = thin(series["t_s"], *[lat[k] for k, _ in LATENCY_KEYS])
    t = cols[0]
    plotted = False
    for (_, label), col, color in zip(LATENCY_KEYS, cols[1:], COLORS, strict=False):
        if any(not math.isnan(v) and v > 0 for v in col):
            ax.plot(t, col, color=color, label=label, marker="." if len(t) < 30 else None)
            plotted = True
    if plotted:
        ax.set_yscale("log")
    else:
        _empty(ax, nothing)
    _label(ax, ylabel, span=series["t_s"])
    _legend(ax)
    return _svg(fig)


def latency_over_time(series: dict[str, Any]) -> str:
    return _percentiles_over_time(series, series["latency_ms"], "connect latency (ms, log)",
                                  "no connection was established")


def message_latency_over_time(series: dict[str, Any], noun: str = "message", answer: str = "reply") -> str:
    """The traffic's request/response latency per interval (series["message_latency_ms"]); noun and
    answer: "request" and "response" for HTTP (wording.traffic_nouns), as the charts beside it."""
    n = len(series["t_s"])
    lat = series.get("message_latency_ms") or {}
    return _percentiles_over_time(series, {k: _fit(lat.get(k), n) for k, _ in LATENCY_KEYS},
                                  f"{noun} latency (ms, log)", f"no {answer} was measured")


def messages(series: dict[str, Any], window_mean_per_s: float | None = None, noun: str = "messages") -> str:
    """Replies per second over time, with the measured window's mean for scale (noun: "requests" for
    HTTP, see wording.traffic_nouns)."""
    fig, axes = _figure()
    ax = axes[0][0]
    t, msg = thin(series["t_s"], _fit(series.get("messages_per_s"), len(series["t_s"])))
    ax.plot(t, msg, color=COLORS[3], label=f"{noun}/s", marker="." if len(t) < 30 else None)
    if window_mean_per_s:
        ax.axhline(window_mean_per_s, color="#555555", linestyle=":", linewidth=1,
                   label=f"measured window: {window_mean_per_s:,.0f}/s")
    ax.set_ylim(bottom=0)
    _label(ax, f"{noun} per second", span=series["t_s"])
    _legend(ax)
    return _svg(fig)


PERCENTILE_TICKS = [50.0, 90.0, 99.0, 99.9, 99.99, 99.999]


def percentile_curve(hist: Any) -> tuple[list[float], list[float]]:
    """(x = 1/(1-p), y = latency ms) of an HDR histogram, the classic percentile-distribution plot."""
    xs: list[float] = []
    ys: list[float] = []
    if hist is None or not hist.get_total_count():
        return xs, ys
    for item in hist.get_percentile_iterator(5):
        p = item.percentile_level_iterated_to
        if p >= 100.0:
            break
        xs.append(1.0 / (1.0 - p / 100.0))
        ys.append(item.value_iterated_to / 1000)
    xs.append(xs[-1] * 10 if xs else 1e6)
    ys.append(hist.get_max_value() / 1000)
    return xs, ys


def hdr_percentiles(hist: Any, baseline: Any | None = None) -> str:
    fig, axes = _figure(height=3.2)
    ax = axes[0][0]
    x, y = percentile_curve(hist)
    if baseline is not None:
        bx, by = percentile_curve(baseline)
        if bx:
            ax.plot(bx, by, color=BASELINE_COLOR, linestyle="--", label="baseline")
    if x:
        ax.plot(x, y, color=COLORS[0], label="this run")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [1 / (1 - p / 100) for p in PERCENTILE_TICKS]
        ax.set_xticks(ticks, [f"{p:g}%" for p in PERCENTILE_TICKS])
        ax.minorticks_off()
    else:
        _empty(ax, "no latency recorded")
    _label(ax, "connect latency (ms, log)", "percentile (log scale of 1/(1-p))")
    _legend(ax)
    return _svg(fig)


def failures(series: dict[str, Any]) -> str:
    return _per_cause(series, series.get("failures_by_cause_per_s") or {}, "failures")


def traffic_errors(series: dict[str, Any]) -> str:
    """Traffic errors per second by cause (series["errors_by_cause_per_s"]), as failures() draws
    connection failures; the total (series["errors_per_s"]) when a report has no split by cause."""
    n = len(series["t_s"])
    by_cause = {c: _fit(col, n) for c, col in (series.get("errors_by_cause_per_s") or {}).items() if has_data(col)}
    if not by_cause and has_data(series.get("errors_per_s")):
        by_cause = {"traffic errors": _fit(series.get("errors_per_s"), n)}
    return _per_cause(series, by_cause, "traffic errors")


def _per_cause(series: dict[str, Any], by_cause: dict[str, list[Any]], what: str) -> str:
    """One line per cause, the largest first: '{what} per second'."""
    fig, axes = _figure()
    ax = axes[0][0]
    if by_cause:
        names = sorted(by_cause, key=lambda c: -sum(v or 0 for v in by_cause[c]))
        cols = thin(series["t_s"], *[by_cause[c] for c in names])
        for name, col, color in zip(names, cols[1:], COLORS[1:] + COLORS[:1], strict=False):
            ax.plot(cols[0], col, color=color, label=name)
        ax.set_ylim(bottom=0)
    else:
        _empty(ax, f"no {what}")
    _label(ax, f"{what} per second", span=series["t_s"])
    _legend(ax)
    return _svg(fig)


def processes(series: dict[str, Any], max_lines: int = 12) -> str:
    """Open connections per client process; beyond max_lines, the spread (min, median, max)."""
    procs = series.get("processes") or {}
    items = [p for p in procs.get("items", []) if p["role"] == "client"]
    fig, axes = _figure(1, 2)
    ax_open, ax_fail = axes[0]
    t = procs.get("t_s") or []
    if not items or not t:
        _empty(ax_open, "no per-process samples")
    elif len(items) <= max_lines:
        for p, color in zip(items, COLORS * 2, strict=False):
            tt, o, f = thin(t, p["open"], p["failures_per_s"])
            ax_open.plot(tt, o, color=color, label=f"client #{p['index']}")
            ax_fail.plot(tt, f, color=color)
    else:
        for key, ax in (("open", ax_open), ("failures_per_s", ax_fail)):
            lo, med, hi = [], [], []
            for i in range(len(t)):
                vals = sorted(v for p in items if i < len(p[key]) and (v := p[key][i]) is not None)
                lo.append(vals[0] if vals else None)
                med.append(vals[len(vals) // 2] if vals else None)
                hi.append(vals[-1] if vals else None)
            tt, a, m, b = thin(t, lo, med, hi)
            ax.fill_between(tt, a, b, color=COLORS[0], alpha=0.25, label="min..max over processes")
            ax.plot(tt, m, color=COLORS[0], label="median process")
    _label(ax_open, "open per client process", span=t)
    _label(ax_fail, "failures/s per client process", span=t)
    ax_open.set_ylim(bottom=0)
    ax_fail.set_ylim(bottom=0)
    _legend(ax_open)
    return _svg(fig)


def health(series: dict[str, Any]) -> str:
    h = series["health"]
    fig, axes = _figure(2, 2, height=4.4)
    panels = [
        (axes[0][0], [("workers_cpu_pct", "workers (sum)"), ("parent_cpu_pct", "loopfan parent")], "CPU (% of a core)"),
        (axes[0][1], [("loop_lag_ms_max", "worst worker")], "event-loop lag (ms)"),
        (axes[1][0], [("fds_used_max_pct", "fullest worker")], "open files (% of limit)"),
        (axes[1][1], [("rss_bytes", "all workers")], "resident memory (MB)"),
    ]
    for ax, keys, ylabel in panels:
        plotted = False
        for (key, label), color in zip(keys, COLORS, strict=False):
            col = h.get(key) or []
            if key == "rss_bytes":
                col = [None if v is None else v / 1e6 for v in col]
            if any(v is not None for v in col):
                tt, c = thin(series["t_s"], col)
                ax.plot(tt, c, color=color, label=label)
                plotted = True
        if not plotted:
            _empty(ax, "not measured")
        ax.set_ylim(bottom=0)
        if ylabel.startswith("open files"):
            ax.set_ylim(0, 100)
        _label(ax, ylabel, span=series["t_s"])
        _legend(ax)
    return _svg(fig)


def throughput(series: dict[str, Any], noun: str = "messages") -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    t, bi, bo, msg = thin(series["t_s"], series["bytes_in_per_s"], series["bytes_out_per_s"],
                          series["messages_per_s"])
    if any(v > 0 for v in bi + bo):
        ax.plot(t, [v / 1e6 for v in bi], color=COLORS[0], label="received (MB/s)")
        ax.plot(t, [v / 1e6 for v in bo], color=COLORS[2], label="sent (MB/s)")
    if any(v > 0 for v in msg):
        ax2 = ax.twinx()
        ax2.plot(t, msg, color=COLORS[3], label=f"{noun}/s", linestyle="--")
        ax2.set_ylabel(f"{noun} per second")
    if not any(v > 0 for v in bi + bo + msg):
        _empty(ax, "no payload traffic in this run (connections only)")
    ax.set_ylim(bottom=0)
    _label(ax, "MB per second", span=series["t_s"])
    _legend(ax)
    return _svg(fig)
