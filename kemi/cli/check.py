"""`referee check`: can this node's referee do its job -- Redis reachable and keeping
what it is told, the policy database readable -- said line by line.

Exit codes: 0 all fine (warnings may be printed), 1 something referee needs is not
there (Redis unreachable, policy database unreadable).
"""

from __future__ import annotations

from kemi.cli import EXIT_FAILED, EXIT_OK
from kemi.storage import persistence
from kemi.storage import policy_db as db
from kemi.storage.resp import RedisError, RespClient


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="Redis reachable and persistent, policy database readable")
    p.set_defaults(handler=run)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def run(ctx, args) -> int:
    ok = True
    r = ctx.settings.redis
    client = RespClient(r.url, timeout_s=max(r.timeout_ms / 1000.0, 1.0))
    try:
        if client.cluster:
            infos = {addr: _text(v) for addr, v in
                     client.on_each_master("INFO", "persistence").items()}
        else:
            infos = {client.address: _text(client.call("INFO", "persistence"))}
        for addr, info in infos.items():
            print(f"redis {addr}: reachable, appendonly "
                  f"{'on' if persistence.aof_enabled(info) else 'off'}")
            warning = persistence.persistence_warning(addr, info)
            if warning:
                print(f"warning: {warning}")
    except RedisError as exc:
        print(f"redis {r.url}: UNREACHABLE ({exc})")
        ok = False
    finally:
        client.close()
    try:
        conn = db.connect(ctx.db, readonly=True)
        try:
            policy = db.load_policy(conn)
            print(f"policy {ctx.db}: readable, migrations {', '.join(db.applied(conn))}, "
                  f"policy version {policy.version}, {len(policy.errors)} row error(s)")
        finally:
            conn.close()
    except db.DbError as exc:
        print(f"policy {ctx.db}: UNREADABLE ({exc})")
        ok = False
    return EXIT_OK if ok else EXIT_FAILED
