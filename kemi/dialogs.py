"""The dialog index: every INVITE dialog the proxy relays, shared by all Kamailio nodes.

Why: an attended transfer names a dialog by Call-ID and tags (RFC 3891), and whether that
dialog exists, has ended, is early or confirmed, and who its parties are decides the
answer.  The REFER or the INVITE with Replaces may reach another node than the one the
dialog was set up through, so the index lives in Redis, written like kemi.store: one Lua
script per SIP event, one round trip, the table below applied in Lua from its JSON text.

One record per (Call-ID, caller tag), keyed ``p:{tag}:dlg:<caller-tag>`` (tag =
kemi.store.call_tag, so a call's dialogs and transfers share a Cluster slot; both
scripts touch only that slot, so they run unchanged on a Cluster, where the `#!lua`
variant ScriptStore sends makes Redis itself enforce it).  Its one
key always has a TTL: ``setup_ttl_s`` while trying or early (each provisional renews it;
an INVITE transaction cannot outlive that without one), ``open_ttl_s`` once confirmed
(renewed by every event, "refresh" included), ``ended_ttl_s`` after it ends, never
renewed after that.  A Replaces arriving later than that gets 481 instead of 603.

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
from typing import Any, Final, Literal

from kemi.store import ScriptStore, _pairs, _s, _Script, call_tag


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
    caller: str  # AORs (kemi.sip.uri.Uri.aor) of the INVITE's From and To
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
            caller=h.get("caller", ""),
            callee=h.get("callee", ""),
            state=DialogState(h["state"]),
            created_at=float(h["created_at"]),
            updated_at=float(h["updated_at"]),
            ended_at=float(h["ended_at"]) if h.get("ended_at") else None,
            ended_by=h.get("ended_by", ""),
            node=h.get("node", ""),
            caller_src=h.get("caller_src", ""),
            callee_src=h.get("callee_src", ""),
        )


# KEYS: 1 dlg:<From-tag>, [2 dlg:<To-tag> for an in-dialog request, sent by either party]
# ARGV: 1 event, 2 now, 3 call_id, 4 From-tag, 5 To-tag or '', 6 caller, 7 callee,
#       8 node, 9 setup ttl, 10 open ttl, 11 ended ttl, 12 the message's source ('' none):
#       the caller's for the INVITE, the callee's for a tagged response
# Returns the state after the event, or '' when there is no record.
RECORD_LUA = """
local T = [==[@TABLE@]==]
local ev, now, ftag, ttag = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local TTL = {trying = ARGV[9], early = ARGV[9], confirmed = ARGV[10], terminated = ARGV[11]}
local key, side = KEYS[1], 'caller'
local cur = redis.call('HMGET', key, 'state', 'callee_tag')
if KEYS[2] and not (cur[1] and cur[2] == ttag) then
  key, side = KEYS[2], 'callee'
  cur = redis.call('HMGET', key, 'state', 'callee_tag')
  if not (cur[1] and cur[2] == ftag) then return '' end
end
local old = cur[1] or 'new'
local _, e = string.find(T, '"' .. old .. '|' .. ev .. '":"', 1, true)
if not e then return redis.error_reply('ERR referee: no dialog cell for ' .. old .. '|' .. ev) end
local new = string.match(T, '^[^"]+', e + 1)
if new == 'ignore' then
  if old ~= 'new' and old ~= 'terminated' then redis.call('EXPIRE', key, TTL[old]) end
  return cur[1] or ''
