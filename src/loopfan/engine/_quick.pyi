"""Types of the optional C module (_quick.c): the quick paths of the traffic client and server."""

from typing import Any

def quick_replies(ready: list[tuple[int, int]], conns: dict[int, Any], learned: bytes, end: float,
                  warm_end: float, hist: dict[int, int], pushed: dict[int, tuple[bytes | OSError, float]],
                  trouble: list[tuple[int, bytes, int]]) -> tuple[list[tuple[int, int]], int, int, int, int]: ...

def serve_quick(ready: list[tuple[int, int]], conns: set[int], pending: dict[int, bytes], state: dict[int, Any],
                learned: bytes | None, response: bytes, echo: bool, framer_type: type, ws_type: type,
                pushed: list[tuple[int, bytes | None]],
                trouble: list[tuple[int, bytes, int]]) -> tuple[list[tuple[int, int]], int, int]: ...
