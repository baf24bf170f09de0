"""loopfan.aliases and `loopfan alias`: every macOS/FreeBSD path against recorded outputs.

Nothing here runs ifconfig or sudo: a FakeHost plays the Mac (or FreeBSD box), answering
`ifconfig lo0` in the recorded format and carrying out the exact script lines loopfan sends, so the
tests check the commands loopfan would run and the record it keeps.
"""

from __future__ import annotations

import json
import plistlib
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopfan import aliases
from loopfan.aliases import (
    LAUNCHDAEMON_PATH,
    AliasState,
    Completed,
    batches,
    boot_script,
    ints_of,
    parse_alias_pool,
    plan_add,
    plan_remove,
    pool_of,
    preflight,
    suggest_add_command,
)
from loopfan.cli import main
from loopfan.commands import alias as alias_cmd
from loopfan.errors import HostError, UsageError
from loopfan.hostfacts import HostFacts, macos_facts_from_outputs, parse_sysctl_output
from loopfan.planner import PlanRequest, plan
from loopfan.pools import AddressPool, ip_to_str, parse_pool

FIXTURES = Path(__file__).parent / "fixtures" / "macos"
RECORDED = FIXTURES / "aliases"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def v4(text: str) -> int:
    return int.from_bytes(bytes(int(x) for x in text.split(".")), "big")


# ---------------------------------------------------------------------------------------------
# A recorded host


_LINE = {
    "macos": {
        "add": re.compile(r"^/sbin/ifconfig lo0 alias (127\.\d+\.\d+\.\d+) up$"),
        "remove": re.compile(r"^/sbin/ifconfig lo0 -alias (127\.\d+\.\d+\.\d+)$"),
    },
    "freebsd": {
        "add": re.compile(r"^/sbin/ifconfig lo0 inet (127\.\d+\.\d+\.\d+)/32 alias$"),
        "remove": re.compile(r"^/sbin/ifconfig lo0 inet (127\.\d+\.\d+\.\d+) -alias$"),
    },
}


class FakeHost:
    """A Mac (or FreeBSD box) seen through loopfan's runner: recorded outputs, real bookkeeping."""

    def __init__(self, platform: str = "macos", lo0_fixture: str | None = None) -> None:
        self.platform = platform
        self.base = recorded(lo0_fixture or f"{platform}-ifconfig-lo0.txt")
        # Aliases already in the recorded output, then those added here, in order of addition.
        self.aliases: list[str] = [a for a in re.findall(r"^\s*inet (\S+) ", self.base, flags=re.M) if a != "127.0.0.1"]
        self.base = "".join(
            line for line in self.base.splitlines(keepends=True) if not re.match(r"^\s*inet 127\.0\.0\.(?!1 )", line)
        )
        self.calls: list[list[str]] = []
        self.sudo_refusal: str | None = None  # a recorded stderr: every sudo fails with it
        self.refuse_after = 0  # sudo succeeds this many times before refusing
        self.failing: dict[str, str] = {}  # address -> recorded ifconfig stderr
        self.daemon_installed = False
        self.installed_plist: bytes | None = None

    @property
    def aliases(self) -> list[str]:
        return list(self.present)

    @aliases.setter
    def aliases(self, addresses: list[str]) -> None:
        self.present = dict.fromkeys(addresses)

    def lo0(self) -> str:
        mask = "0xffffffff" if self.platform == "freebsd" else "0xff000000"
        extra = "".join(f"\tinet {a} netmask {mask}\n" for a in self.aliases)
        anchor = "\tgroups:" if self.platform == "freebsd" else "\tnd6"
        head, sep, tail = self.base.partition(anchor)
        return head + extra + sep + tail

    def __call__(self, argv: list[str]) -> Completed:
        self.calls.append(list(argv))
        if argv == ["/sbin/ifconfig", "lo0"]:
            return Completed(0, self.lo0(), "")
        if argv[:1] == ["sudo"]:
            if self.sudo_refusal is not None:
                if self.refuse_after <= 0:
                    return Completed(1, "", self.sudo_refusal)
                self.refuse_after -= 1
            argv = argv[1:]
        assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
        errors = []
        for line in argv[2].split("\n"):
            errors.extend(self._run_line(line))
        return Completed(1 if errors else 0, "", "".join(errors))

    def _run_line(self, line: str) -> list[str]:
        patterns = _LINE[self.platform]
        if m := patterns["add"].match(line):
            addr = m.group(1)
            if addr in self.failing:
                return [self.failing[addr]]
            self.present.setdefault(addr)
            return []
        if m := patterns["remove"].match(line):
            addr = m.group(1)
            if addr not in self.present:
                return [recorded("macos-ifconfig-remove-absent.txt")]
            del self.present[addr]
            return []
        install = re.match(
            r"^/usr/bin/install -m 644 -o root -g wheel (\S+) " + re.escape(LAUNCHDAEMON_PATH) + "$", line
        )
        if install:
            self.installed_plist = Path(shlex.split(install.group(1))[0]).read_bytes()
            self.daemon_installed = True
            return []
        if line == f"/bin/launchctl bootout system/{aliases.LAUNCHD_LABEL} 2>/dev/null":
            return []
        if line == f"/bin/rm -f {LAUNCHDAEMON_PATH}":
            self.daemon_installed = False
            self.installed_plist = None
            return []
        raise AssertionError(f"loopfan sent a line no Mac would expect: {line!r}")

    @property
    def scripts(self) -> list[list[str]]:
        return [c for c in self.calls if c != ["/sbin/ifconfig", "lo0"]]


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOPFAN_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    yield _install_host(monkeypatch, FakeHost("macos"))


