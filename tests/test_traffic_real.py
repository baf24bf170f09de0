"""Traffic against real servers on loopback: nginx (HTTP keep-alive, 20K connections in the slow
test) and an independent WebSocket echo server built on the `websockets` library; both also in TLS,
with a test CA and a certificate for the server's address made by `trustme`.

Each server is started by the test in a private temp dir on a free loopback port, bounded in time,
and stopped by its pid in a fixture's finally. nginx tests skip (with the reason) when nginx is
absent: CI installs nginx-light (.ci/run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

import loopfan.commands.run as run_command
from loopfan.cli import main
from loopfan.results.schema import report_problems

pytestmark = pytest.mark.usefixtures("no_leaks")
Block = Callable[[], str]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")

NGINX_CONF = """
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
user root;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests {keepalive};
    keepalive_timeout 300s;
    server {{
        listen {address}:{port}{ssl} reuseport backlog=65535;
        {certificate} {server_extra}
        location / {{ {deny} return 200 "hello from nginx\\n"; }}
    }}
}}
"""


def _wait_listening(address: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {address}:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """By pid: TERM (nginx's fast shutdown ends its workers too), then KILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def nginx(tmp_path: Path, loopback_block: Block) -> Iterator[Callable[..., str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 4, nofile: int = 20_000, conns: int = 19_000, deny: str = "",
              keepalive: int = 10_000_000, tls: Any = None, server_extra: str = "") -> str:
        """nginx's URL; with `tls` (a trustme.CA) it serves https with a certificate for its address;
        `server_extra` goes in its server block as it is."""
        assert NGINX is not None
        d = tmp_path / f"nginx{len(procs)}"
        d.mkdir()
        address = f"{loopback_block()}1"
        port = free_port(address)
        conf = d / "nginx.conf"
        refuse = f'if ($remote_addr = "{deny}") {{ return 403; }}' if deny else ""
        certificate = ""
        if tls is not None:
            pem = d / "server.pem"
            tls.issue_cert(address).private_key_and_cert_chain_pem.write_to_path(str(pem))
            certificate = f"ssl_certificate {pem}; ssl_certificate_key {pem};"
        conf.write_text(NGINX_CONF.format(workers=workers, nofile=nofile, conns=conns, dir=d, address=address,
                                          port=port, deny=refuse, keepalive=keepalive,
                                          ssl=" ssl" if tls is not None else "", certificate=certificate,
                                          server_extra=server_extra))
        proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_listening(address, port, proc, "nginx")
        return f"{'https' if tls is not None else 'http'}://{address}:{port}/"

    try:
        yield start
    finally:
        for p in procs:
            _stop(p)


def run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "run.json"
    status = main(["run", *argv, "--json", str(out), "-q"])
    printed = capsys.readouterr()
    return status, json.loads(out.read_text()), printed.out + printed.err


