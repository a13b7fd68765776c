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


# The index as kamailio-native.cfg writes it itself (WITH_DIALOG_INDEX): no Python on an
# ordinary call.  ndb_redis passes at most three `%s` values, so the cfg sends
# `EVALSHA <this> 0 <payload>`, the payload one text of 15 fields split on whitespace
# here, each value from the message as "=" + itself.  A value holding whitespace (or a
# NUL, which ends the text) makes more or fewer fields: the script then writes nothing
# and answers the integer 0, and the cfg hands the message to Python, which sends such a
# value as "x" + hex.  (Decoding hex costs Redis' Lua ~0.1 us a byte, and a check per
# value in cfg costs Kamailio a regex: the common case goes as it is, unchecked.)
#   <prefix> <setup ttl> <open ttl> <ended ttl>      (published by referee: static_args)
#   <event> <now> <Call-ID> <From-tag> <To-tag> <From URI> <To URI> <node>
#   <source> <INVITE's source> <CSeq number>         (the message's: cfg_fields)
# event: 1xx / 2xx / failure (a response to the initial INVITE, or its local timeout)
# or bye.  There is no write at the INVITE: the first response of an INVITE transaction
# (a new CSeq number for this From-tag) applies the INVITE first, from the same message
# (responses carry the request's Call-ID, From, To and CSeq), then itself -- the record
# goes through the same table cells as when Python records the INVITE as it is relayed,
# and a retransmitted 2xx after the BYE (same CSeq) cannot start the dialog over.
# Parties are stored as the URIs Kamailio read (caller_uri/callee_uri) and turned into
# AORs by referee's own parser when read (Dialog.from_hash).  KEYS: none (the script
# names them, as kemi.storage.scripts.call_tag would: a single Redis only, which is
# where ndb_redis is used), or given by Python (DialogStore.record_cfg, a Cluster too).
CFG_INDEX_LUA = r"""
local function record(KEYS, ARGV)
@RECORD@
end
local f = ARGV
if #ARGV == 1 then
  f = {}
  for w in string.gmatch(ARGV[1], '%S+') do f[#f + 1] = w end
end
if #f ~= 15 then
  -- whitespace in a value the cfg sent as it is (or a NUL, which ends it): not written
  -- here; the integer 0 tells the cfg to hand the message to Python, which sends hex
  return 0
end
-- A Call-ID the cfg sent as it is with a control byte or one above ASCII: Python judges
-- it (referee does not index a Call-ID that is not SIP text: the INVITE's own check)
if string.byte(f[7], 1) == 61 and string.find(f[7], '[%c\128-\255]', 2) then return 0 end
-- "=" + text as it is; "x" + hex decoded in plain arithmetic (a gsub callback per byte
-- costs more), in chunks that stay below Lua's limit on unpacked values
local byte, char, unpack = string.byte, string.char, unpack
local function x(i)
  local h = f[i]
  if byte(h, 1) == 61 then return string.sub(h, 2) end
  if byte(h, 1) ~= 120 or #h % 2 ~= 1 or string.find(h, '[^0-9A-Fa-f]', 2) then
    return error({err = 'ERR referee: dialog index field ' .. i
      .. ' is neither =<text> nor x<hex>'})
  end
  local parts = {}
  for s = 2, #h, 4000 do
    local b, out = {byte(h, s, math.min(s + 3999, #h))}, {}
    for j = 1, #b, 2 do
      local hi, lo = b[j], b[j + 1]
      hi = hi >= 97 and hi - 87 or (hi >= 65 and hi - 55 or hi - 48)
      lo = lo >= 97 and lo - 87 or (lo >= 65 and lo - 55 or lo - 48)
      out[#out + 1] = hi * 16 + lo
    end
    parts[#parts + 1] = char(unpack(out))
  end
  return table.concat(parts)
end
local ev, now, cseq = f[5], f[6], f[15]
local cid, ftag, ttag = x(7), x(8), x(9)
if not ({['1xx'] = 1, ['2xx'] = 1, failure = 1, bye = 1})[ev] then
  return redis.error_reply('ERR referee: no dialog index event ' .. ev)
end
if cid == '' or ftag == '' or (ttag == '' and ev ~= 'failure') then return '' end
local keys = KEYS
if #keys == 0 then
  local tag = cid
  if string.find(cid, '[{}]') then tag = string.sub(redis.sha1hex(cid), 1, 16) end
  local base = x(1) .. ':{' .. tag .. '}:dlg:'
  keys = {base .. ftag}
  if ev == 'bye' then keys[2] = base .. ttag end
end
local node = x(12)
if ev ~= 'bye' and redis.call('HGET', keys[1], 'invite_cseq') ~= cseq then
  local st = record({keys[1]}, {'invite', now, cid, ftag, '', '', '', node,
    f[2], f[3], f[4], x(14)})
  if st == 'trying' then
    redis.call('HSET', keys[1], 'invite_cseq', cseq, 'caller_uri', x(10), 'callee_uri', x(11))
  end
end
return record(keys, {ev, now, cid, ftag, ttag, '', '', node, f[2], f[3], f[4], x(13)})
""".replace("@RECORD@", RECORD_LUA)