def _install_host(monkeypatch: pytest.MonkeyPatch, host: FakeHost, *, sudo: bool = True) -> FakeHost:
    monkeypatch.setattr(
        alias_cmd,
        "HOST",
        alias_cmd.HostAccess(
            runner=host,
            platform=lambda: host.platform,
            use_sudo=lambda: sudo,
            daemon_installed=lambda: host.daemon_installed,
        ),
    )
    return host


def record(state_dir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((state_dir / "lo0-aliases.json").read_text())
    return data


# ---------------------------------------------------------------------------------------------
# Pools: bad input is one line and exit 2


@pytest.mark.parametrize(
    ("pool", "words"),
    [
        ("10.0.0.1", "not a loopback address"),
        ("127.0.0.2-128.0.0.1", "not a loopback address"),
        ("127.0.0.1", "127.0.0.1, lo0's own address"),
        ("127.0.0.0/24", "includes 127.0.0.1"),
        ("::1", "::1 is always on lo0"),
        ("127.0.0.300", "not an IPv4 address"),
        ("127.0.0.9-127.0.0.2", "reversed"),
        ("127.0.0.2,,127.0.0.3", "empty item"),
        ("127.0.0.0/8", "at most 65,536"),
        ("default", "at most 65,536"),
    ],
)
def test_bad_pools_exit_2_with_one_line(pool: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        parse_alias_pool(pool)
    for argv in (
        ["alias", "add", pool],
        ["alias", "add", pool, "--dry-run", "--platform", "macos"],
        ["alias", "remove", pool],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("loopfan: error: ") and words in err


def test_good_pools() -> None:
    assert parse_alias_pool("127.0.0.2-127.0.0.20").ipv4_count == 19
    assert parse_alias_pool("127.0.0.0/24,!127.0.0.1").ipv4_count == 255
    assert parse_alias_pool("127.1.0.0/16").ipv4_count == 65_536


def test_remove_needs_pool_or_all_added(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "remove"]) == 2
    assert main(["alias", "remove", "127.0.0.2", "--all-added"]) == 2
    assert "either a POOL" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The commands loopfan runs


def test_dry_run_preview_prints_the_exact_macos_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.20", "--dry-run", "--platform", "macos"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    argv = shlex.split("\n".join(commands))
    assert argv[:3] == ["sudo", "/bin/sh", "-c"] and len(argv) == 4  # one sudo for the batch
    assert argv[3].split("\n") == [f"/sbin/ifconfig lo0 alias 127.0.0.{i} up" for i in range(2, 21)]
    assert "19 to add" in out


def test_dry_run_on_the_mac_skips_existing_aliases(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _install_host(monkeypatch, FakeHost("macos", "macos-ifconfig-lo0-hand-aliases.txt"))
    assert main(["alias", "add", "127.0.0.2-127.0.0.8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 to add, 2 already on lo0" in out
    assert host.scripts == []  # a dry run reads lo0 and changes nothing
    argv = shlex.split("\n".join(line for line in out.splitlines() if not line.startswith("#")))
    assert argv[3].split("\n") == [f"/sbin/ifconfig lo0 alias 127.0.0.{i} up" for i in (2, 4, 5, 6, 8)]


def test_freebsd_commands_use_32_bit_masks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.3", "--dry-run", "--platform", "freebsd"]) == 0
    argv = shlex.split(capsys.readouterr().out.split("\n", 2)[2])
    assert argv[3].split("\n") == [
        "/sbin/ifconfig lo0 inet 127.0.0.2/32 alias",
        "/sbin/ifconfig lo0 inet 127.0.0.3/32 alias",
    ]
    assert aliases.remove_line(v4("127.0.0.2"), "freebsd") == "/sbin/ifconfig lo0 inet 127.0.0.2 -alias"
    assert aliases.remove_line(v4("127.0.0.2"), "macos") == "/sbin/ifconfig lo0 -alias 127.0.0.2"


def test_remove_preview_shows_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "remove", "127.0.0.2-127.0.0.3", "--dry-run", "--platform", "macos"]) == 0
    argv = shlex.split(capsys.readouterr().out.split("\n", 2)[2])
    assert argv == ["sudo", "/bin/sh", "-c", "/sbin/ifconfig lo0 -alias 127.0.0.2\n/sbin/ifconfig lo0 -alias 127.0.0.3"]


def test_thousands_of_aliases_go_in_a_few_batches(mac: FakeHost, state_dir: Path) -> None:
    assert main(["alias", "add", "127.2.0.0/18"]) == 0
    assert len(mac.aliases) == 16_384
    assert 1 < len(mac.scripts) <= 16_384 * 40 // aliases.BATCH_SCRIPT_BYTES + 1
    assert record(state_dir)["added"] == "127.2.0.0-127.2.63.255"
    assert main(["alias", "remove", "--all-added"]) == 0
    assert mac.aliases == []


def test_preview_without_dry_run_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "add", "127.0.0.2", "--platform", "macos"]) == 2
    assert "add --dry-run" in capsys.readouterr().err


def test_batches_stay_under_the_size_limit_and_cover_every_address_once() -> None:
    pool = parse_alias_pool("127.1.0.0/18")  # 16,384 aliases
    lines = [aliases.add_line(ip, "macos") for ip in pool.ascending()]
    argvs = batches(lines, use_sudo=True)
    assert len(argvs) > 1
    assert all(len(a[3].encode()) <= aliases.BATCH_SCRIPT_BYTES for a in argvs)
    assert all(a[:3] == ["sudo", "/bin/sh", "-c"] for a in argvs)
    assert [x for a in argvs for x in a[3].split("\n")] == lines
    assert batches(lines[:3], use_sudo=False)[0][:2] == ["/bin/sh", "-c"]  # root runs no sudo


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.integers(0, 300), max_size=80),
    st.sets(st.integers(0, 300), max_size=80),
    st.integers(2, 200),
)
def test_add_plan_partitions_the_pool(pool_ips: set[int], present: set[int], size: int) -> None:
    base = v4("127.0.1.0")
    pool = pool_of(base + i for i in pool_ips)
    have = {base + i for i in present}
    p = plan_add(pool, have, AliasState(), platform="macos", persist=False, daemon_installed=False)
    assert ints_of(p.change) | ints_of(p.skipped) == ints_of(pool)
    assert not ints_of(p.change) & have and ints_of(p.skipped) <= have
    lines = p.lines("unused")
    assert all(len(a[3]) <= size * 40 + 40 for a in batches(lines, use_sudo=True, max_bytes=size * 40))
    assert len(lines) == len(ints_of(p.change))


