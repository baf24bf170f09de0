"""Host facts: what this machine allows, read once and passed to the pure core as a value.

Rules of this file: the `parse_*` functions are pure (text in, values out) and are tested on
recorded outputs of real machines (tests/fixtures). `read_host_facts()` is the only I/O: it reads
/proc and /sys on Linux, and runs `sysctl`/`ifconfig`/`launchctl` on macOS through a command
runner that tests replace. A fact that cannot be read is None, never a guess.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# RLIM_INFINITY as Python reports it.
UNLIMITED = resource.RLIM_INFINITY

CommandRunner = Callable[[list[str]], str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Conntrack:
    """netfilter connection tracking. It costs loopback connections only while some rule needs it."""

    present: bool = False
    count: int | None = None
    max: int | None = None
    # True when entries exist for loopback flows right now: then every connection takes a slot.
    tracking_loopback: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """Everything the planner and doctor need to know about the host. Build with read_host_facts()."""

    platform: str = "linux"  # "linux", "macos", "freebsd", "other"
    kernel: str = ""
    cpu_count: int = 1
    # Ports: the ephemeral range connect() picks from, inclusive.
    port_range: tuple[int, int] = (32768, 60999)
    # IP_BIND_ADDRESS_NO_PORT (Linux >= 4.2): ports are then budgeted per 4-tuple group.
    bind_no_port: bool = True
    # Open files.
    nofile_soft: int = 1024
    nofile_hard: int = 1024
    nofile_hard_raisable: bool = False  # can this process raise its hard limit (root + CAP_SYS_RESOURCE)?
    file_max: int | None = None
    files_open: int | None = None
    nr_open: int | None = None
    maxfiles: int | None = None  # macOS kern.maxfiles
    maxfilesperproc: int | None = None  # macOS kern.maxfilesperproc
    launchctl_maxfiles: tuple[int, int] | None = None  # macOS `launchctl limit maxfiles`
    # Memory.
    mem_total_bytes: int | None = None
    mem_available_bytes: int | None = None
    page_size: int = 4096
    # TCP.
    somaxconn: int | None = None
    tcp_max_syn_backlog: int | None = None
    tcp_tw_reuse: int | None = None
    tcp_max_tw_buckets: int | None = None
    tcp_mem_pages: tuple[int, int, int] | None = None
    conntrack: Conntrack = field(default_factory=Conntrack)
    # Loopback addressing: on Linux the `local 127.0.0.0/8 dev lo` route makes all of 127/8 usable.
    loopback_route_all: bool = True
    # Addresses configured on the loopback interface (macOS lo0; on Linux what `ip addr` shows).
    loopback_addresses: frozenset[str] = frozenset({"127.0.0.1"})
    is_root: bool = False

    @property
    def port_count(self) -> int:
        lo, hi = self.port_range
        return hi - lo + 1

    @property
    def nofile_usable(self) -> int:
        """The open-file limit a worker can reach: the soft limit raised to the hard one."""
        hard = self.nofile_hard
        if hard == UNLIMITED or hard < 0:
            hard = self.nr_open or self.maxfilesperproc or 1_048_576
        return hard


# ---------------------------------------------------------------------------------------------
# Pure parsers


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def parse_port_range(text: str) -> tuple[int, int] | None:
    """/proc/sys/net/ipv4/ip_local_port_range ('32768\t60999') -> (32768, 60999); None if garbled."""
    parts = text.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    lo, hi = int(parts[0]), int(parts[1])
    return (lo, hi) if 0 < lo <= hi <= 65535 else None


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo into bytes by key."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            value = int(parts[0])
            out[key.strip()] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def parse_file_nr(text: str) -> int | None:
    """/proc/sys/fs/file-nr: 'allocated  free  max'; open = allocated - free."""
    parts = text.split()
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]) - int(parts[1])


def parse_route_table_local(text: str) -> bool:
    """`ip route show table local` (or /proc/net/route-like text): is 127.0.0.0/8 local on lo?"""
    return any(re.match(r"^local 127\.0\.0\.0/8 dev lo\b", line.strip()) for line in text.splitlines())


def parse_sysctl_output(text: str) -> dict[str, str]:
    """`sysctl a b c` output on macOS/FreeBSD ('name: value') or Linux ('name = value')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([\w.\-]+)\s*[:=]\s*(.*?)\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def parse_ifconfig_inet(text: str) -> frozenset[str]:
    """IPv4 addresses from `ifconfig lo0` (macOS/BSD) output."""
    return frozenset(re.findall(r"^\s*inet (\d+\.\d+\.\d+\.\d+)\b", text, flags=re.M))


