"""Anchored transfers on the Kamailio side, without I/O: which REFER is anchored, the job
for the Asterisk side, and the NOTIFYs referee sends to the transferor in Asterisk's name.

The KSR glue (kemi.kamailio) reads the message, calls these, and performs the result
(t_uac_send, XADD, store.apply).  What a NOTIFY needs is kept in the transfer record at
REFER time (`NotifyRoute.fields`), so any node process -- the progress timer, or a
restarted Kamailio -- can build it from Redis alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from kemi.core.actions import Log, Verdict, go_on
from kemi.core.anchor import AnchorError, MoveJob, Progress, progress_key
from kemi.core.sip.errors import SipParseError
from kemi.core.sip.uri import parse_uri
from kemi.core.state import Event, notify_event

SIPFRAG = "message/sipfrag;version=2.0"


def _hostport(text: str) -> tuple[str, int] | None:
    """(host, port) of a URI, the port defaulted by scheme (5060, sips 5061); None if it
    cannot be read."""
    try:
        uri = parse_uri(text.strip().strip("<>"))
    except (SipParseError, ValueError):
        return None
    if uri.host is None or uri.scheme == "tel":
        return None
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    return uri.host.lower().strip("[]"), port


def _configured(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.lower().strip("[]"), int(port)


def asterisk_for(asterisk: dict[str, str], request_uri: str, dst_uri: str | None = None,
                 in_dialog: bool = True) -> str | None:
    """The name of the anchored Asterisk an in-dialog REFER is addressed to, or None.

    The Request-URI of an in-dialog REFER is the remote target (Asterisk's Contact); when
    it names something else, the next hop loose_route chose ($du) is tried.  An
    out-of-dialog REFER is never anchored.
    """
    if not in_dialog or not asterisk:
        return None
    table = {_configured(addr): name for name, addr in sorted(asterisk.items())}
    for candidate in (request_uri, dst_uri):
        if not candidate:
            continue
        hp = _hostport(candidate)
        if hp is not None and hp in table:
            return table[hp]
    return None


@dataclass(frozen=True)
class NotifyRoute:
    """How to reach the transferor A inside its dialog with Asterisk, as Asterisk would.

    from_hdr  the REFER's To (Asterisk's URI and tag): the NOTIFY's From
    to_hdr    the REFER's From (A's URI and tag): the NOTIFY's To
    ruri      A's Contact from the REFER (its remote target)
    contact   the REFER's Request-URI (Asterisk's Contact): A's remote target stays there
    nexthop   where the REFER came from (A, or the proxy in front of it)
    socket    the local socket the REFER came in on
    """

    from_hdr: str
    to_hdr: str
    ruri: str
    contact: str
    nexthop: str
    socket: str

    def fields(self) -> dict[str, str]:
        return {
            "n_from": self.from_hdr, "n_to": self.to_hdr, "n_ruri": self.ruri,
            "n_contact": self.contact, "n_hop": self.nexthop, "n_sock": self.socket,
        }

    @classmethod
    def from_record(cls, record: dict[str, str]) -> NotifyRoute:
        try:
            return cls(record["n_from"], record["n_to"], record["n_ruri"], record["n_contact"],
                       record.get("n_hop", ""), record.get("n_sock", ""))
        except KeyError as exc:
            raise ValueError(f"transfer record lacks {exc.args[0]}: not an accepted "
                             "anchored transfer") from None


def notify_request(route: NotifyRoute, call_id: str, refer_id: str, cseq: int, code: int,
                   reason: str, terminated: bool, expires_s: int) -> tuple[str, str]:
    """(headers, body) for KSR.tm.t_uac_send: tm takes From/To (with tags), Call-ID and
    CSeq from these headers; Content-Length is its own (rpc_uac.c t_uac_check_msg)."""
    state = ("terminated;reason=noresource" if terminated
             else f"active;expires={max(int(expires_s), 1)}")
    headers = (
        f"From: {route.from_hdr}\r\n"
        f"To: {route.to_hdr}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} NOTIFY\r\n"
        f"Contact: <{route.contact}>\r\n"
        f"Event: refer;id={refer_id}\r\n"
        f"Subscription-State: {state}\r\n"
        "Max-Forwards: 70\r\n"
        f"Content-Type: {SIPFRAG}\r\n"
    )
    return headers, f"SIP/2.0 {code} {reason}\r\n"


def progress_event(progress: Progress, nosub: bool) -> Event:
    """The state-machine event one line of Asterisk's progress stands for.

    With a subscription it is the NOTIFY referee sends for it.  Without one (Refer-Sub:
    false) no NOTIFY goes out and the new call's outcome is what the table knows for that
    case: the call placed (1xx), answered, or failed.
    """
    if nosub:
        if progress.code < 200:
            return Event.INVITE
        return Event.INVITE_2XX if progress.code < 300 else Event.INVITE_FAILED
    return notify_event(progress.code, progress.final)


def dial_string(template: str, target_uri: str) -> str:
    """[anchored] dial with {user}, {host} and {uri} of the approved Refer-To filled in;
    AnchorError for a template that names anything else."""
    user = host = ""
    try:
        uri = parse_uri(target_uri)
        user, host = uri.user or "", uri.host or ""
    except (SipParseError, ValueError):
        pass
    try:
        return template.format(user=user, host=host, uri=target_uri)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise AnchorError(f"[anchored] dial {template!r} unusable: {exc!r} (only {{user}}, "
                          "{host} and {uri} are filled in)") from None


def _caller_number(choice: str, transferor: str) -> str:
    """MoveJob.caller_id from the policy's choice: '' keeps P's own number."""
    if choice in ("", "keep", "transferee"):
        return ""
    if choice == "transferor":
        return transferor.split("@", 1)[0]
    return choice


def move_job(*, call_id: str, refer_id: str, target_uri: str, transferor: str, decision,
             dial_template: str, prefix: str, node: str, now: float,
             recall_uri: str = "") -> MoveJob:
    """The job for the Asterisk side; plan fields come from the policy decision when it
    carries them (getattr: older decisions have none), else MoveJob's defaults."""
    defaults = MoveJob("", "0", "", "", "", "", 0.0)
    timeout = getattr(decision, "dial_timeout_s", None)
    release = getattr(decision, "release_after_s", None)
    return MoveJob(
        call_id=call_id,
        refer_id=refer_id,
        target=target_uri,
        dial=dial_string(dial_template, target_uri),
        transferor=transferor,
        reply_to=progress_key(prefix, node),
        created_at=now,
        announcement=str(getattr(decision, "announcement", "") or ""),
        caller_id=_caller_number(str(getattr(decision, "caller_id", "") or ""), transferor),
        dial_timeout_s=int(timeout) if timeout else defaults.dial_timeout_s,
        on_failure=str(getattr(decision, "on_failure", "") or defaults.on_failure),
        release_after_s=float(release) if release is not None else defaults.release_after_s,
        recall_uri=recall_uri,
    )


