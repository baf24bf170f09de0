"""Loopback aliases on macOS and FreeBSD: which commands to run, what loopfan added, the boot daemon.

Rules of this file: everything above the "I/O" line is pure (lo0 text, pools and the recorded state
in; commands, plist bytes and a new state out) so every macOS/FreeBSD path is tested on Linux
against recorded outputs. Below that line, the only I/O goes through an injected `Runner` (tests
replace it; nothing here ever calls ifconfig or sudo by itself) and the state file under
`loopfan.sysctl.state_dir()`.

Why this exists: Linux routes all of 127.0.0.0/8 to `lo` (`local 127.0.0.0/8 dev lo`), so every
127.x.y.z is bindable with no setup. macOS and FreeBSD put only 127.0.0.1 on lo0; binding 127.0.0.2
fails with EADDRNOTAVAIL (errno 49) until `ifconfig lo0 alias 127.0.0.2 up`, one address per
command, and aliases are gone after a reboot.

Design:
- One privileged batch: all ifconfig commands go into `sudo /bin/sh -c SCRIPT`, one prompt for the
  whole pool. Pools of thousands are cut into scripts of at most BATCH_SCRIPT_BYTES, far below
  ARG_MAX (macOS `kern.argmax` is 1 MiB, counting the environment too); sudo's credential cache
  makes the later chunks prompt-free.
- Idempotent: addresses already on lo0 are skipped when adding, absent ones when removing.
- The state file records only aliases loopfan itself added (seen absent before, present after), so
  `remove --all-added` never touches an alias somebody made by hand. 127.0.0.1 is never touched.
- `--persist` writes a LaunchDaemon (RunAtLoad) whose script re-adds the recorded aliases at boot;
  its script loops over ranges, so its size does not grow with the pool.
"""

from __future__ import annotations

import ipaddress
import json
import os
import plistlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loopfan.errors import HostError, PoolSyntaxError, UsageError
from loopfan.hostfacts import parse_ifconfig_inet, parse_route_table_local
from loopfan.pools import (
    LOCALHOST_V4,
    AddressPool,
    ip_to_str,
    is_loopback_v4,
    parse_pool,
)

if TYPE_CHECKING:
    from loopfan.hostfacts import HostFacts
    from loopfan.planner import Plan

# Platforms `--platform` accepts; "auto" resolves to one of these (or "windows"/"other").
ALIAS_PLATFORMS = ("linux", "macos", "freebsd")
# Platforms whose loopback needs aliases.
BSD_LIKE = ("macos", "freebsd")

IFCONFIG = "/sbin/ifconfig"
INTERFACE = "lo0"
SHELL = "/bin/sh"

LAUNCHD_LABEL = "io.loopfan.lo0-aliases"
LAUNCHDAEMON_PATH = f"/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist"

# Why 64 KiB: one /sbin/ifconfig line is ~40 bytes, so a chunk holds ~1,600 addresses; ARG_MAX is
# 1 MiB on current macOS (256 KiB on old releases and some BSD configurations) and also has to hold
# the environment sudo passes on. Fewer, larger chunks would gain nothing: the time goes into
# forking one ifconfig per address, not into sh or sudo.
BATCH_SCRIPT_BYTES = 64 * 1024

# Why a cap: every alias is kernel state and a line of every `ifconfig` output, and each takes one
# ifconfig process to add (a few ms). 65,536 aliases (a /16) hold ~537 million connections at
# macOS's 8,192-port budget per source, far past what memory allows.
MAX_ALIASES = 65_536

STATE_FILE_NAME = "lo0-aliases.json"
STATE_VERSION = 1

LINUX_ROUTE_FIX = "sudo ip route add local 127.0.0.0/8 dev lo table local"


# ---------------------------------------------------------------------------------------------
# Pools of alias addresses (ints, like pools.py)


def pool_of(ips: Iterable[int]) -> AddressPool:
    """A pool from loose addresses, in linear time (pools.py's set operations are per range pair,
    which would be quadratic for thousands of scattered aliases)."""
    ranges: list[tuple[int, int]] = []
    for ip in sorted(set(ips)):
        if ranges and ranges[-1][1] == ip - 1:
            ranges[-1] = (ranges[-1][0], ip)
        else:
            ranges.append((ip, ip))
    return AddressPool(tuple(ranges))


