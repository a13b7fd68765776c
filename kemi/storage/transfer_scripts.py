"""The transfer store's Lua: create and apply, built from kemi.core.state's table (its
JSON text is looked up cell by cell with a plain string find, so Lua and Python agree by
construction).  Key layout and the steps around the scripts: kemi.storage.transfers."""

from __future__ import annotations

from kemi.core.state import FINAL, table_as_json

_FINAL_LUA = "{" + ", ".join(f'["{s.value}"]=true' for s in sorted(FINAL)) + "}"

_COMMON = """
local FINAL = @FINAL@
local function extend(k, s)
  local t = redis.call('TTL', k)
  if t ~= -2 and t < s then redis.call('EXPIRE', k, s) end
end
""".replace("@FINAL@", _FINAL_LUA)

# KEYS: 1 index, 2 xfer, 3 log, then (single Redis only) 4 deadlines and the rate and tie
#       keys when used.
# ARGV: 1 refer_id, 2 call_id, 3 now, 4 deadline, 5 ttl, 6 max_per_call, 7 rate_limit,
#       8 rate key position, 9 tie key position, 10 target, 11 detail,
#       12 the rate count made before the script ('' : count here, in KEYS[ARGV[8]]),
#       13 the tie key's name ('' : none), 14 a deadline in Redis's TIME ('' : none):
#       past it the REFER was answered already (503, the client gave up), so nothing is
#       written -- a ghost record would tie up its transferee; 15 an event applied at
#       once ('' : none; an anchored REFER answered 202 by referee itself), 16 the state
#       kemi.core.state's table gives for it after refer-seen, 17 its detail; 18.. field
#       pairs
# On a Cluster no deadlines/rate/tie key is passed: the store writes them around the script.
CREATE_LUA = _COMMON + """
local idx, xk, lk, dls = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, cid, now, dl, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local rk, tk = KEYS[tonumber(ARGV[8])], KEYS[tonumber(ARGV[9])]
local counted = ARGV[12]
local n = redis.call('HLEN', idx)
if ARGV[14] ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1000000 > tonumber(ARGV[14]) then
    return {0, 'too-late', n, 0}
  end
end
if redis.call('EXISTS', xk) == 1 then
  local c = 0
  if rk then c = tonumber(redis.call('GET', rk) or '0')
  elseif counted ~= '' then c = tonumber(counted) end
  local r = redis.call('HMGET', xk, 'state', 'tie_key', 'target')
  return {0, 'duplicate', n, c, r[1] or '', r[2] or '', r[3] or ''}
end
local c = 0
if rk then
  c = redis.call('INCR', rk)
  redis.call('EXPIRE', rk, 120)
elseif counted ~= '' then
  c = tonumber(counted)
end
if ARGV[6] ~= '' and n >= tonumber(ARGV[6]) then return {0, 'per-call-limit', n, c} end
if ARGV[7] ~= '' and c > tonumber(ARGV[7]) then return {0, 'rate-limit', n, c} end
local member = cid .. '\\31' .. rid
local state, events, last = 'refer-seen', 1, 'refer'
if ARGV[15] ~= '' then state, events, last = ARGV[16], 2, ARGV[15] end
local h = {'state', state, 'call_id', cid, 'refer_id', rid, 'created_at', now,
  'updated_at', now, 'deadline', dl, 'events', events, 'last_event', last}
if ARGV[13] ~= '' then
  h[#h + 1] = 'tie_key'; h[#h + 1] = ARGV[13]; h[#h + 1] = 'tie_field'; h[#h + 1] = member
end
if tk then
  redis.call('HSET', tk, member, ARGV[10])
  extend(tk, ttl)
end
for i = 18, #ARGV do h[#h + 1] = ARGV[i] end
redis.call('HSET', xk, unpack(h))
redis.call('HSET', idx, rid, state)
if dls then
  redis.call('ZADD', dls, dl, member)
  extend(dls, ttl)
end
redis.call('DEL', lk)
redis.call('RPUSH', lk, now .. '|refer|new|refer-seen|applied|' .. ARGV[11])
if ARGV[15] ~= '' then
  redis.call('RPUSH', lk, table.concat({now, ARGV[15], 'refer-seen', state, 'applied',
    ARGV[17]}, '|'))
end
redis.call('EXPIRE', xk, ttl)
redis.call('EXPIRE', lk, ttl)
extend(idx, ttl)
return {1, 'created', n + 1, c}
"""

