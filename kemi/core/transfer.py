"""What referee decides about each message of a transfer, without any I/O.

The Kamailio glue (kemi/kamailio/) reads a message into one of the dataclasses below,
calls the matching function, and performs what comes back: a `Reply` to send, or a plan
to record and relay.  Nothing here touches KSR, Redis or a socket, so every rule is
tested as plain Python and the same logic serves the CLI's dry runs.

Why this file is long: it is the one place each message's decision is written (REFER,
NOTIFY, the referred INVITE's tie), each a small function over its own dataclass; split
further, a reader would chase one decision across files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kemi.core.actions import Reply
from kemi.core.policy.evaluate import decide
from kemi.core.policy.model import Decision, Policy, ReferFacts
from kemi.core.sip.errors import SipParseError
from kemi.core.sip.headers import (
    Replaces,
    contact_uri,
    parse_event,
    parse_name_addr,
    parse_refer_to,
    parse_referred_by,
    parse_subscription_state,
    split_values,
)
from kemi.core.sip.sipfrag import StatusLine, is_sipfrag, parse_sipfrag
from kemi.core.sip.text import text_fault
from kemi.core.sip.uri import Uri, parse_uri
from kemi.core.state import Event, notify_event

# Reason phrases referee writes; the Warning header says the specifics (RFC 3261 20.43).
BAD_REQUEST = "Bad Request"


@dataclass(frozen=True)
class ReferMessage:
    """The parts of a REFER referee reads (header values as received, one per instance)."""

    call_id: str
    cseq: int
    from_uri: str
    from_tag: str
    to_uri: str
    to_tag: str
    request_uri: str
    source_ip: str
    refer_to: list[str]
    referred_by: list[str] = field(default_factory=list)
    contact: str | None = None
    refer_sub: str | None = None
    auth_user: str | None = None


@dataclass(frozen=True)
class ReferPlan:
    """An approved REFER: what to record before relaying it."""

    call_id: str
    refer_id: str
    decision: Decision
    transferor: str
    transferee: str
    target: str
    target_uri: str
    nosub_requested: bool
    expiry_s: int
    fields: dict[str, str]
    replaces: Replaces | None = None  # the dialog an attended transfer's Refer-To names


def _warning_reply(code: int, reason: str, warning: str) -> Reply:
    return Reply(code, reason, warning)


def bad_call_id(call_id: str) -> Reply | None:
    """A Call-ID referee cannot key a transfer by (empty, or not text): 400."""
    if not call_id.strip():
        return Reply(400, "Bad Call-ID", "empty Call-ID")
    fault = text_fault(call_id)
    if fault is not None:
        return Reply(400, "Bad Call-ID", f"Call-ID has {fault}")
    return None


def check_refer(msg: ReferMessage, policy: Policy) -> Reply | ReferPlan:
    """Validate a REFER (RFC 3515, 3892, 8217) and ask the policy; early exits in RFC order.

    Values may carry bytes that are not UTF-8 (as surrogate escapes, kemi.core.sip.text): in a
    URI they are refused by its parser (400 naming the header); in a display name, which
    referee never uses, they are let through."""
    bad = bad_call_id(msg.call_id)
    if bad is not None:
        return bad
    for name, tag in (("From", msg.from_tag), ("To", msg.to_tag)):
        fault = text_fault(tag)
        if fault is not None:
            return _warning_reply(400, BAD_REQUEST, f"{name} tag has {fault}")
    values = [v for raw in msg.refer_to for v in split_values(raw)]
    if not values:
        return _warning_reply(400, "Missing Refer-To", "REFER without a Refer-To header")
    if len(values) > 1:
        return _warning_reply(400, "Multiple Refer-To", f"REFER with {len(values)} Refer-To values")
    try:
        refer_to = parse_refer_to(values[0])
    except SipParseError as exc:
        return _warning_reply(400, "Bad Refer-To", str(exc))
    if refer_to.uri.scheme not in ("sip", "sips", "tel"):
        return _warning_reply(400, "Bad Refer-To", f"cannot act on a {refer_to.uri.scheme}: target")
    referred = [v for raw in msg.referred_by for v in split_values(raw)]
    if len(referred) > 1:
        return _warning_reply(400, "Multiple Referred-By", "more than one Referred-By")
    if referred:
        try:
            parse_referred_by(referred[0])
        except SipParseError as exc:
            return _warning_reply(400, "Bad Referred-By", str(exc))
    in_dialog = bool(msg.to_tag)
    if not in_dialog and not msg.contact:
        return _warning_reply(400, "Missing Contact", "out-of-dialog REFER without Contact")
    try:
        transferor = parse_name_addr(msg.from_uri, "From").uri
        transferee = parse_name_addr(msg.to_uri, "To").uri
    except SipParseError as exc:
        return _warning_reply(400, BAD_REQUEST, str(exc))
    facts = ReferFacts(
        source_ip=msg.source_ip,
        from_domain=transferor.host,
        auth_user=msg.auth_user,
        transferor=transferor.aor,
        in_dialog=in_dialog,
        target=refer_to.uri,
        has_replaces=refer_to.replaces is not None,
    )
    decision = decide(policy, facts)
    if not decision.allowed:
        phrase = _safe_phrase(decision.reason) or _denial_phrase(decision.code)
        return _warning_reply(decision.code, phrase, f"denied by {decision.rule}")
    nosub = (msg.refer_sub or "").strip().lower() == "false"
    target = refer_to.uri
    key, target_uri = target_key(target), str(target)
    fields = {
        "call_id": msg.call_id,
        "refer_id": str(msg.cseq),
        "transferor": transferor.aor,
        "transferee": transferee.aor,
        "target": key,
        "target_uri": target_uri,
        "rule": decision.rule,
        "tenant": decision.tenant.name,
        "source": msg.source_ip,
        "in_dialog": "1" if in_dialog else "0",
        "from_tag": msg.from_tag,
        "refer_sub": "false" if nosub else "true",
    }
    if referred:
        fields["referred_by"] = referred[0]
    contact = contact_uri(msg.contact)
    if contact:
        # Where the transferor is reached: a NOTIFY sent to the proxy itself (an
        # Asterisk with rewrite_contact) is routed there (kemi.kamailio.notify).
        fields["transferor_contact"] = contact
    if refer_to.replaces is not None:
        fields["replaces"] = refer_to.replaces.call_id
    return ReferPlan(
        call_id=msg.call_id,
        refer_id=str(msg.cseq),
        decision=decision,
        transferor=transferor.aor,
        transferee=transferee.aor,
        target=key,
        target_uri=target_uri,
        nosub_requested=nosub,
        expiry_s=decision.subscription_expiry_s,
        fields=fields,
        replaces=refer_to.replaces,
    )


def _safe_phrase(text: str) -> str:
    """An operator's reason text made fit for a Status-Line (no control characters)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())[:120]


