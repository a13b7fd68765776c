"""The KSR side of kemi.core.order: each dialog's order state in shared memory, NOTIFYs held
(tm t_suspend) and resumed in order (t_continue) by one timer process.

Shared memory (htable modules, both example cfgs declare them):

    referee_seq   Call-ID -> kemi.core.order.DialogOrder (JSON), under that slot's lock
    referee_held  Call-ID -> "1" while the dialog has held NOTIFYs (what the timer scans)
    referee_ans   Call-ID -> the 2xx answers to its REFERs a reply route noted
                  (kemi.kamailio.answers), taken into the dialog's order state and its
                  deferred accepts at the dialog's next use, its next record, or by the
                  sweep

A dialog gets an entry when referee relays a REFER in it; NOTIFYs in other dialogs are
relayed as before.  Every read-decide-write happens under the referee_seq slot lock, so
two workers deciding about the same dialog see each other's decisions.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable

import KSR  # provided by app_python3

from kemi.core.order import DialogOrder, Held, OrderError, Timing, Verdict
from kemi.kamailio.answers import Answers
from kemi.kamailio.htables import table_keys

SEQ_TABLE = "referee_seq"
HELD_TABLE = "referee_held"
HELD_LIMIT_S = 40.0  # tm's fr_timer (30 s) has ended a held NOTIFY's transaction by then


class Sequencer:
    def __init__(self, timing: Timing, log: Callable[[str], None]) -> None:
        self.timing = timing
        self.log = log
        self.ready = True  # False once the cfg is found without the htables
        self.answers = Answers(log)
        # Where a noted 2xx goes once taken (the Recorder's `defer`: the dialog's next
        # record, or the sweep); None: answers are not taken from `referee_ans` at all.
        self.on_answer: Callable[[str, dict], None] | None = None

    def _with(self, cid: str, change: Callable[[DialogOrder], object],
              create: bool = False, reads_only: bool = False,
              missing: Callable[[], object] | None = None) -> object:
        """Run `change` on the dialog's state under its slot lock and store the result;
        None when the dialog has no state (and `create` is off: `missing` runs, under
        the lock) or the cfg lacks it.  2xx answers noted for the dialog's pending
        REFERs are taken in first.  `reads_only`: `change` changes nothing, the state is
        stored only if answers were taken in (a NOTIFY's first look saves an encode and
        a write)."""
        if not self._lock(cid):
            return None
        try:
            text = KSR.htable.sht_get(SEQ_TABLE, cid)
            if text is None and not create:
                if missing is not None:
                    missing()
                return None
            state = self._decode(cid, text)
            taken = bool(state.refers) and bool(self._take_answers(cid, state, defer=True))
            out = change(state)
            if reads_only and not taken:
                return out
            # Kept until the htable's autoexpire: the last CSeq relayed still orders the
            # dialog's later NOTIFYs.
            KSR.htable.sht_sets(SEQ_TABLE, cid, state.encode())
            return out
        finally:
            KSR.htable.sht_unlock(SEQ_TABLE, cid)

    def _lock(self, cid: str) -> bool:
        """The dialog's slot lock; False (said once, ordering off in this process, the
        table left alone) when the cfg does not declare the table."""
        if not self.ready:
            return False
        try:
            # Kamailio 5.6 answers -1 (and logs an ERROR) for an undeclared table
            why = "not declared" if KSR.htable.sht_lock(SEQ_TABLE, cid) < 0 else ""
        except Exception as exc:  # noqa: BLE001 - htable module missing
            why = str(exc)
        if why:
            self.ready = False
            self.log(f"htable '{SEQ_TABLE}' unusable ({why}): NOTIFYs are relayed unordered")
        return not why

    def _decode(self, cid: str, text) -> DialogOrder:
        try:
            return DialogOrder.decode(None if text is None else str(text))
        except OrderError as exc:
            self.log(f"dialog {cid}: {exc}; started afresh")
            return DialogOrder()

    def _take_answers(self, cid: str, state: DialogOrder | None,
                      defer: bool = False) -> list[dict]:
        """The dialog's noted 2xx answers, taken into its order state (`state`) and given
        back as deferred-accept entries -- with `defer`, also handed on as such at once
        (before anything of the dialog goes on, so the first NOTIFY let go records them
        first)."""
        if self.on_answer is None:
            return []
        out = []
        for rid, code, at in self.answers.take(cid):
            entry = {"k": "accept", "r": rid, "c": code, "t": at}
            if defer:
                self.on_answer(cid, entry)
            out.append(entry)
            if state is not None:
                state.refer_answered(rid, at)
        return out

    def fold(self, cid: str) -> list[dict]:
        """The dialog's noted answers taken now, its order state updated; the accepts to
        record (the caller records them: its next event, or the sweep)."""
        if self.on_answer is None or not self.answers.waiting(cid):
            return []
        if not self._lock(cid):  # no order state to update
            return self._take_answers(cid, None)
        try:
            text = KSR.htable.sht_get(SEQ_TABLE, cid)
            state = None if text is None else self._decode(cid, text)
            out = self._take_answers(cid, state)
            if state is not None and out:
                KSR.htable.sht_sets(SEQ_TABLE, cid, state.encode())
            return out
        finally:
            KSR.htable.sht_unlock(SEQ_TABLE, cid)

    def fold_due(self, noted_before: float) -> list[tuple[str, dict]]:
        """The sweep: the answers of every dialog with one noted before `noted_before`
        that nothing else has taken (no NOTIFY came), as (call_id, accept entry)."""
        out: list[tuple[str, dict]] = []
        for cid in self.answers.dialogs():
            if self.answers.oldest(cid) < noted_before:
                out += [(cid, e) for e in self.fold(cid)]
        return out

    # -- REFER -----------------------------------------------------------------------
    def refer_relayed(self, cid: str, refer_id: str, tag: str) -> None:
        now = time.time()
        self._with(cid, lambda s: s.refer_relayed(refer_id, tag, now), create=True)

    def refer_answered(self, cid: str, refer_id: str) -> None:
        now = time.time()
        self._with(cid, lambda s: s.refer_answered(refer_id, now))

    def note_answer(self, cid: str, refer_id: str, code: int) -> bool:
        """A REFER's 2xx, noted in one short step (what kamailio-native.cfg's reply route
        does without Python); False: the cfg lacks `referee_ans` (or nothing takes it)."""
        return self.on_answer is not None and self.answers.note(cid, refer_id, code)

    # -- NOTIFY ----------------------------------------------------------------------
    def verdict(self, cid: str, tag: str, cseq: int, first: bool) -> Verdict | None:
        """What admit would say now (nothing changes); None: not sequenced here."""
        now = time.time()
        return self._with(cid, lambda s: s.verdict(tag, cseq, first, now, self.timing),
                          reads_only=True)

    def admit(self, cid: str, tag: str, cseq: int, first: bool,
              hold: bool = False) -> Verdict | None:
        """"relay" (relay it now: it counts as sent), "hold" (call `suspend`), or None:
        the dialog is not sequenced here."""
        now = time.time()
        return self._with(cid, lambda s: s.admit(tag, cseq, first, now, self.timing, hold))

    def mark_sent(self, cid: str, tag: str, cseq: int) -> None:
        """tm's t_relay of this NOTIFY has returned: it is on the wire."""
        self._with(cid, lambda s: s.mark_sent(tag, cseq))

    def suspend(self, cid: str, tag: str, cseq: int, note: str = "") -> bool:
        """Suspend the current NOTIFY's transaction (creating it) into the place `admit`
        queued it in, with `note` (what the timer records before it resumes it); False if
        tm could not (the place is given up: relay it at once)."""
        ids = self._suspend_current()

        def attach(s: DialogOrder) -> bool:
            return s.attach(tag, cseq, *ids, note) and _flag_held(cid)

        if ids is None or not self._with(cid, attach):
            now = time.time()
            self._with(cid, lambda s: s.withdraw(tag, cseq, now))
            return ids is not None  # suspended, its place gone: tm times it out
        return True

    def requeue(self, cid: str, tag: str, cseq: int, delay_s: float) -> bool:
        """Suspend a NOTIFY again in its failure route (the transferor answered 491) and
        queue it to be sent again after `delay_s`."""
        ids = self._suspend_current()
        if ids is None:
            return False
        now = time.time()
        held = Held(tag, cseq, ids[0], ids[1], now, False, now + delay_s)
        self._with(cid, lambda s: s.hold(held) or _flag_held(cid), create=True)
        return True

    @staticmethod
    def _suspend_current() -> tuple[int, int] | None:
        if KSR.tmx.t_suspend() < 0:
            return None
        try:
            return int(KSR.pv.get("$T(id_index)")), int(KSR.pv.get("$T(id_label)"))
        except (TypeError, ValueError):
            return None

    # -- the timer -------------------------------------------------------------------
    def ahead(self, limit: int | None = None,
              now: float | None = None) -> list[tuple[str, Held]]:
        """The held NOTIFYs `due` would release now, released in a copy only: they stay
        held (whatever of their dialog comes meanwhile queues behind them) while the
        timer records them, so the record lists them before anything their leaving sets
        off -- the transferee's INVITE comes once its NOTIFY is answered.  2xx answers
        noted for their dialogs are taken in (stored), as every look does.  Give `due`
        the same `now`: a later one releases what the look did not see (its grace ran
        out meanwhile), and that one would be recorded only after it left."""
        now = time.time() if now is None else now
        out: list[tuple[str, Held]] = []
        for cid in self._held_dialogs():
            if limit is not None and len(out) >= limit:
                break
            room = None if limit is None else limit - len(out)
            def step(s: DialogOrder, room=room) -> list[Held]:
                s = copy.deepcopy(s)
                s.forget_stale(now, self.timing, HELD_LIMIT_S)
                return s.release(now, self.timing, room)

            out += [(cid, h) for h in self._with(cid, step, reads_only=True) or []]
        return out

    def due(self, limit: int | None = None,
            now: float | None = None) -> list[tuple[str, Held]]:
        """The held NOTIFYs to resume now (at most `limit`), dialog by dialog, each
        dialog's in CSeq order; they count as relayed from here on (resume them all, in
        this order, in this process, before anything else)."""
        cids = self._held_dialogs()
        if not cids:
            return []
        now = time.time() if now is None else now
        out: list[tuple[str, Held]] = []
        for cid in cids:
            if limit is not None and len(out) >= limit:
                break
            room = None if limit is None else limit - len(out)

            # The dialog's flag in referee_held is set and cleared only under its slot
            # lock, with the state: cleared after the lock, it could erase the flag of a
            # NOTIFY a worker held meanwhile, which no tick would then resume.
            def step(s: DialogOrder, cid=cid, room=room) -> tuple[list[Held], list[Held]]:
                stale = s.forget_stale(now, self.timing, HELD_LIMIT_S)
                released = s.release(now, self.timing, room)
                if not s.held:
                    KSR.htable.sht_rm(HELD_TABLE, cid)
                return released, stale

            res = self._with(cid, step,
                             missing=lambda cid=cid: KSR.htable.sht_rm(HELD_TABLE, cid))
            if res is None:
                continue
            released, stale = res  # type: ignore[misc]
            for h in stale:
                self.log(f"NOTIFY {cid} CSeq {h.cseq} held {now - h.since:.0f} s: dropped "
                         "(tm has timed its transaction out)")
            out += [(cid, h) for h in released]
        return out

    def _held_dialogs(self) -> list[str]:
        return table_keys(HELD_TABLE)


