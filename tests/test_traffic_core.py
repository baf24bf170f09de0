"""The pure traffic core: escapes, the open schedule, reply framing, HTTP and WebSocket state, merging."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import CloseConnection

from loopfan.engine.traffic_client import hdr_round
from loopfan.traffic.config import EXPECT_CONTAINS, EXPECT_ECHO, EXPECT_END, EXPECT_LENGTH, escape, unescape
from loopfan.traffic.http import HttpClient, RequestFramer, fixed_response, request_template
from loopfan.traffic.raw import RawReplies
from loopfan.traffic.results import merge, new_histogram, percentiles_ms, record, subtract
from loopfan.traffic.schedule import OpenSchedule
from loopfan.traffic.tally import Tally
from loopfan.traffic.ws import WsClient, WsEchoServer


def test_unescape() -> None:
    assert unescape(r"GET\r\n\x00\\\t") == b"GET\r\n\x00\\\t"
    assert unescape("é") == "é".encode()
    for bad in ("\\", r"\q", r"\x4", r"\xzz"):
        with pytest.raises(ValueError):
            unescape(bad)


@given(st.binary(max_size=200))
def test_escape_is_what_message_takes_back(data: bytes) -> None:
    """The report's config shows a message as --message takes it: pasted back, the same bytes."""
    text = escape(data)
    assert unescape(text) == data and text.isprintable() and text.isascii()


def test_the_report_config_shows_messages_as_text() -> None:
    from loopfan.engine.report import jsonable
    from loopfan.traffic.config import TrafficConfig
    cfg = jsonable(TrafficConfig(kind="raw", message=b"ping \x01\r\n", expect_marker=b"\n"))
    assert cfg["message"] == r"ping \x01\r\n" and cfg["expect_marker"] == r"\n" and cfg["body"] == ""


def _free_run(s: OpenSchedule, now: float) -> list[tuple[float, int]]:
    """A consumer whose connections are always free: it sends everything due."""
    sent: list[tuple[float, int]] = []
    for due, i in s.take_due(now):
        times, following = s.send_times(due, now, 1 << 30)
        sent += [(t, i) for t in times]
        s.wait(i, following)
    return sent


def test_schedule_staggers_and_never_drifts() -> None:
    s = OpenSchedule(4, rate_per_conn_s=10.0, start_s=100.0)
    first = _free_run(s, 100.09)
    assert [i for _, i in first] == [0, 1, 2, 3]
    assert [round(t, 3) for t, _ in first] == [100.0, 100.025, 100.05, 100.075]
    # Taken late (a stall): every send due in between comes out with its own scheduled time.
    late = _free_run(s, 100.51)
    assert len(late) == 17 and all(t <= 100.51 for t, _ in late)
    assert sorted(t for t, i in late if i == 0) == pytest.approx([100.1, 100.2, 100.3, 100.4, 100.5])
    s.remove(2)
    later = _free_run(s, 101.0)
    assert 2 not in {i for _, i in later}


def test_a_parked_connection_keeps_its_place_on_the_grid() -> None:
    s = OpenSchedule(1, rate_per_conn_s=10.0, start_s=0.0)
    [(due, _)] = s.take_due(0.0)
    times, following = s.send_times(due, 0.0, room=1)  # room for one message in flight
    assert times == [0.0] and following == pytest.approx(0.1)
    # Busy until 0.55: parked (not in the heap), five sends behind, none of them lost.
    assert s.take_due(0.55) == []
    times, following = s.send_times(following, 0.55, room=1)
    assert times == pytest.approx([0.1]) and following == pytest.approx(0.2)
    assert s.count_between(following, 1.0) == 8  # 0.2 ... 0.9 never sent by the end at 1.0
    s.remove(0)
    s.wait(0, 2.0)
    assert s.next_due_s() is None


def test_property_tests_are_not_timed() -> None:
    """hypothesis fails an example slower than 200 ms by default: a timing assertion, which a busy
    machine trips (test_schedule_rate_is_exact, 304 ms). The profiles in conftest turn it off."""
    assert settings().deadline is None


@given(st.integers(1, 50), st.floats(0.5, 1000), st.floats(0, 5))
def test_schedule_rate_is_exact(n: int, rate: float, span: float) -> None:
    s = OpenSchedule(n, rate, 0.0)
    due = _free_run(s, span)
    # Every connection sends floor(span * rate) + (1 if its offset fits) times: within one per connection.
    assert abs(len(due) - n * span * rate) <= n + 1
    assert all(t <= span for t, _ in due)


@given(st.binary(min_size=1, max_size=40), st.integers(1, 6), st.data())
def test_echo_framing_any_split(message: bytes, k: int, data: st.DataObject) -> None:
    stream = message * k
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    r = RawReplies(message, EXPECT_ECHO)
    total = 0
    last = 0
    for c in [*cuts, len(stream)]:
        total += r.feed(stream[last:c]) if c > last else 0
        last = c
    assert total == k and r.dead is None and not r.partial