@needs_nginx
def test_nginx_keepalive_small(nginx: Callable[..., str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    url = nginx(workers=2)
    status, rep, text = run_json(tmp_path, capsys, "-c", "2000", url, "--duration", "1s")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0 and tr["statuses"] == {"http-2xx": tr["replies"]}
    assert tr["messages_per_s"] > 1000 and tr["latency_ms"]["p99"] < 2000


@needs_nginx
@pytest.mark.slow
def test_nginx_20k_keepalive_connections(nginx: Callable[..., str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """20,000 keep-alive connections over several source addresses to 4 nginx workers (reuseport
    spreads them, 5K each, under each worker's own fd limit): zero errors, plausible latency."""
    url = nginx(workers=4)
    status, rep, text = run_json(tmp_path, capsys, "-c", "20k", url, "--sources", "127.0.0.2-127.0.0.9",
                                 "--duration", "2s", "--reply-timeout", "20s")
    assert status == 0, text
    assert rep["established"] == 20_000 and rep["sources_used"] >= 2
    tr = rep["traffic"]
    assert tr["errors_total"] == 0, tr["error_causes"]
    # Every connection answered (a closed loop starts with one request on each), none lost.
    assert tr["replies"] >= 20_000 and tr["unanswered_at_end"] == 0
    assert tr["connections_talking_at_start"] == tr["connections_talking_at_end"] == 20_000
    assert tr["latency_ms"]["p50"] < 5000 and tr["latency_ms"]["max"] < 20_000


@needs_nginx
def test_nginx_keepalive_limit_does_not_end_the_load(nginx: Callable[..., str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # nginx closes a connection after keepalive_requests (default 1000): at ~100 requests/s per
    # connection, a default nginx would end every connection of a 10 s run. They are replaced.
    # (keepalive 10, and bounds relative to the replies: "more than 200 closes" with keepalive 100
    # needed 40,000 requests/s, and a loaded machine failed it 5 times in 15.)
    url = nginx(workers=2, keepalive=10)
    status, rep, text = run_json(tmp_path, capsys, "-c", "200", url, "--duration", "1s")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0, tr["error_causes"]
    closes = tr["statuses"]["http-connection-close"]
    assert tr["replies"] > 200 * 10 and closes >= tr["replies"] // 10 - 200, tr["statuses"]
    assert tr["connections_reopened"] >= closes - 200 and tr["connections_talking_at_end"] == 200
    # Pipelining against one request per connection: each connection's first response is read
    # even though the next request's write already failed (EPIPE), so slots are not given up.
    # nginx resets a connection closed with requests unread, and once in a while that reset beats
    # a slot's very first response (7 runs of 20 lost 1-3 of 50 slots when such a slot was not
    # reopened; 3 in 75 lost 1-7 with one more connection each): reopened with the backoff.
    url = nginx(workers=2, keepalive=1)
    status, rep, text = run_json(tmp_path, capsys, "-c", "50", url, "--duration", "1s", "--pipeline", "4")
    tr = rep["traffic"]
    assert tr["connections_talking_at_end"] == 50, text
    assert tr["connections_reopened"] > 50 and tr["replies"] >= 0.9 * tr["connections_reopened"]
    assert tr["sent"] == tr["replies"] + tr["lost_in_flight"] + tr["unanswered_at_end"]


@needs_nginx
def test_nginx_refusing_one_source_is_obvious(nginx: Callable[..., str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny fill ratio makes the planner spread 300 connections over all three sources.
    monkeypatch.setattr(run_command, "PlanRequest", functools.partial(run_command.PlanRequest, fill_ratio=0.004))
    url = nginx(workers=1, deny="127.0.0.3")
    status, rep, text = run_json(tmp_path, capsys, "-c", "300", url, "--sources", "127.0.0.2-127.0.0.4",
                                 "--duration", "0.5s")
    assert status == 1
    tr = rep["traffic"]
    assert set(tr["errors"]) == {"http-4xx"} and tr["statuses"]["http-2xx"] > 0
    assert list(tr["errors_by_source"]) == ["127.0.0.3"] and tr["sources_with_errors"] == 1
    assert "127.0.0.3" in text


@needs_nginx
def test_nginx_out_of_connections_is_obvious(nginx: Callable[..., str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # One worker allowed 200 connections: the other 200 are accepted by the kernel, then dropped
    # by nginx ("worker_connections are not enough") - the report must name the server's limit.
    url = nginx(workers=1, nofile=300, conns=200)
    _, rep, text = run_json(tmp_path, capsys, "-c", "400", url, "--duration", "0.5s", "--reply-timeout", "1s")
    assert rep["established"] == 400
    tr = rep["traffic"]
    # nginx closes the connections it has no room for (some at once, some when it needs the slot):
    # before the traffic (the run's closed-by-peer) or during it (the traffic's errors).
    lost = rep["established"] - tr["connections_talking_at_start"] + tr["errors_total"]
    assert 150 <= lost <= 250, (rep["failed"], tr["errors"])
    assert "worker_connections" in text


WS_SERVER = r"""
import asyncio, sys
from websockets.asyncio.server import serve
close_after = int(sys.argv[3]) if len(sys.argv) > 3 else 0
async def echo(ws):
    n = 0
    async for message in ws:
        await ws.send(message)
        n += 1
        if n == close_after:  # a server that drops its clients now and then
            await ws.close(1011, "enough")
async def main():
    # backlog: asyncio's default of 100 overflows under a fast ramp (SYNs dropped, 1-3 s retries,
    # a few handshakes past the reply timeout: loopfan reports it as listen overflows); 4096 is
    # what a server expecting thousands of clients is given.
    async with serve(echo, sys.argv[1], int(sys.argv[2]), max_queue=None, compression=None, backlog=4096):
        print("ready", flush=True)
        await asyncio.sleep(120)  # bounded even if the test forgets it
asyncio.run(main())
"""


def _ws_server(loopback_block: Block, *extra: str, script: str = "", quiet: bool = False) -> Iterator[str]:
    """A websockets-library server (WS_SERVER, or `script`) on a loopback address of this test's own."""
    pytest.importorskip("websockets")
    address = f"{loopback_block()}1"
    port = free_port(address)
    # (the closing variant logs every close it initiates as a failed handler: not worth showing)
    proc = subprocess.Popen([sys.executable, "-c", script or WS_SERVER, address, str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if extra or quiet else None)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield f"ws://{address}:{port}/"
    finally:
        _stop(proc)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def ws_server(loopback_block: Block) -> Iterator[str]:
    yield from _ws_server(loopback_block)


@pytest.fixture
def ws_server_closing(loopback_block: Block) -> Iterator[str]:
    yield from _ws_server(loopback_block, "5")


def test_websocket_slots_the_server_closes_are_reopened(ws_server_closing: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # The server closes every connection with 1011 after 5 messages: each close is counted, and the
    # slot makes a new handshake and goes on, so the load does not fall away with the connections.
    status, rep, text = run_json(tmp_path, capsys, "-c", "50", ws_server_closing, "--duration", "1s")
    assert status == 1, text
    tr = rep["traffic"]
    assert set(tr["errors"]) == {"ws-close-1011"}, tr["errors"]
    assert tr["connections_reopened"] >= tr["errors"]["ws-close-1011"] - 50 > 0
    # (a slot reopened just before the end may not have finished its handshake)
    assert 50 + tr["connections_reopened"] - 50 <= tr["statuses"]["ws-handshake-ok"] <= 50 + tr["connections_reopened"]
    assert tr["replies"] > 50 * 5 * 2 and tr["connections_talking_at_end"] == 50


def test_websockets_library_echo_server(ws_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, rep, text = run_json(tmp_path, capsys, "-c", "3000", ws_server, "--duration", "1s",
                                 "--reply-timeout", "15s")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0 and tr["statuses"]["ws-handshake-ok"] == 3000
    # Every message answered (a late one would be an error), and more than one per connection: the
    # later frames (made by the quick path) are echoed too. Counted with the drain: how many rounds
    # fit in the 1 s window is the Python server's speed - a busy machine gave exactly 3,000.
    assert tr["replies_in_window"] > 0 and tr["replies"] > 3000
    assert tr["sent"] == tr["replies"] and tr["unanswered_at_end"] == 0


# A server like many real ones (MQTT over WebSocket, an API behind a token): it speaks only the
# subprotocol "mqtt" and answers 401 to a handshake without its token. The websockets library
# picks the subprotocol and refuses a client that offers none of its own.
WS_GATED_SERVER = r"""
import asyncio, sys
from http import HTTPStatus
from websockets.asyncio.server import serve
async def echo(ws):
    assert ws.subprotocol == "mqtt"
    async for message in ws:
        await ws.send(message)
def gate(conn, request):
    if request.headers.get("Authorization") != "Bearer t0k" or request.headers.get("Origin") != "http://app":
        return conn.respond(HTTPStatus.UNAUTHORIZED, "token please\n")
    return None
async def main():
    async with serve(echo, sys.argv[1], int(sys.argv[2]), subprotocols=["mqtt"], process_request=gate,
                     compression=None, backlog=4096):
        print("ready", flush=True)
        await asyncio.sleep(120)  # bounded even if the test forgets it
asyncio.run(main())
"""


@pytest.fixture
def ws_gated_server(loopback_block: Block) -> Iterator[str]:
    yield from _ws_server(loopback_block, script=WS_GATED_SERVER, quiet=True)  # (it logs every refused handshake)


def test_websocket_handshake_headers_and_subprotocol(ws_gated_server: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--header and --ws-subprotocol go into the opening handshake: with them the gated server talks;
    without the token every handshake is refused, and the report says with which status."""
    status, rep, text = run_json(tmp_path, capsys, "-c", "40", ws_gated_server, "--duration", "0.5s",
                                 "--header", "Authorization: Bearer t0k", "--header", "Origin: http://app",
                                 "--ws-subprotocol", "v2.mqtt", "--ws-subprotocol", "mqtt")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0 and tr["statuses"]["ws-handshake-ok"] == 40 and tr["replies_in_window"] > 40
    assert tr["statuses"]["ws-subprotocol-mqtt"] == 40  # the one the server chose, counted
    status, rep, text = run_json(tmp_path, capsys, "-c", "40", ws_gated_server, "--duration", "0.5s",
                                 "--ws-subprotocol", "mqtt")
    assert status == 1
    assert rep["traffic"]["errors"] == {"ws-rejected-http-401": 40}, rep["traffic"]["errors"]
    # QA: the fix said "check the ws:// URL's port and path" - the server speaks WebSocket, it wants a token.
    assert "--header 'Authorization: Bearer TOKEN'" in rep["traffic"]["error_causes"][0]["fix"]
    # With the token but no subprotocol the websockets library refuses with a 400: the fix names the option.
    status, rep, text = run_json(tmp_path, capsys, "-c", "40", ws_gated_server, "--duration", "0.5s",
                                 "--header", "Authorization: Bearer t0k", "--header", "Origin: http://app")
    assert status == 1 and rep["traffic"]["errors"] == {"ws-rejected-http-400": 40}, rep["traffic"]["errors"]
    assert "--ws-subprotocol NAME" in rep["traffic"]["error_causes"][0]["fix"]


# --- TLS: https:// and wss:// ----------------------------------------------------------------------


@pytest.fixture
def test_ca(tmp_path: Path) -> tuple[Any, str]:
    """(a trustme CA, its certificate's PEM file for --cacert)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    pem = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ca, str(pem)


@needs_nginx
def test_nginx_over_tls(nginx: Callable[..., str], test_ca: tuple[Any, str], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    ca, pem = test_ca
    url = nginx(workers=2, tls=ca)
    status, rep, text = run_json(tmp_path, capsys, "-c", "300", url, "--cacert", pem, "--duration", "1s")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0, tr["error_causes"]
    assert tr["statuses"] == {"http-2xx": tr["replies"], "tls-handshake-ok": 300} and tr["replies"] > 300
    assert tr["sent"] == tr["replies"] and tr["unanswered_at_end"] == 0
    tls = tr["tls"]
    assert tls["version"].startswith("TLSv1.") and tls["cipher"] and tls["verified"] is True
    assert tls["trusted"] == f"--cacert {pem}" and "first_verify_error" not in tls
    assert report_problems(rep) == []
    # The terminal says it too (the page: test_results_html_traffic).
    assert f"{tls['version']} {tls['cipher']}; certificate checked against --cacert" in " ".join(text.split())
    # The handshakes' own times, in the terminal too (QA: 5,000 took ~3 s, said nowhere).
    assert tr["handshakes"] == 300 and 0 < tr["handshake_ms"]["p50"] <= tr["handshake_ms"]["max"]
    assert "(300 TLS handshakes, each from its first flight to ready" in " ".join(text.split())
    assert rep["memory_bytes"]["user_client_traffic"] > rep["memory_bytes"]["user_client"]


@needs_nginx
def test_nginx_over_tls_with_a_certificate_not_trusted(nginx: Callable[..., str], test_ca: tuple[Any, str],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, _ = test_ca
    url = nginx(workers=1, tls=ca)
    # The system's CAs do not know the test CA: every handshake fails, counted by cause with the fix.
    status, rep, text = run_json(tmp_path, capsys, "-c", "50", url, "--duration", "0.5s")
    assert status == 1, text
    tr = rep["traffic"]
    assert tr["errors"] == {"tls-cert-verify-failed": 50}, tr["errors"]
    fix = tr["error_causes"][0]["fix"]
    assert "--cacert FILE" in fix and "--insecure" in fix
    assert tr["tls"]["version"] is None and "certificate" in tr["tls"]["first_verify_error"]
    assert report_problems(rep) == []
    # --insecure: nothing verified, the traffic runs (and the report says it was not verified).
    status, rep, text = run_json(tmp_path, capsys, "-c", "50", url, "--duration", "0.5s", "--insecure")
    assert status == 0, text
    assert rep["traffic"]["errors_total"] == 0 and rep["traffic"]["tls"]["verified"] is False
    assert "NOT verified (--insecure)" in text


@needs_nginx
def test_tls_connections_the_server_closes_handshake_again(nginx: Callable[..., str], test_ca: tuple[Any, str],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, pem = test_ca
    url = nginx(workers=2, keepalive=10, tls=ca)  # (the bounds of the plain-text test above)
    status, rep, text = run_json(tmp_path, capsys, "-c", "50", url, "--cacert", pem, "--duration", "1s")
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0, tr["error_causes"]
    closes = tr["statuses"]["http-connection-close"]
    assert tr["replies"] > 50 * 10 and tr["connections_reopened"] >= closes - 50 > 0
    # Every reopened connection made its TLS handshake again (those reopened just before the end
    # may not have finished it).
    handshakes = tr["statuses"]["tls-handshake-ok"]
    assert 50 + tr["connections_reopened"] - 50 <= handshakes <= 50 + tr["connections_reopened"]
    # The reopens' handshakes are timed too (those finishing in the drain are not: a few at most).
    assert handshakes - 50 <= tr["handshakes"] <= handshakes
    assert tr["connections_talking_at_end"] == 50


# argv: address, port, the server's PEM (key + chain); a CA's PEM after them: client certificates
# signed by it are required (mTLS).
WSS_SERVER = r"""
import asyncio, ssl, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3])
    if len(sys.argv) > 4:
        ctx.load_verify_locations(sys.argv[4])
        ctx.verify_mode = ssl.CERT_REQUIRED
    async with serve(echo, sys.argv[1], int(sys.argv[2]), ssl=ctx, max_queue=None, compression=None,
                     backlog=4096):
        print("ready", flush=True)
        await asyncio.sleep(120)  # bounded even if the test forgets it
asyncio.run(main())
"""


def test_wss_against_the_websockets_library(loopback_block: Block, test_ca: tuple[Any, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ca, pem = test_ca
    address = f"{loopback_block()}1"
    server_pem = tmp_path / "wss-server.pem"
    ca.issue_cert(address).private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    server = _ws_server(lambda: address[:-1], str(server_pem), script=WSS_SERVER, quiet=True)
    url = next(server).replace("ws://", "wss://")
    try:
        status, rep, text = run_json(tmp_path, capsys, "-c", "300", url, "--cacert", pem, "--duration", "1s",
                                     "--reply-timeout", "15s")
    finally:
        server.close()
    assert status == 0, text
    tr = rep["traffic"]
    assert tr["errors_total"] == 0, tr["error_causes"]
    assert tr["statuses"]["ws-handshake-ok"] == 300 and tr["statuses"]["tls-handshake-ok"] == 300
    assert tr["replies"] > 300 and tr["sent"] == tr["replies"] and tr["unanswered_at_end"] == 0
    assert tr["tls"]["version"].startswith("TLSv1.") and report_problems(rep) == []


def test_a_tls_handshake_with_no_answer_times_out(loopback_block: Block, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # A listener that never accepts: the kernel completes the TCP handshakes, nobody reads the
    # ClientHello. Counted as tls-handshake-timeout after --reply-timeout, with its fix.
    address = f"{loopback_block()}1"
    with socket.socket() as listener:
        listener.bind((address, 0))
        listener.listen(64)
        url = f"https://{address}:{listener.getsockname()[1]}/"
        status, rep, text = run_json(tmp_path, capsys, "-c", "20", url, "--insecure", "--duration", "0.5s",
                                     "--reply-timeout", "0.5s")
    assert status == 1, text
    tr = rep["traffic"]
    assert tr["errors"] == {"tls-handshake-timeout": 20}, tr["errors"]
    assert "--reply-timeout" in tr["error_causes"][0]["fix"] and tr["tls"]["version"] is None


# QA: three TLS mistakes were counted under causes whose fix pointed elsewhere (the method and path; a
# server limit; "check the target is a WebSocket server"). The report reads the server's own words in
# its first error response, and the pattern of the closes, to name the option that fixes each.


@needs_nginx
def test_plain_http_to_a_tls_port_is_told_to_use_https(nginx: Callable[..., str], test_ca: tuple[Any, str],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, _ = test_ca
    url = nginx(workers=1, tls=ca).replace("https://", "http://")
    # nginx answers 400 "The plain HTTP request was sent to HTTPS port" (and closes: reopened at once).
    status, rep, text = run_json(tmp_path, capsys, "-c", "10", url, "--duration", "0.3s")
    assert status == 1, text
    tr = rep["traffic"]
    assert set(tr["errors"]) == {"http-4xx"}, tr["errors"]
    assert tr["first_error_response"]["status"] == 400
    assert "The plain HTTP request was sent to HTTPS port" in tr["first_error_response"]["body"]
    (cause,) = tr["error_causes"]
    assert "the port speaks TLS" in cause["meaning"] and cause["fix"].startswith("use an https:// URL"), cause
    flat = " ".join(text.split())
    assert "first error HTTP 400: 400 The plain HTTP request was sent to HTTPS port" in flat, flat
    assert report_problems(rep) == []
    # ws:// likewise: the refused handshake's page is read the same way.
    status, rep, text = run_json(tmp_path, capsys, "-c", "10", url.replace("http://", "ws://"), "--duration", "0.3s")
    assert status == 1, text
    tr = rep["traffic"]
    assert tr["errors"] == {"ws-rejected-http-400": 10}, tr["errors"]
    assert "use an https:// URL (wss:// for WebSocket)" in tr["error_causes"][0]["fix"]
    assert report_problems(rep) == []


@needs_nginx
def test_nginx_wanting_a_client_certificate_is_told_to_get_cert(nginx: Callable[..., str],
                                                                test_ca: tuple[Any, str], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ca, pem = test_ca
    # ssl_verify_client on: nginx completes the handshake without a certificate and answers 400.
    url = nginx(workers=1, tls=ca, server_extra=f"ssl_verify_client on; ssl_client_certificate {pem};")
    status, rep, text = run_json(tmp_path, capsys, "-c", "10", url, "--cacert", pem, "--duration", "0.3s")
    assert status == 1, text
    tr = rep["traffic"]
    assert set(tr["errors"]) == {"http-4xx"}, tr["errors"]
    assert "No required SSL certificate was sent" in tr["first_error_response"]["body"]
    (cause,) = tr["error_causes"]
    assert "requires a client certificate" in cause["meaning"] and "--cert FILE --key FILE" in cause["fix"], cause
    assert report_problems(rep) == []
    # With the certificate the same server answers 200: no error, no sample.
    client = tmp_path / "client.pem"
    ca.issue_cert("loopfan-client@example.org").private_key_and_cert_chain_pem.write_to_path(str(client))
    status, rep, text = run_json(tmp_path, capsys, "-c", "10", url, "--cacert", pem, "--cert", str(client),
                                 "--duration", "0.3s")
    assert status == 0, text
    assert rep["traffic"]["errors_total"] == 0 and "first_error_response" not in rep["traffic"]


@contextlib.contextmanager
def _tls_server_closing_on_plain_text(address: str, server_pem: str) -> Iterator[int]:
    """A TLS server that, like openssl s_server, closes a connection whose first bytes are not a
    ClientHello (no answer at all). Its port; the thread ends with the block (bounded: 30 s)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_pem)
    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen(128)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            # The server's TLS stack reads the request as a ClientHello and fails; like s_server it
            # sends nothing and closes, having read it all (a FIN: unread bytes would make a reset).
            with conn:
                conn.settimeout(2)
                incoming = ssl.MemoryBIO()
                tls = ctx.wrap_bio(incoming, ssl.MemoryBIO(), server_side=True)
                with contextlib.suppress(OSError):
                    incoming.write(conn.recv(65536))
                with contextlib.suppress(ssl.SSLError):
                    tls.do_handshake()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_tls_server_closing_plain_text_hints_at_https(loopback_block: Block, test_ca: tuple[Any, str],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, _ = test_ca
    address = f"{loopback_block()}1"
    server_pem = tmp_path / "server.pem"
    ca.issue_cert(address).private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    with _tls_server_closing_on_plain_text(address, str(server_pem)) as port:
        status, rep, text = run_json(tmp_path, capsys, "-c", "10", f"http://{address}:{port}/", "--duration", "0.3s")
    assert status == 1, text
    tr = rep["traffic"]
    assert tr["errors"] == {"closed-awaiting-reply": 10}, tr["errors"]
    fix = tr["error_causes"][0]["fix"]
    # A hint, not a claim: a server at its connection limit closes the same way.
    assert fix.startswith("no connection had any answer: if the port serves TLS") and "use https://" in fix, fix
    assert "worker_connections" in fix


def test_wss_server_wanting_a_client_certificate_is_named(loopback_block: Block, test_ca: tuple[Any, str],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, pem = test_ca
    address = f"{loopback_block()}1"
    server_pem = tmp_path / "wss-server.pem"
    ca.issue_cert(address).private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    server = _ws_server(lambda: address[:-1], str(server_pem), pem, script=WSS_SERVER, quiet=True)
    url = next(server).replace("ws://", "wss://")
    try:
        status, rep, text = run_json(tmp_path, capsys, "-c", "10", url, "--cacert", pem, "--duration", "0.3s",
                                     "--reply-timeout", "5s")
    finally:
        server.close()
    assert status == 1, text
    tr = rep["traffic"]
    # TLS 1.3: the client's side of the handshake completes, then the server closes without an alert.
    assert tr["statuses"].get("tls-handshake-ok") == 10, tr["statuses"]
    assert set(tr["errors"]) <= {"ws-closed-in-handshake", "tls-error"}, tr["errors"]
    for cause in tr["error_causes"]:
        assert "--cert FILE" in cause["fix"], cause
