"""How to bind a client to a source address by hand, per language and tool (no privileges needed).

Rules of this file: pure text. `advice_for(command, address)` picks the entries that match the
command (by its program name) or returns them all; `loopfan tag` prints it when it cannot tag,
and docs/isolation.md holds the same list with caveats. Every snippet was written against the
tool's documented option; the ones marked as checked were run on Linux with 127.0.0.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Advice:
    topic: str
    programs: tuple[str, ...]  # program names that select this entry
    template: str  # {addr} is the source address


ADVICE: tuple[Advice, ...] = (
    Advice(
        "Python socket", ("python", "python3"), "socket.create_connection((host, port), source_address=('{addr}', 0))"
    ),
    Advice(
        "Python asyncio", ("python", "python3"), "await asyncio.open_connection(host, port, local_addr=('{addr}', 0))"
    ),
    Advice("httpx", ("python", "python3"), "httpx.Client(transport=httpx.HTTPTransport(local_address='{addr}'))"),
    Advice(
        "aiohttp",
        ("python", "python3"),
        "aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=('{addr}', 0)))",
    ),
    Advice(
        "requests",
        ("python", "python3"),
        "requests has no option: mount an HTTPAdapter whose init_poolmanager passes "
        "source_address=('{addr}', 0) (see docs/isolation.md)",
    ),
    Advice("curl", ("curl",), "curl --interface {addr} URL"),
    Advice("nc", ("nc", "ncat", "netcat"), "nc -s {addr} HOST PORT"),
    Advice("socat", ("socat",), "socat - TCP:HOST:PORT,bind={addr}"),
    Advice(
        "Go", ("go",), 'd := net.Dialer{{LocalAddr: &net.TCPAddr{{IP: net.ParseIP("{addr}")}}}}; d.Dial("tcp", addr)'
    ),
    Advice("Java", ("java",), 'new Socket(host, port, InetAddress.getByName("{addr}"), 0)'),
    Advice(
        "Node",
        ("node", "nodejs", "npm", "npx"),
        "net.connect({{host, port, localAddress: '{addr}'}})  (http: {{localAddress}})",
    ),
    Advice("Erlang", ("erl", "escript", "elixir", "iex", "mix"), "gen_tcp:connect(Host, Port, [{{ip, {{{erl}}}}}])"),
    Advice(
        "Kafka clients",
        ("kafka-console-producer", "kafka-console-consumer", "kafka-producer-perf-test", "kcat", "kafkacat"),
        "the Java client has no source-address setting: use `loopfan tag` (Linux), or bind on the "
        "broker side of a proxy such as socat",
    ),
)


def advice_for(command: str | None, address: str) -> list[str]:
    """Lines of advice for this command's program (all entries when it matches none)."""
    name = Path(command).name if command else ""
    chosen = [a for a in ADVICE if name in a.programs] or list(ADVICE)
    erl = address.replace(".", ",")
    return [f"  {a.topic:<15} {a.template.format(addr=address, erl=erl)}" for a in chosen]


def advice_text(command: str | None, address: str, *, macos: bool = False) -> str:
    lines = [f"To bind the client to {address} yourself:"]
    lines += advice_for(command, address)
    if macos:
        lines.append(f"  macOS first: sudo ifconfig lo0 alias {address} up   (or: loopfan alias add {address})")
    lines.append("  (more, with caveats: docs/isolation.md)")
    return "\n".join(lines)
