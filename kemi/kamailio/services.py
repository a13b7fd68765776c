"""What the handlers of one Kamailio process share: settings, policy, the Redis client
and stores (opened lazily after the fork), the journal, and the node-local order state.

One per process: app_python3 forks the object made in mod_init, so child_init drops
whatever the parent opened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import KSR  # provided by app_python3

from kemi import config
from kemi.core.order import Timing
from kemi.kamailio import metrics, ndb
from kemi.kamailio.glue import log
from kemi.kamailio.sequencer import Deferred, Sequencer
from kemi.storage.dialogs import DialogStore
from kemi.storage.journal import Journal
from kemi.storage.packed import PackedClient
from kemi.storage.policy_cache import PolicyCache
from kemi.storage.resp import CircuitBreaker, RespClient
from kemi.storage.transfers import TransferStore


class RedisWatch:
    """Told what this process's Redis client does: Kamailio's counters, and the breaker's
    state where `referee check` reads it (kemi.storage.journal's breaker file).  Never
    raises: it runs inside the Redis call."""

    COUNTERS = {"trip": "redis_round_trips", "failure": "redis_failures",
                "breaker-open": "redis_breaker_openings"}

    def __init__(self, journal: Journal, address: Callable[[], str]) -> None:
        self.journal = journal
        self.address = address
        self.open = False

    def __call__(self, what: str) -> None:
        if what in self.COUNTERS:
            metrics.bump(self.COUNTERS[what])
        if what == "breaker-open" and not self.open:
            self.open = True
            metrics.bump("redis_breakers_open")
            try:
                self.journal.breaker_opened(self.address(), time.time())
            except OSError as exc:
                log(KSR.warn, f"breaker state not written to {self.journal.dir}: {exc}")
        elif what == "breaker-close" and self.open:
            self.open = False
            metrics.bump("redis_breakers_open", -1)
            try:
                self.journal.breaker_closed()
            except OSError as exc:
                log(KSR.warn, f"breaker state not removed from {self.journal.dir}: {exc}")


class Services:
    def __init__(self) -> None:
        self.settings = config.load()
        self.policy = PolicyCache(
            self.settings.policy_db, check_interval_s=self.settings.policy_check_interval_s
        )
        self._store: TransferStore | None = None
        self._dialogs: DialogStore | None = None
        self._client: RespClient | None = None
        self.dialog_index = self.settings.kamailio.dialog_index
        self.host_only = self.settings.kamailio.party_match == "host"
        self.journal = Journal(self.settings.kamailio.journal_dir)
        try:
            self.journal.forget_breakers()  # mod_init: no process of this run has one yet
        except OSError as exc:
            log(KSR.warn, f"journal {self.journal.dir}: {exc}")
        self.anchored = self.settings.anchored
        k = self.settings.kamailio
        self.order = Sequencer(
            Timing(grace_s=k.order_grace_ms / 1000.0, window_s=k.order_window_ms / 1000.0),
            lambda text: log(KSR.warn, text),
        )
        self.later = Deferred(lambda text: log(KSR.warn, text))

    def child_init(self) -> None:
        # Sockets are opened lazily in each process (never before the fork).
        self._store = None
        self._dialogs = None
        self._client = None
        self.order.ready = True


    @property
    def client(self) -> RespClient | PackedClient:
        """One Redis connection per process, shared by the transfer store and the index:
        ndb_redis's where the cfg loads it for a plain redis:// url (kemi.kamailio.ndb),
        else the Python client (TLS, Sentinel, Cluster)."""
        if self._client is None:
            r = self.settings.redis
            breaker = CircuitBreaker(r.breaker_failures, r.breaker_open_s)
            if ndb.available(r.url):
                self._client = ndb.client(r.url, r.timeout_ms / 1000.0, r.prefix, breaker)
            else:
                self._client = RespClient(r.url, timeout_s=r.timeout_ms / 1000.0,
                                          breaker=breaker)
            client = self._client
            self._client.observer = RedisWatch(self.journal, lambda: client.address)
        return self._client

    @property
    def dialogs(self) -> DialogStore:
        if self._dialogs is None:
            self._dialogs = DialogStore(self.client, prefix=self.settings.redis.prefix)
        return self._dialogs

    @property
    def store(self) -> TransferStore:
        if self._store is None:
            r = self.settings.redis
            self._store = TransferStore(
                self.client,
                prefix=r.prefix,
                done_ttl_s=self.settings.transfer.done_ttl_s,
                stream_maxlen=self.settings.transfer.stream_maxlen,
            )
        return self._store
