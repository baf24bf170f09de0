"""The run report: a RunResult as a JSON-able dict (schema loopfan.report/1) and as terminal text.

Rules of this file: pure functions of the result. Every failure cause in the report carries its
meaning and its fix; numbers keep their unit in their name (_ms, _s, _bytes, _per_s). The flat
top-level keys are the summary (kept stable for scripts); "identity", "series" and "histograms"
hold the rest. The schema is src/loopfan/results/report.schema.json (docs/report.md): a key added
here is added there, in the same commit.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from typing import Any

from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from loopfan import __version__
from loopfan.engine.causes import explain
from loopfan.engine.runner import (
    HIST_DIGITS,
    HIST_HIGHEST_US,
    HIST_LOWEST_US,
    KERNEL_SETTLE_MAX_S,
    KERNEL_SETTLE_S,
    RunResult,
)
from loopfan.hostfacts import HostFacts
from loopfan.pools import Endpoint
from loopfan.redact import redacted_command, redacted_headers
from loopfan.render import counted, plan_to_dict
from loopfan.results.checks import described
from loopfan.traffic.config import escape
from loopfan.traffic.report import report_traffic, traffic_renderables
from loopfan.wireshark import address_filter, connection_filter

REPORT_SCHEMA = "loopfan.report/1"

# A failure cause that points at a host limit: the resource to name in `first_limit_hit`.
_LIMIT_OF_CAUSE = {
    "EADDRNOTAVAIL@connect": "ephemeral ports",
    "EADDRNOTAVAIL@bind": "loopback addresses",
    "EADDRINUSE": "ephemeral ports",
    "EMFILE": "open files per process",
    "ENFILE": "fs.file-max",
    "ENOBUFS": "memory",
    "ENOMEM": "memory",
    "ETIMEDOUT": "accept queue (somaxconn / tcp_max_syn_backlog)",
}


def _percentiles_ms(result: RunResult) -> dict[str, float | None]:
    h = result.connect_latency
    if h.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "p999": None, "p9999": None, "max": None}
    q = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}
    out: dict[str, float | None] = {k: h.get_value_at_percentile(v) / 1000 for k, v in q.items()}
    out["max"] = h.get_max_value() / 1000
    return out


def first_limit_hit(result: RunResult, facts: HostFacts | None = None) -> dict[str, Any] | None:
    causes = sorted(result.client.failed.items(), key=lambda kv: -kv[1])
    for cause, count in causes:
        if cause in _LIMIT_OF_CAUSE and count:
            own = _own_backlog(result, facts) if cause == "ETIMEDOUT" else None
            if own is not None:
                return {"cause": cause, "count": count, **own}
            c = explain(cause)
            return {"resource": _LIMIT_OF_CAUSE[cause], "cause": cause, "count": count, "fix": c.fix}
    short = result.plan.request.connections - result.plan.connections
    lim = result.plan.first_limit
    if short > 0 and lim is not None:
        # --force ran a plan that could not hold N: the plan's own first limit is what stopped it.
        return {"resource": lim.resource, "cause": "not-planned", "count": short, "fix": lim.fix}
    return None


def _own_backlog(result: RunResult, facts: HostFacts | None) -> dict[str, str] | None:
    """Timed-out connects with the target's own listen backlog below somaxconn: raising somaxconn
    would change nothing (QA: a server listening with backlog 8 was told to raise somaxconn)."""
    somaxconn = facts.somaxconn if facts is not None else None
    backlogs = [ln.backlog for ln in result.target_listeners or ()]
    if not backlogs or somaxconn is None or min(backlogs) >= somaxconn:
        return None
    smallest = min(backlogs)
    return {
        "resource": f"the server's listen backlog ({smallest:,})",
        "fix": f"the server asks listen() for a backlog of {smallest:,} (somaxconn is {somaxconn:,}, not the "
               "limit): raise the server's own backlog (nginx: listen ... backlog=N), check that it keeps "
               "accepting (see the kernel line), or pace with --connect-rate",
    }


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples, sets, enums and bytes as JSON values (config and host facts in the report)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):  # a message, a body: as --message takes it, not Python's b'...'
        return escape(value)
    return str(value)


def histogram_dict(hist: Any) -> dict[str, Any]:
    """A full-run HDR histogram in the standard compressed encoding (base64 of the zlib'd V2
    encoding, as HdrHistogram's Java/C/Python libraries read it): exact percentiles later."""
    return {
        "unit": "us",
        "encoding": "hdrhistogram-v2-compressed-base64",
        "lowest_trackable": HIST_LOWEST_US,
        "highest_trackable": HIST_HIGHEST_US,
        "significant_digits": HIST_DIGITS,
        "count": hist.get_total_count(),
        "data": hist.encode().decode("ascii"),
    }


def identity(result: RunResult, argv: list[str], facts: HostFacts | None) -> dict[str, Any]:
    return {
        "loopfan_version": __version__,
        "command": argv,
        "started_at": result.started_at,
        "python": platform.python_version(),
        "host": {
            "hostname": platform.node(),
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "facts": jsonable(facts) if facts is not None else None,
        },
        "config": _without_secrets(jsonable(result.config)),
    }


def _without_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """The run's configuration with credential header values replaced (redact.py)."""
    traffic = config.get("traffic")
    if isinstance(traffic, dict) and traffic.get("headers"):
        config = {**config, "traffic": {**traffic, "headers": redacted_headers(traffic["headers"])}}
    return config


# Failed connections listed with their 4-tuple in the report (the counts by cause are complete).
FAILED_LISTED = 200


def _kernel_check(result: RunResult) -> dict[str, Any] | None:
    """Our count of open connections against the kernel's own socket table, read once the ramp
    is done (`ss`, filtered in the kernel by the targets' addresses and ports: seconds even at a
    million). Against another server the client side also counts that server's other clients on
    this host, if any. The server side is counted whatever the server (every target is on this
    host): fewer there than on the client side are half-open connections.
    """
    if result.kernel_client_side is None or result.open_at_peak is None:
        return None
    expected = result.open_at_peak
    after = result.open_after_count
    client = result.kernel_client_side
    closing = result.kernel_client_closing or 0
    # Our count was read before the kernel's and again after it (from fresh reports): connections
    # closed (or opened) meanwhile move it, so the kernel's count agrees anywhere between the two.
    # Connections the server closed a moment before the count are CLOSE-WAIT on our side until a
    # worker reads the close: still open in our count, no longer ESTABLISHED in the kernel's.
    low, high = min(expected, after if after is not None else expected), max(expected, after or 0)
    client_agrees = client <= high and client + closing >= low
    listeners = result.target_listeners
    return {
        "open_connections": expected,
        "open_connections_after": after,
        "kernel_client_side": client,
        "kernel_client_closing": result.kernel_client_closing,
        "kernel_server_side": result.kernel_server_side,
        "half_open": result.half_open,
        "kernel_server_syn_recv": result.kernel_server_syn_recv,
        "accept_queued": None if listeners is None else sum(ln.queued for ln in listeners),
        "never_accepted": result.never_accepted,
        "agrees": client_agrees and not result.half_open and not result.never_accepted,
    }


def _listeners(result: RunResult) -> list[dict[str, Any]] | None:
    if result.target_listeners is None:
        return None
    return [{"local": ln.local, "accept_queued": ln.queued, "backlog": ln.backlog}
            for ln in result.target_listeners]


def report_dict(result: RunResult, *, argv: list[str] | None = None, facts: HostFacts | None = None
                ) -> dict[str, Any]:
    plan = result.plan
    c = result.client
    connect_s = result.phases_s.get("connect") or 0.0
    # Established by the end of the ramp: an interrupted ramp's connects in flight land after it.
    ramp_established = c.established if result.ramp_established is None else result.ramp_established
    mean_rate = ramp_established / connect_s if connect_s > 0 else 0.0
    failures = [
        {"cause": cause, "count": n, "meaning": explain(cause).meaning, "fix": explain(cause).fix}
        for cause, n in sorted(c.failed.items(), key=lambda kv: -kv[1])
    ]
    not_planned = plan.request.connections - plan.connections
    if not_planned > 0 and plan.first_limit is not None:
        lim = plan.first_limit
        failures.append({
            "cause": "not-planned", "count": not_planned,
            "meaning": f"never attempted: with --force the plan held only {plan.connections:,} ({lim.resource}: "
                       f"{lim.detail})",
            "fix": lim.fix,
        })
    server: dict[str, Any] | None = None
    if result.server is not None:
        server = {
            "accepted": result.server.established,
            "peak_open": result.server.peak_open,
            "agrees_with_client": result.server.established == c.established,
            "failed": dict(result.server.failed),
        }
    mem = result.memory
    command = redacted_command(argv if argv is not None else sys.argv)  # (no token travels with a report)
    series = result.series.as_dict() if result.series is not None else None
    return {
        "schema": REPORT_SCHEMA,
        "loopfan_version": __version__,
        "command": command,
        "started_at": result.started_at,
        "target_connections": plan.request.connections,
        "established": c.established,
        "peak_concurrent": c.peak_open,
        "failed": dict(c.failed),
        "failed_total": c.failed_total,
        "failures": failures,
        # The peak is sampled in 1 s windows: a ramp shorter than one window has none (it read
        # 0/s), and the fastest of the windows covering a ramp is never slower than its mean.
        "connect_rate_per_s": {"mean": round(mean_rate, 1), "peak": round(max(result.peak_rate_per_s, mean_rate), 1)},
        "connect_latency_ms": _percentiles_ms(result),
        "duration_s": {k: round(v, 3) for k, v in result.phases_s.items()},
        "client_processes": len(plan.client_shards),
        "server_processes": len(plan.server_shards),
        "memory_bytes": {
            "user_client": mem.get("user_client"),
            "user_server": mem.get("user_server"),
            "kernel": mem.get("kernel"),
            "user_parent": mem.get("user_parent"),
            **({"user_client_traffic": mem["user_client_traffic"]} if "user_client_traffic" in mem else {}),
        },
        "cpu_s": round(result.cpu_s, 3),
        "sources_used": len(plan.sources),
        "first_limit_hit": first_limit_hit(result, facts),
        "kernel_check": _kernel_check(result),
        "kernel_check_skipped": result.kernel_check_skipped,
        "hold_ended_early": result.hold_ended_early,
        "isolated_clients": [
            {"source": g.source, "target": str(g.target), "display_filter": address_filter(g.source),
             "capture_filter": f"host {g.source}"}
            for g in plan.isolated
        ],
        "failures_by_source": [
            {"source": src, "failed": n, "display_filter": address_filter(src)}
            for src, n in sorted(result.client.failed_by_source.items(), key=lambda kv: -kv[1])[:FAILED_LISTED]
        ],
        "failed_connections": [
            {"cause": cause, "source": src, "source_port": sport, "target": str(Endpoint(dst, dport)),
             "display_filter": connection_filter(src, sport, dst, dport)}
            for cause, src, sport, dst, dport in result.client.failed_samples[:FAILED_LISTED]
        ],
        "listen_overflows": result.listen_overflows,
        "listen_drops": result.listen_drops,
        "target_listen_drops": result.target_listen_drops,
        "target_listeners": _listeners(result),
        "server": server,
        "interrupted": result.interrupted,
        "signals_after_interrupt": result.signals_after,
        "worker_failures": result.worker_failures,
        "error": result.error,
        "time_to_target_s": series["time_to_target_s"] if series else None,
        "connect_series": [{"t_s": t, "established": e} for t, e in result.rate_series],
        "traffic": report_traffic(result),
        "plan": plan_to_dict(plan),
        "identity": identity(result, command, facts),
        "series": series,
        "histograms": histograms(result),
        "checks": [],
    }


def histograms(result: RunResult) -> dict[str, Any]:
    """The full-run histograms: connect latency always; when the run talked, the message latency
    and the time to first byte too (their percentiles are traffic.latency_ms and traffic.ttfb_ms;
    their intervals the --hdr-log's untagged and Tag=ttfb lines). The compressed encoding keeps
    only the buckets that hold samples, so a long run's histogram stays a few KB."""
    out = {"connect_latency": histogram_dict(result.connect_latency)}
    if result.traffic is not None:
        out["latency"] = histogram_dict(result.traffic.latency)
        out["ttfb"] = histogram_dict(result.traffic.ttfb)
    return out


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def interrupted_by(rep: dict[str, Any]) -> str:
    """'SIGINT', or 'SIGINT; SIGTERM too, while closing': the signal that stopped the run, and any
    that came while it closed and reported (they changed nothing: the close and report went on)."""
    later = [s for s in rep.get("signals_after_interrupt") or () if s]
    return str(rep["interrupted"]) + (f"; {', '.join(later)} too, while closing" if later else "")


def not_planned(rep: dict[str, Any]) -> int:
    """Connections a --force run never attempted, when that is its whole shortfall (nothing failed,
    the rest were past what its plan could hold); 0 otherwise. The terminal and the page say it so."""
    unplanned = sum(f["count"] for f in rep.get("failures") or [] if f.get("cause") == "not-planned")
    whole = not rep.get("failed_total") and rep.get("established", 0) + unplanned == rep.get("target_connections", 0)
    return unplanned if whole else 0


def report_renderable(rep: dict[str, Any]) -> RichGroup:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    ok = rep["established"] == rep["target_connections"] and not rep["failed_total"]
    kc = rep.get("kernel_check")
    not_held = not_held_by_server(kc)
    head = Text("Run report: ", style="bold")
    if rep["interrupted"]:
        head.append(f"interrupted ({interrupted_by(rep)}) - partial", style="bold yellow")
    elif not_held:
        head.append(not_held, style="bold red")
    elif ok:
        head.append("all connections established", style="bold green")
    elif unplanned := not_planned(rep):
        # Nothing failed: --force ran a plan that could not hold them all, and the rest were never tried.
        head.append(f"all {rep['established']:,} planned connections established; {unplanned:,} were never "
                    "attempted (--force past the plan's limit, see failures)", style="bold yellow")
    else:
        head.append("some connections failed", style="bold red")
    t.add_row("established", f"{rep['established']:,} of {rep['target_connections']:,} "
              f"(peak concurrent {rep['peak_concurrent']:,})")
    rate = rep["connect_rate_per_s"]
    ramp_s = (rep.get("duration_s") or {}).get("connect") or 0.0
    if 0 < ramp_s < 1.0:  # (no whole second to take a peak from: the peak is the mean)
        t.add_row("connect rate", f"{rate['mean']:,.0f}/s over a {ramp_s * 1000:,.0f} ms ramp")
    else:
        t.add_row("connect rate", f"{rate['mean']:,.0f}/s mean over the ramp, {rate['peak']:,.0f}/s peak second")
    lat = rep["connect_latency_ms"]
    t.add_row(
        "connect latency",
        f"p50 {_ms(lat['p50'])} ms  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  "
        f"p99.9 {_ms(lat['p999'])}  max {_ms(lat['max'])}",
    )
    d = rep["duration_s"]
    # A phase that took no time (a traffic run's hold of 0 s) is noise on this line; the JSON has it.
    t.add_row("phases", "  ".join(f"{k} {v:.2f}s" for k, v in d.items() if round(v, 2) or k == "total"))
    if rep.get("hold_ended_early"):
        t.add_row("hold", f"ended early: {rep['hold_ended_early']}")
    t.add_row(
        "processes",
        f"{rep['client_processes']} client + {rep['server_processes']} server, "
        f"{counted(rep['sources_used'], 'source address')}",
    )
    m = rep["memory_bytes"]

    def mb(v: int | None) -> str:
        return "-" if v is None else f"{v / 1e6:,.0f} MB"

    peak = rep["peak_concurrent"]
    client_side = (m["user_client"] or 0) + (m.get("user_parent") or 0)
    per_conn = f" ({client_side / peak:,.0f} B per connection)" if client_side and peak else ""
    server_per = f" ({m['user_server'] / peak:,.0f} B per connection)" if m["user_server"] and peak else ""
    talked = m.get("user_client_traffic")
    # (Read after the ramp, before any traffic: a TLS run's sessions came later, and cost far more.)
    after = (f"; client workers after the traffic {mb(talked)} ({talked / peak:,.0f} B per connection)"
             if talked and peak else "")
    t.add_row("memory", f"client {mb(client_side)}{per_conn} incl. the parent, server {mb(m['user_server'])}"
              f"{server_per}, kernel {kernel_memory(m['kernel'])}{after}")
    t.add_row("cpu", f"{rep['cpu_s']:.1f} s")
    reach = rep.get("time_to_target_s") or {}
    if reach.get("100%") is not None or reach.get("50%") is not None:
        t.add_row("time to reach", "  ".join(f"{k} {v:.2f}s" for k, v in reach.items() if v is not None)
                  + " (of the target open at once)")
    srv = rep.get("server")
    if kc is not None:
        t.add_row("kernel", kernel_line(kc))
    elif rep.get("kernel_check_skipped"):
        t.add_row("kernel", f"not asked: {rep['kernel_check_skipped']}")
    if srv is not None:
        agree = "agrees" if srv["agrees_with_client"] else "DISAGREES"
        t.add_row("server", f"accepted {srv['accepted']:,}: {agree} with the client's count")
    if rep.get("listen_overflows"):
        t.add_row("listen overflows", listen_overflow_advice(rep))
    parts: list[Any] = [head, t]
    if rep["failures"]:
        ft = Table(title="failures by cause", title_justify="left")
        ft.add_column("cause")
        ft.add_column("count", justify="right")
        ft.add_column("meaning")
        ft.add_column("fix")
        for f in rep["failures"]:
            ft.add_row(f["cause"], f"{f['count']:,}", f["meaning"], f["fix"])
        parts.append(ft)
    for wf in rep["worker_failures"]:
        where = ", ".join(wf.get("sources", wf.get("listen", [])))
        parts.append(Text(f"worker {wf['role']} #{wf['index']} (pid {wf['pid']}, {where}) failed: {wf['error']}",
                          style="red"))
    iso = rep.get("isolated_clients") or []
    if iso:
        shown = ", ".join(c["source"] for c in iso[:8]) + (f", ... ({len(iso) - 8} more)" if len(iso) > 8 else "")
        every = " || ".join(c["display_filter"] for c in iso)  # all of them, not only the first
        parts.append(Text(f"isolated clients ({len(iso)}): {shown}; in Wireshark: {every}",
                          style="cyan"))
    failed_conns = rep.get("failed_connections") or []
    if failed_conns:
        first = failed_conns[0]
        total = rep.get("failed_total") or len(failed_conns)
        listed = (f"the first {len(failed_conns):,} of {total:,} failed connections are" if total > len(failed_conns)
                  else f"{len(failed_conns):,} failed connections are")
        parts.append(Text(f"{listed} listed with their 4-tuple in the JSON report; "
                          f"first: {first['cause']}, Wireshark: {first['display_filter']}", style="yellow"))
    for chk in rep.get("checks") or []:
        mark, style = ("pass", "green") if chk["passed"] else ("FAIL", "bold red")
        actual = "not measured" if chk["actual"] is None else f"{chk['actual']:g}{chk.get('unit') or ''}"
        why = f" - {chk['detail']}" if chk.get("partial") else ""  # (an interrupted run passes no check)
        parts.append(Text(f"check {mark}: {described(chk)} (actual {actual}){why}", style=style))
    if rep.get("error"):
        parts.append(Text(f"the run stopped early: {rep['error']}", style="bold red"))
    lim = rep["first_limit_hit"]
    if lim:
        parts.append(Text(f"first limit hit: {lim['resource']} ({lim['cause']} x{lim['count']:,}); fix: {lim['fix']}",
                          style="yellow"))
    parts.extend(traffic_renderables(rep))
    return RichGroup(*parts)


def kernel_memory(slab_growth: int | None) -> str:
    """The host's slab growth over the ramp, which is loopfan's sockets - unless other processes
    freed more meanwhile: a shrink is said as the host's, never as a negative cost of the run."""
    if slab_growth is None:
        return "- (slab growth)"
    if slab_growth <= -500_000:  # (a shrink below what the line shows is 0 MB, said as such)
        return f"~0 MB (the host's slab shrank by {-slab_growth / 1e6:,.0f} MB meanwhile: other processes freed memory)"
    return f"{max(0, slab_growth) / 1e6:,.0f} MB (slab growth)"


def not_held_by_server(kc: dict[str, Any] | None) -> str:
    """The headline when the kernel shows connections the client holds and the server does not
    (half-open, or never accept()ed): the client's count alone would read as a pass. '' if none."""
    kc = kc or {}
    half_open, never_accepted = kc.get("half_open") or 0, kc.get("never_accepted") or 0
    parts = []
    if half_open:
        parts.append(f"{half_open:,} connections half-open (established for the client, not for the server)")
    if never_accepted:
        parts.append(f"{never_accepted:,} connections never accepted by the server (still in its accept queue)")
    return "; ".join(parts)


def kernel_line(kc: dict[str, Any]) -> str:
    verdict = "agrees" if kc["agrees"] else "DISAGREES"
    server_side = "" if kc["kernel_server_side"] is None else f", server side {kc['kernel_server_side']:,}"
    closing = kc.get("kernel_client_closing")
    if closing:
        server_side = f" (+{closing:,} just closed by the server, CLOSE-WAIT){server_side}"
    text = (f"ESTABLISHED per the kernel: client side {kc['kernel_client_side']:,}{server_side}: "
            f"{verdict} with {kc['open_connections']:,} open{_moved_while_counting(kc)}")
    half_open = kc.get("half_open") or 0
    if half_open:
        syn_recv = kc.get("kernel_server_syn_recv")
        where = f" ({syn_recv:,} SYN-RECV at the server)" if syn_recv else ""
        text += (f"; {half_open:,} half-open: established for the client, not for the server{where} - the "
                 "server's accept queue overflowed and it dropped the handshake's last ACK, or it is not "
                 "accepting. Fix: a server that accepts faster or a larger listen backlog, or a lower "
                 "--connect-rate")
    never_accepted = kc.get("never_accepted") or 0
    if never_accepted:
        text += (f"; {never_accepted:,} never accepted: still in the server's accept queue when loopfan "
                 f"stopped waiting (it waits while the queue falls, {KERNEL_SETTLE_S:g} s at a time, up to "
                 f"{KERNEL_SETTLE_MAX_S:g} s) - the server application is not calling accept(), or is out of "
                 "file descriptors (EMFILE: its log says so), or its accept loop is too slow. The kernel "
                 "completed their handshakes; the server does not hold them. Fix: raise the server's "
                 "open-file limit (ulimit -n, LimitNOFILE=) or run more server processes, and check "
                 "that it accepts in a loop")
    return text


def _moved_while_counting(kc: dict[str, Any]) -> str:
    """Our open count read again after the kernel's, when it changed: the server closed (or late
    connects opened) connections while the kernel counted."""
    before, after = kc["open_connections"], kc.get("open_connections_after")
    if after is None or after == before:
        return ""
    if after < before:
        return f" before the count, {after:,} after ({before - after:,} closed by the server while counting)"
    return f" before the count, {after:,} after ({after - before:,} more opened while counting)"


def listen_overflow_advice(rep: dict[str, Any]) -> str:
    """ListenOverflows is host-wide: any process's full accept queue counts. The target's own
    listeners' drops (target_listen_drops) say whether it was the target's; only then is its
    backlog to blame. Its backlog is min(the backlog it passes to listen(), net.core.somaxconn):
    somaxconn is only the fix when it is the smaller one."""
    somaxconn = (((rep.get("identity") or {}).get("host") or {}).get("facts") or {}).get("somaxconn")
    text = f"{rep['listen_overflows']:,} SYNs dropped by full accept queues host-wide (any process's)"
    ours = rep.get("target_listen_drops")
    if ours == 0:
        return text + ": none at the target's listeners - another process's accept queue overflowed, not the target's"
    if ours is None:
        return text + "; the target's own listeners could not be read (ss), so which queue is unknown"
    # A listener's own count (sk_drops) is of drops for any reason, as the host-wide ListenDrops
    # is; ListenOverflows (full accept queues only) is a subset of that, so the target's count can
    # exceed it: compare like with like.
    host = rep.get("listen_drops")
    host_text = "" if host is None else f"; listen drops host-wide, of any reason: {host:,}"
    text += (f"; the target's listeners dropped {ours:,} packets, of any reason (a full accept queue, "
             f"a full SYN queue, memory{host_text})")
    backlogs = sorted({ln["backlog"] for ln in rep.get("target_listeners") or []})
    if backlogs:
        text += f" (accept queue size {', '.join(f'{b:,}' for b in backlogs)})"
    if isinstance(somaxconn, int) and somaxconn < 4096:
        return text + f" (net.core.somaxconn is {somaxconn}: loopfan doctor --fix raises it)"
    backlog = "" if somaxconn is None else f" - net.core.somaxconn is already {somaxconn:,}"
    return (text + ": the server's own listen backlog is too small for this connect rate" + backlog
            + " (e.g. nginx: listen ... backlog=65535; or a lower --connect-rate)")
