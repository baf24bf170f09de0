"""What every worker process shares: its pipe to the parent, its epoll, reporting, and a clean exit.

Rules of this file: a worker never outlives its parent (PR_SET_PDEATHSIG, and the pipe's EOF),
ignores SIGINT and SIGTERM (the parent coordinates both so that a partial report is still
produced: Ctrl-C, `timeout`, systemd and CI cancellations signal the whole process group, and a
worker that died of it would take its counts along; the parent stops its workers itself, by pid), and
turns any unexpected exception into one ERROR message instead of a traceback on the terminal.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import time
from multiprocessing.connection import Connection

from loopfan.engine import poller
from loopfan.engine import protocol as P
from loopfan.errors import LoopfanError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the parent dies (kill -9 included): never orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the directory handle listdir holds
    except OSError:
        return 0


def _fd_limit() -> int | None:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError):
        return None


class WorkerBase:
    def __init__(self, pipe: Connection, report_interval_s: float) -> None:
        self.pipe = pipe
        self.snap = P.Snapshot()
        self.latency: dict[int, int] = {}  # microseconds -> count, since the last report
        self._settled = 0  # snap.established when settle() last ran
        self.report_interval_s = report_interval_s
        self._next_report = 0.0
        self.epoll = poller.new_poller()
        self.pipe_fd = pipe.fileno()
        self.epoll.register(self.pipe_fd, poller.IN)
        self.parent_pid = os.getppid()
        # Generator health for the time series: fds besides connections (pipe, epoll, std streams,
        # listeners), counted once here - listing /proc/self/fd at 20,000 fds costs ~30 ms, too
        # much to repeat - and the event-loop lag: the longest stretch between two epoll waits,
        # i.e. how late an event could have been noticed (two monotonic() calls per loop turn).
        self._base_fds = _count_fds()
        self._fd_limit = _fd_limit()
        self._max_lag_s = 0.0
        self._poll_end = time.monotonic()

    # -- counting -------------------------------------------------------------------------------
    def established(self) -> None:
        self.snap.established += 1
        self.snap.open += 1
        self.settle()

    def settle(self) -> None:
        """Update the peak and the first/last-established times after counts changed."""
        snap = self.snap
        if snap.open > snap.peak_open:
            snap.peak_open = snap.open
        if snap.established and snap.established != self._settled:
            self._settled = snap.established
            now = time.time()
            if snap.first_established_s is None:
                snap.first_established_s = now
            snap.last_established_s = now

    def fail(self, cause: str, where: tuple[str, int, str, int] | None = None) -> None:
        """Count a failure; keep the first few 4-tuples (source, sport, dest, dport) for captures."""
        self.snap.failed[cause] = self.snap.failed.get(cause, 0) + 1
        if where is not None:
            by_source = self.snap.failed_by_source
            by_source[where[0]] = by_source.get(where[0], 0) + 1
            if len(self.snap.failed_samples) < P.FAILED_SAMPLES_PER_WORKER:
                self.snap.failed_samples.append((cause, *where))

    # -- talking to the parent ------------------------------------------------------------------
    def send(self, kind: str, payload: object) -> None:
        try:
            self.pipe.send((kind, payload))
        except (BrokenPipeError, OSError):
            self.orphaned()

    def report(self) -> None:
        # Copy and clear in place: the client's hot loop holds a local alias of this dict, so
        # rebinding it would send every later sample into a dict that was already sent.
        latency = dict(self.latency)
        self.latency.clear()
        stats = self.snap.as_dict()
        stats["health"] = self.health()
        # When these counts were true, on the clock every process shares: the parent's rates
        # divide by the worker's own time between reports, not by when the pipe delivered them.
        stats["t"] = time.monotonic()
        self.send(P.STATS, (stats, latency))

    def health(self) -> dict[str, float | int | None]:
        """Extra STATS keys for the time series: fds in use vs the limit, and loop lag since the last report."""
        pending = getattr(self, "pending", None)  # client: connects in flight hold fds too
        fds = self._base_fds + self.snap.open + (len(pending) if pending is not None else 0)
        fds += len(getattr(self, "listeners", ()))  # server: its listening sockets
        lag_ms, self._max_lag_s = round(self._max_lag_s * 1000, 2), 0.0
        return {"fds": fds, "fd_limit": self._fd_limit, "loop_lag_ms": lag_ms}

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + self.report_interval_s
            self.report()

    def orphaned(self) -> None:
        os._exit(3)

    def read_control(self) -> None:
        try:
            while self.pipe.poll():
                self.on_control(self.pipe.recv())
        except (EOFError, OSError):
            self.orphaned()

    # -- the loop -------------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> list[tuple[int, int]]:
        """epoll_wait, keeping the loop-lag figure: how long since the last wait returned."""
        busy = time.monotonic() - self._poll_end
        if busy > self._max_lag_s:
            self._max_lag_s = busy
        ready: list[tuple[int, int]] = self.epoll.poll(timeout_s, 4096)
        self._poll_end = time.monotonic()
        return ready

    def poll(self, timeout_s: float) -> None:
        for fd, events in self.wait(timeout_s):
            if fd == self.pipe_fd:
                self.read_control()
            else:
                self.on_event(fd, events)

    def on_event(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def on_control(self, message: str) -> None:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def close_all(self) -> None:
        raise NotImplementedError

    def main(self) -> None:
        # Everything inherited from the parent goes to the GC's permanent generation: collections
        # then never write to those objects' headers, so their pages stay shared copy-on-write
        # with the parent instead of being copied into every one of a hundred workers.
        gc.freeze()
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.run()
            self.close_all()
            self.report()
            self.send(P.DONE, self.snap.as_dict())
        except LoopfanError as exc:  # said for the user already: no class name in front of it
            self.send(P.ERROR, str(exc))
        except Exception as exc:  # a bug: its class name helps whoever reads the report
            self.send(P.ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self.pipe.close()
            finally:
                os._exit(0)
