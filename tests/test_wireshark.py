"""Wireshark display filters: the right protocol field per address family, and they compile.

QA: for an IPv6 target loopfan printed `ip.src==::1 && ... && ip.dst==::1`, which tshark refuses
("::1" is not a valid hostname or IPv4 address): IPv6 addresses need ipv6.src/ipv6.dst/ipv6.addr.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from loopfan.cli import main
from loopfan.isolation.capture import display_filter
from loopfan.wireshark import address_filter, addresses_filter, connection_filter


def test_ipv4_addresses_use_the_ip_fields() -> None:
    assert address_filter("127.0.0.5") == "ip.addr==127.0.0.5"
    assert connection_filter("127.0.0.5", 40000, "127.0.0.1", 7001) == (
        "ip.src==127.0.0.5 && tcp.srcport==40000 && ip.dst==127.0.0.1 && tcp.dstport==7001"
    )


def test_ipv6_addresses_use_the_ipv6_fields() -> None:
    assert address_filter("::1") == "ipv6.addr==::1"
    assert connection_filter("::1", 40000, "::1", 7001) == (
        "ipv6.src==::1 && tcp.srcport==40000 && ipv6.dst==::1 && tcp.dstport==7001"
    )
    assert addresses_filter(["127.0.0.5", "::1", "127.0.0.5"]) == "ip.addr==127.0.0.5 || ipv6.addr==::1"


def test_unknown_parts_of_the_four_tuple_are_left_out() -> None:
    assert connection_filter("", 0, "::1", 7001) == "ipv6.dst==::1 && tcp.dstport==7001"
    assert connection_filter("127.0.0.5", 0, "127.0.0.1", 80) == (
        "ip.src==127.0.0.5 && ip.dst==127.0.0.1 && tcp.dstport==80"
    )


def test_capture_display_filter_is_the_same_chain() -> None:
    assert display_filter(["127.0.0.5", "127.0.0.6"]) == addresses_filter(["127.0.0.5", "127.0.0.6"])


FILTERS = [
    address_filter("127.0.0.5"),
    address_filter("::1"),
    addresses_filter(["127.0.0.5", "::1"]),
    connection_filter("127.0.0.5", 40000, "127.0.0.1", 7001),
    connection_filter("::1", 40000, "::1", 7001),
    connection_filter("", 0, "::1", 7001),
]


@pytest.mark.parametrize("display", FILTERS)
def test_filters_compile_in_tshark(display: str, tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # header only, Ethernet
    run = subprocess.run([tshark, "-r", str(empty), "-Y", display], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def _ipv6_port_nobody_listens_on() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])  # closed again: connections to it are refused


def test_refused_ipv6_connections_are_reported_with_ipv6_filters(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    port = _ipv6_port_nobody_listens_on()
    main(["run", "-c", "3", f"[::1]:{port}", "--hold", "1s", "--progress", "none",
          "--json", str(tmp_path / "r.json")])
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["failed"] == {"ECONNREFUSED": 3}
    assert [f["display_filter"] for f in rep["failures_by_source"]] == ["ipv6.addr==::1"]
    for f in rep["failed_connections"]:
        assert f["target"] == f"[::1]:{port}", f  # "::1:PORT" would read as an address
        assert f["display_filter"] == (f"ipv6.src==::1 && tcp.srcport=={f['source_port']} && "
                                       f"ipv6.dst==::1 && tcp.dstport=={port}")
    printed = " ".join(capsys.readouterr().out.split())  # the terminal report wraps long lines
    assert f"ipv6.dst==::1 && tcp.dstport=={port}" in printed
