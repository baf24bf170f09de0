"""`loopfan tag` / `loopfan capture` input errors and host refusals: one line each, the right exit
status, and the per-language advice when tagging is impossible. No privileges needed: input is
checked before anything touches the host, and host failures are simulated."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopfan.cli import main
from loopfan.isolation import bpf, tagger


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("loopfan: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["tag", "--source", "10.1.2.3", "--", "true"], "not a loopback address"),
        (["tag", "--source", "127.0.0.300", "--", "true"], "not an IPv4 address"),
        (["tag", "--source", "::1", "--", "true"], "single loopback address"),
        (["tag", "--source", "127.0.0.1", "--", "true"], "untagged programs use"),
        (["tag"], "no command given"),
        (["tag", "--source", "127.0.0.5"], "no command given"),
        (["tag", "--", "loopfan-no-such-command-xyz"], "not found"),
        (["tag", "--name", "two words", "--", "true"], "label"),
        (["tag", "--capture", "/nonexistent-dir/x.pcapng", "--", "true"], "cannot write"),
        (["tag", "--also", "127.0.0.9", "--", "true"], "--also only makes sense"),
        (["tag", "--format", "pcap", "--", "true"], "--format only makes sense"),
        (["tag", "--backend", "tcpdump", "--", "true"], "--backend only makes sense"),
        (["capture", "--source", "192.168.1.1"], "not a loopback address"),
        (["capture", "--source", "nonsense"], "not an IPv4 address"),
        (["capture", "--source", "127.0.0.5", "-w", "/nonexistent-dir/x.pcapng"], "cannot write"),
        (["capture", "--source", "127.0.0.5", "--duration", "soon"], "not a time"),
        (["capture", "--source", "127.0.0.5", "--duration", "nan"], "not a finite time"),
        (["capture", "--source", "127.0.0.5", "--duration", "inf"], "not a finite time"),
        (["capture", "--source", "127.0.0.5", "--duration", "1e400"], "not a finite time"),
        (["tag", "--source", "127.255.255.255", "--", "true"], "broadcast address"),
        (["capture", "--source", "127.255.255.255"], "broadcast address"),
        (["tag", "--name", "127.0.0.1", "--", "true"], "is an IP address"),
        (["tag", "--", "/etc/passwd"], "is not executable"),
        (["tag", "--", "/tmp"], "is a directory, not a program"),
        (["tag", "--name", "2130706433", "--", "true"], "reads as an IPv4 address (inet_aton takes it for 127.0.0.1)"),
        (["tag", "--name", "0x7f000001", "--", "true"], "reads as an IPv4 address"),
        (["capture", "--source", "127.0.0.28=a", "--source", "127.0.0.28=b"], "given twice, as 'a' and 'b'"),
        # QA: the tag's own address under another label was taken and the label dropped; and a
        # non-loopback --also was blamed on --source.
        (["tag", "--source", "127.0.0.83", "--name", "me", "--capture", "x.pcapng", "--also", "127.0.0.83=other",
          "--", "true"], "given twice, as 'me' and 'other'"),
        (["tag", "--capture", "x.pcapng", "--also", "10.0.0.1", "--", "true"], "--also 10.0.0.1 is not a loopback"),
        (["alias", "add", "127.255.255.255", "--dry-run", "--platform", "macos"], "broadcast address"),
        (["alias", "add", "127.255.255.0/24", "--dry-run", "--platform", "macos"], "broadcast address"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert needle in _one_error_line(capsys.readouterr().err)


def test_script_with_a_missing_interpreter_is_named_before_tagging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/nonexistent/interp -x\necho hi\n")
    script.chmod(0o755)
    env_script = tmp_path / "bad-env.sh"
    env_script.write_text("#!/usr/bin/env -S loopfan-no-such-interp -u\n")
    env_script.chmod(0o755)
    assert main(["tag", "--", str(script)]) == 2
    err = capsys.readouterr().err
    assert "interpreter '/nonexistent/interp' (its #! line) is not installed" in _one_error_line(err)
    assert "tagged" not in err  # refused before any tag was set up
    assert main(["tag", "--", str(env_script)]) == 2
    assert "interpreter 'loopfan-no-such-interp'" in _one_error_line(capsys.readouterr().err)


def test_a_script_without_a_shebang_is_refused_before_the_tag(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """QA: it was refused only after the tag was set up ('Exec format error'); shells run such a
    file with sh, loopfan says so instead of guessing."""
    script = tmp_path / "plain.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    assert main(["tag", "--", str(script)]) == 2
    err = capsys.readouterr().err
    assert "has no #! line" in _one_error_line(err) and f"loopfan tag -- sh {script}" in err
    assert "tagged" not in err


def test_unwritable_directory_path_leaves_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["capture", "--source", "127.0.0.5", "-w", str(tmp_path)]) == 2
    assert "is a directory" in _one_error_line(capsys.readouterr().err)


def test_capture_without_sources_or_tags_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("loopfan.commands.capture.active_tags", lambda: [])
    assert main(["capture", "-w", str(tmp_path / "x.pcapng")]) == 2
    assert "no active tags" in _one_error_line(capsys.readouterr().err)


def test_missing_privileges_names_them_and_prints_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(**_kw: object) -> int:
        raise bpf.BpfError(1, "creating a BPF array map")

    monkeypatch.setattr(tagger.bpf, "create_array_map", refuse)
    monkeypatch.setattr(tagger, "effective_capabilities", lambda: 0)
    monkeypatch.setattr(tagger, "find_cgroup2_root", lambda: Path("/nonexistent"))
    assert main(["tag", "--source", "127.0.0.5", "--", "curl", "--version"]) == 1
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert "CAP_BPF and CAP_NET_ADMIN" in line and "sudo" in line
    assert "curl --interface 127.0.0.5" in err


def test_kernel_without_the_hooks_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def old_kernel(*_a: object, **_kw: object) -> int:
        raise bpf.BpfError(22, "loading", log="unknown attach type")

    monkeypatch.setattr(tagger.bpf, "create_array_map", lambda **_kw: os.open(os.devnull, os.O_RDONLY))
    monkeypatch.setattr(tagger.bpf, "load_program", old_kernel)
    monkeypatch.setattr(tagger, "find_cgroup2_root", lambda: Path("/nonexistent"))
    assert main(["tag", "--source", "127.0.0.5", "--", sys.executable, "-V"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "lacks a needed feature" in line and "unknown attach type" in line


def test_macos_explains_and_advises(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tagger.sys, "platform", "darwin")
    monkeypatch.setattr("loopfan.commands.tag.sys.platform", "darwin")
    assert main(["tag", "--source", "127.0.0.5", "--", "curl", "--version"]) == 1
    err = capsys.readouterr().err
    assert "macOS has no cgroups" in _one_error_line(err)
    assert "lo0 alias 127.0.0.5" in err


def test_alias_of_127_0_0_1_alone_suggests_a_pool_that_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "add", "127.0.0.1", "--dry-run", "--platform", "macos"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "127.0.0.2-127.0.0.20" in line and "!127.0.0.1" not in line


@pytest.fixture
def listener_port() -> Iterator[int]:
    """A server that accepts (a run now fails connections left in an accept queue) and holds."""
    import socket
    import threading

    held: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    held.append(listener.accept()[0])
                except OSError:  # (the 0.2 s timeout: look at stop again)
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join(5)
            for conn in held:
                conn.close()


def test_run_isolate_prints_a_filter_for_every_isolated_client(
    listener_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-c", "6", f"127.0.0.1:{listener_port}", "--isolate", "3", "--hold", "0"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    # The pool's first addresses that nothing else uses now (127.0.0.2, .3, .4 on a quiet host;
    # past tests' TIME-WAIT sockets may hold some of them), one filter term each.
    found = re.search(r"isolated clients \(3\): (127\.0\.0\.\d+), (127\.0\.0\.\d+), (127\.0\.0\.\d+)", out)
    assert found, out
    assert " || ".join(f"ip.addr=={a}" for a in found.groups()) in out, out


def test_run_isolate_refuses_ipv6_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", "10", "[::1]:21001", "--isolate", "2", "--hold", "0"]) == 2
    assert "::1 is IPv6's one loopback address" in _one_error_line(capsys.readouterr().err)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private registry (tags and reservations), so no test sees this host's own."""
    from loopfan.isolation import registry as reg

    folder = tmp_path / "registry" / "tags"
    monkeypatch.setattr(reg, "registry_dir", lambda: folder)
    return folder


