"""The traffic options of `loopfan run` (issue 4) and their builders: argv text -> TrafficConfig.

Rules of this file: every option is declared once here (one decorator, `traffic_options`) and turned
into frozen values here; bad input becomes one UsageError line naming the option as the user types
it (`flag`) and the fix. An option that would be ignored - one for another kind of traffic, for the
built-in server when a TARGET is given, any of them without traffic - is refused, never dropped
silently: options with a default take None here, so "given" is "not None", and the defaults are
applied in the builder. URL targets (http://127.0.0.1:8080/path, ws://127.0.0.1:9000/, with ranges
as in plain targets) become ADDRESS:PORT text for the usual endpoint parser (which applies the
loopback rules) plus the scheme and the path; https:// and wss:// are the same in TLS, with the URL's
host name kept for SNI and the certificate check.
"""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import h11
from wsproto import ConnectionType, WSConnection

from loopfan.commands.common import RATE, CountType, DurationType, check_writable, shown
from loopfan.engine import protocol as P
from loopfan.errors import UsageError
from loopfan.traffic.config import (
    EXPECT_CONTAINS,
    EXPECT_ECHO,
    EXPECT_END,
    EXPECT_LENGTH,
    EXPECT_NONE,
    TrafficConfig,
    TrafficServerConfig,
    unescape,
)
from loopfan.traffic.http import request_template
from loopfan.traffic.tls import EncryptedKey, client_context
from loopfan.traffic.ws import HANDSHAKE_OWN, opening_request

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MESSAGE = b"loopfan " * 8  # 64 bytes
DEFAULT_METHOD = "GET"
DEFAULT_PIPELINE = 1
DEFAULT_DURATION_S = 10.0
DEFAULT_REPLY_TIMEOUT_S = 10.0
DEFAULT_RESPONSE_BYTES = 128
TRAFFIC_CHOICES = ("echo", "raw", "http", "ws")
# URL scheme -> the traffic kind it means; https and wss are the same in TLS.
_SCHEMES = {"http": "http", "ws": "ws", "https": "http", "wss": "ws"}
_TLS_SCHEMES = ("https", "wss")
_DEFAULT_PORT = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_ADDRESS_HOST = re.compile(r"\[.*\]|[0-9.-]+")  # an address or a range of them (not a name)
_PORTS = re.compile(r"\d+(-\d+)?")  # a URL's port: one, or a range as in plain targets
# The built-in server mode that answers each traffic kind (with no TARGET).
SERVER_MODE_FOR = {"echo": "echo", "raw": "echo", "http": "http", "ws": "ws"}



