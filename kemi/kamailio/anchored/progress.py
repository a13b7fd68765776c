"""The progress the Asterisk side reports for the transfers this node accepted, read by
the `referee_progress` rtimer (never a SIP worker) from this node's progress stream
(consumer group "kamailio", kemi.storage.streams) and told to A by NOTIFY."""

from __future__ import annotations

import time
import traceback

import KSR  # provided by app_python3

from kemi.core import verdicts
from kemi.core.anchor import PROGRESS_GROUP, AnchorError, Progress, progress_key
from kemi.kamailio.anchored import AnchoredRoutes
from kemi.kamailio.glue import CONTINUE, log
from kemi.kamailio.perform import perform
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services
from kemi.storage import streams
from kemi.storage.resp import RedisError

PROGRESS_BATCH = 50


class ProgressReader:
    def __init__(self, services: Services, recorder: Recorder,
                 anchoring: AnchoredRoutes) -> None:
        self.s = services
        self.rec = recorder
        self.anchoring = anchoring
        self.child_init()

    def child_init(self) -> None:
        self._ready = False  # consumer group made (progress timer process)
        self._pending = True  # claim our own unacknowledged entries first
        self._down = False  # Redis failing for the progress timer (logged once)
        self._rebuilt = False  # htable marks of anchored dialogs restored after a start

    def tick(self) -> int:
        """rtimer: NOTIFY A of what the Asterisk side reported for the transfers this node
        accepted (its progress stream, consumer group "kamailio")."""
        a = self.s.anchored
        if not a.asterisk or a.mode != "accept":
            return CONTINUE
        client = self.s.client
        key = progress_key(self.s.settings.redis.prefix, a.node)
        try:
            if not self._rebuilt:
                self.anchoring.rebuild_marks()
                self._rebuilt = True
            if not self._ready:
                streams.ensure_group(client, key, PROGRESS_GROUP)
                self._ready = True
            start = "0" if self._pending else ">"
            entries = streams.read_group(client, key, PROGRESS_GROUP, a.node, start,
                                         PROGRESS_BATCH)
        except RedisError as exc:
            if "NOGROUP" in str(exc):
                self._ready = False  # the stream expired or was deleted
            if not self._down:  # once per outage, not every tick
                log(KSR.warn, f"anchored progress not read ({exc}); NOTIFYs wait for Redis")
                self._down = True
            return CONTINUE
        if self._down:
            log(KSR.notice, "anchored progress read again")
            self._down = False
        if start == "0" and not entries:
            self._pending = False
        # One NOTIFY per transfer per tick: a 180 and a final reported together would
        # otherwise leave back to back, and a transferor still answering the first takes
        # the second for an unexpected request.  The rest waits (pending) for the next.
        # Entries not acknowledged stay pending and are read again ("0") on a later tick.
        notified: set[tuple[str, str]] = set()
        for eid, fields in entries:
            try:
                which = (fields.get("call_id", ""), fields.get("refer_id", "")) if fields \
                    else None
                if which in notified:
                    self._pending = True
                    break
                if fields is None:
                    log(KSR.warn, f"progress {eid} trimmed from the stream before it was "
                                  "handled: acknowledged without a NOTIFY")
                else:
                    self._one(eid, fields)
                    notified.add(which)
            except RedisError as exc:
                log(KSR.warn, f"progress {eid} left pending (Redis: {exc})")
                self._pending = True
                break
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stall the rest
                log(KSR.err, f"progress {eid} failed and is acknowledged (its NOTIFY may "
                             f"not have gone out): {exc!r}\n{traceback.format_exc()}")
            try:
                streams.ack(client, key, PROGRESS_GROUP, eid)
            except RedisError as exc:
                log(KSR.warn, f"progress {eid} handled but not acknowledged ({exc}): it is "
                              "read again, and a NOTIFY for it may repeat")
                self._pending = True
                break
        return CONTINUE

    def _one(self, entry_id: str, raw: dict) -> None:
        try:
            p = Progress.from_fields(raw)
        except AnchorError as exc:
            log(KSR.err, f"progress {entry_id} dropped: {exc}")
            return
        record = self.s.store.get(p.call_id, p.refer_id)
        if record is None:
            log(KSR.notice, f"progress {entry_id} for unknown transfer "
                             f"{p.call_id}/{p.refer_id} dropped")
            return
        perform(verdicts.progress(p, record, time.time()).actions, self.rec,
                notify=lambda n: self.anchoring.notify(
                    n.call_id, n.refer_id, record, n.code, n.reason, n.terminated,
                    n.expires_s, event=n.event, detail=n.detail, fields=dict(n.fields),
                    record_first=True))
