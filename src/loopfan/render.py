"""Plans and findings as text (rich) and as JSON dicts (the documented schemas in docs/).

Rules of this file: pure functions from values to renderables or dicts; the commands print them.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from loopfan.doctor import FAIL, INFO, OK, WARN, Finding
from loopfan.planner import Limit, Plan
from loopfan.pools import Endpoint
from loopfan.wording import counted as counted  # (re-exported: callers import it from here)

PLAN_SCHEMA = "loopfan.plan/1"
DOCTOR_SCHEMA = "loopfan.doctor/1"
UNDO_SCHEMA = "loopfan.doctor-undo/1"



def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _limit_dict(lim: Limit | None) -> dict[str, Any] | None:
    if lim is None:
        return None
    return {"resource": lim.resource, "connections": lim.connections, "fix": lim.fix, "detail": lim.detail}


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    req = plan.request
    return {
        "schema": PLAN_SCHEMA,
        "connections": req.connections,
        "planned_connections": plan.connections,
        "feasible": plan.feasible,
        "holdable_connections": plan.holdable,
        "platform": plan.platform,
        "builtin_server": req.builtin_server,
        "source_addresses": len(plan.sources),
        "sources": list(plan.sources),
        "targets": [str(t) for t in plan.targets],
        "port_budget": {
            "ports": plan.port_count,
            "fill_ratio": req.fill_ratio,
            "per": plan.budget_scope,
            "budget": plan.budget_per_group,
        },
        "groups": [
            {"source": g.source, "target": str(g.target), "connections": g.connections} for g in plan.groups
        ],
        "client_processes": len(plan.client_shards),
        "server_processes": len(plan.server_shards),
        "connections_per_process": plan.per_process,
        "client_shards": [
            {"index": s.index, "connections": s.connections, "sources": list(s.sources)}
            for s in plan.client_shards
        ],
        "server_shards": [
            {"index": s.index, "listen": [str(e) for e in s.listen], "connections": s.connections}
            for s in plan.server_shards
        ],
        "memory_bytes": {
            "kernel": plan.memory.kernel_bytes,
            "user": plan.memory.user_bytes,
            "user_client": plan.memory.user_client_bytes,
            "user_server": plan.memory.user_server_bytes,
        },
        "first_limit": _limit_dict(plan.first_limit),
        "limits": [_limit_dict(lim) for lim in plan.limits],
        "notes": list(plan.notes),
    }


def _abbrev(items: list[str], most: int = 4) -> str:
    if len(items) <= most:
        return ", ".join(items)
    return ", ".join(items[:most]) + f", ... ({len(items) - most:,} more)"


def _endpoint_summary(targets: tuple[Endpoint, ...]) -> str:
    return _abbrev([str(t) for t in targets], 3)


def plan_table(plan: Plan) -> Table:
    req = plan.request
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    srcs = list(plan.sources)
    t.add_row("sources", f"{counted(len(srcs), 'address')}: {_abbrev(srcs)}")
    who = "built-in server listen endpoint" if req.builtin_server else "target endpoint"
    t.add_row("targets", f"{counted(len(plan.targets), who)}: {_endpoint_summary(plan.targets)}")
    biggest = max((g.connections for g in plan.groups), default=0)
    scope = "source x endpoint" if plan.budget_scope == "group" else "source address"
    t.add_row(
        "groups",
        f"{len(plan.groups):,} ({scope}), at most {counted(biggest, 'connection')} each; "
        f"budget {plan.budget_per_group:,} = {req.fill_ratio:.0%} of {plan.port_count:,} ephemeral ports",
    )
    procs = f"{len(plan.client_shards):,} client"
    if plan.server_shards:
        procs += f" + {len(plan.server_shards):,} server"
    t.add_row("processes", f"{procs}, at most {counted(plan.per_process, 'connection')} each (open-file limit)")
    m = plan.memory
    t.add_row(
        "memory",
        f"~{_gb(m.kernel_bytes)} kernel (both ends) + ~{_gb(m.user_bytes)} loopfan user space",
    )
    lim = plan.first_limit
    if lim is not None:
        t.add_row("first limit", f"{lim.resource} at {lim.connections:,} connections: {lim.detail}")
        t.add_row("fix", lim.fix)
    for note in plan.notes:
        t.add_row("note", note)
    return t


def plan_headline(plan: Plan) -> Text:
    req = plan.request
    target = "the built-in server" if req.builtin_server else counted(len(plan.targets), "endpoint")
    head = Text(f"Plan: {counted(req.connections, 'connection')} to {target} - ", style="bold")
    if plan.feasible:
        head.append("feasible", style="bold green")
    else:
        head.append(f"NOT feasible: this host holds about {plan.holdable:,}", style="bold red")
    return head


_SEV_STYLE = {OK: "green", INFO: "cyan", WARN: "yellow", FAIL: "bold red"}


def findings_table(findings: tuple[Finding, ...]) -> Table:
    """One block per check: severity and check name, then what was found, needed, and the fix.

    A five-column table is unreadable at 80 columns (every cell wraps, commands get cut), so the
    details stack under the check, each on its own line, and fix commands are never truncated.
    """
    t = Table.grid(padding=(0, 1))
    t.add_column(no_wrap=True, width=4)
    t.add_column(overflow="fold")
    for f in findings:
        body = Text()
        body.append(f.check, style="bold")
        body.append(f": {f.found}" if f.found else "")
        if f.needed:
            body.append(f"\nneeded: {f.needed}")
        if f.fix:
            body.append("\nfix: ")
            body.append(f.fix, style="bold" if f.severity in (WARN, FAIL) else "")
        t.add_row(Text(f.severity.upper(), style=_SEV_STYLE[f.severity]), body)
    return t


def undo_to_dict(ok: bool, record: str, settings: list[dict[str, str | None]]) -> dict[str, Any]:
    """`doctor --undo --json`: one entry per setting in the undo record (see docs/plan-schema.md)."""
    return {"schema": UNDO_SCHEMA, "ok": ok, "record": record, "settings": settings}


def findings_to_dict(findings: tuple[Finding, ...], ok: bool, connections: int,
                     fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The doctor/1 object; `fixed` (with --fix): what was written, or the commands for root."""
    return {
        "schema": DOCTOR_SCHEMA,
        "connections": connections,
        "ok": ok,
        "findings": [
            {
                "check": f.check,
                "severity": f.severity,
                "found": f.found,
                "needed": f.needed,
                "fix": f.fix,
                "setting": {"key": f.setting.key, "value": f.setting.value} if f.setting else None,
            }
            for f in findings
        ],
        **({"fix": fixed} if fixed is not None else {}),
    }
