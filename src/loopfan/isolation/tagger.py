"""A tag: a cgroup whose processes' loopback traffic leaves from one chosen 127.x address.

Rules of this file: `open_tag` is the one way in (a context manager: whatever happens, links are
closed, programs unloaded and the cgroup removed on the way out). `Coverage` is a pure value read
from the programs' counters, and renders the report; nothing here prints. `run_tagged` runs a
command inside a tag with loopfan's signal rules. (`loopfan run --isolate` needs no tag: its
isolated clients are loopfan's own sockets, bound to their addresses by the planner's shards.)

Privileges and kernel features, checked by doing (the honest probe):
- BPF_MAP_CREATE / BPF_PROG_LOAD need CAP_BPF (or CAP_SYS_ADMIN); attaching cgroup programs needs
  CAP_NET_ADMIN too (or CAP_SYS_ADMIN).
- cgroup sock_addr hooks: connect4/6 kernel >= 4.17, UDP sendmsg4/6 >= 4.18, bpf_bind >= 4.17,
  bind4/6 hooks >= 4.17, bpf_get_socket_cookie in sock_addr programs >= 4.19, ctx->sk in sock_addr
  programs >= 5.3, BPF links on cgroups >= 5.7: so Linux >= 5.7 in all.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import shlex
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from loopfan.errors import HostError, UsageError
from loopfan.isolation import bpf, programs
from loopfan.isolation.cgroup import Cgroup, cgroup_name, find_cgroup2_root, remove_stale
from loopfan.isolation.programs import Counter
from loopfan.isolation.registry import TagRecord, process_start_ticks
from loopfan.render import counted

IPV6_POLICIES = ("report", "refuse")


@dataclass(frozen=True, slots=True, kw_only=True)
class TagSpec:
    source: str  # 127.x.y.z
    label: str
    # "report": connections to ::1 go ahead untagged and are counted and reported loudly.
    # "refuse": they fail with EPERM, so clients that try ::1 then 127.0.0.1 ("localhost") land on IPv4.
    ipv6: str = "report"


@dataclass(frozen=True, slots=True)
class Coverage:
    """The counters of one tag (see programs.Counter), and what they mean for the user."""

    counts: tuple[int, ...] = (0,) * len(Counter)
    # With --ipv6 refuse, attempts to reach ::1 failed (EPERM): they are not connections at all.
    ipv6_refused: bool = False

    def __getitem__(self, counter: Counter) -> int:
        return self.counts[counter]

    @classmethod
    def from_bytes(cls, raw: bytes, *, ipv6_refused: bool = False) -> Coverage:
        return cls(struct.unpack(f"<{len(Counter)}Q", raw[: programs.COUNTERS_SIZE_BYTES]), ipv6_refused)

    def _ipv6(self, counter: Counter) -> int:
        return 0 if self.ipv6_refused else self[counter]

    @property
    def connections_tagged(self) -> int:
        return self[Counter.CONNECT_TAGGED] + self[Counter.CONNECT_TAGGED_MAPPED]

    @property
    def connections_untagged(self) -> int:
        """Loopback connections that carry no tag: the exceptions the report must name."""
        return (
            self[Counter.CONNECT_ALREADY_BOUND]
            + self[Counter.CONNECT_BIND_ERROR]
            + self[Counter.CONNECT_TO_ANY]
            + self._ipv6(Counter.CONNECT_IPV6_LOOPBACK)
        )

    @property
    def datagrams_untagged(self) -> int:
        return self[Counter.DGRAM_SOURCE_SET] + self[Counter.DGRAM_TO_ANY] + self._ipv6(Counter.DGRAM_IPV6_LOOPBACK)

    @property
    def complete(self) -> bool:
        return self.connections_untagged == 0 and self.datagrams_untagged == 0

    def summary(self) -> str:
        """One line: 'all 3 connections tagged' or 'N of M ... tagged' plus datagrams."""
        c_all = self.connections_tagged + self.connections_untagged
        parts = []
        if c_all == 0:
            parts.append("no loopback connections seen")
        elif self.connections_untagged == 0:
            parts.append("the 1 connection tagged" if c_all == 1 else f"all {c_all:,} connections tagged")
        else:
            parts.append(f"{self.connections_tagged:,} of {counted(c_all, 'loopback connection')} tagged")
        d_all = self[Counter.DGRAM_TAGGED] + self.datagrams_untagged
        if d_all:
            if self.datagrams_untagged == 0:
                parts.append("the 1 UDP datagram tagged" if d_all == 1 else f"all {d_all:,} UDP datagrams tagged")
            else:
                parts.append(f"{self[Counter.DGRAM_TAGGED]:,} of {counted(d_all, 'UDP datagram')} tagged")
        return ", ".join(parts)

    def exceptions(self, *, ipv6_policy: str = "report") -> list[str]:
        """One line per kind of traffic the tag did not cover, with what to do about it."""
        out = []
        v6 = self[Counter.CONNECT_IPV6_LOOPBACK] + self[Counter.DGRAM_IPV6_LOOPBACK]
        if v6:
            if ipv6_policy == "refuse":
                out.append(
                    f"warning: refused {counted(v6, 'connection/datagram')} to ::1 (IPv6 has one loopback address, "
                    "no range to tag from); point the client at 127.0.0.1 instead of localhost"
                )
            else:
                out.append(
                    f"warning: {counted(v6, 'connection/datagram')} to ::1 went out UNTAGGED (IPv6 has one loopback "
                    "address, no range to tag from); point the client at 127.0.0.1, or pass --ipv6 refuse "
                    "so clients trying ::1 fall back to 127.0.0.1"
                )
        if self[Counter.CONNECT_ALREADY_BOUND]:
            out.append(
                f"note: {counted(self[Counter.CONNECT_ALREADY_BOUND], 'socket')} the program had bound itself "
                "left alone (they carry the address the program chose)"
            )
        if self[Counter.DGRAM_SOURCE_SET]:
            out.append(
                f"note: {counted(self[Counter.DGRAM_SOURCE_SET], 'UDP datagram')} with a source the program chose "
                "(bound socket, a server on 0.0.0.0:PORT, or IP_PKTINFO) left alone"
            )
        to_any = self[Counter.CONNECT_TO_ANY] + self[Counter.DGRAM_TO_ANY]
        if to_any:
            out.append(
                f"note: {counted(to_any, 'connection/datagram')} to 0.0.0.0 left alone, untagged "
                "(Linux sends it to the socket's own source address, which tagging would make the tag address); "
                "use 127.0.0.1 to be tagged"
            )
        if self[Counter.CONNECT_BIND_ERROR]:
            out.append(
                f"warning: {counted(self[Counter.CONNECT_BIND_ERROR], 'connection')} could not be bound to the tag "
                "address (bind error) and went out untagged"
            )
        outside = self[Counter.CONNECT_NOT_LOOPBACK] + self[Counter.DGRAM_NOT_LOOPBACK]
        if outside:
            out.append(
                f"note: {counted(outside, 'connection/datagram')} to non-loopback destinations left alone "
                "(never rewritten)"
            )
        return out


# ---------------------------------------------------------------------------------------------
# Capabilities, for messages that say exactly what is missing

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def effective_capabilities(status_text: str | None = None) -> int:
    """CapEff from /proc/self/status (pure when given the text)."""
    if status_text is None:
        try:
            status_text = Path("/proc/self/status").read_text()
        except OSError:
            return 0
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_privileges(caps: int) -> list[str]:
    """Which of the needed capabilities are absent (empty when CAP_SYS_ADMIN covers everything)."""
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    missing = []
    if not caps & (1 << CAP_BPF):
        missing.append("CAP_BPF")
    if not caps & (1 << CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    return missing


def _explain(exc: bpf.BpfError, step: str) -> HostError:
    missing = missing_privileges(effective_capabilities())
    if exc.errno in (1, 13):  # EPERM, EACCES
        need = " and ".join(missing) if missing else "CAP_BPF + CAP_NET_ADMIN (or CAP_SYS_ADMIN)"
        return HostError(f"{step} was refused: this process lacks {need}; run as root (sudo loopfan tag ...)")
    if exc.errno == 22:  # EINVAL: an unknown command, attach type, or a verifier refusal
        last = exc.log.strip().splitlines()[-1:] if exc.log else []
        detail = f" (verifier: {last[0]})" if last else ""
        return HostError(
            f"{step} failed: this kernel ({os.uname().release}) lacks a needed feature{detail}; loopfan tag "
            "needs Linux >= 5.7 (cgroup sock_addr hooks, bpf_bind, socket cookies, BPF links)"
        )
    if exc.errno == 38:  # ENOSYS
        return HostError(f"{step} failed: the bpf() syscall is not available here (kernel built without BPF)")
    return HostError(f"{step} failed: {exc.strerror}")


# ---------------------------------------------------------------------------------------------
# The tag itself


@dataclass
class Tag:
    spec: TagSpec
    cgroup: Cgroup
    _map_fd: int
    _fds: list[int] = field(default_factory=list)  # programs, links (closing detaches), the guard

    @property
    def name(self) -> str:
        return self.cgroup.path.name

    def enter_in_child(self) -> None:
        """For subprocess preexec_fn: put the forked child into the cgroup before it execs."""
        self.cgroup.add(0)

    def add(self, pid: int) -> None:
        self.cgroup.add(pid)

    def coverage(self) -> Coverage:
        raw = bpf.lookup_array(self._map_fd, 0, programs.COUNTERS_SIZE_BYTES)
        return Coverage.from_bytes(raw, ipv6_refused=self.spec.ipv6 == "refuse")

    def _close_programs(self) -> None:
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        with contextlib.suppress(OSError):
            os.close(self._map_fd)
        self._map_fd = -1


def check_platform() -> None:
    if sys.platform == "darwin":
        raise HostError(
            "macOS has no cgroups or BPF socket hooks, so loopfan cannot tag an unmodified program there; "
            "bind the client to an lo0 alias itself (see below)"
        )
    if not sys.platform.startswith("linux"):
        raise HostError(f"loopfan tag needs Linux (cgroup v2 + BPF); this is {sys.platform}")


@contextlib.contextmanager
def open_tag(spec: TagSpec, *, owner_pid: int | None = None) -> Iterator[Tag]:
    """Load and attach the programs to a fresh cgroup; undo everything on exit, however it exits."""
    check_platform()
    parent = find_cgroup2_root()
    remove_stale(parent)
    owner = owner_pid or os.getpid()
    refuse = spec.ipv6 == "refuse"
    try:
        map_fd = bpf.create_array_map(value_size=programs.COUNTERS_SIZE_BYTES, max_entries=1, name="lf_coverage")
    except bpf.BpfError as exc:
        raise _explain(exc, "creating a BPF map") from None
    fds: list[int] = []
    cgroup: Cgroup | None = None
    held: set[int | signal.Signals] | None = None
    try:
        try:
            bound_fd = bpf.create_lru_hash_map(
                key_size=8, value_size=4, max_entries=programs.BOUND_SOCKETS_MAX, name="lf_bound"
            )
        except bpf.BpfError as exc:
            raise _explain(exc, "creating a BPF map") from None
        fds.append(bound_fd)  # the programs hold their own reference; ours goes with the others
        # All six are sock_addr programs (BPF_PROG_TYPE_CGROUP_SOCK_ADDR); only the hook differs.
        to_load = [
            ("lfc4", programs.connect4(spec.source, map_fd), bpf.BPF_CGROUP_INET4_CONNECT),
            ("lfc6", programs.connect6(spec.source, map_fd, refuse_ipv6_loopback=refuse), bpf.BPF_CGROUP_INET6_CONNECT),
            ("lfs4", programs.sendmsg4(spec.source, map_fd, bound_fd), bpf.BPF_CGROUP_UDP4_SENDMSG),
            ("lfs6", programs.sendmsg6(map_fd, refuse_ipv6_loopback=refuse), bpf.BPF_CGROUP_UDP6_SENDMSG),
            ("lfb4", programs.bind(bound_fd, ipv6=False), bpf.BPF_CGROUP_INET4_BIND),
            ("lfb6", programs.bind(bound_fd, ipv6=True), bpf.BPF_CGROUP_INET6_BIND),
        ]
        loaded = []
        for short, code, attach in to_load:
            # Program names carry the owner pid so leak checks can find exactly ours.
            name = f"{short}_{owner}"
            try:
                fd = bpf.load_program(
                    code, prog_type=bpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, expected_attach_type=attach, name=name
                )
            except bpf.BpfError as exc:
                raise _explain(exc, f"loading the {short} BPF program") from None
            fds.append(fd)
            loaded.append((fd, attach))
        # From the group's creation until its watchdog is up, a signal's default action (SIGTERM
        # before the handlers of run_tagged are in place) would leave the group behind: held.
        held = _hold_signals()
        cgroup = Cgroup.create(parent, cgroup_name(owner, spec.label))
        fds.append(cgroup.guard())  # held by us and the watchdog: remove_stale leaves the group alone
        cg_fd = cgroup.open_fd()
        try:
            for fd, attach in loaded:
                try:
                    fds.append(bpf.link_cgroup(fd, cg_fd, attach))
                except bpf.BpfError as exc:
                    raise _explain(exc, "attaching BPF programs to the cgroup") from None
        finally:
            os.close(cg_fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        os.close(map_fd)
        if cgroup is not None:
            cgroup.remove(attempts=1)
        _release_signals(held)
        raise
    tag = Tag(spec, cgroup, map_fd, fds)
    try:
        watchdog = Watchdog.start(cgroup.path, fds)
    except BaseException:
        tag._close_programs()
        cgroup.remove(attempts=1)
        _release_signals(held)
        raise
    try:
        _release_signals(held)  # a signal that came meanwhile lands here, where the tag is ended
        yield tag
    finally:
        # Links first (detaches), then the cgroup: a cgroup with live processes cannot go, so
        # whoever is left is moved out to the parent first (the caller has said so to the user).
        # The watchdog holds the links too: it is told to stand down first, so they really close.
        # (The guard goes with them: while we live, our pid keeps other loopfans away anyway.)
        watchdog.stand_down()
        tag._close_programs()
        # remove_subtree: nested tags' groups left empty under ours go too. (A nested tag whose
        # loopfan still runs keeps its group, and so ours; a later loopfan's remove_stale sweeps both.)
        tag.cgroup.release(tag.cgroup.pids())
        tag.cgroup.remove_subtree()


_HELD_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def _hold_signals() -> set[int | signal.Signals]:
    """Block the signals that end loopfan; the previous mask, for _release_signals."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)


