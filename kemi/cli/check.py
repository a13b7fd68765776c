"""`referee check`: can this node's referee do its job -- Redis reachable, the primary,
keeping what it is told; the journal empty; the policy database readable -- said line
by line.

`--cfg FILE` checks a Kamailio cfg instead (kemi.cli.cfg_check).

Exit codes: 0 all fine (warnings may be printed), 1 something referee needs is not
there (Redis unreachable or a replica, policy database unreadable).

The circuit breaker lives in each Kamailio process's memory; a process whose breaker
opens writes a file in the journal directory and removes it when a Redis call succeeds
again, so the check lists them (a warning: the process retries on its own).
"""

from __future__ import annotations

import hashlib
import time

from kemi.cli import EXIT_FAILED, EXIT_OK, cfg_check
from kemi.storage import dialogs as _dialogs  # noqa: F401 - its scripts join SCRIPTS
from kemi.storage import persistence
from kemi.storage import policy_db as db
from kemi.storage import transfers as _transfers  # noqa: F401 - its scripts join SCRIPTS
from kemi.storage.journal import Journal
from kemi.storage.packed import runner_text
from kemi.storage.resp import RedisError, RespClient
from kemi.storage.scripts import SCRIPTS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="Redis reachable, primary and persistent; journal; policy database "
                      "(with --cfg: a Kamailio cfg's htables and timers instead)")
    p.add_argument("--cfg", metavar="FILE",
                   help="check only this Kamailio cfg: the htables and rtimers referee "
                        "needs, read as kamailio's preprocessor reads it")
    p.add_argument("-A", dest="defines", action="append", metavar="NAME[=VALUE]",
                   help="with --cfg: a define, as given to kamailio -A")
    p.set_defaults(handler=run)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _role(reply) -> str:
    """'primary', or 'replica of host:port', from ROLE."""
    kind = _text(reply[0]) if reply else "?"
    if kind == "master":
        return "primary"
    if kind == "slave" and len(reply) > 2:
        return f"replica of {_text(reply[1])}:{_text(reply[2])}"
    return kind


def _redis(client: RespClient) -> bool:
    ok = True
    if client.cluster:
        infos = {addr: _text(v) for addr, v in
                 client.on_each_master("INFO", "persistence").items()}
        roles = {addr: "primary" for addr in infos}  # on_each_master asks primaries
    else:
        infos = {client.address: _text(client.call("INFO", "persistence"))}
        roles = {client.address: _role(client.call("ROLE"))}
    for addr, info in infos.items():
        print(f"redis {addr}: reachable, {roles[addr]}, appendonly "
              f"{'on' if persistence.aof_enabled(info) else 'off'}")
        if roles[addr] != "primary":
            print(f"redis {addr}: NOT WRITABLE: referee writes every event; name the "
                  "primary in [redis] url")
            ok = False
        warning = persistence.persistence_warning(addr, info)
        if warning:
            print(f"warning: {warning}")
    if not client.cluster:
        shas = [s.sha for s in SCRIPTS]
        cached = sum(int(x) for x in client.call("SCRIPT", "EXISTS", *shas))
        print(f"redis {client.address}: {cached} of {len(shas)} referee scripts cached "
              "(the rest are sent by their first use)")
        runner = hashlib.sha1(runner_text().encode()).hexdigest()
        loaded = client.call("SCRIPT", "EXISTS", runner)[0]
        said = ("cached: Kamailio reaches Redis through ndb_redis" if loaded else
                "not cached: sent by Kamailio's first call through ndb_redis "
                "(REFEREE_REDIS defined), else the scripts above are used")
        print(f"redis {client.address}: ndb_redis runner {runner[:12]} {said}")
    return ok


def _journal(directory: str) -> None:
    try:
        backlog = Journal(directory).backlog()
    except OSError as exc:
        print(f"warning: journal {directory} unreadable ({exc}): events Redis could not "
              "take cannot be seen here")
        return
    waiting = sum(backlog.values())
    if not waiting:
        print(f"journal {directory}: empty")
        return
    files = ", ".join(f"{name}: {n}" for name, n in backlog.items())
    print(f"warning: journal {directory}: {waiting} event(s) waiting for Redis ({files}); "
          "the sweep replays them once Redis answers")


def _breakers(directory: str) -> None:
    try:
        found = Journal(directory).breakers()
    except OSError as exc:
        print(f"warning: journal {directory} unreadable ({exc}): breaker state unknown")
        return
    live = [b for b in found if b["alive"]]
    if not live:
        print("breakers: closed in every Kamailio process"
              + (f" ({len(found)} stale file(s) of processes gone)" if found else ""))
        return
    for b in live:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["since"]))
        print(f"warning: Redis circuit breaker OPEN in Kamailio process {b['pid']} since "
              f"{since} ({b['address']}): its transfers are refused 503 or relayed "
              "unrecorded until a trial call to Redis succeeds")


def run(ctx, args) -> int:
    if getattr(args, "cfg", None):
        return cfg_check.run(args.cfg, args.defines)
    ok = True
    r = ctx.settings.redis
    client = RespClient(r.url, timeout_s=max(r.timeout_ms / 1000.0, 1.0))
    try:
        ok = _redis(client)
    except RedisError as exc:
        print(f"redis {r.url}: UNREACHABLE ({exc})")
        ok = False
    finally:
        client.close()
    _journal(ctx.settings.kamailio.journal_dir)
    _breakers(ctx.settings.kamailio.journal_dir)
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
