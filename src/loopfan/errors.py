"""The one exception tree of loopfan.

Rules of this file: every error loopfan raises on purpose derives from `LoopfanError` and carries
a message that names the problem *and* what to do about it, in one line. The CLI prints that line
and exits with the error's `exit_status`; it never shows a traceback for these.

    LoopfanError
    +-- UsageError          ours to report, the user's to fix: bad input (exit 2)
    |   +-- PoolSyntaxError     an address, range, CIDR or endpoint that does not parse
    |   +-- NotLoopbackError    a non-loopback address without --allow-non-loopback
    +-- HostError           the host refuses or lacks something (exit 1): privileges, a missing
    |   |                   kernel feature, a limit that cannot be lifted
    |   +-- ServerStartError    the built-in server could not listen where it was planned; the
    |                           command that started it adds the fix in its own options
    +-- RunError            a run could not go on as a whole (exit 1)

Per-connection failures are never exceptions: they are counted by cause (see `causes`).
"""

from __future__ import annotations


class LoopfanError(Exception):
    """Root of every error loopfan raises on purpose."""

    exit_status = 1


class UsageError(LoopfanError):
    """Bad input: the message says what was wrong and how to write it instead."""

    exit_status = 2


class PoolSyntaxError(UsageError):
    """An address pool or endpoint list that does not parse."""


class NotLoopbackError(UsageError):
    """A non-loopback address given without the explicit allowance."""


class HostError(LoopfanError):
    """The host lacks a privilege, a kernel feature or a resource that cannot be raised."""


class ServerStartError(HostError):
    """The built-in server did not start (an endpoint taken meanwhile, a timeout)."""


class RunError(LoopfanError):
    """A run failed as a whole (not one connection: those are counted, not raised)."""