def _release_signals(previous: set[int | signal.Signals] | None) -> None:
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ---------------------------------------------------------------------------------------------
# The watchdog: what a SIGKILLed loopfan cannot do itself

# Runs with -I -S (no site, no PYTHONPATH, no current directory): loopfan's own package directory
# is appended to its path (after the standard library: a module in site-packages that shadows a
# stdlib name must not replace it here), and it imports the package (whose __init__ imports nothing
# from outside the standard library - keep it so) and cgroup.py (see watchdog.py).
_WATCHDOG_CODE = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from loopfan.isolation.watchdog import main; sys.exit(main(sys.argv[2:]))"
)
_PACKAGE_DIR = str(Path(__file__).resolve().parents[2])  # the directory that holds loopfan/


@dataclass
class Watchdog:
    """A tiny process outside the tag that ends the tag's processes if loopfan dies (even SIGKILL).

    Why: PR_SET_PDEATHSIG reaches the direct child only, and a signal can be ignored; without
    loopfan the BPF links close and whatever the command started would go on running untagged in
    the cgroup. The watchdog notices loopfan's death as EOF on a pipe only loopfan writes to, and
    holds dups of the link fds, so the group stays tagged until it has stopped every process
    (SIGTERM, a short grace, then cgroup.kill) and removed the cgroup (nested tags' first). It also
    holds the group's guard (a flock), so another loopfan's `remove_stale` leaves the group to it
    during the grace. On a normal end loopfan writes "done" first and the watchdog exits at once.
    """

    proc: subprocess.Popen[bytes]
    write_fd: int

    @classmethod
    def start(cls, group: Path, link_fds: Sequence[int], grace_s: float = 2.0) -> Watchdog:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG_CODE, _PACKAGE_DIR, str(read_fd), str(group),
                 str(grace_s)],
                pass_fds=(read_fd, *link_fds),
                # Pipes to us, closed once it is ready: it must not hold loopfan's stdout/stderr
                # open - after kill -9 of loopfan, a reader (`loopfan tag ... 2>&1 | tee`, CI log
                # capture) would otherwise wait for the watchdog's grace to end.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a signal to loopfan's process group must not reach it
            )
        except OSError as exc:
            os.close(write_fd)
            raise HostError(f"could not start the tag's watchdog ({exc.strerror})") from None
        finally:
            os.close(read_fd)
        os.set_inheritable(write_fd, False)  # the tagged command must not keep the pipe open
        watchdog = cls(proc, write_fd)
        watchdog._wait_ready()
        return watchdog

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        """Until the watchdog says it is ready; if it dies or hangs first, the tag is not made (its
        guarantee would be gone) and its last words are the error."""
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        said = proc.stdout.readline() if ready else b""
        if said != b"ready\n":
            os.close(self.write_fd)
            self.write_fd = -1
            proc.kill()
            _, err = proc.communicate()
            why = (err.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise HostError(f"the tag's watchdog did not start ({why}); loopfan's installation may be "
                            "incomplete: reinstall it")
        proc.stdout.close()
        proc.stderr.close()

    def stand_down(self) -> None:
        if self.write_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"done")
        os.close(self.write_fd)
        self.write_fd = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Running a command inside a tag


