"""loopfan: the whole 127.0.0.0/8 loopback range as address space for testing on one machine.

The importable API (stable; the CLI is built on it):

    import loopfan
    facts = loopfan.read_host_facts()
    p = loopfan.plan(loopfan.PlanRequest(connections=100_000,
                                         targets=loopfan.parse_endpoints("127.0.0.1:8080")), facts)
    p.sources, p.groups, p.client_shards, p.first_limit, p.feasible
"""

from __future__ import annotations

__version__ = "0.1.0"

from loopfan.errors import (
    HostError,
    LoopfanError,
    NotLoopbackError,
    PoolSyntaxError,
    RunError,
    UsageError,
)
from loopfan.hostfacts import HostFacts, read_host_facts
from loopfan.planner import ClientShard, Group, Limit, Plan, PlanRequest, ServerShard, plan
from loopfan.pools import DEFAULT_SOURCE_POOL, AddressPool, Endpoint, parse_endpoints, parse_pool

__all__ = [
    "DEFAULT_SOURCE_POOL",
    "AddressPool",
    "ClientShard",
    "Endpoint",
    "Group",
    "HostError",
    "HostFacts",
    "Limit",
    "LoopfanError",
    "NotLoopbackError",
    "Plan",
    "PlanRequest",
    "PoolSyntaxError",
    "RunError",
    "ServerShard",
    "UsageError",
    "__version__",
    "parse_endpoints",
    "parse_pool",
    "plan",
    "read_host_facts",
]
