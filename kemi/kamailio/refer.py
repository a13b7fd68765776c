"""REFER: checked against policy and, with the index on, against the dialog index
(kemi.core.verdicts), recorded, and relayed -- or, to an anchored Asterisk in accept
mode, answered here (kemi.kamailio.anchored)."""

from __future__ import annotations

import secrets
import time

import KSR  # provided by app_python3

from kemi.core import transfer, verdicts
from kemi.core.cseq import CSeqError, parse_cseq_number
from kemi.kamailio import unstored
from kemi.kamailio.anchored import ACCEPT_DETAIL, AnchoredRoutes
from kemi.kamailio.glue import CONTINUE, arm_routes, header_values, pv, source
from kemi.kamailio.marks import mark_dialog
from kemi.kamailio.perform import perform
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
            return perform(verdicts.policy_unavailable(f"REFER {msg.call_id}", str(exc)).actions,
                           self.rec)
        checked = verdicts.refer(msg, policy)
        rc = perform(checked.actions, self.rec)
        if checked.answered:
            return rc
        plan = checked.value
        assert plan is not None
        transferor = plan.transferor
        if self.s.dialog_index and msg.to_tag:
            try:
                found = self.s.dialogs.find(msg.call_id, msg.from_tag, msg.to_tag)
            except RedisError as exc:
                return self._without_store(plan, str(exc))
            judged = verdicts.refer_dialog(plan, found, msg.from_tag, source(), msg.auth_user,
                                           self.s.host_only)
            if judged.answered:
                return perform(judged.actions, self.rec)
            assert judged.value is not None
            transferor = judged.value.transferor or transferor
        if self.s.dialog_index and plan.replaces is not None:
            rp = plan.replaces
            try:
                found = self.s.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
            except RedisError as exc:
                return self._without_store(plan, str(exc))
            judged_rp = verdicts.refer_replaces(
                plan, found, transferor, self.s.policy.current(), plan.decision.tenant,
                source=source(), auth_user=msg.auth_user, host_only=self.s.host_only)
            if judged_rp.answered:
                return perform(judged_rp.actions, self.rec)
        return self._track(plan)

    def _track(self, plan: transfer.ReferPlan) -> int:
        now = time.time()
        d = plan.decision
        expiry = min(plan.expiry_s, self.s.settings.transfer.max_open_s)
        asterisk, mode = self.anchoring.choose(plan)
        plan.fields["node"] = f"{pv('$Ri')}:{pv('$Rp')}"  # where to look: `transfers --live`
        # referee answers an anchored REFER 202 itself: recorded accepted by its create
        then = self.anchoring.accept_event(plan) if mode == "accept" else None
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
                then=then,
                then_detail=ACCEPT_DETAIL if then else "",
            )
        except RedisError as exc:
            return self._without_store(plan, str(exc))
        if res.reason == "too-late":  # Redis ran it past our budget: nothing was recorded
            return self._without_store(plan, "Redis answered past the budget")
        if not res.created and res.reason != "duplicate":
            return perform(verdicts.refer_over_limit(plan, res.reason).actions, self.rec)
        if mode == "accept":
            return self.anchoring.accept(plan, asterisk, duplicate=not res.created, now=now)
        if asterisk is not None:
            self.anchoring.mark_relayed(plan)
        if token and res.created:
            refer_to = header_values("Refer-To")[0]
            KSR.hdr.remove("Refer-To")
            KSR.hdr.append(f"Refer-To: {transfer.with_tie_token(refer_to, token)}\r\n")
        self._follow(plan)
        return perform(verdicts.refer_allowed(plan).actions, self.rec)

    def _without_store(self, plan: transfer.ReferPlan, why: str) -> int:
        """Redis away: relayed with its record spooled, or refused 503 ([kamailio]
        redis_fail_mode)."""
        k = self.s.settings.kamailio
        v = verdicts.refer_without_store(
            plan, why, fail_open=k.redis_fail_mode == "open", now=time.time(),
            max_open_s=self.s.settings.transfer.max_open_s, retry_after_s=k.retry_after_s)
        rc = perform(v.actions, self.rec)
        if v.value:
            self._follow(plan)
            unstored.remember(plan, self.s.settings.transfer.max_open_s)
        return rc

    def _follow(self, plan: transfer.ReferPlan) -> None:
        """Arm the REFER's reply and failure routes and mark its dialog for BYEs."""
        call_id, refer_id, tag = plan.call_id, plan.refer_id, plan.fields["from_tag"]
        KSR.pv.sets("$avp(rf_cid)", call_id)
        KSR.pv.sets("$avp(rf_id)", refer_id)
        KSR.pv.sets("$avp(rf_nosub)", "1" if plan.nosub_requested else "0")
        mark_dialog(call_id, tag, refer_id)
        self.s.order.refer_relayed(call_id, refer_id, tag)
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
        call_id = pv("$ci") or ""
        perform(verdicts.refer_unrelayed(call_id, refer_id, rc).actions, self.rec)
        self.s.order.refer_answered(call_id, refer_id)
        return CONTINUE
