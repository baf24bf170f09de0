"""A capture tool that cannot write its file but goes on capturing (tcpdump on a full disk): the pure
rules of writewatch.py, fed recorded lines and numbers, and the watcher of `_External` run against
a fake tool (no privileges, no tmpfs). The real thing, checked by hand on a 300 KiB tmpfs, is in
docs/isolation.md."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from loopfan.isolation.capture import BackendDied, _External
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

# tcpdump 4.99.3's stderr on a 300 KiB tmpfs that filled after ~300 packets, asked with SIGUSR1
# every 0.5 s, then stopped with SIGINT: not one word about the failed writes.
_TCPDUMP_DISK_FULL = [
    "tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length 262144 bytes",
    "tcpdump: 0 packets captured, 194 packets received by filter, 0 packets dropped by kernel",
    "tcpdump: 306 packets captured, 664 packets received by filter, 0 packets dropped by kernel",
    "tcpdump: 538 packets captured, 1140 packets received by filter, 0 packets dropped by kernel",
    "1416 packets captured",
    "2832 packets received by filter",
    "0 packets dropped by kernel",
]


@pytest.mark.parametrize("line", [
    "tcpdump: pcap_dump_flush failed: No space left on device",
    "tcpdump: write error: Disk quota exceeded",
    "dumpcap: Error while writing to the capture file: No space left on device",
    "dumpcap: Not all the packets could be written to the file to which the capture was being saved",
    "tcpdump: /full/x.pcap: File too large",
    "tcpdump: /full/x.pcap: Input/output error",
])
def test_a_write_error_is_recognized_in_the_tools_words(line: str) -> None:
    assert is_write_error(line)


@pytest.mark.parametrize("line", [*_TCPDUMP_DISK_FULL, "Capturing on 'Loopback: lo'", "File: /tmp/x.pcap",
                                  "Packets received/dropped on interface 'Loopback: lo': 1204/1 (99.9%)"])
def test_what_tools_say_when_all_is_well_is_not_a_write_error(line: str) -> None:
    assert not is_write_error(line)


def test_counts_are_read_from_the_answer_and_from_the_closing_statistics() -> None:
    counts = [captured_count(line) for line in _TCPDUMP_DISK_FULL]
    assert counts == [None, 0, 306, 538, 1416, None, None]
    assert [is_count_reply(line) for line in _TCPDUMP_DISK_FULL] == [False, True, True, True, False, False, False]
    assert captured_count("1 packet captured") == 1
    assert captured_count("12 packets captured by the moon") is None


def test_packets_counted_while_the_file_stands_still_are_unsaved() -> None:
    still = CountCheck(307_200, 306, 307_200)
    assert packets_unsaved(still, CountCheck(307_200, 538, 307_200)) == 232
    # healthy: every packet counted after the first answer is in the file by the second
    assert packets_unsaved(still, CountCheck(307_200, 538, 330_000)) == 0
    assert packets_unsaved(still, CountCheck(307_200, 306, 307_200)) == 0  # nothing came: nothing proven


def test_a_packet_written_just_before_an_answer_is_not_taken_for_a_lost_one() -> None:
    """The file is read before asking and after the answer: a packet written in between (counted
    in the first answer, not in the size read before it) must not look unsaved."""
    first = CountCheck(size_before_bytes=100, captured=5, size_after_bytes=176)
    assert packets_unsaved(first, CountCheck(176, 5, 176)) == 0
    assert packets_unsaved(first, CountCheck(176, 6, 252)) == 0


def test_only_a_tool_that_catches_sigusr1_is_asked() -> None:
    tcpdump = "Name:\ttcpdump\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000015a03\n"
    assert signal_caught(tcpdump, signal.SIGUSR1)
    assert not signal_caught("SigCgt:\t0000000000000002\n", signal.SIGUSR1)  # SIGINT only: SIGUSR1 would kill it
    assert not signal_caught("", signal.SIGUSR1)  # not Linux, or not readable
    assert not signal_caught("SigCgt:\tzz\n", signal.SIGUSR1)


def test_the_cause_names_a_full_file_system_or_says_it_is_unknown() -> None:
    assert unsaved_cause(0) == "no space left on its file system (0 bytes free)"
    assert unsaved_cause(40_000) == "no space left on its file system (40,000 bytes free)"
    assert "it does not say why; the file system has 5,000,000,000 bytes free" in unsaved_cause(5_000_000_000)
    assert unsaved_cause(None) == "its writes fail, it does not say why"
    assert unsaved_message("tcpdump", "/full/x.pcap", cause=unsaved_cause(0), lost=232) == (
        "tcpdump could not write /full/x.pcap: no space left on its file system (0 bytes free); it went on "
        "capturing without a word (at least 232 packets went unsaved), so loopfan stopped it")
    assert unsaved_message("tcpdump", "/x", said="tcpdump: write error") == (
        "tcpdump could not write /x (it said: tcpdump: write error), so loopfan stopped it")


def test_answers_to_sigusr1_are_counts_not_words_of_the_tool(tmp_path: Path) -> None:
    """The watcher's questions must not become the tool's 'last words' if it dies later."""
    from types import SimpleNamespace
    tool = _External(["tcpdump"], "listening on", 0.1, tmp_path / "x.pcap")
    tool._proc = SimpleNamespace(stderr=iter(line.encode() + b"\n" for line in _TCPDUMP_DISK_FULL))  # type: ignore[assignment]
    tool._drain()
    assert tool._captured == 1416 and tool._replies == 3
    assert tool._stderr == [_TCPDUMP_DISK_FULL[0], *_TCPDUMP_DISK_FULL[4:]]


# A tcpdump stand-in: answers SIGUSR1 with its count, exits 0 on SIGINT with its statistics. Packets
# "arrive" 10 per question; when `healthy` each is written to the file first, when `full` none is
# (the disk is full); when `late`, none arrives until the stop, and 5 then, unsaved.
# argv: OUT healthy|full|late
_FAKE_TCPDUMP = r"""
import os, signal, struct, sys, time
out = open(sys.argv[1], "wb", buffering=0)
out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
healthy, late = sys.argv[2] == "healthy", sys.argv[2] == "late"
n = 0
def count(*_):
    global n
    for _ in range(0 if late else 10):
        n += 1
        if healthy:
            out.write(struct.pack("<IIII", int(time.time()), 0, 4, 4) + b"ping")
    said = f"tcpdump: {n} packets captured, {n} packets received by filter, 0 packets dropped by kernel\n"
    os.write(2, said.encode())
