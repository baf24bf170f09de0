"""cgroup v2 directories for tagged commands: find the mount, create, fill, empty, remove.

Rules of this file: the parsing of /proc/self/mountinfo and /proc/self/cgroup is pure and tested on
recorded text; the rest is thin I/O. loopfan's cgroups are named `loopfan.tag.<owner pid>.<label>`
so that leftovers of a loopfan killed with SIGKILL can be recognised and removed later (see
`remove_stale`); nothing else on the machine is ever touched.

Kernel facts:
- The cgroup2 hierarchy may be mounted anywhere: /sys/fs/cgroup on unified hosts,
  /sys/fs/cgroup/unified on hybrid (systemd) hosts, elsewhere in containers. mountinfo's
  filesystem type field ("cgroup2", after the " - " separator) is the only reliable way to find it.
- A new cgroup is created next to loopfan's own (as its child): that is the part of the tree the
  caller is allowed to write (systemd delegation), and the "no internal processes" rule does not
  bite because loopfan's own cgroup has no controllers enabled for its children.
- A process enters a cgroup by writing its pid into `cgroup.procs`; children inherit the cgroup
  at fork, which is how "the command and everything it starts" is covered.
- `rmdir` succeeds only once no process is left in the cgroup (`cgroup.procs` empty) and it has
  no child cgroup (a `loopfan tag` run under a tag nests its cgroup in ours): removal is depth-first.
- `cgroup.kill` (>= 5.14) kills every process of the cgroup *and its descendants* at once.
- flock() works on a cgroup directory fd, and an open fd does not stop rmdir. A tag's cgroup is
  flocked by its loopfan and, through an inherited fd, by its watchdog: "someone still looks
  after it" is one non-blocking flock away, with no pid that could be reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from loopfan.errors import HostError

CGROUP_PREFIX = "loopfan.tag."


def parse_cgroup2_mount(mountinfo: str) -> str | None:
    """The mount point of the cgroup2 filesystem from /proc/self/mountinfo text, or None."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            # Mount points escape spaces etc. as octal (\040).
            return fields[4].encode().decode("unicode_escape")
    return None


def parse_own_cgroup(proc_cgroup: str) -> str:
    """This process's cgroup2 path ("0::/some/path") from /proc/self/cgroup text; "/" if absent."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return "/"


def cgroup_name(owner_pid: int, label: str) -> str:
    return f"{CGROUP_PREFIX}{owner_pid}.{label}"


def owner_of(name: str) -> int | None:
    """The loopfan pid that created a tag cgroup, from its name; None for other names."""
    if not name.startswith(CGROUP_PREFIX):
        return None
    pid_text = name[len(CGROUP_PREFIX) :].split(".", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def find_cgroup2_root() -> Path:
    """The cgroup2 directory that holds loopfan's own cgroup; HostError when there is none."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = parse_own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError as exc:
        raise HostError(f"cannot read /proc/self/mountinfo ({exc.strerror}); loopfan tag needs Linux /proc") from None
    mount = parse_cgroup2_mount(mountinfo)
    if mount is None:
        raise HostError(
            "no cgroup2 filesystem is mounted; mount one: mount -t cgroup2 none /sys/fs/cgroup/unified"
        )
    base = Path(mount) / own.lstrip("/")
    # In a container whose view of the hierarchy is cut, our own path may not exist: use the mount.
    return base if base.is_dir() else Path(mount)


@dataclass
class Cgroup:
    """One cgroup directory owned by loopfan."""

    path: Path

    @classmethod
    def create(cls, parent: Path, name: str) -> Cgroup:
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise HostError(
                f"cannot create cgroup {path} ({exc.strerror}); run as root or in a cgroup2 tree delegated "
                "to you (systemd-run --user --scope -p Delegate=yes ...)"
            ) from None
        if not os.access(path / "cgroup.procs", os.W_OK):
            with contextlib.suppress(OSError):
                path.rmdir()
            raise HostError(f"{path}/cgroup.procs is not writable; run as root or in a delegated cgroup2 tree")
        return cls(path)

    def open_fd(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)

    def add(self, pid: int) -> None:
        """Move pid (0 = the calling process) into this cgroup."""
        with open(self.path / "cgroup.procs", "w") as fh:
            fh.write(f"{pid}\n")

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def wait_empty(self, timeout_s: float | None = None, poll_s: float = 0.05) -> bool:
        """Wait until no process is left; True if it emptied, False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.pids():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def guard(self) -> int:
        """An fd on the directory, flocked: while it (or a dup a watchdog inherited) is open, the
        group is looked after and `remove_stale` leaves it alone. The caller closes it."""
        fd = self.open_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def guarded(self) -> bool:
        """Is a live loopfan or watchdog holding this group's guard?"""
        try:
            fd = self.open_fd()
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the lock we may just have taken
        return False

    def subtree(self) -> list[Path]:
        """This cgroup and every cgroup under it (nested tags), deepest first: the order rmdir needs."""
        return [Path(root) for root, _dirs, _files in os.walk(self.path, topdown=False)]

    def subtree_pids(self) -> list[int]:
        return [pid for path in self.subtree() for pid in Cgroup(path).pids()]

    def kill_subtree(self, timeout_s: float = 2.0) -> bool:
        """SIGKILL every process in this cgroup and below; True once they are gone."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:  # kernel < 5.14: one by one (a fork in between is caught by the next round)
            deadline = time.monotonic() + timeout_s
            while (pids := self.subtree_pids()) and time.monotonic() < deadline:
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
        deadline = time.monotonic() + timeout_s
        while self.subtree_pids():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def release(self, pids: list[int]) -> None:
        """Move processes out to the parent cgroup (they outlive the tag, untagged from now on)."""
        for pid in pids:
            with contextlib.suppress(OSError), open(self.path.parent / "cgroup.procs", "w") as fh:
                fh.write(f"{pid}\n")

    def remove(self, *, attempts: int = 40) -> bool:
        """rmdir, retrying briefly: a process that just exited leaves the cgroup a moment later."""
        for _ in range(attempts):
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return False
                time.sleep(0.025)
        return False

    def remove_subtree(self, *, attempts: int = 40) -> bool:
        """rmdir this cgroup and the (empty) cgroups under it, deepest first."""
        return all([Cgroup(path).remove(attempts=attempts) for path in self.subtree()])


def remove_stale(parent: Path) -> list[Path]:
    """Remove tag cgroups nobody looks after any more: their loopfan is gone and so is its watchdog.

    A group whose watchdog is alive is left to it (it is in its grace period, ending the tag's
    processes). With the watchdog gone too (killed as well), the programs are detached and what
    still runs there would run *untagged*: the tag promised "tagged, or ended", so those processes
    are killed, not freed. Nested tags' cgroups under it go first (rmdir needs that order).
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        owner = owner_of(entry.name)
        if owner is None or pid_alive(owner):
            continue
        group = Cgroup(entry)
        if group.guarded():
            continue
        group.kill_subtree()
        if group.remove_subtree(attempts=4):
            removed.append(entry)
    return removed

def tag_cgroups(parent: Path) -> list[Path]:
    """Every loopfan tag cgroup under parent (live or stale)."""
    try:
        return sorted(p for p in parent.iterdir() if owner_of(p.name) is not None)
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    """Is a process with this pid running (ours to signal or not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
