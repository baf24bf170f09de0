"""Opt-in Prometheus exposition of a running run (`--prometheus 127.0.0.1:PORT`).

Rules of this file: prometheus_client is an optional extra (`pip install loopfan[prometheus]`),
imported only here and only when asked for; a missing one is a UsageError naming the install.
The exporter listens on loopback only (loopfan's traffic and its telemetry stay on the host) in
a private registry, and a scrape reads the latest Progress the runner handed over - no work at
all between scrapes. start() runs after the last worker fork; stop() closes the socket.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

from loopfan.engine.runner import Progress
from loopfan.errors import UsageError


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
        yield GaugeMetricFamily("loopfan_connects_per_second", "Connects per second in the last interval",
                                value=row.get("connects_per_s", p.rate_per_s))
        lat = GaugeMetricFamily("loopfan_connect_latency_seconds", "Connect latency of the last interval",
                                labels=["quantile"])
        for key, q in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("p999", "0.999"), ("max", "1")):
            v = (row.get("latency_ms") or {}).get(key)
            if v is not None:
                lat.add_metric([q], v / 1000)
        yield lat
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


class Exporter:
    def __init__(self, host: str, port: int) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise UsageError("--prometheus needs prometheus_client: pip install 'loopfan[prometheus]'") from None
        self.host, self.port = host, port
        self.latest: Progress | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as exc:
            raise UsageError(f"--prometheus {self.host}:{self.port}: cannot listen ({exc.strerror}); "
                             "choose another port") from None
        self.port = self._server.server_address[1]  # the real one when 0 was asked for

    def update(self, p: Progress) -> None:
        self.latest = p

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
