#!/usr/bin/env python3
"""Where referee's REFER CPU goes inside Kamailio, per function of the REFER path.

    .venv/bin/python bench/profile_refer.py [--variant referee-native] [--rate 500]
        [--traffic refer|transfer]

Starts the variant's lab as bench/run.py does, but app_python3 loads bench/profile_kemi.py
(referee as shipped, with CPU-time counters around the REFER path's functions), sends
REFERs at a fixed rate and prints CPU µs per REFER for each function (nested functions
are indented and included in their caller's time) next to Kamailio's total CPU per REFER.
A sampling profiler is no help here: py-spy attributes time spent waiting for Redis and
outside Python unreliably in an embedded interpreter, and cProfile's per-call overhead
swamps functions this small.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

LOADER = Path(__file__).resolve().parent / "profile_kemi.py"


class ProfiledKamailio(run.BenchKamailio):
    out_dir = "/tmp"

    def command(self) -> list[str]:
        return [f'REFEREE_SCRIPT="{LOADER}"' if c.startswith("REFEREE_SCRIPT=") else c
                for c in super().command()]

    def env(self) -> dict[str, str]:
        return {**super().env(), "REFEREE_PROFILE_DIR": self.out_dir}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="referee-native",
                    choices=[n for n, v in run.REFER_VARIANTS.items() if v.referee])
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--mem", choices=("tlsf", "fm", "qm"), default="tlsf")
    ap.add_argument("--traffic", choices=("refer", "transfer"), default="refer",
                    help="REFERs alone, or complete transfers (REFER, 202, NOTIFY 100 and "
                         "200, their answers); figures are per REFER = per transfer")
    args = ap.parse_args()
    uas, uac = ("refer-uas", "refer-uac") if args.traffic == "refer" else (
        "transfer-uas", "transfer-uac")
    root = Path(tempfile.mkdtemp(prefix="referee-profile-"))
    ProfiledKamailio.out_dir = str(root)
    ProfiledKamailio.mem_manager = args.mem
    saved, run.BenchKamailio = run.BenchKamailio, ProfiledKamailio
    try:
        with run.Lab(run.REFER_VARIANTS[args.variant], root, 2, uas) as lab:
            run.fixed_rate(lab, uac, args.rate, 6)  # warm-up
            m = run.fixed_rate(lab, uac, args.rate, args.seconds)
            errors = lab.python_errors()
        totals: dict[str, list[float]] = {}
        refers = 0
        for f in root.glob("sections-*.txt"):
            for line in f.read_text().splitlines():
                label, calls, cpu, n = line.split("\t")
                t = totals.setdefault(label, [0, 0.0])
                t[0] += int(calls)
                t[1] += float(cpu)
                if label.strip() == "on_refer" and int(calls):
                    refers += int(n)
        print(f"{args.variant} at {args.rate} REFER/s: Kamailio {m['cpu_us_per_call']:.0f} µs CPU "
              f"per REFER in all (counters included); Python errors: {len(errors)}")
        print(f"the counters cover {refers} REFERs (warm-up included), as of each worker's "
              "last dump (every 500 REFERs)")
        print(f"{'function':40s} {'calls/REFER':>11s} {'µs/REFER':>9s} {'µs/call':>8s}")
        for label, (calls, cpu) in totals.items():
            if calls:
                print(f"{label:40s} {calls / refers:11.2f} {cpu / refers * 1e6:9.1f} "
                      f"{cpu / calls * 1e6:8.1f}")
    finally:
        run.BenchKamailio = saved
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
