"""Results end to end, and what reporting costs: the issue-7 "done when" runs and the overhead figures.

    python3 bench/report_demo.py [OUT_DIR] [--seconds 60]

1. A 60-second run against the built-in server and one against nginx (nginx-light, started here
   on 127.0.0.1 and stopped by pid), each with --json, --html and --check; both reports are
   validated against the schema, `loopfan compare` runs between them (and with a gate that must
   fail), and headless Chromium screenshots the built-in run's page (docs/report-screenshot.png).
2. Reporting overhead: SeriesSampler.sample() with 200 workers (the 2-million-connection shape),
   and the live panel: the same run with --progress none and with the panel drawn to a terminal
   console on /dev/null, comparing the parent's CPU (the series' parent_cpu_pct column).
Everything stays on loopback; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loopfan.cli import main
from loopfan.results.schema import validation_errors

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  keepalive_timeout 600s;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""


def loopfan(*argv: str) -> int:
    print("$ loopfan", " ".join(argv), flush=True)
    sys.argv = ["loopfan", *argv]  # run records sys.argv as the report's command line
    status = main(list(argv))
    print(f"-> exit {status}", flush=True)
    return status


def check_report(path: Path) -> dict[str, Any]:
    rep: dict[str, Any] = json.loads(path.read_text())
    errors = validation_errors(rep)
    print(f"{path.name}: {'valid' if not errors else errors[:3]} against loopfan.report/1, "
          f"{len(rep['series']['t_s'])} intervals, {path.stat().st_size / 1024:,.0f} KB")
    return rep


def nginx_run(out: Path, seconds: int, connections: int) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        print("nginx not installed (apt-get install nginx-light): skipped")
        return
    d = Path(tempfile.mkdtemp(prefix="loopfan-nginx-"))
    port = 18080
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, port=port))
    proc = subprocess.Popen([nginx, "-c", str(d / "nginx.conf"), "-g", "daemon off;"])
    try:
        time.sleep(0.5)
        loopfan("run", "-c", str(connections), f"127.0.0.1:{port}", "--connect-rate", str(connections // 20),
                "--hold", f"{seconds - 20}s", "--progress", "plain", "--json", str(out / "nginx.json"),
                "--html", str(out / "nginx.html"), "--check", "failed==0", "--check", "connect_latency.p99<50ms")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def screenshot(page: Path, png: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium not installed: no screenshot")
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                        f"--screenshot={png}", "--window-size=1000,2200", "--hide-scrollbars", page.as_uri()],
                       capture_output=True, timeout=60, check=False)
    print(f"screenshot {png} ({png.stat().st_size / 1024:,.0f} KB)")


def sampler_cost() -> None:
    from loopfan.engine.timeseries import ProcReading, SeriesSampler

    class W:
        def __init__(self, role: str, index: int) -> None:
            self.role, self.index, self.pid, self.finished = role, index, 10_000 + index, False
            self.stats: dict[str, Any] = {"open": 10_000, "established": 10_000, "closed": 0,
                                          "failed": {"ETIMEDOUT": 1}, "bytes_in": 0, "bytes_out": 0,
                                          "health": {"fds": 10_010, "fd_limit": 20_000, "loop_lag_ms": 0.4}}

    workers = [W("client", i) for i in range(100)] + [W("server", i) for i in range(100)]
    s = SeriesSampler(target=2_000_000, t0=0.0)
    procs = {w.pid: ProcReading(1.0, 30_000_000) for w in workers}
    lat = {us: 3 for us in range(20, 2000)}
    n = 3600
    t = time.perf_counter()
    for i in range(n):
        s.note_latency(lat)
        s.sample(float(i + 1), "holding", workers, procs, 1.0)
    per = (time.perf_counter() - t) / n
    size = len(json.dumps(s.as_dict()))
    print(f"sampler: {per * 1000:.2f} ms per 1-s interval with 200 workers and ~2,000 distinct latency values "
          f"({per * 100:.2f}% of one core); one hour of series = {size / 1e6:.1f} MB of JSON")
    # The /proc reads the runner adds: one /proc/PID/stat per worker per interval.
    from loopfan.engine.timeseries import read_proc

    t = time.perf_counter()
    for _ in range(2000):
        read_proc(os.getpid())
    print(f"read_proc: {(time.perf_counter() - t) / 2000 * 1e6:.0f} us per worker per interval")


def panel_cost(out: Path, seconds: int) -> None:
    """Parent CPU with the panel drawn (a terminal console on /dev/null) vs no live view."""
    from rich.console import Console

    import loopfan.results.live as live

    results = {}
    for mode in ("none", "panel"):
        original = live.Console
        if mode == "panel":
            devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
            live.Console = lambda _to=devnull, **_: Console(file=_to, force_terminal=True, width=100)  # type: ignore[assignment,misc]
        try:
            path = out / f"overhead-{mode}.json"
            loopfan("run", "-c", "20000", "--connect-rate", "4000", "--hold", f"{seconds}s", "--progress", mode,
                    "--json", str(path))
        finally:
            live.Console = original  # type: ignore[misc]
        rep = json.loads(path.read_text())
        cpu = [v for v, ph in zip(rep["series"]["health"]["parent_cpu_pct"], rep["series"]["phase"], strict=True)
               if v is not None and ph in ("connecting", "holding")]
        results[mode] = statistics.mean(cpu)
    print(f"parent CPU, mean over the run: no live view {results['none']:.2f}% of a core, panel "
          f"{results['panel']:.2f}% -> the panel costs {results['panel'] - results['none']:.2f}% of one core")


def run(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="/tmp/loopfan-report-demo")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--connections", type=int, default=20_000)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, secs = args.connections, args.seconds

    sampler_cost()
    loopfan("run", "-c", str(n), "--connect-rate", str(n // 20), "--hold", f"{secs - 20}s", "--progress", "plain",
            "--json", str(out / "builtin.json"), "--html", str(out / "builtin.html"),
            "--check", "failed==0", "--check", "connect_latency.p99<50ms", "--check", f"established>={n}")
    check_report(out / "builtin.json")
    print(f"builtin.html: {(out / 'builtin.html').stat().st_size / 1024:,.0f} KB")
    nginx_run(out, secs, n // 2)
    if (out / "nginx.json").exists():
        check_report(out / "nginx.json")
        print(f"nginx.html: {(out / 'nginx.html').stat().st_size / 1024:,.0f} KB")
        loopfan("compare", str(out / "builtin.json"), str(out / "nginx.json"), "--gate", "failed:0")
        loopfan("compare", str(out / "builtin.json"), str(out / "nginx.json"), "--format", "markdown",
                "-o", str(out / "compare.md"))
        status = loopfan("compare", str(out / "builtin.json"), str(out / "nginx.json"),
                         "--gate", "established:-10%")  # nginx ran half as many: must fail
        assert status == 1, "the gate that should fail did not"
        loopfan("report", str(out / "nginx.json"), "-o", str(out / "nginx-vs-builtin.html"),
                "--baseline", str(out / "builtin.json"))
    screenshot(out / "builtin.html", out / "report-screenshot.png")
    panel_cost(out, 20)
    if "--keep-screenshot" in sys.argv or os.environ.get("LOOPFAN_DOCS_SCREENSHOT"):
        shutil.copy(out / "report-screenshot.png", ROOT / "docs" / "report-screenshot.png")


if __name__ == "__main__":
    run([a for a in sys.argv[1:] if a != "--keep-screenshot"])
