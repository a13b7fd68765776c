"""The INVITEs referee has something to say about: one carrying Replaces (RFC 3891,
judged against the dialog index and the attended transfer that named it), the
transferee's referred INVITE (tied to its own transfer), and, with the index on, every
initial INVITE (recorded).  The decisions are kemi.core.verdicts'."""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core import replaces, transfer, verdicts
from kemi.core.actions import Reply, refused
from kemi.core.dialogs import DialogEvent
from kemi.kamailio import unstored
from kemi.kamailio.glue import CONTINUE, arm_routes, header_values, log, pv, source
from kemi.kamailio.perform import perform
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
        related = bool(header_values("Replaces")) or KSR.hdr.is_present("Referred-By") > 0 \
            or KSR.hdr.is_present(transfer.TIE_HEADER) > 0
        usable = verdicts.invite_call_id(pv("$ci") or "", related)
        if not usable.value:
            return perform(usable.actions, self.rec)
        call_id = pv("$ci") or ""
        repaired = verdicts.invite_request_uri(call_id, pv("$ru") or "",
                                               header_values("Replaces"),
                                               header_values("Require"))
        rc = perform(repaired.actions, self.rec)
        if repaired.answered:
            return rc
        if self.s.dialog_index:
            rc = self._check_replaces(call_id, repaired.value or [])
            if rc is not None:
                return rc
            self.rec.record_dialog(DialogEvent.INVITE)
            KSR.pv.sets("$avp(rf_dlg)", "1")
            arm_routes()
        if not (KSR.hdr.is_present("Referred-By") > 0
                or KSR.hdr.is_present(transfer.TIE_HEADER) > 0):
            return CONTINUE  # an ordinary call pays nothing
        return self._tie_referred(call_id)

    def _check_replaces(self, call_id: str, repaired: list[str]) -> int | None:
        """RFC 3891 for an INVITE carrying Replaces, answered here before the target sees
        it; None: no Replaces, or a Replaces to relay (tied to its transfer if any).
        `repaired`: the Replaces referee itself just added (not yet readable as a header)."""
        values = repaired or header_values("Replaces")
        if not values:
            return None
        read = verdicts.invite_replaces_read(call_id, values, pv("$hdr(From)") or "")
        if read.answered:
            return perform(read.actions, self.rec)
        assert read.value is not None
        rp, sender = read.value
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
            down = verdicts.invite_replaces_unchecked(
                call_id, str(exc), fail_open=k.redis_fail_mode == "open",
                retry_after_s=k.retry_after_s)
            rc = perform(down.actions, self.rec)
            return rc if down.answered else None
        try:
            policy = self.s.policy.current()
        except PolicyUnavailable:
            policy = None  # none loaded yet: judged on the dialog alone
        judged = verdicts.invite_replaces(
            call_id, values, found, sender, approved, policy=policy,
            source_ip=pv("$si") or "", auth_user=pv("$au"), source=source(),
            host_only=self.s.host_only)
        if judged.answered:
            return perform(judged.actions, self.rec)
        if judged.value is None:
            perform(judged.actions, self.rec)
            return None
        # Tied to the attended transfer that named the dialog: its final NOTIFY closes it.
        self.rec.record_dialog(DialogEvent.INVITE)
        perform(judged.actions, self.rec)
        self._follow(*judged.value)
        KSR.pv.sets("$avp(rf_dlg)", "1")
        return CONTINUE

    def _tie_referred(self, call_id: str) -> int:
        """The transferee's INVITE: only to an approved target, and tied to its own
        transfer or, when nothing names one transfer, to none."""
        token = (pv(f"$hdr({transfer.TIE_HEADER})") or "").strip()
        if token:
            KSR.hdr.remove(transfer.TIE_HEADER)  # referee's own: the target never sees it
        try:
            caller = transfer.parse_name_addr(pv("$hdr(From)") or "", "From").uri
            target = transfer.parse_uri_lenient(pv("$ru") or "")
        except transfer.SipParseError as exc:
            return perform(refused(f"referred INVITE {call_id}", Reply(
                400, "Bad Request", str(exc)), counts=("invites_refused",)).actions, self.rec)
        remembered = False
        try:
            open_transfers = self.s.store.open_for_invite(caller.aor)
        except RedisError as exc:
            # Redis away: the transfers this node relayed meanwhile (their records
            # spooled) are known here; the tie's event is spooled behind them.
            open_transfers = unstored.open_for(caller.aor,
                                               self.s.settings.transfer.max_open_s)
            if not open_transfers:
                log(KSR.err, f"referred INVITE from {caller.aor} not tied (Redis: {exc})")
                return CONTINUE
            remembered = True
            log(KSR.notice, f"referred INVITE {call_id} from {caller.aor}: Redis away "
                            f"({exc}); tied by what this node relayed while it was")
        tie = verdicts.referred_invite(call_id, caller.aor, open_transfers, target,
                                       referred_by=pv("$hdr(Referred-By)") or "",
                                       token=token)
        rc = perform(tie.actions, self.rec)
        if tie.value is not None:
            self._follow(*tie.value)
            if remembered:
                unstored.tied(caller.aor, *tie.value, call_id)
        return rc

    @staticmethod
    def _follow(call_id: str, refer_id: str) -> None:
        """The INVITE's outcome is its transfer's: its reply and failure routes record it."""
        KSR.pv.sets("$avp(rf_cid)", call_id)
        KSR.pv.sets("$avp(rf_id)", refer_id)
        arm_routes()
