"""The self-contained HTML report: one file, inline CSS and SVG, that opens offline.

Rules of this file: the page makes no network request - no scripts, no web fonts, no external
images or stylesheets - and says so to the browser with a Content-Security-Policy that forbids
them (default-src 'none'), so a stray URL would be blocked rather than fetched. Sections come in
a fixed order (SECTIONS, each an <h2 id=...>), which the tests and the screenshot rely on; a run
that sent traffic adds TRAFFIC_SECTION after the connect latency. Every value from a report is
escaped. Pure: a report dict (and an optional baseline) in, a string out.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from loopfan.engine.report import interrupted_by, kernel_line, not_held_by_server, not_planned
from loopfan.results import charts
from loopfan.results.checks import decode_histogram, described
from loopfan.results.compare import NOISE_PCT, fmt, fmt_delta, rows
from loopfan.traffic.report import (
    behind_schedule,
    closed_loop_reading,
    end_reason,
    first_error_line,
    handshake_line,
    handshakes_of,
    heavy_reopens,
    lost_before_traffic,
    nothing_to_talk_over,
    pipeline_of,
    protocol_of,
    reopened_line,
    tls_line,
)
from loopfan.wording import counted, traffic_nouns

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
# Only a run that sent traffic has this section (after "latency"): a run without keeps its page as it was.
TRAFFIC_SECTION = ("traffic", "Traffic")

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


def page_sections(rep: dict[str, Any]) -> list[tuple[str, str]]:
    """SECTIONS for this report: with Traffic after Connect latency when the run sent traffic."""
    if not rep.get("traffic"):
        return SECTIONS
    at = [sid for sid, _ in SECTIONS].index("latency") + 1
    return [*SECTIONS[:at], TRAFFIC_SECTION, *SECTIONS[at:]]


def _verdict(rep: dict[str, Any]) -> tuple[str, str]:
    cls, text = _connections_verdict(rep)
    tr = rep.get("traffic")
    if not tr:
        return cls, text
    if nothing_to_talk_over(tr):
        return ("b-fail" if cls == "b-pass" else cls), text + "; traffic not run: no connection was open"
    # Traffic errors make `run` exit 1 just as failed connections do, so they turn a pass red too.
    errors = tr.get("errors_total") or 0
    per_s = tr.get("messages_per_s")
    rate = f"{per_s:,.0f} {traffic_nouns(tr.get('kind'))[0]}/s, " if per_s is not None else ""
    text += f"; traffic {rate}" + (f"{errors:,} errors" if errors else "no errors")
    if errors and cls == "b-pass":
        cls = "b-fail"
    share = behind_schedule(tr)
    if share is not None:
        # Amber, not red: exit 0 as wrk2 and k6 (the latency holds the verdict; --check traffic.unsent==0 gates it).
        text += f", but {share:.1%} of the rate requested"
        if cls == "b-pass":
            cls = "b-warn"
    heavy = heavy_reopens(tr)
    if heavy:
        # Amber too: nothing failed, but the load was new connections as much as requests
        # (--check traffic.reopened==0 gates it).
        text += f"; {heavy}"
        if cls == "b-pass":
            cls = "b-warn"
    return cls, text


def _connections_verdict(rep: dict[str, Any]) -> tuple[str, str]:
    checks = rep.get("checks") or []
    if rep.get("interrupted"):
        # (the signals that came while it closed too, as the text report's head says them)
        return "b-warn", f"interrupted ({interrupted_by(rep)}): partial"
    failed_checks = [c for c in checks if not c["passed"]]
    if failed_checks:
        return "b-fail", f"{len(failed_checks)} of {len(checks)} checks failed"
    not_held = not_held_by_server(rep.get("kernel_check"))
    if not_held:  # (as the terminal says it: the client's count alone would read as a pass)
        return "b-fail", not_held
    unplanned = not_planned(rep)
    if unplanned:
        return "b-fail", f"{unplanned:,} connections never attempted (--force past the plan's limit)"
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
            f"<code>{_e(described(c))}</code>",
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
                      f"+ {rep.get('server_processes', 0)} server processes, "
                      f"{counted(rep.get('sources_used', 0), 'source address')}")],
    ]
    if rep.get("kernel_check"):
        facts.append(["kernel", _e(kernel_line(rep["kernel_check"]))])
    elif rep.get("kernel_check_skipped"):
        facts.append(["kernel", _e(f"not asked: {rep['kernel_check_skipped']}")])
    if rep.get("traffic"):
        facts.append(["traffic", _e(_traffic_summary(rep))])
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
    """compare's table (its traffic rows when either run talked): the page and `loopfan compare` show
    the same rows, under the names --check and --gate take."""
    body = []
    for r in rows(baseline, rep, traffic=True):
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


def _errors_section(rep: dict[str, Any], series: dict[str, Any] | None) -> str:
    connections = (charts.failures(series) if series and rep.get("failed_total") else "")
    tr = rep.get("traffic")
    if not tr:
        return connections + _errors_table(rep)
    # Two kinds of error, said apart: a connection that failed to open or was lost, and an error in the
    # traffic over an established one (a 5xx, a bad reply). "No connection failed" above 1,000 5xx
    # errors would read as a clean run.
    return ("<h3>Connection failures</h3>" + connections + _connection_failures(rep, tr)
            + "<h3>Traffic errors</h3>" + _traffic_errors(rep, tr, series))


def _connection_failures(rep: dict[str, Any], tr: dict[str, Any]) -> str:
    if rep.get("failures"):
        return _errors_table(rep)
    css = "muted" if tr.get("errors_total") else "pass"
    return f'<p class="{css}">None: every connection was established and none was lost.</p>'


def _traffic_errors(rep: dict[str, Any], tr: dict[str, Any], series: dict[str, Any] | None) -> str:
    total = tr.get("errors_total") or 0
    causes = tr.get("error_causes") or [{"cause": c, "count": n, "meaning": "", "fix": ""}
                                        for c, n in (tr.get("errors") or {}).items()]
    warmup = f'<p class="muted">And {_e(_warmup_errors(tr))}.</p>' if tr.get("warmup_errors") else ""
    if not total and not causes:
        return '<p class="pass">None: every reply was complete and as expected.</p>' + warmup
    chart = ""
    if series and charts.has_data(series.get("errors_per_s"), *(series.get("errors_by_cause_per_s") or {}).values()):
        chart = charts.traffic_errors(series)
    body = [[_e(c["cause"]), _e(f"{c['count']:,}"), _e(c.get("meaning") or ""), _e(c.get("fix") or "")]
            for c in causes]
    return (f'<p class="fail">{total:,} errors in the traffic over established connections.</p>' + chart
            + _table(["cause", "count", "meaning", "fix"], body, {1}) + warmup + _error_sources(rep, tr))


def _error_sources(rep: dict[str, Any], tr: dict[str, Any], top: int = 10) -> str:
    """The source addresses with the most traffic errors: a server refusing some clients shows here."""
    by_source = sorted((tr.get("errors_by_source") or {}).items(), key=lambda kv: -kv[1])
    if not by_source:
        return ""
    shown = by_source[:top]
    n_sources = tr.get("sources_with_errors") or len(by_source)
    body = [[f"<code>{_e(src)}</code>", _e(f"{n:,}")] for src, n in shown]
    text = f"Errors came from {n_sources:,} source address{'es' if n_sources > 1 else ''}"
    text += f"; the {len(shown)} with the most:" if n_sources > len(shown) else ":"
    hint = ""
    if n_sources < (rep.get("sources_used") or 0):
        hint = (f'<p class="muted">{n_sources:,} of the run\'s {rep["sources_used"]:,} source addresses: errors on '
                "only some of them point to a server that refuses those clients (an allow/deny list, a "
                "per-address limit).</p>")
    return f"<p>{_e(text)}</p>" + _table(["source address", "traffic errors"], body, {1}) + hint


def _traffic_summary(rep: dict[str, Any]) -> str:
    """One line: protocol, model, window - as the terminal report's first traffic line."""
    tr = rep["traffic"]
    window = tr.get("window_s") or 0.0
    warmup = tr.get("warmup_s") or 0.0
    return (f"{protocol_of(rep)}, {tr.get('model', '-')}, {window:.2f} s measured"
            + (f" after {warmup:g} s warm-up" if warmup else ""))


