"""Capturing exactly the traffic of tagged addresses on the loopback interface.

Rules of this file: filter strings and the file's description are pure functions; the two
backends (an external tcpdump/dumpcap, or the built-in AF_PACKET reader) only ever write a plain
pcap temp file next to the output, and `CaptureSession.stop` turns that into the final file
(pcapng with names and comment, or pcap). A session always stops its backend - on return, on
exceptions, and (for external tools) when loopfan dies, through PR_SET_PDEATHSIG.

Linux facts (checked here, see docs/isolation.md):
- `lo` captures as LINKTYPE_ETHERNET (ARPHRD_LOOPBACK 772: a fake 14-byte Ethernet header with
  zero MACs). On an AF_PACKET socket each lo packet shows up twice, as PACKET_OUTGOING and as
  PACKET_HOST; libpcap drops the outgoing copy, and so does our filter.
- Under load the filter must run in the kernel (SO_ATTACH_FILTER, classic BPF), or the socket's
  receive queue fills with traffic we do not want and packets are lost. PACKET_STATISTICS says how
  many were dropped anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from loopfan.errors import HostError, UsageError
from loopfan.isolation.pcapng import (
    LINKTYPE_ETHERNET,
    Description,
    Packet,
    PcapHeader,
    PcapWriter,
    last_timestamp_ns,
    read_pcap,
    write_pcapng,
)
from loopfan.isolation.writewatch import (
    WRITE_FIX,
    CountCheck,
    captured_count,
    is_count_reply,
    is_write_error,
    packets_unsaved,
    signal_caught,
    unsaved_cause,
    unsaved_message,
)
from loopfan.wireshark import addresses_filter
from loopfan.wording import counted as counted_noun

FORMATS = ("pcapng", "pcap")
BACKENDS = ("auto", "dumpcap", "tcpdump", "builtin")
SNAPLEN = 262144  # libpcap's default; TPACKET_V3 rings store packets at their real size, so it costs nothing
BUFFER_MIB = 64  # the kernel ring each backend captures into


@dataclass(frozen=True, slots=True)
class Target:
    address: str
    label: str = ""
    detail: str = ""  # e.g. "command='curl ...' pid=12 started=..." for tags


# ---------------------------------------------------------------------------------------------
# Pure: filters and description


# The capture tools' closing statistics (dumpcap; tcpdump): printed on any exit, never why it died
# (QA: a full disk was reported as "Packets received/dropped on interface 'Loopback: lo': 295/1").
# dumpcap 4.0 also ends with its packet counter, redrawn after carriage returns on one line
# ("\rPackets: 1204 \rPackets captured: 1204"): split at the CRs, each part is such a line. The
# counter may also be drawn just before an error, which then follows it on the same line
# ("\rPackets: 3 dumpcap: Not all the packets could be written..."): _COUNTER is cut off first.
_STATISTICS = re.compile(r"(Packets received/dropped on interface|\d+ packets? (captured|received by filter|"
                         r"dropped by kernel)|Packets( captured)?: \d+)")
_COUNTER = re.compile(r"^Packets: \d+ +(?=\S)")


def capture_filter(addresses: Sequence[str]) -> str:
    """pcap-filter syntax for tcpdump/dumpcap: 'host A or host B'."""
    return " or ".join(f"host {a}" for a in addresses)


def display_filter(addresses: Sequence[str]) -> str:
    """Wireshark display filter matching those addresses in either direction."""
    return addresses_filter(addresses)


def labels_text(targets: Sequence[Target]) -> str:
    """'127.0.0.5=client 127.0.0.6=server': the labels a pcap file has no room for."""
    return " ".join(f"{t.address}={t.label}" for t in targets if t.label)


def name_filter(labels: Sequence[str]) -> str:
    """The same by label: works when name resolution is on, thanks to the file's NRB."""
    return " || ".join(f'ip.host=="{label}"' for label in labels)


def section_comment(targets: Sequence[Target], *, started: str, interface: str = "lo") -> str:
    what = capture_filter([t.address for t in targets])
    lines = [f"loopfan capture on {interface}, started {started}; filter: {what}"]
    for t in targets:
        lines.append(f"tag {t.address} label={t.label or '-'}" + (f" {t.detail}" if t.detail else ""))
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CaptureStats:
    packets: int = 0
    connections: int = 0  # TCP connection attempts seen: SYNs (without ACK), retransmissions once
    datagrams: int = 0  # UDP packets
    dropped: int | None = None


def dropped_note(dropped: int | None) -> str:
    """', N dropped ...' for the summary line, saying what the number counts; '' when none."""
    if not dropped:
        return ""
    # PACKET_STATISTICS counts the capture socket's drops since it was opened: a full buffer, but also
    # packets of any address that arrived before the filter was attached (libpcap sets it late).
    return (
        f", {dropped:,} dropped by the kernel (the capture socket's count: packets that did not fit its "
        "buffer, possibly of other addresses before the filter was in place)"
    )


