"""HTTP/1.1 keep-alive, sans I/O: the client side on h11, and the built-in server's request framer.

Rules of this file: the client never writes HTTP by hand - every request is h11's serialization of
the request, validated once. Every distinct response head is parsed by h11 (so a server that answers
garbage is caught by h11, not by guesswork); what h11 made of a head - status, Content-Length body,
keep-alive - is remembered (KnownHeads), and a later response whose head is byte-for-byte one h11
already accepted is framed by a find() and a dict look-up instead of ~25 us of h11 per response.
Anything else (a new head, chunked, no length, 1xx/204/304, a close) goes to h11's state machine,
for the rest of the connection, which is told about every request still in flight at that moment.
Pipelining: h11 allows one request per cycle, so requests beyond the first are sent from h11's own
serialization of the same request, and h11 is told about each one when its cycle begins; the wire
and the state machine always agree.

The built-in server must not be the bottleneck of our own benchmarks, so its framer is small and
fast: it finds the end of each request head, honours Content-Length, and answers every request with
the same prepared response. What the scan cannot decide (chunked bodies, a first line that is not
HTTP/1.x, a bad Content-Length) goes to an h11 server connection for the rest of the connection,
which frames the requests or names the error status.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import h11

from loopfan.traffic.tally import SAMPLE_BYTES, Tally

_MAX_HEAD = 64 * 1024
_FAST_MAX_BODY = 1024 * 1024


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


def fast_path_fits(template: RequestTemplate) -> bool:
    """Whether h11's reading of a response head cannot depend on this request: not HEAD or CONNECT
    (no body / a tunnel), no Connection, Expect or Upgrade header (close, 100-continue, 101)."""
    req = template.request
    return (req.method not in (b"HEAD", b"CONNECT")
            and not any(k in (b"connection", b"expect", b"upgrade") for k, _ in req.headers))


# A known head: (status class such as "http-2xx", counts as an error, body length in bytes).
Known = tuple[str, bool, int]


class KnownHeads:
    """Response heads h11 has accepted as a keep-alive response with a Content-Length body, shared
    by a worker's connections (nginx's Date changes once a second: one h11 parse per second, not
    per response). Bounded: a server with a unique head per response just keeps h11 busy."""

    __slots__ = ("heads", "max_entries")

    def __init__(self, max_entries: int = 256) -> None:
        self.heads: dict[bytes, Known | None] = {}  # None: h11 said it is not the simple case
        self.max_entries = max_entries

    def lookup(self, head: bytes, template: RequestTemplate) -> Known | None:
        try:
            return self.heads[head]
        except KeyError:
            pass
        known = h11_reading(head, template)
        if len(self.heads) >= self.max_entries:
            self.heads.clear()
        self.heads[head] = known
        return known


def h11_reading(head: bytes, template: RequestTemplate) -> Known | None:
    """What h11 makes of `head` (a whole response head, ending in CRLF CRLF) as the answer to
    `template` on a fresh keep-alive connection, if it is the simple case: a final status other
    than 204/304, a Content-Length body, and both sides free to send the next request."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(template.request)
    if template.body:
        conn.send(h11.Data(data=template.body))
    conn.send(h11.EndOfMessage())
    try:
        conn.receive_data(head)
        ev = conn.next_event()
        if type(ev) is not h11.Response:
            return None
        after = conn.next_event()
        ended = type(after) is h11.EndOfMessage  # Content-Length: 0 - the head is the whole response
        if after is not h11.NEED_DATA and not ended:
            return None
        code = ev.status_code
        lengths = [v for k, v in ev.headers if k == b"content-length"]
        if (code in (204, 304) or not lengths or ev.http_version != b"1.1"
                or any(k == b"transfer-encoding" for k, _ in ev.headers)):
            return None
        body_len = int(lengths[0])
        if body_len > _FAST_MAX_BODY or ended != (body_len == 0):
            return None  # h11 streams big bodies; the fast path would hold them whole
        if not ended:  # (never receive_data(b""): h11 reads it as the peer's close)
            conn.receive_data(b"\0" * body_len)
            while True:
                ev2 = conn.next_event()
                if type(ev2) is h11.EndOfMessage:
                    break
                if type(ev2) is not h11.Data:
                    return None
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return None  # Connection: close (or similar): h11 must see this one
    except h11.ProtocolError:
        return None
    return f"http-{code // 100}xx", code >= 400, body_len


