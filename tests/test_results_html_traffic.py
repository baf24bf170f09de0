"""The HTML page of a run that sent traffic: the Traffic section, traffic errors told apart from
connection failures, the traffic figures among the key numbers, and the per-interval traffic charts.

One short real run (HTTP to the built-in server, moved to a block of this module's own) gives the
report; the tests change copies of it - errors, the baseline, the open model, series columns present,
absent or empty - and render them. A run without traffic must keep its page as it was.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port

import loopfan.commands.run as run_command
from loopfan.cli import main
from loopfan.pools import parse_pool
from loopfan.results import charts
from loopfan.results.compare import fmt, rows
from loopfan.results.html import SECTIONS, TRAFFIC_SECTION, render
from loopfan.results.schema import report_problems
from loopfan.traffic.report import explain, tls_block, tls_line
from loopfan.traffic.results import TrafficTotals

# Axis labels of the three traffic charts: text in the SVG (svg.fonttype none), so a page shows
# whether a chart was drawn.
MESSAGES_CHART = "requests per second"  # the fixture is an HTTP run: its charts count requests
LATENCY_CHART = "request latency (ms, log)"  # QA: it said "message latency" beside "requests per second"
ERRORS_CHART = "traffic errors per second"


@pytest.fixture(scope="module")
def traffic_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """report.json of `loopfan run -c 40 --traffic http` against the built-in server, as a dict."""
    prefix = f"127.{random.randint(150, 250)}.{random.randint(0, 255)}."
    src = f"127.{random.randint(150, 250)}.{random.randint(0, 255)}."
    port = free_port(*(f"{prefix}{i}" for i in range(1, 5)))
    out = tmp_path_factory.mktemp("traffic") / "run.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_command, "PlanRequest", functools.partial(
            run_command.PlanRequest, listen_pool=parse_pool(f"{prefix}1-{prefix}4"), listen_port=port))
        status = main(["run", "-c", "40", "--traffic", "http", "--duration", "0.5s", "--warmup", "0.2s",
                       "--sources", f"{src}1-{src}4", "--progress", "none", "--json", str(out), "-q"])
    assert status == 0
    rep: dict[str, Any] = json.loads(out.read_text())
    assert rep["traffic"]["kind"] == "http" and rep["traffic"]["replies_in_window"] > 0
    yield rep


def section(page: str, sid: str) -> str:
    """The HTML of one section of a page, under its heading."""
    m = re.search(rf'<section id="sec-{sid}"><h2 id="{sid}">[^<]*</h2>\n(.*?)\n</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def section_ids(page: str) -> list[str]:
    return re.findall(r'<h2 id="([^"]+)">', page)


def assert_self_contained(page: str) -> None:
    assert "<script" not in page and "@import" not in page
    assert re.findall(r"url\((?!#)", page) == []
    assert "https://" not in page and "http://" not in page.replace("http://www.w3.org/", "")


def with_traffic_errors(rep: dict[str, Any], by_source: dict[str, int]) -> dict[str, Any]:
    """A copy of rep whose traffic had 1,145 HTTP 5xx errors, spread over by_source."""
    rep = copy.deepcopy(rep)
    tr = rep["traffic"]
    meaning, fix = explain("http-5xx")
    tr.update(errors={"http-5xx": 1145}, errors_total=1145,
              error_causes=[{"cause": "http-5xx", "count": 1145, "meaning": meaning, "fix": fix}],
              errors_by_source=by_source, sources_with_errors=len(by_source))
    tr["statuses"]["http-5xx"] = 1145
    return rep


def with_traffic_series(rep: dict[str, Any], **columns: Any) -> dict[str, Any]:
    """A copy of rep with the given series columns (None: the column removed)."""
    rep = copy.deepcopy(rep)
    for key, col in columns.items():
        if col is None:
            rep["series"].pop(key, None)
        else:
            rep["series"][key] = col
    return rep


def filled_series(rep: dict[str, Any]) -> dict[str, Any]:
    """What the engine is to write: messages/s, message latency and traffic errors per interval."""
    n = len(rep["series"]["t_s"])
    lat = {k: [None] + [v] * (n - 1) for k, v in (("p50", 1.5), ("p90", 2.0), ("p99", 4.5), ("p999", 11.0),
                                                   ("max", 16.6))}
    return with_traffic_series(rep, messages_per_s=[0] + [120_000] * (n - 1),
                               message_latency_ms={"count": [None] + [1000] * (n - 1), **lat},
                               errors_per_s=[0] + [5] * (n - 1),
                               errors_by_cause_per_s={"http-5xx": [0] + [5] * (n - 1), "reply-timeout": [0] * n})


# --- a run without traffic ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_page(traffic_report: dict[str, Any]) -> str:
    rep = copy.deepcopy(traffic_report)
    rep["traffic"] = None
    return render(rep)


def test_a_run_without_traffic_keeps_its_page(traffic_report: dict[str, Any], plain_page: str) -> None:
    assert section_ids(plain_page) == [sid for sid, _ in SECTIONS]
    assert section(plain_page, "errors").strip() == '<p class="pass">No connection failed.</p>'
    assert "traffic." not in section(plain_page, "key-numbers")
    assert "; traffic" not in section(plain_page, "run")
    absent = copy.deepcopy(traffic_report)
    del absent["traffic"]
    assert render(absent) == plain_page  # null and absent are the same


# --- the Traffic section ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic_page(traffic_report: dict[str, Any]) -> str:
    return render(traffic_report)


def test_tls_is_said_on_the_page(traffic_report: dict[str, Any], traffic_page: str) -> None:
    assert "TLS" not in section(traffic_page, TRAFFIC_SECTION[0])  # (plain text: not a word of it)
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["tls"] = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "verified": False,
                             "trusted": "nothing checked (--insecure)", "server_name": "localhost"}
    assert "TLSv1.3 TLS_AES_256_GCM_SHA384; certificate NOT verified (--insecure)" in section(
        render(rep), TRAFFIC_SECTION[0])


def test_the_client_certificate_is_said_in_the_tls_block_and_on_the_page(traffic_report: dict[str, Any]) -> None:
    totals = TrafficTotals(tls={"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
    block = tls_block(totals, True, "/ca.pem", "localhost", "/client.pem")
    assert block["client_cert"] == "/client.pem" and "client_cert" not in tls_block(totals, True, None, "")
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["tls"] = block
    assert report_problems(rep) == []
    assert ("TLSv1.3 TLS_AES_256_GCM_SHA384; certificate checked against --cacert /ca.pem; client certificate "
            "/client.pem") in section(render(rep), TRAFFIC_SECTION[0])


def test_the_first_error_response_is_on_the_page(traffic_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["first_error_response"] = {"status": 400, "body": "<html><head><title>400 No required SSL "
                                                                     "certificate was sent</title></head>"}
    assert report_problems(rep) == []
    assert "HTTP 400: 400 No required SSL certificate was sent" in section(render(rep), TRAFFIC_SECTION[0])


def test_the_first_tls_error_is_said_in_the_tls_line() -> None:
    totals = TrafficTotals(tls={"error": "TLSV13_ALERT_CERTIFICATE_REQUIRED (the server requires a client "
                                         "certificate: give it with --cert FILE)"})
    block = tls_block(totals, True, None, "localhost")
    assert block["first_error"].startswith("TLSV13_ALERT_CERTIFICATE_REQUIRED")
    assert tls_line(block) == ("no handshake completed; certificate checked against the system's CAs; first TLS "
                               "error: TLSV13_ALERT_CERTIFICATE_REQUIRED (the server requires a client certificate: "
                               "give it with --cert FILE)")


def test_traffic_section_comes_after_connect_latency(traffic_page: str) -> None:
    ids = section_ids(traffic_page)
    assert ids == [sid for sid, _ in SECTIONS[:4]] + [TRAFFIC_SECTION[0]] + [sid for sid, _ in SECTIONS[4:]]
    assert f'<a href="#traffic">{TRAFFIC_SECTION[1]}</a>' in traffic_page
    assert_self_contained(traffic_page)


def test_traffic_section_shows_the_run_figures(traffic_report: dict[str, Any], traffic_page: str) -> None:
    tr = traffic_report["traffic"]
    body = section(traffic_page, "traffic")
    # HTTP speaks of requests and responses (the JSON keeps messages_per_s for every protocol).
    assert "closed loop: each connection sends its next request when the response arrives" in body
    assert "s window after 0.2 s warm-up" in body
    assert fmt(tr["messages_per_s"], "/s") in body
    assert f"in {fmt(tr['bytes_in_per_s'], 'B')}/s, out {fmt(tr['bytes_out_per_s'], 'B')}/s" in body
    assert f"{tr['replies_in_window']:,} responses and {tr['sent_in_window']:,} requests sent in the window" in body
    assert "messages" not in body.split("HDR histograms")[0].replace("messages_per_s", "")
    assert f"{tr['sent']:,} sent, {tr['replies']:,} answered" in body
    assert f"http-2xx {tr['statuses']['http-2xx']:,} (after the warm-up)" in body
    assert f"warm-up statuses</td><td class=\"\">http-2xx {tr['warmup_statuses']['http-2xx']:,}" in body
    assert "0 unanswered, 0 due but not sent" in body
    talking = tr["connections_talking_at_start"], tr["connections_talking_at_end"]
    assert f"{talking[0]:,} at the start, {talking[1]:,} at the end" in body
    for key in ("p50", "p99", "p9999", "max", "mean"):
        assert fmt(tr["latency_ms"][key], "ms") in body and fmt(tr["ttfb_ms"][key], "ms") in body
    assert "<th class=\"n\">first byte</th>" in body and "baseline latency" not in body


def test_traffic_headlines_are_among_the_key_numbers(traffic_report: dict[str, Any], traffic_page: str) -> None:
    tr = traffic_report["traffic"]
    keys = section(traffic_page, "key-numbers")
    for name, value in (("traffic.messages_per_s", fmt(tr["messages_per_s"], "/s")),
                        ("traffic.latency.p99", fmt(tr["latency_ms"]["p99"], "ms")),
                        ("traffic.ttfb.p99", fmt(tr["ttfb_ms"]["p99"], "ms")), ("traffic.errors", "0")):
        assert re.search(rf"<td[^>]*>{re.escape(name)}</td><td[^>]*>{re.escape(value)}</td>", keys), name
    run = section(traffic_page, "run")
    assert '<span class="badge b-pass">' in run and "traffic " + fmt(tr["messages_per_s"], "") in run
    assert "no errors" in run
    errors = section(traffic_page, "errors")
    assert "<h3>Connection failures</h3>" in errors and "<h3>Traffic errors</h3>" in errors
    assert "None: every reply was complete" in errors


def test_open_model_names_its_rate(traffic_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["model"] = "open (latency from the scheduled send time)"
    rep["identity"]["config"]["traffic"]["rate_per_conn_s"] = 20.0
    body = section(render(rep), "traffic")
    assert "open model: 20 requests/s per connection (~800/s over 40 connections)" in body
    assert "latency from the scheduled send time" in body
    assert "reading</td>" not in body  # the Little's law reading is for a closed loop
    rep["traffic"]["requested_per_s"] = 780.0  # over the 39 connections that began talking
    rep["traffic"]["connections_talking_at_start"] = 39
    assert "(~780/s over 39 connections)" in section(render(rep), "traffic")


@pytest.mark.parametrize(("opcode", "said"), [("ping", "ws pings"), ("binary", "ws binary"), ("text", "ws")])
def test_websocket_pings_and_binary_frames_are_said(traffic_report: dict[str, Any], opcode: str, said: str) -> None:
    """Audit: a --ws-ping run's page said "ws, closed loop"; only the JSON's identity had the opcode."""
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["kind"] = "ws"
    rep["identity"]["config"]["traffic"]["ws_opcode"] = opcode
    page = render(rep)
    assert f"{said}, closed loop, " in page  # the heading's traffic line
    assert f'protocol</td><td class="">{said}</td>' in section(page, "traffic")  # the protocol fact


def test_connections_reopened_after_every_response_turn_the_verdict_amber(traffic_report: dict[str, Any]) -> None:
    """Audit: 20 connections reopened 1,526 times in 0.5 s read as an ordinary run. Nothing failed
    (2xx with Connection: close), so not red - but the load was new connections as much as requests."""
    rep = copy.deepcopy(traffic_report)
    tr = rep["traffic"]
    talking = tr["connections_talking_at_start"]
    tr["connections_reopened"] = 30 * talking
    tr["replies"] = 31 * talking
    tr["statuses"] = {"http-2xx": 31 * talking, "http-connection-close": 31 * talking}
    page = render(rep)
    run = section(page, "run")
    assert '<span class="badge b-warn">' in run, run
    assert (f"no errors; connections reopened {30 * talking:,} times for {31 * talking:,} responses "
            "(Connection: close)") in run
    body = section(page, "traffic")
    assert (f"{30 * talking:,} times, ~30 per connection: connections the server closed during the traffic were "
            "opened again") in body
    assert f"the server ended keep-alive with Connection: close on {31 * talking:,} responses;" in body
    tr["connections_reopened"] = talking // 2  # fewer than one each (a keep-alive limit): said, not headlined
    page = render(rep)
    assert '<span class="badge b-pass">' in section(page, "run") and "connections reopened" not in section(page, "run")
    assert f"{talking // 2:,} times: connections the server closed" in section(page, "traffic")
    # nginx's keepalive_requests 1000: each connection reopened once, one per 1,000 responses - no headline
    tr["connections_reopened"], tr["replies"] = talking, 1000 * talking
    assert '<span class="badge b-pass">' in section(render(rep), "run")


# --- traffic errors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_page(traffic_report: dict[str, Any]) -> str:
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1000, "127.0.0.3": 145})
    rep["sources_used"] = 4
    return render(rep)


def test_traffic_errors_are_told_apart_from_connection_failures(error_page: str) -> None:
    assert "No connection failed" not in error_page
    errors = section(error_page, "errors")
    assert "<h3>Connection failures</h3>" in errors and "None: every connection was established" in errors
    assert '<p class="pass">' not in errors  # nothing green in a section with 1,145 errors
    assert "1,145 errors in the traffic over established connections" in errors
    assert "http-5xx</td>" in errors and "1,145</td>" in errors
    assert "the server answered 5xx (server error)" in errors and "look at the server&#x27;s error log" in errors
    assert "Errors came from 2 source addresses:" in errors
    assert errors.index("127.0.0.2") < errors.index("127.0.0.3")
    assert "2 of the run's 4 source addresses" in errors  # some addresses only: a hint at the server


def test_traffic_errors_make_the_verdict_red(error_page: str) -> None:
    run = section(error_page, "run")
    assert '<span class="badge b-fail">all connections established; traffic ' in run and "1,145 errors" in run
    keys = section(error_page, "key-numbers")
    assert re.search(r"<td[^>]*>traffic\.errors</td><td[^>]*>1,145</td>", keys)
    assert re.search(r"<td[^>]*>traffic\.errors\.http-5xx</td><td[^>]*>1,145</td>", keys)
    assert '<a href="#errors">1,145</a>' in section(error_page, "traffic")


def test_connection_failures_and_traffic_errors_both_listed(traffic_report: dict[str, Any]) -> None:
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1145})
    rep["failures"] = [{"cause": "ECONNREFUSED", "count": 3, "meaning": "nobody listening", "fix": "start it"}]
    rep["failed_total"] = 3
    errors = section(render(rep), "errors")
    assert errors.index("ECONNREFUSED") < errors.index("<h3>Traffic errors</h3>") < errors.index("http-5xx")
    assert "None: every connection" not in errors and "No connection failed" not in errors


def test_error_sources_show_the_top_ten(traffic_report: dict[str, Any]) -> None:
    by_source = {f"127.1.0.{i}": 100 + i for i in range(1, 21)}
    rep = with_traffic_errors(traffic_report, by_source)
    rep["traffic"]["sources_with_errors"] = 37  # report.json keeps the 20 with the most
    rep["sources_used"] = 100
    errors = section(render(rep), "errors")
    assert "Errors came from 37 source addresses; the 10 with the most:" in errors
    assert "127.1.0.20" in errors and "127.1.0.11" in errors and "127.1.0.10<" not in errors


def test_report_values_are_escaped(traffic_report: dict[str, Any]) -> None:
    rep = with_traffic_errors(traffic_report, {"<img src=x>": 1145})
    rep["traffic"]["error_causes"][0]["cause"] = "<b>bad</b>"
    rep["traffic"]["statuses"] = {"<i>s</i>": 1}
    page = render(rep)
    assert "<img src=x>" not in page and "<b>bad</b>" not in page and "<i>s</i>" not in page
    assert "&lt;img src=x&gt;" in page and "&lt;b&gt;bad&lt;/b&gt;" in page
    assert_self_contained(page)


def test_warmup_errors_are_shown_apart(traffic_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(traffic_report)
    rep["traffic"]["warmup_errors"] = {"reply-timeout": 7}
    page = render(rep)
    line = "7 during the warm-up, not counted in the errors: reply-timeout 7"
    assert line in section(page, "traffic")
    errors = section(page, "errors")
    assert "None: every reply was complete" in errors and line in errors
    assert "no errors" in section(page, "run")  # the window's errors decide, as for the exit status


def test_half_open_connections_turn_the_page_red_and_the_kernel_line_is_shown(
        traffic_report: dict[str, Any]) -> None:
    """The terminal's kernel cross-check and its half-open verdict, on the page too."""
    rep = copy.deepcopy(traffic_report)
    rep["kernel_check"] = {"open_connections": 2000, "kernel_client_side": 2000, "kernel_server_side": 13,
                           "kernel_client_closing": None, "half_open": 1987, "agrees": False}
    run = section(render(rep), "run")
    assert "b-fail" in run and "1,987 connections half-open" in run
    assert "ESTABLISHED per the kernel: client side 2,000, server side 13" in run