def _tcp_udp_kind(frame: bytes, linktype: int) -> tuple[str, bytes]:
    """('syn', the SYN's identity), ('udp', b'') or ('', b'') for one captured frame (IPv4 over
    Ethernet or NULL). A SYN's identity - addresses, ports and initial sequence number - is the
    same in its retransmissions (a server whose backlog is full drops SYNs: each would count as
    a connection) and differs for a new connection on the same ports."""
    offset = 14 if linktype == LINKTYPE_ETHERNET else 4
    if len(frame) < offset + 20:
        return "", b""
    if linktype == LINKTYPE_ETHERNET and frame[12:14] != b"\x08\x00":
        return "", b""
    ip = frame[offset:]
    if ip[0] >> 4 != 4:
        return "", b""
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    if proto == 17:
        return "udp", b""
    if proto == 6 and len(ip) >= ihl + 14:
        flags = ip[ihl + 13]
        if flags & 0x02 and not flags & 0x10:
            return "syn", ip[12:20] + ip[ihl:ihl + 8]
    return "", b""


def counted(packets: Iterable[Packet], linktype: int, stats: list[CaptureStats]) -> Iterator[Packet]:
    """Pass packets through, leaving their statistics in stats[0] at the end."""
    n = udp = 0
    syns: set[bytes] = set()
    for packet in packets:
        n += 1
        kind, syn = _tcp_udp_kind(packet.data, linktype)
        if kind == "syn":
            syns.add(syn)
        udp += kind == "udp"
        yield packet
    stats[0] = CaptureStats(n, len(syns), udp)


# ---------------------------------------------------------------------------------------------
# Classic BPF for the built-in capture


