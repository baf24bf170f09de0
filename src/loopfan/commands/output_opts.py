"""`@output_options`: what a run shows and leaves behind - --html, --check, --progress, --prometheus.

Rules of this file: CLI edge only. Every value is checked when argv is parsed (a bad --check is
one line and exit 2, before any socket opens); the result is one frozen OutputOptions handed to
the command as `output`, which builds the progress sink and, once the report dict exists, judges
the checks (into rep["checks"], so report.json and the HTML page show them) and writes the page.
Output paths are checked here too (common.check_writable), before any socket opens, and the
--prometheus socket is bound here (a port already taken is exit 2 before the run, like a path that
cannot be written); it is handed on bound and closed here when the command returns, whatever happened.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from loopfan.commands.common import ParsedType, check_writable, note
from loopfan.errors import UsageError
from loopfan.results.checks import Check, parse_check, run_checks

F = TypeVar("F", bound=Callable[..., Any])


class PrometheusType(click.ParamType):  # type: ignore[type-arg]
    name = "ADDR:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        from loopfan.results.prometheus import parse_address

        try:
            return parse_address(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputOptions:
    html_path: str | None = None
    checks: tuple[Check, ...] = ()
    progress: str = "auto"  # auto | panel | plain | ndjson | none
    prometheus: socket.socket | None = None  # the exporter's, bound and listening (prometheus.listen)

    def progress_sink(self, *, quiet: bool) -> Any:
        """The run's progress sink (a context manager and callable; start() after the forks)."""
        from loopfan.results.live import ProgressSink

        exporter = None
        if self.prometheus is not None:
            from loopfan.results.prometheus import Exporter

            exporter = Exporter(self.prometheus)
        return ProgressSink(self.progress, quiet=quiet, exporter=exporter)

    def judge(self, rep: dict[str, Any]) -> None:
        """Judge the checks into the report (so report.json and the HTML page show them)."""
        rep["checks"] = run_checks(list(self.checks), rep)

    def write_page(self, rep: dict[str, Any]) -> None:
        """Write the HTML page if asked (after the report was shown: see run.deliver)."""
        if self.html_path:
            from loopfan.commands.report import write_html

            write_html(self.html_path, rep)

    @staticmethod
    def failed(rep: dict[str, Any]) -> bool:
        return any(not c["passed"] for c in rep.get("checks") or [])


def output_options(f: F) -> F:
    """Add --html/--check/--progress/--prometheus to a run-like command; it receives `output`."""

    @functools.wraps(f)
    def wrapper(*args: Any, html_path: str | None, checks: tuple[Check, ...], progress: str,
                prometheus: tuple[str, int] | None, **kwargs: Any) -> Any:
        if html_path:
            check_writable(html_path, "the HTML report")  # a page is a file: '-' is refused
        sock = None
        if prometheus is not None:
            from loopfan.results.prometheus import listen

            sock = listen(*prometheus)
            if prometheus[1] == 0:  # any free port: say which, or nobody can scrape it
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                note(f"--prometheus serves on http://{shown}:{port}/metrics")
        try:
            output = OutputOptions(html_path=html_path, checks=checks, progress=progress, prometheus=sock)
            return f(*args, output=output, **kwargs)
        finally:
            if sock is not None:
                sock.close()  # the exporter closed it if the run got that far; a second close is a no-op

    wrapper = click.option("--prometheus", type=PrometheusType(), default=None, metavar="ADDR:PORT",
                           help="Serve live metrics for Prometheus on this loopback address while the run lasts "
                           "(needs loopfan[prometheus]).")(wrapper)
    wrapper = click.option("--progress", type=click.Choice(["auto", "panel", "plain", "ndjson", "none"]),
                           default="auto", show_default=True,
                           help="Live view on stderr: a panel on a terminal, a line every few seconds otherwise, "
                           "or one JSON line per interval (ndjson).")(wrapper)
    wrapper = click.option("--check", "checks", type=ParsedType("EXPR", parse_check, Check), multiple=True,
                           metavar="EXPR",
                           help="Judge the run at the end, exit 1 if it fails: 'connect_latency.p99<50ms', "
                           "'failed==0', 'established>=1M'. Repeatable.")(wrapper)
    wrapper = click.option("--html", "html_path", metavar="FILE", default=None,
                           help="Also write the self-contained HTML report (opens offline).")(wrapper)
    # Listed after the command's own options in --help (-c first, not --html): click shows its
    # params in reverse order of being added, and these were added last - move them to the front.
    params = wrapper.__click_params__  # type: ignore[attr-defined]
    params[:] = params[-4:] + params[:-4]
    return wrapper  # type: ignore[return-value]
