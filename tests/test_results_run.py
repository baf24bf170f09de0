"""Results of a real (small) run: report.json against its schema, the HTML page in headless
Chromium with networking disabled, compare/report/trend exit codes, --check, and a Prometheus scrape.

One run of 3,000 connections (two client processes) is shared by the module; the built-in server
and the source addresses are moved to blocks of this module's own (no meeting with a real run).
Chromium (Debian package `chromium`, in .ci/run) is skipped with the reason when absent.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

import loopfan.commands.run as run_command
from loopfan.cli import main
from loopfan.hostfacts import raise_nofile_soft_limit
from loopfan.pools import parse_pool
from loopfan.results.html import SECTIONS
from loopfan.results.schema import report_problems, validation_errors

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def listen_and_sources() -> Iterator[list[str]]:
    """argv for sources of our own; the built-in server moved to 127.<random>.x:free port."""
    import random

    raise_nofile_soft_limit()
    prefix = f"127.{random.randint(150, 250)}.{random.randint(0, 255)}."
    src = f"127.{random.randint(150, 250)}.{random.randint(0, 255)}."
    port = free_port(*(f"{prefix}{i}" for i in range(1, 9)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_command, "PlanRequest", functools.partial(
            run_command.PlanRequest, listen_pool=parse_pool(f"{prefix}1-{prefix}8"), listen_port=port))
        yield ["--sources", f"{src}1-{src}4", "--per-process", "1500", "--progress", "none"]


def run(argv: list[str]) -> int:
    return main(["run", *argv])


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, listen_and_sources: list[str]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reports")
    out = {}
    for name in ("base", "new"):
        status = run(["-c", "3000", "--hold", "1s", *listen_and_sources, "--json", str(d / f"{name}.json"),
                      "--html", str(d / f"{name}.html"), "--check", "failed==0", "--check",
                      "connect_latency.p99<5s"])
        assert status == 0
        out[name] = d / f"{name}.json"
        out[name + "_html"] = d / f"{name}.html"
    return out


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_report_json_is_valid_and_holds_the_time_series(reports: dict[str, Path]) -> None:
    rep = load(reports["new"])
    assert validation_errors(rep) == [] and report_problems(rep) == []
    s = rep["series"]
    n = len(s["t_s"])
    assert n >= 2 and all(len(s[k]) == n for k in ("open", "connects_per_s", "failures_per_s", "phase"))
    assert max(s["open"]) == 3000 and s["target"] == 3000
    assert sum(c for c in s["latency_ms"]["count"] if c) == 3000  # every connect in exactly one interval
    procs = s["processes"]["items"]
    assert sorted((p["role"], p["index"]) for p in procs if p["role"] == "client") == [("client", 0), ("client", 1)]
    assert all(p["fd_limit"] for p in procs)
    assert rep["histograms"]["connect_latency"]["count"] == 3000
    assert [c["passed"] for c in rep["checks"]] == [True, True]
    assert rep["identity"]["host"]["facts"]["nofile_soft"] >= 1500


def test_html_has_every_section_in_order_and_nothing_external(reports: dict[str, Path]) -> None:
    page = reports["new_html"].read_text()
    positions = [page.index(f'<h2 id="{sid}">') for sid, _ in SECTIONS]
    assert positions == sorted(positions)
    assert "<script" not in page and "@import" not in page
    assert re.findall(r"url\((?!#)", page) == []  # only local references (SVG clip paths: url(#id))
    assert "http://" not in page.replace("http://www.w3.org/", "")  # SVG namespaces are names, not fetches
    assert "https://" not in page
    assert len(page.encode()) < 600_000


def _page_requests(netlog: Path) -> list[str]:
    """URLs a page asked for: requests carrying a User-Agent header are the renderer's; Chromium's own
    background fetches (component updates and the like, blocked here anyway) carry none."""
    log = json.loads(netlog.read_text())
    cors = log["constants"]["logEventTypes"]["CORS_REQUEST"]
    urls = []
    for e in log["events"]:
        p = e.get("params") or {}
        headers = (p.get("request_headers") or {}).get("headers") or []
        if e["type"] == cors and "url" in p and any(h.lower().startswith("user-agent:") for h in headers):
            urls.append(p["url"])
    return urls


def chromium(page: Path, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    assert CHROMIUM is not None
    netlog = tmp / "net.json"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         # Networking off: every name resolves to nothing and every fetch goes to a closed loopback port.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", f"--log-net-log={netlog}",
         *extra, page.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return proc, _page_requests(netlog)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_chromium_detects_a_page_request(tmp_path: Path) -> None:
    """The detector itself: a page that does fetch something is caught."""
    page = tmp_path / "fetches.html"
    page.write_text('<html><body><img src="http://127.0.0.9:9/x.png"></body></html>')
    _, requests = chromium(page, tmp_path, "--dump-dom")
    assert requests == ["http://127.0.0.9:9/x.png"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_report_renders_in_chromium_offline(reports: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(reports["new"]), "-o", str(page), "--baseline", str(reports["base"])]) == 0
    dom, requests = chromium(page, tmp_path / "a", "--dump-dom")
    assert requests == []
    for sid, title in SECTIONS:
        assert f'id="{sid}"' in dom.stdout and title in dom.stdout
    assert dom.stdout.count("<svg") >= 7  # the errors chart appears only with failures
    shot = tmp_path / "shot.png"
    proc, requests = chromium(page, tmp_path / "b", f"--screenshot={shot}", "--window-size=1000,2600",
                              "--hide-scrollbars")
    assert requests == [] and shot.stat().st_size > 50_000, proc.stderr[-500:]


def test_compare_gates_and_formats(reports: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, new = str(reports["base"]), str(reports["new"])
    assert main(["compare", base, new, "--gate", "failed:0", "--gate", "latency.p50:+1000%"]) == 0
    assert "connect_latency.p99" in capsys.readouterr().out
    assert main(["compare", base, new, "--gate", "established>=1M"]) == 1
    assert "gate FAIL: established>=1M" in capsys.readouterr().out
    assert main(["compare", base, new, "--format", "markdown", "--gate", "failed:0"]) == 0
    assert "| metric | baseline | new | change | |" in capsys.readouterr().out
    assert main(["compare", base, new, "--gate", "latency.p99:+lots"]) == 2
    assert "--gate" in capsys.readouterr().err
    assert main(["compare", base, "/nonexistent.json"]) == 2
    assert main(["trend", base, new]) == 0
    assert "last run vs the median" in capsys.readouterr().out


def test_failing_check_exits_1_and_bad_check_exits_2(listen_and_sources: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-c", "500", *listen_and_sources, "--check", "established>=1M", "--json",
                str(tmp_path / "r.json")]) == 1
    assert "check FAIL: established>=1M" in capsys.readouterr().out
    assert load(tmp_path / "r.json")["checks"][0]["passed"] is False
    assert run(["-c", "500", *listen_and_sources, "--check", "connect_latency.p99<fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a number" in err


def test_ndjson_progress_is_one_object_per_interval(listen_and_sources: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in listen_and_sources if a not in ("--progress", "none")]
    assert run(["-c", "500", "--hold", "1.2s", *argv, "--progress", "ndjson"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines) >= 2 and {"open", "target", "connects_per_s", "latency_ms", "health"} <= lines[-1].keys()


def scraped_during(argv: list[str], complete: Callable[[str], bool]) -> list[str]:
    """Run with --prometheus on a free port, scraping /metrics until a scrape is `complete` (or
    20 s): the scrapes, after checking that the run passed and took its exporter down with it."""
    pytest.importorskip("prometheus_client")
    port = free_port("127.0.0.1")
    scraped: list[str] = []

    def scrape() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(complete(s) for s in scraped):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    scraped.append(r.read().decode())
            except OSError:
                time.sleep(0.05)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        assert run([*argv, "--prometheus", f"127.0.0.1:{port}"]) == 0
    finally:
        t.join(25)
    with pytest.raises(OSError):  # stopped with the run
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
    return scraped


def test_prometheus_is_scraped_during_a_run(listen_and_sources: list[str]) -> None:
    # Until one scrape shows the held connections and an interval's latency (the first interval
    # sample may come after the ramp is already done).
    def complete(s: str) -> bool:
        return "loopfan_connections_open 500" in s and "loopfan_connect_latency_seconds{quantile=" in s

    scraped = scraped_during(["-c", "500", "--hold", "2s", *listen_and_sources], complete)
    # (the first scrape with a latency may still be in the ramp: CI took one with fewer open)
    body = next((s for s in scraped if complete(s)), scraped[-1])
    assert "loopfan_connections_open 500.0" in body or "loopfan_connections_open 500" in body
    assert "loopfan_connections_target 3000" not in body and "loopfan_connections_target 500" in body
    assert 'loopfan_phase{phase="' in body and "loopfan_connect_latency_seconds{quantile=" in body
    assert not any("loopfan_traffic_" in s for s in scraped)  # a hold-only run has no traffic families


def test_prometheus_exports_the_traffic_of_a_run(listen_and_sources: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Echo over 100 connections for 2 s: the traffic families fill in while it talks."""
    def value(s: str, name: str) -> float:
        m = re.search(rf"^{re.escape(name)} (\S+)$", s, re.M)
        return float(m.group(1)) if m else 0.0

    # Intervals of 0.25 s: a worker's rates start at its second sample, which 1 s intervals might
    # place after a 1 s traffic phase (and the exporter) ended.
    monkeypatch.setattr(run_command, "RunConfig", functools.partial(run_command.RunConfig, series_interval_s=0.25))
    scraped = scraped_during(["-c", "100", "--traffic", "echo", "--duration", "2s", *listen_and_sources],
                             lambda s: value(s, "loopfan_traffic_messages_total") > 0)
    body = next((s for s in scraped if value(s, "loopfan_traffic_messages_total") > 0), None)
    assert body is not None, f"no scrape of {len(scraped)} showed the traffic"
    # prometheus_client writes the TYPE line of a counter with or without _total, by version.
    assert re.search(r"^# TYPE loopfan_traffic_messages(_total)? counter$", body, re.M)
    assert value(body, "loopfan_connections_target") == 100
    for name in ("loopfan_traffic_received_bytes_total", "loopfan_traffic_sent_bytes_total"):
        assert value(body, name) > 0, name
    assert 'loopfan_traffic_latency_seconds{quantile="0.99"}' in body
    assert re.search(r"^# TYPE loopfan_traffic_errors(_total)? counter$", body, re.M)
    assert "loopfan_traffic_errors_total{" not in body  # an echo run has no error to count