@dataclass(frozen=True, slots=True)
class TaggedRun:
    exit_status: int  # the command's own (128 + signal when killed)
    pid: int
    coverage: Coverage
    outlived: tuple[int, ...]  # pids left running when the tag ended (moved out, untagged)
    interrupted: bool


def _pdeathsig_setter() -> Callable[[], None]:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) for the child: if loopfan is killed, the command follows."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl

    def set_it() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1

    return set_it


def exit_status_of(returncode: int) -> int:
    """subprocess returncode to a shell-style exit status (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def run_tagged(
    argv: Sequence[str],
    tag: Tag,
    *,
    wait_descendants: bool = True,
    say: Callable[[str], None] = lambda _line: None,
    on_start: Callable[[int], None] = lambda _pid: None,
    grace_s: float = 5.0,
) -> TaggedRun:
    """Run argv in the tag and wait for it (and, by default, for what it left running).

    Signals: SIGTERM/SIGHUP to loopfan are passed to every process of the tag, then SIGKILL after
    `grace_s`. SIGINT from the terminal already reached the command (same process group), so
    loopfan only waits; a SIGINT sent to loopfan alone is passed on. A second interrupt while
    waiting for leftover processes stops the wait: they outlive the tag.
    """
    set_pdeathsig = _pdeathsig_setter()

    def preexec() -> None:
        tag.enter_in_child()
        set_pdeathsig()

    interrupts: list[int] = []
    deadline: list[float] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        interrupts.append(signum)
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        for pid in tag.cgroup.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        if signum != signal.SIGINT and not deadline:
            deadline.append(time.monotonic() + grace_s)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        # preexec_fn runs between fork and exec: the command is inside the cgroup before its first
        # instruction. (Capture threads may exist; preexec only writes a file and calls prctl.)
        try:
            proc = subprocess.Popen(list(argv), preexec_fn=preexec)
        except subprocess.SubprocessError as exc:
            raise HostError(
                f"could not put {argv[0]} into the tag's cgroup ({exc}); is cgroup.procs writable?"
            ) from None
        except OSError as exc:
            raise UsageError(
                f"cannot run {argv[0]}: {exc.strerror}; check that it is an executable program"
            ) from None
        on_start(proc.pid)
        while True:
            try:
                returncode = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    _kill_all(tag, say=say, grace=f"{grace_s:g} s after SIGTERM")
        # Whatever COMMAND started and left behind (daemons) is still tagged while it runs.
        left = tag.cgroup.pids()
        if left and wait_descendants and not deadline:
            seen = len(interrupts)
            say(
                f"waiting for {counted(len(left), 'process')} left running by {Path(argv[0]).name} "
                f"({process_names(left)}); press Ctrl-C to stop waiting - they will outlive the tag"
            )
            while tag.cgroup.pids() and len(interrupts) == seen and not deadline:
                time.sleep(0.05)
        if deadline:
            wait_s = max(0.0, deadline[0] - time.monotonic())
            _kill_all(tag, wait_s=wait_s, say=say, grace=f"{grace_s:g} s after SIGTERM")
        outlived = tuple(tag.cgroup.pids())
        coverage = tag.coverage()
        return TaggedRun(exit_status_of(returncode), proc.pid, coverage, outlived, bool(interrupts))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def process_names(pids: Sequence[int]) -> str:
    """'sleep 123, sleep 124': the processes actually left (their /proc comm), not the command's name."""
    def name(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
        except OSError:
            return "gone"
    return ", ".join(f"{name(pid)} {pid}" for pid in pids)


def _kill_all(
    tag: Tag, wait_s: float = 0.0, say: Callable[[str], None] = lambda _line: None, grace: str = "after the grace"
) -> None:
    """After the grace period: SIGKILL every process of the tag and of tags nested in it."""
    if tag.cgroup.wait_empty(timeout_s=wait_s) and not tag.cgroup.subtree_pids():
        return
    left = tag.cgroup.subtree_pids()
    say(f"{counted(len(left), 'process')} still running {grace}: killed with SIGKILL ({process_names(left)})")
    tag.cgroup.kill_subtree()


def _terminal_sent_it() -> bool:
    """True when loopfan is in the terminal's foreground process group: Ctrl-C hit the command too."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def tag_record(spec: TagSpec, tag: Tag | None, argv: Sequence[str], pid: int) -> TagRecord:
    """The registry's record of a tag; before the tag exists (tag None, pid 0) it reserves the address."""
    return TagRecord(
        address=spec.source,
        label=spec.label,
        command=shlex.join(argv),
        pid=pid,
        loopfan_pid=os.getpid(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        cgroup=str(tag.cgroup.path) if tag is not None else "",
        loopfan_start_ticks=process_start_ticks(os.getpid()),
    )
