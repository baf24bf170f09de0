"""The built-in server's traffic modes: echo, HTTP (one fixed response, keep-alive) and WebSocket echo.

Rules of this file: a ServerWorker subclass - listening, accepting, overload back-off and counting
are ServerWorker's; this adds the per-connection protocol state (a dict fd -> state, created on the
first bytes) and writes that the socket did not take at once (kept, and flushed on EPOLLOUT), so a
large reply never blocks the loop and is never cut short. hold and discard stay in server.py.

This server is the other half of our own benchmarks, so its loop is inline (poll() below): an echo,
or an HTTP request byte-for-byte equal to one the framer already took as exactly one whole request
from a boundary, is answered without a method call. Everything else goes through on_event().
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from multiprocessing.connection import Connection

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.engine.server import READ_SIZE, ServerWorker, server_main
from loopfan.planner import ServerShard
from loopfan.traffic.config import TrafficServerConfig
from loopfan.traffic.http import RequestFramer, fixed_response
from loopfan.traffic.ws import WsEchoServer

try:  # the echo, HTTP and WebSocket answers in C (setup.py builds it with a compiler); else poll() below
    from loopfan.engine._quick import serve_quick as _c_serve_quick
except ImportError:  # pragma: no cover - a machine without a compiler; the tests force it by patching
    _c_serve_quick = None  # type: ignore[assignment]
# LOOPFAN_NO_C=1 (any value but 0): the Python loop alone (to compare, or to rule the C module out).
serve_quick = None if os.environ.get("LOOPFAN_NO_C", "0") not in ("", "0") else _c_serve_quick

TRAFFIC_MODES = ("echo", "http", "ws")
# Edge-triggered (as the traffic client, and for the same measured reason): a read that fills the
# buffer, or that came with the peer's close or an error, is followed by a modify() so that epoll
# looks at the socket again (no new edge would come for what is left).
_TALK = poller.IN | poller.RDHUP | poller.ET
_TALK_OUT = _TALK | poller.OUT
_ENDING = poller.RDHUP | poller.HUP | poller.ERR  # the end is queued behind the data: read again for it
_ANSWERING = poller.OUT | poller.ET  # the peer has closed its side: only its answers are left to write


class TrafficServerWorker(ServerWorker):
    talk_events = _TALK

    def __init__(self, shard: ServerShard, config: P.ServerConfig, pipe: Connection) -> None:
        super().__init__(shard, config, pipe)
        self.talk = True  # register accepted sockets for reading (ServerWorker: discard only)
        size = config.response_bytes if isinstance(config, TrafficServerConfig) else 128
        self.response = fixed_response(size)
        self.http = config.mode == "http"
        self.echo = config.mode == "echo"
        self.ws = config.mode == "ws"
        # HTTP: the last request that was exactly one whole request, boundary to boundary, with no
        # close and no refusal; the same bytes on a connection at a boundary get the response inline.
        self.learned_request: bytes | None = None
        self.state: dict[int, RequestFramer | WsEchoServer] = {}
        self.pending_out: dict[int, bytes] = {}
        self.closing_after_write: set[int] = set()

    def on_event(self, fd: int, events: int) -> None:
        if fd in self.listeners:
            super().on_event(fd, events)
            return
        if events & poller.OUT and fd in self.pending_out:
            self._flush(fd)
        if events & poller.IN:
            self._read(fd, events)
        elif events & (poller.RDHUP | poller.HUP | poller.ERR):
            self._drop(fd)

    def poll(self, timeout_s: float) -> None:
        ready = self.wait(timeout_s)
        conns = self.conns
        pending = self.pending_out
        state = self.state
        read = os.read
        write = os.write
        echo = self.echo
        learned = self.learned_request
        response = self.response
        readable = poller.IN
        bytes_in = bytes_out = 0
        if serve_quick is not None and ready and (echo or learned is not None or self.ws):
            pushed: list[tuple[int, bytes | None]] = []
            trouble: list[tuple[int, bytes, int]] = []
            ready, bytes_in, bytes_out = serve_quick(ready, conns, pending, state, learned, response, echo,
                                                     RequestFramer, WsEchoServer, pushed, trouble)
            for fd, data in pushed:
                if data:
                    bytes_in += len(data)
                    if len(data) == READ_SIZE:
                        self.epoll.modify(fd, _TALK)
                    self._handle(fd, data)
                else:
                    self._drop(fd)
            for fd, unsent, err in trouble:
                if err and err != errno.EAGAIN:
                    self._drop(fd)
                else:
                    pending[fd] = unsent
                    self.epoll.modify(fd, _TALK_OUT)
            learned = self.learned_request
        for fd, events in ready:
            if fd in conns and events & readable and fd not in pending:
                try:
                    data = read(fd, READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(fd)
                    continue
                bytes_in += len(data)
                if len(data) == READ_SIZE or events & _ENDING:
                    self.epoll.modify(fd, _TALK)  # (not pending here) more may wait: no edge would say so
                if echo:
                    out = data
                elif data == learned and _at_boundary(state.get(fd)):
                    out = response
                else:
                    self._handle(fd, data)
                    learned = self.learned_request
                    continue
                try:
                    sent = write(fd, out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._drop(fd)
                    continue
                bytes_out += sent
                if sent < len(out):
                    pending[fd] = out[sent:]
                    self.epoll.modify(fd, _TALK_OUT)
            elif fd == self.pipe_fd:
                self.read_control()
            else:
                self.on_event(fd, events)
        self.snap.bytes_in += bytes_in
        self.snap.bytes_out += bytes_out

    def _read(self, fd: int, events: int = 0) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            if fd in self.pending_out:
                # The peer is done sending, not reading: what it asked for still goes out (a
                # client that pipelines its requests and shuts down its side got 4 MB of 20), then
                # the close. Only writability is watched from here (the EOF stays readable).
                self.closing_after_write.add(fd)
                self.epoll.modify(fd, _ANSWERING)
            else:
                self._drop(fd)
            return
        self.snap.bytes_in += len(data)
        if len(data) == READ_SIZE or events & _ENDING:
            self.epoll.modify(fd, _TALK_OUT if fd in self.pending_out else _TALK)
        self._handle(fd, data)

    def _handle(self, fd: int, data: bytes) -> None:
        if self.echo:
            self._write(fd, data)
            return
        st = self.state.get(fd)
        if st is None:
            st = self.state[fd] = RequestFramer() if self.http else WsEchoServer()
        out: bytes
        if isinstance(st, RequestFramer):
            boundary = _at_boundary(st)
            n = st.feed(data)
            if (boundary and n == 1 and _at_boundary(st) and not st.close and st.refusal is None
                    and len(data) < READ_SIZE):  # (a full read may not be all: never the quick path's)
                self.learned_request = data
            out = self.response if n == 1 else self.response * n
            if st.refusal is not None:
                out += st.refusal
            close = st.close
        else:
            out = st.feed(data)
            close = st.closing
        if out:
            self._write(fd, out)
        if close and fd in self.conns:
            if fd in self.pending_out:
                self.closing_after_write.add(fd)
            else:
                self._drop(fd)

    def _send_some(self, fd: int, data: bytes) -> bytes | None:
        """Write what the socket takes now; return the rest (b"" when all went), None if dropped."""
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(fd)
            return None
        self.snap.bytes_out += n
        return data[n:]

    def _write(self, fd: int, data: bytes) -> None:
        if fd in self.pending_out:
            self.pending_out[fd] += data
            return
        rest = self._send_some(fd, data)
        if rest:
            self.pending_out[fd] = rest
            self.epoll.modify(fd, _TALK_OUT)

    def _flush(self, fd: int) -> None:
        rest = self._send_some(fd, self.pending_out.pop(fd))
        if rest is None:
            return
        if rest:
            self.pending_out[fd] = rest
            return
        self.epoll.modify(fd, _TALK)
        if fd in self.closing_after_write:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        self.state.pop(fd, None)
        self.pending_out.pop(fd, None)
        self.closing_after_write.discard(fd)
        super()._drop(fd)


def _at_boundary(st: RequestFramer | WsEchoServer | None) -> bool:
    """An HTTP connection between two requests, still on the quick framer (not h11)."""
    return isinstance(st, RequestFramer) and not st.buf and st.conn is None


def traffic_server_main(shard: ServerShard, config: P.ServerConfig, pipe: Connection) -> None:
    TrafficServerWorker(shard, config, pipe).main()


def server_main_for(config: P.ServerConfig) -> Callable[[ServerShard, P.ServerConfig, Connection], None]:
    """The worker main for a built-in server mode: http and ws here, hold/echo/discard in server.py."""
    return traffic_server_main if config.mode in TRAFFIC_MODES else server_main
