"""Failure causes: an errno (and where it happened) -> a stable name, its meaning and its fix.

Rules of this file: per-connection failures are data. Workers count them under these names; the
report explains each with its meaning and the command or change that fixes it. EADDRNOTAVAIL has
two meanings depending on the call (mechanics.md), so the phase is part of the key.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cause:
    name: str
    meaning: str
    fix: str


CAUSES: dict[str, Cause] = {
    c.name: c
    for c in (
        Cause(
            "EADDRNOTAVAIL@connect",
            "a (source, destination) group ran out of ephemeral ports",
            "spread over more source addresses (--sources) or target endpoints; loopfan plans this by itself "
            "unless the pool was narrowed",
        ),
        Cause(
            "EADDRNOTAVAIL@bind",
            "the source address is not local (e.g. a missing lo0 alias on macOS)",
            "loopfan alias add POOL (macOS/BSD), or check `ip route show table local` has 127.0.0.0/8",
        ),
        Cause(
            "EADDRINUSE",
            "no free port for bind(ip, 0) (ports reserved without IP_BIND_ADDRESS_NO_PORT)",
            "more source addresses, or a kernel with IP_BIND_ADDRESS_NO_PORT (Linux >= 4.2)",
        ),
        Cause("EMFILE", "this process hit its open-file limit", "a bug in loopfan's sharding: please report it"),
        Cause("ENFILE", "the system-wide open-file limit (fs.file-max) is reached", "loopfan doctor -c N --fix"),
        Cause(
            "ECONNREFUSED",
            "nothing listens on the target endpoint (or the server closed its listener)",
            "start the server, or check the target address and port",
        ),
        Cause(
            "ECONNRESET",
            "the server reset the connection (often: its accept queue or its own fd limit is full)",
            "check the server's open-file limit (ulimit -n) and its listen backlog",
        ),
        Cause(
            "ETIMEDOUT",
            "the connection was not established within the connect timeout (SYNs dropped: the server's accept "
            "queue is full - it accepts too slowly, or has stopped accepting at its open-file limit)",
            "check the server's open-file limit and its failures (`loopfan serve` prints them), raise "
            "somaxconn/tcp_max_syn_backlog (loopfan doctor --fix), pace with --connect-rate, or a longer "
            "--connect-timeout",
        ),
        Cause("ENOBUFS", "the kernel is out of socket buffer memory", "fewer connections, or more memory"),
        Cause("ENOMEM", "the kernel is out of memory", "fewer connections, or more memory"),
        Cause(
            "closed-by-peer",
            "the server closed an established connection while loopfan held it",
            "look at the server's logs: it may have stopped, hit its own connection or open-file limit "
            "(nginx worker_connections, ulimit -n), timed out idle connections, or limit connections per client",
        ),
        Cause("worker-died", "a loopfan worker process died; its connections were lost", "see the worker error"),
    )
}


def cause_for(err: int, phase: str) -> str:
    """The counted name for an errno raised by `phase` ('bind', 'connect', 'socket', 'hold')."""
    name = errno.errorcode.get(err, f"errno{err}")
    if name == "EADDRNOTAVAIL":
        return f"EADDRNOTAVAIL@{'bind' if phase == 'bind' else 'connect'}"
    return name


# Any errno can end a connection; cause_for names it by its symbol, or errnoN where Python has none.
# (EADDRNOTAVAIL is never counted bare, always with where it happened: EADDRNOTAVAIL@connect, @bind.)
ERRNO_CAUSES = frozenset(errno.errorcode.values()) - {"EADDRNOTAVAIL"}


def is_errno_cause(name: str) -> bool:
    """Whether `name` is an errno as cause_for counts it ('EHOSTUNREACH', 'errno200'; not 'EADDRNOTAVAIL')."""
    return name in ERRNO_CAUSES or re.fullmatch(r"errno\d+", name) is not None


def explain(name: str) -> Cause:
    return CAUSES.get(name, Cause(name, "an unexpected error", "please report it with the JSON report"))
