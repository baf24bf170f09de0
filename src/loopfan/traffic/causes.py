"""Traffic error causes: every name a run counts in the traffic block's "errors" (and a check
names as traffic.errors.CAUSE), with its meaning and its fix - the traffic twin of engine/causes.py.

Rules of this file: the one list. The protocol objects (traffic/http.py, ws.py, raw.py) and the
client loop (engine/traffic_client.py) count a traffic error only under a name defined here: a named
cause (MEANINGS), a member of an open family (FAMILIES: the part after the prefix comes from the
server - a status, a close code) or an errno as engine.causes.cause_for names it. A test reads their
source to hold them to it. Checks refuse any other name: one no run can count would make
`traffic.errors.TYPO==0` a check that always passes.
"""

from __future__ import annotations

import re

from loopfan.engine.causes import is_errno_cause

SERVER_LIMIT = ("the server's own connection limit is the usual cause: nginx worker_connections / "
                "worker_rlimit_nofile, or the server process's ulimit -n")

MEANINGS: dict[str, tuple[str, str]] = {
    "closed-by-peer": ("the server closed an idle keep-alive connection", SERVER_LIMIT),
    "closed-awaiting-reply": ("the server closed the connection instead of answering (or it stopped)",
                              "look at the server's error log and whether it is still running; " + SERVER_LIMIT),
    "closed-mid-reply": ("the server closed the connection in the middle of a reply",
                         "the server crashed or cut the reply short: look at its logs"),
    # Two servers look alike here: one that never serves the connection, and one that serves it
    # slower than --reply-timeout (audit: 2 s per reply against 0.5 s read as a stuck accept loop).
    # no_reply_ever() says the likelier when the run's other replies tell them apart.
    "no-reply-ever": ("no reply at all within --reply-timeout on a connection that never had one: the "
                      "server never served it (the kernel accepted it), or it takes longer than "
                      "--reply-timeout to answer",
                      "if the server is slow, raise --reply-timeout; if it never answers, its accept loop is "
                      "stuck - often at its open-file limit; " + SERVER_LIMIT),
    "unexpected-reply": ("more replies arrived than messages were sent",
                         "raw: --expect-length / --expect-end split one reply into several - make them "
                         "match the whole reply; ws: the server sends messages of its own"),
    "reply-incomplete": ("part of a reply arrived, the rest never did within --reply-timeout",
                         "raw: check --expect-length / --expect-end / --expect-contains match what the "
                         "server sends; otherwise the server stalls mid-reply"),
    "reply-timeout": ("a reply did not complete within --reply-timeout", "a longer --reply-timeout, or a "
                      "lower rate; check the server is not overloaded"),
    "reply-mismatch": ("an echo reply differed from the message", "the server is not an echo server"),
    "bad-reply": ("the server's bytes are not valid for the protocol (garbage)", "check the target speaks "
                  "the protocol chosen with --traffic"),
    "http-4xx": ("the server answered 4xx (client error)", "check the method, path and headers; a 403 on some "
                 "source addresses means the server refuses those clients"),
    "http-5xx": ("the server answered 5xx (server error)", "look at the server's error log"),
    "http-connection-close": ("the server ended keep-alive (Connection: close)", "raise the server's "
                              "keepalive_requests / keepalive_timeout"),
    "ws-bad-handshake": ("the WebSocket opening handshake failed", "check the target is a WebSocket server"),
    "ws-closed-in-handshake": ("the server closed the connection during the WebSocket handshake",
                               "check the target is a WebSocket server; " + SERVER_LIMIT),
    # Every connection's handshake starts at once, and they cost CPU at both ends (~0.2 ms each in
    # wsproto): QA, 120,000 against the built-in server took 40 s on a busy 2-core host - 54,614 timed
    # out at the default 10 s; with --reply-timeout 60s all were done and the run passed.
    "ws-handshake-timeout": ("the WebSocket opening handshake got no answer within --reply-timeout (every "
                             "connection's starts at once, before the clock)",
                             "give the handshakes longer, e.g. --reply-timeout 60s (100,000 at once can take "
                             "tens of seconds of CPU at both ends); else the server is overloaded or not "
                             "listening for WebSocket"),
    "tls-cert-verify-failed": ("the server's TLS certificate was not trusted: not signed by a trusted CA, "
                               "or not for the URL's host (an address URL is checked against the "
                               "certificate's IP addresses)",
                               "trust the CA that signed it with --cacert FILE (PEM); for a name or IP "
                               "address mismatch (the tls line's first failure) use a URL host the certificate "
                               "names, e.g. https://localhost:PORT/; or skip the check with --insecure (then "
                               "nothing is verified)"),
    "tls-handshake-failed": ("the TLS handshake failed: the server sent an alert or closed, or does not "
                             "speak TLS on this port (the tls line's first TLS error says which)",
                             "check the port serves TLS (an http:// server answers https:// with garbage) "
                             "and the server's error log (protocol versions, ciphers, SNI); a server that "
                             "requires a client certificate needs --cert FILE"),
    "tls-handshake-timeout": ("the TLS handshake got no answer within --reply-timeout (every connection's "
                              "starts at once, before the clock)",
                              "give the handshakes longer, e.g. --reply-timeout 60s (each costs CPU at both "
                              "ends); else the server is overloaded or not listening for TLS"),
    "tls-error": ("after the handshake the server sent a TLS alert or bytes that are not valid TLS records "
                  "(the tls line's first TLS error says which; a TLS 1.3 server refuses a missing client "
                  "certificate this way)",
                  "for TLSV13_ALERT_CERTIFICATE_REQUIRED give --cert FILE; else look at the server's error "
                  "log (a proxy in between may corrupt the stream)"),
    "ECONNRESET": ("the server reset the connection", SERVER_LIMIT),
    "EPIPE": ("the connection was closed while sending", SERVER_LIMIT),
}