@pytest.mark.usefixtures("no_leaks")
def test_prometheus_port_taken_is_bad_input_before_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A port something else listens on: one line and exit 2 before any work, not a run that fails
    halfway with its connections counted as closed by the peer (and no socket of ours left open)."""
    pytest.importorskip("prometheus_client")

    def no_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run started")

    monkeypatch.setattr(run_command, "run_plan", no_run)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status = run(["-c", "10", "--hold", "1s", "--progress", "none", "--prometheus", f"127.0.0.1:{port}",
                      "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith(f"loopfan: error: --prometheus 127.0.0.1:{port}: cannot listen")
    assert "choose another port" in err and "internal error" not in err
    assert not (tmp_path / "r.json").exists()


def test_prometheus_on_port_0_says_which_port_it_got(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Any free port is of no use unless the user learns which: it is said before the run."""
    pytest.importorskip("prometheus_client")
    def no_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("stop here: the note comes before the run")

    monkeypatch.setattr(run_command, "run_plan", no_run)
    run(["-c", "10", "--hold", "0", "--progress", "none", "--prometheus", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert re.search(r"--prometheus serves on http://127\.0\.0\.1:[1-9][0-9]*/metrics", err), err


@pytest.mark.parametrize("addr", ["10.0.0.1:9464", "127.0.0.1:http"])
def test_prometheus_refuses_non_loopback_and_bad_ports(addr: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-c", "10", "--prometheus", addr]) == 2
    assert "--prometheus" in capsys.readouterr().err

