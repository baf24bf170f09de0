"""Staggering the ramp: how many client workers connect at once, and releasing the next ones.

Rules of this file: shared by the CLI runner and the library API so both ramp the same way.
On loopback the handshake is CPU work in the connecting process; a hundred workers ramping together
on two cores mostly switch contexts and starve the acceptors (200,000 connections, 11 workers:
all at once 31.9K/s, p99.9 connect 60 ms; two at a time 43.0K/s, p99.9 1.1 ms). So by default one
worker per core connects at a time and the next starts as soon as one is through.
"""

from __future__ import annotations

import dataclasses
import os

from loopfan.engine import protocol as P
from loopfan.engine.fleet import Fleet, Worker

THROUGH = ("connected", "done", "dead", "error")


def ramp_concurrency(requested: int, workers: int) -> int:
    """Workers connecting at once: `requested`, or one per core (at least 2); never more than exist."""
    wanted = requested or max(2, os.cpu_count() or 1)
    return max(1, min(wanted, workers))


def client_config_for(base: P.ClientConfig, workers: int, concurrency: int, total_rate_per_s: float) -> P.ClientConfig:
    """The config each client worker gets: gated when staggered, and its share of the total rate."""
    config = base
    if concurrency < workers:
        config = dataclasses.replace(config, gated=True)
    if total_rate_per_s:
        # Only `concurrency` workers connect at any moment, so they share the rate among themselves.
        config = dataclasses.replace(config, connect_rate_per_s=total_rate_per_s / concurrency)
    return config


class Stagger:
    """Releases gated workers so that `concurrency` of them are connecting at any time."""

    def __init__(self, workers: list[Worker], concurrency: int) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.waiting = list(workers) if concurrency < len(workers) else []

    def release(self, fleet: Fleet) -> None:
        if not self.waiting:
            return
        busy = sum(1 for w in self.workers if w not in self.waiting and w.state not in THROUGH)
        free = max(0, self.concurrency - busy)
        starting, self.waiting = self.waiting[:free], self.waiting[free:]
        fleet.send(starting, P.GO)

    @property
    def done(self) -> bool:
        return all(w.state in THROUGH for w in self.workers)
