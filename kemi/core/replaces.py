"""Replaces checks for attended transfer (RFC 3891), as pure functions over what the dialog
index found (kemi.storage.dialogs.DialogStore.find) and the facts of the message.

Why here, before the target sees the INVITE: the dialog's identifiers travel in clear in
every REFER and NOTIFY of the transfer, so holding them proves nothing.  Only a party to
the dialog, or the transferee of a REFER that referee approved for it, may replace it.

The identities compared (`transferor_aor`, `sender_aor`, the parties of a dialog) are
AORs (kemi.core.sip.uri.Uri.aor: scheme, port, parameters and %-escapes do not tell them
apart), and each is believed only with where the message came from: the source address
the index recorded for that party (or for the transferee of an approved REFER), or the
user the cfg authenticated.  A bare From header is as forgeable as the Replaces itself.

Policy: for a REFER, a tenant's allow_replaces is decided by kemi.policy before these run;
for an INVITE with Replaces, check_invite_replaces applies the sender's tenant's
allow_replaces itself when given the policy.  Either way a tenant with replaces_scope
'tenant' may not name a dialog with a party another tenant claims by address
(kemi.core.policy.evaluate.replaces_crossing), checked once the dialog is known and the
sender's authority over it established.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kemi.core.dialogs import Dialog, DialogState, same_source
from kemi.core.policy.evaluate import aor_host, replaces_crossing, tenant_for
from kemi.core.policy.model import Policy, Tenant
from kemi.core.sip.errors import SipParseError
from kemi.core.sip.headers import Replaces, parse_replaces
from kemi.core.transfer import Reply

NO_DIALOG = "Call/Transaction Does Not Exist"
NO_AUTHORITY = "a Replaces taken from the wire is no authority"


def scope_reply(policy: Policy | None, tenant: Tenant | None,
                dialogs: Sequence[Dialog]) -> Reply | None:
    """403 naming the tenant setting when one of `dialogs` has a party another tenant
    claims and the tenant's replaces_scope is 'tenant'; None otherwise (no policy given,
    scope 'any', or every party the tenant's own or nobody's)."""
    if policy is None or tenant is None or tenant.replaces_scope != "tenant":
        return None
    for d in dialogs:
        hit = replaces_crossing(policy, tenant, (d.caller, d.callee))
        if hit is not None:
            party, owner = hit
            return Reply(
                403, "Forbidden",
                f"Replaces across tenants: {party}, a party to the dialog named in Replaces, "
                f"belongs to tenant {owner.name}; denied by tenant {tenant.name}: "
                "replaces_scope tenant",
            )
    return None


def _matching(replaces: Replaces, dialogs_found: Sequence[Dialog]) -> list[Dialog]:
    # The index already matched; matching again keeps the check true to its inputs.
    return [d for d in dialogs_found
            if d.matches(replaces.call_id, replaces.to_tag, replaces.from_tag)]


# -- REFER ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferReplacesOk:
    """A REFER's Replaces that may go on; `dialog` is the named one when referee knows it."""

    replaces: Replaces
    dialog: Dialog | None
    matches: int  # 0: unknown to referee, 1: known, more: ambiguous

    @property
    def known(self) -> Literal["known", "unknown", "ambiguous"]:
        return "unknown" if not self.matches else "known" if self.matches == 1 else "ambiguous"

    def fields(self) -> dict[str, str]:
        """What the transfer record keeps of the replaced dialog (kemi.storage.transfers fields)."""
        out = {
            "replaces": self.replaces.call_id,
            "replaces_to_tag": self.replaces.to_tag,
            "replaces_from_tag": self.replaces.from_tag,
            "replaces_dialog": self.known,
        }
        if self.replaces.early_only:
            out["replaces_early_only"] = "1"
        if self.dialog is not None:
            out["replaces_state"] = self.dialog.state.value
        return out


