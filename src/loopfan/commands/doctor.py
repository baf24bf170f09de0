"""`loopfan doctor`: check this host for a run of N connections; --fix / --undo kernel settings."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from loopfan import sysctl
from loopfan.commands.common import COUNT, write_json
from loopfan.commands.console import text_console
from loopfan.doctor import Setting, diagnose, settings_to_fix, sysctl_command, verdict
from loopfan.errors import UsageError
from loopfan.hostfacts import read_host_facts
from loopfan.planner import PlanRequest, plan
from loopfan.render import findings_table, findings_to_dict, undo_to_dict


@click.command()
@click.option(
    "-c", "--connections", type=COUNT, default=100_000, show_default=True, help="The run to check for."
)
@click.option("--json", "as_json", is_flag=True,
              help="Print findings as JSON (schema loopfan.doctor/1; with --undo: loopfan.doctor-undo/1).")
@click.option(
    "--fix", is_flag=True, help="Apply the kernel settings the run needs (root); records old values."
)
@click.option("--widen-ports", is_flag=True, help="With --fix: also widen the ephemeral range to 1024-65535.")
@click.option("--undo", is_flag=True, help="Restore exactly the settings an earlier --fix changed.")
def command(connections: int, as_json: bool, fix: bool, widen_ports: bool, undo: bool) -> int:
    """Check this host for a run of N connections: each limit, what is needed, the fixing command.

    Exit status: 0 when a run of N would work, 1 when it would not, 2 on bad input.
    """
    # With --json, stdout is the JSON alone (for jq): what --fix says it applies goes to stderr.
    console = text_console(stderr=as_json)
    if fix and undo:
        raise UsageError("--fix and --undo contradict each other; give one")
    if widen_ports and not fix:
        raise UsageError("--widen-ports only works with --fix; write: loopfan doctor --fix --widen-ports")
    if undo:
        return _undo(console, as_json)
    facts = read_host_facts()
    p = plan(PlanRequest(connections=connections), facts)
    findings = diagnose(facts, p)
    # With --fix and --json, the JSON says what was done too (the lines on stderr are for people).
    fixed: dict[str, Any] | None = None
    if fix:
        settings = settings_to_fix(findings, widen_ports=widen_ports)
        fixed = {"root": facts.is_root, "applied": [], "commands": [sysctl_command(s) for s in settings]}
        if not settings:
            console.print("nothing to fix: the kernel settings already allow this run")
        elif not facts.is_root:
            console.print("not root: run these commands (or sudo loopfan doctor --fix):")
            for s in settings:
                console.print(f"  {sysctl_command(s)}", highlight=False)
            if as_json:
                write_json("-", findings_to_dict(findings, False, connections, fixed))
            return 1
        else:
            console.print(f"applying (previous values recorded in {sysctl.undo_dir() / 'sysctl-undo.json'}; "
                          "`loopfan doctor --undo` restores them):", highlight=False)
            for s in settings:
                console.print(f"  {s.key} = {s.value}", highlight=False)
            for key, old, new in sysctl.apply(settings):
                console.print(f"set {key}: {old} -> {new}", highlight=False)
                fixed["applied"].append({"key": key, "before": old, "after": new})
            fixed["record"] = str(sysctl.undo_file())
            facts = read_host_facts()
            p = plan(PlanRequest(connections=connections), facts)
            findings = diagnose(facts, p)
    ok = verdict(findings)
    if as_json:
        write_json("-", findings_to_dict(findings, ok, connections, fixed))
    else:
        console.print(findings_table(findings))
        if ok:
            console.print(f"[green]A run of {connections:,} connections should work on this host.[/]")
        else:
            console.print(
                f"[bold red]A run of {connections:,} connections would not work: fix the FAIL rows.[/]"
            )
    return 0 if ok else 1


def _undo(console: Console, as_json: bool) -> int:
    """Restore what --fix changed. With --json, stdout is a loopfan.doctor-undo/1 object (the lines
    go to stderr, as with --fix --json); its `ok` says what the exit status says."""
    settings: list[dict[str, str | None]] = []
    record = str(sysctl.undo_file())  # (before --undo removes it: an earlier version's may be elsewhere)

    def done(status: int) -> int:
        if as_json:
            write_json("-", undo_to_dict(status == 0, record, settings))
        return status

    def entry(key: str, result: str, value: str, *, current: str | None = None, set_by_fix: str | None = None,
              fix: str = "") -> None:
        settings.append({"key": key, "result": result, "value": value, "current": current,
                         "set_by_fix": set_by_fix, "fix": fix})

    previous = sysctl.recorded()
    if not previous:
        console.print("nothing to undo: loopfan has not changed any kernel setting here")
        return done(0)
    if not read_host_facts().is_root:
        # Same rule as --fix: without root, show the exact commands instead of failing bare.
        console.print("not root: run these commands (or sudo loopfan doctor --undo):")
        for key, old in previous.items():
            command = sysctl_command(Setting(key, old))
            console.print(f"  {command}", highlight=False)
            entry(key, "not root", old, fix=command)
        return done(1)
    changed_since: list[tuple[str, str, str, str]] = []
    for key, current, old in sysctl.undo(changed_since=changed_since):
        console.print(f"restored {key}: {current} -> {old}", highlight=False)
        entry(key, "restored", old, current=current)
    for key, current, written, old in changed_since:
        command = sysctl_command(Setting(key, old))
        console.print(f"left {key} at {current}: changed since --fix set it to {written} (it was {old} before; "
                      f"to restore that: {command})", highlight=False)
        entry(key, "left", old, current=current, set_by_fix=written, fix=command)
    return done(0)
