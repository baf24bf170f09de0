"""The traffic client worker: a ClientWorker that, once its connections are open, talks over them.

Rules of this file: the connect loop is ClientWorker's (inherited untouched); when it announces
CONNECTED this worker runs the traffic phase with its own event loop, then hands the survivors back
to the hold loop. Per connection: one small slots object and the protocol state from
loopfan.traffic. Latency is taken with perf_counter at the read that completes the reply, from the
send time (closed loop) or from the *scheduled* time (open model: a stalled server cannot hide its
stall). Samples are kept as cumulative {microseconds: count} dicts, rounded to the HDR histogram's
own precision (3 significant digits) so the dict stays small; the parent merges them.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.engine.causes import cause_for
from loopfan.engine.client import ClientWorker, bind_socket, so_error
from loopfan.planner import ClientShard
from loopfan.traffic.config import TrafficConfig
from loopfan.traffic.http import HttpClient, KnownHeads, request_template
from loopfan.traffic.raw import RawReplies
from loopfan.traffic.results import Interval, subtract
from loopfan.traffic.schedule import OpenSchedule, unsent_ages
from loopfan.traffic.tally import Tally
from loopfan.traffic.tls import TlsClient, TlsFacts, client_context
from loopfan.traffic.ws import WsClient, opening_request

try:  # the quick path in C (setup.py builds it when a compiler is present); else the same in Python
    from loopfan.engine._quick import quick_replies as _c_quick_replies
except ImportError:  # pragma: no cover - a machine without a compiler; the tests force it by patching
    _c_quick_replies = None  # type: ignore[assignment]
# LOOPFAN_NO_C=1 (any value but 0): the Python loop alone (to compare, or to rule the C module out).
quick_replies = None if os.environ.get("LOOPFAN_NO_C", "0") not in ("", "0") else _c_quick_replies

TRAFFIC = "traffic"  # parent -> worker: start the traffic phase now
# Edge-triggered while talking: level-triggered epoll polls every socket it returned once more on
# the next wait, only to find most of them drained - 4 % of all CPU at 10,000 echo connections, and
# ET echo ran 5 % faster (docs/benchmarks.md). The one rule it brings: a read that fills the buffer
# may have left bytes behind, and so may one that came with the peer's close or an error queued behind
# the data: no new edge comes for them, so _rearm asks epoll to look again.
_TALK = poller.IN | poller.RDHUP | poller.ET
_TALK_OUT = _TALK | poller.OUT
_ENDING = poller.RDHUP | poller.HUP | poller.ERR  # the end is queued behind the data: read again for it
_HOLD = poller.RDHUP | poller.ET
_EPOLLOUT = poller.OUT
_READ = 65536
_SCAN_S = 0.5  # how often in-flight messages are checked against the reply timeout


class Conn:
    __slots__ = ("closed", "codec", "fails", "fd", "first", "got_reply", "idx", "mute", "next_due", "opened", "out",
                 "peer", "served", "src", "started", "starts")

    def __init__(self, fd: int, idx: int, codec: Any, src: str, peer: tuple[str, int]) -> None:
        self.fd = fd
        self.idx = idx  # the connection's slot: its place in the open schedule, kept across reopens
        self.codec = codec
        self.src = src
        self.peer = peer
        self.opened = 0.0  # a reopened WebSocket: when its handshake began (0: the phase's handshakes)
        self.closed = False  # dropped: nothing more is written on its (maybe reused) fd number
        self.mute = False  # the peer closed (EPIPE): nothing more is written, what it sent is still read
        self.started = False  # WebSocket: its messages have started (the handshake is done)
        self.served = False  # the slot has had a reply, on this connection or an earlier one
        self.fails = 0  # connections of this slot in a row that ended without a reply
        self.starts: list[float] = []  # start time of each message in flight (sent or scheduled)
        # Open model, parked (busy when its time came): the scheduled time of its oldest message
        # not yet sent; the later ones follow every interval (OpenSchedule). 0.0: not parked.
        self.next_due = 0.0
        self.first = 0.0  # when the first byte of the oldest reply in flight arrived (0: not yet)
        self.got_reply = False
        self.out = b""  # bytes the socket did not take yet


class TrafficSnapshot(P.Snapshot):
    """The worker's Snapshot plus a "traffic" key (extra keys keep the STATS message compatible)."""

    __slots__ = ("intervals", "traffic")

    def __init__(self) -> None:
        super().__init__()
        self.traffic: dict[str, Any] = {}
        self.intervals: list[Interval] = []

    def as_dict(self) -> dict[str, Any]:
        d = P.Snapshot.as_dict(self)
        d["traffic"] = dict(self.traffic)
        if self.intervals:  # sent once: the parent's Fleet collects them (Worker.intervals)
            d["intervals"], self.intervals = self.intervals, []
        return d


def hdr_round(us: int) -> int:
    """The lowest value of `us`'s bucket in a 3-significant-digit HDR histogram (2048 sub-buckets)."""
    if us < 2048:
        return us if us > 0 else 1
    s = us.bit_length() - 11
    return us >> s << s


class Reopen:
    """A slot whose connection the server closed, until its new connection is up."""

    __slots__ = ("conn", "down", "retry_at", "tries")

    def __init__(self, conn: Conn, retry_at: float) -> None:
        self.conn = conn  # the closed one: its slot, source, endpoint and (open model) next send
        self.retry_at = retry_at
        self.tries = 0  # failed connects in a row
        self.down = False  # the last one was refused (or unreachable): the server is not there


# The server ended the connection (not a timeout: reconnecting to a stuck server makes it worse).
_REOPEN_CAUSES = frozenset({"closed-by-peer", "closed-awaiting-reply", "closed-mid-reply", "ECONNRESET", "EPIPE",
                            "http-connection-close"})
_CONNECTING = poller.OUT | poller.RDHUP
_REOPEN_BACKOFF_S = 0.025  # a failed connect is retried after 50 ms, 100 ms, ... at most:
_REOPEN_BACKOFF_MAX_S = 1.0
# A connect that fails with these means the server is not there (stopped, restarting).
_DOWN_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH})


def _backoff(tries: int, now: float) -> float:
    """When to try again after `tries` failures in a row: 50 ms, 100 ms, ... at most 1 s later."""
    return now + min(_REOPEN_BACKOFF_MAX_S, _REOPEN_BACKOFF_S * (1 << min(tries, 10)))


