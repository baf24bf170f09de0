"""The four tagging programs, as bytecode, and the layout of their shared coverage counters.

Rules of this file: pure (bytes out, no syscalls). Every program returns 1 ("allow") except where
the IPv6 policy is "refuse"; none ever rewrites a destination. The counters are one entry of a BPF
array map holding `len(Counter)` u64 values, bumped atomically, read by the tagger at the end.

Kernel facts (net/core/filter.c, checked on 6.x):
- `struct bpf_sock_addr` offsets: user_family 0, user_ip4 4, user_ip6[4] 8, user_port 24, family 28,
  type 32, protocol 36, msg_src_ip4 40, msg_src_ip6[4] 44, sk 64 (a `struct bpf_sock *`).
  Addresses are in network byte order; a 4-byte load on little-endian puts the first octet in the
  low byte, so "is 127.x.y.z" is `(word & 0xff) == 127`.
- `struct bpf_sock` offsets: src_ip4 24, src_ip6[4] 28 - the address the socket is already bound to.
- bpf_bind(ctx, addr, len) is allowed in the connect4/connect6 hooks only. With port 0 it binds
  with IP_BIND_ADDRESS_NO_PORT semantics (BIND_FORCE_ADDRESS_NO_PORT), so tagging costs no port
  budget: the port is still chosen per 4-tuple at connect(). It returns -EINVAL on a socket that
  already has a port.
- In the UDP sendmsg4 hook bpf_bind is refused by the verifier; writing ctx->msg_src_ip4 sets the
  datagram's source instead. Its initial value is the socket's bound address (or IP_PKTINFO's),
  so non-zero means the program chose a source itself. The hook runs for unconnected sends only
  (connected UDP sockets were tagged at connect()). An IPv6 socket sending to ::ffff:127.x goes
  through the IPv4 path and so through sendmsg4.
- A UDP socket the program bound to the wildcard (a server on 0.0.0.0:PORT) also has
  msg_src_ip4 == 0, and so has every unbound socket. The socket's port cannot tell them apart:
  inet_sendmsg autobinds an unbound UDP socket to an ephemeral port *before* the sendmsg4 hook
  runs, so sk->src_port is set in both cases. Nor can "did the program call bind()": clients bind
  to 0.0.0.0:0 before sending too (libuv/Node, Java's DatagramSocket) and choose nothing by it.
  What tells them apart is what bind() asked for, which only the bind4/bind6 hooks see (user_ip*,
  user_port, before the kernel picks a port; post_bind sees the port already picked). They run for
  the program's own bind() calls only (not autobind, not bpf_bind), so `bind` records the cookie
  of a UDP socket whose bind chose a port or an address, in an LRU hash map, and sendmsg4 leaves
  those sockets alone. (A bind that then fails leaves a stale entry: that socket is left alone.)
- connect() to 0.0.0.0 means "this host": the kernel routes it to the socket's source address,
  127.0.0.1 for an unbound socket - but the tag address once bpf_bind has run, where nothing
  listens. So 0.0.0.0 (and ::ffff:0.0.0.0) destinations are left alone and counted apart.
"""

from __future__ import annotations

import ipaddress
import itertools
from enum import IntEnum

from loopfan.isolation.bpf import (
    HELPER_BIND,
    HELPER_GET_SOCKET_COOKIE,
    HELPER_MAP_LOOKUP_ELEM,
    HELPER_MAP_UPDATE_ELEM,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R10,
    Item,
    Label,
    add64_imm,
    and64_imm,
    assemble,
    atomic_add64,
    call,
    exit_,
    ja,
    jeq_imm,
    jeq_reg,
    jne_imm,
    jne_reg,
    ld_map_fd,
    load,
    mov32_imm,
    mov64_imm,
    mov64_reg,
    or64_reg,
    store_imm,
    store_reg,
)


class Counter(IntEnum):
    """One u64 each in the coverage map, in this order."""

    CONNECT_TAGGED = 0  # connect() to 127/8 from an IPv4 socket, bound to the tag address
    CONNECT_TAGGED_MAPPED = 1  # the same from an IPv6 socket to ::ffff:127.x (Java and friends)
    CONNECT_ALREADY_BOUND = 2  # the program bound the socket itself: left alone
    CONNECT_BIND_ERROR = 3  # bpf_bind failed otherwise (e.g. EADDRINUSE): left untagged
    CONNECT_NOT_LOOPBACK = 4  # destination outside 127/8: never touched
    CONNECT_IPV6_LOOPBACK = 5  # to ::1 (or ::): IPv6 has one loopback address, nothing to tag from
    DGRAM_TAGGED = 6  # unconnected UDP datagram to 127/8 given the tag source
    DGRAM_SOURCE_SET = 7  # the program chose the datagram's source itself: left alone
    DGRAM_NOT_LOOPBACK = 8
    DGRAM_IPV6_LOOPBACK = 9
    CONNECT_TO_ANY = 10  # connect() to 0.0.0.0: left alone (after tagging it would reach the tag address)
    DGRAM_TO_ANY = 11  # the same for unconnected datagrams


