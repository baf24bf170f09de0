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
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.engine.causes import cause_for
from loopfan.engine.client import ClientWorker
from loopfan.planner import ClientShard
from loopfan.traffic.config import TrafficConfig
from loopfan.traffic.http import HttpClient, KnownHeads, request_template
from loopfan.traffic.raw import RawReplies
from loopfan.traffic.schedule import OpenSchedule
from loopfan.traffic.tally import Tally
from loopfan.traffic.ws import WsClient

TRAFFIC = "traffic"  # parent -> worker: start the traffic phase now
_TALK = poller.IN | poller.RDHUP
_TALK_OUT = _TALK | poller.OUT
_HOLD = poller.RDHUP | poller.ET
_EPOLLOUT = poller.OUT
_READ = 65536
_SCAN_S = 0.5  # how often in-flight messages are checked against the reply timeout


class Conn:
    __slots__ = ("codec", "fd", "first", "got_reply", "idx", "out", "queued", "src", "starts")

    def __init__(self, fd: int, idx: int, codec: Any, src: str) -> None:
        self.fd = fd
        self.idx = idx
        self.codec = codec
        self.src = src
        self.starts: list[float] = []  # start time of each message in flight (sent or scheduled)
        self.queued: list[float] = []  # open model: scheduled times not yet sent (connection busy)
        self.first = False  # the first byte of the oldest reply in flight has arrived
        self.got_reply = False
        self.out = b""  # bytes the socket did not take yet


class TrafficSnapshot(P.Snapshot):
    """The worker's Snapshot plus a "traffic" key (extra keys keep the STATS message compatible)."""

    __slots__ = ("traffic",)

    def __init__(self) -> None:
        super().__init__()
        self.traffic: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        d = P.Snapshot.as_dict(self)
        d["traffic"] = dict(self.traffic)
        return d