class TrafficDuration(DurationType):
    """A DURATION whose 'forever' stays visible (math.inf; the shared type makes it None, which
    here would read as "not given"), so the builder can say a traffic time must be finite."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | None:
        seconds = super().convert(value, param, ctx)
        return math.inf if seconds is None and value is not None else seconds


TRAFFIC_DURATION = TrafficDuration()

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--traffic", "traffic", type=click.Choice(TRAFFIC_CHOICES), default=None,
                 help="Talk over the connections once open: echo (raw TCP, the reply equals the message), "
                 "raw (raw TCP, see --expect-*), http (HTTP/1.1 keep-alive), ws (WebSocket). "
                 "Implied by an http://, https://, ws:// or wss:// TARGET."),
    click.option("--message", "message", metavar="TEXT", default=None,
                 help=r"The message (escapes: \n \r \t \0 \e \\ \xNN; http: the body, if no --body). "
                 "Default: 64 bytes."),
    click.option("--message-file", "message_file", metavar="FILE", default=None,
                 help="Read the message from FILE (bytes as they are)."),
    click.option("--expect-length", type=CountType("reply length"), default=None, metavar="N",
                 help="raw: a reply is N bytes."),
    click.option("--expect-end", default=None, metavar="MARKER", help="raw: a reply ends with MARKER (escapes)."),
    click.option("--expect-contains", default=None, metavar="MARKER",
                 help="raw: a reply is complete when MARKER arrives (escapes)."),
    click.option("--method", default=None, metavar="TEXT",
                 help=f"http: the request method (default {DEFAULT_METHOD})."),
    click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                 help="http: a request header; ws: a header of the opening handshake, e.g. 'Origin: "
                 "http://127.0.0.1' (repeatable)."),
    click.option("--body", default=None, metavar="TEXT", help="http: the request body (escapes)."),
    click.option("--pipeline", type=CountType("pipeline"), default=None, metavar="N",
                 help=f"Messages in flight per connection, for traffic that awaits replies (default "
                 f"{DEFAULT_PIPELINE}: no pipelining)."),
    click.option("--ws-binary", is_flag=True, help="ws: send binary messages (default: text)."),
    click.option("--ws-ping", is_flag=True, help="ws: send pings and time the pongs instead of messages."),
    click.option("--ws-subprotocol", "subprotocols", multiple=True, metavar="NAME",
                 help="ws: offer this subprotocol in the handshake, e.g. mqtt (repeatable, in order of "
                 "preference)."),
    click.option("--message-rate", type=RATE, default=None, metavar="R",
                 help="Messages per second on each connection, e.g. 100 or 2.5k (open model: latency from the "
                 "scheduled time)."),
    click.option("--rate", "total_rate", type=RATE, default=None, metavar="R",
                 help="Messages per second over the whole run, e.g. 50000 or 50k (open model). "
                 "Without a rate: closed loop, the next message when the reply arrives."),
    click.option("--duration", type=TRAFFIC_DURATION, default=None, metavar="DURATION",
                 help=f"How long the traffic phase lasts (after the warm-up; default {DEFAULT_DURATION_S:g}s). "
                 "To hold connections without traffic: --hold."),
    click.option("--warmup", type=TRAFFIC_DURATION, default=None, metavar="DURATION",
                 help="Talk this long first without counting it in the figures (default: no warm-up)."),
    click.option("--reply-timeout", type=TRAFFIC_DURATION, default=None, metavar="DURATION",
                 help="A reply not complete within this counts as a timeout (and ends the connection; "
                 f"default {DEFAULT_REPLY_TIMEOUT_S:g}s)."),
    click.option("--hdr-log", default=None, metavar="FILE",
                 help="Write the latency interval histograms in the HdrHistogram log format (microseconds): "
                 "request latency untagged, per second; time to first byte tagged 'ttfb', per second; connect "
                 "latency tagged 'connect', one interval spanning the ramp (HistogramLogProcessor -tag ttfb)."),
    click.option("--cacert", "cacert", metavar="FILE", default=None,
                 help="https:// and wss://: trust the CA certificate(s) in this PEM file instead of the system's "
                 "(e.g. a test CA)."),
    click.option("--insecure", "insecure", is_flag=True,
                 help="https:// and wss://: do not verify the server's certificate (the traffic is still "
                 "encrypted; nothing says who the server is)."),
    click.option("--cert", "cert", metavar="FILE", default=None,
                 help="https:// and wss://: offer this client certificate (PEM, with its private key in the same "
                 "file unless --key gives it) to a server that asks for one (mTLS)."),
    click.option("--key", "key", metavar="FILE", default=None,
                 help="https:// and wss://: the private key (PEM, unencrypted) of --cert's certificate."),
    click.option("--response-size", type=click.IntRange(min=0), default=None, metavar="BYTES",
                 help="The built-in server's response body size in mode http (with no TARGET; default "
                 f"{DEFAULT_RESPONSE_BYTES})."),
]

TRAFFIC_PARAMS = ("traffic", "message", "message_file", "expect_length", "expect_end", "expect_contains",
                  "method", "headers", "body", "pipeline", "ws_binary", "ws_ping", "subprotocols", "message_rate",
                  "total_rate", "duration", "warmup", "reply_timeout", "hdr_log", "cacert", "insecure",
                  "cert", "key", "response_size")
# The option each parameter comes from, where click's name for it is not the option's.
_FLAGS = {"total_rate": "--rate", "headers": "--header", "subprotocols": "--ws-subprotocol"}
# What applies where. Every traffic option but --response-size (the built-in server's) needs traffic.
_NEEDS_TRAFFIC = tuple(name for name in TRAFFIC_PARAMS if name not in ("traffic", "response_size"))
_ONLY_FOR = {
    "http": (("method", "body"), "HTTP traffic (an http:// TARGET or --traffic http)"),
    "ws": (("ws_binary", "ws_ping", "subprotocols"), "WebSocket traffic (a ws:// TARGET or --traffic ws)"),
    "http+ws": (("headers",), "HTTP and WebSocket traffic (an http:// or ws:// TARGET)"),
    "raw": (("expect_length", "expect_end", "expect_contains"),
            "--traffic raw (echo, http and ws know where their replies end)"),
}


def flag(name: str) -> str:
    """The option as the user types it, from click's parameter name: total_rate -> --rate."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _given(kw: dict[str, Any], name: str) -> bool:
    value = kw.get(name)
    return value is not None and value is not False and value != ()