def _traffic_model(rep: dict[str, Any]) -> str:
    """The load model in words; the open model's rate comes from the run's configuration, since the
    traffic block names only the model."""
    tr = rep["traffic"]
    cfg = (((rep.get("identity") or {}).get("config") or {}).get("traffic")) or {}
    rate = cfg.get("rate_per_conn_s") or 0.0
    sent = traffic_nouns(tr.get("kind"))[0]
    if rate > 0:
        # requested_per_s counts the connections that began talking; older reports have only the plan's.
        n = tr.get("connections_talking_at_start") if tr.get("requested_per_s") else rep.get("target_connections")
        total = tr.get("requested_per_s") or rate * (n or 0)
        return (f"open model: {rate:,.6g} {sent}/s per connection (~{total:,.0f}/s over {n or 0:,} connections); "
                "latency from the scheduled send time, so time spent waiting to send counts")
    if tr.get("model") != "closed loop":
        return str(tr.get("model", "-"))
    pipeline = cfg.get("pipeline") or 1
    one_sent, one_answer = traffic_nouns(tr.get("kind"), one=True)
    return (f"closed loop: each connection sends its next {one_sent} when the {one_answer} arrives"
            + (f", {pipeline} in flight (--pipeline {pipeline})" if pipeline > 1 else "")
            + "; latency from the send")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _sends_only(rep: dict[str, Any]) -> bool:
    """raw traffic with nothing to expect: a message is done when written, and messages/s counts sends."""
    cfg = (((rep.get("identity") or {}).get("config") or {}).get("traffic")) or {}
    return cfg.get("kind") == "raw" and cfg.get("expect") == "none"