def _flag_held(cid: str) -> bool:
    """Mark the dialog as having held NOTIFYs (the timer scans referee_held); called under
    the dialog's slot lock."""
    KSR.htable.sht_sets(HELD_TABLE, cid, "1")
    return True


LATER_TABLE = "referee_later"


class Deferred:
    """Store calls a reply route must not wait for, kept in shared memory until they are
    made elsewhere: a Redis round trip in a reply route would hold that reply while the
    next message of the transfer overtakes it.

        referee_later   Call-ID -> JSON list of entries (the slot lock guards it)

    Entries: {"k": "accept", ...} a 2xx answer to a REFER, recorded with the next event of
    its dialog (the first NOTIFY, the transferor's BYE, the tied INVITE), or by the sweep
    after `accept_after_s` (a transferee that never NOTIFYs); {"k": "note"|"apply", ...}
    what the transferor answered to a NOTIFY, stored by the dialog's next event or the
    next sweep, whichever comes first.  A Kamailio
    restart loses what is still here (at most one sweep interval of answers).
    """

    def __init__(self, log: Callable[[str], None], accept_after_s: float = 1.0) -> None:
        self.log = log
        self.accept_after_s = accept_after_s

    def add(self, cid: str, entry: dict) -> bool:
        """False: the cfg lacks the table (the caller makes the call itself)."""
        try:
            KSR.htable.sht_lock(LATER_TABLE, cid)
        except Exception:  # noqa: BLE001 - htable missing
            return False
        try:
            have = _load(KSR.htable.sht_get(LATER_TABLE, cid))
            entry = {**entry, "t": round(time.time(), 3)} if "t" not in entry else entry
            if entry["k"] == "accept" and any(
                    e["k"] == "accept" and e.get("r") == entry.get("r") for e in have):
                return True  # a retransmitted 2xx
            have.append(entry)
            return KSR.htable.sht_sets(LATER_TABLE, cid, json.dumps(
                have, separators=(",", ":"))) >= 0
        finally:
            KSR.htable.sht_unlock(LATER_TABLE, cid)

    def take(self, cid: str) -> list[dict]:
        """Everything the dialog's reply routes left for later (removed): its next event
        stores it first, in its order."""
        return self._take(cid, lambda e: True)

    def due(self) -> list[tuple[str, dict]]:
        """Entries to store now, taken: every answer to a NOTIFY, and 2xx answers to REFERs
        older than accept_after_s; (call_id, entry), oldest first."""
        cids = table_keys(LATER_TABLE)
        limit = time.time() - self.accept_after_s
        out: list[tuple[str, dict]] = []
        for cid in cids:
            out += [(cid, e) for e in self._take(
                cid, lambda e: e["k"] != "accept" or e.get("t", 0) <= limit)]
        return sorted(out, key=lambda ce: ce[1].get("t", 0))

    def _take(self, cid: str, which: Callable[[dict], bool]) -> list[dict]:
        try:
            KSR.htable.sht_lock(LATER_TABLE, cid)
        except Exception:  # noqa: BLE001
            return []
        try:
            text = KSR.htable.sht_get(LATER_TABLE, cid)
            if text is None:
                return []
            have = _load(text)
            taken = [e for e in have if which(e)]
            if not taken:
                return []
            rest = [e for e in have if not which(e)]
            if rest:
                KSR.htable.sht_sets(LATER_TABLE, cid, json.dumps(rest, separators=(",", ":")))
            else:
                KSR.htable.sht_rm(LATER_TABLE, cid)
            return taken
        finally:
            KSR.htable.sht_unlock(LATER_TABLE, cid)


def _load(text) -> list[dict]:
    if text is None:
        return []
    try:
        value = json.loads(str(text))
    except ValueError:
        return []  # nothing else writes here: a torn value is dropped
    return [e for e in value if isinstance(e, dict) and "k" in e] if isinstance(value, list) \
        else []
