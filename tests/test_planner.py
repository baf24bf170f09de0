"""The capacity planner (loopfan.planner): invariants as properties, plus the cases people hit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopfan import costs
from loopfan.errors import HostError, UsageError
from loopfan.hostfacts import HostFacts
from loopfan.planner import Plan, PlanRequest, moved_server, plan, server_endpoints
from loopfan.pools import DEFAULT_SOURCE_POOL, AddressPool, Endpoint, parse_endpoints, parse_pool
from tests.conftest import DEV_MACHINE, MAC

Facts = Callable[..., HostFacts]


# --- strategies ----------------------------------------------------------------------------------

linux_hosts = st.builds(
    lambda lo, width, nofile: replace(
        DEV_MACHINE, port_range=(lo, min(65535, lo + width)), nofile_soft=nofile, nofile_hard=nofile
    ),
    st.integers(1024, 40000),
    st.integers(2_000, 30_000),
    st.integers(5_000, 200_000),
)
mac_hosts = st.builds(
    lambda aliases, perproc: replace(
        MAC,
        maxfilesperproc=perproc,
        loopback_addresses=frozenset({"127.0.0.1", *(f"127.0.0.{i}" for i in range(2, 2 + aliases))}),
    ),
    st.integers(0, 60),
    st.integers(5_000, 122_880),
)
hosts = st.one_of(linux_hosts, mac_hosts)

small_pools = st.builds(
    lambda start, size: AddressPool(((0x7F000002 + start, 0x7F000002 + start + size - 1),)),
    st.integers(0, 1000),
    st.integers(1, 40),
)
source_pools = st.one_of(st.just(DEFAULT_SOURCE_POOL), small_pools)

target_lists = st.one_of(
    st.just(()),  # the built-in server
    st.builds(
        lambda addrs, ports: tuple(
            Endpoint(f"127.0.1.{a}", 9000 + p) for a in range(1, addrs + 1) for p in range(ports)
        ),
        st.integers(1, 8),
        st.integers(1, 5),
    ),
    st.builds(lambda ports: tuple(Endpoint("::1", 9000 + p) for p in range(ports)), st.integers(1, 4)),
)

requests = st.builds(
    lambda n, targets, sources, fill, cap: PlanRequest(
        connections=n, targets=targets, sources=sources, fill_ratio=fill, max_per_process=cap
    ),
    st.integers(1, 500_000),
    target_lists,
    source_pools,
    st.floats(0.1, 1.0),
    st.one_of(st.none(), st.integers(2_000, 20_000)),
)

# Plans with thousands of shards are slow to build; the bounds above keep each plan to a few ms.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plan_ok(request: PlanRequest, facts: HostFacts) -> Plan | None:
    """plan(), or None for the requests the planner refuses on purpose (UsageError)."""
    try:
        return plan(request, facts)
    except UsageError:
        return None


# --- invariants ----------------------------------------------------------------------------------


@FAST
@given(requests, hosts)
def test_no_group_over_its_budget(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None:
        return
    assert p.budget_per_group == max(1, int(facts.port_count * request.fill_ratio))
    if p.budget_scope == "group":
        per_group = Counter[tuple[str, Endpoint]]()
        for g in p.groups:
            per_group[g.source, g.target] += g.connections
        assert all(c <= p.budget_per_group for c in per_group.values())
    else:  # macOS/BSD: one budget per source address across all destinations
        per_source = Counter[str]()
        for g in p.groups:
            per_source[g.source] += g.connections
        assert all(c <= p.budget_per_group for c in per_source.values())


@FAST
@given(requests, hosts)
def test_no_process_over_its_fd_limit(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None:
        return
    limit = facts.nofile_usable - request.fd_headroom
    if facts.maxfilesperproc:
        limit = min(limit, facts.maxfilesperproc - request.fd_headroom)
    if request.max_per_process:
        limit = min(limit, request.max_per_process)
    assert p.per_process == max(1, limit)
    assert all(0 < s.connections <= p.per_process for s in p.client_shards)
    assert all(s.connections <= p.per_process for s in p.server_shards)


@FAST
@given(requests, hosts)
def test_group_counts_sum_to_n_when_feasible(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None:
        return
    assert all(g.connections > 0 for g in p.groups)
    assert p.connections <= request.connections
    assert sum(s.connections for s in p.client_shards) == p.connections
    if p.server_shards:
        assert sum(s.connections for s in p.server_shards) == p.connections
    ports = [lim for lim in p.limits if lim.resource in ("ephemeral ports", "loopback aliases")]
    if not ports:
        # Nothing about addresses or ports caps it: the plan lays out every connection.
        assert p.connections == request.connections
    if p.feasible:
        assert p.connections == request.connections
        assert all(lim.connections >= request.connections for lim in p.limits)


@FAST
@given(requests, hosts)
def test_shards_are_exactly_the_groups(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None:
        return
    from_groups = Counter[tuple[str, Endpoint]]()
    for g in p.groups:
        from_groups[g.source, g.target] += g.connections
    from_shards = Counter[tuple[str, Endpoint]]()
    for s in p.client_shards:
        for g in s.groups:
            from_shards[g.source, g.target] += g.connections
    assert from_shards == from_groups
    assert [s.index for s in p.client_shards] == list(range(len(p.client_shards)))


@FAST
@given(requests, hosts)
def test_same_input_same_plan(request: PlanRequest, facts: HostFacts) -> None:
    first = plan_ok(request, facts)
    again = plan_ok(replace(request), replace(facts))
    assert first == again


@FAST
@given(requests, hosts)
def test_endpoint_totals_even_within_one(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None or not p.groups:
        return
    totals = Counter[Endpoint]()
    for g in p.groups:
        totals[g.target] += g.connections
    # Every endpoint offered gets its share (a zero share only when N < number of endpoints).
    offered = request.targets or tuple(e for s in p.server_shards for e in s.listen)
    counts = [totals.get(e, 0) for e in offered]
    assert max(counts) - min(counts) <= 1


@FAST
@given(requests, hosts)
def test_sources_come_from_the_pool_and_stay_off_the_server(request: PlanRequest, facts: HostFacts) -> None:
    p = plan_ok(request, facts)
    if p is None:
        return
    listen = {e.address for s in p.server_shards for e in s.listen}
    for src in p.sources:
        if src == "::1":
            assert all(t.is_ipv6 for t in p.targets)
            continue
        assert src in request.sources
        assert src not in listen
        if not facts.loopback_route_all:
            assert src in facts.loopback_addresses


# --- cases ---------------------------------------------------------------------------------------


def test_one_million_on_the_dev_machine(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=1_000_000), dev_facts())
    assert p.feasible and p.connections == 1_000_000
    assert p.per_process == 20_000 - costs.FD_HEADROOM_PER_PROCESS
    assert len(p.client_shards) == len(p.server_shards) == 52
    assert p.budget_per_group == int(28_232 * costs.DEFAULT_FILL_RATIO)
    assert len(p.sources) >= 1_000_000 / p.budget_per_group
    # The server listens on its own block, one address per process.
    assert all(s.listen[0].address.startswith("127.100.") for s in p.server_shards)


def test_one_target_spreads_over_sources(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=100_000, targets=parse_endpoints("127.0.0.1:8080")), dev_facts())
    assert len(p.sources) >= 4
    assert max(g.connections for g in p.groups) < p.budget_per_group
    assert p.server_shards == ()


def test_forty_sources_are_spread_over_the_range(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=40 * 10_000, targets=parse_endpoints("127.0.0.1:80")), dev_facts())
    assert len(p.sources) >= 32
    assert len({s.rsplit(".", 1)[0] for s in p.sources}) == len(p.sources)  # no two in one /24


def test_small_pool_uses_every_endpoint_budget(dev_facts: Facts) -> None:
    # One source, 4 endpoints: each (source, endpoint) pair has its own budget on Linux.
    targets = parse_endpoints("127.0.0.1:9000-9003")
    p = plan(
        PlanRequest(connections=40_000, targets=targets, sources=parse_pool("127.0.0.2")), dev_facts()
    )
    assert p.feasible and len(p.groups) == 4 and {g.connections for g in p.groups} == {10_000}


def test_ports_cap_a_small_pool_and_say_how_to_lift_it(dev_facts: Facts) -> None:
    p = plan(
        PlanRequest(connections=50_000, targets=parse_endpoints("127.0.0.1:80"), sources=parse_pool("127.0.0.2")),
        dev_facts(),
    )
    assert not p.feasible
    assert p.first_limit is not None and p.first_limit.resource == "ephemeral ports"
    assert p.holdable == p.connections == p.budget_per_group
    assert "--sources" in p.first_limit.fix


def _at_least(text: str, noun: str) -> int:
    """N from 'at least N <noun>' in a fix."""
    return int(text.split(f" {noun}")[0].rsplit("at least ", 1)[1].replace(",", ""))


def test_ports_limit_names_every_factor_and_a_fix_that_suffices(dev_facts: Facts) -> None:
    # QA: "1 source address x 12,704 ports per source address x target endpoint" for 38,112 =
    # 3 endpoints x 12,704: the endpoint count was missing and the sentence did not parse.
    facts = dev_facts()
    targets = parse_endpoints("127.0.0.1:8000-8002")
    p = plan(PlanRequest(connections=100_000, targets=targets, sources=parse_pool("127.0.0.9")), facts)
    lim, budget = p.first_limit, p.budget_per_group
    assert lim is not None and lim.resource == "ephemeral ports" and lim.connections == 3 * budget
    assert lim.detail == (f"1 source address x 3 target endpoints x {budget:,} ports per address-endpoint pair, "
                          f"the budget of 45% of the {facts.port_count:,}-port range")
    # Each count the fix names is enough on its own.
    sources = _at_least(lim.fix, "addresses")
    assert sources == 3 and "--sources 127.0.0.0/8" in lim.fix
    wider = parse_pool(f"127.0.0.9-127.0.0.{8 + sources}")
    assert plan(PlanRequest(connections=100_000, targets=targets, sources=wider), facts).feasible
    more = _at_least(lim.fix, "target endpoints")
    assert more == 8
    more_targets = parse_endpoints(f"127.0.0.1:8000-{8000 + more - 1}")
    assert plan(PlanRequest(connections=100_000, targets=more_targets, sources=parse_pool("127.0.0.9")), facts).feasible


def test_ports_limit_counts_isolated_clients_in_the_pool_it_asks_for(dev_facts: Facts) -> None:
    target = parse_endpoints("127.0.0.1:80")
    request = PlanRequest(connections=30_000, targets=target, sources=parse_pool("127.0.0.2-127.0.0.3"), isolate=1)
    lim = plan(request, dev_facts()).first_limit
    assert lim is not None and lim.resource == "ephemeral ports"
    sources = _at_least(lim.fix, "addresses")
    assert plan(replace(request, sources=parse_pool(f"127.0.0.2-127.0.0.{1 + sources}")), dev_facts()).feasible


def test_ports_limit_for_ipv6_asks_for_endpoints_not_sources(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=100_000, targets=parse_endpoints("[::1]:8000-8002")), dev_facts())
    lim = p.first_limit
    assert lim is not None and lim.resource == "ephemeral ports" and "--sources" not in lim.fix
    assert lim.detail.startswith("1 source address x 3 target endpoints x ")
    more = _at_least(lim.fix, "target endpoints")
    assert plan(PlanRequest(connections=100_000, targets=parse_endpoints(f"[::1]:8000-{8000 + more - 1}")),
                dev_facts()).feasible


def test_ports_limit_without_bind_no_port_is_per_source_address(dev_facts: Facts) -> None:
    facts = dev_facts(bind_no_port=False)
    targets = parse_endpoints("127.0.0.1:8000-8002")
    lim = plan(PlanRequest(connections=50_000, targets=targets, sources=parse_pool("127.0.0.9")), facts).first_limit
    assert lim is not None and lim.resource == "ephemeral ports"
    assert "x 3 target endpoints" not in lim.detail and "shared by every target endpoint" in lim.detail
    assert "target endpoints" not in lim.fix  # more endpoints would not help here
    sources = _at_least(lim.fix, "addresses")
    wider = parse_pool(f"127.0.0.9-127.0.0.{8 + sources}")
    assert plan(PlanRequest(connections=50_000, targets=targets, sources=wider), facts).feasible


def test_server_shards_hold_what_clients_send(dev_facts: Facts) -> None:
    # The pool caps the plan below N: the server must not be told to expect N.
    p = plan(PlanRequest(connections=19_000, sources=parse_pool("127.0.0.2")), dev_facts())
    assert not p.feasible
    assert sum(s.connections for s in p.server_shards) == p.connections < 19_000


def test_fd_limit_shards_processes(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=100_000), dev_facts())
    assert len(p.client_shards) == 6 and all(s.connections <= 19_500 for s in p.client_shards)
    p = plan(PlanRequest(connections=100_000, max_per_process=1_000), dev_facts())
    assert len(p.client_shards) == 100


def test_file_max_limit_names_its_sysctl(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=2_000_000), dev_facts(mem_available_bytes=200 * 2**30))
    assert not p.feasible
    assert p.first_limit is not None and p.first_limit.resource == "fs.file-max"
    assert p.first_limit.fix.startswith("sudo sysctl -w fs.file-max=")
    assert p.holdable < 2_000_000


def test_memory_limit(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=1_000_000), dev_facts(mem_available_bytes=4 * 2**30))
    assert not p.feasible and p.first_limit is not None and p.first_limit.resource == "memory"


def test_conntrack_limit_only_when_tracking_loopback(dev_facts: Facts) -> None:
    from loopfan.hostfacts import Conntrack

    idle = dev_facts(conntrack=Conntrack(present=True, count=0, max=262_144, tracking_loopback=False))
    assert plan(PlanRequest(connections=500_000), idle).feasible
    busy = dev_facts(conntrack=Conntrack(present=True, count=10, max=262_144, tracking_loopback=True))
    p = plan(PlanRequest(connections=500_000), busy)
    assert not p.feasible and p.first_limit is not None and p.first_limit.resource == "conntrack table"


def test_mac_budget_is_per_source_and_aliases_bound_it(mac_facts: Facts) -> None:
    target = parse_endpoints("127.0.0.1:80")
    p = plan(PlanRequest(connections=10_000, targets=target), mac_facts())
    assert p.feasible and p.budget_scope == "source"
    assert set(p.sources) <= {"127.0.0.2", "127.0.0.3"}
    # Two aliases hold two budgets; the plan shows what they can hold, and how to get more.
    p = plan(PlanRequest(connections=100_000, targets=target), mac_facts())
    assert not p.feasible
    assert p.connections == 2 * p.budget_per_group
    assert any("alias" in n for n in p.notes)


def test_mac_without_aliases(mac_facts: Facts) -> None:
    p = plan(
        PlanRequest(connections=1_000, targets=parse_endpoints("127.0.0.1:80")),
        mac_facts(loopback_addresses=frozenset({"127.0.0.1"})),
    )
    assert not p.feasible and p.groups == ()
    assert p.first_limit is not None and "alias" in p.first_limit.fix


def test_ipv6_targets_leave_from_ipv6_loopback(dev_facts: Facts) -> None:
    p = plan(PlanRequest(connections=20_000, targets=parse_endpoints("[::1]:8080-8081")), dev_facts())
    assert p.sources == ("::1",) and p.feasible


def test_mixed_families_are_refused(dev_facts: Facts) -> None:
    with pytest.raises(UsageError, match="mixing ::1"):
        plan(
            PlanRequest(connections=10, targets=parse_endpoints("[::1]:80,127.0.0.1:80")),
            dev_facts(),
        )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"connections": 0}, "at least 1"),
        ({"connections": -5}, "at least 1"),
        ({"connections": 10, "fill_ratio": 0.0}, "fill ratio"),
        ({"connections": 10, "fill_ratio": 1.5}, "fill ratio"),
        ({"connections": 10, "max_per_process": 0}, "per process"),
    ],
)
def test_bad_requests(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        PlanRequest(**kwargs)  # type: ignore[arg-type]


def test_listen_pool_too_small(dev_facts: Facts) -> None:
    with pytest.raises(UsageError, match="listen pool"):
        plan(PlanRequest(connections=100_000, listen_pool=parse_pool("127.100.0.1")), dev_facts())


@pytest.mark.parametrize("n", [1_000, 1_000_000, 5_000_000])
def test_suggested_settings_never_lower_the_current_value(dev_facts: Facts, n: int) -> None:
    from loopfan.hostfacts import Conntrack

    facts = dev_facts(
        mem_available_bytes=500 * 2**30,
        conntrack=Conntrack(present=True, count=0, max=262_144, tracking_loopback=True),
    )
    for lim in plan(PlanRequest(connections=n), facts).limits:
        if lim.fix.startswith("sudo sysctl -w "):
            assert lim.connections < n
            current = {"fs.file-max": facts.file_max, "conntrack table": 262_144}[lim.resource]
            assert int(lim.fix.rsplit("=", 1)[1]) > (current or 0)
        else:
            assert lim.connections >= n or lim.resource == "memory"


def test_ipv6_only_sources_need_ipv6_targets(dev_facts: Facts) -> None:
    with pytest.raises(UsageError, match=r"only ::1"):
        plan(PlanRequest(connections=10, sources=parse_pool("::1")), dev_facts())


def test_min_client_processes_spreads_a_small_run_over_cores() -> None:
    """Traffic runs ask for one client process per core even when one process could hold all."""
    from loopfan.hostfacts import HostFacts

    facts = HostFacts(nofile_soft=20_000, nofile_hard=20_000, file_max=2_000_000, mem_available_bytes=10**10)
    targets = parse_endpoints("127.0.0.1:8080")
    p = plan(PlanRequest(connections=1000, targets=targets, min_client_processes=2), facts)
    assert len(p.client_shards) == 2 and sum(s.connections for s in p.client_shards) == 1000
    tiny = plan(PlanRequest(connections=1, targets=targets, min_client_processes=4), facts)
    assert len(tiny.client_shards) == 1  # never more processes than connections


def test_min_server_processes_spreads_the_builtin_server_over_cores() -> None:
    """With the built-in server as the target, a traffic run asks for one server process per core
    too; each gets an address of its own and the clients' groups reach all of them."""
    from loopfan.hostfacts import HostFacts

    facts = HostFacts(nofile_soft=20_000, nofile_hard=20_000, file_max=2_000_000, mem_available_bytes=10**10)
    p = plan(PlanRequest(connections=1000, min_client_processes=2, min_server_processes=2), facts)
    assert len(p.server_shards) == 2
    assert {e.address for s in p.server_shards for e in s.listen} == {"127.100.0.1", "127.100.0.2"}
    assert sum(s.connections for s in p.server_shards) == 1000 and all(s.connections for s in p.server_shards)
    assert len(plan(PlanRequest(connections=1, min_server_processes=4), facts).server_shards) == 1
    # A preference, not a requirement: one listen address means one server process, not an error.
    one = plan(PlanRequest(connections=1000, min_server_processes=2, listen_pool=parse_pool("127.0.0.5"),
                           listen_port=7000), facts)
    assert len(one.server_shards) == 1


