"""WebSocket, sans I/O, on wsproto: the client's per-connection state and the built-in echo server's.

Rules of this file: the opening handshake, framing, masking, ping/pong and the closing handshake are
wsproto's; this file only decides what counts as a reply (a whole message back, or the pong for our
ping) and names each way a connection can end (ws-close-<code>, ws-rejected-http-<status>,
bad-reply) so the report can explain it.
"""

from __future__ import annotations

import contextlib

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from loopfan.traffic.tally import Tally


class WsClient:
    __slots__ = ("dead", "event", "host", "out", "partial", "path", "ready", "tally", "want_pong", "ws")

    def __init__(self, host: str, path: str, message: bytes, opcode: str, tally: Tally) -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = host
        self.path = path
        self.tally = tally
        self.ready = False
        self.dead: str | None = None
        self.out = b""  # bytes wsproto wants sent in answer to what arrived (pongs, close replies)
        self.partial = False
        self.want_pong = opcode == "ping"
        self.event: Event
        if opcode == "text":
            self.event = TextMessage(data=message.decode("utf-8"))
        elif opcode == "binary":
            self.event = BytesMessage(data=message)
        else:
            self.event = Ping(payload=message)

    def opening(self) -> bytes:
        return self.ws.send(Request(host=self.host, target=self.path))

    def message(self) -> bytes:
        return self.ws.send(self.event)

    def goodbye(self) -> bytes:
        """The closing handshake's first frame (1000, normal closure)."""
        try:
            return self.ws.send(CloseConnection(code=1000))
        except LocalProtocolError:
            return b""

    def feed(self, data: bytes) -> int:
        ws = self.ws
        done = 0
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
                    self.tally.status("ws-handshake-ok")
                elif isinstance(ev, RejectConnection):
                    status = ev.status_code
                    self.dead = f"ws-rejected-http-{status}"
                    return done
                elif isinstance(ev, CloseConnection):
                    code = ev.code
                    self.tally.status(f"ws-close-{int(code)}")
                    with contextlib.suppress(LocalProtocolError):  # already closing: nothing to say
                        self.out += ws.send(ev.response())
                    self.dead = f"ws-close-{int(code)}"
                    return done
        except RemoteProtocolError:
            self.dead = "bad-reply" if self.ready else "ws-bad-handshake"
        return done


class WsEchoServer:
    """One server-side connection: accept the handshake, echo every message, answer pings and closes."""

    __slots__ = ("closing", "ws")

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.closing = False

    def feed(self, data: bytes) -> bytes:
        """Bytes to send back for `data`; `closing` becomes True when the connection should end."""
        ws = self.ws
        out = b""
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
