"""The fast paths after the handshake (WebSocket frames, HTTP keep-alive) against the sans-I/O
libraries they stand in for: whatever the fast path accepts it must decode exactly as wsproto/h11
would, and everything else must reach the library unchanged."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request, TextMessage

from loopfan.traffic.http import (
    HttpClient,
    KnownHeads,
    RequestFramer,
    fixed_response,
    h11_reading,
    request_template,
)
from loopfan.traffic.tally import Tally
from loopfan.traffic.ws import (
    BINARY,
    PING,
    PONG,
    TEXT,
    MaskKeys,
    WsClient,
    WsEchoServer,
    encode_frame,
    frame_at,
    mask,
)


def pair(message: bytes = b"hello", opcode: str = "text") -> tuple[WsClient, WsEchoServer]:
    c = WsClient("127.0.0.1:9", "/", message, opcode, Tally())
    s = WsEchoServer()
    assert c.feed(s.feed(c.opening())) == 0 and c.ready
    return c, s


def decoded(ws: WSConnection, data: bytes) -> list[tuple[Any, ...]]:
    """What a wsproto peer makes of `data`, whole messages reassembled."""
    ws.receive_data(data)
    out: list[tuple[Any, ...]] = []
    parts: list[Any] = []
    for ev in ws.events():
        if isinstance(ev, (TextMessage, BytesMessage)):
            parts.append(ev.data)
            if ev.message_finished:
                out.append((type(ev).__name__, "".join(parts) if isinstance(ev, TextMessage) else b"".join(parts)))
                parts = []
        elif isinstance(ev, (Ping, Pong)):
            out.append((type(ev).__name__, bytes(ev.payload)))
        elif isinstance(ev, CloseConnection):
            out.append(("close", int(ev.code)))
    return out


def open_server() -> WSConnection:
    """A wsproto server past its handshake, to decode client frames with."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    for ev in server.events():
        if isinstance(ev, Request):
            client.receive_data(server.send(AcceptConnection()))
            list(client.events())
    return server


def test_handshake_turns_the_fast_path_on_only_when_clean() -> None:
    c, s = pair()
    assert c.fast and s.fast
    # A frame sent in the same read as the handshake (a client may not, RFC 6455 4.1): wsproto holds
    # it (and, being wsproto's call, drops it), so the fast path stays off for this connection.
    c2 = WsClient("h", "/", b"x", "text", Tally())
    s2 = WsEchoServer()
    out = s2.feed(c2.opening() + encode_frame(TEXT, b"early", b"abcd"))
    assert not s2.fast and out.startswith(b"HTTP/1.1 101")
    out = s2.feed(encode_frame(TEXT, b"late", b"dcba"))
    assert out == encode_frame(TEXT, b"late", None) and not s2.fast


payloads = st.one_of(st.binary(max_size=200), st.integers(126, 70000).map(lambda n: bytes(n % 251 for n in range(n))))


@settings(max_examples=60, deadline=None)
@given(payloads, st.binary(min_size=4, max_size=4), st.booleans())
def test_fast_encoding_decodes_identically_with_wsproto(payload: bytes, key: bytes, text: bool) -> None:
    if text:
        payload = payload.decode("latin-1").encode("utf-8")
    first = TEXT if text else BINARY
    server = open_server()
    want = [("TextMessage", payload.decode()) if text else ("BytesMessage", payload)]
    assert decoded(server, encode_frame(first, payload, key)) == want
    assert mask(mask(payload, key), key) == payload


@settings(max_examples=60, deadline=None)
@given(payloads, st.booleans())
def test_wsproto_encoding_decodes_identically_with_the_fast_path(payload: bytes, text: bool) -> None:
    c, s = pair()
    ev: Any = TextMessage(data=payload.decode("latin-1")) if text else BytesMessage(data=payload)
    body = payload.decode("latin-1").encode() if text else payload
    for wire, masked in ((c.ws.send(ev), True), (s.ws.send(ev), False)):
        first, end, got = frame_at(wire, 0, (TEXT, BINARY), masked)
        if len(body) > 65535:
            assert end == 0  # 64-bit lengths: left to wsproto
        else:
            assert (first, end, got) == (TEXT if text else BINARY, len(wire), body)


# A client's stream after the handshake: simple frames, and everything the fast path hands over.
client_frames = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("fragments"), st.lists(st.binary(max_size=20), min_size=2, max_size=4)),
    st.tuples(st.just("pong"), st.binary(max_size=10)),
)


