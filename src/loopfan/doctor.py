"""Doctor rules: host facts + a planned run in, findings out. Pure: no I/O.

Rules of this file: each rule is a small function that returns one `Finding`; a finding says what
was found, what the run needs, and the exact command that fixes it. Settings that `doctor --fix`
may apply are carried as `Setting` values (a sysctl key and the value to write); the I/O that
applies and undoes them lives in `sysctl.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loopfan import costs
from loopfan.hostfacts import HostFacts
from loopfan.planner import Plan, _round_up
from loopfan.wording import counted

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
SEVERITY_ORDER = {OK: 0, INFO: 1, WARN: 2, FAIL: 3}

# A fast ramp can deliver tens of thousands of SYNs per second to one listener; the accept queue
# (min(backlog, somaxconn)) must absorb the bursts between two accept() calls or SYNs are dropped
# and the client stalls 1-3 s in retransmission. 65535 is the largest queue listen() takes.
RECOMMENDED_ACCEPT_QUEUE = 65535


@dataclass(frozen=True, slots=True)
class Setting:
    """A kernel setting doctor --fix may write."""

    key: str  # sysctl name, e.g. "fs.file-max"
    value: str


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: str
    found: str
    needed: str
    fix: str = ""
    setting: Setting | None = None


def sysctl_command(setting: Setting) -> str:
    value = f'"{setting.value}"' if " " in setting.value else setting.value
    return f"sudo sysctl -w {setting.key}={value}"


def check_fds(facts: HostFacts, plan: Plan) -> Finding:
    procs = len(plan.client_shards)
    servers = len(plan.server_shards)
    hard = "unlimited" if facts.nofile_usable > 2**31 else f"{facts.nofile_hard:,}"
    found = f"soft {facts.nofile_soft:,}, hard {hard}"
    if facts.nofile_hard_raisable:
        found += " (raisable: this process may raise its hard limit)"
    else:
        found += " (the hard limit cannot be raised here: no CAP_SYS_RESOURCE)"
    side = f"{procs:,} client process{'es' if procs != 1 else ''}"
    if servers:
        side += f" and {servers:,} server process{'es' if servers != 1 else ''}"
    needed = (
        f"{counted(plan.request.connections, 'connection')} at {plan.per_process:,} per process: {side}; "
        "loopfan shards across processes by itself"
    )
    fix = ""
    if not facts.nofile_hard_raisable:
        fix = (
            "nothing to do: loopfan runs more processes. To use fewer, raise the hard limit where it is "
            "set (limits.conf, systemd LimitNOFILE=, the container runtime's --ulimit nofile=)"
        )
    severity = INFO
    if not plan.request.builtin_server and plan.request.connections > facts.nofile_usable - 100:
        severity = WARN
        needed += (
            f"; YOUR server must accept {plan.request.connections:,} sockets: one server process needs "
            f"`ulimit -n {_round_up(plan.request.connections + 1000)}` or several processes"
        )
    return Finding("open files per process", severity, found, needed, fix)


def check_file_max(facts: HostFacts, plan: Plan) -> Finding:
    knob = "kern.maxfiles" if facts.platform == "macos" else "fs.file-max"
    if facts.file_max is None:
        return Finding(knob, INFO, "unknown", "")
    lim = next((x for x in plan.limits if x.resource == knob), None)
    open_now = facts.files_open or 0
    need = 2 * plan.request.connections + open_now + 10_000
    found = f"{facts.file_max:,} system-wide ({open_now:,} open now)"
    needed = f"{need:,} (two sockets per connection, both ends on this host)"
    if lim is not None and lim.connections < plan.request.connections:
        setting = Setting(knob, str(_round_up(need)))
        return Finding(knob, FAIL, found, needed, sysctl_command(setting), setting)
    return Finding(knob, OK, found, needed)


def check_nr_open(facts: HostFacts, plan: Plan) -> Finding:
    if facts.nr_open is None:
        return Finding("fs.nr_open", INFO, "not applicable on this platform", "")
    return Finding(
        "fs.nr_open",
        OK,
        f"{facts.nr_open:,} (the ceiling for any process's open-file limit)",
        "no change: loopfan keeps each process under its own limit",
    )


def check_ports(facts: HostFacts, plan: Plan) -> Finding:
    lo, hi = facts.port_range
    scope = "per source address x endpoint" if plan.budget_scope == "group" else "per source address"
    found = f"{lo}-{hi}: {facts.port_count:,} {scope}"
    biggest = max((g.connections for g in plan.groups), default=0)
    needed = (
        f"{counted(len(plan.sources), 'source address')}, at most {counted(biggest, 'connection')} per "
        f"{'group' if plan.budget_scope == 'group' else 'source'} (budget {plan.budget_per_group:,})"
    )
    lim = next((x for x in plan.limits if x.resource == "ephemeral ports"), None)
    if lim is not None and lim.connections < plan.request.connections:
        return Finding("ephemeral ports", FAIL, found, needed, lim.fix)
    if not facts.bind_no_port and facts.platform == "linux":
        return Finding(
            "ephemeral ports",
            WARN,
            found,
            needed,
            "IP_BIND_ADDRESS_NO_PORT needs Linux >= 4.2 and Python >= 3.11",
        )
    return Finding("ephemeral ports", OK, found, needed)


def check_tw_reuse(facts: HostFacts, plan: Plan) -> Finding:
    if facts.tcp_tw_reuse is None:
        return Finding("tcp_tw_reuse", INFO, "not applicable on this platform", "")
    meaning = {0: "off", 1: "on for all", 2: "on for loopback only, the default"}.get(facts.tcp_tw_reuse, "?")
    found = f"{facts.tcp_tw_reuse} ({meaning})"
    if facts.tcp_tw_reuse == 0:
        setting = Setting("net.ipv4.tcp_tw_reuse", "2")
        return Finding(
            "tcp_tw_reuse",
            WARN,
            found,
            "1 or 2, so reruns can reuse ports still in TIME_WAIT",
            sysctl_command(setting),
            setting,
        )
    return Finding("tcp_tw_reuse", OK, found, "1 or 2 (2 is right for loopback; no change needed)")


def check_accept_queue(facts: HostFacts, plan: Plan) -> list[Finding]:
    out = []
    n = plan.request.connections
    for key, value in (
        ("net.core.somaxconn", facts.somaxconn),
        ("net.ipv4.tcp_max_syn_backlog", facts.tcp_max_syn_backlog),
    ):
        if value is None:
            continue
        want = min(RECOMMENDED_ACCEPT_QUEUE, max(4096, n))
        found = f"{value:,}"
        needed = f"{want:,} for a fast ramp of {n:,} connections (a full queue drops SYNs: 1-3 s stalls)"
        if value < want:
            setting = Setting(key, str(want))
            sev = WARN if n > 20_000 else INFO
            out.append(Finding(key, sev, found, needed, sysctl_command(setting), setting))
        else:
            out.append(Finding(key, OK, found, needed))
    return out


def check_conntrack(facts: HostFacts, plan: Plan) -> Finding:
    ct = facts.conntrack
    if not ct.present:
        return Finding("conntrack", OK, "netfilter connection tracking not loaded", "nothing")
    n = plan.request.connections
    found = f"table {ct.count or 0:,} / {ct.max or 0:,}"
    if not ct.tracking_loopback:
        return Finding(
            "conntrack",
            OK,
            found + "; not tracking loopback now",
            "nothing, unless a firewall/NAT rule starts tracking loopback: "
            f"then the table caps at {ct.max or 0:,}",
        )
    need = n + (ct.count or 0) + 10_000
    if ct.max is not None and ct.max < need:
        setting = Setting("net.netfilter.nf_conntrack_max", str(_round_up(need)))
        return Finding(
            "conntrack",
            FAIL,
            found + "; loopback flows ARE tracked",
            f"{need:,} entries (one per connection)",
            sysctl_command(setting) + "  (or exempt lo: nft add rule ... iif lo notrack)",
            setting,
        )
    return Finding("conntrack", OK, found + "; loopback flows are tracked", f"{need:,} entries")


def check_tcp_mem(facts: HostFacts, plan: Plan) -> Finding:
    if facts.tcp_mem_pages is None:
        return Finding("tcp_mem", INFO, "not applicable on this platform", "")
    low, pressure, high = facts.tcp_mem_pages
    pages_if_all_busy = 2 * plan.request.connections
    found = f"{low:,} / {pressure:,} / {high:,} pages"
    needed = "idle connections cost nothing here; each connection with unread data holds >= 1 page"
    if pages_if_all_busy > pressure:
        return Finding(
            "tcp_mem",
            INFO,
            found,
            needed + f"; data queued on all {plan.request.connections:,} at once would pass memory pressure",
        )
    return Finding("tcp_mem", OK, found, needed)


def check_memory(facts: HostFacts, plan: Plan) -> Finding:
    if facts.mem_available_bytes is None:
        return Finding("memory", INFO, "unknown", "")
    m = plan.memory
    found = f"{facts.mem_available_bytes / 1e9:.1f} GB available"
    needed = (
        f"~{m.total_bytes / 1e9:.1f} GB: {m.kernel_bytes / 1e9:.1f} GB kernel sockets "
        f"(~{costs.KERNEL_BYTES_PER_PAIR / 1000:.1f} KB per pair) + {m.user_bytes / 1e9:.2f} GB loopfan"
    )
    if m.total_bytes > facts.mem_available_bytes * costs.MEMORY_SAFETY_RATIO:
        lim = next((x for x in plan.limits if x.resource == "memory"), None)
        can = f"; this host holds about {lim.connections:,}" if lim else ""
        return Finding("memory", FAIL, found, needed + can, "no setting lifts this: fewer connections")
    return Finding("memory", OK, found, needed)


def check_loopback(facts: HostFacts, plan: Plan) -> Finding:
    if facts.loopback_route_all:
        return Finding(
            "loopback addresses",
            OK,
            "local route 127.0.0.0/8 on lo: every 127.x.y.z is usable with no setup",
            counted(len(plan.sources), "source address"),
        )
    if facts.platform == "linux":
        return Finding(
            "loopback addresses",
            FAIL,
            "no `local 127.0.0.0/8 dev lo` route",
            "the local route for 127/8",
            "sudo ip route add local 127.0.0.0/8 dev lo table local",
        )
    aliases = sorted(a for a in facts.loopback_addresses if a != "127.0.0.1")
    needed = counted(max(1, len(plan.sources)), "aliased source address")
    lim = next((x for x in plan.limits if x.resource in ("loopback aliases", "ephemeral ports")), None)
    if lim is not None and lim.connections < plan.request.connections:
        return Finding(
            "loopback addresses",
            FAIL,
            f"lo0 has {len(aliases)} aliases besides 127.0.0.1",
            needed,
            lim.fix,  # the planner names the one `loopfan alias add` that aliases enough of the pool
        )
    return Finding("loopback addresses", OK, f"lo0 has {len(aliases)} aliases besides 127.0.0.1", needed)


RULES: tuple[Callable[[HostFacts, Plan], Finding | list[Finding]], ...] = (
    check_fds,
    check_file_max,
    check_nr_open,
    check_ports,
    check_tw_reuse,
    check_accept_queue,
    check_conntrack,
    check_tcp_mem,
    check_memory,
    check_loopback,
)


def diagnose(facts: HostFacts, plan: Plan) -> tuple[Finding, ...]:
    out: list[Finding] = []
    for rule in RULES:
        result = rule(facts, plan)
        out.extend(result if isinstance(result, list) else [result])
    return tuple(out)


def verdict(findings: tuple[Finding, ...]) -> bool:
    """True when a run of the planned size would work (no FAIL finding)."""
    return all(f.severity != FAIL for f in findings)


def settings_to_fix(findings: tuple[Finding, ...], *, widen_ports: bool = False) -> tuple[Setting, ...]:
    out = [f.setting for f in findings if f.setting is not None and f.severity in (WARN, FAIL)]
    if widen_ports:
        out.append(Setting("net.ipv4.ip_local_port_range", "1024 65535"))
    return tuple(out)
