"""The rtimer work of a node: resuming held NOTIFYs in their turn (`referee_order`,
every few ms), and the sweep (`referee`): replaying the journal, storing what reply
routes left for later, closing transfers whose final NOTIFY never came."""

from __future__ import annotations

import time
import traceback

import KSR  # provided by app_python3

from kemi.core.state import Event
from kemi.kamailio import metrics
from kemi.kamailio.anchored import AnchoredRoutes
from kemi.kamailio.glue import CONTINUE, as_text, log
from kemi.kamailio.notify import NotifyRoutes
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services
from kemi.storage import persistence
from kemi.storage.resp import RedisError

# Held NOTIFYs resumed per tick by kamailio-native.cfg's while loop (Kamailio ends a
# loop after max_while_loops, 100 by default): the rest go on the next tick.
NATIVE_BATCH = 64


class Timers:
    def __init__(self, services: Services, recorder: Recorder, notify: NotifyRoutes,
                 anchoring: AnchoredRoutes) -> None:
        self.s = services
        self.rec = recorder
        self.notify = notify
        self.anchoring = anchoring
        self.child_init()

    def child_init(self) -> None:
        self._due: list | None = None  # released this tick, not yet resumed (native cfg)
        self._continued: tuple[str, str, int] | None = None  # resumed, not marked sent
        self._persistence_checked = False  # Redis's AOF looked at (sweep process)

    def order(self) -> int:
        """rtimer of kamailio.cfg (every few ms, its own process): resume the held NOTIFYs
        whose turn has come, one after another, so they leave in CSeq order
        (kemi.core.order); each goes on in the proxy's referee_resume.  Each is
        recorded just before it goes (NotifyRoutes.record_ahead)."""
        now = time.time()  # one instant for both: due releases what ahead recorded
        self.notify.record_ahead(self.s.order.ahead(now=now))
        for cid, h in self.s.order.due(now=now):
            if KSR.tmx.t_continue(h.tindex, h.tlabel, "referee_resume") < 0:
                log(KSR.warn, f"held NOTIFY [{h.tindex}:{h.tlabel}] not resumed (its "
                               "transaction ended)")
            self.s.order.mark_sent(cid, h.tag, h.cseq)
        self.notify.record_resumed()
        return CONTINUE

    def next_due(self) -> int:
        """kamailio-native.cfg's route[REFEREE_ORDER] loops on this: 1 with the next held
        transaction to resume in $var(rf_ti)/$var(rf_tl), -1 when none is due (its
        t_continue names a cfg route, which KSR.tmx.t_continue cannot).  Not wrapped by
        `route`: on an error it must end the loop (-1), never continue it."""
        try:
            if self._continued is not None:  # the one t_continue just relayed
                self.s.order.mark_sent(*self._continued)
                self._continued = None
            self.notify.record_resumed()  # (outside the transaction's lock)
            if self._due is None:  # the first call of this tick
                now = time.time()  # one instant for both (see order())
                self.notify.record_ahead(self.s.order.ahead(limit=NATIVE_BATCH, now=now))
                self._due = self.s.order.due(limit=NATIVE_BATCH, now=now)
            if not self._due:
                self._due = None
                return -1
            cid, h = self._due.pop(0)
            self._continued = (cid, h.tag, h.cseq)
            KSR.pv.seti("$var(rf_ti)", h.tindex)
            KSR.pv.seti("$var(rf_tl)", h.tlabel)
            return 1
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            self._due = self._continued = None
            log(KSR.err, f"timer referee_next failed: {exc!r}\n{traceback.format_exc()}")
            return -1

    def sweep(self) -> int:
        """rtimer: replay spooled events, then close transfers whose final NOTIFY never came."""
        now = time.time()
        if not self._persistence_checked:
            self._check_persistence()
        if self.s.journal.pending():
            report = self.s.journal.replay(self.s.store, lambda text: log(KSR.err, text))
            if report.applied or report.kept:
                log(KSR.notice, f"journal replay: {report.applied} events stored, "
                                 f"{report.kept} still waiting for Redis")
            if report.applied:
                metrics.bump("events_replayed", report.applied)
            for name, n in report.counts.items():
                metrics.bump(name, n)
            if report.kept:
                return CONTINUE  # Redis still away: expiring now would race the replay
        # REFER 2xx answers noted a while ago whose dialog saw nothing since, and what
        # reply routes left for later, oldest first
        limit = now - self.s.later.accept_after_s
        self.rec.store_later_many(sorted(
            [*self.s.order.fold_due(limit), *self.s.later.due()],
            key=lambda ce: ce[1].get("t", 0)))
        try:
            due = self.s.store.due(now, limit=200)
            metrics.set_gauge("transfers_live", self.s.store.open_count())
        except RedisError as exc:
            log(KSR.warn, f"expiry sweep skipped: {exc}")
            return CONTINUE
        for call_id, refer_id in due:
            res = self.rec.apply(call_id, refer_id, Event.EXPIRY, detail="sweep")
            if res is not None and res.final:
                log(KSR.notice, f"transfer {call_id}/{refer_id} expired without a final NOTIFY")
                self.anchoring.expire(call_id, refer_id)
        return CONTINUE

    def _check_persistence(self) -> None:
        """Once per start (the sweep's process): warn when Redis would lose transfers in
        a crash (kemi.storage.persistence).  Retried on the next tick while Redis is away."""
        try:
            if self.s.client.cluster:
                infos = self.s.client.on_each_master("INFO", "persistence")
            else:
                infos = {self.s.client.address: self.s.client.call("INFO", "persistence")}
        except RedisError:
            return
        self._persistence_checked = True
        for addr, info in infos.items():
            warning = persistence.persistence_warning(str(addr), as_text(info))
            if warning:
                log(KSR.warn, warning)