def ints_of(pool: AddressPool) -> set[int]:
    return set(pool.ascending())


def lo0_aliases(addresses: Iterable[str]) -> set[int]:
    """The 127/8 aliases among interface addresses, 127.0.0.1 (never an alias of ours) left out."""
    out: set[int] = set()
    for text in addresses:
        try:
            ip = int(ipaddress.IPv4Address(text))
        except ValueError:
            continue
        if is_loopback_v4(ip) and ip != LOCALHOST_V4:
            out.add(ip)
    return out


LOOPBACK_BROADCAST_V4 = 0x7FFFFFFF  # 127.255.255.255


def parse_alias_pool(text: str) -> AddressPool:
    """A pool for `alias add/remove`: 127/8 only, never 127.0.0.1, at most MAX_ALIASES addresses."""
    pool = parse_pool(text, allow_non_loopback=True)  # our own message below names the alias rules
    if pool.ipv6_loopback:
        raise UsageError(
            f"{text!r}: ::1 is always on lo0 and takes no aliases; give 127.x.y.z addresses, e.g. 127.0.0.2-127.0.0.20"
        )
    for lo, hi in pool.ranges:
        if not (is_loopback_v4(lo) and is_loopback_v4(hi)):
            bad = ip_to_str(lo if not is_loopback_v4(lo) else hi)
            raise UsageError(
                f"{bad} in {text!r} is not a loopback address: lo0 aliases must be in 127.0.0.0/8, "
                "e.g. 127.0.0.2-127.0.0.20"
            )
    if pool.ipv4_count > MAX_ALIASES:
        raise UsageError(
            f"{text!r} is {pool.ipv4_count:,} addresses; loopfan adds at most {MAX_ALIASES:,} aliases "
            "(a /16), each one kernel state and an ifconfig call; give a smaller pool, e.g. 127.0.0.0/20"
        )
    if LOCALHOST_V4 in pool:
        # Suggesting '127.0.0.1,!127.0.0.1' for 127.0.0.1 alone would only give an empty pool.
        alone = pool.ipv4_count == 1
        fix = "give other addresses, e.g. 127.0.0.2-127.0.0.20" if alone else f"leave it out, e.g. '{text},!127.0.0.1'"
        raise UsageError(f"{text!r} includes 127.0.0.1, lo0's own address, which loopfan never touches; {fix}")
    if LOOPBACK_BROADCAST_V4 in pool:
        raise UsageError(
            f"{text!r} includes 127.255.255.255, the broadcast address of 127.0.0.0/8, which cannot be a "
            "source address; stop at 127.255.255.254"
        )
    return pool


# ---------------------------------------------------------------------------------------------
# Commands


def add_line(ip: int, platform: str) -> str:
    """The shell command that adds one alias.

    macOS takes the classful /8 netmask by default, as every guide and Apple's own ifconfig do.
    FreeBSD refuses a second address of the same /8 subnet on one interface ("File exists"), so
    aliases there are /32, as in the FreeBSD Handbook's `ifconfig_lo0_alias0="inet ... /32"`.
    """
    if platform == "freebsd":
        return f"{IFCONFIG} {INTERFACE} inet {ip_to_str(ip)}/32 alias"
    return f"{IFCONFIG} {INTERFACE} alias {ip_to_str(ip)} up"


def remove_line(ip: int, platform: str) -> str:
    if platform == "freebsd":
        return f"{IFCONFIG} {INTERFACE} inet {ip_to_str(ip)} -alias"
    return f"{IFCONFIG} {INTERFACE} -alias {ip_to_str(ip)}"


