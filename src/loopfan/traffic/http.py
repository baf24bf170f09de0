"""HTTP/1.1 keep-alive, sans I/O: the client side on h11, and the built-in server's request framer.

Rules of this file: the client never writes HTTP by hand - every request goes through h11's state
machine, which also parses every response (so a server that answers garbage is caught by h11, not
by guesswork). Pipelining: h11 allows one request per cycle, so requests beyond the first are sent
from h11's own serialization of the same request, and h11 is told about each one when its cycle
begins; the wire and the state machine always agree.

The built-in server must not be the bottleneck of our own benchmarks, so its framer is small and
fast: it finds the end of each request head, honours Content-Length, refuses what it does not
support (chunked request bodies) with a status and a close, and answers every request with the same
prepared response.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from loopfan.traffic.tally import Tally

_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """One request, validated once; `wire` is exactly what h11 sends for it."""

    request: h11.Request
    body: bytes
    wire: bytes


def request_template(method: str, path: str, host: str, headers: tuple[tuple[str, str], ...],
                     body: bytes) -> RequestTemplate:
    """Build and validate the request (raises h11.LocalProtocolError naming a bad header or target)."""
    given_host = [v for k, v in headers if k.lower() == "host"]
    hdrs = [("Host", given_host[0] if given_host else host)]
    hdrs += [(k, v) for k, v in headers if k.lower() != "host"]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        hdrs.append(("Content-Length", str(len(body))))
    req = h11.Request(method=method, target=path, headers=hdrs)
    probe = h11.Connection(h11.CLIENT)
    wire = probe.send(req) or b""
    if body:
        wire += probe.send(h11.Data(data=body)) or b""
    wire += probe.send(h11.EndOfMessage()) or b""
    return RequestTemplate(req, body, wire)


class HttpClient:
    """One keep-alive connection's HTTP state: requests out, responses counted by status class."""

    __slots__ = ("conn", "dead", "partial", "tally", "template", "unannounced")

    ready = True  # no opening handshake
    out = b""  # nothing to answer on our own (WebSocket answers pings; HTTP never does)

    def __init__(self, template: RequestTemplate, tally: Tally) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.template = template
        self.tally = tally
        self.dead: str | None = None
        self.unannounced = 0  # pipelined requests on the wire that h11 has not been told about yet
        self.partial = False

    def opening(self) -> bytes:
        return b""

    def message(self) -> bytes:
        conn = self.conn
        if conn.our_state is h11.IDLE and not self.unannounced:
            self._announce()
        else:
            self.unannounced += 1
        return self.template.wire

    def _announce(self) -> None:
        conn = self.conn
        t = self.template
        conn.send(t.request)
        if t.body:
            conn.send(h11.Data(data=t.body))
        conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> int:
        conn = self.conn
        done = 0
        try:
            conn.receive_data(data)
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    break
                t = type(ev)
                if t is h11.Response:
                    self.partial = True
                    code = ev.status_code  # type: ignore[union-attr]
                    cls = f"http-{code // 100}xx"
                    self.tally.status(cls)
                    if code >= 400:
                        self.tally.error(cls)
                elif t is h11.EndOfMessage:
                    done += 1
                    self.partial = False
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        self.dead = "http-connection-close"
                        return done
                    conn.start_next_cycle()
                    if self.unannounced:
                        self.unannounced -= 1
                        self._announce()
                elif t is h11.ConnectionClosed:
                    self.dead = "closed-by-peer"
                    return done
                elif ev is h11.PAUSED:
                    # A response arrived for a request h11 was not told about: only possible if the
                    # server answers before the request (garbage).
                    self.dead = "bad-reply"
                    return done
        except h11.RemoteProtocolError:
            self.dead = "bad-reply"
        return done


# -- the built-in server's side --------------------------------------------------------------


def fixed_response(body_bytes: int) -> bytes:
    body = (b"loopfan " * (body_bytes // 8 + 1))[:body_bytes]
    head = (f"HTTP/1.1 200 OK\r\nServer: loopfan\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n").encode()
    return head + body


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RequestFramer:
    """Counts complete requests in a byte stream. After feed(): `close` means answer, then close,
    and `refusal` (if set) is the error response to send instead of any further answers."""

    __slots__ = ("buf", "close", "refusal")

    def __init__(self) -> None:
        self.buf = b""
        self.close = False
        self.refusal: bytes | None = None

    def feed(self, data: bytes) -> int:
        buf = self.buf + data if self.buf else data
        n = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.refusal = TOO_LARGE
                    self.close = True
                    buf = b""
                break
            head = buf[:end]
            line_end = head.find(b"\r\n")
            first = head if line_end < 0 else head[:line_end]
            if b" HTTP/1." not in first:
                self.refusal = BAD_REQUEST
                self.close = True
                buf = b""
                break
            body_len = 0
            if line_end >= 0:
                low = head[line_end:].lower()
                if b"transfer-encoding:" in low:
                    self.refusal = NOT_IMPLEMENTED
                    self.close = True
                    buf = b""
                    break
                i = low.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = low.find(b"\r\n", i + 2)
                    try:
                        body_len = int(low[i + 17 : j if j >= 0 else None])
                    except ValueError:
                        self.refusal = BAD_REQUEST
                        self.close = True
                        buf = b""
                        break
                if b"\r\nconnection: close" in low:
                    self.close = True
            if first.endswith(b"HTTP/1.0") and b"keep-alive" not in head.lower():
                self.close = True
            total = end + 4 + body_len
            if len(buf) < total:
                break
            buf = buf[total:]
            n += 1
            if self.close:
                buf = b""
                break
        self.buf = buf
        return n
