"""Wireshark display filters for loopback addresses and connections (pure; no imports of
loopfan's own, so the engine's report and the isolation commands both use it).

Wireshark keeps IPv4 and IPv6 in separate protocols: `ip.addr` takes only IPv4 addresses and
host names, so `ip.src==::1` does not even compile ("::1" is not a valid hostname or IPv4
address); an IPv6 address needs `ipv6.src`, `ipv6.dst` or `ipv6.addr`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal


def address_field(address: str, direction: Literal["src", "dst", "addr"]) -> str:
    """'ip.src' for 127.0.0.5, 'ipv6.src' for ::1 (a colon only ever appears in IPv6)."""
    return f"{'ipv6' if ':' in address else 'ip'}.{direction}"


def address_filter(address: str) -> str:
    """Packets from or to `address`: 'ip.addr==127.0.0.5', 'ipv6.addr==::1'."""
    return f"{address_field(address, 'addr')}=={address}"


def addresses_filter(addresses: Iterable[str]) -> str:
    """Packets from or to any of `addresses`, each named once.

    An `||` chain, not a set: `ip.addr in {A B}` (the space-separated set of Wireshark 3.x) matches
    almost nothing in Wireshark 4.0 - its sets want commas, which 3.x in turn refuses.
    """
    return " || ".join(address_filter(a) for a in dict.fromkeys(addresses))


def connection_filter(source: str, source_port: int, target: str, target_port: int) -> str:
    """One TCP connection, as much of its 4-tuple as is known (an empty source or a zero source
    port are left out: a connect that failed early may not have had them)."""
    parts = [f"{address_field(source, 'src')}=={source}"] if source else []
    if source_port:
        parts.append(f"tcp.srcport=={source_port}")
    parts += [f"{address_field(target, 'dst')}=={target}", f"tcp.dstport=={target_port}"]
    return " && ".join(parts)