def batches(lines: Sequence[str], *, use_sudo: bool, max_bytes: int | None = None) -> list[list[str]]:
    """Cut shell lines into `[sudo] /bin/sh -c SCRIPT` argvs whose script stays under max_bytes.

    A line never fails the batch: sh runs the next one anyway, and the caller checks the result by
    reading lo0 again (the only reliable account of what happened).
    """
    limit = BATCH_SCRIPT_BYTES if max_bytes is None else max_bytes
    prefix = ["sudo", SHELL, "-c"] if use_sudo else [SHELL, "-c"]
    out: list[list[str]] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > limit:
            out.append([*prefix, "\n".join(chunk)])
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        out.append([*prefix, "\n".join(chunk)])
    return out


def boot_script(added: AddressPool, platform: str = "macos", ifconfig: str = IFCONFIG) -> str:
    """A /bin/sh script that adds the aliases of `added`, one loop per range (size independent of
    the count). Tests run it with `ifconfig="echo"` to check the addresses it produces."""
    parts: list[str] = []
    verb = "inet {a}/32 alias" if platform == "freebsd" else "alias {a} up"
    for lo, hi in added.ranges:
        if hi - lo < 2:
            parts.extend(f"{ifconfig} {INTERFACE} " + verb.format(a=ip_to_str(ip)) for ip in range(lo, hi + 1))
            continue
        # POSIX sh arithmetic: the address as an int, cut into its four octets.
        dotted = "$(((i>>24)&255)).$(((i>>16)&255)).$(((i>>8)&255)).$((i&255))"
        parts.append(
            f"i={lo}; while [ $i -le {hi} ]; do {ifconfig} {INTERFACE} " + verb.format(a=dotted) + "; i=$((i+1)); done"
        )
    return "\n".join(parts)


def launchdaemon_plist(added: AddressPool) -> bytes:
    """The LaunchDaemon that re-adds `added` on lo0 at boot (RunAtLoad, runs once, as root)."""
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": [SHELL, "-c", boot_script(added)],
            "RunAtLoad": True,
        }
    )


def install_daemon_lines(staged: str) -> list[str]:
    # launchd ignores a plist that is not root-owned and not writable by others only.
    return [f"/usr/bin/install -m 644 -o root -g wheel {shlex.quote(staged)} {LAUNCHDAEMON_PATH}"]


def remove_daemon_lines() -> list[str]:
    # bootout fails harmlessly when the daemon was never loaded (it loads at the next boot).
    return [
        f"/bin/launchctl bootout system/{LAUNCHD_LABEL} 2>/dev/null",
        f"/bin/rm -f {LAUNCHDAEMON_PATH}",
    ]


# ---------------------------------------------------------------------------------------------
# What loopfan added (the state file's content)


@dataclass(frozen=True, slots=True)
class AliasState:
    """Aliases loopfan added and did not remove yet, and whether it installed the boot daemon."""

    added: AddressPool = field(default_factory=AddressPool)
    launchdaemon: str | None = None

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "version": STATE_VERSION,
                    "interface": INTERFACE,
                    # The compact pool form (127.0.0.2-127.0.0.20): readable, and parse_pool reads it back.
                    "added": self.added.describe() if self.added.ranges else "",
                    "count": self.added.ipv4_count,
                    "launchdaemon": self.launchdaemon,
                },
                indent=1,
            )
            + "\n"
        )

    @staticmethod
    def from_json(text: str, where: str) -> AliasState:
        try:
            data = json.loads(text)
            added_text = data.get("added") or ""
            added = parse_pool(added_text) if added_text else AddressPool()
            daemon = data.get("launchdaemon")
        except (ValueError, AttributeError, PoolSyntaxError) as exc:
            raise HostError(
                f"the alias record {where} is damaged ({exc}); move it away to start a new record"
            ) from None
        return AliasState(added, daemon if isinstance(daemon, str) else None)


# ---------------------------------------------------------------------------------------------
# Planning a change


