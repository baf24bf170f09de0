"""Doctor rules on synthetic host facts, and sysctl --fix/--undo against a fake /proc/sys tree."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from loopfan import doctor, sysctl
from loopfan.cli import main
from loopfan.doctor import FAIL, INFO, OK, WARN, Finding, Setting, diagnose, settings_to_fix, verdict
from loopfan.errors import HostError
from loopfan.hostfacts import Conntrack, HostFacts
from loopfan.planner import PlanRequest, plan
from loopfan.pools import parse_endpoints, parse_pool

Facts = Callable[..., HostFacts]


def findings_for(facts: HostFacts, n: int, **request: object) -> dict[str, Finding]:
    p = plan(PlanRequest(connections=n, **request), facts)  # type: ignore[arg-type]
    return {f.check: f for f in diagnose(facts, p)}


# --- rules ---------------------------------------------------------------------------------------


def test_dev_machine_holds_a_million(dev_facts: Facts) -> None:
    found = findings_for(dev_facts(), 1_000_000)
    assert verdict(tuple(found.values()))
    fds = found["open files per process"]
    assert fds.severity == INFO
    assert "20,000" in fds.found and "cannot be raised" in fds.found
    assert "52 client processes" in fds.needed


def test_raisable_fd_limit_needs_no_fix(dev_facts: Facts) -> None:
    fds = findings_for(dev_facts(nofile_hard_raisable=True), 1_000)["open files per process"]
    assert fds.fix == "" and "raisable" in fds.found


def test_own_server_needs_its_own_fd_limit(dev_facts: Facts) -> None:
    fds = findings_for(dev_facts(), 50_000, targets=parse_endpoints("127.0.0.1:8080"))[
        "open files per process"
    ]
    assert fds.severity == WARN and "YOUR server" in fds.needed


def test_file_max_too_small_fails_with_the_command(dev_facts: Facts) -> None:
    f = findings_for(dev_facts(file_max=100_000), 100_000)["fs.file-max"]
    assert f.severity == FAIL
    assert f.setting == Setting("fs.file-max", "220000")
    assert f.fix == "sudo sysctl -w fs.file-max=220000"


def test_mac_file_limit_is_kern_maxfiles(mac_facts: Facts) -> None:
    found = findings_for(mac_facts(file_max=12_288), 10_000, targets=parse_endpoints("127.0.0.1:80"))
    assert found["kern.maxfiles"].severity == FAIL
    assert found["kern.maxfiles"].fix.startswith("sudo sysctl -w kern.maxfiles=")


def test_ports_fail_for_a_one_address_pool(dev_facts: Facts) -> None:
    f = findings_for(
        dev_facts(), 100_000, targets=parse_endpoints("127.0.0.1:80"), sources=parse_pool("127.0.0.2")
    )["ephemeral ports"]
    assert f.severity == FAIL and "--sources" in f.fix


def test_no_bind_address_no_port_warns_on_linux(dev_facts: Facts) -> None:
    f = findings_for(dev_facts(bind_no_port=False), 1_000)["ephemeral ports"]
    assert f.severity == WARN and "IP_BIND_ADDRESS_NO_PORT" in f.fix


@pytest.mark.parametrize(("value", "severity"), [(0, WARN), (1, OK), (2, OK)])
def test_tw_reuse(dev_facts: Facts, value: int, severity: str) -> None:
    f = findings_for(dev_facts(tcp_tw_reuse=value), 1_000)["tcp_tw_reuse"]
    assert f.severity == severity
    assert (f.setting is not None) == (severity == WARN)


def test_accept_queue_warns_only_for_big_ramps(dev_facts: Facts) -> None:
    small = findings_for(dev_facts(), 1_000)
    assert small["net.core.somaxconn"].severity == OK  # 4096 >= 4096
    assert small["net.ipv4.tcp_max_syn_backlog"].severity == INFO
    big = findings_for(dev_facts(), 1_000_000)
    assert big["net.core.somaxconn"].severity == WARN
    assert big["net.core.somaxconn"].setting == Setting("net.core.somaxconn", "65535")


def test_conntrack_fails_only_when_it_tracks_loopback(dev_facts: Facts) -> None:
    idle = Conntrack(present=True, count=5, max=262_144, tracking_loopback=False)
    assert findings_for(dev_facts(conntrack=idle), 500_000)["conntrack"].severity == OK
    busy = Conntrack(present=True, count=5, max=262_144, tracking_loopback=True)
    f = findings_for(dev_facts(conntrack=busy), 500_000)["conntrack"]
    assert f.severity == FAIL and f.setting is not None
    assert f.setting.key == "net.netfilter.nf_conntrack_max" and int(f.setting.value) >= 510_005


def test_memory_fails_with_no_setting(dev_facts: Facts) -> None:
    f = findings_for(dev_facts(mem_available_bytes=2 * 2**30), 1_000_000)["memory"]
    assert f.severity == FAIL and f.setting is None and "holds about" in f.needed


def test_missing_local_route_on_linux(dev_facts: Facts) -> None:
    f = findings_for(dev_facts(loopback_route_all=False), 1_000)["loopback addresses"]
    assert f.severity == FAIL and "ip route add local 127.0.0.0/8 dev lo" in f.fix


def test_mac_without_aliases_names_loopfan_alias(mac_facts: Facts) -> None:
    found = findings_for(
        mac_facts(loopback_addresses=frozenset({"127.0.0.1"})), 1_000, targets=parse_endpoints("127.0.0.1:80")
    )
    f = found["loopback addresses"]
    assert f.severity == FAIL and f.fix.startswith("loopfan alias add")
    assert not verdict(tuple(found.values()))


def test_linux_only_checks_are_info_elsewhere(mac_facts: Facts) -> None:
    found = findings_for(mac_facts(), 1_000, targets=parse_endpoints("127.0.0.1:80"))
    for check in ("fs.nr_open", "tcp_tw_reuse", "tcp_mem"):
        assert found[check].severity == INFO


def test_settings_to_fix_takes_warn_and_fail_only(dev_facts: Facts) -> None:
    facts = dev_facts(tcp_tw_reuse=0, file_max=100_000)
    p = plan(PlanRequest(connections=1_000), facts)
    findings = diagnose(facts, p)
    keys = [s.key for s in settings_to_fix(findings)]
    assert "net.ipv4.tcp_tw_reuse" in keys
    assert "net.ipv4.tcp_max_syn_backlog" not in keys  # INFO at 1,000 connections
    widened = settings_to_fix(findings, widen_ports=True)
    assert widened[-1] == Setting("net.ipv4.ip_local_port_range", "1024 65535")


def test_sysctl_command_quotes_values_with_spaces() -> None:
    assert doctor.sysctl_command(Setting("net.ipv4.ip_local_port_range", "1024 65535")) == (
        'sudo sysctl -w net.ipv4.ip_local_port_range="1024 65535"'
    )


# --- sysctl apply / undo on a fake /proc/sys -----------------------------------------------------


@pytest.fixture
def proc_sys(tmp_path: Path) -> Path:
    root = tmp_path / "proc" / "sys"
    values = {
        "net/core/somaxconn": "4096\n",
        "net/ipv4/tcp_max_syn_backlog": "2048\n",
        "net/ipv4/ip_local_port_range": "32768\t60999\n",
        "fs/file-max": "2466170\n",
    }
    for rel, text in values.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_apply_records_then_undo_restores(proc_sys: Path, state_dir: Path) -> None:
    changes = sysctl.apply(
        [Setting("net.core.somaxconn", "65535"), Setting("net.ipv4.ip_local_port_range", "1024 65535")],
        root=proc_sys,
    )
    assert changes == [
        ("net.core.somaxconn", "4096", "65535"),
        ("net.ipv4.ip_local_port_range", "32768 60999", "1024 65535"),
    ]
    assert (proc_sys / "net/core/somaxconn").read_text() == "65535\n"
    record = json.loads((state_dir / "sysctl-undo.json").read_text())
    assert record == {"net.core.somaxconn": "4096", "net.ipv4.ip_local_port_range": "32768 60999"}
    assert sysctl.recorded() == record

    restored = sysctl.undo(root=proc_sys)
    assert restored == [
        ("net.core.somaxconn", "65535", "4096"),
        ("net.ipv4.ip_local_port_range", "1024 65535", "32768 60999"),
    ]
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "4096"
    assert sysctl.read_setting("net.ipv4.ip_local_port_range", proc_sys) == "32768 60999"
    assert not (state_dir / "sysctl-undo.json").exists()
    assert sysctl.undo(root=proc_sys) == []  # nothing left to undo


def test_first_recorded_value_wins(proc_sys: Path, state_dir: Path) -> None:
    sysctl.apply([Setting("fs.file-max", "3000000")], root=proc_sys)
    sysctl.apply([Setting("fs.file-max", "4000000")], root=proc_sys)
    assert sysctl.recorded() == {"fs.file-max": "2466170"}
    sysctl.undo(root=proc_sys)
    assert sysctl.read_setting("fs.file-max", proc_sys) == "2466170"


def test_unchanged_settings_are_not_recorded(proc_sys: Path, state_dir: Path) -> None:
    assert sysctl.apply([Setting("net.core.somaxconn", "4096")], root=proc_sys) == []
    assert sysctl.recorded() == {}


def test_missing_key_is_a_host_error(proc_sys: Path, state_dir: Path) -> None:
    with pytest.raises(HostError, match="does not exist"):
        sysctl.apply([Setting("net.netfilter.nf_conntrack_max", "600000")], root=proc_sys)


def test_state_dir_follows_the_environment(state_dir: Path) -> None:
    assert sysctl.state_dir() == state_dir


# --- the doctor command's --fix / --undo, wired to the fake tree ---------------------------------


@pytest.fixture
def wired(
    proc_sys: Path, state_dir: Path, dev_facts: Facts, monkeypatch: pytest.MonkeyPatch
) -> Callable[[bool], None]:
    """Point `loopfan doctor` at the fake tree and at facts read from it; call with is_root."""
    import loopfan.commands.doctor as cmd

    monkeypatch.setattr(cmd.sysctl, "apply", functools.partial(sysctl.apply, root=proc_sys))
    monkeypatch.setattr(cmd.sysctl, "undo", functools.partial(sysctl.undo, root=proc_sys))

    def as_user(is_root: bool) -> None:
        def facts() -> HostFacts:
            return dev_facts(
                is_root=is_root,
                somaxconn=int(sysctl.read_setting("net.core.somaxconn", proc_sys)),
                tcp_max_syn_backlog=int(sysctl.read_setting("net.ipv4.tcp_max_syn_backlog", proc_sys)),
            )

        monkeypatch.setattr(cmd, "read_host_facts", facts)

    return as_user


def test_doctor_fix_then_undo(
    wired: Callable[[bool], None], proc_sys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wired(True)
    assert main(["doctor", "-c", "1000000", "--fix"]) == 0
    out = capsys.readouterr().out
    assert "net.core.somaxconn = 65535" in out  # listed before it is applied
    assert "set net.core.somaxconn: 4096 -> 65535" in out
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "65535"
    assert sysctl.read_setting("net.ipv4.tcp_max_syn_backlog", proc_sys) == "65535"

    assert main(["doctor", "--undo"]) == 0
    assert "restored net.core.somaxconn: 65535 -> 4096" in capsys.readouterr().out
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "4096"
    assert sysctl.read_setting("net.ipv4.tcp_max_syn_backlog", proc_sys) == "2048"


def test_doctor_fix_with_json_keeps_stdout_json_alone(
    wired: Callable[[bool], None], proc_sys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wired(True)
    assert main(["doctor", "-c", "1000000", "--fix", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["schema"] == "loopfan.doctor/1"  # the lines saying what --fix did went to stderr
    assert "set net.core.somaxconn: 4096 -> 65535" in captured.err
    # ...and the JSON says it too: a CI job reads what was changed without parsing text.
    assert {"key": "net.core.somaxconn", "before": "4096", "after": "65535"} in doc["fix"]["applied"]
    assert doc["fix"]["root"] is True and doc["fix"]["record"].endswith("sysctl-undo.json")
    assert "sudo sysctl -w net.core.somaxconn=65535" in doc["fix"]["commands"]
    assert main(["doctor", "--undo"]) == 0


def test_doctor_fix_json_without_root_lists_the_commands(
    wired: Callable[[bool], None], proc_sys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: exit 1 with an empty stdout, where the commands to run went to stderr only."""
    wired(False)
    assert main(["doctor", "-c", "1000000", "--fix", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["fix"]["root"] is False and doc["fix"]["applied"] == []
    assert "sudo sysctl -w net.core.somaxconn=65535" in doc["fix"]["commands"]
    assert "fix" not in json.loads(_doctor_json(capsys))  # without --fix: no such key


def test_doctor_fix_without_root_prints_commands(
    wired: Callable[[bool], None], proc_sys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wired(False)
    assert main(["doctor", "-c", "1000000", "--fix"]) == 1
    out = capsys.readouterr().out
    assert "sudo sysctl -w net.core.somaxconn=65535" in out
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "4096"  # nothing written


def test_doctor_undo_without_root_prints_commands(
    wired: Callable[[bool], None], proc_sys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wired(True)
    main(["doctor", "-c", "1000000", "--fix"])
    capsys.readouterr()
    wired(False)
    assert main(["doctor", "--undo"]) == 1
    assert "sudo sysctl -w net.core.somaxconn=4096" in capsys.readouterr().out
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "65535"  # untouched


def test_doctor_undo_with_nothing_recorded(wired: Callable[[bool], None], capsys: pytest.CaptureFixture[str]) -> None:
    wired(True)
    assert main(["doctor", "--undo"]) == 0
    assert "nothing to undo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["doctor", "--fix", "--undo"], ["doctor", "--widen-ports"]])
def test_doctor_contradictory_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("loopfan: error:") and err.count("\n") == 1


@pytest.mark.parametrize("content", ["{broken", '["a"]', '{"fs.file-max": ["x"]}'])
def test_a_damaged_undo_record_is_said_not_crashed_on(proc_sys: Path, state_dir: Path, content: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """QA: '{broken' in the record gave 'internal error: JSONDecodeError' and blocked --fix. It is
    the only copy of the values to restore: nothing is written, and the line says what to do."""
    state_dir.mkdir(parents=True)
    (state_dir / "sysctl-undo.json").write_text(content)
    for act in (lambda: sysctl.undo(root=proc_sys), sysctl.recorded,
                lambda: sysctl.apply([Setting("fs.file-max", "3000000")], root=proc_sys)):
        with pytest.raises(HostError, match=r"the undo record .*sysctl-undo.json is damaged .* remove the file"):
            act()
    assert (proc_sys / "fs/file-max").read_text() == "2466170\n"
    assert (state_dir / "sysctl-undo.json").read_text() == content
    assert main(["doctor", "--undo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err and "is damaged" in err


def test_undo_leaves_a_setting_changed_since_the_fix(proc_sys: Path, state_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """QA: after --fix set somaxconn to 65535, the user set 8192 by hand; --undo put 4096 back over
    it without a word. A value changed since is not what --fix changed: it is left, and said."""
    sysctl.apply([Setting("net.core.somaxconn", "65535"), Setting("fs.file-max", "3000000")], root=proc_sys)
    (proc_sys / "net/core/somaxconn").write_text("8192\n")
    changed: list[tuple[str, str, str, str]] = []
    assert sysctl.undo(root=proc_sys, changed_since=changed) == [("fs.file-max", "3000000", "2466170")]
    assert changed == [("net.core.somaxconn", "8192", "65535", "4096")]
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "8192"
    assert not (state_dir / "sysctl-undo.json").exists() and not (state_dir / "sysctl-set.json").exists()
    # Through the command (as root, on the fake /proc/sys): the line names the value and the way back.
    from loopfan.commands import doctor as doctor_command
    sysctl.apply([Setting("net.core.somaxconn", "65535")], root=proc_sys)  # (8192 now: the value before)
    (proc_sys / "net/core/somaxconn").write_text("1024\n")
    real_undo = sysctl.undo
    monkeypatch.setattr(sysctl, "undo", lambda changed_since=None: real_undo(proc_sys, changed_since))
    monkeypatch.setattr(doctor_command, "read_host_facts", lambda: type("F", (), {"is_root": True})())
    assert main(["doctor", "--undo"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "left net.core.somaxconn at 1024: changed since --fix set it to 65535 (it was 8192 before" in out
    assert "sysctl -w net.core.somaxconn=8192" in out


def test_doctor_undo_with_json_prints_json_like_fix_does(
    wired: Callable[[bool], None], proc_sys: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QA: `doctor --undo --json` printed text only, where `doctor --json` and `--fix --json` print
    one JSON object on stdout (and what was done on stderr)."""
    wired(True)
    assert main(["doctor", "--undo", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"schema": "loopfan.doctor-undo/1", "ok": True,
                                        "record": str(state_dir / "sysctl-undo.json"), "settings": []}
    assert "nothing to undo" in captured.err

    main(["doctor", "-c", "1000000", "--fix"])
    (proc_sys / "net/ipv4/tcp_max_syn_backlog").write_text("8192\n")  # changed by hand since
    capsys.readouterr()
    wired(False)
    assert main(["doctor", "--undo", "--json"]) == 1
    captured = capsys.readouterr()
    undo = json.loads(captured.out)
    assert undo["ok"] is False and "not root" in captured.err
    assert {"key": "net.core.somaxconn", "result": "not root", "value": "4096", "current": None,
            "set_by_fix": None, "fix": "sudo sysctl -w net.core.somaxconn=4096"} in undo["settings"]

    wired(True)
    assert main(["doctor", "--undo", "--json"]) == 0
    captured = capsys.readouterr()
    undo = json.loads(captured.out)
    assert undo["schema"] == "loopfan.doctor-undo/1" and undo["ok"] is True
    assert undo["settings"] == [
        {"key": "net.core.somaxconn", "result": "restored", "value": "4096", "current": "65535",
         "set_by_fix": None, "fix": ""},
        {"key": "net.ipv4.tcp_max_syn_backlog", "result": "left", "value": "2048", "current": "8192",
         "set_by_fix": "65535", "fix": "sudo sysctl -w net.ipv4.tcp_max_syn_backlog=2048"},
    ]
    assert "restored net.core.somaxconn: 65535 -> 4096" in captured.err
    assert sysctl.read_setting("net.core.somaxconn", proc_sys) == "4096"


@pytest.fixture
def host_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No LOOPFAN_STATE_DIR: the fixed directory (here under tmp_path) and HOME as sudo leaves them."""
    monkeypatch.delenv("LOOPFAN_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(sysctl, "_home_of", lambda user: tmp_path / "home" / user, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "alice"))
    fixed = tmp_path / "var" / "lib" / "loopfan"
    monkeypatch.setattr(sysctl, "SYSTEM_STATE_DIR", fixed, raising=False)
    return fixed


def test_the_undo_record_survives_sudo_changing_home(proc_sys: Path, host_state: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: `sudo loopfan doctor --fix` (HOME kept: /home/alice) then `sudo -i loopfan doctor --undo`
    (HOME=/root) said 'nothing to undo' - the record was under the first HOME - and the settings
    stayed changed. The record is the host's: it lives in one root-owned directory."""
    sysctl.apply([Setting("net.core.somaxconn", "65535")], root=proc_sys)
    assert json.loads((host_state / "sysctl-undo.json").read_text()) == {"net.core.somaxconn": "4096"}
    assert (host_state / "sysctl-undo.json").stat().st_mode & 0o777 == 0o644  # read by --undo without root
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "root"))
    assert sysctl.recorded() == {"net.core.somaxconn": "4096"}
    assert sysctl.undo(root=proc_sys) == [("net.core.somaxconn", "65535", "4096")]
    assert list(host_state.iterdir()) == []


@pytest.mark.parametrize("whose", ["alice", "root"])
def test_an_undo_record_of_an_earlier_version_is_still_found_and_moved(
        whose: str, proc_sys: Path, host_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written by earlier versions, under the state home of whoever ran --fix - this HOME's,
    the sudo caller's or root's - are read; a --fix moves the record to the fixed directory."""
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home" / ("root" if whose == "alice" else "alice")))
    earlier = tmp_path / "home" / whose / ".local" / "state" / "loopfan"
    earlier.mkdir(parents=True)
    (earlier / "sysctl-undo.json").write_text('{"fs.file-max": "2466170"}')
    (earlier / "sysctl-set.json").write_text('{"fs.file-max": "3000000"}')
    (proc_sys / "fs/file-max").write_text("3000000\n")
    assert sysctl.recorded() == {"fs.file-max": "2466170"}
    assert sysctl.undo_file() == earlier / "sysctl-undo.json"

    sysctl.apply([Setting("net.core.somaxconn", "65535"), Setting("fs.file-max", "4000000")], root=proc_sys)
    assert list(earlier.iterdir()) == []
    assert sysctl.recorded() == {"fs.file-max": "2466170", "net.core.somaxconn": "4096"}  # the first value wins
    assert sysctl.undo_file() == host_state / "sysctl-undo.json"
    restored = sysctl.undo(root=proc_sys)
    assert sorted(restored) == [("fs.file-max", "4000000", "2466170"), ("net.core.somaxconn", "65535", "4096")]


def test_an_undo_record_that_cannot_be_written_is_said(proc_sys: Path, host_state: Path) -> None:
    host_state.parent.mkdir(parents=True)
    host_state.write_text("not a directory")
    with pytest.raises(HostError, match="cannot write the undo record"):
        sysctl.apply([Setting("net.core.somaxconn", "65535")], root=proc_sys)
    assert (proc_sys / "net/core/somaxconn").read_text() == "4096\n"  # nothing written without its record


def _doctor_json(capsys: pytest.CaptureFixture[str]) -> str:
    main(["doctor", "-c", "1000", "--json"])
    return capsys.readouterr().out


def test_the_suite_and_the_processes_it_starts_keep_state_in_private_directories() -> None:
    """tests/conftest.py: no test reaches /var/lib/loopfan or /run/loopfan unless it says so - an
    empty /var/lib/loopfan once appeared after a full run - and a subprocess inherits that."""
    import subprocess
    import sys

    from loopfan.isolation import registry

    assert sysctl.undo_dir() != sysctl.SYSTEM_STATE_DIR and sysctl.state_dir() == sysctl.undo_dir()
    assert not registry.registry_dir().is_relative_to("/run/loopfan")
    code = "from loopfan import sysctl; from loopfan.isolation import registry; " \
           "print(sysctl.undo_dir()); print(registry.registry_dir())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == [str(sysctl.undo_dir()), str(registry.registry_dir())]