def _denial_phrase(code: int) -> str:
    return {403: "Forbidden", 603: "Decline", 486: "Busy Here"}.get(code, "Transfer Not Allowed")


def target_key(uri) -> str:
    """How a target is compared: its E.164 form when it is a number, else user@host."""
    number = uri.e164()
    return number if number else uri.aor


_UNRELAYED = {478: "Unresolvable destination", 477: "Send Failed"}


def unrelayed_reply(rc: int) -> Reply:
    """The answer to a REFER tm could not send on, from t_relay's error code (Kamailio's
    -478 for a destination that does not resolve, -477 for a send that failed)."""
    code = -rc if -rc in _UNRELAYED else 500
    return Reply(code, _UNRELAYED.get(code, "Server Internal Error"),
                 f"the proxy could not send the REFER on (t_relay {rc})")


def limit_reply(reason: str, decision: Decision) -> Reply:
    """The answer to a REFER the store refused because a counter is spent."""
    if reason == "per-call-limit":
        return Reply(
            403,
            "Forbidden",
            f"at most {decision.max_transfers_per_call} transfers per call "
            f"(tenant {decision.tenant.name})",
        )
    return Reply(
        403,
        "Forbidden",
        f"more than {decision.refers_per_minute} REFERs per minute from this transferor "
        f"(tenant {decision.tenant.name})",
    )


def refer_response_event(
    code: int, nosub_requested: bool, refer_sub_in_reply: str | None
) -> Event | None:
    """The transfer event a final response to the REFER stands for (None for 1xx).

    RFC 4488: there is no subscription only if it was asked for *and* the 2xx echoes it.
    """
    if code < 200:
        return None
    if code >= 300:
        return Event.REFER_REJECTED
    echoed = (refer_sub_in_reply or "").strip().lower() == "false"
    if nosub_requested and echoed:
        return Event.REFER_ACCEPTED_NOSUB
    return Event.REFER_ACCEPTED


