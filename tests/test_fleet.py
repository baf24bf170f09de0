"""The fleet's bookkeeping of its workers, with real forked processes (tiny ones, no sockets)."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection

from loopfan.engine import protocol as P
from loopfan.engine.fleet import Fleet


def _finish_at_once(conn: Connection) -> None:
    conn.send((P.DONE, {"open": 0}))
    conn.close()
    os._exit(0)


def test_a_worker_that_finished_before_we_wrote_to_it_is_done_not_dead() -> None:
    """QA: an interrupted traffic run sent CLOSE twice; a worker that had already sent DONE and
    exited made the second send fail, and was marked dead with all its connections 'worker-died'."""
    fleet = Fleet(on_latency=lambda _h: None)
    worker = fleet.spawn("client", 0, _finish_at_once)
    worker.process.join(10)  # gone, its DONE unread in the pipe
    fleet.send([worker], P.CLOSE)
    assert worker.state == "done" and worker.error == ""
    fleet.shutdown(2)


def _die_at_once(conn: Connection) -> None:
    conn.close()
    os._exit(3)


def test_a_worker_that_ended_without_done_is_dead() -> None:
    fleet = Fleet(on_latency=lambda _h: None)
    worker = fleet.spawn("client", 0, _die_at_once)
    worker.process.join(10)
    fleet.send([worker], P.CLOSE)
    fleet.pump(0.2)
    assert worker.state == "dead" and worker.error == "exited with status 3"
    fleet.shutdown(2)
