"""PolicyCache: the Policy a Kamailio worker uses, reloaded when operators edit the tables.

Each worker holds one cache.  Cost per REFER: a clock read; at most once per interval one
SELECT of policy_version; a full read only when the version moved.  The cache is built in
mod_init (before Kamailio forks) but its connection is opened lazily, and again in any
process that did not open it, so workers never share a socket or SQLite handle.  A
database that becomes unreadable does not take the policy away: the last good one stays,
with the error in last_error, and checks back off (interval, 2x, 4x, ... up to 30 s).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from kemi.core.policy.model import Policy
from kemi.storage import policy_db

log = logging.getLogger("referee.policy")
MAX_BACKOFF_S = 30.0  # longest wait between checks while the database is broken


class PolicyUnavailable(RuntimeError):
    """No policy has ever been loaded; the caller answers the REFER with a 5xx."""


class PolicyCache:
    def __init__(self, db: str, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, timeout_s: float = 0.1) -> None:
        # timeout_s bounds a locked SQLite file or a slow PostgreSQL: a SIP worker waits
        # at most that long, then keeps the policy it has.
        self.db = db
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._timeout_s = timeout_s
        self._conn: policy_db.Connection | None = None
        self._pid = 0
        self._policy: Policy | None = None
        self._next_check = float("-inf")
        self._last_error: str | None = None
        self._inherited: list[policy_db.Connection] = []
        self._failures = 0
        try:
            self._display = policy_db.Target.parse(db).display  # no password in messages
        except policy_db.DbError:
            self._display = db
        try:
            policy_db.load_driver(db)
        except policy_db.DbError as exc:
            self._last_error = str(exc)  # current() will report it

    @property
    def last_error(self) -> str | None:
        """Why the latest check failed, or None when it succeeded."""
        return self._last_error

    def current(self) -> Policy:
        now = self._clock()
        if now < self._next_check:
            if self._policy is None:
                raise PolicyUnavailable(self._unavailable())
            return self._policy
        self._next_check = now + self.check_interval_s
        try:
            conn = self._connection()
            version = policy_db.read_version(conn)
            if self._policy is None or version != self._policy.version:
                self._install(policy_db.load_policy(conn))
            self._last_error = None
            self._failures = 0
        except policy_db.DbError as exc:
            self._fail(str(exc))
            # Back off while it stays broken: a PostgreSQL that does not answer costs a
            # worker up to the connect timeout per check.
            self._next_check = now + min(self.check_interval_s * 2 ** (self._failures - 1),
                                         max(self.check_interval_s, MAX_BACKOFF_S))
        if self._policy is None:
            raise PolicyUnavailable(self._unavailable())
        return self._policy

    def _connection(self) -> policy_db.Connection:
        if self._conn is not None and self._pid != os.getpid():
            # Inherited across fork: it belongs to the parent.  Keep it referenced but
            # unused (finalising it here would close the parent's session).
            self._inherited.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = policy_db.connect(self.db, readonly=True, timeout_s=self._timeout_s)
            self._pid = os.getpid()
        return self._conn

    def _install(self, policy: Policy) -> None:
        old = self._policy.version if self._policy else None
        self._policy = policy
        log.info("policy version %s loaded (was %s): %d tenants, %d rules, %d invalid rows",
                 policy.version, old, len(policy.tenants), len(policy.rules), len(policy.errors))
        for err in policy.errors:
            log.warning("policy version %s: skipped %s", policy.version, err)

    def _fail(self, message: str) -> None:
        if message != self._last_error:
            if self._policy is None:
                log.error("%s; no policy loaded yet", message)
            else:
                log.error("%s; keeping policy version %s", message, self._policy.version)
        self._last_error = message
        self._failures += 1
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _unavailable(self) -> str:
        why = self._last_error or "not read yet"
        return f"no transfer policy loaded from {self._display}: {why}"