@dataclass(frozen=True)
class NotifyMessage:
    event: str | None
    subscription_state: str | None
    content_type: str | None
    body: str


@dataclass(frozen=True)
class NotifyFacts:
    """A NOTIFY of a refer subscription, read."""

    refer_id: str | None
    event: Event
    status: StatusLine | None
    expires: int | None
    terminated: bool


def is_refer_notify(event_header: str | None, content_type: str | None) -> bool:
    """Whether a NOTIFY belongs to a refer subscription.

    Some phones send neither Event nor Subscription-State (ua-quirks.md); a sipfrag body
    is then the tell.
    """
    if event_header:
        head = event_header.split(";", 1)[0].strip().lower()
        return head == "refer"
    return is_sipfrag(content_type)


def read_notify(msg: NotifyMessage) -> NotifyFacts | Reply:
    """Read a refer NOTIFY tolerantly; a body nobody can use gets 400 with the reason."""
    refer_id = None
    if msg.event:
        try:
            refer_id = parse_event(msg.event).id
        except SipParseError as exc:
            return Reply(400, "Bad Event", str(exc))
    terminated = False
    expires = None
    if msg.subscription_state:
        try:
            sub = parse_subscription_state(msg.subscription_state)
        except SipParseError as exc:
            return Reply(400, "Bad Subscription-State", str(exc))
        terminated = sub.terminated
        expires = sub.expires
    fault = text_fault(msg.body, allow_newlines=True)
    if fault is not None:
        return Reply(400, "Bad sipfrag", f"message/sipfrag body has {fault}")
    if not msg.body.strip():
        if terminated:
            # A terminating NOTIFY without a body ends the subscription, outcome unknown.
            return NotifyFacts(refer_id, Event.NOTIFY_FAILURE, None, expires, True)
        return Reply(400, "Missing sipfrag", "refer NOTIFY without a message/sipfrag body")
    if msg.content_type and not is_sipfrag(msg.content_type):
        return Reply(
            415,
            "Unsupported Media Type",
            f"refer NOTIFY body is {msg.content_type}, not message/sipfrag",
        )
    try:
        status = parse_sipfrag(msg.body)
    except SipParseError as exc:
        return Reply(400, "Bad sipfrag", str(exc))
    if not msg.subscription_state and status.code >= 200:
        # No Subscription-State at all (jambonz-style): a final status ends it.
        terminated = True
    return NotifyFacts(refer_id, notify_event(status.code, terminated), status, expires, terminated)


# A reason parameter whose value repeats its own name (linphone 5.1's final NOTIFY:
# "terminated;reason=reason=noresource"): group 2 is the repetition to drop.
_REPEATED_REASON = re.compile(r"(;\s*reason\s*=\s*)((?:reason\s*=\s*)+)", re.IGNORECASE)


def repaired_subscription_state(value: str | None) -> str | None:
    """The Subscription-State to relay in place of `value`, or None to relay it as it is.

    Read tolerantly, write strictly: referee understands linphone's
    ``terminated;reason=reason=noresource`` (parse_subscription_state), but a strict
    transferor (pjsip) drops that NOTIFY as a syntax error and never learns the outcome.
    Only that malformation is repaired -- the repeated ``reason=`` is dropped, the rest
    of the value is kept as sent -- and only when the repaired value reads exactly as
    the original did.  Anything else, well-formed or not, is left alone.
    """
    if not value:
        return None
    m = _REPEATED_REASON.search(value)
    if m is None:
        return None
    fixed = (value[: m.start(2)] + value[m.end(2) :]).strip()
    try:
        meant = parse_subscription_state(value)
        if meant.reason is None or parse_subscription_state(fixed) != meant:
            return None
    except SipParseError:
        return None
    return None if _REPEATED_REASON.search(fixed) else fixed


def parse_uri_lenient(text: str) -> Uri:
    """A Request-URI, with any headers a phone pasted into it (ua-quirks.md) set aside."""
    return parse_uri(text).without_headers()


TIE_HEADER = "X-Referee-Tie"


