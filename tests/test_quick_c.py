"""The optional C quick paths (src/loopfan/engine/_quick.c) against what the Python loops they stand
in for do: what they complete, what they leave to Python (untouched, or read and handed over), and
the counts - on real sockets. The same runs through both paths are in test_traffic_run.py."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopfan.engine import traffic_client, traffic_server
from loopfan.engine.server import READ_SIZE
from loopfan.traffic.http import RequestFramer
from loopfan.traffic.tally import Tally
from loopfan.traffic.ws import BINARY, PING, TEXT, WsClient, WsEchoServer, encode_frame, frame_at

_quick = pytest.importorskip("loopfan.engine._quick", reason="the C quick path is not built (no compiler)")
IN, OUT, RDHUP, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLRDHUP, select.EPOLLHUP
MSG = b"m" * 64


class Codec:
    """The attributes the quick path reads from a codec (RawReplies and HttpClient have them)."""

    def __init__(self, repeat: bytes = MSG, fast: bool = True) -> None:
        self.buf = b""
        self.fast = fast
        self.repeat = repeat
        self.made = 0

    def message(self) -> bytes:
        self.made += 1
        return b"fresh"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, peer): a loopback TCP connection, our end non-blocking as the workers' are."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    ours.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def conn_for(sock: socket.socket, started: float, codec: Any = None) -> traffic_client.Conn:
    c = traffic_client.Conn(sock.fileno(), 0, codec or Codec(), "127.0.0.1", ("127.0.0.1", 1))
    c.starts.append(started)
    return c


def replies(ready: list[tuple[int, int]], conns: dict[int, Any], learned: bytes = MSG, *, end: float = 1e12,
            warm_end: float = 0.0) -> tuple[list[Any], tuple[int, ...], dict[int, int], dict[int, Any], list[Any]]:
    hist: dict[int, int] = {}
    pushed: dict[int, Any] = {}
    trouble: list[Any] = []
    rest, *counts = _quick.quick_replies(ready, conns, learned, end, warm_end, hist, pushed, trouble)
    return rest, tuple(counts), hist, pushed, trouble


def arrived(sock: socket.socket, data: bytes) -> None:
    """Wait until `data` can be read on sock (loopback: at once, but not before the send returns)."""
    assert select.select([sock], [], [], 5)[0]
    assert sock.recv(len(data), socket.MSG_PEEK) == data


def test_the_learned_reply_is_completed_and_the_next_message_sent(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    t0 = time.perf_counter()
    c = conn_for(ours, t0)
    peer.sendall(MSG)
    arrived(ours, MSG)
    rest, counts, hist, pushed, trouble = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    assert rest == [] and pushed == {} and trouble == []
    assert counts == (1, 1, len(MSG), len(MSG))  # replies, in the window; bytes sent, in the window
    assert c.got_reply and c.starts[0] > t0  # the next message's start: the reply's read
    assert sum(hist.values()) == 1
    (us,) = hist
    assert us == traffic_client.hdr_round(us) and 1 <= us < (time.perf_counter() - t0) * 1e6 + 1
    assert peer.recv(100) == MSG


def test_a_codec_without_a_repeat_is_asked_for_each_message(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    codec = Codec(repeat=b"")
    c = conn_for(ours, time.perf_counter(), codec)
    peer.sendall(MSG)
    arrived(ours, MSG)
    rest, counts, *_ = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    assert rest == [] and counts[0] == 1 and codec.made == 1
    assert peer.recv(100) == b"fresh"


def fast_ws_client(message: bytes, opcode: str = "text") -> WsClient:
    """A WsClient after a clean opening handshake (with wsproto's server, in memory): on its fast path."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection

    ws = WsClient("127.0.0.1:1", "/", message, opcode, Tally())
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(ws.opening())
    assert [type(e).__name__ for e in server.events()] == ["Request"]
    ws.feed(server.send(AcceptConnection()))
    assert ws.ready and ws.fast
    return ws


@pytest.mark.parametrize(("message", "opcode"), [(MSG, "text"), (b"\x00\xff" * 100, "binary"), (b"p", "ping"),
                                                 (b"", "text")])
def test_a_websocket_client_frame_is_made_in_c_as_message_makes_it(
        pair: tuple[socket.socket, socket.socket], message: bytes, opcode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The C path builds WsClient's next frame itself (head, a fresh key, the masked payload), not
    through message(): a frame the server reads as the message, under a new key each time."""
    ours, peer = pair
    ws = fast_ws_client(message, opcode)

    def not_called(self: WsClient) -> bytes:
        raise AssertionError("the C path called WsClient.message()")

    monkeypatch.setattr(WsClient, "message", not_called)
    c = conn_for(ours, time.perf_counter(), ws)
    sent = []
    for _ in range(3):
        peer.sendall(MSG)
        arrived(ours, MSG)
        rest, counts, *_ = replies([(ours.fileno(), IN)], {ours.fileno(): c})
        assert rest == [] and counts[0] == 1
        frame = peer.recv(1000)
        assert frame[: len(ws.head)] == ws.head and len(frame) == len(ws.head) + 4 + len(message)
        first, end, payload = frame_at(frame, 0, (TEXT, BINARY, PING), True)
        assert (first, end, payload) == (ws.first, len(frame), message)
        assert frame == encode_frame(ws.first, message, frame[len(ws.head): len(ws.head) + 4])
        sent.append(frame[len(ws.head): len(ws.head) + 4])
    assert len(set(sent)) == 3  # a fresh key per frame (RFC 6455 5.3)


def test_a_websocket_message_the_fast_path_does_not_send_whole_goes_through_message(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    big = b"x" * 70_000  # past 16-bit lengths: wsproto frames it (head b"")
    ws = fast_ws_client(big, "binary")
    assert ws.head == b""
    c = conn_for(ours, time.perf_counter(), ws)
    peer.sendall(MSG)
    arrived(ours, MSG)
    _, counts, *_ = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    assert counts[0] == 1
    assert peer.recv(2) == bytes((BINARY, 0x80 | 127))  # wsproto's frame (64-bit length), via message()


def test_forked_workers_draw_their_own_masking_keys(pair: tuple[socket.socket, socket.socket]) -> None:
    """The key pool is emptied in a forked child: two workers never send the same keys."""
    ours, peer = pair
    ws = fast_ws_client(MSG)
    c = conn_for(ours, time.perf_counter(), ws)

    def one_key() -> bytes:
        peer.sendall(MSG)
        arrived(ours, MSG)
        replies([(ours.fileno(), IN)], {ours.fileno(): c})
        return peer.recv(1000)[2:6]

    one_key()  # the parent's pool is filled
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next key, through the pipe
        try:
            os.write(w, one_key())
        finally:
            os._exit(0)
    os.close(w)
    child_key = os.read(r, 4)
    os.close(r)
    os.waitpid(pid, 0)
    parent_next = one_key()
    assert len(child_key) == 4 and child_key != parent_next


def test_warm_up_replies_count_but_are_not_sampled(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    now = time.perf_counter()
    for warm_end, window in ((now + 100, 0), (now - 1e-6, 1)):  # reply in the warm-up / sent in it, read after
        c = conn_for(ours, now - 1e-3)
        peer.sendall(MSG)
        arrived(ours, MSG)
        _, counts, hist, _, _ = replies([(ours.fileno(), IN)], {ours.fileno(): c}, warm_end=warm_end)
        assert counts == (1, window, len(MSG), len(MSG) * window) and hist == {}
        assert peer.recv(100) == MSG


@pytest.mark.parametrize("what", ["other", "eof", "late", "full"])
def test_reads_that_are_not_the_learned_reply_go_to_python(pair: tuple[socket.socket, socket.socket],
                                                           what: str) -> None:
    ours, peer = pair
    c = conn_for(ours, time.perf_counter())
    sent = {"other": b"x" * 64, "eof": b"", "late": MSG, "full": b"f" * (READ_SIZE + 10)}[what]
    if sent:
        peer.sendall(sent)
        arrived(ours, sent[:1])
        time.sleep(0.05)  # (the full one: all of it)
    else:
        peer.shutdown(socket.SHUT_WR)
        select.select([ours], [], [], 5)
    ready = [(ours.fileno(), IN)]
    before = time.perf_counter()
    rest, counts, hist, pushed, trouble = replies(ready, {ours.fileno(): c},
                                                  end=0.0 if what == "late" else 1e12)
    assert rest == ready and counts == (0, 0, 0, 0) and hist == {} and trouble == []
    data, t = pushed[ours.fileno()]
    assert data == sent[:READ_SIZE] and before <= t <= time.perf_counter()  # perf_counter's clock
    assert not c.got_reply  # nothing completed: the Python loop does it, with the read it is given


@pytest.mark.parametrize("state", ["unsent", "two-in-flight", "reply-begun", "codec-buffer", "slow-codec",
                                   "ending", "unknown-fd"])
def test_connections_not_in_the_quick_state_are_left_unread(pair: tuple[socket.socket, socket.socket],
                                                            state: str) -> None:
    ours, peer = pair
    codec = Codec(fast=state != "slow-codec")
    c = conn_for(ours, time.perf_counter(), codec)
    if state == "unsent":
        c.out = b"rest"
    elif state == "two-in-flight":
        c.starts.append(c.starts[0])
    elif state == "reply-begun":
        c.first = 1.0
    elif state == "codec-buffer":
        codec.buf = b"part"
    peer.sendall(MSG)
    arrived(ours, MSG)
    events = IN | RDHUP if state == "ending" else IN
    ready = [(ours.fileno(), events)]
    conns = {} if state == "unknown-fd" else {ours.fileno(): c}
    rest, counts, _, pushed, _ = replies(ready, conns)
    assert rest == ready and counts == (0, 0, 0, 0) and pushed == {}
    assert ours.recv(100) == MSG  # still there, for the Python loop


def test_a_next_message_the_socket_does_not_take_whole_is_handed_back(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    big = b"b" * (8 << 20)  # more than the send buffer and the peer's window take at once
    c = conn_for(ours, time.perf_counter(), Codec(repeat=big))
    peer.sendall(MSG)
    arrived(ours, MSG)
    rest, counts, _, _, trouble = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    ((fd, unsent, err),) = trouble
    sent = counts[2]
    assert rest == [] and counts[0] == 1 and 0 < sent < len(big)
    assert counts[3] == len(big)  # the window's bytes out: the whole message (the rest goes out later)
    assert (fd, err) == (ours.fileno(), 0) and unsent == big[sent:]  # the Python loop keeps it for EPOLLOUT


def test_a_failed_send_is_handed_back_with_its_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    c = conn_for(ours, time.perf_counter())
    peer.sendall(MSG)
    arrived(ours, MSG)
    ours.shutdown(socket.SHUT_WR)
    rest, counts, _, _, trouble = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    assert rest == [] and counts[0] == 1 and counts[2] == 0 and counts[3] == len(MSG)  # (as send_one)
    assert trouble == [(ours.fileno(), MSG, errno.EPIPE)]  # counted by the Python loop (_send_failed)


def test_a_reset_is_handed_over_as_its_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    c = conn_for(ours, time.perf_counter())
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    select.select([ours], [], [], 5)
    rest, _, _, pushed, _ = replies([(ours.fileno(), IN)], {ours.fileno(): c})
    err, _t = pushed[ours.fileno()]
    assert isinstance(err, ConnectionResetError) and err.errno == errno.ECONNRESET
    assert rest == [(ours.fileno(), IN)]


# --- the server's ---------------------------------------------------------------------------------


def serve(ready: list[tuple[int, int]], conns: set[int], *, echo: bool = True, pending: dict[int, bytes] | None = None,
          state: dict[int, Any] | None = None, learned: bytes | None = None,
          response: bytes = b"RESPONSE") -> tuple[list[Any], int, int, list[Any], list[Any]]:
    pushed: list[Any] = []
    trouble: list[Any] = []
    rest, bytes_in, bytes_out = _quick.serve_quick(ready, conns, pending or {}, state or {}, learned, response, echo,
                                                   RequestFramer, WsEchoServer, pushed, trouble)
    return rest, bytes_in, bytes_out, pushed, trouble


def test_server_echo(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    peer.sendall(b"hello")
    arrived(ours, b"hello")
    rest, bytes_in, bytes_out, pushed, trouble = serve([(ours.fileno(), IN)], {ours.fileno()})
    assert (rest, bytes_in, bytes_out, pushed, trouble) == ([], 5, 5, [], [])
    assert peer.recv(100) == b"hello"


def test_server_leaves_what_is_not_its_own(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    fd = ours.fileno()
    peer.sendall(b"hello")
    arrived(ours, b"hello")
    for ready, conns, pending in (([(fd, IN)], set(), {}),  # not an accepted connection (a listener, the pipe)
                                  ([(fd, OUT)], {fd}, {}),  # not readable
                                  ([(fd, IN | RDHUP)], {fd}, {}),  # the end is behind the data
                                  ([(fd, IN | HUP)], {fd}, {}),
                                  ([(fd, IN)], {fd}, {fd: b"unsent"})):  # answers still going out
        rest, bytes_in, bytes_out, pushed, trouble = serve(ready, conns, pending=pending)
        assert (rest, bytes_in, bytes_out, pushed, trouble) == (ready, 0, 0, [], [])
    assert ours.recv(100) == b"hello"


def test_server_eof_and_full_reads_go_to_python(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    fd = ours.fileno()
    peer.sendall(b"f" * (READ_SIZE + 10))
    time.sleep(0.05)
    rest, bytes_in, _, pushed, _ = serve([(fd, IN)], {fd})
    assert rest == [] and bytes_in == 0 and pushed == [(fd, b"f" * READ_SIZE)]  # Python counts and re-arms
    ours.recv(100)
    peer.shutdown(socket.SHUT_WR)
    select.select([ours], [], [], 5)
    assert serve([(fd, IN)], {fd})[3] == [(fd, None)]


def test_server_http_answers_the_learned_request_at_a_boundary(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    fd = ours.fileno()
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    framer = RequestFramer()
    peer.sendall(request)
    arrived(ours, request)
    for state in ({}, {fd: framer}):  # no framer yet: Python makes one
        if state:
            framer.buf = b"GET"  # mid-request: not a boundary
        rest, *_ = serve([(fd, IN)], {fd}, echo=False, state=state, learned=request)
        assert rest == [(fd, IN)]
    framer.buf = b""
    rest, bytes_in, bytes_out, pushed, _ = serve([(fd, IN)], {fd}, echo=False, state={fd: framer}, learned=request)
    assert (rest, bytes_in, bytes_out, pushed) == ([], len(request), 8, [])
    assert peer.recv(100) == b"RESPONSE"
    peer.sendall(b"POST / HTTP/1.1\r\n\r\n")
    arrived(ours, b"POST")
    rest, bytes_in, bytes_out, pushed, _ = serve([(fd, IN)], {fd}, echo=False, state={fd: framer}, learned=request)
    assert rest == [] and pushed == [(fd, b"POST / HTTP/1.1\r\n\r\n")]
    assert bytes_in == bytes_out == 0  # (the Python loop counts what it is handed: counted once)


def fast_ws() -> WsEchoServer:
    """A built-in server's WebSocket connection past a clean handshake: on its fast path."""
    ws = WsEchoServer()
    ws.fast = True
    ws.seen = None
    return ws


def masked(first: int, payload: bytes, key: bytes = b"\x01\x02\x03\x04") -> bytes:
    return encode_frame(first, payload, key)


# Reads the C path must hand to the Python loop whole (WsEchoServer.feed: a partial frame waits in
# its buffer, anything unusual goes to wsproto): a frame cut short, an unmasked frame, a close, a
# 64-bit length, a 16-bit length that fits in 7 bits, a control frame of 126 bytes, text that is not
# UTF-8 (a lone continuation byte, a surrogate, an overlong encoding), a fragment.
NOT_SIMPLE = [
    masked(TEXT, b"hello")[:-1],
    encode_frame(TEXT, b"hello", None),
    masked(0x88, b"\x03\xe8"),
    bytes((BINARY, 0x80 | 127)) + (5).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 5,
    bytes((BINARY, 0x80 | 126)) + (5).to_bytes(2, "big") + b"\0\0\0\0" + b"x" * 5,
    bytes((PING, 0x80 | 126)) + (126).to_bytes(2, "big") + b"\0\0\0\0" + b"x" * 126,
    masked(TEXT, b"\x80"),
    masked(TEXT, b"\xed\xa0\x80"),
    masked(TEXT, b"\xc0\xaf"),
    masked(0x01, b"part"),
]


def ws_round(frames: bytes, ws: WsEchoServer | None = None) -> tuple[list[Any], int, int, bytes]:
    """Send `frames` in one piece and run serve_quick once on the server's end: (pushed, bytes in,
    bytes out, what the client got back)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        server.setblocking(False)
        fd = server.fileno()
        client.sendall(frames)
        arrived(server, frames)
        rest, bytes_in, bytes_out, pushed, trouble = serve([(fd, IN)], {fd}, echo=False,
                                                           state={fd: ws or fast_ws()})
        assert rest == [] and trouble == []
        client.setblocking(False)
        time.sleep(0.001 if bytes_out else 0)
        got = b""
        while len(got) < bytes_out:
            select.select([client], [], [], 5)
            got += client.recv(READ_SIZE)
        return [(f, d) for f, d in pushed], bytes_in, bytes_out, got


def test_server_ws_echoes_whole_simple_frames_as_the_python_fast_path() -> None:
    read = (masked(TEXT, "héllo".encode()) + masked(BINARY, bytes(range(256)) * 2)
            + masked(PING, b"are you there") + masked(TEXT, b""))
    pushed, bytes_in, bytes_out, got = ws_round(read)
    assert pushed == [] and bytes_in == len(read)
    assert got == fast_ws().feed(read) and bytes_out == len(got)
    assert got.startswith(encode_frame(TEXT, "héllo".encode(), None)) and b"\x8a\x0dare you there" in got


@pytest.mark.parametrize("odd", NOT_SIMPLE)
def test_server_ws_hands_anything_else_to_python_whole(odd: bytes) -> None:
    read = masked(TEXT, b"first") + odd  # (the good frame before it is not answered here either)
    pushed, bytes_in, bytes_out, got = ws_round(read)
    assert pushed == [(pushed[0][0], read)] and (bytes_in, bytes_out, got) == (0, 0, b"")


def off_the_fast_path(how: str) -> WsEchoServer:
    ws = WsEchoServer() if how == "handshake" else fast_ws()
    if how == "mid-frame":
        ws.buf = b"\x81"
    elif how == "closing":
        ws.closing = True
    return ws


@pytest.mark.parametrize("how", ["handshake", "mid-frame", "closing"])
def test_server_ws_leaves_connections_off_the_fast_path_unread(how: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        fd = server.fileno()
        client.sendall(masked(TEXT, b"x"))
        arrived(server, masked(TEXT, b"x"))
        rest, bytes_in, bytes_out, pushed, _ = serve([(fd, IN)], {fd}, echo=False, state={fd: off_the_fast_path(how)})
        assert (rest, bytes_in, bytes_out, pushed) == ([(fd, IN)], 0, 0, [])
        assert server.recv(100, socket.MSG_PEEK) == masked(TEXT, b"x")  # not read


_FRAME = st.tuples(st.sampled_from([TEXT, BINARY, PING]), st.binary(max_size=300), st.binary(min_size=4, max_size=4))


@settings(max_examples=120, deadline=None)
@given(st.lists(_FRAME, min_size=1, max_size=8), st.one_of(st.none(), st.sampled_from(NOT_SIMPLE)),
       st.integers(min_value=0, max_value=3))
def test_server_ws_answers_as_the_python_fast_path_or_not_at_all(
        frames: list[tuple[int, bytes, bytes]], odd: bytes | None, cut: int) -> None:
    """Whatever the read, the C path either sends exactly what WsEchoServer.feed would send for it
    (and the connection's state needs nothing more: the read was whole frames), or sends nothing and
    hands the whole read over. Whole simple frames with text that decodes are always its own."""
    read = b"".join(encode_frame(first, payload[:125] if first == PING else payload, key)
                    for first, payload, key in frames) + (odd or b"")
    read = read[: len(read) - cut] if cut and odd is None else read
    python_ws = fast_ws()
    expected = python_ws.feed(read)
    pushed, bytes_in, bytes_out, got = ws_round(read)
    if pushed:
        assert pushed[0][1] == read and (bytes_in, bytes_out, got) == (0, 0, b"")
    else:
        assert got == expected and python_ws.fast and python_ws.buf == b"" and bytes_in == len(read)
    simple = odd is None and not cut and all(
        first != TEXT or _decodes(payload) for first, payload, _ in frames)
    assert bool(pushed) is not simple


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.skipif(os.environ.get("LOOPFAN_NO_C", "0") not in ("", "0"),
                    reason="LOOPFAN_NO_C is set: the C paths are off")
def test_the_worker_modules_use_it() -> None:
    assert traffic_client.quick_replies is _quick.quick_replies
    assert traffic_server.serve_quick is _quick.serve_quick
