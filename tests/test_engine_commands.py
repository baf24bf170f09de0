"""`loopfan serve` and `loopfan demo`: real servers and runs on loopback addresses of the test's own.

Bounded like every engine test (tens to thousands of connections, seconds), and checked by the
`no_leaks` fixture. The demo runs with its hidden -c at 20,000 (its 100,000 default is for people).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import child_pids, free_port, kernel_tcp_sockets

import loopfan.commands.demo as demo_command
from loopfan.cli import main
from loopfan.engine.runner import Progress, RunConfig, run_plan
from loopfan.hostfacts import read_host_facts
from loopfan.planner import PlanRequest, plan
from loopfan.pools import parse_endpoints, parse_pool

pytestmark = pytest.mark.usefixtures("no_leaks")

Block = Callable[[], str]


def connect_when_listening(address: str, port: int, timeout_s: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((address, port), timeout=2)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_serve_listens_on_every_endpoint_for_its_duration(
    loopback_block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = loopback_block()
    addresses = [f"{prefix}{i}" for i in range(1, 5)]
    port = free_port(*addresses)
    out = tmp_path / "serve.json"
    held: list[socket.socket] = []
    errors: list[BaseException] = []

    def clients() -> None:
        try:
            for address in addresses:
                held.append(connect_when_listening(address, port))
                held.extend(socket.create_connection((address, port), timeout=2) for _ in range(9))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=clients)
    thread.start()
    try:
        status = main(["serve", "--listen", f"{prefix}1-{prefix}4:{port}", "--duration", "2s", "--json", str(out)])
    finally:
        thread.join(15)
        for s in held:
            s.close()
    assert not errors, errors
    assert status == 0
    err = capsys.readouterr().err
    assert "listening on 4 endpoints" in err and f"{prefix}1:{port}" in err
    rep = json.loads(out.read_text())
    assert rep["schema"] == "loopfan.serve/1"
    assert sorted(rep["listen"]) == sorted(f"{a}:{port}" for a in addresses)
    assert rep["accepted"] == rep["peak_open"] == 40 and rep["failed"] == {}
    listening = [s for s in kernel_tcp_sockets() if s[0] == "LISTEN" and s[1][0].startswith(prefix)]
    assert not listening


def test_serve_stopped_while_a_run_holds_is_counted_by_cause(loopback_block: Block, tmp_path: Path) -> None:
    """`loopfan serve` in a process of its own, sent SIGTERM while a run holds 2,000 connections on it."""
    prefix = loopback_block()
    port = free_port(f"{prefix}1", f"{prefix}2")
    serve = subprocess.Popen(
        [sys.executable, "-m", "loopfan", "serve", "--listen", f"{prefix}1-{prefix}2:{port}", "-c", "2000",
         "--per-process", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        connect_when_listening(f"{prefix}2", port).close()
        workers = child_pids(serve.pid)
        src = loopback_block()
        eps = parse_endpoints(f"{prefix}1-{prefix}2:{port}")
        p = plan(PlanRequest(connections=2000, targets=eps, sources=parse_pool(f"{src}1-{src}4"),
                             max_per_process=1000), read_host_facts())
        stopped: list[int] = []

        def stop_server(progress: Progress) -> None:
            if progress.phase == "holding" and not stopped:
                serve.send_signal(signal.SIGTERM)
                stopped.append(serve.wait(15))

        result = run_plan(p, RunConfig(hold_s=0.5), on_progress=stop_server)
    finally:
        if serve.poll() is None:
            serve.kill()
        _out, err = serve.communicate(timeout=15)
    assert stopped == [143], err
    assert len(workers) == 2 and not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert result.client.established == 2000 and not result.worker_failures
    lost = result.client.failed
    assert set(lost) <= {"closed-by-peer", "ECONNRESET"} and sum(lost.values()) == 2000, lost
    assert "stopped: accepted" in err


def test_demo_explains_what_it_did(
    monkeypatch: pytest.MonkeyPatch, loopback_block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = loopback_block()
    port = free_port(f"{prefix}1", f"{prefix}2")
    elsewhere = functools.partial(PlanRequest, listen_pool=parse_pool(f"{prefix}1-{prefix}9"), listen_port=port)
    monkeypatch.setattr(demo_command, "PlanRequest", elsewhere)
    monkeypatch.setattr(demo_command, "DEMO_HOLD_S", 0.2)
    out = tmp_path / "demo.json"
    status = main(["demo", "-c", "20000", "--quiet", "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "loopfan demo: 20,000 connections" in printed
    assert "What just happened" in printed and "opened 20,000 TCP connections" in printed
    assert "Run report" in printed
    rep = json.loads(out.read_text())
    assert rep["established"] == 20_000 and rep["server"]["agrees_with_client"] is True
    assert rep["client_processes"] >= 2 and rep["server_processes"] >= 2  # past one process's fd limit


@pytest.mark.parametrize("reuse_port", [False, True])
def test_serve_on_a_taken_endpoint_is_refused_before_it_starts(
        loopback_block: Callable[[], str], capsys: pytest.CaptureFixture[str], reuse_port: bool) -> None:
    """One line, exit 2, before any process. QA: a listener with SO_REUSEPORT - another loopfan
    serve - let a second serve start on the same port, and the kernel split the clients between an
    echo server and a hold server."""
    prefix = loopback_block()
    port = free_port(f"{prefix}1")
    with socket.create_server((f"{prefix}1", port), reuse_port=reuse_port):
        status = main(["serve", "--listen", f"{prefix}1:{port}", "-c", "10", "--duration", "1s"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err == (f"loopfan: error: {prefix}1:{port} is taken: another program listens there (another loopfan "
                   "serve?); stop it, or choose other endpoints with --listen ENDPOINTS\n")


def test_serve_on_an_endpoint_taken_after_the_probe_says_its_own_fix(
        loopback_block: Callable[[], str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken between the probe and the bind: no Python class name in the line, and the fix in an
    option serve has."""
    import loopfan.commands.serve as serve_command
    monkeypatch.setattr(serve_command, "taken_endpoints", lambda endpoints: frozenset())
    prefix = loopback_block()
    port = free_port(f"{prefix}1")
    with socket.create_server((f"{prefix}1", port)):
        status = main(["serve", "--listen", f"{prefix}1:{port}", "-c", "10", "--duration", "1s"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert err == (f"loopfan: error: the built-in server could not start: cannot listen on {prefix}1:{port}: "
                   "Address already in use (another program listens there); choose other endpoints with "
                   "--listen ENDPOINTS\n")
