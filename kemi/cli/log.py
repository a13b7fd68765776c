"""`referee log run`: the transfer log writer (kemi.storage.transfer_log) as a service --
Redis's 'finished' stream into the policy database's transfer_log table, until SIGTERM.

    referee log run [--once] [--batch N]

Exit codes: 0 stopped (or, with --once, nothing left to write), 1 the database cannot be
opened or has no transfer_log table (run `referee db init` to upgrade it).
"""

from __future__ import annotations

import logging

from kemi.cli import EXIT_OK, Failed, UsageError, stop_on_signals
from kemi.storage import policy_db as db
from kemi.storage.resp import RespClient
from kemi.storage.transfer_log import LogWriter
from kemi.storage.transfers import TransferStore

log = logging.getLogger("referee.log")


def register(subparsers) -> None:
    p = subparsers.add_parser("log", help="the transfer log in SQL")
    sub = p.add_subparsers(title="log commands", metavar="COMMAND")
    p.set_defaults(help_parser=p)
    run = sub.add_parser("run", help="write finished transfers from Redis to SQL until "
                                     "SIGTERM")
    run.add_argument("--once", action="store_true",
                     help="write what is waiting, then exit")
    run.add_argument("--batch", type=int, default=100, help="rows per transaction (100)")
    run.set_defaults(handler=cmd_run)


def cmd_run(ctx, args) -> int:
    if args.batch <= 0:
        raise UsageError("--batch must be a positive number")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        conn = db.connect(ctx.db)
        if "004" not in {m[:3] for m in db.applied(conn)}:
            raise Failed(f"{ctx.db} has no transfer_log table: run `referee db init` to "
                         "upgrade it")
    except db.DbError as exc:
        raise Failed(str(exc)) from exc
    r = ctx.settings.redis
    store = TransferStore(RespClient(r.url, timeout_s=5.0), prefix=r.prefix)
    writer = LogWriter(store, conn, batch=args.batch)
    stop = stop_on_signals(log)
    log.info("transfer log: %s -> %s", store.stream_key, conn.target.display)
    try:
        writer.run(stop, once=args.once)
    finally:
        conn.close()
    log.info("stopped: %d transfer(s) written", writer.written)
    return EXIT_OK
