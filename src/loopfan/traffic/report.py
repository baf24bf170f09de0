"""The traffic section of the run report: JSON-able dict and terminal lines (pure functions).

Rules of this file: every error cause carries its meaning and its fix, like the connect failures in
engine/report.py; figures carry their unit in their name. When errors concentrate on some source
addresses, the report says so: that is how a server that refuses some clients shows itself.
"""

from __future__ import annotations

import re
from typing import Any

from rich.table import Table
from rich.text import Text

from loopfan.traffic.causes import SERVER_LIMIT, explain, in_context, no_reply_ever
from loopfan.traffic.results import TrafficTotals, percentiles_ms
from loopfan.wording import protocol_words, traffic_nouns


def tls_block(t: TrafficTotals, verify: bool, cafile: str | None, server_name: str,
              certfile: str | None = None) -> dict[str, Any]:
    """The traffic block's "tls": what the first handshake agreed, what was trusted, and the client
    certificate offered (mTLS), if any."""
    out: dict[str, Any] = {
        "version": t.tls.get("version"),  # (None: no handshake completed)
        "cipher": t.tls.get("cipher"),
        "verified": verify,
        "trusted": ("nothing checked (--insecure)" if not verify else f"--cacert {cafile}" if cafile
                    else "the system's CAs"),
        "server_name": server_name or "each connection's address (checked against the certificate's IP SANs)",
    }
    if certfile:
        out["client_cert"] = certfile
    if t.tls.get("verify_error"):
        out["first_verify_error"] = t.tls["verify_error"]
    if t.tls.get("error"):
        out["first_error"] = t.tls["error"]
    return out


def tls_line(tls: dict[str, Any]) -> str:
    """The traffic block's "tls" in one line (the terminal and the page say the same)."""
    agreed = f"{tls['version']} {tls['cipher']}" if tls.get("version") else "no handshake completed"
    trust = f"checked against {tls.get('trusted')}" if tls.get("verified") else "NOT verified (--insecure)"
    failed = f"; first failure: {tls['first_verify_error']}" if tls.get("first_verify_error") else ""
    failed += f"; first TLS error: {tls['first_error']}" if tls.get("first_error") else ""
    mine = f"; client certificate {tls['client_cert']}" if tls.get("client_cert") else ""
    return f"{agreed}; certificate {trust}{failed}{mine}"


