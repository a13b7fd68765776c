"""The INVITEs referee has something to say about: one carrying Replaces (RFC 3891,
judged against the dialog index and the attended transfer that named it), the
transferee's referred INVITE (tied to its own transfer), and, with the index on, every
initial INVITE (recorded)."""

from __future__ import annotations

import time

import KSR  # provided by app_python3

from kemi.core import replaces, ruri, transfer
from kemi.core.dialogs import DialogEvent
from kemi.core.state import Event
from kemi.kamailio.glue import CONTINUE, answer, arm_routes, header_values, log, pv, source
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services
from kemi.storage.policy_cache import PolicyUnavailable
from kemi.storage.resp import RedisError


class InviteRoutes:
    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.s = services
        self.rec = recorder

    def on_invite(self) -> int:
        if pv("$tt"):
            return CONTINUE  # re-INVITE: not a triggered request
        bad = transfer.bad_call_id(pv("$ci") or "")
        if bad is not None:
            if header_values("Replaces") or KSR.hdr.is_present("Referred-By") > 0 \
                    or KSR.hdr.is_present(transfer.TIE_HEADER) > 0:
                log(KSR.notice, f"INVITE answered {bad.code}: {bad.warning}")
                return answer(bad)
            log(KSR.notice, f"INVITE not indexed: {bad.warning}")
            return CONTINUE  # an ordinary call referee has nothing to say about
        pasted = self._repair_request_uri()
        if isinstance(pasted, int):
            return pasted
        if self.s.dialog_index:
            rc = self._check_invite_replaces(pasted)
            if rc is not None:
                return rc
            self.rec.record_dialog(DialogEvent.INVITE)
            KSR.pv.sets("$avp(rf_dlg)", "1")
            arm_routes()
        if not (KSR.hdr.is_present("Referred-By") > 0
                or KSR.hdr.is_present(transfer.TIE_HEADER) > 0):
            return CONTINUE  # an ordinary call pays nothing
        return self._tie_referred_invite()

    def _repair_request_uri(self) -> int | list[str] | None:
        """ua-quirks: header fields pasted into an initial INVITE's Request-URI (kemi.core.ruri):
        the Request-URI loses them, a pasted Replaces becomes the header it meant (then
        checked like any other); the Replaces values to judge, or the reply sent."""
        ruri_text = pv("$ru") or ""
        if "?" not in ruri_text:
            return None
        call_id = pv("$ci") or ""
        fix = ruri.repair_request_uri(ruri_text, header_values("Replaces"))
        if fix is None:
            return None
        if isinstance(fix, transfer.Reply):
            log(KSR.notice, f"INVITE {call_id} with headers in its Request-URI answered "
                             f"{fix.code}: {fix.warning}")
            return answer(fix)
        KSR.pv.sets("$ru", fix.request_uri)
        added: list[str] = []
        if fix.replaces is not None:
            KSR.hdr.append(f"Replaces: {fix.replaces}\r\n")
            require = ",".join(header_values("Require")).lower()
            if "replaces" not in require:
                KSR.hdr.append("Require: replaces\r\n")
            added = [fix.replaces]
        log(KSR.notice, f"INVITE {call_id}: Request-URI repaired to {fix.request_uri} "
                         f"({fix.describe()})")
        return added or None

    def _check_invite_replaces(self, repaired: list[str] | None = None) -> int | None:
        """RFC 3891 for an INVITE carrying Replaces, answered here before the target sees
        it; None: no Replaces, or a Replaces to relay (tied to its transfer if any).
        `repaired`: the Replaces referee itself just added (not yet readable as a header)."""
        values = repaired or header_values("Replaces")
        if not values:
            return None
        call_id = pv("$ci") or ""
        rp = replaces.read_invite_replaces(values, "INVITE")
        if isinstance(rp, transfer.Reply):
            log(KSR.notice, f"INVITE {call_id} with Replaces answered {rp.code}: {rp.warning}")
            return answer(rp)
        try:
            sender = transfer.parse_name_addr(pv("$hdr(From)") or "", "From").uri.aor
        except transfer.SipParseError as exc:
            return answer(transfer.Reply(400, "Bad Request", str(exc)))
        try:
            found = self.s.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
            approved = []
            for xcid, rid, _target in self.s.store.find_for_invite(sender):
                record = self.s.store.get(xcid, rid) or {}
                if record.get("replaces"):
                    approved.append(replaces.ApprovedRefer(
                        sender, record["replaces"], xcid, rid,
                        record.get("transferee_src", "")))
        except RedisError as exc:
            k = self.s.settings.kamailio
            if k.redis_fail_mode == "open":
                log(KSR.err, f"INVITE {call_id} with Replaces relayed unchecked (Redis: {exc})")
                return None
            log(KSR.err, f"INVITE {call_id} with Replaces refused 503 (Redis: {exc})")
            return answer(transfer.Reply(
                503, "Service Unavailable", "dialog index unreachable", k.retry_after_s
            ))
        try:
            policy = self.s.policy.current()
        except PolicyUnavailable:
            policy = None  # none loaded yet: judged on the dialog alone
        ok = replaces.check_invite_replaces(values, "INVITE", found, sender, approved,
                                            policy=policy, source_ip=pv("$si") or "",
                                            auth_user=pv("$au"), source=source(),
                                            host_only=self.s.host_only)
        if isinstance(ok, transfer.Reply):
            log(KSR.notice, f"INVITE {call_id} with Replaces from {sender} answered "
                             f"{ok.code}: {ok.warning}")
            return answer(ok)
        if ok is None or ok.transfer is None:
            return None
        # Tied to the attended transfer that named the dialog: its final NOTIFY closes it.
        t = ok.transfer
        self.rec.record_dialog(DialogEvent.INVITE)
        self.rec.take_accepts(t.call_id)
        self.rec.apply(t.call_id, t.refer_id, Event.INVITE, {"invite_call_id": call_id})
        KSR.pv.sets("$avp(rf_cid)", t.call_id)
        KSR.pv.sets("$avp(rf_id)", t.refer_id)
        KSR.pv.sets("$avp(rf_dlg)", "1")
        arm_routes()
        log(KSR.info, f"INVITE {call_id} with Replaces from {sender} tied to transfer "
                       f"{t.call_id}/{t.refer_id}")
        return CONTINUE

    def _tie_referred_invite(self) -> int:
        """The transferee's INVITE: only to an approved target, and tied to its own
        transfer (transfer.tie_invite) or, when nothing names one transfer, to none."""
        call_id = pv("$ci") or ""
        token = (pv(f"$hdr({transfer.TIE_HEADER})") or "").strip()
        if token:
            KSR.hdr.remove(transfer.TIE_HEADER)  # referee's own: the target never sees it
        try:
            caller = transfer.parse_name_addr(pv("$hdr(From)") or "", "From").uri
            target = transfer.parse_uri_lenient(pv("$ru") or "")
        except transfer.SipParseError as exc:
            return answer(transfer.Reply(400, "Bad Request", str(exc)))
        try:
            open_transfers = self.s.store.open_for_invite(caller.aor)
        except RedisError as exc:
            log(KSR.err, f"referred INVITE from {caller.aor} not tied (Redis: {exc})")
            return CONTINUE
        tie = transfer.tie_invite(open_transfers, target, invite_call_id=call_id,
                                  referred_by=pv("$hdr(Referred-By)") or "", token=token)
        if isinstance(tie, transfer.Reply):
            log(KSR.notice,
                 f"referred INVITE from {caller.aor} answered {tie.code}: {tie.warning}")
            return answer(tie)
        if tie is None:
            log(KSR.info, f"referred INVITE from {caller.aor} matches no open transfer")
            return CONTINUE
        if isinstance(tie, transfer.NoTie):
            log(KSR.notice, f"referred INVITE {call_id} from {caller.aor} tied to no "
                             f"transfer: {tie.reason}")
            for xcid, rid in tie.candidates:
                try:
                    self.s.store.annotate(xcid, rid, time.time(),
                                        {"invite_ambiguous": call_id},
                                        f"INVITE {call_id} not tied: {tie.reason}")
                except RedisError as exc:
                    log(KSR.warn, f"ambiguous INVITE not noted on {xcid}/{rid} ({exc})")
            return CONTINUE
        self.rec.take_accepts(tie.call_id)
        self.rec.apply(tie.call_id, tie.refer_id, Event.INVITE,
                    {"invite_call_id": call_id, "invite_tie": tie.how})
        log(KSR.info, f"referred INVITE {call_id} tied to transfer "
                       f"{tie.call_id}/{tie.refer_id} ({tie.how})")
        KSR.pv.sets("$avp(rf_cid)", tie.call_id)
        KSR.pv.sets("$avp(rf_id)", tie.refer_id)
        arm_routes()
        return CONTINUE
