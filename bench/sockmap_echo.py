"""Experiment: how much of echo's cost at 10,000 connections is the server's?

An echo server that is nothing but the kernel: each accepted socket goes into a BPF SOCKHASH whose
stream-verdict program redirects every incoming skb to the same socket's egress, so no server
process reads, writes or wakes up per message. Against it, the same ping-pong clients as
bench/echo.py: the C client (bench/c_echo.c with C_ECHO_NO_SERVER=1) and loopfan's echo client;
beside them C on both ends, in the same rounds.

    python3 bench/sockmap_echo.py [-c 10000] [--duration 5] [--repeat 3]

Needs root (BPF). Not a test and not a feature: the built-in server stays in user space (it counts
what it serves and speaks HTTP and WebSocket too); this measures where the time goes.
Results: docs/benchmarks.md (Traffic).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from _runs import loopfan_run, summary, timed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from loopfan.isolation import bpf  # the assembler, from this checkout

BPF_MAP_UPDATE_ELEM, BPF_PROG_ATTACH = 2, 8
BPF_MAP_TYPE_SOCKHASH, BPF_PROG_TYPE_SK_SKB, BPF_SK_SKB_VERDICT = 18, 14, 38
HELPER_SK_REDIRECT_HASH = 72
# struct __sk_buff offsets (include/uapi/linux/bpf.h): remote_ip4, local_ip4 (network order),
# remote_port (network order, in the upper 16 bits), local_port (host order).
KEY_FIELDS = (92, 96, 132, 136)
PORT = 7321


def verdict_program(map_fd: int) -> bytes:
    """key = the skb's 4-tuple as the context holds it; return bpf_sk_redirect_hash(skb, map, &key, 0)
    (flags 0: out of the socket found, i.e. back to the sender)."""
    items: list[bpf.Item] = [bpf.mov64_reg(bpf.R6, bpf.R1)]
    for i, off in enumerate(KEY_FIELDS):
        items += [bpf.load(4, bpf.R2, bpf.R6, off), bpf.store_reg(4, bpf.R10, -16 + 4 * i, bpf.R2)]
    items += [bpf.mov64_reg(bpf.R1, bpf.R6), bpf.ld_map_fd(bpf.R2, map_fd), bpf.mov64_reg(bpf.R3, bpf.R10),
              bpf.add64_imm(bpf.R3, -16), bpf.mov64_imm(bpf.R4, 0), bpf.call(HELPER_SK_REDIRECT_HASH), bpf.exit_()]
    return bpf.assemble(items)


def key_of(sock: socket.socket) -> bytes:
    (rip, rport), (lip, lport) = sock.getpeername(), sock.getsockname()
    return (socket.inet_aton(rip) + socket.inet_aton(lip) + b"\0\0" + struct.pack("!H", rport)
            + struct.pack("<I", lport))


def serve(listeners: int, seconds: float) -> None:
    """The in-kernel echo on 127.97.i.1:7321, for `seconds`."""
    attr = struct.pack("<IIIIIII16s", BPF_MAP_TYPE_SOCKHASH, 16, 4, 1 << 20, 0, 0, 0, b"lf_sockmap_echo")
    map_fd = bpf.bpf(bpf.BPF_MAP_CREATE, attr.ljust(72, b"\0"), "creating the SOCKHASH")
    prog_fd = bpf.load_program(verdict_program(map_fd), prog_type=BPF_PROG_TYPE_SK_SKB,
                               expected_attach_type=BPF_SK_SKB_VERDICT, name="lf_sockmap_echo")
    bpf.bpf(BPF_PROG_ATTACH, struct.pack("<IIII", map_fd, prog_fd, BPF_SK_SKB_VERDICT, 0).ljust(32, b"\0"),
            "attaching the verdict program")
    ep = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    for i in range(listeners):
        lsock = socket.create_server((f"127.97.{i}.1", PORT), backlog=65535, reuse_port=False)
        lsock.setblocking(False)
        by_fd[lsock.fileno()] = lsock
        ep.register(lsock.fileno(), select.EPOLLIN)
    lfds = set(by_fd)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ in ep.poll(0.2):
            if fd not in lfds:  # EOF from the client: close our end
                ep.unregister(fd)
                by_fd.pop(fd).close()
                continue
            while True:
                try:
                    conn, _ = by_fd[fd].accept()
                except BlockingIOError:
                    break
                key = ctypes.create_string_buffer(key_of(conn), 16)
                value = ctypes.create_string_buffer(struct.pack("<I", conn.fileno()), 4)
                bpf.bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key),
                                                         ctypes.addressof(value), 0), "adding a socket")
                # What came before the socket joined the map waits in its queue until more data
                # arrives; with one message in flight none will, so echo it from here.
                conn.setblocking(False)
                try:
                    early = conn.recv(65536)
                    if early:
                        conn.send(early)
                except BlockingIOError:
                    pass
                by_fd[conn.fileno()] = conn
                ep.register(conn.fileno(), select.EPOLLRDHUP)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the server
    ap.add_argument("--serve-for", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.serve_for)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    results: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "c_echo")
        subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(here, "c_echo.c")], check=True)
        n, secs = str(args.c), str(args.duration)
        for rnd in range(args.repeat):
            out = timed(["setsid", exe, n, secs], timeout=args.duration + 60).stdout.split()
            if len(out) == 2:
                results["C client, C server"].append(float(out[1]))
            server = subprocess.Popen([sys.executable, __file__, "--serve", "2", "--serve-for",
                                       str(3 * args.duration + 60)], stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None and server.stdout.readline().strip() == "ready"
                env = dict(os.environ, C_ECHO_NO_SERVER="1")
                out = timed(["setsid", exe, n, secs, "2"], env=env, timeout=args.duration + 60).stdout.split()
                if len(out) == 2:
                    results["C client (2 processes), in-kernel echo"].append(float(out[1]))
                rep, _ = loopfan_run(["-c", n, f"127.97.0.1:{PORT}", f"127.97.1.1:{PORT}", "--traffic", "echo",
                                      "--duration", f"{args.duration}s", "--warmup", "1s"])
                results["loopfan client, in-kernel echo"].append(rep["traffic"]["messages_per_s"])
            finally:
                server.kill()
                server.wait()
            print(f"[{rnd + 1}] " + "  ".join(f"{k}: {v[-1]:,.0f}" for k, v in results.items() if v), flush=True)
    for label, values in results.items():
        print(f"-c {n} {label}: round trips/s {summary(values)}")


if __name__ == "__main__":
    main()