def check_refer_replaces(
    replaces: Replaces, dialogs_found: Sequence[Dialog], transferor_aor: str,
    policy: Policy | None = None, tenant: Tenant | None = None,
    source: str = "", auth_user: str | None = None, host_only: bool = False,
) -> Reply | ReferReplacesOk:
    """Judge the dialog a REFER's Refer-To asks to replace, when referee knows it.

    Unknown (set up elsewhere, or expired from the index): it passes, marked unknown;
    the INVITE with Replaces is checked again, and there an unknown dialog is 481.
    Authority comes first, so a non-party learns nothing of the dialog's state.  With
    several matches (glare or forgery) the transferor must be a party to one of them;
    the REFER then passes as ambiguous and its INVITE will get 481.  `tenant` is the
    REFER's (Decision.tenant): with its replaces_scope 'tenant', a matched dialog with
    another tenant's party is 403.  A party is known by its AOR *and* by where its
    messages came from (`source`, or `auth_user`): a From header is the sender's to
    choose (Dialog.is_party).
    """
    matched = _matching(replaces, dialogs_found)
    if not matched:
        return ReferReplacesOk(replaces, None, 0)
    if not any(d.is_party(transferor_aor, source, auth_user, host_only) for d in matched):
        return Reply(
            403, "Forbidden",
            f"{transferor_aor or 'the transferor'} is not a party to the dialog named in "
            f"Replaces; {NO_AUTHORITY}",
        )
    across = scope_reply(policy, tenant, matched)
    if across is not None:
        return across
    if len(matched) > 1:
        return ReferReplacesOk(replaces, None, len(matched))
    (dialog,) = matched
    if dialog.state is DialogState.TERMINATED:
        return Reply(603, "Decline", f"the dialog named in Replaces has ended ({dialog.ended_by})")
    return ReferReplacesOk(replaces, dialog, 1)


# -- the REFER's own dialog ----------------------------------------------------------------

@dataclass(frozen=True)
class ReferDialog:
    """The dialog an in-dialog REFER was sent in, as the index knows it."""

    dialog: Dialog
    transferor: str  # the AOR of the party whose tag is the REFER's From-tag
    transferee: str
    transferee_src: str  # where the transferee's messages came from ("" unknown)


def check_refer_dialog(found: Sequence[Dialog], from_tag: str, source: str,
                       auth_user: str | None = None, host_only: bool = False
                       ) -> Reply | ReferDialog:
    """With the dialog index on: an in-dialog REFER must be in a dialog the index knows
    (its Call-ID and both tags: DialogStore.find), not ended (481 otherwise, RFC 3261
    12.2.2), and sent from where the party whose tag it carries sends from -- or by that
    party's authenticated user (403 otherwise: a To-tag and a From are no proof)."""
    if not found:
        return Reply(481, NO_DIALOG, "no dialog with this Call-ID and these tags passed "
                                     "this proxy")
    live = [d for d in found if d.state is not DialogState.TERMINATED]
    if not live:
        return Reply(481, NO_DIALOG, "the dialog has ended")
    d = live[0]
    side = d.side_of_tag(from_tag)
    if side is None:
        return Reply(481, NO_DIALOG, "the REFER's From-tag is neither party's in this dialog")
    me, other = (d.caller, d.callee) if side == "caller" else (d.callee, d.caller)
    my_src, other_src = ((d.caller_src, d.callee_src) if side == "caller"
                         else (d.callee_src, d.caller_src))
    if my_src and not same_source(my_src, source, host_only) \
            and not (auth_user and auth_user == me.partition("@")[0]):
        return Reply(403, "Forbidden",
                     f"REFER from {source}, but {me} in this dialog sends from {my_src}: its "
                     "tags and From are no proof of being its party")
    return ReferDialog(d, me, other, other_src)


# -- INVITE with Replaces ----------------------------------------------------------------


@dataclass(frozen=True)
class ApprovedRefer:
    """An open transfer whose approved REFER named a dialog to replace."""

    transferee: str  # AOR
    replaces_call_id: str  # the ReferPlan's "replaces" field
    call_id: str = ""  # the transfer itself (kemi.storage.transfers), to tie the INVITE to it
    refer_id: str = ""
    transferee_src: str = ""  # where the transferee's messages came from ("" unknown)

    def sent_by(self, aor: str, source: str, auth_user: str | None,
                host_only: bool = False) -> bool:
        if not aor or aor != self.transferee:
            return False
        if auth_user and auth_user == aor.partition("@")[0]:
            return True
        return not self.transferee_src or same_source(self.transferee_src, source, host_only)


@dataclass(frozen=True)
class InviteReplacesOk:
    """An INVITE with Replaces to relay: the dialog it replaces, and by what authority."""

    dialog: Dialog
    transfer: ApprovedRefer | None  # the one approved REFER naming it (None: none or several)
    by_party: bool  # the sender is a party to the dialog itself