def test_connections_never_accepted_turn_the_page_red(traffic_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(traffic_report)
    rep["kernel_check"] = {"open_connections": 2000, "kernel_client_side": 2000, "kernel_server_side": 2000,
                           "kernel_client_closing": None, "half_open": 0, "accept_queued": 173,
                           "never_accepted": 173, "agrees": False}
    run = section(render(rep), "run")
    assert "b-fail" in run and "173 connections never accepted by the server (still in its accept queue)" in run
    assert "173 never accepted: still in the server&#x27;s accept queue" in run or \
        "173 never accepted: still in the server's accept queue" in run


def test_an_interrupted_traffic_run_does_not_blame_the_server(traffic_report: dict[str, Any]) -> None:
    rep = copy.deepcopy(traffic_report)
    rep["traffic"].update(interrupted=True, unanswered_at_end=20, unsent_at_end=0)
    traffic = section(render(rep), "traffic")
    assert "in flight when the run was interrupted: no drain" in traffic and "was behind" not in traffic


def test_a_run_interrupted_before_its_traffic_blames_no_server(traffic_report: dict[str, Any]) -> None:
    """Review: the page said 'N were closed by the server before the traffic began' for a run
    interrupted before it began (loopfan closed them); the terminal did not. One helper now."""
    rep = copy.deepcopy(traffic_report)
    rep["interrupted"] = "SIGINT"
    rep["traffic"].update(window_s=0.0, sent=0, connections_talking_at_start=0, connections_talking_at_end=0)
    assert "closed by the server before the traffic began" not in section(render(rep), "traffic")


def test_an_older_traffic_block_still_renders(traffic_report: dict[str, Any]) -> None:
    """A report from before sent_in_window and the warm-up's own counts: the figures it has."""
    rep = copy.deepcopy(traffic_report)
    for key in ("sent_in_window", "warmup_errors", "warmup_statuses", "unsent_in_latency"):
        del rep["traffic"][key]
    body = section(render(rep), "traffic")
    assert f"{rep['traffic']['replies_in_window']:,} responses; over the whole run" in body
    assert "warm-up statuses" not in body


# --- the baseline --------------------------------------------------------------------------------------


def test_baseline_with_traffic_is_compared(traffic_report: dict[str, Any]) -> None:
    base = copy.deepcopy(traffic_report)
    base["traffic"]["latency_ms"]["p99"] = 987.0
    base["traffic"]["messages_per_s"] = traffic_report["traffic"]["messages_per_s"] * 2
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1145})
    page = render(rep, base)
    body = section(page, "traffic")
    assert "<th class=\"n\">baseline latency</th>" in body and "<th class=\"n\">baseline first byte</th>" in body
    assert "987.0 ms" in body
    keys = section(page, "key-numbers")
    row = re.search(r"<td[^>]*>traffic\.messages_per_s</td>.*?</tr>", keys)
    assert row and '<span class="worse">' in row.group(0) and "(-50.0%)" in row.group(0)
    row = re.search(r"<td[^>]*>traffic\.errors\.http-5xx</td>.*?</tr>", keys)
    assert row and "<td class=\"n\">0</td>" in row.group(0)  # the baseline talked: 0, not unknown