def builtin_server_only(option: str) -> UsageError:
    """The error for an option of the built-in server given with a TARGET (the server does not run)."""
    return UsageError(f"{option} configures the built-in server, which does not run when a TARGET is given; "
                      f"drop {option} (or the TARGET)")


def traffic_options(f: F) -> F:
    """All the traffic options, in help order."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def split_url_targets(targets: tuple[str, ...]) -> tuple[tuple[str, ...], str | None, str | None]:
    """(ADDRESS:PORT texts, traffic kind (http or ws) or None, path or None) from TARGETs that may be URLs."""
    plain, kind, path, _ = parse_url_targets(targets)
    return plain, kind, path


def parse_url_targets(
    targets: tuple[str, ...]
) -> tuple[tuple[str, ...], str | None, str | None, str | None]:
    """split_url_targets' three, plus TLS: None for plain text (or no URL), else the name for SNI
    and the certificate check - the URL's host name, or "" when the URL gives an address (or a
    range): then each connection's peer address is checked, against the certificate's IP SANs."""
    plain: list[str] = []
    schemes: set[str] = set()
    paths: set[str] = set()
    names: set[str] = set()
    for text in targets:
        if "://" not in text:
            plain.append(text)
            continue
        u = urlsplit(text)
        scheme = u.scheme.lower()
        if scheme not in _SCHEMES:
            raise UsageError(f"{text}: unknown scheme {u.scheme!r}; use http://ADDRESS:PORT/path, https://, ws:// "
                             "or wss://")
        netloc = u.netloc
        if not netloc:
            raise UsageError(f"{text}: no address; write e.g. {scheme}://127.0.0.1:8080/")
        if "@" in netloc:
            raise UsageError(_credentials_refused(text, scheme, netloc))
        host, sep, port = netloc.rpartition(":")
        if not sep or netloc.endswith("]"):  # no port (127.0.0.1, [::1]): the scheme's own, as curl does
            host, port = netloc, ""
        if ":" in host and not host.startswith("["):
            raise UsageError(f"{text}: write an IPv6 address in brackets, e.g. {scheme}://[::1]:8080/")
        if not host:
            raise UsageError(f"{text}: no address; write e.g. {scheme}://127.0.0.1:8080/")
        if not port:
            port = str(_DEFAULT_PORT[scheme])
        elif not _PORTS.fullmatch(port):
            raise UsageError(f"{text}: the port {port} is not a number or a range; write e.g. "
                             f"{scheme}://127.0.0.1:8080/ or {scheme}://127.0.0.1:8080-8083/")
        names.add("" if _ADDRESS_HOST.fullmatch(host) else host.lower())
        if host.lower() == "localhost":
            host = "127.0.0.1"
        plain.append(f"{host}:{port}")
        schemes.add(scheme)
        paths.add((u.path or "/") + (f"?{u.query}" if u.query else ""))
    if len(schemes) > 1 or len(paths) > 1:
        raise UsageError("all URL targets must share one scheme and one path; run them separately")
    if len(names) > 1:
        raise UsageError("all https:// / wss:// targets must name one host (it is the name the certificate is "
                         "checked for); run them separately")
    scheme_given = next(iter(schemes), None)
    tls = next(iter(names)) if scheme_given in _TLS_SCHEMES else None
    return (tuple(plain), _SCHEMES[scheme_given] if scheme_given else None, next(iter(paths), None), tls)


def _credentials_refused(text: str, scheme: str, netloc: str) -> str:
    """The error for user:password@ in a URL. It names the URL without them (no password echoed
    into a terminal or a CI log) and, for HTTP, the header that sends them."""
    userinfo = netloc.rpartition("@")[0]
    url = text.replace(f"{userinfo}@", "", 1)
    fix = "remove them"
    if scheme in ("http", "https"):
        fix += " and, for HTTP Basic auth, add --header 'Authorization: Basic BASE64(user:password)'"
    return f"{url}: credentials in the URL (user:password@) are not supported; {fix}"


def _escaped(option: str, text: str) -> bytes:
    try:
        return unescape(text)
    except ValueError as exc:
        raise UsageError(f"{option} {shown(text)}: {exc}") from None


def _message(message: str | None, message_file: str | None) -> bytes | None:
    if message is not None and message_file is not None:
        raise UsageError("give --message or --message-file, not both")
    if message_file is not None:
        try:
            with open(message_file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise UsageError(
                f"cannot read --message-file {message_file}: {exc.strerror}; give a readable file"
            ) from None
        if not data:
            raise UsageError(f"--message-file {message_file} is empty; a message needs at least one byte")
        return data
    if message is not None:
        data = _escaped("--message", message)
        if not data:
            raise UsageError("--message is empty; a message needs at least one byte")
        return data
    return None


def _control_character(text: str) -> str | None:
    r"""The first control character in a header's name or value, escaped; None if there is none. RFC
    9110 5.5 allows visible characters, spaces and horizontal tabs in a field; h11 refuses CR, LF and
    NUL but sends the others (audit: \x01 went out; so does DEL), which a server may reject or read otherwise."""
    bad = next((c for c in text if (c < " " and c != "\t") or c == "\x7f"), None)
    return None if bad is None else f"\\x{ord(bad):02x}"


def _headers(texts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for text in texts:
        name, colon, value = text.partition(":")
        if not colon or not name.strip(" \t"):
            raise UsageError(f"--header {shown(text)} is not 'Name: value'; write e.g. --header 'Accept: */*'")
        # Spaces and tabs only: str.strip() would also drop \v, \f and \x1c-\x1f unseen.
        name, value = name.strip(" \t"), value.strip(" \t")
        for part, where in ((name, "name"), (value, "value")):
            bad = _control_character(part)
            if bad is not None:
                # (The value is not echoed: it may be a token - the header's name says which one.)
                raise UsageError(f"--header {shown(name)}: its {where} holds a control character ({bad}); a header "
                                 "takes printable characters only (and tabs in its value) - remove it")
        out.append((name, value))
    return tuple(out)


def _check_applies(kind: str, kind_opt: str | None, kw: dict[str, Any]) -> None:
    """Refuse an option meant for another kind of traffic (it would be ignored)."""
    chosen = f"--traffic {kind_opt}" if kind_opt else {"http": "an http:// TARGET", "ws": "a ws:// TARGET"}[kind]
    for owner, (names, where) in _ONLY_FOR.items():
        if kind in owner.split("+"):
            continue
        for name in names:
            if _given(kw, name):
                raise UsageError(f"{flag(name)} applies to {where}, not to {chosen}; drop {flag(name)}")


def _seconds(kw: dict[str, Any], name: str, default: float) -> float:
    """A traffic time in seconds: the default when not given; 'forever' is refused."""
    value = kw.get(name)
    if value is None:
        return default
    if math.isinf(value):
        raise UsageError(f"{flag(name)} must be a finite time (e.g. 30s, 5m); "
                         "'forever' is only for --hold")
    return float(value)


def traffic_config(*, targets: tuple[str, ...] = (), connections: int = 1, **kw: Any) -> TrafficConfig | None:
    """The run's TrafficConfig from the traffic options (None: no traffic, hold only)."""
    _, scheme, path, tls_name = parse_url_targets(targets)
    tls_opts = _tls_options(tls_name, kw)
    kind_opt: str | None = kw.get("traffic")
    if kind_opt is None and scheme is None:
        given = [name for name in _NEEDS_TRAFFIC if _given(kw, name)]
        if given:
            hint = "; --hold holds the connections without traffic" if given[0] == "duration" else ""
            raise UsageError(f"{flag(given[0])} needs traffic: add --traffic echo|raw|http|ws or an http:// / "
                             f"ws:// TARGET{hint}")
        return None
    if kind_opt is not None and scheme is not None and SERVER_MODE_FOR.get(kind_opt) != scheme:
        raise UsageError(f"--traffic {kind_opt} does not match a {scheme}:// target; drop one of them")
    kind_name = kind_opt or scheme or "echo"
    _check_applies(kind_name, kind_opt, kw)
    if kind_name == "http" and _given(kw, "body") and (_given(kw, "message") or _given(kw, "message_file")):
        raise UsageError(f"give --body or {'--message' if _given(kw, 'message') else '--message-file'} "
                         "(both set the HTTP request body), not both")
    message = _message(kw.get("message"), kw.get("message_file"))
    rate_conn, total = kw.get("message_rate"), kw.get("total_rate")
    if rate_conn is not None and total is not None:
        raise UsageError("give --message-rate (per connection) or --rate (whole run), not both")
    rate_per_conn = rate_conn if rate_conn is not None else (total / connections if total else 0.0)
    expects = [(name, kw.get(name)) for name in _ONLY_FOR["raw"][0] if kw.get(name) is not None]
    if len(expects) > 1:
        raise UsageError("give one of --expect-length, --expect-end, --expect-contains")
    if kind_name == "raw" and not expects and _given(kw, "pipeline"):
        raise UsageError("--pipeline sets the replies awaited at once, and --traffic raw with no --expect-* "
                         "awaits none; drop --pipeline (or add --expect-length/--expect-end/--expect-contains)")
    if kw.get("hdr_log"):
        check_writable(str(kw["hdr_log"]), "the --hdr-log file")
    common: dict[str, Any] = {
        "rate_per_conn_s": rate_per_conn,
        "duration_s": _seconds(kw, "duration", DEFAULT_DURATION_S),
        "warmup_s": _seconds(kw, "warmup", 0.0),
        "reply_timeout_s": _seconds(kw, "reply_timeout", DEFAULT_REPLY_TIMEOUT_S),
        "hdr_log": kw.get("hdr_log"),
        "pipeline": kw.get("pipeline") or DEFAULT_PIPELINE,
        **tls_opts,
    }
    if common["duration_s"] <= 0:
        raise UsageError("--duration must be more than 0 with traffic; write e.g. --duration 10s")
    if common["reply_timeout_s"] <= 0:
        raise UsageError("--reply-timeout must be more than 0; write e.g. --reply-timeout 10s")
    if kind_name in ("echo", "raw"):
        msg = message or DEFAULT_MESSAGE
        if kind_name == "echo":
            return TrafficConfig(kind="raw", message=msg, expect=EXPECT_ECHO, **common)
        if not expects:
            if not rate_per_conn:
                raise UsageError("--traffic raw without --expect-length/--expect-end/--expect-contains only "
                                 "sends, so it needs a --message-rate or --rate (or use --traffic echo)")
            return TrafficConfig(kind="raw", message=msg, expect=EXPECT_NONE, **common)
        name, value = expects[0]
        if name == "expect_length":
            return TrafficConfig(kind="raw", message=msg, expect=EXPECT_LENGTH, expect_length=int(str(value)),
                                 **common)
        marker = _escaped(f"--{name.replace('_', '-')}", str(value))
        if not marker:
            raise UsageError(f"--{name.replace('_', '-')} is empty; give the marker bytes")
        return TrafficConfig(kind="raw", message=msg, expect=EXPECT_END if name == "expect_end" else EXPECT_CONTAINS,
                             expect_marker=marker, **common)
    if kind_name == "http":
        headers = _headers(tuple(kw.get("headers") or ()))
        body = _escaped("--body", kw["body"]) if kw.get("body") is not None else (message or b"")
        method = str(kw.get("method") or DEFAULT_METHOD).upper()
        target = path or "/"
        try:
            request_template(method, target, "127.0.0.1", headers, body)
        except h11.LocalProtocolError as exc:
            raise UsageError(
                f"the HTTP request is not valid ({exc}); check --method, --header and the URL path"
            ) from None
        return TrafficConfig(kind="http", method=method, path=target, headers=headers, body=body, **common)
    # WebSocket
    if kw.get("ws_binary") and kw.get("ws_ping"):
        raise UsageError("give --ws-binary or --ws-ping, not both")
    if common["pipeline"] > 1 and kw.get("ws_ping"):
        raise UsageError("--ws-ping times one ping at a time; drop --pipeline")
    opcode = "ping" if kw.get("ws_ping") else "binary" if kw.get("ws_binary") else "text"
    msg = message or DEFAULT_MESSAGE
    if opcode == "text":
        try:
            msg.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("a WebSocket text message must be UTF-8; add --ws-binary for other bytes") from None
    if opcode == "ping" and len(msg) > 125:
        raise UsageError(f"a ping carries at most 125 bytes (the message has {len(msg)}); give a shorter --message")
    headers = _headers(tuple(kw.get("headers") or ()))
    subprotocols = tuple(kw.get("subprotocols") or ())
    _check_ws_handshake(path or "/", headers, subprotocols)
    return TrafficConfig(kind="ws", message=msg, path=path or "/", ws_opcode=opcode, headers=headers,
                         subprotocols=subprotocols, **common)


