"""traffic/causes.py: the one list of traffic error causes, and the code held to it.

A check names a cause (traffic.errors.CAUSE) and is refused when no run can count it; that is only
right while every name the client counts is on the list. The source test reads the places that
count an error and checks each literal name against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loopfan
from loopfan.traffic.causes import (
    MEANINGS,
    explain,
    in_context,
    is_traffic_cause,
    known_traffic_causes,
    no_reply_ever,
)
from loopfan.traffic.report import first_error_line, traffic_section
from loopfan.traffic.results import TrafficTotals, merge

SRC = Path(loopfan.__file__).parent
# Where traffic errors get their names: the client loop and the protocol objects it asks.
COUNTING = ["engine/traffic_client.py", "traffic/http.py", "traffic/ws.py", "traffic/raw.py", "traffic/tls.py"]
# What an f-string's holes hold there: an HTTP status class digit, a close code, an HTTP status.
HOLE_SAMPLES = ("4", "1011", "401")


def _counted_names(tree: ast.AST) -> list[ast.expr]:
    """The expressions a traffic error's name comes from: tally.error(NAME), _drop(conn, NAME),
    codec.dead = NAME, `return NAME` in the *_cause helpers, cause / cls = NAME, and the names a
    handshaking codec gives its failures (handshake_timeout / closed_in_handshake = NAME)."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "error" and node.args:
                found.append(node.args[0])
            elif node.func.attr == "_drop" and len(node.args) == 2:
                found.append(node.args[1])
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if ((isinstance(target, ast.Attribute) and target.attr == "dead")
                        or (isinstance(target, ast.Name)
                            and target.id in ("cause", "cls", "handshake_timeout", "closed_in_handshake"))):
                    found.append(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("_cause"):
            found += [r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None]
    return found


def _constants(tree: ast.Module) -> dict[str, str]:
    """A module's string constants (TLS_ERROR = "tls-error"): names counted through them count too."""
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}


def _literal_names(expr: ast.expr, constants: dict[str, str] | None = None) -> list[str | list[str]]:
    """The names an expression can give, where the source spells them: a string (or a module
    constant holding one), or for an f-string the names it gives with sample values in its holes.
    Other variables and calls give none here."""
    if isinstance(expr, ast.Name) and constants and expr.id in constants:
        return [constants[expr.id]]
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value] if expr.value else []  # ("": dropped without counting anything)
    if isinstance(expr, ast.IfExp):
        return [*_literal_names(expr.body, constants), *_literal_names(expr.orelse, constants)]
    if isinstance(expr, ast.JoinedStr):
        return [["".join(p.value if isinstance(p, ast.Constant) else sample for p in expr.values)
                 for sample in HOLE_SAMPLES]]
    return []


def test_every_name_the_client_counts_is_a_known_cause() -> None:
    names: list[str | list[str]] = []
    for rel in COUNTING:
        tree = ast.parse((SRC / rel).read_text(encoding="utf-8"))
        for expr in _counted_names(tree):
            names += _literal_names(expr, _constants(tree))
    flat = {n if isinstance(n, str) else n[0] for n in names}
    # (the scan still finds the places: a refactor that hid them would make this test vacuous)
    assert {"reply-timeout", "closed-by-peer", "reply-mismatch", "ws-handshake-timeout", "bad-reply",
            "tls-error", "tls-cert-verify-failed"} <= flat
    assert any(isinstance(n, list) and n[0].startswith("ws-close-") for n in names)
    for name in names:
        if isinstance(name, str):
            assert is_traffic_cause(name), f"{name!r} is counted but not in traffic/causes.py"
        else:  # an f-string: some sample fills it with a member of a family
            assert any(is_traffic_cause(n) for n in name), f"{name} fits no family in traffic/causes.py"


@pytest.mark.parametrize("name", [
    *MEANINGS, "http-4xx", "http-5xx", "http-6xx", "ws-close-1000", "ws-close-4999", "ws-rejected-http-401",
    "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "errno200", "EADDRNOTAVAIL@connect",
])
def test_known_causes(name: str) -> None:
    assert is_traffic_cause(name)