# --- the built-in server moved past endpoints another program listens on -----------------------------


def test_a_taken_default_server_endpoint_moves_the_server_to_the_next_port(dev_facts: Facts) -> None:
    """A second run on this host: 127.100.0.1:7070 is taken (a host fact, injected); the server keeps
    its addresses (the listen block shows the server side) and takes the next port."""
    request = PlanRequest(connections=100_000)
    p = plan(request, dev_facts())
    first = server_endpoints(p)
    assert first[0] == Endpoint("127.100.0.1", costs.DEFAULT_LISTEN_PORT)
    moved = moved_server(request, p, frozenset({first[-1]}))
    assert moved is not None and moved.listen_port == costs.DEFAULT_LISTEN_PORT + 1
    again = server_endpoints(plan(moved, dev_facts()))
    assert [e.address for e in again] == [e.address for e in first]
    assert moved_server(moved, plan(moved, dev_facts()), frozenset(first)) is None  # nothing of it taken


def test_a_server_spread_over_ports_moves_past_all_of_them(mac_facts: Callable[..., HostFacts]) -> None:
    """Without the 127/8 route the server takes port, port+1, ...: the move starts after the last."""
    request = PlanRequest(connections=2000, max_per_process=500)
    p = plan(request, mac_facts())
    ports = [e.port for e in server_endpoints(p)]
    assert len(ports) > 1
    moved = moved_server(request, p, frozenset(server_endpoints(p)[:1]))
    assert moved is not None and moved.listen_port == max(ports) + 1