def key_number_names(page: str) -> list[str]:
    return re.findall(r"<tr><td[^>]*>([^<]+)</td>", section(page, "key-numbers"))


def test_key_numbers_are_the_compare_table(traffic_report: dict[str, Any]) -> None:
    """The page's key numbers are `loopfan compare`'s rows, in its order: one table, one vocabulary."""
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1145})
    rep["failed"], rep["failed_total"] = {"ECONNREFUSED": 3}, 3
    for base in (None, traffic_report):
        assert key_number_names(render(rep, base)) == [r.metric.name for r in rows(base, rep, traffic=True)]
    # A run that stopped talking, against a baseline that talked: the traffic rows say "not measured".
    hold = copy.deepcopy(traffic_report)
    hold["traffic"] = None
    row = re.search(r"<td[^>]*>traffic\.messages_per_s</td><td[^>]*>-</td>", section(render(hold, rep), "key-numbers"))
    assert row


def test_baseline_without_traffic_leaves_the_traffic_uncompared(traffic_report: dict[str, Any]) -> None:
    base = copy.deepcopy(traffic_report)
    base["traffic"] = None
    page = render(traffic_report, base)
    assert "baseline latency" not in section(page, "traffic")
    row = re.search(r"<td[^>]*>traffic\.latency\.p50</td>.*?</tr>", section(page, "key-numbers"))
    assert row and '<td class="n">-</td>' in row.group(0)