@dataclass(frozen=True, slots=True)
class AliasPlan:
    """One `alias add` or `alias remove`: the addresses to change and to skip, the daemon step, and
    the record if everything succeeds."""

    platform: str
    action: str  # "add" or "remove"
    change: AddressPool
    skipped: AddressPool
    daemon: str | None  # "install", "remove" or None
    before: AliasState = field(default_factory=AliasState)
    state_after: AliasState = field(default_factory=AliasState)  # if every command succeeds

    def lines(self, staged_plist: str) -> list[str]:
        make = add_line if self.action == "add" else remove_line
        out = [make(ip, self.platform) for ip in self.change.ascending()]
        if self.daemon == "install":
            out += install_daemon_lines(staged_plist)
        elif self.daemon == "remove":
            out += remove_daemon_lines()
        return out

    @property
    def nothing_to_do(self) -> bool:
        return not self.change.ranges and self.daemon is None


def plan_add(
    pool: AddressPool,
    present: set[int],
    state: AliasState,
    *,
    platform: str,
    persist: bool,
    daemon_installed: bool,
) -> AliasPlan:
    """Add the pool's addresses lo0 lacks. The daemon is (re)written with --persist, and whenever
    one is installed already, so the boot list never lags behind the record."""
    wanted = ints_of(pool)
    change = wanted - present
    added_after = pool_of(ints_of(state.added) | change)
    daemon: str | None = None
    if platform == "macos" and (persist or daemon_installed) and added_after.ranges and (change or persist):
        daemon = "install"
    return AliasPlan(
        platform,
        "add",
        pool_of(change),
        pool_of(wanted & present),
        daemon,
        state,
        AliasState(added_after, LAUNCHDAEMON_PATH if daemon or daemon_installed else None),
    )


def plan_remove(
    pool: AddressPool | None,
    present: set[int],
    state: AliasState,
    *,
    platform: str,
    daemon_installed: bool,
) -> AliasPlan:
    """Remove the pool's aliases, or (pool None) exactly the ones loopfan recorded as added."""
    recorded = ints_of(state.added)
    wanted = recorded if pool is None else ints_of(pool)
    change = wanted & present
    left = recorded - wanted
    daemon: str | None = None
    if platform == "macos" and daemon_installed:
        if not left:
            daemon = "remove"
        elif left != recorded:
            daemon = "install"  # the boot list must not bring back what was just removed
    return AliasPlan(
        platform,
        "remove",
        pool_of(change),
        pool_of(wanted - present),
        daemon,
        state,
        AliasState(pool_of(left), LAUNCHDAEMON_PATH if daemon_installed and daemon != "remove" else None),
    )


# ---------------------------------------------------------------------------------------------
# Planner and engine support (pure)


def suggest_add_command(sources: AddressPool, present: Iterable[str], wanted: int) -> str | None:
    """The one `loopfan alias add POOL` that makes `wanted` addresses of `sources` usable, or None.

    Why a contiguous span: the add skips aliases already there, so the shortest command names the
    span from the first missing address of the pool to the last one needed.
    """
    have = lo0_aliases(present)
    in_pool = sum(1 for ip in have if ip in sources)
    need = min(wanted, MAX_ALIASES) - in_pool
    if need <= 0:
        return None
    first = last = None
    for ip in sources.ascending():
        if ip == LOCALHOST_V4 or ip in have:
            continue
        first = ip if first is None else first
        last = ip
        need -= 1
        if need == 0:
            break
    if first is None or last is None:
        return None
    span = sources.intersection(AddressPool(((first, last),))).without(AddressPool(((LOCALHOST_V4, LOCALHOST_V4),)))
    span = AddressPool(span.ranges)  # ::1 takes no alias
    return f"loopfan alias add {span.describe()}"


