"""Shared test fixtures. Keep this small and generic: helpers more than one test file needs."""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import shutil
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

import loopfan.commands.run as run_command
from loopfan import sysctl
from loopfan.errors import HostError
from loopfan.hostfacts import HostFacts, raise_nofile_soft_limit
from loopfan.isolation import cgroup, registry
from loopfan.pools import parse_pool

# CI runs the property tests derandomized: the same examples every run, so a red CI is a real
# change and not a new random draw. Locally they explore (and keep failures in .hypothesis/).
# Neither has hypothesis's 200 ms deadline per example: tests never time anything, and on this
# shared 2-core machine test_schedule_rate_is_exact took 304 ms under load and failed the suite.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("local", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "local")

FIXTURES = Path(__file__).parent / "fixtures"


# --- The suite leaves no state on the machine -----------------------------------------------------
#
# loopfan keeps state in real places: doctor's undo record in /var/lib/loopfan, the tag and
# --isolate registry in /run/loopfan (as root), a user's records under ~/.local/state/loopfan. A
# test that reached one of them (an empty /var/lib/loopfan once appeared after a full run) changes
# the host, and with the registry even meets real tags and other runs. So the whole session, and
# every process it starts (they inherit os.environ), gets private ones - LOOPFAN_STATE_DIR and
# LOOPFAN_RUNTIME_DIR, set before any test module is imported - and at the end a real location
# that did not exist before the session and exists now fails the run, named. Nothing that existed
# before is touched; the private directories are removed. Tag cgroups (loopfan.tag.PID.LABEL) are
# host state too: one new since the start whose loopfan is gone, still there after the watchdogs'
# grace, fails the run the same way (a live owner may be a real tag of someone else's).

_PRIVATE_ENV = ("LOOPFAN_STATE_DIR", "LOOPFAN_RUNTIME_DIR")


def real_state_locations() -> list[Path]:
    """Where loopfan would keep state with this environment, and the places named in its history."""
    home = Path.home()
    return sorted({
        sysctl.SYSTEM_STATE_DIR, sysctl.undo_dir(), sysctl.state_dir(), home / ".local" / "state" / "loopfan",
        Path("/run/loopfan"), registry.registry_dir().parent, Path(tempfile.gettempdir()) / f"loopfan-{os.geteuid()}",
        home / ".loopfan", home / ".cache" / "loopfan",
    })


def tag_cgroups() -> set[Path]:
    """loopfan's tag cgroups at the top of the cgroup2 tree it would use (none without cgroup2)."""
    try:
        return {p for p in cgroup.find_cgroup2_root().iterdir() if cgroup.owner_of(p.name) is not None}
    except (OSError, HostError):
        return set()


