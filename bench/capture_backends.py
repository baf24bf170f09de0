"""`loopfan tag --capture` with each capture backend, interleaved: how long the whole command takes
(the capture's start and stop are the difference) and whether the file holds every packet.

Two loads, each round running every backend once in turn:
  - quiet: 20 curl requests one after another (what a user debugging one client does) - the
    elapsed time, and the packets in the file (every backend must have the same count);
  - busy: wrk -c 100 for 2 s against a private nginx - wrk's completed requests beside the HTTP
    requests tshark finds in the file (the file may hold a few more: those in flight at the end).

    python3 bench/capture_backends.py [--repeat 3] [--backends dumpcap,tcpdump,builtin]

Needs root (capture and tagging), nginx, wrk, curl and tshark (apt-get install nginx-light wrk curl
tshark tcpdump). nginx is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict

from _runs import private_nginx

CONF = """daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
user root; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;
  uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{ listen 127.77.0.2:18889; location / {{ return 200 "ok"; }} }} }}
"""
URL = "http://127.77.0.2:18889/"
QUIET = ["sh", "-c", f"for i in $(seq 20); do curl -s -o /dev/null {URL}; done"]
BUSY = ["wrk", "-t", "1", "-c", "100", "-d", "2s", URL]


def tagged(backend: str, out: str, command: list[str]) -> tuple[float, str]:
    """Elapsed seconds of `loopfan tag --capture` around command, and everything it printed."""
    argv = [sys.executable, "-m", "loopfan", "tag", "--source", "127.77.0.9", "--backend", backend,
            "--format", "pcap", "--capture", out, "--", *command]
    began = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return time.monotonic() - began, r.stdout + r.stderr


def tshark_count(path: str, display_filter: str | None = None) -> int:
    # Decode the server's port as HTTP: otherwise a connection from an ephemeral port Wireshark
    # registers to another protocol (57000 is IRC, 44818 EtherNet/IP...) is not HTTP to tshark,
    # and its requests look lost from the file.
    argv = ["tshark", "-r", path, "-d", "tcp.port==18889,http"] + (["-Y", display_filter] if display_filter else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return len(r.stdout.splitlines())


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="dumpcap,tcpdump,builtin")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b == "builtin" or shutil.which(b)]
    quiet_s: dict[str, list[float]] = defaultdict(list)
    busy_s: dict[str, list[float]] = defaultdict(list)
    with private_nginx(CONF, "127.77.0.2", 18889) as d:
        out = os.path.join(d, "c.pcap")
        for rnd in range(1, args.repeat + 1):
            for b in backends:
                took, _ = tagged(b, out, QUIET)
                quiet_s[b].append(took)
                print(f"[{rnd}] quiet {b}: {took:.2f} s, {tshark_count(out):,} packets in the file", flush=True)
            for b in backends:
                took, said = tagged(b, out, BUSY)
                busy_s[b].append(took)
                done = re.search(r"(\d+) requests in", said)
                dropped = re.search(r"([\d,]+) dropped", said)
                print(f"[{rnd}] busy  {b}: {took:.2f} s, wrk {int(done.group(1)) if done else 0:,} requests, "
                      f"file {tshark_count(out, 'http.request'):,} requests"
                      + (f", {dropped.group(1)} dropped by the kernel" if dropped else ""), flush=True)
    print()
    for b in backends:
        print(f"{b}: median elapsed quiet {median(quiet_s[b])} s, busy {median(busy_s[b])} s")


if __name__ == "__main__":
    main()