# --- the per-interval traffic charts ----------------------------------------------------------------


def test_traffic_charts_are_drawn_from_the_series(traffic_report: dict[str, Any]) -> None:
    page = render(filled_series(with_traffic_errors(traffic_report, {"127.0.0.2": 1145})))
    body, errors = section(page, "traffic"), section(page, "errors")
    assert MESSAGES_CHART in body and LATENCY_CHART in body and "no per-interval traffic" not in body
    assert body.index(MESSAGES_CHART) < body.index("<h3>Latency</h3>") < body.index(LATENCY_CHART)
    assert ERRORS_CHART in errors and ">http-5xx<" in errors.split("<table>")[0]
    assert ">reply-timeout<" not in errors  # a cause with nothing in it draws no line


@pytest.mark.parametrize("how", ["absent", "empty"])
def test_traffic_charts_need_data(traffic_report: dict[str, Any], how: str) -> None:
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1145})
    n = len(rep["series"]["t_s"])
    if how == "absent":  # a report of today: no such columns, messages_per_s never filled
        rep = with_traffic_series(rep, messages_per_s=[0.0] * n, message_latency_ms=None, errors_per_s=None,
                                  errors_by_cause_per_s=None)
    else:
        rep = with_traffic_series(rep, messages_per_s=[0.0] * n,
                                  message_latency_ms={k: [None] * n for k in ("count", "p50", "p90", "p99", "p999",
                                                                              "max")},
                                  errors_per_s=[0] * n, errors_by_cause_per_s={"http-5xx": [0] * n})
    page = render(rep)
    body = section(page, "traffic")
    assert MESSAGES_CHART not in page and LATENCY_CHART not in page and ERRORS_CHART not in page
    assert "no per-interval traffic figures" in body
    assert "1,145 errors in the traffic" in section(page, "errors")  # the table does not need the series