def _traffic_facts(rep: dict[str, Any]) -> str:
    tr = rep["traffic"]
    window = tr.get("window_s") or 0.0
    warmup = tr.get("warmup_s") or 0.0
    facts = [
        ["protocol", _e(protocol_of(rep))],
        ["model", _e(_traffic_model(rep))],
        ["measured", _e("nothing: the traffic did not run, no connection was open when it was to begin"
                        if nothing_to_talk_over(tr) else
                        f"{window:.2f} s window" + (f" after {warmup:g} s warm-up" if warmup else ", no warm-up"))],
        *_traffic_volume_facts(rep),
        *_traffic_health_facts(rep),
    ]
    reading = closed_loop_reading({"kind": tr.get("kind"), "model": tr.get("model"),
                                   "latency_ms": tr.get("latency_ms") or {},
                                   "messages_per_s": tr.get("messages_per_s"), "window_s": tr.get("window_s"),
                                   "connections_talking_at_start": tr.get("connections_talking_at_start"),
                                   "connections_talking_at_end": tr.get("connections_talking_at_end")},
                                  pipeline_of(rep))
    if reading:
        facts.append(["reading", _e(reading)])
    if tr.get("hdr_log"):
        facts.append(["HDR log", f"<code>{_e(tr['hdr_log'])}</code>"])
    return _table(["", ""], facts)


