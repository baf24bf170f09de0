"""`loopfan report RUN.json [-o FILE] [--baseline BASE.json]`: a run's self-contained HTML page."""

from __future__ import annotations

import os

import click

from loopfan.commands.common import check_distinct, check_writable
from loopfan.errors import UsageError
from loopfan.results.schema import load_report


def write_html(path: str, rep: dict[str, object], baseline: dict[str, object] | None = None) -> int:
    """Render and write the page; returns its size in bytes."""
    from loopfan.results.html import render  # matplotlib loads only when a page is drawn

    text = render(rep, baseline)
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}; give a writable path") from None
    return len(text.encode("utf-8"))


@click.command()
@click.argument("run_json", metavar="RUN.json")
@click.option("-o", "--output", "output", metavar="FILE", default=None,
              help="Where to write the page (default: RUN.html beside RUN.json).")
@click.option("--baseline", metavar="BASE.json", default=None,
              help="Another run to compare against: deltas in the key numbers, its percentile curve overlaid.")
def command(run_json: str, output: str | None, baseline: str | None) -> int:
    """Write a self-contained HTML report (opens offline, no network requests) for a run's JSON report."""
    path = output or os.path.splitext(run_json)[0] + ".html"
    check_writable(path, "the HTML report")
    check_distinct({"-o": path}, {"RUN.json": run_json, "--baseline": baseline})
    rep = load_report(run_json)
    base = load_report(baseline) if baseline else None
    size = write_html(path, rep, base)
    click.echo(f"wrote {path} ({size / 1024:,.0f} KB)")
    return 0