def preflight(plan: Plan, facts: HostFacts) -> None:
    """Fail before any socket opens when planned addresses are not usable on this host.

    On macOS/BSD an address bound without an alias fails with EADDRNOTAVAIL, once per connection;
    this turns that into one line naming the one command that fixes it. A no-op on Linux with its
    local 127/8 route.
    """
    if facts.loopback_route_all:
        return
    needed = lo0_aliases(plan.sources)
    for shard in plan.server_shards:
        needed |= lo0_aliases(e.address for e in shard.listen)
    missing = needed - lo0_aliases(facts.loopback_addresses)
    fix_route = facts.platform == "linux"
    if missing:
        fix = LINUX_ROUTE_FIX if fix_route else f"loopfan alias add {pool_of(missing).describe()}"
        where = "the loopback interface" if fix_route else "lo0"
        raise HostError(
            f"{len(missing):,} planned source address(es) are not configured on {where} (binding them "
            f"fails with EADDRNOTAVAIL); run: {fix}"
        )
    short = next(
        (
            lim
            for lim in plan.limits
            if lim.resource in ("loopback aliases", "loopback route") and lim.connections < plan.request.connections
        ),
        None,
    )
    if short is not None:
        if not plan.sources:
            what = "no address of the source pool is configured on lo0 (binding one fails with EADDRNOTAVAIL)"
        else:
            what = (
                f"only {len(plan.sources):,} addresses of the source pool are configured on lo0, enough for "
                f"{short.connections:,} of {plan.request.connections:,} connections"
            )
        if short.resource == "loopback route":
            what = "the local 127.0.0.0/8 route is missing, so only addresses on lo can be bound"
        raise HostError(f"{what}; run: {short.fix}")


# ---------------------------------------------------------------------------------------------
# Platforms


def host_platform() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("freebsd"):
        return "freebsd"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return "other"


def nothing_needed_text(platform: str, route: bool | None) -> str:
    """Why Linux and Windows need no aliases, and (Linux) what the route check found."""
    if platform == "windows":
        return (
            "Windows: nothing to do. The loopback interface owns all of 127.0.0.0/8, so every "
            "127.x.y.z address is already local and bindable; loopfan changed nothing."
        )
    head = (
        "Linux: nothing to do. The routing table `local` routes all of 127.0.0.0/8 to lo, so every "
        "127.x.y.z address is already local and bindable (`ip addr` shows only 127.0.0.1; that is "
        "expected). loopfan changed nothing."
    )
    if route is None:
        return head + "\nCould not check the route (no `ip` command); Linux installs it at every boot."
    if route:
        return head + "\nChecked: `local 127.0.0.0/8 dev lo` is in the local routing table."
    return (
        "Linux: aliases are not the fix here. The `local 127.0.0.0/8 dev lo` route is MISSING from the "
        "local routing table, so 127.x addresses other than those on lo are not local. Restore it with:\n"
        f"  {LINUX_ROUTE_FIX}"
    )


# =============================================================================================
# I/O: everything below runs commands through an injected Runner or touches the state file.


@dataclass(frozen=True, slots=True)
class Completed:
    """What a command did: exit status and its two streams."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[list[str]], Completed]


def run_subprocess(argv: list[str]) -> Completed:
    """The real runner. sudo prompts on /dev/tty, so capturing the streams does not hide it."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        return Completed(127, "", f"{argv[0]}: {exc.strerror}")
    return Completed(done.returncode, done.stdout, done.stderr)


def state_path() -> Path:
    from loopfan.sysctl import state_dir  # sysctl imports doctor -> planner -> this module

    return state_dir() / STATE_FILE_NAME


def staged_plist_path() -> Path:
    """Where loopfan writes the plist (user-owned) before sudo installs a copy as root."""
    return state_path().with_name(f"{LAUNCHD_LABEL}.plist")


def load_state(path: Path | None = None) -> AliasState:
    path = path or state_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AliasState()
    except OSError as exc:
        raise HostError(f"cannot read the alias record {path}: {exc.strerror}") from None
    return AliasState.from_json(text, str(path))


def save_state(state: AliasState, path: Path | None = None) -> None:
    path = path or state_path()
    try:
        if not state.added.ranges and state.launchdaemon is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(path)  # atomic: an interrupted write never leaves half a record
    except OSError as exc:
        raise HostError(f"cannot write the alias record {path}: {exc.strerror}; check {path.parent}") from None


def read_lo0(runner: Runner) -> set[int]:
    done = runner([IFCONFIG, INTERFACE])
    if done.returncode != 0 or "inet " not in done.stdout:
        why = _first_line(done.stderr) or f"exit status {done.returncode}"
        raise HostError(f"cannot read lo0's addresses with `{IFCONFIG} {INTERFACE}`: {why}")
    return lo0_aliases(parse_ifconfig_inet(done.stdout))


