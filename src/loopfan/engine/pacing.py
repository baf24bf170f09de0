"""Connect pacing: a token bucket that takes `now` as an argument (pure, like tcpkali's pacefier)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Pacer:
    """Allows `rate_per_s` events per second on average, with bursts up to `burst` events.

    rate_per_s <= 0 means unpaced: allow() always grants what is asked.
    """

    rate_per_s: float
    burst: float = 64.0
    _tokens: float = 0.0
    _last_s: float | None = None

    def allow(self, now_s: float, wanted: int) -> int:
        """How many of `wanted` events may happen at `now_s` (consumes them)."""
        if self.rate_per_s <= 0:
            return wanted
        if self._last_s is None:
            self._last_s = now_s
            self._tokens = min(self.burst, 1.0)
        elapsed = max(0.0, now_s - self._last_s)
        self._last_s = now_s
        self._tokens = min(max(self.burst, 1.0), self._tokens + elapsed * self.rate_per_s)
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait_s(self) -> float:
        """How long until the next event is allowed (0 when unpaced or a token is ready)."""
        if self.rate_per_s <= 0 or self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate_per_s
