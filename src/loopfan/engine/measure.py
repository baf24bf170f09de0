"""Readings from the kernel about a run: slab memory, per-process unique memory, established counts.

Rules of this file: I/O only, no decisions. Each reader returns None when the platform does not
offer the reading, and the report says "not measured" rather than guessing.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path


def slab_bytes() -> int | None:
    """Kernel slab memory (SReclaimable + SUnreclaim): where socket, inode and file objects live."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1]) * 1024
    return None


def uss_bytes(pid: int) -> int | None:
    """Unique set size of a process: memory that would be freed if it exited (private pages)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def sum_uss(pids: Iterable[int]) -> int | None:
    values = [uss_bytes(pid) for pid in pids]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


_TCP_ESTABLISHED = "01"


def _hex_to_endpoint(text: str) -> tuple[str, int]:
    addr_hex, port_hex = text.split(":")
    if len(addr_hex) == 8:
        addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(addr_hex, 16)))
    else:
        raw = bytes.fromhex(addr_hex)
        addr = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return addr, int(port_hex, 16)


def established_tcp() -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Every ESTABLISHED TCP socket on the host as (local, remote), from /proc/net/tcp{,6}.

    Fine for tests and checks up to a few hundred thousand sockets; at millions use `ss -s`.
    The file is not a snapshot: it is produced in chunks while other sockets come and go, so one
    read can repeat a socket (dropped here: a 4-tuple is unique) or, rarely, skip one.
    """
    out: dict[tuple[tuple[str, int], tuple[str, int]], None] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == _TCP_ESTABLISHED:
                        out[(_hex_to_endpoint(parts[1]), _hex_to_endpoint(parts[2]))] = None
        except OSError:
            continue
    return list(out)


def count_established(ports: Iterable[int], side: str = "sport", state: str = "established") -> int | None:
    """ESTABLISHED TCP sockets whose local ('sport') or remote ('dport') port is one of `ports`,
    counted by the kernel's own socket table via `ss` (iproute2). With side='sport' on the
    built-in server's ports that is the server side of a run, accept queues included; with
    'dport', the client side. `state` counts another TCP state instead (ss's names:
    'close-wait'). None when `ss` is missing.

    ss filters in the kernel (inet_diag bytecode) and we only count lines, so a million sockets
    take a few seconds.
    """
    ports = sorted(set(ports))
    if not ports:
        return None
    expr = " or ".join(f"{side} = :{p}" for p in ports)
    try:
        proc = subprocess.Popen(
            ["ss", "-Htn", "state", state, f"( {expr} )"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    except OSError:
        return None
    assert proc.stdout is not None
    count = 0
    while chunk := proc.stdout.read(1 << 20):
        count += chunk.count(b"\n")
    return count if proc.wait() == 0 else None


def sockstat_inuse() -> int | None:
    """TCP sockets in use, host-wide (/proc/net/sockstat 'TCP: inuse N'): cheap at any scale."""
    try:
        text = Path("/proc/net/sockstat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("TCP:"):
            parts = line.split()
            return int(parts[parts.index("inuse") + 1])
    return None


def listen_overflows() -> int | None:
    """TcpExtListenOverflows: SYNs dropped because an accept queue was full (host-wide, cumulative)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            names, nums = head.split()[1:], values.split()[1:]
            if "ListenOverflows" in names:
                return int(nums[names.index("ListenOverflows")])
    return None
