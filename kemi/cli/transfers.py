"""`referee transfers` and `referee transfer show`: what Redis knows, for the operator.

    referee transfers [--limit N] [--json]          finished transfers, newest first (Redis,
                                                    then the SQL transfer log for older ones)
    referee transfers --since WHEN [--until WHEN] [--csv | --json]
                                                    from the SQL transfer log (billing, CDR)
    referee transfers --live [--limit N] [--json]   open ones, cluster-wide
    referee transfer show CALL-ID [CSEQ] [--json]   one record, its events and its ladder
    referee transfer end CALL-ID CSEQ [--reason T]  close one that is stuck

Exit codes: 0 done, 1 Redis unreadable, no such transfer or already final, 2 bad input
(a Call-ID with several transfers and no CSEQ names them).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import datetime

from kemi.cli import Failed, UsageError
from kemi.cli.ladder import Arrow, draw
from kemi.core.anchor import Progress, progress_key
from kemi.core.state import FINAL, Event
from kemi.storage import policy_db, streams, transfer_log
from kemi.storage.resp import RedisError, RespClient
from kemi.storage.transfers import SEP, TransferStore


def register(subparsers) -> None:
    p = subparsers.add_parser("transfers", help="list finished (or, with --live, open) "
                                                "transfers")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--live", action="store_true",
                   help="open transfers of the whole cluster, soonest deadline first")
    p.add_argument("--json", action="store_true", help="one JSON array of the records")
    p.add_argument("--since", metavar="WHEN",
                   help="finished at or after WHEN (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], "
                        "local time), from the SQL transfer log")
    p.add_argument("--until", metavar="WHEN", help="finished before WHEN (with --since)")
    p.add_argument("--csv", action="store_true",
                   help="with --since: CSV, one row per transfer (billing, CDR)")
    p.set_defaults(handler=cmd_list)
    p = subparsers.add_parser("transfer", help="one transfer")
    sub = p.add_subparsers(title="transfer commands", metavar="COMMAND")
    p.set_defaults(help_parser=p)
    show = sub.add_parser("show", help="a transfer's record, its events and its ladder")
    show.add_argument("call_id", help="Call-ID of the dialog the REFER came in")
    show.add_argument("refer_id", nargs="?",
                      help="the REFER's CSeq number (needed when the dialog had several)")
    show.add_argument("--json", action="store_true",
                      help="the record and its events as one JSON object")
    show.set_defaults(handler=cmd_show)
    end = sub.add_parser("end", help="close a transfer that is stuck (final NOTIFY to the "
                                     "transferor where referee is its notifier)")
    end.add_argument("call_id", help="Call-ID of the dialog the REFER came in")
    end.add_argument("refer_id", help="the REFER's CSeq number")
    end.add_argument("--reason", default="ended by the operator",
                     help="why, for the record (default: ended by the operator)")
    end.add_argument("--wait", type=float, default=5.0, metavar="S",
                     help="how long the node may take to NOTIFY the transferor (default 5)")
    end.set_defaults(handler=cmd_end)


def _store(ctx) -> TransferStore:
    r = ctx.settings.redis
    return TransferStore(RespClient(r.url, timeout_s=2.0), prefix=r.prefix)


def _when(ts: str | None) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts or "")))
    except ValueError:
        return "-"


def _age(record: dict[str, str], now: float) -> str:
    try:
        return f"{now - float(record.get('created_at') or ''):.0f}s"
    except ValueError:
        return "-"


def _when_arg(text: str, what: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]") \
            from None


def _from_sql(ctx, args) -> int:
    start = _when_arg(args.since, "--since")
    end = _when_arg(args.until, "--until") if args.until else None
    try:
        conn = policy_db.connect(ctx.db, readonly=True)
        try:
            rows = transfer_log.since(conn, start, end)
        finally:
            conn.close()
    except policy_db.DbError as exc:
        raise Failed(f"cannot read the transfer log: {exc}") from exc
    columns = [c for c in transfer_log.COLUMNS if c != "record"]
    if args.json:
        print(json.dumps([{c: r[c] for c in columns} for r in rows], indent=1))
        return 0
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(columns)
        for r in rows:
            out.writerow([_csv_value(c, r[c]) for c in columns])
        return 0
    for r in rows:
        print(f"{_when(str(r['final_at']))}  {r['outcome']:10}  {r['transferor']:24}  "
              f"{r['target']:24}  {r['call_id']} / {r['refer_id']}")
    return 0


def _csv_value(column: str, value) -> str:
    if column in ("created_at", "final_at"):
        return datetime.fromtimestamp(float(value)).isoformat(timespec="milliseconds")
    return str(value)


def _older_from_sql(ctx, rows: list[dict], limit: int) -> list[dict]:
    """Finished transfers Redis's stream has trimmed, from the SQL transfer log (none when
    the database has no log)."""
    try:
        conn = policy_db.connect(ctx.db, readonly=True)
        try:
            if "004_transfer_log" not in policy_db.applied(conn):
                return rows
            logged = transfer_log.newest(conn, limit)
        finally:
            conn.close()
    except policy_db.DbError as exc:
        print(f"referee: transfer log unreadable ({exc}): Redis's records only",
              file=sys.stderr)
        return rows
    seen = {(r.get("call_id"), r.get("refer_id")) for r in rows}
    for r in logged:
        if (r["call_id"], r["refer_id"]) not in seen and len(rows) < limit:
            rows.append(json.loads(r["record"]))
    return rows


def cmd_list(ctx, args) -> int:
    if args.limit <= 0:
        raise UsageError("--limit must be a positive number")
    if args.since:
        return _from_sql(ctx, args)
    if args.until or args.csv:
        raise UsageError("--until and --csv read the SQL transfer log: give --since")
    store = _store(ctx)
    try:
        rows = store.open_transfers(args.limit) if args.live else store.finished(args.limit)
    except RedisError as exc:
        raise Failed(f"cannot read transfers from Redis: {exc}") from exc
    if not args.live and len(rows) < args.limit:
        rows = _older_from_sql(ctx, rows, args.limit)
    if args.json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return 0
    if not rows:
        print("no open transfers" if args.live else "no finished transfers")
        return 0
    if args.live:
        now = time.time()
        print(f"{'age':>6}  {'state':14}  {'transferor -> transferee -> target':58}  "
              f"{'node':21}  anchored  call-id / refer-id")
        for row in rows:
            parties = (f"{row.get('transferor', '?')} -> {row.get('transferee', '?')} -> "
                       f"{row.get('target', '?')}")
            anchored = row.get("anchored", "")
            if anchored:
                anchored += f" ({row.get('anchor_mode', '?')})"
            print(f"{_age(row, now):>6}  {row.get('state', '?'):14}  {parties:58}  "
                  f"{row.get('node', '-'):21}  {anchored or '-':8}  "
                  f"{row.get('call_id', '?')} / {row.get('refer_id', '?')}")
        return 0
    print(f"{'finished':19}  {'state':10}  {'transferor':24}  {'target':24}  call-id / refer-id")
    for row in rows:
        print(
            f"{_when(row.get('final_at')):19}  {row.get('state', '?'):10}  "
            f"{row.get('transferor', '?'):24}  {row.get('target', '?'):24}  "
            f"{row.get('call_id', '?')} / {row.get('refer_id', '?')}"
        )
    return 0


def events(log: list[str]) -> list[dict]:
    """The record's event log ("ts|event|old|new|outcome|detail") as dicts."""
    out = []
    for entry in log:
        ts, event, old, new, outcome, detail = (entry.split("|", 5) + [""] * 6)[:6]
        try:
            at = float(ts)
        except ValueError:
            at = 0.0
        out.append({"at": at, "event": event, "old": old, "new": new, "outcome": outcome,
                    "detail": detail})
    return out


