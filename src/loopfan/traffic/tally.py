"""Per-worker traffic counters shared by the per-connection protocol objects.

Rules of this file: plain dicts of counts keyed by stable names (the report explains each name);
cumulative for the worker's life, so the parent always takes the latest and a lost message loses
nothing but freshness.
"""

from __future__ import annotations


class Tally:
    __slots__ = ("count", "errors", "last_status", "statuses")

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}  # cause -> count (per-connection failures, bad replies)
        self.statuses: dict[str, int] = {}  # "http-2xx", "ws-close-1000", ... -> count
        self.count = 0  # sum of errors: lets a caller see cheaply whether a call added any
        self.last_status: str | None = None  # the name status() counted last

    def error(self, cause: str, n: int = 1) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + n
        self.count += n

    def status(self, name: str, n: int = 1) -> None:
        self.statuses[name] = self.statuses.get(name, 0) + n
        self.last_status = name
