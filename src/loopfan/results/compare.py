"""Comparing runs: a baseline and a new report side by side, deltas, gates, and trends over many.

Rules of this file: pure. Numbers come from checks.report_metrics (latency percentiles from the
full-run HDR histograms, not from rounded summaries); a delta is "noise" below NOISE_PCT and is
then shown uncoloured; better/worse follows each metric's direction. Text, Markdown (for a PR
comment) and the rows themselves are produced here; the HTML page lives in html.py (its key
numbers are these rows).
When either report has traffic, the table has the traffic's key numbers too, and a row for every
traffic error cause and status either run saw (0 where a run with traffic saw none; "-" for a run
without traffic: not measured, as for connect figures an older report lacks).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Any

from loopfan.results.checks import (
    METRICS,
    Metric,
    described,
    has_traffic,
    interrupted,
    metric_for,
    report_metrics,
    value_of,
)
from loopfan.traffic.report import protocol_of

NOISE_PCT = 5.0

# The key numbers, in the order people read them.
KEY_METRICS = [
    "established", "failed", "peak_concurrent", "connect_rate.mean", "connect_rate.peak", "time_to_target",
    "connect_latency.p50", "connect_latency.p90", "connect_latency.p99", "connect_latency.p999",
    "connect_latency.p9999", "connect_latency.max", "duration.connect", "cpu", "memory.client", "memory.kernel",
    "loop_lag.max",
]
# The traffic's key numbers, after the connection's, when either report has traffic.
TRAFFIC_KEY_METRICS = [
    "traffic.messages_per_s", "traffic.bytes_in_per_s", "traffic.bytes_out_per_s", "traffic.latency.p50",
    "traffic.latency.p90", "traffic.latency.p99", "traffic.latency.p999", "traffic.latency.p9999",
    "traffic.latency.max", "traffic.ttfb.p50", "traffic.ttfb.p99", "traffic.errors", "traffic.unanswered",
    "traffic.talking.end",
]
# Families with a row per member seen in either report.
_FAMILIES = ("failed.", "traffic.errors.", "traffic.statuses.")


@dataclass(frozen=True, slots=True)
class Row:
    metric: Metric
    base: float | None
    new: float | None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base

    @property
    def delta_pct(self) -> float | None:
        d = self.delta
        if d is None or self.base is None:
            return None
        if self.base == 0:
            return 0.0 if d == 0 else float("inf") if d > 0 else float("-inf")
        return 100.0 * d / abs(self.base)

    def verdict(self, noise_pct: float = NOISE_PCT) -> str:
        """'better', 'worse', 'same' (within noise) or '' (not comparable)."""
        pct = self.delta_pct
        if pct is None:
            return ""
        if abs(pct) < noise_pct:
            return "same"
        up_is_bad = self.metric.lower_is_better
        return "worse" if (pct > 0) == up_is_bad else "better"


def rows(base: dict[str, Any] | None, new: dict[str, Any], names: list[str] | None = None, *,
         traffic: bool = False) -> list[Row]:
    """The comparison table (compare's text and Markdown, the HTML page's key numbers): `names`
    (default KEY_METRICS), then a row per failure cause. `traffic`: when either report has traffic,
    then the traffic's key numbers and a row per error cause and status - each family right after
    the figures it breaks down, so a connection failure's cause is not read as a traffic figure."""
    nm = report_metrics(new)
    bm = report_metrics(base) if base is not None else {}

    def members(prefix: str) -> list[str]:
        return sorted(k for k in {*nm, *bm} if k.startswith(prefix))

    order = [*(names or KEY_METRICS), *members("failed.")]
    if traffic and (has_traffic(base) or has_traffic(new)):
        order += [n for n in TRAFFIC_KEY_METRICS if n not in order]
        order += [*members("traffic.errors."), *members("traffic.statuses.")]
    return [Row(metric_for(n), value_of(bm, n), value_of(nm, n))
            for n in order if n in METRICS or n.startswith(_FAMILIES)]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 1e6:,.1f} MB"
    if unit == "B/s":
        return f"{value / 1e6:,.1f} MB/s"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "%":
        return f"{value:.1f} %"
    return f"{value:,.0f}"


def fmt_delta(row: Row) -> str:
    d, pct = row.delta, row.delta_pct
    if d is None or pct is None:
        return "-"
    sign = "+" if d > 0 else ""
    if row.metric.unit in ("B", "B/s"):
        text = f"{sign}{d / 1e6:,.1f} {'MB' if row.metric.unit == 'B' else 'MB/s'}"
    elif row.metric.unit in ("ms", "s", "%"):
        text = f"{sign}{d:,.3g} {row.metric.unit}"
    else:
        text = f"{sign}{d:,.0f}"
    pct_text = "new" if abs(pct) == float("inf") else f"{sign}{pct:.1f}%"
    return f"{text} ({pct_text})"


# -- what makes two runs not comparable ---------------------------------------------------------
# (interrupted(rep), the signal that stopped a run, is checks.py's: the gates there fail on it)
def partial_note(name: str, rep: dict[str, Any]) -> str:
    """'new.json was interrupted (SIGINT): a partial run, 40,372 of 100,000 connections'."""
    return (f"{name} was interrupted ({interrupted(rep)}): a partial run, {rep.get('established') or 0:,} of "
            f"{rep.get('target_connections') or 0:,} connections")