class TrafficClientWorker(ClientWorker):
    def __init__(self, shard: ClientShard, config: P.ClientConfig, traffic: TrafficConfig,
                 pipe: Connection) -> None:
        super().__init__(shard, config, pipe)
        self.traffic = traffic
        self.tsnap = TrafficSnapshot()
        self.snap = self.tsnap
        self.tally = Tally()
        self.hist_latency: dict[int, int] = {}
        self.hist_ttfb: dict[int, int] = {}
        # Replies whose first and last byte came in one read (the quick path's): both latency and
        # time to first byte, kept once and merged into both when published.
        self.hist_whole: dict[int, int] = {}
        # Opening handshakes (TLS, then WebSocket), each from its first flight to ready, in us: the
        # phase's (all at once, before the clock: their queueing is the point) and reopens' alike.
        self.hist_handshake: dict[int, int] = {}
        self.by_source: dict[str, int] = {}
        self.conns: dict[int, Conn] = {}
        self.sent = 0
        self.sent_in_window = 0
        self.replies = 0
        self.window_replies = 0
        self.window_bytes_in = 0
        self.window_bytes_out = 0
        self.unanswered = 0
        self.unsent = 0
        self.unsent_sampled = 0  # of those, due inside the window: in the latency at their age at the end
        # What the warm-up counted (errors, statuses, errors by source): the report's figures are the
        # window's, so these are taken off when published (the time series adds them back).
        self.warmup_errors: dict[str, int] = {}
        self.warmup_statuses: dict[str, int] = {}
        self.warmup_by_source: dict[str, int] = {}
        # Latency interval histograms closed on the one-second grid of the shared monotonic clock
        # (start, end, latency {us: count}, time to first byte {us: count}), waiting for the next
        # report: the parent writes the HdrHistogram log from these, so each interval holds what
        # completed in it, not what reached the parent.
        self.intervals: list[Interval] = []
        self._interval_start = 0.0
        self._interval_base: dict[int, int] = {}
        self._interval_base_ttfb: dict[int, int] = {}
        self.phase = "connecting"
        self.window_s = 0.0
        self._ran = False
        self.go_traffic = False
        self._schedule: OpenSchedule | None = None
        self._templates: dict[str, Any] = {}  # Host -> the HTTP request for it (one per endpoint)
        self._ws_requests: dict[str, Any] = {}  # Host -> the WebSocket opening request, likewise
        self._known = KnownHeads()  # response heads h11 accepted, shared by this worker's connections
        self._phase_start = 0.0
        self.talking_at_start = 0
        self.talking_at_end = 0
        # Connections the server closed during the traffic are opened again (as wrk does), from
        # the same source to the same endpoint, in the same slot: fd -> the slot being reopened.
        self.reopening: dict[int, Reopen] = {}
        self.to_reopen: list[Reopen] = []  # waiting for their (next) connect attempt
        # Reopened slots that never had a reply, connected again and waiting for their first one:
        # not talking until it comes (_talking). Pruned there, so it holds only those on trial.
        self._untried: set[Conn] = set()
        self._abandoned_due: list[float] = []  # open model: oldest unsent times of slots given up at the end
        self.lost_in_flight = 0  # messages in flight on connections that ended: never answered
        self.reopen_failures: dict[str, int] = {}  # connect attempts that failed, by cause (retried)
        self.reopened = 0
        self.reopening_at_end = 0  # still connecting when the traffic ended (closed then)
        self._by_idx: list[Conn | None] = []
        # TLS: one context for the worker's connections (loading the CAs costs milliseconds), made at
        # the first connection; what the first handshake agreed goes in the report.
        self._tls_context: Any = None
        self.tls_facts = TlsFacts()
        # Connections set up by an opening handshake (TLS, WebSocket, or both) before they talk.
        self.handshaking = traffic.kind == "ws" or traffic.tls
        self.handshakes_waiting = 0  # opening handshakes under way (before the traffic starts)
        self.handshakes_unfinished = 0  # ... and still under way at an interrupt: those connections never talked
        self.interrupted = False  # the run was stopped during the traffic phase: no drain
        self.warmup_replies = 0

    # The connect loop announces CONNECTED through send(); from there this worker waits for the
    # parent's TRAFFIC (sent once every worker has connected, so all talk at the same time), then
    # runs the traffic phase, and returns to the connect loop's hold.
    def send(self, kind: str, payload: object) -> None:
        super().send(kind, payload)
        if kind == P.CONNECTED and not self._ran:
            self._ran = True
            while not self.go_traffic and not self.closing:
                self.poll(0.2)
                self.maybe_report()
            if not self.closing:
                self.traffic_phase()

    def on_control(self, message: str) -> None:
        if message == TRAFFIC:
            self.go_traffic = True
        else:
            super().on_control(message)

    def _publish(self, done: bool = False) -> None:
        self.tsnap.traffic = {
            "phase": self.phase,
            "done": done or self.phase == "closed",
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "replies": self.replies,
            "window_replies": self.window_replies,
            "window_bytes_in": self.window_bytes_in,
            "window_bytes_out": self.window_bytes_out,
            "window_s": self.window_s,
            "unanswered_at_end": self.unanswered,
            "unsent_at_end": self.unsent,
            "unsent_sampled": self.unsent_sampled,
            "reopened": self.reopened,
            "reopening_at_end": self.reopening_at_end,
            "reopen_failures": dict(self.reopen_failures),
            "lost_in_flight": self.lost_in_flight,
            "talking": self._talking() if self.phase == "traffic" else self.talking_at_end,
            "talking_at_start": self.talking_at_start,
            "handshakes_waiting": self.handshakes_waiting,
            "handshakes_unfinished": self.handshakes_unfinished,
            "tls": self.tls_facts.as_dict(),
            "first_error_response": self.tally.sample(),
            "interrupted": self.interrupted,
            "warmup_replies": self.warmup_replies,
            "errors": _minus(self.tally.errors, self.warmup_errors),
            "statuses": _minus(self.tally.statuses, self.warmup_statuses),
            "errors_by_source": _minus(self.by_source, self.warmup_by_source),
            "warmup_errors": dict(self.warmup_errors),
            "warmup_statuses": dict(self.warmup_statuses),
            "awaits": self.traffic.awaits_reply,
            "latency_us": _merged(self.hist_latency, self.hist_whole),
            "ttfb_us": _merged(self.hist_ttfb, self.hist_whole),
            "handshake_us": dict(self.hist_handshake),
        }

    def report(self) -> None:
        self._publish(done=self.phase == "done")
        self.tsnap.intervals, self.intervals = self.intervals, []
        super().report()

    def _end_warmup(self, before: tuple[dict[str, int], dict[str, int], dict[str, int]]) -> None:
        """The warm-up is over: what it counted (the counts now less `before`, taken when it began,
        after any WebSocket handshakes - those belong to the report) is kept apart from the window's."""
        errors, statuses, by_source = before
        self.warmup_errors = _minus(self.tally.errors, errors)
        self.warmup_statuses = _minus(self.tally.statuses, statuses)
        self.warmup_by_source = _minus(self.by_source, by_source)

    def _warmup_over(self, before: tuple[dict[str, int], dict[str, int], dict[str, int]], quick_n: int,
                     quick_win: int, quick_out: int, quick_out_win: int, learned: bytes | None,
                     status: str | None) -> tuple[int, int]:
        """End the warm-up exactly: the quick path's replies read before warm_end (quick_n less the
        quick_win read after it) are settled into the warm-up first, the rest stay for the window.
        Returns the quick path's new (quick_n, quick_out)."""
        if learned is not None:
            self._settle_quick(quick_n - quick_win, 0, quick_out - quick_out_win, 0, learned, status)
        self._end_warmup(before)
        return quick_win, quick_out_win

    def _close_interval(self, now: float) -> None:
        """End the latency interval that began at _interval_start (a grid second, or the start)."""
        cumulative = _merged(self.hist_latency, self.hist_whole)
        cumulative_ttfb = _merged(self.hist_ttfb, self.hist_whole)
        self.intervals.append((self._interval_start, now, subtract(cumulative, self._interval_base),
                               subtract(cumulative_ttfb, self._interval_base_ttfb)))
        self._interval_base = cumulative
        self._interval_base_ttfb = cumulative_ttfb
        self._interval_start = now

    def _codec(self, peer: tuple[str, int]) -> Any:
        """The protocol state of a new connection to `peer`, in TLS for https:// and wss://."""
        inner = self._plain_codec(peer)
        tc = self.traffic
        if not tc.tls:
            return inner
        if self._tls_context is None:
            self._tls_context = client_context(tc.tls_cafile, tc.tls_verify, tc.tls_certfile, tc.tls_keyfile)
        return TlsClient(inner, self._tls_context, tc.tls_server_name or peer[0], self.tally, self.tls_facts)

    def _plain_codec(self, peer: tuple[str, int]) -> Any:
        """The protocol state of a new connection to `peer`: the Host header and the WebSocket
        handshake name the endpoint each connection actually reached (a TARGET may be several)."""
        tc = self.traffic
        if tc.kind == "raw":
            return RawReplies(tc.message, tc.expect, tc.expect_length, tc.expect_marker)
        host = tc.host or (f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}")
        if tc.kind == "http":
            template = self._templates.get(host)
            if template is None:
                template = self._templates[host] = request_template(tc.method, tc.path, host, tc.headers, tc.body)
            return HttpClient(template, self.tally, self._known)
        request = self._ws_requests.get(host)
        if request is None:
            request = self._ws_requests[host] = opening_request(host, tc.path, tc.headers, tc.subprotocols)
        return WsClient(host, tc.path, tc.message, tc.ws_opcode, self.tally, request)

    def _drop(self, conn: Conn, cause: str) -> None:
        fd = conn.fd
        if self.conns.pop(fd, None) is None:
            return
        conn.closed = True
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        os.close(fd)
        self.fds.discard(fd)
        self.snap.open -= 1
        if self._by_idx:
            self._by_idx[conn.idx] = None
        self.lost_in_flight += len(conn.starts)
        if cause == "" or (cause == "closed-by-peer" and self.phase == "draining"):
            pass  # after the window, an idle connection the server closes is no failure of anything
        elif cause == "http-connection-close" and not conn.starts:
            # The server ended keep-alive after a complete response (e.g. nginx keepalive_requests):
            # nothing failed; a status, and a new connection takes this one's place.
            self.tally.status(cause)
        else:
            if cause == "http-connection-close":  # ... with pipelined requests still unanswered
                self.tally.status(cause)
                cause = "closed-awaiting-reply"
            self.tally.error(cause)
            self.by_source[conn.src] = self.by_source.get(conn.src, 0) + 1
        if self._should_reopen(conn, cause):
            # Not here: the caller may still hold `conn` and the fd number, which a new socket
            # would reuse at once. The connect starts at the loop's next turn - or, after
            # connections that ended without a reply, after a backoff (50 ms doubling to 1 s), so a
            # server that takes connections only to end them is not hammered.
            self.to_reopen.append(Reopen(conn, _backoff(conn.fails, time.perf_counter()) if conn.fails else 0.0))
        elif self._schedule is not None:
            self._schedule.remove(conn.idx)

    def _should_reopen(self, conn: Conn, cause: str) -> bool:
        """Open a new connection in the place of one the server closed during the traffic, so a
        keep-alive limit or a server restart does not silently end the load. Not after the window
        (the drain); not after a timeout (more connects make a stuck server worse). A slot that
        never had a reply is reopened only after a reset: a server that closes with requests
        unread resets the connection, and its kernel drops what it had not sent yet, so the reply
        may have been on its way (nginx keepalive_requests 1 with pipelining: one more connection
        each still lost up to 7 of 50 slots, when resets came in a row). It goes on with the
        backoff and is not counted as talking until it has a reply (_talking), so a server that
        resets everything is neither hammered nor hidden. A close (FIN) without a reply delivered
        all the server sent: the server refuses the slot. A WebSocket slot makes its opening
        handshake again (counted in its statuses). (Giving a slot that had replies up after three
        reply-less connections in a row lost 1-3 of 50 slots in that same case: a backoff instead.)"""
        conn.fails = 0 if conn.got_reply else conn.fails + 1
        worth_another = conn.got_reply or conn.served or cause == "ECONNRESET"
        return (self.phase == "traffic" and worth_another
                and (cause in _REOPEN_CAUSES or cause.startswith("ws-close-")))

    def _start_reopens(self, now: float) -> None:
        """Start the connects that are due: from the slot's source to its endpoint. A refused or
        failed one is counted and retried with backoff (a server restarting comes back)."""
        later: list[Reopen] = []
        for r in self.to_reopen:
            if r.retry_at > now:
                later.append(r)
                continue
            old = r.conn
            try:
                s = bind_socket(old.src, family=socket.AF_INET6 if ":" in old.src else socket.AF_INET)
            except OSError as exc:
                self._reopen_failed(r, exc.errno or 0, now, later)
                continue
            err = s.connect_ex(old.peer)
            fd = s.detach()
            if err not in (0, errno.EINPROGRESS):
                os.close(fd)
                self._reopen_failed(r, err, now, later)
                continue
            self.epoll.register(fd, _CONNECTING)
            self.fds.add(fd)  # closed with the rest, whatever happens
            self.reopening[fd] = r
        self.to_reopen = later

    def _reopen_failed(self, r: Reopen, err: int, now: float, later: list[Reopen]) -> None:
        """Count a failed connect and retry it with backoff; the slot is not talking meanwhile."""
        cause = cause_for(err, "reconnect")
        self.reopen_failures[cause] = self.reopen_failures.get(cause, 0) + 1
        r.tries += 1
        r.down = err in _DOWN_ERRNOS
        r.retry_at = _backoff(r.tries, now)
        later.append(r)

    def _reopened(self, fd: int, now: float) -> Conn | None:
        """The connect of a reopened slot finished: its new Conn, or None if it failed (retried)."""
        r = self.reopening.pop(fd)
        err = so_error(fd)
        if err:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
            os.close(fd)
            self.fds.discard(fd)
            later: list[Reopen] = []
            self._reopen_failed(r, err, now, later)
            self.to_reopen += later
            return None
        old = r.conn
        c = Conn(fd, old.idx, self._codec(old.peer), old.src, old.peer)
        c.next_due = old.next_due  # read now: whatever the loop did with the old one is done
        c.served = old.served or old.got_reply
        c.fails = old.fails
        if not c.served:
            self._untried.add(c)
        self.conns[fd] = c
        self._by_idx[old.idx] = c
        self.snap.open += 1
        self.reopened += 1
        self.epoll.modify(fd, _TALK)
        return c

    def _talking(self) -> int:
        """Slots with a connection, or on their way to one: a slot whose last connect was refused (a
        server gone) is not talking - counted so, a dead server fails the run - nor one reopened
        that never had a reply (see _should_reopen), whether its new connect is still under way or
        done and its first reply not in yet. (Counting the connected ones made the figure depend on
        the server's speed: a server that resets everything showed 4-16 of 20 slots talking at the
        end when a busy machine delayed its resets past the window, 0 otherwise.)"""
        down = sum(1 for r in (*self.reopening.values(), *self.to_reopen)
                   if r.down or not (r.conn.served or r.conn.got_reply))
        self._untried = {c for c in self._untried if not (c.closed or c.got_reply)}
        return (len(self.conns) + len(self.reopening) + len(self.to_reopen) - down - len(self._untried)
                - self.handshakes_unfinished)

    def _abandon_reopening(self) -> None:
        """The traffic is over: connects still under way or waiting are given up, not handed to the hold."""
        self.reopening_at_end = len(self.reopening) + len(self.to_reopen)
        # Open model: what these slots owed since their oldest unsent message goes in as unsent.
        self._abandoned_due = [r.conn.next_due for r in (*self.reopening.values(), *self.to_reopen)
                               if r.conn.next_due]
        for fd in self.reopening:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
            os.close(fd)
            self.fds.discard(fd)
        self.reopening.clear()
        self.to_reopen.clear()

    def _send_failed(self, conn: Conn, err: int) -> None:
        """A write failed. EPIPE: the peer has closed, but replies it sent before may still wait to be
        read - stop writing and let the reads take them, then the end (counted there, with its
        cause). Dropping at once turned answered requests into lost ones (pipelining against
        keepalive_requests 1 gave up slots). Anything else ends the connection now."""
        if err == errno.EPIPE:
            conn.mute = True
            conn.out = b""
        else:
            self._drop(conn, cause_for(err, "send"))

    def _write(self, conn: Conn, data: bytes) -> None:
        if conn.closed or conn.mute:
            return
        if conn.out:
            conn.out += data
            return
        try:
            n = os.write(conn.fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._send_failed(conn, exc.errno or 0)
            return
        self.snap.bytes_out += n
        if n < len(data):
            conn.out = data[n:]
            self.epoll.modify(conn.fd, _TALK_OUT)

    def _flush(self, conn: Conn) -> None:
        try:
            n = os.write(conn.fd, conn.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._send_failed(conn, exc.errno or 0)
            return
        self.snap.bytes_out += n
        conn.out = conn.out[n:]
        if not conn.out:
            self.epoll.modify(conn.fd, _TALK)

    # -- the traffic phase --------------------------------------------------------------------------
    def traffic_phase(self) -> None:
        tc = self.traffic
        ep = self.epoll
        perf = time.perf_counter
        self.phase = "traffic"
        if self.handshaking:
            # Said at once, before the connections are set up and the requests go out: at 120,000
            # connections that took a worker of 17,000 8 s, and until its first report the live view
            # had the connect loop's (no handshake waiting): "0 messages/s", then "done" counts that fell.
            self.handshakes_waiting = len(self.fds)
            self.report()
        # Every connection of this worker goes to the same target group order; the Host header and
        # handshake name the endpoint each connection actually reached.
        conns = self.conns
        for idx, fd in enumerate(sorted(self.fds)):
            s = socket.socket(fileno=fd)
            try:
                src = s.getsockname()[0]
                peer = s.getpeername()
            except OSError:
                src, peer = "?", ("127.0.0.1", 0)
            finally:
                s.detach()
            conns[fd] = Conn(fd, idx, self._codec(peer), src, (peer[0], peer[1]))
            ep.modify(fd, _TALK)
        by_idx: list[Conn | None] = [None] * len(conns)
        self._by_idx = by_idx
        for c in conns.values():
            by_idx[c.idx] = c

        self.talking_at_start = len(conns)
        if self.handshaking:
            self._handshakes(tc.reply_timeout_s)
            self.handshakes_waiting = 0
            # Interrupted in the handshakes: only the connections whose handshake was done talked.
            self.talking_at_start -= self.handshakes_unfinished
        for c in conns.values():
            c.started = True  # their messages start below (a reopened WebSocket's when its handshake is done)
        awaits = tc.awaits_reply
        pipeline = max(1, tc.pipeline)
        message = tc.message
        raw = tc.kind == "raw"
        start = self._phase_start = perf()
        warm_end = start + tc.warmup_s
        end = warm_end + tc.duration_s
        if tc.open_model:
            self._schedule = OpenSchedule(len(by_idx), tc.rate_per_conn_s, start)
        schedule = self._schedule
        hl = self.hist_latency
        tally = self.tally
        snap = self.snap

        def send_one(c: Conn, t_start: float) -> None:
            """Send one message that started (closed loop) or was due (open model) at t_start."""
            if c.closed:  # dropped earlier in the same turn (e.g. a failed write in a burst)
                return
            data = message if raw else c.codec.message()
            if awaits:
                c.starts.append(t_start)
            self.sent += 1
            # In the window by when it goes out (open model: a message due in the warm-up may go
            # out in the window; its latency still counts from when it was due, and only if due in it).
            if (t_start if schedule is None else perf()) >= warm_end:
                self.window_bytes_out += len(data)
                self.sent_in_window += 1
            self._write(c, data)

        def send_due(c: Conn, due: float, now: float) -> None:
            """Open model: send c's messages due by `now` from `due` on, as many as it has room for;
            park it if some are left (busy), else hand it back to the schedule for its next one."""
            assert schedule is not None
            following = due + schedule.interval_s
            if following > now and (not awaits or (len(c.starts) < pipeline and c.codec.ready)):
                send_one(c, due)  # the usual case, kept short: one message due, and room for it
                c.next_due = 0.0
                schedule.wait(c.idx, following)
                return
            room = (pipeline - len(c.starts) if c.codec.ready else 0) if awaits else 1 << 30
            times, following = schedule.send_times(due, now, room)
            for t_start in times:
                send_one(c, t_start)
            if following <= now:
                c.next_due = following
            else:
                c.next_due = 0.0
                schedule.wait(c.idx, following)

        # The first messages of a closed loop (WebSocket handshakes are done by now) - none if the
        # run was interrupted before the traffic began.
        began = not self.closing
        for c in list(conns.values()):
            if schedule is None and c.fd in conns and began:
                for _ in range(pipeline if awaits else 1):
                    send_one(c, perf())
        next_scan = start + _SCAN_S
        # The loop's clock work, each when due: settle the quick counters and report (every
        # report_interval_s), end the warm-up, close a latency interval (grid seconds), expire.
        self._interval_start = start
        next_grid = math.floor(start) + 1.0
        next_report = start
        warm_over = False
        ended_early = False
        before_warmup = (dict(tally.errors), dict(tally.statuses), dict(self.by_source))
        next_tick = start
        timeout_s = tc.reply_timeout_s
        pipe_fd = self.pipe_fd
        # Steady state, the hot path: a closed loop with one message in flight, and a read that
        # brings a whole reply byte-for-byte equal to `learned` - a read the codec already took as
        # exactly one whole reply, from a message boundary back to one, adding no error (echo: the
        # message; HTTP: nginx's response until its Date changes; WebSocket: the echoed frame). The
        # codecs are deterministic and hold no state at a boundary but their buffers, so the same
        # bytes in the same state mean the same reply: it is counted inline, with no codec call,
        # and the next message goes out. Counts gather in locals and are settled into the worker
        # (settle_quick) before any report and whenever `learned` changes. Anything else - a new
        # reply, a partial or merged read, an error status - takes the general path below.
        quick = schedule is None and pipeline == 1 and awaits
        learned: bytes | None = None
        learned_status: str | None = None
        quick_n = quick_win = quick_out = quick_out_win = 0  # replies (in the window), bytes sent (in it)
        hw = self.hist_whole
        write = os.write
        read = os.read
        quick_c = quick_replies if quick else None
        pushed: dict[int, tuple[bytes | OSError, float]] = {}  # the C quick path's reads for the loop below
        trouble: list[tuple[int, bytes, int]] = []  # its next messages the socket did not take whole
        polled = perf()  # when the last poll returned: the loop lag is the time from there to the next
        while not self.closing:
            now = perf()
            if now >= end:
                break
            if self.to_reopen:
                self._start_reopens(now)
            if not conns and not self.reopening and not self.to_reopen:
                ended_early = True
                break  # nothing left to talk over (e.g. every WebSocket handshake refused): no use waiting
            if now >= next_tick:
                if not warm_over and now >= warm_end:  # (before the quick counts are settled: they straddle it)
                    warm_over = True
                    quick_n, quick_out = self._warmup_over(before_warmup, quick_n, quick_win, quick_out,
                                                           quick_out_win, learned, learned_status)
                if learned is not None:
                    self._settle_quick(quick_n, quick_win, quick_out, quick_out_win, learned, learned_status)
                    quick_n = quick_win = quick_out = quick_out_win = 0
                if now >= next_grid:
                    self._close_interval(now)
                    next_grid = math.floor(now) + 1.0
                if now >= next_scan:
                    next_scan = now + _SCAN_S
                    self._expire_replies(now, timeout_s)
                if now >= next_report:
                    next_report = now + self.report_interval_s
                    self.report()
                next_tick = min(next_grid, next_scan, next_report, end if warm_over else warm_end)
            wait = max(0.0, min(end - now, 0.05, next_tick - now))
            if schedule is not None:
                for due, i in schedule.take_due(now):
                    slot = by_idx[i]
                    if slot is not None and slot.fd in conns:
                        send_due(slot, due, now)
                    else:  # being reopened: parked until its new connection is up
                        for r in (*self.reopening.values(), *self.to_reopen):
                            if r.conn.idx == i and not r.conn.next_due:
                                r.conn.next_due = due
                nd = schedule.next_due_s()
                if nd is not None:
                    wait = max(0.0, min(wait, nd - now))
            # Loop lag (Worker.wait's figure, kept inline: a call per turn costs more than these
            # two clock reads): how long the last batch and the clock work kept the loop from polling.
            busy = perf() - polled
            if busy > self._max_lag_s:
                self._max_lag_s = busy
            ready = ep.poll(wait, 4096)
            polled = perf()
            if pushed:  # (a read left over from a batch whose connection went: nothing to hand it to)
                pushed.clear()
            if quick_c is not None and learned is not None and ready:
                ready, n, n_win, k, k_win = quick_c(ready, conns, learned, end, warm_end, hw, pushed, trouble)
                quick_n += n
                quick_win += n_win
                quick_out += k
                quick_out_win += k_win
                if trouble:
                    self._quick_trouble(trouble)
            for fd, ev in ready:
                found = conns.get(fd)
                if found is None:
                    if fd == pipe_fd:
                        self.read_control()
                    elif fd in self.reopening:
                        fresh = self._reopened(fd, now)
                        if fresh is not None and self.handshaking:
                            # Its messages start when the handshake completes (the branch below);
                            # a TLS connection makes its TLS handshake again, from the start.
                            fresh.opened = perf()
                            self._write(fresh, fresh.codec.opening())
                        elif fresh is not None and now < end:
                            if schedule is None:
                                for _ in range(pipeline if awaits else 1):
                                    send_one(fresh, perf())
                            elif fresh.next_due:  # (else its next send is still in the schedule's heap)
                                send_due(fresh, fresh.next_due, perf())
                    continue
                c = found
                if ev & _EPOLLOUT and c.out:
                    self._flush(c)
                    if fd not in conns:
                        continue
                if pushed and fd in pushed:  # read by the C quick path, not its reply
                    data, t = pushed.pop(fd)
                    if not isinstance(data, bytes):
                        self._drop(c, cause_for(data.errno or 0, "recv"))
                        continue
                else:
                    try:
                        data = read(fd, _READ)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self._drop(c, cause_for(exc.errno or 0, "recv"))
                        continue
                    t = perf()
                starts = c.starts
                codec = c.codec
                if (data == learned and len(starts) == 1 and not c.first and not c.out and not codec.buf
                        and codec.fast and t < end and not ev & _ENDING):  # (the end behind it: re-armed below)
                    t0 = starts[0]
                    starts[0] = t
                    c.got_reply = True
                    out = codec.repeat or codec.message()
                    try:
                        k = write(fd, out)
                        if k < len(out):
                            c.out = out[k:]
                            ep.modify(fd, _TALK_OUT)
                    except BlockingIOError:
                        k = 0
                        c.out = out
                        ep.modify(fd, _TALK_OUT)
                    except OSError as exc:
                        k = 0
                        self._send_failed(c, exc.errno or 0)
                    quick_n += 1
                    quick_out += k
                    if t0 >= warm_end:  # (then t is in the window too)
                        us = int((t - t0) * 1e6)
                        if us >= 2048:  # hdr_round, inline
                            shift = us.bit_length() - 11
                            us = us >> shift << shift
                        elif us < 1:
                            us = 1
                        hw[us] = hw.get(us, 0) + 1
                        quick_win += 1
                        quick_out_win += len(out)  # (the whole message, as send_one: _flush sends the rest)
                    elif t >= warm_end:
                        quick_win += 1
                        quick_out_win += len(out)
                    continue
                if t >= warm_end and not warm_over:
                    # The warm-up ends at the first read after it, not at the loop's next tick: the
                    # rest of a batch read after warm_end is the window's, statuses and errors too.
                    warm_over = True
                    quick_n, quick_out = self._warmup_over(before_warmup, quick_n, quick_win, quick_out,
                                                           quick_out_win, learned, learned_status)
                if not data:
                    self._drop(c, _eof_cause(c))
                    continue
                steady = quick and len(starts) == 1 and not c.first and not c.out and codec.fast and not codec.buf
                nbytes = len(data)
                if nbytes == _READ or ev & _ENDING:  # (never the quick path's: see _quick.c)
                    self._rearm(c)
                snap.bytes_in += nbytes
                if t >= warm_end and t < end:
                    self.window_bytes_in += nbytes
                if starts and not c.first:
                    c.first = t
                errors_before = tally.count
                if steady:
                    tally.last_status = None
                n = codec.feed(data)
                if n > len(starts) and awaits:
                    # More replies than messages in flight: not an answer to anything (raw: an
                    # --expect-* that splits one reply in two; ws: a server talking on its own).
                    # Counted, and not answered with more messages - that would snowball.
                    tally.error("unexpected-reply", n - len(starts))
                    n = len(starts)
                if tally.count != errors_before:  # e.g. an HTTP 4xx: counted against this source too
                    self.by_source[c.src] = self.by_source.get(c.src, 0) + tally.count - errors_before
                if not raw:
                    if codec.out:
                        out, codec.out = codec.out, b""
                        self._write(c, out)
                    if codec.dead is not None:
                        for _ in range(min(n, len(starts))):
                            self._complete(c, t, warm_end, end, hl)
                        self._drop(c, codec.dead)
                        continue
                elif codec.dead is not None:
                    self._drop(c, codec.dead)
                    continue
                if n:
                    if (steady and n == 1 and tally.count == errors_before and codec.fast and not codec.buf
                            and t < end and data != learned and nbytes < _READ):
                        # One whole reply, boundary to boundary, no error: from now on the same bytes
                        # take the quick path above.
                        if learned is not None:
                            self._settle_quick(quick_n, quick_win, quick_out, quick_out_win, learned,
                                               learned_status)
                            quick_n = quick_win = quick_out = quick_out_win = 0
                        learned = data
                        learned_status = tally.last_status
                    for _ in range(min(n, len(starts))):
                        self._complete(c, t, warm_end, end, hl)
                    c.first = t if codec.partial else 0.0
                    if t < end:
                        if schedule is None:
                            for _ in range(n):
                                send_one(c, t)
                        elif c.next_due:
                            send_due(c, c.next_due, t)
                elif not raw and codec.ready and not c.started and not starts:
                    # The opening handshake (WebSocket, TLS) just completed: start this connection's messages.
                    # (Not a reply: a slot is kept for replies to messages, not for handshakes.)
                    c.started = True
                    if c.opened:
                        self._handshake_took(t - c.opened)
                    if t >= end:
                        pass
                    elif schedule is None:
                        for _ in range(pipeline):
                            send_one(c, t)
                    elif c.next_due:
                        send_due(c, c.next_due, t)
        self._poll_end = time.monotonic()  # (Worker.wait's clock: the drain polls through it)
        if learned is not None:
            self._settle_quick(quick_n, quick_win, quick_out, quick_out_win, learned, learned_status)
        if not warm_over:  # ended during the warm-up: everything so far was the warm-up's
            self._end_warmup(before_warmup)
        # Interrupted: the window ends at the interrupt - messages due after it were never owed, and
        # those owed are aged at it, not at the planned end (a 7 s latency in a 4.8 s phase).
        if self.closing:
            end = min(perf(), end) if began else start  # (stopped in the WebSocket handshakes: no window)
        if schedule is not None:
            # Open model: sends that came due before the end but were not taken - the loop's last
            # turn came before it, and a busy machine can keep that turn away for tens of ms - are
            # parked like any the client did not get to send, and so counted as due but not sent
            # (they were left out: 31 of 4,000 due went missing from both counts).
            for due, i in schedule.take_due(math.nextafter(end, -math.inf)):
                slot = by_idx[i]
                if slot is not None and slot.fd in conns:
                    slot.next_due = due  # (a slot in the schedule's heap is not parked)
                else:
                    for r in (*self.reopening.values(), *self.to_reopen):
                        if r.conn.idx == i and not r.conn.next_due:
                            r.conn.next_due = due
        # The window is the one asked for even when every connection went before its end: a rate
        # over the part that had connections would read better than what happened. With none to
        # begin with nothing was measured: no window (the report says the traffic did not run).
        if not self.talking_at_start:
            self.window_s = 0.0
        else:
            self.window_s = tc.duration_s if ended_early else max(0.0, end - warm_end)
        # Talking when the window closed (a slot being reopened counts): the drain and the hold
        # after it may lose connections without the load having fallen.
        self.talking_at_end = self._talking()
        self._drain(end, warm_end, hl)

    def _rearm(self, c: Conn) -> None:
        """A read filled the buffer, or came with the peer's close or an error: more may be waiting
        (bytes, the EOF, the error), and edge-triggered epoll would not say so until something new
        arrives. Modifying the registration makes epoll check the socket again."""
        self.epoll.modify(c.fd, _TALK_OUT if c.out else _TALK)

    def _quick_trouble(self, trouble: list[tuple[int, bytes, int]]) -> None:
        """The C quick path's next messages that did not go out whole: as the Python quick path,
        keep the rest for EPOLLOUT, or count the failed send."""
        for fd, unsent, err in trouble:
            c = self.conns[fd]
            if err and err != errno.EAGAIN:
                self._send_failed(c, err)
            else:
                c.out = unsent
                self.epoll.modify(fd, _TALK_OUT)
        trouble.clear()

    def _settle_quick(self, n: int, n_window: int, sent_bytes: int, sent_bytes_window: int, reply: bytes,
                      status: str | None) -> None:
        """Add what the quick path counted in locals (n replies of `reply`, each followed by one
        message of the bytes given; n_window of each pair inside the window) to the worker's counts."""
        self.replies += n
        self.warmup_replies += n - n_window  # (the quick path's replies all come before the end)
        self.sent += n
        self.sent_in_window += n_window
        self.window_replies += n_window
        self.snap.bytes_in += n * len(reply)
        self.window_bytes_in += n_window * len(reply)
        self.snap.bytes_out += sent_bytes
        self.window_bytes_out += sent_bytes_window
        if status is not None and n:
            self.tally.status(status, n)

    def _handshakes(self, timeout_s: float) -> None:
        """Every opening handshake (TLS, then WebSocket), before the clock starts: they are
        connection set-up, not traffic. A connection whose handshake fails or times out is counted
        and closed."""
        perf = time.perf_counter
        conns = self.conns
        began: dict[int, float] = {}
        for c in list(conns.values()):
            began[c.fd] = perf()
            self._write(c, c.codec.opening())
            self.maybe_report()
        waiting = {fd for fd, c in conns.items() if not c.codec.ready}
        deadline = perf() + timeout_s
        while waiting and perf() < deadline and not self.closing:
            for fd, ev in self.wait(0.05):
                if fd == self.pipe_fd:
                    self.read_control()
                    continue
                found = conns.get(fd)
                if found is None:
                    continue
                c = found
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._drop(c, cause_for(exc.errno or 0, "recv"))
                    waiting.discard(fd)
                    continue
                if not data:
                    self._drop(c, c.codec.closed_in_handshake)
                    waiting.discard(fd)
                    continue
                if len(data) == _READ or ev & _ENDING:
                    self._rearm(c)
                self.snap.bytes_in += len(data)
                c.codec.feed(data)
                if c.codec.out:
                    out, c.codec.out = c.codec.out, b""
                    self._write(c, out)
                if c.codec.dead is not None:
                    self._drop(c, c.codec.dead)
                    waiting.discard(fd)
                elif c.codec.ready:
                    waiting.discard(fd)
                    self._handshake_took(perf() - began[fd])
            self.handshakes_waiting = len(waiting)
            self.maybe_report()
        if self.closing:
            # Interrupted: the handshakes still under way did not time out, the run was stopped;
            # they are left open and closed with the rest, not counted as errors - nor as talking.
            self.handshakes_unfinished = sum(1 for fd in waiting if fd in conns)
            return
        for fd in waiting:
            late = conns.get(fd)
            if late is not None:
                self._drop(late, late.codec.handshake_timeout)

    def _handshake_took(self, seconds: float) -> None:
        us = hdr_round(int(seconds * 1e6))
        self.hist_handshake[us] = self.hist_handshake.get(us, 0) + 1

    def close_all(self) -> None:
        # WebSocket: say goodbye (close code 1000) before the TCP close, so the server sees a normal
        # closing handshake rather than a dropped connection.
        # TLS: the close_notify alert follows (HTTP over TLS sends only that).
        if self.traffic.kind == "ws" or self.traffic.tls:
            for c in self.conns.values():
                if c.codec.ready and c.codec.dead is None:
                    with contextlib.suppress(OSError):
                        os.write(c.fd, c.codec.goodbye())
        self.phase = "closed"
        self.conns.clear()
        self._untried.clear()
        super().close_all()

    def _complete(self, c: Conn, t: float, warm_end: float, end: float, hl: dict[int, int]) -> None:
        """The oldest reply in flight completed at t: its latency and time to first byte. Both are
        taken here, for the same replies (a reply cut short has neither), so first byte can never
        read later than the whole reply; the next reply's first byte is at t or later."""
        t0 = c.starts.pop(0)
        first = c.first or t
        c.first = 0.0
        c.got_reply = True
        self.replies += 1
        if t < warm_end:
            self.warmup_replies += 1
        elif t < end:
            self.window_replies += 1
        if t0 >= warm_end:
            us = hdr_round(int((t - t0) * 1e6))
            hl[us] = hl.get(us, 0) + 1
            us = hdr_round(int((first - t0) * 1e6))
            self.hist_ttfb[us] = self.hist_ttfb.get(us, 0) + 1

    def _expire_replies(self, now: float, timeout_s: float) -> None:
        late = [c for c in self.conns.values() if (c.starts and now - c.starts[0] > timeout_s)
                or (not c.codec.ready and now - (c.opened or self._phase_start) > timeout_s)]
        for c in late:
            self._drop(c, c.codec.handshake_timeout if not c.codec.ready else _late_cause(c))

    def _count_unsent(self, parked: list[float], end: float, warm_end: float,
                      hl: dict[int, int]) -> None:
        """Open model: the parked connections' messages due from their oldest unsent time until the
        end were never sent. Each would have taken at least until the end - left out, the latency
        would read better the further behind the server fell - so each due in the window goes into
        the latency and the first byte at that age, a lower bound; the report says how many did."""
        assert self._schedule is not None
        sched = self._schedule
        runs: list[tuple[float, int]] = []
        for first_due in parked:
            n_unsent = sched.count_between(first_due, end)
            self.unsent += n_unsent
            if not self.traffic.awaits_reply:
                continue  # sent only (no replies): counted, but there is no latency to put them in
            skip = sched.count_between(first_due, warm_end)  # due in the warm-up: not sampled
            runs.append(((end - (first_due + skip * sched.interval_s)) * 1e6, n_unsent - skip))
        for us, count in unsent_ages(runs, sched.interval_s * 1e6).items():
            bucket = hdr_round(us)
            hl[bucket] = hl.get(bucket, 0) + count
            self.hist_ttfb[bucket] = self.hist_ttfb.get(bucket, 0) + count
            self.unsent_sampled += count

    def _drain(self, end: float, warm_end: float, hl: dict[int, int]) -> None:
        """Stop sending; give the replies in flight a short while to arrive; count the rest."""
        perf = time.perf_counter
        self.phase = "draining"
        self._abandon_reopening()
        deadline = perf() + self.traffic.reply_timeout_s
        conns = self.conns
        next_grid = math.floor(perf()) + 1.0
        while any(c.starts for c in conns.values()) and perf() < deadline and not self.closing:
            if perf() >= next_grid:
                self._close_interval(perf())
                next_grid = math.floor(perf()) + 1.0
            for fd, ev in self.wait(0.05):
                if fd == self.pipe_fd:
                    self.read_control()
                    continue
                found = conns.get(fd)
                if found is None:
                    continue
                c = found
                if ev & _EPOLLOUT and c.out:  # a message still going out: its reply cannot come first
                    self._flush(c)
                    if fd not in conns:
                        continue
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:  # (woken for writing only): nothing to read yet
                    continue
                except OSError as exc:
                    self._drop(c, cause_for(exc.errno or 0, "recv"))
                    continue
                t = perf()
                if not data:
                    self._drop(c, _eof_cause(c))
                    continue
                if len(data) == _READ or ev & _ENDING:
                    self._rearm(c)
                self.snap.bytes_in += len(data)
                starts = c.starts
                if starts and not c.first:
                    c.first = t
                codec = c.codec
                errors_before = self.tally.count
                n = codec.feed(data)
                if n > len(starts) and self.traffic.awaits_reply:
                    self.tally.error("unexpected-reply", n - len(starts))
                    n = len(starts)
                if self.tally.count != errors_before:  # e.g. an HTTP 5xx: against this source too
                    self.by_source[c.src] = self.by_source.get(c.src, 0) + self.tally.count - errors_before
                for _ in range(min(n, len(starts))):
                    self._complete(c, t, warm_end, end, hl)
                if n:
                    c.first = t if codec.partial else 0.0
                if codec.out:  # e.g. the pong for a server's ping
                    out, codec.out = codec.out, b""
                    self._write(c, out)
                if codec.dead is not None and fd in conns:
                    self._drop(c, codec.dead)
        parked = list(self._abandoned_due)  # each parked slot's oldest unsent time
        for c in conns.values():
            if c.starts and not self.closing:
                # Still no reply after the drain's full --reply-timeout: a timeout like any other,
                # counted (and so failing the run) - a server that never answers must not pass.
                self.tally.error(_late_cause(c))
                self.by_source[c.src] = self.by_source.get(c.src, 0) + 1
            self.unanswered += len(c.starts)
            if c.next_due:
                parked.append(c.next_due)
                c.next_due = 0.0
            c.starts.clear()
            self.epoll.modify(c.fd, _HOLD)  # back to holding: the hold loop only watches for closes
        if parked:
            self._count_unsent(parked, end, warm_end, hl)
        self._close_interval(perf())
        self.phase = "done"
        # Stopped in the window or in the drain: either way what is still in flight is the interrupt's.
        self.interrupted = self.closing
        self._poll_end = time.monotonic()  # the hold loop's lag starts from here, not from before the traffic
        self.report()


def _minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def _merged(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _late_cause(c: Conn) -> str:
    """Why the oldest reply in flight is overdue: part of it came (reply-incomplete), or none of it
    on a connection that has had replies (reply-timeout), or never any reply (no-reply-ever)."""
    if c.first or c.codec.partial:
        return "reply-incomplete"
    return "reply-timeout" if c.got_reply else "no-reply-ever"


def _eof_cause(c: Conn) -> str:
    if c.starts:
        return "closed-mid-reply" if c.first or c.codec.partial else "closed-awaiting-reply"
    return "closed-by-peer"


def traffic_client_main(shard: ClientShard, config: P.ClientConfig, traffic: TrafficConfig,
                        pipe: Connection) -> None:
    TrafficClientWorker(shard, config, traffic, pipe).main()

