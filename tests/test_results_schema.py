"""Reading a report back: the schema's own validator (report_problems) against jsonschema's, and a
damaged report with the right schema name refused by every command that loads one - one line
naming the file and the value, exit 2 - instead of an internal error from deep in the reader."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_results_checks import fake_report
from test_results_traffic_checks import traffic_report

from loopfan.cli import main
from loopfan.results.schema import KNOWN_KEYWORDS, report_problems, schema, validation_errors


def _bad_base64(rep: dict[str, Any]) -> None:
    rep["histograms"]["connect_latency"]["data"] = "HISTFAAAAB"  # QA's: 'Incorrect padding'


NOT_ZLIB = "HISTFAAAACl4nJNpmSzMwMDAxQABzFCaEUzOmNZg"


def _not_zlib(rep: dict[str, Any]) -> None:
    rep["histograms"]["connect_latency"]["data"] = NOT_ZLIB


def _ttfb_not_zlib(rep: dict[str, Any]) -> None:
    """A traffic run's time-to-first-byte histogram (optional: absent without traffic), damaged."""
    rep["histograms"]["ttfb"] = dict(rep["histograms"]["connect_latency"], data=NOT_ZLIB)


def _latency_not_zlib(rep: dict[str, Any]) -> None:
    """A traffic run's message latency histogram (optional like ttfb's), damaged."""
    rep["histograms"]["latency"] = dict(rep["histograms"]["connect_latency"], data=NOT_ZLIB)


def _traffic_without_window(rep: dict[str, Any]) -> None:
    rep["traffic"] = traffic_report()["traffic"]
    del rep["traffic"]["window_s"]  # QA's, by hand: 'internal error: KeyError' in `loopfan report`


# (name, how the report is damaged, the path the error names)
DAMAGES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("bad base64", _bad_base64, "histograms/connect_latency/data"),
    ("not zlib", _not_zlib, "histograms/connect_latency/data"),
    ("established many", lambda r: r.update(established="many"), "established"),  # QA's: "'<' not supported"
    ("negative count", lambda r: r.update(failed_total=-1), "failed_total"),
    ("latency a string", lambda r: r["connect_latency_ms"].update(p99="12ms"), "connect_latency_ms/p99"),
    ("histogram a list", lambda r: r["histograms"].update(connect_latency=[1, 2]), "histograms/connect_latency"),
    ("ttfb not zlib", _ttfb_not_zlib, "histograms/ttfb/data"),
    ("ttfb without its unit", lambda r: r["histograms"].update(ttfb={"count": 3}), "histograms/ttfb"),
    ("latency not zlib", _latency_not_zlib, "histograms/latency/data"),
    ("latency without its unit", lambda r: r["histograms"].update(latency={"count": 3}), "histograms/latency"),
    ("latency a number", lambda r: r["histograms"].update(latency=12.5), "histograms/latency"),
    ("check without a verdict", lambda r: r.update(checks=[{"expression": "failed==0", "kind": "check",
                                                             "metric": "failed", "actual": 0, "passed": "yes"}]),
     "checks/0/passed"),
    ("traffic of an unknown kind", lambda r: r.update(traffic={"kind": "smtp"}), "traffic/kind"),
    # The review's: list items lacking their keys (a KeyError in the page), columns of two lengths.
    ("failure without its cause", lambda r: r.update(failures=[{}]), "failures/0"),
    ("check without its keys", lambda r: r.update(checks=[{"passed": True}]), "checks/0"),
    # QA's: a block lacking a key its readers index ('internal error: KeyError' in `loopfan report`).
    ("traffic without its window", _traffic_without_window, "traffic"),
    ("connect rate without its peak", lambda r: r.update(connect_rate_per_s={"mean": 5000.0}), "connect_rate_per_s"),
]


def damaged(name: str) -> dict[str, Any]:
    rep = fake_report([100] * 100)
    next(damage for n, damage, _ in DAMAGES if n == name)(rep)
    return rep


def test_the_schema_uses_only_keywords_the_validator_knows() -> None:
    found: set[str] = set()

    def walk(node: Any, *, names: bool = False) -> None:
        if isinstance(node, dict):
            for key, sub in node.items():
                if not names:
                    found.add(key)
                walk(sub, names=not names and key in ("properties", "$defs"))
        elif isinstance(node, list):
            for sub in node:
                walk(sub)

    walk(schema())
    assert found <= KNOWN_KEYWORDS, found - KNOWN_KEYWORDS


def test_a_whole_report_has_no_problem_and_a_partial_one_neither() -> None:
    """Top-level keys a report lacks are not judged: earlier loopfan versions wrote fewer."""
    rep = fake_report([100] * 100)
    assert report_problems(rep) == []
    del rep["histograms"], rep["cpu_s"]
    assert report_problems(rep) == []


