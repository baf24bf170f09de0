"""HTTP keep-alive against one nginx (4 workers, reuseport, private config on loopback): wrk's
requests/s and loopfan's, same server, same machine, same connection counts, interleaved (and,
with --against, another loopfan source tree beside them); then loopfan alone at a connection
count wrk cannot open (one process: its fd limit). Prints each run, the medians, and the client's
CPU per request (nginx's is not counted).

    python3 bench/http_nginx.py [--counts 1000,10000] [--big 40000] [--duration 5] [--repeat 3]
                                [--against OLD/src]

Needs nginx and wrk (apt-get install nginx-light wrk). nginx is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections import defaultdict

from _runs import loopfan_run, private_nginx, summary, timed, us_per

CONF = """daemon off; master_process on; worker_processes 4; worker_rlimit_nofile 20000;
pid {d}/nginx.pid; error_log {d}/error.log warn; user root;
events {{ worker_connections 19000; multi_accept on; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u;
  scgi_temp_path {d}/s;
  server {{ listen 127.77.0.1:18888 reuseport backlog=65535; location / {{ return 200 "hello\\n"; }} }} }}
"""
URL = "http://127.77.0.1:18888/"


def loopfan(n: int, duration: int, src: str | None, label: str) -> tuple[float, str]:
    rep, t = loopfan_run(["-c", str(n), URL, "--duration", f"{duration}s", "--warmup", "1s", "--reply-timeout",
                          "30s"], src)
    tr = rep["traffic"]
    rate = tr["messages_per_s"] or 0.0
    return rate, (f"{label} -c {n} ({rep['client_processes']} processes): {rate:,.0f} req/s, p50 "
                  f"{tr['latency_ms']['p50']} ms, p99 {tr['latency_ms']['p99']} ms, errors {tr['errors_total']}, "
                  f"established {rep['established']:,}, client CPU {us_per(t, tr['replies'])}")


def wrk(n: int, duration: int) -> tuple[float, str]:
    t = timed(["wrk", "-t", "2", "-c", str(n), "-d", f"{duration}s", "--latency", URL])
    m = re.search(r"Requests/sec:\s+([\d.]+)", t.stdout)
    total = re.search(r"(\d+) requests in", t.stdout)
    p50 = re.search(r"^\s+50%\s+(\S+)", t.stdout, re.M)  # (not "87.50%" of the thread stats)
    p99 = re.search(r"^\s+99%\s+(\S+)", t.stdout, re.M)
    errs = re.search(r"Socket errors: (.*)", t.stdout)
    if not m:
        return 0.0, f"wrk -c {n}: failed: {t.stdout.strip().splitlines()[-1:]}"
    rate = float(m.group(1))
    return rate, (f"wrk -c {n} (2 threads): {rate:,.0f} req/s, p50 {p50.group(1) if p50 else '?'}, "
                  f"p99 {p99.group(1) if p99 else '?'}, "
                  f"{('socket errors: ' + errs.group(1)) if errs else 'no socket errors'}, "
                  f"client CPU {us_per(t, int(total.group(1)) if total else 0)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--big", type=int, default=40000, help="0: skip")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--against", help="another loopfan src/ folder to run side by side (e.g. a worktree of main~1)")
    args = ap.parse_args()
    results: dict[tuple[int, str], list[float]] = defaultdict(list)
    with private_nginx(CONF, "127.77.0.1", 18888):
        runs = [int(x) for x in args.counts.split(",")]
        for rnd in range(args.repeat):
            for n in runs:
                if shutil.which("wrk"):
                    rate, line = wrk(n, args.duration)
                    results[(n, "wrk")].append(rate)
                    print(f"[{rnd + 1}] {line}", flush=True)
                trees = [("loopfan", None)] + ([("before", args.against)] if args.against else [])
                for label, src in trees:
                    rate, line = loopfan(n, args.duration, src, label)
                    results[(n, label)].append(rate)
                    print(f"[{rnd + 1}] {line}", flush=True)
        if args.big:
            if shutil.which("wrk"):
                print(wrk(args.big, args.duration)[1], flush=True)
            print(loopfan(args.big, args.duration, None, "loopfan")[1], flush=True)
    print()
    for (n, label), values in sorted(results.items()):
        print(f"-c {n} {label}: req/s {summary(values)}")


if __name__ == "__main__":
    main()