def check_linux_route(runner: Runner) -> bool | None:
    done = runner(["ip", "route", "show", "table", "local"])
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return parse_route_table_local(done.stdout)


@dataclass(frozen=True, slots=True)
class Applied:
    """What an applied AliasPlan did, as read back from lo0."""

    done: AddressPool  # added (add) or removed (remove)
    failed: AddressPool
    state: AliasState
    batches: int


def apply(plan: AliasPlan, runner: Runner, *, use_sudo: bool) -> Applied:
    """Run the plan's batches, read lo0 back, and record what loopfan added or removed.

    The record is written even when some commands failed, so it always matches what loopfan did.
    Raises HostError for a sudo refusal (nothing changed) and for addresses that did not change.
    """
    staged = staged_plist_path()
    if plan.daemon == "install":
        try:
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(launchdaemon_plist(plan.state_after.added))
        except OSError as exc:
            raise HostError(f"cannot write {staged}: {exc.strerror}") from None
    argvs = batches(plan.lines(str(staged)), use_sudo=use_sudo)
    errors: list[str] = []
    refused: str | None = None
    for argv in argvs:
        done = runner(argv)
        err = done.stderr.strip()
        if use_sudo and done.returncode != 0 and _is_sudo_refusal(err):
            refused = _last_sudo_line(err)
            break
        errors.extend(line for line in err.splitlines() if line.strip())
    after = read_lo0(runner)
    wanted = ints_of(plan.change)
    recorded = ints_of(plan.before.added)
    if plan.action == "add":
        done_ips = wanted & after
        added = pool_of(recorded | done_ips)
    else:
        done_ips = wanted - after
        # What the pool named is gone from lo0 now (removed, or absent already): out of the record.
        added = pool_of(recorded - (ints_of(plan.change) | ints_of(plan.skipped)) | (recorded & after & wanted))
    failed = wanted - done_ips
    daemon_ok = refused is None and not any(e.startswith(("install:", "rm:")) for e in errors)
    daemon = plan.before.launchdaemon
    if plan.daemon == "install" and daemon_ok:
        daemon = LAUNCHDAEMON_PATH
    elif plan.daemon == "remove" and daemon_ok:
        daemon = None
        staged.unlink(missing_ok=True)
    state = AliasState(added, daemon)
    save_state(state)
    if refused is not None and not done_ips:
        raise HostError(
            f"sudo refused ({refused}); nothing was changed. Run as an administrator, or run "
            f"`loopfan alias {plan.action} ... --dry-run` and give its commands to one"
        )
    if failed:
        why = refused or (errors[0] if errors else "no error message")
        raise HostError(
            f"{len(failed):,} of {len(wanted):,} aliases could not be {'added' if plan.action == 'add' else 'removed'}"
            f" ({_brief(pool_of(failed))}): {why}"
        )
    return Applied(pool_of(done_ips), pool_of(failed), state, len(argvs))


_SUDO_REFUSALS = (
    "password is required",
    "incorrect password",
    "not in the sudoers",
    "not allowed to execute",
    "a terminal is required",
    "no tty present",
    "sudo: command not found",
    "sudo: No such file",
)


def _is_sudo_refusal(stderr: str) -> bool:
    return any(s in stderr for s in _SUDO_REFUSALS)


def _last_sudo_line(stderr: str) -> str:
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    return lines[-1] if lines else "no message"


def _brief(pool: AddressPool, ranges: int = 4) -> str:
    """A pool's text, cut after a few ranges so an error stays one readable line."""
    if len(pool.ranges) <= ranges:
        return pool.describe()
    head = AddressPool(pool.ranges[:ranges]).describe()
    return f"{head} and {pool.ipv4_count - AddressPool(pool.ranges[:ranges]).ipv4_count:,} more"


def _first_line(text: str) -> str:
    return next((x.strip() for x in text.splitlines() if x.strip()), "")


def use_sudo_default() -> bool:
    """Root needs no sudo (and a root shell may not have it configured)."""
    geteuid = getattr(os, "geteuid", None)
    return not (geteuid is not None and geteuid() == 0)
