"""Active tags: one small JSON record per running `loopfan tag`, so others can list and capture them.

Rules of this file: a record is written when a tag is live and removed when it ends; records whose
loopfan process is gone are stale and ignored (and deleted when seen). "Gone" is judged by pid and,
where the record has it, the process's start time: after a SIGKILL the pid may be reused by an
unrelated process, which must not keep the record alive (`record_live`). `TagRecord` is a frozen
value; the directory is the only shared state. The addresses of `loopfan run --isolate` are
recorded the same way, beside the tags (`Reservation`): not tags, but taken. Also here: choosing a
free tag address (pure, given the addresses in use) and reading which loopback addresses sockets
use now (/proc/net).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from loopfan.isolation.cgroup import pid_alive
from loopfan.pools import DEFAULT_SOURCE_POOL, AddressPool, ip_to_str


@dataclass(frozen=True, slots=True, kw_only=True)
class TagRecord:
    address: str
    label: str
    command: str  # the command line, shell-quoted
    pid: int  # the tagged command's pid
    loopfan_pid: int
    started: str  # ISO 8601, UTC
    cgroup: str
    # loopfan_pid's start (/proc/PID/stat starttime, clock ticks after boot); None where unknown
    # (macOS, records of earlier versions): then the pid alone says whether the record is live.
    loopfan_start_ticks: int | None = None


# Where the registry lives instead of /run/loopfan (and the per-user defaults): a test suite, or
# separate setups on one host, keep their tags and reservations apart with it.
RUNTIME_DIR_ENV = "LOOPFAN_RUNTIME_DIR"


def registry_dir() -> Path:
    """$LOOPFAN_RUNTIME_DIR/tags when set; else /run/loopfan/tags for root, else the per-user
    runtime directory (or a per-user temp one). The variable is for a private registry (a test
    suite, a sandbox): loopfan processes see each other's tags only when they share the directory."""
    explicit = os.environ.get(RUNTIME_DIR_ENV)
    if explicit:
        return Path(explicit) / "tags"
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path("/run/loopfan/tags")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK):
        return Path(runtime) / "loopfan" / "tags"
    return Path(tempfile.gettempdir()) / f"loopfan-{os.geteuid()}" / "tags"


@contextlib.contextmanager
def locked(directory: Path | None = None) -> Iterator[None]:
    """An exclusive flock on the registry: choosing a tag address and writing its record happen
    under it, so two `loopfan tag` started together cannot both take the same address."""
    directory = directory or registry_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_record(record: TagRecord, directory: Path | None = None) -> Path:
    directory = directory or registry_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.loopfan_pid}-{record.address}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    return path