def parse_launchctl_limit(text: str) -> tuple[int, int] | None:
    """`launchctl limit maxfiles` -> (soft, hard); 'unlimited' becomes RLIM_INFINITY."""
    m = re.search(r"maxfiles\s+(\d+|unlimited)\s+(\d+|unlimited)\b", text)
    if not m:
        return None

    def num(s: str) -> int:
        return UNLIMITED if s == "unlimited" else int(s)

    return num(m.group(1)), num(m.group(2))


def parse_proc_net_addresses(text: str) -> frozenset[str]:
    """`ip -o -4 addr show dev lo` -> the inet addresses (Linux; informational)."""
    return frozenset(re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", text))


def macos_facts_from_outputs(
    *, sysctl: Mapping[str, str], ifconfig_lo0: str, launchctl: str, kernel: str = "Darwin", **base: object
) -> HostFacts:
    """Assemble HostFacts for macOS from recorded command outputs (pure; tests feed fixtures)."""
    first = parse_int(sysctl.get("net.inet.ip.portrange.first")) or 49152
    last = parse_int(sysctl.get("net.inet.ip.portrange.last")) or 65535
    mem = parse_int(sysctl.get("hw.memsize"))
    return HostFacts(
        platform="macos",
        kernel=kernel,
        port_range=(first, last),
        bind_no_port=False,
        maxfiles=parse_int(sysctl.get("kern.maxfiles")),
        maxfilesperproc=parse_int(sysctl.get("kern.maxfilesperproc")),
        file_max=parse_int(sysctl.get("kern.maxfiles")),
        files_open=parse_int(sysctl.get("kern.num_files")),
        somaxconn=parse_int(sysctl.get("kern.ipc.somaxconn")),
        mem_total_bytes=mem,
        # macOS has no MemAvailable; the total is an upper bound the planner treats as such.
        mem_available_bytes=mem,
        cpu_count=parse_int(sysctl.get("hw.ncpu")) or 1,
        launchctl_maxfiles=parse_launchctl_limit(launchctl),
        loopback_route_all=False,
        loopback_addresses=parse_ifconfig_inet(ifconfig_lo0),
        **base,  # type: ignore[arg-type]
    )


MACOS_SYSCTLS = (
    "net.inet.ip.portrange.first",
    "net.inet.ip.portrange.last",
    "kern.maxfiles",
    "kern.maxfilesperproc",
    "kern.num_files",
    "kern.ipc.somaxconn",
    "hw.memsize",
    "hw.ncpu",
)


# ---------------------------------------------------------------------------------------------
# I/O


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def run_command(argv: list[str]) -> str:
    """Default command runner: stdout of argv, '' when it is missing or fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _nofile_hard_raisable() -> bool:
    """Try to raise the hard fd limit by one and put it back: the only honest test of CAP_SYS_RESOURCE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == UNLIMITED:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard + 1))
    except (ValueError, OSError):
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return True


def _linux_conntrack() -> Conntrack:
    max_text = _read("/proc/sys/net/netfilter/nf_conntrack_max")
    if max_text is None:
        return Conntrack(present=False)
    tracking = False
    table = _read("/proc/net/nf_conntrack")
    if table is not None:
        tracking = "src=127." in table
    return Conntrack(
        present=True,
        count=parse_int(_read("/proc/sys/net/netfilter/nf_conntrack_count")),
        max=parse_int(max_text),
        tracking_loopback=tracking,
    )


