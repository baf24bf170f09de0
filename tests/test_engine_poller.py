"""The poller the workers use where there is no epoll (macOS, BSD): the selectors adapter.

It is exercised here on Linux: as a unit (hang-up vs data, writability) and end to end, with
LOOPFAN_POLLER=selectors forcing a whole `loopfan run` through it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import free_port

from loopfan.engine.poller import ERR, HUP, IN, OUT, RDHUP, SelectorPoller


def test_hangup_is_told_apart_from_data() -> None:
    a, b = socket.socketpair()
    p = SelectorPoller()
    try:
        p.register(a.fileno(), RDHUP)
        assert p.poll(0) == []
        b.send(b"x")
        [(fd, ev)] = p.poll(1)
        assert fd == a.fileno() and ev & IN and not ev & RDHUP  # data, not a hang-up
        assert a.recv(1) == b"x"  # the peek left the byte in place
        b.close()
        [(fd, ev)] = p.poll(1)
        assert ev & RDHUP and ev & HUP and not ev & ERR
    finally:
        p.unregister(a.fileno())
        p.close()
        a.close()


def test_writability_until_modified_away() -> None:
    a, b = socket.socketpair()
    p = SelectorPoller()
    try:
        p.register(a.fileno(), OUT | RDHUP)
        [(_, ev)] = p.poll(1)
        assert ev & OUT
        p.modify(a.fileno(), RDHUP)  # level-triggered: a connected socket must stop asking
        assert p.poll(0) == []
        p.unregister(a.fileno())
        p.unregister(a.fileno())  # twice is harmless, like a closed fd's automatic removal
    finally:
        p.close()
        a.close()
        b.close()


@pytest.mark.slow
def test_a_whole_run_through_the_selectors_poller(
    tmp_path: Path, loopback_block: Callable[[], str], no_leaks: None
) -> None:
    listen, sources = loopback_block(), loopback_block()
    port = free_port(f"{listen}1", f"{listen}2", f"{listen}3")
    report = tmp_path / "r.json"
    env = dict(os.environ, LOOPFAN_POLLER="selectors")
    proc = subprocess.run(
        [sys.executable, "-m", "loopfan", "run", "-c", "3000", "--per-process", "1000", "--hold", "0.5s",
         "--listen", f"{listen}1-{listen}3:{port}", "--sources", f"{sources}1-{sources}3",
         "--progress", "none", "--json", str(report)],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(report.read_text())
    assert rep["established"] == 3000 and rep["failed_total"] == 0
    assert rep["server"]["agrees_with_client"] and rep["client_processes"] == 3