def stop(*_):
    global n
    n += 5 if late else 0
    os.write(2, f"{n} packets captured\n{n} packets received by filter\n0 packets dropped by kernel\n".encode())
    os._exit(0)
signal.signal(signal.SIGUSR1, count)
signal.signal(signal.SIGINT, stop)
print("tcpdump: listening on lo", file=sys.stderr, flush=True)
while True:
    time.sleep(0.05)
"""


def _fake_tool(out: Path, mode: str) -> _External:
    tool = _External([sys.executable, "-c", _FAKE_TCPDUMP, str(out), mode], "listening on",
                     flush_s=0.2, out=out, watch_writes=True)
    tool.name = "tcpdump"
    tool.WATCH_EVERY_S = 0.1  # type: ignore[misc]
    return tool


def test_a_tool_whose_file_stands_still_while_it_counts_packets_is_stopped(tmp_path: Path) -> None:
    out = tmp_path / "x.pcap"
    tool = _fake_tool(out, "full")
    tool.start()
    try:
        for _ in range(100):  # stopped by the watcher within a few questions (0.1 s apart here)
            if tool.finished():
                break
            tool._watch_stop.wait(0.05)
        assert tool.finished()
    finally:
        with pytest.raises(BackendDied) as died:
            tool.stop()
    said = str(died.value)
    assert said.startswith(f"tcpdump could not write {out}: "), said
    assert "packets went unsaved), so loopfan stopped it" in said, said
    assert died.value.fix == WRITE_FIX


def test_a_tool_that_writes_what_it_counts_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "x.pcap"
    tool = _fake_tool(out, "healthy")
    tool.start()
    tool._watch_stop.wait(1.0)  # ~10 questions
    assert not tool.finished()
    tool.stop()
    assert out.stat().st_size > 24


def test_packets_lost_after_the_last_question_are_found_from_the_closing_count(tmp_path: Path) -> None:
    """Traffic that stops soon after the disk filled: no question sees the count grow, the
    closing statistics do."""
    out = tmp_path / "x.pcap"
    tool = _fake_tool(out, "late")
    tool.start()
    tool._watch_stop.wait(0.6)  # the file stands still: asked, nothing counted
    assert not tool.finished()
    with pytest.raises(BackendDied) as died:
        tool.stop()
    assert str(died.value).endswith("it went on capturing without a word (at least 5 packets went unsaved)")
