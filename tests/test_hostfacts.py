"""Host-fact parsers on recorded outputs (tests/fixtures), and read_host_facts() on this host."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

import pytest

from loopfan.hostfacts import (
    MACOS_SYSCTLS,
    UNLIMITED,
    HostFacts,
    macos_facts_from_outputs,
    parse_file_nr,
    parse_ifconfig_inet,
    parse_int,
    parse_launchctl_limit,
    parse_meminfo,
    parse_port_range,
    parse_proc_net_addresses,
    parse_route_table_local,
    parse_sysctl_output,
    read_host_facts,
    run_command,
)

Text = Callable[[str], str]

# --- Linux, recorded on the dev VM ---------------------------------------------------------------


def test_meminfo(fixture_text: Text) -> None:
    mem = parse_meminfo(fixture_text("linux/meminfo.txt"))
    assert mem["MemTotal"] == 24_684_092 * 1024
    assert mem["MemAvailable"] == 24_159_360 * 1024
    assert 0 < mem["MemAvailable"] <= mem["MemTotal"]
    # Lines without a kB unit (HugePages_Total) are plain counts.
    assert mem["HugePages_Total"] == 0


def test_file_nr(fixture_text: Text) -> None:
    assert parse_file_nr(fixture_text("linux/file-nr.txt")) == 414


def test_local_route_covers_127_8(fixture_text: Text) -> None:
    assert parse_route_table_local(fixture_text("linux/ip-route-table-local.txt"))


def test_local_route_missing() -> None:
    # The same table with the 127/8 route removed (`ip route del local 127.0.0.0/8 dev lo table local`).
    text = (
        "local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1 \n"
        "broadcast 127.255.255.255 dev lo proto kernel scope link src 127.0.0.1 \n"
    )
    assert not parse_route_table_local(text)
    assert not parse_route_table_local("local 127.0.0.0/8 dev lo0 scope host\n")  # another device


def test_lo_addresses(fixture_text: Text) -> None:
    assert parse_proc_net_addresses(fixture_text("linux/ip-addr-lo.txt")) == {"127.0.0.1"}
    extra = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "1: lo    inet 127.0.0.2/8 scope host secondary lo\\       valid_lft forever preferred_lft forever\n"
    )
    assert parse_proc_net_addresses(extra) == {"127.0.0.1", "127.0.0.2"}


def test_port_range(fixture_text: Text) -> None:
    assert parse_port_range(fixture_text("linux/ip_local_port_range.txt")) == (32768, 60999)


@pytest.mark.parametrize("text", ["", "32768", "a b", "60999 32768", "1 70000", "1 2 3"])
def test_garbled_port_range_is_unknown(text: str) -> None:
    assert parse_port_range(text) is None


def test_linux_sysctl_output(fixture_text: Text) -> None:
    values = parse_sysctl_output(fixture_text("linux/sysctl.txt"))
    assert values["net.core.somaxconn"] == "4096"
    assert values["fs.file-max"] == "2466177"
    assert values["net.ipv4.tcp_mem"].split() == ["287901", "383868", "575802"]


@pytest.mark.parametrize(
    ("text", "value"), [("4096\n", 4096), ("  12 x", 12), ("", None), (None, None), ("abc", None)]
)
def test_parse_int(text: str | None, value: int | None) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["", "12", "x 0 1"])
def test_garbled_file_nr_is_unknown(text: str) -> None:
    assert parse_file_nr(text) is None


# --- macOS, in the real output formats -----------------------------------------------------------


def test_ifconfig_lo0_without_aliases(fixture_text: Text) -> None:
    assert parse_ifconfig_inet(fixture_text("macos/ifconfig-lo0.txt")) == {"127.0.0.1"}


def test_ifconfig_lo0_with_aliases(fixture_text: Text) -> None:
    addrs = parse_ifconfig_inet(fixture_text("macos/ifconfig-lo0-aliases.txt"))
    assert addrs == {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.10"}  # inet6 lines ignored


def test_macos_sysctl_covers_every_key_asked(fixture_text: Text) -> None:
    for name in ("macos/sysctl-arm64.txt", "macos/sysctl-intel.txt"):
        values = parse_sysctl_output(fixture_text(name))
        assert set(values) == set(MACOS_SYSCTLS)


@pytest.mark.parametrize(
    ("name", "limits"),
    [
        ("macos/launchctl-limit-maxfiles.txt", (256, UNLIMITED)),
        ("macos/launchctl-limit-maxfiles-raised.txt", (524_288, 524_288)),
    ],
)
def test_launchctl_limit(fixture_text: Text, name: str, limits: tuple[int, int]) -> None:
    assert parse_launchctl_limit(fixture_text(name)) == limits


@pytest.mark.parametrize("text", ["", "maxproc 2666 4000", "maxfiles lots many"])
def test_launchctl_garbled(text: str) -> None:
    assert parse_launchctl_limit(text) is None


def mac_from_fixtures(fixture_text: Text, sysctl: str, ifconfig: str) -> HostFacts:
    return macos_facts_from_outputs(
        sysctl=parse_sysctl_output(fixture_text(sysctl)),
        ifconfig_lo0=fixture_text(ifconfig),
        launchctl=fixture_text("macos/launchctl-limit-maxfiles.txt"),
        kernel="23.4.0",
        nofile_soft=256,
        nofile_hard=UNLIMITED,
    )


def test_macos_facts_apple_silicon(fixture_text: Text) -> None:
    f = mac_from_fixtures(fixture_text, "macos/sysctl-arm64.txt", "macos/ifconfig-lo0-aliases.txt")
    assert f.platform == "macos" and not f.bind_no_port and not f.loopback_route_all
    assert f.port_range == (49152, 65535) and f.port_count == 16_384
    assert f.maxfiles == f.file_max == 245_760
    assert f.maxfilesperproc == 122_880
    assert f.nofile_usable == 122_880  # hard limit unlimited: kern.maxfilesperproc is the real ceiling
    assert f.files_open == 6_412
    assert f.somaxconn == 128
    assert f.mem_total_bytes == 16 * 2**30 and f.cpu_count == 8
    assert f.launchctl_maxfiles == (256, UNLIMITED)
    assert f.loopback_addresses == {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.10"}


def test_macos_facts_intel_without_aliases(fixture_text: Text) -> None:
    f = mac_from_fixtures(fixture_text, "macos/sysctl-intel.txt", "macos/ifconfig-lo0.txt")
    assert f.maxfilesperproc == 10_240 and f.nofile_usable == 10_240
    assert f.loopback_addresses == {"127.0.0.1"}


def test_macos_facts_when_sysctl_says_nothing() -> None:
    f = macos_facts_from_outputs(sysctl={}, ifconfig_lo0="", launchctl="")
    assert f.port_range == (49152, 65535)  # the documented default, not a guess of Linux's
    assert f.maxfiles is None and f.mem_total_bytes is None and f.launchctl_maxfiles is None


# --- this host -----------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_read_host_facts_on_this_linux_host() -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str]) -> str:
        calls.append(argv)
        return run_command(argv)

    f = read_host_facts(runner)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert f.platform == "linux"
    assert (f.nofile_soft, f.nofile_hard) == (soft, hard)
    assert 1024 <= f.port_range[0] <= f.port_range[1] <= 65535
    assert f.mem_available_bytes is not None and f.mem_available_bytes > 0
    assert f.file_max is not None and f.file_max > 0
    assert f.bind_no_port  # Python >= 3.11 on Linux
    assert ["ip", "route", "show", "table", "local"] in calls
    # The limit was probed, and put back exactly as it was.
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_without_ip_command_the_route_is_assumed() -> None:
    # `ip` missing (a minimal container): the facts still build, with the route Linux always has.
    f = read_host_facts(lambda argv: "")
    assert f.loopback_route_all and f.loopback_addresses == {"127.0.0.1"}


def test_soft_fd_limit_rises_to_a_ceiling_when_the_hard_limit_is_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS: hard 'unlimited', soft 256; the soft limit goes to the planner's per-process ceiling,
    halving while the kernel refuses (it refuses more than kern.maxfilesperproc)."""
    import resource

    from loopfan import hostfacts

    limits = {"soft": 256}
    calls: list[int] = []

    def getrlimit(_: int) -> tuple[int, int]:
        return limits["soft"], resource.RLIM_INFINITY

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        calls.append(value[0])
        if value[0] > 24_576:
            raise ValueError("not allowed")
        limits["soft"] = value[0]

    monkeypatch.setattr(hostfacts.resource, "getrlimit", getrlimit)
    monkeypatch.setattr(hostfacts.resource, "setrlimit", setrlimit)
    assert hostfacts.raise_nofile_soft_limit(98_304) == 24_576
    assert calls == [98_304, 49_152, 24_576]