def with_tie_token(refer_to: str, token: str) -> str:
    """The Refer-To value carrying `token` as an embedded header (RFC 3261 19.1.5: a UA
    making a request from a URI puts its headers into the request, so the transferee's
    INVITE comes back with it, pjsua2 does).  A bare addr-spec is put in <> with its
    parameters, which phones mean as the URI's."""
    value = refer_to.strip()
    lt = value.find("<")
    if lt < 0:
        sep = "&" if "?" in value else "?"
        return f"<{value}{sep}{TIE_HEADER}={token}>"
    gt = value.find(">", lt)
    if gt < 0:
        return refer_to  # check_refer refuses what it cannot read; nothing to carry
    sep = "&" if "?" in value[lt:gt] else "?"
    return f"{value[:gt]}{sep}{TIE_HEADER}={token}{value[gt:]}"


@dataclass(frozen=True)
class OpenTransfer:
    """A transfer waiting for its transferee's INVITE, as tying one needs it."""

    call_id: str
    refer_id: str
    target: str
    invite_call_id: str = ""  # the INVITE already tied to it
    referred_by: str = ""  # the REFER's Referred-By, as sent
    tie_token: str = ""  # the token referee put into its Refer-To
    created_at: float = 0.0


@dataclass(frozen=True)
class Tie:
    """The INVITE belongs to this transfer; `how` says what showed it."""

    call_id: str
    refer_id: str
    how: str


@dataclass(frozen=True)
class NoTie:
    """An INVITE to an approved target that cannot be tied to one transfer: relayed,
    tied to none, and the candidates told (ambiguous) -- never a guess."""

    candidates: tuple[tuple[str, str], ...]
    reason: str

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


def _aor(value: str) -> str:
    try:
        return parse_referred_by(value).uri.aor if value else ""
    except SipParseError:
        return ""


def tie_invite(
    open_transfers: list[OpenTransfer], request_uri: Uri, *, invite_call_id: str = "",
    referred_by: str = "", token: str = "",
) -> Reply | Tie | NoTie | None:
    """Tie the transferee's referred INVITE to its transfer, by what names that transfer.

    `open_transfers`: the open transfers whose transferee is the INVITE's caller.  None:
    there are none, so the INVITE is an ordinary call (a Referred-By alone authorises
    nothing, RFC 3892).  A caller with open transfers may reach only an approved target
    (403 otherwise).  Then, in this order: the tie token referee put into a Refer-To
    (copied by the transferee into its INVITE); the transfer this very INVITE was tied to
    already (a retry after 401/407 keeps its Call-ID); among the transfers to that target
    still waiting for their INVITE (a transferee places one call per REFER, RFC 3515),
    the only one, or the only one whose Referred-By names the INVITE's.  Anything else
    is a `NoTie`, recorded as such: a record must never carry another transfer's INVITE.
    """
    if not open_transfers:
        return None
    wanted = target_key(request_uri)
    if token:
        for t in open_transfers:
            if t.tie_token == token:
                if t.target != wanted:
                    return Reply(403, "Forbidden", f"referred INVITE to {wanted}; the "
                                                   f"approved target is {t.target}")
                return Tie(t.call_id, t.refer_id, "tie token")
    to_target = [t for t in open_transfers if t.target == wanted]
    if not to_target:
        approved = ", ".join(sorted({t.target for t in open_transfers}))
        return Reply(
            403, "Forbidden", f"referred INVITE to {wanted}; the approved target is {approved}"
        )
    if invite_call_id:
        for t in to_target:
            if t.invite_call_id == invite_call_id:
                return Tie(t.call_id, t.refer_id, "the same INVITE again")
    waiting = [t for t in to_target if not t.invite_call_id]
    if not waiting:
        return NoTie((), f"every open transfer to {wanted} has its INVITE already")
    if len(waiting) > 1 and referred_by:
        by = _aor(referred_by)
        named = [t for t in waiting if by and _aor(t.referred_by) == by]
        if len(named) == 1:
            return Tie(named[0].call_id, named[0].refer_id, "Referred-By")
    if len(waiting) == 1:
        return Tie(waiting[0].call_id, waiting[0].refer_id, "the only transfer to its target")
    return NoTie(tuple((t.call_id, t.refer_id) for t in waiting),
                 f"{len(waiting)} open transfers to {wanted} wait for an INVITE")


def invite_response_event(code: int) -> Event | None:
    """A final response to the transferee's INVITE; 401/407 are challenges the transferee
    answers with a new INVITE, not a failure of the transfer."""
    if code < 200 or code in (401, 407):
        return None
    return Event.INVITE_2XX if code < 300 else Event.INVITE_FAILED