# The events the cfg writes, and its payload's fields after the static ones.
CFG_EVENTS = ("1xx", "2xx", "failure", "bye")
CFG_FIELDS = 11

_RECORD = _Script(RECORD_LUA)
_FIND = _Script(FIND_LUA)
_CFG_INDEX = _Script(CFG_INDEX_LUA)


def cfg_fields(event: str, now: str, call_id: str | bytes, from_tag: str | bytes,
               to_tag: str | bytes, from_uri: str | bytes, to_uri: str | bytes, node: str,
               source: str, invite_source: str, cseq: str) -> str:
    """The message's part of the payload, each value as kamailio-native.cfg writes it
    ("=" + itself) where that is safe, hex where not: for Python's writes and the tests."""
    return " ".join([event, now, _field(call_id), _field(from_tag), _field(to_tag),
                     _field(from_uri), _field(to_uri), _field(node), _field(source),
                     _field(invite_source), cseq])


def _field(value: str | bytes) -> str:
    """One value as the cfg sends it ("=" + itself) when it can go so, else "x" + hex."""
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    if all(33 <= b <= 126 for b in raw):  # printable ASCII: no whitespace, no NUL
        return "=" + raw.decode("ascii")
    return "x" + raw.hex()


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

    # -- the index as kamailio-native.cfg writes it (CFG_INDEX_LUA) ----------------------
    @property
    def cfg_script(self) -> tuple[str, str]:
        """(sha, text) of the script the cfg runs by EVALSHA through ndb_redis."""
        return _CFG_INDEX.sha, _CFG_INDEX.text

    def static_args(self) -> str:
        """The payload's first fields, which referee publishes for the cfg (its settings)."""
        return f"{_field(self.prefix)} {self.setup_ttl_s} {self.open_ttl_s} {self.ended_ttl_s}"

    def cfg_payload(self, fields: str) -> str:
        """The whole payload from the message's fields (`cfg_fields`), as one text."""
        return f"{self.static_args()} {fields}"

    def record_cfg(self, fields: str) -> DialogState | None:
        """Apply one event as the cfg would have (its fields, CFG_INDEX_LUA), through this
        store's client, any kind of Redis: the keys are named here.  The state after it,
        None when the event names no record it can touch.  ValueError: fields that are
        not the cfg's."""
        keys = self.cfg_keys(fields)
        if not keys:
            return None
        state = _s(self._eval(_CFG_INDEX, keys, [self.cfg_payload(fields)]))
        return DialogState(state) if state else None

    def cfg_keys(self, fields: str) -> list[str]:
        """The keys CFG_INDEX_LUA names itself for these fields ([] when it touches none)."""
        f = fields.split()
        if len(f) != CFG_FIELDS or f[0] not in CFG_EVENTS:
            raise ValueError(f"not the cfg's dialog index fields: {fields[:120]!r}")
        try:
            call_id, from_tag, to_tag = (_unhex(v) for v in f[2:5])
        except ValueError as exc:
            raise ValueError(f"dialog index fields: {exc}") from None
        if not call_id or not from_tag or (not to_tag and f[0] != "failure"):
            return []
        keys = [self.dialog_key(call_id, from_tag)]
        if f[0] == "bye":
            keys.append(self.dialog_key(call_id, to_tag))
        return keys

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
                if not d.parties_known:
                    continue  # as if not indexed: Python would not have indexed it
                if d.matches(call_id, tag_a, tag_b):
                    found.append(d)
        return found

    def get(self, call_id: str, caller_tag: str) -> Dialog | None:
        h = _pairs(self._call("HGETALL", self.dialog_key(call_id, caller_tag)))
        return Dialog.from_hash(h) if h else None


def _unhex(field: str) -> str:
    if field.startswith("="):
        return field[1:]
    if not field.startswith("x"):
        raise ValueError(f"field {field[:40]!r} is neither =<text> nor x<hex>")
    return bytes.fromhex(field[1:]).decode("utf-8", "surrogateescape")
