"""Raw TCP replies: where one reply ends (echo, fixed length, marker), per connection, sans I/O.

Rules of this file: feed() takes the bytes as read and returns how many replies they completed; a
reply that cannot be right (an echo that differs) sets `dead` to the cause and stops the connection.
The echo case with the whole reply in one read (the usual case for small messages on loopback) is
one comparison: this is the hot path of the echo benchmark.
"""

from __future__ import annotations

from loopfan.traffic.config import EXPECT_CONTAINS, EXPECT_ECHO, EXPECT_END, EXPECT_LENGTH, EXPECT_NONE

# A reply we cannot frame (no marker yet) keeps at most this much: a server that never sends the
# marker costs a timeout, not unbounded memory.
_MAX_KEEP = 1 << 16


class RawReplies:
    __slots__ = ("buf", "dead", "length", "marker", "message", "mode", "partial", "repeat")

    ready = True  # no opening handshake
    out = b""  # never anything to answer on our own
    fast = True  # framing depends on nothing but `buf` (the traffic client's quick path relies on it)

    def __init__(self, message: bytes, mode: str, length: int = 0, marker: bytes = b"") -> None:
        if mode not in (EXPECT_ECHO, EXPECT_LENGTH, EXPECT_END, EXPECT_CONTAINS, EXPECT_NONE):
            raise ValueError(f"unknown reply framing {mode!r}")
        self.message = message
        self.repeat = message  # every message is the same bytes
        self.mode = mode
        self.length = len(message) if mode == EXPECT_ECHO else length
        self.marker = marker
        self.buf = b""
        self.dead: str | None = None
        self.partial = False  # some bytes of an unfinished reply have arrived

    def feed(self, data: bytes) -> int:
        mode = self.mode
        if mode == EXPECT_ECHO:
            if not self.buf and data == self.message:
                return 1
            return self._echo(self.buf + data)
        if mode == EXPECT_LENGTH:
            total = len(self.buf) + len(data)
            n, rest = divmod(total, self.length)
            self.buf = b"\0" * rest if rest else b""  # only the count of leftover bytes matters
            self.partial = rest > 0
            return n
        if mode == EXPECT_NONE:
            return 0
        # A marker ends (or marks) each reply; keep the tail that may hold the start of a split marker.
        buf = self.buf + data
        marker = self.marker
        n = buf.count(marker)
        if n:
            buf = buf[buf.rfind(marker) + len(marker) :]
        if len(buf) > _MAX_KEEP:
            buf = buf[-len(marker) :]
        self.buf = buf
        self.partial = bool(buf)
        return n

    def _echo(self, buf: bytes) -> int:
        msg = self.message
        size = self.length
        n = 0
        while len(buf) >= size:
            if buf[:size] != msg:
                self.dead = "reply-mismatch"
                self.buf = b""
                return n
            buf = buf[size:]
            n += 1
        if buf and not msg.startswith(buf):
            self.dead = "reply-mismatch"
            buf = b""
        self.buf = buf
        self.partial = bool(buf)
        return n
