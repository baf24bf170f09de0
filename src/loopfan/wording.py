"""Numbers in sentences: one place that makes nouns agree with their counts. No imports of
loopfan's own, so every module may use it (render.py imports doctor.py, which uses it)."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """'1 source address', '2 source addresses', '5,129 client processes': the number with
    thousands separators and the noun agreeing with it."""
    return f"{n:,} {singular if n == 1 else plural or _plural(singular)}"


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def traffic_nouns(kind: str | None, *, one: bool = False) -> tuple[str, str]:
    """What the units of traffic and its answer are called in reports: HTTP users count requests and
    responses (wrk's Requests/sec, k6's http_reqs), the other protocols messages and replies. The
    JSON keeps one set of names for every protocol (messages_per_s, replies), so a CI script reads
    any run the same way. one=True: the singular ("request", "response")."""
    if kind == "http":
        return ("request", "response") if one else ("requests", "responses")
    return ("message", "reply") if one else ("messages", "replies")


# WebSocket frames other than text, said after the protocol: a ping run measures the server's
# control-frame path (no application handler), so its figures are not a text run's.
_WS_OPCODE_WORDS = {"ping": "pings", "binary": "binary"}


def protocol_words(kind: str | None, ws_opcode: str | None = None) -> str:
    """The traffic's protocol as reports say it: 'http', 'echo', and for WebSocket the frames when
    they are not text ('ws pings' for --ws-ping, 'ws binary' for --ws-binary). The JSON keeps the
    kind and the opcode apart (traffic.kind, identity.config.traffic.ws_opcode)."""
    words = kind or "-"
    if kind == "ws" and ws_opcode in _WS_OPCODE_WORDS:
        words += " " + _WS_OPCODE_WORDS[ws_opcode]
    return words
