"""A fleet of worker processes: start them, hear from them, stop them, and notice when one dies.

Rules of this file: workers are forked (they inherit the imported code and share its pages
copy-on-write, which keeps a hundred workers cheap) and each has one duplex pipe to the parent.
Every worker is stopped by pid before the fleet is done with it: asked first, then SIGKILL (workers
ignore SIGTERM: see worker.py). Nothing is left running, whatever happened.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from loopfan.engine import protocol as P

_CTX = multiprocessing.get_context("fork")


def _open_fds() -> list[int]:
    """This process's open fds: /proc on Linux, /dev/fd on macOS (the listing's own fd is among
    them, closed by then: closing it again in the child is harmless)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(folder) if name.isdigit()]
        except OSError:
            continue
    return []  # neither: the inherited fds stay; headroom covers small fleets


def _enter_child(inherited: list[int], target: Callable[..., None], *args: object) -> None:
    for fd in inherited:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
    target(*args)


@dataclass(eq=False)
class Worker:
    role: str  # "client" or "server"
    index: int
    process: BaseProcess
    conn: Connection
    stats: dict[str, Any] = field(default_factory=dict)
    state: str = "starting"  # starting, ready, connected, done, dead, error
    error: str = ""
    ready_payload: dict[str, Any] = field(default_factory=dict)
    pid: int = 0  # kept here: the process object is closed (and forgets its pid) at shutdown
    # Interval histograms the worker closed (traffic latency: (start, end, {us: count}) on the
    # shared monotonic clock), each sent once: collected here for whoever consumes them.
    intervals: list[Any] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "dead", "error")


class Fleet:
    def __init__(self, on_latency: Callable[[dict[int, int]], None]) -> None:
        self.workers: list[Worker] = []
        self.on_latency = on_latency

    def spawn(self, role: str, index: int, target: Callable[..., None], *args: object) -> Worker:
        # A forked child inherits every fd the parent holds, and the parent holds three per worker
        # already started (pipe end, exit sentinel pair): the 200th worker would start with ~600
        # fds that are not its own and hit its open-file limit before its share of connections
        # (seen at 2,000,000: 330 EMFILE). So the child closes what the parent had before this
        # spawn; the pipes made for it after that (its end, its sentinels) stay.
        inherited = _open_fds()
        parent_end, child_end = _CTX.Pipe(duplex=True)
        proc = _CTX.Process(target=_enter_child, args=(inherited, target, *args, child_end),
                            name=f"loopfan-{role}-{index}", daemon=True)
        proc.start()
        child_end.close()
        worker = Worker(role, index, proc, parent_end, pid=proc.pid or 0)
        self.workers.append(worker)
        return worker

    def of(self, role: str) -> list[Worker]:
        return [w for w in self.workers if w.role == role]

    def pump(self, timeout_s: float) -> None:
        """Read every message that arrives within timeout_s; mark workers whose pipe closed."""
        live = {w.conn: w for w in self.workers if not w.finished}
        if not live:
            time.sleep(min(timeout_s, 0.05))
            return
        for ready in wait(list(live), timeout_s):
            worker = live[ready]  # type: ignore[index]
            conn = worker.conn
            try:
                while conn.poll():
                    self._handle(worker, conn.recv())
            except (EOFError, OSError):
                self._died(worker)

    def _handle(self, worker: Worker, message: P.Message) -> None:
        kind, payload = message
        if kind == P.STATS:
            stats, latency = payload
            self._take_stats(worker, stats)
            if latency:
                self.on_latency(latency)
        elif kind == P.READY:
            worker.state = "ready"
            worker.ready_payload = payload
        elif kind == P.CONNECTED:
            self._take_stats(worker, payload)
            worker.state = "connected"
        elif kind == P.DONE:
            self._take_stats(worker, payload)
            worker.state = "done"
        elif kind == P.ERROR:
            worker.state = "error"
            worker.error = str(payload)

    @staticmethod
    def _take_stats(worker: Worker, stats: dict[str, Any]) -> None:
        # Stats are cumulative (the latest wins); intervals are not, so none may be overwritten.
        intervals = stats.pop("intervals", None)
        if intervals:
            worker.intervals.extend(intervals)
        worker.stats = stats

    def _died(self, worker: Worker) -> None:
        if worker.finished:
            return
        worker.process.join(0.5)
        code = worker.process.exitcode
        worker.state = "dead"
        if code is not None and code < 0:
            worker.error = f"killed by signal {signal.Signals(-code).name}"
        else:
            worker.error = f"exited with status {code}"

    def send(self, workers: Iterable[Worker], message: str) -> None:
        for w in workers:
            if not w.finished:
                try:
                    w.conn.send(message)
                except OSError:
                    # A worker that finished and exited before we read its DONE has closed its end:
                    # its last messages are still in the pipe. Read them first; only a worker that
                    # ends without DONE died (an interrupted traffic run counted every connection
                    # of such workers as 'worker-died').
                    self._read_rest(w)
                    self._died(w)

    def _read_rest(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            pass

    def wait_until(self, done: Callable[[], bool], timeout_s: float, tick: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() >= deadline:
                return False
            self.pump(0.1)
            if tick:
                tick()
        return True

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask, then kill: every worker gone, every pipe closed. (Workers ignore SIGTERM - a signal
        to the whole process group is the parent's to handle - so a worker that did not stop when
        asked is killed.)"""
        self.send(self.workers, P.STOP)
        self.wait_until(lambda: all(w.finished for w in self.workers), timeout_s)
        for w in self.workers:
            if w.conn.closed:
                continue  # shut down before
            w.process.join(0.2)
            if w.process.is_alive():
                os.kill(w.pid, signal.SIGKILL)
                w.process.join(2)
            w.conn.close()
            # Release the process object's sentinel pipes now, not whenever it is collected (a
            # traceback that holds the fleet would otherwise keep two fds per worker open).
            with contextlib.suppress(ValueError):  # still running after SIGKILL: nothing to free yet
                w.process.close()
