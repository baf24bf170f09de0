"""WebSocket, sans I/O: the client's per-connection state and the built-in echo server's.

Rules of this file: the opening handshake, the closing handshake and anything unusual (fragments,
control frames other than the expected ping/pong, extensions, frames of 64 KiB and over, broken
frames) are wsproto's. After a clean handshake (no bytes beyond it in the same read) both sides use
a small fast path for the common case - whole, unfragmented text/binary frames, plus ping -> pong -
because wsproto costs tens of microseconds per frame and the echo server was the bottleneck of our
own benchmark. The fast path accepts only frames wsproto would accept and decode the same way
(tested by property tests against wsproto); the moment it meets anything else it hands the stream,
from that frame's first byte on, to wsproto for the rest of the connection. That hand-over is exact
because wsproto has seen nothing since the handshake: it starts at a frame boundary, no message in
progress. This file also decides what counts as a reply (a whole message back, or the pong for our
ping) and names each way a connection can end (ws-close-<code>, ws-rejected-http-<status>,
bad-reply) so the report can explain it.
"""

from __future__ import annotations

import codecs
import contextlib
import os

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from loopfan.traffic.tally import SAMPLE_BYTES, Tally

# -- the fast path: whole unfragmented frames (RFC 6455 section 5.2) ----------------------------
# First bytes: FIN set, no RSV bits (no extension is ever negotiated: we offer none and accept
# none), and the opcode.
TEXT = 0x81
BINARY = 0x82
PING = 0x89
PONG = 0x8A
FAST_MAX_PAYLOAD = 65535  # 7- and 16-bit lengths; 64-bit lengths are rare enough for wsproto
_MASK_BIT = 0x80
_NEED_MORE = -1  # frame_at(): the frame is simple so far but not all here yet
_UNUSUAL = -2  # frame_at(): not a case the fast path handles; wsproto decides


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` repeated (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    # One big-integer XOR is far cheaper in CPython than a per-byte loop.
    k = int.from_bytes((key * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(payload, "little") ^ k).to_bytes(n, "little")


def frame_head(first: int, length: int, masked: bool) -> bytes:
    """The header of a whole frame (first byte = FIN + opcode), without the masking key."""
    m = _MASK_BIT if masked else 0
    if length < 126:
        return bytes((first, m | length))
    if length <= FAST_MAX_PAYLOAD:
        return bytes((first, m | 126)) + length.to_bytes(2, "big")
    return bytes((first, m | 127)) + length.to_bytes(8, "big")


def encode_frame(first: int, payload: bytes, key: bytes | None) -> bytes:
    """A whole frame: masked with `key` (client to server) or unmasked (key None, server to client)."""
    if key is None:
        return frame_head(first, len(payload), False) + payload
    return frame_head(first, len(payload), True) + key + mask(payload, key)


def frame_at(buf: bytes, pos: int, accepted: tuple[int, ...], masked: bool) -> tuple[int, int, bytes]:
    """The simple frame starting at buf[pos]: (first byte, end position, unmasked payload), or
    (_NEED_MORE, 0, b"") / (_UNUSUAL, 0, b""). Simple means: first byte in `accepted`, the mask bit
    as this direction requires, the shortest length encoding (wsproto refuses longer ones), a
    control frame's payload under 126 bytes, and a text payload that is valid UTF-8."""
    n = len(buf)
    first = buf[pos]
    if first not in accepted:
        return _UNUSUAL, 0, b""
    if n - pos < 2:
        return _NEED_MORE, 0, b""
    second = buf[pos + 1]
    if bool(second & _MASK_BIT) is not masked:
        return _UNUSUAL, 0, b""
    length = second & 0x7F
    head = pos + 2
    if length == 126 and first <= BINARY:
        if n - pos < 4:
            return _NEED_MORE, 0, b""
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        if length < 126:
            return _UNUSUAL, 0, b""
        head = pos + 4
    elif length >= 126:
        return _UNUSUAL, 0, b""
    start = head + 4 if masked else head
    end = start + length
    if end > n:
        if first == TEXT and n > start:
            # wsproto checks UTF-8 as the bytes come: a prefix that can never become valid text
            # closes the connection (1007) before the frame is complete, so hand it over now.
            part = buf[start:n]
            if masked:
                part = mask(part, buf[head:start])
            try:
                codecs.getincrementaldecoder("utf-8")().decode(part, final=False)
            except UnicodeDecodeError:
                return _UNUSUAL, 0, b""
        return _NEED_MORE, 0, b""
    payload = buf[start:end]
    if masked:
        payload = mask(payload, buf[head:start])
    if first == TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return _UNUSUAL, 0, b""
    return first, end, payload


class MaskKeys:
    """Fresh masking keys from os.urandom (RFC 6455 5.3: a new unpredictable key per frame),
    drawn 4 KiB at a time so a frame costs a slice, not a system call."""

    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0

    def take(self) -> bytes:
        pos = self.pos
        if pos + 4 > len(self.pool):
            self.pool = os.urandom(4096)
            pos = 0
        self.pos = pos + 4
        return self.pool[pos : pos + 4]


_KEYS = MaskKeys()


def _clean_handshake(seen: bytes) -> bool:
    """True when the handshake's bytes end exactly at the end of its head: nothing after it was
    read with it, so wsproto's frame decoder holds no data and the fast path may take over."""
    return seen.find(b"\r\n\r\n") == len(seen) - 4


# Headers of the opening handshake that wsproto writes itself (or that select what it must agree
# to): given with --header they would be sent twice or contradict it.
HANDSHAKE_OWN = {"upgrade": "", "connection": "", "sec-websocket-key": "", "sec-websocket-version": "",
                 "sec-websocket-protocol": " (give the subprotocols with --ws-subprotocol)",
                 "sec-websocket-extensions": " (loopfan negotiates no extension)"}


def opening_request(host: str, path: str, headers: tuple[tuple[str, str], ...] = (),
                    subprotocols: tuple[str, ...] = ()) -> Request:
    """The opening handshake's request: a Host given among `headers` replaces the endpoint's (as
    for HTTP), the others go as they are (Origin, Authorization, Cookie ...)."""
    given_host = [v for k, v in headers if k.lower() == "host"]
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() != "host"]
    return Request(host=given_host[0] if given_host else host, target=path, extra_headers=extra,
                   subprotocols=list(subprotocols))


class WsClient:
    __slots__ = ("buf", "dead", "event", "fast", "first", "head", "host", "out", "partial", "path",
                 "payload", "ready", "request", "seen", "tally", "want_pong", "ws")

    repeat = b""  # no two messages are the same bytes (a fresh masking key each): call message()
    # The causes when the opening handshake does not complete: no answer in time, the server closed.
    handshake_timeout = "ws-handshake-timeout"
    closed_in_handshake = "ws-closed-in-handshake"

    def __init__(self, host: str, path: str, message: bytes, opcode: str, tally: Tally,
                 request: Request | None = None) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = host
        self.path = path
        self.request = request or opening_request(host, path)  # (shared by the connections to one endpoint)
        self.tally = tally
        self.ready = False
        self.dead: str | None = None
        self.out = b""  # bytes wsproto wants sent in answer to what arrived (pongs, close replies)
        self.partial = False
        self.want_pong = opcode == "ping"
        self.fast = False  # the fast path is on (set after a clean handshake)
        self.seen: bytes | None = b""  # the handshake's bytes so far; None once it is over
        self.buf = b""  # fast path: the start of a frame not all here yet
        self.event: Event
        if opcode == "text":
            self.event = TextMessage(data=message.decode("utf-8"))
            self.first = TEXT
        elif opcode == "binary":
            self.event = BytesMessage(data=message)
            self.first = BINARY
        else:
            self.event = Ping(payload=message)
            self.first = PING
        self.payload = message
        # Frames the fast path would not send whole (a big message, a ping wsproto would refuse)
        # always go through wsproto: first = 0 marks that.
        if len(message) > FAST_MAX_PAYLOAD or (self.first == PING and len(message) > 125):
            self.first = 0
        self.head = frame_head(self.first, len(message), True) if self.first else b""

    def opening(self) -> bytes:
        return self.ws.send(self.request)

    def message(self) -> bytes:
        if self.fast and self.first:
            key = _KEYS.take()
            return self.head + key + mask(self.payload, key)
        return self.ws.send(self.event)

    def goodbye(self) -> bytes:
        """The closing handshake's first frame (1000, normal closure)."""
        try:
            return self.ws.send(CloseConnection(code=1000))
        except LocalProtocolError:
            return b""

    def feed(self, data: bytes) -> int:
        if not self.fast:
            return self._feed_wsproto(data)
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        done = 0
        want_pong = self.want_pong
        while pos < n:
            first, end, _ = frame_at(buf, pos, (TEXT, BINARY, PONG), False)
            if end:
                if first != PONG or want_pong:
                    done += 1
                pos = end
            elif first == _NEED_MORE:
                break
            else:  # anything else: wsproto from this frame on, for good
                self.fast = False
                self.buf = b""
                self.partial = False
                return done + self._feed_wsproto(buf[pos:])
        self.buf = buf[pos:] if pos < n else b""
        self.partial = bool(self.buf)
        return done

    def _feed_wsproto(self, data: bytes) -> int:
        ws = self.ws
        done = 0
        if self.seen is not None:
            self.seen += data
        try:
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, (TextMessage, BytesMessage)):
                    if ev.message_finished:
                        done += 1
                        self.partial = False
                    else:
                        self.partial = True
                elif isinstance(ev, Pong):
                    if self.want_pong:
                        done += 1
                elif isinstance(ev, Ping):
                    self.out += ws.send(ev.response())
                elif isinstance(ev, AcceptConnection):
                    self.ready = True
                    self.fast = self.seen is not None and _clean_handshake(self.seen)
                    self.seen = None
                    self.tally.status("ws-handshake-ok")
                    if self.request.subprotocols:  # which one the server chose: none is allowed (RFC 6455 4.2.2)
                        self.tally.status(f"ws-subprotocol-{ev.subprotocol or 'none'}")
                elif isinstance(ev, RejectConnection):
                    status = ev.status_code
                    self.dead = f"ws-rejected-http-{status}"
                    if not ev.has_body or status < 400 or self.tally.first_error_status:
                        return done
                    # The worker's first refusal with a body: the server's words go to the report
                    # (nginx's 400 to ws:// on its TLS port says "plain HTTP request ... HTTPS port");
                    # what came in this read, the rest is not waited for.
                    self.tally.sample_error(status, b"")
                elif isinstance(ev, RejectData):
                    tally = self.tally
                    room = SAMPLE_BYTES - len(tally.first_error_body)
                    if room > 0:
                        tally.first_error_body += bytes(ev.data[:room])
                    if ev.body_finished:
                        return done
                elif isinstance(ev, CloseConnection):
                    code = ev.code
                    # wsproto reports two things as CloseConnection: the server's close frame (its
                    # state moves to REMOTE_CLOSING, or CLOSED after ours), and its own verdict on
                    # bytes that are not WebSocket (a reserved opcode, bad UTF-8: 1002, 1007...),
                    # which leaves the state alone. The second is the server's garbage, not its
                    # close: counted as bad-reply, as for HTTP (QA: "the server closed the
                    # WebSocket with code 1002" sent users to logs that had nothing to say).
                    closed_by_server = ws.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED)
                    if closed_by_server:
                        self.tally.status(f"ws-close-{int(code)}")
                    with contextlib.suppress(LocalProtocolError):  # already closing: nothing to say
                        self.out += ws.send(ev.response())  # (our close with wsproto's code: RFC 6455 7.1.7)
                    self.dead = f"ws-close-{int(code)}" if closed_by_server else "bad-reply"
                    return done
        except RemoteProtocolError:  # (after a refusal, its body's garbage changes nothing)
            self.dead = self.dead or ("bad-reply" if self.ready else "ws-bad-handshake")
        return done


class WsEchoServer:
    """One server-side connection: accept the handshake, echo every message, answer pings and closes."""

    __slots__ = ("buf", "closing", "fast", "seen", "ws")

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.closing = False
        self.fast = False
        self.seen: bytes | None = b""
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        """Bytes to send back for `data`; `closing` becomes True when the connection should end."""
        if not self.fast:
            return self._feed_wsproto(data)
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        out = b""
        while pos < n:
            first, end, payload = frame_at(buf, pos, (TEXT, BINARY, PING), True)
            if end:
                out += encode_frame(PONG if first == PING else first, payload, None)
                pos = end
            elif first == _NEED_MORE:
                break
            else:  # anything else (close, fragments, a broken frame): wsproto, for good
                self.fast = False
                self.buf = b""
                return out + self._feed_wsproto(buf[pos:])
        self.buf = buf[pos:] if pos < n else b""
        return out

    def _feed_wsproto(self, data: bytes) -> bytes:
        ws = self.ws
        out = b""
        if self.seen is not None:
            self.seen += data
        try:
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, TextMessage):
                    out += ws.send(TextMessage(data=ev.data, message_finished=ev.message_finished))
                elif isinstance(ev, BytesMessage):
                    out += ws.send(BytesMessage(data=ev.data, message_finished=ev.message_finished))
                elif isinstance(ev, Ping):
                    out += ws.send(ev.response())
                elif isinstance(ev, Request):
                    out += ws.send(AcceptConnection())
                    self.fast = self.seen is not None and _clean_handshake(self.seen)
                    self.seen = None
                elif isinstance(ev, CloseConnection):
                    out += ws.send(ev.response())
                    self.closing = True
        except RemoteProtocolError as exc:
            # Not a WebSocket handshake (plain HTTP), or a broken frame: answer what wsproto suggests.
            hint = getattr(exc, "event_hint", None)
            if isinstance(hint, RejectConnection):
                out += b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            self.closing = True
        return out