def hdr_round(us: int) -> int:
    """The lowest value of `us`'s bucket in a 3-significant-digit HDR histogram (2048 sub-buckets)."""
    if us < 2048:
        return us if us > 0 else 1
    s = us.bit_length() - 11
    return us >> s << s


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
        self.by_source: dict[str, int] = {}
        self.conns: dict[int, Conn] = {}
        self.sent = 0
        self.replies = 0
        self.window_replies = 0
        self.window_bytes_in = 0
        self.window_bytes_out = 0
        self.unanswered = 0
        self.unsent = 0
        self.phase = "connecting"
        self.window_s = 0.0
        self._ran = False
        self.go_traffic = False
        self._schedule: OpenSchedule | None = None
        self._template: Any = None
        self._known = KnownHeads()  # response heads h11 accepted, shared by this worker's connections
        self._host = ""
        self._phase_start = 0.0
        self.talking_at_start = 0
        self.talking_at_end = 0

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
            "replies": self.replies,
            "window_replies": self.window_replies,
            "window_bytes_in": self.window_bytes_in,
            "window_bytes_out": self.window_bytes_out,
            "window_s": self.window_s,
            "unanswered_at_end": self.unanswered,
            "unsent_at_end": self.unsent,
            "talking": len(self.conns) if self.phase != "closed" else self.talking_at_end,
            "talking_at_start": self.talking_at_start,
            "errors": dict(self.tally.errors),
            "statuses": dict(self.tally.statuses),
            "errors_by_source": dict(self.by_source),
            "latency_us": _merged(self.hist_latency, self.hist_whole),
            "ttfb_us": _merged(self.hist_ttfb, self.hist_whole),
        }

    def report(self) -> None:
        self._publish(done=self.phase == "done")
        super().report()

    def _codec(self) -> Any:
        tc = self.traffic
        if tc.kind == "raw":
            return RawReplies(tc.message, tc.expect, tc.expect_length, tc.expect_marker)
        if tc.kind == "http":
            return HttpClient(self._template, self.tally, self._known)
        return WsClient(self._host, tc.path, tc.message, tc.ws_opcode, self.tally)

    def _drop(self, conn: Conn, cause: str) -> None:
        fd = conn.fd
        if self.conns.pop(fd, None) is None:
            return
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        os.close(fd)
        self.fds.discard(fd)
        self.snap.open -= 1
        if self._schedule is not None:
            self._schedule.remove(conn.idx)
        self.tally.error(cause)
        self.by_source[conn.src] = self.by_source.get(conn.src, 0) + 1

    def _write(self, conn: Conn, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            n = os.write(conn.fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._drop(conn, cause_for(exc.errno or 0, "send"))
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
            self._drop(conn, cause_for(exc.errno or 0, "send"))
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
            self._host = tc.host or (f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}")
            if tc.kind == "http":
                self._template = request_template(tc.method, tc.path, self._host, tc.headers, tc.body)
            conns[fd] = Conn(fd, idx, self._codec(), src)
            ep.modify(fd, _TALK)
        by_idx: list[Conn | None] = [None] * len(conns)
        for c in conns.values():
            by_idx[c.idx] = c

        self.talking_at_start = len(conns)
        if tc.kind == "ws":
            self._handshakes(tc.reply_timeout_s)
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
            data = message if raw else c.codec.message()
            if awaits:
                c.starts.append(t_start)
            self.sent += 1
            if t_start >= warm_end:
                self.window_bytes_out += len(data)
            self._write(c, data)

        # The first messages of a closed loop (WebSocket handshakes are done by now).
        for c in list(conns.values()):
            if schedule is None and c.fd in conns:
                for _ in range(pipeline if awaits else 1):
                    send_one(c, perf())
        next_scan = start + _SCAN_S
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
        while not self.closing:
            now = perf()
            if now >= end:
                break
            wait = max(0.0, min(end - now, 0.05))
            if schedule is not None:
                for due, i in schedule.take_due(now):
                    slot = by_idx[i]
                    if slot is None or slot.fd not in conns:
                        continue
                    c = slot
                    if not awaits or (c.codec.ready and len(c.starts) < pipeline and not c.queued):
                        send_one(c, due)
                    else:
                        c.queued.append(due)
                nd = schedule.next_due_s()
                if nd is not None:
                    wait = max(0.0, min(wait, nd - now))
            for fd, ev in ep.poll(wait, 4096):
                found = conns.get(fd)
                if found is None:
                    if fd == pipe_fd:
                        self.read_control()
                    continue
                c = found
                if ev & _EPOLLOUT and c.out:
                    self._flush(c)
                    if fd not in conns:
                        continue
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
                        and codec.fast and t < end):
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
                        self._drop(c, cause_for(exc.errno or 0, "send"))
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
                        quick_out_win += k
                    elif t >= warm_end:
                        quick_win += 1
                        quick_out_win += k
                    continue
                if not data:
                    self._drop(c, _eof_cause(c))
                    continue
                steady = quick and len(starts) == 1 and not c.first and not c.out and codec.fast and not codec.buf
                nbytes = len(data)
                snap.bytes_in += nbytes
                if t >= warm_end and t < end:
                    self.window_bytes_in += nbytes
                if starts and not c.first:
                    self._first_byte(c, t, warm_end)
                errors_before = tally.count
                if steady:
                    tally.last_status = None
                n = codec.feed(data)
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
                            and t < end and data != learned):
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
                    c.first = bool(codec.partial)
                    if t < end:
                        if schedule is None:
                            for _ in range(n):
                                send_one(c, t)
                        else:
                            q = c.queued
                            while q and len(starts) < pipeline:
                                send_one(c, q.pop(0))
                elif not raw and codec.ready and not c.got_reply and not starts:
                    # The WebSocket handshake just completed: start this connection's messages.
                    c.got_reply = True
                    if schedule is None:
                        for _ in range(pipeline):
                            send_one(c, t)
                    else:
                        q = c.queued
                        while q and len(starts) < pipeline:
                            send_one(c, q.pop(0))
            if now >= next_scan:
                next_scan = now + _SCAN_S
                if learned is not None:
                    self._settle_quick(quick_n, quick_win, quick_out, quick_out_win, learned, learned_status)
                    quick_n = quick_win = quick_out = quick_out_win = 0
                self._expire(now, timeout_s)
                self.maybe_report()
        if learned is not None:
            self._settle_quick(quick_n, quick_win, quick_out, quick_out_win, learned, learned_status)
        self.window_s = min(perf(), end) - warm_end if perf() > warm_end else 0.0
        self._drain(end, warm_end, hl)

    def _settle_quick(self, n: int, n_window: int, sent_bytes: int, sent_bytes_window: int, reply: bytes,
                      status: str | None) -> None:
        """Add what the quick path counted in locals (n replies of `reply`, each followed by one
        message of the bytes given) to the worker's counts."""
        self.replies += n
        self.sent += n
        self.window_replies += n_window
        self.snap.bytes_in += n * len(reply)
        self.window_bytes_in += n_window * len(reply)
        self.snap.bytes_out += sent_bytes
        self.window_bytes_out += sent_bytes_window
        if status is not None and n:
            self.tally.status(status, n)

    def _handshakes(self, timeout_s: float) -> None:
        """Every WebSocket opening handshake, before the clock starts: they are connection set-up,
        not traffic. A connection whose handshake fails or times out is counted and closed."""
        perf = time.perf_counter
        conns = self.conns
        for c in list(conns.values()):
            self._write(c, c.codec.opening())
        waiting = {fd for fd, c in conns.items() if not c.codec.ready}
        deadline = perf() + timeout_s
        while waiting and perf() < deadline and not self.closing:
            for fd, _ev in self.epoll.poll(0.05, 4096):
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
                    self._drop(c, "ws-closed-in-handshake")
                    waiting.discard(fd)
                    continue
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
            self.maybe_report()
        for fd in waiting:
            late = conns.get(fd)
            if late is not None:
                self._drop(late, "ws-handshake-timeout")

    def close_all(self) -> None:
        # WebSocket: say goodbye (close code 1000) before the TCP close, so the server sees a normal
        # closing handshake rather than a dropped connection.
        if self.traffic.kind == "ws":
            for c in self.conns.values():
                if c.codec.ready and c.codec.dead is None:
                    with contextlib.suppress(OSError):
                        os.write(c.fd, c.codec.goodbye())
        self.talking_at_end = len(self.conns)
        self.phase = "closed"
        self.conns.clear()
        super().close_all()

    def _first_byte(self, c: Conn, t: float, warm_end: float) -> None:
        """The first byte of the oldest reply in flight arrived at t: its time to first byte."""
        c.first = True
        t0 = c.starts[0]
        if t0 >= warm_end:
            us = hdr_round(int((t - t0) * 1e6))
            self.hist_ttfb[us] = self.hist_ttfb.get(us, 0) + 1

    def _complete(self, c: Conn, t: float, warm_end: float, end: float, hl: dict[int, int]) -> None:
        t0 = c.starts.pop(0)
        c.got_reply = True
        self.replies += 1
        if t >= warm_end and t < end:
            self.window_replies += 1
        if t0 >= warm_end:
            us = hdr_round(int((t - t0) * 1e6))
            hl[us] = hl.get(us, 0) + 1

    def _expire(self, now: float, timeout_s: float) -> None:
        late = [c for c in self.conns.values() if (c.starts and now - c.starts[0] > timeout_s)
                or (not c.codec.ready and now - self._phase_start > timeout_s)]
        for c in late:
            if not c.codec.ready:
                self._drop(c, "ws-handshake-timeout")
            else:
                self._drop(c, "reply-timeout" if c.got_reply else "no-reply-ever")

    def _drain(self, end: float, warm_end: float, hl: dict[int, int]) -> None:
        """Stop sending; give the replies in flight a short while to arrive; count the rest."""
        perf = time.perf_counter
        self.phase = "draining"
        deadline = perf() + self.traffic.reply_timeout_s
        conns = self.conns
        while any(c.starts for c in conns.values()) and perf() < deadline and not self.closing:
            for fd, ev in self.epoll.poll(0.05, 4096):
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
                self.snap.bytes_in += len(data)
                starts = c.starts
                if starts and not c.first:
                    self._first_byte(c, t, warm_end)
                codec = c.codec
                n = codec.feed(data)
                for _ in range(min(n, len(starts))):
                    self._complete(c, t, warm_end, end, hl)
                if n:
                    c.first = bool(codec.partial)
                if codec.out:  # e.g. the pong for a server's ping
                    out, codec.out = codec.out, b""
                    self._write(c, out)
                if codec.dead is not None and fd in conns:
                    self._drop(c, codec.dead)
        for c in conns.values():
            self.unanswered += len(c.starts)
            self.unsent += len(c.queued)
            c.starts.clear()
            c.queued.clear()
            self.epoll.modify(c.fd, _HOLD)  # back to holding: the hold loop only watches for closes
        self.phase = "done"
        self.report()


def _merged(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _eof_cause(c: Conn) -> str:
    if c.starts:
        return "closed-mid-reply" if c.first or c.codec.partial else "closed-awaiting-reply"
    return "closed-by-peer"


def traffic_client_main(shard: ClientShard, config: P.ClientConfig, traffic: TrafficConfig,
                        pipe: Connection) -> None:
    TrafficClientWorker(shard, config, traffic, pipe).main()

