"""What referee does with each message, as a Verdict of actions (kemi.core.actions).

The readers and judges (kemi.core.transfer, .replaces, .ruri, .anchored) say what a
message is and whether it may pass; the functions here turn that into what the glue
performs -- the reply and the log line an operator reads, the edits to a relayed
request, the record writes, the journal when Redis is away -- so the glue never builds
an answer or a log line of its own for these decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kemi.core import metrics, ruri, transfer
from kemi.core import replaces as rp_rules
from kemi.core.actions import (
    Count,
    Log,
    Notify,
    Relay,
    Reply,
    Spool,
    Store,
    Verdict,
    go_on,
    refused,
)
from kemi.core.anchor import Progress
from kemi.core.anchored import progress_event
from kemi.core.dialogs import Dialog
from kemi.core.policy.model import Policy, Tenant
from kemi.core.sip.headers import Replaces
from kemi.core.state import Event, State
from kemi.core.transfer import ReferMessage, ReferPlan

STORE_DOWN = "transfer state store unreachable"
INDEX_DOWN = "dialog index unreachable"


# -- REFER -------------------------------------------------------------------------------
def refer(msg: ReferMessage, policy: Policy) -> Verdict[ReferPlan]:
    """Policy and syntax: the plan to record and relay, or the answer."""
    verdict = transfer.check_refer(msg, policy)
    if isinstance(verdict, Reply):
        kind = "syntax" if verdict.code in (400, 416, 420) else "policy"
        refusal = refused(f"REFER {msg.call_id}/{msg.cseq}", verdict,
                          counts=metrics.refused(verdict.code, kind))
        return Verdict((Count("refers_received"), *refusal.actions))
    return go_on(verdict, Count("refers_received"))


def policy_unavailable(what: str, why: str) -> Verdict[None]:
    return Verdict((Log("err", f"{what}: policy unavailable: {why}"),
                    Reply(500, "Server Internal Error", "transfer policy unavailable"),
                    Count("refers_received"),
                    *(Count(c) for c in metrics.refused(500, "policy"))))


def refer_dialog(plan: ReferPlan, found: Sequence[Dialog], from_tag: str, source: str,
                 auth_user: str | None, host_only: bool) -> Verdict[rp_rules.ReferDialog]:
    """An in-dialog REFER against the dialog index (kemi.core.replaces.check_refer_dialog);
    the transferee's source goes into the plan's record fields."""
    ok = rp_rules.check_refer_dialog(found, from_tag, source, auth_user, host_only)
    if isinstance(ok, Reply):
        return refused(f"REFER {plan.call_id}/{plan.refer_id}", ok,
                       counts=metrics.refused(ok.code, "out_of_dialog"))
    if ok.transferee_src:
        plan.fields["transferee_src"] = ok.transferee_src
    return go_on(ok)


def refer_replaces(plan: ReferPlan, found: Sequence[Dialog], transferor: str,
                   policy: Policy | None, tenant: Tenant | None, *, source: str,
                   auth_user: str | None, host_only: bool) -> Verdict[None]:
    """The dialog an attended transfer names, judged against the index; what the record
    keeps of it goes into the plan's fields."""
    assert plan.replaces is not None
    ok = rp_rules.check_refer_replaces(plan.replaces, found, transferor, policy, tenant,
                                       source=source, auth_user=auth_user,
                                       host_only=host_only)
    if isinstance(ok, Reply):
        return refused(f"REFER {plan.call_id}/{plan.refer_id}", ok,
                       counts=metrics.refused(ok.code, "replaces"))
    plan.fields.update(ok.fields())
    return go_on(None)


def refer_over_limit(plan: ReferPlan, reason: str) -> Verdict[None]:
    reply = transfer.limit_reply(reason, plan.decision)
    return refused(f"REFER {plan.call_id}/{plan.refer_id}", reply,
                   counts=metrics.refused(reply.code, "limit"))


def refer_without_store(plan: ReferPlan, why: str, *, fail_open: bool, now: float,
                        max_open_s: float, retry_after_s: int) -> Verdict[bool]:
    """Redis away when a REFER is to be recorded: relayed and its record spooled
    (fail open; the value is True), or refused 503 (fail closed)."""
    what = f"REFER {plan.call_id}/{plan.refer_id}"
    if not fail_open:
        return Verdict((Log("err", f"{what} refused 503 (Redis: {why})"),
                        Reply(503, "Service Unavailable", STORE_DOWN, retry_after_s),
                        *(Count(c) for c in metrics.refused(503, "store"))))
    entry = {
        "call_id": plan.call_id, "refer_id": plan.refer_id, "fields": plan.fields,
        "now": now, "deadline": now + min(plan.expiry_s, max_open_s),
        "transferor": plan.transferor, "transferee": plan.transferee, "target": plan.target,
    }
    return go_on(True, Spool("create", entry),
                 Log("err", f"{what} relayed while Redis is away ({why}); spooled"),
                 Count("refers_relayed_unrecorded"))