def client_stream(frames: list[tuple[str, Any]], close: bool, fast: bool) -> bytes:
    c, _ = pair()
    ws = c.ws
    out = b""
    for kind, value in frames:
        if kind == "text":
            out += encode_frame(TEXT, value.encode(), b"k3y!") if fast else ws.send(TextMessage(data=value))
        elif kind == "binary":
            out += encode_frame(BINARY, value, b"\x00\xff\x10\x01") if fast else ws.send(BytesMessage(data=value))
        elif kind == "ping":
            out += encode_frame(PING, value, b"pppp") if fast else ws.send(Ping(payload=value))
        elif kind == "pong":
            out += ws.send(Pong(payload=value))
        else:
            for i, part in enumerate(value):
                out += ws.send(BytesMessage(data=part, message_finished=i == len(value) - 1))
    if close:
        out += ws.send(CloseConnection(code=1000))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(client_frames, max_size=8), st.booleans(), st.booleans(), st.data())
def test_fast_echo_server_answers_as_wsproto_does(frames: list[tuple[str, Any]], close: bool, fast_encoded: bool,
                                                 data: st.DataObject) -> None:
    stream = client_stream(frames, close, fast_encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    results = []
    for fast in (True, False):
        c, s = pair()
        s.fast = fast  # False: wsproto for every frame, the reference
        out = b""
        last = 0
        for cut in [*cuts, len(stream)]:
            if s.closing:
                break  # the worker closes the connection: nothing more is fed
            out += s.feed(stream[last:cut])
            last = cut
        c.fast = False
        results.append((decoded(c.ws, out), s.closing))
    assert results[0] == results[1]
    if any(kind != "pong" for kind, _ in frames) and not close:
        assert results[0][0]  # something was echoed


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=60))
def test_garbage_after_the_handshake_ends_as_with_wsproto(garbage: bytes) -> None:
    results = []
    for fast in (True, False):
        c, s = pair()
        s.fast = fast
        out = s.feed(garbage)
        c.fast = False
        results.append((decoded(c.ws, out), s.closing))
    assert results[0] == results[1]


# A server's stream to the client: echoes, pongs, and the cases the fast path hands to wsproto.
server_frames = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("pong"), st.binary(max_size=125)),
    st.tuples(st.just("ping"), st.binary(max_size=10)),
    st.tuples(st.just("fragments"), st.lists(st.binary(max_size=20), min_size=2, max_size=4)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(server_frames, max_size=8), st.booleans(), st.sampled_from(["text", "ping"]), st.data())
def test_fast_client_counts_as_wsproto_does(frames: list[tuple[str, Any]], close: bool, opcode: str,
                                           data: st.DataObject) -> None:
    _, s = pair()
    ws = s.ws
    stream = b""
    for kind, value in frames:
        if kind == "text":
            stream += ws.send(TextMessage(data=value))
        elif kind == "binary":
            stream += encode_frame(BINARY, value, None)
        elif kind == "pong":
            stream += encode_frame(PONG, value, None)
        elif kind == "ping":
            stream += ws.send(Ping(payload=value))
        else:
            for i, part in enumerate(value):
                stream += ws.send(BytesMessage(data=part, message_finished=i == len(value) - 1))
    if close:
        stream += ws.send(CloseConnection(code=1001))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    results = []
    for fast in (True, False):
        c, _ = pair(b"p", opcode)
        c.fast = fast
        done = 0
        last = 0
        pongs = []
        for cut in [*cuts, len(stream)]:
            if c.dead is not None:
                break  # the worker drops a dead connection: nothing more is fed
            done += c.feed(stream[last:cut])
            last = cut
            if c.out:
                pongs += decoded(open_server(), c.out)
                c.out = b""
        results.append((done, c.dead, c.partial, pongs))
    assert results[0] == results[1]


def test_client_sends_fresh_keys_and_server_echoes_unmasked() -> None:
    c, s = pair(b"0123456789", "binary")
    one, two = c.message(), c.message()
    assert one != two and one[:2] == two[:2] == bytes((BINARY, 0x80 | 10))
    assert s.feed(one + two) == encode_frame(BINARY, b"0123456789", None) * 2
    c, s = pair(b"p", "ping")
    assert c.feed(s.feed(c.message())) == 1
    assert s.feed(c.goodbye()) == encode_frame(0x88, (1000).to_bytes(2, "big"), None) and s.closing
    keys = MaskKeys()
    assert len({keys.take() for _ in range(3000)}) > 2900  # fresh, and across pool refills


def test_big_messages_go_through_wsproto() -> None:
    c, s = pair(b"x" * 70000, "binary")
    wire = c.message()
    assert wire[1] & 0x7F == 127
    back = s.feed(wire)
    assert not s.fast and c.feed(back) == 1 and not c.fast


