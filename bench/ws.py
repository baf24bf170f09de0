"""WebSocket echo: loopfan's client against its built-in WebSocket echo server, 64-byte text
messages, one in flight per connection, closed loop, at N connections; with --against, another
loopfan source tree in the same loop (a before/after comparison). Prints each run and the medians.

    python3 bench/ws.py [--counts 10000,100000] [--duration 10s] [--repeat 1] [--against OLD/src]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from _runs import loopfan_run, summary, us_per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10000")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--against", help="another loopfan src/ folder to run side by side (e.g. a worktree of main~1)")
    args = ap.parse_args()
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    trees = [("loopfan", None)] + ([("before", args.against)] if args.against else [])
    for rnd in range(args.repeat):
        for n in args.counts.split(","):
            for label, src in trees:
                rep, t = loopfan_run(["-c", n, "--traffic", "ws", "--duration", args.duration, "--warmup",
                                      args.warmup, "--reply-timeout", "60s"], src)
                tr = rep["traffic"]
                results[(n, label)].append(tr["messages_per_s"])
                print(f"[{rnd + 1}] ws -c {n} {label} ({rep['client_processes']} client + {rep['server_processes']} "
                      f"server processes): {tr['messages_per_s']:,.0f} messages/s, p50 {tr['latency_ms']['p50']} ms, "
                      f"p99 {tr['latency_ms']['p99']} ms, handshakes {tr['statuses'].get('ws-handshake-ok', 0):,}, "
                      f"errors {tr['errors_total']}, CPU {us_per(t, tr['replies'])}", flush=True)
    print()
    for (n, label), values in results.items():
        print(f"ws -c {n} {label}: messages/s {summary(values)}")


if __name__ == "__main__":
    main()
