"""What the handlers of one Kamailio process share: settings, policy, the Redis client
and stores (opened lazily after the fork), the journal, and the node-local order state.

One per process: app_python3 forks the object made in mod_init, so child_init drops
whatever the parent opened.
"""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi import config
from kemi.core.order import Timing
from kemi.kamailio import metrics
from kemi.kamailio.glue import log
from kemi.kamailio.sequencer import Deferred, Sequencer
from kemi.storage.dialogs import DialogStore
from kemi.storage.journal import Journal
from kemi.storage.policy_cache import PolicyCache
from kemi.storage.resp import CircuitBreaker, RespClient
from kemi.storage.transfers import TransferStore

_REDIS_COUNTERS = {"trip": "redis_round_trips", "failure": "redis_failures",
                   "breaker-open": "redis_breaker_openings"}


def _count_redis(what: str) -> None:
    metrics.bump(_REDIS_COUNTERS[what])


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
    def client(self) -> RespClient:
        """One Redis connection per process, shared by the transfer store and the index."""
        if self._client is None:
            r = self.settings.redis
            self._client = RespClient(
                r.url,
                timeout_s=r.timeout_ms / 1000.0,
                breaker=CircuitBreaker(r.breaker_failures, r.breaker_open_s),
            )
            self._client.observer = _count_redis
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
