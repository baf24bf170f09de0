"""Options and value builders shared by the commands (the CLI edge: argv text -> frozen values)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shlex
import socket
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import click

from loopfan.errors import NotLoopbackError, UsageError
from loopfan.pools import DEFAULT_SOURCE_POOL, AddressPool, Endpoint, ip_to_str, parse_endpoints, parse_pool

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_SUFFIXES = {"k": 1_000, "m": 1_000_000}


def _scaled(text: str, what: str, example: str) -> float:
    """'100000', '100_000', '100k', '1M', '1.5M' -> the number (k = 1,000, M = 1,000,000)."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    mult = 1
    if t and t[-1] in _SUFFIXES:
        mult = _SUFFIXES[t[-1]]
        t = t[:-1]
    try:
        value = float(t) * mult if "." in t else int(t) * mult
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"{what} {text!r} is not a number; write e.g. {example}")
    return float(value)


def parse_count(text: str, what: str = "connections") -> int:
    """'100000', '100_000', '100k', '1M', '1.5M' -> int."""
    value = _scaled(text, what, "1000, 100k or 1M")
    if value != int(value) or value <= 0:
        raise UsageError(f"{what} must be a whole number of at least 1 (got {text!r})")
    return int(value)


def parse_rate(text: str, what: str = "rate") -> float:
    """A rate in messages per second, with the same suffixes as a count: '500', '2.5', '10k', '1.5M'."""
    value = _scaled(text, what, "500, 2.5, 10k or 1M")
    if value <= 0:
        raise UsageError(f"{what} must be more than 0 per second (got {text!r})")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """'10', '10s', '500ms', '2m', '1h' -> seconds; 'forever' / 'inf' -> None (until interrupted)."""
    t = text.strip().lower()
    if t in ("forever", "inf", "infinite"):
        return None
    for unit in ("ms", "s", "m", "h"):
        if t.endswith(unit):
            number, scale = t[: -len(unit)], _DURATION_UNITS[unit]
            break
    else:
        number, scale = t, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise UsageError(f"duration {text!r} is not understood; write e.g. 30s, 500ms, 2m or forever") from None
    if value < 0:
        raise UsageError(f"duration {text!r} is negative; write e.g. 30s")
    return value


class ParsedType(click.ParamType, Generic[T]):  # type: ignore[type-arg]
    """A click type whose text goes through one of loopfan's parsers: its UsageError becomes click's
    one-line "Invalid value for ..." (exit 2). Values already parsed (defaults) pass through."""

    def __init__(self, name: str, parse: Callable[[str], T], parsed: type | tuple[type, ...]) -> None:
        self.name = name
        self._parse = parse
        self._parsed = parsed

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if value is None or isinstance(value, self._parsed):
            return cast(T, value)
        try:
            return self._parse(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class DurationType(ParsedType[float | None]):
    def __init__(self) -> None:
        super().__init__("DURATION", parse_duration, float)


DURATION = DurationType()


class CountType(ParsedType[int]):
    def __init__(self, what: str = "connections") -> None:
        super().__init__("N", lambda text: parse_count(text, what), int)


class RateType(ParsedType[float]):
    """Messages per second: a positive number, with a count's k/M suffixes (10k = 10,000)."""

    def __init__(self) -> None:
        super().__init__("R", parse_rate, float)


RATE = RateType()
COUNT = CountType()


def connections_option(default: int | None = None, required: bool = True) -> Callable[[F], F]:
    # Click >= 8.3 takes an explicit default=None as a given value and skips the required check
    # (then `loopfan plan` without -c crashed on None): pass a default only when there is one.
    extra: dict[str, Any] = {"default": default} if default is not None else {}
    return click.option(
        "-c",
        "--connections",
        type=COUNT,
        required=required and default is None,
        help="How many concurrent connections (100000, 100k, 1M).",
        **extra,
    )


def sources_option(f: F) -> F:
    return click.option(
        "--sources",
        metavar="POOL",
        default=None,
        help="Client source addresses: 127.0.0.2-127.0.3.250, 127.1.0.0/16, '!127.0.0.9' to exclude; "
        "default: all of 127.0.0.0/8 but 127.0.0.1.",
    )(f)


def allow_option(f: F) -> F:
    return click.option(
        "--allow-non-loopback",
        is_flag=True,
        help="Accept addresses outside 127.0.0.0/8 and ::1 (they must belong to this host).",
    )(f)


def assert_local(addresses: list[str]) -> None:
    """Non-loopback addresses are allowed only if they are this host's own: try to bind each."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((address, 0))
            except OSError:
                raise NotLoopbackError(
                    f"{address} is not an address of this host; loopfan only talks to addresses on this "
                    "machine"
                ) from None


def note(text: str) -> None:
    """'loopfan: note: TEXT' on stderr - or {"note": TEXT}, one JSON object, when stderr is the
    run's `--progress ndjson` stream: a note there (the built-in server moved off a taken port, as
    when two CI jobs share a machine) was the one line of the stream that was not JSON, and a step
    reading it line by line failed on it. Progress objects always have "phase"; notes never."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("progress") == "ndjson":
        click.echo(json.dumps({"note": text}), err=True)
    else:
        click.echo(f"loopfan: note: {text}", err=True)


