"""Shared by the traffic benchmarks: run a command or a `loopfan run` and take its CPU time, and
summarise repeated runs. Not a test: every figure depends on the machine.

CPU time comes from the kernel's accounting of the finished child and everything it waited for
(getrusage(RUSAGE_CHILDREN) before and after), so `loopfan run` counts its workers, its parent and
- when it starts the built-in server - the server too. It is steadier than throughput on a noisy
VM: CPU per message moves little when the host steals time, messages per second moves a lot.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Timed:
    stdout: str
    user_s: float
    sys_s: float


def timed(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Timed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Timed(r.stdout + r.stderr, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


# This checkout's source tree: what "loopfan" in a benchmark's output means.
CHECKOUT_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


_WARNED: set[str] = set()  # trees already said to lack the C module


def run_env(src: str | None, environ: dict[str, str]) -> dict[str, str]:
    """The environment of a `loopfan run`: PYTHONPATH is `src` when given (the tree to compare
    with), else the one the caller set, else this checkout's src/. Without that last default a
    `python -m loopfan` child imports whatever loopfan is installed - an editable install of
    another clone measured the other clone's code under this checkout's name."""
    env = dict(environ)
    env["PYTHONPATH"] = src or environ.get("PYTHONPATH") or CHECKOUT_SRC
    return env


class NoReport(RuntimeError):
    """A `loopfan run` that wrote no report (it refused its arguments, or died): its last line."""


def loopfan_run(args: list[str], src: str | None = None) -> tuple[dict[str, Any], Timed]:
    """`python -m loopfan run ARGS -q --json ...` from this checkout (or the PYTHONPATH the caller
    set), or from the source tree `src` (another checkout's src/ folder, for side-by-side runs of
    two versions)."""
    env = run_env(src, dict(os.environ))
    tree = env["PYTHONPATH"].split(os.pathsep)[0]
    if tree not in _WARNED and not glob.glob(os.path.join(tree, "loopfan", "engine", "_quick*.so")):
        _WARNED.add(tree)  # (the report does not say which loops ran: say it here, once per tree)
        print(f"note: {tree} has no built C module (python3 setup.py build_ext --inplace): "
              "its runs measure the Python loops", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        t = timed([sys.executable, "-m", "loopfan", "run", *args, "-q", "--json", out], env=env)
        if not os.path.exists(out):
            raise NoReport((t.stdout.strip().splitlines() or ["no output"])[-1])
        with open(out) as fh:
            return json.load(fh), t


def us_per(t: Timed, count: int) -> str:
    """CPU microseconds per message, user + system."""
    if not count:
        return "-"
    return f"{(t.user_s + t.sys_s) / count * 1e6:.1f} us ({t.user_s / count * 1e6:.1f} user)"


def cpu_us(t: Timed, count: int) -> float | None:
    """us_per's figure as a number (user + system), for medians and ratios; None with no messages."""
    return (t.user_s + t.sys_s) / count * 1e6 if count else None


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    runs = ", ".join(f"{v / 1000:.1f}K" for v in values)
    return f"median {statistics.median(values):,.0f} ({runs})"


@contextmanager
def private_nginx(conf: str, address: str, port: int, files: dict[str, bytes] | None = None) -> Iterator[str]:
    """nginx on a config of its own (`conf` with {d} for its directory, a temporary one), once it
    answers on address:port; stopped by pid after. Yields the directory. `files` (name -> bytes)
    are written into the directory before nginx starts, e.g. a certificate the config names as
    {d}/server.pem: they go when nginx does."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory() as d:
        for name, data in (files or {}).items():
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)
        with open(os.path.join(d, "nginx.conf"), "w") as fh:
            fh.write(conf.format(d=d))
        proc = subprocess.Popen([nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e", os.path.join(d, "e.log")])
        try:
            for _ in range(100):
                try:
                    socket.create_connection((address, port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield d
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)