def _sock_filter(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


_SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE: the packet's direction
_PACKET_OUTGOING = 4

# The tools' libpcap read timeouts (tcpdump.c: pcap_set_timeout 1000 ms; dumpcap: 250 ms): how long
# a packet may sit in the kernel ring's current block before the tool sees it.
_TCPDUMP_TIMEOUT_S = 1.0
_DUMPCAP_TIMEOUT_S = 0.25


def classic_filter(addresses: Sequence[str], snaplen: int = SNAPLEN) -> bytes:
    """Accept IPv4 frames from or to any of `addresses` that are not lo's outgoing copy."""
    if not 1 <= len(addresses) <= 100:  # jump offsets are 8-bit
        raise UsageError("capture between 1 and 100 addresses at a time")
    words = [int(__import__("ipaddress").IPv4Address(a)) for a in addresses]
    n = len(words)
    prog = [
        _sock_filter(0x30, 0, 0, _SKF_AD_PKTTYPE),  # ldb pkttype
        _sock_filter(0x15, 0, 0, _PACKET_OUTGOING),  # jeq OUTGOING -> drop (patched below)
        _sock_filter(0x28, 0, 0, 12),  # ldh [12] ethertype
        _sock_filter(0x15, 0, 0, 0x0800),  # jeq IPv4 else drop (patched)
        _sock_filter(0x20, 0, 0, 26),  # ld [26] source address
    ]
    prog += [_sock_filter(0x15, 0, 0, w) for w in words]  # jeq -> accept (patched)
    prog.append(_sock_filter(0x20, 0, 0, 30))  # ld [30] destination address
    prog += [_sock_filter(0x15, 0, 0, w) for w in words]
    prog.append(_sock_filter(0x06, 0, 0, 0))  # drop
    prog.append(_sock_filter(0x06, 0, 0, snaplen))  # accept
    drop, accept = len(prog) - 2, len(prog) - 1

    def patched(index: int, *, jt: int | None = None, jf: int | None = None) -> bytes:
        code, t, f, k = struct.unpack("<HBBI", prog[index])
        return _sock_filter(code, t if jt is None else jt - index - 1, f if jf is None else jf - index - 1, k)

    prog[1] = patched(1, jt=drop)
    prog[3] = patched(3, jf=drop)
    for i in range(5, 5 + n):
        prog[i] = patched(i, jt=accept)
    for i in range(6 + n, 6 + 2 * n):
        prog[i] = patched(i, jt=accept)
    return b"".join(prog)


# ---------------------------------------------------------------------------------------------
# Backends: each writes a plain pcap file until stopped


class BackendDied(HostError):
    """The capture tool stopped by itself while capturing (or could no longer write and was
    stopped): what it wrote so far is still worth keeping. `fix`, when known, ends the message the
    session builds, after where the packets are."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class CaptureFailed(HostError):
    """The capture failed after it started; the message says where the packets captured so far are.

    Raised by `CaptureSession.stop`, so callers can tell it from their own failures (`loopfan tag`
    must not answer it with how to tag by hand)."""


class _Backend:
    name = "?"

    def start(self) -> None: ...

    def stop(self) -> int | None:
        """Stop and flush; return the packets dropped by the kernel when known."""
        return None

    def finished(self) -> bool:
        return False


def _last_error(said: Sequence[str], name: str) -> str:
    """The tool's last error, in one line: from its last 'NAME: ...' line to the end of that
    sentence. dumpcap wraps its messages over lines and adds advice after them (on a full disk:
    'dumpcap: Not all the packets could be written to the file ... ("FILE") because there is no
    space left on the file system' / 'on which that file resides.' / 'You will need to free up
    space ...'); the last line alone was the advice, not the reason."""
    starts = [i for i, line in enumerate(said) if line.startswith(f"{name}:")]
    if not starts:
        return said[-1] if said else ""
    i = starts[-1]
    words = [said[i]]
    while not words[-1].endswith(".") and i + 1 < len(said) and not said[i + 1].startswith(f"{name}:"):
        i += 1
        words.append(said[i])
    return " ".join(words)


def _pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG: the tool dies with loopfan


class _External(_Backend):
    """tcpdump or dumpcap, started in its own session (the terminal's Ctrl-C is ours to relay)."""

    def __init__(self, argv: list[str], ready_marker: str, flush_s: float, out: Path,
                 count: int | None = None, *, watch_writes: bool = False) -> None:
        self.argv = argv
        self._out = out
        self._started_ns = time.time_ns()
        self._count = count  # with a --count, ending by itself is the tool's normal end
        self._flush_s = flush_s
        self.name = Path(argv[0]).name
        self._ready_marker = ready_marker
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._ready = threading.Event()
        self._started_ok = False
        self._drainer: threading.Thread | None = None
        # tcpdump goes on capturing when it can no longer write (see writewatch.py): a watcher
        # thread asks it for its count while the file stands still, and stops it if it lost packets.
        self._watch_writes = watch_writes
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._captured: int | None = None  # its last count of packets handed to the file
        self._replies = 0  # answers to SIGUSR1 seen
        self._replied = threading.Condition()
        self._still_check: CountCheck | None = None  # the first answer since the file last grew
        self._write_failure: str | None = None

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            for part in raw.decode(errors="replace").split("\r"):  # (dumpcap's counter: see _STATISTICS)
                line = _COUNTER.sub("", part.strip())
                captured = captured_count(line)
                if captured is not None:
                    self._captured = captured
                if is_count_reply(line):  # asked for by the watcher: not something it said
                    with self._replied:
                        self._replies += 1
                        self._replied.notify_all()
                    continue
                if line:
                    self._stderr.append(line)
                if self._ready_marker in line:
                    self._ready.set()
        self._ready.set()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: _pdeathsig(signal.SIGTERM),
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self._ready.wait(timeout=10)
        # The marker is printed just before the capture loop; a packet sent in that instant could
        # be missed. A few milliseconds make the start deterministic in practice - and let a tool
        # that fails right after the marker (dumpcap prints "Capturing on 'lo'" before its
        # permission error) be seen failing here.
        time.sleep(0.05)
        if self._proc.poll() is not None or not any(self._ready_marker in line for line in self._stderr):
            self.stop()
            raise self._failure()
        self._started_ok = True
        if self._watch_writes:
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

    # --- a tool that cannot write but goes on ------------------------------------------------

    WATCH_EVERY_S = 0.5

    def _watch(self) -> None:
        """Until stopped: a write error in the tool's stderr, or packets counted while the file
        stands still (asked only then: a growing file is fine, and a quiet one costs a signal per
        WATCH_EVERY_S), stops the tool and leaves the reason for stop()."""
        proc = self._proc
        assert proc is not None
        scanned, last_size = 0, -1
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            status = ""  # not Linux, or not ours to read: stderr alone is watched
        can_ask = signal_caught(status, signal.SIGUSR1)
        while not self._watch_stop.wait(self.WATCH_EVERY_S) and proc.poll() is None:
            said = self._stderr[scanned:]
            scanned += len(said)
            error = next((line for line in said if is_write_error(line)), None)
            if error is not None:
                self._give_up(unsaved_message(self.name, str(self._out), said=error))
                return
            size = self._size()
            if size != last_size or not can_ask:
                last_size, self._still_check = size, None
                continue
            check = self._ask_count()
            if check is None:
                continue
            if self._still_check is None or check.size_after_bytes != check.size_before_bytes:
                self._still_check = check if check.size_after_bytes == check.size_before_bytes else None
                last_size = check.size_after_bytes
                continue
            lost = packets_unsaved(self._still_check, check)
            if lost:
                self._give_up(unsaved_message(self.name, str(self._out), cause=self._cause(), lost=lost))
                return

    def _size(self) -> int:
        try:
            return self._out.stat().st_size
        except OSError:
            return -1

    def _ask_count(self) -> CountCheck | None:
        """SIGUSR1, and its answer (tcpdump prints its count; see writewatch.py), between two
        reads of the file's size."""
        proc = self._proc
        assert proc is not None
        before = self._size()
        with self._replied:
            seen = self._replies
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            if not self._replied.wait_for(lambda: self._replies > seen, timeout=2.0) or self._captured is None:
                return None
            captured = self._captured
        return CountCheck(before, captured, self._size())

    def _cause(self) -> str:
        try:
            fs = os.statvfs(self._out.parent)
        except OSError:
            return unsaved_cause(None)
        # tcpdump writes as root when loopfan is root (-Z root): the blocks kept for root count then.
        blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        return unsaved_cause(blocks * fs.f_frsize)

    def _give_up(self, why: str) -> None:
        """Stop a tool that cannot save what it captures; stop() reports `why`."""
        self._write_failure = why
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)

    def _final_write_check(self) -> None:
        """After the tool's end: its closing count against the last answer while the file stood
        still - packets lost after the watcher's last look (traffic that stopped soon after)."""
        if self._write_failure is None and self._still_check is not None and self._captured is not None:
            last = CountCheck(self._size(), self._captured, self._size())
            lost = packets_unsaved(self._still_check, last)
            if lost:
                self._write_failure = unsaved_message(self.name, str(self._out), cause=self._cause(), lost=lost,
                                                      stopped=False)

    def _drained(self) -> None:
        """Once the tool has exited, wait for the drain thread to read its last stderr lines (its
        reason to fail, its statistics): a fixed sleep was too short on a loaded machine."""
        if self._proc is not None and self._proc.poll() is not None and self._drainer is not None:
            self._drainer.join(timeout=1.0)

    def _failure(self) -> HostError:
        """Why the tool stopped, from its own words, with the fix that fits."""
        self._drained()
        said = [line for line in self._stderr
                if line and self._ready_marker not in line and not _STATISTICS.match(line)]
        denied = next((line for line in said if "permission" in line.lower()), None)
        denied = denied or next((line for line in said if "not permitted" in line), None)
        if denied is not None:
            # Every backend, the built-in one included, needs CAP_NET_RAW: another backend won't help.
            return HostError(
                f"{self.name} may not capture on lo ({denied.removeprefix(f'{self.name}: ')}); capturing needs "
                f"CAP_NET_RAW (and CAP_NET_ADMIN for {self.name}), whatever the backend: run as root (sudo loopfan ...)"
            )
        why = said[-1] if said else "no output"
        others = "dumpcap or builtin" if self.name == "tcpdump" else "tcpdump or builtin"
        return HostError(f"{self.name} did not start capturing on lo: {why}; try --backend {others}")

    def _died(self, returncode: int) -> BackendDied:
        """It stopped by itself mid-capture: its own last words, else how it ended."""
        self._drained()
        said = [line for line in self._stderr
                if line and self._ready_marker not in line and not _STATISTICS.match(line)]
        if returncode < 0:  # a signal: whatever it said before (dumpcap's "File: ...") is not why
            why = f"killed by signal {-returncode}"
        else:
            last = _last_error(said, self.name)
            why = f"{last} (exit status {returncode})" if last else f"exit status {returncode}"
            if last and is_write_error(last):
                return BackendDied(f"{self.name} stopped while capturing on lo: {why}", fix=WRITE_FIX)
        return BackendDied(f"{self.name} stopped while capturing on lo: {why}")

    def finished(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None

    def _catch_up(self, at_most_s: float = 60.0) -> None:
        """Until the tool has written what it was behind on (then it is sent SIGINT, on which both
        tools flush their file and print their statistics). On SIGINT they stop at once: ring
        blocks not yet read are lost - counted as received, not dropped - and a tool short of CPU
        can be seconds behind a busy lo, which a fixed wait would cut off without a word.
        Caught up: the file holds a packet that came after this moment (traffic goes on), or the
        tool's read timeout (+0.2 s) has passed - the ring's current block is handed over only
        when full or after that timeout - and the file has not grown for 0.3 s since (a tool
        working through a backlog writes without such pauses). (Waiting a whole timeout after
        the last growth instead cost tcpdump's quiet captures 0.7 s more: its last block comes
        up to 1 s after the stop.)"""
        stop_ns = time.time_ns()
        now = started = time.monotonic()
        size, still_since, deadline = -1, now, now + at_most_s
        while now < deadline:
            try:
                grown = self._out.stat().st_size
            except OSError:
                grown = 0
            if grown != size:
                size, still_since = grown, now
                last = last_timestamp_ns(self._out, self._started_ns, time.time_ns() + 1_000_000_000)
                if last is not None and last >= stop_ns:
                    return
            elif now - started >= self._flush_s and now - still_since >= 0.3:
                return
            time.sleep(0.05)
            now = time.monotonic()

    def stop(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        ended_by_us = False
        # Ended before we stopped it: it died (tcpdump and dumpcap exit 0 on SIGTERM too, so a
        # `kill PID` or a systemd stop looks clean), unless its --count was reached.
        ended_by_itself = proc.poll() is not None and not self._count
        if proc.poll() is None:
            self._catch_up()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                ended_by_us = True
        self._drained()
        self._final_write_check()
        if self._write_failure is not None and self._started_ok:
            self._started_ok = False
            raise BackendDied(self._write_failure, fix=WRITE_FIX)
        # Both tools exit 0 on SIGINT or at their --count. Anything else while capturing means it died
        # by itself - checked after the wait too: a tool just SIGKILLed may not have exited yet at poll().
        if (ended_by_itself or proc.returncode not in (0, -signal.SIGINT)) and not ended_by_us and self._started_ok:
            self._started_ok = False
            raise self._died(proc.returncode)
        self._drained()
        for line in self._stderr:
            # tcpdump: "3 packets dropped by kernel"; dumpcap: "Packets received/dropped on interface 'lo': 9/0"
            words = line.split()
            if line.endswith("dropped by kernel") and words[0].isdigit():
                return int(words[0])
            # (dumpcap 4: "Packets received/dropped on interface 'Loopback: lo': 0/0 (pcap:0/...) (0.0%)")
            found = re.search(r": (\d+)/(\d+)", line) if line.startswith("Packets received/dropped") else None
            if found:
                return int(found.group(2))
        return None


def tcpdump_backend(tool: str, interface: str, addresses: Sequence[str], out: Path, count: int | None) -> _External:
    # -B is in KiB. The default (2 MiB) fills within a burst of a few hundred connections on lo and
    # the kernel drops the rest; 64 MiB rides out thousands. No --immediate-mode: it makes libpcap
    # use a TPACKET_V2 ring of fixed frames sized for lo's 64 KiB MTU, one frame per 128 KiB block,
    # so even 64 MiB holds only ~500 packets. TPACKET_V3 blocks store packets at their real size;
    # the price is the read timeout before the last packets reach the file (see _External.stop).
    buffer_kib = str(BUFFER_MIB * 1024)
    argv = [tool, "-i", interface, "-n", "-U", "-B", buffer_kib, "-s", str(SNAPLEN), "-w", str(out)]
    if os.geteuid() == 0:
        argv += ["-Z", "root"]  # Debian's tcpdump would otherwise drop to user tcpdump before opening -w
    if count:
        argv += ["-c", str(count)]
    return _External([*argv, capture_filter(addresses)], "listening on", flush_s=_TCPDUMP_TIMEOUT_S + 0.2,
                     out=out, count=count, watch_writes=True)


def dumpcap_backend(tool: str, interface: str, addresses: Sequence[str], out: Path, count: int | None) -> _External:
    # dumpcap's -B is in MiB (its default, 2, drops packets in bursts like tcpdump's).
    argv = [tool, "-i", interface, "-P", "-B", str(BUFFER_MIB), "-s", str(SNAPLEN), "-w", str(out)]
    argv += ["-f", capture_filter(addresses)]
    if count:
        argv += ["-c", str(count)]
    return _External(argv, "Capturing on", flush_s=_DUMPCAP_TIMEOUT_S + 0.2, out=out, count=count)


FLUSH_EVERY_S = 0.25  # the built-in backend's longest unflushed stretch


class _Builtin(_Backend):
    """AF_PACKET on lo with the classic filter above, written as pcap by a reader thread."""

    name = "built-in"

    def __init__(self, interface: str, addresses: Sequence[str], out: Path, count: int | None) -> None:
        self.interface, self.addresses, self.out, self.count = interface, list(addresses), out, count
        self._stop = threading.Event()
        self._stop_ns = 0  # packets the kernel received up to then are read before the thread ends
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._done = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        if not hasattr(socket, "AF_PACKET"):
            raise HostError("the built-in capture needs Linux AF_PACKET sockets; install tcpdump")
        try:
            # Protocol 0 receives nothing until bind(): the filter is in place before any packet.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise HostError("capturing needs CAP_NET_RAW; run as root (sudo loopfan ...)") from None
        fprog_filter = classic_filter(self.addresses)
        buf = ctypes.create_string_buffer(fprog_filter, len(fprog_filter))
        fprog = struct.pack("HL", len(fprog_filter) // 8, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root): ride out bursts
        sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: kernel receive time, ns
        sock.bind((self.interface, 0x0003))  # ETH_P_ALL
        sock.settimeout(0.1)
        # The file and its header exist before start() returns, not when the reader thread first
        # runs: the session names the file next ("packets go to ...", kept if loopfan is killed),
        # and on a busy machine the thread had not opened it yet (a SIGKILL then left no file).
        try:
            fh = open(self.out, "wb")  # noqa: SIM115 - closed by _run
        except OSError as exc:
            sock.close()
            raise HostError(f"cannot write {self.out}: {exc.strerror}; give a writable path") from None
        writer = PcapWriter(fh, linktype=_linktype_of(self.interface), snaplen=SNAPLEN)
        writer.flush()
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(sock, fh, writer), daemon=True)
        self._thread.start()

    def _run(self, sock: socket.socket, fh: BinaryIO, writer: PcapWriter) -> None:
        try:
            with fh:
                # Flushed at once (in start) and then every FLUSH_EVERY_S (or when idle): a SIGKILLed
                # loopfan leaves a readable file with all but the last fraction of a second's packets.
                # One write() per quarter second costs nothing next to a recvmsg() per packet.
                flushed_at, dirty = time.monotonic(), False
                written = 0
                while True:
                    try:
                        data, ancdata, _flags, address = sock.recvmsg(SNAPLEN, 64)  # lo MTU 65536 < SNAPLEN: never cut
                    except TimeoutError:
                        if self._stop.is_set():
                            break  # stopped, and nothing more queued
                        if dirty:
                            writer.flush()
                            flushed_at, dirty = time.monotonic(), False
                        continue
                    if address[2] == _PACKET_OUTGOING:  # belt and braces: the filter drops these
                        continue
                    ts = time.time_ns()
                    for level, kind, value in ancdata:
                        if level == socket.SOL_SOCKET and kind == 35 and len(value) >= 16:
                            sec, nsec = struct.unpack("qq", value[:16])
                            ts = sec * 1_000_000_000 + nsec
                    # Stopped: what is still queued is read first - this thread may be far behind
                    # a busy lo (a packet per recvmsg), and ending at once lost 61 % of a wrk run's
                    # packets without a word (the kernel dropped none: they were queued, unread).
                    # Only packets that came after the stop end it, so a busy lo cannot keep it going.
                    if self._stop_ns and ts > self._stop_ns:
                        break
                    writer.write(Packet(ts, data, len(data)))
                    written, dirty = written + 1, True
                    if self.count and written >= self.count:
                        break
                    if time.monotonic() - flushed_at >= FLUSH_EVERY_S:
                        writer.flush()
                        flushed_at, dirty = time.monotonic(), False
                writer.flush()
        except BaseException as exc:
            self.error = exc
        finally:
            self._done.set()

    def finished(self) -> bool:
        return self._done.is_set()

    def stop(self) -> int | None:
        if self._thread is None or self._sock is None:
            return None
        # Packets the kernel has by now are read (the thread may be seconds behind: it drains),
        # with 0.1 s of grace for those still on their way through lo.
        self._stop_ns = time.time_ns() + 100_000_000
        time.sleep(0.1)
        self._stop.set()
        self._thread.join()
        dropped = None
        with contextlib.suppress(OSError):
            raw = self._sock.getsockopt(263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS: tp_packets, tp_drops
            dropped = struct.unpack("II", raw)[1]
        self._sock.close()
        self._thread = None
        if self.error is not None:
            # Like a tool that died: the packets written before (a full disk) are worth keeping.
            error = self.error
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise BackendDied(f"the built-in capture stopped while capturing on lo: {why}")
        return dropped


def _linktype_of(interface: str) -> int:
    """ARPHRD_LOOPBACK (772) and Ethernet (1) capture as LINKTYPE_ETHERNET on Linux."""
    try:
        kind = int(Path(f"/sys/class/net/{interface}/type").read_text())
    except (OSError, ValueError):
        return LINKTYPE_ETHERNET
    return LINKTYPE_ETHERNET if kind in (1, 772) else kind


def choose_backend(
    backend: str, interface: str, addresses: Sequence[str], out: Path, count: int | None
) -> _Backend:
    # dumpcap first: as complete as tcpdump, and its 0.25 s read timeout ends a capture ~0.8 s
    # sooner (tcpdump's is 1 s, and only immediate mode shortens it - which loses packets in
    # bursts). The built-in reader last: a packet per call in Python on one of the workload's cores.
    if backend in ("auto", "dumpcap") and (tool := shutil.which("dumpcap")):
        return dumpcap_backend(tool, interface, addresses, out, count)
    if backend in ("auto", "tcpdump") and (tool := shutil.which("tcpdump")):
        return tcpdump_backend(tool, interface, addresses, out, count)
    if backend in ("tcpdump", "dumpcap"):
        package = "tcpdump" if backend == "tcpdump" else "tshark"
        raise HostError(f"{backend} is not installed; install it (apt-get install {package}) or use --backend builtin")
    return _Builtin(interface, addresses, out, count)


# ---------------------------------------------------------------------------------------------
# The session


def check_writable(path: Path) -> None:
    """Fail early (exit 2) for an output path that cannot be written."""
    if path.is_dir():
        raise UsageError(f"-w {path} is a directory; give a file name, e.g. {path / 'capture.pcapng'}")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}; give a writable path") from None
    if not existed:
        path.unlink()  # only a probe: a failed start must not leave an empty file behind


def replacing_note(output: Path) -> str | None:
    """'replacing FILE (N bytes) when the capture stops' for an existing regular file, else None.

    FILE is replaced, as tcpdump -w and dumpcap -w replace theirs and loopfan's own --json and --html
    do (the same command run again is the common case: refusing would break it), but not without a
    word. The old file stays whole until the new one is written (_written_whole): a capture that
    fails leaves it as it was."""
    target = Path(os.path.realpath(output))
    if not target.is_file():
        return None
    return f"replacing {output} ({counted_noun(target.stat().st_size, 'byte')}) when the capture stops"


def partial_path(output: Path) -> Path:
    """The backend's plain pcap, next to the output and visible: if loopfan is killed before it
    can finish the output, this is where the packets are (loopfan names it when it starts)."""
    return output.with_name(f"{output.name}.partial-{os.getpid()}.pcap")


@dataclass
class CaptureSession:
    """Start with `start()`, end with `stop(targets)`; use as a context manager to never leak one."""

    output: Path
    addresses: Sequence[str]
    fmt: str = "pcapng"
    backend_name: str = "auto"
    interface: str = "lo"
    count: int | None = None
    started: str = ""
    _backend: _Backend | None = field(default=None, init=False)
    _tmp: Path | None = field(default=None, init=False)

    @property
    def backend(self) -> str:
        return self._backend.name if self._backend else self.backend_name

    @property
    def partial(self) -> Path:
        """Where the packets go until stop() writes the output (left there if loopfan is killed)."""
        return self._tmp or partial_path(self.output)

    def start(self) -> None:
        check_writable(self.output)
        self._tmp = partial_path(self.output)
        self._backend = choose_backend(self.backend_name, self.interface, self.addresses, self._tmp, self.count)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            self._backend.start()
        except BaseException:
            self._cleanup()
            raise

    def finished(self) -> bool:
        """True when the backend stopped by itself (its --count reached)."""
        return self._backend is not None and self._backend.finished()

    def stop(self, targets: Sequence[Target]) -> CaptureStats:
        """Stop the backend and write the output. If the backend died mid-capture, what it wrote
        before is saved all the same (it is the user's evidence) and CaptureFailed says so; if the
        output cannot be written (a full disk), the partial file is kept and named, not deleted."""
        backend, tmp = self._backend, self._tmp
        if backend is None or tmp is None:
            return CaptureStats()
        self._backend = None
        died: str | None = None
        fix = ""  # what to do, when the backend knows: the message's last words
        dropped: int | None = None
        try:
            try:
                dropped = backend.stop()
            except BackendDied as exc:
                died, fix = str(exc), f"; {exc.fix}" if exc.fix else ""
            try:
                stats = finalize(tmp, self.output, targets, fmt=self.fmt, started=self.started, dropped=dropped,
                                 interface=self.interface)
            except Exception as exc:
                failed = self._not_saved(died, tmp, exc)
                raise CaptureFailed(f"{failed}{fix}") from None
            if died is not None:
                raise CaptureFailed(f"{died}; the {counted_noun(stats.packets, 'packet')} captured until then are "
                                    f"saved in {self.output}{fix}")
            return stats
        finally:
            self._cleanup()

    def _not_saved(self, died: str | None, tmp: Path, exc: Exception) -> CaptureFailed:
        """The output could not be written: keep the partial file (finalize left no output beside
        it, and _cleanup would delete the only copy of the packets) and name it."""
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        lead = f"{died}; " if died else ""
        if not tmp.exists():
            return CaptureFailed(f"{lead or 'the capture failed: '}it left no file ({why}), nothing was saved")
        self._tmp = None
        until = " until then" if died else ""
        return CaptureFailed(f"{lead}writing {self.output} failed ({why}); the packets captured{until} are in "
                             f"{tmp} (plain pcap: open it as it is)")

    def _cleanup(self) -> None:
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.stop()
            self._backend = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

    def __enter__(self) -> CaptureSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cleanup()


def finalize(
    tmp: Path,
    output: Path,
    targets: Sequence[Target],
    *,
    fmt: str,
    started: str,
    dropped: int | None,
    interface: str = "lo",
) -> CaptureStats:
    """Turn the backend's pcap into the requested file; return what it holds. The output is whole
    or not there: written beside it and renamed over it at the end (see _written_whole)."""
    stats = [CaptureStats()]
    if not tmp.exists():
        raise HostError(f"the capture wrote no file ({tmp}); nothing to save")
    with open(tmp, "rb") as src:
        header, packets = read_pcap(src)
        if fmt == "pcap":
            with _written_whole(output) as dst:
                writer = PcapWriter(dst, linktype=header.linktype, snaplen=header.snaplen)
                for packet in counted(packets, header.linktype, stats):
                    writer.write(packet)
        else:
            description = Description(
                comment=section_comment(targets, started=started, interface=interface),
                names=tuple((t.address, t.label) for t in targets if t.label),
                if_name=interface,
            )
            with _written_whole(output) as dst:
                write_pcapng(
                    dst,
                    PcapHeader(header.linktype, header.snaplen),
                    counted(packets, header.linktype, stats),
                    description,
                    dropped=dropped,
                )
    s = stats[0]
    return CaptureStats(s.packets, s.connections, s.datagrams, dropped)


@contextlib.contextmanager
def _written_whole(output: Path) -> Iterator[BinaryIO]:
    """A file that becomes `output` only once written and closed without error.

    Opening the output itself left an empty (or cut) FILE beside the kept partial file when the
    disk was full, and had already emptied any FILE there before. A regular file (or a new one) is
    written as a hidden sibling and renamed over it (same directory: the rename is atomic; a
    symlink's target is the file replaced); anything else (/dev/null, a FIFO) is written in place."""
    target = Path(os.path.realpath(output))
    if target.exists() and not target.is_file():
        with open(target, "wb") as fh:
            yield fh
        return
    tmp = target.with_name(f".{target.name}.loopfan-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
        with contextlib.suppress(FileNotFoundError):
            old = target.stat()  # the file replaced keeps its mode and owner, as opening it would have
            os.chmod(tmp, old.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise



# ---------------------------------------------------------------------------------------------
# Parsing what users type (pure)


def parse_target(text: str, what: str = "--source") -> Target:
    """'127.0.0.5' or '127.0.0.5=kafka-client' -> Target; UsageError (naming the option `what`) otherwise."""
    address, _, label = text.partition("=")
    return Target(check_tag_address(address.strip(), what=what), check_label(label.strip()) if label else "")


def check_tag_address(text: str, *, what: str = "--source") -> str:
    import ipaddress

    from loopfan.errors import NotLoopbackError

    if text in ("::1", "[::1]"):
        raise UsageError(
            f"{what} ::1: IPv6 has a single loopback address, so it cannot tell clients apart; "
            "use a 127.x.y.z address such as 127.0.0.5"
        )
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an IPv4 address; write e.g. 127.0.0.5") from None
    if not ip.is_loopback:
        raise NotLoopbackError(
            f"{what} {text} is not a loopback address; tags come from 127.0.0.0/8, e.g. 127.0.0.5"
        )
    if ip == ipaddress.IPv4Address("127.255.255.255"):
        # lo's broadcast address (`ip route show table local`): bind() takes it, but nothing can be
        # sent from it - UDP fails with ENETUNREACH, TCP never connects.
        raise UsageError(
            f"{what} {text} is the broadcast address of 127.0.0.0/8 and cannot be a source; pick e.g. 127.0.0.5"
        )
    return str(ip)


def check_label(text: str) -> str:
    import ipaddress
    import re

    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text)
        # The file's name block would map the tag address to this "name": Wireshark would then show
        # the tagged traffic as coming from that other address.
        raise UsageError(f"label {text!r} is an IP address, which would mislead in a capture; use a name, e.g. client")
    if _reads_as_ipv4(text):
        # '2130706433', '0x7f000001', '127.1': inet_aton (and so name resolution) reads these as 127.0.0.1.
        read_as = socket.inet_ntoa(socket.inet_aton(text))
        raise UsageError(
            f"label {text!r} reads as an IPv4 address (inet_aton takes it for {read_as}), "
            "which would mislead in a capture; use a name, e.g. client"
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise UsageError(
            f"label {text!r} is not usable as a name in a capture; use letters, digits, '.', '_' or '-' "
            "(at most 63), e.g. kafka-client"
        )
    return text


def _reads_as_ipv4(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def merge_targets(targets: Sequence[Target]) -> list[Target]:
    """One target per address, in order. The same address twice is fine (a label may come from the
    active tag); with two different labels it is refused - the file can name an address once."""
    out: dict[str, Target] = {}
    for target in targets:
        seen = out.get(target.address)
        if seen is None:
            out[target.address] = target
        elif target.label and seen.label and target.label != seen.label:
            raise UsageError(
                f"{target.address} is given twice, as {seen.label!r} and {target.label!r}; "
                "an address has one label - give it once"
            )
        elif target.label and not seen.label:
            out[target.address] = target
    return list(out.values())


def parse_duration(text: str) -> float:
    """'30', '30s', '500ms', '2m', '1h' -> seconds."""
    t = text.strip().lower()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], scale
            break
    else:
        mult = 1.0
    try:
        value = float(t) * mult
    except ValueError:
        raise UsageError(f"duration {text!r} is not a time; write e.g. 30s, 500ms or 2m") from None
    if not math.isfinite(value):  # nan, inf, 1e400: a capture that would never stop
        raise UsageError(f"duration {text!r} is not a finite time; write e.g. 30s, 500ms or 2m")
    if value <= 0:
        raise UsageError(f"duration {text!r} must be positive")
    return value