# Other replies' slowest beside --reply-timeout: at half of it or more the server is slow for some
# replies, so a first reply past the timeout is the likelier reading; at a tenth or less every reply
# came quickly, so a connection with none was not served at all. In between the figures cannot tell.
_SLOW_SHARE = 0.5
_FAST_SHARE = 0.1


def no_reply_ever(replies: int, slowest_reply_ms: float | None, reply_timeout_s: float | None,
                  reply_timeouts: int) -> tuple[str, str]:
    """no-reply-ever's meaning and fix, with the likelier of its two readings first when the run's
    other figures tell them apart: replies that came near the timeout, or timed out on connections
    that had answered before (reply-timeout), point to a slow server; other replies all quick point
    to connections the server never served."""
    meaning, fix = MEANINGS["no-reply-ever"]
    if not reply_timeout_s:
        return meaning, fix
    allowed = f"the {reply_timeout_s:g} s --reply-timeout allows"
    slowest_ms = slowest_reply_ms if replies and slowest_reply_ms is not None else None
    slow = slowest_ms is not None and slowest_ms >= _SLOW_SHARE * reply_timeout_s * 1000
    if reply_timeouts or slow:
        seen = (f"{reply_timeouts:,} replies on connections that had answered before also timed out"
                if reply_timeouts else f"other replies took up to {(slowest_ms or 0) / 1000:,.3g} s of {allowed}")
        return meaning, (f"likelier the server is slower than --reply-timeout ({seen}): raise it, e.g. "
                         f"--reply-timeout {max(1.0, reply_timeout_s * 4):g}s, or lower the load; if it then "
                         "still never answers, its accept loop is stuck - " + SERVER_LIMIT)
    if slowest_ms is not None and slowest_ms <= _FAST_SHARE * reply_timeout_s * 1000:
        return meaning, (f"likelier never served: {replies:,} replies on other connections took at most "
                         f"{slowest_ms:,.3g} ms, far under {allowed} - the server's accept loop is stuck "
                         "or it serves only some connections, often at its open-file limit; " + SERVER_LIMIT)
    return meaning, fix


# A server's own words in an error response's body that name the fix better than its status class
# can: (the words, lower case; what they mean; the fix). nginx's texts, from its 400 pages
# (src/http/ngx_http_special_response.c): a plain-text request on an ssl port, and the client
# certificate that ssl_verify_client on requires (missing, or not verified).
_SERVER_SAYS = (
    ("the plain http request was sent to https port",
     "the port speaks TLS: the server says \"The plain HTTP request was sent to HTTPS port\"",
     "use an https:// URL (wss:// for WebSocket), with --cacert FILE for a test CA or --insecure"),
    ("no required ssl certificate was sent",
     "the server requires a client certificate and none was sent: it says \"No required SSL certificate "
     "was sent\" (nginx ssl_verify_client on)",
     "give the client certificate and its key: --cert FILE --key FILE (PEM, signed by a CA the server "
     "trusts - nginx's ssl_client_certificate)"),
    ("the ssl certificate error",
     "the server did not accept the client certificate: it says \"The SSL certificate error\"",
     "give a --cert FILE signed by a CA the server trusts (nginx's ssl_client_certificate), not expired"),
)

# Over plain text, a server that closes every connection without a word may be a TLS one: a TLS
# server reads the request as a broken ClientHello and closes (openssl s_server does; nginx answers
# 400 instead, which _SERVER_SAYS reads). A hint, not a claim: a server at its limit looks the same.
_MAYBE_TLS = ("no connection had any answer: if the port serves TLS (a TLS server closes on plain text), "
              "use {scheme}; else ")
