"""`loopfan alias add|remove|list`: lo0 aliases on macOS/FreeBSD; on Linux, why none are needed.

Rules of this file: argv in, text out. What to run is decided in loopfan.aliases (pure); the host
is reached only through `HOST` (a runner, the platform, sudo or not, the daemon check), which the
tests replace with a recorded macOS or FreeBSD host.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from loopfan import aliases
from loopfan.aliases import (
    BSD_LIKE,
    LAUNCHDAEMON_PATH,
    AliasPlan,
    AliasState,
    Runner,
    plan_add,
    plan_remove,
)
from loopfan.errors import UsageError
from loopfan.pools import AddressPool

F = TypeVar("F", bound=Callable[..., Any])

_NAMES = {"macos": "macOS", "freebsd": "FreeBSD", "linux": "Linux", "windows": "Windows", "other": "this OS"}


def _daemon_file_exists() -> bool:
    return Path(LAUNCHDAEMON_PATH).exists()


@dataclass(frozen=True)
class HostAccess:
    """Everything this command needs from the machine; tests swap in a recorded host."""

    runner: Runner = aliases.run_subprocess
    platform: Callable[[], str] = aliases.host_platform
    use_sudo: Callable[[], bool] = aliases.use_sudo_default
    daemon_installed: Callable[[], bool] = _daemon_file_exists


HOST = HostAccess()


_PREVIEW_HELP = "Plan for this platform; another platform than this host's previews with --dry-run."
# `list` reads this host's lo0, so it has no preview (and no --dry-run) to offer.
_LIST_HELP = "`list` reads this host's lo0, so only this host's platform is accepted."


def _platform_option(f: F, help_text: str = _PREVIEW_HELP) -> F:
    return click.option(
        "--platform",
        type=click.Choice(["auto", *aliases.ALIAS_PLATFORMS]),
        default="auto",
        show_default=True,
        help=help_text,
    )(f)


def _list_platform_option(f: F) -> F:
    return _platform_option(f, _LIST_HELP)


def _dry_run_option(f: F) -> F:
    return click.option("--dry-run", is_flag=True, help="Print the exact commands instead of running them.")(f)


def _resolve(option: str, dry_run: bool) -> tuple[str, bool]:
    """(platform, native): native is False for a preview of another platform."""
    host = HOST.platform()
    platform = host if option == "auto" else option
    native = platform == host
    if platform in BSD_LIKE and not native and not dry_run:
        raise UsageError(f"--platform {platform} on this {_NAMES.get(host, host)} host can only preview; add --dry-run")
    if platform == "other":
        raise UsageError(
            "loopfan alias knows macOS, FreeBSD, Linux and Windows; to see the macOS commands, add "
            "--platform macos --dry-run"
        )
    return platform, native


def _nothing_needed(platform: str, native: bool) -> int:
    """Linux and Windows: explain, check the Linux route when we are on Linux, change nothing."""
    route = aliases.check_linux_route(HOST.runner) if platform == "linux" and native else None
    click.echo(aliases.nothing_needed_text(platform, route))
    return 1 if route is False else 0


def _print_dry_run(p: AliasPlan, pool_text: str, native: bool) -> None:
    name = _NAMES[p.platform]
    verb = "to add" if p.action == "add" else "to remove"
    there = "already on lo0" if p.action == "add" else "not on lo0"
    click.echo(
        f"# loopfan alias {p.action} {pool_text} on {name}: {p.change.ipv4_count:,} {verb}, "
        f"{p.skipped.ipv4_count:,} {there} (skipped)"
    )
    if not native:
        assumed = "only 127.0.0.1" if p.action == "add" else "every address of the pool"
        click.echo(
            f"# preview from a {_NAMES[HOST.platform()]} host: assumes lo0 holds {assumed} and no record "
            f"of earlier adds; on the real host, addresses {there} are skipped"
        )
    staged = aliases.staged_plist_path()
    if p.daemon == "install":
        click.echo(
            f"# would write the LaunchDaemon plist to {staged}; the last command installs it as {LAUNCHDAEMON_PATH}"
        )
        click.echo("# at boot, as root, it runs /bin/sh -c with:")
        for line in aliases.boot_script(p.state_after.added).splitlines():
            click.echo(f"#   {line}")
    elif p.daemon == "remove":
        click.echo(f"# the last commands remove the LaunchDaemon {LAUNCHDAEMON_PATH}")
    if p.nothing_to_do:
        click.echo("# nothing to run")
    use_sudo = HOST.use_sudo() if native else True
    for argv in aliases.batches(p.lines(str(staged)), use_sudo=use_sudo):
        click.echo(shlex.join(argv))


def _range_text(pool: AddressPool) -> str:
    return pool.describe() if pool.ranges else "none"


@click.group()
def command() -> None:
    """Loopback aliases for macOS and FreeBSD, where lo0 holds only 127.0.0.1.

    There, binding 127.0.0.2 fails with EADDRNOTAVAIL until it is an alias of lo0. `add` makes a
    pool of them with one sudo, `remove --all-added` undoes exactly what loopfan added, `list`
    shows both. Linux and Windows need none: every 127.x.y.z is local there already.
    """


@command.command()
@click.argument("pool")
@_dry_run_option
@click.option("--persist", is_flag=True, help="macOS: install a LaunchDaemon that re-adds the aliases at boot.")
@_platform_option
def add(pool: str, dry_run: bool, persist: bool, platform: str) -> int:
    """Add POOL's addresses as lo0 aliases, skipping those already there.

    POOL is e.g. 127.0.0.2-127.0.0.20 or 127.0.1.0/24; never 127.0.0.1, at most 65,536 addresses.
    """
    alias_pool = aliases.parse_alias_pool(pool)  # bad input is bad on every platform
    plat, native = _resolve(platform, dry_run)
    if plat not in BSD_LIKE:
        return _nothing_needed(plat, native)
    if persist and plat != "macos":
        raise UsageError(
            "--persist writes a macOS LaunchDaemon; on FreeBSD list the aliases in /etc/rc.conf instead, "
            'e.g. ifconfig_lo0_aliases="inet 127.0.0.2-20/32" (see docs/macos.md)'
        )
    present = aliases.read_lo0(HOST.runner) if native else set()
    state = aliases.load_state() if native else AliasState()
    installed = native and HOST.daemon_installed()
    p = plan_add(alias_pool, present, state, platform=plat, persist=persist, daemon_installed=installed)
    if dry_run:
        _print_dry_run(p, pool, native)
        return 0
    if p.nothing_to_do:
        click.echo(f"nothing to do: all {p.skipped.ipv4_count:,} addresses of {pool} are on lo0 already")
        return 0
    if p.change.ranges:
        click.echo(
            f"adding {p.change.ipv4_count:,} aliases to lo0 ({_range_text(p.change)}); "
            f"{p.skipped.ipv4_count:,} already there, skipped"
        )
    done = aliases.apply(p, HOST.runner, use_sudo=HOST.use_sudo())
    if p.change.ranges:
        click.echo(f"added {done.done.ipv4_count:,} aliases: {_range_text(done.done)}")
    click.echo(
        f"recorded in {aliases.state_path()}: {done.state.added.ipv4_count:,} aliases added by loopfan "
        "(`loopfan alias remove --all-added` removes exactly those)"
    )
    if p.daemon == "install":
        click.echo(
            f"LaunchDaemon written to {LAUNCHDAEMON_PATH}: re-adds the "
            f"{done.state.added.ipv4_count:,} recorded aliases at boot"
        )
    elif not installed and plat == "macos":
        click.echo("note: aliases are gone after a reboot; add --persist to re-add them at boot")
    return 0


@command.command()
@click.argument("pool", required=False)
@click.option("--all-added", is_flag=True, help="Remove exactly the aliases loopfan added (and its LaunchDaemon).")
@_dry_run_option
@_platform_option
def remove(pool: str | None, all_added: bool, dry_run: bool, platform: str) -> int:
    """Remove POOL's lo0 aliases, or with --all-added exactly the ones loopfan added."""
    if (pool is None) == (not all_added):
        raise UsageError("give either a POOL (e.g. 127.0.0.2-127.0.0.20) or --all-added, not both or neither")
    alias_pool = aliases.parse_alias_pool(pool) if pool is not None else None
    plat, native = _resolve(platform, dry_run)
    if plat not in BSD_LIKE:
        return _nothing_needed(plat, native)
    # A preview of a removal assumes the pool is on lo0, so it shows every command.
    present = aliases.read_lo0(HOST.runner) if native else aliases.ints_of(alias_pool or AddressPool())
    state = aliases.load_state() if native else AliasState()
    installed = native and HOST.daemon_installed()
    p = plan_remove(alias_pool, present, state, platform=plat, daemon_installed=installed)
    what = pool if pool is not None else "--all-added"
    if dry_run:
        _print_dry_run(p, what, native)
        return 0
    if p.nothing_to_do:
        if pool is None:
            click.echo(f"nothing to remove: loopfan has no record of aliases it added on lo0 ({aliases.state_path()})")
        else:
            click.echo(f"nothing to remove: none of {pool} is an alias on lo0")
        aliases.save_state(p.state_after)  # forget recorded aliases that are gone (e.g. after a reboot)
        return 0
    if p.change.ranges:
        click.echo(
            f"removing {p.change.ipv4_count:,} aliases from lo0 ({_range_text(p.change)}); "
            f"{p.skipped.ipv4_count:,} not there, skipped"
        )
    done = aliases.apply(p, HOST.runner, use_sudo=HOST.use_sudo())
    if p.change.ranges:
        click.echo(f"removed {done.done.ipv4_count:,} aliases: {_range_text(done.done)}")
    if p.daemon == "remove":
        click.echo(f"removed the LaunchDaemon {LAUNCHDAEMON_PATH}")
    elif p.daemon == "install":
        click.echo(
            f"rewrote the LaunchDaemon {LAUNCHDAEMON_PATH}: it re-adds the "
            f"{done.state.added.ipv4_count:,} aliases still recorded"
        )
    return 0


