"""Pure parts of isolation: assembler, program shapes, cgroup/mountinfo parsing, coverage text,
filters, pcap/pcapng formats, registry helpers, input parsing. No privileges, no sockets."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopfan.commands.tag import env_program, missing_interpreter
from loopfan.errors import NotLoopbackError, UsageError
from loopfan.isolation import bpf, programs
from loopfan.isolation.advice import advice_for, advice_text
from loopfan.isolation.capture import (
    CaptureSession,
    CaptureStats,
    Target,
    capture_filter,
    classic_filter,
    counted,
    display_filter,
    name_filter,
    parse_duration,
    parse_target,
    section_comment,
)
from loopfan.isolation.cgroup import cgroup_name, owner_of, parse_cgroup2_mount, parse_own_cgroup
from loopfan.isolation.pcapng import (
    Description,
    Packet,
    PcapHeader,
    PcapWriter,
    last_timestamp_ns,
    read_pcap,
    write_pcapng,
)
from loopfan.isolation.programs import Counter
from loopfan.isolation.registry import parse_proc_net_addresses, pick_free_address
from loopfan.isolation.tagger import Coverage, exit_status_of, missing_privileges

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


# --- assembler --------------------------------------------------------------------------------


def test_instruction_encoding_is_eight_bytes_little_endian() -> None:
    assert bpf.mov64_imm(bpf.R0, 1) == struct.pack("<BBhi", 0xB7, 0, 0, 1)
    assert bpf.exit_() == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])
    # ld_imm64 of a map fd: two slots, src_reg = BPF_PSEUDO_MAP_FD
    two = bpf.ld_map_fd(bpf.R1, 7)
    assert len(two) == 16 and two[0] == 0x18 and two[1] == 0x11 and struct.unpack("<i", two[4:8])[0] == 7


def test_mov32_keeps_high_constants_positive() -> None:
    # 0xffff0000 must be a zero-extended 32-bit move, or comparisons against loaded words fail.
    insn = bpf.mov32_imm(bpf.R7, 0xFFFF0000)
    assert insn[0] == 0xB4 and struct.unpack("<i", insn[4:])[0] == -65536


def test_assemble_resolves_forward_and_backward_labels() -> None:
    code = bpf.assemble(
        [bpf.Label("top"), bpf.jeq_imm(bpf.R1, 0, "end"), bpf.ld_map_fd(bpf.R1, 3), bpf.ja("top"), bpf.Label("end")]
    )
    assert len(code) == 8 * 4
    assert struct.unpack_from("<h", code, 2)[0] == 3  # over ld_imm64 (2 slots) and ja
    assert struct.unpack_from("<h", code, 24 + 2)[0] == -4


def test_assemble_rejects_unknown_and_duplicate_labels() -> None:
    with pytest.raises(ValueError):
        bpf.assemble([bpf.ja("nowhere")])
    with pytest.raises(ValueError):
        bpf.assemble([bpf.Label("a"), bpf.Label("a")])


def test_programs_are_small_and_end_with_exit() -> None:
    for code in (
        programs.connect4("127.0.0.5", 3),
        programs.connect6("127.0.0.5", 3, refuse_ipv6_loopback=True),
        programs.sendmsg4("127.0.0.5", 3, 4),
        programs.bind(4, ipv6=False),
        programs.bind(4, ipv6=True),
        programs.sendmsg6(3, refuse_ipv6_loopback=False),
    ):
        assert len(code) % 8 == 0 and len(code) // 8 < 200
        assert code[-8:] == bpf.exit_()


def test_address_word_is_a_little_endian_load_of_network_order() -> None:
    assert programs.address_word("127.0.0.5") & 0xFF == 127
    assert programs.address_word("127.0.0.5") == 0x0500007F


# --- cgroup -------------------------------------------------------------------------------------


def test_cgroup2_mount_found_in_hybrid_and_unified_layouts() -> None:
    assert parse_cgroup2_mount(HYBRID_MOUNTINFO) == "/sys/fs/cgroup/unified"
    assert parse_cgroup2_mount(UNIFIED_MOUNTINFO) == "/sys/fs/cgroup"
    assert parse_cgroup2_mount(HYBRID_MOUNTINFO.replace("cgroup2 cgroup2", "cgroup cgroup")) is None


def test_own_cgroup_path() -> None:
    assert parse_own_cgroup("4:memory:/x\n0::/user.slice/session-1.scope\n") == "/user.slice/session-1.scope"
    assert parse_own_cgroup("1:cpu:/\n") == "/"


def test_cgroup_names_carry_the_owner() -> None:
    assert owner_of(cgroup_name(4242, "kafka-client")) == 4242
    assert owner_of("system.slice") is None


# --- coverage -----------------------------------------------------------------------------------


def _cov(ipv6_refused: bool = False, **kw: int) -> Coverage:
    counts = [0] * len(Counter)
    for name, value in kw.items():
        counts[Counter[name]] = value
    return Coverage(tuple(counts), ipv6_refused)


def test_coverage_all_tagged() -> None:
    c = _cov(CONNECT_TAGGED=2, CONNECT_TAGGED_MAPPED=1, DGRAM_TAGGED=4)
    assert c.summary() == "all 3 connections tagged, all 4 UDP datagrams tagged"
    assert c.complete and c.exceptions() == []


def test_coverage_names_every_exception_and_warns_about_ipv6() -> None:
    c = _cov(CONNECT_TAGGED=3, CONNECT_ALREADY_BOUND=1, CONNECT_IPV6_LOOPBACK=2, CONNECT_NOT_LOOPBACK=5)
    assert c.summary() == "3 of 6 loopback connections tagged"
    text = "\n".join(c.exceptions())
    assert "UNTAGGED" in text and "::1" in text and "bound itself" in text and "non-loopback" in text
    assert "refused" in "\n".join(c.exceptions(ipv6_policy="refuse"))
    assert _cov().summary() == "no loopback connections seen"


def test_coverage_one_connection_reads_naturally() -> None:
    assert _cov(CONNECT_TAGGED=1, DGRAM_TAGGED=1).summary() == "the 1 connection tagged, the 1 UDP datagram tagged"


def test_coverage_refused_ipv6_attempts_are_not_connections() -> None:
    c = _cov(ipv6_refused=True, CONNECT_TAGGED=1, CONNECT_IPV6_LOOPBACK=1)
    assert c.summary() == "the 1 connection tagged"
    assert "refused 1" in "\n".join(c.exceptions(ipv6_policy="refuse"))


def test_coverage_names_0_0_0_0_as_left_alone() -> None:
    c = _cov(CONNECT_TAGGED=1, CONNECT_TO_ANY=1, DGRAM_TO_ANY=1)
    assert c.summary() == "1 of 2 loopback connections tagged, 0 of 1 UDP datagram tagged"
    assert "to 0.0.0.0 left alone" in "\n".join(c.exceptions())


def test_coverage_decodes_the_map_value() -> None:
    raw = struct.pack(f"<{len(Counter)}Q", *range(len(Counter)))
    assert Coverage.from_bytes(raw)[Counter.DGRAM_TAGGED] == 6


def test_missing_privileges() -> None:
    assert missing_privileges(0) == ["CAP_BPF", "CAP_NET_ADMIN"]
    assert missing_privileges(1 << 21) == []  # CAP_SYS_ADMIN covers both
    assert missing_privileges((1 << 39) | (1 << 12)) == []


def test_exit_status_of_signals() -> None:
    assert exit_status_of(3) == 3 and exit_status_of(-9) == 137


# --- filters, input ----------------------------------------------------------------------------


def test_filters() -> None:
    assert capture_filter(["127.0.0.5", "127.0.0.6"]) == "host 127.0.0.5 or host 127.0.0.6"
    assert display_filter(["127.0.0.5"]) == "ip.addr==127.0.0.5"
    assert display_filter(["127.0.0.5", "127.0.0.6"]) == "ip.addr==127.0.0.5 || ip.addr==127.0.0.6"
    assert name_filter(["a", "b"]) == 'ip.host=="a" || ip.host=="b"'


def test_section_comment_lists_tags() -> None:
    text = section_comment([Target("127.0.0.5", "client", "pid=7")], started="T")
    assert "tag 127.0.0.5 label=client pid=7" in text


def test_classic_filter_shape() -> None:
    prog = classic_filter(["127.0.0.5", "127.0.0.6"])
    assert len(prog) % 8 == 0 and len(prog) // 8 == 5 + 2 + 1 + 2 + 2
    with pytest.raises(UsageError):
        classic_filter([f"127.0.1.{i}" for i in range(101)])


def test_parse_target_and_errors() -> None:
    assert parse_target("127.0.0.5=kafka-client") == Target("127.0.0.5", "kafka-client")
    with pytest.raises(NotLoopbackError):
        parse_target("10.0.0.1")
    with pytest.raises(UsageError):
        parse_target("127.0.0.5=bad label")
    with pytest.raises(UsageError):
        parse_target("::1")


def test_parse_duration() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration("3") == 3
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_advice_picks_the_program() -> None:
    lines = advice_for("/usr/bin/curl", "127.0.0.5")
    assert lines == ["  curl            curl --interface 127.0.0.5 URL"]
    assert len(advice_for("unknown-tool", "127.0.0.5")) > 8
    assert "{127,0,0,5}" in "\n".join(advice_for("erl", "127.0.0.5"))
    assert "lo0 alias" in advice_text("curl", "127.0.0.5", macos=True)


# --- registry -----------------------------------------------------------------------------------


def test_the_registry_follows_loopfan_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$LOOPFAN_RUNTIME_DIR gives a private registry - tags and --isolate reservations beside them -
    as the test suite uses (as root the default is the host's /run/loopfan, shared with real tags)."""
    from loopfan.isolation import registry

    monkeypatch.setenv("LOOPFAN_RUNTIME_DIR", str(tmp_path / "run"))
    assert registry.registry_dir() == tmp_path / "run" / "tags"
    assert registry.reservations_dir() == tmp_path / "run" / "reserved"
    path = registry.reserve(["127.0.0.77"], "loopfan run --isolate 1")
    assert path.parent == tmp_path / "run" / "reserved"
    assert [r.addresses for r in registry.active_reservations()] == [("127.0.0.77",)]
    registry.remove_record(path)
    monkeypatch.delenv("LOOPFAN_RUNTIME_DIR")
    assert registry.registry_dir() != tmp_path / "run" / "tags"