# Over TLS 1.3 the client's side of the handshake is done before the server has checked the client
# certificate, so a server that requires one and gets none closes after the handshake - with an alert
# (TLSV13_ALERT_CERTIFICATE_REQUIRED, counted tls-error) or without one (the websockets library on
# Python's ssl: the connection just closes, before the WebSocket upgrade is answered).
_MAYBE_CLIENT_CERT = ("likely a server that requires a client certificate (over TLS 1.3 it checks it after "
                      "the client's side of the handshake is done, and may close without an alert): give "
                      "--cert FILE --key FILE; else ")


def in_context(cause: str, meaning: str, fix: str, *, kind: str, answered: bool, tls: bool,
               client_cert: bool, first_error: dict[str, object] | None = None) -> tuple[str, str]:
    """A cause's meaning and fix, told what the run saw besides: the first error response's body
    (`first_error`: {"status", "body"}), whether any connection was answered (a reply, a completed
    WebSocket handshake), whether the run spoke TLS and offered a client certificate. The server's
    own words replace the generic text; a pattern that only suggests a reason goes first in the fix,
    as "likely" or "if", the generic fix after it."""
    status = int(str(first_error.get("status") or 0)) if first_error else 0
    if first_error and cause in (f"http-{status // 100}xx", f"ws-rejected-http-{status}"):
        body = str(first_error.get("body") or "").lower()
        for words, said, said_fix in _SERVER_SAYS:
            if words in body:
                return f"{meaning}; {said}", said_fix
    if answered:
        return meaning, fix
    if not tls and (cause, kind) in (("closed-awaiting-reply", "http"), ("ws-closed-in-handshake", "ws")):
        return meaning, _MAYBE_TLS.format(scheme="wss://" if kind == "ws" else "https://") + fix
    if tls and not client_cert and cause in ("closed-awaiting-reply", "ws-closed-in-handshake"):
        return meaning, _MAYBE_CLIENT_CERT + fix
    return meaning, fix


def explain(cause: str) -> tuple[str, str]:
    if cause in MEANINGS:
        return MEANINGS[cause]
    if cause.startswith("ws-rejected-http-"):
        status = cause.rsplit("-", 1)[1]
        # A WebSocket server refuses a handshake it does not like with an HTTP status of its own: 401/403
        # for missing credentials or a foreign Origin, 400 for a subprotocol or header it requires (the
        # websockets library: "missing subprotocol"). Those speak WebSocket; the handshake lacks something.
        if status in ("401", "403"):
            return (f"the server refused the WebSocket handshake with HTTP {status}: it wants credentials, a "
                    "cookie or another Origin", "send them in the handshake: --header 'Authorization: Bearer "
                    "TOKEN' (or 'Cookie: ...', 'Origin: ...')")
        if status == "400":
            return ("the server refused the WebSocket handshake with HTTP 400: often a subprotocol or a header "
                    "it requires", "offer the subprotocol it expects (--ws-subprotocol NAME, e.g. mqtt) and the "
                    "headers it needs (--header 'Name: value'); check the ws:// URL's path")
        return (f"the server answered the WebSocket handshake with a plain HTTP {status}: it does not speak "
                "WebSocket at this URL", "check the ws:// URL's port and path")
    if cause.startswith("ws-close-"):
        code = cause.rsplit("-", 1)[1]
        return (f"the server closed the WebSocket with code {code}", "look at the server's logs for the reason")
    return ("an unexpected error", "please report it with the JSON report")


# Open families: (the name's shape as people read it, the names it takes). HTTP errors are counted
# by class, from the status line's three digits (h11 takes any, 100-999; 400 and up are errors);
# a WebSocket close carries the server's close code (RFC 6455 7.4), a refused handshake its HTTP status.
FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("http-4xx ... http-9xx", re.compile(r"http-[4-9]xx")),
    ("ws-close-CODE", re.compile(r"ws-close-\d+")),
    ("ws-rejected-http-STATUS", re.compile(r"ws-rejected-http-\d{3}")),
)


def is_traffic_cause(name: str) -> bool:
    """Whether some run can count a traffic error under `name` (whether or not this one did)."""
    return (name in MEANINGS or any(pattern.fullmatch(name) for _, pattern in FAMILIES)
            # an errno, as cause_for(err, "send" / "recv") names it (EADDRNOTAVAIL: @connect)
            or is_errno_cause(name) or name == "EADDRNOTAVAIL@connect")


def known_traffic_causes() -> str:
    """The names for people, one line: the named causes, the families' shapes, errno names."""
    named = [c for c in MEANINGS if not is_errno_cause(c) and not any(p.fullmatch(c) for _, p in FAMILIES)]
    return ", ".join([*named, *(shape for shape, _ in FAMILIES),
                      "or any errno name (e.g. EHOSTUNREACH)"])