class HttpClient:
    """One keep-alive connection's HTTP state: requests out, responses counted by status class."""

    __slots__ = ("buf", "conn", "dead", "fast", "in_flight", "known", "partial", "repeat", "sampling", "tally",
                 "template", "unannounced")

    ready = True  # no opening handshake
    out = b""  # nothing to answer on our own (WebSocket answers pings; HTTP never does)

    def __init__(self, template: RequestTemplate, tally: Tally, known: KnownHeads | None = None) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.template = template
        # Every request is the same bytes. The traffic client's quick path sends them again without
        # message() when it skipped feed() for a reply it had seen whole, so in_flight stays right.
        self.repeat = template.wire
        self.tally = tally
        self.dead: str | None = None
        self.unannounced = 0  # pipelined requests on the wire that h11 has not been told about yet
        self.partial = False
        # Fast path: h11 is told nothing until a response is not a known head; then h11 for good.
        self.fast = fast_path_fits(template)
        self.known = known if known is not None else KnownHeads()
        self.in_flight = 0  # fast path: requests sent, responses not yet complete
        self.buf = b""  # fast path: the start of a response not all here yet
        self.sampling = False  # h11 path: this response is the worker's first error one, its body is kept

    def opening(self) -> bytes:
        return b""

    def message(self) -> bytes:
        if self.fast:
            self.in_flight += 1
            return self.template.wire
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
        if not self.fast:
            return self._feed_h11(data)
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        done = 0
        known = self.known
        tally = self.tally
        while pos < n:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos <= _MAX_HEAD:
                    break  # wait for the rest of the head
                info = None
            elif not self.in_flight:
                info = None  # a response to nothing: h11 says what that is
            else:
                info = known.lookup(buf[pos : end + 4], self.template)
            if info is None:
                return done + self._to_h11(buf[pos:])
            total = end + 4 + info[2]
            if total > n:
                break  # wait for the rest of the body
            tally.status(info[0])
            if info[1]:
                tally.error(info[0])
                if not tally.first_error_status:  # (h11 accepted the head: "HTTP/1.1 NNN ...")
                    tally.sample_error(int(buf[pos + 9 : pos + 12]), buf[end + 4 : total])
            pos = total
            done += 1
            self.in_flight -= 1
        self.buf = buf[pos:] if pos < n else b""
        self.partial = bool(self.buf)
        return done

    def _to_h11(self, rest: bytes) -> int:
        """Hand the connection to h11 at a response boundary, telling it of every request in flight."""
        self.fast = False
        self.buf = b""
        if self.in_flight:
            self.unannounced = self.in_flight - 1
            self._announce()
        self.in_flight = 0
        return self._feed_h11(rest)

    def _feed_h11(self, data: bytes) -> int:
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
                        if not self.tally.first_error_status:
                            self.tally.sample_error(code, b"")
                            self.sampling = True
                elif t is h11.Data:
                    if self.sampling:
                        tally = self.tally
                        room = SAMPLE_BYTES - len(tally.first_error_body)
                        if room > 0:
                            tally.first_error_body += bytes(ev.data[:room])  # type: ignore[union-attr]
                elif t is h11.EndOfMessage:
                    done += 1
                    self.partial = False
                    self.sampling = False
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
        except h11.ProtocolError:
            # Remote: garbage. Local: a response to no request (h11 then refuses the next cycle).
            self.dead = "bad-reply"
        return done


# -- the built-in server's side --------------------------------------------------------------


def fixed_response(body_bytes: int) -> bytes:
    body = (b"loopfan " * (body_bytes // 8 + 1))[:body_bytes]
    head = (f"HTTP/1.1 200 OK\r\nServer: loopfan\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n").encode()
    return head + body


TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class RequestFramer:
    """Counts complete requests in a byte stream. After feed(): `close` means answer, then close,
    and `refusal` (if set) is the error response to send instead of any further answers."""

    __slots__ = ("buf", "close", "conn", "refusal")

    def __init__(self) -> None:
        self.buf = b""
        self.close = False
        self.refusal: bytes | None = None
        self.conn: h11.Connection | None = None  # set when the scan could not decide: h11 from then on

    def feed(self, data: bytes) -> int:
        if self.conn is not None:
            return self._feed_h11(data)
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
                return n + self._to_h11(buf)
            body_len = 0
            if line_end >= 0:
                low = head[line_end:].lower()
                if b"transfer-encoding:" in low:
                    return n + self._to_h11(buf)
                i = low.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = low.find(b"\r\n", i + 2)
                    try:
                        body_len = int(low[i + 17 : j if j >= 0 else None])
                    except ValueError:
                        return n + self._to_h11(buf)
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

    def _to_h11(self, rest: bytes) -> int:
        """h11 for the rest of the connection, from a request boundary."""
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        self.buf = b""
        return self._feed_h11(rest)

    def _feed_h11(self, data: bytes) -> int:
        conn = self.conn
        assert conn is not None
        n = 0
        try:
            conn.receive_data(data)
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED or type(ev) is h11.ConnectionClosed:
                    break
                if type(ev) is h11.EndOfMessage:
                    n += 1
                    # h11 is told of a 200 only to move its state machine on (its keep-alive
                    # decision does not depend on the body); the wire gets the prepared response.
                    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    conn.send(h11.EndOfMessage())
                    if conn.our_state is h11.MUST_CLOSE:
                        self.close = True
                        break
                    conn.start_next_cycle()
        except h11.ProtocolError as exc:
            status = HTTPStatus(exc.error_status_hint)
            self.refusal = (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Length: 0\r\n"
                            "Connection: close\r\n\r\n").encode()
            self.close = True
        return n
