"""Capture files: a streaming pcap reader/writer and a pcapng writer that makes a file describe itself.

Rules of this file: formats only, no capturing. Files are processed record by record (a capture
may be larger than memory). Everything loopfan adds to a capture is standard pcapng that
Wireshark and tshark read: the section comment (SHB opt_comment) lists the tags, and a Name
Resolution Block maps each tagged address to its label, so `ip.host=="kafka-client"` matches once
name resolution is on (tshark -N n... or Wireshark's "Resolve network addresses").

Formats (pcap: wiki.wireshark.org/Development/LibpcapFileFormat; pcapng: RFC draft
draft-ietf-opsawg-pcapng): little-endian output; pcap input in either byte order, micro- or
nanosecond resolution.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

LINKTYPE_ETHERNET = 1  # what Linux `lo` captures as: a fake Ethernet header with zero MACs
LINKTYPE_NULL = 0  # BSD/macOS lo0: a 4-byte address-family header

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D

_SHB, _IDB, _NRB, _EPB, _ISB = 0x0A0D0D0A, 0x00000001, 0x00000004, 0x00000006, 0x00000005
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL = 4
_IF_NAME, _IF_TSRESOL = 2, 9
_ISB_IFDROP = 5
_NRB_END, _NRB_IPV4, _NRB_IPV6 = 0, 1, 2


class CaptureFormatError(ValueError):
    """A file that is not the capture format it claims to be."""


@dataclass(frozen=True, slots=True)
class Packet:
    timestamp_ns: int
    data: bytes
    original_length: int


@dataclass(frozen=True, slots=True)
class PcapHeader:
    linktype: int
    snaplen: int


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# ---------------------------------------------------------------------------------------------
# pcap


def _pcap_head(head: bytes) -> tuple[str, int, int, int]:
    """A pcap file header's byte order, nanoseconds per timestamp unit, snaplen and link type."""
    if len(head) < 24:
        raise CaptureFormatError("too short for a pcap file")
    for order in ("<", ">"):
        magic = struct.unpack(order + "I", head[:4])[0]
        if magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
            break
    else:
        raise CaptureFormatError("not a pcap file (bad magic number)")
    _vmaj, _vmin, _zone, _sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII", head[4:24])
    return order, 1 if magic == _PCAP_MAGIC_NS else 1000, snaplen, linktype


def read_pcap(stream: BinaryIO) -> tuple[PcapHeader, Iterator[Packet]]:
    """Parse a pcap header and return it with an iterator over the packets (a truncated last
    record, as left by a capture cut short, ends the iteration quietly)."""
    order, scale, snaplen, linktype = _pcap_head(stream.read(24))

    def packets() -> Iterator[Packet]:
        record = struct.Struct(order + "IIII")
        while True:
            rec = stream.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, orig = record.unpack(rec)
            data = stream.read(incl)
            if len(data) < incl:
                return
            yield Packet(sec * 1_000_000_000 + frac * scale, data, orig)

    return PcapHeader(linktype & 0xFFFF, snaplen), packets()


def last_timestamp_ns(path: Path, since_ns: int, until_ns: int, tail: int = 1 << 18) -> int | None:
    """The time of the last whole record of a pcap file a tool is still writing, from its last
    `tail` bytes alone (reading a capture of millions of packets from the start would take
    seconds). A record boundary there is found by chaining record headers whose time lies between
    since_ns and until_ns and whose lengths fit, to the end of the file (where a record may be
    half written); None if the file has no whole record there or is not pcap."""
    try:
        with open(path, "rb") as fh:
            order, scale, snaplen, _ = _pcap_head(fh.read(24))
            size = fh.seek(0, 2)
            start = max(24, size - tail)
            fh.seek(start)
            data = fh.read(size - start)
    except (OSError, CaptureFormatError):
        return None
    record = struct.Struct(order + "IIII")
    units = 1_000_000_000 // scale
    for first in range(max(0, len(data) - 15)):
        at, last = first, None
        while at + 16 <= len(data):
            sec, frac, incl, orig = cast(tuple[int, int, int, int], record.unpack_from(data, at))
            t: int = sec * 1_000_000_000 + frac * scale
            if not (since_ns <= t <= until_ns and frac < units and incl <= snaplen and incl <= orig):
                break  # not a header: the chain (or this start) is wrong
            if at + 16 + incl > len(data):
                at = len(data)  # the record being written
                break
            last, at = t, at + 16 + incl
        else:
            at = len(data)  # a header being written
        if at == len(data) and last is not None:
            return last
    return None