def read_invite_replaces(replaces_values: Sequence[str], method: str) -> Reply | Replaces | None:
    """The one Replaces of a request, or the 400 it deserves; None if it has none.

    Each element is one header line; a comma cannot occur in a Call-ID or a tag, so it
    separates values.
    """
    values = [v for raw in replaces_values for v in raw.split(",") if v.strip()]
    if not values:
        if replaces_values:  # "Replaces:" with nothing (or only commas) in it
            return Reply(400, "Bad Replaces", "empty Replaces header")
        return None
    if method.strip().upper() != "INVITE":
        return Reply(400, "Bad Request", f"Replaces in a {method}: only an INVITE may carry one")
    if len(values) > 1:
        return Reply(400, "Multiple Replaces", f"{len(values)} Replaces values; at most one")
    try:
        return parse_replaces(values[0])
    except SipParseError as exc:
        return Reply(400, "Bad Replaces", str(exc))


def check_invite_replaces(
    replaces_values: Sequence[str],
    method: str,
    dialogs_found: Sequence[Dialog],
    sender_aor: str,
    approved_refers: Sequence[ApprovedRefer] = (),
    *,
    policy: Policy | None = None,
    source_ip: str = "",
    auth_user: str | None = None,
    source: str = "",
    host_only: bool = False,
) -> Reply | InviteReplacesOk | None:
    """RFC 3891 section 3, answered by the proxy in the RFC's order; None: no Replaces.

    `dialogs_found` is DialogStore.find for the Replaces' Call-ID and tags.  The
    recipient's tag (to-tag) may be either side's, since a proxy sees both ends; an early
    dialog can be replaced only at the UA that originated it (its caller).

    With `policy`, the sender's tenant (chosen as for a REFER: source_ip, the domain of
    sender_aor, auth_user) decides too: allow_replaces off is 403 before anything about
    the dialog is told; replaces_scope 'tenant' is 403 for a dialog with another tenant's
    party, after the sender's authority is established.  That authority rests on where
    the INVITE came from (`source`, "ip:port") or `auth_user` as well as the sender's
    AOR (Dialog.is_party, ApprovedRefer.sent_by): a From header is the sender's to choose.
    """
    replaces = read_invite_replaces(replaces_values, method)
    if not isinstance(replaces, Replaces):
        return replaces
    tenant = None
    if policy is not None:
        tenant = tenant_for(policy, source_ip, aor_host(sender_aor) or None, auth_user)
        if not tenant.allow_replaces:
            return Reply(403, "Replaces not allowed",
                         f"denied by tenant {tenant.name}: allow_replaces off")
    matched = _matching(replaces, dialogs_found)
    if not matched:
        return Reply(481, NO_DIALOG, "no dialog matches Replaces")
    if len(matched) > 1:
        return Reply(
            481, NO_DIALOG, f"{len(matched)} dialogs match Replaces; treated as none (RFC 3891)"
        )
    (dialog,) = matched
    if dialog.state is DialogState.TERMINATED:
        return Reply(603, "Decline", f"the dialog named in Replaces has ended ({dialog.ended_by})")
    if replaces.early_only and dialog.state is DialogState.CONFIRMED:
        return Reply(486, "Busy Here", "Replaces says early-only and the dialog is confirmed")
    if dialog.state is DialogState.EARLY and replaces.to_tag != dialog.caller_tag:
        return Reply(
            481, NO_DIALOG, "Replaces names an early dialog its recipient did not originate"
        )
    by_party = dialog.is_party(sender_aor, source, auth_user, host_only)
    refers = [a for a in approved_refers
              if a.sent_by(sender_aor, source, auth_user, host_only)
              and a.replaces_call_id == dialog.call_id]
    if not by_party and not refers:
        return Reply(
            403, "Forbidden",
            f"{sender_aor or 'the sender'} is neither a party to the dialog named in Replaces "
            f"nor the transferee of an approved REFER naming it; {NO_AUTHORITY}",
        )
    across = scope_reply(policy, tenant, (dialog,))
    if across is not None:
        return across
    return InviteReplacesOk(dialog, refers[0] if len(refers) == 1 else None, by_party)