# Single Redis (ARGV[12] ''):  KEYS 1 index, 2 deadlines, 3 stream, [4 xfer, 5 log]
# Cluster (ARGV[12] '1'):      KEYS 1 index, [2 xfer, 3 log]  (the call's slot only)
# (xfer and log are passed when the refer_id is known; for a NOTIFY without ;id= they are
# named from the index, in the same slot.)
# ARGV: 1 event, 2 refer_id or '', 3 call_id, 4 now, 5 deadline or '', 6 detail,
#       7 done ttl, 8 stream maxlen, 9 ttl margin, 10 log maxlen, 11 xfer key base,
#       12 cluster flag, 13 the NOTIFY's CSeq or '', 14.. field pairs
# A NOTIFY's event carries its CSeq: one whose CSeq is not above the highest applied so
# far (`notify_seq`) is stale -- the transferor's answers to two NOTIFYs can be handled
# by two workers in either order -- and is logged 'ignored' with nothing written.
# Returns {refer_id, old, new, outcome, final, todo, ...}; todo says what the store must do
# on a Cluster after the script (on a single Redis the script did it already):
#   'final', tie key, tie field, the record's field/value pairs: stream it, drop the
#            deadline and the tie entry (also for a replay of the event that finalised it)
#   'lowered': the deadline moved earlier: lower the index entry to it
#   'not-due', deadline: an EXPIRY before the record's own deadline: re-index it there
#   'drop':    an EXPIRY for a transfer gone or already final: drop the index entry
#   'restream', the record's pairs: facts written to a final record: stream it again
APPLY_LUA = _COMMON + """
local T = [==[@TABLE@]==]
local cluster = ARGV[12] == '1'
local idx, dls, stream, first = KEYS[1], KEYS[2], KEYS[3], 4
if cluster then dls, stream, first = nil, nil, 2 end
local ev, rid, cid, now, dl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local done_ttl, margin, logmax = tonumber(ARGV[7]), tonumber(ARGV[9]), tonumber(ARGV[10])
if rid == '' then
  local all, n = redis.call('HGETALL', idx), 0
  for i = 1, #all, 2 do
    if not FINAL[all[i + 1]] then n = n + 1; rid = all[i] end
  end
  if n == 0 and ARGV[13] ~= '' then
    -- A NOTIFY answered after the transfer closed (its answer was handled after a
    -- later one's): it belongs to the dialog's latest transfer, where it is stale.
    local best = -1
    for i = 1, #all, 2 do
      if tonumber(all[i]) and tonumber(all[i]) > best then best = tonumber(all[i]); rid = all[i] end
    end
    if best >= 0 then n = 1 end
  end
  if n == 0 then return {'', '', '', 'unknown', 0, ''} end
  if n > 1 then return {'', '', '', 'ambiguous', 0, ''} end
end
local xk = KEYS[first] or (ARGV[11] .. rid)
local lk = KEYS[first + 1] or (xk .. ':log')
local member = cid .. '\\31' .. rid
local function record()
  local all = redis.call('HGETALL', xk)
  all[#all + 1] = 'key'; all[#all + 1] = xk
  return all
end
local function finished(old, new)
  local tie = redis.call('HMGET', xk, 'tie_key', 'tie_field')
  local out = {rid, old, new, 'applied', 1, 'final', tie[1] or '', tie[2] or ''}
  for _, v in ipairs(record()) do out[#out + 1] = v end
  return out
end
local cur = redis.call('HMGET', xk, 'state', 'deadline')
local old = cur[1]
if not old then
  if dls then redis.call('ZREM', dls, member) end
  return {rid, '', '', 'unknown', 0, ev == 'expiry' and 'drop' or ''}
end
local function facts_known()
  for i = 14, #ARGV, 2 do
    if redis.call('HGET', xk, ARGV[i]) ~= ARGV[i + 1] then return false end
  end
  return true
end
if FINAL[old] and cluster and redis.call('HGET', xk, 'final_at') == now and facts_known() then
  -- The event that made it final, at the same instant and with the same facts, again: the
  -- journal replaying it because the steps after its script were lost.  Redo only those
  -- (whatever events were logged since: a final state never changes, its finalising line
  -- is unique).  The same event in the same millisecond with a new fact (the final
  -- NOTIFY's answer on a fast link) is no replay: it is written and streamed below.
  local lines = redis.call('LRANGE', lk, 0, -1)
  for i = #lines, 1, -1 do
    local ts, lev, lold, lnew, lout =
      string.match(lines[i], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)')
    if lout == 'applied' and FINAL[lnew] then
      if ts == now and lev == ev then return finished(lold, lnew) end
      break
    end
  end
end
if ARGV[13] ~= '' then
  local seen = redis.call('HGET', xk, 'notify_seq')
  if seen and tonumber(seen) >= tonumber(ARGV[13]) then
    redis.call('RPUSH', lk, table.concat({now, ev, old, old, 'ignored',
      'stale: NOTIFY CSeq ' .. ARGV[13] .. ' after ' .. seen .. '; ' .. ARGV[6]}, '|'))
    if logmax > 0 then redis.call('LTRIM', lk, -logmax, -1) end
    return {rid, old, old, 'ignored', 0, ''}
  end
  redis.call('HSET', xk, 'notify_seq', ARGV[13])
end
if ev == 'expiry' and not FINAL[old] and cur[2] and tonumber(cur[2]) > tonumber(now) then
  -- The sweep read a stale index entry (the deadline moved later): not due yet.
  if dls then redis.call('ZADD', dls, cur[2], member) end
  return {rid, old, old, 'ignored', 0, 'not-due', cur[2]}
end
local _, e = string.find(T, '"' .. old .. '|' .. ev .. '":"', 1, true)
if not e then return redis.error_reply('ERR referee: no cell for ' .. old .. '|' .. ev) end
local cell = string.match(T, '^[^"]+', e + 1)
local new, outcome = old, 'applied'
if cell == 'ignore' then outcome = 'ignored'
elseif cell == 'illegal' then outcome = 'illegal'
else new = cell end
local final = outcome == 'applied' and FINAL[new] and not FINAL[old]
redis.call('RPUSH', lk, table.concat({now, ev, old, new, outcome, ARGV[6]}, '|'))
if logmax > 0 then redis.call('LTRIM', lk, -logmax, -1) end
if redis.call('TTL', lk) == -1 then redis.call('PEXPIRE', lk, redis.call('PTTL', xk)) end
redis.call('HINCRBY', xk, 'events', 1)
if outcome == 'illegal' then
  redis.call('HINCRBY', xk, 'anomalies', 1)
else
  local h = {'last_event', ev, 'updated_at', now}
  if outcome == 'applied' then
    h[#h + 1] = 'state'; h[#h + 1] = new
    redis.call('HSET', idx, rid, new)
  end
  for i = 14, #ARGV do h[#h + 1] = ARGV[i] end
  redis.call('HSET', xk, unpack(h))
  if FINAL[old] and #ARGV >= 14 then
    -- A fact that came after the end (the transferor's answer to the final NOTIFY): the
    -- record is streamed again, so the SQL log's row (upserted) holds it too.
    if cluster then
      local out = {rid, old, new, outcome, 0, 'restream'}
      for _, v in ipairs(record()) do out[#out + 1] = v end
      return out
    end
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[8], '*', unpack(record()))
  end
end
local todo = ''
if ev == 'expiry' and FINAL[old] then
  todo = 'drop'
  if dls then redis.call('ZREM', dls, member) end
end
if final then
  redis.call('HSET', xk, 'final_at', now)
  redis.call('EXPIRE', xk, done_ttl)
  redis.call('EXPIRE', lk, done_ttl)
  extend(idx, done_ttl)
  if cluster then return finished(old, new) end
  redis.call('ZREM', dls, member)
  local tie = redis.call('HMGET', xk, 'tie_key', 'tie_field')
  if tie[1] then redis.call('HDEL', tie[1], tie[2]) end
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[8], '*', unpack(record()))
  extend(stream, done_ttl)
elseif outcome ~= 'illegal' and dl ~= '' and not FINAL[new] then
  -- An open transfer's keys never get a shorter TTL: whatever the index still says,
  -- the record outlives it, so the sweep finds it (a moved deadline is then re-indexed).
  local ttl = math.max(math.ceil(tonumber(dl) - tonumber(now)), 0) + margin
  if dls then
    redis.call('ZADD', dls, dl, member)
    extend(dls, ttl)
  elseif cur[2] and tonumber(dl) < tonumber(cur[2]) then
    todo = 'lowered'
  end
  redis.call('HSET', xk, 'deadline', dl)
  extend(xk, ttl)
  extend(lk, ttl)
  extend(idx, ttl)
end
return {rid, old, new, outcome, final and 1 or 0, todo}
""".replace("@TABLE@", table_as_json())