def _tls_options(tls_name: str | None, kw: dict[str, Any]) -> dict[str, Any]:
    """TrafficConfig's TLS fields, from an https:// / wss:// TARGET (tls_name not None) and
    --cacert / --insecure / --cert / --key, which apply to nothing else. The files are read here,
    once, so a missing or unreadable one is a usage error rather than a failure in every worker."""
    cafile, insecure = kw.get("cacert"), bool(kw.get("insecure"))
    if tls_name is None:
        for name in ("cacert", "insecure", "cert", "key"):
            if _given(kw, name):
                raise UsageError(f"{flag(name)} applies to TLS (an https:// or wss:// TARGET); drop {flag(name)}")
        return {}
    if cafile is not None and insecure:
        raise UsageError("give --cacert (trust this CA) or --insecure (verify nothing), not both")
    if cafile is not None:
        cafile = os.path.abspath(cafile)  # (the workers read it)
        try:
            client_context(cafile, True)
        except ssl.SSLError as exc:  # (an OSError too: first)
            raise UsageError(f"--cacert {kw['cacert']} holds no PEM certificate ({exc.reason or exc}); give the CA "
                             "certificate in PEM (-----BEGIN CERTIFICATE-----)") from None
        except OSError as exc:
            raise UsageError(f"cannot read --cacert {kw['cacert']}: {exc.strerror or exc}; give the PEM file of "
                             "the CA that signed the server's certificate") from None
    certfile, keyfile = _client_certificate(kw.get("cert"), kw.get("key"))
    return {"tls": True, "tls_server_name": tls_name, "tls_cafile": cafile, "tls_verify": not insecure,
            "tls_certfile": certfile, "tls_keyfile": keyfile}