# -- HTTP: known response heads against h11 --------------------------------------------------------

@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([100, 200, 201, 204, 301, 304, 404, 500, 503]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    framing = draw(st.sampled_from(["length", "length", "length", "chunked", "none"]))
    body = draw(st.binary(max_size=30))
    headers = [("Server", "test"), ("Date", draw(st.sampled_from(["Wed, 25 Nov 2026 20:00:00 GMT",
                                                                    "Wed, 25 Nov 2026 20:00:01 GMT"])))]
    if draw(st.integers(0, 9)) == 0:
        headers.append(("Connection", "close"))
    if draw(st.integers(0, 9)) == 0:
        headers.append(("X-Odd", draw(st.sampled_from(["a\x00b", " lead", "ok value", "\x7f"]))))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        wire_body = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        wire_body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        wire_body = b""
    head = f"HTTP/{version} {status} Whatever\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + wire_body


@settings(max_examples=300, deadline=None)
@given(st.lists(responses(), min_size=1, max_size=5), st.sampled_from(["GET", "POST", "HEAD"]), st.integers(-1, 0),
       st.data())
def test_known_heads_frame_as_h11_does(answers: list[bytes], method: str, fewer: int, data: st.DataObject) -> None:
    template = request_template(method, "/", "h", (), b"body" if method == "POST" else b"")
    stream = b"".join(answers)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    known = KnownHeads()
    results = []
    for fast in (True, False):
        tally = Tally()
        c = HttpClient(template, tally, known)
        c.fast = c.fast and fast  # False: h11 for every response, the reference
        for _ in range(max(0, len(answers) + fewer)):
            assert c.message() == template.wire
        dones = []
        last = 0
        for cut in [*cuts, len(stream)]:
            if c.dead is not None:
                break
            if cut == last:
                continue  # the worker never feeds b"" (h11 would read it as the peer's close)
            dones.append(c.feed(stream[last:cut]))
            last = cut
        results.append((dones, c.dead, tally.statuses, tally.errors))
    assert results[0] == results[1]


def test_empty_bodies_take_the_fast_path() -> None:
    """QA: `--response-size 0` ran at a quarter of the speed - h11 ends a Content-Length: 0 response
    with its head (EndOfMessage, not NEED_DATA), so no such head was ever known and every reply
    went through h11. (That the framing stays h11's is test_known_heads_frame_as_h11_does.)"""
    template = request_template("GET", "/", "h", (), b"")
    empty = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 0\r\n\r\n"
    assert h11_reading(empty, template) == ("http-2xx", False, 0)
    assert h11_reading(empty.replace(b"200 OK", b"204 No Content"), template) is None
    assert h11_reading(empty.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), template) is None
    c = HttpClient(template, Tally(), KnownHeads())
    for _ in range(3):
        c.message()
    assert c.feed(empty * 3) == 3 and c.fast and not c.partial  # (fast: h11 never took over)


def test_known_heads_skip_h11_and_stay_bounded() -> None:
    template = request_template("GET", "/", "h", (), b"")
    known = KnownHeads(max_entries=2)
    c = HttpClient(template, Tally(), known)
    ok = fixed_response(10)
    for _ in range(3):
        c.message()
    assert c.feed(ok * 2 + ok[:12]) == 2 and c.partial and c.fast
    assert c.feed(ok[12:]) == 1 and not c.partial and c.fast and list(known.heads) == [ok[:-10]]
    for i in range(5):
        known.lookup(f"HTTP/1.1 200 OK\r\nX: {i}\r\nContent-Length: 0\r\n\r\n".encode(), template)
    assert len(known.heads) <= 2
    # HEAD and Connection: close requests: h11 from the start.
    assert not HttpClient(request_template("HEAD", "/", "h", (), b""), Tally()).fast
    assert not HttpClient(request_template("GET", "/", "h", (("Connection", "close"),), b""), Tally()).fast


# -- the built-in server's request framer: the scan, and h11 where the scan cannot decide ------------

requests = st.one_of(
    st.binary(max_size=20).map(lambda b: b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)),
    st.just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    st.lists(st.binary(min_size=1, max_size=9), max_size=3).map(
        lambda parts: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6), st.data())
def test_request_framer_counts_every_request_any_split(reqs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    f = RequestFramer()
    n = 0
    last = 0
    for cut in [*cuts, len(stream)]:
        if cut > last:
            n += f.feed(stream[last:cut])
        last = cut
    assert (n, f.refusal, f.close) == (len(reqs), None, False)
