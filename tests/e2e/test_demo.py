"""The README's first command: `referee demo` plays the transfer and shows what happened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REFEREE = str(Path(sys.prefix) / "bin" / "referee")


def test_demo_prints_the_ladder_and_a_succeeded_record():
    out = subprocess.run([REFEREE, "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    ladder, _, stored = out.stdout.partition("=== What referee stored (Redis) ===")
    assert "REFER -> sip:marsha@" in ladder
    assert "NOTIFY [180 Ringing]" in ladder and "NOTIFY [200 OK] terminated" in ladder
    assert ": succeeded" in stored and "notify-success" in stored
    assert "stopped Kamailio and redis-server" in out.stdout


def test_demo_with_a_busy_target_records_the_failure():
    out = subprocess.run([REFEREE, "demo", "--target-answers", "486"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "NOTIFY [486 Busy Here] terminated" in out.stdout
    assert ": failed" in out.stdout
