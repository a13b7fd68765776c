"""The dialog index's model: every INVITE dialog the proxy relays, as a state table.

Why: an attended transfer names a dialog by Call-ID and tags (RFC 3891), and whether that
dialog exists, has ended, is early or confirmed, and who its parties are decides the
answer.  kemi.storage.dialogs keeps the records in Redis and applies this same table in
Lua (from its JSON text), so the table here is the only place a transition is written.

States: "trying" is an INVITE with no tagged response yet.  It is no dialog (RFC 3261
12.1: a dialog needs the remote tag) and never matches a Replaces; it exists so the
response can fill in the callee tag and the INVITE's own facts (parties, node).

Forking: the record keeps one callee tag, that of the newest tagged provisional while
early and of the first 2xx once confirmed.  What is lost: an earlier fork's early dialog
(a Replaces naming it gets 481), and a second 2xx from another fork (that dialog is not
indexed; its BYE does not touch the record, since BYEs must match both tags).

Tags and Call-IDs are compared exactly, as UAs echo them verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.uri import parse_uri_in


class DialogState(StrEnum):
    NEW = "new"  # pseudo-state: no record
    TRYING = "trying"  # INVITE seen, no tagged response yet
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogEvent(StrEnum):
    INVITE = "invite"  # an initial INVITE (no To-tag), as it is relayed
    PROVISIONAL = "1xx"  # a 101-199 response carrying a To-tag
    ANSWERED = "2xx"  # a 2xx response to the initial INVITE
    FAILED = "failure"  # the INVITE's final failure (>= 300), as relayed to the caller
    BYE = "bye"
    REFRESH = "refresh"  # an in-dialog request that only shows the dialog is alive


IGNORE: Final = "ignore"  # state unchanged; an open record's TTL is still renewed
DCell = DialogState | Literal["ignore"]

D, V = DialogState, DialogEvent

# Which events need which tags from the message (checked before any round trip).
IN_DIALOG: frozenset[DialogEvent] = frozenset({V.BYE, V.REFRESH})  # From/To tags, any way
NEEDS_CALLEE_TAG: frozenset[DialogEvent] = frozenset({V.PROVISIONAL, V.ANSWERED}) | IN_DIALOG

TRANSITIONS: dict[tuple[DialogState, DialogEvent], DCell] = {
    # A response may create the record: the INVITE's write may have been lost (Redis
    # away for a moment); responses carry the same From and To.
    (D.NEW, V.INVITE): D.TRYING,
    (D.NEW, V.PROVISIONAL): D.EARLY,
    (D.NEW, V.ANSWERED): D.CONFIRMED,
    (D.NEW, V.FAILED): IGNORE,  # no dialog ever existed: nothing to remember
    (D.NEW, V.BYE): IGNORE,
    (D.NEW, V.REFRESH): IGNORE,
    (D.TRYING, V.INVITE): IGNORE,  # retransmission
    (D.TRYING, V.PROVISIONAL): D.EARLY,
    (D.TRYING, V.ANSWERED): D.CONFIRMED,
    (D.TRYING, V.FAILED): D.TERMINATED,
    (D.TRYING, V.BYE): IGNORE,  # unreachable: no callee tag to match
    (D.TRYING, V.REFRESH): IGNORE,
    (D.EARLY, V.INVITE): IGNORE,
    (D.EARLY, V.PROVISIONAL): D.EARLY,  # the newest early dialog's tag is kept
    (D.EARLY, V.ANSWERED): D.CONFIRMED,  # the confirmed dialog's tag is kept
    (D.EARLY, V.FAILED): D.TERMINATED,
    (D.EARLY, V.BYE): D.TERMINATED,
    (D.EARLY, V.REFRESH): D.EARLY,  # e.g. an UPDATE or PRACK in the early dialog
    # A spoofed initial INVITE reusing a live dialog's identifiers must not reset it.
    (D.CONFIRMED, V.INVITE): IGNORE,
    (D.CONFIRMED, V.PROVISIONAL): IGNORE,  # a late 1xx
    (D.CONFIRMED, V.ANSWERED): IGNORE,  # retransmitted 2xx, or another fork's 2xx
    (D.CONFIRMED, V.FAILED): IGNORE,  # a late failure from another branch: the call is up
    (D.CONFIRMED, V.BYE): D.TERMINATED,
    (D.CONFIRMED, V.REFRESH): D.CONFIRMED,
    # A new attempt with the same Call-ID and From-tag: the retry after a 401/407 (RFC
    # 3261 22.2) or a failed INVITE.  It starts over with no callee tag, so an ended
    # dialog can only turn from 603 into 481, never into a matchable one.
    (D.TERMINATED, V.INVITE): D.TRYING,
    (D.TERMINATED, V.PROVISIONAL): IGNORE,
    (D.TERMINATED, V.ANSWERED): IGNORE,
    (D.TERMINATED, V.FAILED): IGNORE,
    (D.TERMINATED, V.BYE): IGNORE,
    (D.TERMINATED, V.REFRESH): IGNORE,
}
assert len(TRANSITIONS) == len(DialogState) * len(DialogEvent), "every cell needs a value"


def step(state: DialogState, event: DialogEvent) -> DialogState:
    """The state after one event (pure: the store applies the same table in Lua)."""
    cell = TRANSITIONS[(DialogState(state), DialogEvent(event))]
    return DialogState(state) if cell == IGNORE else DialogState(cell)


def table_as_json() -> str:
    """The table as compact JSON {"state|event": "target|ignore"} for the Lua script."""
    flat = {f"{s.value}|{e.value}": str(c) for (s, e), c in TRANSITIONS.items()}
    return json.dumps(flat, separators=(",", ":"), sort_keys=True)


def response_event(code: int, to_tag: str | None) -> DialogEvent | None:
    """The event a response to an initial INVITE stands for (None: nothing to record).

    A 1xx without a To-tag (100 Trying) makes no dialog.  401/407 count as failures:
    the retried INVITE starts the record over (see the table).
    """
    if code < 200:
        return DialogEvent.PROVISIONAL if code > 100 and to_tag else None
    return DialogEvent.ANSWERED if code < 300 else DialogEvent.FAILED


def same_source(recorded: str, source: str, host_only: bool = False) -> bool:
    """Whether a message from `source` ("ip:port") comes from where `recorded` did."""
    if host_only:
        return recorded.rpartition(":")[0] == source.rpartition(":")[0]
    return recorded == source


@dataclass(frozen=True)
class Dialog:
    """One INVITE dialog as the index knows it."""

    call_id: str
    caller_tag: str  # the INVITE's From-tag
    callee_tag: str  # "" while trying
    caller: str  # AORs (kemi.core.sip.uri.Uri.aor) of the INVITE's From and To
    callee: str
    state: DialogState
    created_at: float
    updated_at: float
    ended_at: float | None = None
    ended_by: str = ""  # "bye-caller", "bye-callee" or "failure"
    node: str = ""
    # Where each party's messages came from ("ip:port" as the proxy saw it: the INVITE's
    # source, the tagged response's source): what a forged From cannot choose.
    caller_src: str = ""
    callee_src: str = ""

    def matches(self, call_id: str, tag_a: str, tag_b: str) -> bool:
        """RFC 3891 matching seen from the middle: the recipient's tag is either side's."""
        if call_id != self.call_id or not self.callee_tag:
            return False
        return (tag_a, tag_b) in (
            (self.caller_tag, self.callee_tag), (self.callee_tag, self.caller_tag)
        )

    @property
    def parties_known(self) -> bool:
        """Both parties have an AOR.  A record the cfg wrote (kamailio-native.cfg) keeps
        the URIs Kamailio read; one that referee's parser refuses makes the dialog one
        referee would not have indexed itself, and it is treated as unknown."""
        return bool(self.caller) and bool(self.callee)

    def has_party(self, aor: str) -> bool:
        return bool(aor) and aor in (self.caller, self.callee)

    def side_of_tag(self, tag: str) -> str | None:
        """'caller' or 'callee': whose tag it is."""
        if tag and tag == self.caller_tag:
            return "caller"
        if tag and tag == self.callee_tag:
            return "callee"
        return None

    def is_party(self, aor: str, source: str, auth_user: str | None = None,
                 host_only: bool = False) -> bool:
        """A message from `source` claiming to be `aor` comes from a party of this dialog:
        the AOR is one of them, and the message comes from where that party's own did
        (`host_only`: the same IP, any port), or its sender authenticated as that party's
        user.  (A record kept before sources were recorded has none: the AOR is all it
        can compare.)"""
        for party, src in ((self.caller, self.caller_src), (self.callee, self.callee_src)):
            if not aor or aor != party:
                continue
            if auth_user and auth_user == party.partition("@")[0]:
                return True
            if not src or same_source(src, source, host_only):
                return True
        return False

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Dialog:
        return cls(
            call_id=h["call_id"],
            caller_tag=h["caller_tag"],
            callee_tag=h.get("callee_tag", ""),
            caller=h.get("caller") or _aor(h.get("caller_uri")),
            callee=h.get("callee") or _aor(h.get("callee_uri")),
            state=DialogState(h["state"]),
            created_at=float(h["created_at"]),
            updated_at=float(h["updated_at"]),
            ended_at=float(h["ended_at"]) if h.get("ended_at") else None,
            ended_by=h.get("ended_by", ""),
            node=h.get("node", ""),
            caller_src=h.get("caller_src", ""),
            callee_src=h.get("callee_src", ""),
        )


def _aor(uri: str | None) -> str:
    """The AOR of a URI the cfg recorded (kamailio-native.cfg's $fu/$tu), by referee's own
    parser, so both ways of indexing compare parties alike; "" when it does not parse."""
    if not uri:
        return ""
    try:
        return parse_uri_in(uri, "dialog index").aor
    except SipParseError:
        return ""
