"""Every write of the SIP path to the transfer records and the dialog index, and what is
done when Redis cannot take it: spooled to the journal (kemi.storage.journal), or left
for the sweep (kemi.kamailio.sequencer.Deferred) when a reply route must not wait."""

from __future__ import annotations

import time

import KSR  # provided by app_python3

from kemi.core import metrics as core_metrics
from kemi.core import transfer
from kemi.core.actions import Store
from kemi.core.dialogs import DialogEvent, response_event
from kemi.core.state import Event
from kemi.kamailio import metrics
from kemi.kamailio.glue import log, pv, source
from kemi.kamailio.marks import HTABLE
from kemi.kamailio.services import Services
from kemi.storage.resp import RedisError

# Deferred store calls sent per round trip by the sweep (kemi.kamailio.timers): ~30 µs of
# Redis each, so a piece holds Redis for a few ms at most.
LATER_BATCH = 64


class Recorder:
    def __init__(self, services: Services) -> None:
        self.s = services

    def apply(self, call_id, refer_id, event: Event, fields=None, detail="", deadline=None,
              seq: int | None = None, at: float | None = None):
        return self.apply_many([self.event(call_id, refer_id, event, fields, detail,
                                            deadline, seq, at)])[0]

    @staticmethod
    def event(call_id, refer_id, event: Event, fields=None, detail="", deadline=None,
               seq: int | None = None, at: float | None = None) -> dict:
        return {"call_id": call_id, "refer_id": refer_id, "event": event,
                "now": time.time() if at is None else at, "fields": fields,
                "deadline": deadline, "detail": detail, "seq": seq}

    def apply_many(self, events: list[dict]) -> list:
        """Events applied in order, in one round trip where the store can
        (TransferStore.apply_many); when Redis cannot take them, each is spooled."""
        return self._apply(events, ())[0]

    def apply_with(self, events: list[dict], commands: list[tuple]) -> list | None:
        """Events applied in order and plain commands after them, in one round trip where
        the store can: the commands' replies (an error reply in place), or None when
        Redis could not take the trip (the events are spooled).  An event Redis refused
        is spooled; the commands, which ran, still give their replies."""
        return self._apply(events, commands)[1]

    def _apply(self, events: list[dict], commands) -> tuple[list, list | None]:
        if not commands and self._after_spooled(events):
            return [None] * len(events), None
        try:
            results, replies = self.s.store.apply_many_with(events, commands)
        except RedisError as exc:
            self._spool_events(events, exc)
            return [None] * len(events), getattr(exc, "replies", None)
        for e, res in zip(events, results, strict=True):
            if res.outcome == "unknown" and self._behind_journal(e):
                continue
            self._applied(e, res)
        return results, replies

    def _after_spooled(self, events: list[dict]) -> bool:
        """Events of a transfer that has events in the journal go there too, behind them:
        one trip failed (a hung moment, a timeout under load) and the transfer's next
        events, applied live, would come before it in the record -- the journal replays
        in time order.  Once the journal is empty, the mark goes.  (The anchored side's
        events with commands are not held back: their commands must run now.)"""
        marked = [e["call_id"] for e in events if _spooled_mark(e["call_id"])]
        if not marked:
            return False
        journal = getattr(self.s, "journal", None)
        if journal is None or not journal.pending():
            for call_id in marked:
                _spooled_mark(call_id, clear=True)
            return False
        for e in events:
            spooled = self._spool_event(e)
            log(KSR.notice, f"{e['event']} for {e['call_id']}/{e['refer_id']}: "
                            f"{'spooled behind' if spooled else 'LOST behind'} the transfer's "
                            "events the journal holds")
        return True

    def _behind_journal(self, e: dict) -> bool:
        """An event for a transfer Redis does not know, while the journal holds spooled
        calls: its REFER's create may be one of them (Redis failed the create, then came
        back for the events after it).  Spooled too, so the journal replays it after the
        create (in time order) instead of it being dropped as unknown now."""
        journal = getattr(self.s, "journal", None)
        if journal is None or not journal.pending():
            return False
        spooled = self._spool_event(e)
        log(KSR.notice, f"{e['event']} for {e['call_id']}/{e['refer_id']}: no such transfer "
                        f"in Redis while the journal holds spooled calls; "
                        f"{'spooled behind them' if spooled else 'LOST'}")
        return spooled

    def _spool_event(self, e: dict) -> bool:
        return self.spool(
            "apply", call_id=e["call_id"], refer_id=e["refer_id"], event=str(e["event"]),
            now=e["now"], fields=e["fields"], deadline=e["deadline"], detail=e["detail"],
            seq=e["seq"])

    def _spool_events(self, events: list[dict], exc: Exception) -> None:
        for e in events:
            spooled = self._spool_event(e)
            log(KSR.err, f"{e['event']} for {e['call_id']}/{e['refer_id']} "
                         f"{'spooled' if spooled else 'LOST'} (Redis: {exc})")

    def _spool_notes(self, notes: list[dict], exc: Exception) -> None:
        for n in notes:
            spooled = self.spool("annotate", **n)
            log(KSR.err, f"note for {n['call_id']} {'spooled' if spooled else 'LOST'} "
                         f"(Redis: {exc})")

    @staticmethod
    def _applied(e: dict, res) -> None:
        event, call_id, fields = e["event"], e["call_id"], e["fields"]
        if res.outcome in ("illegal", "ambiguous", "unknown"):
            log(KSR.notice, f"{event} for {call_id}/{e['refer_id']}: {res.outcome} in state "
                            f"{res.old}")
        elif res.final:
            log(KSR.info, f"transfer {call_id}/{res.refer_id} {res.new}")
        for name in core_metrics.recorded(str(event), res.outcome, res.final,
                                          None if res.new is None else str(res.new),
                                          fields or {}):
            metrics.bump(name)

    def spool(self, op: str, **entry) -> bool:
        try:
            self.s.journal.append(op, **entry)
            metrics.bump("events_spooled")
            if op in ("create", "apply") and entry.get("call_id"):
                _spooled_mark(entry["call_id"], set_it=True)
            return True
        except OSError as exc:
            log(KSR.crit, f"journal {self.s.journal.dir} unwritable ({exc}): {op} {entry!r:.200}")
            return False

    def defer(self, call_id: str, entry: dict) -> None:
        """A store call made by the sweep, never in this reply route; made now if the cfg
        lacks the table."""
        if not self.s.later.add(call_id, entry):
            self.store_later(call_id, {"t": time.time(), **entry})

    def _accept(self, call_id: str, e: dict) -> dict:
        """A REFER's 2xx left for later, as an event to apply."""
        return self.event(call_id, e["r"], Event.REFER_ACCEPTED, {"refer_reply": str(e["c"])},
                           str(e["c"]), at=e.get("t") or time.time())

    def store_later(self, call_id: str, e: dict) -> None:
        """Make a store call a reply route left for later (kemi.kamailio.sequencer.Deferred)."""
        self.store_later_many([(call_id, e)])

    def store_later_many(self, entries: list[tuple[str, dict]]) -> None:
        """The store calls reply routes left for later, in their order, each run of
        events and each run of notes in one round trip per LATER_BATCH (the sweep makes
        them: a few trips per tick, not one per transfer).  Once Redis fails, the rest
        are spooled without trying it again, so the journal replays them in their order
        (a later one stored before an earlier one it follows would be out of order)."""
        pieces: list[tuple[str, list[dict]]] = []
        for call_id, e in entries:
            try:
                k, item = self._later_item(call_id, e)
            except (KeyError, ValueError) as exc:
                log(KSR.err, f"deferred store call for {call_id} unreadable ({exc!r}): "
                             f"{e!r:.200}")
                continue
            # In pieces: a piece is one script run on the packed path (atomic), and a
            # sweep under load can hold thousands -- one piece of them all would keep
            # Redis from every SIP worker past their timeout.
            if pieces and pieces[-1][0] == k and len(pieces[-1][1]) < LATER_BATCH:
                pieces[-1][1].append(item)
            else:
                pieces.append((k, [item]))
        failed: Exception | None = None
        for k, piece in pieces:
            spool = self._spool_events if k == "event" else self._spool_notes
            if failed is not None:
                spool(piece, failed)
                continue
            try:
                if k == "event":
                    results = self.s.store.apply_many(piece)
                    for e, res in zip(piece, results, strict=True):
                        self._applied(e, res)
                else:
                    self.s.store.annotate_many(piece)
            except RedisError as exc:
                spool(piece, exc)
                failed = exc

    def _later_item(self, call_id: str, e: dict) -> tuple[str, dict]:
        """A deferred entry as ("event", apply's arguments) or ("note", annotate's)."""
        at = e.get("t") or time.time()
        if e["k"] == "accept":
            return "event", self._accept(call_id, e)
        if e["k"] == "apply":
            # The transferor's answer to a NOTIFY without ;id= that was held: its note has
            # no refer id.  Stored a sweep later, the transfer may have ended meanwhile, and
            # the store would find no open one to apply it to: it goes where its note goes.
            rid = e.get("r")
            if rid is None:
                try:
                    rid = self.s.store.latest(call_id)
                except (RedisError, ValueError):
                    # Redis away (the event is spooled as it is, the note beside it), or
                    # an index entry no state of ours: the store resolves it, or says so
                    pass
            return "event", self.event(call_id, rid, Event(e["e"]), e.get("f"),
                                        e.get("d", ""), at=at)
        if e["k"] == "note":
            return "note", {"call_id": call_id, "refer_id": e.get("r"), "now": at,
                            "fields": e.get("f") or {}, "detail": e.get("d", "")}
        raise ValueError(f"unknown kind {e['k']!r}")

    def store(self, action: Store) -> None:
        """A Store action: its event applied (after any 2xx that waited for it), or, with
        no event, a note on the record."""
        if action.event is None:
            self.note(action.call_id, action.refer_id, dict(action.fields), action.detail,
                      time.time())
            return
        self.apply_after_accepts(action.call_id, action.refer_id, action.event,
                                 dict(action.fields), action.detail)

    def apply_after_accepts(self, call_id, refer_id, event: Event, fields=None, detail="",
                            deadline=None, seq: int | None = None):
        """An event of the dialog, after what its reply routes left for later
        (kemi.kamailio.sequencer.Deferred): the 2xx answers to its REFERs -- all in one
        round trip --, and the transferor's answers to its NOTIFYs, which came before this
        event on the wire: left to the sweep, they would be logged after it.  A held
        NOTIFY (seq: its CSeq) is recorded after it left, so the answer to it may already
        wait: that one goes after it.  Its result."""
        taken = self.s.order.fold(call_id)  # 2xx answers noted, not yet taken in
        waiting = sorted(taken + self.s.later.take(call_id), key=lambda e: e.get("t", 0))
        this = self.event(call_id, refer_id, event, fields, detail, deadline, seq)
        if all(e["k"] == "accept" for e in waiting):
            return self.apply_many([*(self._accept(call_id, e) for e in waiting), this])[-1]
        # rare (an answer to a NOTIFY not yet swept): a trip or two more
        own = [e for e in waiting if seq is not None and e["k"] != "accept"
               and e.get("n") == seq]
        self.store_later_many([(call_id, e) for e in waiting if e not in own])
        res = self.apply_many([this])[-1]
        self.store_later_many([(call_id, e) for e in own])
        return res

    def note(self, call_id: str, refer_id: str | None, fields: dict, detail: str,
             at: float) -> None:
        """Facts on a record without an event; spooled when Redis cannot take them."""
        self.note_many([{"call_id": call_id, "refer_id": refer_id, "now": at,
                         "fields": fields, "detail": detail}])

    def note_many(self, notes: list[dict]) -> None:
        """Notes (annotate's arguments by name) in one round trip where the store can
        (TransferStore.annotate_many); when Redis cannot take them, each is spooled."""
        try:
            self.s.store.annotate_many(notes)
        except RedisError as exc:
            self._spool_notes(notes, exc)

    def record_dialog(self, event: DialogEvent, callee_tag: str | None = None) -> None:
        """Apply one event of the current message's dialog to the index; never blocks the
        call: a Redis failure is logged and the message goes on."""
        call_id = pv("$ci") or ""
        try:
            caller = callee = None
            if event not in (DialogEvent.BYE, DialogEvent.REFRESH):
                caller = transfer.parse_name_addr(pv("$hdr(From)") or "", "From").uri.aor
                callee = transfer.parse_name_addr(pv("$hdr(To)") or "", "To").uri.aor
            self.s.dialogs.record(
                event, call_id, pv("$ft") or "", time.time(), callee_tag=callee_tag,
                caller=caller, callee=callee, node=f"{pv('$Ri') or ''}:{pv('$Rp') or ''}",
                source=source() if event is not DialogEvent.FAILED else "",
            )
        except transfer.SipParseError as exc:
            log(KSR.notice, f"dialog {call_id} {event} not indexed: {exc}")
        except RedisError as exc:
            log(KSR.warn, f"dialog {call_id} {event} not indexed (Redis: {exc})")

    def record_response(self, code: int) -> None:
        """A response to an indexed initial INVITE (or, in the failure route, its final
        failure: the message there is the request, which carries no callee tag)."""
        to_tag = pv("$tt") or ""
        event = response_event(code, to_tag)
        if event is None:
            return
        self.record_dialog(event, callee_tag=to_tag)


SPOOLED = "spooled:"  # in the referee htable: the Call-ID has events in the journal


def _spooled_mark(call_id: str, set_it: bool = False, clear: bool = False) -> bool:
    """Read (or set, or clear) the node-local mark of a transfer's dialog with events in
    the journal; False without the htable."""
    key = SPOOLED + call_id
    try:
        if set_it:
            return KSR.htable.sht_sets(HTABLE, key, "1") >= 0
        if clear:
            KSR.htable.sht_rm(HTABLE, key)
            return False
        return KSR.htable.sht_get(HTABLE, key) is not None
    except Exception:  # noqa: BLE001 - htable not loaded: nothing marked
        return False
