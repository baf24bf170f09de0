"""Echo ping-pong: 64-byte messages, one in flight per connection, loopfan's client against its
built-in echo server, N connections (default 10,000), closed loop. Prints round trips/s and latency.

    python3 bench/echo.py [-c 10000] [--duration 10]

Results go in docs/benchmarks.md (Traffic). Not a test: the figure depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def c_echo(connections: int, seconds: float) -> float | None:
    """The same ping-pong in C on this machine (the ceiling), when gcc is present."""
    import shutil

    gcc = shutil.which("gcc")
    if not gcc:
        return None
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "c_echo")
        subprocess.run([gcc, "-O2", "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_echo.c")],
                       check=True)
        out = subprocess.run(["setsid", exe, str(connections), str(seconds)], capture_output=True, text=True,
                             timeout=seconds + 60, check=False).stdout.split()
        return float(out[1]) if len(out) == 2 else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", default="10000")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--pipeline", default="1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        cmd = [sys.executable, "-m", "loopfan", "run", "-c", args.c, "--traffic", "echo", "--duration", args.duration,
               "--warmup", args.warmup, "--pipeline", args.pipeline, "-q", "--json", out]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        with open(out) as fh:
            rep = json.load(fh)
    tr = rep["traffic"]
    lat = tr["latency_ms"]
    c = c_echo(int(args.c), float(args.duration.rstrip("s")))
    if c is not None:
        print(f"C baseline (bench/c_echo.c, 1 client + 1 server process, epoll): {c:,.0f} round trips/s")
    print(f"echo 64 B, {args.c} connections ({rep['client_processes']} client + {rep['server_processes']} server "
          f"processes), closed loop, pipeline {args.pipeline}: {tr['messages_per_s']:,.0f} round trips/s, "
          f"p50 {lat['p50']} ms p99 {lat['p99']} ms max {lat['max']} ms, errors {tr['errors_total']}")


if __name__ == "__main__":
    main()
