"""Anchored transfers, the Kamailio side ([anchored] in referee.toml, kemi.core.anchored).

An in-dialog REFER sent to an Asterisk listed there is answered 202 here (mode
"accept"); its NOTIFYs are sent by referee in Asterisk's name -- 100 at once, the rest
from the Asterisk side's progress (kemi.kamailio.anchored.progress, an rtimer, never a
SIP worker) -- and the channels are moved by the AMI controller (a MoveJob on the
Asterisk's job stream, kemi.storage.streams).  Because those NOTIFYs use CSeq numbers of
Asterisk's direction, every later request Asterisk sends in that dialog is renumbered
(kemi.kamailio.anchored.cseq).  Mode "relay" only marks the REFER for Asterisk's AGI.
"""

from __future__ import annotations

import time
import traceback

import KSR  # provided by app_python3

from kemi.core import anchored, transfer
from kemi.core.anchor import AnchorError, xfer_id
from kemi.core.cseq import CSeqError, CSeqShift
from kemi.core.sip.headers import contact_uri
from kemi.core.state import Event
from kemi.kamailio import metrics
from kemi.kamailio.anchored.cseq import (
    AST_TABLE,
    CSEQ_TABLE,
    SHIFT_KEEP_S,
    SHIFT_TABLE,
    last_cseq,
    number_and_send,
)
from kemi.kamailio.glue import CONTINUE, HANDLED, as_pairs, log, pv, source_key
from kemi.kamailio.marks import forget_mark, mark_dialog, read_mark
from kemi.kamailio.perform import perform
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services
from kemi.storage import streams
from kemi.storage.resp import RedisError

DIALOGS_TTL_S = 86400  # as the htables' autoexpire
ACCEPT_DETAIL = "202 by referee (anchored)"


