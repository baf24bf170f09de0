#!/bin/bash
# Kernel-side view of a traffic run's steady state: system calls, TCP segments and delayed ACKs
# per round trip, and where the CPU goes (kernel vs user), for any command - the figures behind
# "Echo at 10,000 connections: why C is the ceiling" in docs/benchmarks.md. Needs root, perf, nstat.
#
#   bench/kernel_probe.sh SECONDS_IN CMD...      e.g.
#   bench/kernel_probe.sh 4 setsid /tmp/c_echo 10000 12       (gcc -O2 -o /tmp/c_echo bench/c_echo.c)
#   bench/kernel_probe.sh 4 loopfan run -c 10000 --traffic echo --duration 12s --warmup 1s -q
#
# Starts CMD, waits SECONDS_IN for the steady state, samples 3 s system-wide, waits for CMD to end.
# Round trips in the sample = sys_enter_read / 2 (one read per round trip on each side).
set -u
in=$1; shift
out=$(mktemp)
"$@" >"$out" 2>&1 &
pid=$!
sleep "$in"
nstat -n >/dev/null
perf stat -a -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_read,syscalls:sys_enter_write \
    -- sleep 3 2>&1 | grep -E "sys_enter|context"
nstat | grep -E "TcpInSegs|TcpOutSegs|DelayedACKs"
perf record -a -o "$out.perf" -- sleep 3 2>/dev/null >/dev/null
perf report -i "$out.perf" --sort comm,dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -8
wait "$pid"
tail -3 "$out"
rm -f "$out" "$out.perf"
