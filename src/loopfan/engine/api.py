"""The library API for users' own tests: hold N connections to their server inside a `with` block.

    import loopfan
    with loopfan.open_connections(50_000, "127.0.0.1:8080") as held:
        assert held.stats().open == 50_000
        ...                       # exercise the server while they are held
    # every connection closed, every worker gone

Rules of this file: the same plan, workers and ramp as `loopfan run`; no signal handlers (this
may run in any thread of the user's program); the context manager always stops every worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loopfan.engine import protocol as P
from loopfan.engine.client import client_main
from loopfan.engine.fleet import Fleet
from loopfan.engine.ramp import Stagger, client_config_for, ramp_concurrency
from loopfan.engine.runner import Totals
from loopfan.engine.serve import BuiltinServer
from loopfan.errors import HostError
from loopfan.hostfacts import facts_for_workers
from loopfan.planner import Plan, PlanRequest, plan
from loopfan.pools import DEFAULT_SOURCE_POOL, parse_endpoints, parse_pool


@dataclass
class Held:
    """Live view of the connections held by `open_connections`."""

    plan: Plan
    fleet: Fleet
    server: BuiltinServer | None

    def stats(self) -> Totals:
        """The clients' latest counts (established, open, failed by cause)."""
        self.fleet.pump(0.0)
        return Totals.of(self.fleet.of("client"))

    def server_stats(self) -> Totals | None:
        return self.server.stats() if self.server is not None else None

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.fleet.workers]


@contextmanager
def open_connections(
    connections: int,
    *targets: str,
    sources: str | None = None,
    per_process: int | None = None,
    connect_timeout_s: float = 10.0,
    connect_rate_per_s: float = 0.0,
    ramp_timeout_s: float = 300.0,
) -> Iterator[Held]:
    """Open `connections` per loopfan's plan (to `targets`, or to a built-in server) and hold them.

    Raises HostError before opening anything when the host cannot hold them. Per-connection
    failures are counted in `stats().failed`, not raised.
    """
    facts = facts_for_workers()
    request = PlanRequest(
        connections=connections,
        targets=tuple(e for t in targets for e in parse_endpoints(t)),
        sources=parse_pool(sources) if sources else DEFAULT_SOURCE_POOL,
        max_per_process=per_process,
    )
    p = plan(request, facts)
    if not p.feasible and p.first_limit is not None:
        lim = p.first_limit
        raise HostError(f"cannot hold {connections:,} connections: the first limit, {lim.resource}, allows "
                        f"{lim.connections:,} ({lim.detail}); fix: {lim.fix}")
    server = BuiltinServer(p.server_shards) if p.server_shards else None
    fleet = Fleet(on_latency=lambda _lat: None)
    try:
        if server is not None:
            server.start()
        n = len(p.client_shards)
        concurrency = ramp_concurrency(0, n)
        config = client_config_for(P.ClientConfig(connect_timeout_s=connect_timeout_s), n, concurrency,
                                   connect_rate_per_s)
        for shard in p.client_shards:
            fleet.spawn("client", shard.index, client_main, shard, config)
        stagger = Stagger(fleet.of("client"), concurrency)
        deadline = time.monotonic() + ramp_timeout_s
        while not stagger.done and time.monotonic() < deadline:
            stagger.release(fleet)
            fleet.pump(0.05)
        yield Held(p, fleet, server)
        fleet.send(fleet.workers, P.CLOSE)
        fleet.wait_until(lambda: all(w.finished for w in fleet.workers), 60.0)
    finally:
        fleet.shutdown()
        if server is not None:
            server.stop()
