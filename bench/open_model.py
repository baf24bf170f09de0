"""Open model (a send schedule, latency from the scheduled time): what loopfan delivers as the
requested rate goes from well under the host's capacity to far over it, against its built-in echo
server; with --against, another loopfan source tree in the same loop (a before/after comparison).

    python3 bench/open_model.py [-c 2000] [--rates 10,40,1000] [--duration 3s] [--repeat 2] [--against OLD/src]

Per run: the requested and the delivered messages/s, latency p50/p99 (from the scheduled times),
messages due but never sent, and CPU per delivered message. Past capacity the delivered rate
should stay near the closed loop's and the latency should grow with the backlog, not collapse.
Results go in docs/benchmarks.md (Traffic). Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from _runs import loopfan_run, summary, us_per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", default="2000", help="connections")
    ap.add_argument("--rates", default="10,40,1000", help="messages/s per connection, comma-separated")
    ap.add_argument("--duration", default="3s")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--against", help="another loopfan src/ folder to run side by side")
    args = ap.parse_args()
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    trees = [("loopfan", None)] + ([("before", args.against)] if args.against else [])
    for rnd in range(args.repeat):
        for rate in args.rates.split(","):
            for label, src in trees:
                rep, t = loopfan_run(["-c", args.c, "--traffic", "echo", "--message-rate", rate,
                                      "--duration", args.duration], src)
                tr = rep["traffic"]
                lat = tr["latency_ms"]
                asked = float(rate) * int(args.c)
                results[(rate, label)].append(tr["messages_per_s"] or 0.0)
                got = tr["messages_per_s"] or 0
                print(f"[{rnd + 1}] {label} {rate}/s x {args.c} = {asked:,.0f}/s asked: {got:,.0f}/s delivered, "
                      f"p50 {lat['p50']} ms p99 {lat['p99']} ms, due but unsent {tr['unsent_at_end']:,}, "
                      f"errors {tr['errors_total']}, CPU {us_per(t, tr['replies'])}", flush=True)
    print()
    for (rate, label), values in results.items():
        print(f"{rate}/s per connection, {label}: delivered messages/s {summary(values)}")


if __name__ == "__main__":
    main()
