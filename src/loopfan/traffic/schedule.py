"""The open-model send schedule: when each connection's next message is due (pure: takes `now`).

Rules of this file: a send's latency is measured from its *scheduled* time, never from when the
client got round to sending it. If a server stalls, the messages that were due during the stall
are still due at their original times, so their latency includes the stall (no coordinated
omission, as in wrk2). Connections are staggered evenly over one interval so a run does not start
with every connection sending in the same millisecond.
"""

from __future__ import annotations

import heapq


class OpenSchedule:
    """Every connection (an index 0..n-1) sends every `interval_s`, starting at a staggered offset."""

    __slots__ = ("_gone", "_heap", "interval_s")

    def __init__(self, n: int, rate_per_conn_s: float, start_s: float) -> None:
        if rate_per_conn_s <= 0:
            raise ValueError("an open schedule needs a rate > 0")
        self.interval_s = 1.0 / rate_per_conn_s
        step = self.interval_s / n if n else 0.0
        # Already ordered by time, so the list is a valid heap as it stands.
        self._heap: list[tuple[float, int]] = [(start_s + i * step, i) for i in range(n)]
        self._gone: set[int] = set()

    def take_due(self, now_s: float, limit: int = 1 << 30) -> list[tuple[float, int]]:
        """Pop every (scheduled time, index) due at `now_s` (at most `limit`), and schedule each index's
        next send one interval after its scheduled time (not after now: the schedule never drifts)."""
        heap = self._heap
        out: list[tuple[float, int]] = []
        interval = self.interval_s
        gone = self._gone
        while heap and heap[0][0] <= now_s and len(out) < limit:
            due, i = heap[0]
            if i in gone:  # removed lazily: dropped here instead of searched for in remove()
                heapq.heappop(heap)
                gone.discard(i)
                continue
            heapq.heapreplace(heap, (due + interval, i))
            out.append((due, i))
        return out

    def next_due_s(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def remove(self, index: int) -> None:
        """Stop scheduling `index` (its connection is gone). O(1): its entry is dropped when due."""
        self._gone.add(index)

    def __len__(self) -> int:
        return len(self._heap) - len(self._gone)