def traffic_section(t: TrafficTotals | None, kind: str, open_model: bool, warmup_s: float,
                    hdr_log: str | None, awaits_reply: bool = True,
                    rate_per_conn_s: float = 0.0, tls: dict[str, Any] | None = None,
                    reply_timeout_s: float | None = None) -> dict[str, Any] | None:
    if t is None:
        return None
    window = t.window_s
    # Send only (raw with nothing to expect): a message is done when it is written.
    done_in_window = t.window_replies if awaits_reply else t.sent_in_window
    latency_ms = percentiles_ms(t.latency)

    # Any connection answered: a reply, an HTTP status, a completed WebSocket handshake (not a TLS one).
    answered = bool(t.replies or any(k.startswith("http-") or k == "ws-handshake-ok" for k in t.statuses))

    def explained(cause: str) -> tuple[str, str]:
        if cause == "no-reply-ever":  # a slow server or one that never served: the other replies tell
            return no_reply_ever(t.latency.get_total_count(), latency_ms["max"], reply_timeout_s,
                                 t.errors.get("reply-timeout", 0))
        return in_context(cause, *explain(cause), kind=kind, answered=answered, tls=tls is not None,
                          client_cert=bool(tls and tls.get("client_cert")), first_error=t.first_error_response)

    errors = [
        {"cause": c, "count": n, "meaning": explained(c)[0], "fix": explained(c)[1]}
        for c, n in sorted(t.errors.items(), key=lambda kv: -kv[1])
    ]
    sources = sorted(t.errors_by_source.items(), key=lambda kv: -kv[1])
    return {
        "kind": kind,
        "model": "open (latency from the scheduled send time)" if open_model else "closed loop",
        "warmup_s": warmup_s,
        "window_s": round(window, 3),
        "sent": t.sent,
        "sent_in_window": t.sent_in_window,
        "replies": t.replies,
        "replies_in_window": t.window_replies,
        "replies_in_warmup": t.warmup_replies,
        # Stopped by SIGINT/SIGTERM during the window (it ends at the interrupt) or the drain: no full drain.
        "interrupted": t.interrupted,
        "messages_per_s": round(done_in_window / window, 1) if window > 0 else None,
        # Open model: what the schedule asked for, over the connections that began talking.
        "requested_per_s": round(rate_per_conn_s * t.talking_at_start, 1) if open_model else None,
        "bytes_in_per_s": round(t.window_bytes_in / window, 1) if window > 0 else None,
        "bytes_out_per_s": round(t.window_bytes_out / window, 1) if window > 0 else None,
        "latency_ms": latency_ms,
        "ttfb_ms": percentiles_ms(t.ttfb),
        # Opening handshakes (TLS, WebSocket) that completed, each from its first flight to ready;
        # absent when there were none (plain-text http, raw).
        **({"handshake_ms": percentiles_ms(t.handshake), "handshakes": t.handshake.get_total_count()}
           if t.handshake.get_total_count() else {}),
        "samples": t.latency.get_total_count(),
        "statuses": dict(sorted(t.statuses.items())),
        "errors": dict(t.errors),
        "errors_total": t.errors_total,
        "error_causes": errors,
        "errors_by_source": dict(sources[:20]),
        "sources_with_errors": len(sources),
        "unanswered_at_end": t.unanswered_at_end,
        "unsent_at_end": t.unsent_at_end,
        "unsent_in_latency": t.unsent_sampled,
        "warmup_errors": dict(sorted(t.warmup_errors.items(), key=lambda kv: -kv[1])),
        "warmup_statuses": dict(sorted(t.warmup_statuses.items())),
        "lost_in_flight": t.lost_in_flight,
        "connections_reopened": t.reopened,
        "reopen_failures": dict(sorted(t.reopen_failures.items(), key=lambda kv: -kv[1])),
        "connections_reopening_at_end": t.reopening_at_end,
        "connections_talking_at_start": t.talking_at_start,
        "connections_talking_at_end": t.talking,
        # Interrupted in the WebSocket handshakes: connections that never got to talk (not lost).
        "ws_handshakes_interrupted": t.handshakes_unfinished,
        "hdr_log": hdr_log,
        **({"tls": tls} if tls is not None else {}),
        # The first HTTP error response's status and the start of its body: the server's own words.
        **({"first_error_response": t.first_error_response} if t.first_error_response else {}),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:,.1f}")


def _pct_line(p: dict[str, float | None]) -> str:
    return (f"p50 {_ms(p['p50'])} ms  p90 {_ms(p['p90'])}  p99 {_ms(p['p99'])}  p99.9 {_ms(p['p999'])}  "
            f"p99.99 {_ms(p['p9999'])}  max {_ms(p['max'])}")


