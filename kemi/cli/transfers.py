"""`referee transfers` and `referee transfer show`: what Redis knows, for the operator."""

from __future__ import annotations

import time

from kemi.cli import Failed, UsageError
from kemi.storage.resp import RedisError, RespClient
from kemi.storage.transfers import SEP, TransferStore


def register(subparsers) -> None:
    p = subparsers.add_parser("transfers", help="list finished transfers (newest first)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(handler=cmd_list)
    p = subparsers.add_parser("transfer", help="one transfer")
    sub = p.add_subparsers(title="transfer commands", metavar="COMMAND")
    p.set_defaults(help_parser=p)
    show = sub.add_parser("show", help="a transfer's record and the events referee saw")
    show.add_argument("call_id", help="Call-ID of the dialog the REFER came in")
    show.add_argument("refer_id", help="the REFER's CSeq number")
    show.set_defaults(handler=cmd_show)


def _store(ctx) -> TransferStore:
    r = ctx.settings.redis
    return TransferStore(RespClient(r.url, timeout_s=2.0), prefix=r.prefix)


def _when(ts: str | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts or "")))
    except ValueError:
        return "-"


def cmd_list(ctx, args) -> int:
    if args.limit <= 0:
        raise UsageError("--limit must be a positive number")
    try:
        rows = _store(ctx).finished(args.limit)
    except RedisError as exc:
        raise Failed(f"cannot read transfers from Redis: {exc}") from exc
    if not rows:
        print("no finished transfers")
        return 0
    print(f"{'finished':19}  {'state':10}  {'transferor':24}  {'target':24}  call-id / refer-id")
    for row in rows:
        print(
            f"{_when(row.get('final_at')):19}  {row.get('state', '?'):10}  "
            f"{row.get('transferor', '?'):24}  {row.get('target', '?'):24}  "
            f"{row.get('call_id', '?')} / {row.get('refer_id', '?')}"
        )
    return 0


def format_record(record: dict[str, str], log: list[str]) -> str:
    """The record's fields, then its event log as a timeline."""
    lines = [f"transfer {record.get('call_id')} / {record.get('refer_id')}: {record.get('state')}"]
    for key in sorted(record):
        # "<call-id>\x1f<refer-id>" members (tie_field) read as the ladder names them.
        lines.append(f"  {key:16} {record[key].replace(SEP, ' / ')}")
    lines.append("events (as referee applied them):")
    start = None
    for entry in log:
        ts, event, old, new, outcome, detail = (entry.split("|", 5) + [""] * 6)[:6]
        try:
            t = float(ts)
        except ValueError:
            t = 0.0
        start = t if start is None else start
        arrow = f"{old} -> {new}" if outcome == "applied" and old != new else f"{old} ({outcome})"
        lines.append(f"  +{t - start:7.3f}s  {event:24} {arrow:34} {detail}")
    return "\n".join(lines)


def cmd_show(ctx, args) -> int:
    store = _store(ctx)
    try:
        record = store.get(args.call_id, args.refer_id)
        log = store.log(args.call_id, args.refer_id) if record else []
    except RedisError as exc:
        raise Failed(f"cannot read the transfer from Redis: {exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not record:
        raise Failed(
            f"no transfer {args.call_id} / {args.refer_id} in Redis (expired or never seen)"
        )
    print(format_record(record, log))
    return 0
