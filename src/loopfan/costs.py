"""Measured constants the planner uses. Each says where and how it was measured.

Rules of this file: numbers only, each with its unit in its name and its provenance in a comment.
Re-measure with the benchmarks in bench/ when the engine changes; docs/benchmarks.md has the runs.
"""

from __future__ import annotations

# Keep each 4-tuple group (source address x destination endpoint) at most this full.
# Linux connect() walks the ephemeral range in steps of two, even ports first, odd ones only when
# no even port is free (net/ipv4/inet_hashtables.c, __inet_hash_connect). bench/fill_ratio.py
# measured one group on the 2-core dev machine (2026-11-25, 5 runs, docs/benchmarks.md "Fill
# ratio"): ~37-40K connects/s flat up to 49 % full, half that at 49-50 %, then ~1.8K/s (20x
# slower) once the even ports are gone. 0.45 keeps every group five points clear of that cliff,
# with room for other sockets in the same group; source addresses cost nothing on Linux.
DEFAULT_FILL_RATIO = 0.45

# Kernel memory per established loopback pair (both sockets on this host): TCP sock 2,368 B plus
# inode, dentry, file and epoll entries for each socket. Slab growth measured by `loopfan run`
# (report memory_bytes.kernel) on the 2-core dev machine, 2026-11-25: 1,000,000 pairs -> 10.2 GB.
KERNEL_BYTES_PER_PAIR = 10_200

# User-space memory per held connection in a loopfan worker (the fd in a set, counters): unique
# set size of the workers less their idle size, over the connections: ~60-85 B measured at 50K-1M
# connections (docs/benchmarks.md); rounded up.
USER_BYTES_PER_CONNECTION = 100

# Unique memory of one idle worker process, forked from the loopfan parent with gc.freeze() so the
# inherited interpreter stays shared copy-on-write: 2.6 MB measured (4 workers holding 250 each).
USER_BYTES_PER_PROCESS = 2_700_000

# File descriptors a worker keeps for itself beyond its connections (epoll, pipes, listeners,
# stdio, the interpreter's own). Keeps every worker safely under its open-file limit.
FD_HEADROOM_PER_PROCESS = 500

# Never plan more than this share of MemAvailable: the kernel needs room for page cache and slack.
MEMORY_SAFETY_RATIO = 0.9

# The built-in server's default listen addresses and port: one address per server process, from a
# block of its own so that `ip.addr==127.100.0.0/16` in a capture shows the server side at a glance.
DEFAULT_LISTEN_POOL_TEXT = "127.100.0.1-127.100.255.254"
DEFAULT_LISTEN_PORT = 7070
