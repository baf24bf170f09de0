"""`loopfan tag`: run a command whose loopback traffic leaves from its own 127.x address.

Rules of this file: argv text becomes frozen values here (TagSpec, targets) and every input error
is raised before anything touches the host, so bad input gives exit 2 even without privileges.
Exit status is the command's own. loopfan's messages go to stderr, so the command's stdout stays
clean for pipes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from loopfan.errors import HostError, UsageError
from loopfan.isolation.advice import advice_text
from loopfan.isolation.capture import (
    BACKENDS,
    FORMATS,
    CaptureFailed,
    CaptureSession,
    Target,
    check_label,
    check_tag_address,
    check_writable,
    display_filter,
    dropped_note,
    labels_text,
    merge_targets,
    name_filter,
    parse_target,
    replacing_note,
)
from loopfan.isolation.registry import (
    Reservation,
    TagRecord,
    active_reservations,
    active_tags,
    addresses_taken,
    locked,
    pick_free_address,
    remove_record,
    write_record,
)
from loopfan.isolation.tagger import IPV6_POLICIES, TagSpec, open_tag, run_tagged, tag_record
from loopfan.render import counted


def say(line: str) -> None:
    click.echo(f"loopfan: {line}", err=True)


@click.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("--source", metavar="127.X.Y.Z", help="The address to tag with (default: a free one, printed).")
@click.option("--name", "label", metavar="LABEL", help="Name of the tag (default: the command's name).")
@click.option("--capture", "capture_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also capture the tag's traffic into FILE while the command runs.")
@click.option("--also", multiple=True, metavar="ADDR[=LABEL]|tags",
              help="With --capture: also capture these addresses ('tags': every active tag).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pcapng", show_default=True,
              help="Capture file format (pcap has no room for names or comments).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Capture with dumpcap, tcpdump, or the built-in AF_PACKET reader (auto: the first one "
                   "installed).")
@click.option("--ipv6", type=click.Choice(IPV6_POLICIES), default="report", show_default=True,
              help="Connections to ::1 cannot be tagged: let them go and report them loudly, or refuse "
              "them (EPERM) so clients trying localhost fall back to 127.0.0.1.")
@click.option("--no-wait", is_flag=True,
              help="Do not wait for processes COMMAND leaves running; they outlive the tag, untagged.")
@click.option("--list", "list_tags", is_flag=True,
              help="Show active tags, and addresses held for isolated clients by `loopfan run`; then exit.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="-- COMMAND [ARGS...]")
def command(
    source: str | None,
    label: str | None,
    capture_path: str | None,
    also: tuple[str, ...],
    fmt: str,
    backend: str,
    ipv6: str,
    no_wait: bool,
    list_tags: bool,
    command: tuple[str, ...],
) -> int:
    """Run COMMAND (and all it starts) so its loopback traffic leaves from its own 127.x address.

    Works for unmodified programs (curl, Python, Java, Node, Go...) through cgroup v2 + BPF; needs
    root (CAP_BPF + CAP_NET_ADMIN). Exit status is COMMAND's own.

    \b
    loopfan tag --source 127.0.0.5 --name client -- curl http://127.0.0.1:8080/
    loopfan tag --capture out.pcapng -- python3 client.py
    loopfan tag --list
    """
    if list_tags:
        return _list()
    argv = list(command)
    # --- input checks (exit 2), before touching the host -----------------------------------
    if not argv:
        raise UsageError("no command given; write: loopfan tag [--source 127.0.0.5] -- COMMAND [ARGS...]")
    check_program(argv[0])
    tags_now = active_tags()
    if source is not None:
        source = check_tag_address(source)
        if source == "127.0.0.1":
            raise UsageError("--source 127.0.0.1 is what untagged programs use already; pick e.g. 127.0.0.5")
        _check_not_taken(source, tags_now)
    named = label is not None
    label = check_label(label if label is not None else _default_label(argv[0]))
    extra = _also_targets(also, tags_now)
    if source is not None:  # the tag's own address in --also under another label: refused, as elsewhere
        merge_targets([Target(source, label), *extra])
    if also and not capture_path:
        raise UsageError("--also only makes sense with --capture FILE")
    if not capture_path:  # (QA: accepted and ignored, where --also is refused)
        given = click.get_current_context().get_parameter_source
        for option, name in (("--format", "fmt"), ("--backend", "backend")):
            if given(name) is click.core.ParameterSource.COMMANDLINE:
                raise UsageError(f"{option} only makes sense with --capture FILE")
    output = Path(capture_path) if capture_path else None
    if output is not None:
        check_writable(output)
    # --- host ---------------------------------------------------------------------------------
    # Choosing the address and recording it happen under the registry's lock: checked-then-used
    # without it, tags started together all took the same "free" address.
    chosen = source
    with locked():
        tags_now = active_tags()
        if chosen is not None:
            _check_not_taken(chosen, tags_now)
        else:
            chosen = pick_free_address(addresses_taken(tags_now))
        label = unique_label(label, tags_now, named=named)
        spec = TagSpec(source=chosen, label=label, ipv6=ipv6)
        reservation = write_record(tag_record(spec, None, argv, 0))  # completed once the command runs
    if source is None:
        say(f"tagging with {chosen} (free; choose with --source)")
    try:
        return _run(spec, argv, output, extra, fmt=fmt, backend=backend, wait=not no_wait)
    except CaptureFailed:
        raise  # the tag worked; how to tag by hand would be the wrong advice
    except HostError:
        click.echo(advice_text(argv[0], chosen, macos=sys.platform == "darwin"), err=True)
        raise
    finally:
        remove_record(reservation)


def check_program(name: str) -> str:
    """The program's path; UsageError naming what is wrong (not found, a directory, not executable,
    its #! interpreter missing) - before the host is touched, so no tag is set up for nothing."""
    program = shutil.which(name)
    if program is None:
        if "/" in name and os.path.isdir(name):
            raise UsageError(f"{name!r} is a directory, not a program; give the program to run")
        if shutil.which(name, mode=os.F_OK) is not None:
            raise UsageError(f"{name!r} is not executable; give a program, or chmod +x it if it is a script")
        raise UsageError(f"command {name!r} not found; check its name or give its path")
    interpreter = missing_interpreter(program)
    if interpreter is not None:
        raise UsageError(
            f"{name!r} is a script whose interpreter {interpreter!r} (its #! line) is not installed; "
            "install it or fix the #! line"
        )
    if not_runnable_by_kernel(program):
        # (QA: refused only once the tag was set up, 'Exec format error'; a shell would have run it
        # with sh - a guess loopfan does not make)
        raise UsageError(f"{name!r} has no #! line, so the kernel cannot run it (shells run such files with sh); "
                         f"add a #! line, or write: loopfan tag -- sh {name}")
    return program


