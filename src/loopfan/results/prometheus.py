"""Opt-in Prometheus exposition of a running run (`--prometheus 127.0.0.1:PORT`).

Rules of this file: prometheus_client is an optional extra (`pip install loopfan[prometheus]`),
imported only here and only when asked for; a missing one is a UsageError naming the install.
The exporter listens on loopback only (loopfan's traffic and its telemetry stay on the host) in
a private registry, and a scrape reads the latest Progress the runner handed over - no work at
all between scrapes. Its socket is bound by listen() at the CLI edge, before the run starts, so a
port already taken is bad input said at once (not a run stopped halfway, its connections counted
as closed by the peer); the Exporter serves on that socket from start(), after the last worker
fork (no thread may run across a fork), and stop() closes it. The workers do not keep the socket:
a forked worker closes the fds it inherited (fleet._enter_child).

A run that talks adds the loopfan_traffic_* families once its traffic phase begins (update()
notes that phase: O(1)) and keeps them to the end, since a series that vanished when the traffic
ends would read as a counter reset. They are the figures the live view shows during traffic, from
the same time series, named as Prometheus asks: base units (seconds, bytes), `_total` on counters,
a `cause` label on errors, the last interval's latency percentiles as one gauge per `quantile`
(max as quantile 1, as for the connect latency). The per-second gauges of connects, messages and
bytes are the live view's rates as they are now (over the last second of the workers' reports,
since the phase began: live.rates_now_per_s), 0 until the phase's first reports are in; the
errors per second by cause are the last interval's (the live rates keep no causes). The traffic
counters are summed from the series' per-interval rates, as the live view's error counts are
(live.so_far): close, not exact; the report has the exact figures. A hold-only run exports no
traffic family at all.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from loopfan.engine.runner import Progress
from loopfan.errors import UsageError

if TYPE_CHECKING:
    from loopfan.engine.timeseries import SeriesSampler

# The series' latency keys (ms) and the quantile label each is exported under.
_QUANTILES = (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("p999", "0.999"), ("max", "1"))


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', ':9464' or '9464' -> (host, port); loopback only."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--prometheus {text!r}: the port is not a number 0-65535; write e.g. 127.0.0.1:9464") \
            from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise UsageError(f"--prometheus {text!r}: loopfan exports metrics on loopback addresses only "
                         "(127.0.0.0/8 or ::1); scrape it from this host, e.g. 127.0.0.1:9464")
    return host, port


def _require_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError("--prometheus needs prometheus_client: pip install 'loopfan[prometheus]'") from None


def listen(host: str, port: int) -> socket.socket:
    """The exporter's listening socket, bound now (port 0: any free one); a port taken or an
    address that does not bind is a UsageError naming the fix."""
    _require_client()
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        # (os.strerror: create_server's own message repeats the address, inside our line that has it)
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"--prometheus {host}:{port}: cannot listen ({why}); choose another "
                         "port, e.g. --prometheus 127.0.0.1:9464, or stop what listens there") from None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape on stderr: that is where the live view goes."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server on a socket bound and listening already (http.server can only bind its own)."""

    daemon_threads = True  # a scrape in progress must not keep loopfan from exiting

    def __init__(self, sock: socket.socket, app: Callable[..., Any]) -> None:
        socketserver.BaseServer.__init__(self, sock.getsockname()[:2], _QuietHandler)
        self.socket = sock
        # What HTTPServer.server_bind would have recorded after its bind (WSGI's SERVER_NAME/PORT).
        self.server_name, self.server_port = sock.getsockname()[:2]
        self.setup_environ()
        self.set_app(app)


