"""loopfan: the whole 127.0.0.0/8 loopback range as address space for testing on one machine.

The importable API (stable; the CLI is built on it):

    import loopfan
    facts = loopfan.read_host_facts()
    p = loopfan.plan(loopfan.PlanRequest(connections=100_000,
                                         targets=loopfan.parse_endpoints("127.0.0.1:8080")), facts)
    p.sources, p.groups, p.client_shards, p.first_limit, p.feasible

    with loopfan.open_connections(50_000, "127.0.0.1:8080") as held:   # hold them in your test
        held.stats().open
    with loopfan.Server.on(loopfan.parse_endpoints("127.0.0.1-127.0.0.4:7000")) as srv:  # built-in server
        srv.stats().open
    sock = loopfan.bind_socket("127.0.0.2")   # IP_BIND_ADDRESS_NO_PORT, ready to connect()

The engine is imported lazily (on first use of these names), so `import loopfan` stays light.
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

_LAZY = {
    "open_connections": ("loopfan.engine.api", "open_connections"),
    "Server": ("loopfan.engine.serve", "BuiltinServer"),
    "bind_socket": ("loopfan.engine.client", "bind_socket"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'loopfan' has no attribute {name!r}")


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
    "Server",
    "ServerShard",
    "UsageError",
    "__version__",
    "bind_socket",
    "open_connections",
    "parse_endpoints",
    "parse_pool",
    "plan",
    "read_host_facts",
]
