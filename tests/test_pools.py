"""Address pools and endpoints: what users type, parsed (loopfan.pools)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopfan.errors import NotLoopbackError, PoolSyntaxError, UsageError
from loopfan.pools import (
    DEFAULT_SOURCE_POOL,
    AddressPool,
    Endpoint,
    ip_to_str,
    parse_endpoints,
    parse_pool,
)


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


# --- pools --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "first", "last"),
    [
        ("127.0.0.2", 1, "127.0.0.2", "127.0.0.2"),
        ("127.0.0.2-127.0.3.250", 1017, "127.0.0.2", "127.0.3.250"),
        ("127.0.0.0/16", 65536, "127.0.0.0", "127.0.255.255"),
        ("127.0.0.5/24", 256, "127.0.0.0", "127.0.0.255"),  # host bits ignored, like `ip route`
        (" 127.0.0.2 - 127.0.0.9 ", 8, "127.0.0.2", "127.0.0.9"),
        ("127.0.0.9,127.0.0.2", 2, "127.0.0.2", "127.0.0.9"),
        ("127.0.0.2-127.0.0.5,127.0.0.4-127.0.0.8", 7, "127.0.0.2", "127.0.0.8"),  # overlap merged
        ("localhost", 1, "127.0.0.1", "127.0.0.1"),
        ("127.0.0.0/24,!127.0.0.1", 255, "127.0.0.0", "127.0.0.255"),
        ("127.0.0.0/24,^127.0.0.0/25", 128, "127.0.0.128", "127.0.0.255"),
    ],
)
def test_parse_pool_forms(text: str, count: int, first: str, last: str) -> None:
    pool = parse_pool(text)
    assert len(pool) == count
    assert ip_to_str(pool.ranges[0][0]) == first
    assert ip_to_str(pool.ranges[-1][1]) == last


def test_default_pool_is_127_8_minus_network_broadcast_and_localhost() -> None:
    assert len(DEFAULT_SOURCE_POOL) == 2**24 - 3
    for outside in ("127.0.0.0", "127.0.0.1", "127.255.255.255", "128.0.0.1", "126.255.255.255"):
        assert outside not in DEFAULT_SOURCE_POOL
    for inside in ("127.0.0.2", "127.255.255.254", "127.100.0.1"):
        assert inside in DEFAULT_SOURCE_POOL
    assert parse_pool("default") == DEFAULT_SOURCE_POOL


def test_exclusions_alone_subtract_from_the_default_pool() -> None:
    pool = parse_pool("!127.0.0.9")
    assert len(pool) == len(DEFAULT_SOURCE_POOL) - 1
    assert "127.0.0.9" not in pool and "127.0.0.8" in pool


def test_exclusions_apply_whatever_their_position() -> None:
    assert parse_pool("!127.0.0.3,127.0.0.2-127.0.0.4") == parse_pool("127.0.0.2,127.0.0.4")


def test_ipv6_loopback() -> None:
    pool = parse_pool("::1")
    assert pool.ipv6_loopback and pool.ipv4_count == 0 and len(pool) == 1
    assert "::1" in pool
    mixed = parse_pool("127.0.0.2,::1")
    assert len(mixed) == 2 and mixed.describe() == "127.0.0.2,::1"
    assert parse_pool("[::1]") == pool


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty address pool"),
        ("   ", "empty address pool"),
        ("127.0.0.1,,127.0.0.2", "extra comma"),
        ("127.0.0.9-127.0.0.2", "reversed"),
        ("127.0.0.256", "not an IPv4 address"),
        ("127.0.0", "not an IPv4 address"),
        ("127.0.0.1-", "not an IPv4 address"),
        ("bogus", "not an IPv4 address"),
        ("127.0.0.0/33", "not a valid CIDR"),
        ("fe80::1", "only IPv6 loopback address is ::1"),
        ("127.0.0.2,!127.0.0.2", "empty after exclusions"),
        ("127.0.0.2-127.0.0.3-127.0.0.4", "not an IPv4 address"),
    ],
)
def test_bad_pools_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(PoolSyntaxError) as exc:
        parse_pool(text)
    message = str(exc.value)
    assert words in message
    assert "\n" not in message


def test_reversed_range_suggests_the_right_order() -> None:
    with pytest.raises(PoolSyntaxError, match=r"write 127\.0\.0\.2-127\.0\.0\.9"):
        parse_pool("127.0.0.9-127.0.0.2")


@pytest.mark.parametrize("text", ["10.0.0.1", "192.168.1.0/24", "126.255.255.255-127.0.0.5", "0.0.0.0/0"])
def test_non_loopback_refused_without_allowance(text: str) -> None:
    with pytest.raises(NotLoopbackError, match="--allow-non-loopback"):
        parse_pool(text)
    # With the allowance the pool parses; whether the address is this host's is checked at the edge.
    assert len(parse_pool(text, allow_non_loopback=True)) >= 1


def test_excluding_a_non_loopback_address_is_harmless() -> None:
    assert parse_pool("!10.0.0.1") == DEFAULT_SOURCE_POOL


def test_describe_round_trips() -> None:
    for text in ("127.0.0.2", "127.0.0.0/16,!127.0.0.1,::1", "127.1.0.0/16,127.3.0.0-127.3.0.9"):
        pool = parse_pool(text)
        assert parse_pool(pool.describe()) == pool
    assert AddressPool().describe() == "(empty)"


def test_contains_is_false_for_non_addresses() -> None:
    pool = parse_pool("127.0.0.0/24")
    assert "not-an-address" not in pool
    assert 3.5 not in pool
    assert v4("127.0.0.7") in pool


def test_set_operations() -> None:
    a = parse_pool("127.0.0.0/24")
    b = parse_pool("127.0.0.128/25,::1")
    assert len(a.union(b)) == 257
    assert a.intersection(b) == parse_pool("127.0.0.128/25")
    assert a.without(b) == parse_pool("127.0.0.0/25")


# --- enumeration ---------------------------------------------------------------------------------


def test_spread_does_not_take_40_addresses_from_one_block() -> None:
    taken = DEFAULT_SOURCE_POOL.take(40)
    assert len(set(taken)) == 40
    blocks = {ip >> 8 for ip in taken}
    assert len(blocks) == 40  # 40 different /24 blocks
    second_octets = {(ip >> 16) & 0xFF for ip in taken}
    assert max(second_octets) - min(second_octets) > 200  # over the whole /8, not its start
    assert all(ip in DEFAULT_SOURCE_POOL for ip in taken)


def test_spread_is_deterministic_and_starts_at_the_pool_start() -> None:
    assert DEFAULT_SOURCE_POOL.take(100) == DEFAULT_SOURCE_POOL.take(100)
    assert ip_to_str(DEFAULT_SOURCE_POOL.take(1)[0]) == "127.0.0.2"


def test_spread_prefers_ordinary_host_numbers() -> None:
    # Inside a block .1-.254 come before .0 and .255 (which work on loopback but look odd).
    order = [ip_to_str(ip) for ip in parse_pool("127.0.0.0/24").spread()]
    assert order[0] == "127.0.0.1" and order[-2:] == ["127.0.0.0", "127.0.0.255"]


def test_take_never_exceeds_the_pool() -> None:
    pool = parse_pool("127.0.0.2-127.0.0.4")
    assert len(pool.take(10)) == 3
    assert pool.take(0) == ()
    assert pool.take(2, spread=False) == (v4("127.0.0.2"), v4("127.0.0.3"))


ranges = st.lists(
    st.tuples(st.integers(0, 2**24 - 1), st.integers(0, 3000)).map(
        lambda t: (0x7F000000 + t[0], min(0x7FFFFFFF, 0x7F000000 + t[0] + t[1]))
    ),
    min_size=1,
    max_size=5,
)


@given(ranges, st.integers(1, 600))
def test_spread_yields_each_member_once(rs: list[tuple[int, int]], count: int) -> None:
    text = ",".join(f"{ip_to_str(lo)}-{ip_to_str(hi)}" for lo, hi in rs)
    pool = parse_pool(text)
    taken = pool.take(count)
    assert len(taken) == min(count, len(pool))
    assert len(set(taken)) == len(taken)
    assert all(ip in pool for ip in taken)


@given(st.integers(0, 255), st.integers(1, 300))
def test_small_pools_enumerate_completely(start: int, size: int) -> None:
    lo = 0x7F010000 + start
    pool = AddressPool(((lo, lo + size - 1),))
    assert sorted(pool.spread()) == list(range(lo, lo + size))


# --- endpoints -----------------------------------------------------------------------------------


def test_endpoint_ranges_multiply() -> None:
    eps = parse_endpoints("127.0.0.1-127.0.0.8:9000-9003")
    assert len(eps) == 32
    assert eps[0] == Endpoint("127.0.0.1", 9000) and eps[-1] == Endpoint("127.0.0.8", 9003)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ["127.0.0.1:8080"]),
        ("localhost:80", ["127.0.0.1:80"]),
        ("[::1]:8080", ["[::1]:8080"]),
        ("127.0.0.1:80,127.0.0.1:80", ["127.0.0.1:80"]),  # repeats dropped
        ("127.0.0.0/31:7", ["127.0.0.0:7", "127.0.0.1:7"]),
        ("127.0.0.1:65535", ["127.0.0.1:65535"]),
        ("127.0.0.1:1", ["127.0.0.1:1"]),
    ],
)
def test_parse_endpoints(text: str, expected: list[str]) -> None:
    assert [str(e) for e in parse_endpoints(text)] == expected


def test_ipv6_endpoint_is_ipv6() -> None:
    (ep,) = parse_endpoints("[::1]:443")
    assert ep.is_ipv6 and ep.address == "::1" and ep.port == 443


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("127.0.0.1:0", PoolSyntaxError, "out of range"),
        ("127.0.0.1:65536", PoolSyntaxError, "out of range"),
        ("127.0.0.1:99999", PoolSyntaxError, "out of range"),
        ("127.0.0.1:9003-9000", PoolSyntaxError, "reversed"),
        ("127.0.0.1", PoolSyntaxError, "has no port"),
        ("127.0.0.1:", PoolSyntaxError, "not a number"),
        ("127.0.0.1:http", PoolSyntaxError, "not a number"),
        (":80", PoolSyntaxError, "has no address"),
        ("127.0.0.1:80,", PoolSyntaxError, "extra comma"),
        ("", PoolSyntaxError, "empty endpoint"),
        ("[::1]8080", PoolSyntaxError, "[::1]:PORT"),
        ("::1:80", PoolSyntaxError, "ambiguous: an IPv6 address has colons of its own; write [::1]:80"),
        ("[fe80::1]:80", PoolSyntaxError, "only IPv6 loopback"),
        ("http://127.0.0.1:8097/", PoolSyntaxError, "is a URL; write ADDRESS:PORT here, e.g. 127.0.0.1:8097"),
        ("ws://[::1]:9000/x", PoolSyntaxError, "is a URL; write ADDRESS:PORT here, e.g. [::1]:9000"),
        ("http://127.0.0.1/", PoolSyntaxError, "is a URL; write ADDRESS:PORT here, e.g. 127.0.0.1:8080"),
        ("127.0.0.300:80", PoolSyntaxError, "not an IPv4 address"),
        ("127.0.0.0/8:80", PoolSyntaxError, "at most 1,000,000"),
        ("10.1.2.3:80", NotLoopbackError, "not a loopback address"),
        ("192.168.0.1-192.168.0.3:80", NotLoopbackError, "not a loopback address"),
    ],
)
def test_bad_endpoints(text: str, error: type[UsageError], words: str) -> None:
    with pytest.raises(error) as exc:
        parse_endpoints(text)
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)
    assert exc.value.exit_status == 2


def test_huge_endpoint_range_is_refused_before_enumeration() -> None:
    # 16 million addresses x 65,535 ports: listing them first would never finish.
    with pytest.raises(PoolSyntaxError, match="1,099,494,850,560 endpoints"):
        parse_endpoints("127.0.0.0/8:1-65535")


def test_non_loopback_endpoint_with_allowance() -> None:
    assert parse_endpoints("10.1.2.3:80", allow_non_loopback=True) == (Endpoint("10.1.2.3", 80),)


def _reference_spread(pool: AddressPool) -> list[int]:
    """spread() written the slow, obvious way: block by block in bit-reversed order, rank by rank."""
    blocks = sorted({ip >> 8 for ip in pool.ascending()})
    bits = max(1, (len(blocks) - 1).bit_length())
    order = [r for i in range(1 << bits) if (r := int(f"{i:0{bits}b}"[::-1], 2)) < len(blocks)]
    host_order = [*range(1, 255), 0, 255]
    members = {b: [(b << 8) | h for h in host_order if (b << 8) | h in pool] for b in blocks}
    out = []
    for rank in range(256):
        for i in order:
            if rank < len(members[blocks[i]]):
                out.append(members[blocks[i]][rank])
    return out


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 600)), min_size=1, max_size=4))
def test_spread_matches_the_obvious_definition(parts: list[tuple[int, int]]) -> None:
    base = 0x7F050000
    pool = parse_pool(",".join(f"{ip_to_str(base + a)}-{ip_to_str(base + a + w)}" for a, w in parts))
    assert list(pool.spread()) == _reference_spread(pool)
