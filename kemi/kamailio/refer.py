"""REFER: checked against policy (kemi.core.transfer), against the dialog index when it
is on (kemi.core.replaces), recorded, and relayed -- or, to an anchored Asterisk in
accept mode, answered here (kemi.kamailio.anchored)."""

from __future__ import annotations

import secrets
import time

import KSR  # provided by app_python3

from kemi.core import replaces, transfer
from kemi.core.anchor import xfer_id
from kemi.core.cseq import CSeqError, parse_cseq_number
from kemi.core.state import Event
from kemi.kamailio.anchored import AnchoredRoutes
from kemi.kamailio.glue import CONTINUE, answer, arm_routes, header_values, log, pv, source
from kemi.kamailio.marks import mark_dialog
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services
from kemi.storage.policy_cache import PolicyUnavailable
from kemi.storage.resp import RedisError

# A REFER's record is refused by Redis if its script runs later than the budget plus this
# (the REFER was answered 503 meanwhile): the error of reading Redis's clock, not policy.
LATE_MARGIN_S = 0.05


class ReferRoutes:
    def __init__(self, services: Services, recorder: Recorder,
                 anchoring: AnchoredRoutes) -> None:
        self.s = services
        self.rec = recorder
        self.anchoring = anchoring

    def on_refer(self) -> int:
        cseq = int((pv("$cs") or "0").strip() or 0)
        msg = transfer.ReferMessage(
            call_id=pv("$ci") or "",
            cseq=cseq,
            from_uri=pv("$hdr(From)") or "",
            from_tag=pv("$ft") or "",
            to_uri=pv("$hdr(To)") or "",
            to_tag=pv("$tt") or "",
            request_uri=pv("$ru") or "",
            source_ip=pv("$si") or "",
            refer_to=header_values("Refer-To"),
            referred_by=header_values("Referred-By"),
            contact=pv("$hdr(Contact)"),
            refer_sub=pv("$hdr(Refer-Sub)"),
            auth_user=pv("$au"),
        )
        try:
            policy = self.s.policy.current()
        except PolicyUnavailable as exc:
            log(KSR.err, f"REFER {msg.call_id}: policy unavailable: {exc}")
            return answer(
                transfer.Reply(500, "Server Internal Error", "transfer policy unavailable")
            )
        verdict = transfer.check_refer(msg, policy)
        if isinstance(verdict, transfer.Reply):
            log(KSR.notice,
                 f"REFER {msg.call_id}/{cseq} answered {verdict.code}: {verdict.warning}")
            return answer(verdict)
        transferor = plan_transferor = verdict.transferor
        if self.s.dialog_index and msg.to_tag:
            judged = self._check_dialog(verdict, msg)
            if isinstance(judged, int):
                return judged
            transferor = judged.transferor
        if self.s.dialog_index and verdict.replaces is not None:
            judged = self._check_replaces(verdict, transferor or plan_transferor)
            if judged is not None:
                return judged
        return self._track(verdict)

    def _check_dialog(self, plan: transfer.ReferPlan, msg: transfer.ReferMessage
                            ) -> int | replaces.ReferDialog:
        """An in-dialog REFER must be in a dialog the index knows, from one of its parties
        (by tag and by source): a To-tag is no proof of a dialog (anyone can invent one
        to pass the out-of-dialog gate), a From is no proof of a party.  An int when
        answered, else what the index says of the dialog (noted on the record)."""
        try:
            found = self.s.dialogs.find(msg.call_id, msg.from_tag, msg.to_tag)
        except RedisError as exc:
            return self.redis_down(plan, exc)
        ok = replaces.check_refer_dialog(found, msg.from_tag, source(), msg.auth_user,
                                         self.s.host_only)
        if isinstance(ok, transfer.Reply):
            log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered {ok.code}: "
                             f"{ok.warning}")
            return answer(ok)
        if ok.transferee_src:
            plan.fields["transferee_src"] = ok.transferee_src
        return ok

    def _check_replaces(self, plan: transfer.ReferPlan, transferor: str) -> int | None:
        """The dialog an attended transfer names, judged against the index: an int when
        the REFER was answered (or Redis is away), None to go on and record it."""
        rp = plan.replaces
        try:
            found = self.s.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
        except RedisError as exc:
            return self.redis_down(plan, exc)
        ok = replaces.check_refer_replaces(rp, found, transferor,
                                           self.s.policy.current(), plan.decision.tenant,
                                           source=source(), auth_user=pv("$au"),
                                           host_only=self.s.host_only)
        if isinstance(ok, transfer.Reply):
            log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered {ok.code}: "
                             f"{ok.warning}")
            return answer(ok)
        plan.fields.update(ok.fields())
        return None

    def _track(self, plan: transfer.ReferPlan) -> int:
        now = time.time()
        d = plan.decision
        expiry = min(plan.expiry_s, self.s.settings.transfer.max_open_s)
        asterisk, mode = self.anchoring.choose(plan)
        token = ""
        if self.s.settings.kamailio.tie_token and mode != "accept":
            token = plan.fields["tie_token"] = secrets.token_hex(6)
        try:
            res = self.s.store.create(
                plan.call_id,
                plan.refer_id,
                plan.fields,
                now=now,
                deadline=now + expiry,
                max_per_call=d.max_transfers_per_call,
                transferor=plan.transferor,
                rate_limit=d.refers_per_minute,
                transferee=plan.transferee,
                target=plan.target,
                answered_after_s=self.s.settings.redis.timeout_ms / 1000.0 + LATE_MARGIN_S,
            )
        except RedisError as exc:
            return self.redis_down(plan, exc)
        if res.reason == "too-late":  # Redis ran it past our budget: nothing was recorded
            return self.redis_down(plan, RedisError("Redis answered past the budget"))
        if not res.created and res.reason != "duplicate":
            reply = transfer.limit_reply(res.reason, d)
            log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered 403: {reply.warning}")
            return answer(reply)
        if mode == "accept":
            return self.anchoring.accept(plan, asterisk, duplicate=not res.created, now=now)
        if asterisk is not None:
            # Relayed to the anchored Asterisk: its AGI finds the record by this header.
            KSR.hdr.append(f"X-Transfer-Id: {xfer_id(plan.call_id, plan.refer_id)}\r\n")
        if token and res.created:
            refer_to = header_values("Refer-To")[0]
            KSR.hdr.remove("Refer-To")
            KSR.hdr.append(f"Refer-To: {transfer.with_tie_token(refer_to, token)}\r\n")
        self._follow(plan.call_id, plan.refer_id, plan.nosub_requested)
        log(
            KSR.info,
            f"REFER {plan.call_id}/{plan.refer_id} {plan.transferor} -> {plan.target_uri} "
            f"allowed ({d.rule})",
        )
        return CONTINUE

    def redis_down(self, plan: transfer.ReferPlan, exc: Exception) -> int:
        k = self.s.settings.kamailio
        if k.redis_fail_mode == "open":
            now = time.time()
            spooled = self.rec.spool(
                "create", call_id=plan.call_id, refer_id=plan.refer_id, fields=plan.fields,
                now=now, deadline=now + min(plan.expiry_s, self.s.settings.transfer.max_open_s),
                transferor=plan.transferor, transferee=plan.transferee, target=plan.target,
            )
            log(KSR.err, f"REFER {plan.call_id}/{plan.refer_id} relayed while Redis is away "
                          f"({exc}); {'spooled' if spooled else 'NOT RECORDED'}")
            self._follow(plan.call_id, plan.refer_id, plan.nosub_requested)
            return CONTINUE
        log(KSR.err, f"REFER {plan.call_id}/{plan.refer_id} refused 503 (Redis: {exc})")
        return answer(
            transfer.Reply(
                503, "Service Unavailable", "transfer state store unreachable", k.retry_after_s
            )
        )

    def _follow(self, call_id: str, refer_id: str, nosub: bool) -> None:
        """Arm the REFER's reply and failure routes and mark its dialog for BYEs."""
        KSR.pv.sets("$avp(rf_cid)", call_id)
        KSR.pv.sets("$avp(rf_id)", refer_id)
        KSR.pv.sets("$avp(rf_nosub)", "1" if nosub else "0")
        mark_dialog(call_id, pv("$ft") or "", refer_id)
        self.s.order.refer_relayed(call_id, refer_id, pv("$ft") or "")
        arm_routes()

    def on_unrelayed(self, rc: int) -> int:
        """A REFER tm could not relay (`rc`: t_relay's error): answered here, and, since no
        reply or failure route will ever see it, its transfer closed as rejected with
        that answer."""
        if (pv("$rm") or "").upper() != "REFER":
            return CONTINUE
        try:
            refer_id = str(parse_cseq_number(pv("$cs")))
        except CSeqError:
            return CONTINUE
        reply = transfer.unrelayed_reply(rc)
        code = reply.code
        answer(reply)
        call_id = pv("$ci") or ""
        self.s.order.refer_answered(call_id, refer_id)
        res = self.rec.apply(call_id, refer_id, Event.REFER_REJECTED,
                          {"refer_reply": str(code), "refer_unrelayed": str(rc)},
                          f"{code} by the proxy: t_relay failed ({rc})")
        if res is not None and res.final:
            log(KSR.notice, f"REFER {call_id}/{refer_id} could not be relayed (t_relay "
                             f"{rc}): answered {code}, transfer rejected")
        return CONTINUE