def test_errors_chart_falls_back_to_the_total(traffic_report: dict[str, Any]) -> None:
    n = len(traffic_report["series"]["t_s"])
    rep = with_traffic_series(with_traffic_errors(traffic_report, {"127.0.0.2": 1145}),
                              errors_per_s=[3] * n, errors_by_cause_per_s=None)
    errors = section(render(rep), "errors")
    assert ERRORS_CHART in errors and ">traffic errors<" in errors


def test_a_report_without_series_still_renders_its_traffic(traffic_report: dict[str, Any]) -> None:
    rep = with_traffic_errors(traffic_report, {"127.0.0.2": 1145})
    rep["series"] = None
    page = render(rep)
    assert "no per-interval traffic figures" in section(page, "traffic")
    assert "No connection failed" not in page and "1,145 errors in the traffic" in page


def test_charts_take_columns_that_are_short_or_missing() -> None:
    series = {"t_s": [0.0, 1.0, 2.0, 3.0], "messages_per_s": [10, 20],
              "message_latency_ms": {"p50": [1.0, None, 2.0], "max": [3.0, 4.0, 5.0, 6.0, 7.0]},
              "errors_by_cause_per_s": {"bad-reply": [0, 1]}}
    assert "<svg" in charts.messages(series, 15.0)
    assert "<svg" in charts.message_latency_over_time(series)
    assert "<svg" in charts.traffic_errors(series)