class AnchoredRoutes:
    def __init__(self, services: Services, recorder: Recorder) -> None:
        self.s = services
        self.rec = recorder
        # "ip:port" as the cfg's $si:$sp reads it, of each [anchored] Asterisk -> its name
        self.sources = {
            source_key(addr): name for name, addr in services.anchored.asterisk.items()
        }
        self.ready = False  # the cfg has the anchored-mode htables (child_init)

    def child_init(self, rank: int) -> None:
        # The cfg recognises an Asterisk's requests by source address in this table.
        self.ready = bool(self.sources)
        for addr, name in self.sources.items():
            try:
                if KSR.htable.sht_sets(AST_TABLE, addr, name) < 0:
                    raise LookupError(f"no htable {AST_TABLE}")
            except Exception as exc:  # noqa: BLE001 - htable missing: anchored mode off
                if rank == 1:
                    log(KSR.err, f"htable '{AST_TABLE}' unusable ({exc}): [anchored] "
                                 "REFERs are relayed (kamailio-native.cfg needs "
                                 "-A WITH_ANCHORED)")
                self.ready = False
                break

    def choose(self, plan: transfer.ReferPlan) -> tuple[str | None, str | None]:
        """(Asterisk name, "accept" | "relay") for a REFER to an anchored Asterisk, else
        (None, None); the fields a NOTIFY needs go into the record for "accept"."""
        if not self.s.anchored.asterisk:
            return None, None
        name = anchored.asterisk_for(
            self.s.anchored.asterisk, pv("$ru") or "", pv("$du"),
            in_dialog=bool(pv("$tt")),
        )
        if name is None:
            return None, None
        configured = self.s.anchored.mode
        contact = contact_uri(pv("$hdr(Contact)"))
        v = anchored.accept_or_relay(
            f"REFER {plan.call_id}/{plan.refer_id}", name, configured, cfg_ready=self.ready,
            nosub=plan.nosub_requested,
            cseq_known=(configured != "accept" or not self.ready or plan.nosub_requested
                        or last_cseq(plan.call_id) is not None),
            contact=contact)
        perform(v.actions, self.rec)
        assert v.value is not None
        mode, fields = v.value
        if mode == "accept":
            assert contact is not None
            fields["anchor_node"] = self.s.anchored.node  # whose progress stream NOTIFYs A
            proto = (pv("$pr") or "udp").lower()
            fields.update(anchored.NotifyRoute(
                from_hdr=pv("$hdr(To)") or "", to_hdr=pv("$hdr(From)") or "",
                ruri=contact, contact=pv("$ru") or "",
                nexthop=f"sip:{pv('$si')}:{pv('$sp')};transport={proto}",
                socket=f"{proto}:{pv('$Ri')}:{pv('$Rp')}",
            ).fields())
        plan.fields.update(fields)
        return name, mode

    @staticmethod
    def accept_event(plan: transfer.ReferPlan) -> Event:
        """The accept an anchored REFER's create records with it (TransferStore.create
        `then`): referee sends the 202 right after, so A's answer to the NOTIFY 100 finds
        the transfer accepted -- one round trip fewer than recording it on its own."""
        plan.fields["refer_reply"] = "202"
        return Event.REFER_ACCEPTED_NOSUB if plan.nosub_requested else Event.REFER_ACCEPTED

    def accept(self, plan: transfer.ReferPlan, asterisk: str, duplicate: bool,
                         now: float) -> int:
        """202 here, NOTIFY 100 at once, and the job for the Asterisk side; the REFER is
        never relayed (Asterisk's own REFER handling would hang A up at once)."""
        cid, rid, nosub = plan.call_id, plan.refer_id, plan.nosub_requested
        if nosub:
            KSR.hdr.append_to_reply("Refer-Sub: false\r\n")
        KSR.sl.send_reply(202, "Accepted")
        if duplicate:
            return HANDLED  # a retransmission: everything below was done the first time
        metrics.bump("anchored_accepted")
        metrics.bump("refers_accepted")
        try:
            self._after_202(plan, asterisk, now)
        except Exception as exc:  # noqa: BLE001 - the 202 is out: a 500 now would be a
            # second final response; A hears of the failure by NOTIFY, if one can go out
            log(KSR.err, f"REFER {cid}/{rid} accepted for anchored {asterisk}, then failed: "
                          f"{exc!r}\n{traceback.format_exc()}")
            try:
                self._finish_unqueued(cid, rid, plan.fields, nosub, f"failed: {exc!r}")
            except Exception as exc2:  # noqa: BLE001
                log(KSR.err, f"REFER {cid}/{rid}: failure not notified either ({exc2!r}); "
                              "the expiry sweep closes it")
        return HANDLED

    def _after_202(self, plan: transfer.ReferPlan, asterisk: str, now: float) -> None:
        """The accept was recorded with the create (accept_event); one round trip now:
        the NOTIFY's event, the dialog listed for a restart, the move job queued."""
        cid, rid, nosub = plan.call_id, plan.refer_id, plan.nosub_requested
        mark_dialog(cid, pv("$ft") or "", rid, anchored_dialog=True)
        expires = int(min(plan.expiry_s, self.s.settings.transfer.max_open_s))
        events: list[dict] = []
        commands: list[tuple] = []
        if not nosub:
            _cseq, trying = self._send_notify(
                cid, rid, plan.fields, 100, "Trying", False, expires,
                event=Event.NOTIFY_TRYING, detail="100 Trying (referee)")
            events.append(trying)
            commands += self._remember_commands(cid, rid)  # renumbered from now on
        job: anchored.MoveJob | None = None
        try:
            job = anchored.move_job(
                call_id=cid, refer_id=rid, target_uri=plan.target_uri,
                transferor=plan.transferor, decision=plan.decision,
                dial_template=self.s.anchored.dial, prefix=self.s.settings.redis.prefix,
                node=self.s.anchored.node, now=now,
                recall_uri=plan.fields.get("n_ruri", ""),  # A's Contact (NotifyRoute)
            )
            commands.append(streams.job_command(self.s.settings.redis.prefix, asterisk, job))
            why = ""
        except AnchorError as exc:
            why = str(exc)
        replies = self.rec.apply_with(events, commands)  # None: Redis away, events spooled
        if not nosub:
            listed = ["Redis unavailable"] if replies is None else [
                r for r in replies[:2] if isinstance(r, Exception)]
            if listed:
                self._not_remembered(cid, listed[0])
        if job is not None and replies is None:
            why = "Redis unavailable"
        elif job is not None and isinstance(replies[-1], Exception):
            why = str(replies[-1])
        if job is None or why:
            log(KSR.err, f"REFER {cid}/{rid}: move job for {asterisk} not queued ({why}); "
                          "transfer failed")
            self._finish_unqueued(cid, rid, plan.fields, nosub)
            return
        metrics.bump("anchored_jobs_queued")
        log(KSR.info, f"REFER {cid}/{rid} {plan.transferor} -> {plan.target_uri} accepted "
                       f"for anchored {asterisk} ({plan.decision.rule}); dial {job.dial}")

    @property
    def dialogs_key(self) -> str:
        """This node's anchored dialogs with renumbered CSeq: Call-ID -> refer id, so a
        restarted Kamailio can restore their htable state (kept in the records)."""
        return f"{self.s.settings.redis.prefix}:{{anchor:{self.s.anchored.node}}}:dialogs"

    def _remember_commands(self, cid: str, rid: str) -> list[tuple]:
        """This node renumbers the dialog from now on: listed for a restart."""
        return [("HSET", self.dialogs_key, cid, rid),
                ("EXPIRE", self.dialogs_key, DIALOGS_TTL_S)]

    @staticmethod
    def _not_remembered(cid: str, why: object) -> None:
        log(KSR.warn, f"dialog {cid} not listed for a restart ({why}): a restart "
                       "before its end would leave Asterisk's requests unrenumbered")

    def forget_dialog(self, cid: str) -> None:
        try:
            self.s.client.call("HDEL", self.dialogs_key, cid)
        except RedisError as exc:
            log(KSR.notice, f"dialog {cid} left in {self.dialogs_key} ({exc}); it expires")

    def rebuild_marks(self) -> None:
        """After a start: the CSeq state and BYE mark of every anchored dialog this node
        renumbers, from the transfer records (the htables are gone with the old process).
        The next NOTIFY in such a dialog jumps kemi.core.cseq.REBUILD_MARGIN ahead, in case
        Asterisk sent requests after the record was last written."""
        listed = as_pairs(self.s.client.call("HGETALL", self.dialogs_key) or [])
        restored = 0
        for cid, rid in listed.items():
            if KSR.htable.sht_get(SHIFT_TABLE, cid) is not None:
                continue  # live: this was a reload, not a restart
            record = self.s.store.get(cid, rid)
            if not record or not record.get("cs_state"):
                self.forget_dialog(cid)
                continue
            try:
                shift = CSeqShift.decode(record["cs_state"]).rebuilt()
            except CSeqError as exc:
                log(KSR.err, f"dialog {cid}: CSeq state not restored: {exc}")
                continue
            KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
            mark_dialog(cid, record.get("from_tag", ""), rid, anchored_dialog=True)
            restored += 1
        if restored:
            log(KSR.notice, f"CSeq renumbering restored for {restored} anchored dialog(s)")

    def _finish_unqueued(self, cid: str, rid: str, record: dict, nosub: bool,
                         why: str = "job not queued") -> None:
        fields = {"anchor_error": why}
        if nosub:
            self.rec.apply(cid, rid, Event.INVITE_FAILED, fields, f"503 {why}")
            return
        self.notify(cid, rid, record, 503, "Service Unavailable", True, 0,
                              event=Event.NOTIFY_FAILURE, detail=f"503 {why}",
                              fields=fields)

    def notify(self, cid: str, rid: str, record: dict, code: int, reason: str,
                         terminated: bool, expires_s: int, event: Event | None = None,
                         detail: str = "", fields: dict | None = None,
                         record_first: bool = False) -> int | None:
        """Send A one NOTIFY in Asterisk's name; its CSeq number, or None if it could not
        be sent.  Numbered and sent under the htable slot lock of the dialog's CSeq
        state, so a request Asterisk sends meanwhile is numbered after it.

        `event` (with `fields`, `detail`) is recorded whether or not the NOTIFY could be
        sent: after it, with its CSeq and the CSeq state (one round trip), or with
        record_first before it -- then A's answer (a 481) can never be recorded before
        the NOTIFY it answers, and the CSeq state follows as an annotation.  Nothing is
        recorded between numbering and sending: a Redis round trip there would let a
        request of Asterisk's, numbered after the NOTIFY, overtake it on the wire."""
        if event is not None and not record_first:
            cseq, after = self._send_notify(cid, rid, record, code, reason, terminated,
                                            expires_s, event, detail, fields)
            self.rec.apply_many([after])
            return cseq
        if event is not None:
            self.rec.apply(cid, rid, event, _notify_fields(code, reason, terminated, fields),
                           detail)
        cseq = number_and_send(cid, rid, record, code, reason, terminated, expires_s)
        cs_fields = {} if cseq is None else {
            "notify_cseq": str(cseq), "cs_state": record["cs_state"]}
        if event is not None and cs_fields:
            try:
                self.s.store.annotate(cid, rid, time.time(), cs_fields, f"NOTIFY CSeq {cseq}")
            except RedisError as exc:
                log(KSR.warn, f"CSeq state of {cid} not stored ({exc}); a restart now "
                               "would resume with a margin")
        return cseq

    def _send_notify(self, cid: str, rid: str, record: dict, code: int, reason: str,
                     terminated: bool, expires_s: int, event: Event, detail: str,
                     fields: dict | None = None) -> tuple[int | None, dict]:
        """Number and send a NOTIFY (as `notify`), recording nothing: its CSeq, and its
        event with the CSeq state, for the caller to record (in a round trip of its
        own choosing, never between numbering and sending)."""
        fields = _notify_fields(code, reason, terminated, fields)
        cseq = number_and_send(cid, rid, record, code, reason, terminated, expires_s)
        if cseq is not None:
            fields.update(notify_cseq=str(cseq), cs_state=record["cs_state"])
        return cseq, self.rec.event(cid, rid, event, fields, detail)

    def expire(self, call_id: str, refer_id: str) -> None:
        """referee is the notifier of an accepted anchored transfer: it ends A's
        subscription itself when the Asterisk side never reported an outcome."""
        if not self.s.anchored.asterisk:
            return
        try:
            record = self.s.store.get(call_id, refer_id) or {}
        except RedisError:
            return
        if record.get("anchor_mode") != "accept" or record.get("refer_sub") == "false":
            return
        self.notify(call_id, refer_id, record, 408, "Request Timeout", True, 0)

    def bye_sender(self, source: str) -> tuple[str, str] | None:
        """("asterisk", why) for a BYE in an anchored dialog that comes from its Asterisk:
        its From carries P's identity, yet P may well be talking on -- Asterisk released
        A's leg (the controller's ami_result says why)."""
        if source in self.sources:
            return "asterisk", "A's leg released by Asterisk"
        return None

    def mark_relayed(self, plan: transfer.ReferPlan) -> None:
        """A REFER relayed to an anchored Asterisk: its AGI finds the record by this."""
        KSR.hdr.append(f"X-Transfer-Id: {xfer_id(plan.call_id, plan.refer_id)}\r\n")

    def on_notify_reply(self, code: int) -> int:
        """A's answer to a NOTIFY referee sent: a 481 ends the subscription (RFC 6665)."""
        if code != 481 or (pv("$rm") or "").upper() != "NOTIFY":
            return CONTINUE
        cid = pv("$ci") or ""
        mark = read_mark(cid)
        if mark is None or not mark.anchored:
            return CONTINUE  # a relayed NOTIFY's 481: its own reply route records it
        self.rec.apply(cid, mark.refer_id, Event.NOTIFY_481, {"notify_reply": "481"}, "481")
        return CONTINUE

    def dialog_ended(self, call_id: str) -> None:
        """The anchored dialog's BYE: nothing of it stays in shared memory for long.  The
        CSeq state stays SHIFT_KEEP_S: a final NOTIFY still on its way (the progress
        timer's) is numbered right after the BYE, not REBUILD_MARGIN ahead as after a
        restart.  (A BYE the peer refuses would leave the dialog up without translation;
        rare enough.)"""
        forget_mark(call_id)
        try:
            KSR.htable.sht_rm(CSEQ_TABLE, call_id)
        except Exception:  # noqa: BLE001
            pass
        try:
            KSR.htable.sht_setex(SHIFT_TABLE, call_id, SHIFT_KEEP_S)
        except Exception:  # noqa: BLE001 - htable missing: nothing to keep either
            pass
        self.forget_dialog(call_id)


def _notify_fields(code: int, reason: str, terminated: bool, fields: dict | None) -> dict:
    """What the record keeps of a NOTIFY referee sends."""
    out = {**(fields or {}), "last_notify": str(code)}
    if terminated:
        out["final_sipfrag"] = f"{code} {reason}"
    return out