# ---------------------------------------------------------------------------------------------
# Add, remove, record: on a recorded Mac


def test_add_runs_one_sudo_and_records_what_it_added(
    mac: FakeHost, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.20"]) == 0
    out = capsys.readouterr().out
    assert mac.calls[0] == ["/sbin/ifconfig", "lo0"] and mac.calls[-1] == ["/sbin/ifconfig", "lo0"]
    assert len(mac.scripts) == 1 and mac.scripts[0][:3] == ["sudo", "/bin/sh", "-c"]
    assert mac.aliases == [f"127.0.0.{i}" for i in range(2, 21)]
    assert record(state_dir)["added"] == "127.0.0.2-127.0.0.20"
    assert "added 19 aliases: 127.0.0.2-127.0.0.20" in out and "--persist" in out
    # Idempotent: a second add runs no sudo at all.
    mac.calls.clear()
    assert main(["alias", "add", "127.0.0.2-127.0.0.20"]) == 0
    assert mac.scripts == [] and "nothing to do" in capsys.readouterr().out


def test_remove_all_added_leaves_hand_made_aliases(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = _install_host(monkeypatch, FakeHost("macos", "macos-ifconfig-lo0-hand-aliases.txt"))
    assert host.aliases == ["127.0.0.3", "127.0.0.7"]  # made by hand before loopfan
    assert main(["alias", "add", "127.0.0.2-127.0.0.10"]) == 0
    assert record(state_dir)["added"] == "127.0.0.2,127.0.0.4-127.0.0.6,127.0.0.8-127.0.0.10"
    assert main(["alias", "list"]) == 0
    listing = capsys.readouterr().out
    assert "made by hand or other tools (loopfan leaves them alone): 2: 127.0.0.3,127.0.0.7" in listing
    host.calls.clear()
    assert main(["alias", "remove", "--all-added"]) == 0
    assert sorted(host.aliases) == ["127.0.0.3", "127.0.0.7"]
    removed = host.scripts[0][3].split("\n")
    assert "/sbin/ifconfig lo0 -alias 127.0.0.3" not in removed and len(removed) == 7
    assert not (state_dir / "lo0-aliases.json").exists()
    assert "nothing to remove" in (main(["alias", "remove", "--all-added"]), capsys.readouterr().out)[1]


def test_remove_pool_skips_missing_and_updates_the_record(mac: FakeHost, state_dir: Path) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.9"]) == 0
    mac.calls.clear()
    assert main(["alias", "remove", "127.0.0.8-127.0.0.12"]) == 0
    assert mac.scripts[0][3].split("\n") == [
        "/sbin/ifconfig lo0 -alias 127.0.0.8",
        "/sbin/ifconfig lo0 -alias 127.0.0.9",
    ]
    assert record(state_dir)["added"] == "127.0.0.2-127.0.0.7"


def test_reboot_forgets_aliases_and_remove_all_added_clears_the_record(
    mac: FakeHost, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.4"]) == 0
    mac.aliases = []  # a reboot without --persist
    assert main(["alias", "list"]) == 0
    assert "re-add them with: loopfan alias add 127.0.0.2-127.0.0.4" in capsys.readouterr().out
    mac.calls.clear()
    assert main(["alias", "remove", "--all-added"]) == 0
    assert mac.scripts == [] and not (state_dir / "lo0-aliases.json").exists()


# ---------------------------------------------------------------------------------------------
# Refusals and errors, from recorded stderr


@pytest.mark.parametrize("fixture", ["sudo-wrong-password.txt", "sudo-not-in-sudoers.txt", "sudo-no-terminal.txt"])
def test_sudo_refusal_changes_nothing_and_says_so(
    mac: FakeHost, state_dir: Path, fixture: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mac.sudo_refusal = recorded(fixture)
    assert main(["alias", "add", "127.0.0.2-127.0.0.5", "--persist"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sudo refused" in err and "nothing was changed" in err
    assert mac.aliases == [] and not mac.daemon_installed
    assert not (state_dir / "lo0-aliases.json").exists()


def test_ifconfig_failures_are_reported_and_only_real_adds_recorded(
    mac: FakeHost, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mac.failing = {"127.0.0.4": recorded("macos-ifconfig-alias-not-root.txt")}
    assert main(["alias", "add", "127.0.0.2-127.0.0.5"]) == 1
    err = capsys.readouterr().err
    assert "1 of 4 aliases could not be added (127.0.0.4)" in err and "Operation not permitted" in err
    assert record(state_dir)["added"] == "127.0.0.2-127.0.0.3,127.0.0.5"


def test_sudo_timeout_between_chunks_records_the_first_chunk(
    mac: FakeHost, state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(aliases, "BATCH_SCRIPT_BYTES", 200)  # ~5 addresses per sudo
    mac.sudo_refusal, mac.refuse_after = recorded("sudo-no-terminal.txt"), 1
    assert main(["alias", "add", "127.0.0.2-127.0.0.20"]) == 1
    err = capsys.readouterr().err
    assert "aliases could not be added" in err and err.endswith("sudo: a password is required\n")
    assert "sudo: sudo:" not in err and err.count("\n") == 1
    added = parse_pool(str(record(state_dir)["added"]))
    assert ints_of(added) == {v4(a) for a in mac.aliases} and 0 < added.ipv4_count < 19


def test_unreadable_lo0_is_a_host_error() -> None:
    def broken(argv: list[str]) -> Completed:
        return Completed(1, "", recorded("ifconfig-no-such-interface.txt"))

    with pytest.raises(HostError, match="does not exist"):
        aliases.read_lo0(broken)


def test_damaged_record_names_the_file(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "lo0-aliases.json").write_text("{not json")
    with pytest.raises(HostError, match=r"lo0-aliases\.json is damaged"):
        aliases.load_state()


# ---------------------------------------------------------------------------------------------
# --persist: the LaunchDaemon


def test_persist_installs_a_launchdaemon_in_the_same_sudo(
    mac: FakeHost, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.20", "--persist"]) == 0
    out = capsys.readouterr().out
    assert len(mac.scripts) == 1  # aliases and the daemon under one sudo
    assert f"LaunchDaemon written to {LAUNCHDAEMON_PATH}" in out
    assert mac.installed_plist is not None
    daemon = plistlib.loads(mac.installed_plist)
    assert daemon["Label"] == "io.loopfan.lo0-aliases" and daemon["RunAtLoad"] is True
    assert daemon["ProgramArguments"][:2] == ["/bin/sh", "-c"]
    assert record(state_dir)["launchdaemon"] == LAUNCHDAEMON_PATH
    # Adding more keeps the boot list in step; remove --all-added takes the daemon away too.
    assert main(["alias", "add", "127.0.0.30"]) == 0
    assert "127.0.0.30" in _boot_addresses(plistlib.loads(mac.installed_plist)["ProgramArguments"][2])
    assert main(["alias", "remove", "--all-added"]) == 0
    assert not mac.daemon_installed and mac.aliases == []
    assert "removed the LaunchDaemon" in capsys.readouterr().out
    assert not (state_dir / "lo0-aliases.json").exists()


def test_removing_part_of_a_persisted_pool_rewrites_the_daemon(mac: FakeHost) -> None:
    assert main(["alias", "add", "127.0.0.2-127.0.0.9", "--persist"]) == 0
    assert main(["alias", "remove", "127.0.0.5-127.0.0.9"]) == 0
    assert mac.installed_plist is not None
    script = plistlib.loads(mac.installed_plist)["ProgramArguments"][2]
    assert _boot_addresses(script) == [f"127.0.0.{i}" for i in range(2, 5)]


def test_persist_is_macos_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "add", "127.0.0.2", "--persist", "--dry-run", "--platform", "freebsd"]) == 2
    assert "rc.conf" in capsys.readouterr().err


def _boot_addresses(script: str) -> list[str]:
    """Run the boot script with `echo` in place of ifconfig (prints only) and collect the addresses."""
    script = script.replace(aliases.IFCONFIG, "echo")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout
    addresses = []
    for line in out.splitlines():
        parts = line.split()
        assert parts[:2] == ["lo0", "alias"] and parts[3] == "up", line
        addresses.append(parts[2])
    return addresses


def test_boot_script_reproduces_every_recorded_alias_in_little_space() -> None:
    added = parse_pool("127.0.0.2-127.0.3.10,127.0.9.9,127.0.9.11-127.0.9.12,127.200.255.250-127.201.0.5")
    script = boot_script(added)
    assert len(script) < 1000
    assert _boot_addresses(script) == [ip_to_str(ip) for ip in added.ascending()]


# ---------------------------------------------------------------------------------------------
# Linux and Windows: nothing to do


LINUX_ROUTE = (FIXTURES.parent / "linux" / "ip-route-table-local.txt").read_text()


@pytest.mark.parametrize(
    ("route", "status", "words"),
    [
        (LINUX_ROUTE, 0, "Checked: `local 127.0.0.0/8 dev lo`"),
        ("local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1\n", 1, "MISSING"),
        ("", 0, "Could not check the route"),
    ],
)
def test_linux_explains_and_checks_the_route(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], route: str, status: int, words: str
) -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> Completed:
        calls.append(argv)
        return Completed(0 if route else 127, route, "")

    monkeypatch.setattr(alias_cmd, "HOST", alias_cmd.HostAccess(runner=runner, platform=lambda: "linux"))
    for argv in (["alias", "add", "127.0.0.2-127.0.0.20"], ["alias", "remove", "--all-added"], ["alias", "list"]):
        assert main(argv) == status
        out = capsys.readouterr().out
        assert words in out
        if status == 1:
            assert aliases.LINUX_ROUTE_FIX in out
        else:
            assert "nothing to do" in out
    assert {tuple(c) for c in calls} == {("ip", "route", "show", "table", "local")}  # read only


def test_windows_explains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(alias_cmd, "HOST", alias_cmd.HostAccess(runner=_no_commands, platform=lambda: "windows"))
    assert main(["alias", "add", "127.0.0.2"]) == 0
    assert "Windows: nothing to do" in capsys.readouterr().out


def _no_commands(argv: list[str]) -> Completed:
    raise AssertionError(f"no command may run here: {argv}")


# ---------------------------------------------------------------------------------------------
# Plans on a recorded macOS host


def mac_facts(lo0: str, sysctl: str = "sysctl-arm64.txt") -> HostFacts:
    return macos_facts_from_outputs(
        sysctl=parse_sysctl_output((FIXTURES / sysctl).read_text()),
        ifconfig_lo0=lo0,
        launchctl=(FIXTURES / "launchctl-limit-maxfiles.txt").read_text(),
        nofile_soft=256,
        nofile_hard=aliases_unlimited(),
    )


def aliases_unlimited() -> int:
    from loopfan.hostfacts import UNLIMITED

    return int(UNLIMITED)


def lo0_with(pool: str) -> str:
    host = FakeHost("macos")
    host.aliases = [ip_to_str(ip) for ip in parse_pool(pool).ascending()]
    return host.lo0()


def test_plan_on_a_mac_uses_only_aliases_and_per_source_budgets() -> None:
    facts = mac_facts(lo0_with("127.0.0.2-127.0.0.20"))
    assert facts.port_count == 16_384 and not facts.bind_no_port
    p = plan(PlanRequest(connections=100_000), facts)
    assert p.budget_scope == "source"
    assert set(p.sources) <= {f"127.0.0.{i}" for i in range(2, 21)}
    per_source: dict[str, int] = {}
    for g in p.groups:
        per_source[g.source] = per_source.get(g.source, 0) + g.connections
    assert max(per_source.values()) <= p.budget_per_group <= 16_384
    assert p.per_process <= 122_880  # kern.maxfilesperproc
    assert all(e.address == "127.0.0.1" for s in p.server_shards for e in s.listen)
    assert p.connections == 100_000
    preflight(p, facts)  # everything planned is aliased


def test_plan_short_of_aliases_names_the_one_command() -> None:
    facts = mac_facts(recorded("macos-ifconfig-lo0.txt"))
    p = plan(PlanRequest(connections=50_000), facts)
    lim = next(x for x in p.limits if x.resource == "loopback aliases")
    wanted = -(-50_000 // p.budget_per_group)
    assert lim.fix == f"loopfan alias add 127.0.0.2-127.0.0.{wanted + 1}"
    with pytest.raises(HostError, match=re.escape(lim.fix)) as err:
        preflight(p, facts)
    assert "EADDRNOTAVAIL" in str(err.value)
    # Running the suggested command is enough.
    aliased = mac_facts(lo0_with(lim.fix.split()[-1]))
    p2 = plan(PlanRequest(connections=50_000), aliased)
    assert p2.connections == 50_000 and not any(x.resource == "loopback aliases" for x in p2.limits)
    preflight(p2, aliased)


def test_plan_partly_aliased_suggests_only_the_missing_span() -> None:
    facts = mac_facts(lo0_with("127.0.0.2-127.0.0.5"))
    p = plan(PlanRequest(connections=100_000), facts)
    lim = next(x for x in p.limits if x.resource == "loopback aliases")
    assert lim.connections == 4 * p.budget_per_group == p.connections
    assert lim.fix.startswith("loopfan alias add 127.0.0.6-")


def test_plan_on_intel_defaults_hits_kern_maxfiles() -> None:
    facts = mac_facts(lo0_with("127.0.0.2-127.0.0.40"), "sysctl-intel.txt")
    p = plan(PlanRequest(connections=20_000), facts)
    assert p.per_process <= 10_240
    lim = p.first_limit
    assert lim is not None and lim.resource == "kern.maxfiles" and "sudo sysctl -w kern.maxfiles=" in lim.fix


def test_preflight_catches_aliases_removed_after_planning() -> None:
    p = plan(PlanRequest(connections=1_000), mac_facts(lo0_with("127.0.0.2-127.0.0.20")))
    gone = mac_facts(recorded("macos-ifconfig-lo0.txt"))
    with pytest.raises(HostError, match=r"loopfan alias add 127\.0\.0\.\d+"):
        preflight(p, gone)


def test_preflight_is_silent_on_linux() -> None:
    facts = HostFacts()
    preflight(plan(PlanRequest(connections=1_000), facts), facts)


def test_suggestion_skips_existing_aliases_and_127_0_0_1() -> None:
    pool = parse_pool("127.0.0.0/24,!127.0.0.1")
    assert suggest_add_command(pool, {"127.0.0.1"}, 3) == "loopfan alias add 127.0.0.0,127.0.0.2-127.0.0.3"
    assert suggest_add_command(pool, {"127.0.0.0", "127.0.0.2"}, 3) == "loopfan alias add 127.0.0.3"
    assert suggest_add_command(pool, {"127.0.0.0", "127.0.0.2", "127.0.0.3"}, 3) is None


def test_remove_plan_never_touches_unrecorded_aliases() -> None:
    recorded_state = AliasState(parse_pool("127.0.0.2-127.0.0.4"))
    present = {v4("127.0.0.2"), v4("127.0.0.3"), v4("127.0.0.9")}
    p = plan_remove(None, present, recorded_state, platform="macos", daemon_installed=False)
    assert p.change == parse_pool("127.0.0.2-127.0.0.3") and p.skipped == parse_pool("127.0.0.4")
    assert p.state_after.added == AddressPool()