def _traffic_volume_facts(rep: dict[str, Any]) -> list[list[str]]:
    """Messages, bytes, replies and statuses: what went over the connections."""
    tr = rep["traffic"]
    bytes_in, bytes_out = tr.get("bytes_in_per_s"), tr.get("bytes_out_per_s")
    sent, answers = traffic_nouns(tr.get("kind"))
    done = f"{sent} sent" if _sends_only(rep) else f"{answers} completed"
    # Older reports have no sent_in_window: they give the whole run's count instead.
    replies = f"{tr.get('replies_in_window', 0):,} {answers}"
    if "sent_in_window" in tr:
        replies += f" and {tr['sent_in_window']:,} {sent} sent in the window"
    replies += (f"; over the whole run (warm-up and drain included) {tr.get('sent', 0):,} sent, "
                f"{tr.get('replies', 0):,} answered")
    facts = [
        [sent, _e(f"{fmt(tr.get('messages_per_s'), '/s')} ({done} inside the window)")],
        ["bytes", _e(f"in {fmt(bytes_in, 'B')}/s, out {fmt(bytes_out, 'B')}/s" if bytes_in is not None else "-")],
        ["replies", _e(replies)],
    ]
    if tr.get("statuses"):
        facts.append(["statuses", _e(_counts(tr["statuses"]) + (" (after the warm-up)" if tr.get("warmup_s") else ""))])
    if tr.get("warmup_statuses"):
        facts.append(["warm-up statuses", _e(_counts(tr["warmup_statuses"]))])
    return facts


def _traffic_health_facts(rep: dict[str, Any]) -> list[list[str]]:
    """Errors, what was left at the end and the connections still talking: how the traffic went."""
    tr = rep["traffic"]
    errors = tr.get("errors_total") or 0
    facts = [["errors", f'<a href="#errors">{_e(f"{errors:,}")}</a>' if errors else "0"]]
    if tr.get("warmup_errors"):
        facts.append(["warm-up errors", _e(_warmup_errors(tr))])
    unanswered, unsent = tr.get("unanswered_at_end", 0), tr.get("unsent_at_end", 0)
    end_text = f"{unanswered:,} unanswered, {unsent:,} due but not sent"
    if unanswered or unsent:
        end_text += f" ({end_reason(tr)})"
    if tr.get("unsent_in_latency"):
        end_text += f"; {tr['unsent_in_latency']:,} of those are in the latency at their age at the end (a lower bound)"
    facts.append(["at the end", _e(end_text)])
    if tr.get("lost_in_flight"):
        facts.append(["lost", _e(f"{tr['lost_in_flight']:,} {traffic_nouns(tr.get('kind'))[0]} in flight on "
                                 "connections that ended, "
                                 "never answered")])
    reopened = reopened_line(tr)
    if reopened:
        facts.append(["reopened", _e(reopened)])
    established = rep.get("established", 0)
    start, end = tr.get("connections_talking_at_start", 0), tr.get("connections_talking_at_end", 0)
    talking = f"{start:,} at the start, {end:,} at the end (of {established:,} established)"
    lost_before = lost_before_traffic(tr, rep)
    if lost_before:
        talking += f"; {lost_before:,} were closed by the server before the traffic began"
    if tr.get("ws_handshakes_interrupted"):
        talking += (f"; {tr['ws_handshakes_interrupted']:,} were still in their {handshakes_of(tr) or 'opening'} "
                    "handshakes at the interrupt")
    facts.append(["connections talking", _e(talking)])
    if tr.get("tls"):
        facts.append(["tls", _e(tls_line(tr["tls"]))])
    if tr.get("handshake_ms"):
        facts.append(["handshake", _e(handshake_line(tr))])
    first_error = first_error_line(tr)
    if first_error:
        facts.append(["first error", _e(first_error)])
    return facts


def _warmup_errors(tr: dict[str, Any]) -> str:
    warm = tr.get("warmup_errors") or {}
    return f"{sum(warm.values()):,} during the warm-up, not counted in the errors: {_counts(warm)}"


_TRAFFIC_LEVELS = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("p99.99", "p9999"),
                   ("max", "max"), ("mean", "mean")]


