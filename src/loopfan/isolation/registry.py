"""Active tags: one small JSON record per running `loopfan tag`, so others can list and capture them.

Rules of this file: a record is written when a tag is live and removed when it ends; records whose
loopfan process is gone are stale and ignored (and deleted when seen). `TagRecord` is a frozen
value; the directory is the only shared state. Also here: choosing a free tag address (pure, given
the addresses in use) and reading which loopback addresses sockets use now (/proc/net).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
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


def registry_dir() -> Path:
    """/run/loopfan/tags for root, else the per-user runtime directory (or a per-user temp one)."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path("/run/loopfan/tags")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.access(runtime, os.W_OK):
        return Path(runtime) / "loopfan" / "tags"
    return Path(tempfile.gettempdir()) / f"loopfan-{os.geteuid()}" / "tags"


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
        if not pid_alive(record.loopfan_pid):
            remove_record(path)
            continue
        out.append(record)
    return sorted(out, key=lambda r: r.started)


# ---------------------------------------------------------------------------------------------
# Picking a free address


def parse_proc_net_addresses(text: str) -> set[int]:
    """Local and remote IPv4 addresses in /proc/net/tcp or /proc/net/udp text.

    Addresses there are the kernel's u32 printed in hex in host byte order ("0100007F" is
    127.0.0.1 on little-endian machines).
    """
    out: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        for field in fields[1:3]:
            hex_addr = field.split(":")[0]
            if len(hex_addr) == 8:
                out.add(int.from_bytes(bytes.fromhex(hex_addr)[::-1] if _LITTLE else bytes.fromhex(hex_addr), "big"))
    return out


_LITTLE = __import__("sys").byteorder == "little"


def addresses_in_use() -> set[int]:
    used: set[int] = set()
    for name in ("tcp", "udp"):
        with contextlib.suppress(OSError):
            used |= parse_proc_net_addresses(Path(f"/proc/net/{name}").read_text())
    return used


def pick_free_address(used: Iterable[int], pool: AddressPool = DEFAULT_SOURCE_POOL) -> str:
    """The lowest address of the pool that nothing uses (pure). Ascending, not spread: a tag is
    typed into filters by people, and 127.0.0.3 reads better than 127.128.0.1."""
    taken = set(used)
    for ip in pool.ascending():
        if ip not in taken:
            return ip_to_str(ip)
    raise ValueError("every address of the pool is in use")
