"""The command line: parse argv, build frozen config values, call the core, map errors to exits.

Rules of this file: nothing from click leaks past the `commands` package; every LoopfanError and
every click usage error becomes one line on stderr and its exit status (2 for bad input), never a
traceback. Subcommands are imported lazily so `loopfan --help` and `loopfan plan` start fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import click

from loopfan import __version__
from loopfan.errors import LoopfanError

# name -> "module:attribute". A command whose module is absent (a partial install) is not listed.
COMMANDS: dict[str, str] = {
    "demo": "loopfan.commands.demo:command",
    "plan": "loopfan.commands.plan:command",
    "doctor": "loopfan.commands.doctor:command",
    "run": "loopfan.commands.run:command",
    "serve": "loopfan.commands.serve:command",
    "alias": "loopfan.commands.alias:command",
    "tag": "loopfan.commands.tag:command",
    "capture": "loopfan.commands.capture:command",
    "report": "loopfan.commands.report:command",
    "compare": "loopfan.commands.compare:command",
    "trend": "loopfan.commands.compare:trend_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        command = getattr(module, attr, None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loopfan")
def cli() -> None:
    """loopfan: the whole 127.0.0.0/8 loopback range as address space for testing on one machine.

    Millions of connections spread over client and server loopback addresses, and a loopback
    address of its own for any program so its traffic stands apart in a capture.
    Start with `loopfan demo`.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (tests call this directly)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="loopfan", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 2
    except click.UsageError as exc:
        sub = exc.ctx.command_path.partition(" ")[2] if exc.ctx else ""
        hint = f" (see 'loopfan {sub} --help')".replace("  --", " --")
        click.echo(f"loopfan: error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.Abort:
        click.echo("loopfan: interrupted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except LoopfanError as exc:
        click.echo(f"loopfan: error: {exc}", err=True)
        return exc.exit_status
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line (set LOOPFAN_DEBUG=1 for the traceback)
        if os.environ.get("LOOPFAN_DEBUG"):
            raise
        click.echo(f"loopfan: internal error: {type(exc).__name__}: {exc} (please report it; "
                   "LOOPFAN_DEBUG=1 shows the traceback)", err=True)
        return 1
    return result if isinstance(result, int) else 0