COUNTERS_SIZE_BYTES = 8 * len(Counter)

# Return values of sock_addr programs: 1 lets the call go on, 0 fails it with EPERM.
ALLOW, REFUSE = 1, 0

AF_INET, AF_INET6 = 2, 10
EINVAL = 22

# Stack slots (r10 is the read-only frame pointer; 512 bytes below it are ours).
_KEY = -8  # u32 map key (always 0)
_SOCKADDR = -48  # 32 bytes: room for a sockaddr_in6 (28)
_COOKIE = -16  # u64 socket cookie: the key of the bound-sockets map
_ONE = -20  # u32 value stored in the bound-sockets map

BOUND_SOCKETS_MAX = 65536  # LRU: the oldest entries go first, closed sockets' entries among them
SOCK_DGRAM = 2

_V4MAPPED_WORD = 0xFFFF0000  # bytes 00 00 ff ff, loaded little-endian
_V6_LOOPBACK_WORD = 0x01000000  # bytes 00 00 00 01


def address_word(address: str) -> int:
    """An IPv4 address as a little-endian load of its network-order bytes sees it."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


_labels = itertools.count()


def _count(counter: Counter, map_fd: int) -> list[Item]:
    """counters[counter] += 1 (clobbers r0-r5). A lookup per bump: each path bumps once."""
    skip = f"count_skip_{next(_labels)}"
    return [
        store_imm(4, R10, _KEY, 0),
        ld_map_fd(R1, map_fd),
        mov64_reg(R2, R10),
        add64_imm(R2, _KEY),
        call(HELPER_MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, skip),  # the verifier insists on the NULL check even for arrays
        mov64_imm(R1, 1),
        atomic_add64(R0, 8 * counter, R1),
        Label(skip),
    ]


def _finish(map_fd: int, *, tagged: Counter, already: Counter) -> list[Item]:
    """After bpf_bind: count the result by errno."""
    return [
        jeq_imm(R0, 0, "tagged"),
        jeq_imm(R0, -EINVAL, "already"),
        *_count(Counter.CONNECT_BIND_ERROR, map_fd),
        ja("out"),
        Label("tagged"),
        *_count(tagged, map_fd),
        ja("out"),
        Label("already"),
        *_count(already, map_fd),
        ja("out"),
    ]


def connect4(source: str, map_fd: int) -> bytes:
    """BPF_CGROUP_INET4_CONNECT: bind sockets headed for 127/8 to `source` before connect() runs."""
    src = address_word(source)
    return assemble(
        [
            mov64_reg(R6, R1),  # r6 = ctx (r1-r5 die at every call)
            load(4, R7, R6, 4),  # user_ip4
            jeq_imm(R7, 0, "any_address"),
            mov64_reg(R8, R7),
            and64_imm(R8, 0xFF),
            jne_imm(R8, 127, "not_loopback"),
            Label("loopback"),
            # Already bound by the program (an address, perhaps with NO_PORT)? Leave it alone -
            # unless it is our own tag address (a UDP socket connecting again).
            load(8, R2, R6, 64),  # ctx->sk
            load(4, R3, R2, 24),  # sk->src_ip4
            jeq_imm(R3, 0, "bind"),
            mov32_imm(R4, src),
            jeq_reg(R3, R4, "tagged"),
            ja("already"),
            Label("bind"),
            store_imm(8, R10, _SOCKADDR, 0),
            store_imm(8, R10, _SOCKADDR + 8, 0),
            store_imm(2, R10, _SOCKADDR, AF_INET),  # sin_family; sin_port stays 0
            mov32_imm(R4, src),
            store_reg(4, R10, _SOCKADDR + 4, R4),  # sin_addr
            mov64_reg(R1, R6),
            mov64_reg(R2, R10),
            add64_imm(R2, _SOCKADDR),
            mov64_imm(R3, 16),
            call(HELPER_BIND),
            *_finish(map_fd, tagged=Counter.CONNECT_TAGGED, already=Counter.CONNECT_ALREADY_BOUND),
            Label("any_address"),
            *_count(Counter.CONNECT_TO_ANY, map_fd),
            ja("out"),
            Label("not_loopback"),
            *_count(Counter.CONNECT_NOT_LOOPBACK, map_fd),
            Label("out"),
            mov64_imm(R0, ALLOW),
            exit_(),
        ]
    )


def connect6(source: str, map_fd: int, *, refuse_ipv6_loopback: bool) -> bytes:
    """BPF_CGROUP_INET6_CONNECT: tag v4-mapped ::ffff:127.x destinations; count (or refuse) ::1."""
    src = address_word(source)
    return assemble(
        [
            mov64_reg(R6, R1),
            load(4, R2, R6, 8),
            load(4, R3, R6, 12),
            load(4, R4, R6, 16),
            load(4, R5, R6, 20),
            or64_reg(R2, R3),
            jne_imm(R2, 0, "not_loopback"),  # first 64 bits are zero in ::1, :: and ::ffff:a.b.c.d
            jne_imm(R4, 0, "mapped"),
            jeq_imm(R5, 0, "v6_loopback"),  # :: reaches ::1
            mov32_imm(R7, _V6_LOOPBACK_WORD),
            jeq_reg(R5, R7, "v6_loopback"),
            ja("not_loopback"),
            Label("mapped"),
            mov32_imm(R7, _V4MAPPED_WORD),
            jne_reg(R4, R7, "not_loopback"),
            jeq_imm(R5, 0, "any_address"),  # ::ffff:0.0.0.0
            mov64_reg(R8, R5),
            and64_imm(R8, 0xFF),
            jne_imm(R8, 127, "not_loopback"),
            Label("loopback"),
            # Already bound? Any of src_ip6's words set means the program bound it (ours if the
            # last word is the tag address).
            load(8, R2, R6, 64),
            *_or_of_words(R3, R4, R2, (28, 32, 36)),
            load(4, R5, R2, 40),  # the last word, kept in R5: compared with the tag address below
            or64_reg(R3, R5),
            jeq_imm(R3, 0, "bind"),
            mov32_imm(R4, src),
            jeq_reg(R5, R4, "tagged"),
            ja("already"),
            Label("bind"),
            *[store_imm(8, R10, _SOCKADDR + i, 0) for i in (0, 8, 16, 24)],
            store_imm(2, R10, _SOCKADDR, AF_INET6),  # sin6_family; port, flowinfo, scope stay 0
            mov32_imm(R4, _V4MAPPED_WORD),
            store_reg(4, R10, _SOCKADDR + 16, R4),  # sin6_addr word 2: 00 00 ff ff
            mov32_imm(R4, src),
            store_reg(4, R10, _SOCKADDR + 20, R4),  # sin6_addr word 3: the tag address
            mov64_reg(R1, R6),
            mov64_reg(R2, R10),
            add64_imm(R2, _SOCKADDR),
            mov64_imm(R3, 28),
            call(HELPER_BIND),
            *_finish(map_fd, tagged=Counter.CONNECT_TAGGED_MAPPED, already=Counter.CONNECT_ALREADY_BOUND),
            Label("any_address"),
            *_count(Counter.CONNECT_TO_ANY, map_fd),
            ja("out"),
            Label("v6_loopback"),
            *_count(Counter.CONNECT_IPV6_LOOPBACK, map_fd),
            *([mov64_imm(R0, REFUSE), exit_()] if refuse_ipv6_loopback else [ja("out")]),
            Label("not_loopback"),
            *_count(Counter.CONNECT_NOT_LOOPBACK, map_fd),
            Label("out"),
            mov64_imm(R0, ALLOW),
            exit_(),
        ]
    )


def sendmsg4(source: str, map_fd: int, bound_fd: int) -> bytes:
    """BPF_CGROUP_UDP4_SENDMSG: give unconnected datagrams to 127/8 the tag source - unless the
    program chose the source itself (a bound address, IP_PKTINFO, or a bind() to 0.0.0.0:PORT)."""
    src = address_word(source)
    return assemble(
        [
            mov64_reg(R6, R1),
            load(4, R7, R6, 4),
            jeq_imm(R7, 0, "any_address"),
            mov64_reg(R8, R7),
            and64_imm(R8, 0xFF),
            jne_imm(R8, 127, "not_loopback"),
            load(4, R2, R6, 40),  # msg_src_ip4: the source already chosen, if any
            mov32_imm(R3, src),
            jeq_reg(R2, R3, "tagged"),  # a socket we bound at an earlier connect()
            jne_imm(R2, 0, "source_set"),
            # Wildcard source: bound by the program to 0.0.0.0:PORT (see bind), or a client's socket?
            mov64_reg(R1, R6),
            call(HELPER_GET_SOCKET_COOKIE),
            store_reg(8, R10, _COOKIE, R0),
            ld_map_fd(R1, bound_fd),
            mov64_reg(R2, R10),
            add64_imm(R2, _COOKIE),
            call(HELPER_MAP_LOOKUP_ELEM),
            jne_imm(R0, 0, "source_set"),
            mov32_imm(R3, src),
            store_reg(4, R6, 40, R3),  # (BPF_ST into the context is refused; BPF_STX is fine)
            Label("tagged"),
            *_count(Counter.DGRAM_TAGGED, map_fd),
            ja("out"),
            Label("source_set"),
            *_count(Counter.DGRAM_SOURCE_SET, map_fd),
            ja("out"),
            Label("any_address"),
            *_count(Counter.DGRAM_TO_ANY, map_fd),
            ja("out"),
            Label("not_loopback"),
            *_count(Counter.DGRAM_NOT_LOOPBACK, map_fd),
            Label("out"),
            mov64_imm(R0, ALLOW),
            exit_(),
        ]
    )


def _or_of_words(acc: int, tmp: int, base: int, offsets: tuple[int, ...]) -> list[Item]:
    """acc = the 32-bit words at base+offsets OR'ed together (zero iff all are: an IPv6 address)."""
    out: list[Item] = [load(4, acc, base, offsets[0])]
    for off in offsets[1:]:
        out += [load(4, tmp, base, off), or64_reg(acc, tmp)]
    return out


