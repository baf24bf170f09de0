"""The capacity planner: request + host facts in, immutable plan out. Pure: no sockets, no clock.

Rules of this file: nothing here opens a socket, reads a file or looks at the time; the engine
consumes `Plan` unchanged. Every number in a plan is derivable from the request and the facts.

The arithmetic (docs/mechanics.md has the sources):
- Linux with IP_BIND_ADDRESS_NO_PORT: connect() picks the source port per 4-tuple, so each
  (source address, destination endpoint) *group* has its own ephemeral-port budget.
- macOS/BSD: no NO_PORT, bind(ip, 0) reserves the port across every destination, so the budget
  is per source address.
- Each budget is kept below `fill_ratio` of the ephemeral range so connect() stays fast.
- Each process holds at most its open-file limit minus headroom, so connections are sharded
  over processes on both sides (the built-in server too).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, replace

from loopfan import aliases, costs
from loopfan.errors import HostError, UsageError
from loopfan.hostfacts import HostFacts
from loopfan.pools import (
    DEFAULT_SOURCE_POOL,
    AddressPool,
    Endpoint,
    ip_to_str,
    parse_pool,
)
from loopfan.wording import counted

DEFAULT_LISTEN_POOL = parse_pool(costs.DEFAULT_LISTEN_POOL_TEXT)
_LISTEN_BLOCK = parse_pool("127.100.0.0/16")  # the default listen pool's whole block


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRequest:
    """What the user asks for. `targets` empty means loopfan's built-in server."""

    connections: int
    targets: tuple[Endpoint, ...] = ()
    sources: AddressPool = DEFAULT_SOURCE_POOL
    listen_pool: AddressPool = DEFAULT_LISTEN_POOL
    listen_port: int = costs.DEFAULT_LISTEN_PORT
    fill_ratio: float = costs.DEFAULT_FILL_RATIO
    fd_headroom: int = costs.FD_HEADROOM_PER_PROCESS
    # Cap connections per process below the fd limit (tests and benchmarks use this to force sharding).
    max_per_process: int | None = None
    # At least this many client processes (when N allows): a traffic run is CPU-bound in the client,
    # so it spreads over the cores even when one process's fd limit would hold every connection.
    min_client_processes: int = 1
    # The same for the built-in server: it is the other half of the work when both ends talk (echo
    # at 1,000 connections: 100.6K round trips/s with one server process, 121.7K with one per core;
    # docs/benchmarks.md).
    min_server_processes: int = 1
    # Isolated clients: this many single connections, each from a source address no other
    # connection uses, so that `ip.addr==ADDR` in a capture shows exactly one client.
    isolate: int = 0
    # Addresses another program uses now (a host fact read at the edge: sockets, active tags): not
    # given to isolated clients, whose captures would show that program too.
    isolate_avoid: frozenset[int] = frozenset()
    # The user chose the built-in server's endpoints (--listen): kept as given, an error if taken.
    # Otherwise they are loopfan's choice, moved to other ports when taken (see `moved_server`).
    listen_chosen: bool = False

    def __post_init__(self) -> None:
        if self.connections <= 0:
            raise UsageError(f"connections must be at least 1 (got {self.connections}); write e.g. -c 1000")
        if not 0.0 < self.fill_ratio <= 1.0:
            raise UsageError(f"fill ratio must be in (0, 1] (got {self.fill_ratio})")
        if not 0 <= self.isolate <= min(self.connections, 10_000):
            raise UsageError(
                f"--isolate must be between 0 and min(N, 10000) (got {self.isolate}); isolated clients are "
                "part of the N connections"
            )
        if self.max_per_process is not None and self.max_per_process <= 0:
            raise UsageError(f"connections per process must be at least 1 (got {self.max_per_process})")

    @property
    def builtin_server(self) -> bool:
        return not self.targets


@dataclass(frozen=True, slots=True)
class Group:
    """Connections from one source address to one destination endpoint (one port budget on Linux)."""

    source: str
    target: Endpoint
    connections: int


@dataclass(frozen=True, slots=True)
class ClientShard:
    """What one client worker process opens: its slice of the groups."""

    index: int
    groups: tuple[Group, ...]

    @property
    def connections(self) -> int:
        return sum(g.connections for g in self.groups)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.source for g in self.groups))


