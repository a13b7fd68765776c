"""The transferee's NOTIFYs: read (400/415 for what cannot be used), recorded, and relayed
in their turn (kemi.core.order via kemi.kamailio.sequencer) -- never before the REFER's
2xx or an earlier NOTIFY; what the transferor answered is recorded too."""

from __future__ import annotations

import json
import time
import traceback

import KSR  # provided by app_python3

from kemi.core import transfer, verdicts
from kemi.core.cseq import CSeqError, parse_cseq_number
from kemi.core.order import Held
from kemi.core.state import Event
from kemi.kamailio.glue import CONTINUE, HANDLED, arm_routes, log, pv
from kemi.kamailio.perform import perform
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.sequencer import HELD_LIMIT_S
from kemi.kamailio.services import Services
from kemi.storage.resp import RedisError


def notify_note() -> dict | None:
    """What on_notify noted on the NOTIFY's transaction."""
    try:
        note = json.loads(pv("$avp(rf_nfy)") or "")
    except ValueError:
        return None
    return note if isinstance(note, dict) else None


class NotifyRoutes:
    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.s = services
        self.rec = recorder
        self._resumed: list[tuple[str, dict]] = []  # relayed by t_continue, to record
        # held NOTIFYs the timer recorded before resuming them: (tm index, label) ->
        # (their note, when)
        self._ahead: dict[tuple[int, int], tuple[dict, float]] = {}

    def on_notify(self) -> int:
        """A refer NOTIFY: read (400/415 for what cannot be used), its event recorded,
        noted on its transaction so the transferor's answer is recorded too, and relayed
        in its turn (kemi.core.order) -- never before the REFER's 2xx or an earlier NOTIFY."""
        event_hdr = pv("$hdr(Event)")
        ctype = pv("$hdr(Content-Type)")
        if not transfer.is_refer_notify(event_hdr, ctype):
            return CONTINUE
        if KSR.tm.t_check_trans() == 0:
            # A retransmission: tm has re-sent the last answer (none while it is held).
            # Handled before anything else: it must neither be recorded again nor queued.
            return HANDLED
        call_id = pv("$ci") or ""
        read = verdicts.notify(call_id, transfer.NotifyMessage(
            event=event_hdr,
            subscription_state=pv("$hdr(Subscription-State)"),
            content_type=ctype,
            body=pv("$rb") or "",
        ))
        if read.answered:
            return perform(read.actions, self.rec)
        perform(read.actions, self.rec)  # a malformed Subscription-State rewritten
        facts = read.value
        assert facts is not None
        ruri = self._target(call_id, facts.refer_id)
        status = facts.status
        fields = {"last_notify": str(status.code) if status else "none"}
        if facts.terminated and status is not None:
            fields["final_sipfrag"] = f"{status.code} {status.reason}"
        deadline = None
        if facts.expires and not facts.terminated:
            deadline = time.time() + min(facts.expires, self.s.settings.transfer.max_open_s)
        try:
            cseq: int | None = parse_cseq_number(pv("$cs"))
        except CSeqError:
            cseq = None  # sanity_check lets few through; relayed unordered, recorded
        note = {
            "e": str(facts.event), "r": facts.refer_id, "f": fields, "dl": deadline,
            "d": f"{status.code} {status.reason}" if status else "no body",
            "c": cseq, "t": pv("$ft") or "", "x": facts.terminated, "a": False,
        }
        if ruri is not None:
            note["u"] = ruri  # a held one is resumed without it: set again then
        first = status is not None and status.code == 100
        verdict = None if cseq is None else self.s.order.verdict(call_id, note["t"], cseq, first)
        if verdict != "hold":
            # It may leave now: recorded first, then committed and relayed at once (a
            # Redis trip between the commit and the send could let a later one overtake).
            self.record_notify(call_id, note)
        arm_routes()
        if verdict is None or cseq is None:
            KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
            return CONTINUE  # not a dialog referee orders: the cfg relays it
        if self.s.order.admit(call_id, note["t"], cseq, first,
                            hold=verdict == "hold") == "hold":
            KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
            waiting = "" if note["a"] else json.dumps(note, separators=(",", ":"))
            if self.s.order.suspend(call_id, note["t"], cseq, waiting):
                log(KSR.info, f"NOTIFY {call_id} CSeq {cseq} held: an earlier message "
                               "of its transfer is still on its way")
                return HANDLED
            if not note["a"]:
                self.record_notify(call_id, note)
        KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
        # Relayed here rather than by the cfg, so that the next NOTIFY may follow as soon
        # as t_relay has returned (sent) instead of waiting order_grace_ms.
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()
        self.s.order.mark_sent(call_id, note["t"], cseq)
        return HANDLED

    def _target(self, call_id: str, refer_id: str | None) -> str | None:
        """A NOTIFY whose Request-URI is this proxy itself -- an Asterisk with pjsip's
        rewrite_contact = yes sends the subscription's NOTIFYs to the address the
        transferor's messages came from -- goes to the transferor's Contact from its
        REFER instead of looping back here (answered 404 while the record said
        success).  Returns the Request-URI set, or None."""
        if not pv("$tt") or not KSR.is_myself_ruri():
            return None
        try:
            contact = self.s.store.transferor_contact(call_id, refer_id)
        except RedisError as exc:
            log(KSR.err, f"NOTIFY {call_id} to this proxy itself: no transferor "
                          f"Contact (Redis: {exc})")
            return None
        if contact is None:
            log(KSR.notice, f"NOTIFY {call_id} to this proxy itself ({pv('$ru')}): "
                             "no transfer with the transferor's Contact")
            return None
        log(KSR.info, f"NOTIFY {call_id} to this proxy itself ({pv('$ru')}): sent to "
                       f"the transferor's Contact {contact}")
        KSR.pv.sets("$ru", contact)
        # rr took the Request-URI for a strict router's and set the destination to this
        # proxy: the Contact is where it goes.
        KSR.pv.unset("$du")
        return contact

    def record_notify(self, call_id: str, note: dict) -> None:
        """A NOTIFY's event into the record, after any 2xx to a REFER of the dialog that
        waited for it; `note` learns which transfer."""
        res = self.rec.apply_after_accepts(call_id, note["r"], Event(note["e"]), note["f"],
                                           note["d"], note["dl"], seq=note["c"])
        if res is not None and res.refer_id:
            note["r"] = res.refer_id
        note["a"] = True

    def record_ahead(self, ahead: list[tuple[str, Held]]) -> None:
        """The order timer: the held NOTIFYs about to be released, recorded while they are
        still held -- after the 2xx to the REFER they waited for.  Recorded once they had
        left, the transferee's next message (its INVITE, sent when the transferor has
        answered the NOTIFY) was recorded before them by another worker.  What is not
        recorded here (no note, an error) is recorded once it has left, as before."""
        now = time.monotonic()
        self._ahead = {k: v for k, v in self._ahead.items() if now - v[1] < HELD_LIMIT_S}
        for call_id, h in ahead:
            key = (h.tindex, h.tlabel)
            if not h.note or key in self._ahead:
                continue  # recorded already, or a 491 retry (recorded before it was held)
            try:
                note = json.loads(h.note)
                if not isinstance(note, dict) or note.get("a"):
                    continue
                self.record_notify(call_id, note)
            except Exception as exc:  # noqa: BLE001 - one bad note must not stop the rest
                log(KSR.err, f"held NOTIFY {call_id} CSeq {h.cseq} not recorded ahead: "
                              f"{exc!r}\n{traceback.format_exc()}")
                continue
            self._ahead[key] = (note, now)

    def resume(self) -> int:
        """A held NOTIFY resumed (tm t_continue): arm its routes again before the cfg (or
        kemi.kamailio.proxy) relays it -- what was armed before the suspension went with it -- and
        mark its Request-URI new: a NOTIFY sent again after a 491 was suspended in its
        failure route, where tm counts the Request-URI as used ("no branches").  Its
        note learns what the timer recorded (the transfer, that it is recorded)."""
        arm_routes()
        try:
            key = (int(pv("$T(id_index)") or -1), int(pv("$T(id_label)") or -1))
        except ValueError:
            key = (-1, -1)
        recorded = self._ahead.pop(key, None)
        if recorded is not None:
            KSR.pv.sets("$avp(rf_nfy)", json.dumps(recorded[0], separators=(",", ":")))
        note = notify_note()
        target = (note or {}).get("u")
        KSR.pv.sets("$ru", target or pv("$ru") or "")
        if target:
            KSR.pv.unset("$du")  # (see _notify_target)
        return CONTINUE

    def resumed(self) -> int:
        """A held NOTIFY has been relayed (after route[REFEREE_RESUME]'s t_relay, or the
        proxy's).  Its event is recorded by the timer once t_continue has returned: tm
        holds the transaction's reply lock for the whole resumed route, and a Redis trip
        there would hold the transferor's answer while the next message overtakes it."""
        note = notify_note()
        if note is not None and not note.get("a"):
            self._resumed.append((pv("$ci") or "", note))
        return CONTINUE

    def record_resumed(self) -> None:
        done, self._resumed = self._resumed, []
        for call_id, note in done:
            try:
                self.record_notify(call_id, note)
            except Exception as exc:  # noqa: BLE001 - one bad note must not stop the rest
                log(KSR.err, f"NOTIFY {call_id} not recorded: {exc!r}\n"
                              f"{traceback.format_exc()}")

    def delivered(self, code: int) -> None:
        """The transferor accepted a NOTIFY: for the final one, the record says so."""
        note = notify_note()
        if note is not None and note.get("x"):
            self._note_delivery(note, code)

    def _note_delivery(self, note: dict, code: int, extra: dict | None = None) -> None:
        """What the transferor answered to a NOTIFY, beside the transfer's state (stored
        by the sweep: kemi.kamailio.sequencer.Deferred)."""
        fields = {"notify_reply": str(code), **(extra or {})}
        if note.get("x"):
            fields["final_notify_reply"] = str(code)
        self.rec.defer(pv("$ci") or "", {
            "k": "note", "r": note.get("r"), "n": note.get("c"), "f": fields,
            "d": f"NOTIFY CSeq {note.get('c')} ({note.get('d', '')}) answered {code} by the "
                 "transferor"})

    def on_failure(self, code: int) -> int:
        """The transferor refused a NOTIFY (or never answered: 408).  491 -- linphone,
        while a transaction of its own is open -- is retried; a progress NOTIFY still
        refused is answered 200 to the transferee by referee, so its subscription, and its
        final NOTIFY, go on.  What the transferor answered is recorded; a 481 ends the
        subscription (RFC 6665)."""
        note = notify_note()
        if note is None:
            return CONTINUE
        call_id = pv("$ci") or ""
        k = self.s.settings.kamailio
        tries = int(pv("$avp(rf_491)") or 0)
        final = bool(note.get("x"))
        if code == 491 and tries < k.notify_491_retries and note.get("c") is not None:
            KSR.pv.sets("$avp(rf_491)", str(tries + 1))
            if self.s.order.requeue(call_id, note.get("t", ""), int(note["c"]),
                                  k.notify_491_retry_ms / 1000.0):
                log(KSR.notice, f"NOTIFY {call_id} CSeq {note['c']} refused 491 by the "
                                 f"transferor: sent again in {k.notify_491_retry_ms} ms")
                return HANDLED
        if code == 491 and not final:
            KSR.tm.t_reply(200, "OK")
            log(KSR.notice, f"NOTIFY {call_id} CSeq {note.get('c')} refused 491 "
                             f"{tries + 1} times: the transferee is told 200 so that its "
                             "final NOTIFY still comes")
            self._note_delivery(note, code, {"notify_491": "answered 200 by referee"})
            return HANDLED
        if final:
            log(KSR.warn, f"final NOTIFY {call_id} ({note.get('d', '')}) refused {code} "
                           "by the transferor: it has not learnt the outcome")
        self._note_delivery(note, code)
        if code == 481:
            self.rec.defer(call_id, {"k": "apply", "r": note.get("r"), "n": note.get("c"),
                                  "e": str(Event.NOTIFY_481), "f": {"notify_reply": "481"},
                                  "d": "481"})
        return CONTINUE
