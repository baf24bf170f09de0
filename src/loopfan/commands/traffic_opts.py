"""The traffic options of `loopfan run` (issue 4) and their builders: argv text -> TrafficConfig.

Rules of this file: every option is declared once here (one decorator, `traffic_options`) and turned
into frozen values here; bad input becomes one UsageError line naming the option and the fix.
URL targets (http://127.0.0.1:8080/path, ws://127.0.0.1:9000/) become ADDRESS:PORT text for the
usual endpoint parser (which applies the loopback rules) plus the scheme and the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import h11

from loopfan.commands.common import DURATION
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

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MESSAGE = b"loopfan " * 8  # 64 bytes
TRAFFIC_CHOICES = ("echo", "raw", "http", "ws")
_SCHEMES = {"http": "http", "ws": "ws"}
_DEFAULT_PORT = {"http": 80, "ws": 80}
# The built-in server mode that answers each traffic kind (with no TARGET).
SERVER_MODE_FOR = {"echo": "echo", "raw": "echo", "http": "http", "ws": "ws"}

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--traffic", "traffic", type=click.Choice(TRAFFIC_CHOICES), default=None,
                 help="Talk over the connections once open: echo (raw TCP, the reply equals the message), "
                 "raw (raw TCP, see --expect-*), http (HTTP/1.1 keep-alive), ws (WebSocket). "
                 "Implied by an http:// or ws:// TARGET."),
    click.option("--message", "message", metavar="TEXT", default=None,
                 help=r"The message (escapes: \n \r \t \0 \e \\ \xNN). Default: 64 bytes."),
    click.option("--message-file", "message_file", metavar="FILE", default=None,
                 help="Read the message from FILE (bytes as they are)."),
    click.option("--expect-length", type=click.IntRange(min=1), default=None, metavar="N",
                 help="raw: a reply is N bytes."),
    click.option("--expect-end", default=None, metavar="MARKER", help="raw: a reply ends with MARKER (escapes)."),
    click.option("--expect-contains", default=None, metavar="MARKER",
                 help="raw: a reply is complete when MARKER arrives (escapes)."),
    click.option("--method", default="GET", show_default=True, help="http: the request method."),
    click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                 help="http: a request header (repeatable)."),
    click.option("--body", default=None, metavar="TEXT", help="http: the request body (escapes)."),
    click.option("--pipeline", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
                 help="Messages in flight per connection (http: 1 = no pipelining)."),
    click.option("--ws-binary", is_flag=True, help="ws: send binary messages (default: text)."),
    click.option("--ws-ping", is_flag=True, help="ws: send pings and time the pongs instead of messages."),
    click.option("--message-rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="R",
                 help="Messages per second on each connection (open model: latency from the scheduled time)."),
    click.option("--rate", "total_rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="R",
                 help="Messages per second over the whole run (open model). "
                 "Without a rate: closed loop, the next message when the reply arrives."),
    click.option("--duration", type=DURATION, default=10.0, show_default=True, metavar="DURATION",
                 help="How long the traffic phase lasts (after the warm-up)."),
    click.option("--warmup", type=DURATION, default=0.0, metavar="DURATION",
                 help="Talk this long first without counting it in the figures."),
    click.option("--reply-timeout", type=DURATION, default=10.0, show_default=True, metavar="DURATION",
                 help="A reply not complete within this counts as a timeout (and ends the connection)."),
    click.option("--hdr-log", default=None, metavar="FILE",
                 help="Write latency interval histograms in the HdrHistogram log format (microseconds)."),
    click.option("--response-size", type=click.IntRange(min=0), default=128, show_default=True, metavar="BYTES",
                 help="Built-in server, mode http: the response body size."),
]

TRAFFIC_PARAMS = ("traffic", "message", "message_file", "expect_length", "expect_end", "expect_contains",
                  "method", "headers", "body", "pipeline", "ws_binary", "ws_ping", "message_rate",
                  "total_rate", "duration", "warmup", "reply_timeout", "hdr_log", "response_size")


def traffic_options(f: F) -> F:
    """All the traffic options, in help order."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def split_url_targets(targets: tuple[str, ...]) -> tuple[tuple[str, ...], str | None, str | None]:
    """(ADDRESS:PORT texts, scheme or None, path or None) from TARGETs that may be URLs."""
    plain: list[str] = []
    schemes: set[str] = set()
    paths: set[str] = set()
    for text in targets:
        if "://" not in text:
            plain.append(text)
            continue
        u = urlsplit(text)
        scheme = u.scheme.lower()
        if scheme in ("https", "wss"):
            raise UsageError(f"{text}: loopfan does not speak TLS; use http:// or ws://")
        if scheme not in _SCHEMES:
            raise UsageError(f"{text}: unknown scheme {u.scheme!r}; use http://ADDRESS:PORT/path or ws://...")
        netloc = u.netloc
        if not netloc:
            raise UsageError(f"{text}: no address; write e.g. {scheme}://127.0.0.1:8080/")
        host, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
        if not host or not port.isdigit():
            host, port = netloc, str(_DEFAULT_PORT[scheme])
        if host.lower() == "localhost":
            host = "127.0.0.1"
        plain.append(f"{host}:{port}")
        schemes.add(_SCHEMES[scheme])
        paths.add((u.path or "/") + (f"?{u.query}" if u.query else ""))
    if len(schemes) > 1 or len(paths) > 1:
        raise UsageError("all URL targets must share one scheme and one path; run them separately")
    return tuple(plain), next(iter(schemes), None), next(iter(paths), None)