@dataclass(frozen=True, slots=True)
class ServerShard:
    """One built-in server process: the endpoints it listens on and the connections it will hold."""

    index: int
    listen: tuple[Endpoint, ...]
    connections: int


@dataclass(frozen=True, slots=True)
class Limit:
    """A resource that caps the connection count, the count it allows, and how to lift it."""

    resource: str
    connections: int
    fix: str
    detail: str


@dataclass(frozen=True, slots=True)
class Memory:
    kernel_bytes: int
    user_client_bytes: int
    user_server_bytes: int

    @property
    def user_bytes(self) -> int:
        return self.user_client_bytes + self.user_server_bytes

    @property
    def total_bytes(self) -> int:
        return self.kernel_bytes + self.user_bytes


@dataclass(frozen=True, slots=True)
class Plan:
    request: PlanRequest
    platform: str
    port_count: int
    budget_per_group: int  # Linux: per (source, endpoint); macOS: per source address
    budget_scope: str  # "group" or "source"
    per_process: int
    groups: tuple[Group, ...]
    client_shards: tuple[ClientShard, ...]
    server_shards: tuple[ServerShard, ...]
    memory: Memory
    limits: tuple[Limit, ...]  # every capacity-limiting resource found, tightest first
    feasible: bool
    notes: tuple[str, ...] = field(default=())
    isolated: tuple[Group, ...] = field(default=())  # --isolate: one connection per own address

    @property
    def connections(self) -> int:
        return sum(g.connections for g in self.groups)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.source for g in self.groups))

    @property
    def targets(self) -> tuple[Endpoint, ...]:
        return tuple(dict.fromkeys(g.target for g in self.groups))

    @property
    def first_limit(self) -> Limit | None:
        return self.limits[0] if self.limits else None

    @property
    def holdable(self) -> int:
        """The most connections this host can hold with this request's pools and endpoints."""
        return self.limits[0].connections if self.limits else self.request.connections


def _even_split(total: int, parts: int) -> list[int]:
    q, r = divmod(total, parts)
    return [q + 1 if i < r else q for i in range(parts)]


def _dense(sources: tuple[str, ...], targets: tuple[Endpoint, ...], connections: int) -> list[Group]:
    """Every source to every endpoint: for small pools, where each pair's own budget is needed.

    Each source's share is split evenly over the endpoints, and a rolling cursor hands each
    source's remainder to the next endpoints in turn, so endpoint totals differ by at most one.
    """
    groups: list[Group] = []
    n_targets = len(targets)
    cursor = 0
    for src, share in zip(sources, _even_split(connections, len(sources)), strict=True):
        q, r = divmod(share, n_targets)
        for e, target in enumerate(targets):
            count = q + (1 if (e - cursor) % n_targets < r else 0)
            if count:
                groups.append(Group(src, target, count))
        cursor = (cursor + r) % n_targets
    return groups


def _interleave(sources: tuple[str, ...], targets: tuple[Endpoint, ...], connections: int) -> list[Group]:
    """Lay the connections on a line cut evenly once by sources and once by endpoints.

    Each group is the overlap of a source's segment and an endpoint's segment, so every source and
    every endpoint gets an even share, and there are at most sources + endpoints - 1 groups (a
    plan for ten million connections stays small). Group order follows the line, so consecutive
    client processes take consecutive sources.
    """
    src_bounds = _bounds(_even_split(connections, len(sources)))
    dst_bounds = _bounds(_even_split(connections, len(targets)))
    groups: list[Group] = []
    i = j = 0
    pos = 0
    while pos < connections:
        end = min(src_bounds[i + 1], dst_bounds[j + 1])
        if end > pos:
            groups.append(Group(sources[i], targets[j], end - pos))
            pos = end
        if pos == src_bounds[i + 1]:
            i += 1
        if pos == dst_bounds[j + 1]:
            j += 1
    return groups


def _bounds(sizes: list[int]) -> list[int]:
    out = [0]
    for size in sizes:
        out.append(out[-1] + size)
    return out


