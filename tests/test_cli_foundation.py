"""`loopfan plan` and `loopfan doctor` through loopfan.cli.main(argv): output, JSON, exit status."""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable

import pytest

from loopfan.cli import main
from loopfan.hostfacts import HostFacts, read_host_facts

Capture = pytest.CaptureFixture[str]
Facts = Callable[..., HostFacts]

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="plans against this Linux host")


@linux_only
def test_plan_one_million_as_text(capsys: Capture) -> None:
    assert main(["plan", "-c", "1000000"]) == 0
    out = capsys.readouterr().out
    assert "Plan: 1,000,000 connections to the built-in server" in out
    for row in ("sources", "targets", "groups", "processes", "memory"):
        assert row in out
    assert "127.100.0.1:7070" in out  # the built-in server's first listen address


@linux_only
def test_plan_json_for_one_target(capsys: Capture) -> None:
    assert main(["plan", "-c", "100000", "127.0.0.1:8080", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "loopfan.plan/1"
    assert data["connections"] == data["planned_connections"] == 100_000
    assert data["feasible"] is True and data["builtin_server"] is False
    assert data["targets"] == ["127.0.0.1:8080"]
    assert data["source_addresses"] == len(data["sources"]) >= 4
    budget = data["port_budget"]["budget"]
    assert all(g["connections"] < budget for g in data["groups"])
    assert sum(g["connections"] for g in data["groups"]) == 100_000
    assert sum(s["connections"] for s in data["client_shards"]) == 100_000
    assert all(s["connections"] <= data["connections_per_process"] for s in data["client_shards"])
    assert data["server_shards"] == [] and data["server_processes"] == 0


@linux_only
def test_plan_accepts_counts_with_suffixes(capsys: Capture) -> None:
    assert main(["plan", "-c", "100k", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["connections"] == 100_000


@linux_only
def test_plan_fill_ratio_option(capsys: Capture) -> None:
    assert main(["plan", "-c", "10000", "127.0.0.1:80", "--fill-ratio", "0.1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["port_budget"]["fill_ratio"] == 0.1
    assert all(g["connections"] <= data["port_budget"]["budget"] for g in data["groups"])


@linux_only
def test_plan_takes_url_targets_as_run_does(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    # QA: `plan http://127.0.0.1:8097/` was "ambiguous ... write [http://127.0.0.1]:8097/".
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert main(["plan", "-c", "10", "http://127.0.0.1-127.0.0.2:8097/", "ws://127.0.0.3/", "--json"]) == 2
    assert "one scheme" in capsys.readouterr().err  # the same parser as run, with its rules
    assert main(["plan", "-c", "10", "http://127.0.0.1-127.0.0.2:8097/x", "http://127.0.0.3/x", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["targets"] == ["127.0.0.1:8097", "127.0.0.2:8097", "127.0.0.3:80"]
    assert len(data["client_shards"]) == 3  # traffic: one client process per core, as run plans it
    assert main(["plan", "-c", "10", "127.0.0.1:8097", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["client_shards"]) == 1  # holding only


BAD_INPUT = [
    (["plan", "-c", "50", "10.1.2.3:80"], "not a loopback address"),
    (["plan", "-c", "50", "127.0.0.1:99999"], "out of range"),
    (["plan", "-c", "50", "127.0.0.1:0"], "out of range"),
    (["plan", "-c", "50", "127.0.0.9-127.0.0.2:80"], "reversed"),
    (["plan", "-c", "50", "127.0.0.1:9003-9000"], "reversed"),
    (["plan", "-c", "50", "--sources", "127.0.0.9-127.0.0.2"], "reversed"),
    (["plan", "-c", "50", "--sources", "10.0.0.0/8"], "not a loopback address"),
    (["plan", "-c", "0"], "at least 1"),
    (["plan", "-c", "-5"], "at least 1"),
    (["plan", "-c", "lots"], "not a number"),
    (["plan", "-c", "1.5"], "whole number"),
    (["plan"], "--connections"),
    (["plan", "-c", "50", "127.0.0.x:80"], "not an IPv4 address"),
    (["plan", "-c", "50", "127.0.0.1"], "has no port"),
    (["plan", "-c", "50", "ftp://127.0.0.1/"], "unknown scheme"),
    (["plan", "-c", "50", "--sources", "127.0.0.1/40"], "not a valid CIDR"),
    (["plan", "-c", "50", "--bogus"], "No such option"),
    (["plan", "-c", "50", "--fill-ratio", "2"], "fill-ratio"),
    (["doctor", "-c", "0"], "at least 1"),
    (["doctor", "--bogus"], "No such option"),
    (["no-such-command"], "No such command"),
]


@pytest.mark.parametrize(("argv", "words"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], words: str, capsys: Capture) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith("loopfan: error: ")
    assert err.count("\n") == 1, err  # one line
    assert words in err
    assert "Traceback" not in err


def test_non_loopback_allowed_only_for_this_hosts_addresses(capsys: Capture) -> None:
    # 203.0.113.5 (TEST-NET-3) is nobody's address here: refused after a local bind() check, which
    # sends nothing.
    assert main(["plan", "-c", "50", "203.0.113.5:80", "--allow-non-loopback"]) == 2
    assert "not an address of this host" in capsys.readouterr().err


@linux_only
def test_doctor_small_run_works_here(capsys: Capture) -> None:
    assert main(["doctor", "-c", "1000"]) == 0
    assert "should work on this host" in capsys.readouterr().out


@linux_only
def test_doctor_json(capsys: Capture) -> None:
    assert main(["doctor", "-c", "1000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "loopfan.doctor/1"
    assert data["ok"] is True and data["connections"] == 1000
    checks = {f["check"] for f in data["findings"]}
    assert {"open files per process", "fs.file-max", "ephemeral ports", "memory"} <= checks
    assert all(f["severity"] in ("ok", "info", "warn", "fail") for f in data["findings"])


@linux_only
def test_doctor_one_million_names_the_per_process_limit(capsys: Capture) -> None:
    facts = read_host_facts()
    if facts.nofile_hard_raisable:
        pytest.skip("this host can raise its open-file hard limit")
    main(["doctor", "-c", "1000000"])
    out = " ".join(capsys.readouterr().out.split())  # undo the terminal wrapping
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f"hard {hard:,}" in out
    assert "cannot be raised" in out


def test_doctor_one_million_on_the_dev_machine(
    dev_facts: Facts, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    import loopfan.commands.doctor as cmd

    monkeypatch.setattr(cmd, "read_host_facts", lambda: dev_facts())
    assert main(["doctor", "-c", "1000000"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "soft 20,000, hard 20,000" in out and "cannot be raised" in out
    assert "52 client processes and 52 server processes" in out


def test_doctor_exit_1_when_the_run_would_not_work(
    dev_facts: Facts, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    import loopfan.commands.doctor as cmd

    monkeypatch.setattr(cmd, "read_host_facts", lambda: dev_facts(mem_available_bytes=2**30))
    assert main(["doctor", "-c", "1000000"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "would not work" in out


def test_plan_not_feasible_still_exits_0_and_names_the_limit(
    dev_facts: Facts, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    import loopfan.commands.plan as cmd

    monkeypatch.setattr(cmd, "read_host_facts", lambda: dev_facts(file_max=100_000))
    assert main(["plan", "-c", "1000000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["feasible"] is False
    assert data["first_limit"]["resource"] == "fs.file-max"
    assert data["holdable_connections"] < 1_000_000