def bind(bound_fd: int, *, ipv6: bool) -> bytes:
    """BPF_CGROUP_INET4/6_BIND: remember UDP sockets whose bind() chose something (by cookie).

    Chose something = a non-zero port (a server, even on the wildcard address) or a specific
    address (the program picked its source). A bind to the wildcard with port 0 chooses nothing:
    that is a client asking for an ephemeral port, and its datagrams are tagged like any other.
    """
    if ipv6:
        address_is_set: list[Item] = [*_or_of_words(R2, R3, R6, (8, 12, 16, 20)),  # user_ip6[0..3]
                                      jne_imm(R2, 0, "chose")]
    else:
        address_is_set = [load(4, R2, R6, 4), jne_imm(R2, 0, "chose")]  # user_ip4
    return assemble(
        [
            mov64_reg(R6, R1),  # ctx: struct bpf_sock_addr
            load(4, R2, R6, 32),  # type
            jne_imm(R2, SOCK_DGRAM, "out"),
            load(4, R2, R6, 24),  # user_port (network order; any non-zero is non-zero)
            jne_imm(R2, 0, "chose"),
            *address_is_set,
            ja("out"),
            Label("chose"),
            mov64_reg(R1, R6),
            call(HELPER_GET_SOCKET_COOKIE),
            store_reg(8, R10, _COOKIE, R0),
            store_imm(4, R10, _ONE, 1),
            ld_map_fd(R1, bound_fd),
            mov64_reg(R2, R10),
            add64_imm(R2, _COOKIE),
            mov64_reg(R3, R10),
            add64_imm(R3, _ONE),
            mov64_imm(R4, 0),  # BPF_ANY
            call(HELPER_MAP_UPDATE_ELEM),
            Label("out"),
            mov64_imm(R0, ALLOW),
            exit_(),
        ]
    )


