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
        rep = json.load(open(out))
    tr = rep["traffic"]
    lat = tr["latency_ms"]
    print(f"echo 64 B, {args.c} connections ({rep['client_processes']} client + {rep['server_processes']} server "
          f"processes), closed loop, pipeline {args.pipeline}: {tr['messages_per_s']:,.0f} round trips/s, "
          f"p50 {lat['p50']} ms p99 {lat['p99']} ms max {lat['max']} ms, errors {tr['errors_total']}")


if __name__ == "__main__":
    main()
