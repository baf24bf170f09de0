"""Every subcommand's --help: each option explained, durations written alike, nothing promised
that the command does not have.

QA: `serve --help` listed the modes as "hold, echo or discard" (http and ws missing) and --mode had
no help; `run --help` showed `--connect-timeout [default: 10.0]` where every other duration reads
"10s"; `alias list --help` offered a preview "with --dry-run", which list does not take.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest

from loopfan.cli import cli
from loopfan.commands.common import DurationType


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[str, click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, sub)
        else:
            yield sub.command_path, cmd, sub


COMMANDS = list(_commands(cli, click.Context(cli, info_name="loopfan")))
IDS = [path for path, _, _ in COMMANDS]


def _options(cmd: click.Command) -> list[click.Option]:
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def test_every_command_is_walked() -> None:
    assert {"loopfan run", "loopfan serve", "loopfan alias list", "loopfan trend"} <= set(IDS)


@pytest.mark.parametrize(("path", "cmd", "ctx"), COMMANDS, ids=IDS)
def test_every_option_says_what_it_does(path: str, cmd: click.Command, ctx: click.Context) -> None:
    assert [o.opts for o in _options(cmd) if not o.help] == [], path


@pytest.mark.parametrize(("path", "cmd", "ctx"), COMMANDS, ids=IDS)
def test_durations_read_alike(path: str, cmd: click.Command, ctx: click.Context) -> None:
    text = " ".join(cmd.get_help(ctx).split())
    for o in _options(cmd):
        if isinstance(o.type, DurationType) or "--duration" in o.opts:
            assert f"{o.opts[-1]} DURATION " in text, (path, o.opts)
            # click would print a float in seconds ("[default: 10.0]"); defaults go in the help, with a unit.
            assert not o.show_default, (path, o.opts)


@pytest.mark.parametrize(("path", "cmd", "ctx"), COMMANDS, ids=IDS)
def test_help_names_only_options_the_command_has(path: str, cmd: click.Command, ctx: click.Context) -> None:
    text = cmd.get_help(ctx)
    text = re.sub(r"loopfan \w+( [\w-]+)*", "", text)  # "see `loopfan tag --list`": another command's
    own = [opt for p in cmd.params for opt in getattr(p, "opts", [])] + ["--help"]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text))
    assert [n for n in named if not any(o.startswith(n) for o in own)] == [], path  # ("--expect-*")


def test_serve_names_every_mode() -> None:
    serve = next(cmd for path, cmd, _ in COMMANDS if path == "loopfan serve")
    (mode,) = [o for o in _options(serve) if "--mode" in o.opts]
    assert isinstance(mode.type, click.Choice)
    first_line = " ".join((serve.help or "").split("\n\n")[0].split())
    for choice in mode.type.choices:
        assert choice in first_line and choice in (mode.help or ""), choice


def test_run_lists_its_own_options_before_the_output_ones() -> None:
    """QA: `run --help` opened with --html, --check, --progress and --prometheus, -c after them."""
    run = next(cmd for path, cmd, _ in COMMANDS if path == "loopfan run")
    names = [p.name for p in _options(run)]
    assert names[0] == "connections"
    assert names.index("html_path") > names.index("per_process")