def test_proc_net_addresses_and_free_pick() -> None:
    text = (
        "  sl  local_address rem_address   st\n"
        "   0: 0200007F:1F90 00000000:0000 0A\n"
        "   1: 0100007F:C350 0200007F:1F90 01\n"
    )
    used = parse_proc_net_addresses(text)
    assert used == {0x7F000002, 0x7F000001, 0}
    assert pick_free_address(used) == "127.0.0.3"
    # /proc/net/tcp6: a v4-mapped ::ffff:127.0.0.9 socket uses 127.0.0.9; a real IPv6 address adds nothing.
    text6 = (
        "  sl  local_address                         remote_address                        st\n"
        "   0: 0000000000000000FFFF00000900007F:9997 00000000000000000000000000000000:0000 0A\n"
        "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01\n"
    )
    assert parse_proc_net_addresses(text6) == {0x7F000009}


# --- formats ------------------------------------------------------------------------------------

# A minimal Ethernet+IPv4+TCP SYN frame 127.0.0.5:40000 -> 127.0.0.1:80.
SYN = (
    b"\0" * 12
    + b"\x08\x00"
    + bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 5, 127, 0, 0, 1])
    + struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
)


@given(st.lists(st.tuples(st.integers(0, (2**32 - 1) * 10**9), st.binary(min_size=0, max_size=300)), max_size=20))
def test_pcap_round_trip(records: list[tuple[int, bytes]]) -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf, linktype=1)
    for ts, data in records:
        writer.write(Packet(ts, data, len(data)))
    buf.seek(0)
    header, packets = read_pcap(buf)
    assert header.linktype == 1
    assert [(p.timestamp_ns, p.data) for p in packets] == records


