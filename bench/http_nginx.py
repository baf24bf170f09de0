"""HTTP keep-alive against one nginx (4 workers, reuseport, private config on loopback): wrk's
requests/s and loopfan's, same server, same machine, same connection counts; then loopfan alone at
connection counts wrk cannot open (one process: its fd limit).

    python3 bench/http_nginx.py [--counts 1000,10000] [--big 40000] [--duration 5]

Needs nginx and wrk (apt-get install nginx-light wrk). nginx is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CONF = """daemon off; master_process on; worker_processes 4; worker_rlimit_nofile 20000;
pid {d}/nginx.pid; error_log {d}/error.log warn; user root;
events {{ worker_connections 19000; multi_accept on; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u;
  scgi_temp_path {d}/s;
  server {{ listen 127.77.0.1:18888 reuseport backlog=65535; location / {{ return 200 "hello\\n"; }} }} }}
"""


def loopfan(url: str, n: int, duration: int, d: str) -> str:
    out = os.path.join(d, "r.json")
    subprocess.run([sys.executable, "-m", "loopfan", "run", "-c", str(n), url, "--duration", f"{duration}s",
                    "--warmup", "1s", "--reply-timeout", "30s", "-q", "--json", out], stdout=subprocess.DEVNULL)
    rep = json.load(open(out))
    tr = rep["traffic"]
    return (f"loopfan -c {n}: {tr['messages_per_s']:,.0f} req/s, p50 {tr['latency_ms']['p50']} ms, "
            f"p99 {tr['latency_ms']['p99']} ms, errors {tr['errors_total']}, established {rep['established']:,}")


def wrk(url: str, n: int, duration: int) -> str:
    r = subprocess.run(["wrk", "-t", "2", "-c", str(n), "-d", f"{duration}s", "--latency", url],
                       capture_output=True, text=True)
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    p50 = re.search(r"50%\s+(\S+)", r.stdout)
    p99 = re.search(r"99%\s+(\S+)", r.stdout)
    errs = re.search(r"Socket errors: (.*)", r.stdout)
    if not m:
        return f"wrk -c {n}: failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return (f"wrk -c {n}: {float(m.group(1)):,.0f} req/s, p50 {p50.group(1) if p50 else '?'}, "
            f"p99 {p99.group(1) if p99 else '?'}, {('socket errors: ' + errs.group(1)) if errs else 'no socket errors'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--big", default="40000")
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "nginx.conf"), "w").write(CONF.format(d=d))
        proc = subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e", os.path.join(d, "e.log")])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.77.0.1", 18888), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            url = "http://127.77.0.1:18888/"
            for n in [int(x) for x in args.counts.split(",")]:
                if shutil.which("wrk"):
                    print(wrk(url, n, args.duration), flush=True)
                print(loopfan(url, n, args.duration, d), flush=True)
            if args.big:
                n = int(args.big)
                if shutil.which("wrk"):
                    print(wrk(url, n, args.duration), flush=True)
                print(loopfan(url, n, args.duration, d), flush=True)
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