def test_echo_mismatch_and_other_framings() -> None:
    r = RawReplies(b"hello", EXPECT_ECHO)
    assert r.feed(b"hellX") == 0 and r.dead == "reply-mismatch"
    r = RawReplies(b"x", EXPECT_LENGTH, length=4)
    assert (r.feed(b"abc"), r.feed(b"defgh"), r.feed(b"ijkl")) == (0, 2, 1)
    r = RawReplies(b"x", EXPECT_END, marker=b"\r\n")
    assert (r.feed(b"one\r"), r.feed(b"\ntwo\r\nthr"), r.feed(b"ee\r\n")) == (0, 2, 1)
    r = RawReplies(b"x", EXPECT_CONTAINS, marker=b"OK")
    assert r.feed(b"..O") == 0 and r.feed(b"K...OK") == 2


def test_http_client_counts_statuses_and_pipelines() -> None:
    t = request_template("GET", "/x", "127.0.0.1:80", (("Accept", "*/*"),), b"")
    assert t.wire.startswith(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:80\r\n")
    tally = Tally()
    c = HttpClient(t, tally)
    wire = c.message() + c.message() + c.message()
    framer = RequestFramer()
    assert framer.feed(wire) == 3
    ok = fixed_response(10)
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert c.feed(ok + missing[:20]) == 1
    assert c.feed(missing[20:] + ok) == 2 and c.dead is None
    assert tally.statuses == {"http-2xx": 2, "http-4xx": 1} and tally.errors == {"http-4xx": 1}


def test_http_client_keeps_the_first_error_response() -> None:
    """The worker's first 4xx/5xx is kept (status, the body's first 200 bytes) on either path - the
    fast one (a keep-alive head) and h11's (Connection: close, a chunked body) - and later ones are not:
    the report reads the server's words there (nginx: "The plain HTTP request was sent to HTTPS port")."""
    t = request_template("GET", "/", "h", (), b"")
    tally = Tally()
    c = HttpClient(t, tally)
    c.message()
    c.message()
    forbidden = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 300\r\n\r\n" + b"no " * 100
    assert c.fast and c.feed(fixed_response(4) + forbidden) == 2
    assert tally.sample() == {"status": 403, "body": ("no " * 100)[:200]}
    c.message()
    assert c.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno") == 1
    assert tally.sample()["status"] == 403  # (the first one only)
    tally = Tally()
    c = HttpClient(t, tally)
    c.message()
    page = (b"<html><center><h1>400 Bad Request</h1></center><center>The plain HTTP request was sent to HTTPS "
            b"port</center></html>")
    close = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (page[:30], page[30:])) + b"0\r\n\r\n"
    assert c.feed(close + chunks) == 1 and not c.fast
    assert tally.sample() == {"status": 400, "body": page.decode()}
    assert Tally().sample() == {}


def test_http_client_garbage_and_close() -> None:
    t = request_template("POST", "/", "h", (), b"body")
    assert b"Content-Length: 4" in t.wire and t.wire.endswith(b"body")
    c = HttpClient(t, Tally())
    c.message()
    assert c.feed(b"SSH-2.0-OpenSSH\r\n\r\n") == 0 and c.dead == "bad-reply"
    c = HttpClient(t, Tally())
    c.message()
    assert c.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") == 1
    assert c.dead == "http-connection-close"
    with pytest.raises(h11.LocalProtocolError):
        request_template("GET", "/", "h", (("Bad Name", "x"),), b"")


def test_request_framer() -> None:
    f = RequestFramer()
    req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    assert f.feed(req[:10]) == 0 and f.feed(req[10:] + req) == 2
    f = RequestFramer()
    assert f.feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n") == 1 and f.close
    f = RequestFramer()
    assert f.feed(b"garbage\r\n\r\n") == 0 and f.refusal is not None and f.close
    assert f.refusal == b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    # Chunked bodies: the scan cannot frame them, h11 does (for the rest of the connection).
    f = RequestFramer()
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert f.feed(req + chunked[:30]) == 1 and f.feed(chunked[30:] + req) == 2
    assert f.refusal is None and not f.close


