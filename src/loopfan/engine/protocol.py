"""What the parent and the worker processes say to each other over their pipe, and the config values.

Rules of this file: messages are small tuples of builtins (cheap to pickle); config values are
frozen dataclasses copied to each worker at fork time. Counters are cumulative per worker, so a
lost message loses nothing but freshness; latency samples travel as deltas {microseconds: count}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# parent -> worker
CLOSE = "close"  # close every connection, report, then exit
STOP = "stop"  # exit now (servers)
GO = "go"  # client: start connecting (the parent staggers workers; see RunConfig.ramp_concurrency)

# worker -> parent: (kind, payload)
READY = "ready"  # server: listening; payload {"listen": [...]}
STATS = "stats"  # payload: Snapshot dict
CONNECTED = "connected"  # client: every planned connect resolved (established or failed)
DONE = "done"  # final stats sent, exiting
ERROR = "error"  # a run-level failure inside the worker: payload str

Message = tuple[str, Any]

# Failed connections whose 4-tuple each worker reports, so they can be found in a capture.
FAILED_SAMPLES_PER_WORKER = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    connect_timeout_s: float = 10.0
    connect_rate_per_s: float = 0.0  # this worker's share; 0 = as fast as it goes
    # Connects in flight (sent, not yet established) per worker: bounds the SYN burst a listener
    # sees, so its accept queue does not overflow (overflow = dropped SYNs = 1-3 s stalls).
    max_pending: int = 2048
    # Wait for the parent's GO before connecting (set by the runner when it staggers the ramp).
    gated: bool = False
    report_interval_s: float = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    mode: str = "hold"  # hold | echo | discard
    backlog: int = 65535  # the kernel caps it at net.core.somaxconn
    accept_coalesce_s: float = 0.002  # hold mode: pause after an accept burst (see server.py)
    report_interval_s: float = 0.25
    reuse_port: bool = False  # SO_REUSEPORT: endpoints shared by several processes (engine/serve.py)


@dataclass(slots=True)
class Snapshot:
    """Cumulative counters of one worker (mutable inside the worker; sent as a dict)."""

    attempted: int = 0
    established: int = 0
    open: int = 0
    peak_open: int = 0
    closed: int = 0  # closed by us
    peer_closed: int = 0  # server side: the client closed (normal at the end of a run)
    failed: dict[str, int] = field(default_factory=dict)
    first_established_s: float | None = None
    last_established_s: float | None = None
    connected_s: float | None = None  # when every planned connect had resolved
    bytes_in: int = 0
    bytes_out: int = 0
    # The first failures' 4-tuples: (cause, source, source port, destination, destination port).
    failed_samples: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    # Failures per source address: an address whose groups ran out of ports stands out.
    failed_by_source: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "established": self.established,
            "open": self.open,
            "peak_open": self.peak_open,
            "closed": self.closed,
            "peer_closed": self.peer_closed,
            "failed": dict(self.failed),
            "first_established_s": self.first_established_s,
            "last_established_s": self.last_established_s,
            "connected_s": self.connected_s,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "failed_samples": list(self.failed_samples),
            "failed_by_source": dict(self.failed_by_source),
        }
