"""`referee demo`: the transfer of the design card, played for real on loopback.

It starts its own redis-server and Kamailio (config-examples/kamailio/kamailio.cfg, routing
in KEMI Python with referee), registers McKenzie and Marsha, and lets Andrew call
McKenzie and blind-transfer her to Marsha (SIPp plays the three phones).  Then it prints
the SIP ladder as it happened, referee's stored record with the events it applied, and
stops everything it started.  It needs the source checkout's config-examples/.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kemi.cli import Failed
from kemi.cli.demo.kamailio_node import CONFIGS
from kemi.cli.demo.play import play
from kemi.cli.transfers import format_record


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="play a blind transfer through Kamailio + referee")
    p.add_argument("--target-answers", type=int, default=200, metavar="CODE",
                   help="Marsha's final answer: 200 (default), or a failure such as 486")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with all logs")
    p.set_defaults(handler=cmd_demo)


def _need(binary: str) -> None:
    if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
        raise Failed(f"'{binary}' is not installed (run the README's setup command first)")


def cmd_demo(ctx, args) -> int:
    for binary in ("kamailio", "redis-server", "sipp"):
        _need(binary)
    if not (CONFIGS / "kamailio.cfg").is_file():
        raise Failed(f"the demo needs the referee source checkout ({CONFIGS} is missing)")

    tmp = Path(tempfile.mkdtemp(prefix="referee-demo-"))
    try:
        result = play(tmp, target_final=args.target_answers, out=print)
    except RuntimeError as exc:
        raise Failed(f"demo failed: {exc} (logs in {tmp})") from exc
    finally:
        if not args.keep and "result" in locals():
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n=== The SIP ladder, as it happened ===\n")
    print(result.ladder)
    print("\n=== What referee stored (Redis) ===\n")
    print(format_record(result.record, result.log))
    if args.keep:
        print(f"\nlogs kept in {tmp}")
    return 0
