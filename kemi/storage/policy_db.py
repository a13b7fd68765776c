"""The policy database: open it (SQLite file or PostgreSQL DSN), migrate it, read it.

One small wrapper instead of an ORM: the CLI, the cache and the tests need a handful of
statements, written once with '?' placeholders and translated for psycopg.  SQLite is the
default (a path, or Kamailio's 'sqlite:///abs/path' form); 'postgresql://...' needs the
optional extra 'postgres' (psycopg 3).
"""

from __future__ import annotations

import os
import re
import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from kemi.core.policy.model import Policy

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_MIGRATION_RE = re.compile(r"(\d{3,})_[a-z0-9_]+\.sql")
_TENANT_COLUMNS = ("id", "name", "priority", "match_source", "match_domain", "match_user",
                   "home_cc", "allow_pstn", "allow_out_of_dialog", "allow_replaces",
                   "max_transfers_per_call", "refers_per_minute", "subscription_expiry_s",
                   "transferor_bye_wait_s", "caller_id")
_RULE_COLUMNS = ("id", "tenant", "name", "priority", "action", "target_kind", "target_value",
                 "reply_code", "reason", "enabled")
# Added by 002_transfer_plan: read when present, so a worker running this code against a
# database not yet upgraded keeps working (every plan then takes the defaults).
_TENANT_COLUMNS_002 = ("replaces_scope",)
# Added by 003_dialled_numbers (read when present, as 002's).
_TENANT_COLUMNS_003 = ("dial_prefixes", "unreadable_numbers")
_RULE_COLUMNS_002 = ("announcement", "caller_id", "dial_timeout_s", "on_failure",
                     "release_after_s")
_CLASS_COLUMNS = ("name", "e164_prefix", "note")


class DbError(Exception):
    """The database cannot be opened, migrated or read; the message names it."""


@dataclass(frozen=True)
class Target:
    dialect: str
    location: str  # a file path or a DSN
    display: str  # for messages: the DSN without its password

    @classmethod
    def parse(cls, db: str) -> Target:
        if db.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(db)
            shown = db
            if parts.password is not None:
                netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
                shown = urlunsplit(parts._replace(netloc=netloc))
            return cls(POSTGRESQL, db, shown)
        path = db[len("sqlite://"):] if db.startswith("sqlite://") else db
        if not path:
            raise DbError("empty SQLite path")
        return cls(SQLITE, path, path)


class Connection:
    """A DB-API connection in autocommit mode, plus its dialect; '?' placeholders."""

    def __init__(self, raw: Any, target: Target) -> None:
        self.raw = raw
        self.target = target
        self.dialect = target.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            if self.dialect == SQLITE:
                return self.raw.execute(sql, tuple(params))
            if not params:  # no parameters: psycopg leaves '%' alone, allows several statements
                return self.raw.execute(sql)
            return self.raw.execute(sql.replace("?", "%s"), tuple(params))
        except Exception as exc:  # sqlite3.Error or psycopg.Error, whichever is loaded
            raise _wrap(self.target, exc) from exc

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """All or nothing; SQLite takes the write lock at once (BEGIN IMMEDIATE)."""
        if self.dialect == POSTGRESQL:
            try:
                with self.raw.transaction():
                    yield self
            except Exception as exc:
                if type(exc).__module__.startswith("psycopg"):  # COMMIT failed
                    raise _wrap(self.target, exc) from exc
                raise
            return
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.raw.rollback()
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            pass


def _wrap(target: Target, exc: Exception) -> DbError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "no column named" in text or "no such column" in text or (
            text.startswith("column") and "does not exist" in text):
        text += " (schema older than this referee? run `referee db init` to upgrade it)"
    elif "no such table" in text or ("relation" in text and "does not exist" in text):
        text += " (not initialised? run `referee db init`)"
    return DbError(f"policy database {target.display}: {text}")


def connect(db: str, *, create: bool = False, readonly: bool = False,
            timeout_s: float = 5.0) -> Connection:
    """Open db.  SQLite files are never created unless create (so a typo in a path is an
    error, not an empty policy); readonly opens SQLite with mode=ro (Kamailio workers)."""
    target = Target.parse(db)
    if target.dialect == POSTGRESQL:
        return _connect_pg(target, timeout_s)
    path = target.location
    if path != ":memory:" and not create and not os.path.exists(path):
        raise DbError(f"policy database {path}: no such file (run `referee db init`)")
    mode = "ro" if readonly else ("rwc" if create else "rw")
    uri = "file::memory:" if path == ":memory:" else f"file:{quote(path)}?mode={mode}"
    try:
        raw = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None,
                              check_same_thread=False)
        raw.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise _wrap(target, exc) from exc
    return Connection(raw, target)