def _read_linux(run: CommandRunner) -> HostFacts:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    mem = parse_meminfo(_read("/proc/meminfo") or "")
    tcp_mem = [int(x) for x in (_read("/proc/sys/net/ipv4/tcp_mem") or "").split()]
    route = run(["ip", "route", "show", "table", "local"])
    # Without `ip` we cannot see the route; Linux installs it on every boot, so assume it and
    # let the engine's bind errors say otherwise.
    route_all = parse_route_table_local(route) if route else True
    lo_addrs = parse_proc_net_addresses(run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]))
    return HostFacts(
        platform="linux",
        kernel=os.uname().release,
        cpu_count=os.cpu_count() or 1,
        port_range=parse_port_range(_read("/proc/sys/net/ipv4/ip_local_port_range") or "") or (32768, 60999),
        bind_no_port=hasattr(socket, "IP_BIND_ADDRESS_NO_PORT"),
        nofile_soft=soft,
        nofile_hard=hard,
        nofile_hard_raisable=_nofile_hard_raisable(),
        file_max=parse_int(_read("/proc/sys/fs/file-max")),
        files_open=parse_file_nr(_read("/proc/sys/fs/file-nr") or ""),
        nr_open=parse_int(_read("/proc/sys/fs/nr_open")),
        mem_total_bytes=mem.get("MemTotal"),
        mem_available_bytes=mem.get("MemAvailable"),
        page_size=os.sysconf("SC_PAGE_SIZE"),
        somaxconn=parse_int(_read("/proc/sys/net/core/somaxconn")),
        tcp_max_syn_backlog=parse_int(_read("/proc/sys/net/ipv4/tcp_max_syn_backlog")),
        tcp_tw_reuse=parse_int(_read("/proc/sys/net/ipv4/tcp_tw_reuse")),
        tcp_max_tw_buckets=parse_int(_read("/proc/sys/net/ipv4/tcp_max_tw_buckets")),
        tcp_mem_pages=(tcp_mem[0], tcp_mem[1], tcp_mem[2]) if len(tcp_mem) == 3 else None,
        conntrack=_linux_conntrack(),
        loopback_route_all=route_all,
        loopback_addresses=lo_addrs or frozenset({"127.0.0.1"}),
        is_root=os.geteuid() == 0,
    )


def _read_macos(run: CommandRunner) -> HostFacts:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sysctl = parse_sysctl_output(run(["sysctl", *MACOS_SYSCTLS]))
    return macos_facts_from_outputs(
        sysctl=sysctl,
        ifconfig_lo0=run(["ifconfig", "lo0"]),
        launchctl=run(["launchctl", "limit", "maxfiles"]),
        kernel=os.uname().release,
        nofile_soft=soft,
        nofile_hard=hard,
        nofile_hard_raisable=_nofile_hard_raisable(),
        is_root=os.geteuid() == 0,
    )


def read_host_facts(run: CommandRunner = run_command) -> HostFacts:
    """Read this host's facts (I/O). Unknown platforms get Linux-like defaults with what can be read."""
    if sys.platform.startswith("linux"):
        return _read_linux(run)
    if sys.platform == "darwin":
        return _read_macos(run)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plat = "freebsd" if sys.platform.startswith("freebsd") else "other"
    return HostFacts(
        platform=plat,
        nofile_soft=soft,
        nofile_hard=hard,
        bind_no_port=False,
        loopback_route_all=False,
        cpu_count=os.cpu_count() or 1,
    )


def raise_nofile_soft_limit(ceiling: int | None = None) -> int:
    """Raise this process's soft fd limit as far as allowed; return the new soft limit.

    Workers inherit it at fork. With a finite hard limit the soft one goes up to it. With an
    unlimited hard limit (common on macOS, whose soft default is 256) the soft limit cannot be
    "unlimited": it goes to `ceiling` (kern.maxfilesperproc / fs.nr_open, what the planner
    assumed), halving until the kernel accepts it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != UNLIMITED else (ceiling or 1_048_576)
    while target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            target //= 2
    return soft


def facts_for_workers(run: CommandRunner = run_command) -> HostFacts:
    """Raise the soft fd limit (workers inherit it), then the host facts as they now stand.

    If the soft limit could not reach what the planner would assume (the hard limit, or
    maxfilesperproc / nr_open when the hard limit is unlimited), the facts say the limit reached,
    so no worker is planned past what it can really open.
    """
    before = read_host_facts(run)
    reached = raise_nofile_soft_limit(before.nofile_usable)
    facts = read_host_facts(run)
    if reached < facts.nofile_usable:
        facts = dataclasses.replace(facts, nofile_soft=reached, nofile_hard=reached)
    return facts


def taken_endpoints(endpoints: Iterable[tuple[str, int]]) -> frozenset[tuple[str, int]]:
    """The (address, port)s another socket listens on, probed by a bind() made as the built-in server
    makes it: SO_REUSEADDR, so a listener (or a wildcard one) on it fails with EADDRINUSE and
    connections in TIME_WAIT do not; no SO_REUSEPORT, with which a listener of another run that set
    it would take our bind and share its connections with us. Any other error is not "taken": the
    server's own bind says it then. Nothing listens: the socket is closed at once."""
    taken = set()
    for address, port in endpoints:
        try:  # (a host without IPv6 refuses the socket itself: not "taken", the server's bind says it)
            probe = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    taken.add((address, port))
    return frozenset(taken)
