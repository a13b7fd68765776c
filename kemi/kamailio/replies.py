"""Replies to the requests referee follows: the REFER's answer (its 2xx relayed at once,
noted in shared memory and recorded with the next event: kemi.kamailio.answers.Answers
and Deferred), the transferee's INVITE's
outcome, the transferor's answer to a NOTIFY, and the failure route's local timeouts."""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core import transfer
from kemi.core.state import Event
from kemi.kamailio import metrics
from kemi.kamailio.anchored.cseq import restore_reply_cseq
from kemi.kamailio.glue import CONTINUE, pv
from kemi.kamailio.notify import NotifyRoutes
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services


class ReplyRoutes:
    def __init__(self, services: Services, recorder: Recorder, notify: NotifyRoutes) -> None:
        self.s = services
        self.rec = recorder
        self.notify = notify

    def on_reply(self, code: int) -> int:
        restore_reply_cseq()
        method = pv("$rm")
        if pv("$avp(rf_dlg)") == "1" and method == "INVITE":
            self.rec.record_response(code)
        if method == "NOTIFY":
            if 200 <= code < 300:
                self.notify.delivered(code)
            return CONTINUE  # a failure is seen by the failure route
        call_id = pv("$avp(rf_cid)")
        if not call_id or code < 200:
            return CONTINUE
        refer_id = pv("$avp(rf_id)")
        if method == "REFER":
            event = transfer.refer_response_event(
                code, pv("$avp(rf_nosub)") == "1", pv("$hdr(Refer-Sub)")
            )
            # Relayed at once; recorded with the first NOTIFY the transferor accepts (a
            # Redis trip here would let that NOTIFY overtake this 2xx).  Noted in one step
            # (kamailio-native.cfg does the same without Python), taken into the order
            # state and the deferred accepts before anything of the dialog goes on.
            if event is Event.REFER_ACCEPTED and self.s.order.note_answer(
                    call_id, refer_id or "", code):
                metrics.bump("refers_accepted")
                return CONTINUE
            # A cfg without referee_ans: both written here, the accept first, so the
            # first NOTIFY let go records it first.
            deferred = event is Event.REFER_ACCEPTED and self.s.later.add(
                call_id, {"k": "accept", "r": refer_id or "", "c": code})
            self.s.order.refer_answered(call_id, refer_id or "")
            if event in (Event.REFER_ACCEPTED, Event.REFER_ACCEPTED_NOSUB):
                metrics.bump("refers_accepted")
            if deferred:
                return CONTINUE
        elif method == "INVITE":
            event = transfer.invite_response_event(code)
        else:
            return CONTINUE
        if event is None:
            return CONTINUE
        self.rec.apply(call_id, refer_id, event, {f"{method.lower()}_reply": str(code)}, str(code))
        return CONTINUE

    def on_failure(self) -> int:
        # Local timeouts (408) never pass a reply route: they are seen only here.
        code = int(KSR.pv.get("$T_reply_code") or 0)
        if (pv("$rm") or "").upper() == "NOTIFY" and pv("$avp(rf_nfy)"):
            return self.notify.on_failure(code)
        return self.on_reply(code)