def unplanned(rep: dict[str, Any]) -> int:
    """Connections a --force run never attempted, past what its plan could hold. They are not in
    `failed` (nothing failed: they were never tried), so a gate 'failed:0' passes over them."""
    return sum(f.get("count") or 0 for f in rep.get("failures") or [] if f.get("cause") == "not-planned")


def traffic_mode(rep: dict[str, Any]) -> str:
    """'hold' for a run without traffic, else the traffic's protocol and model: 'http, closed loop',
    'ws pings, closed loop' (pings and text messages are different loads: a comparison says so)."""
    tr = rep.get("traffic")
    if not tr:
        return "hold"
    return ", ".join(str(v) for v in (protocol_of(rep) if tr.get("kind") else None, tr.get("model")) if v)


def tls_of(rep: dict[str, Any]) -> str | None:
    """The traffic's TLS as a comparison says it: 'plain text', 'TLS: TLSv1.3 TLS_AES_256_GCM_SHA384',
    or None without traffic. A TLS run against a plain one (or TLS 1.2 against 1.3) measures the
    encryption too: the numbers differ for that, not the server."""
    tr = rep.get("traffic")
    if not tr:
        return None
    tls = tr.get("tls")
    if not tls:
        return "plain text"
    return f"TLS: {tls['version']} {tls.get('cipher') or ''}".rstrip() if tls.get("version") else "TLS: no handshake"


def _targets(rep: dict[str, Any]) -> list[str]:
    return sorted((rep.get("plan") or {}).get("targets") or [])


def _some(targets: list[str]) -> str:
    return ", ".join(targets[:2]) + (f" ... ({len(targets):,})" if len(targets) > 2 else "")


def caveats(base: dict[str, Any], new: dict[str, Any], base_name: str = "baseline",
            new_name: str = "new") -> list[str]:
    """Why the two runs may not compare like for like, one line each: an interrupted (partial) run,
    a --force run short of its connections, and a different connection count, target set, traffic
    mode or TLS. Said, not refused: comparing a 20k run with a 100k one can be the point, but it must never
    happen silently."""
    out = [partial_note(name, rep) for name, rep in ((base_name, base), (new_name, new)) if interrupted(rep)]
    out += [f"{name} ran past its plan with --force: {unplanned(rep):,} of {rep.get('target_connections') or 0:,} "
            "connections were never attempted (not counted in failed)"
            for name, rep in ((base_name, base), (new_name, new)) if unplanned(rep)]
    b, n = base.get("target_connections"), new.get("target_connections")
    if b is not None and n is not None and b != n:
        out.append(f"the runs asked for different numbers of connections: {b:,} in {base_name}, {n:,} in {new_name}")
    bt, nt = _targets(base), _targets(new)
    # Two runs against the built-in server: its endpoints are loopfan's choice (one per server
    # process, and a traffic run starts more processes), not a difference in what was asked.
    if bt and nt and _targets_asked(base) != _targets_asked(new):
        out.append(f"the runs had different targets: {_some(bt)} in {base_name}, {_some(nt)} in {new_name}")
    bm, nm = traffic_mode(base), traffic_mode(new)
    if bm != nm:
        out.append(f"the runs differ in traffic: {bm} in {base_name}, {nm} in {new_name}")
    bs, ns = tls_of(base), tls_of(new)
    if bs is not None and ns is not None and bs != ns:
        out.append(f"the runs differ in TLS: {bs} in {base_name}, {ns} in {new_name}")
    return out


_MARK = {"better": "better", "worse": "**worse**", "same": "~", "": ""}


def heading(base_name: str, new_name: str, width: int) -> list[tuple[str, str]]:
    """The text table's heading, one (label, text) line each: which report is the baseline and
    which the new run. Whole paths when they fit `width` after the label; else their common
    directory on a line of its own ("in") and each path from there, the part that tells them apart
    (QA: two 75-character paths as the table's title, "A -> B", wrapped at 80 columns into three
    ragged lines). A path still too long is left to the caller to fold: never cut."""
    lines = [("baseline", base_name), ("new", new_name)]
    if len("baseline  ") + max(len(base_name), len(new_name)) <= width:
        return lines
    try:
        common = os.path.commonpath([os.path.dirname(base_name), os.path.dirname(new_name)])
    except ValueError:  # one absolute, one relative: no directory in common
        return lines
    if common in ("", os.sep):
        return lines
    return [("in", common + os.sep), *((label, os.path.relpath(path, common)) for label, path in lines)]