def refer_allowed(plan: ReferPlan) -> Verdict[None]:
    return Verdict((Log("info", f"REFER {plan.call_id}/{plan.refer_id} {plan.transferor} -> "
                                f"{plan.target_uri} allowed ({plan.decision.rule})"),
                    Count("refers_relayed")))


def refer_unrelayed(call_id: str, refer_id: str, rc: int) -> Verdict[None]:
    """A REFER t_relay could not send: answered here and its transfer closed with it."""
    reply = transfer.unrelayed_reply(rc)
    return Verdict((
        reply,
        Store(call_id, refer_id, Event.REFER_REJECTED,
              {"refer_reply": str(reply.code), "refer_unrelayed": str(rc)},
              f"{reply.code} by the proxy: t_relay failed ({rc})"),
        Log("notice", f"REFER {call_id}/{refer_id} could not be relayed (t_relay {rc}): "
                      f"answered {reply.code}, transfer rejected"),
        Count("refers_unrelayed"),
    ))


# -- NOTIFY ------------------------------------------------------------------------------
def notify(call_id: str, msg: transfer.NotifyMessage) -> Verdict[transfer.NotifyFacts]:
    """A refer NOTIFY read: its facts, or the 400/415 for what cannot be used; a
    malformed Subscription-State is relayed repaired."""
    bad = transfer.bad_call_id(call_id)
    if bad is not None:
        return refused("NOTIFY", bad, counts=("notifies_refused",))
    facts = transfer.read_notify(msg)
    if isinstance(facts, Reply):
        return refused(f"NOTIFY {call_id}", facts, counts=("notifies_refused",))
    repaired = transfer.repaired_subscription_state(msg.subscription_state)
    if repaired is None:
        return go_on(facts, Count("notifies_received"))
    # Read tolerantly, write strictly: a strict transferor drops the malformed one.
    return go_on(facts, Count("notifies_received"),
                 Relay(remove=("Subscription-State",), add=(f"Subscription-State: {repaired}",)),
                 Log("notice", f"NOTIFY {call_id}: Subscription-State "
                               f"{msg.subscription_state!r} relayed as {repaired!r}"))


# -- INVITE ------------------------------------------------------------------------------
def invite_request_uri(call_id: str, request_uri: str, replaces_values: Sequence[str],
                       require_values: Sequence[str]) -> Verdict[list[str]]:
    """ua-quirks: header fields pasted into an initial INVITE's Request-URI
    (kemi.core.ruri).  The value: the Replaces referee adds (to be judged like any
    other), empty when there is none; no actions when the Request-URI is fine."""
    if "?" not in request_uri:
        return go_on([])
    fix = ruri.repair_request_uri(request_uri, replaces_values)
    if fix is None:
        return go_on([])
    if isinstance(fix, Reply):
        return refused(f"INVITE {call_id} with headers in its Request-URI", fix)
    add: tuple[str, ...] = ()
    if fix.replaces is not None:
        add = (f"Replaces: {fix.replaces}",)
        if "replaces" not in ",".join(require_values).lower():
            add += ("Require: replaces",)
    return go_on([fix.replaces] if fix.replaces is not None else [],
                 Relay(request_uri=fix.request_uri, add=add),
                 Log("notice", f"INVITE {call_id}: Request-URI repaired to "
                               f"{fix.request_uri} ({fix.describe()})"))


def invite_replaces_read(call_id: str, values: Sequence[str],
                         from_header: str) -> Verdict[tuple[Replaces, str]]:
    """The one Replaces of an INVITE and its sender's AOR, or the 400 it deserves."""
    rp = rp_rules.read_invite_replaces(values, "INVITE")
    if isinstance(rp, Reply):
        return refused(f"INVITE {call_id} with Replaces", rp, counts=("replaces_refused",))
    assert rp is not None  # values were given
    try:
        sender = transfer.parse_name_addr(from_header, "From").uri.aor
    except transfer.SipParseError as exc:
        return refused(f"INVITE {call_id} with Replaces", Reply(400, "Bad Request", str(exc)),
                       counts=("replaces_refused",))
    return go_on((rp, sender))


def invite_replaces_unchecked(call_id: str, why: str, *, fail_open: bool,
                              retry_after_s: int) -> Verdict[None]:
    """Redis away when an INVITE with Replaces is to be judged."""
    if fail_open:
        return go_on(None, Log("err", f"INVITE {call_id} with Replaces relayed unchecked "
                                      f"(Redis: {why})"))
    return Verdict((Log("err", f"INVITE {call_id} with Replaces refused 503 (Redis: {why})"),
                    Reply(503, "Service Unavailable", INDEX_DOWN, retry_after_s),
                    Count("replaces_refused")))