def _client_certificate(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    """--cert / --key as absolute paths (the workers read them), loaded once here: a missing file,
    a certificate and key that do not match, or a key that wants a passphrase is one line."""
    if cert is None:
        if key is not None:
            raise UsageError("--key needs --cert FILE (the client certificate the key belongs to); add --cert")
        return None, None
    pem: dict[str, bytes] = {}
    for option, name in (("--cert", cert), ("--key", key)):
        if name is None:
            continue
        try:
            with open(name, "rb") as f:
                pem[option] = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {option} {name}: {exc.strerror or exc}; give the client "
                             f"{'certificate' if option == '--cert' else 'private key'} in PEM") from None
    if key is None and b"PRIVATE KEY-----" not in pem["--cert"]:
        # (OpenSSL would say only "PEM lib")
        raise UsageError(f"--cert {cert} holds no private key; give the certificate's key with --key FILE")
    certfile, keyfile = os.path.abspath(cert), os.path.abspath(key) if key is not None else None
    given = f"--cert {cert}" + (f" --key {key}" if key is not None else "")
    try:
        client_context(None, False, certfile, keyfile)
    except EncryptedKey:
        raise UsageError(f"{given}: the private key is encrypted (it asks for a passphrase); give an unencrypted "
                         "copy, e.g. openssl pkey -in KEY -out plain-key.pem, with --key") from None
    except ssl.SSLError as exc:
        why = exc.reason or exc
        fix = ("the key is not the certificate's: give the key of --cert's certificate with --key"
               if "MISMATCH" in str(why) else
               "give the client certificate in PEM with --cert and its private key with --key (or both in "
               "the --cert file)")
        raise UsageError(f"{given}: not a PEM certificate and its private key ({why}); {fix}") from None
    return certfile, keyfile