def _pack(groups: list[Group], processes: int) -> tuple[ClientShard, ...]:
    """Cut the source-major group list into `processes` consecutive, even slices (splitting groups)."""
    total = sum(g.connections for g in groups)
    quotas = _even_split(total, processes)
    shards: list[ClientShard] = []
    pending: list[Group] = []
    it = iter(groups)
    carry: Group | None = None
    for index, quota in enumerate(quotas):
        pending = []
        need = quota
        while need:
            g = carry if carry is not None else next(it)
            carry = None
            take = min(need, g.connections)
            pending.append(Group(g.source, g.target, take))
            need -= take
            if take < g.connections:
                carry = Group(g.source, g.target, g.connections - take)
        shards.append(ClientShard(index, tuple(pending)))
    return tuple(shards)


# How many times the built-in server moves on when its ports are taken before loopfan gives up: a
# second and third run on one host each take the next free port, not the 50th.
SERVER_MOVES = 50


def server_endpoints(p: Plan) -> tuple[Endpoint, ...]:
    """Where the plan's built-in server listens (none for a run against given targets)."""
    return tuple(e for shard in p.server_shards for e in shard.listen)


def moved_server(request: PlanRequest, p: Plan, taken: frozenset[Endpoint]) -> PlanRequest | None:
    """The request again with its built-in server past the ports of `p` when another program
    listens on some of its endpoints (`taken`: a host fact, read at the edge); None when none is.

    Every run's default is the same (DEFAULT_LISTEN_POOL, port 7070), so a second run on one host
    would fail at its server's bind. When loopfan chose the endpoints it moves to the first port
    after the plan's own (the ports differ on hosts that spread the server over ports of 127.0.0.1)
    on the same addresses, which keeps the listen block, and with it `ip.addr==127.100.0.0/16`,
    the server side. Endpoints the user chose (--listen) are not moved: UsageError.
    """
    hit = [e for e in server_endpoints(p) if e in taken]
    if not hit:
        return None
    if request.listen_chosen:
        raise UsageError(f"--listen: {hit[0]} is taken (another program listens there); choose another "
                         "--listen POOL:PORT, e.g. 127.101.0.0/16:9000")
    port = max(e.port for e in server_endpoints(p)) + 1
    if port > 65535:
        raise HostError(f"the built-in server found no free port on its addresses up to 65535 ({hit[0]} is "
                         "taken); choose its endpoints with --listen POOL:PORT, e.g. 127.101.0.0/16:9000")
    return replace(request, listen_port=port)