def build_sources(text: str | None, allow_non_loopback: bool) -> AddressPool:
    if text is None:
        return DEFAULT_SOURCE_POOL
    pool = parse_pool(text, allow_non_loopback=allow_non_loopback)
    if allow_non_loopback:
        outside = [ip_to_str(lo) for lo, _ in pool.ranges if not 0x7F000000 <= lo <= 0x7FFFFFFF]
        assert_local(outside)
        if outside:
            note(f"using non-loopback source addresses of this host: {', '.join(outside)}")
    return pool


def build_targets(texts: tuple[str, ...], allow_non_loopback: bool) -> tuple[Endpoint, ...]:
    out: list[Endpoint] = []
    for text in texts:
        out.extend(parse_endpoints(text, allow_non_loopback=allow_non_loopback))
    if allow_non_loopback:
        outside = sorted({e.address for e in out if not (e.address.startswith("127.") or e.address == "::1")})
        assert_local(outside)
        if outside:
            note(f"targeting non-loopback addresses of this host: {', '.join(outside)}")
    return tuple(dict.fromkeys(out))


def min_processes(*, talking: bool, per_process: int | None) -> int:
    """The fewest client (and built-in server) processes for a run: one per core when it sends
    traffic and --per-process leaves the choice to loopfan, else one. Talking is CPU work: measured
    against nginx at 1,000 connections, 68.5K req/s in one client process, 88.2K in two
    (docs/benchmarks.md); the built-in server answers on every core for the same reason."""
    return (os.cpu_count() or 1) if talking and per_process is None else 1


def shown(text: str) -> str:
    """User text in an error message as typed: quoted for the shell where needed (not repr, which
    doubles every backslash), on one line (control characters escaped)."""
    return shlex.quote("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text))


def check_writable(path: str, what: str, *, stdout: bool = False) -> None:
    """Refuse, before the work starts, an output file that could not be written at the end (every
    command's output path goes through here, so a typo costs seconds, not a 100k run). '-' is stdout
    where the option supports it (`stdout`), and refused where it does not, rather than written to
    a file named '-'.

    The directory is asked by doing what the end will do: create a file in it (write_problem).
    os.access() is not enough: it answers by permission bits, so for root it says yes to /proc
    (where creating a file fails with ENOENT) and ignores quotas and a full disk; QA's
    `run --json /proc/x.json` ran its whole load and then exited 2 with "cannot write"."""
    if path == "-":
        if stdout:
            return
        raise UsageError(f"cannot write {what} to stdout ('-'); give a file name")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what} to {path}: it is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {what} to {path}: {directory} is not a writable directory "
                         "(no such directory); give a path in one that is")
    if os.path.exists(path) and not os.path.isfile(path):
        # A device or a pipe (/dev/null, /dev/stdout): opened as it is at the end, nothing to create.
        if not os.access(path, os.W_OK):
            raise UsageError(f"cannot write {what} to {path}: not writable; give a writable path")
        return
    problem = write_problem(path, directory)
    if problem is not None:
        raise UsageError(f"cannot write {what} to {path}: {problem}")


def write_problem(path: str, directory: str) -> str | None:
    """Why `path` (a regular file or none yet, in `directory`) could not be written, and what to do
    instead; None when it can be.
    An existing file is opened for writing without truncating it (its content stays); then a
    hidden file beside it is created exclusively, one byte written, and removed - what tells the
    truth on /proc, a read-only mount (EROFS) and a full disk (ENOSPC at the write: a file's first
    block is allocated then), whoever runs it."""
    if os.path.exists(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            return f"it cannot be opened for writing ({exc.strerror}); give a writable path"
    probe = os.path.join(directory, f".loopfan-write-check-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"{directory} is not a writable directory ({exc.strerror}); give a path in one that is"
    try:
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)  # (a full NFS or FUSE disk may say ENOSPC only here)
    except OSError as exc:
        return f"{directory} takes no file now ({exc.strerror}); free some space or give a path elsewhere"
    finally:
        with contextlib.suppress(OSError):  # (a probe left behind is a hidden empty file, no failure)
            os.unlink(probe)
    return None


def check_distinct(outputs: dict[str, str | None], inputs: dict[str, str | None] | None = None) -> None:
    """Refuse, before the work starts, two outputs naming one file (`--json run.json --html run.json`:
    the page silently replaced the JSON) and an output naming an input (`report run.json -o
    run.json` replaced the report with its page). Keys name each path as the user gave it (an
    option, or an argument's metavar); '-' (stdout) and unset ones are skipped."""
    seen: dict[str, tuple[str, bool]] = {}
    for given, is_input in ((inputs or {}, True), (outputs, False)):
        for name, path in given.items():
            if not path or path == "-":
                continue
            key = os.path.realpath(path)
            if key in seen:
                other, other_is_input = seen[key]
                does = "reads" if other_is_input else "writes"
                raise UsageError(f"{name} {path}: {other} {does} that file too; give each output a file of its own")
            seen[key] = (name, is_input)


def write_json(path: str, data: Any) -> None:
    """Write JSON to a file, or to stdout for '-'."""
    text = json.dumps(data, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}; give a writable path") from None