@pytest.mark.parametrize("names", [("ttfb",), ("latency",), ("latency", "ttfb")])
def test_a_traffic_report_carries_its_latency_and_ttfb_histograms_optionally(names: tuple[str, ...]) -> None:
    """histograms.latency (a traffic run's message latency) and histograms.ttfb (its time to first
    byte) are histograms like connect_latency's, and optional: reports without traffic, and those
    of earlier versions, have none (earlier still: ttfb's without latency's)."""
    rep = traffic_report()
    for name in names:
        rep["histograms"][name] = dict(rep["histograms"]["connect_latency"])
    assert report_problems(rep) == []
    assert schema()["properties"]["histograms"]["required"] == ["connect_latency"]
    if importlib.util.find_spec("jsonschema") is not None:
        assert [e for e in validation_errors(rep) if not e.startswith("(top):")] == []


def test_a_block_lacking_a_key_is_named_with_every_key_it_lacks() -> None:
    """Below the top level every object keeps the keys it has carried since it first appeared: one
    lacking some is damaged, named at the block (a traffic block without window_s is no wrong null)."""
    rep = traffic_report()
    assert report_problems(rep) == []
    del rep["traffic"]["window_s"], rep["traffic"]["hdr_log"]
    assert report_problems(rep) == ["traffic: lacks 'window_s', 'hdr_log'"]


@pytest.mark.parametrize("name, at", [(n, at) for n, _, at in DAMAGES])
def test_report_problems_name_the_damaged_value(name: str, at: str) -> None:
    problems = report_problems(damaged(name))
    assert problems and problems[0].startswith(f"{at}: "), problems


@pytest.mark.parametrize("name", [n for n, _, _ in DAMAGES if n not in ("bad base64", "not zlib", "ttfb not zlib",
                                                                            "latency not zlib")])
def test_report_problems_agree_with_jsonschema(name: str) -> None:
    """Where jsonschema can tell (it does not decode base64), it finds the same values wrong; its
    'required' complaints at the top level aside (the fake report is a partial one there; ours
    judges 'required' below the top only). jsonschema puts a oneOf that nothing fits at the value
    itself; ours goes down into the branch it comes closest to."""
    pytest.importorskip("jsonschema")
    theirs = {e.split(":")[0] for e in validation_errors(damaged(name))
              if "is a required property" not in e or not e.startswith("(top):")}
    ours = {p.split(":")[0] for p in report_problems(damaged(name))}
    assert theirs and ours
    assert all(any(o == t or o.startswith(f"{t}/") for t in theirs) for o in ours), (theirs, ours)
    assert all(any(o == t or o.startswith(f"{t}/") for o in ours) for t in theirs), (theirs, ours)


@pytest.fixture
def files(tmp_path: Path) -> Callable[[str], tuple[str, str]]:
    """files(damage) -> (a good report, a damaged one), written to tmp_path."""
    def write(name: str) -> tuple[str, str]:
        good, bad = tmp_path / "good.json", tmp_path / "bad.json"
        good.write_text(json.dumps(fake_report([100] * 100)))
        bad.write_text(json.dumps(damaged(name)))
        return str(good), str(bad)

    return write


@pytest.mark.parametrize("name, at", [(n, at) for n, _, at in DAMAGES])
@pytest.mark.parametrize("command", ["report", "report --baseline", "compare new", "compare base", "trend"])
def test_every_command_refuses_a_damaged_report_in_one_line(
        name: str, at: str, command: str, files: Callable[[str], tuple[str, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = files(name)
    argv = {
        "report": ["report", bad, "-o", str(tmp_path / "page.html")],
        "report --baseline": ["report", good, "--baseline", bad, "-o", str(tmp_path / "page.html")],
        "compare new": ["compare", good, bad],
        "compare base": ["compare", bad, good, "--format", "markdown"],
        "trend": ["trend", good, bad],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "internal error" not in err, err
    assert err.startswith(f"loopfan: error: {bad} is a damaged loopfan run report: {at}: "), err
    assert not (tmp_path / "page.html").exists()


def test_time_series_columns_must_match_their_time_axis() -> None:
    """A column shorter than t_s drew nothing and failed deep in matplotlib ('x and y must have
    same first dimension'); it is a damaged report, named at the load."""
    rep = fake_report([100] * 100)
    rep["series"] = {"interval_s": 1.0, "target": 10, "t_s": [1.0, 2.0], "open": [5, 10], "health": {"rss_bytes": [1]},
                     "processes": {"t_s": [1.0], "stride": 1, "items": [{"where": ["a", "b"], "open": [1, 2]}]}}
    lengths = [p for p in report_problems(rep) if "values for" in p]  # (the item lacks keys too)
    assert lengths == ["series/health/rss_bytes: 1 values for 2 times",
                       "series/processes/items/0/open: 2 values for 1 times"]
    rep["series"]["health"]["rss_bytes"] = [1, 2]
    rep["series"]["processes"]["items"][0]["open"] = [1]
    assert not [p for p in report_problems(rep) if "values for" in p]