def remove_record(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def active_tags(directory: Path | None = None) -> list[TagRecord]:
    """Live tags, oldest first; stale records (their loopfan is gone) are deleted on the way."""
    directory = directory or registry_dir()
    out: list[TagRecord] = []
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return out
    for path in files:
        try:
            record = TagRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if not owner_alive(record.loopfan_pid, record.loopfan_start_ticks):
            remove_record(path)
            continue
        out.append(record)
    return sorted(out, key=lambda r: r.started)


# ---------------------------------------------------------------------------------------------
# Is a record's loopfan still the process that wrote it?


def stat_start_ticks(stat_text: str) -> int | None:
    """Field 22 of /proc/PID/stat (starttime: clock ticks after boot at which the process started).
    Counted after the last ')': the command name (field 2) may hold spaces and parentheses."""
    fields = stat_text.rpartition(")")[2].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started, or None where /proc does not say (macOS; a pid that is gone)."""
    try:
        return stat_start_ticks(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def record_live(*, pid_running: bool, recorded_start: int | None, current_start: int | None) -> bool:
    """Whether a record's loopfan is the process that wrote it (pure). A running pid with another
    start time is a reused pid - the writer was killed (SIGKILL leaves its record) and an unrelated
    process got its number. Without both start times (an older record; no /proc) the pid decides."""
    if not pid_running:
        return False
    if recorded_start is None or current_start is None:
        return True
    return recorded_start == current_start


def owner_alive(pid: int, recorded_start: int | None) -> bool:
    running = pid_alive(pid)
    current = process_start_ticks(pid) if running and recorded_start is not None else None
    return record_live(pid_running=running, recorded_start=recorded_start, current_start=current)


# ---------------------------------------------------------------------------------------------
# Addresses a run holds for its isolated clients


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """`loopfan run --isolate K`: the K addresses its isolated clients own for the run's lifetime.
    Their sockets show in /proc/net only while connected - not before the clients connect, nor
    between a close and a reconnect - so without this a `loopfan tag` could take one meanwhile."""

    addresses: tuple[str, ...]
    loopfan_pid: int  # the run's parent: stale once it is gone (SIGKILL included), as a tag's record
    command: str
    started: str  # ISO 8601, UTC
    loopfan_start_ticks: int | None = None  # as TagRecord's


def reservations_dir(directory: Path | None = None) -> Path:
    """Beside the tags' records (so under the same lock), not among them: `tag --list` and
    `capture`'s default (every active tag) are about tags."""
    return (directory or registry_dir()).parent / "reserved"


def reserve(addresses: Iterable[str], command: str, directory: Path | None = None) -> Path:
    """Record addresses as this process's own until `remove_record(path)` or its end. Call under
    `locked()` with the choice of the addresses, as tags do."""
    folder = reservations_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    record = Reservation(addresses=tuple(addresses), loopfan_pid=os.getpid(), command=command,
                         started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         loopfan_start_ticks=process_start_ticks(os.getpid()))
    path = folder / f"{record.loopfan_pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    return path


def active_reservations(directory: Path | None = None) -> list[Reservation]:
    """Live reservations; stale ones (their run is gone, even by SIGKILL) are deleted on the way."""
    out: list[Reservation] = []
    try:
        files = sorted(reservations_dir(directory).glob("*.json"))
    except OSError:
        return out
    for path in files:
        try:
            data = json.loads(path.read_text())
            record = Reservation(**{**data, "addresses": tuple(data["addresses"])})
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if not owner_alive(record.loopfan_pid, record.loopfan_start_ticks):
            remove_record(path)
            continue
        out.append(record)
    return out


def reserved_addresses(directory: Path | None = None) -> frozenset[int]:
    return frozenset(int(ipaddress.IPv4Address(a)) for r in active_reservations(directory) for a in r.addresses)


# ---------------------------------------------------------------------------------------------
# Picking a free address


def parse_proc_net_addresses(text: str) -> set[int]:
    """Local and remote IPv4 addresses in /proc/net/{tcp,udp} text - and, in /proc/net/{tcp6,udp6}
    text, the v4-mapped ones (::ffff:127.x: a Java or dual-stack socket uses 127.x too).

    Addresses there are the kernel's u32 words printed in hex in host byte order ("0100007F" is
    127.0.0.1 on little-endian machines; IPv6 addresses are four such words).
    """
    out: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        for field in fields[1:3]:
            hex_addr = field.split(":")[0]
            if len(hex_addr) not in (8, 32):
                continue
            raw = b"".join(_word(hex_addr[i : i + 8]) for i in range(0, len(hex_addr), 8))
            if len(raw) == 4:
                out.add(int.from_bytes(raw, "big"))
            elif raw[:12] == _V4MAPPED_PREFIX:
                out.add(int.from_bytes(raw[12:], "big"))
    return out


def _word(hex_word: str) -> bytes:
    """One /proc/net word (host byte order) as network-order bytes."""
    raw = bytes.fromhex(hex_word)
    return raw[::-1] if _LITTLE else raw


_V4MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


_LITTLE = __import__("sys").byteorder == "little"


def addresses_in_use() -> set[int]:
    used: set[int] = set()
    for name in ("tcp", "udp", "tcp6", "udp6"):
        with contextlib.suppress(OSError):
            used |= parse_proc_net_addresses(Path(f"/proc/net/{name}").read_text())
    return used


def addresses_taken(tags: Iterable[TagRecord] | None = None) -> frozenset[int]:
    """What a new tag or isolated client must not use: addresses with sockets now, the active
    tags' (`tags`, when the caller read them under the registry's lock), and those running
    `loopfan run --isolate` hold for their isolated clients."""
    tagged = {int(ipaddress.IPv4Address(t.address)) for t in (active_tags() if tags is None else tags)}
    return frozenset(addresses_in_use() | tagged | reserved_addresses())


def pick_free_address(used: Iterable[int], pool: AddressPool = DEFAULT_SOURCE_POOL) -> str:
    """The lowest address of the pool that nothing uses (pure). Ascending, not spread: a tag is
    typed into filters by people, and 127.0.0.3 reads better than 127.128.0.1."""
    taken = set(used)
    for ip in pool.ascending():
        if ip not in taken:
            return ip_to_str(ip)
    raise ValueError("every address of the pool is in use")
