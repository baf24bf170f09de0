"""Numbers in sentences: thousands separators, and nouns that agree with their count. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from loopfan.cli import main
from loopfan.commands.demo import explanation
from loopfan.doctor import check_fds
from loopfan.hostfacts import HostFacts
from loopfan.planner import PlanRequest, plan
from loopfan.render import counted


@pytest.mark.parametrize("n, noun, text", [
    (1, "source address", "1 source address"), (2, "source address", "2 source addresses"),
    (1, "endpoint", "1 endpoint"), (0, "endpoint", "0 endpoints"), (5129, "client process", "5,129 client processes"),
])
def test_counted(n: int, noun: str, text: str) -> None:
    assert counted(n, noun) == text


def test_plan_of_one_source_and_one_target_reads_in_the_singular(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-c", "100", "--sources", "127.12.0.5", "127.0.0.1:80"]) == 0
    out = capsys.readouterr().out
    assert "Plan: 100 connections to 1 endpoint - feasible" in out
    assert "1 address: 127.12.0.5" in out and "1 target endpoint: 127.0.0.1:80" in out


def test_doctor_counts_processes_with_separators(dev_facts: Callable[..., HostFacts]) -> None:
    facts = dev_facts()
    finding = check_fds(facts, plan(PlanRequest(connections=30_000_000), facts))
    text = f"{finding.found} {finding.needed} {finding.fix}"
    assert "1,539 client processes and 1,539 server processes" in text  # was "1539 client processes"


def test_demo_explanation_agrees_with_its_numbers() -> None:
    rep: dict[str, Any] = {"established": 100, "plan": {
        "port_budget": {"ports": 28_232, "budget": 12_704, "fill_ratio": 0.45}, "source_addresses": 1,
        "targets": ["127.100.0.1:7070"], "connections_per_process": 19_500, "client_processes": 1,
        "server_processes": 1}}
    text = explanation(rep)
    assert "over 1 source address and the server over 1 listen address " in text
    assert "so 1 client process and 1 server process shared the work" in text


def test_the_ports_limit_of_one_source_reads_in_the_singular(dev_facts: Callable[..., HostFacts]) -> None:
    from loopfan.pools import parse_pool

    facts = dev_facts()
    lim = plan(PlanRequest(connections=30_000, sources=parse_pool("127.212.0.5")), facts).first_limit
    assert lim is not None and lim.detail.startswith("1 source address x "), lim
