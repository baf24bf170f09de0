"""Measure connect() rate against the fill of ONE (source, endpoint) port group.

Rules of this file: a benchmark, not a test. Everything stays on 127.0.0.0/8; every process it
starts is its own child, bounded in time, and stopped by pid at the end; client sockets close with
SO_LINGER 0 (RST) so no TIME_WAIT is left behind to spoil the next run.

What it does, per run:
  - 2 server processes listen on 127.0.0.1:PORT with SO_REUSEPORT (the kernel balances the
    handshakes between them) and accept and hold every connection;
  - 2 client processes bind 127.0.0.S with IP_BIND_ADDRESS_NO_PORT and connect blocking sockets to
    127.0.0.1:PORT, together COUNT connections (two processes because of a 20,000 open-file limit);
  - each client records the monotonic time at which each connect() returned. The parent merges
    both lists: the k-th connection overall was made with the group k / PORTS full, so the
    connects per second inside each 10 % fill bucket is the rate at that fill.
Each run uses a fresh source address so no earlier state of the group leaks in.

    python3 bench/fill_ratio.py [--count 27000] [--runs 3] [--port 47001]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import socket
import statistics
import struct
import sys
import time
from array import array
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

# Fill bucket edges (fractions of the ephemeral range): tenths, then finer steps around one half,
# where Linux runs out of even ports (connect() tries even ports first, odd ones after).
COARSE = [b / 10 for b in range(11)]
FINE = [0.40, 0.44, 0.46, 0.48, 0.49, 0.50, 0.51, 0.52, 0.54, 0.56, 0.60]
DEADLINE_S = 120.0  # per run: a client gives up after this, the parent kills what is left


def server(port: int, ready: Event, stop: Event) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(65535)  # the kernel caps it at net.core.somaxconn
    lsock.settimeout(0.2)
    held: list[socket.socket] = []
    ready.set()
    while not stop.is_set():
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        except OSError:
            break
        held.append(conn)
    for c in held:
        c.close()
    lsock.close()


def client(source: str, port: int, count: int, go: Event, out: Connection) -> None:
    times = array("q")
    errors: dict[str, int] = {}
    socks: list[socket.socket] = []
    linger0 = struct.pack("ii", 1, 0)
    go.wait()
    deadline = time.monotonic() + DEADLINE_S
    perf = time.perf_counter_ns  # CLOCK_MONOTONIC: comparable across processes on one host
    for _ in range(count):
        if time.monotonic() > deadline:
            errors["deadline"] = errors.get("deadline", 0) + 1
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        s.settimeout(5.0)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
        except OSError as exc:
            key = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
            s.close()
            continue
        times.append(perf())
        socks.append(s)
    out.send((times.tobytes(), errors))
    out.recv()  # hold everything until the parent has both results: the fill is shared
    for s in socks:
        s.close()


def one_run(source: str, port: int, count: int) -> tuple[list[int], dict[str, int]]:
    ctx = mp.get_context("fork")
    ready = [ctx.Event(), ctx.Event()]
    stop, go = ctx.Event(), ctx.Event()
    servers = [ctx.Process(target=server, args=(port, r, stop), daemon=True) for r in ready]
    for p in servers:
        p.start()
    for r in ready:
        if not r.wait(10):
            raise SystemExit("server did not start")
    pipes = [ctx.Pipe() for _ in range(2)]
    shares = [count // 2, count - count // 2]
    clients = [
        ctx.Process(target=client, args=(source, port, share, go, child), daemon=True)
        for share, (_, child) in zip(shares, pipes, strict=True)
    ]
    started = [*servers, *clients]
    try:
        for p in clients:
            p.start()
        go.set()
        results = []
        for parent, _ in pipes:
            if not parent.poll(DEADLINE_S + 15):
                raise SystemExit("a client did not report in time")
            results.append(parent.recv())
        for parent, _ in pipes:
            parent.send("done")
        for p in clients:
            p.join(30)
    finally:
        stop.set()
        for p in started:
            p.join(10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join()
    stamps: list[int] = []
    errors: dict[str, int] = {}
    for raw, errs in results:
        a = array("q")
        a.frombytes(raw)
        stamps.extend(a)
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
    stamps.sort()
    return stamps, errors


def bucket_rates(
    stamps: list[int], ports: int, start_ns: int, edges: list[float]
) -> list[float | None]:
    """Connects/s between consecutive fill `edges` (fractions); None where the run fell short."""
    rates: list[float | None] = []
    for a, b in itertools.pairwise(edges):
        lo, hi = int(a * ports), int(b * ports)
        if hi > len(stamps):
            rates.append(None)
            continue
        t0 = start_ns if lo == 0 else stamps[lo - 1]
        t1 = stamps[hi - 1]
        rates.append((hi - lo) / max(t1 - t0, 1) * 1e9)
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=27_000, help="connections in the one group")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--port", type=int, default=47_001, help="server port (outside the ephemeral range)")
    args = ap.parse_args()
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        lo, hi = (int(x) for x in fh.read().split())
    ports = hi - lo + 1
    print(
        f"# {platform.node()} {platform.system()} {platform.release()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, ephemeral range {lo}-{hi} ({ports:,} ports), "
        f"{args.count:,} connections per run, {args.runs} runs"
    )
    per_run: list[list[float | None]] = []
    per_run_fine: list[list[float | None]] = []
    for r in range(args.runs):
        source = f"127.0.{7 + r // 200}.{2 + r % 200}"  # fresh group each run
        t_start = time.perf_counter_ns()
        stamps, errors = one_run(source, args.port, args.count)
        # The first bucket's clock starts at the first connect, not at process start-up.
        first = stamps[0] if stamps else t_start
        per_run.append(bucket_rates(stamps, ports, first, COARSE))
        per_run_fine.append(bucket_rates(stamps, ports, first, FINE))
        total_s = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
        print(f"run {r + 1}: source {source}, {len(stamps):,} connected in {total_s:.2f} s, errors {errors}")
        time.sleep(1)
    for title, edges, table in (("10 % buckets", COARSE, per_run), ("around half full", FINE, per_run_fine)):
        print(f"\n{title}:\n")
        print("| group fill | connects/s (median of runs) | each run |")
        print("| --- | --- | --- |")
        for b, (lo_f, hi_f) in enumerate(itertools.pairwise(edges)):
            vals = [v for run in table if (v := run[b]) is not None]
            cells = ", ".join(f"{v:,.0f}" for v in vals)
            med = f"{statistics.median(vals):,.0f}" if vals else "-"
            print(f"| {lo_f:.0%}-{hi_f:.0%} | {med} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
