"""The traffic configuration: one frozen value built at the CLI edge and copied to every worker.

Rules of this file: values only, in the units their names say. `rate_per_conn_s` is already the
per-connection share (the CLI divides a total rate by the planned connections), so a worker needs no
knowledge of the others to keep the whole run on schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from loopfan.engine.protocol import ServerConfig
from loopfan.wording import protocol_words

# Reply framing for raw TCP: what ends one reply.
EXPECT_NONE = "none"  # send only; no reply is awaited (needs a rate)
EXPECT_ECHO = "echo"  # the reply equals the message
EXPECT_LENGTH = "length"  # a reply is exactly `expect_length` bytes
EXPECT_END = "end"  # a reply ends with `expect_marker`
EXPECT_CONTAINS = "contains"  # a reply is complete once `expect_marker` has arrived

_ESCAPED = {ord("\n"): r"\n", ord("\r"): r"\r", ord("\t"): r"\t", 0: r"\0", ord("\\"): "\\\\", 0x1B: r"\e"}


def escape(data: bytes) -> str:
    r"""Bytes as --message takes them (unescape's inverse): printable ASCII as it is; \n \r \t \0
    \e \\ and \xNN for the rest. For reports: a message reads as text and pastes back exactly."""
    return "".join(_ESCAPED.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}") for b in data)


KINDS = ("raw", "http", "ws")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficConfig:
    kind: str  # raw | http | ws
    message: bytes = b""
    # Raw replies
    expect: str = EXPECT_ECHO
    expect_length: int = 0
    expect_marker: bytes = b""
    # HTTP requests (and the WebSocket opening handshake's target, host and headers)
    method: str = "GET"
    path: str = "/"
    host: str = ""  # Host header; empty: the target endpoint
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    pipeline: int = 1  # requests in flight per connection (1 = no pipelining)
    # WebSocket (its opening handshake takes `headers` too)
    ws_opcode: str = "text"  # text | binary | ping
    subprotocols: tuple[str, ...] = ()  # offered in Sec-WebSocket-Protocol, in this order
    # TLS (https://, wss://): each connection's TLS handshake comes first. The name sent as SNI and
    # verified is the URL's host name; "" (the URL gave an address): each connection's peer address,
    # checked against the certificate's IP SANs. cafile: trust only this PEM's CAs (None: the system's).
    # certfile/keyfile: the client certificate and its key, for a server that asks for one (mTLS;
    # keyfile None: the key is in certfile).
    tls: bool = False
    tls_server_name: str = ""
    tls_cafile: str | None = None
    tls_verify: bool = True
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    # Pacing: 0 = closed loop (next message when the reply arrives); > 0 = open model, latency from
    # the scheduled send time.
    rate_per_conn_s: float = 0.0
    # Timing
    duration_s: float = 10.0
    warmup_s: float = 0.0
    reply_timeout_s: float = 10.0
    # Output (parent side only)
    hdr_log: str | None = None

    @property
    def open_model(self) -> bool:
        return self.rate_per_conn_s > 0

    @property
    def awaits_reply(self) -> bool:
        return not (self.kind == "raw" and self.expect == EXPECT_NONE)

    @property
    def label(self) -> str:
        """The kind as the user chose it (--traffic echo is raw TCP expecting the echo): for reports."""
        return "echo" if self.kind == "raw" and self.expect == EXPECT_ECHO else self.kind

    @property
    def mode(self) -> str:
        """The protocol and the model in words, for live views: 'ws pings, closed loop'."""
        return f"{protocol_words(self.label, self.ws_opcode)}, {'open model' if self.open_model else 'closed loop'}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficServerConfig(ServerConfig):
    """The built-in server's config with what the traffic modes add (http, ws)."""

    response_bytes: int = 128  # HTTP mode: size of the fixed response body


def unescape(text: str) -> bytes:
    r"""A message given on the command line: \n \r \t \0 \\ and \xNN escapes -> bytes (UTF-8 otherwise).

    Raises ValueError naming the bad escape.
    """
    out = bytearray()
    i = 0
    n = len(text)
    simple = {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\", "e": b"\x1b"}
    while i < n:
        ch = text[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("a trailing backslash; write \\\\ for a backslash")
        esc = text[i + 1]
        if esc in simple:
            out += simple[esc]
            i += 2
        elif esc == "x":
            digits = text[i + 2 : i + 4]
            try:
                if len(digits) != 2:
                    raise ValueError
                out.append(int(digits, 16))
            except ValueError:
                raise ValueError(f"bad escape \\x{digits}; write two hex digits, e.g. \\x0a") from None
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}; use \\n \\r \\t \\0 \\e \\\\ or \\xNN")
    return bytes(out)
