"""Readings from the kernel about a run: slab memory, per-process unique memory, established counts.

Rules of this file: I/O only, no decisions. Each reader returns None when the platform does not
offer the reading, and the report says "not measured" rather than guessing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast


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


# One `ss` call's filter holds at most this many terms: the kernel runs the filter per socket, so
# its length multiplies the cost of the scan (and a plan may target thousands of endpoints).
SS_TERMS_MAX = 64
# ... and a reading starts at most this many `ss` calls at once per side (each scans every socket).
SS_CALLS_MAX = 4


def endpoint_filters(endpoints: Iterable[tuple[str, int]], side: str) -> list[str]:
    """ss filter expressions matching sockets whose `side` ('src': local end, 'dst': remote end)
    is one of `endpoints`, as few and as short as possible: the addresses of each port collapsed
    into prefixes (127.11.0.1-127.11.0.20 is 5 prefixes; more than SS_TERMS_MAX widened to the one
    prefix covering them), ports with the same prefixes merged into ranges (a target range like
    127.0.0.1:9000-19000 is one term, not 10,001), and the terms split over at most SS_CALLS_MAX
    expressions of SS_TERMS_MAX each - past that, one term covering every address and port (each
    expression is an `ss` process scanning the whole socket table). The terms are disjoint, so
    counts over the expressions add up.
    """
    by_port: dict[tuple[int, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    for address, port in set(endpoints):
        ip = ipaddress.ip_address(address)
        by_port.setdefault((ip.version, port), []).append(ip)
    # Ports whose addresses collapse to the same prefixes, per IP version.
    groups: dict[tuple[Network, ...], list[int]] = {}
    for (_, port), ips in sorted(by_port.items()):
        groups.setdefault(_prefixes(ips), []).append(port)
    port_side = "sport" if side == "src" else "dport"
    terms = [_term(side, port_side, net, lo, hi)
             for nets, ports in groups.items() for lo, hi in _port_ranges(ports) for net in nets]
    if len(terms) > SS_TERMS_MAX * SS_CALLS_MAX:
        # Too many: widen the addresses (one covering prefix per IP version), never the ports - a
        # port range that takes in the clients' own ephemeral ports would count client sockets as
        # server ones and other programs' connections too.
        terms = []
        for version in sorted({v for v, _ in by_port}):
            ips = [ip for (v, _), group in by_port.items() if v == version for ip in group]
            net = _covering(min(ips), max(ips))
            ports = [p for v, p in by_port if v == version]
            terms += [_term(side, port_side, net, lo, hi) for lo, hi in _port_ranges(ports)]
    per_call = max(SS_TERMS_MAX, -(-len(terms) // SS_CALLS_MAX))  # still too many: longer filters, not more scans
    return [" or ".join(terms[i : i + per_call]) for i in range(0, len(terms), per_call)]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _prefixes(ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> tuple[Network, ...]:
    # One version per list: collapse_addresses' typing wants the one type, which the caller ensures.
    nets: list[Network] = list(ipaddress.collapse_addresses(cast(list[Any], ips)))
    return tuple(nets) if len(nets) <= SS_TERMS_MAX else (_covering(min(ips), max(ips)),)


def _port_ranges(ports: list[int]) -> list[tuple[int, int]]:
    """Sorted ports as runs of consecutive ones: [7070, 7071, 7072, 9000] -> [(7070, 7072), (9000, 9000)]."""
    out: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if out and port == out[-1][1] + 1:
            out[-1] = (out[-1][0], port)
        else:
            out.append((port, port))
    return out


def _term(side: str, port_side: str, net: Network, lo: int, hi: int) -> str:
    if lo == hi:
        return f"{side} {_ss_prefix(net)}:{lo}"
    return f"( {side} {_ss_prefix(net)} and {port_side} >= :{lo} and {port_side} <= :{hi} )"


def _covering(lo: ipaddress.IPv4Address | ipaddress.IPv6Address,
              hi: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(lo)
    while hi not in net:
        net = net.supernet()
    return net


def _ss_prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    text = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return f"[{text}]" if net.version == 6 else text


def count_tcp(endpoints: Iterable[tuple[str, int]], side: str, state: str = "established") -> int | None:
    """TCP sockets in `state` (ss's names: 'established', 'close-wait', 'syn-recv') whose local
    ('src') or remote ('dst') end is one of `endpoints`, counted by the kernel's own socket table
    via `ss` (iproute2). With 'src' on a run's targets that is the server side, accept queues
    included (a connection the kernel completed but the server has not accept()ed yet is
    ESTABLISHED); with 'dst', the client side. None when `ss` is missing or fails.

    ss filters in the kernel (inet_diag bytecode) and we only count lines, so a million sockets
    take a few seconds. Addresses matter, not only ports: other runs on the same port (7070 is
    everyone's default) use other loopback addresses and must not be counted.
    """
    return start_count(endpoints, side, state)(never)


def never() -> bool:
    """A `stopped` for readings nobody interrupts."""
    return False


def start_count(endpoints: Iterable[tuple[str, int]], side: str,
                state: str = "established") -> Callable[[Callable[[], bool]], int | None]:
    """count_tcp started now, read when the returned function is called: several readings then
    run side by side (a run's readings sit between its ramp and its traffic; each ss is a process
    start and a table scan) and of one moment. The answer waits for the `ss` processes unless its
    `stopped` turns true first (Ctrl-C: at millions of sockets a scan takes seconds): then they
    are killed and the answer is None."""
    procs = [_spawn(["ss", "-Htn", "state", state, f"( {expr} )"]) for expr in endpoint_filters(endpoints, side)]
    answer: list[int | None] = []

    def total(stopped: Callable[[], bool]) -> int | None:
        if not answer:  # read once: a second call has the answer, not a closed pipe
            counts = [_count_lines(proc, stopped) for proc in procs]  # every one read: none left running
            answer.append(None if not counts or None in counts else sum(c for c in counts if c is not None))
        return answer[0]

    return total


def _spawn(argv: list[str]) -> subprocess.Popen[bytes] | None:
    # A session of its own: Ctrl-C on the terminal is the run's to handle, not a reason for the
    # reading to fail half-way (the run decides whether to use it).
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def _output(proc: subprocess.Popen[bytes], stopped: Callable[[], bool]) -> Iterator[bytes]:
    """proc's stdout as it comes; if stopped() turns true first, proc is killed (its exit status
    then says the reading is incomplete)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while not stopped():
        if select.select([fd], [], [], 0.1)[0]:
            if not (chunk := os.read(fd, 1 << 20)):
                return
            yield chunk
    proc.kill()


def _count_lines(proc: subprocess.Popen[bytes] | None, stopped: Callable[[], bool]) -> int | None:
    if proc is None:
        return None
    assert proc.stdout is not None
    count = sum(chunk.count(b"\n") for chunk in _output(proc, stopped))
    proc.stdout.close()
    return count if proc.wait() == 0 else None


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket serving one of a run's targets, per `ss -ltm`."""

    local: str
    queued: int  # its accept queue now: connections the kernel completed, not yet accept()ed
    backlog: int  # the accept queue's size: min(listen()'s backlog, net.core.somaxconn)
    # Packets it dropped in its life, for any reason (skmem d: sk_drops; a full accept queue is one,
    # a full SYN queue or memory others): compare with ListenDrops, not ListenOverflows.
    drops: int


def target_listeners(endpoints: Iterable[tuple[str, int]]) -> list[Listener] | None:
    """The listening sockets that serve `endpoints`: bound to one of them or to the wildcard
    address on their port (nginx's `listen 80`). None when `ss` is missing or fails.

    Unlike the host-wide ListenOverflows counter, their drop counts belong to the target alone."""
    return start_listeners(endpoints)(never)


def start_listeners(endpoints: Iterable[tuple[str, int]]) -> Callable[[Callable[[], bool]], list[Listener] | None]:
    """target_listeners started now, read when the returned function is called (see start_count)."""
    wanted = {(ipaddress.ip_address(a), p) for a, p in endpoints}
    ranges = _port_ranges([p for _, p in wanted])
    if len(ranges) > SS_TERMS_MAX:  # (listening sockets are few: a wider net costs nothing; _serves picks)
        ranges = [(ranges[0][0], ranges[-1][1])]
    expr = " or ".join(f"sport = :{lo}" if lo == hi else f"( sport >= :{lo} and sport <= :{hi} )" for lo, hi in ranges)
    proc = _spawn(["ss", "-Hltnm", f"( {expr} )"]) if ranges else None

    answer: list[list[Listener] | None] = []

    def listeners(stopped: Callable[[], bool]) -> list[Listener] | None:
        if not answer:  # read once (see start_count)
            answer.append(_listeners_of(proc, wanted, stopped))
        return answer[0]

    return listeners


def _listeners_of(proc: subprocess.Popen[bytes] | None,
                  wanted: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
                  stopped: Callable[[], bool]) -> list[Listener] | None:
    if proc is None:
        return None
    assert proc.stdout is not None
    out = b"".join(_output(proc, stopped))
    proc.stdout.close()
    if proc.wait() != 0:
        return None
    return [ln for ln in parse_listeners(out.decode()) if _serves(ln.local, wanted)]


def parse_listeners(text: str) -> list[Listener]:
    """`ss -Hltnm` output: a 'LISTEN queued backlog local peer' line, then its '\tskmem:(...)' line."""
    out: list[Listener] = []
    head: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(("\t", " ")) and head is not None:
            drops = re.search(r"\bd(\d+)", line)
            out.append(Listener(head[3], int(head[1]), int(head[2]), int(drops.group(1)) if drops else 0))
            head = None
        elif line.split()[:1] == ["LISTEN"] and len(line.split()) >= 5:
            head = line.split()
    return out


def _serves(local: str, wanted: set[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]) -> bool:
    address, _, port_text = local.rpartition(":")
    address = address.strip("[]").split("%")[0]  # [::1]:80, *:80, 0.0.0.0%lo:80
    try:
        port = int(port_text)
        ip = ipaddress.ip_address("0.0.0.0" if address == "*" else address)
    except ValueError:
        return False
    if ip.is_unspecified:  # 0.0.0.0:80, [::]:80 (dual-stack unless v6only) serve every address
        return any(p == port for _, p in wanted)
    return (ip, port) in wanted


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
    """TcpExtListenOverflows: SYNs dropped because an accept queue was full - any process's
    (host-wide, cumulative): target_listeners() tells the target's own drops apart."""
    return tcp_ext("ListenOverflows")


def listen_drops() -> int | None:
    """TcpExtListenDrops: packets any listening socket dropped, for any reason (a full accept
    queue, a full SYN queue, memory...), host-wide and cumulative. The kernel bumps it where it
    bumps the listener's own sk_drops (tcp_listendrop), so it is the host-wide figure that a
    listener's drop count (Listener.drops) compares with - not ListenOverflows, a subset."""
    return tcp_ext("ListenDrops")


def tcp_ext(name: str) -> int | None:
    """One TcpExt counter of /proc/net/netstat (host-wide, cumulative); None if not offered."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            names, nums = head.split()[1:], values.split()[1:]
            if name in names:
                return int(nums[names.index(name)])
    return None