def test_run_isolate_registers_its_addresses_for_the_run_only(
    listener_port: int, registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: --isolate addresses were not registered like tags are: before its clients connected (and
    between a close and a reconnect) nothing showed them taken, so a `loopfan tag` started during
    the run could pick one. They are now taken for the run's lifetime, and free again after it."""
    import ipaddress

    from loopfan.commands import run as run_command
    from loopfan.isolation.registry import active_reservations, addresses_taken, pick_free_address

    seen: list[tuple[list[str], frozenset[int], str]] = []
    real_run_plan = run_command.run_plan

    def spy(p: run_command.Plan, *args: object, **kwargs: object) -> run_command.RunResult:
        # As the run starts, before any isolated client has connected.
        taken = addresses_taken()
        seen.append(([g.source for g in p.isolated], taken, pick_free_address(taken)))
        return real_run_plan(p, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run_command, "run_plan", spy)
    assert main(["run", "-c", "6", f"127.0.0.1:{listener_port}", "--isolate", "3", "--hold", "0"]) == 0
    [(isolated, taken, next_tag)] = seen
    assert len(isolated) == 3 and {int(ipaddress.IPv4Address(a)) for a in isolated} <= taken
    assert next_tag not in isolated
    assert active_reservations() == []  # the run ended: its record went with it
    capsys.readouterr()


def test_a_tag_refuses_an_isolated_clients_address(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loopfan.isolation.registry import remove_record, reserve

    path = reserve(["127.0.0.93"], "loopfan run -c 10 --isolate 1")
    try:
        assert main(["tag", "--source", "127.0.0.93", "--", "true"]) == 2
    finally:
        remove_record(path)
    line = _one_error_line(capsys.readouterr().err)
    assert "--source 127.0.0.93 is an isolated client's address of a running `loopfan run -c 10 --isolate 1`" in line


def test_a_sigkilled_runs_addresses_are_free_again(registry: Path) -> None:
    """The record of a run killed outright stays behind; like a tag's, it is stale once its pid is
    gone, and dropped (and deleted) by the next reader."""
    import ipaddress
    import signal
    import subprocess

    from loopfan.isolation.registry import active_reservations, addresses_taken, reservations_dir

    code = ("import sys, time; from pathlib import Path; from loopfan.isolation import registry as r; "
            "r.reserve(['127.0.0.94'], 'loopfan run --isolate 1', Path(sys.argv[1])); print('ok', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(registry)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ok\n"
        assert [r.addresses for r in active_reservations()] == [("127.0.0.94",)]
        assert int(ipaddress.IPv4Address("127.0.0.94")) in addresses_taken()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert int(ipaddress.IPv4Address("127.0.0.94")) not in addresses_taken()
    assert list(reservations_dir().glob("*.json")) == []


def test_tag_list_shows_the_addresses_of_run_isolate(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: `tag --list` showed tags only, so an address refused to a tag as taken by a run was
    nowhere to be seen. Each reserved address is a row: the address, 'run --isolate', the run's pid."""
    from loopfan.isolation.registry import remove_record, reserve

    assert main(["tag", "--list"]) == 0
    assert capsys.readouterr().out == "no active tags, and no addresses held by `loopfan run --isolate`\n"
    path = reserve(["127.0.0.95", "127.0.0.96"], "loopfan run -c 10 --isolate 2")
    try:
        assert main(["tag", "--list"]) == 0
    finally:
        remove_record(path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ADDRESS", "LABEL", "PID", "STARTED", "COMMAND"]
    for line, address in zip(lines[1:], ["127.0.0.95", "127.0.0.96"], strict=True):
        row = rf"{address} +run --isolate +{os.getpid()}  \S+Z +loopfan run -c 10 --isolate 2"
        assert re.fullmatch(row, line), line


def test_the_registry_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests (and separate setups) keep their records out of /run/loopfan with LOOPFAN_RUNTIME_DIR;
    the suite sets it for every test (conftest.private_registry)."""
    from loopfan.isolation.registry import RUNTIME_DIR_ENV, registry_dir, reservations_dir

    assert not str(registry_dir()).startswith("/run/loopfan")
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path))
    assert registry_dir() == tmp_path / "tags" and reservations_dir() == tmp_path / "reserved"
