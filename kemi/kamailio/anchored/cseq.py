"""CSeq renumbering in a dialog referee NOTIFYs in, in Asterisk's name (kemi.core.cseq):
referee's NOTIFYs take numbers of Asterisk's direction, so every later request Asterisk
sends in that dialog is renumbered past them, and A's replies are numbered back.

The dialog's state lives in node-local shared memory (htable `referee_x`), read and
written under the htable slot lock, so a NOTIFY and a request of Asterisk's sent at the
same time are numbered one after the other.
"""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core import anchored
from kemi.core.cseq import CSeqError, CSeqShift, parse_cseq_number
from kemi.kamailio.glue import CONTINUE, REPLY_ROUTE, log, pv

AST_TABLE = "referee_ast"  # "ip:port" of each [anchored] Asterisk -> its name
CSEQ_TABLE = "referee_cs"  # Call-ID -> the last CSeq an Asterisk sent in that dialog
SHIFT_TABLE = "referee_x"  # Call-ID -> kemi.core.cseq state of a dialog referee NOTIFYs in
SHIFT_KEEP_S = 60  # how long a dialog's CSeq state outlives its BYE


def last_cseq(call_id: str) -> int | None:
    """The last CSeq an Asterisk sent in this dialog (the cfg or on_asterisk_request
    records it), or the translated one if referee already NOTIFYs in it."""
    try:
        shift = KSR.htable.sht_get(SHIFT_TABLE, call_id)
        if shift is not None:
            return CSeqShift.decode(str(shift)).last_sent
        value = KSR.htable.sht_get(CSEQ_TABLE, call_id)
    except Exception as exc:  # noqa: BLE001 - htable missing or a bad value
        log(KSR.warn, f"dialog {call_id}: CSeq state unreadable: {exc}")
        return None
    try:
        return None if value is None else parse_cseq_number(value)
    except CSeqError:
        return None


def number_and_send(cid: str, rid: str, record: dict, code: int, reason: str,
                     terminated: bool, expires_s: int) -> int | None:
    try:
        route_ = anchored.NotifyRoute.from_record(record)
    except ValueError as exc:
        log(KSR.err, f"NOTIFY for {cid}/{rid} not sent: {exc}")
        return None
    KSR.htable.sht_lock(SHIFT_TABLE, cid)
    try:
        shift = shift_for(cid, record)
        if shift is None:
            log(KSR.err, f"NOTIFY for {cid}/{rid} not sent: Asterisk's CSeq unknown")
            return None
        cseq = shift.next_notify()
        headers, body = anchored.notify_request(
            route_, cid, rid, cseq, code, reason, terminated, expires_s
        )
        rc = KSR.tm.t_uac_send("NOTIFY", route_.ruri, route_.nexthop, route_.socket,
                               headers, body)
        if rc is not None and rc < 0:
            log(KSR.err, f"NOTIFY {code} for {cid}/{rid} (CSeq {cseq}) not sent: "
                          f"tm {rc}")
            return None  # the number stays unused: a gap is legal, a repeat is not
        KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
    finally:
        KSR.htable.sht_unlock(SHIFT_TABLE, cid)
    record["cs_state"] = shift.encode()
    log(KSR.info, f"NOTIFY {code} {reason} for {cid}/{rid} sent (CSeq {cseq}"
                   f"{', terminated' if terminated else ''})")
    return cseq


def shift_for(cid: str, record: dict) -> CSeqShift | None:
    """The dialog's CSeq state (call under the slot lock): the htable's, else a new
    one from Asterisk's last CSeq, else the record's copy after a restart."""
    text = KSR.htable.sht_get(SHIFT_TABLE, cid)
    try:
        if text is not None:
            return CSeqShift.decode(str(text))
        last = KSR.htable.sht_get(CSEQ_TABLE, cid)
        if last is not None:
            return CSeqShift.start(parse_cseq_number(last))
        if record.get("cs_state"):
            log(KSR.notice, f"dialog {cid}: CSeq state rebuilt from the transfer record")
            return CSeqShift.decode(record["cs_state"]).rebuilt()
    except CSeqError as exc:
        log(KSR.err, f"dialog {cid}: CSeq state unusable: {exc}")
    return None


def on_asterisk_request() -> int:
    """A request from an [anchored] Asterisk: its CSeq recorded, and renumbered when
    referee has sent NOTIFYs in the dialog (kemi.core.cseq).  Requests from A to Asterisk
    need nothing: referee never sends in A's name, so A's numbers stay A's."""
    method = (pv("$rm") or "").upper()
    if method == "CANCEL":
        # tm builds the CANCEL it sends, and the hop-by-hop ACK of a failed re-INVITE,
        # from the INVITE it relayed -- renumbered already (tm reparse_invite = 1, the
        # default).  The ACK of a 2xx is end to end: it passes here, as its INVITE did.
        return CONTINUE
    if method != "INVITE" and not pv("$tt"):
        # Only INVITE dialogs carry a REFER: out-of-dialog requests (qualify OPTIONS,
        # REGISTER, ...: a new Call-ID each) would only fill CSEQ_TABLE for a day.
        return CONTINUE
    cid = pv("$ci") or ""
    try:
        orig = parse_cseq_number(pv("$cs"))
    except CSeqError:
        return CONTINUE  # sanity_check answers it
    KSR.htable.sht_lock(SHIFT_TABLE, cid)
    try:
        text = KSR.htable.sht_get(SHIFT_TABLE, cid)
        if text is None:
            if method == "BYE":
                KSR.htable.sht_rm(CSEQ_TABLE, cid)
            elif method != "ACK":
                KSR.htable.sht_sets(CSEQ_TABLE, cid, str(orig))
            return CONTINUE
        shift = CSeqShift.decode(str(text))
        out = shift.on_request(method, orig)
        KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
    finally:
        KSR.htable.sht_unlock(SHIFT_TABLE, cid)
    if out != orig:
        KSR.hdr.remove("CSeq")
        KSR.hdr.append(f"CSeq: {out} {method}\r\n")
        if method != "ACK":
            # The reply must reach Asterisk with its own number: kept per transaction.
            KSR.pv.sets("$avp(rf_cs)", str(orig))
            KSR.tm.t_on_reply(REPLY_ROUTE)
        log(KSR.info, f"{method} {cid} from Asterisk: CSeq {orig} sent to A as {out}")
    return CONTINUE


def forget_asterisk_cseq() -> None:
    """The other party's BYE ends a dialog whose Asterisk CSeq was recorded."""
    cid = pv("$ci") or ""
    try:
        if KSR.htable.sht_get(CSEQ_TABLE, cid) is not None:
            KSR.htable.sht_rm(CSEQ_TABLE, cid)
    except Exception:  # noqa: BLE001 - htable missing: nothing recorded either
        pass


def restore_reply_cseq() -> None:
    """A's reply to a renumbered Asterisk request goes back with Asterisk's number."""
    orig = pv("$avp(rf_cs)")
    if not orig:
        return
    method = (pv("$rm") or "").upper()
    KSR.hdr.remove("CSeq")
    KSR.hdr.append(f"CSeq: {orig} {method}\r\n")
