"""`loopfan run`: open N connections per the plan, hold them, close them, report."""

from __future__ import annotations

import contextlib
import functools
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import click
from rich.console import Console

from loopfan import aliases
from loopfan.commands.common import (
    DURATION,
    CountType,
    allow_option,
    build_sources,
    build_targets,
    check_distinct,
    check_writable,
    connections_option,
    min_processes,
    note,
    sources_option,
    write_json,
)
from loopfan.commands.console import text_console
from loopfan.commands.free_server import plan_free_server
from loopfan.commands.output_opts import OutputOptions, output_options
from loopfan.commands.traffic_opts import builtin_server_only, traffic_options, traffic_setup
from loopfan.engine import protocol as P
from loopfan.engine.report import report_dict, report_renderable
from loopfan.engine.runner import RunConfig, RunResult, run_plan
from loopfan.errors import HostError, ServerStartError, UsageError
from loopfan.hostfacts import HostFacts, facts_for_workers
from loopfan.planner import Plan, PlanRequest
from loopfan.pools import parse_pool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Everything `run` and `demo` need, built once from argv."""

    request: PlanRequest
    config: RunConfig
    json_path: str | None = None
    quiet: bool = False
    force: bool = False
    output: OutputOptions = field(default_factory=OutputOptions)  # --html, --check, --progress, --prometheus
    # What to do when the built-in server could not listen after all (its endpoints were free when
    # planned, so something took one meanwhile), in the options of the command.
    server_fix: str = "run it again (loopfan looks for free endpoints before every run)"


# Limits set by what was asked (the --sources pool and the targets given), not by the host: a plan
# stopped by one is bad input (exit 2), like a --listen pool too small for the server; the others
# (memory, open files, conntrack, the loopback route) are the host's (exit 1, as `doctor` says).
_LIMITS_OF_THE_REQUEST = frozenset({"ephemeral ports"})

# The workers' own default, written here with its unit ("10s") rather than as click's bare float.
DEFAULT_CONNECT_TIMEOUT_S = P.ClientConfig().connect_timeout_s


def preflight(p: Plan, facts: HostFacts, force: bool) -> None:
    """Refuse, before any socket opens, a plan this host cannot hold (unless forced)."""
    aliases.preflight(p, facts)  # macOS/BSD: missing lo0 aliases -> the one `loopfan alias add` line
    if not p.feasible and not force:
        lim = p.first_limit
        assert lim is not None
        n = p.request.connections
        # Say what --force does: the plan places only what its ports allow, so forcing runs fewer.
        forced = (f"or pass --force to open only the {p.connections:,} the plan can place" if p.connections < n
                  else f"or pass --force to try all {n:,} anyway")
        if lim.resource in _LIMITS_OF_THE_REQUEST:
            raise UsageError(f"{n:,} connections do not fit these addresses: their {lim.resource} hold "
                             f"{lim.connections:,} ({lim.detail}); fix: {lim.fix} - {forced}")
        raise HostError(f"this host cannot hold {n:,} connections: the first limit, {lim.resource}, allows "
                        f"{lim.connections:,} ({lim.detail}); fix: {lim.fix} - {forced}")


def plan_isolated(request: PlanRequest, facts: HostFacts, argv: list[str],
                  stack: contextlib.ExitStack) -> tuple[Plan, str | None]:
    """The plan; with --isolate, its isolated clients' addresses are chosen past those other
    programs, tags and runs use now, and registered as taken until `stack` closes - under the
    registry's lock, as a tag's address is chosen and recorded. A run killed outright (SIGKILL)
    leaves a stale record, dropped by the next reader since its pid is gone."""
    if not request.isolate:
        return plan_free_server(request, facts)
    from loopfan.isolation.registry import addresses_taken, locked, remove_record, reserve

    with locked():
        request = replace(request, isolate_avoid=request.isolate_avoid | addresses_taken())
        p, moved = plan_free_server(request, facts)
        path = reserve((g.source for g in p.isolated), shlex.join(argv))
    stack.callback(remove_record, path)
    return p, moved


def execute(opts: RunOptions, argv: list[str]) -> tuple[RunResult, dict[str, Any]]:
    """Plan, run, and build the report with its checks judged; nothing is shown or written yet."""
    facts = facts_for_workers()
    with contextlib.ExitStack() as stack:
        p, moved = plan_isolated(opts.request, facts, argv, stack)
        preflight(p, facts, opts.force)
        if moved and not opts.quiet:
            note(moved)
        with opts.output.progress_sink(quiet=opts.quiet) as live:
            try:
                result = run_plan(p, opts.config, on_progress=live, on_started=live.start)
            except ServerStartError as exc:
                raise ServerStartError(f"{exc}; {opts.server_fix}") from None
    rep = report_dict(result, argv=argv, facts=facts)
    opts.output.judge(rep)
    return result, rep


def report_console(json_path: str | None) -> Console:
    """Where the human report goes: stdout, or stderr when stdout carries the JSON (`--json -`), so
    `loopfan run ... --json - | jq` reads JSON alone and the report still shows on the terminal.
    Off a terminal its lines are whole and unpadded (commands/console.py)."""
    return text_console(stderr=json_path == "-")


def shows_report(json_path: str | None, progress: str) -> bool:
    """Whether `run` prints its text report: not when both its streams carry JSON, the report on
    stdout (`--json -`) and the live view on stderr (`--progress ndjson`). The text would follow
    the last progress object on stderr, and a CI step reading that stream line by line as JSON
    failed on it. Nothing is lost: the JSON holds all the text says, checks included (`checks`),
    and the exit status says whether the run passed. Not refused: both streams at once is a
    reasonable CI setup (the report to `jq`, the progress to a log or a dashboard)."""
    return not (json_path == "-" and progress == "ndjson")


def deliver(opts: RunOptions, rep: dict[str, Any], show: Callable[[], None]) -> str | None:
    """Write the JSON, show the report, then write the HTML page; return the first failure, if
    any. The paths were checked before the run; one that fails anyway (disk full, directory removed
    meanwhile, a closed pipe) must not cost the others: each is attempted, each failure said in one
    line under its own name. The JSON goes first (CI reads it) - before the terminal report too,
    whose drawing could fail (a closed stdout) - except to stdout, where it follows the report."""
    steps: list[tuple[str, Callable[[], None]]] = []
    json_step = ("the JSON report", functools.partial(write_json, opts.json_path, rep)) if opts.json_path else None
    if json_step and opts.json_path != "-":
        steps.append(json_step)
    steps.append(("the report", show))
    if json_step and opts.json_path == "-":
        steps.append(json_step)
    steps.append(("the HTML page", functools.partial(opts.output.write_page, rep)))
    errors: list[str] = []
    for what, step in steps:
        try:
            step()
        except UsageError as exc:
            errors.append(str(exc))
        except Exception as exc:  # drawing, writing: say it, keep the rest
            errors.append(f"could not write {what}: {type(exc).__name__}: {exc}")
    return errors[0] if errors else None


def after_delivery(status: int, error: str | None) -> int:
    """The run's own exit status, unless an output could not be written: then at least 2, with the
    one line that says why (a run that passed must not look green without its report)."""
    if error is None:
        return status
    click.echo(f"loopfan: error: {error}", err=True)
    return max(status, 2)


def parse_listen(text: str | None) -> dict[str, Any]:
    """--listen POOL:PORT -> PlanRequest keyword arguments for the built-in server's endpoints."""
    if text is None:
        return {}
    pool_text, sep, port_text = text.rpartition(":")
    if not sep or not pool_text or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--listen {text!r}: write ADDRESSES:PORT, e.g. 127.101.0.0/16:9000")
    return {"listen_pool": parse_pool(pool_text), "listen_port": int(port_text), "listen_chosen": True}