def closed_loop_reading(tr: dict[str, Any], pipeline: int = 1) -> str | None:
    """How to read a closed loop's latency. By Little's law throughput x mean latency is the number
    of messages in flight - one per connection, always - so once the server or this host is
    saturated, more connections mean longer latency, not more messages/s. Said once, with the
    figure, so a 100 ms p50 over 10,000 connections is not taken for a slow server, nor a fast one
    for a fast server at any load.

    The law holds in a steady state. A window short beside the latency is mostly the start - every
    connection's first message sent at once, their replies seconds away - and its figures give far
    fewer in flight than the connections hold (QA: "~51,535 messages always in flight" over 150,000
    echo connections, a 5 s window, mean latency 2.8 s): then the in-flight count is the
    connections', and the reading says the figures are not the steady state's (after a 5 s warm-up the
    same run still gave ~99,771: 3.5 s round trips, one or two in the window)."""
    mean_ms = tr["latency_ms"].get("mean")
    rate = tr["messages_per_s"]
    if tr["model"] != "closed loop" or not mean_ms or not rate:
        return None
    in_flight = rate * mean_ms / 1000
    if in_flight < 2:
        return None
    sent = traffic_nouns(tr.get("kind"))[0]
    talking = min(tr.get("connections_talking_at_start") or 0, tr.get("connections_talking_at_end") or 0)
    held = talking * max(1, pipeline)
    if held and in_flight < 0.8 * held:
        return (f"closed loop: {held:,} {sent} always in flight ({max(1, pipeline)} per connection), but {sent}/s "
                f"x mean latency gives only ~{in_flight:,.0f}: not a steady state - the "
                f"{tr.get('window_s') or 0:g} s window holds few round trips of {mean_ms / 1000:,.1f} s; measure "
                "with a --duration many times the latency, after a --warmup")
    return (f"closed loop: ~{in_flight:,.0f} {sent} always in flight ({sent}/s x mean latency); past "
            "saturation more connections add latency, not throughput - --rate R measures the latency at a "
            "load you choose")


def protocol_of(rep: dict[str, Any]) -> str:
    """The report's traffic protocol in words ('ws pings' for a --ws-ping run): the traffic block
    has the kind, the run's identity the WebSocket opcode."""
    cfg = (((rep.get("identity") or {}).get("config") or {}).get("traffic")) or {}
    return protocol_words((rep.get("traffic") or {}).get("kind"), cfg.get("ws_opcode"))


def pipeline_of(rep: dict[str, Any]) -> int:
    """The run's --pipeline (messages in flight per connection), from its identity; 1 if not said."""
    cfg = (((rep.get("identity") or {}).get("config") or {}).get("traffic")) or {}
    return int(cfg.get("pipeline") or 1)