def _check_ws_handshake(path: str, headers: tuple[tuple[str, str], ...], subprotocols: tuple[str, ...]) -> None:
    """Refuse here what would make every connection's opening handshake fail in the workers: a
    header wsproto writes itself, a subprotocol that is no HTTP token, a header h11 refuses."""
    for name, _ in headers:
        why = HANDSHAKE_OWN.get(name.lower())
        if why is not None:
            raise UsageError(f"--header {name}: the WebSocket handshake writes that header itself{why}; "
                             f"drop --header {name}")
    for proto in subprotocols:
        if not proto or not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in proto):
            raise UsageError(f"--ws-subprotocol {shown(proto)} is not a token (letters, digits, - . _ ...); "
                             "write e.g. --ws-subprotocol mqtt")
    try:
        WSConnection(ConnectionType.CLIENT).send(opening_request("127.0.0.1", path, headers, subprotocols))
    except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
        raise UsageError(f"the WebSocket handshake is not valid ({exc}); check --header and the URL path") from None


def server_config(mode: str, response_size: int = DEFAULT_RESPONSE_BYTES) -> P.ServerConfig:
    """The built-in server's config: its mode follows the traffic kind unless --mode was given."""
    return TrafficServerConfig(mode=mode, response_bytes=response_size)


def built_in_mode(mode: str, mode_given: bool, traffic: TrafficConfig | None) -> str:
    """With traffic and no explicit --mode, the built-in server answers in the matching mode."""
    if traffic is None or mode_given:
        return mode
    if traffic.kind == "raw":
        return "echo" if traffic.expect == EXPECT_ECHO else "discard" if traffic.expect == EXPECT_NONE else "echo"
    return traffic.kind


