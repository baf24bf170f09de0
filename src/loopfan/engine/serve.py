"""The built-in server as a long-lived object: `loopfan serve`, and `with loopfan.Server(...)` in tests.

Rules of this file: one BuiltinServer owns its fleet of server workers from start() to stop();
stop() is idempotent and always leaves no worker behind.
"""

from __future__ import annotations

import dataclasses
import math
from types import TracebackType

from loopfan import costs
from loopfan.engine import protocol as P
from loopfan.engine.fleet import Fleet
from loopfan.engine.runner import Totals
from loopfan.engine.traffic_server import server_main_for
from loopfan.errors import ServerStartError
from loopfan.hostfacts import HostFacts, read_host_facts
from loopfan.planner import ServerShard
from loopfan.pools import Endpoint

# A shared endpoint's connections are spread by the kernel's hash of each 4-tuple, not exactly
# evenly: its copies are planned this much below a process's limit (100,000 connections over six
# copies vary by about +-0.3 %).
REUSEPORT_MARGIN = 0.9


def process_capacity(facts: HostFacts, max_per_process: int | None = None) -> int:
    """How many connections one server process is planned to hold: its open-file limit less headroom."""
    per_process = max(1, facts.nofile_usable - costs.FD_HEADROOM_PER_PROCESS)
    return min(per_process, max_per_process) if max_per_process else per_process


def shard_endpoints(
    endpoints: tuple[Endpoint, ...], capacity: int, facts: HostFacts, max_per_process: int | None = None
) -> tuple[ServerShard, ...]:
    """Spread listen endpoints over enough processes to hold `capacity` connections, expected spread
    evenly over the endpoints (as `loopfan run` spreads them) (pure).

    No process is planned more than its open-file limit allows: each gets the same number of
    endpoints, give or take one, and the process count is chosen so that even the fuller ones fit
    (QA: 8 endpoints dealt round-robin to 6 processes gave two of them 25,000 connections against a
    20,000 limit: EMFILE). An endpoint with more load than one process holds is listened on by
    several processes with SO_REUSEPORT, and the kernel spreads its connections over them."""
    per_process = process_capacity(facts, max_per_process)
    n = len(endpoints)
    if capacity > per_process * n:  # an endpoint has more load than a process holds
        copies = math.ceil(capacity / n / (per_process * REUSEPORT_MARGIN))
        share = math.ceil(capacity / (n * copies))
        return tuple(ServerShard(i, (ep,), share)
                     for i, ep in enumerate(ep for ep in endpoints for _ in range(copies)))
    # Endpoints one process can take: k * capacity / n <= per_process (in integers: exact at the edge).
    fit = max(1, per_process * n // capacity) if capacity else n
    processes = math.ceil(n / fit)
    buckets: list[list[Endpoint]] = [[] for _ in range(processes)]
    for i, ep in enumerate(endpoints):
        buckets[i % processes].append(ep)
    return tuple(ServerShard(i, tuple(b), -(-len(b) * capacity // n)) for i, b in enumerate(buckets))


def shares_endpoints(shards: tuple[ServerShard, ...]) -> bool:
    """Whether some endpoint is listened on by more than one process (SO_REUSEPORT)."""
    listen = [e for s in shards for e in s.listen]
    return len(set(listen)) < len(listen)


class BuiltinServer:
    """loopfan's multi-address server in worker processes. Use as a context manager."""

    def __init__(self, shards: tuple[ServerShard, ...], config: P.ServerConfig | None = None) -> None:
        self.shards = shards
        # SO_REUSEPORT only where shards share an endpoint: elsewhere a second server on the same
        # endpoint must fail to listen, not silently take half of its connections.
        self.config = dataclasses.replace(config or P.ServerConfig(), reuse_port=shares_endpoints(shards))
        self.fleet = Fleet(on_latency=lambda _lat: None)
        self._started = False

    @classmethod
    def on(
        cls, endpoints: tuple[Endpoint, ...], *, capacity: int = 19_000, mode: str = "hold",
        max_per_process: int | None = None,
    ) -> BuiltinServer:
        shards = shard_endpoints(endpoints, capacity, read_host_facts(), max_per_process)
        return cls(shards, P.ServerConfig(mode=mode))

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(dict.fromkeys(e for s in self.shards for e in s.listen))  # (shared ones once)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.fleet.workers]

    def start(self, timeout_s: float = 15.0) -> BuiltinServer:
        for shard in self.shards:
            self.fleet.spawn("server", shard.index, server_main_for(self.config), shard, self.config)
        self._started = True
        ok = self.fleet.wait_until(lambda: all(w.state != "starting" for w in self.fleet.workers), timeout_s)
        errors = [w.error for w in self.fleet.workers if w.state in ("error", "dead")]
        if errors or not ok:
            self.stop()
            raise ServerStartError(f"the built-in server could not start: {errors[0] if errors else 'timed out'}")
        return self

    def poll(self, timeout_s: float = 0.0) -> Totals:
        """Read the workers' latest counts (waiting up to timeout_s for news)."""
        self.fleet.pump(timeout_s)
        return Totals.of(self.fleet.workers)

    def stats(self) -> Totals:
        return self.poll(0.0)

    @property
    def failed_workers(self) -> list[str]:
        dead = [w for w in self.fleet.workers if w.state in ("dead", "error")]
        return [f"server #{w.index} (pid {w.pid}): {w.error}" for w in dead]

    def stop(self) -> Totals:
        if self._started:
            self.fleet.send(self.fleet.workers, P.STOP)
            self.fleet.wait_until(lambda: all(w.finished for w in self.fleet.workers), 10.0)
            totals = Totals.of(self.fleet.workers)
            self.fleet.shutdown()
            self._started = False
            return totals
        return Totals.of(self.fleet.workers)

    def __enter__(self) -> BuiltinServer:
        return self.start() if not self._started else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
