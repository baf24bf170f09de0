"""The client worker: opens one ClientShard's connections, holds them, closes them. Runs in a child.

Rules of this file: this is the per-connection hot path (a million iterations per run), so it
keeps connections as bare file descriptors (an int in an array: no socket objects, no dicts per
connection), uses one epoll, and makes the fewest syscalls that are correct:

    socket(SOCK_NONBLOCK) -> setsockopt(IP_BIND_ADDRESS_NO_PORT) -> bind(src, 0) -> connect()

On loopback the whole handshake runs inside connect(): the SYN and SYN-ACK are processed in softirq
during the call, the SYN-ACK waits in the socket's backlog while connect() holds the socket lock,
and is processed when it releases it. So a non-blocking connect() returns EINPROGRESS (the state
was still SYN_SENT when it looked) yet the socket is ESTABLISHED on return; getpeername() confirms
it. Only when the listener's queue is full does it stay pending, and then epoll says when.
IP_BIND_ADDRESS_NO_PORT defers the port choice from bind() to connect(), so each (source, destination)
group gets its own ephemeral-port budget (mechanics.md).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.engine.causes import cause_for
from loopfan.engine.pacing import Pacer
from loopfan.engine.worker import WorkerBase
from loopfan.planner import ClientShard

# Linux >= 4.2 only; elsewhere (macOS, BSD) bind(ip, 0) reserves the port (the planner budgets
# per source address there) and option number 24 means something else: never set it blindly.
_HAS_NO_PORT = hasattr(socket, "IP_BIND_ADDRESS_NO_PORT")
_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_EPOLLOUT = poller.OUT
_EPOLLIN = poller.IN
_EPOLLERR = poller.ERR
_EPOLLHUP = poller.HUP
_EPOLLRDHUP = poller.RDHUP
_EPOLLET = poller.ET
# Held connections: edge-triggered, so a held socket wakes us only when the peer closes it.
_HOLD_EVENTS = _EPOLLRDHUP | _EPOLLET
_PENDING_EVENTS = _EPOLLOUT | _EPOLLRDHUP | _EPOLLET


def bind_socket(source: str, *, family: int = socket.AF_INET, nonblocking: bool = True) -> socket.socket:
    """A TCP socket bound to `source` with IP_BIND_ADDRESS_NO_PORT (Linux): ready to connect().

    The port is chosen at connect() per 4-tuple, so one source address serves every destination
    with its own ~28K-port budget, instead of reserving a port across all destinations at bind().
    """
    kind = socket.SOCK_STREAM | (socket.SOCK_NONBLOCK if nonblocking else 0)
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET and _HAS_NO_PORT:
            sock.setsockopt(socket.IPPROTO_IP, _NO_PORT, 1)
        sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class ClientWorker(WorkerBase):
    def __init__(self, shard: ClientShard, config: P.ClientConfig, pipe: Connection) -> None:
        super().__init__(pipe, config.report_interval_s)
        self.shard = shard
        self.config = config
        self.fds: set[int] = set()  # held connections (bare fds: no socket objects)
        # fd -> (connect start ns, destination), only while connecting (rare on loopback).
        self.pending: dict[int, tuple[int, tuple[str, int]]] = {}
        self.closing = False
        self.go = not config.gated
        # fd -> the (source, destination, family) it was opened with, for a failure's 4-tuple: once
        # the peer resets a connection getpeername() fails (ENOTCONN), and the report had an empty
        # Wireshark filter for every reset (QA). A list indexed by fd, one store per connect: fds are
        # the lowest free numbers, so it stays about the shard's size.
        self.opened_as: list[tuple[tuple[str, int], tuple[str, int], int] | None] = [None] * (shard.connections + 256)

    def _plan(self) -> Iterator[tuple[tuple[str, int], tuple[str, int], int]]:
        # One (source, 0) and one destination tuple per group, shared by its connections.
        for g in self.shard.groups:
            family = socket.AF_INET6 if ":" in g.target.address else socket.AF_INET
            item = ((g.source, 0), (g.target.address, g.target.port), family)
            for _ in range(g.connections):
                yield item

    def run(self) -> None:
        while not self.go and not self.closing:
            self.poll(0.2)
            self.maybe_report()
        snap = self.snap
        ep = self.epoll
        pacer = Pacer(self.config.connect_rate_per_s)
        todo = self._plan()
        exhausted = False
        timeout_ns = int(self.config.connect_timeout_s * 1e9)
        max_pending = self.config.max_pending
        lat = self.latency
        fds_add = self.fds.add
        perf_ns = time.perf_counter_ns
        AF_INET = socket.AF_INET
        kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        ip_proto = socket.IPPROTO_IP
        pending = self.pending
        EINPROGRESS = errno.EINPROGRESS
        # The C socket type: socket.socket's Python-level __init__ is pure overhead here.
        new_socket = _socket.socket
        opened_as = self.opened_as
        while not exhausted or pending:
            if self.closing:
                return
            # Open a batch, paced and bounded by the connects in flight.
            room = max_pending - len(pending)
            batch = pacer.allow(time.monotonic(), min(room, 64)) if not exhausted and room > 0 else 0
            for _ in range(batch):
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                bind_to, dest, family = item
                snap.attempted += 1
                t0 = perf_ns()
                try:
                    s = new_socket(family, kind)
                except OSError as exc:
                    self.fail(cause_for(exc.errno or 0, "socket"))
                    continue
                try:
                    if family == AF_INET:
                        if _HAS_NO_PORT:
                            s.setsockopt(ip_proto, _NO_PORT, 1)
                        s.bind(bind_to)
                except OSError as exc:
                    s.close()
                    self.fail(cause_for(exc.errno or 0, "bind"), (bind_to[0], 0, *dest))
                    continue
                err = s.connect_ex(dest)
                if err == EINPROGRESS:
                    # Usually already established: the SYN-ACK waited in the socket's backlog and
                    # was processed as connect() released the socket. One getpeername() tells, and
                    # saves an epoll round trip per connection (and keeps connect latency exact).
                    try:
                        s.getpeername()
                        err = 0
                    except OSError:
                        pass
                fd = s.detach()
                try:
                    opened_as[fd] = item
                except IndexError:
                    self._remember(fd, item)
                if err == 0:
                    us = (perf_ns() - t0) // 1000
                    lat[us] = lat.get(us, 0) + 1
                    ep.register(fd, _HOLD_EVENTS)
                    fds_add(fd)
                    # Counted inline (the hot path); peak and times are settled once per batch.
                    snap.established += 1
                    snap.open += 1
                elif err == EINPROGRESS:
                    ep.register(fd, _PENDING_EVENTS)
                    pending[fd] = (t0, dest)
                else:
                    self.fail(cause_for(err, "connect"), (*_local(fd, bind_to[0]), *dest))
                    os.close(fd)
            self.settle()
            if exhausted and not pending:
                break
            # Poll without waiting while there is work to start; otherwise wait for events.
            wait = 0.0 if (batch and not exhausted) else min(0.05, pacer.wait_s() or 0.05)
            self.poll(wait)
            if pending:
                self._expire(perf_ns(), timeout_ns)
            self.maybe_report()
        snap.connected_s = time.time()
        self.send(P.CONNECTED, snap.as_dict())
        # Hold until the parent says close (or goes away).
        while not self.closing:
            self.poll(0.2)
            self.maybe_report()

    def _expire(self, now_ns: int, timeout_ns: int) -> None:
        expired = [fd for fd, (t0, _) in self.pending.items() if now_ns - t0 > timeout_ns]
        for fd in expired:
            _, dest = self.pending.pop(fd)
            self.epoll.unregister(fd)
            self.fail("ETIMEDOUT", self.four_tuple(fd, dest))
            os.close(fd)

    def on_event(self, fd: int, events: int) -> None:
        waiting = self.pending.pop(fd, None)
        if waiting is not None:
            t0, dest = waiting
            if events & (_EPOLLERR | _EPOLLHUP):
                err = so_error(fd)
                self.epoll.unregister(fd)
                self.fail(cause_for(err or errno.ECONNREFUSED, "connect"), self.four_tuple(fd, dest))
                os.close(fd)
                return
            us = (time.perf_counter_ns() - t0) // 1000
            self.latency[us] = self.latency.get(us, 0) + 1
            self.fds.add(fd)
            self.established()
            # Stop asking for writability: a level-triggered poller (macOS) would report it forever.
            self.epoll.modify(fd, _HOLD_EVENTS)
            if not events & (_EPOLLRDHUP | _EPOLLIN):
                return
        # A held connection the peer closed (or reset).
        if events & (_EPOLLRDHUP | _EPOLLHUP | _EPOLLERR):
            err = so_error(fd) if events & _EPOLLERR else 0
            self.epoll.unregister(fd)
            self.lost(fd, "ECONNRESET" if err == errno.ECONNRESET else "closed-by-peer")

    def lost(self, fd: int, cause: str) -> None:
        self.fail(cause, self.four_tuple(fd))
        os.close(fd)
        self.fds.discard(fd)
        self.snap.open -= 1

    def on_control(self, message: str) -> None:
        if message == P.GO:
            self.go = True
        elif message in (P.CLOSE, P.STOP):
            self.closing = True

    def _remember(self, fd: int, item: tuple[tuple[str, int], tuple[str, int], int]) -> None:
        self.opened_as.extend([None] * (fd + 1 - len(self.opened_as)))
        self.opened_as[fd] = item

    def four_tuple(self, fd: int, dest: tuple[str, int] | None = None) -> tuple[str, int, str, int]:
        """(source, sport, destination, dport) of a connection that failed (not on the hot path).
        The local end from getsockname() (it survives a reset); the remote end from the kernel
        while it still knows it, else the destination this fd was opened to."""
        item = self.opened_as[fd] if fd < len(self.opened_as) else None
        source, sport = _local(fd, item[0][0] if item else "")
        if dest is None:
            dest = _peer(fd)
        if dest is None and item is not None and item[0][0] == source:  # (not an fd reused since)
            dest = item[1]
        return (source, sport, *(dest or ("", 0)))

    def close_all(self) -> None:
        for fd in self.pending:
            os.close(fd)
        self.pending.clear()
        for fd in self.fds:
            os.close(fd)
        self.snap.closed += len(self.fds)
        self.snap.open -= len(self.fds)
        self.fds = set()


def _local(fd: int, fallback: str) -> tuple[str, int]:
    """(source address, source port) of a socket fd, for a failure's 4-tuple (not on the hot path)."""
    s = socket.socket(fileno=fd)
    try:
        addr = s.getsockname()
        return str(addr[0]), int(addr[1])
    except OSError:
        return fallback, 0
    finally:
        s.detach()


def _peer(fd: int) -> tuple[str, int] | None:
    """(address, port) of the peer while the kernel still has it (not after a reset: ENOTCONN)."""
    s = socket.socket(fileno=fd)
    try:
        addr = s.getpeername()
        return str(addr[0]), int(addr[1])
    except OSError:
        return None
    finally:
        s.detach()


def so_error(fd: int) -> int:
    s = socket.socket(fileno=fd)
    try:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    finally:
        s.detach()


def client_main(shard: ClientShard, config: P.ClientConfig, pipe: Connection) -> None:
    ClientWorker(shard, config, pipe).main()