class _Collector:
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.exporter.latest
        if p is None:
            return
        from loopfan.results.live import last_row

        row = last_row(p)
        yield GaugeMetricFamily("loopfan_connections_open", "Connections open now (client side)", value=p.client.open)
        yield GaugeMetricFamily("loopfan_connections_target", "Connections the run asked for", value=p.target)
        yield CounterMetricFamily("loopfan_connections_established", "Connections established so far",
                                  value=p.client.established)
        failed = CounterMetricFamily("loopfan_connect_failures", "Connection failures by cause", labels=["cause"])
        for cause, n in sorted(p.client.failed.items()):
            failed.add_metric([cause], n)
        yield failed
        now = row["now_per_s"]
        yield GaugeMetricFamily("loopfan_connects_per_second", "Connects per second now (over the last second, "
                                "since the phase began)", value=now["connects"] or 0)
        yield _quantiles("loopfan_connect_latency_seconds", "Connect latency of the last interval",
                         row.get("latency_ms") or {})
        health = row.get("health") or {}
        for key, name, text in (
            ("fds_used_max_pct", "loopfan_fds_used_max_percent", "Fullest worker's fds, % of limit"),
            ("workers_cpu_pct", "loopfan_workers_cpu_percent", "Workers' CPU, % of one core"),
            ("loop_lag_ms_max", "loopfan_loop_lag_max_ms", "Worst worker event-loop lag"),
        ):
            if health.get(key) is not None:
                yield GaugeMetricFamily(name, text, value=health[key])
        phase = GaugeMetricFamily("loopfan_phase", "The run's phase (1 for the current one)", labels=["phase"])
        phase.add_metric([p.phase], 1)
        yield phase
        if self.exporter.talked and p.series is not None:
            yield from _traffic(p.series, row)


def _quantiles(name: str, text: str, latency_ms: dict[str, Any]) -> Any:
    """A gauge family of an interval's latency percentiles, in seconds; none when it measured nothing."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, text, labels=["quantile"])
    for key, q in _QUANTILES:
        v = latency_ms.get(key)
        if v is not None:
            family.add_metric([q], v / 1000)
    return family


def _traffic(s: SeriesSampler, row: dict[str, Any]) -> Iterator[Any]:
    """The loopfan_traffic_* families: counters summed from the per-interval rates, and the last
    interval's rates and message latency (row: live.last_row of the same Progress)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from loopfan.results.live import so_far

    t_s = s.cols["t_s"]
    yield CounterMetricFamily("loopfan_traffic_messages", "Messages completed so far (replies; sends where no "
                              "reply is awaited), warm-up included", value=so_far(s.cols["messages_per_s"], t_s))
    now = row["now_per_s"]
    yield GaugeMetricFamily("loopfan_traffic_messages_per_second", "Messages completed per second now (over the "
                            "last second, since the traffic began)", value=now["messages"] or 0)
    for way, verb in (("in", "received"), ("out", "sent")):
        yield CounterMetricFamily(f"loopfan_traffic_{verb}_bytes", f"Bytes the clients {verb} so far",
                                  value=so_far(s.cols[f"bytes_{way}_per_s"], t_s))
        yield GaugeMetricFamily(f"loopfan_traffic_{verb}_bytes_per_second",
                                f"Bytes the clients {verb} per second now (over the last second)",
                                value=now[f"bytes_{way}"] or 0)
    # (Its help is one text for every kind, as the family names are: "messages", not HTTP's requests.)
    yield _quantiles("loopfan_traffic_latency_seconds", "Message latency of the last interval (until the whole "
                     "reply: an HTTP request's response, an echo's round trip, a WebSocket message's reply)",
                     row.get("message_latency_ms") or {})
    # Every cause seen so far, 0 where the last interval had none: a series per cause that stays.
    errors = CounterMetricFamily("loopfan_traffic_errors", "Traffic errors so far by cause, warm-up included",
                                 labels=["cause"])
    rate = GaugeMetricFamily("loopfan_traffic_errors_per_second", "Traffic errors per second in the last interval "
                             "by cause", labels=["cause"])
    total, per_s = row.get("errors_by_cause_so_far") or {}, row.get("errors_by_cause_per_s") or {}
    for cause in sorted(dict(s.errors_by_cause)):  # a copy: the runner may add a cause meanwhile
        errors.add_metric([cause], total.get(cause, 0))
        rate.add_metric([cause], per_s.get(cause, 0))
    yield errors
    yield rate


class Exporter:
    def __init__(self, sock: socket.socket) -> None:
        """Serve on `sock` (from listen()) once started; it is the Exporter's to close from now on."""
        _require_client()
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        self.latest: Progress | None = None
        self.talked = False  # the run has been in its traffic phase: export the traffic families
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        self._server = _Server(self.socket, make_wsgi_app(registry))
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopfan-prometheus", daemon=True)
        self._thread.start()

    def update(self, p: Progress) -> None:
        self.latest = p
        # The series' rows alone cannot tell: a traffic phase shorter than an interval may have no
        # row labelled "traffic", and its rates land in the next row.
        self.talked = self.talked or p.phase == "traffic"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        self.socket.close()  # also when never started (the run failed before its workers were up)
