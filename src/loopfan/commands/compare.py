"""`loopfan compare BASE.json NEW.json` (deltas and CI gates) and `loopfan trend RUN.json ...`."""

from __future__ import annotations

import datetime as dt
import io
import math
import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loopfan.commands.common import ParsedType, check_distinct, check_writable
from loopfan.commands.console import WIDE_COLUMNS, text_console, unpadded
from loopfan.errors import UsageError
from loopfan.results.checks import Gate, described, parse_gate, run_gates
from loopfan.results.compare import (
    NOISE_PCT,
    caveats,
    fmt,
    fmt_delta,
    heading,
    markdown,
    rows,
    trend_caveats,
    trend_columns,
    trend_last,
    trend_rows,
    trend_summary,
)
from loopfan.results.schema import load_report

_STYLE = {"better": "green", "worse": "bold red", "same": "dim", "": ""}


@click.command()
@click.argument("base_json", metavar="BASE.json")
@click.argument("new_json", metavar="NEW.json")
@click.option("--gate", "gates", type=ParsedType("EXPR", parse_gate, Gate), multiple=True,
              help="Fail (exit 1) when NEW is worse than allowed: 'latency.p99:+10%', 'connect_rate.mean:-5%', "
              "'failed:0', 'traffic.messages_per_s:-5%', 'traffic.errors:0', or a check like 'failed==0'. "
              "latency.X is message latency (traffic.latency.X; a request's for HTTP) when either run has "
              "traffic, connect latency otherwise. Repeatable.")
@click.option("--format", "fmt_name", type=click.Choice(["text", "markdown", "html"]), default="text",
              show_default=True, help="markdown: a PR comment; html: NEW's full report with BASE overlaid.")
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Write to FILE instead of stdout ('-': stdout; html: required, a file).")
@click.option("--noise", "noise_pct", type=click.FloatRange(min=0), default=NOISE_PCT, show_default=True,
              metavar="PCT", help="Changes smaller than this many percent are shown as noise.")