_T0 = 1_790_000_000 * 10**9  # 2026


def _usec_pcap(records: list[tuple[int, bytes]]) -> bytes:
    """A microsecond pcap, as tcpdump and dumpcap -P write it."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    for ts, data in records:
        out += struct.pack("<IIII", ts // 10**9, ts % 10**9 // 1000, len(data), len(data)) + data
    return out


@given(st.lists(st.binary(min_size=0, max_size=400), min_size=1, max_size=30), st.data())
def test_last_timestamp_of_a_pcap_being_written(payloads: list[bytes], data: st.DataObject) -> None:
    """The last whole record's time, wherever the writer is (a record or a header half written),
    from the file's tail alone; in nanosecond (ours) and microsecond (tcpdump's) pcap."""
    records = [(_T0 + i * 1_000_000 + 123_000, p) for i, p in enumerate(payloads)]
    buf = io.BytesIO()
    writer = PcapWriter(buf, linktype=1)
    for ts, payload in records:
        writer.write(Packet(ts, payload, len(payload)))
    for whole in (buf.getvalue(), _usec_pcap(records)):
        cut = data.draw(st.integers(24, len(whole)))
        path = Path(f"/tmp/loopfan-test-pcap-{os.getpid()}")
        try:
            path.write_bytes(whole[:cut])
            sizes = [24 + sum(16 + len(p) for _, p in records[: i + 1]) for i in range(len(records))]
            done = [ts for (ts, _), end in zip(records, sizes, strict=True) if end <= cut]
            got = last_timestamp_ns(path, _T0 - 10**9, _T0 + 10**12, tail=1 << 14)
            assert got == (done[-1] if done else None)
        finally:
            path.unlink()


def test_last_timestamp_from_a_short_tail_of_a_long_file(tmp_path: Path) -> None:
    records = [(_T0 + i * 1000, bytes([i % 256]) * (i % 97)) for i in range(5000)]
    path = tmp_path / "long.pcap"
    path.write_bytes(_usec_pcap(records))
    assert last_timestamp_ns(path, _T0, _T0 + 10**12, tail=2048) == records[-1][0] // 1000 * 1000
    assert last_timestamp_ns(path, _T0 + 10**11, _T0 + 10**12) is None  # nothing in that time
    path.write_bytes(b"not a pcap file at all, not at all")
    assert last_timestamp_ns(path, _T0, _T0 + 10**12) is None


_BEHIND_TOOL = r"""
import signal, struct, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
out = open(sys.argv[1], "wb", buffering=0)
out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
print("listening on lo", file=sys.stderr, flush=True)
then = int(time.time()) - 5  # packets from before the stop, written late: a tool that is behind
for i in range(15):
    time.sleep(0.1)
    out.write(struct.pack("<IIII", then, i, 4, 4) + b"ping")
