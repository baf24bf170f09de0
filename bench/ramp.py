"""Ramp speed of `loopfan run` against the built-in server, configurations side by side.

    python3 bench/ramp.py [-c 200000] [--repeat 3]

Interleaves the configurations (A B C D A B C D ...) so that a noisy machine hurts them alike, and
reports each one's median connect rate over the ramp. Configurations: how many client workers
connect at once (2 = loopfan's default, or all of them) x whether the built-in server accepts in
2 ms batches (default) or wakes for every connection. Also runs bench/c_baseline.c when gcc is
present: the same connect-and-hold in C, the physical ceiling.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

from loopfan import PlanRequest, plan, read_host_facts
from loopfan.engine import protocol as P
from loopfan.engine.runner import RunConfig, run_plan

CONFIGS = {
    "2 at a time, batched accept (default)": (2, 0.002),
    "2 at a time, accept per wakeup": (2, 0.0),
    "all at once, batched accept": (1000, 0.002),
    "all at once, accept per wakeup": (1000, 0.0),
}


def one_run(n: int, concurrency: int, coalesce_s: float) -> tuple[float, float]:
    p = plan(PlanRequest(connections=n), read_host_facts())
    config = RunConfig(hold_s=0.0, ramp_concurrency=concurrency,
                       server=P.ServerConfig(accept_coalesce_s=coalesce_s))
    r = run_plan(p, config)
    assert r.client.established == n, r.client.failed
    h = r.connect_latency
    return n / r.phases_s["connect"], h.get_value_at_percentile(99.9) / 1000


def c_baseline(n: int) -> float | None:
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "c_baseline")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_baseline.c")
        subprocess.run([gcc, "-O2", "-o", exe, src], check=True)
        per = 10_000
        out = subprocess.run(["setsid", exe, str(n // per), str(per)], capture_output=True, text=True,
                             timeout=300, check=False).stdout.split()
        return float(out[3]) if len(out) == 4 else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rates: dict[str, list[float]] = {k: [] for k in CONFIGS}
    tails: dict[str, list[float]] = {k: [] for k in CONFIGS}
    c_rates: list[float] = []
    for _ in range(args.repeat):
        for name, (conc, coalesce) in CONFIGS.items():
            rate, p999 = one_run(args.c, conc, coalesce)
            rates[name].append(rate)
            tails[name].append(p999)
            time.sleep(2)  # let TIME_WAIT and slab settle a little between runs
        c = c_baseline(args.c)
        if c:
            c_rates.append(c)
        time.sleep(2)
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{args.c:,} connections, built-in server, median of {args.repeat} interleaved runs\n")
    print("| configuration | connects/s (median) | runs | connect p99.9 (median) |\n|---|---|---|---|")
    for name in CONFIGS:
        runs = ", ".join(f"{r / 1000:.1f}K" for r in rates[name])
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {runs} | {statistics.median(tails[name]):.1f} ms |")
    if c_rates:
        runs = ", ".join(f"{r / 1000:.1f}K" for r in c_rates)
        print(f"| C baseline (bench/c_baseline.c, blocking connects, all at once) | {statistics.median(c_rates):,.0f} "
              f"| {runs} | - |")


if __name__ == "__main__":
    main()
