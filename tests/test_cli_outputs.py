"""Output paths of every command: checked before the work, '-' for stdout where it is offered (and
then stdout holds that alone), refused where it is not, and a write that fails after the work never
costs the report. Runs here are small in-process runs against the built-in server."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_results_checks import fake_report
from test_results_traffic_checks import traffic_report

import loopfan.commands.demo as demo_command
import loopfan.commands.run as run_command
from loopfan.cli import main
from loopfan.commands.common import check_writable
from loopfan.errors import UsageError
from loopfan.results.compare import heading


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any run reaching the engine fails the test: the refusal must come first."""

    def execute(*_: Any) -> Any:
        pytest.fail("bad output path reached the run")

    monkeypatch.setattr(run_command, "execute", execute)
    monkeypatch.setattr(demo_command, "execute", execute)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--json", "/nonexistent/x.json"], "cannot write the report to /nonexistent/x.json"),
    (["run", "-c", "10", "--json", "/nonexistent/x.json"], "cannot write the report to /nonexistent/x.json"),
    (["run", "-c", "10", "--html", "/nonexistent/x.html"], "cannot write the HTML report to /nonexistent/x.html"),
    (["run", "-c", "10", "--html", "-"], "cannot write the HTML report to stdout ('-'); give a file name"),
    # (--duration bounds it, should the check come too late)
    (["serve", "--listen", "127.43.0.1:7070", "--duration", "1s", "--json", "/nonexistent/s.json"],
     "cannot write the counts to /nonexistent/s.json"),
])
def test_output_paths_are_refused_before_the_work(argv: list[str], fragment: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


# /proc takes no new file, for root too, whose os.access() says yes to any directory: QA's
# `run --json /proc/x.json` ran its ~20 s of load as root, then exited 2 with "cannot write".
@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("argv, fragment", [
    (["run", "-c", "10", "--json", "/proc/x.json"], "cannot write the report to /proc/x.json: /proc is not a writable"),
    (["run", "-c", "10", "--html", "/proc/x.html"], "cannot write the HTML report to /proc/x.html: /proc is not a"),
    (["run", "-c", "10", "--traffic", "echo", "--hdr-log", "/proc/x.hlog"], "cannot write the --hdr-log file to /proc"),
    (["demo", "--json", "/proc/x.json"], "cannot write the report to /proc/x.json"),
    (["serve", "--listen", "127.43.0.1:7070", "--duration", "1s", "--json", "/proc/x.json"], "cannot write the counts"),
    (["run", "-c", "10", "--json", "/proc/version"], "cannot write the report to /proc/version"),  # (one that exists)
])
def test_a_directory_that_takes_no_file_is_refused_before_the_work(argv: list[str], fragment: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert fragment in err and "give a path in one that is" in err, err


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """mount(8) a small tmpfs with the options given under tmp_path, unmounted after the test
    (root alone may mount: skipped elsewhere; chmod stops no write of root's)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        at = tmp_path / f"mnt{len(mounted)}"
        at.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(at)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(at)
        return at

    try:
        yield mount
    finally:
        for at in mounted:
            subprocess.run(["umount", str(at)], check=True)


@pytest.mark.usefixtures("no_work")
def test_a_read_only_mount_and_a_full_disk_are_refused_before_the_work(
        tmpfs: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The check creates a file where the output will go (one byte, then removed): a read-only
    mount says EROFS, a full disk ENOSPC - neither a permission bit shows."""
    ro = tmpfs("ro,size=64k")
    assert main(["run", "-c", "10", "--json", str(ro / "r.json")]) == 2
    assert f"{ro} is not a writable directory (Read-only file system)" in one_line_error(capsys)
    full = tmpfs("size=8k")
    (full / "fill").write_bytes(b"x" * 8192)
    assert main(["run", "-c", "10", "--traffic", "echo", "--hdr-log", str(full / "lat.hlog")]) == 2
    assert f"{full} takes no file now (No space left on device); free some space" in one_line_error(capsys)
    assert sorted(p.name for p in full.iterdir()) == ["fill"]  # the probe is gone


def test_the_write_check_leaves_no_trace(tmp_path: Path) -> None:
    """A writable place passes and keeps what it had: no probe left, an existing file unchanged
    (opened for writing, not truncated); a device (/dev/null) is taken as it is."""
    check_writable(str(tmp_path / "new.json"), "the report")
    kept = tmp_path / "old.json"
    kept.write_text("the last run's report")
    check_writable(str(kept), "the report")
    assert sorted(os.listdir(tmp_path)) == ["old.json"] and kept.read_text() == "the last run's report"
    check_writable(os.devnull, "the report")


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("argv, fragment", [
    (["run", "-c", "10", "--json", "out.json", "--html", "out.json"], "--html out.json: --json writes that file too"),
    (["run", "-c", "10", "--traffic", "echo", "--json", "out.json", "--hdr-log", "./out.json"],
     "--hdr-log ./out.json: --json writes that file too"),
    (["run", "-c", "10", "--traffic", "echo", "--html", "x", "--hdr-log", "x"], "--hdr-log x: --html writes that"),
])
def test_two_outputs_of_a_run_in_one_file_are_refused(argv: list[str], fragment: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """QA: '--json run.json --html run.json' ran, exit 0, and left the page where the JSON was."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_report_and_compare_never_write_over_a_report_they_read(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """QA: 'loopfan report run.json -o run.json' replaced the report with its page (exit 0)."""
    run, base = tmp_path / "run.json", tmp_path / "base.json"
    text = json.dumps(fake_report([100] * 100))
    run.write_text(text)
    base.write_text(text)
    assert main(["report", str(run), "-o", str(run)]) == 2
    assert f"-o {run}: RUN.json reads that file too" in one_line_error(capsys)
    assert main(["report", str(run), "--baseline", str(base), "-o", str(base)]) == 2
    assert "--baseline reads that file too" in one_line_error(capsys)
    assert main(["compare", str(base), str(run), "--format", "markdown", "-o", str(run)]) == 2
    assert "NEW.json reads that file too" in one_line_error(capsys)
    assert run.read_text() == text and base.read_text() == text
    assert main(["compare", str(run), str(run)]) == 0  # one report as both sides: nothing is written


@pytest.fixture
def two_reports(tmp_path: Path) -> tuple[str, str]:
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(fake_report([100] * 100)))
    new.write_text(json.dumps(fake_report([110] * 100)))
    return str(base), str(new)


@pytest.mark.parametrize("extra, fragment", [
    (["-o", "/nonexistent/x.md"], "cannot write the comparison to /nonexistent/x.md"),
    (["--format", "html"], "--format html writes a page: give -o FILE"),
    (["--format", "html", "-o", "-"], "cannot write the comparison to stdout ('-')"),
])
def test_compare_refuses_its_output_before_printing_anything(
        two_reports: tuple[str, str], extra: list[str], fragment: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *two_reports, *extra]) == 2
    out_before = capsys.readouterr()
    assert out_before.out == "", "the table was printed before the refusal"
    assert fragment in out_before.err and len(out_before.err.strip().splitlines()) == 1
    assert not Path("compare.html").exists()


def test_compare_dash_is_stdout(two_reports: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *two_reports, "--format", "markdown", "-o", "-"]) == 0
    assert capsys.readouterr().out.startswith("### loopfan compare")
    assert not Path("-").exists()


def test_compare_text_to_a_file_is_not_printed_too(two_reports: tuple[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """-o FILE writes the table "instead of stdout" (its help): it went to both."""
    out = tmp_path / "cmp.txt"
    assert main(["compare", *two_reports, "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    text = out.read_text()
    assert "metric" in text and "established" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_compare_text_says_better_and_worse_in_words(two_reports: tuple[str, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Piped (a CI log) the table has no colour: the verdict must be there in words too."""
    assert main(["compare", *two_reports]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "connect_latency.p50" in line)
    assert "(+10.0%)" in row and row.rstrip(" │|").endswith("worse")


LONG_DIR = "some/long/dir/for/the/nightly/runs/of/the/load/tests"


@pytest.fixture
def two_long_paths(tmp_path: Path) -> tuple[str, str]:
    base = tmp_path / LONG_DIR / "main" / "run-2026-11-29T20-00-00.json"
    new = tmp_path / LONG_DIR / "pr-1234" / "run-2026-11-29T21-30-00.json"
    for path, p50 in ((base, 100), (new, 110)):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(fake_report([p50] * 100)))
    return str(base), str(new)


def test_compare_names_long_paths_readably_at_80_columns(two_long_paths: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """QA: the table's title 'BASE -> NEW' wrapped into ragged lines at 80/100 columns when the paths
    were long. The heading names each on its own line; their common directory goes on a line of
    its own when the whole paths do not fit, so what tells them apart is whole and lined up."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare", *two_long_paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    common = str(Path(two_long_paths[0]).parent.parent)
    at = lines.index("baseline  main/run-2026-11-29T20-00-00.json")
    assert lines[at + 1] == "new       pr-1234/run-2026-11-29T21-30-00.json"
    # The common directory first (pytest's own is long: folded at the width, every character kept).
    assert lines[0].startswith("in        ") and "".join(line[10:] for line in lines[:at]) == common + "/"
    assert "metric" in lines[at + 3] and "->" not in "".join(lines)  # the table follows, untitled
    monkeypatch.setenv("COLUMNS", "300")  # room for the whole paths: they are shown whole
    assert main(["compare", *two_long_paths]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [f"baseline  {two_long_paths[0]}",
                                                        f"new       {two_long_paths[1]}"]


def test_compare_heading_without_a_common_directory_folds_rather_than_cuts() -> None:
    long_name = "x" * 120 + ".json"
    assert heading(long_name, "/abs/new.json", 80) == [("baseline", long_name), ("new", "/abs/new.json")]
    assert heading("/a/" + long_name, "/b/new.json", 80) == [("baseline", "/a/" + long_name), ("new", "/b/new.json")]
    assert heading("base.json", "new.json", 80) == [("baseline", "base.json"), ("new", "new.json")]
    console = Console(file=io.StringIO(), width=80, record=True)
    assert main_heading_lines(long_name, console) == 2  # folded at the width, every character kept


def main_heading_lines(name: str, console: Console) -> int:
    from loopfan.commands.compare import _heading

    console.print(_heading(name, "new.json", console.width))
    text = console.export_text()
    assert "".join(line[10:].rstrip() for line in text.splitlines()[:-1]) == name
    return len(text.splitlines()) - 1


def test_report_refuses_dash_and_unwritable_paths(two_reports: tuple[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", two_reports[0], "-o", "-"]) == 2
    assert "cannot write the HTML report to stdout" in one_line_error(capsys)
    assert main(["report", two_reports[0], "-o", "/nonexistent/r.html"]) == 2
    assert "cannot write the HTML report to /nonexistent/r.html" in one_line_error(capsys)


@pytest.mark.usefixtures("no_leaks", "builtin_listen")
def test_a_write_failing_after_the_run_still_shows_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The paths were fine at the start and the disk filled up meanwhile: the report is shown, the
    JSON is still written, and the page's error is the one line (exit 2)."""
    from loopfan.commands.output_opts import OutputOptions

    def disk_full(self: OutputOptions, rep: dict[str, Any]) -> None:
        raise UsageError(f"cannot write {self.html_path}: No space left on device; give a writable path")

    monkeypatch.setattr(OutputOptions, "write_page", disk_full)
    out = tmp_path / "r.json"
    status = main(["run", "-c", "20", "--hold", "0", "-q", "--json", str(out), "--html", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert status == 2
    assert "Run report: all connections established" in captured.out
    assert "No space left on device" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert json.loads(out.read_text())["established"] == 20


@pytest.mark.usefixtures("no_leaks", "builtin_listen")
def test_a_page_that_cannot_be_drawn_costs_neither_the_json_nor_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Review: an exception drawing the page (matplotlib) escaped as a traceback, and the JSON,
    written after the page, was never written."""
    from loopfan.commands.output_opts import OutputOptions

    def broken(self: OutputOptions, rep: dict[str, Any]) -> None:
        raise RuntimeError("Font cache is corrupt")

    monkeypatch.setattr(OutputOptions, "write_page", broken)
    out = tmp_path / "r.json"
    status = main(["run", "-c", "20", "--hold", "0", "-q", "--json", str(out), "--html", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert status == 2 and "Traceback" not in captured.err
    assert "could not write the HTML page: RuntimeError: Font cache is corrupt" in captured.err
    assert json.loads(out.read_text())["established"] == 20


# --- compare and trend: interrupted and unlike runs ----------------------------------------------------


def interrupted_report(signal_name: str = "SIGINT") -> dict[str, Any]:
    """QA's int1.json: stopped by a signal after 40,372 of 100,000 connections, the numbers looking fine."""
    rep = fake_report([100] * 100, established=40_372)
    rep.update(interrupted=signal_name, target_connections=100_000)
    return rep


def test_an_interrupted_run_fails_every_gate_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, partial = tmp_path / "r30k.json", tmp_path / "int1.json"
    full = fake_report([100] * 100)
    full["target_connections"] = 100_000
    base.write_text(json.dumps(full))
    partial.write_text(json.dumps(interrupted_report("SIGTERM")))
    status = main(["compare", str(base), str(partial), "--gate", "failed:0", "--gate", "latency.p99:+10%"])
    captured = capsys.readouterr()
    assert status == 1
    assert f"{partial} was interrupted (SIGTERM): a partial run, 40,372 of 100,000 connections" in captured.err
    out = " ".join(captured.out.split())  # the table's console wraps long lines
    assert out.count("gate FAIL") == 2
    assert out.count("the new run was interrupted (SIGTERM): partial, not comparable") == 2
    assert main(["compare", str(base), str(partial)]) == 0  # no gate: shown, warned, not judged
    assert "was interrupted" in capsys.readouterr().err
    assert main(["compare", str(base), str(partial), "--format", "markdown", "--gate", "failed:0"]) == 1
    assert "> **warning:** " in capsys.readouterr().out


def test_compare_and_trend_warn_when_the_runs_differ_in_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: an https:// run compared with an http:// one said only 'different targets' (the ports) -
    nothing of the encryption that halved its requests/s."""
    plain, tls12, tls13 = traffic_report(), traffic_report(), traffic_report()
    tls12["traffic"]["tls"] = {"version": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384", "verified": True}
    tls13["traffic"]["tls"] = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "verified": True}
    paths = []
    for name, rep in (("plain.json", plain), ("tls12.json", tls12), ("tls13.json", tls13)):
        (tmp_path / name).write_text(json.dumps(rep))
        paths.append(str(tmp_path / name))
    assert main(["compare", paths[0], paths[1]]) == 0
    assert (f"the runs differ in TLS: plain text in {paths[0]}, TLS: TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 in "
            f"{paths[1]}") in " ".join(capsys.readouterr().err.split())
    assert main(["compare", paths[1], paths[2]]) == 0
    assert "TLS: TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 in" in " ".join(capsys.readouterr().err.split())
    assert main(["compare", paths[2], paths[2]]) == 0
    assert "TLS" not in capsys.readouterr().err
    assert main(["trend", *paths]) == 0
    assert f"differ in TLS: plain text in {paths[0]}; TLS: TLSv1.2" in " ".join(capsys.readouterr().err.split())


def test_compare_warns_when_the_runs_differ_in_what_they_asked(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    small, big = fake_report([100] * 10), fake_report([100] * 10)
    big["target_connections"] = 30_000
    small["plan"] = {"schema": "loopfan.plan/1", "connections": 1000, "targets": ["127.0.0.1:80"]}
    big["plan"] = {"schema": "loopfan.plan/1", "connections": 30_000, "targets": ["127.0.0.1:8080", "127.0.0.2:8080"]}
    big["traffic"] = traffic_report()["traffic"]  # http, closed loop
    paths = []
    for name, rep in (("a.json", small), ("b.json", big)):
        (tmp_path / name).write_text(json.dumps(rep))
        paths.append(str(tmp_path / name))
    assert main(["compare", *paths]) == 0
    err = capsys.readouterr().err
    assert f"different numbers of connections: 1,000 in {paths[0]}, 30,000 in {paths[1]}" in err
    assert "different targets: 127.0.0.1:80 in" in err
    assert f"differ in traffic: hold in {paths[0]}, http, closed loop in {paths[1]}" in err
    assert main(["compare", paths[0], paths[0]]) == 0
    assert capsys.readouterr().err == ""  # like for like: nothing to say
    # Both against the built-in server: its endpoints are loopfan's choice (QA: a hold run on 1
    # endpoint and a traffic run on 2 were "different targets" with the same --listen).
    small["server"] = big["server"] = {"accepted": 1000}
    for name, rep in (("a.json", small), ("b.json", big)):
        (tmp_path / name).write_text(json.dumps(rep))
    assert main(["compare", *paths]) == 0
    assert "different targets" not in capsys.readouterr().err


def test_compare_warns_of_a_force_run_short_of_its_connections(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """QA: a --force run held 450 of 1,000 (550 'not-planned', none in failed); compared with a
    full run of the same -c, 'failed:0' passed and nothing said the new run was short."""
    full, short = fake_report([100] * 10), fake_report([100] * 10, established=450)
    short["failures"] = [{"cause": "not-planned", "count": 550, "meaning": "never attempted", "fix": "..."}]
    paths = []
    for name, rep in (("full.json", full), ("short.json", short)):
        (tmp_path / name).write_text(json.dumps(rep))
        paths.append(str(tmp_path / name))
    assert main(["compare", *paths, "--gate", "failed:0"]) == 0
    warning = (f"{paths[1]} ran past its plan with --force: 550 of 1,000 connections were never attempted "
               "(not counted in failed)")
    assert warning in " ".join(capsys.readouterr().err.split())
    assert main(["compare", *paths, "--format", "markdown"]) == 0
    assert f"> **warning:** {warning}" in capsys.readouterr().out
    assert main(["compare", paths[0], paths[0]]) == 0
    assert capsys.readouterr().err == ""


def test_trend_marks_interrupted_runs_and_leaves_them_out_of_the_summary(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, rep in enumerate([fake_report([100] * 10), fake_report([100] * 10), interrupted_report()]):
        rep["started_at"] = float(i)
        (tmp_path / f"r{i}.json").write_text(json.dumps(rep))
        paths.append(str(tmp_path / f"r{i}.json"))
    assert main(["trend", *paths, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert f"| {paths[2]} (interrupted SIGINT: partial) |" in out
    assert "1 interrupted (partial) run left out of the summary" in out
    assert "established: min 1,000, median 1,000, max 1,000" in out
    assert f"last run: {paths[1]} (the newest, {paths[2]}, was interrupted)" in out  # which run 'last' is


def test_trend_text_shows_every_run_name_and_column_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: in a CI log (no terminal) the text table was squeezed into 160 columns: every run read
    'runs/bui…', an interrupted one's mark was cut too, and four columns read 'connect_…'."""
    (tmp_path / "runs").mkdir()
    paths = []
    for i, rep in enumerate([fake_report([100] * 10), fake_report([100] * 10), interrupted_report()]):
        rep["started_at"] = float(i)
        rep["traffic"] = {**traffic_report()["traffic"], "messages_per_s": 1000.0 + i}
        path = tmp_path / "runs" / f"nightly-build-{1041 + i}.json"
        path.write_text(json.dumps(rep))
        paths.append(str(path))
    assert main(["trend", *paths]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for path in paths[:2]:
        assert f"│ {path} " in out
    assert f"│ {paths[2]} (interrupted SIGINT: partial) " in out
    head = next(line for line in out.splitlines() if "┃ run" in line)
    assert all(f" {name} " in head for name in ("connect_latency.p50", "connect_latency.max", "traffic.errors",
                                               "traffic.messages_per_s"))


def test_trend_shows_a_change_from_a_median_of_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: three clean runs, then one with 50 failures: 'last run vs the median of the others -',
    as if nothing had changed (no percentage exists from 0; the change itself does)."""
    paths = []
    for i, failed in enumerate([{}, {}, {}, {"ECONNREFUSED": 50}]):
        rep = fake_report([100] * 10, failed=failed)
        rep["started_at"] = float(i)
        (tmp_path / f"r{i}.json").write_text(json.dumps(rep))
        paths.append(str(tmp_path / f"r{i}.json"))
    assert main(["trend", *paths]) == 0
    out = capsys.readouterr().out
    assert "failed: min 0, median 0, max 50; last run vs the median of the others +50 (the others' median is 0)" in out
    assert main(["trend", *paths[:3]]) == 0
    assert "failed: min 0, median 0, max 0; last run vs the median of the others +0.0%" in capsys.readouterr().out


def test_trend_warns_naming_every_run_that_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: the last run vs the median silently skipped the interrupted newest; and runs asking for
    other counts or targets must be named, every one of them, not only the first two files."""
    counts, targets = [1000, 1000, 30_000, 1000], [["127.0.0.1:80"]] * 3 + [["127.0.0.2:80"]]
    paths = []
    for i, (n, t) in enumerate(zip(counts, targets, strict=True)):
        rep = fake_report([100] * 10)
        rep.update(started_at=float(i), target_connections=n,
                   plan={"schema": "loopfan.plan/1", "connections": n, "targets": t})
        (tmp_path / f"r{i}.json").write_text(json.dumps(rep))
        paths.append(str(tmp_path / f"r{i}.json"))
    assert main(["trend", *paths]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert (f"the runs asked for different numbers of connections: 1,000 in {paths[0]}, {paths[1]}, {paths[3]}; "
            f"30,000 in {paths[2]}") in err
    assert (f"the runs had different targets: 127.0.0.1:80 in {paths[0]}, {paths[1]}, {paths[2]}; "
            f"127.0.0.2:80 in {paths[3]}") in err
    assert "differ in traffic" not in err
    assert f"last run: {paths[3]}\n" in captured.out  # the newest, not interrupted: said plainly
    assert main(["trend", paths[0], paths[1]]) == 0
    assert capsys.readouterr().err == ""  # like for like: nothing to say


# --- small input gaps ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize("argv, fragment", [
    (["run", "-c", "10", "--connect-timeout", "0"], "--connect-timeout must be a duration above 0 (got 0)"),
    (["run", "-c", "10", "--connect-timeout", "forever"], "(got forever); write e.g. --connect-timeout 10s"),
    (["run", "-c", "10", "::1:80"], "write [::1]:80"),
    (["run", "-c", "10", "--check", "failed=0"], "write 'failed==0'"),
    (["run", "-c", "10", "--check", "failed.TYPO==0"], "known causes: "),
])
def test_small_input_gaps_are_one_line_and_exit_2(argv: list[str], fragment: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert fragment in one_line_error(capsys)


def test_a_bad_gate_percentage_is_one_line(two_reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *two_reports, "--gate", "latency.p99:+abc%"]) == 2
    assert "'abc%' is not a percentage; write e.g. 10%" in one_line_error(capsys)


# --- text off a terminal (a CI log, a pipe): whole lines, no padding --------------------------------


def test_text_off_a_terminal_is_whole_lines_without_trailing_spaces(
        two_reports: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: piped, rich took 80 columns: long lines were cut mid-sentence, and every line of a table
    was padded with spaces to the width - noise in a CI log and in a diff of two outputs."""
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["plan", "-c", "1M"]) == 0
    plan_out = capsys.readouterr().out
    assert main(["compare", *two_reports, "--gate", "latency.p99:+1%"]) == 1
    compare_out = capsys.readouterr().out
    for out in (plan_out, compare_out):
        assert out and not [line for line in out.splitlines() if line.endswith(" ")], out
    processes = next(line for line in plan_out.splitlines() if line.startswith("processes"))
    assert processes.endswith("(open-file limit)") and len(processes) > 80, plan_out  # one line, not cut at 80
    assert "gate FAIL: latency.p99:+1%" in compare_out


def test_text_off_a_terminal_takes_columns_when_set(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """$COLUMNS is the width asked for (as rich reads it): lines wrap there, still unpadded."""
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["plan", "-c", "1M"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 60 and not [line for line in lines if line.endswith(" ")], lines
