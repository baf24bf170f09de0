"""`loopfan serve`: endpoints spread over processes so none is planned past its open-file limit,
SO_REUSEPORT copies for an endpoint one process cannot hold, and failures printed by cause with
their fix.

QA: 8 endpoints for 100,000 connections went to 6 processes round-robin, two of them with two
endpoints (25,000 connections against a 20,000 fd limit): EMFILE 333, and the console never said.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEV_MACHINE, free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from loopfan.commands.serve import failure_lines
from loopfan.engine.serve import REUSEPORT_MARGIN, BuiltinServer, process_capacity, shard_endpoints
from loopfan.pools import Endpoint, parse_endpoints

PER_PROCESS = process_capacity(DEV_MACHINE)  # 19,500


def planned_load(shards: tuple, capacity: int, n_endpoints: int) -> list[float]:  # type: ignore[type-arg]
    """Each process's expected connections, the load spread evenly over the endpoints and each
    endpoint's copies."""
    copies = Counter(e for s in shards for e in s.listen)
    return [sum(capacity / n_endpoints / copies[e] for e in s.listen) for s in shards]


@settings(deadline=None)  # (up to ~3,000 shards: slow under a loaded CI, not wrong)
@given(st.integers(1, 300), st.integers(1, 3_000_000), st.none() | st.integers(1000, 30_000))
def test_no_process_is_planned_past_its_limit(n_endpoints: int, capacity: int, max_per_process: int | None) -> None:
    eps = tuple(Endpoint(f"127.11.{i // 250}.{i % 250 + 1}", 7071) for i in range(n_endpoints))
    shards = shard_endpoints(eps, capacity, DEV_MACHINE, max_per_process)
    limit = process_capacity(DEV_MACHINE, max_per_process)
    assert {e for s in shards for e in s.listen} == set(eps)  # every endpoint listened on
    assert [s.index for s in shards] == list(range(len(shards)))
    assert max(planned_load(shards, capacity, n_endpoints)) <= limit + 1e-6
    sizes = [len(s.listen) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # as even as endpoints allow
    copies = Counter(e for s in shards for e in s.listen)
    if max(copies.values()) > 1:  # shared endpoints: one per process, planned below the limit
        assert sizes == [1] * len(shards) and set(copies.values()) == {max(copies.values())}
        assert max(planned_load(shards, capacity, n_endpoints)) <= limit * REUSEPORT_MARGIN + 1
    else:  # no more processes than needed: with one fewer, the fullest would not fit
        fewer = len(shards) - 1
        assert fewer == 0 or -(-n_endpoints // fewer) * capacity / n_endpoints > limit


def test_the_qa_case_gets_one_endpoint_per_process() -> None:
    eps = parse_endpoints("127.11.0.1-127.11.0.8:7071")
    shards = shard_endpoints(eps, 100_000, DEV_MACHINE)
    assert [len(s.listen) for s in shards] == [1] * 8 and {s.connections for s in shards} == {12_500}


def test_one_endpoint_for_more_than_a_process_is_shared() -> None:
    (ep,) = parse_endpoints("127.11.0.1:7071")
    shards = shard_endpoints((ep,), 100_000, DEV_MACHINE)
    assert len(shards) == 6 and all(s.listen == (ep,) for s in shards)
    assert all(s.connections <= PER_PROCESS * REUSEPORT_MARGIN for s in shards)


def test_failure_lines_name_the_fd_limit_and_the_knob() -> None:
    (line,) = failure_lines({"EMFILE": 333}, 100_000, 19_500, 6)
    assert line.startswith("failed EMFILE 333: a server process reached its open-file limit")
    assert "19,500" in line and "-c 100,000" in line and "fix: start serve with -c" in line
    assert failure_lines({}, 1, 1, 1) == []


def test_a_shared_endpoint_spreads_its_connections(loopback_block: object) -> None:
    """One endpoint, 2,000 connections, at most 600 per process: four processes on it (SO_REUSEPORT),
    every connection accepted, none with more than it was planned for (plus the hash's spread)."""
    prefix = loopback_block()  # type: ignore[operator]
    ep = parse_endpoints(f"{prefix}1:{free_port(f'{prefix}1')}")
    server = BuiltinServer.on(ep, capacity=2000, max_per_process=600)
    assert len(server.shards) == 4 and server.config.reuse_port
    with server:
        conns = [socket.create_connection((ep[0].address, ep[0].port), timeout=5) for _ in range(2000)]
        try:
            for _ in range(50):
                totals = server.poll(0.1)
                if totals.established == 2000:
                    break
            assert (totals.established, totals.failed) == (2000, {})
            per_worker = [w.stats["open"] for w in server.fleet.workers]
            assert sum(per_worker) == 2000 and max(per_worker) <= 600, per_worker
        finally:
            for c in conns:
                c.close()


def test_serve_prints_emfile_live_and_at_the_end(loopback_block: object, tmp_path: Path) -> None:
    """serve under a 1,200-file limit, ready for 700 connections: one process. 1,200 clients
    connect; it runs out of fds, and says so with the fix."""
    prefix = loopback_block()  # type: ignore[operator]
    port = free_port(f"{prefix}1")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, 1200))

    serve = subprocess.Popen(
        [sys.executable, "-m", "loopfan", "serve", "--listen", f"{prefix}1:{port}", "-c", "700", "--duration", "4s",
         "--json", str(tmp_path / "serve.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=low_limit,
    )
    conns: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                conns.append(socket.create_connection((f"{prefix}1", port), timeout=1))
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(1199):  # (queued by the kernel once the server stops accepting)
            with contextlib.suppress(OSError):
                conns.append(socket.create_connection((f"{prefix}1", port), timeout=0.2))
        _out, err = serve.communicate(timeout=20)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for c in conns:
            c.close()
    assert "listening on 1 endpoint in 1 process" in err and "ready for 700 connections (-c)" in err
    assert "  failed EMFILE " in err  # the live line
    assert "failed EMFILE" in err.split("stopped:")[1] and "fix: start serve with -c" in err
    assert json.loads((tmp_path / "serve.json").read_text())["failed"]["EMFILE"] > 0


@pytest.mark.parametrize("argv", [["--listen", "127.0.0.1:7071", "-c", "0"]])
def test_serve_bad_count_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from loopfan.cli import main

    assert main(["serve", *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_serve_lists_ipv4_and_ipv6_endpoints_together() -> None:
    """Review: sorting the endpoints for the 'listening on' line compared IPv4 with IPv6 and crashed."""
    from loopfan.commands.serve import _address_order
    from loopfan.pools import parse_endpoints

    eps = [*parse_endpoints("[::1]:7000"), *parse_endpoints("127.0.0.2:7000"), *parse_endpoints("127.0.0.1:7001")]
    assert [str(e) for e in sorted(eps, key=_address_order)] == ["127.0.0.1:7001", "127.0.0.2:7000", "[::1]:7000"]