def plan(request: PlanRequest, facts: HostFacts) -> Plan:
    """Compute the plan for `request` on a host described by `facts`."""
    n = request.connections
    notes: list[str] = []
    port_count = facts.port_count
    budget = max(1, math.floor(port_count * request.fill_ratio))
    per_group_scope = facts.bind_no_port  # Linux NO_PORT: budget per (source, endpoint)
    per_process = max(1, facts.nofile_usable - request.fd_headroom)
    if facts.maxfilesperproc:
        per_process = min(per_process, max(1, facts.maxfilesperproc - request.fd_headroom))
    if request.max_per_process:
        per_process = min(per_process, request.max_per_process)
    client_processes = math.ceil(n / per_process)

    # Usable addresses: on hosts without the 127/8 local route (macOS, BSD) only configured aliases.
    sources_pool = request.sources
    listen_pool = request.listen_pool
    if not facts.loopback_route_all:
        aliased = AddressPool(
            tuple(
                (ip, ip)
                for ip in sorted(_v4(a) for a in facts.loopback_addresses if a.startswith("127."))
            )
        )
        missing = len(sources_pool) - len(sources_pool.intersection(aliased))
        sources_pool = sources_pool.intersection(aliased)
        if missing:
            notes.append(
                f"only {len(sources_pool)} of the source pool's addresses are configured on the loopback "
                f"interface (macOS/BSD need `loopfan alias add POOL`)"
            )

    # Server side.
    server_shards: tuple[ServerShard, ...] = ()
    if request.builtin_server:
        # min_server_processes is a preference: never more processes than listen addresses for them.
        wanted = min(request.min_server_processes, n)
        if facts.loopback_route_all:
            wanted = min(wanted, len(listen_pool))
        server_processes = max(math.ceil(n / per_process), wanted)
        if facts.loopback_route_all:
            listen_ips = tuple(ip_to_str(ip) for ip in listen_pool.take(server_processes, spread=False))
            targets = tuple(Endpoint(ip, request.listen_port) for ip in listen_ips)
        else:
            # Without free 127/8 addresses, the server spreads over ports of 127.0.0.1 instead.
            targets = tuple(Endpoint("127.0.0.1", request.listen_port + i) for i in range(server_processes))
        if len(targets) < server_processes:
            raise UsageError(
                f"the listen pool has {len(targets)} addresses but the server needs {server_processes} "
                "processes (one address each); give a larger --listen pool"
            )
        # Clients never leave from the server's addresses, nor (by default) from its block, so that
        # a capture filter on the listen block (127.100.0.0/16) shows exactly the server side.
        sources_pool = sources_pool.without(
            AddressPool(tuple(sorted((_v4(t.address),) * 2 for t in targets if not t.is_ipv6)))
        )
        if request.sources == DEFAULT_SOURCE_POOL:
            block = _LISTEN_BLOCK if listen_pool == DEFAULT_LISTEN_POOL else listen_pool
            sources_pool = sources_pool.without(block)
        # Loads are filled in from the client groups below.
        server_shards = tuple(ServerShard(i, (targets[i],), 0) for i in range(server_processes))
    else:
        targets = request.targets

    ipv6_targets = [t for t in targets if t.is_ipv6]
    if ipv6_targets and len(ipv6_targets) != len(targets):
        raise UsageError(
            "mixing ::1 and 127.x targets in one run is not supported; run them separately"
        )
    ipv6 = bool(ipv6_targets)
    if not ipv6 and request.sources.ipv6_loopback and request.sources.ipv4_count == 0:
        raise UsageError(
            "the source pool is only ::1, which reaches only [::1] targets; give 127.x.y.z sources "
            "(e.g. --sources 127.0.0.0/16) or [::1]:PORT targets"
        )

    # Isolated clients take the pool's first addresses in plain order (127.0.0.2, .3, ...: easy to
    # type into a capture filter) that no other program uses; nothing else leaves from them.
    isolated: list[Group] = []
    if request.isolate and ipv6:
        raise UsageError(
            "--isolate needs 127.x targets: ::1 is IPv6's one loopback address, so isolated clients "
            "cannot have addresses of their own; use a 127.x.y.z target or leave --isolate out"
        )
    if request.isolate:
        busy = AddressPool(tuple((ip, ip) for ip in sorted(request.isolate_avoid)))
        iso_ips = sources_pool.without(busy).take(request.isolate, spread=False)
        if len(iso_ips) < request.isolate or len(iso_ips) >= sources_pool.ipv4_count:
            raise UsageError(
                f"the source pool has {sources_pool.ipv4_count:,} addresses: too few to isolate "
                f"{request.isolate:,} clients and keep some for the rest; give a larger --sources pool"
            )
        isolated = [Group(ip_to_str(ip), targets[i % len(targets)], 1) for i, ip in enumerate(iso_ips)]
        sources_pool = sources_pool.without(AddressPool(tuple((ip, ip) for ip in iso_ips)))
        n -= len(isolated)

    # How many source addresses, and how connections are laid over (source, endpoint) groups.
    pool_size = 1 if ipv6 else sources_pool.ipv4_count
    sources_needed = math.ceil(n / budget)  # enough that no source exceeds one budget
    port_capacity = pool_size * budget * (len(targets) if per_group_scope else 1)
    limits: list[Limit] = []
    if port_capacity < n or pool_size == 0:
        limits.append(_ports_limit(port_capacity, facts, request, per_group_scope, budget, pool_size,
                                   wanted=n, endpoints=len(targets), ipv6=ipv6))
    held = min(n, port_capacity)

    if ipv6:
        # ::1 is one address: every connection leaves from ::1 itself (nothing to bind).
        groups = _dense(("::1",), targets, held)
    elif pool_size >= sources_needed:
        # Every client process gets a source address of its own when the pool allows: a capture
        # filter then shows one process, and no two processes contend for one group's ports.
        k = min(pool_size, max(sources_needed, client_processes))
        groups = _interleave(tuple(map(ip_to_str, sources_pool.take(k))), targets, held)
    elif per_group_scope and pool_size:
        # A small pool: every source talks to every endpoint, each pair with its own port budget.
        groups = _dense(tuple(map(ip_to_str, sources_pool.take(pool_size))), targets, held)
    elif pool_size:
        # Too few sources where the budget is per source (macOS/BSD): plan what they can hold,
        # one full budget each, so the plan still shows the run that would work.
        groups = _interleave(tuple(map(ip_to_str, sources_pool.take(pool_size))), targets, held)
    else:
        groups = []
    groups = isolated + groups
    n += len(isolated)
    held = sum(g.connections for g in groups)
    if server_shards:
        # Each server process holds what the clients actually send to its endpoints: fewer than
        # its even share of N when the source pool caps the plan.
        per_target: dict[Endpoint, int] = {}
        for g in groups:
            per_target[g.target] = per_target.get(g.target, 0) + g.connections
        server_shards = tuple(
            ServerShard(s.index, s.listen, sum(per_target.get(e, 0) for e in s.listen)) for s in server_shards
        )
    client_processes = (
        max(1, math.ceil(held / per_process), min(request.min_client_processes, held)) if held else 0
    )
    client_shards = _pack(groups, client_processes) if held else ()

    # Memory: both ends of every connection live on this host (it is loopback).
    processes_client = len(client_shards)
    processes_server = len(server_shards)
    memory = Memory(
        kernel_bytes=n * costs.KERNEL_BYTES_PER_PAIR,
        user_client_bytes=n * costs.USER_BYTES_PER_CONNECTION
        + processes_client * costs.USER_BYTES_PER_PROCESS,
        user_server_bytes=(
            n * costs.USER_BYTES_PER_CONNECTION + processes_server * costs.USER_BYTES_PER_PROCESS
            if request.builtin_server
            else 0
        ),
    )
    limits.extend(_host_limits(request, facts, per_process))
    limits.sort(key=lambda lim: lim.connections)
    binding = [lim for lim in limits if lim.connections < n]
    if not facts.bind_no_port:
        notes.append(
            f"no IP_BIND_ADDRESS_NO_PORT here: each source address has {port_count:,} ports for all "
            "destinations together"
        )
    return Plan(
        request=request,
        platform=facts.platform,
        port_count=port_count,
        budget_per_group=budget,
        budget_scope="group" if per_group_scope else "source",
        per_process=per_process,
        groups=tuple(groups),
        client_shards=client_shards,
        server_shards=server_shards,
        memory=memory,
        limits=tuple(limits),
        feasible=not binding,
        notes=tuple(notes),
        isolated=tuple(isolated),
    )


