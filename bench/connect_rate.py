"""Connect rate, side by side in one run: loopfan vs a naive asyncio client (vs tcpkali if on PATH).

    python3 bench/connect_rate.py [--big 200000] [--small 18000]

- small: N connections (one process's worth, under the 20,000 fd limit) against loopfan's built-in
  server, by (a) a naive asyncio client - create_connection(local_addr=(src, 0)) over 2 source
  addresses, the way most Python tools bind - and (b) loopfan run. Same server, same N: the ratio
  holds on a noisy machine where absolute rates do not.
- big: loopfan run -c BIG (sharded over processes) - the sustained ramp rate to 200,000.
- tcpkali: only when installed (never vendored or built here); it dies of EMFILE past ~18K.
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from loopfan.engine.serve import BuiltinServer
from loopfan.pools import Endpoint

LISTEN = Endpoint("127.101.0.1", 7400)


async def _asyncio_client(n: int, sources: list[str]) -> float:
    loop = asyncio.get_running_loop()
    transports = []
    t0 = time.perf_counter()
    for i in range(n):
        tr, _ = await loop.create_connection(
            asyncio.Protocol, LISTEN.address, LISTEN.port, local_addr=(sources[i % len(sources)], 0)
        )
        transports.append(tr)
    dt = time.perf_counter() - t0
    for tr in transports:
        tr.close()
    await asyncio.sleep(0.2)
    return n / dt


def asyncio_baseline(n: int) -> float:
    return asyncio.run(_asyncio_client(n, ["127.102.0.1", "127.102.0.2"]))


def loopfan_run(n: int, target: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        argv = [sys.executable, "-m", "loopfan", "run", "-c", str(n), "--hold", "0", "--quiet", "--json", out]
        if target:
            argv.append(target)
        subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=600)
        with open(out) as fh:
            return json.load(fh)  # type: ignore[no-any-return]


def run_tcpkali(n: int) -> str:
    """tcpkali against the same server when it is on PATH (never vendored or built here): its own
    summary line, since its rate output is not loopfan's format."""
    exe = shutil.which("tcpkali")
    if not exe:
        return "not installed: skipped"
    try:
        out = subprocess.run([exe, "-c", str(n), "--connect-rate", "100000", "-T", "5s", str(LISTEN)],
                             capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "connect" in ln.lower() or "error" in ln.lower()]
    return "; ".join(lines[-3:]) or f"exit {out.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=18_000)
    ap.add_argument("--big", type=int, default=200_000)
    args = ap.parse_args()
    rows = []
    with BuiltinServer.on((LISTEN,), capacity=args.small * 2, max_per_process=args.small + 100):
        rate_asyncio = asyncio_baseline(args.small)
        time.sleep(1)
        rep = loopfan_run(args.small, str(LISTEN))
        tcpkali = run_tcpkali(args.small)
    rate_loopfan_small = rep["connect_rate_per_s"]["mean"]  # type: ignore[index]
    rows.append(("naive asyncio, 1 process, create_connection(local_addr=)", args.small, f"{rate_asyncio:,.0f}"))
    rows.append(("loopfan run (same server)", args.small, f"{rate_loopfan_small:,.0f}"))
    rows.append(("tcpkali (same server)", args.small, tcpkali))
    big = loopfan_run(args.big, None)
    rows.append((
        f"loopfan run, built-in server, {big['client_processes']}+{big['server_processes']} processes",
        args.big,
        f"{big['connect_rate_per_s']['mean']:,.0f} mean, {big['connect_rate_per_s']['peak']:,.0f} peak second",  # type: ignore[index]
    ))
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {platform.platform()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| client | connections | connects/s |\n|---|---|---|")
    for name, n, rate in rows:
        print(f"| {name} | {n:,} | {rate} |")
    print(f"\nratio loopfan / asyncio at {args.small:,}: {rate_loopfan_small / rate_asyncio:.2f}x")


if __name__ == "__main__":
    main()