def _escaped(option: str, text: str) -> bytes:
    try:
        return unescape(text)
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


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


def _headers(texts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for text in texts:
        name, colon, value = text.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"--header {text!r} is not 'Name: value'; write e.g. --header 'Accept: */*'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def traffic_config(*, targets: tuple[str, ...] = (), connections: int = 1, **kw: Any) -> TrafficConfig | None:
    """The run's TrafficConfig from the traffic options (None: no traffic, hold only)."""
    _, scheme, path = split_url_targets(targets)
    kind_opt: str | None = kw.get("traffic")
    if kind_opt is None and scheme is None:
        given = [name for name in ("message", "message_file", "message_rate", "total_rate", "hdr_log")
                 if kw.get(name) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs traffic: add --traffic echo|raw|http|ws "
                             "or an http:// / ws:// TARGET")
        return None
    if kind_opt is not None and scheme is not None and SERVER_MODE_FOR.get(kind_opt) != scheme:
        raise UsageError(f"--traffic {kind_opt} does not match a {scheme}:// target; drop one of them")
    kind_name = kind_opt or scheme or "echo"
    message = _message(kw.get("message"), kw.get("message_file"))
    rate_conn, total = kw.get("message_rate"), kw.get("total_rate")
    if rate_conn is not None and total is not None:
        raise UsageError("give --message-rate (per connection) or --rate (whole run), not both")
    rate_per_conn = rate_conn if rate_conn is not None else (total / connections if total else 0.0)
    expects = [(name, kw.get(name)) for name in ("expect_length", "expect_end", "expect_contains")
               if kw.get(name) is not None]
    if expects and kind_name != "raw":
        raise UsageError(f"--{expects[0][0].replace('_', '-')} is for --traffic raw; echo, http and ws "
                         "know where their replies end")
    if len(expects) > 1:
        raise UsageError("give one of --expect-length, --expect-end, --expect-contains")
    common: dict[str, Any] = {
        "rate_per_conn_s": rate_per_conn,
        "duration_s": kw.get("duration") if kw.get("duration") is not None else 10.0,
        "warmup_s": kw.get("warmup") or 0.0,
        "reply_timeout_s": kw.get("reply_timeout") or 10.0,
        "hdr_log": kw.get("hdr_log"),
        "pipeline": kw.get("pipeline") or 1,
    }
    if common["duration_s"] <= 0:
        raise UsageError("--duration must be more than 0 with traffic; write e.g. --duration 10s")
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
        method = str(kw.get("method") or "GET").upper()
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
    if common["pipeline"] != 1 and kw.get("ws_ping"):
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
    return TrafficConfig(kind="ws", message=msg, path=path or "/", ws_opcode=opcode, **common)


def server_config(mode: str, response_size: int = 128) -> P.ServerConfig:
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
    answers in the matching mode unless --mode was given.
    """
    ctx = click.get_current_context()
    tc = traffic_config(targets=targets, connections=connections, **kw)
    plain, _, _ = split_url_targets(targets)
    given = ctx.get_parameter_source("mode") is click.core.ParameterSource.COMMANDLINE
    if tc is not None and ctx.get_parameter_source("hold_s") is not click.core.ParameterSource.COMMANDLINE:
        hold_s = 0.0
    return tc, plain, server_config(built_in_mode(mode, given, tc), int(kw.get("response_size") or 128)), hold_s
