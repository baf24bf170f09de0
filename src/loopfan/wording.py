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