def _v4(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def _ports_limit(
    capacity: int, facts: HostFacts, request: PlanRequest, per_group: bool, budget: int, pool_size: int,
    *, wanted: int, endpoints: int, ipv6: bool,
) -> Limit:
    """What stops the plan short of `wanted` connections for want of ports, and the fix with the
    count that lifts it. `wanted`, `pool_size` exclude isolated clients, which have their own."""
    if not facts.loopback_route_all:
        # macOS/BSD (or Linux without its 127/8 route): only configured addresses bind. When more of
        # the pool could be configured, that is the limit, and its fix is the one command that does it.
        if facts.platform == "linux":
            return Limit(
                "loopback route",
                capacity,
                aliases.LINUX_ROUTE_FIX,
                "no `local 127.0.0.0/8 dev lo` route: only addresses configured on lo are usable",
            )
        wanted = math.ceil(request.connections / budget)
        add = aliases.suggest_add_command(request.sources, facts.loopback_addresses, wanted)
        if add is not None:
            return Limit(
                "loopback aliases",
                capacity,
                add,
                f"{pool_size:,} source address"
                f"{'es of the pool are lo0 aliases' if pool_size != 1 else ' of the pool is a lo0 alias'}, "
                f"x {budget:,} ports each "
                f"({request.fill_ratio:.0%} of {facts.port_count:,}, for all destinations together); "
                "macOS and BSD bind only aliased addresses",
            )
    # Linux binds with IP_BIND_ADDRESS_NO_PORT: a port is taken per (source, endpoint) pair, so each
    # endpoint multiplies the room; without it (macOS) a port is taken per source address.
    range_text = f"the budget of {request.fill_ratio:.0%} of the {facts.port_count:,}-port range"
    if per_group:
        detail = (f"{counted(pool_size, 'source address')} x {counted(endpoints, 'target endpoint')} x "
                  f"{budget:,} ports per address-endpoint pair, {range_text}")
    else:
        detail = (f"{counted(pool_size, 'source address')} x {budget:,} ports per address, shared by "
                  f"every target endpoint, {range_text}")
    if ipv6:
        # ::1 is IPv6's only loopback address: more sources do not exist, only more endpoints help.
        more = (f"at least {counted(math.ceil(wanted / budget), 'target endpoint')} (a server on more "
                "[::1] ports) or " if per_group else "")
        fix = (f"::1 is the only IPv6 source address: use {more}127.x.y.z targets, which can leave from "
               "many source addresses")
        return Limit("ephemeral ports", capacity, fix, detail)
    per_source = budget * (endpoints if per_group else 1)
    sources_needed = math.ceil(wanted / per_source) + request.isolate
    fix = f"give a --sources pool of at least {counted(sources_needed, 'address')} (e.g. --sources 127.0.0.0/8)"
    if not facts.loopback_route_all:
        fix += " and alias it with `loopfan alias add POOL`"
    if not request.builtin_server and per_group and pool_size > 0:
        more = counted(math.ceil(wanted / (budget * pool_size)), "target endpoint")
        fix += f" or at least {more} (a server listening on more addresses or ports)"
    return Limit("ephemeral ports", capacity, fix, detail)


def _host_limits(request: PlanRequest, facts: HostFacts, per_process: int) -> list[Limit]:
    """Host-wide resources that cap the count, each with the command that lifts it."""
    n = request.connections
    out: list[Limit] = []
    per_pair_fds = 2  # both ends are on this host
    if facts.file_max is not None:
        open_now = facts.files_open or 0
        processes = 2 * math.ceil(n / per_process)
        capacity = max(0, (facts.file_max - open_now - processes * 32) // per_pair_fds)
        needed = open_now + per_pair_fds * n + processes * 32 + 10_000
        knob = "kern.maxfiles" if facts.platform == "macos" else "fs.file-max"
        if capacity < n:
            cmd = f"sudo sysctl -w {knob}={_round_up(needed)}"
        else:  # never suggest a value below the current one
            cmd = f"no change needed for {n:,} connections; raise {knob} to go past {capacity:,}"
        out.append(
            Limit(
                knob,
                capacity,
                cmd,
                f"{facts.file_max:,} open files system-wide ({open_now:,} in use); "
                "each connection needs two (client and server socket)",
            )
        )
    ct = facts.conntrack
    if ct.present and ct.tracking_loopback and ct.max is not None:
        room = max(0, ct.max - (ct.count or 0))
        out.append(
            Limit(
                "conntrack table",
                room,
                f"sudo sysctl -w net.netfilter.nf_conntrack_max={_round_up(n + (ct.count or 0) + 10_000)}"
                if room < n
                else f"no change needed for {n:,} connections; raise nf_conntrack_max to go past {room:,}",
                f"netfilter tracks loopback flows here; the table holds {ct.max:,} entries",
            )
        )
    if facts.mem_available_bytes is not None:
        usable = facts.mem_available_bytes * costs.MEMORY_SAFETY_RATIO
        server_user = costs.USER_BYTES_PER_CONNECTION if request.builtin_server else 0
        per_conn = costs.KERNEL_BYTES_PER_PAIR + costs.USER_BYTES_PER_CONNECTION + server_user
        per_proc_share = 2 * costs.USER_BYTES_PER_PROCESS / per_process
        capacity = int(usable // (per_conn + per_proc_share))
        out.append(
            Limit(
                "memory",
                capacity,
                "no setting lifts this: use fewer connections or a machine with more memory",
                f"{facts.mem_available_bytes / 2**30:.1f} GiB available; each connection costs "
                f"~{per_conn / 1000:.1f} KB (kernel sockets on both ends + loopfan's own)",
            )
        )
    return out


def _round_up(value: int) -> int:
    """A round number at or above value, so suggested settings read well (4,000,000 not 4,013,517)."""
    if value <= 0:
        return 0
    magnitude = int(10 ** max(0, len(str(value)) - 2))
    return -(-value // magnitude) * magnitude