def sendmsg6(map_fd: int, *, refuse_ipv6_loopback: bool) -> bytes:
    """BPF_CGROUP_UDP6_SENDMSG: count (or refuse) datagrams to ::1; nothing is rewritten here."""
    return assemble(
        [
            mov64_reg(R6, R1),
            load(4, R2, R6, 8),
            load(4, R3, R6, 12),
            load(4, R4, R6, 16),
            load(4, R5, R6, 20),
            or64_reg(R2, R3),
            jne_imm(R2, 0, "not_loopback"),
            mov32_imm(R7, _V4MAPPED_WORD),
            jeq_reg(R4, R7, "out"),  # v4-mapped: handled (and counted) by sendmsg4
            jne_imm(R4, 0, "not_loopback"),
            jeq_imm(R5, 0, "v6_loopback"),
            mov32_imm(R7, _V6_LOOPBACK_WORD),
            jeq_reg(R5, R7, "v6_loopback"),
            Label("not_loopback"),
            *_count(Counter.DGRAM_NOT_LOOPBACK, map_fd),
            ja("out"),
            Label("v6_loopback"),
            *_count(Counter.DGRAM_IPV6_LOOPBACK, map_fd),
            *([mov64_imm(R0, REFUSE), exit_()] if refuse_ipv6_loopback else []),
            Label("out"),
            mov64_imm(R0, ALLOW),
            exit_(),
        ]
    )
