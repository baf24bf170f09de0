"""`loopfan serve`: the built-in multi-address server, sharded over processes, until Ctrl-C."""

from __future__ import annotations

import ipaddress
import signal
import time

import click

from loopfan.commands.common import (
    COUNT,
    DURATION,
    CountType,
    allow_option,
    build_targets,
    check_writable,
    write_json,
)
from loopfan.commands.console import text_console
from loopfan.commands.traffic_opts import server_config
from loopfan.engine.causes import explain
from loopfan.engine.runner import Totals
from loopfan.engine.serve import BuiltinServer, process_capacity, shard_endpoints
from loopfan.errors import ServerStartError, UsageError
from loopfan.hostfacts import facts_for_workers, taken_endpoints
from loopfan.planner import PlanRequest, plan
from loopfan.pools import Endpoint
from loopfan.render import counted


@click.command()
@click.option("--listen", "listen", multiple=True, metavar="ENDPOINTS",
              help="Where to listen: 127.0.0.1:7070, 127.100.0.1-127.100.0.8:7070-7071 (repeatable). "
              "Default: the endpoints `loopfan plan -c N` chooses.")
@click.option("-c", "--connections", type=COUNT, default=100_000, show_default=True,
              help="Connections to be ready for: decides how many processes share the endpoints.")
@click.option("--mode", type=click.Choice(["hold", "echo", "discard", "http", "ws"]), default="hold", show_default=True,
              help="hold: keep connections open and read nothing; echo: send back what arrives; discard: read "
              "and drop it; http: answer HTTP/1.1 requests (see --response-size); ws: echo WebSocket messages.")
@click.option("--response-size", type=click.IntRange(min=0), default=128, show_default=True, metavar="BYTES",
              help="Mode http: the response body size.")
@click.option("--duration", type=DURATION, default=None, help="Stop after this long (default: until Ctrl-C).")
@click.option("--json", "json_path", metavar="FILE", help="Write final counts as JSON when stopping.")
@click.option("--per-process", type=CountType("--per-process"), default=None, metavar="N",
              help="At most N connections per server process.")
@allow_option
def command(listen: tuple[str, ...], connections: int, mode: str, response_size: int, duration: float | None,
            json_path: str | None, per_process: int | None, allow_non_loopback: bool) -> int:
    """Run loopfan's built-in server on many loopback addresses (--mode hold, echo, discard, http or ws)."""
    if json_path:
        check_writable(json_path, "the counts", stdout=True)  # before serving, not after an hour of it
    facts = facts_for_workers()
    if listen:
        endpoints = build_targets(listen, allow_non_loopback)
        shards = shard_endpoints(endpoints, connections, facts, per_process)
        capacity_per_process = process_capacity(facts, per_process)
    else:
        p = plan(PlanRequest(connections=connections, max_per_process=per_process), facts)
        shards = p.server_shards
        capacity_per_process = p.per_process  # (the planner's figure: it may leave more headroom)
    # Probed as the server would bind, but without SO_REUSEPORT: with it a second serve on the same
    # endpoints starts quietly and the kernel splits the clients between the two (QA: an echo server
    # and a hold server answering one port). A taken endpoint is said before any process starts.
    endpoints_used = sorted({(e.address, e.port) for shard in shards for e in shard.listen})
    taken = sorted(taken_endpoints(endpoints_used))
    if taken:
        where = f"[{taken[0][0]}]:{taken[0][1]}" if ":" in taken[0][0] else f"{taken[0][0]}:{taken[0][1]}"
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise UsageError(f"{where}{more} is taken: another program listens there (another loopfan serve?); "
                         "stop it, or choose other endpoints with --listen ENDPOINTS")
    console = text_console(stderr=True)
    server = BuiltinServer(shards, server_config(mode, response_size))
    stop = {"signal": ""}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except ServerStartError as exc:  # the engine names no option: serve's is --listen
            raise ServerStartError(f"{exc}; choose other endpoints with --listen ENDPOINTS") from None
        with server:
            eps = server.endpoints
            # In address order (the shards interleave them), the count with separators.
            first = sorted(eps, key=_address_order)[:4]
            shown = ", ".join(str(e) for e in first) + (f", ... ({len(eps) - 4:,} more)" if len(eps) > 4 else "")
            where = f"{counted(len(eps), 'endpoint')} in {counted(len(shards), 'process')}"
            console.print(f"listening on {where}, mode {mode}: {shown}", highlight=False)
            shared = len(shards) // len(eps) if server.config.reuse_port else 1
            console.print(f"ready for {connections:,} connections (-c), up to {capacity_per_process:,} per process"
                          + (f"; each endpoint shared by {shared} processes (SO_REUSEPORT)" if shared > 1 else ""),
                          highlight=False)
            deadline = None if duration is None else time.monotonic() + duration
            next_line = 0.0
            while not stop["signal"] and (deadline is None or time.monotonic() < deadline):
                totals = server.poll(0.25)
                if server.failed_workers:
                    console.print(f"loopfan: {server.failed_workers[0]}", style="red")
                now = time.monotonic()
                if now >= next_line:
                    next_line = now + 2.0
                    console.print(f"open {totals.open:,}  accepted {totals.established:,}  "
                                  f"closed by clients {totals.peer_closed:,}{_failed_brief(totals)}", highlight=False)
            totals = server.stop()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    console.print(f"stopped: accepted {totals.established:,}, peak open {totals.peak_open:,}", highlight=False)
    for line in failure_lines(totals.failed, connections, capacity_per_process, len(shards)):
        console.print(line, style="red", highlight=False)
    if json_path:
        write_json(json_path, {"schema": "loopfan.serve/1", "listen": [str(e) for e in server.endpoints],
                               "accepted": totals.established, "peak_open": totals.peak_open,
                               "failed": totals.failed, "mode": mode})
    return {"SIGINT": 130, "SIGTERM": 143}.get(stop["signal"], 0)


def _failed_brief(totals: Totals) -> str:
    if not totals.failed:
        return ""
    return "  failed " + ", ".join(f"{c} {n:,}" for c, n in sorted(totals.failed.items(), key=lambda kv: -kv[1]))


def failure_lines(failed: dict[str, int], connections: int, per_process: int, processes: int) -> list[str]:
    """The server's failures by cause, each with what it means here and the knob that fixes it."""
    lines = []
    for cause, n in sorted(failed.items(), key=lambda kv: -kv[1]):
        if cause == "EMFILE":
            # The client's view of the same event is a connect timeout or reset: say it here, where
            # the cause is known.
            meaning = (f"a server process reached its open-file limit (each of the {processes} holds up to "
                       f"{per_process:,} connections; serve was started for -c {connections:,}, and the "
                       "clients' connects queued or timed out meanwhile)")
            fix = ("start serve with -c at least the connections the clients open, so it starts enough "
                   "processes (the clients must spread them evenly over the --listen endpoints)")
        else:
            meaning, fix = explain(cause).meaning, explain(cause).fix
        lines.append(f"failed {cause} {n:,}: {meaning}; fix: {fix}")
    return lines


def _address_order(e: Endpoint) -> tuple[int, int, int]:
    ip = ipaddress.ip_address(e.address)  # (IPv4 and IPv6 do not compare: version first)
    return ip.version, int(ip), e.port
