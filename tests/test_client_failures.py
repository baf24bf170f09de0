"""Failed connections keep their 4-tuple: a held connection the server resets is listed with its
source, source port, destination and port, so its Wireshark filter finds it.

QA: every reset connection was listed as source '' with the filter 'ip.dst== && tcp.dstport==0'
(getpeername() fails with ENOTCONN once the peer reset the connection).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import free_port

from loopfan.cli import main
from loopfan.hostfacts import raise_nofile_soft_limit

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@pytest.fixture
def resetting_server(loopback_block: Callable[[], str]) -> Iterator[tuple[str, int]]:
    """Accepts every connection and resets them all 0.5 s after the first (for 10 s at most)."""
    address = f"{loopback_block()}1"
    port = free_port(address)
    lsock = socket.create_server((address, port), backlog=1024)
    lsock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        held: list[socket.socket] = []
        first = None
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = lsock.accept()
                held.append(c)
                first = first or time.monotonic()
            except TimeoutError:
                pass
            if first is not None and time.monotonic() - first > 0.5:
                for c in held:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    c.close()
                held.clear()
        for c in held:
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield address, port
    finally:
        stop.set()
        t.join(5)
        lsock.close()


def test_reset_connections_keep_their_four_tuple(resetting_server: tuple[str, int], tmp_path: Path,
                                                  loopback_block: Callable[[], str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    address, port = resetting_server
    sources = loopback_block()
    raise_nofile_soft_limit()
    main(["run", "-c", "200", f"{address}:{port}", "--sources", f"{sources}1-{sources}4", "--hold", "2s",
          "--progress", "none", "--json", str(tmp_path / "r.json")])
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["failed"] == {"ECONNRESET": 200}
    by_source = rep["failures_by_source"]
    assert sum(f["failed"] for f in by_source) == 200
    assert all(f["source"].startswith(sources) and f["display_filter"] == f"ip.addr=={f['source']}"
               for f in by_source)
    assert rep["failed_connections"]
    for f in rep["failed_connections"]:
        assert f["source"].startswith(sources) and f["source_port"] > 0, f
        assert f["target"] == f"{address}:{port}", f
        assert f["display_filter"] == (f"ip.src=={f['source']} && tcp.srcport=={f['source_port']} && "
                                       f"ip.dst=={address} && tcp.dstport=={port}")
    out = capsys.readouterr().out
    assert f"ip.dst=={address} && tcp.dstport=={port}" in out