def command(base_json: str, new_json: str, gates: tuple[Gate, ...], fmt_name: str, output: str | None,
            noise_pct: float) -> int:
    """Compare two runs: deltas computed from the HDR histograms, and gates for CI (exit 1 when one fails).

    An interrupted (partial) run fails every gate; runs that differ in connections, targets or
    traffic are compared with a warning.
    """
    if fmt_name == "html" and output is None:
        raise UsageError("--format html writes a page: give -o FILE (e.g. -o compare.html)")
    if output is not None:
        check_writable(output, "the comparison", stdout=fmt_name != "html")
        check_distinct({"-o": output}, {"BASE.json": base_json, "NEW.json": new_json})
    base, new = load_report(base_json), load_report(new_json)
    results = run_gates(list(gates), base, new)
    new["checks"] = [*(new.get("checks") or []), *results]
    warnings = caveats(base, new, base_json, new_json)
    # On stderr too where the output does not show them to whoever runs this: a page, a file, or
    # stdout redirected (CI logs show stderr); on a terminal the table's own lines are enough.
    if fmt_name == "html" or output not in (None, "-") or not sys.stdout.isatty():
        for line in warnings:
            click.echo(f"loopfan: warning: {line}", err=True)
    if output == "-":
        output = None
    if fmt_name == "html":
        from loopfan.commands.report import write_html

        assert output is not None
        size = write_html(output, new, base)
        click.echo(f"wrote {output} ({size / 1024:,.0f} KB)")
    elif fmt_name == "markdown":
        text = markdown(base, new, results, base_json, new_json, noise_pct)
        _emit(text, output)
    else:
        # To a file (-o): recorded only, as -o's help says "instead of stdout" (it printed to both).
        console = (Console(file=io.StringIO(), record=True, width=WIDE_COLUMNS) if output is not None
                   else text_console())
        if console.is_terminal:
            # At most 110 columns, and never wider than the terminal: the lines a terminal wraps
            # itself (a warning, a gate) broke mid-word. (Off a terminal: whole lines, commands/console.py.)
            console.width = min(console.width, 110)
        console.print(_heading(base_json, new_json, console.width))
        t = Table()
        for col, just in (("metric", "left"), ("baseline", "right"), ("new", "right"), ("change", "right"),
                          ("", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in rows(base, new, traffic=True):
            verdict = r.verdict(noise_pct)
            # The verdict in words as well as in colour: a CI log or a pipe keeps no colour.
            word = verdict if verdict in ("better", "worse") else ""
            t.add_row(r.metric.name, fmt(r.base, r.metric.unit), fmt(r.new, r.metric.unit),
                      f"[{_STYLE[verdict]}]{fmt_delta(r)}[/]" if _STYLE[verdict] else fmt_delta(r),
                      f"[{_STYLE[verdict]}]{word}[/]" if word else "")
        console.print(t)
        for line in warnings:
            console.print(f"[bold yellow]warning[/]: {line}", highlight=False)
        for g in results:
            style = "green" if g["passed"] else "bold red"
            unit = g.get("unit") or ""
            console.print(f"[{style}]gate {'pass' if g['passed'] else 'FAIL'}[/]: {described(g)}  "
                          f"(baseline {fmt(g.get('baseline'), unit)}, new {fmt(g.get('actual'), unit)}, "
                          f"limit {fmt(g.get('limit'), unit)}) {g.get('detail') or ''}", highlight=False)
        if output:
            _emit(unpadded(console.export_text()), output)
    return 1 if any(not g["passed"] for g in results) else 0


def _heading(base_json: str, new_json: str, width: int) -> Table:
    """Which report is which, above the table: a line each (results.compare.heading)."""
    names = Table.grid(padding=(0, 2))
    names.add_column(style="bold", no_wrap=True)
    names.add_column(overflow="fold")  # a path longer than the line is folded, never cut
    for label, text in heading(base_json, new_json, width):
        names.add_row(label, Text(text))
    return names


def _emit(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}; give a writable path") from None


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN.json ...")
@click.option("--format", "fmt_name", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="markdown: one table row per run, for a PR comment or a CI job summary.")
def trend_command(runs: tuple[str, ...], fmt_name: str) -> int:
    """Summarise many runs, oldest first: key numbers per run, and min/median/max with the last run's change."""
    reports = [(path, load_report(path)) for path in runs]
    table = trend_rows(reports)
    for line in trend_caveats(sorted(reports, key=lambda nr: nr[1].get("started_at") or 0)):
        click.echo(f"loopfan: warning: {line}", err=True)  # on stderr, as compare's
    units = {"established": "", "failed": "", "connect_rate.mean": "/s", "time_to_target": "s",
             "traffic.messages_per_s": "/s", "traffic.errors": ""}
    columns = trend_columns(table)
    head = ["run", "started", *columns]

    def cells(r: dict[str, object]) -> list[str]:
        started = r.get("started_at")
        when = dt.datetime.fromtimestamp(float(started), dt.UTC).strftime("%Y-%m-%d %H:%M") \
            if isinstance(started, (int, float)) else "-"
        vals = [fmt(r.get(c), units.get(c, "ms")) for c in columns]  # type: ignore[arg-type]
        mark = f" (interrupted {r['interrupted']}: partial)" if r.get("interrupted") else ""
        return [f"{r['name']}{mark}", when, *vals]

    summary = trend_summary(table)
    if fmt_name == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in table]
        click.echo("\n".join(lines))
    else:
        t = Table(title=f"{len(table)} runs, oldest first", title_justify="left")
        for h in head:
            t.add_column(h, justify="left" if h in ("run", "started") else "right")
        for r in table:
            t.add_row(*cells(r))
        # At its natural width: a CI log keeps a long line whole, while a table squeezed into a
        # fixed width cut every run name to the same 'runs/bui…' (the interrupted mark with it)
        # and the columns to 'connect_…'.
        console = text_console()
        console.width = Console(width=WIDE_COLUMNS).measure(t).maximum
        console.print(t)
    left_out = sum(1 for r in table if r.get("interrupted"))
    if left_out:
        click.echo(f"{left_out} interrupted (partial) run{'s' if left_out > 1 else ''} left out of the summary")
    last = trend_last(table)
    if last is not None and summary:
        newest = "" if last == table[-1]["name"] else f" (the newest, {table[-1]['name']}, was interrupted)"
        click.echo(f"last run: {last}{newest}")
    for col, s in summary.items():
        unit = units.get(col, "ms")
        change = s["last_vs_median_pct"]
        if change is None:
            change_text = "-"
        elif math.isinf(change):  # the others' median is 0: the change is the last run's value itself
            change_text = f"{'+' if change > 0 else ''}{fmt(s['last'], unit)} (the others' median is 0)"
        else:
            change_text = f"{change:+.1f}%"
        click.echo(f"{col}: min {fmt(s['min'], unit)}, median {fmt(s['median'], unit)}, max {fmt(s['max'], unit)}; "
                   f"last run vs the median of the others {change_text}")
    return 0