def test_websocket_round_trip_ping_and_close() -> None:
    for opcode, message in (("text", b"hi"), ("binary", b"\x00\xff"), ("ping", b"p")):
        tally = Tally()
        c = WsClient("127.0.0.1:9", "/", message, opcode, tally)
        s = WsEchoServer()
        assert c.feed(s.feed(c.opening())) == 0 and c.ready
        for _ in range(3):
            assert c.feed(s.feed(c.message())) == 1
        assert tally.statuses == {"ws-handshake-ok": 1}


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff garbage",  # a reserved opcode
    b"\x81\x02\xff\xfe",  # a text frame that is not UTF-8
    b"HTTP/1.1 200 OK\r\n\r\n",  # an HTTP head where frames should be
])
@pytest.mark.parametrize("fast", [True, False])
def test_garbage_from_the_server_is_a_bad_reply_not_its_close(garbage: bytes, fast: bool) -> None:
    """QA: a server that sent garbage after the handshake was reported as "the server closed the
    WebSocket with code 1002": wsproto's own verdict on the bytes (it closes with 1002/1007 itself)
    arrives as a CloseConnection too. It is the server's garbage (bad-reply); the close frame that
    answers it is still sent, as RFC 6455 7.1.7 asks."""
    tally = Tally()
    c = WsClient("127.0.0.1:9", "/", b"hi", "text", tally)
    s = WsEchoServer()
    assert c.feed(s.feed(c.opening())) == 0 and c.ready
    c.fast = fast  # (both paths: the fast one hands unusual frames to wsproto)
    assert c.feed(s.feed(c.message())) == 1
    assert c.feed(garbage) == 0
    assert c.dead == "bad-reply" and tally.statuses == {"ws-handshake-ok": 1}
    assert c.out[:1] == b"\x88"  # our close frame, to be sent
    # A close the server sends is still the server's, counted by its code.
    tally = Tally()
    c = WsClient("127.0.0.1:9", "/", b"hi", "text", tally)
    s = WsEchoServer()
    c.feed(s.feed(c.opening()))
    c.feed(s.ws.send(CloseConnection(code=1011)))
    assert c.dead == "ws-close-1011" and tally.statuses == {"ws-handshake-ok": 1, "ws-close-1011": 1}


def test_websocket_rejected_by_plain_http() -> None:
    c = WsClient("h", "/", b"x", "text", Tally())
    c.opening()
    c.feed(fixed_response(5))
    assert c.dead == "ws-rejected-http-200"
    s = WsEchoServer()
    out = s.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and s.closing


def test_a_refused_websocket_handshake_keeps_the_first_error_response() -> None:
    """ws:// against nginx's TLS port: its 400 page says why, and the report reads it (a 200 from a
    plain HTTP server is no error response: not kept)."""
    tally = Tally()
    c = WsClient("h", "/", b"x", "text", tally)
    c.opening()
    c.feed(fixed_response(5))
    assert c.dead == "ws-rejected-http-200" and tally.sample() == {}
    page = b"<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head></html>"
    refusal = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(page)
    c = WsClient("h", "/", b"x", "text", tally)
    c.opening()
    c.feed(refusal + page)
    assert c.dead == "ws-rejected-http-400" and tally.sample() == {"status": 400, "body": page.decode()}
    c = WsClient("h", "/", b"x", "text", tally)
    c.opening()
    c.feed(refusal.replace(b"400", b"403") + page)
    assert c.dead == "ws-rejected-http-403" and tally.sample()["status"] == 400  # (the first one only)
    from loopfan.traffic.causes import explain, in_context

    meaning, fix = in_context("ws-rejected-http-400", *explain("ws-rejected-http-400"), kind="ws", answered=False,
                              tls=False, client_cert=False, first_error=tally.sample())
    assert "the port speaks TLS" in meaning and fix.startswith("use an https:// URL (wss:// for WebSocket)")


def test_a_refused_websocket_handshake_is_explained_by_its_status() -> None:
    """QA: a 401 from a server wanting a token read "it does not speak WebSocket at this URL; check
    the ws:// URL's port and path" - the fix is the handshake's --header / --ws-subprotocol."""
    from loopfan.traffic.report import explain

    assert "--header 'Authorization: Bearer TOKEN'" in explain("ws-rejected-http-401")[1]
    assert "--header" in explain("ws-rejected-http-403")[1]
    assert "--ws-subprotocol NAME" in explain("ws-rejected-http-400")[1]
    meaning, fix = explain("ws-rejected-http-200")  # a plain HTTP server: the URL is wrong
    assert "does not speak WebSocket" in meaning and "port and path" in fix


def test_handshake_timeouts_name_the_timeout_they_share() -> None:
    """QA: 54,614 of 120,000 handshakes timed out at the default 10 s (they took 40 s, loopfan's and
    the built-in server's own CPU) and the fix said only "the server is overloaded"."""
    from loopfan.traffic.report import explain

    assert "--reply-timeout 60s" in explain("ws-handshake-timeout")[1]


@given(st.integers(0, 10**9))
def test_hdr_round_is_the_histograms_bucket(us: int) -> None:
    h = new_histogram()
    v = max(1, min(us, 600_000_000))
    h.record_value(v)
    assert h.get_value_at_percentile(100) == h.get_highest_equivalent_value(hdr_round(v))