@pytest.mark.parametrize("name", [
    "timout", "reply-timout", "http-503", "http-2xx", "http-3xx", "ws-close-", "ws-close-normal",
    "ws-rejected-http-4011", "ws-rejected-401", "econnreset", "EADDRNOTAVAIL", "EADDRNOTAVAIL@bind",
    "ws-handshake-ok", "worker-died", "",
])
def test_names_no_run_counts_as_a_traffic_error(name: str) -> None:
    assert not is_traffic_cause(name)


def test_every_named_cause_is_explained_and_listed() -> None:
    listed = known_traffic_causes()
    for name in MEANINGS:
        assert explain(name) == MEANINGS[name]
    for shape in ("reply-timeout", "http-4xx ... http-9xx", "ws-close-CODE", "ws-rejected-http-STATUS",
                  "errno name"):
        assert shape in listed
    assert "\n" not in listed


# --- no-reply-ever: a slow server or one that never served the connection -----------------------------


def test_no_reply_ever_says_both_readings_when_the_run_cannot_tell() -> None:
    """Audit: a server answering in 2 s against --reply-timeout 0.5s was blamed on a stuck accept loop."""
    meaning, fix = explain("no-reply-ever")
    assert "takes longer than --reply-timeout to answer" in meaning and "never served it" in meaning
    assert "if the server is slow, raise --reply-timeout" in fix and "accept loop is stuck" in fix
    # No other reply at all: nothing tells a slow server from a stuck one.
    assert no_reply_ever(0, None, 0.5, 0) == (meaning, fix)
    # Other replies between a tenth and half of the timeout: not decisive either.
    assert no_reply_ever(100, 200.0, 1.0, 0) == (meaning, fix)


def test_no_reply_ever_names_a_slow_server_when_other_replies_came_near_the_timeout() -> None:
    _, fix = no_reply_ever(500, 420.0, 0.5, 0)
    assert fix.startswith("likelier the server is slower than --reply-timeout (other replies took up to 0.42 s "
                          "of the 0.5 s --reply-timeout allows): raise it, e.g. --reply-timeout 2s"), fix
    # Connections that had answered timing out later: the server is slow, whatever the latency says.
    _, fix = no_reply_ever(500, 3.0, 10.0, 7)
    assert "likelier the server is slower" in fix and "7 replies on connections that had answered" in fix
    assert "--reply-timeout 40s" in fix


def test_no_reply_ever_names_connections_never_served_when_other_replies_were_quick() -> None:
    _, fix = no_reply_ever(12_000, 4.5, 10.0, 0)
    assert fix.startswith("likelier never served: 12,000 replies on other connections took at most 4.5 ms, far "
                          "under the 10 s --reply-timeout allows - the server's accept loop is stuck"), fix
    assert "raise" not in fix


def test_the_report_gives_no_reply_ever_the_likelier_reading() -> None:
    """traffic_section hands the window's replies and the run's --reply-timeout to no_reply_ever."""
    t = TrafficTotals(window_s=1.0, replies=3, window_replies=3, errors={"no-reply-ever": 5})
    for us in (400_000, 410_000, 450_000):  # replies near the 0.5 s timeout: a slow server
        t.latency.record_value(us)
    tr = traffic_section(t, "echo", False, 0.0, None, reply_timeout_s=0.5)
    assert tr is not None
    (cause,) = tr["error_causes"]
    assert cause["cause"] == "no-reply-ever" and cause["fix"].startswith("likelier the server is slower"), cause
    tr = traffic_section(t, "echo", False, 0.0, None)  # the timeout not known (older callers): both readings
    assert tr is not None and tr["error_causes"][0]["fix"] == explain("no-reply-ever")[1]


def test_tls_fixes_name_the_options_that_fix_them() -> None:
    """QA: an https://127.0.0.1 URL against a certificate for localhost only was told to trust the CA
    (it was trusted) or use --insecure; and a server wanting a client certificate had no fix at all."""
    assert "use a URL host the certificate names, e.g. https://localhost:PORT/" in explain("tls-cert-verify-failed")[1]
    assert "--cert FILE" in explain("tls-handshake-failed")[1] and "--cert FILE" in explain("tls-error")[1]


NGINX_PLAIN_TO_TLS = {"status": 400, "body": "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS "
                                            "port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1>"}
