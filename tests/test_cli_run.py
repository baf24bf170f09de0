"""`loopfan run` through loopfan.cli.main and as a real subprocess: the report, signals, refusals.

Every run is small (a few thousand connections, forced over several processes with --per-process),
on addresses of its own, and the `no_leaks` fixture fails a test that leaves a process or fd.
The built-in server's listen pool is moved off loopfan's default (127.100.0.x:7070), so these
tests never meet a real `loopfan run` on the same machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import child_pids, free_port, kernel_tcp_sockets

from loopfan.cli import main
from loopfan.engine.serve import BuiltinServer
from loopfan.pools import Endpoint, parse_endpoints
from loopfan.results.schema import report_problems

pytestmark = pytest.mark.usefixtures("no_leaks")

Block = Callable[[], str]
SUBPROCESS_TIMEOUT_S = 30

# Runs the CLI with the built-in server moved to LISTEN_POOL:PORT (argv[1], argv[2]); the rest is
# the loopfan argv. Used where a test needs the built-in server in a process of its own.
BUILTIN_ELSEWHERE = """
import functools, sys
import loopfan.commands.run as run
from loopfan.pools import parse_pool
run.PlanRequest = functools.partial(run.PlanRequest, listen_pool=parse_pool(sys.argv[1]), listen_port=int(sys.argv[2]))
from loopfan.cli import main
sys.exit(main(sys.argv[3:]))
"""


def endpoints(block: Block, count: int) -> tuple[Endpoint, ...]:
    prefix = block()
    port = free_port(*(f"{prefix}{i}" for i in range(1, count + 1)))
    return parse_endpoints(f"{prefix}1-{prefix}{count}:{port}")


def target_text(eps: tuple[Endpoint, ...]) -> str:
    return f"{eps[0].address}-{eps[-1].address}:{eps[0].port}"


def sockets_on(prefix: str) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
    return [s for s in kernel_tcp_sockets()
            if s[0] in ("ESTABLISHED", "LISTEN") and (s[1][0].startswith(prefix) or s[2][0].startswith(prefix))]


REPORT_FIELDS = {
    "target_connections", "established", "peak_concurrent", "failed", "connect_rate_per_s",
    "connect_latency_ms", "duration_s", "client_processes", "server_processes", "memory_bytes", "cpu_s",
    "sources_used", "first_limit_hit", "server", "interrupted", "worker_failures",
}


# --- runs that complete --------------------------------------------------------------------------------


def test_run_without_target_starts_and_stops_the_builtin_server(
    builtin_listen: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix, _port = builtin_listen
    out = tmp_path / "run.json"
    status = main(["run", "-c", "6k", "--per-process", "2k", "--hold", "0.2s", "--json", str(out), "-q"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    rep = json.loads(out.read_text())
    assert set(rep) >= REPORT_FIELDS
    assert rep["schema"] == "loopfan.report/1"
    assert rep["target_connections"] == rep["established"] == rep["peak_concurrent"] == 6000
    assert rep["failed"] == {} and rep["failed_total"] == 0 and rep["first_limit_hit"] is None
    assert (rep["client_processes"], rep["server_processes"]) == (3, 3)
    assert rep["sources_used"] >= 3
    assert rep["server"]["agrees_with_client"] is True and rep["server"]["accepted"] == 6000
    rate = rep["connect_rate_per_s"]
    assert set(rate) == {"mean", "peak"} and 0 < rate["mean"] <= rate["peak"]
    lat = rep["connect_latency_ms"]
    assert {"p50", "p90", "p99", "p999", "max"} <= set(lat)
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert {"start", "connect", "hold", "close", "total"} <= set(rep["duration_s"])
    assert rep["duration_s"]["hold"] >= 0.2
    mem = rep["memory_bytes"]
    assert set(mem) >= {"user_client", "user_server", "kernel"}
    assert mem["user_client"] > 0 and mem["user_server"] > 0 and mem["kernel"] is not None
    assert rep["cpu_s"] > 0
    assert rep["interrupted"] is None and rep["worker_failures"] == []
    assert {t.split(":")[0] for t in rep["plan"]["targets"]} <= {f"{prefix}{i}" for i in range(1, 41)}
    assert "Run report" in printed.out and "all connections established" in printed.out
    # A ramp under a second has no whole second to take a peak from: the line says what it measured.
    said = " ".join(printed.out.split())
    if rep["duration_s"]["connect"] < 1.0:
        assert f"/s over a {rep['duration_s']['connect'] * 1000:,.0f} ms ramp" in said and "peak second" not in said
    else:
        assert "/s peak second" in said
    assert not sockets_on(prefix), "the built-in server or a connection outlived the run"


def test_run_connects_to_the_target_given(loopback_block: Block, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    eps = endpoints(loopback_block, 3)
    out = tmp_path / "run.json"
    with BuiltinServer.on(eps, capacity=3000) as server:
        status = main(["run", "-c", "3000", target_text(eps), "--per-process", "1000", "--hold", "0",
                       "--json", str(out), "-q"])
        totals = server.poll(0.0)
        for _ in range(50):
            if totals.peer_closed == 3000:
                break
            totals = server.poll(0.1)
    assert status == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert (rep["established"], rep["client_processes"], rep["server_processes"]) == (3000, 3, 0)
    assert rep["server"] is None
    assert sorted(rep["plan"]["targets"]) == sorted(str(e) for e in eps)
    assert (totals.established, totals.peer_closed) == (3000, 3000)  # the target saw them all, and the closes


def test_json_to_stdout(loopback_block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    eps = endpoints(loopback_block, 1)
    with BuiltinServer.on(eps, capacity=100):
        status = main(["run", "-c", "100", target_text(eps), "--json", "-", "-q"])
    captured = capsys.readouterr()
    assert status == 0
    rep = json.loads(captured.out)  # stdout holds the JSON alone (jq, json.load) ...
    assert rep["established"] == 100 and report_problems(rep) == []  # (read back as written)
    assert "Run report: all connections established" in captured.err  # ... the report went to stderr
    # Not a terminal: each line whole (no cut at 80 columns) and without the padding to the table's width.
    assert not [line for line in captured.err.splitlines() if line.endswith(" ")], captured.err
    memory = next(line for line in captured.err.splitlines() if line.startswith("memory"))
    assert "incl. the parent, server" in memory and "kernel" in memory, captured.err


def test_json_to_stdout_and_ndjson_progress_leave_both_streams_json(
        loopback_block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: with `--json - --progress ndjson` the text report followed the progress objects on
    stderr, and a CI step reading that stream as JSON lines failed on it. The text is not shown
    there; what it says (the checks too) is in the JSON on stdout."""
    eps = endpoints(loopback_block, 1)
    with BuiltinServer.on(eps, capacity=100):
        status = main(["run", "-c", "100", target_text(eps), "--hold", "1.2s", "--json", "-",
                       "--progress", "ndjson", "--check", "established>=1M"])
    captured = capsys.readouterr()
    assert status == 1  # the check failed: said by the exit status and the JSON, not a text line
    rep = json.loads(captured.out)
    assert rep["established"] == 100 and rep["checks"][0]["passed"] is False
    rows = [json.loads(line) for line in captured.err.splitlines()]  # every line of stderr is JSON
    assert rows and all("phase" in r for r in rows), captured.err


