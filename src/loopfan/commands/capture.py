"""`loopfan capture`: record exactly the traffic of tagged addresses on lo, into a self-describing file.

Rules of this file: input is checked before the capture starts (exit 2); the capture always stops
(duration, count, Ctrl-C or SIGTERM) and its file is flushed and finished before loopfan exits.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType

import click

from loopfan.errors import UsageError
from loopfan.isolation.capture import (
    BACKENDS,
    FORMATS,
    CaptureSession,
    Target,
    display_filter,
    dropped_note,
    labels_text,
    merge_targets,
    name_filter,
    parse_duration,
    parse_target,
    replacing_note,
)
from loopfan.isolation.registry import TagRecord, active_tags
from loopfan.render import counted


def say(line: str) -> None:
    click.echo(f"loopfan: {line}", err=True)


@click.command()
@click.option("--source", "sources", multiple=True, metavar="ADDR[=LABEL]",
              help="An address to capture (repeatable); default: every active tag (loopfan tag --list).")
@click.option("-w", "--write", "path", metavar="FILE", help="Output file (default: loopfan-DATE-TIME.pcapng).")
@click.option("--duration", metavar="DURATION", help="Stop after this long (30s, 2m, 500ms).")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N packets.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pcapng", show_default=True,
              help="pcapng carries the labels (Name Resolution Block) and a comment listing the tags.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="dumpcap, tcpdump, or the built-in AF_PACKET reader (auto: the first one installed).")
def command(
    sources: tuple[str, ...], path: str | None, duration: str | None, count: int | None, fmt: str, backend: str
) -> int:
    """Capture exactly the traffic of tagged addresses on lo; print the Wireshark display filter.

    Stops after --duration, --count, or Ctrl-C, and always finishes the file.
    """
    seconds = parse_duration(duration) if duration else None
    tags = active_tags()
    targets = _targets(sources, tags)
    output = Path(path) if path else Path(time.strftime(f"loopfan-%Y%m%d-%H%M%S.{fmt}"))
    addresses = [t.address for t in targets]
    replacing = replacing_note(output)
    stop_signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signals.append(signum)

    # Signal handlers can only be set from the main thread (tests call main() from others).
    in_main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if in_main else ()
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        with CaptureSession(output, addresses, fmt=fmt, backend_name=backend, count=count) as session:
            session.start()
            limit = f" for {seconds:g}s" if seconds else ""  # ('--duration 1' said "for 1")
            say(f"capturing {' '.join(addresses)} on lo into {output} ({session.backend}){limit}; Ctrl-C stops")
            if replacing:
                say(replacing)
            say(f"until it stops, packets go to {session.partial} (kept there if loopfan is killed)")
            deadline = time.monotonic() + seconds if seconds else None
            while not stop_signals and not session.finished():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            stats = session.stop(targets)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    dropped = dropped_note(stats.dropped)
    say(
        f"{output}: {counted(stats.packets, 'packet')}, {counted(stats.connections, 'TCP connection')}, "
        f"{counted(stats.datagrams, 'UDP datagram')}{dropped}"
    )
    click.echo(f"display filter: {display_filter(addresses)}")
    labels = [t.label for t in targets if t.label]
    if labels and fmt == "pcapng":
        click.echo(f"by name (with name resolution on, e.g. tshark -N n): {name_filter(labels)}")
    elif labels:
        click.echo(f"labels (pcap has no room for them): {labels_text(targets)}")
    return 0


def _targets(sources: tuple[str, ...], tags: list[TagRecord]) -> list[Target]:
    if not sources:
        if not tags:
            raise UsageError(
                "no active tags to capture; give --source 127.0.0.5 (repeatable) or start one with loopfan tag"
            )
        return [Target(t.address, t.label, _detail(t)) for t in tags]
    out: list[Target] = []
    for text in sources:
        target = parse_target(text)
        known = next((t for t in tags if t.address == target.address), None)
        if known is not None:
            target = Target(target.address, target.label or known.label, _detail(known))
        out.append(target)
    return merge_targets(out)


def _detail(record: TagRecord) -> str:
    return f"command={record.command!r} pid={record.pid} started={record.started}"