def accept_or_relay(what: str, name: str, mode: str, *, cfg_ready: bool, nosub: bool,
                    cseq_known: bool, contact: str | None
                    ) -> Verdict[tuple[str, dict[str, str]]]:
    """Whether referee accepts a REFER to the anchored Asterisk `name` itself or relays it
    to Asterisk: the configured mode, unless accepting could not be done safely.  The
    value: (the mode, the record fields that say so)."""
    fields = {"anchored": name}
    actions: list[Log] = []
    if mode == "accept" and not cfg_ready:
        mode = "relay"  # the cfg lacks the anchored-mode lines (logged at start)
        fields["anchor_fallback"] = "cfg-without-anchored-mode"
    elif mode == "accept" and not nosub and not cseq_known:
        # Without Asterisk's last CSeq toward A no NOTIFY can be numbered safely: let
        # Asterisk take the REFER itself rather than break the dialog.
        actions.append(Log("warn", f"{what} to anchored {name}: no CSeq of Asterisk's seen "
                                   "in this dialog (its INVITE did not pass this node since "
                                   "it started?); relayed instead of accepted"))
        mode = "relay"
        fields["anchor_fallback"] = "no-asterisk-cseq"
    if mode == "accept" and contact is None:
        actions.append(Log("warn", f"{what} without Contact: relayed to anchored {name}"))
        mode = "relay"
    fields["anchor_mode"] = mode
    return go_on((mode, fields), *actions)
