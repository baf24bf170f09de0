"""The built-in server worker: listens on its shard's endpoints, accepts as fast as the kernel
delivers, and holds or discards (echo, http and ws are traffic_server.py's). Runs in a child
process; also the embedded default target.

Rules of this file: like the client, connections are bare fds in one epoll. Accept errors that mean
"overloaded" (EMFILE, ENFILE, ENOBUFS, ENOMEM) are counted and answered by pausing that listener
for a moment (as trio does), never by dying: the kernel keeps the pending connections queued.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from multiprocessing.connection import Connection

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.engine.causes import cause_for
from loopfan.engine.worker import WorkerBase
from loopfan.errors import HostError
from loopfan.planner import ServerShard

_OVERLOAD = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BACKOFF_S = 0.1
_HOLD_EVENTS = poller.RDHUP | poller.ET
_TALK_EVENTS = poller.IN | poller.RDHUP
READ_SIZE = 65536


def open_listener(address: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several processes on this endpoint: the kernel spreads its connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        # No fix named here: the options that move the server are the command's (ServerStartError).
        why = " (another program listens there)" if exc.errno == errno.EADDRINUSE else ""
        raise HostError(f"cannot listen on {address}:{port}: {exc.strerror}{why}") from None
    return sock


class ServerWorker(WorkerBase):
    talk_events = _TALK_EVENTS  # how accepted sockets are watched when the mode reads them

    def __init__(self, shard: ServerShard, config: P.ServerConfig, pipe: Connection) -> None:
        super().__init__(pipe, config.report_interval_s)
        self.shard = shard
        self.config = config
        self.listeners: dict[int, socket.socket] = {}
        self.paused: dict[int, float] = {}  # listener fd -> resume time (monotonic)
        self.conns: set[int] = set()
        self.stopping = False
        self.talk = config.mode == "discard"  # read (and drop) what arrives; hold mode never reads

    def run(self) -> None:
        for ep in self.shard.listen:
            sock = open_listener(ep.address, ep.port, self.config.backlog, reuse_port=self.config.reuse_port)
            self.listeners[sock.fileno()] = sock
            self.epoll.register(sock.fileno(), poller.IN)
        self.send(P.READY, {"listen": [str(e) for e in self.shard.listen], "pid": os.getpid()})
        # Hold mode accepts in batches: after a burst, let the accept queue fill for a moment
        # instead of waking for every connection. The client's connect() does not wait for accept
        # (the handshake completes in the kernel), so this costs the clients nothing and halves
        # the server's wakeups: 200,000 connections ramp at 59.8K/s with it, 37.8K/s without
        # (docs/benchmarks.md). The queue (somaxconn, 4096) holds ~70 ms of a 60K/s ramp.
        coalesce_s = self.config.accept_coalesce_s if self.config.mode == "hold" else 0.0
        while not self.stopping:
            before = self.snap.established
            self.poll(0.2 if not self.paused else _BACKOFF_S)
            if self.paused:
                self._resume(time.monotonic())
            self.maybe_report()
            if coalesce_s and self.snap.established != before:
                time.sleep(coalesce_s)

    def _resume(self, now: float) -> None:
        for fd, when in list(self.paused.items()):
            if now >= when:
                del self.paused[fd]
                self.epoll.register(fd, poller.IN)

    def on_event(self, fd: int, events: int) -> None:
        listener = self.listeners.get(fd)
        if listener is not None:
            self._accept(listener)
        elif self.talk and events & poller.IN:
            self._read(fd)
        elif events & (poller.RDHUP | poller.HUP | poller.ERR):
            self._drop(fd)

    def _accept(self, listener: socket.socket) -> None:
        accept = listener._accept  # type: ignore[attr-defined]  # (fd, addr): no socket object per connection
        register = self.epoll.register
        conns = self.conns
        events = self.talk_events if self.talk else _HOLD_EVENTS
        for _ in range(4096):
            try:
                fd, _addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                err = exc.errno or 0
                self.fail(cause_for(err, "accept"))
                if err in _OVERLOAD:
                    lfd = listener.fileno()
                    self.epoll.unregister(lfd)
                    self.paused[lfd] = time.monotonic() + _BACKOFF_S
                    return
                continue
            if self.talk:
                os.set_blocking(fd, False)
            register(fd, events)
            conns.add(fd)
            self.established()

    def _receive(self, fd: int) -> bytes:
        """What arrived on fd; b"" when there is nothing to do (no data yet, or the peer is gone and
        the connection has been dropped)."""
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return b""
        self.snap.bytes_in += len(data)
        return data

    def _read(self, fd: int) -> None:
        self._receive(fd)  # discard: count the bytes, drop the connection at EOF

    def _drop(self, fd: int) -> None:
        if fd in self.conns:
            self.conns.discard(fd)
            self.epoll.unregister(fd)
            os.close(fd)
            self.snap.open -= 1
            self.snap.peer_closed += 1

    def on_control(self, message: str) -> None:
        if message in (P.CLOSE, P.STOP):
            self.stopping = True

    def close_all(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        for fd in self.conns:
            os.close(fd)
        self.snap.closed += len(self.conns)
        self.snap.open -= len(self.conns)
        self.conns = set()


def server_main(shard: ServerShard, config: P.ServerConfig, pipe: Connection) -> None:
    ServerWorker(shard, config, pipe).main()