def _traffic_latency_table(tr: dict[str, Any], base: dict[str, Any] | None) -> str:
    """Request/response latency and time to first byte, with the baseline's beside them when it had
    traffic too (as the connect latency table shows its baseline)."""
    sources = [("latency", tr.get("latency_ms") or {}), ("first byte", tr.get("ttfb_ms") or {})]
    if base is not None:
        sources += [("baseline latency", base.get("latency_ms") or {}),
                    ("baseline first byte", base.get("ttfb_ms") or {})]
    body = [[_e(name)] + [_e(fmt(values.get(key), "ms")) for _, values in sources] for name, key in _TRAFFIC_LEVELS]
    samples = tr.get("samples") or 0
    sent, one_answer = traffic_nouns(tr.get("kind"))[0], traffic_nouns(tr.get("kind"), one=True)[1]
    return (_table(["percentile", *[head for head, _ in sources]], body, set(range(1, len(sources) + 1)))
            + f'<p class="muted">{samples:,} {sent} measured (those started inside the window): latency until '
              f"the whole {one_answer} had arrived, first byte until its first byte had. HDR histograms merged "
              "over the worker processes, 3 significant digits.</p>")


# Per-interval traffic charts are drawn only from columns a report has and filled: older reports have
# no message latency columns, and their messages_per_s column is all zeros.
def _messages_chart(tr: dict[str, Any], series: dict[str, Any]) -> str:
    if not charts.has_data(series.get("messages_per_s")):
        return ""
    return charts.messages(series, tr.get("messages_per_s"), traffic_nouns(tr.get("kind"))[0])


def _message_latency_chart(tr: dict[str, Any], series: dict[str, Any]) -> str:
    lat = series.get("message_latency_ms") or {}
    if not charts.has_data(*[lat.get(k) for k, _ in charts.LATENCY_KEYS]):
        return ""
    return charts.message_latency_over_time(series, *traffic_nouns(tr.get("kind"), one=True))


def _traffic_section(rep: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    tr = rep["traffic"]
    series = rep.get("series") or {}
    base = (baseline or {}).get("traffic") or None
    messages, latency = _messages_chart(tr, series), _message_latency_chart(tr, series)
    note = "" if messages or latency else (
        '<p class="muted">The time series of this report has no per-interval traffic figures.</p>')
    return (_traffic_facts(rep) + messages + note + "<h3>Latency</h3>" + latency
            + _traffic_latency_table(tr, base))


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
            _e(f"{_max(p['open']) or 0:,}"), _e(f"~{fails:,.0f}" if round(fails) else "0"),
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
                        + f'<p>Time to reach the target open at once: {_e(reach_text)}.</p>') if series else no_series,
        "latency": ((charts.latency_over_time(series) if series else no_series)
                    + charts.hdr_percentiles(hist, base_hist) + _latency_table(rep, baseline)),
        "errors": _errors_section(rep, series),
        "processes": ((charts.processes(series) + _processes_table(series)) if series else no_series)
        + '<p class="muted">Each client process owns a set of source addresses: a process whose failures climb '
          "with EADDRNOTAVAIL@connect has run its addresses out of ports.</p>",
        "health": charts.health(series) if series else no_series,
        "throughput": (charts.throughput(series, traffic_nouns((rep.get("traffic") or {}).get("kind"))[0])
                       if series else no_series),
        "configuration": _config_section(rep),
    }
    if rep.get("traffic"):
        body["traffic"] = _traffic_section(rep, baseline)
    page_title = title or f"loopfan report: {rep.get('established', 0):,} of {rep.get('target_connections', 0):,}"
    sections = "\n".join(_section(sid, name, body[sid]) for sid, name in page_sections(rep))
    nav = " · ".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in page_sections(rep))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{_e(page_title)}</h1><p class=\"muted\">{nav}</p>\n{sections}\n</body></html>\n"
    )
