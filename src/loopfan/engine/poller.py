"""The workers' event poller: epoll on Linux; on macOS and BSD an epoll-shaped adapter over selectors.

Rules of this file: the workers speak epoll (register/modify/unregister/poll with EPOLL* masks)
because that is the fast path on Linux, where loopfan holds millions of connections. Elsewhere
there is no epoll, so this module gives the same names: flag constants and `new_poller()`.

The adapter is level-triggered (selectors has no edge trigger), so a worker must not leave a
socket registered for writability once it no longer wants it (client.py switches a connected
socket to its hold events). Readability of a socket registered for RDHUP is told apart from data
with a one-byte MSG_PEEK: EOF or an error becomes RDHUP|HUP (and ERR), as epoll reports it.
Set LOOPFAN_POLLER=selectors to use the adapter on Linux too (the tests do, so the macOS path
is exercised on every CI run).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
from typing import Any

_USE_EPOLL = hasattr(select, "epoll") and os.environ.get("LOOPFAN_POLLER") != "selectors"

if _USE_EPOLL:
    IN = select.EPOLLIN
    OUT = select.EPOLLOUT
    ERR = select.EPOLLERR
    HUP = select.EPOLLHUP
    RDHUP = select.EPOLLRDHUP
    ET = select.EPOLLET
else:  # the same bit values as Linux, so masks read the same in logs and tests
    IN, OUT, ERR, HUP, RDHUP, ET = 0x001, 0x004, 0x008, 0x010, 0x2000, 1 << 31


class SelectorPoller:
    """epoll's interface over selectors.DefaultSelector (kqueue on macOS/BSD)."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._events: dict[int, int] = {}

    @staticmethod
    def _mask(events: int) -> int:
        mask = selectors.EVENT_READ if events & (IN | RDHUP) else 0
        if events & OUT:
            mask |= selectors.EVENT_WRITE
        return mask or selectors.EVENT_READ

    def register(self, fd: int, events: int = IN | OUT) -> None:
        self._sel.register(fd, self._mask(events))
        self._events[fd] = events

    def modify(self, fd: int, events: int) -> None:
        self._sel.modify(fd, self._mask(events))
        self._events[fd] = events

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)
        self._events.pop(fd, None)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        if timeout is not None and timeout < 0:
            timeout = None
        out: list[tuple[int, int]] = []
        for key, mask in self._sel.select(timeout):
            fd = key.fd
            ev = 0
            if mask & selectors.EVENT_WRITE:
                ev |= OUT
            if mask & selectors.EVENT_READ:
                ev |= IN
                if self._events.get(fd, 0) & RDHUP:
                    ev |= _peek_hangup(fd)
            out.append((fd, ev))
            if 0 < maxevents <= len(out):
                break
        return out

    def close(self) -> None:
        self._sel.close()

    def fileno(self) -> int:
        return self._sel.fileno() if hasattr(self._sel, "fileno") else -1


def _peek_hangup(fd: int) -> int:
    """RDHUP|HUP when the peer closed (EOF), plus ERR on a socket error; 0 when data is waiting."""
    s = socket.socket(fileno=fd)
    try:
        data = s.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0))
    except BlockingIOError:
        return 0
    except OSError:
        return RDHUP | HUP | ERR
    finally:
        s.detach()
    return 0 if data else RDHUP | HUP


def new_poller() -> Any:
    """select.epoll() on Linux, else the selectors adapter (same methods, same flag names)."""
    return select.epoll() if _USE_EPOLL else SelectorPoller()