end
local h = {'state', new, 'updated_at', now, 'last_event', ev}
if old == 'new' or ev == 'invite' then
  redis.call('DEL', key)
  for _, kv in ipairs({{'call_id', ARGV[3]}, {'caller_tag', ftag}, {'callee_tag', ''},
      {'caller', ARGV[6]}, {'callee', ARGV[7]}, {'created_at', now}, {'node', ARGV[8]}}) do
    h[#h + 1] = kv[1]; h[#h + 1] = kv[2]
  end
end
if ev == '1xx' or ev == '2xx' then
  h[#h + 1] = 'callee_tag'; h[#h + 1] = ttag
  if ARGV[12] ~= '' then h[#h + 1] = 'callee_src'; h[#h + 1] = ARGV[12] end
end
if ev == 'invite' and ARGV[12] ~= '' then h[#h + 1] = 'caller_src'; h[#h + 1] = ARGV[12] end
if new == 'terminated' then
  h[#h + 1] = 'ended_at'; h[#h + 1] = now
  h[#h + 1] = 'ended_by'; h[#h + 1] = ev == 'bye' and ('bye-' .. side) or ev
end
redis.call('HSET', key, unpack(h))
redis.call('EXPIRE', key, TTL[new])
return new
""".replace("@TABLE@", table_as_json())

# KEYS: the records named by either tag.  Returns their hashes (empty for a missing one).
FIND_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end
return out
"""


_RECORD = _Script(RECORD_LUA)
_FIND = _Script(FIND_LUA)


class DialogStore(ScriptStore):
    """The dialog index in Redis: one round trip per event, find and get.

    `client` is anything with `.call(*args)` (kemi.resp.RespClient) or redis-py's
    `execute_command`.  Transport errors propagate: the caller picks fail-open/closed.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "referee",
        setup_ttl_s: int = 600,
        open_ttl_s: int = 86400,
        ended_ttl_s: int = 300,
    ):
        for name, ttl in (("setup", setup_ttl_s), ("open", open_ttl_s), ("ended", ended_ttl_s)):
            if int(ttl) < 1:
                raise ValueError(f"{name}_ttl_s must be at least 1 s")
        super().__init__(client, prefix)
        self.setup_ttl_s = int(setup_ttl_s)
        self.open_ttl_s = int(open_ttl_s)
        self.ended_ttl_s = int(ended_ttl_s)

    def dialog_key(self, call_id: str, caller_tag: str) -> str:
        return f"{self.prefix}:{{{call_tag(call_id)}}}:dlg:{caller_tag}"

    def record(
        self,
        event: DialogEvent,
        call_id: str,
        caller_tag: str,
        now: float,
        callee_tag: str | None = None,
        caller: str | None = None,
        callee: str | None = None,
        node: str = "",
        source: str = "",
    ) -> DialogState | None:
        """Apply one SIP event to its dialog; the state after it, None if no record.

        For the INVITE and its responses, `caller_tag`/`callee_tag` are the From-tag and
        To-tag and `caller`/`callee` the From and To AORs.  For a BYE or a refresh they
        are the request's From-tag and To-tag, whichever party sent it; both must match
        the record.  An event lacking a tag it needs is nothing to record: None, no trip.
        """
        event = DialogEvent(event)
        if not call_id or not caller_tag:
            return None
        if event in NEEDS_CALLEE_TAG and not callee_tag:
            return None
        keys = [self.dialog_key(call_id, caller_tag)]
        if event in IN_DIALOG:
            keys.append(self.dialog_key(call_id, callee_tag or ""))
        args = [
            event.value, f"{now:.3f}", call_id, caller_tag, callee_tag or "", caller or "",
            callee or "", node, str(self.setup_ttl_s), str(self.open_ttl_s),
            str(self.ended_ttl_s), source,
        ]
        state = _s(self._eval(_RECORD, keys, args))
        return DialogState(state) if state else None

    def find(self, call_id: str, tag_a: str, tag_b: str) -> list[Dialog]:
        """Every dialog a Replaces (call_id, to-tag, from-tag) names, in either direction.

        Any state is returned, ended ones included, so a check can tell 481 from 603;
        a list, so it can tell none from one from several.  One round trip.
        """
        if not call_id or not tag_a or not tag_b:
            return []
        keys = list(dict.fromkeys([self.dialog_key(call_id, t) for t in (tag_a, tag_b)]))
        found = []
        for reply in self._eval(_FIND, keys, []) or ():
            h = _pairs(reply)
            if h:
                d = Dialog.from_hash(h)
                if d.matches(call_id, tag_a, tag_b):
                    found.append(d)
        return found

    def get(self, call_id: str, caller_tag: str) -> Dialog | None:
        h = _pairs(self._call("HGETALL", self.dialog_key(call_id, caller_tag)))
        return Dialog.from_hash(h) if h else None
