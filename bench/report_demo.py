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
from typing import Any, NoReturn

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


# The runs hold for --seconds minus the 20 s their ramps take (--connect-rate is a twentieth of the
# connections), and the nginx run opens half the connections at a fortieth: below these the holds
# and rates would be 0 or negative, which loopfan refuses (exit 2) after minutes of other work.
RAMP_S = 20
MIN_SECONDS = RAMP_S + 1
MIN_CONNECTIONS = 40


class DemoFailed(Exception):
    """A step whose output the next steps need did not produce it: said in one line, exit 1."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line (not the usage block), exit 2, as loopfan's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"report_demo: error: {message}; see --help\n")


def loopfan(*argv: str) -> int:
    print("$ loopfan", " ".join(argv), flush=True)
    sys.argv = ["loopfan", *argv]  # run records sys.argv as the report's command line
    status = main(list(argv))
    print(f"-> exit {status}", flush=True)
    return status


def ran(status: int, path: Path) -> None:
    """The run that should have written `path` did: else stop here, in one line."""
    if not path.exists():
        raise DemoFailed(f"the run that writes {path} failed (exit {status}) and wrote no report: "
                         "its output above says why")


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
        if proc.poll() is not None:
            print(f"nginx exited at once (status {proc.returncode}; port {port} taken?): skipped")
            return
        status = loopfan("run", "-c", str(connections), f"127.0.0.1:{port}", "--connect-rate",
                         str(connections // RAMP_S), "--hold", f"{seconds - RAMP_S}s", "--progress", "plain",
                         "--json", str(out / "nginx.json"), "--html", str(out / "nginx.html"),
                         "--check", "failed==0", "--check", "connect_latency.p99<50ms")
        if not (out / "nginx.json").exists():
            print(f"the nginx run failed (exit {status}) and wrote no report: skipped")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
    if not png.exists():
        print(f"chromium wrote no screenshot of {page}: none")
        return
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
            status = loopfan("run", "-c", "20000", "--connect-rate", "4000", "--hold", f"{seconds}s", "--progress",
                             mode, "--json", str(path))
        finally:
            live.Console = original  # type: ignore[misc]
            if mode == "panel":
                devnull.close()
        ran(status, path)
        rep = json.loads(path.read_text())
        cpu = [v for v, ph in zip(rep["series"]["health"]["parent_cpu_pct"], rep["series"]["phase"], strict=True)
               if v is not None and ph in ("connecting", "holding")]
        if not cpu:
            raise DemoFailed(f"{path} has no parent CPU figure in its connecting or holding intervals")
        results[mode] = statistics.mean(cpu)
    print(f"parent CPU, mean over the run: no live view {results['none']:.2f}% of a core, panel "
          f"{results['panel']:.2f}% -> the panel costs {results['panel'] - results['none']:.2f}% of one core")


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments, checked before anything runs: one line and exit 2 when they cannot work."""
    ap = OneLineParser(description="Results end to end, and what reporting costs (see the module docstring).")
    ap.add_argument("out", nargs="?", default="/tmp/loopfan-report-demo")
    ap.add_argument("--seconds", type=int, default=60,
                    help=f"each run's length, its {RAMP_S} s ramp included (at least {MIN_SECONDS})")
    ap.add_argument("--connections", type=int, default=20_000,
                    help=f"the built-in run's connections; nginx gets half (at least {MIN_CONNECTIONS})")
    args = ap.parse_args(argv)
    if args.seconds < MIN_SECONDS:
        ap.error(f"--seconds {args.seconds} leaves no hold after the {RAMP_S} s ramp; give --seconds "
                 f"{MIN_SECONDS} or more (default 60)")
    if args.connections < MIN_CONNECTIONS:
        ap.error(f"--connections {args.connections} is too few for the ramps (a connect rate of a fortieth "
                 f"for nginx); give --connections {MIN_CONNECTIONS} or more (default 20000)")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"cannot create the output directory {args.out}: {exc.strerror}; give a writable OUT_DIR")
    return args


def run(argv: list[str]) -> None:
    args = parse(argv)
    out = Path(args.out)
    n, secs = args.connections, args.seconds

    sampler_cost()
    status = loopfan("run", "-c", str(n), "--connect-rate", str(n // RAMP_S), "--hold", f"{secs - RAMP_S}s",
                     "--progress", "plain", "--json", str(out / "builtin.json"), "--html", str(out / "builtin.html"),
                     "--check", "failed==0", "--check", "connect_latency.p99<50ms", "--check", f"established>={n}")
    ran(status, out / "builtin.json")
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
        if status != 1:
            raise DemoFailed(f"the gate that should fail (established:-10%, nginx ran half as many) gave exit "
                             f"{status}, not 1")
        loopfan("report", str(out / "nginx.json"), "-o", str(out / "nginx-vs-builtin.html"),
                "--baseline", str(out / "builtin.json"))
    screenshot(out / "builtin.html", out / "report-screenshot.png")
    panel_cost(out, 20)
    keep = "--keep-screenshot" in sys.argv or os.environ.get("LOOPFAN_DOCS_SCREENSHOT")
    if keep and (out / "report-screenshot.png").exists():
        shutil.copy(out / "report-screenshot.png", ROOT / "docs" / "report-screenshot.png")


if __name__ == "__main__":
    try:
        run([a for a in sys.argv[1:] if a != "--keep-screenshot"])
    except DemoFailed as failed:
        sys.exit(f"report_demo: error: {failed}")