def markdown(base: dict[str, Any], new: dict[str, Any], gates: list[dict[str, Any]],
             base_name: str = "baseline", new_name: str = "new", noise_pct: float = NOISE_PCT) -> str:
    lines = []
    failed = [g for g in gates if not g["passed"]]
    if gates:
        status = f"{len(failed)} of {len(gates)} gates failed" if failed else f"all {len(gates)} gates passed"
        lines.append(f"### loopfan compare: {'❌' if failed else '✅'} {status}\n")
    else:
        lines.append("### loopfan compare\n")
    lines.append(f"`{base_name}` (baseline) → `{new_name}`; changes under {noise_pct:g}% are marked ~ (noise).\n")
    lines += [f"> **warning:** {c}\n" for c in caveats(base, new, base_name, new_name)]
    lines.append("| metric | baseline | new | change | |")
    lines.append("|---|---:|---:|---:|---|")
    for r in rows(base, new, traffic=True):
        lines.append(f"| {r.metric.name} | {fmt(r.base, r.metric.unit)} | {fmt(r.new, r.metric.unit)} | "
                     f"{fmt_delta(r)} | {_MARK[r.verdict(noise_pct)]} |")
    if gates:
        lines.append("\n| gate | baseline | new | limit | result |")
        lines.append("|---|---:|---:|---:|---|")
        for g in gates:
            unit = g.get("unit") or ""
            lines.append(f"| `{described(g)}` | {fmt(g.get('baseline'), unit)} | {fmt(g.get('actual'), unit)} | "
                         f"{fmt(g.get('limit'), unit)} | {'pass' if g['passed'] else '**FAIL**'} "
                         f"{g.get('detail') or ''} |")
    return "\n".join(lines) + "\n"


def trend_rows(reports: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per report, oldest first, with the numbers a trend is read from."""
    out = []
    for name, rep in sorted(reports, key=lambda nr: nr[1].get("started_at") or 0):
        m = report_metrics(rep)  # (a run whose traffic never ran has no traffic figure: not "0 errors")
        out.append({"name": name, "started_at": rep.get("started_at"), "interrupted": interrupted(rep), **m})
    return out


TREND_COLUMNS = ["established", "failed", "connect_rate.mean", "connect_latency.p50", "connect_latency.p99",
                 "connect_latency.max", "time_to_target"]
# Runs that talked are judged by their traffic too: without these a trend of HTTP runs showed
# connect figures only.
TRAFFIC_TREND_COLUMNS = ["traffic.messages_per_s", "traffic.latency.p50", "traffic.latency.p99", "traffic.errors"]


def trend_columns(table: list[dict[str, Any]]) -> list[str]:
    """The trend's columns: the connection figures, and the traffic's when any run has traffic."""
    talked = any(r.get("traffic.messages_per_s") is not None for r in table)
    return TREND_COLUMNS + (TRAFFIC_TREND_COLUMNS if talked else [])


def summarised(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trend rows the summary is made of: interrupted runs are left out (a partial run's counts
    and rates would drag the median; the table lists them, marked)."""
    return [r for r in table if not r.get("interrupted")]


def trend_last(table: list[dict[str, Any]]) -> str | None:
    """The run trend_summary's 'last' is: the newest run that was not interrupted (not always the
    newest run: it must be said which)."""
    kept = summarised(table)
    return str(kept[-1]["name"]) if kept else None


def trend_caveats(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """As caveats() for two runs, over many: one line per way the runs differ (connection count,
    targets, traffic mode, TLS), naming every run under each value - not only the first two files."""
    out = []
    for what, key in (("asked for different numbers of connections", _count_of),
                      ("had different targets", _targets_asked),
                      ("differ in traffic", traffic_mode),
                      ("differ in TLS", tls_of)):
        groups: dict[str, list[str]] = {}
        for name, rep in reports:
            value = key(rep)
            if value is not None:
                groups.setdefault(value, []).append(name)
        if len(groups) > 1:
            out.append(f"the runs {what}: " + "; ".join(f"{value} in {', '.join(names)}"
                                                         for value, names in groups.items()))
    return out


def _targets_asked(rep: dict[str, Any]) -> str | None:
    """The run's targets as a user asked them: None for the built-in server, whose endpoints are
    loopfan's choice (one per server process, more of them in a traffic run), as in caveats()."""
    targets = _targets(rep)
    return _some(targets) if targets and rep.get("server") is None else None


def _count_of(rep: dict[str, Any]) -> str | None:
    n = rep.get("target_connections")
    return None if n is None else f"{n:,}"


def trend_summary(table: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per metric: min, median, max and the last run's change against the median of the others,
    over the runs that were not interrupted (summarised; the last is trend_last's run)."""
    table = summarised(table)
    out: dict[str, dict[str, float | None]] = {}
    for col in trend_columns(table):
        vals = [r[col] for r in table if r.get(col) is not None]
        if not vals:
            continue
        last = table[-1].get(col)
        others = [r[col] for r in table[:-1] if r.get(col) is not None]
        med_others = statistics.median(others) if others else None
        change = None
        if last is not None and med_others:
            change = 100.0 * (last - med_others) / abs(med_others)
        elif last is not None and med_others == 0:
            # From a median of 0 (no failures, no traffic errors) no percentage exists, but the change
            # must still show: as Row.delta_pct, inf for a rise (said as "+N, the others' median is 0").
            change = 0.0 if last == 0 else math.copysign(math.inf, last)
        out[col] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "last": last,
                    "last_vs_median_pct": change}
    return out