# KEYS: 1 xfer, 2 log, [3 stream: a single Redis].  ARGV: 1 now, 2 detail, 3 log maxlen,
# 4 stream maxlen, 5.. field pairs
# Facts about a transfer that are not events of the state machine (what the Asterisk side
# did with the channels, what the transferor answered to the final NOTIFY): written
# beside the state, logged, never changing it.  A final record is streamed again (the SQL
# log's row is upserted from the stream): here when the stream is KEYS[3], else (a
# Cluster: another slot) by the store from the record's pairs this returns.
# Returns 0: no such transfer; 1: written (and streamed); or the final record's pairs.
ANNOTATE_LUA = _COMMON + """
local xk, lk = KEYS[1], KEYS[2]
local state = redis.call('HGET', xk, 'state')
if not state then return 0 end
local h = {'updated_at', ARGV[1]}
for i = 5, #ARGV do h[#h + 1] = ARGV[i] end
redis.call('HSET', xk, unpack(h))
redis.call('RPUSH', lk, table.concat({ARGV[1], 'note', state, state, 'noted', ARGV[2]}, '|'))
local logmax = tonumber(ARGV[3])
if logmax > 0 then redis.call('LTRIM', lk, -logmax, -1) end
if redis.call('TTL', lk) == -1 then redis.call('PEXPIRE', lk, redis.call('PTTL', xk)) end
if not FINAL[state] then return 1 end
local all = redis.call('HGETALL', xk)
all[#all + 1] = 'key'; all[#all + 1] = xk
if KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(all))
  return 1
end
return all
"""