def test_has_data() -> None:
    assert not charts.has_data()
    assert not charts.has_data(None, [], [0, 0.0, None])
    assert charts.has_data([None, 0, 0.5])
    assert charts.has_data([0], [None, 2])


def test_trend_of_traffic_runs_follows_their_traffic(traffic_report: dict[str, Any], tmp_path: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A trend of runs that talked shows messages/s, request latency and errors beside the connect
    figures (it showed the connect figures only), and summarises them."""
    paths = []
    for i, rate in enumerate([1000.0, 1100.0, 500.0]):
        rep = copy.deepcopy(traffic_report)
        rep["started_at"] = float(i)
        rep["traffic"]["messages_per_s"] = rate
        path = tmp_path / f"t{i}.json"
        path.write_text(json.dumps(rep))
        paths.append(str(path))
    assert main(["trend", *paths, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert "traffic.messages_per_s" in head and "traffic.latency.p99" in head and "traffic.errors" in head
    assert "traffic.messages_per_s: min 500/s, median 1,000/s, max 1,100/s; last run vs the median of the " \
           "others -52.4%" in out


def test_trend_leaves_out_the_traffic_of_a_run_whose_traffic_never_ran(traffic_report: dict[str, Any]) -> None:
    """Every connect refused: no traffic figure, not '0 errors' counted as a clean run."""
    from loopfan.results.compare import trend_rows, trend_summary
    ran = copy.deepcopy(traffic_report)
    never = copy.deepcopy(traffic_report)
    never["started_at"] = ran["started_at"] + 1
    never["traffic"].update(connections_talking_at_start=0, sent=0, window_s=0.0, messages_per_s=None,
                            errors_total=0)
    table = trend_rows([("ran", ran), ("never", never)])
    assert table[1]["traffic.errors"] is None and table[1]["traffic.latency.p99"] is None
    assert table[0]["traffic.errors"] == 0
    assert trend_summary(table)["traffic.errors"]["last"] is None


def test_the_badge_of_an_interrupted_run_names_the_later_signals_too(traffic_report: dict[str, Any]) -> None:
    """Ctrl-C, then a SIGTERM while loopfan closed: the page said only "interrupted (SIGINT)"; the
    text report's head says both, and so does the page now."""
    rep = copy.deepcopy(traffic_report)
    rep.update(interrupted="SIGINT", signals_after_interrupt=["SIGTERM"])
    assert "interrupted (SIGINT; SIGTERM too, while closing): partial" in render(rep)
    rep.update(signals_after_interrupt=[])
    assert "interrupted (SIGINT): partial" in render(rep)
    del rep["signals_after_interrupt"]  # a report from before the field
    assert "interrupted (SIGINT): partial" in render(rep)
