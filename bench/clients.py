"""Outside Kamailio: referee's RESP client (kemi.storage.resp) against redis-py, with and
without hiredis, on the Redis work of the processes that run outside Kamailio -- the log
writer's stream batches (`referee log run`), the AMI controller's job reads and record
updates (`referee asterisk run`), the CLI's record reads (`referee transfers`).

    .venv/bin/python bench/clients.py [--rounds 5] [--seconds 1.0] [--log-writer 2000]

Each client runs each operation back to back against one private redis-server for
`--seconds`, rounds interleaved; printed: client CPU (time.process_time, this process
only: Redis's own CPU is the same for every client) per operation, median of the rounds.
Whether redis-py is measured with hiredis depends on whether hiredis is installed: both
are measured when it is (the parser class is named: redis-py 8's `_RESP2Parser` or
`_HiredisParser`).  `--log-writer N` also times `referee log run --once`'s work
(kemi.storage.transfer_log.LogWriter into SQLite) over N finished transfers: CPU per row,
Redis reads, SQL and acknowledgements together.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kemi.cli.demo.redis_server import RedisServer  # noqa: E402
from kemi.storage.resp import RespClient  # noqa: E402

# A finished transfer as the stream carries it (~25 fields, kemi.storage.transfers).
RECORD = {
    "call_id": "a84b4c76e66710@pc33.atlanta.example.com", "refer_id": "2",
    "transferor": "sip:alice@atlanta.example.com", "transferee": "sip:bob@biloxi.example.com",
    "target": "sip:carol@chicago.example.com", "target_uri": "sip:carol@chicago.example.com",
    "rule": "office-default", "tenant": "default", "source": "192.0.2.10",
    "in_dialog": "1", "from_tag": "1928301774", "refer_sub": "true",
    "transferor_contact": "sip:alice@192.0.2.10:5060", "node": "127.0.0.1:5060",
    "state": "succeeded", "created": "1764950000.123", "updated": "1764950003.456",
    "deadline": "1764950180.000", "accepted": "1764950000.140", "code": "200",
    "sipfrag": "SIP/2.0 200 OK", "notifies": "2", "final": "1764950003.456",
    "transferor_answer": "200", "reason": "",
}
SCRIPT = ("local v = redis.call('HGET', KEYS[1], 'state') "
          "redis.call('HSET', KEYS[1], 'updated', ARGV[1]) return {1, v}")


def operations(call, pipeline) -> dict[str, Callable[[], object]]:
    """The work measured, in each client's own API (`call(*args)`, `pipeline(cmds)`)."""
    sha = call("SCRIPT", "LOAD", SCRIPT)
    sha = sha.decode() if isinstance(sha, bytes) else sha
    return {
        "PING (one round trip, nothing else)": lambda: call("PING"),
        "HGETALL of a record (25 fields)": lambda: call("HGETALL", "clients:rec"),
        "EVALSHA (an apply's shape)": lambda: call("EVALSHA", sha, 1, "clients:rec", "1.5"),
        "XRANGE COUNT 100 (a log writer batch)": lambda: call(
            "XRANGE", "clients:finished", "-", "+", "COUNT", 100),
        "pipeline of 6 commands": lambda: pipeline(
            [("HGET", "clients:rec", "state")] * 3 + [("EXISTS", "clients:rec")] * 3),
    }


def resp_client(url: str):
    c = RespClient(url, timeout_s=2.0)
    return c.call, c.pipeline


def redis_py(url: str, hiredis: bool):
    import redis
    from redis._parsers import _HiredisParser, _RESP2Parser

    kwargs = {"parser_class": _HiredisParser if hiredis else _RESP2Parser}
    pool = redis.ConnectionPool.from_url(url, socket_timeout=2.0, **kwargs)
    r = redis.Redis(connection_pool=pool)

    def pipeline(cmds):
        p = r.pipeline(transaction=False)
        for c in cmds:
            p.execute_command(*c)
        return p.execute()

    return r.execute_command, pipeline


def measure(op: Callable[[], object], seconds: float) -> float:
    """µs of this process's CPU per operation."""
    for _ in range(50):
        op()
    n, cpu0, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            op()
        n += 20
    return (time.process_time() - cpu0) / n * 1e6


def log_writer(url: str, n: int, tmp: Path) -> float:
    """µs of this process's CPU per transfer written by the log writer (SQLite)."""
    from kemi.core.state import Event
    from kemi.storage import policy_db
    from kemi.storage.transfer_log import LogWriter
    from kemi.storage.transfers import TransferStore

    store = TransferStore(RespClient(url, timeout_s=2.0), prefix="bench")
    for i in range(n):
        cid, at = f"log-{i}@bench", 1764950000.0 + i
        store.create(cid, "2", {"rule": "r", "tenant": "default"}, now=at, deadline=at + 60,
                     transferor="sip:alice@a.example", transferee="sip:bob@b.example",
                     target="sip:carol@c.example")
        store.apply(cid, "2", Event.REFER_ACCEPTED, at + 0.1)
        store.apply(cid, "2", Event.NOTIFY_SUCCESS, at + 1.0,
                    fields={"final_sipfrag": "SIP/2.0 200 OK"})
    conn = policy_db.connect(str(tmp / "log.db"), create=True)
    policy_db.migrate(conn)
    writer = LogWriter(store, conn, consumer="bench", block_ms=10)
    cpu0 = time.process_time()
    writer.run(threading.Event(), once=True)
    cpu = time.process_time() - cpu0
    conn.close()
    assert writer.written == n, writer.written
    return cpu / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--log-writer", type=int, default=0, metavar="N")
    args = ap.parse_args()
    try:
        import hiredis  # noqa: F401
        have_hiredis = True
    except ImportError:
        have_hiredis = False
    with tempfile.TemporaryDirectory(prefix="referee-clients-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            url = server.url
            setup = RespClient(url, timeout_s=2.0)
            setup.call("HSET", "clients:rec", *[x for kv in RECORD.items() for x in kv])
            for _ in range(100):
                setup.call("XADD", "clients:finished", "*",
                           *[x for kv in RECORD.items() for x in kv])
            clients = {"kemi.storage.resp": resp_client(url),
                       "redis-py (Python parser)": redis_py(url, hiredis=False)}
            if have_hiredis:
                clients["redis-py + hiredis"] = redis_py(url, hiredis=True)
            ops = {name: operations(*c) for name, c in clients.items()}
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, table in ops.items():
                    for what, op in table.items():
                        results.setdefault((what, name), []).append(
                            measure(op, args.seconds))
            per_row = log_writer(url, args.log_writer, Path(tmp)) if args.log_writer else 0
        finally:
            server.stop()
    names = list(clients)
    whats = list(next(iter(ops.values())))
    print(f"client CPU, µs per operation (median of {args.rounds} rounds of "
          f"{args.seconds:g} s){'' if have_hiredis else '; hiredis not installed'}")
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for what in whats:
        cells = [f"{statistics.median(results[(what, n)]):.1f}" for n in names]
        print(f"| {what} | " + " | ".join(cells) + " |")
    if per_row:
        print(f"log writer (kemi.storage.resp, SQLite): {per_row:.1f} µs CPU per transfer "
              f"written ({args.log_writer} transfers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
