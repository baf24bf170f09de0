"""The tag watchdog's process: what a SIGKILLed loopfan cannot do itself (see tagger.Watchdog).

Rules of this file: it runs as its own small process (`python -I -S`, started by Watchdog.start with
loopfan's package directory appended to sys.path) and imports only the standard library, loopfan's
light package __init__ and cgroup.py, so it starts in a fraction of a second and ends the tag
exactly as loopfan does - one implementation of "kill the subtree, remove it deepest first"
(Cgroup.kill_subtree / remove_subtree), shared with tagger and remove_stale.
argv: pipe read fd, cgroup directory, grace seconds. The BPF link fds are inherited and simply held
open: while the watchdog lives, the programs stay attached and the group stays tagged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loopfan.isolation.cgroup import Cgroup


def main(argv: Sequence[str]) -> int:
    # SIGTERM too: a watchdog of a tag nested in another tag is in the outer tag's cgroup, and must
    # not die of the outer watchdog's SIGTERM before it has done its own work.
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    fd, group, grace = int(argv[0]), Cgroup(Path(argv[1])), float(argv[2])
    # Ready: loopfan waits for this before the tag is used (a watchdog that failed to start would
    # otherwise leave the SIGKILL guarantee gone without a word), then closes its end. If loopfan
    # died meanwhile, the write fails (EPIPE) and the tag is ours to end: not a reason to die.
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), b"ready\n")
    said = b""
    while chunk := os.read(fd, 64):  # EOF: loopfan is gone (its write end closed with it)
        said += chunk
    if b"done" in said:
        return 0  # loopfan ended the tag itself
    end_tag(group, grace)
    return 0


def end_tag(group: Cgroup, grace_s: float) -> None:
    """SIGTERM every process of the tag (nested tags' too), SIGKILL what is left after the grace,
    then remove the cgroups, deepest first."""
    for pid in group.subtree_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group.subtree_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    if group.subtree_pids():
        group.kill_subtree(timeout_s=5.0)
    group.remove_subtree()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
