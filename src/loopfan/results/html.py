"""The self-contained HTML report: one file, inline CSS and SVG, that opens offline.

Rules of this file: the page makes no network request - no scripts, no web fonts, no external
images or stylesheets - and says so to the browser with a Content-Security-Policy that forbids
them (default-src 'none'), so a stray URL would be blocked rather than fetched. Sections come in
a fixed order (SECTIONS, each an <h2 id=...>), which the tests and the screenshot rely on. Every
value from a report is escaped. Pure: a report dict (and an optional baseline) in, a string out.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from loopfan.results import charts
from loopfan.results.checks import decode_histogram
from loopfan.results.compare import NOISE_PCT, fmt, fmt_delta, rows

SECTIONS = [
    ("run", "Run and checks"),
    ("key-numbers", "Key numbers"),
    ("connections", "Connections over time"),
    ("latency", "Connect latency"),
    ("errors", "Errors by cause"),
    ("processes", "Per process and source address"),
    ("health", "Generator health"),
    ("throughput", "Throughput"),
    ("configuration", "Configuration and environment"),
]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:980px;
padding:0 16px 40px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin:18px 0 4px}
h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:0.9em}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#137333;font-weight:600}.fail{color:#c5221f;font-weight:600}.better{color:#137333}.worse{color:#c5221f}
.same{color:#777}.muted{color:#666;font-size:0.9em}.badge{display:inline-block;padding:2px 10px;border-radius:10px;
color:#fff;font-weight:600}.b-pass{background:#137333}.b-fail{background:#c5221f}.b-warn{background:#b06000}
svg{max-width:100%;height:auto}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:0.8em;max-height:420px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: list[str], body: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    th = "".join(f'<th class="{"n" if i in numeric else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    trs = []
    for row in body:
        tds = "".join(f'<td class="{"n" if i in numeric else ""}">{cell}</td>' for i, cell in enumerate(row))
        trs.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="sec-{sid}"><h2 id="{sid}">{_e(title)}</h2>\n{body}\n</section>'


def _verdict(rep: dict[str, Any]) -> tuple[str, str]:
    checks = rep.get("checks") or []
    if rep.get("interrupted"):
        return "b-warn", f"interrupted ({rep['interrupted']}): partial"
    failed_checks = [c for c in checks if not c["passed"]]
    if failed_checks:
        return "b-fail", f"{len(failed_checks)} of {len(checks)} checks failed"
    if rep.get("established", 0) < rep.get("target_connections", 0) or rep.get("failed_total"):
        return "b-fail", "some connections failed"
    return "b-pass", "all connections established" + (f", all {len(checks)} checks passed" if checks else "")


def _checks_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return '<p class="muted">No checks were given (loopfan run --check EXPR).</p>'
    body = []
    for c in checks:
        unit = c.get("unit") or ""
        body.append([
            f"<code>{_e(c['expression'])}</code>",
            _e(fmt(c.get("actual"), unit)),
            _e(fmt(c.get("limit"), unit)) if c.get("limit") is not None else "-",
            f'<span class="{"pass" if c["passed"] else "fail"}">{"pass" if c["passed"] else "FAIL"}</span> '
            f'{_e(c.get("detail") or "")}',
        ])
    return _table(["check", "actual", "limit", "result"], body, {1, 2})


def _run_section(rep: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    ident = rep.get("identity") or {}
    started = rep.get("started_at")
    when = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if started else "-"
    host = ident.get("host") or {}
    cls, text = _verdict(rep)
    facts = [
        ["command", f"<code>{_e(' '.join(rep.get('command') or []))}</code>"],
        ["started", _e(when)],
        ["loopfan", _e(rep.get("loopfan_version", "-"))],
        ["host", _e(f"{host.get('hostname', '-')} ({host.get('system', '')} {host.get('release', '')}, "
                    f"{host.get('machine', '')})")],
        ["target", _e(f"{rep.get('target_connections', 0):,} connections, {rep.get('client_processes', 0)} client "
                      f"+ {rep.get('server_processes', 0)} server processes, {rep.get('sources_used', 0):,} "
                      "source addresses")],
    ]
    if baseline is not None:
        facts.append(["baseline", _e(" ".join(baseline.get("command") or [])) + " - started " + _e(
            dt.datetime.fromtimestamp(baseline.get("started_at") or 0, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))])
    lim = rep.get("first_limit_hit")
    extra = ""
    if lim:
        extra = (f'<p class="fail">First limit hit: {_e(lim["resource"])} ({_e(lim["cause"])} '
                 f'x{lim["count"]:,}); fix: {_e(lim["fix"])}</p>')
    return (f'<p><span class="badge {cls}">{_e(text)}</span></p>'
            + _table(["", ""], facts) + extra + _checks_table(rep.get("checks") or []))


def _key_numbers(rep: dict[str, Any], baseline: dict[str, Any] | None, noise_pct: float) -> str:
    body = []
    for r in rows(baseline, rep):
        cells = [_e(r.metric.name), _e(fmt(r.new, r.metric.unit))]
        if baseline is not None:
            verdict = r.verdict(noise_pct)
            css = verdict if verdict in ("better", "worse") else "same"
            cells += [_e(fmt(r.base, r.metric.unit)), f'<span class="{css}">{_e(fmt_delta(r))}</span>']
        cells.append(f'<span class="muted">{_e(r.metric.help)}</span>')
        body.append(cells)
    head = ["metric", "this run"] + (["baseline", "change"] if baseline is not None else []) + [""]
    note = ""
    if baseline is not None:
        note = (f'<p class="muted">Changes smaller than {noise_pct:g}% are shown grey (noise); green is better, red '
                "worse. Latency figures come from the full-run HDR histograms.</p>")
    return note + _table(head, body, {1, 2, 3} if baseline is not None else {1})


def _latency_table(rep: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    hist = decode_histogram(rep)
    base = decode_histogram(baseline) if baseline is not None else None
    levels = [("min", None), ("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0),
              ("p99.9", 99.9), ("p99.99", 99.99), ("max", None)]

    def value(h: Any, name: str, p: float | None) -> str:
        if h is None or not h.get_total_count():
            return "-"
        us = h.get_min_value() if name == "min" else h.get_max_value() if name == "max" else \
            h.get_value_at_percentile(p)
        return fmt(us / 1000, "ms")

    body = [[_e(name), _e(value(hist, name, p))] + ([_e(value(base, name, p))] if baseline is not None else [])
            for name, p in levels]
    count = hist.get_total_count() if hist is not None else 0
    return (_table(["percentile", "this run"] + (["baseline"] if baseline is not None else []), body, {1, 2})
            + f'<p class="muted">{count:,} connects measured (HDR histogram, 3 significant digits).</p>')


def _errors_table(rep: dict[str, Any]) -> str:
    failures = rep.get("failures") or []
    if not failures:
        return '<p class="pass">No connection failed.</p>'
    body = [[_e(f["cause"]), _e(f"{f['count']:,}"), _e(f["meaning"]), _e(f["fix"])] for f in failures]
    return _table(["cause", "count", "meaning", "fix"], body, {1})


def _last(col: list[Any]) -> Any:
    known = [v for v in col if v is not None]
    return known[-1] if known else None


def _max(col: list[Any]) -> Any:
    known = [v for v in col if v is not None]
    return max(known) if known else None


def _processes_table(series: dict[str, Any]) -> str:
    items = (series.get("processes") or {}).get("items") or []
    body = []
    for p in items:
        fails = sum(v or 0 for v in p["failures_per_s"]) * (series.get("interval_s") or 1) * \
            ((series.get("processes") or {}).get("stride") or 1)
        fd_max = _max(p["fds"])
        body.append([
            _e(f"{p['role']} #{p['index']}"), _e(p["pid"]), _e(", ".join(p["where"])),
            _e(f"{_max(p['open']) or 0:,}"), _e(f"~{fails:,.0f}"),
            _e(f"{fd_max:,} / {p['fd_limit']:,}" if fd_max is not None and p["fd_limit"] else "-"),
            _e(fmt(_max(p["cpu_pct"]), "%")), _e(fmt(_max(p["rss_bytes"]), "B")),
            _e(fmt(_max(p["loop_lag_ms"]), "ms")),
        ])
    if not body:
        return '<p class="muted">No per-process samples.</p>'
    return _table(["process", "pid", "addresses", "peak open", "failures", "peak fds / limit", "peak CPU",
                   "peak memory", "worst loop lag"], body, {3, 4, 5, 6, 7, 8})


def _config_section(rep: dict[str, Any]) -> str:
    ident = rep.get("identity") or {}
    plan = dict(rep.get("plan") or {})
    if len(plan.get("groups") or []) > 50:
        plan["groups"] = [*plan["groups"][:50], f"... {len(plan['groups']) - 50} more groups in report.json"]
    if len(plan.get("sources") or []) > 50:
        plan["sources"] = [*plan["sources"][:50], f"... {len(plan['sources']) - 50} more in report.json"]
    facts = (ident.get("host") or {}).get("facts")
    parts = [
        "<h3>Run configuration</h3><pre>" + _e(json.dumps(ident.get("config"), indent=1)) + "</pre>",
        "<h3>Host</h3><pre>" + _e(json.dumps({k: v for k, v in (ident.get("host") or {}).items() if k != "facts"},
                                             indent=1)) + "</pre>",
    ]
    if facts:
        parts.append("<h3>Host facts</h3><pre>" + _e(json.dumps(facts, indent=1)) + "</pre>")
    parts.append("<h3>Plan</h3><pre>" + _e(json.dumps(plan, indent=1)) + "</pre>")
    parts.append(f'<p class="muted">Python {_e(ident.get("python", "-"))}, loopfan '
                 f'{_e(rep.get("loopfan_version", "-"))}, report schema {_e(rep.get("schema"))}.</p>')
    return "\n".join(parts)


def render(rep: dict[str, Any], baseline: dict[str, Any] | None = None, *, noise_pct: float = NOISE_PCT,
           title: str | None = None) -> str:
    """The whole page for one report (and a baseline to compare against, if given)."""
    series = rep.get("series")
    no_series = '<p class="muted">This report has no time series.</p>'
    hist = decode_histogram(rep)
    base_hist = decode_histogram(baseline) if baseline is not None else None
    reach = (series or {}).get("time_to_target_s") or {}
    reach_text = ", ".join(f"{k} in {v:.2f} s" for k, v in reach.items() if v is not None) or "target not reached"
    body = {
        "run": _run_section(rep, baseline),
        "key-numbers": _key_numbers(rep, baseline, noise_pct),
        "connections": (charts.connections(series) + charts.rates(series)
                        + f'<p>Time to reach the target: {_e(reach_text)}.</p>') if series else no_series,
        "latency": ((charts.latency_over_time(series) if series else no_series)
                    + charts.hdr_percentiles(hist, base_hist) + _latency_table(rep, baseline)),
        "errors": (charts.failures(series) if series and rep.get("failed_total") else "") + _errors_table(rep),
        "processes": ((charts.processes(series) + _processes_table(series)) if series else no_series)
        + '<p class="muted">Each client process owns a set of source addresses: a process whose failures climb '
          "with EADDRNOTAVAIL@connect has run its addresses out of ports.</p>",
        "health": charts.health(series) if series else no_series,
        "throughput": charts.throughput(series) if series else no_series,
        "configuration": _config_section(rep),
    }
    page_title = title or f"loopfan report: {rep.get('established', 0):,} of {rep.get('target_connections', 0):,}"
    sections = "\n".join(_section(sid, name, body[sid]) for sid, name in SECTIONS)
    nav = " · ".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_e(page_title)}</h1><p class=\"muted\">{nav}</p>\n{sections}\n</body></html>\n"
    )