def exit_status(result: RunResult) -> int:
    status = result.exit_status
    if status == 0 and result.client.established < result.plan.request.connections:
        return 1
    if status == 0 and result.client.failed_total:
        return 1  # held connections lost (closed or reset by the server) count as failures too
    t = result.traffic
    if status == 0 and t is not None:
        if t.errors_total:
            return 1
        if t.talking < t.talking_at_start:
            return 1  # connections stopped talking and were not replaced: the load fell
        if not t.window_replies and t.replies + t.lost_in_flight + t.unanswered_at_end:
            return 1  # replies were awaited and none came in the window (e.g. the server died in the warm-up)
    return status


@click.command()
@output_options
@connections_option()
@click.argument("targets", nargs=-1, metavar="[TARGET ...]")
@sources_option
@allow_option
@click.option("--connect-rate", type=click.FloatRange(min=0), default=0.0, metavar="R",
              help="Connections per second over the whole run (default: as fast as the host allows).")
@click.option("--hold", "hold_s", type=DURATION, default=None,
              help="How long to hold the connections once open: 30s, 5m, forever "
              "(default: until Ctrl-C on a terminal, 0 otherwise or after traffic).")
@click.option("--connect-timeout", type=DURATION, default=DEFAULT_CONNECT_TIMEOUT_S, metavar="DURATION",
              help=f"Give up on a connection not established within this (default: {DEFAULT_CONNECT_TIMEOUT_S:g}s).")
