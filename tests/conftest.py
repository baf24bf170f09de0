"""Shared test fixtures. Keep this small and generic: helpers more than one test file needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loopfan.hostfacts import HostFacts

FIXTURES = Path(__file__).parent / "fixtures"

# The development/CI machine as HostFacts: 20,000 fds not raisable, 24 GiB, the default sysctls.
DEV_MACHINE = HostFacts(
    platform="linux",
    kernel="6.18",
    cpu_count=2,
    port_range=(32768, 60999),
    bind_no_port=True,
    nofile_soft=20_000,
    nofile_hard=20_000,
    nofile_hard_raisable=False,
    file_max=2_466_170,
    files_open=400,
    nr_open=1_048_576,
    mem_total_bytes=24 * 2**30,
    mem_available_bytes=23 * 2**30,
    somaxconn=4096,
    tcp_max_syn_backlog=2048,
    tcp_tw_reuse=2,
    tcp_max_tw_buckets=131_072,
    tcp_mem_pages=(287_898, 383_867, 575_796),
    is_root=True,
)

# A Mac with two lo0 aliases (127.0.0.2-3), Apple Silicon defaults.
MAC = HostFacts(
    platform="macos",
    kernel="23.4.0",
    cpu_count=8,
    port_range=(49152, 65535),
    bind_no_port=False,
    nofile_soft=256,
    nofile_hard=2**63 - 1,
    file_max=245_760,
    files_open=6_000,
    maxfiles=245_760,
    maxfilesperproc=122_880,
    mem_total_bytes=16 * 2**30,
    mem_available_bytes=16 * 2**30,
    somaxconn=128,
    loopback_route_all=False,
    loopback_addresses=frozenset({"127.0.0.1", "127.0.0.2", "127.0.0.3"}),
)


@pytest.fixture
def fixture_text() -> Callable[[str], str]:
    """fixture_text("linux/meminfo.txt") -> the recorded output under tests/fixtures/."""
    return lambda name: (FIXTURES / name).read_text()


@pytest.fixture
def dev_facts() -> Callable[..., HostFacts]:
    """dev_facts(**changes): the dev machine's HostFacts with some fields changed."""

    def make(**changes: Any) -> HostFacts:
        return replace(DEV_MACHINE, **changes)

    return make


@pytest.fixture
def mac_facts() -> Callable[..., HostFacts]:
    """mac_facts(**changes): a Mac's HostFacts with some fields changed."""

    def make(**changes: Any) -> HostFacts:
        return replace(MAC, **changes)

    return make


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private LOOPFAN_STATE_DIR, so no test reads or writes the real state."""
    path = tmp_path / "state"
    monkeypatch.setenv("LOOPFAN_STATE_DIR", str(path))
    yield path
