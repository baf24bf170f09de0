"""How long the capacity planner takes for 1K to 10M connections (pure: no sockets, no I/O).

Rules of this file: a benchmark, not a test; prints a markdown table for docs/benchmarks.md.
The host facts are fixed (the 2-core, 20,000-fd dev machine) so the figure measures the planner
alone. Each size is planned `--repeat` times in a fresh interpreter state except the caches the
planner itself keeps (the first call pays for ordering the 65,536 /24 blocks of 127.0.0.0/8).

    python3 bench/plan_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

from loopfan.hostfacts import HostFacts
from loopfan.planner import PlanRequest, plan
from loopfan.pools import parse_endpoints

FACTS = HostFacts(
    nofile_soft=20_000,
    nofile_hard=20_000,
    file_max=2_466_170,
    files_open=400,
    mem_available_bytes=23 * 2**30,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.release()}, Python {platform.python_version()}")
    print("| connections | targets | first call | median of the rest | groups | client processes |")
    print("| --- | --- | --- | --- | --- | --- |")
    cases = [
        ("built-in server", ()),
        ("127.0.0.1:8080", parse_endpoints("127.0.0.1:8080")),
        ("127.0.0.1-127.0.0.8:9000-9003", parse_endpoints("127.0.0.1-127.0.0.8:9000-9003")),
    ]
    for label, targets in cases:
        for n in (1_000, 100_000, 1_000_000, 10_000_000):
            times = []
            p = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                p = plan(PlanRequest(connections=n, targets=targets), FACTS)
                times.append(time.perf_counter() - t0)
            assert p is not None
            rest = statistics.median(times[1:]) if len(times) > 1 else times[0]
            print(
                f"| {n:,} | {label} | {times[0] * 1000:.1f} ms | {rest * 1000:.1f} ms "
                f"| {len(p.groups):,} | {len(p.client_shards):,} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