def invite_replaces(call_id: str, values: Sequence[str], found: Sequence[Dialog],
                    sender: str, approved: Sequence[rp_rules.ApprovedRefer], *,
                    policy: Policy | None, source_ip: str, auth_user: str | None,
                    source: str, host_only: bool) -> Verdict[tuple[str, str] | None]:
    """RFC 3891 for an INVITE carrying Replaces.  The value: the transfer it is tied to
    (call id, refer id) -- its record notes this INVITE -- or None to relay it untied."""
    ok = rp_rules.check_invite_replaces(values, "INVITE", found, sender, approved,
                                        policy=policy, source_ip=source_ip,
                                        auth_user=auth_user, source=source,
                                        host_only=host_only)
    if isinstance(ok, Reply):
        return refused(f"INVITE {call_id} with Replaces from {sender}", ok,
                       counts=("replaces_refused",))
    if ok is None or ok.transfer is None:
        return go_on(None, Count("replaces_accepted"))
    t = ok.transfer
    return go_on(
        (t.call_id, t.refer_id),
        Count("replaces_tied"),
        Store(t.call_id, t.refer_id, Event.INVITE, {"invite_call_id": call_id}),
        Log("info", f"INVITE {call_id} with Replaces from {sender} tied to transfer "
                    f"{t.call_id}/{t.refer_id}"))


def referred_invite(call_id: str, caller_aor: str, open_transfers, target, *,
                    referred_by: str, token: str) -> Verdict[tuple[str, str] | None]:
    """The transferee's INVITE: only to an approved target, and tied to its own transfer
    (kemi.core.transfer.tie_invite) or, when nothing names one transfer, to none -- the
    candidates' records say so."""
    tie = transfer.tie_invite(open_transfers, target, invite_call_id=call_id,
                              referred_by=referred_by, token=token)
    if isinstance(tie, Reply):
        return refused(f"referred INVITE from {caller_aor}", tie, counts=("invites_refused",))
    if tie is None:
        return go_on(None, Log("info", f"referred INVITE from {caller_aor} matches no open "
                                       "transfer"))
    if isinstance(tie, transfer.NoTie):
        notes = [Store(xcid, rid, None, {"invite_ambiguous": call_id},
                       f"INVITE {call_id} not tied: {tie.reason}")
                 for xcid, rid in tie.candidates]
        return go_on(None, Log("notice", f"referred INVITE {call_id} from {caller_aor} tied "
                                         f"to no transfer: {tie.reason}"), *notes,
                     Count("invites_untied"))
    return go_on(
        (tie.call_id, tie.refer_id),
        Store(tie.call_id, tie.refer_id, Event.INVITE,
              {"invite_call_id": call_id, "invite_tie": tie.how}),
        Log("info", f"referred INVITE {call_id} tied to transfer "
                    f"{tie.call_id}/{tie.refer_id} ({tie.how})"),
        Count("invites_tied"))


# -- anchored progress -------------------------------------------------------------------
LIVE = (State.REFER_SEEN, State.ACCEPTED, State.TRYING, State.RINGING)


def progress(p: Progress, record: Mapping[str, str], now: float) -> Verdict[None]:
    """One line of the Asterisk side's progress: NOTIFY A (recorded first, so A's answer
    can never be recorded before it) while the transfer is live and subscribed; else
    only recorded."""
    nosub = record.get("refer_sub") == "false"
    fields = {"last_progress": f"{p.code} {p.reason}"}
    detail = f"{p.code} {p.reason}" + (f" ({p.detail})" if p.detail else "")
    state = record.get("state", "")
    event = progress_event(p, nosub)
    if not nosub and state in LIVE:
        deadline = float(record.get("deadline") or 0) or now
        return Verdict((Count("anchored_progress_read"),
                        Notify(p.call_id, p.refer_id, p.code, p.reason, p.final,
                               int(deadline - now), event, fields, detail)))
    if not nosub:
        detail += f"; no NOTIFY (transfer {state})"
    return Verdict((Count("anchored_progress_read"),
                    Store(p.call_id, p.refer_id, event, fields, detail)))


def invite_call_id(call_id: str, transfer_related: bool) -> Verdict[bool]:
    """An initial INVITE whose Call-ID referee cannot use: answered when it claims a part
    in a transfer (Replaces, Referred-By, the tie token), else relayed unindexed (the
    value: whether referee goes on with it)."""
    bad = transfer.bad_call_id(call_id)
    if bad is None:
        return go_on(True)
    if transfer_related:
        return refused("INVITE", bad, counts=("invites_refused",))
    return go_on(False, Log("notice", f"INVITE not indexed: {bad.warning}"))
