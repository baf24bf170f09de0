"""The rich Console a command prints its text through: rich's own on a terminal, plain lines for a
CI log, a pipe or a file.

Rules of this file: a terminal gets exactly what rich gives it. Off a terminal rich finds no width
to ask for and takes 80 columns, so a long line was cut mid-sentence, and every line of a table was
padded with spaces to the table's width: noise in a CI log and in a diff of two outputs. There the
width is $COLUMNS when it is set (rich reads it itself), else WIDE_COLUMNS so that no line is cut
(a table is as wide as its widest line; nothing loopfan prints off a terminal expands to the
width), and the spaces at the end of each line are dropped as it is written.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import IO, TextIO, cast

from rich.console import Console

# Off a terminal without $COLUMNS: wide enough for any line loopfan prints (a run report's failure
# table with its fixes, a trend table of long run names) to stay whole.
WIDE_COLUMNS = 10_000

_TRAILING_SPACES = re.compile(r" +$", re.MULTILINE)
_SPACES_BEFORE_NEWLINE = re.compile(r" +(?=\n)")


def unpadded(text: str) -> str:
    """`text` without the spaces at the end of its lines (rich pads a table's lines to its width)."""
    return _TRAILING_SPACES.sub("", text)


class _Unpadded(io.TextIOBase):
    """stdout or stderr, without the spaces at the end of each line. The stream is looked up at
    every write, as rich does for its own (click's test runner and pytest swap sys.stdout)."""

    def __init__(self, *, stderr: bool) -> None:
        super().__init__()
        self._stderr = stderr

    def _stream(self) -> TextIO:
        return sys.stderr if self._stderr else sys.stdout

    def write(self, text: str) -> int:
        # rich writes a print's lines at once; a line without its end yet keeps its spaces.
        self._stream().write(_SPACES_BEFORE_NEWLINE.sub("", text))
        return len(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return False


def text_console(*, stderr: bool = False, record: bool = False) -> Console:
    """A Console on stdout (stderr: on stderr) for a command's text; see the module docstring.
    `record`: keep what was printed for export_text (whose lines rich pads: pass it to unpadded)."""
    if Console(stderr=stderr).is_terminal:  # (also FORCE_COLOR / TTY_COMPATIBLE=1: rich's own rules)
        return Console(stderr=stderr, record=record)
    columns = os.environ.get("COLUMNS", "")
    file = cast(IO[str], _Unpadded(stderr=stderr))  # (a TextIOBase: typeshed's IO[str] is a separate class)
    return Console(file=file, record=record, width=None if columns.isdigit() else WIDE_COLUMNS)
