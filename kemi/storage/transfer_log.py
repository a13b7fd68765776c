"""The transfer log in SQL (migration 004, table transfer_log): one row per finished
transfer, for audit and billing, in the policy database (SQLite or PostgreSQL).

Written from Redis's 'finished' stream by `referee log run` (LogWriter below), never on
the SIP path: a consumer group ("log-writer") reads the stream, a batch is upserted in
one transaction, and only then acknowledged -- at least once, and idempotent on
(call_id, refer_id), so a writer stopped between its commit and its XACK writes the same
rows again, never a second copy.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterable

from kemi.storage import streams
from kemi.storage.policy_db import Connection, DbError
from kemi.storage.resp import RedisError
from kemi.storage.transfers import TransferStore

log = logging.getLogger("referee.log")

GROUP = "log-writer"
COLUMNS = ("call_id", "refer_id", "transferor", "transferee", "target", "tenant", "rule",
           "outcome", "final_sipfrag", "refer_reply", "invite_reply", "anchored",
           "ami_result", "agi_result", "created_at", "final_at", "stream_id", "record")
_TEXT = {"transferor", "transferee", "target", "tenant", "rule", "final_sipfrag",
         "refer_reply", "invite_reply", "anchored", "ami_result", "agi_result"}


def _seconds(value: str | None, default: float) -> float:
    try:
        return float(value) if value else default
    except ValueError:
        return default


def row(record: dict[str, str], stream_id: str = "") -> dict[str, object]:
    """The row of one finished transfer record (as the stream carries it)."""
    created = _seconds(record.get("created_at"), 0.0)
    out: dict[str, object] = {c: record.get(c, "") for c in _TEXT}
    out.update(call_id=record["call_id"], refer_id=record["refer_id"],
               outcome=record.get("state", ""), created_at=created,
               final_at=_seconds(record.get("final_at"), created),
               stream_id=stream_id or record.get("stream_id", ""),
               record=json.dumps(record, sort_keys=True))
    return out


def write(conn: Connection, rows: Iterable[dict[str, object]]) -> int:
    """Upsert rows in one transaction; the count written."""
    cols = ", ".join(COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    update = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS
                       if c not in ("call_id", "refer_id"))
    sql = (f"INSERT INTO transfer_log ({cols}) VALUES ({marks}) "
           f"ON CONFLICT (call_id, refer_id) DO UPDATE SET {update}")
    n = 0
    with conn.transaction():
        for r in rows:
            conn.execute(sql, [r[c] for c in COLUMNS])
            n += 1
    return n


def since(conn: Connection, start: float, end: float | None = None) -> list[dict]:
    """Rows finished in [start, end), oldest first."""
    if end is None:
        return conn.rows("SELECT * FROM transfer_log WHERE final_at >= ? "
                         "ORDER BY final_at, call_id, refer_id", [start])
    return conn.rows("SELECT * FROM transfer_log WHERE final_at >= ? AND final_at < ? "
                     "ORDER BY final_at, call_id, refer_id", [start, end])


def newest(conn: Connection, limit: int) -> list[dict]:
    return conn.rows("SELECT * FROM transfer_log ORDER BY final_at DESC LIMIT ?", [limit])


class LogWriter:
    """Redis 'finished' stream -> transfer_log, batch by batch (see the module text)."""

    def __init__(self, store: TransferStore, conn: Connection, *, consumer: str = "",
                 batch: int = 100, block_ms: int = 1000):
        self.store, self.conn = store, conn
        self.consumer = consumer or socket.gethostname()
        self.batch, self.block_ms = batch, block_ms
        self.written = 0
        self._ready = False
        self._pending = True  # our own unacknowledged entries first (a restart)

    def step(self) -> int:
        """One batch: read, write, acknowledge.  The rows written (0: nothing waiting)."""
        key, client = self.store.stream_key, self.store.client
        if not self._ready:
            streams.ensure_group(client, key, GROUP)
            self._ready = True
        start = "0" if self._pending else ">"
        try:
            entries = streams.read_group(client, key, GROUP, self.consumer, start,
                                         self.batch,
                                         block_ms=None if self._pending else self.block_ms)
        except RedisError as exc:
            if "NOGROUP" in str(exc):  # the stream expired or Redis restarted empty
                self._ready = False
            raise
        if self._pending and not entries:
            self._pending = False  # our backlog is done: new entries from now on
            return self.step()
        rows = [row(fields, eid) for eid, fields in entries if fields and "call_id" in fields]
        if rows:
            write(self.conn, rows)
        streams.ack(client, key, GROUP, *(eid for eid, _fields in entries))  # one trip
        self.written += len(rows)
        return len(rows)

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Until `stop` (or, with once, until nothing is waiting); Redis or the database
        away: said once, retried every second, nothing acknowledged that is not written."""
        trouble = ""
        while not stop.is_set():
            try:
                n = self.step()
                if trouble:
                    log.info("writing transfers again")
                    trouble = ""
                if once and n == 0 and not self._pending:
                    return
            except (RedisError, DbError) as exc:
                if str(exc) != trouble:
                    log.error("transfer log: %s; retrying", exc)
                    trouble = str(exc)
                self._pending = True  # re-read what was delivered but not acknowledged
                stop.wait(1.0)