while True:  # then traffic that goes on, each packet written as it comes
    time.sleep(0.05)
    now = time.time_ns()
    out.write(struct.pack("<IIII", now // 10**9, now % 10**9 // 1000, 4, 4) + b"pong")
"""


def test_a_capture_tool_that_is_behind_is_not_stopped_before_it_catches_up(tmp_path: Path) -> None:
    """tcpdump/dumpcap stop at once on SIGINT and drop the ring blocks they have not read (counted
    as received, not dropped): a fixed wait would cut off a tool short of CPU. A tool still
    writing older packets is waited for."""
    from loopfan.isolation.capture import _External

    out = tmp_path / "behind.pcap"
    tool = _External([sys.executable, "-c", _BEHIND_TOOL, str(out)], "listening on", flush_s=0.3, out=out)
    tool.start()
    asked = time.monotonic()
    tool.stop()
    # ... and once it has written a packet from after the stop, traffic that goes on (the file
    # never stops growing) does not hold the stop.
    assert time.monotonic() - asked < 1.5 + 5
    with open(out, "rb") as fh:
        _, packets = read_pcap(fh)
        assert [p.data for p in packets][:16] == [b"ping"] * 15 + [b"pong"]


def test_counted_finds_syns() -> None:
    stats = [CaptureStats()]
    list(counted([Packet(1, SYN, len(SYN))], 1, stats))
    assert stats[0] == CaptureStats(1, 1, 0)


def test_a_retransmitted_syn_is_one_connection_and_a_new_isn_another() -> None:
    """wrk -c 200 against a server with backlog 5: '1,390 TCP connections seen; all 1,196
    connections tagged' - every SYN the full backlog dropped came again and was counted again."""
    new_isn = SYN[:38] + struct.pack(">I", 2) + SYN[42:]  # same ports, another connection
    other_port = SYN[:34] + struct.pack(">H", 40001) + SYN[36:]
    stats = [CaptureStats()]
    list(counted([Packet(t, f, len(f)) for t, f in enumerate([SYN, SYN, SYN, new_isn, other_port, other_port])],
                 1, stats))
    assert stats[0] == CaptureStats(6, 3, 0)


def test_pcapng_is_read_by_tshark_with_names(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    path = tmp_path / "x.pcapng"
    with open(path, "wb") as fh:
        write_pcapng(
            fh,
            PcapHeader(1, 65535),
            [Packet(1_700_000_000_123_456_789, SYN, len(SYN))],
            Description(comment="tag 127.0.0.5 label=client", names=(("127.0.0.5", "client"),)),
        )
    run = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-N",
            "n",
            "-Y",
            'ip.host=="client"',
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "tcp.dstport",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.split() == ["127.0.0.5", "80"], run.stderr
    info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, timeout=60).stdout
    if info:
        assert "label=client" in info


def test_display_filter_for_several_addresses_matches_each_in_tshark(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    path = tmp_path / "three.pcap"
    with open(path, "wb") as fh:
        writer = PcapWriter(fh, linktype=1)
        for last in (5, 6, 7, 8):
            frame = SYN[:26] + bytes([127, 0, 0, last]) + SYN[30:]
            writer.write(Packet(1_700_000_000_000_000_000, frame, len(frame)))
        writer.flush()
    display = display_filter(["127.0.0.5", "127.0.0.6", "127.0.0.7"])
    argv = [tshark, "-r", str(path), "-Y", display, "-T", "fields", "-e", "ip.src"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["127.0.0.5", "127.0.0.6", "127.0.0.7"], run.stderr


def test_summary_counts_have_thousands_separators_and_agree_in_number() -> None:
    c = _cov(CONNECT_TAGGED=30000, DGRAM_TAGGED=1234)
    assert c.summary() == "all 30,000 connections tagged, all 1,234 UDP datagrams tagged"
    c = _cov(CONNECT_TAGGED=1500, CONNECT_BIND_ERROR=1)
    assert c.summary() == "1,500 of 1,501 loopback connections tagged"
    assert "1 connection could not" in " ".join(c.exceptions())


def test_targets_merge_by_address_and_the_filter_names_each_once() -> None:
    from loopfan.isolation.capture import Target, display_filter, merge_targets

    merged = merge_targets([Target("127.0.0.28", "a"), Target("127.0.0.28", "a"), Target("127.0.0.29", "")])
    assert merged == [Target("127.0.0.28", "a"), Target("127.0.0.29", "")]
    assert merge_targets([Target("127.0.0.28", ""), Target("127.0.0.28", "b")]) == [Target("127.0.0.28", "b")]
    assert display_filter(["127.0.0.28", "127.0.0.28"]) == "ip.addr==127.0.0.28"



@pytest.mark.parametrize(
    ("line", "program"),
    [
        ("python3", ("python3", None)),
        ("-u NAME python3", ("python3", None)),
        ("-uNAME python3", ("python3", None)),
        ("--unset=NAME python3", ("python3", None)),
        ("--unset NAME python3", ("python3", None)),
        ("-C /tmp python3", ("python3", None)),
        ("--chdir=/tmp python3 -x", ("python3", None)),
        ("-P /opt/bin:/bin prog", ("prog", "/opt/bin:/bin")),
        ("-S python3 -u", ("python3", None)),
        ("-Spython3 -u", ("python3", None)),
        ("-S -u NAME -C /tmp A=1 python3", ("python3", None)),
        ("--split-string=python3 -u", ("python3", None)),
        ("-i python3", ("python3", None)),
        ("- python3", ("python3", None)),
        ("A=1 B=2 python3", ("python3", None)),
        ("-i -- python3", ("python3", None)),
        ("--ignore-signal=PIPE python3", ("python3", None)),
        ("-S -C /opt/app ./run.py", ("/opt/app/run.py", None)),  # found from the directory env enters
        ("--chdir=app bin/run", ("app/bin/run", None)),
    ],
)
def test_env_program_skips_envs_options_and_their_arguments(line: str, program: tuple[str, str | None]) -> None:
    assert env_program(line.split()) == program


@pytest.mark.parametrize("line", ["", "-i", "A=1", "-u NAME", "-x python3", "-S ${PY} -u", r"-S py\_thon"])
def test_env_program_is_none_when_nothing_runs_or_the_line_is_beyond_reading(line: str) -> None:
    assert env_program(line.split()) is None


@pytest.mark.parametrize(
    "shebang",
    ["-u NAME sh", "-C /tmp sh", "-P /bin:/usr/bin sh", "-S -u NAME sh -e", "-i sh", "- sh", "A=1 sh", "-S A=1 sh"],
)
def test_a_valid_env_script_is_not_refused(shebang: str, tmp_path: Path) -> None:
    script = tmp_path / "ok.sh"
    script.write_text(f"#!/usr/bin/env {shebang}\necho hi\n")
    assert missing_interpreter(str(script)) is None


def test_an_env_script_running_a_program_relative_to_its_chdir_is_not_refused(tmp_path: Path) -> None:
    """Second review: `#!/usr/bin/env -S -C DIR ./interp` was looked up from the current directory."""
    interp = tmp_path / "interp"
    interp.write_text("#!/bin/sh\nexec sh \"$@\"\n")
    interp.chmod(0o755)
    script = tmp_path / "ok.sh"
    script.write_text(f"#!/usr/bin/env -S -C {tmp_path} ./interp\necho hi\n")
    assert missing_interpreter(str(script)) is None
    script.write_text(f"#!/usr/bin/env -S -C {tmp_path} ./no-such-interp\necho hi\n")
    assert missing_interpreter(str(script)) == f"{tmp_path}/no-such-interp"


def test_env_script_with_options_names_the_missing_program_not_an_option_argument(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env -S -u NAME -C /tmp loopfan-no-such-interp -x\n")
    assert missing_interpreter(str(script)) == "loopfan-no-such-interp"
    script.write_text("#!/usr/bin/env -P /nonexistent-dir sh\n")  # -P: searched there, not in $PATH
    assert missing_interpreter(str(script)) == "sh"


def test_a_label_names_one_active_tag() -> None:
    """QA: two 'loopfan tag -- python3 ...' were both labelled python3, so ip.host=="python3" meant
    either. A label from the command's name gets a suffix; a --name another tag has is refused."""
    from loopfan.commands.tag import unique_label
    from loopfan.errors import UsageError
    from loopfan.isolation.registry import TagRecord

    def tag(address: str, label: str) -> TagRecord:
        return TagRecord(address=address, label=label, command="python3 x.py", pid=1, loopfan_pid=1,
                         started="2026-11-29T00:00:00Z", cgroup="")

    tags = [tag("127.0.0.2", "python3"), tag("127.0.0.3", "python3-2"), tag("127.0.0.4", "curl")]
    assert unique_label("python3", tags, named=False) == "python3-3"
    assert unique_label("wget", tags, named=False) == "wget"
    assert unique_label("me", tags, named=True) == "me"
    with pytest.raises(UsageError, match=r"--name 'curl' is the label of the active tag on 127.0.0.4"):
        unique_label("curl", tags, named=True)


def test_a_capture_tool_that_died_is_quoted_for_its_error_not_its_statistics(tmp_path: Path) -> None:
    """QA: dumpcap on a full disk was reported as "Packets received/dropped on interface 'Loopback:
    lo': 295/1" - its closing statistics, printed on any exit - not the error before them."""
    from loopfan.isolation.capture import _External
    tool = _External(["dumpcap"], "File:", 0.1, tmp_path / "x.pcapng")
    error = "dumpcap: Error while writing to the capture file: No space left on device"
    tool._stderr = ["File: x.pcapng", error,
                    "Packets received/dropped on interface 'Loopback: lo': 295/1 (pcap:0/dumpcap:0/flushed:1)"]
    assert str(tool._died(1)) == f"dumpcap stopped while capturing on lo: {error} (exit status 1)"
    tool._stderr = ["12 packets captured", "12 packets received by filter", "0 packets dropped by kernel"]
    assert str(tool._died(1)) == "dumpcap stopped while capturing on lo: exit status 1"


# dumpcap 4.0.17's stderr when its disk filled up (recorded on a 300 KiB tmpfs): the error is wrapped
# over three lines and followed by advice, and its packet counter is redrawn after carriage returns.
_DUMPCAP_DISK_FULL = [
    b"Capturing on 'Loopback: lo'\n",
    b"File: /full/c.pcapng.partial-7.pcap\n",
    b"dumpcap: Not all the packets could be written to the file to which the capture was being saved\n",
    b'("/full/c.pcapng.partial-7.pcap") because there is no space left on the file system\n',
    b"on which that file resides.\n",
    b"You will need to free up space on that file system or put the capture file on a different file system.\n",
    b"\rPackets: 1204 \rPackets captured: 1204\n",
    b"Packets received/dropped on interface 'Loopback: lo': 1204/1 (pcap:0/dumpcap:1/flushed:0/ps_ifdrop:0) (99.9%)\n",
]


@pytest.mark.parametrize("counter_first", [False, True])
def test_a_capture_tool_on_a_full_disk_is_quoted_for_the_whole_reason(counter_first: bool, tmp_path: Path) -> None:
    """QA: a real full disk was reported as 'Packets: 1204 Packets captured: 1204' (dumpcap's counter,
    after CRs), and without it as 'You will need to free up space...' (its advice, not the reason).
    One run in six, dumpcap drew its counter just before the error, on the same line."""
    from types import SimpleNamespace

    from loopfan.isolation.capture import _External
    tool = _External(["dumpcap"], "Capturing on", 0.1, tmp_path / "x.pcapng")
    stderr = list(_DUMPCAP_DISK_FULL)
    if counter_first:
        stderr[2] = b"\rPackets: 3 " + stderr[2]
    tool._proc = SimpleNamespace(stderr=iter(stderr))  # type: ignore[assignment]
    tool._drain()
    tool._proc = None
    assert str(tool._died(1)) == (
        "dumpcap stopped while capturing on lo: dumpcap: Not all the packets could be written to the file to "
        'which the capture was being saved ("/full/c.pcapng.partial-7.pcap") because there is no space left on '
        "the file system on which that file resides. (exit status 1)")


class _DeadBackend:
    """A capture tool that died mid-capture (its partial file is written by the test)."""

    name = "dumpcap"

    def stop(self) -> int | None:
        from loopfan.isolation.capture import BackendDied
        raise BackendDied("dumpcap stopped while capturing on lo: dumpcap: no space left (exit status 1)")


class _StoppedBackend(_DeadBackend):
    def stop(self) -> int | None:
        return 0


def _session_with(backend: object, out: Path, packets: int) -> tuple[CaptureSession, Path]:
    from loopfan.isolation.capture import partial_path
    session = CaptureSession(out, ["127.0.0.5"])
    tmp = partial_path(out)
    with open(tmp, "wb") as fh:
        writer = PcapWriter(fh, linktype=1)
        for i in range(packets):
            writer.write(Packet(1_700_000_000_000_000_000 + i, b"\0" * 60, 60))
    session._backend, session._tmp = backend, tmp  # type: ignore[assignment]
    return session, tmp


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the output fails half-way, as on a full disk."""
    import errno

    from loopfan.isolation import capture

    def write_pcapng(stream: io.BufferedWriter, *_args: object, **_kw: object) -> None:
        stream.write(b"\n\r\r\n" + b"\0" * 100)
        stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(capture, "write_pcapng", write_pcapng)


@pytest.mark.parametrize("backend", [_DeadBackend(), _StoppedBackend()], ids=["tool died", "stopped"])
@pytest.mark.parametrize("existed", [False, True], ids=["new FILE", "FILE existed"])
def test_a_capture_that_cannot_be_saved_leaves_the_partial_file_alone_and_names_it(
        backend: object, existed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: dumpcap on a full disk left an empty FILE beside FILE.partial-PID.pcap (the output was
    opened, then could not be written). Now FILE is written whole or not at all - an earlier FILE
    stays as it was - and the error names the partial file, which holds the packets. (On a clean
    stop the partial file was even deleted after a failed save.)"""
    from loopfan.isolation.capture import CaptureFailed, Target
    out = tmp_path / "c.pcapng"
    if existed:
        out.write_bytes(b"an earlier capture")
    session, tmp = _session_with(backend, out, packets=3)
    _disk_full(monkeypatch)
    with pytest.raises(CaptureFailed) as failed:
        session.stop([Target("127.0.0.5", "client")])
    said = str(failed.value)
    assert f"writing {out} failed (No space left on device); the packets captured" in said, said
    assert f"are in {tmp} (plain pcap: open it as it is)" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tmp.name] + ([out.name] if existed else []))
    if existed:
        assert out.read_bytes() == b"an earlier capture"
    assert tmp.stat().st_size == 24 + 3 * (16 + 60)


def test_a_saved_capture_replaces_the_file_whole_keeping_its_mode(tmp_path: Path) -> None:
    from loopfan.isolation.capture import CaptureFailed, Target
    out = tmp_path / "c.pcap"
    out.write_bytes(b"an earlier capture")
    out.chmod(0o640)
    session, _ = _session_with(_DeadBackend(), out, packets=2)
    session.fmt = "pcap"
    with pytest.raises(CaptureFailed, match=re.escape(f"the 2 packets captured until then are saved in {out}")):
        session.stop([Target("127.0.0.5", "client")])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert out.stat().st_mode & 0o777 == 0o640
    _, packets = read_pcap(io.BytesIO(out.read_bytes()))
    assert len(list(packets)) == 2


def test_the_builtin_capture_failing_to_write_keeps_what_it_wrote(tmp_path: Path) -> None:
    """QA: on a full disk the built-in backend's error ended the session, which deleted the partial
    file - every packet of the capture - and said '[Errno 28] No space left on device'. Its failure
    is now a death like a tool's: the session saves or keeps what was written, and names it."""
    import errno
    import socket
    import threading

    from loopfan.isolation.capture import BackendDied, _Builtin
    builtin = _Builtin("lo", ["127.0.0.5"], tmp_path / "x.pcap", None)
    builtin._thread = threading.Thread(target=lambda: None)
    builtin._thread.start()
    builtin._sock, other = socket.socketpair()
    builtin.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(BackendDied) as died:
        builtin.stop()
    other.close()
    assert str(died.value) == "the built-in capture stopped while capturing on lo: No space left on device"


def test_a_write_failure_ends_the_message_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix comes last, after where the packets are - saved in FILE or kept in the partial file."""
    from loopfan.isolation.capture import BackendDied, CaptureFailed
    from loopfan.isolation.writewatch import WRITE_FIX

    class _Unsaved:
        name = "tcpdump"

        def stop(self) -> int | None:
            raise BackendDied("tcpdump could not write x: no space left", fix=WRITE_FIX)

    session, _ = _session_with(_Unsaved(), tmp_path / "c.pcapng", packets=2)
    with pytest.raises(CaptureFailed) as saved:
        session.stop([Target("127.0.0.5", "client")])
    assert str(saved.value).endswith(f"saved in {tmp_path / 'c.pcapng'}; {WRITE_FIX}")
    session, tmp = _session_with(_Unsaved(), tmp_path / "d.pcapng", packets=2)
    _disk_full(monkeypatch)
    with pytest.raises(CaptureFailed) as kept:
        session.stop([Target("127.0.0.5", "client")])
    assert str(kept.value).endswith(f"are in {tmp} (plain pcap: open it as it is); {WRITE_FIX}")


# --- a record's loopfan: pid and start time ----------------------------------------------------------


def test_the_start_time_is_field_22_even_after_an_odd_command_name() -> None:
    from loopfan.isolation.registry import stat_start_ticks

    rest = " ".join(str(n) for n in range(3, 53))  # fields 3..52, each its own number
    assert stat_start_ticks(f"1234 (python3) {rest}") == 22
    assert stat_start_ticks(f"1234 (a) b (c d) {rest}") == 22  # ')' and spaces in the name
    assert stat_start_ticks("1234 (cut short) S 1") is None
    assert stat_start_ticks("") is None


@pytest.mark.parametrize(("running", "recorded", "current", "live"), [
    (False, 500, 500, False),  # gone
    (False, None, None, False),
    (True, 500, 500, True),  # the writer itself
    (True, 500, 9_000, False),  # the pid was reused after a SIGKILL
    (True, None, 9_000, True),  # a record of an earlier version: the pid decides, as before
    (True, 500, None, True),  # no /proc (macOS), or it went away meanwhile: the pid decides
])
def test_a_record_is_live_while_its_pid_runs_the_process_that_wrote_it(
        running: bool, recorded: int | None, current: int | None, live: bool) -> None:
    from loopfan.isolation.registry import record_live

    assert record_live(pid_running=running, recorded_start=recorded, current_start=current) is live


def test_a_record_whose_pid_was_reused_is_stale_and_deleted(tmp_path: Path) -> None:
    """QA: after a SIGKILL the pid may go to an unrelated process, which kept the tag (or the
    reservation) 'live' for good. Here our own pid plays the reused one: a start time not ours."""
    import dataclasses
    import json

    from loopfan.isolation.registry import (
        TagRecord,
        active_reservations,
        active_tags,
        process_start_ticks,
        reservations_dir,
        reserve,
        write_record,
    )

    me, started = os.getpid(), process_start_ticks(os.getpid())
    assert started is not None

    def tag(address: str, start: int | None) -> TagRecord:
        return TagRecord(address=address, label="x", command="curl", pid=1, loopfan_pid=me,
                         started="2026-11-29T00:00:00+00:00", cgroup="", loopfan_start_ticks=start)

    tags = tmp_path / "tags"
    write_record(tag("127.0.0.2", started), tags)
    reused = write_record(tag("127.0.0.3", started + 1), tags)
    old = tags / "old.json"  # written by an earlier version: no start time
    old.write_text(json.dumps({k: v for k, v in dataclasses.asdict(tag("127.0.0.4", None)).items()
                               if k != "loopfan_start_ticks"}))
    assert [t.address for t in active_tags(tags)] == ["127.0.0.2", "127.0.0.4"]
    assert not reused.exists()

    live = reserve(["127.0.0.5"], "loopfan run --isolate 1", tags)
    assert json.loads(live.read_text())["loopfan_start_ticks"] == started
    stale = reservations_dir(tags) / "1.json"
    stale.write_text(json.dumps({**json.loads(live.read_text()), "addresses": ["127.0.0.6"],
                                 "loopfan_start_ticks": started - 1}))
    assert [r.addresses for r in active_reservations(tags)] == [("127.0.0.5",)]
    assert not stale.exists()


def test_tag_list_rows_hold_tags_and_run_isolate_addresses_oldest_first() -> None:
    from loopfan.commands.tag import list_rows
    from loopfan.isolation.registry import Reservation, TagRecord

    tag = TagRecord(address="127.0.0.7", label="client", command="curl x", pid=0, loopfan_pid=11,
                    started="2026-11-29T10:00:05+00:00", cgroup="")
    run = Reservation(addresses=("127.0.0.2", "127.0.0.3"), loopfan_pid=42, command="loopfan run --isolate 2",
                      started="2026-11-29T10:00:01Z")
    assert [row.split()[:3] for row in list_rows([tag], [run])] == [
        ["127.0.0.2", "run", "--isolate"], ["127.0.0.3", "run", "--isolate"], ["127.0.0.7", "client", "-"]]
    assert " 42  2026-11-29T10:00:01Z " in list_rows([], [run])[0]