def traffic_setup(
    targets: tuple[str, ...], connections: int, mode: str, hold_s: float | None, kw: dict[str, Any]
) -> tuple[TrafficConfig | None, tuple[str, ...], P.ServerConfig, float | None]:
    """For `run`: (traffic config, plain ADDRESS:PORT targets, built-in server config, hold).

    With traffic, the hold after it defaults to none (not "until Ctrl-C"), and the built-in server
    answers in the matching mode unless --mode was given. The built-in server's options are refused
    when it does not run (a TARGET) or does not use them (--response-size outside mode http).
    """
    ctx = click.get_current_context()
    given = ctx.get_parameter_source("mode") is click.core.ParameterSource.COMMANDLINE
    response_size: int | None = kw.get("response_size")
    if targets and given:
        raise builtin_server_only("--mode")
    if targets and response_size is not None:
        raise builtin_server_only("--response-size")
    tc = traffic_config(targets=targets, connections=connections, **kw)
    plain, _, _ = split_url_targets(targets)
    server_mode = built_in_mode(mode, given, tc)
    if response_size is not None and server_mode != "http":
        raise UsageError(f"--response-size sets the built-in server's HTTP response, and it answers in mode "
                         f"{server_mode} here; drop --response-size (or use --traffic http or --mode http)")
    if tc is not None and ctx.get_parameter_source("hold_s") is not click.core.ParameterSource.COMMANDLINE:
        hold_s = 0.0
    size = DEFAULT_RESPONSE_BYTES if response_size is None else response_size
    return tc, plain, server_config(server_mode, size), hold_s