def test_nothing_listening_is_counted_not_raised(loopback_block: Block, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (ep,) = endpoints(loopback_block, 1)  # a free port: nothing listens there
    out = tmp_path / "run.json"
    status = main(["run", "-c", "300", str(ep), "--json", str(out), "-q"])
    rep = json.loads(out.read_text())
    assert status == 1
    assert (rep["established"], rep["failed"], rep["failed_total"]) == (0, {"ECONNREFUSED": 300}, 300)
    (failure,) = rep["failures"]
    assert failure["cause"] == "ECONNREFUSED" and failure["meaning"] and failure["fix"]
    assert "ECONNREFUSED" in capsys.readouterr().out


# --- refusals ------------------------------------------------------------------------------------------


def test_a_plan_the_addresses_cannot_hold_is_refused_before_any_socket_opens(
    loopback_block: Block, capsys: pytest.CaptureFixture[str]
) -> None:
    """One source address and one target endpoint hold one port budget (~12.7K); 20K is refused."""
    (ep,) = endpoints(loopback_block, 1)
    source = f"{loopback_block()}2"
    with socket.create_server((ep.address, ep.port)) as listener:
        listener.setblocking(False)
        status = main(["run", "-c", "20000", "--sources", source, str(ep), "--hold", "0", "-q"])
        with pytest.raises(BlockingIOError):
            listener.accept()  # not one connection arrived
    printed = capsys.readouterr()
    assert status == 2  # the pool given is too small: bad input, like a too-small --listen pool
    assert printed.out == ""
    line = printed.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("loopfan: error: 20,000 connections do not fit these addresses: their ephemeral "
                           "ports hold ")
    assert "(1 source address x 1 target endpoint x " in line
    assert "fix: give a --sources pool of at least 2 addresses" in line
    assert "or pass --force to open only the " in line  # what --force does, not "try anyway"
    assert child_pids(os.getpid()) == []


def test_force_runs_a_refused_plan_anyway(loopback_block: Block, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--force runs what the plan holds (one full port budget) and reports the shortfall."""
    (ep,) = endpoints(loopback_block, 1)
    source = f"{loopback_block()}2"
    out = tmp_path / "run.json"
    with BuiltinServer.on((ep,), capacity=13_000):
        status = main(["run", "-c", "12705", "--sources", source, str(ep), "--hold", "0", "--force",
                       "--json", str(out), "-q"])
    rep = json.loads(out.read_text())
    budget = rep["plan"]["port_budget"]["budget"]
    assert budget < 12705
    assert rep["target_connections"] == 12705 and rep["established"] == budget
    assert status == 1  # fewer than asked: not a success
    # ... but nothing failed: the headline says the rest were never attempted, not "failed".
    said = " ".join(capsys.readouterr().out.split())
    assert f"all {budget:,} planned connections established; {12705 - budget:,} were never attempted" in said
    assert "some connections failed" not in said


def test_an_unwritable_json_path_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(["run", "-c", "10", "127.0.0.1:9", "--json", str(tmp_path / "no" / "such" / "r.json")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cannot write the report" in err


# --- the built-in server's endpoint taken by another program (a second run on this host) ---------------
#
# The endpoint is one of this test's own (builtin_listen, loopback_block), held by a listening socket
# of the test: never loopfan's default 127.100.0.1:7070, which a real run may hold or not.


def test_run_moves_the_builtin_server_off_a_taken_endpoint(
        builtin_listen: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix, port = builtin_listen
    out = tmp_path / "run.json"
    with socket.create_server((f"{prefix}1", port)):
        status = main(["run", "-c", "10", "--hold", "0.1s", "--progress", "none", "--json", str(out)])
    err = capsys.readouterr().err
    assert status == 0, err
    note = f"the built-in server listens on port {port + 1}: port {port} was taken on its addresses"
    assert f"loopfan: note: {note}" in err
    rep = json.loads(out.read_text())
    assert {t.rpartition(":")[2] for t in rep["plan"]["targets"]} == {str(port + 1)}
    assert any(n.startswith(note) for n in rep["plan"]["notes"])


def test_a_note_in_an_ndjson_stream_is_json_too(
        builtin_listen: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    """With --progress ndjson, stderr is a stream of JSON objects: the note that the built-in server
    moved (two CI jobs on one machine) is one of them, not a 'loopfan: note:' line among them."""
    prefix, port = builtin_listen
    with socket.create_server((f"{prefix}1", port)):
        status = main(["run", "-c", "10", "--hold", "1.2s", "--progress", "ndjson", "--json", "-"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = [json.loads(line) for line in captured.err.splitlines()]
    notes = [x["note"] for x in lines if "phase" not in x]
    assert notes == [f"the built-in server listens on port {port + 1}: port {port} was taken on its addresses "
                     "(another program listens there)"], lines
    assert any("phase" in x for x in lines) and json.loads(captured.out)["established"] == 10


def test_demo_moves_the_builtin_server_off_a_taken_endpoint(
        builtin_listen: tuple[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """QA: `loopfan demo` failed when another run held 127.100.0.1:7070, and demo has no --listen."""
    import loopfan.commands.demo as demo_command
    import loopfan.commands.run as run_command

    monkeypatch.setattr(demo_command, "PlanRequest", run_command.PlanRequest)  # builtin_listen's block
    monkeypatch.setattr(demo_command, "DEMO_HOLD_S", 0.1)
    prefix, port = builtin_listen
    with socket.create_server((f"{prefix}1", port)):
        status = main(["demo", "-c", "10"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"the built-in server listens on port {port + 1}" in captured.err
    # Off a terminal the explanation's panel fits its text: not as wide as a line can be there.
    assert captured.out and max(map(len, captured.out.splitlines())) < 2_000
    assert not [line for line in captured.out.splitlines() if line.endswith(" ")], captured.out


def test_plan_shows_the_builtin_server_where_run_will_put_it(
        builtin_listen: tuple[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan` showed the default endpoints while another run held them; `run` then moved."""
    import loopfan.commands.plan as plan_command
    import loopfan.commands.run as run_command

    monkeypatch.setattr(plan_command, "PlanRequest", run_command.PlanRequest)  # builtin_listen's block
    prefix, port = builtin_listen
    with socket.create_server((f"{prefix}1", port)):
        status = main(["plan", "-c", "10", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert {t.rpartition(":")[2] for t in out["targets"]} == {str(port + 1)}
    assert any(f"listens on port {port + 1}: port {port} was taken" in n for n in out["notes"])


def test_a_chosen_listen_endpoint_taken_is_bad_input_before_the_run(
        loopback_block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    eps = endpoints(loopback_block, 4)
    with socket.create_server((eps[0].address, eps[0].port)):
        status = main(["run", "-c", "10", "--hold", "0", "--listen", target_text(eps)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"--listen: {eps[0]} is taken (another program listens there); choose another --listen" in err


@pytest.mark.parametrize("command, fix", [
    (["run"], "run it again (loopfan looks for free endpoints before every run), or choose them with --listen "
     "POOL:PORT"),
    (["run", "--listen", "LISTEN"], "choose another --listen POOL:PORT, e.g. 127.101.0.0/16:9000"),
    (["demo"], "run it again (loopfan looks for free endpoints before every run)"),
])
def test_an_endpoint_taken_after_the_plan_says_the_fix_of_the_command(
        command: list[str], fix: str, builtin_listen: tuple[str, int], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Taken between the probe and the server's bind (the probe is made to miss it): one line, no
    Python class name, and a fix in options the command has."""
    import loopfan.commands.demo as demo_command
    import loopfan.commands.free_server as free_server
    import loopfan.commands.run as run_command

    monkeypatch.setattr(free_server, "taken_endpoints", lambda endpoints: frozenset())
    monkeypatch.setattr(demo_command, "PlanRequest", run_command.PlanRequest)
    prefix, port = builtin_listen
    argv = [a.replace("LISTEN", f"{prefix}1-{prefix}8:{port}") for a in command]
    with socket.create_server((f"{prefix}1", port)):
        status = main([*argv, "-c", "10", "-q", *(["--hold", "0"] if argv[0] == "run" else [])])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1, err
    assert err.startswith(f"loopfan: error: the built-in server could not start: cannot listen on {prefix}1:{port}: "
                          "Address already in use (another program listens there); "), err
    assert err.rstrip().endswith(fix), err
    assert "Error" not in err.replace("loopfan: error", "")  # no HostError:, OSError: ...
    if argv[0] == "demo":
        assert "--listen" not in err  # demo has none


# --- signals, as a real subprocess ---------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """spawn(*argv): start a loopfan process; it is killed (by its pid) if the test fails early."""
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str, session: bool = False) -> subprocess.Popen[str]:
        """session: a process group of its own, so that a test may signal the whole group."""
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path, start_new_session=session)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen[str], children: list[int]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    still = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert not still, f"worker processes outlived the run: {still}"
    return proc.returncode, out, err


def test_sigint_while_connecting_writes_the_partial_report(
    loopback_block: Block, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    eps = endpoints(loopback_block, 3)
    out = tmp_path / "partial.json"
    with BuiltinServer.on(eps, capacity=6000) as server:
        # Paced at 2,000/s, the ramp takes 3 s: the signal lands while it is connecting.
        proc = spawn("-m", "loopfan", "run", "-c", "6000", target_text(eps), "--per-process", "2000",
                     "--connect-rate", "2000", "--hold", "30s", "--json", str(out), "-q")
        children = wait_for(lambda: len(child_pids(proc.pid)) == 3 and child_pids(proc.pid), "3 client workers")
        wait_for(lambda: server.poll(0.05).established >= 300, "the first connections")
        proc.send_signal(signal.SIGINT)
        status, printed, err = finish(proc, children)
    assert status == 130, err
    rep = json.loads(out.read_text())
    assert rep["interrupted"] == "SIGINT"
    assert 300 <= rep["established"] < 6000
    assert "hold" not in rep["duration_s"]  # it never got there
    assert "interrupted (SIGINT) - partial" in printed
    # The clients were still connecting: no kernel count of a moving target, and no connects
    # after the signal counted in the ramp's rate (it stays at the rate asked).
    assert rep["kernel_check"] is None and rep["kernel_check_skipped"] == "the run was interrupted during the ramp"
    assert "not asked: the run was interrupted during the ramp" in printed
    assert rep["connect_rate_per_s"]["mean"] <= 2000 * 1.05
    assert "Traceback" not in err


def test_a_check_of_an_interrupted_run_fails_as_judged_on_a_partial_run(
    loopback_block: Block, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """QA: SIGINT in the hold, and `--check failed==0` said 'check pass' with "passed": true in the
    JSON, while compare fails every gate of an interrupted run. The exit status stays the signal's."""
    prefix = loopback_block()
    port = free_port(*(f"{prefix}{i}" for i in range(1, 3)))
    out = tmp_path / "partial.json"
    proc = spawn("-c", BUILTIN_ELSEWHERE, f"{prefix}1-{prefix}2", str(port), "run", "-c", "500", "--hold", "30s",
                 "--check", "failed==0", "--progress", "ndjson", "--json", str(out))
    children = wait_for(lambda: len(child_pids(proc.pid)) == 2 and child_pids(proc.pid), "a server and a client worker")
    stderr = StderrWatch(proc)
    wait_for(lambda: stderr.has_line_starting('{"phase":"holding"'), "the hold (an ndjson line)")
    proc.send_signal(signal.SIGINT)
    status, printed, err = finish(proc, children)
    assert status == 130, err
    [check] = json.loads(out.read_text())["checks"]
    assert (check["passed"], check.get("partial"), check["actual"]) == (False, True, 0), check
    said = " ".join(printed.split())  # (its console may wrap: a child of pytest gets COLUMNS=80 from readline)
    assert "check FAIL: failed==0 (actual 0) - the run was interrupted (SIGINT): a partial run passes no check" in said


@pytest.mark.slow  # waits for a progress line, printed every 2 s
def test_sigterm_while_holding_stops_every_worker(
    loopback_block: Block, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """The built-in server too: the run's own server processes are children that must exit."""
    prefix = loopback_block()
    port = free_port(*(f"{prefix}{i}" for i in range(1, 5)))
    out = tmp_path / "partial.json"
    proc = spawn("-c", BUILTIN_ELSEWHERE, f"{prefix}1-{prefix}40", str(port),
                 "run", "-c", "4000", "--per-process", "2000", "--hold", "30s", "--json", str(out))
    children = wait_for(lambda: len(child_pids(proc.pid)) == 4 and child_pids(proc.pid), "2 server + 2 client workers")
    # Progress lines go to stderr every 2 s when it is not a terminal.
    stderr = StderrWatch(proc)
    wait_for(lambda: stderr.has_line_starting("holding"), "the hold (a progress line)")
    proc.send_signal(signal.SIGTERM)
    status, printed, err = finish(proc, children)
    assert status == 143, err
    rep = json.loads(out.read_text())
    assert rep["interrupted"] == "SIGTERM"
    assert rep["established"] == 4000 and rep["server"]["accepted"] == 4000
    assert rep["duration_s"]["hold"] > 0
    assert "interrupted (SIGTERM) - partial" in printed
    assert not sockets_on(prefix)


@pytest.mark.slow  # waits for a progress line, printed every 2 s
def test_sigterm_to_the_whole_process_group_still_writes_the_report(
    loopback_block: Block, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """`timeout 60 loopfan run ...`, systemd and CI cancellations signal the whole process group:
    the workers get the SIGTERM too. They leave it to the parent, which collects their counts and
    stops them, so the partial report is the same as when the parent alone is signalled."""
    prefix = loopback_block()
    port = free_port(*(f"{prefix}{i}" for i in range(1, 5)))
    out = tmp_path / "partial.json"
    proc = spawn("-c", BUILTIN_ELSEWHERE, f"{prefix}1-{prefix}40", str(port),
                 "run", "-c", "4000", "--per-process", "2000", "--hold", "30s", "--json", str(out), session=True)
    children = wait_for(lambda: len(child_pids(proc.pid)) == 4 and child_pids(proc.pid), "2 server + 2 client workers")
    stderr = StderrWatch(proc)
    wait_for(lambda: stderr.has_line_starting("holding"), "the hold (a progress line)")
    os.killpg(proc.pid, signal.SIGTERM)
    status, _printed, err = finish(proc, children)
    assert status == 143, err
    rep = json.loads(out.read_text())
    assert rep["interrupted"] == "SIGTERM" and not rep["worker_failures"], rep["worker_failures"]
    assert rep["established"] == 4000 and rep["server"]["accepted"] == 4000
    assert not sockets_on(prefix)


def test_workers_die_with_a_killed_run(
    loopback_block: Block, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    """kill -9 of `loopfan run` itself: no handler runs, yet its workers go too (PR_SET_PDEATHSIG)."""
    eps = endpoints(loopback_block, 2)
    with BuiltinServer.on(eps, capacity=2000) as server:
        proc = spawn("-m", "loopfan", "run", "-c", "2000", target_text(eps), "--per-process", "1000",
                     "--hold", "30s", "-q")
        children = wait_for(lambda: len(child_pids(proc.pid)) == 2 and child_pids(proc.pid), "2 client workers")
        wait_for(lambda: server.poll(0.05).established == 2000, "every connection")
        proc.kill()
        assert proc.wait(SUBPROCESS_TIMEOUT_S) == -signal.SIGKILL
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), "the workers to go")
        wait_for(lambda: server.poll(0.05).open == 0, "the server to see every connection close")


class StderrWatch:
    """Reads what a process has written to stderr so far, without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        os.set_blocking(self.fd, False)
        self.text = ""

    def has_line_starting(self, start: str) -> bool:
        try:
            while chunk := os.read(self.fd, 65536):
                self.text += chunk.decode(errors="replace")
        except BlockingIOError:
            pass
        return any(line.startswith(start) for line in self.text.splitlines())
