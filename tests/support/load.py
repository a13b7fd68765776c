"""Keep the machine's cores busy while a test runs, so Kamailio's SIP workers are
descheduled at random the way they are on a loaded server (the condition under which a
transfer's messages used to leave out of order).  The spinners are ours, ended by PID."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def busy_cpus(count: int | None = None) -> Iterator[int]:
    """One spinning process per core (or `count`), for the duration of the block."""
    n = count or os.cpu_count() or 2
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield n
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