def test_merge_and_subtract() -> None:
    a = {"sent": 10, "replies": 9, "window_replies": 8, "window_s": 2.0, "errors": {"reply-timeout": 1},
         "errors_by_source": {"127.0.0.2": 1}, "latency_us": {100: 5, 200: 3}, "ttfb_us": {90: 8}, "done": True}
    b = {"sent": 5, "replies": 5, "window_replies": 5, "window_s": 2.1, "errors": {"reply-timeout": 2},
         "latency_us": {100: 1}, "done": False}
    t = merge([a, b, {}])
    assert (t.workers, t.workers_done, t.sent, t.replies, t.window_replies) == (2, 1, 15, 14, 13)
    assert t.window_s == 2.1 and t.errors == {"reply-timeout": 3} and t.errors_total == 3
    assert t.latency.get_total_count() == 9 and t.ttfb.get_total_count() == 8
    assert subtract({100: 6, 200: 3}, {100: 5}) == {100: 1, 200: 3}
    h = new_histogram()
    record(h, {1000: 99, 500_000: 1})
    p = percentiles_ms(h)
    assert p["p50"] == pytest.approx(1.0, rel=0.01) and p["max"] == pytest.approx(500, rel=0.01)


def test_closed_loop_reading_names_the_messages_in_flight() -> None:
    from loopfan.traffic.report import closed_loop_reading

    tr = {"model": "closed loop", "messages_per_s": 80_000.0, "latency_ms": {"mean": 125.0}}
    note = closed_loop_reading(tr)
    assert note is not None and "~10,000 messages always in flight" in note and "--rate" in note
    assert closed_loop_reading({**tr, "model": "open (latency from the scheduled send time)"}) is None
    assert closed_loop_reading({**tr, "latency_ms": {"mean": None}}) is None
    assert closed_loop_reading({**tr, "messages_per_s": 1000.0, "latency_ms": {"mean": 1.0}}) is None  # ~1 in flight


def test_closed_loop_reading_of_a_window_short_beside_the_latency() -> None:
    """QA: 150,000 echo connections, a 5 s window, mean latency 2.8 s (every first message went out at
    once): "~51,535 messages always in flight" - there were 150,000, one per connection. Little's law
    needs a steady state; the reading says the figures are not one, and how to measure it."""
    from loopfan.traffic.report import closed_loop_reading

    tr = {"kind": "echo", "model": "closed loop", "messages_per_s": 18_580.0, "latency_ms": {"mean": 2773.7},
          "window_s": 5.0, "connections_talking_at_start": 150_000, "connections_talking_at_end": 150_000}
    note = closed_loop_reading(tr)
    assert note is not None and "150,000 messages always in flight (1 per connection)" in note
    assert "gives only ~51,535" in note and "5 s window holds few round trips of 2.8 s" in note
    assert "--duration many times the latency, after a --warmup" in note
    # With --pipeline 4 there are four per connection; a steady state keeps the usual reading.
    assert "600,000 messages always in flight (4 per connection)" in (closed_loop_reading(tr, 4) or "")
    steady = {**tr, "messages_per_s": 52_000.0}
    assert "~144,232 messages always in flight (messages/s x mean latency)" in (closed_loop_reading(steady) or "")


@given(st.lists(st.tuples(st.floats(0, 3e6), st.integers(0, 400)), max_size=30), st.floats(1, 5e4))
def test_unsent_ages_are_exact_on_the_step_grid(parked: list[tuple[float, int]], step_us: float) -> None:
    from loopfan.traffic.schedule import unsent_ages

    # Ages >= 0, and few enough points that the grid is the step's own (max_points).
    parked = [(min(oldest, step_us * 5000), n) for oldest, n in parked]
    parked = [(oldest, min(n, int(oldest // step_us) + 1)) for oldest, n in parked]
    one_by_one: dict[int, int] = {}
    for oldest, n in parked:
        for k in range(n):
            us = int((int(oldest // step_us) - k) * step_us)  # floored onto the step's grid
            one_by_one[us] = one_by_one.get(us, 0) + 1
    assert unsent_ages(parked, step_us, max_points=10_000) == one_by_one


@given(st.lists(st.tuples(st.floats(1e3, 3e6), st.integers(1, 5000)), min_size=1, max_size=30),
       st.floats(1, 100), st.integers(10, 1000))
def test_unsent_ages_on_a_coarse_grid_keep_the_total_and_stay_lower_bounds(
        parked: list[tuple[float, int]], step_us: float, max_points: int) -> None:
    from loopfan.traffic.schedule import unsent_ages

    parked = [(oldest, min(n, int(oldest // step_us) + 1)) for oldest, n in parked]
    out = unsent_ages(parked, step_us, max_points)
    assert sum(out.values()) == sum(n for _, n in parked)
    assert max(out) <= max(oldest for oldest, _ in parked) and len(out) <= max_points + 2
