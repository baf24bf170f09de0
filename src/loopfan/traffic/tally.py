"""Per-worker traffic counters shared by the per-connection protocol objects.

Rules of this file: plain dicts of counts keyed by stable names (the report explains each name);
cumulative for the worker's life, so the parent always takes the latest and a lost message loses
nothing but freshness.
"""

from __future__ import annotations

# The first error response's body is kept up to this many bytes: enough for a server's one-line
# reason (nginx: "The plain HTTP request was sent to HTTPS port"), little enough to carry in every
# snapshot.
SAMPLE_BYTES = 200


class Tally:
    __slots__ = ("count", "errors", "first_error_body", "first_error_status", "last_status", "statuses")

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}  # cause -> count (per-connection failures, bad replies)
        self.statuses: dict[str, int] = {}  # "http-2xx", "ws-close-1000", ... -> count
        self.count = 0  # sum of errors: lets a caller see cheaply whether a call added any
        self.last_status: str | None = None  # the name status() counted last
        # The worker's first HTTP error response (4xx and up): its status, and the start of its body,
        # since a status class alone cannot tell "use https://" from "wrong path" (the report reads it).
        self.first_error_status = 0
        self.first_error_body = b""

    def sample_error(self, status: int, body: bytes) -> None:
        """Keep the first error response (later ones are not kept: one sample says the server's words)."""
        if not self.first_error_status:
            self.first_error_status = status
            self.first_error_body = body[:SAMPLE_BYTES]

    def sample(self) -> dict[str, object]:
        """The first error response for the snapshot ({} if none): its status and body's start as text."""
        if not self.first_error_status:
            return {}
        return {"status": self.first_error_status,
                "body": self.first_error_body.decode("utf-8", "replace")}

    def error(self, cause: str, n: int = 1) -> None:
        self.errors[cause] = self.errors.get(cause, 0) + n
        self.count += n

    def status(self, name: str, n: int = 1) -> None:
        self.statuses[name] = self.statuses.get(name, 0) + n
        self.last_status = name
