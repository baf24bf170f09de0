"""Echo ping-pong: 64-byte messages, one in flight per connection, loopfan's client against its
built-in echo server, closed loop; beside it the same ping-pong in C (bench/c_echo.c, the ceiling)
and, with --against, another loopfan source tree (a before/after comparison), interleaved so that
the host's noise hits all of them alike. Prints round trips/s per run, medians, and CPU per round
trip (both ends: the run includes its built-in server).

    python3 bench/echo.py [-c 1000,10000] [--duration 8s] [--repeat 3] [--against OLD/src]

Results go in docs/benchmarks.md (Traffic). Not a test: the figure depends on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict

from _runs import loopfan_run, summary, timed, us_per


def build_c(d: str) -> str | None:
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    exe = os.path.join(d, "c_echo")
    subprocess.run([gcc, "-O2", "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_echo.c")],
                   check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", default="10000", help="connection counts, comma-separated")
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--warmup", default="2s")
    ap.add_argument("--pipeline", default="1")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--against", help="another loopfan src/ folder to run side by side (e.g. a worktree of main~1)")
    args = ap.parse_args()
    seconds = float(args.duration.rstrip("s"))
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as d:
        exe = build_c(d)
        for rnd in range(args.repeat):
            for n in args.c.split(","):
                if exe:
                    t = timed(["setsid", exe, n, str(seconds)], timeout=seconds + 60)
                    out = t.stdout.split()
                    if len(out) == 2:
                        rate = float(out[1])
                        results[(n, "C")].append(rate)
                        print(f"[{rnd + 1}] -c {n} C (bench/c_echo.c, 1 client + 1 server process): {rate:,.0f} "
                              "round trips/s", flush=True)
                    else:  # it exits early when a connect fails (e.g. the last run's TIME_WAIT in a group)
                        print(f"[{rnd + 1}] -c {n} C: no result ({t.stdout.strip()[:200]!r})", flush=True)
                trees = [("loopfan", None)] + ([("before", args.against)] if args.against else [])
                for label, src in trees:
                    rep, t = loopfan_run(["-c", n, "--traffic", "echo", "--duration", args.duration, "--warmup",
                                          args.warmup, "--pipeline", args.pipeline], src)
                    tr = rep["traffic"]
                    lat = tr["latency_ms"]
                    results[(n, label)].append(tr["messages_per_s"])
                    print(f"[{rnd + 1}] -c {n} {label} ({rep['client_processes']} client + {rep['server_processes']} "
                          f"server processes): {tr['messages_per_s']:,.0f} round trips/s, p50 {lat['p50']} ms "
                          f"p99 {lat['p99']} ms, errors {tr['errors_total']}, CPU {us_per(t, tr['replies'])}",
                          flush=True)
    print()
    for (n, label), values in results.items():
        print(f"-c {n} {label}: round trips/s {summary(values)}")


if __name__ == "__main__":
    main()
