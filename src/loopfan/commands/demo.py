"""`loopfan demo`: the embedded default - 100,000 connections to the built-in server, explained."""

from __future__ import annotations

import sys

import click
from rich.panel import Panel

from loopfan.commands.common import check_writable
from loopfan.commands.run import RunOptions, after_delivery, deliver, execute, exit_status, report_console
from loopfan.engine.report import report_renderable
from loopfan.engine.runner import RunConfig
from loopfan.planner import PlanRequest
from loopfan.render import counted

DEMO_CONNECTIONS = 100_000
DEMO_HOLD_S = 3.0

# The demo's explanation off a terminal: a paragraph, wrapped where it reads well.
_READING_COLUMNS = 100


def explanation(rep: dict[str, object]) -> str:
    plan = rep["plan"]
    assert isinstance(plan, dict)
    budget = plan["port_budget"]
    established = rep["established"]
    return (
        f"What just happened: loopfan opened {established:,} TCP connections on this one machine - "
        f"{established / budget['ports']:.1f} times what one client address can open to one server address "
        f"({budget['ports']:,} ephemeral ports, then 'Cannot assign requested address'). "
        f"Every 127.x.y.z address is loopback on Linux, so the client side was spread over "
        f"{counted(plan['source_addresses'], 'source address')} and the server over "
        f"{counted(len(plan['targets']), 'listen address')} (127.100.0.x), each (source, server) pair using "
        f"at most {budget['budget']:,} ports "
        f"({budget['fill_ratio']:.0%} of the range, where connect() stays fast). Each process may open only "
        f"{plan['connections_per_process']:,} files here, so {counted(plan['client_processes'], 'client process')} "
        f"and {counted(plan['server_processes'], 'server process')} shared the work. Next: `loopfan plan -c 1M`, "
        f"`loopfan doctor -c 1M`, or `loopfan run -c 50k 127.0.0.1:YOUR_PORT` against your own server."
    )


@click.command()
@click.option("-c", "--connections", type=int, default=DEMO_CONNECTIONS, show_default=True, hidden=True)
@click.option("--json", "json_path", metavar="FILE",
              help="Also write the report as JSON ('-': to stdout, the report then goes to stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No live progress.")
def command(connections: int, json_path: str | None, quiet: bool) -> int:
    """Hold 100,000 loopback connections against the built-in server, and explain how."""
    if json_path:
        check_writable(json_path, "the report", stdout=True)  # before the 10 s of work, not after
    console = report_console(json_path)
    console.print(f"loopfan demo: {connections:,} connections to the built-in server, held {DEMO_HOLD_S:.0f} s ...")
    opts = RunOptions(
        request=PlanRequest(connections=connections),
        config=RunConfig(hold_s=DEMO_HOLD_S),
        json_path=json_path,
        quiet=quiet,
    )
    result, rep = execute(opts, ["loopfan", *sys.argv[1:]])

    def show() -> None:
        console.print(report_renderable(rep))
        # Off a terminal the console is as wide as a line can be (tables stay whole): this paragraph
        # is wrapped at a reading width instead of running on for 800 columns in a CI log.
        console.print(Panel(explanation(rep), border_style="cyan", expand=console.is_terminal,
                            width=None if console.is_terminal else min(console.width, _READING_COLUMNS)))

    return after_delivery(exit_status(result), deliver(opts, rep, show))