# The first bytes of files the kernel runs: ELF, and Mach-O (32/64-bit, either byte order; universal).
_BINARY_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                 b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def not_runnable_by_kernel(program: str) -> bool:
    """An executable file that is neither a #! script nor a binary the kernel knows: execve fails
    with ENOEXEC. (Unreadable files are left to execve to judge.)"""
    try:
        with open(program, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return not head.startswith(b"#!") and head not in _BINARY_MAGIC


def missing_interpreter(program: str) -> str | None:
    """The #! interpreter of a script when it cannot be found (also `#!/usr/bin/env NAME`), else None."""
    try:
        with open(program, "rb") as fh:
            first = fh.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if not os.access(words[0], os.X_OK):
        return words[0]
    if Path(words[0]).name == "env":
        found = env_program(words[1:])
        if found is not None:
            name, search_path = found
            if shutil.which(name, path=search_path) is None:
                return name
    return None


# env's options that take an argument (GNU coreutils and the BSDs), as short letters and long names.
_ENV_OPTIONS_WITH_ARGUMENT = {"-u": "--unset", "-C": "--chdir", "-P": "", "-a": "--argv0"}


def env_program(words: list[str]) -> tuple[str, str | None] | None:
    """The program `env WORDS...` would run, and the PATH it searches (-P), from a #! line's words.

    None when env runs nothing or the line is beyond a simple reading (an option we do not know,
    -S escapes or variables): then nothing is refused - a wrong "interpreter missing" would stop a
    working script. Option arguments (-u NAME, -C DIR, -P PATH, attached or not), NAME=VALUE
    assignments, -i and `-` are skipped; -S's string is split into more words, which is what it is
    for. (Linux passes everything after `env` as ONE argument, so only the -S form really works
    with several words; the others are read as their authors meant them rather than refused.)
    """
    search_path: str | None = None
    chdir: str | None = None
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        if word in ("-", "-i", "-0", "-v", "--ignore-environment", "--null", "--debug"):
            continue
        if word.startswith(("--block-signal", "--default-signal", "--ignore-signal", "--list-signal-handling")):
            continue
        if word.startswith(("-S", "--split-string")):
            if word.startswith("--split-string"):
                text = word.partition("=")[2] if "=" in word else (rest.pop(0) if rest else "")
            else:
                text = word[2:]
            if "\\" in text or "$" in text or any("\\" in w or "$" in w for w in rest):
                return None  # escapes and ${VAR}: env would rewrite them
            rest = [*text.split(), *rest]
            continue
        if word.startswith("-") and len(word) > 1:
            short, long_name = word[:2], word.partition("=")[0]
            if short in _ENV_OPTIONS_WITH_ARGUMENT and not word.startswith("--"):
                argument = word[2:] or (rest.pop(0) if rest else "")
            elif long_name in {v for v in _ENV_OPTIONS_WITH_ARGUMENT.values() if v}:
                argument = word.partition("=")[2] if "=" in word else (rest.pop(0) if rest else "")
            else:
                return None  # an option we do not know: its argument, if any, cannot be told apart
            if short == "-P" and not word.startswith("--"):
                search_path = argument
            elif short == "-C" or long_name == "--chdir":
                chdir = argument
            continue
        if "=" in word:
            continue  # NAME=VALUE
        return _from_dir(word, chdir), search_path
    return (_from_dir(rest[0], chdir), search_path) if rest else None


def _from_dir(program: str, chdir: str | None) -> str:
    """A relative path with a slash (./run.sh) is found from the directory env changes to (-C)."""
    return os.path.normpath(os.path.join(chdir, program)) if chdir and "/" in program else program


def _check_not_taken(source: str, tags: list[TagRecord]) -> None:
    clash = next((t for t in tags if t.address == source), None)
    if clash is not None:
        raise UsageError(
            f"--source {source} is already the tag {clash.label!r} (loopfan pid {clash.loopfan_pid}); "
            "pick another address or leave --source out"
        )
    run = next((r for r in active_reservations() if source in r.addresses), None)
    if run is not None:
        raise UsageError(
            f"--source {source} is an isolated client's address of a running `{run.command}` (loopfan pid "
            f"{run.loopfan_pid}); pick another address or leave --source out"
        )


def _run(
    spec: TagSpec,
    argv: list[str],
    output: Path | None,
    extra: list[Target],
    *,
    fmt: str,
    backend: str,
    wait: bool,
) -> int:
    records: list[TagRecord] = []
    paths: list[Path] = []
    others = [t for t in extra if t.address != spec.source]
    addresses = [spec.source, *(t.address for t in others)]
    with open_tag(spec) as tag, contextlib.ExitStack() as stack:
        session = None
        if output is not None:
            # The session's context exit stops the capture whatever happens; stop() saves it.
            session = stack.enter_context(CaptureSession(output, addresses, fmt=fmt, backend_name=backend))
            replacing = replacing_note(output)
            try:
                session.start()
            except CaptureFailed:
                raise
            except HostError as exc:  # the capture's failure, not the tag's: no tag-by-hand advice
                raise CaptureFailed(str(exc)) from None
            say(f"capturing {' '.join(addresses)} on lo into {output} ({session.backend})")
            if replacing:
                say(replacing)
            say(f"until it stops, packets go to {session.partial} (kept there if loopfan is killed)")

        def on_start(pid: int) -> None:
            record = tag_record(spec, tag, argv, pid)
            records.append(record)
            paths.append(write_record(record))

        say(f"{spec.label}: tagged {spec.source} (cgroup {tag.cgroup.path})")
        try:
            result = run_tagged(argv, tag, wait_descendants=wait, say=say, on_start=on_start)
        finally:
            for p in paths:
                remove_record(p)
        coverage = result.coverage
        if result.outlived:
            say(
                f"{counted(len(result.outlived), 'process')} outlived the tag "
                f"(pids {' '.join(map(str, result.outlived))}): "
                "moved out of it, their new connections are no longer tagged"
            )
        say(f"{spec.label} ({spec.source}): {coverage.summary()}")
        for line in coverage.exceptions(ipv6_policy=spec.ipv6):
            say(line)
        if session is not None:
            detail = _detail(records[0]) if records else f"command={shlex.join(argv)!r}"
            stats = session.stop([Target(spec.source, spec.label, detail), *others])
            dropped = dropped_note(stats.dropped)
            say(
                f"capture {output}: {counted(stats.packets, 'packet')}, "
                f"{counted(stats.connections, 'TCP connection')} seen"
                f"{dropped}; {coverage.summary()}"
            )
            say(f"display filter: {display_filter(addresses)}")
            if fmt == "pcapng":
                labels = [spec.label, *(t.label for t in others if t.label)]
                say(f"by name (name resolution on, e.g. tshark -N n): {name_filter(labels)}")
            else:
                say(f"labels (pcap has no room for them): {labels_text([Target(spec.source, spec.label), *others])}")
    return result.exit_status


def _detail(record: TagRecord) -> str:
    return f"command={record.command!r} pid={record.pid} started={record.started}"


def unique_label(label: str, tags_now: list[TagRecord], *, named: bool) -> str:
    """A label no active tag has: ip.host=="python3" must mean one client. A --name another tag
    has is refused; a label taken from the command's name gets a suffix (python3-2, python3-3)."""
    used = {t.label for t in tags_now}
    if label not in used:
        return label
    if named:
        holder = next(t.address for t in tags_now if t.label == label)
        raise UsageError(f"--name {label!r} is the label of the active tag on {holder}; a label names one "
                         "address - choose another --name")
    n = 2
    while f"{label[:60]}-{n}" in used:
        n += 1
    return f"{label[:60]}-{n}"


def _default_label(program: str) -> str:
    name = Path(program).name
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-._") or "tag"
    return clean[:63]


def _also_targets(also: tuple[str, ...], tags_now: list[TagRecord]) -> list[Target]:
    out: list[Target] = []
    for item in also:
        if item == "tags":
            out.extend(Target(t.address, t.label, _detail(t)) for t in tags_now)
            continue
        target = parse_target(item, what="--also")
        known = next((t for t in tags_now if t.address == target.address), None)
        if known is not None:
            target = Target(target.address, target.label or known.label, _detail(known))
        out.append(target)
    return merge_targets(out)


def _list() -> int:
    rows = list_rows(active_tags(), active_reservations())
    if not rows:
        click.echo("no active tags, and no addresses held by `loopfan run --isolate`")
        return 0
    click.echo(f"{'ADDRESS':<16}{'LABEL':<20}{'PID':>8}  {'STARTED':<26}COMMAND")
    for row in rows:
        click.echo(row)
    return 0


# What stands in the LABEL column for a run's isolated-client address: a label cannot hold a space
# (check_label), so it cannot be mistaken for a tag's.
RUN_ISOLATE_LABEL = "run --isolate"


def list_rows(tags: list[TagRecord], reservations: list[Reservation]) -> list[str]:
    """`tag --list`'s lines, oldest first: every tag, and every address a running `loopfan run
    --isolate` holds for its isolated clients (label 'run --isolate', the run's pid) - what holds
    which address, so that a --source refused as taken can be looked up here."""
    held: list[tuple[str, str, str, str, str]] = []
    for t in tags:
        pid = str(t.pid) if t.pid else "-"  # 0: the command is being started
        held.append((t.started, t.address, t.label, pid, t.command))
    for r in reservations:
        held.extend((r.started, a, RUN_ISOLATE_LABEL, str(r.loopfan_pid), r.command) for a in r.addresses)
    # ISO 8601 either way, but tags end "+00:00" and reservations "Z": compare the time alone.
    held.sort(key=lambda h: h[0][:19])
    return [f"{address:<16}{label:<20}{pid:>8}  {started:<26}{command}"
            for started, address, label, pid, command in held]