class PcapWriter:
    """Plain pcap, nanosecond resolution (what `--format pcap` asks for)."""

    def __init__(self, stream: BinaryIO, *, linktype: int, snaplen: int = 262144) -> None:
        self._stream = stream
        stream.write(struct.pack("<IHHiIII", _PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype))

    def write(self, packet: Packet) -> None:
        sec, ns = divmod(packet.timestamp_ns, 1_000_000_000)
        self._stream.write(struct.pack("<IIII", sec, ns, len(packet.data), packet.original_length))
        self._stream.write(packet.data)

    def flush(self) -> None:
        self._stream.flush()


# ---------------------------------------------------------------------------------------------
# pcapng


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value) for code, value in options)
    return out + struct.pack("<HH", _OPT_END, 0) if out else b""


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def section_header(comment: str, application: str) -> bytes:
    opts = _options(
        [*([(_OPT_COMMENT, comment.encode())] if comment else []), (_SHB_USERAPPL, application.encode())]
    )
    return _block(_SHB, struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface_description(linktype: int, snaplen: int, if_name: str) -> bytes:
    opts = _options([(_IF_NAME, if_name.encode()), (_IF_TSRESOL, bytes([9]))])  # 10^-9 s: nanoseconds
    return _block(_IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def name_resolution(names: Iterable[tuple[str, str]]) -> bytes:
    """NRB records: each (address, label) pair; IPv4 and IPv6 addresses both allowed."""
    records = b""
    for address, label in names:
        ip = ipaddress.ip_address(address)
        kind = _NRB_IPV4 if ip.version == 4 else _NRB_IPV6
        value = ip.packed + label.encode() + b"\0"
        records += struct.pack("<HH", kind, len(value)) + _pad4(value)
    records += struct.pack("<HH", _NRB_END, 0)
    return _block(_NRB, records)


def enhanced_packet(packet: Packet, interface_id: int = 0) -> bytes:
    ts = packet.timestamp_ns
    body = struct.pack(
        "<IIIII", interface_id, ts >> 32, ts & 0xFFFFFFFF, len(packet.data), packet.original_length
    ) + _pad4(packet.data)
    return _block(_EPB, body)


def interface_statistics(timestamp_ns: int, dropped: int, interface_id: int = 0) -> bytes:
    opts = _options([(_ISB_IFDROP, struct.pack("<Q", dropped))])
    return _block(_ISB, struct.pack("<III", interface_id, timestamp_ns >> 32, timestamp_ns & 0xFFFFFFFF) + opts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Description:
    """What loopfan writes into a pcapng file besides the packets."""

    comment: str
    names: tuple[tuple[str, str], ...]  # (address, label)
    if_name: str = "lo"
    application: str = "loopfan"


def write_pcapng(
    stream: BinaryIO,
    header: PcapHeader,
    packets: Iterable[Packet],
    description: Description,
    *,
    dropped: int | None = None,
) -> int:
    """Write a whole pcapng section; return the number of packets written."""
    stream.write(section_header(description.comment, description.application))
    stream.write(interface_description(header.linktype, header.snaplen, description.if_name))
    if description.names:
        stream.write(name_resolution(description.names))
    count = 0
    last_ts = 0
    for packet in packets:
        stream.write(enhanced_packet(packet))
        count += 1
        last_ts = packet.timestamp_ns
    if dropped is not None:
        stream.write(interface_statistics(last_ts, dropped))
    return count


def pcap_to_pcapng(
    source: BinaryIO, destination: BinaryIO, description: Description, *, dropped: int | None = None
) -> int:
    """Rewrite a pcap stream (tcpdump's output) as a self-describing pcapng stream."""
    header, packets = read_pcap(source)
    return write_pcapng(destination, header, packets, description, dropped=dropped)