def load_driver(db: str) -> None:
    """Import the driver db needs now: call before Kamailio forks, so no worker pays the
    import (~130 ms for psycopg) on its first REFER.  Raises DbError if it is missing."""
    target = Target.parse(db)
    if target.dialect == POSTGRESQL:
        _psycopg(target)


def _psycopg(target: Target) -> Any:
    try:
        import psycopg  # optional extra 'postgres': imported only for a PostgreSQL DSN
    except ImportError:
        raise DbError(f"policy database {target.display}: PostgreSQL needs psycopg 3 "
                      "(pip install 'referee[postgres]')") from None
    return psycopg


def _connect_pg(target: Target, timeout_s: float) -> Connection:
    psycopg = _psycopg(target)
    try:
        raw = psycopg.connect(
            target.location, autocommit=True, connect_timeout=max(1, round(timeout_s)),
            options=f"-c statement_timeout={max(1, int(timeout_s * 1000))}")
    except psycopg.Error as exc:
        raise _wrap(target, exc) from exc
    return Connection(raw, target)


@dataclass(frozen=True)
class Migration:
    version: str  # "001"
    name: str  # "001_policy"
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The numbered files shipped in sql/<dialect>/, in order."""
    folder = resources.files("sql").joinpath(dialect)
    out = []
    for entry in folder.iterdir():
        m = _MIGRATION_RE.fullmatch(entry.name)
        if m:
            out.append(Migration(m.group(1), entry.name[:-4], entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda mig: int(mig.version))


_LEDGER = {
    SQLITE: "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    POSTGRESQL: "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
}


def applied(conn: Connection) -> list[str]:
    """Names of the migrations already recorded, in order."""
    conn.execute(_LEDGER[conn.dialect])
    return [r["name"] for r in conn.rows("SELECT name FROM schema_migrations ORDER BY version")]


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction; returns the
    names applied (empty when up to date).  Safe to run twice, or from two shells at once."""
    done: list[str] = []
    for mig in migrations(conn.dialect):
        with conn.transaction():
            if conn.dialect == POSTGRESQL:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (zlib.crc32(b"referee-migrate"),))
            conn.execute(_LEDGER[conn.dialect])
            if conn.rows("SELECT 1 AS x FROM schema_migrations WHERE version = ?",
                         (mig.version,)):
                continue
            _run_script(conn, mig.sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                         (mig.version, mig.name))
        done.append(mig.name)
    return done


def _run_script(conn: Connection, sql: str) -> None:
    if conn.dialect == POSTGRESQL:
        conn.execute(sql)  # psycopg runs several statements when there are no parameters
        return
    # sqlite3 runs one statement per execute(); split on complete statements (triggers
    # hold ';' inside BEGIN ... END, which sqlite3.complete_statement understands).
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
    if buf.strip() and not _only_comments(buf):
        raise DbError(f"policy database {conn.target.display}: migration ends mid-statement")


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.strip().startswith("--") for ln in text.splitlines())


def read_version(conn: Connection) -> int:
    """The policy_version counter: the one cheap SELECT a worker runs per check."""
    rows = conn.execute("SELECT version FROM policy_version WHERE id = 1").fetchall()
    if not rows:
        raise DbError(f"policy database {conn.target.display}: policy_version has no row")
    return int(rows[0][0])


def load_policy(conn: Connection) -> Policy:
    """Read the three tables into a Policy; invalid rows land in Policy.errors.

    The version is read first: an edit that lands between the reads shows up as a newer
    version on the next check and is reloaded then, never missed.
    """
    version = read_version(conn)
    tenant_cols = _present(conn, "tenants", _TENANT_COLUMNS,
                           _TENANT_COLUMNS_002 + _TENANT_COLUMNS_003)
    rule_cols = _present(conn, "rules", _RULE_COLUMNS, _RULE_COLUMNS_002)
    tenants = conn.rows(f"SELECT {', '.join(tenant_cols)} FROM tenants")
    rules = conn.rows(f"SELECT {', '.join(rule_cols)} FROM rules")
    classes = conn.rows(f"SELECT {', '.join(_CLASS_COLUMNS)} FROM number_classes")
    return Policy.from_rows(version, tenants, rules, classes)


def _present(conn: Connection, table: str, base: tuple[str, ...],
             optional: tuple[str, ...]) -> tuple[str, ...]:
    """base plus those of optional the table has (zero rows read: only the header)."""
    cur = conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
    have = {d[0] for d in cur.description}
    cur.fetchall()
    return base + tuple(c for c in optional if c in have)
