"""The built-in server as a long-lived object: `loopfan serve`, and `with loopfan.Server(...)` in tests.

Rules of this file: one BuiltinServer owns its fleet of server workers from start() to stop();
stop() is idempotent and always leaves no worker behind.
"""

from __future__ import annotations

import math
from types import TracebackType

from loopfan import costs
from loopfan.engine import protocol as P
from loopfan.engine.fleet import Fleet
from loopfan.engine.runner import Totals
from loopfan.engine.traffic_server import server_main_for
from loopfan.errors import HostError
from loopfan.hostfacts import HostFacts, read_host_facts
from loopfan.planner import ServerShard
from loopfan.pools import Endpoint


def shard_endpoints(
    endpoints: tuple[Endpoint, ...], capacity: int, facts: HostFacts, max_per_process: int | None = None
) -> tuple[ServerShard, ...]:
    """Spread listen endpoints over enough processes to hold `capacity` connections (pure)."""
    per_process = max(1, facts.nofile_usable - costs.FD_HEADROOM_PER_PROCESS)
    if max_per_process:
        per_process = min(per_process, max_per_process)
    processes = max(1, min(len(endpoints), math.ceil(capacity / per_process)))
    buckets: list[list[Endpoint]] = [[] for _ in range(processes)]
    for i, ep in enumerate(endpoints):
        buckets[i % processes].append(ep)
    share = capacity // processes
    return tuple(ServerShard(i, tuple(b), share) for i, b in enumerate(buckets))


class BuiltinServer:
    """loopfan's multi-address server in worker processes. Use as a context manager."""

    def __init__(self, shards: tuple[ServerShard, ...], config: P.ServerConfig | None = None) -> None:
        self.shards = shards
        self.config = config or P.ServerConfig()
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
        return tuple(e for s in self.shards for e in s.listen)

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
            raise HostError(f"the built-in server could not start: {errors[0] if errors else 'timed out'}")
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