def client_cpu_pct(rep: dict[str, Any]) -> float | None:
    """The busiest client process's median CPU % during the traffic phase (None if unknown)."""
    series = rep.get("series") or {}
    phases = dict(zip(series.get("t_s", []), series.get("phase", []), strict=False))
    procs = series.get("processes") or {}
    times = procs.get("t_s", [])
    busiest: float | None = None
    for item in procs.get("items", []):
        if item.get("role") != "client":
            continue
        during = sorted(v for t, v in zip(times, item.get("cpu_pct", []), strict=False)
                        if v is not None and phases.get(t) == "traffic")
        if during:
            median = during[len(during) // 2]
            busiest = median if busiest is None else max(busiest, median)
    return busiest


_SATURATED_PCT = 90.0


def nothing_to_talk_over(tr: dict[str, Any]) -> bool:
    """No connection was open when the traffic phase began (every connect failed, or the server
    closed them all first): nothing was sent or measured. Not "no errors" with 0 messages/s over a
    window that never was - the terminal and the page say the traffic did not run."""
    return not tr.get("connections_talking_at_start") and not tr.get("sent") and not tr.get("window_s")


# The open model's delivered rate this far under the requested one is worth the headline: the
# schedule itself staggers the first sends, so a run that keeps up delivers 99-100 %.
_BEHIND_SHARE = 0.9


def behind_schedule(tr: dict[str, Any]) -> float | None:
    """The share of the requested rate an open-model run delivered, when the server or this host
    fell behind it (under 90 %); None when it kept up, or for a closed loop (nothing requested).
    Then "no errors" alone would read as a pass: the latency shows how far behind, this says so."""
    asked, rate = tr.get("requested_per_s"), tr.get("messages_per_s")
    if not asked or rate is None:
        return None
    share = float(rate) / float(asked)
    return share if share < _BEHIND_SHARE else None


# Causes under which the server ended a connection that loopfan then reopened (traffic_client's
# _REOPEN_CAUSES and the WebSocket close codes): what the reopened line names as the why.
_CLOSED_BY_SERVER = ("closed-by-peer", "closed-awaiting-reply", "closed-mid-reply", "ECONNRESET", "EPIPE")


def why_reopened(tr: dict[str, Any]) -> str:
    """Why the server ended the connections that were reopened, from the statuses and errors: a
    response with Connection: close (and the error statuses that came with them), else the close
    and reset causes. Audit: an HTTP server answering 403 with Connection: close had its 20
    connections reopened 1,526 times in 0.5 s, and the line only said "see statuses and errors"."""
    statuses = tr.get("statuses") or {}
    closes = statuses.get("http-connection-close", 0)
    if closes:
        failing = {k: v for k, v in statuses.items() if _http_class(k) and _http_class(k) >= "4"}
        return (f"the server ended keep-alive with Connection: close on {closes:,} responses"
                + (" (of them " + ", ".join(f"{k} {v:,}" for k, v in failing.items()) + ")" if failing else ""))
    errors = tr.get("errors") or {}
    ended = {k: v for k, v in errors.items() if k in _CLOSED_BY_SERVER or k.startswith("ws-close-")}
    if ended:
        return "the server closed or reset them: " + ", ".join(f"{k} {v:,}" for k, v in ended.items())
    return "why it closed them: the statuses and errors"


def all_error_statuses(tr: dict[str, Any]) -> bool:
    """Every HTTP response an error (4xx and up): the requests/s are answers, not successes."""
    classes = [c for c in map(_http_class, tr.get("statuses") or {}) if c]
    return bool(classes) and all(c >= "4" for c in classes)


def _http_class(status: str) -> str:
    """'4' for the status 'http-4xx' (1-9, as h11 takes 100-999), '' for any other status name."""
    return status[5] if len(status) == 8 and status.startswith("http-") and status.endswith("xx") else ""


# Reopens at least this share of the replies make the headline: the load was new connections as
# much as messages. (nginx's default keepalive_requests 1000 reopens every connection of a 10 s run
# once - a reopen per 1,000 responses, no headline; a 403 with Connection: close, one per response.)
_HEAVY_REOPEN_SHARE = 0.1


def heavy_reopens(tr: dict[str, Any]) -> str | None:
    """The headline's words when connections were reopened at least once each on average and once
    per ten replies or more: then the run measured new connections as much as requests (wrk reopens
    as loopfan does, without a backoff, so the figures look healthy). None when the reopens were few."""
    reopened = tr.get("connections_reopened") or 0
    talking = tr.get("connections_talking_at_start") or 0
    replies = tr.get("replies") or 0
    if not reopened or reopened < max(1, talking) or reopened < _HEAVY_REOPEN_SHARE * replies:
        return None
    short = ("Connection: close" if (tr.get("statuses") or {}).get("http-connection-close")
             else "the server closed them")
    return f"connections reopened {reopened:,} times for {replies:,} {traffic_nouns(tr.get('kind'))[1]} ({short})"


def reopened_line(tr: dict[str, Any]) -> str | None:
    """The "reopened" row: how many times, how often per connection, why, and the connects that
    failed (retried with a backoff). None when nothing was reopened nor tried."""
    reopened = tr.get("connections_reopened", 0)
    refused = tr.get("reopen_failures") or {}
    if not reopened and not refused:
        return None
    talking = tr.get("connections_talking_at_start") or 0
    each = f", ~{reopened / talking:,.0f} per connection" if talking and reopened >= talking else ""
    # Over TLS each reopen handshakes again, in full: no session resumption (QA: nginx keepalive_requests
    # 10 made 2,150 TLS handshakes in 2 s, and the line said only "a new TCP connect").
    tls = " and a full TLS handshake (no session resumption)" if tr.get("tls") else ""
    line = (f"{reopened:,} times{each}: connections the server closed during the traffic were opened again (same "
            f"source, same endpoint{tls}; at once after a response, as wrk does - no backoff) - {why_reopened(tr)}")
    if heavy_reopens(tr):
        line += (f"; each reopen is a new TCP connect{tls and ' and TLS handshake'}, so these figures measure "
                 "connects as much as requests - keep-alive it is not")
    if refused:
        line += ("; connect attempts that failed and were retried with backoff: "
                 + ", ".join(f"{k} {v:,}" for k, v in refused.items())
                 + " (the server stopped or restarted, or refuses new connections)")
    return line


def traffic_renderables(rep: dict[str, Any]) -> list[Any]:
    tr = rep.get("traffic")
    if not tr:
        return []
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rate = tr["messages_per_s"]
    cut = bool(tr.get("interrupted"))
    never = not traffic_began(tr, rep)
    cut = cut or never
    protocol = protocol_of(rep)
    if not never and nothing_to_talk_over(tr):
        why = ("every connect failed: the failures above say why" if not rep.get("established") else
               f"the server closed all {rep['established']:,} before it began: {SERVER_LIMIT}")
        t.add_row("traffic", f"{protocol}, {tr['model']}: not run - no connection was open when the traffic "
                  f"phase began ({why})")
        return [Text.assemble(("Traffic: ", "bold"), ("not run, no connection was open", "bold red")), t]
    if never:
        during = f" (e.g. during the {handshakes_of(tr)} handshakes)" if handshakes_of(tr) else ""
        t.add_row("traffic", f"{protocol}, {tr['model']}: interrupted before the traffic began{during}, nothing "
                  "measured")
    elif cut and not tr["window_s"]:
        # Nothing measured: say why, and what the warm-up saw (its statuses are not in the window's).
        warm_statuses = tr.get("warmup_statuses") or {}
        t.add_row("traffic", f"{protocol}, {tr['model']}: interrupted during the {tr['warmup_s']:g} s warm-up, "
                  f"nothing measured; the warm-up had {tr.get('replies_in_warmup', 0):,} replies"
                  + ("" if not warm_statuses else " (" + "  ".join(f"{k} {v:,}" for k, v in warm_statuses.items())
                     + ")"))
    else:
        t.add_row("traffic", f"{protocol}, {tr['model']}, {tr['window_s']:.2f} s measured"
                  + (f" after {tr['warmup_s']:g} s warm-up" if tr["warmup_s"] else "")
                  + (" (interrupted, no drain)" if cut else ""))
    bps_in = tr["bytes_in_per_s"] or 0.0
    bps_out = tr["bytes_out_per_s"] or 0.0
    asked = tr.get("requested_per_s")
    sent, answers = traffic_nouns(tr["kind"])
    t.add_row("throughput", f"{rate or 0:,.0f} {sent}/s" + (f" of {asked:,.0f} requested" if asked else "")
              + f", in {bps_in / 1e6:,.2f} MB/s, out {bps_out / 1e6:,.2f} MB/s "
              f"({tr['replies_in_window']:,} {answers} and {tr.get('sent_in_window', tr['sent']):,} {sent} sent "
              "in the window)" + ("; every response an error status (see statuses)" if all_error_statuses(tr) else ""))
    if tr.get("tls"):
        t.add_row("tls", tls_line(tr["tls"]))
    t.add_row("latency", _pct_line(tr["latency_ms"]))
    t.add_row("first byte", _pct_line(tr["ttfb_ms"]))
    if tr.get("handshake_ms"):
        t.add_row("handshake", handshake_line(tr))
    note = closed_loop_reading(tr, pipeline_of(rep))
    if note:
        t.add_row("reading", note)
    if tr["statuses"]:
        t.add_row("statuses", "  ".join(f"{k} {v:,}" for k, v in tr["statuses"].items()))
    first_error = first_error_line(tr)
    if first_error:
        t.add_row("first error", first_error)
    reopened = reopened_line(tr)
    if reopened:
        t.add_row("reopened", reopened)
    in_flight = tr.get("lost_in_flight", 0)
    if in_flight:
        t.add_row("lost", f"{in_flight:,} {sent} were in flight on connections that ended: never answered "
                  "(why those connections ended: the errors)")
    talking_end = tr["connections_talking_at_end"]
    gone = tr["connections_talking_at_start"] - talking_end
    if gone > 0:
        t.add_row("talking", f"{tr['connections_talking_at_start']:,} connections at the start, {talking_end:,} at the "
                  f"end: {gone:,} were closed and not reopened, or their reconnects were failing (see errors and "
                  "'reopened') - the load fell as they went")
    unfinished = tr.get("ws_handshakes_interrupted", 0)
    if unfinished:
        t.add_row("handshakes", f"{unfinished:,} {handshakes_of(tr) or 'opening'} handshakes were still under way "
                  "at the interrupt: those connections never talked (not counted as talking, nor as errors)")
    # Interrupted before the traffic began: loopfan closed them, not the server.
    lost_before = lost_before_traffic(tr, rep)
    if lost_before > 0:
        t.add_row("lost before", f"{lost_before:,} of {rep['established']:,} connections were closed by the server "
                  f"before the traffic began: {SERVER_LIMIT}")
    if tr["unanswered_at_end"] or tr["unsent_at_end"]:
        sampled = tr.get("unsent_in_latency", 0)
        lower = f"; {sampled:,} of those are in the latency at their age at the end (a lower bound)"
        t.add_row("at the end", f"{tr['unanswered_at_end']:,} unanswered, {tr['unsent_at_end']:,} due but not sent "
                  f"({end_reason(tr)})" + (lower if sampled else ""))
    cpu = client_cpu_pct(rep)
    if cpu is not None and cpu >= _SATURATED_PCT:
        t.add_row("generator", f"a loopfan client process was at {cpu:.0f} % CPU during the traffic: the load "
                  "generator, not the server, may be what limits these figures - fewer connections, a lower "
                  "--rate, or more cores (loopfan runs one client process per core)")
    warm = tr.get("warmup_errors") or {}
    if warm:
        t.add_row("warm-up", f"{sum(warm.values()):,} errors during the warm-up, not counted above: "
                  + ", ".join(f"{k} {v:,}" for k, v in warm.items()))
    if tr["hdr_log"]:
        t.add_row("hdr log", tr["hdr_log"])
    head = Text("Traffic: ", style="bold")
    if lost_before > 0:
        head.append(f"{lost_before:,} connections lost before it began; ", style="bold red")
    awaited = tr["replies"] + tr.get("lost_in_flight", 0) + tr["unanswered_at_end"]
    if tr["errors_total"]:
        head.append(f"{tr['errors_total']:,} errors", style="bold red")
    elif never:
        head.append("interrupted before the traffic began", style="bold yellow")
    elif cut and not tr["window_s"]:
        head.append("interrupted before the measured window", style="bold yellow")
    elif not tr["replies_in_window"] and awaited:
        head.append("no reply in the measured window", style="bold red")
    elif gone > 0:
        head.append(f"{gone:,} connections stopped talking", style="bold red")
    elif (share := behind_schedule(tr)) is not None:
        head.append(f"no errors, but behind schedule: {rate:,.0f} of the {tr['requested_per_s']:,.0f} {sent}/s "
                    f"requested ({share:.1%}; the latency says how far behind)", style="bold yellow")
    else:
        head.append("no errors", style="bold green")
    heavy = heavy_reopens(tr)
    if heavy:  # (beside the errors too: 4xx with Connection: close reads as errors, not as reconnects)
        head.append(f"; {heavy}", style="bold yellow")
    parts: list[Any] = [head, t]
    if tr["error_causes"]:
        et = Table(title="traffic errors by cause", title_justify="left")
        for col in ("cause", "count", "meaning", "fix"):
            et.add_column(col, justify="right" if col == "count" else "left")
        for e in tr["error_causes"]:
            et.add_row(e["cause"], f"{e['count']:,}", e["meaning"], e["fix"])
        parts.append(et)
        n_src = tr["sources_with_errors"]
        top = ", ".join(f"{s} ({n:,})" for s, n in list(tr["errors_by_source"].items())[:5])
        parts.append(Text(f"errors came from {n_src:,} source address(es): {top}", style="yellow"))
    return parts


def report_traffic(result: Any) -> dict[str, Any] | None:
    """The "traffic" key of the run report, from a RunResult (None when the run did not talk)."""
    tc = result.config.traffic
    if tc is None:
        return None
    tls = None
    if tc.tls and result.traffic is not None:
        tls = tls_block(result.traffic, tc.tls_verify, tc.tls_cafile, tc.tls_server_name, tc.tls_certfile)
    return traffic_section(result.traffic, tc.label, tc.open_model, tc.warmup_s, tc.hdr_log, tc.awaits_reply,
                           tc.rate_per_conn_s, tls, tc.reply_timeout_s)


def first_error_line(tr: dict[str, Any]) -> str | None:
    """The first HTTP error response in one line: its status and the start of its body, with
    the markup and the spaces squeezed out (nginx's 400 page is HTML; its <h1> says what it is)."""
    sample = tr.get("first_error_response")
    if not sample:
        return None
    text = " ".join(re.sub(r"<[^>]*>", " ", str(sample.get("body") or "")).split())
    return f"HTTP {sample.get('status')}" + (f": {text[:160]}" if text else " (no body)")


def end_reason(tr: dict[str, Any]) -> str:
    """Why messages were unanswered or unsent at the end (the terminal and the page say the same).
    Interrupted, there is no drain: what was in flight was cut off by the interrupt, not by a
    server that fell behind (what was due and not sent still is the server's, or this host's)."""
    if not tr.get("interrupted"):
        return "the server, or this host, was behind"
    if not tr.get("unsent_at_end"):
        return "in flight when the run was interrupted: no drain"
    return "the run was interrupted, with no drain; messages due but not sent mean the server, or this host, was behind"


def traffic_began(tr: dict[str, Any], rep: dict[str, Any]) -> bool:
    """False for a run interrupted before any worker began talking (while connecting, or in the
    WebSocket handshakes): not one message went out (a run stopped in its warm-up sent the
    warm-up's). The terminal and the page ask this one question."""
    return bool(tr["window_s"] or not rep.get("interrupted") or tr.get("sent"))


def handshake_line(tr: dict[str, Any]) -> str:
    """The opening handshakes' percentiles, and what they are: not in the latency (they come before
    the clock), each one's time from its first flight, so the phase's, all started at once, queue."""
    return (f"{_pct_line(tr['handshake_ms'])} ({tr['handshakes']:,} {handshakes_of(tr)} handshakes, each from its "
            "first flight to ready, the reopens' too; the phase's start all at once before the clock, so they "
            "queue: not in the latency)")


def handshakes_of(tr: dict[str, Any]) -> str:
    """The opening handshakes a connection makes before it talks, as the report names them ("" for
    none): an https:// run's are TLS ones, not WebSocket ones (QA: an interrupted https:// run said
    "1,227 WebSocket opening handshakes were still under way")."""
    tls, ws = bool(tr.get("tls")), tr.get("kind") == "ws"
    return "TLS and WebSocket" if tls and ws else "TLS" if tls else "WebSocket" if ws else ""


def lost_before_traffic(tr: dict[str, Any], rep: dict[str, Any]) -> int:
    """Connections established but gone before the traffic began: the server closed them (if the
    traffic never began, loopfan closed them at the interrupt - none lost; nor those still in their
    WebSocket handshakes at the interrupt while other workers' traffic had begun)."""
    if not traffic_began(tr, rep):
        return 0
    never_talked = int(tr.get("connections_talking_at_start", 0)) + int(tr.get("ws_handshakes_interrupted", 0))
    return max(0, int(rep.get("established", 0)) - never_talked)
