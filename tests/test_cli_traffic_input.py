"""`loopfan run`'s traffic options at the CLI edge: bad input is one line and exit 2 before any socket
opens, an option that would be ignored is refused, and messages use the options the user types.

Most tests go through `main(argv)` with the run itself replaced (`reached`): bad input must never get
there, and good input is caught there so its frozen config can be looked at without opening a
socket. One tiny real run checks the report's label for echo traffic.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest

import loopfan.commands.run as run_command
from loopfan.cli import main
from loopfan.commands.traffic_opts import TRAFFIC_PARAMS, flag, parse_url_targets, split_url_targets
from loopfan.results import compare
from loopfan.traffic.config import EXPECT_ECHO, EXPECT_END, EXPECT_NONE, TrafficConfig
from loopfan.traffic.report import report_traffic, traffic_renderables
from loopfan.traffic.results import TrafficTotals


class Reached(BaseException):
    """Raised where the run would start (BaseException: main's catch-all must not swallow it)."""

    def __init__(self, opts: run_command.RunOptions) -> None:
        super().__init__("the run was reached")
        self.opts = opts


@pytest.fixture
def reached(monkeypatch: pytest.MonkeyPatch) -> Callable[..., run_command.RunOptions]:
    """reached(*argv) -> the RunOptions `loopfan run -c 10 *argv` would run with (nothing opens)."""

    def execute(opts: run_command.RunOptions, *_: Any) -> Any:
        raise Reached(opts)

    monkeypatch.setattr(run_command, "execute", execute)

    def parse(*argv: str) -> run_command.RunOptions:
        with pytest.raises(Reached) as caught:
            main(["run", "-c", "10", "-q", *argv])
        return caught.value.opts

    return parse


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """refused(*argv) -> the error line of `loopfan run -c 10 *argv`, asserting exit 2, one line, no
    traceback, and that the run was never reached."""

    def execute(*_: Any) -> Any:
        pytest.fail("bad input reached the run")

    monkeypatch.setattr(run_command, "execute", execute)

    def parse(*argv: str) -> str:
        status = main(["run", "-c", "10", "-q", *argv])
        err = capsys.readouterr().err
        assert status == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("loopfan: error: ")
        return err.strip()

    return parse


# --- 1. --hdr-log is checked up front, like --json ------------------------------------------------


def test_an_unwritable_hdr_log_is_refused_before_the_run(refused: Callable[..., str], tmp_path: Path) -> None:
    err = refused("--traffic", "echo", "--hdr-log", "/nonexistent/dir/x.hlog")
    assert "cannot write the --hdr-log file to /nonexistent/dir/x.hlog" in err and "writable directory" in err
    err = refused("--traffic", "echo", "--hdr-log", str(tmp_path))
    assert "is a directory" in err and "give a file name" in err


def test_hdr_log_and_json_share_one_check(refused: Callable[..., str]) -> None:
    assert "cannot write the report to /nonexistent/dir/r.json" in refused("--json", "/nonexistent/dir/r.json")


# --- 2. options that would be ignored are refused -------------------------------------------------


@pytest.mark.parametrize(("argv", "needle"), [
    # WebSocket only
    (["--traffic", "raw", "--rate", "10", "--ws-ping"], "--ws-ping applies to WebSocket traffic"),
    (["--traffic", "echo", "--ws-binary"], "--ws-binary applies to WebSocket traffic"),
    (["--traffic", "http", "--ws-ping"], "not to --traffic http; drop --ws-ping"),
    (["http://127.0.0.1:8080/", "--ws-binary"], "not to an http:// TARGET; drop --ws-binary"),
    # HTTP only
    (["--traffic", "echo", "--method", "POST"], "--method applies to HTTP traffic"),
    (["--traffic", "raw", "--rate", "10", "--header", "A: b"], "--header applies to HTTP and WebSocket traffic"),
    (["--traffic", "http", "--ws-subprotocol", "mqtt"], "--ws-subprotocol applies to WebSocket traffic"),
    # the WebSocket handshake: what wsproto writes itself, and what is no token
    (["--traffic", "ws", "--header", "Sec-WebSocket-Protocol: mqtt"], "give the subprotocols with --ws-subprotocol"),
    (["--traffic", "ws", "--header", "Upgrade: h2c"], "the WebSocket handshake writes that header itself"),
    (["--traffic", "ws", "--ws-subprotocol", "a b"], "--ws-subprotocol 'a b' is not a token"),
    (["--traffic", "ws", "--header", "Bad Name: x"], "the WebSocket handshake is not valid"),
    (["ws://127.0.0.1:9000/", "--body", "x"], "not to a ws:// TARGET; drop --body"),
    (["--traffic", "ws", "--method", "GET"], "--method applies to HTTP traffic"),
    # raw only (as before, in the same words as the rest)
    (["--traffic", "echo", "--expect-end", "x"], "--expect-end applies to --traffic raw"),
    (["--traffic", "http", "--expect-length", "3"], "--expect-length applies to --traffic raw"),
    # where they cannot apply
    (["--traffic", "raw", "--rate", "10", "--pipeline", "2"], "drop --pipeline"),
    (["--traffic", "ws", "--ws-ping", "--pipeline", "2"], "drop --pipeline"),
    (["--traffic", "http", "--body", "x", "--message", "y"], "give --body or --message"),
    (["--traffic", "http", "--body", "x", "--message-file", "/nonexistent/msg"], "give --body or --message-file"),
    # the built-in server's options, when it does not run or does not use them
    (["127.0.0.1:8080", "--traffic", "echo", "--response-size", "10"], "--response-size configures the built-in"),
    (["http://127.0.0.1:8080/", "--response-size", "10"], "drop --response-size (or the TARGET)"),
    (["127.0.0.1:8080", "--mode", "echo"], "--mode configures the built-in server"),
    (["127.0.0.1:8080", "--listen", "127.101.0.0/16:9000"], "--listen configures the built-in server"),
    (["--traffic", "echo", "--response-size", "10"], "answers in mode echo here; drop --response-size"),
    (["--response-size", "10"], "answers in mode hold here"),
    # every traffic option needs traffic
    (["--ws-ping"], "--ws-ping needs traffic"),
    (["--method", "POST"], "--method needs traffic"),
    (["--header", "A: b"], "--header needs traffic"),
    (["--pipeline", "2"], "--pipeline needs traffic"),
    (["--expect-end", "x"], "--expect-end needs traffic"),
    (["--warmup", "1s"], "--warmup needs traffic"),
    (["--duration", "5s"], "--hold holds the connections without traffic"),
    (["--hdr-log", "x.hlog"], "--hdr-log needs traffic"),
])
def test_an_option_that_does_not_apply_is_refused(refused: Callable[..., str], argv: list[str],
                                                  needle: str) -> None:
    assert needle in refused(*argv)


@pytest.mark.parametrize("argv", [
    # from the docs, README, tests and bench/
    ["--traffic", "echo", "--pipeline", "4", "--duration", "8s", "--warmup", "2s"],
    ["--traffic", "raw", "--mode", "discard", "--message-rate", "20", "--message", r"ping\n"],
    ["--traffic", "ws", "--mode", "http"],
    ["127.0.0.1:7000", "--traffic", "raw", "--message", r"PING\r\n", "--expect-end", r"\r\n"],
    ["ws://127.0.0.1:9000/chat", "--rate", "50000"],
    ["--traffic", "ws", "--reply-timeout", "60s"],
    # each option where it applies
    ["--traffic", "http", "--method", "POST", "--header", "A: b", "--body", "x", "--pipeline", "2"],
    ["--traffic", "http", "--message", "a body"],
    ["--traffic", "http", "--response-size", "1000"],
    ["--traffic", "ws", "--ws-ping", "--message", "hi"],
    ["--traffic", "ws", "--ws-binary", "--message", r"\xff", "--pipeline", "3"],
    ["--traffic", "raw", "--expect-length", "5", "--pipeline", "2"],
])
def test_options_where_they_apply_are_accepted(reached: Callable[..., run_command.RunOptions],
                                               argv: list[str]) -> None:
    opts = reached(*argv)
    assert opts.config.traffic is not None


def test_what_the_accepted_options_become(reached: Callable[..., run_command.RunOptions], tmp_path: Path) -> None:
    log = str(tmp_path / "lat.hlog")
    tc = reached("http://127.0.0.1:8080/", "--duration", "30s", "--warmup", "5s", "--hdr-log", log).config.traffic
    assert tc is not None and (tc.kind, tc.duration_s, tc.warmup_s, tc.hdr_log) == ("http", 30.0, 5.0, log)
    assert (tc.method, tc.pipeline, tc.reply_timeout_s) == ("GET", 1, 10.0)  # the defaults, not given
    opts = reached("--traffic", "http", "--response-size", "1000")
    assert opts.config.server.mode == "http" and opts.config.server.response_bytes == 1000  # type: ignore[attr-defined]
    opts = reached("--traffic", "echo")
    assert opts.config.server.response_bytes == 128  # type: ignore[attr-defined]
    opts = reached("--mode", "http", "--response-size", "10")  # the server in mode http, no traffic
    assert opts.config.traffic is None and opts.config.server.response_bytes == 10  # type: ignore[attr-defined]


def test_every_message_names_the_option_as_typed() -> None:
    """3. `flag` gives each traffic parameter the option `loopfan run --help` lists (--rate, not --total-rate)."""
    params = {p.name: p for p in run_command.command.params if isinstance(p, click.Option)}
    for name in TRAFFIC_PARAMS:
        assert flag(name) in params[name].opts, name


# --- 3. the option the user typed -----------------------------------------------------------------


def test_rate_without_traffic_says_rate(refused: Callable[..., str]) -> None:
    err = refused("--rate", "100")
    assert err.startswith("loopfan: error: --rate needs traffic") and "total" not in err


# --- 4. port ranges in URLs -----------------------------------------------------------------------


def test_url_targets_take_port_ranges_like_plain_ones(reached: Callable[..., run_command.RunOptions]) -> None:
    assert split_url_targets(("http://127.0.0.1:18080-18081/x",)) == (("127.0.0.1:18080-18081",), "http", "/x")
    assert split_url_targets(("ws://[::1]/",)) == (("[::1]:80",), "ws", "/")
    assert split_url_targets(("http://127.0.0.1:/",)) == (("127.0.0.1:80",), "http", "/")
    opts = reached("http://127.0.0.1-127.0.0.2:18080-18081/")
    assert [str(e) for e in opts.request.targets] == [
        "127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.2:18080", "127.0.0.2:18081"]
    assert opts.config.traffic is not None and opts.config.traffic.kind == "http"


def test_a_url_without_a_port_takes_the_schemes_port(reached: Callable[..., run_command.RunOptions]) -> None:
    # QA: http://127.0.0.1/ was refused with "the port 127.0.0.1 is not a number or a range".
    assert split_url_targets(("http://127.0.0.1/",)) == (("127.0.0.1:80",), "http", "/")
    assert split_url_targets(("ws://127.0.0.2/chat",)) == (("127.0.0.2:80",), "ws", "/chat")
    assert split_url_targets(("http://localhost",)) == (("127.0.0.1:80",), "http", "/")
    assert [str(e) for e in reached("http://127.0.0.1/").request.targets] == ["127.0.0.1:80"]


@pytest.mark.parametrize("url", ["http://user:secret@127.0.0.1:8097/", "http://user@127.0.0.1/",
                                 "ws://user:secret@[::1]:9000/"])
def test_credentials_in_a_url_are_refused_without_echoing_them(refused: Callable[..., str], url: str) -> None:
    # QA: they were taken for part of the address ("write an IPv6 address in brackets").
    err = refused(url)
    assert "credentials in the URL (user:password@) are not supported; remove them" in err, err
    assert "secret" not in err and "user@" not in err and "brackets" not in err, err
    assert ("--header 'Authorization: Basic" in err) == url.startswith("http:"), err


@pytest.mark.parametrize(("url", "needle"), [
    ("http://127.0.0.1:abc/", "the port abc is not a number or a range"),
    ("http://127.0.0.1:80-/", "the port 80- is not a number or a range"),
    ("ws://::1/", "write an IPv6 address in brackets"),
])
def test_a_bad_url_port_is_one_clear_line(refused: Callable[..., str], url: str, needle: str) -> None:
    err = refused(url)
    assert needle in err and "IPv6 loopback" not in err


# --- 5. traffic times are finite ------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--duration", "--warmup", "--reply-timeout"])
def test_a_traffic_time_must_be_finite(refused: Callable[..., str], option: str) -> None:
    err = refused("--traffic", "echo", option, "forever")
    assert f"{option} must be a finite time (e.g. 30s, 5m)" in err and "--hold" in err


def test_hold_forever_is_still_valid(reached: Callable[..., run_command.RunOptions]) -> None:
    assert reached("--hold", "forever").config.hold_s is None


def test_a_zero_reply_timeout_is_refused_not_replaced(refused: Callable[..., str]) -> None:
    assert "--reply-timeout must be more than 0" in refused("--traffic", "echo", "--reply-timeout", "0")


# --- 6. errors show the text as typed -------------------------------------------------------------


def test_error_text_shows_what_was_typed(refused: Callable[..., str]) -> None:
    err = refused("--traffic", "echo", "--message", "abc\\x")
    assert "--message 'abc\\x':" in err and "\\\\" not in err
    err = refused("--traffic", "http", "--header", "Bad\\Name")
    assert "--header 'Bad\\Name' is not" in err
    err = refused("--traffic", "echo", "--message", "a\nb\\q")  # a newline stays on the one line
    assert "'a\\nb\\q'" in err


@pytest.mark.parametrize(("kind", "header", "needle"), [
    ("http", "X-Trace: a\x01b", "--header X-Trace: its value holds a control character (\\x01)"),
    ("http", "X-Trace: ab\x1f", "--header X-Trace: its value holds a control character (\\x1f)"),  # not stripped
    ("http", "Authorization: Bearer s3cret\x7f", "--header Authorization: its value holds a control character"),
    ("http", "X-A: b\r\nX-Injected: 1", "--header X-A: its value holds a control character (\\x0d)"),
    ("ws", "X\x02Y: z", "--header 'X\\x02Y': its name holds a control character (\\x02)"),
    ("ws", "Origin: http://a\x0b", "--header Origin: its value holds a control character (\\x0b)"),
])
def test_a_control_character_in_a_header_is_refused(refused: Callable[..., str], kind: str, header: str,
                                                    needle: str) -> None:
    """Audit: h11 refuses CR/LF but sends \\x01 - a header is checked at the CLI edge, by name."""
    err = refused("--traffic", kind, "--header", header)
    assert needle in err and "printable characters only (and tabs in its value) - remove it" in err, err
    assert "s3cret" not in err  # the value is not echoed: it may be a token


def test_a_tab_in_a_header_value_is_taken(reached: Callable[..., run_command.RunOptions]) -> None:
    tc = reached("--traffic", "http", "--header", "X-List: a\tb ").config.traffic
    assert tc is not None and tc.headers == (("X-List", "a\tb"),)


# --- 7. echo is reported as echo ------------------------------------------------------------------


def test_the_report_labels_echo_as_echo() -> None:
    def section(tc: TrafficConfig) -> dict[str, Any]:
        out = report_traffic(SimpleNamespace(config=SimpleNamespace(traffic=tc), traffic=TrafficTotals()))
        assert out is not None
        return out

    echo = TrafficConfig(kind="raw", message=b"x", expect=EXPECT_ECHO)
    assert echo.label == "echo" and section(echo)["kind"] == "echo"
    assert section(TrafficConfig(kind="raw", message=b"x", expect=EXPECT_END, expect_marker=b"\n"))["kind"] == "raw"
    assert section(TrafficConfig(kind="raw", message=b"x", expect=EXPECT_NONE, rate_per_conn_s=1))["kind"] == "raw"
    assert section(TrafficConfig(kind="ws", message=b"x"))["kind"] == "ws"


@pytest.mark.parametrize(("opcode", "said"), [("ping", "ws pings"), ("binary", "ws binary"), ("text", "ws")])
def test_the_terminal_report_says_websocket_pings_and_binary(opcode: str, said: str) -> None:
    """Audit: a --ws-ping run said "ws, closed loop ... messages/s", nothing of pings."""
    tc = TrafficConfig(kind="ws", message=b"x", ws_opcode=opcode)
    t = TrafficTotals(window_s=1.0, replies=10, window_replies=10, talking=1, talking_at_start=1)
    tr = report_traffic(SimpleNamespace(config=SimpleNamespace(traffic=tc), traffic=t))
    assert tr is not None and tr["kind"] == "ws"  # the JSON's kind is the schema's: the opcode is in identity
    rep = {"traffic": tr, "established": 1, "series": {},
           "identity": {"config": {"traffic": {"kind": "ws", "ws_opcode": opcode}}}}
    assert f"traffic {said}, closed loop, 1.00 s measured" in _rendered(rep)
    assert tc.mode == f"{said}, closed loop"  # the live view's words
    assert compare.traffic_mode(rep) == f"{said}, closed loop"  # a ping run is not compared as a text run's


@pytest.mark.usefixtures("no_leaks")
def test_a_real_echo_run_says_echo(builtin_listen: tuple[str, int], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = main(["run", "-c", "20", "--traffic", "echo", "--duration", "0.2s", "--json", str(out), "-q"])
    text = capsys.readouterr().out
    assert status == 0, text
    rep = json.loads(out.read_text())
    assert rep["traffic"]["kind"] == "echo"
    assert "echo, closed loop" in text and "raw, closed loop" not in text
    assert traffic_renderables(rep)  # the JSON renders again (loopfan report) with the same label


# --- 5. rates and counts take the k/M suffixes -c takes -----------------------------------------------


def test_rates_and_counts_take_k_and_m_suffixes(reached: Callable[..., run_command.RunOptions]) -> None:
    """QA: `--rate 10k` was refused ("not a valid float range") while `-c 20k` was taken."""
    tc = reached("--traffic", "echo", "--rate", "10k").config.traffic
    assert tc is not None and tc.rate_per_conn_s == 1_000.0  # 10,000/s over -c 10
    tc = reached("--traffic", "echo", "--message-rate", "2.5k", "--pipeline", "1k").config.traffic
    assert tc is not None and (tc.rate_per_conn_s, tc.pipeline) == (2_500.0, 1_000)
    tc = reached("--traffic", "raw", "--rate", "1.5M", "--expect-length", "1k").config.traffic
    assert tc is not None and tc.rate_per_conn_s == 150_000.0 and tc.expect_length == 1_000


@pytest.mark.parametrize(("argv", "needle"), [
    (["--rate", "0"], "rate must be more than 0 per second (got '0')"),
    (["--rate", "-5k"], "rate must be more than 0 per second"),
    (["--rate", "fast"], "rate 'fast' is not a number; write e.g. 500, 2.5, 10k or 1M"),
    (["--rate", "inf"], "rate 'inf' is not a number"),
    (["--message-rate", "nan"], "rate 'nan' is not a number"),
    (["--pipeline", "0"], "pipeline must be a whole number of at least 1"),
    (["--pipeline", "1.5"], "pipeline must be a whole number of at least 1"),
])
def test_a_bad_rate_or_count_is_one_clear_line(refused: Callable[..., str], argv: list[str], needle: str) -> None:
    err = refused("--traffic", "echo", *argv)
    assert needle in err, err


# --- 8. an interrupted traffic phase is said to be one -------------------------------------------------


def _rendered(rep: dict[str, Any]) -> str:
    from rich.console import Console
    console = Console(file=io.StringIO(), record=True, width=300)
    for part in traffic_renderables(rep):
        console.print(part)
    return " ".join(console.export_text().split())


def _interrupted_report(totals: TrafficTotals, warmup_s: float) -> dict[str, Any]:
    tc = TrafficConfig(kind="http", message=b"", warmup_s=warmup_s)
    tr = report_traffic(SimpleNamespace(config=SimpleNamespace(traffic=tc), traffic=totals))
    return {"traffic": tr, "established": 200, "interrupted": "SIGINT", "series": {}}


def test_in_flight_at_an_interrupt_is_not_blamed_on_the_server() -> None:
    """QA: "20,000 unanswered, 0 due but not sent (the server, or this host, was behind)" after a
    SIGINT - those were in flight when the run was stopped (there is no drain then)."""
    t = TrafficTotals(window_s=2.0, replies=5000, window_replies=4000, warmup_replies=1000, unanswered_at_end=200,
                      talking=200, talking_at_start=200, statuses={"http-2xx": 4000}, interrupted=True)
    text = _rendered(_interrupted_report(t, 1.0))
    assert "200 unanswered, 0 due but not sent (in flight when the run was interrupted: no drain)" in text
    assert "was behind" not in text and "2.00 s measured after 1 s warm-up (interrupted, no drain)" in text
    t.interrupted = False  # the same figures from a drain that ran out: the server was behind
    assert "(the server, or this host, was behind)" in _rendered(_interrupted_report(t, 1.0))


def test_interrupted_in_the_warmup_says_so_and_shows_the_warmups_replies() -> None:
    t = TrafficTotals(window_s=0.0, sent=1434, replies=1234, warmup_replies=1234, talking=200, talking_at_start=200,
                      warmup_statuses={"http-2xx": 1234}, interrupted=True)
    rep = _interrupted_report(t, 5.0)
    assert rep["traffic"]["replies_in_warmup"] == 1234 and rep["traffic"]["interrupted"] is True
    text = _rendered(rep)
    assert "Traffic: interrupted before the measured window" in text
    assert "interrupted during the 5 s warm-up, nothing measured; the warm-up had 1,234 replies (http-2xx 1,234)" \
        in text
    assert "no reply in the measured window" not in text


def test_interrupted_in_the_handshakes_of_a_run_with_a_warmup_never_began() -> None:
    """Review: with --warmup, an interrupt in the WebSocket handshakes read as 'interrupted during
    the 1 s warm-up ... 0 replies' - nothing had been sent."""
    t = TrafficTotals(window_s=0.0, talking=200, talking_at_start=200, interrupted=True)
    text = _rendered(_interrupted_report(t, 1.0))
    assert "Traffic: interrupted before the traffic began" in text and "warm-up" not in text


def test_interrupted_while_connecting_says_the_traffic_never_began() -> None:
    text = _rendered(_interrupted_report(TrafficTotals(), 0.0))
    assert "Traffic: interrupted before the traffic began" in text and "nothing measured" in text
    assert "no errors" not in text


def test_interrupted_in_the_tls_handshakes_says_tls_not_websocket() -> None:
    """QA: a SIGINT during 5,000 https:// handshakes said "interrupted before the traffic began (e.g.
    during the WebSocket handshakes)" and "1,227 WebSocket opening handshakes were still under way"."""
    said = {}
    for kind in ("http", "ws"):
        tc = TrafficConfig(kind=kind, message=b"x", tls=True, tls_server_name="localhost")
        t = TrafficTotals(handshakes_unfinished=1227, talking_at_start=0, interrupted=True,
                          tls={"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
        tr = report_traffic(SimpleNamespace(config=SimpleNamespace(traffic=tc), traffic=t))
        said[kind] = " ".join(_rendered({"traffic": tr, "established": 5000, "interrupted": "SIGINT",
                                         "series": {}}).split())
    assert "interrupted before the traffic began (e.g. during the TLS handshakes), nothing measured" in said["http"]
    assert "1,227 TLS handshakes were still under way at the interrupt" in said["http"]
    assert "1,227 TLS and WebSocket handshakes were still under way" in said["ws"]
    assert "WebSocket" not in said["http"]


# --- 6. TLS: https:// and wss:// ----------------------------------------------------------------


def test_tls_urls_are_http_and_ws_in_tls_with_the_urls_host_for_the_certificate(
        reached: Callable[..., run_command.RunOptions], tmp_path: Path) -> None:
    assert parse_url_targets(("https://127.0.0.1/x",)) == (("127.0.0.1:443",), "http", "/x", "")
    assert parse_url_targets(("wss://[::1]:9443/",)) == (("[::1]:9443",), "ws", "/", "")
    assert parse_url_targets(("https://localhost:8443-8444/",)) == (("127.0.0.1:8443-8444",), "http", "/", "localhost")
    assert parse_url_targets(("http://127.0.0.1:80/",))[3] is None
    tc = reached("https://127.0.0.1:18443/", "--insecure").config.traffic
    assert tc is not None and (tc.kind, tc.tls, tc.tls_verify, tc.tls_cafile, tc.tls_server_name) == (
        "http", True, False, None, "")
    pem = tmp_path / "ca.pem"
    pytest.importorskip("trustme").CA().cert_pem.write_to_path(str(pem))
    tc = reached("wss://localhost:9443/chat", "--cacert", str(pem), "--header", "Host: example.test").config.traffic
    # A Host header changes the request, not the name the certificate is checked for (nor SNI).
    assert tc is not None and (tc.kind, tc.tls_verify, tc.tls_cafile, tc.tls_server_name, tc.path) == (
        "ws", True, str(pem), "localhost", "/chat")
    plain = reached("http://127.0.0.1:18080/").config.traffic
    assert plain is not None and not plain.tls


@pytest.mark.parametrize(("argv", "needle"), [
    (("https://127.0.0.1:18443/", "--cacert", "/nonexistent/ca.pem"),
     "cannot read --cacert /nonexistent/ca.pem: No such file or directory; give the PEM file of the CA"),
    (("https://127.0.0.1:18443/", "--cacert", __file__), f"--cacert {__file__} holds no PEM certificate (NO_CERT"),
    (("https://127.0.0.1:18443/", "--cacert", __file__, "--insecure"), "not both"),
    (("http://127.0.0.1:18080/", "--insecure"), "--insecure applies to TLS (an https:// or wss:// TARGET); drop"),
    (("--traffic", "echo", "--cacert", "x.pem"), "--cacert applies to TLS"),
    (("--cacert", "x.pem"), "--cacert applies to TLS"),
    (("https://127.0.0.1:18443/", "http://127.0.0.2:18443/"), "one scheme"),
    (("https://127.0.0.1:18443/", "https://localhost:18444/"), "name one host"),
    (("--traffic", "ws", "https://127.0.0.1:18443/"), "does not match"),
    (("ftp://127.0.0.1/",), "unknown scheme 'ftp'"),
])
def test_tls_input_is_refused_in_one_line(refused: Callable[..., str], argv: tuple[str, ...], needle: str) -> None:
    assert needle in refused(*argv)


def test_tls_options_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--cacert FILE" in text and "--insecure" in text and "https://127.0.0.1:8443/" in text
    assert "--cert FILE" in text and "--key FILE" in text



def test_the_reopened_row_names_why_the_server_closed_them() -> None:
    """The reopened row's why, from the statuses and errors (the headline's words only when each
    connection was reopened at least once on average)."""
    from loopfan.traffic.report import heavy_reopens, reopened_line, why_reopened

    closes = {"connections_talking_at_start": 10, "connections_reopened": 40, "statuses": {},
              "errors": {"closed-awaiting-reply": 30, "ECONNRESET": 10, "http-5xx": 3}}
    assert why_reopened(closes) == "the server closed or reset them: closed-awaiting-reply 30, ECONNRESET 10"
    assert heavy_reopens(closes) == "connections reopened 40 times for 0 replies (the server closed them)"
    assert heavy_reopens({**closes, "replies": 401}) is None  # under one reopen per ten replies
    line = reopened_line(closes)
    assert line is not None and line.startswith("40 times, ~4 per connection: ") and "keep-alive it is not" in line
    ws = {"connections_talking_at_start": 10, "connections_reopened": 3, "errors": {"ws-close-1011": 3}}
    assert why_reopened(ws) == "the server closed or reset them: ws-close-1011 3" and heavy_reopens(ws) is None
    assert why_reopened({"connections_reopened": 1}) == "why it closed them: the statuses and errors"
    assert reopened_line({"connections_reopened": 0}) is None
    refused = reopened_line({"connections_reopened": 0, "reopen_failures": {"ECONNREFUSED": 4}})
    assert refused is not None and "retried with backoff: ECONNREFUSED 4" in refused
    # Over TLS each reopen is a full handshake too (QA: keepalive_requests 10 over https://).
    tls = reopened_line({**closes, "tls": {"version": "TLSv1.2"}}) or ""
    assert "same source, same endpoint and a full TLS handshake (no session resumption);" in tls
    assert "each reopen is a new TCP connect and TLS handshake, so" in tls and "TLS" not in (line or "")


def test_a_client_certificate_reaches_the_config_as_absolute_paths(
        reached: Callable[..., run_command.RunOptions], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = pytest.importorskip("trustme").CA().issue_cert("client@example.test")
    issued.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    monkeypatch.chdir(tmp_path)  # (relative names: the workers get absolute ones)
    tc = reached("https://127.0.0.1:18443/", "--insecure", "--cert", "both.pem").config.traffic
    assert tc is not None and (tc.tls_certfile, tc.tls_keyfile) == (str(tmp_path / "both.pem"), None)
    tc = reached("wss://127.0.0.1:18443/", "--cert", "cert.pem", "--key", "key.pem").config.traffic
    assert tc is not None and (tc.tls_certfile, tc.tls_keyfile) == (str(tmp_path / "cert.pem"),
                                                                    str(tmp_path / "key.pem"))


def test_a_client_certificate_that_cannot_be_used_is_refused_in_one_line(
        refused: Callable[..., str], tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    issued = trustme.CA().issue_cert("client@example.test")
    cert, key, other = (str(tmp_path / n) for n in ("cert.pem", "key.pem", "other.pem"))
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(other)
    url = "https://127.0.0.1:18443/"
    assert f"--cert {cert} holds no private key; give the certificate's key with --key FILE" in refused(
        url, "--cert", cert)
    assert "the key is not the certificate's" in refused(url, "--cert", cert, "--key", other)
    assert "--key needs --cert FILE" in refused(url, "--key", key)
    assert "cannot read --key /nonexistent/k.pem: No such file or directory" in refused(
        url, "--cert", cert, "--key", "/nonexistent/k.pem")
    assert "--cert applies to TLS (an https:// or wss:// TARGET); drop --cert" in refused(
        "http://127.0.0.1:18080/", "--cert", cert)
    encrypted = str(tmp_path / "enc.pem")
    from cryptography.hazmat.primitives import serialization
    pkey = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    with open(encrypted, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(b"secret")))
    assert "the private key is encrypted (it asks for a passphrase)" in refused(url, "--cert", cert, "--key", encrypted)
