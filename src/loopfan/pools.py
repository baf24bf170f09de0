"""Address pools and endpoints: what users type, parsed into values. Pure: no I/O.

Rules of this file: IPv4 addresses are plain ints inside the pool (a pool of 16 million
addresses must cost nothing); they become `ipaddress` objects or strings only at the edges.
Every parse error is a `PoolSyntaxError` whose message shows the offending text and a correct form.

Pool syntax (comma separated, items applied left to right):
    127.0.0.2                 one address
    127.0.0.2-127.0.3.250     an inclusive range
    127.0.0.0/16              CIDR (all of it: on loopback .0 and .255 are ordinary addresses)
    ::1                       the IPv6 loopback (its only address)
    !127.0.0.9  or ^127.0.0.9 exclude (any of the forms above)
    default                   the default client pool: 127.0.0.0/8 minus 127.0.0.0, 127.255.255.255
                              and 127.0.0.1 (left to everything else on the machine)

Endpoint syntax: ADDRS:PORTS where ADDRS is any pool item above (no exclusions) and PORTS is a port
or an inclusive port range, e.g. 127.0.0.1-127.0.0.8:9000-9003 (32 endpoints) or [::1]:8080.
`localhost` means 127.0.0.1 (never ::1: it cannot carry a 127.x tag).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from loopfan.errors import NotLoopbackError, PoolSyntaxError

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
LOOPBACK_FIRST = int(LOOPBACK_NET.network_address)
LOOPBACK_LAST = int(LOOPBACK_NET.broadcast_address)
LOCALHOST_V4 = LOOPBACK_FIRST + 1  # 127.0.0.1
IPV6_LOOPBACK = "::1"

# A pool is cut into /24 blocks for enumeration (see AddressPool.spread).
_BLOCK_BITS = 8


def ip_to_str(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


def is_loopback_v4(ip: int) -> bool:
    return LOOPBACK_FIRST <= ip <= LOOPBACK_LAST


@dataclass(frozen=True)
class AddressPool:
    """A set of IPv4 addresses (sorted disjoint inclusive int ranges) plus, optionally, ::1."""

    ranges: tuple[tuple[int, int], ...] = ()
    ipv6_loopback: bool = False

    @property
    def ipv4_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __len__(self) -> int:
        return self.ipv4_count + (1 if self.ipv6_loopback else 0)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            if address == IPV6_LOOPBACK:
                return self.ipv6_loopback
            try:
                address = int(ipaddress.IPv4Address(address))
            except ValueError:
                return False
        if not isinstance(address, int):
            return False
        return any(lo <= address <= hi for lo, hi in self.ranges)

    def without(self, excluded: AddressPool) -> AddressPool:
        return AddressPool(
            _subtract(self.ranges, excluded.ranges), self.ipv6_loopback and not excluded.ipv6_loopback
        )

    def union(self, other: AddressPool) -> AddressPool:
        return AddressPool(_normalise(self.ranges + other.ranges), self.ipv6_loopback or other.ipv6_loopback)

    def intersection(self, other: AddressPool) -> AddressPool:
        out: list[tuple[int, int]] = []
        for lo, hi in self.ranges:
            for olo, ohi in other.ranges:
                a, b = max(lo, olo), min(hi, ohi)
                if a <= b:
                    out.append((a, b))
        return AddressPool(_normalise(out), self.ipv6_loopback and other.ipv6_loopback)

    @cached_property
    def _blocks(self) -> tuple[int, ...]:
        """The /24 block numbers that hold at least one address of the pool, ascending."""
        blocks: list[int] = []
        for lo, hi in self.ranges:
            first, last = lo >> _BLOCK_BITS, hi >> _BLOCK_BITS
            if blocks and blocks[-1] == first:
                first += 1
            blocks.extend(range(first, last + 1))
        return tuple(blocks)

    def spread(self) -> Iterator[int]:
        """Every IPv4 address of the pool once, in a deterministic order that spreads over the range.

        Why: a plan needing 40 addresses should not take them all from 127.0.0.x, so that runs
        and tools given different slices stay apart and a capture filter on one address is
        meaningful. The order visits /24 blocks in bit-reversed order of their position (0, 1/2,
        1/4, 3/4, ... of the pool), taking the next address of each block per pass; inside a block
        it takes .1-.254 before .0 and .255, which look odd to people even where they work.
        """
        blocks = self._blocks
        if not blocks:
            return
        order = _bit_reversed_order(len(blocks))
        # Per block, its members in host order, built lazily (a plan touches few blocks); None
        # marks a block the pool covers whole, whose rank-th member needs no list at all.
        members: dict[int, list[int] | None] = {}
        for rank in range(256):
            found = False
            for block_index in order:
                block = blocks[block_index]
                if block in members:
                    hosts = members[block]
                else:
                    hosts = members[block] = self._block_members(block)
                if hosts is None:
                    found = True
                    yield (block << _BLOCK_BITS) | _HOST_ORDER[rank]
                elif rank < len(hosts):
                    found = True
                    yield hosts[rank]
            if not found:
                return

    def _block_members(self, block: int) -> list[int] | None:
        """The pool's addresses inside one /24 block, in _HOST_ORDER; None when it has all 256."""
        base = block << _BLOCK_BITS
        top = base | 0xFF
        # The ranges are sorted and disjoint: find the first one that may reach into the block.
        i = bisect.bisect_right(self.ranges, (base, LOOPBACK_LAST + 2**32)) - 1
        if i >= 0 and self.ranges[i][0] <= base and self.ranges[i][1] >= top:
            return None
        present = bytearray(256)
        for lo, hi in self.ranges[max(i, 0) :]:
            if lo > top:
                break
            if hi >= base:
                a, b = max(lo, base) - base, min(hi, top) - base
                present[a : b + 1] = b"\x01" * (b - a + 1)
        return [base | h for h in _HOST_ORDER if present[h]]

    def ascending(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    def take(self, count: int, *, spread: bool = True) -> tuple[int, ...]:
        """The first `count` addresses of `spread()` (or ascending order); fewer if the pool is smaller."""
        out: list[int] = []
        if count <= 0:
            return ()
        for ip in self.spread() if spread else self.ascending():
            out.append(ip)
            if len(out) == count:
                break
        return tuple(out)

    def describe(self) -> str:
        """Compact text form that parses back to the same pool."""
        parts = [
            ip_to_str(lo) if lo == hi else f"{ip_to_str(lo)}-{ip_to_str(hi)}" for lo, hi in self.ranges
        ]
        if self.ipv6_loopback:
            parts.append(IPV6_LOOPBACK)
        return ",".join(parts) if parts else "(empty)"


# Within-block host order: .1-.254, then .0 and .255.
_HOST_ORDER = (*range(1, 255), 0, 255)


@functools.lru_cache(maxsize=8)  # the default pool's 65,536 blocks cost ~25 ms to order
def _bit_reversed_order(n: int) -> tuple[int, ...]:
    """0..n-1 in van der Corput order: each prefix is spread as evenly as possible over 0..n-1."""
    if n <= 1:
        return tuple(range(n))
    bits = (n - 1).bit_length()
    return tuple(r for i in range(1 << bits) if (r := _reverse_bits(i, bits)) < n)


@functools.cache
def _reverse_bits_table() -> tuple[int, ...]:
    return tuple(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse_bits(value: int, bits: int) -> int:
    table = _reverse_bits_table()
    out = 0
    for shift in range(0, 24, 8):
        out = (out << 8) | table[(value >> shift) & 0xFF]
    return out >> (24 - bits)


def _normalise(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _subtract(
    ranges: tuple[tuple[int, int], ...], removed: tuple[tuple[int, int], ...]
) -> tuple[tuple[int, int], ...]:
    out = list(ranges)
    for rlo, rhi in removed:
        nxt: list[tuple[int, int]] = []
        for lo, hi in out:
            if rhi < lo or rlo > hi:
                nxt.append((lo, hi))
                continue
            if lo < rlo:
                nxt.append((lo, rlo - 1))
            if hi > rhi:
                nxt.append((rhi + 1, hi))
        out = nxt
    return tuple(out)


DEFAULT_SOURCE_POOL = AddressPool(((LOOPBACK_FIRST + 2, LOOPBACK_LAST - 1),))


# ---------------------------------------------------------------------------------------------
# Parsing


def _parse_v4(text: str, whole: str) -> int:
    if text == "localhost":
        return LOCALHOST_V4
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise PoolSyntaxError(
            f"{text!r} in {whole!r} is not an IPv4 address; write e.g. 127.0.0.2, 127.0.0.2-127.0.0.9 "
            "or 127.0.0.0/24"
        ) from None


def _parse_item(item: str, whole: str) -> AddressPool:
    """One pool item without its exclusion marker."""
    if item in ("::1", "[::1]"):
        return AddressPool(ipv6_loopback=True)
    if item == "default":
        return DEFAULT_SOURCE_POOL
    if ":" in item:
        raise PoolSyntaxError(
            f"{item!r} in {whole!r}: the only IPv6 loopback address is ::1 (no other IPv6 address is "
            "loopback); use 127.x.y.z addresses for ranges"
        )
    if "/" in item:
        try:
            net = ipaddress.IPv4Network(item, strict=False)
        except ValueError:
            raise PoolSyntaxError(
                f"{item!r} in {whole!r} is not a valid CIDR block; write e.g. 127.0.0.0/16"
            ) from None
        return AddressPool(((int(net.network_address), int(net.broadcast_address)),))
    if "-" in item:
        left, _, right = item.partition("-")
        lo, hi = _parse_v4(left.strip(), whole), _parse_v4(right.strip(), whole)
        if lo > hi:
            raise PoolSyntaxError(
                f"range {item!r} is reversed (its start is after its end); "
                f"write {right.strip()}-{left.strip()}"
            )
        return AddressPool(((lo, hi),))
    ip = _parse_v4(item, whole)
    return AddressPool(((ip, ip),))


def parse_pool(text: str, *, allow_non_loopback: bool = False) -> AddressPool:
    """Parse a pool such as '127.0.0.0/16,!127.0.0.1,::1'. Raises PoolSyntaxError / NotLoopbackError."""
    whole = text.strip()
    if not whole:
        raise PoolSyntaxError("empty address pool; write e.g. 127.0.0.2-127.0.0.50 or 127.1.0.0/16")
    pool = AddressPool()
    excluded = AddressPool()
    saw_include = False
    for raw in whole.split(","):
        item = raw.strip()
        if not item:
            raise PoolSyntaxError(f"empty item in address pool {whole!r}; remove the extra comma")
        if item[0] in "!^":
            excluded = excluded.union(_parse_item(item[1:].strip(), whole))
            continue
        part = _parse_item(item, whole)
        check_loopback(part, allow_non_loopback=allow_non_loopback, what=item)
        pool = pool.union(part)
        saw_include = True
    if not saw_include:
        # Only exclusions: subtract from the default pool, which is what people mean by "!127.0.0.9".
        pool = DEFAULT_SOURCE_POOL
    pool = pool.without(excluded)
    if len(pool) == 0:
        raise PoolSyntaxError(f"address pool {whole!r} is empty after exclusions; include some addresses")
    return pool


def check_loopback(pool: AddressPool, *, allow_non_loopback: bool, what: str) -> None:
    if allow_non_loopback:
        return
    for lo, hi in pool.ranges:
        if not (is_loopback_v4(lo) and is_loopback_v4(hi)):
            raise NotLoopbackError(
                f"{what} is not a loopback address (loopfan stays on 127.0.0.0/8 and ::1); use a 127.x.y.z "
                "address, or pass --allow-non-loopback for an address of this host"
            )


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One (address, port). `address` is a dotted IPv4 string or '::1'."""

    address: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.is_ipv6 else f"{self.address}:{self.port}"


def _parse_ports(text: str, whole: str) -> range:
    lo_text, dash, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
    except ValueError:
        raise PoolSyntaxError(
            f"port {text!r} in {whole!r} is not a number; write e.g. 127.0.0.1:8080 or 127.0.0.1:9000-9003"
        ) from None
    for port in (lo, hi):
        if not 1 <= port <= 65535:
            raise PoolSyntaxError(f"port {port} in {whole!r} is out of range; ports go from 1 to 65535")
    if lo > hi:
        raise PoolSyntaxError(f"port range {text!r} in {whole!r} is reversed; write {hi}-{lo}")
    return range(lo, hi + 1)


# More endpoints than this in one argument is a typo (a /8 where a /24 was meant), not a plan.
MAX_ENDPOINTS = 1_000_000


def parse_endpoints(text: str, *, allow_non_loopback: bool = False) -> tuple[Endpoint, ...]:
    """Parse 'ADDRS:PORTS[,ADDRS:PORTS...]' into endpoints, address-major, in pool order."""
    whole = text.strip()
    if not whole:
        raise PoolSyntaxError("empty endpoint; write ADDRESS:PORT, e.g. 127.0.0.1:8080")
    if "://" in whole:
        # A URL where only endpoints are taken (`serve --listen`, the Python API): read as an
        # endpoint, "http" looks like the start of an IPv6 address and the hint would be nonsense.
        host_port = whole.partition("://")[2].partition("/")[0].rpartition("@")[2]
        example = host_port if host_port.rpartition(":")[2].isdigit() else "127.0.0.1:8080"
        raise PoolSyntaxError(f"{whole!r} is a URL; write ADDRESS:PORT here, e.g. {example}")
    out: list[Endpoint] = []
    for raw in whole.split(","):
        item = raw.strip()
        if not item:
            raise PoolSyntaxError(f"empty item in endpoint list {whole!r}; remove the extra comma")
        if item.startswith("["):
            addr_text, sep, port_text = item[1:].partition("]:")
            if not sep:
                raise PoolSyntaxError(f"{item!r}: write an IPv6 endpoint as [::1]:PORT")
        else:
            addr_text, sep, port_text = item.rpartition(":")
            if not sep:
                raise PoolSyntaxError(
                    f"{item!r} has no port; write ADDRESS:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
                )
            if not addr_text.strip():
                raise PoolSyntaxError(f"{item!r} has no address; write ADDRESS:PORT, e.g. 127.0.0.1:8080")
            if ":" in addr_text:
                # '::1:80' is itself an IPv6 address (and '::1:8080-8081' could be a range of them):
                # which colon starts the port is a guess, so the bracket form is asked for.
                raise PoolSyntaxError(f"{item!r} is ambiguous: an IPv6 address has colons of its own; "
                                      f"write [{addr_text.strip()}]:{port_text.strip()}")
        ports = _parse_ports(port_text, whole)
        pool = _parse_item(addr_text, whole)
        check_loopback(pool, allow_non_loopback=allow_non_loopback, what=item)
        # Count before listing: 127.0.0.0/8:80 must be refused, not enumerated.
        if len(pool) * len(ports) > MAX_ENDPOINTS:
            raise PoolSyntaxError(
                f"{item!r} names {len(pool) * len(ports):,} endpoints (at most {MAX_ENDPOINTS:,}); "
                "give a smaller address or port range"
            )
        addresses: list[str] = [ip_to_str(ip) for lo, hi in pool.ranges for ip in range(lo, hi + 1)]
        if pool.ipv6_loopback:
            addresses.append(IPV6_LOOPBACK)
        out.extend(Endpoint(a, p) for a in addresses for p in ports)
    return tuple(dict.fromkeys(out))  # drop repeats, keep order