def format_record(record: dict[str, str], log: list[str]) -> str:
    """The record's fields, then its event log as a timeline."""
    lines = [f"transfer {record.get('call_id')} / {record.get('refer_id')}: {record.get('state')}"]
    for key in sorted(record):
        # "<call-id>\x1f<refer-id>" members (tie_field) read as the ladder names them.
        lines.append(f"  {key:16} {record[key].replace(SEP, ' / ')}")
    lines.append("events (as referee applied them):")
    start = None
    for e in events(log):
        start = e["at"] if start is None else start
        old, new, outcome = e["old"], e["new"], e["outcome"]
        arrow = f"{old} -> {new}" if outcome == "applied" and old != new else f"{old} ({outcome})"
        lines.append(f"  +{e['at'] - start:7.3f}s  {e['event']:24} {arrow:34} {e['detail']}")
    return "\n".join(lines)


# Who sent what, for each event referee records: the ladder of a transfer as the proxy in
# the middle saw it ("referee" is the proxy).  The sipfrag, code or who ended the call is
# in the event's detail.
_SENDS = {
    "refer": ("transferor", "referee", "REFER"),
    "refer-accepted": ("referee", "transferor", "{detail}"),
    "refer-accepted-nosub": ("referee", "transferor", "{detail} (no subscription)"),
    "refer-rejected": ("referee", "transferor", "{detail}"),
    "notify-trying": ("referee", "transferor", "NOTIFY {detail}"),
    "notify-ringing": ("referee", "transferor", "NOTIFY {detail}"),
    "notify-success": ("referee", "transferor", "NOTIFY {detail}"),
    "notify-failure": ("referee", "transferor", "NOTIFY {detail}"),
    "notify-failure-nonfinal": ("referee", "transferor", "NOTIFY {detail}"),
    "notify-481": ("transferor", "referee", "481 to NOTIFY"),
    "invite": ("transferee", "target", "INVITE"),
    "invite-2xx": ("target", "transferee", "{detail}"),
    "invite-failed": ("target", "transferee", "{detail}"),
    "bye-transferor": ("transferor", "referee", "BYE"),
    "bye-transferee": ("transferee", "referee", "BYE"),
    "expiry": ("referee", "transferor", "(expired: {detail})"),
    "operator-end": ("referee", "referee", "(closed: {detail})"),
}
COLUMNS = ["transferor", "referee", "transferee", "target"]


