"""Where the built-in server can listen: the plan, moved past ports other programs listen on.
Shared by `run` (which then listens there) and `plan` (which shows where run would)."""

from __future__ import annotations

from dataclasses import replace

from loopfan.errors import HostError
from loopfan.hostfacts import HostFacts, taken_endpoints
from loopfan.planner import SERVER_MOVES, Plan, PlanRequest, moved_server, plan, server_endpoints
from loopfan.pools import Endpoint


def plan_free_server(request: PlanRequest, facts: HostFacts) -> tuple[Plan, str | None]:
    """The plan, its built-in server moved past endpoints another program listens on (a second run on
    this host) unless the user chose them (then the planner's UsageError). The probe is the I/O
    here; where to go next is the planner's (moved_server). A move is noted in the plan (so in the
    JSON report) and returned, to be said."""
    p = first = plan(request, facts)
    for _ in range(SERVER_MOVES):
        taken = taken_endpoints((e.address, e.port) for e in server_endpoints(p))
        moved = moved_server(request, p, frozenset(Endpoint(a, port) for a, port in taken))
        if moved is None:
            break
        request, p = moved, plan(moved, facts)
    else:
        raise HostError(f"the built-in server found no free port in {SERVER_MOVES} tries from "
                        f"{server_endpoints(first)[0]}: other programs listen there; choose its endpoints "
                        "with --listen POOL:PORT, e.g. 127.101.0.0/16:9000")
    if p is not first:
        note = (f"the built-in server listens on port {server_endpoints(p)[0].port}: port "
                f"{server_endpoints(first)[0].port} was taken on its addresses (another program listens there)")
        return replace(p, notes=(*p.notes, note)), note
    return p, None