def _orphaned_tag_cgroups(before: set[Path]) -> list[Path]:
    def orphans() -> list[Path]:
        return sorted(p for p in tag_cgroups() - before if not cgroup.pid_alive(cgroup.owner_of(p.name) or 0))

    deadline = time.monotonic() + LEAK_GRACE_S  # a killed loopfan's watchdog removes its group by then
    while (found := orphans()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


_state_guard: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    _state_guard["absent"] = [p for p in real_state_locations() if not os.path.lexists(p)]
    _state_guard["cgroups"] = tag_cgroups()
    private = Path(tempfile.mkdtemp(prefix="loopfan-tests-"))
    _state_guard["private"] = private
    os.environ["LOOPFAN_STATE_DIR"] = str(private / "state")
    os.environ["LOOPFAN_RUNTIME_DIR"] = str(private / "run")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    private = _state_guard.pop("private", None)
    if private is not None:
        shutil.rmtree(private, ignore_errors=True)
    created = [p for p in _state_guard.get("absent", []) if os.path.lexists(p)]
    created += _orphaned_tag_cgroups(_state_guard.get("cgroups", set()))
    _state_guard["created"] = created
    if created:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    created = _state_guard.get("created")
    if created:
        terminalreporter.write_sep("=", "the suite left state on this machine", red=True, bold=True)
        for path in created:
            terminalreporter.write_line(f"created {path} (absent when the session started): a test or a process "
                                        "it started wrote real state (or another loopfan on this host did, "
                                        "meanwhile) - give it a private directory "
                                        f"({' / '.join(_PRIVATE_ENV)}, or a fixture), then remove {path}", red=True)

# The development/CI machine as HostFacts: 20,000 fds not raisable, 24 GiB, the default sysctls.
DEV_MACHINE = HostFacts(
    platform="linux",
    kernel="6.18",
    cpu_count=2,
    port_range=(32768, 60999),
    bind_no_port=True,
    nofile_soft=20_000,
    nofile_hard=20_000,
    nofile_hard_raisable=False,
    file_max=2_466_170,
    files_open=400,
    nr_open=1_048_576,
    mem_total_bytes=24 * 2**30,
    mem_available_bytes=23 * 2**30,
    somaxconn=4096,
    tcp_max_syn_backlog=2048,
    tcp_tw_reuse=2,
    tcp_max_tw_buckets=131_072,
    tcp_mem_pages=(287_898, 383_867, 575_796),
    is_root=True,
)

# A Mac with two lo0 aliases (127.0.0.2-3), Apple Silicon defaults.
MAC = HostFacts(
    platform="macos",
    kernel="23.4.0",
    cpu_count=8,
    port_range=(49152, 65535),
    bind_no_port=False,
    nofile_soft=256,
    nofile_hard=2**63 - 1,
    file_max=245_760,
    files_open=6_000,
    maxfiles=245_760,
    maxfilesperproc=122_880,
    mem_total_bytes=16 * 2**30,
    mem_available_bytes=16 * 2**30,
    somaxconn=128,
    loopback_route_all=False,
    loopback_addresses=frozenset({"127.0.0.1", "127.0.0.2", "127.0.0.3"}),
)


@pytest.fixture
def fixture_text() -> Callable[[str], str]:
    """fixture_text("linux/meminfo.txt") -> the recorded output under tests/fixtures/."""
    return lambda name: (FIXTURES / name).read_text()


@pytest.fixture
def dev_facts() -> Callable[..., HostFacts]:
    """dev_facts(**changes): the dev machine's HostFacts with some fields changed."""

    def make(**changes: Any) -> HostFacts:
        return replace(DEV_MACHINE, **changes)

    return make


@pytest.fixture
def mac_facts() -> Callable[..., HostFacts]:
    """mac_facts(**changes): a Mac's HostFacts with some fields changed."""

    def make(**changes: Any) -> HostFacts:
        return replace(MAC, **changes)

    return make


@pytest.fixture(autouse=True)
def private_registry(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's tags and `run --isolate` reservations go to a registry of its own (the
    commands it starts inherit the variable), never the host's /run/loopfan: a test's tag is not
    listed by the user's `loopfan tag --list`, and the user's tags do not change the test."""
    from loopfan.isolation.registry import RUNTIME_DIR_ENV

    path = tmp_path_factory.mktemp("loopfan-run")
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(path))
    return path


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private LOOPFAN_STATE_DIR, so no test reads or writes the real state."""
    path = tmp_path / "state"
    monkeypatch.setenv("LOOPFAN_STATE_DIR", str(path))
    yield path


# --- Leak checks and loopback helpers for tests that start processes and sockets -----------------
#
# `no_leaks` fails a test that leaves an open fd, a child process, or any process carrying the
# test's marker in its environment (forked workers inherit it, so an orphan re-parented to init is
# still found). Use it with `pytestmark = pytest.mark.usefixtures("no_leaks")`.

LEAK_MARKER_ENV = "LOOPFAN_TEST_LEAK_MARKER"
LEAK_GRACE_S = 5.0  # workers are asked, then terminated: give them this long to be gone


def _open_fds() -> dict[int, str]:
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, closed again
    return out


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _carries_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


def child_pids(parent: int, *, zombies: bool = False) -> list[int]:
    """Children of `parent`, from /proc: live ones only unless `zombies`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None and stat[0] == parent and (zombies or stat[1] != "Z"):
                out.append(int(name))
    return out


def _leaked_processes(marker: bytes, before: set[int]) -> list[str]:
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (me, *before):
            continue
        pid = int(name)
        stat = _proc_stat(pid)
        if stat is None:
            continue
        cmd = _cmdline(pid)
        if stat[0] == me:
            found.append(f"child pid {pid} ({stat[1]}): {cmd}")
        elif _carries_marker(pid, marker):
            found.append(f"orphan pid {pid} (parent {stat[0]}): {cmd}")
    return found


@pytest.fixture
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if it leaves an fd, a child process or a loopfan process of its own behind."""
    marker_value = uuid.uuid4().hex
    monkeypatch.setenv(LEAK_MARKER_ENV, marker_value)
    marker = f"{LEAK_MARKER_ENV}={marker_value}".encode()
    fds_before = _open_fds()
    children_before = set(child_pids(os.getpid(), zombies=True))
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        multiprocessing.active_children()  # reap what multiprocessing started and forgot
        procs = _leaked_processes(marker, children_before)
        fds = {fd: target for fd, target in _open_fds().items() if fds_before.get(fd) != target}
        if (not procs and not fds) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    problems = procs + [f"fd {fd} -> {target}" for fd, target in sorted(fds.items())]
    assert not problems, "the test left these behind: " + "; ".join(problems)


def free_port(*addresses: str) -> int:
    """A TCP port that is free on every address given (bind to port 0 on the first, check the rest)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


@pytest.fixture
def loopback_block() -> Callable[[], str]:
    """block() -> '127.a.b.' : a random /24 of 127/8 for one test's addresses (append 1..254).

    Tests that listen or connect take their addresses from fresh blocks, so parallel and repeated
    runs (and TIME_WAIT from the last run) never meet; 127.0.x and 127.100.x (loopfan's default
    pools) are never chosen.
    """
    taken: set[str] = set()

    def block() -> str:
        while True:
            prefix = f"127.{random.randint(150, 250)}.{random.randint(0, 255)}."
            if prefix not in taken:
                taken.add(prefix)
                return prefix

    return block


_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "0A": "LISTEN"}


def kernel_tcp_sockets() -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
    """Every IPv4 TCP socket on the host as (state, local, remote), from /proc/net/tcp."""
    out = []
    with open("/proc/net/tcp") as fh:
        next(fh, None)
        for line in fh:
            parts = line.split()
            state = _TCP_STATES.get(parts[3], parts[3])
            out.append((state, _hex_endpoint(parts[1]), _hex_endpoint(parts[2])))
    return out


def _hex_endpoint(text: str) -> tuple[str, int]:
    addr_hex, port_hex = text.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(addr_hex, 16))), int(port_hex, 16)


@pytest.fixture(autouse=True, scope="session")
def _fd_limit() -> None:
    """Runs and servers started in-process get this process's limit: raise it once, as the CLI does."""
    raise_nofile_soft_limit()


@pytest.fixture
def builtin_listen(monkeypatch: pytest.MonkeyPatch, loopback_block: Callable[[], str]) -> tuple[str, int]:
    """Move the built-in server of in-process runs to a block and port of this test's own."""
    prefix = loopback_block()
    port = free_port(*(f"{prefix}{i}" for i in range(1, 9)))
    monkeypatch.setattr(
        run_command, "PlanRequest",
        functools.partial(run_command.PlanRequest, listen_pool=parse_pool(f"{prefix}1-{prefix}40"), listen_port=port),
    )
    return prefix, port


@dataclass
class FakeWorker:
    """A worker as the time series and live views read it (role, index, its last stats): for tests
    of the sampler without processes."""
    role: str
    index: int
    stats: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    finished: bool = False