@command.command(name="list")
@_list_platform_option
def list_(platform: str) -> int:
    """Show lo0's aliases: which loopfan added, which were made by hand, and the boot daemon."""
    host = HOST.platform()
    plat = host if platform == "auto" else platform
    if plat != host:
        raise UsageError(
            f"`alias list` reads this host's lo0; --platform {plat} only previews add/remove with --dry-run"
        )
    if plat not in BSD_LIKE:
        return _nothing_needed(*_resolve(platform, False))
    present = aliases.read_lo0(HOST.runner)
    state = aliases.load_state()
    recorded = aliases.ints_of(state.added)
    ours = aliases.pool_of(present & recorded)
    by_hand = aliases.pool_of(present - recorded)
    gone = aliases.pool_of(recorded - present)
    click.echo(f"lo0: 127.0.0.1 and {len(present):,} aliases: {_range_text(aliases.pool_of(present))}")
    click.echo(f"added by loopfan: {ours.ipv4_count:,}: {_range_text(ours)} (record: {aliases.state_path()})")
    click.echo(
        f"made by hand or other tools (loopfan leaves them alone): {by_hand.ipv4_count:,}: {_range_text(by_hand)}"
    )
    if gone.ranges:
        click.echo(
            f"recorded but no longer on lo0 (after a reboot?): {gone.ipv4_count:,}; re-add them with: "
            f"loopfan alias add {gone.describe()}"
        )
    if plat == "macos":
        daemon = "installed" if HOST.daemon_installed() else "not installed (aliases vanish at reboot)"
        click.echo(f"LaunchDaemon {LAUNCHDAEMON_PATH}: {daemon}")
    return 0
