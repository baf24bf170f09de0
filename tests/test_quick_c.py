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

from loopfan.engine import traffic_client, traffic_server
from loopfan.engine.server import READ_SIZE
from loopfan.traffic.http import RequestFramer

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
                                                   RequestFramer, pushed, trouble)
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


@pytest.mark.skipif(os.environ.get("LOOPFAN_NO_C", "0") not in ("", "0"),
                    reason="LOOPFAN_NO_C is set: the C paths are off")
def test_the_worker_modules_use_it() -> None:
    assert traffic_client.quick_replies is _quick.quick_replies
    assert traffic_server.serve_quick is _quick.serve_quick
