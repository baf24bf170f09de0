"""Noticing a capture tool that can no longer write its file but goes on capturing (pure).

Rules of this file: no I/O - the facts (stderr lines, file sizes, counts, free bytes) are given;
`_External` in capture.py gathers them. Why this is needed:

- dumpcap exits when a write fails (a full disk) and says why; loopfan reports that.
- tcpdump (4.99 with libpcap 1.10, checked on a 300 KiB tmpfs) says nothing and keeps running:
  libpcap's pcap_dump() returns at once once the file's stdio stream has its error flag set (so
  not even a failed write() is left to see in /proc/PID/io), and tcpdump ignores the result of
  pcap_dump_flush(). Its packets are counted and thrown away.
- What tcpdump does show: on SIGUSR1 (Linux; SIGINFO on the BSDs and macOS) it prints
  "tcpdump: N packets captured, M packets received by filter, K packets dropped by kernel", and
  with -U every packet counted there was written and flushed before the line was printed (its
  `infodelay` holds the line back while a packet is being dumped). So two such lines with more
  packets in the second and a file that did not grow in between prove that writes are failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What a tool writes to stderr when writing its file fails, in the words of libpcap/tcpdump
# builds that do check ("pcap_dump_flush failed", "write error"), of strerror (ENOSPC, EDQUOT,
# EFBIG, EIO) and of dumpcap ("no space left on the file system").
_WRITE_ERROR = re.compile(
    r"pcap_dump|write error|error (while )?writing|could not be written|not all the packets could be written|"
    r"no space left|disk quota exceeded|file too large|input/output error",
    re.IGNORECASE,
)

# "tcpdump: 306 packets captured, 664 packets received by filter, ..." (SIGUSR1), or the closing
# "306 packets captured" line.
_CAPTURED = re.compile(r"^(?:\S+: )?(\d+) packets? captured(?:,|$)")

# The fix, the same for every write failure of a capture file (loopfan cannot free the space).
WRITE_FIX = "free space on that file system, or capture into a file on another one"


def is_write_error(line: str) -> bool:
    """Whether a tool's stderr line says that writing its capture file failed."""
    return bool(_WRITE_ERROR.search(line))


def captured_count(line: str) -> int | None:
    """The packets tcpdump counts as captured (= handed to its file), from its statistics line."""
    found = _CAPTURED.match(line.strip())
    return int(found.group(1)) if found else None


def is_count_reply(line: str) -> bool:
    """tcpdump's one-line answer to SIGUSR1 (not its closing statistics, which are three lines)."""
    return captured_count(line) is not None and ", " in line


@dataclass(frozen=True, slots=True)
class CountCheck:
    """One question to the tool: the file's size read before asking, the count it answered, and
    the file's size read once the answer was in."""

    size_before_bytes: int
    captured: int
    size_after_bytes: int


def packets_unsaved(earlier: CountCheck, later: CountCheck) -> int:
    """Packets counted between the two checks that never reached the file (0: none proven).

    Every packet counted after `earlier`'s answer was flushed before `later`'s answer, so with
    healthy writes the file read after `later` is larger than it was before `earlier` was asked.
    Reading the sizes on both sides of each question is what makes this race-free: a packet
    written just before an answer but counted in it cannot be taken for a lost one."""
    more = later.captured - earlier.captured
    return more if more > 0 and later.size_after_bytes <= earlier.size_before_bytes else 0


def signal_caught(proc_status: str, signum: int) -> bool:
    """Whether a process catches `signum`, from /proc/PID/status (its SigCgt mask). Asking a
    tool that does not (an old build, before its handlers are set) would kill it."""
    for line in proc_status.splitlines():
        if line.startswith("SigCgt:"):
            try:
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
            except (IndexError, ValueError):
                return False
    return False


# Below this much free space the file system is called full: libpcap gives up at the first failed
# write and never tries again, so the space may have grown a little since (a record is at most
# 64 KiB on lo).
_FULL_BELOW_BYTES = 1 << 20


def unsaved_cause(free_bytes: int | None) -> str:
    """Why the writes failed, as far as the file system tells (the tool does not say)."""
    if free_bytes is None:
        return "its writes fail, it does not say why"
    if free_bytes < _FULL_BELOW_BYTES:
        return f"no space left on its file system ({free_bytes:,} bytes free)"
    return (f"its writes fail, it does not say why; the file system has {free_bytes:,} bytes free "
            "(a quota, or an I/O error?)")


def unsaved_message(tool: str, path: str, *, cause: str = "", lost: int = 0, said: str = "",
                    stopped: bool = True) -> str:
    """The one line for a tool that could not save what it captured (the fix is added by the
    session): in its own words when it `said` so, else the `cause` found and the packets `lost`.
    `stopped`: loopfan stopped it for that (else it was found out only when the capture ended)."""
    end = ", so loopfan stopped it" if stopped else ""
    if said:
        return f"{tool} could not write {path} (it said: {said}){end}"
    what = f"at least {lost:,} packets went unsaved" if lost else "what it captured went unsaved"
    return f"{tool} could not write {path}: {cause}; it went on capturing without a word ({what}){end}"