def ladder(record: dict[str, str], log: list[str]) -> str:
    """The transfer's SIP ladder, drawn from the events referee recorded (one arrow per
    event; one that changed nothing is marked with its outcome)."""
    arrows = []
    for e in events(log):
        src, dst, label = _SENDS.get(e["event"], ("referee", "referee", e["event"]))
        label = label.format(detail=e["detail"] or e["event"]).strip()
        if e["outcome"] != "applied":
            label += f" [{e['outcome']}]"
        arrows.append(Arrow(e["at"], src, dst, label))
    names = "  ".join(f"{c}={record.get(c, '-')}" for c in ("transferor", "transferee",
                                                              "target"))
    return names + "\n" + draw(arrows, COLUMNS, width=28)


def cmd_show(ctx, args) -> int:
    store = _store(ctx)
    try:
        refer_id = args.refer_id
        if refer_id is None:
            found = store.refer_ids(args.call_id)
            if not found:
                raise Failed(f"no transfer in dialog {args.call_id} in Redis (expired or "
                             "never seen)")
            if len(found) > 1:
                raise UsageError(f"dialog {args.call_id} has {len(found)} transfers "
                                 f"(REFER CSeq {', '.join(found)}): name one")
            refer_id = found[0]
        record = store.get(args.call_id, refer_id)
        log = store.log(args.call_id, refer_id) if record else []
    except RedisError as exc:
        raise Failed(f"cannot read the transfer from Redis: {exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not record:
        raise Failed(f"no transfer {args.call_id} / {refer_id} in Redis (expired or never "
                     "seen)")
    if args.json:
        print(json.dumps({"record": record, "events": events(log)}, indent=1,
                         sort_keys=True))
        return 0
    print(format_record(record, log))
    print("\nladder (what referee recorded):")
    print(ladder(record, log))
    return 0


END_CODE, END_REASON = 487, "Request Terminated"


def cmd_end(ctx, args) -> int:
    """An anchored transfer referee accepted (referee is the notifier): its node is asked,
    through its progress stream, to send the transferor a final NOTIFY 487 and record it.
    Any other: the record is closed (event operator-end, state expired); the transferee is
    the notifier there and referee cannot NOTIFY in its name."""
    store = _store(ctx)
    cid, rid = args.call_id, args.refer_id
    try:
        record = store.get(cid, rid)
        if not record:
            raise Failed(f"no transfer {cid} / {rid} in Redis (expired or never seen)")
        state = record.get("state", "")
        if state in FINAL:
            raise Failed(f"transfer {cid} / {rid} is already {state}: nothing to end")
        node = record.get("anchor_node", "")
        if (record.get("anchor_mode") == "accept" and record.get("refer_sub") != "false"
                and node):
            stream = progress_key(ctx.settings.redis.prefix, node)
            streams.publish_progress(store.client, stream, Progress(
                cid, rid, END_CODE, END_REASON, True, time.time(), args.reason))
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                now = store.get(cid, rid) or {}
                if now.get("state") in FINAL:
                    print(f"transfer {cid} / {rid} ended: node {node} sent the transferor "
                          f"NOTIFY {END_CODE} {END_REASON}; record {now['state']}")
                    return 0
                time.sleep(0.1)
            print(f"node {node} did not NOTIFY within {args.wait:g} s (is it running?): "
                  "closing the record only")
        res = store.apply(cid, rid, Event.OPERATOR_END, time.time(),
                          fields={"operator_end": args.reason}, detail=args.reason)
    except RedisError as exc:
        raise Failed(f"cannot end the transfer (Redis: {exc})") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not res.final:
        raise Failed(f"transfer {cid} / {rid} not closed: {res.outcome} in state {res.old}")
    why = ("no subscription" if record.get("refer_sub") == "false"
           else "the transferee is its notifier" if not node else "its node did not answer")
    print(f"transfer {cid} / {rid} closed: {res.old} -> {res.new} ({args.reason}); the "
          f"transferor was not notified ({why})")
    return 0
