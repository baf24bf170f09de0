"""`loopfan plan`: the capacity plan for N connections, as text or JSON. Opens no socket."""

from __future__ import annotations

import click

from loopfan import costs
from loopfan.commands.common import (
    allow_option,
    build_sources,
    build_targets,
    connections_option,
    min_processes,
    sources_option,
    write_json,
)
from loopfan.commands.console import text_console
from loopfan.commands.free_server import plan_free_server
from loopfan.commands.traffic_opts import split_url_targets
from loopfan.hostfacts import read_host_facts
from loopfan.planner import PlanRequest
from loopfan.render import plan_headline, plan_table, plan_to_dict


@click.command()
@connections_option()
@click.argument("targets", nargs=-1, metavar="[TARGET ...]")
@sources_option
@allow_option
@click.option(
    "--fill-ratio",
    type=click.FloatRange(0.01, 1.0),
    default=None,
    metavar="RATIO",
    help=f"Fill each port group at most this much of the ephemeral port range (default: "
    f"{costs.DEFAULT_FILL_RATIO}, the measured safe ratio).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema loopfan.plan/1).")
def command(
    connections: int,
    targets: tuple[str, ...],
    sources: str | None,
    allow_non_loopback: bool,
    fill_ratio: float | None,
    as_json: bool,
) -> int:
    """Plan N connections: source addresses, groups, processes, memory and the first limit.

    TARGET is ADDRESS:PORT with ranges allowed (127.0.0.1-127.0.0.8:9000-9003), or a URL as `run`
    takes it (http://127.0.0.1:8080/path, ws://127.0.0.1:9000/); with no TARGET the plan is for
    loopfan's built-in server.
    """
    # The same parser as `run`, and the same process count: a URL target means traffic there.
    plain, scheme, _ = split_url_targets(targets)
    talking = min_processes(talking=scheme is not None, per_process=None)
    request = PlanRequest(
        connections=connections,
        targets=build_targets(plain, allow_non_loopback),
        min_client_processes=talking,
        min_server_processes=talking,
        sources=build_sources(sources, allow_non_loopback),
        fill_ratio=fill_ratio if fill_ratio is not None else costs.DEFAULT_FILL_RATIO,
    )
    # As `run` will: the built-in server moved past ports other programs listen on (a second run).
    p, _ = plan_free_server(request, read_host_facts())  # (the move is among the plan's notes)
    if as_json:
        write_json("-", plan_to_dict(p))
    else:
        console = text_console()
        console.print(plan_headline(p))
        console.print(plan_table(p))
    return 0  # (informational: `loopfan doctor -c N` is the command whose exit status says "would it work")