NGINX_NO_CLIENT_CERT = {"status": 400, "body": "<html>\r\n<head><title>400 No required SSL certificate was "
                                              "sent</title></head>"}


def _fix(cause: str, **seen: object) -> tuple[str, str]:
    context: dict[str, object] = {"kind": "http", "answered": False, "tls": False, "client_cert": False, **seen}
    return in_context(cause, *explain(cause), **context)  # type: ignore[arg-type]


def test_the_servers_own_words_name_the_fix() -> None:
    """QA: http:// against nginx's TLS port, and https:// without the client certificate nginx requires,
    were both counted http-4xx with "check the method, path and headers"."""
    meaning, fix = _fix("http-4xx", answered=True, first_error=NGINX_PLAIN_TO_TLS)
    assert meaning.startswith("the server answered 4xx") and "the port speaks TLS" in meaning
    assert fix.startswith("use an https:// URL")
    meaning, fix = _fix("http-4xx", answered=True, tls=True, first_error=NGINX_NO_CLIENT_CERT)
    assert "requires a client certificate" in meaning and "--cert FILE --key FILE" in fix
    # Other words, or the words under another class (a 5xx sample beside 4xx errors): the generic text.
    assert _fix("http-4xx", answered=True, first_error={"status": 404, "body": "Not Found"}) == explain("http-4xx")
    assert _fix("http-5xx", answered=True, first_error=NGINX_PLAIN_TO_TLS) == explain("http-5xx")


def test_closes_before_any_answer_hint_at_tls_or_a_client_certificate() -> None:
    """A hint, first in the fix, the generic fix kept after it: plain text closed on every connection
    may be a TLS port (openssl s_server); over TLS without --cert, a server wanting a client certificate
    (TLS 1.3: the websockets library closes without an alert, before answering the upgrade)."""
    generic = explain("closed-awaiting-reply")[1]
    fix = _fix("closed-awaiting-reply")[1]
    assert fix.startswith("no connection had any answer: if the port serves TLS") and "use https://" in fix
    assert fix.endswith(generic)
    assert "use wss://" in _fix("ws-closed-in-handshake", kind="ws")[1]
    ws_generic = explain("ws-closed-in-handshake")[1]
    fix = _fix("ws-closed-in-handshake", kind="ws", tls=True)[1]
    assert fix.startswith("likely a server that requires a client certificate") and "--cert FILE --key FILE" in fix
    assert fix.endswith(ws_generic)
    # Answered connections, or a client certificate given: the generic fix alone.
    assert _fix("closed-awaiting-reply", answered=True) == explain("closed-awaiting-reply")
    assert _fix("ws-closed-in-handshake", kind="ws", tls=True, client_cert=True)[1] == ws_generic
    assert _fix("ws-closed-in-handshake", kind="ws", tls=True, answered=True)[1] == ws_generic


def test_the_report_carries_the_first_error_response_and_reads_it() -> None:
    t = TrafficTotals(window_s=1.0, replies=5, window_replies=5, errors={"http-4xx": 5},
                      statuses={"http-4xx": 5}, first_error_response=dict(NGINX_PLAIN_TO_TLS))
    tr = traffic_section(t, "http", False, 0.0, None)
    assert tr is not None and tr["first_error_response"] == NGINX_PLAIN_TO_TLS
    assert tr["error_causes"][0]["fix"].startswith("use an https:// URL")
    assert first_error_line(tr) == ("HTTP 400: 400 The plain HTTP request was sent to HTTPS port 400 Bad Request")
    t = TrafficTotals(window_s=1.0, errors={"closed-awaiting-reply": 3})
    tr = traffic_section(t, "http", False, 0.0, None)
    assert tr is not None and "first_error_response" not in tr and first_error_line(tr) is None
    assert tr["error_causes"][0]["fix"].startswith("no connection had any answer")


def test_the_first_error_response_of_the_first_worker_that_had_one_is_kept() -> None:
    other = {"status": 503, "body": ""}
    assert merge([{"sent": 1, "first_error_response": {}}, {"first_error_response": NGINX_PLAIN_TO_TLS},
                  {"first_error_response": other}]).first_error_response == NGINX_PLAIN_TO_TLS