def test_endpoints_the_user_chose_are_not_moved(dev_facts: Facts) -> None:
    request = PlanRequest(connections=1000, listen_pool=parse_pool("127.101.0.1"), listen_port=9000,
                          listen_chosen=True)
    p = plan(request, dev_facts())
    with pytest.raises(UsageError, match=r"--listen: 127\.101\.0\.1:9000 is taken .*choose another --listen"):
        moved_server(request, p, frozenset({Endpoint("127.101.0.1", 9000)}))


def test_no_port_past_65535(dev_facts: Facts) -> None:
    request = PlanRequest(connections=1000, listen_port=65535)
    p = plan(request, dev_facts())
    with pytest.raises(HostError, match=r"no free port .* --listen"):
        moved_server(request, p, frozenset(server_endpoints(p)))


def test_a_run_against_targets_has_no_server_to_move(dev_facts: Facts) -> None:
    request = PlanRequest(connections=1000, targets=parse_endpoints("127.0.0.1:8080"))
    assert moved_server(request, plan(request, dev_facts()), frozenset(parse_endpoints("127.0.0.1:8080"))) is None


def test_isolated_clients_skip_addresses_other_programs_use(dev_facts: Facts) -> None:
    """QA: with a tag on 127.0.0.3, --isolate 3 handed out 127.0.0.2-127.0.0.4, so the 'isolated'
    client's capture showed the tagged program too. The addresses in use are a host fact."""
    import ipaddress
    request = PlanRequest(connections=100, targets=parse_endpoints("127.0.0.1:8080"),
                          sources=parse_pool("127.0.0.2-127.0.0.50"), isolate=3,
                          isolate_avoid=frozenset({int(ipaddress.IPv4Address("127.0.0.3"))}))
    p = plan(request, dev_facts())
    assert [g.source for g in p.isolated] == ["127.0.0.2", "127.0.0.4", "127.0.0.5"]
    others = {g.source for g in p.groups} - {g.source for g in p.isolated}
    assert not others & {"127.0.0.2", "127.0.0.4", "127.0.0.5"}
