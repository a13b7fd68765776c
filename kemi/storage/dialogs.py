"""The dialog index in Redis, shared by all Kamailio nodes (its table: kemi.core.dialogs).

The REFER or the INVITE with Replaces may reach another node than the one the dialog was
set up through, so the index lives in Redis, written like kemi.storage.transfers: one Lua
script per SIP event, one round trip, kemi.core.dialogs' table applied in Lua from its
JSON text.

One record per (Call-ID, caller tag), keyed ``p:{tag}:dlg:<caller-tag>`` (tag =
kemi.storage.scripts.call_tag, so a call's dialogs and transfers share a Cluster slot;
both scripts touch only that slot, so they run unchanged on a Cluster, where the `#!lua`
variant ScriptStore sends makes Redis itself enforce it).  Its one key always has a TTL:
``setup_ttl_s`` while trying or early (each provisional renews it; an INVITE transaction
cannot outlive that without one), ``open_ttl_s`` once confirmed (renewed by every event,
"refresh" included), ``ended_ttl_s`` after it ends, never renewed after that.  A Replaces
arriving later than that gets 481 instead of 603.
"""

from __future__ import annotations

from typing import Any

from kemi.core.dialogs import (
    IN_DIALOG,
    NEEDS_CALLEE_TAG,
    Dialog,
    DialogEvent,
    DialogState,
    table_as_json,
)
from kemi.storage.scripts import ScriptStore, _pairs, _s, _Script, call_tag

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

    `client` is anything with `.call(*args)` (kemi.storage.resp.RespClient) or redis-py's
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
