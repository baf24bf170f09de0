"""WebSocket echo: loopfan's client against its built-in WebSocket echo server (wsproto both ends),
64-byte text messages, one in flight per connection, closed loop, at N connections.

    python3 bench/ws.py [--counts 10000,100000] [--duration 10]
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
    ap.add_argument("--counts", default="10000")
    ap.add_argument("--duration", default="10s")
    args = ap.parse_args()
    for n in args.counts.split(","):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            subprocess.run([sys.executable, "-m", "loopfan", "run", "-c", n, "--traffic", "ws", "--duration",
                            args.duration, "--warmup", "2s", "--reply-timeout", "60s", "-q", "--json", out],
                           stdout=subprocess.DEVNULL)
            rep = json.load(open(out))
        tr = rep["traffic"]
        print(f"ws -c {n} ({rep['client_processes']} client + {rep['server_processes']} server processes): "
              f"{tr['messages_per_s']:,.0f} messages/s, p50 {tr['latency_ms']['p50']} ms, p99 {tr['latency_ms']['p99']} "
              f"ms, handshakes {tr['statuses'].get('ws-handshake-ok', 0):,}, errors {tr['errors_total']}", flush=True)


if __name__ == "__main__":
    main()
