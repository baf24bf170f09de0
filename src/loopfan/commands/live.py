"""Live progress for runs: a rich progress bar on a terminal, plain lines otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from loopfan.engine.runner import Progress as RunProgress

PLAIN_EVERY_S = 2.0


def _failures(p: RunProgress) -> str:
    if not p.client.failed:
        return "no failures"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(p.client.failed.items(), key=lambda kv: -kv[1])[:3])


def describe(p: RunProgress) -> str:
    left = "" if p.hold_left_s is None else f", {p.hold_left_s:.0f}s left"
    server = f", server accepted {p.server.established:,}" if p.server is not None else ""
    return (
        f"{p.phase}: {p.client.open:,}/{p.target:,} open, {p.rate_per_s:,.0f} connects/s, "
        f"{_failures(p)}{server}, {p.elapsed_s:.1f}s{left}"
    )


class LiveProgress:
    """Callable progress sink; use as a context manager around the run."""

    def __init__(self, *, quiet: bool, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.tty = self.console.is_terminal and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._next_plain = 0.0

    def __enter__(self) -> LiveProgress:
        return self

    def start(self) -> None:
        """Begin drawing (call after worker processes are forked: rich refreshes from a thread)."""
        if self.quiet or not self.tty:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.fields[phase]:<12}"),
            BarColumn(),
            TextColumn("{task.completed:>12,.0f}/{task.total:,.0f}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("run", total=1, phase="starting", detail="")

    def __call__(self, p: RunProgress) -> None:
        if self.quiet:
            return
        if self._progress is not None and self._task is not None:
            left = "" if p.hold_left_s is None else f" {p.hold_left_s:.0f}s left"
            server = f" srv {p.server.established:,}" if p.server is not None else ""
            detail = f"{p.rate_per_s:,.0f}/s  {_failures(p)}{server}{left}"
            self._progress.update(self._task, total=p.target, completed=p.client.open, phase=p.phase,
                                  detail=detail)
            return
        now = time.monotonic()
        if now >= self._next_plain:
            self._next_plain = now + PLAIN_EVERY_S
            self.console.print(describe(p), highlight=False, soft_wrap=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