@click.option("--listen", metavar="POOL:PORT", default=None,
              help="Where the built-in server listens (with no TARGET), one address per server process: "
              "default 127.100.0.1-127.100.255.254:7070. E.g. 127.101.0.0/16:9000 for a second run at once.")
@click.option("--mode", type=click.Choice(["hold", "echo", "discard", "http", "ws"]), default="hold",
              show_default=True,
              help="Built-in server mode (with no TARGET).")
@click.option("--json", "json_path", metavar="FILE",
              help="Write the report as JSON (schema loopfan.report/1); '-': to stdout, and the report "
              "then goes to stderr (with --progress ndjson: not shown, stderr is JSON lines alone).")
@click.option("--quiet", "-q", is_flag=True, help="No live progress; only the report.")
@click.option("--force", is_flag=True,
              help="Run even if the plan cannot hold N: what the plan can place (fewer than N when the "
              "addresses run out of ports; the report shows the shortfall, exit 1).")
@click.option("--isolate", type=click.IntRange(min=0), default=0, metavar="K",
              help="Give K of the connections a source address of their own (listed in the report with "
              "their Wireshark display filter).")
@click.option("--per-process", type=CountType("--per-process"), default=None, metavar="N",
              help="At most N connections per worker process (default: the open-file limit allows).")
@traffic_options
def command(
    connections: int,
    targets: tuple[str, ...],
    sources: str | None,
    allow_non_loopback: bool,
    connect_rate: float,
    hold_s: float | None,
    connect_timeout: float | None,
    mode: str,
    json_path: str | None,
    quiet: bool,
    force: bool,
    isolate: int,
    listen: str | None,
    per_process: int | None,
    output: OutputOptions,
    **traffic_kw: Any,
) -> int:
    """Open N connections over many loopback addresses, hold them, and report.

    With no TARGET, loopfan starts its built-in server (the embedded default) and stops it after.
    TARGET is ADDRESS:PORT with ranges allowed, e.g. 127.0.0.1:8080 or 127.0.0.1-127.0.0.4:9000-9003,
    or a URL for traffic: http://127.0.0.1:8080-8083/path, ws://127.0.0.1:9000/, and in TLS
    https://127.0.0.1:8443/ or wss://... (the certificate verified against the system's CAs,
    --cacert FILE's, or not at all with --insecure; --cert FILE [--key FILE] for a server that asks for
    a client certificate).
    """
    if json_path:
        check_writable(json_path, "the report", stdout=True)
    check_distinct({"--json": json_path, "--html": output.html_path, "--hdr-log": traffic_kw.get("hdr_log")})
    if not connect_timeout:  # 0 or 'forever' were taken as 10 s without a word
        given = "forever" if connect_timeout is None else "0"
        raise UsageError(f"--connect-timeout must be a duration above 0 (got {given}); write e.g. "
                         "--connect-timeout 10s")
    if listen is not None and targets:
        raise builtin_server_only("--listen")
    ctx = click.get_current_context()
    if ctx.get_parameter_source("hold_s") is not click.core.ParameterSource.COMMANDLINE:
        # Interactive: hold until Ctrl-C. Otherwise do not wait for a Ctrl-C that will never come.
        hold_s = None if sys.stdin.isatty() and sys.stdout.isatty() else 0.0
    traffic, targets, server, hold_s = traffic_setup(targets, connections, mode, hold_s, traffic_kw)
    request = PlanRequest(
        connections=connections,
        targets=build_targets(targets, allow_non_loopback),
        sources=build_sources(sources, allow_non_loopback),
        max_per_process=per_process,
        isolate=isolate,  # (the addresses other programs use are read when planning: plan_isolated)
        min_client_processes=min_processes(talking=traffic is not None, per_process=per_process),
        min_server_processes=min_processes(talking=traffic is not None, per_process=per_process),
        **parse_listen(listen),
    )
    config = RunConfig(
        hold_s=hold_s,
        connect_rate_per_s=connect_rate,
        client=P.ClientConfig(connect_timeout_s=connect_timeout),
        server=server,
        traffic=traffic,
    )
    server_fix = ("choose another --listen POOL:PORT, e.g. 127.101.0.0/16:9000" if listen is not None else
                  "run it again (loopfan looks for free endpoints before every run), or choose them with "
                  "--listen POOL:PORT")
    opts = RunOptions(request=request, config=config, json_path=json_path, quiet=quiet, force=force,
                      output=output, server_fix=server_fix)
    console = report_console(json_path)
    result, rep = execute(opts, ["loopfan", *sys.argv[1:]])

    def show() -> None:
        if shows_report(json_path, output.progress):
            console.print(report_renderable(rep))

    error = deliver(opts, rep, show)
    status = exit_status(result)
    return after_delivery(1 if status == 0 and output.failed(rep) else status, error)
