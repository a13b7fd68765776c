"""Redis commands and referee's scripts packed into one string argument, for a transport
that can pass only a fixed number of arguments: Kamailio's ndb_redis, whose KEMI functions
take a format string and at most three `%s` values (kemi.kamailio.ndb).

Sans-IO: `PackedClient` gives the `.call` / `.pipeline` API of kemi.storage.resp.RespClient
and hands each round trip to a `send(sha, text, payload)` function as one
`EVALSHA <runner> 0 <payload>`, where the runner (`runner_text()`) is a Lua script that
holds every referee script (kemi.storage.scripts.SCRIPTS) as a function, runs the batch
in order and answers with one JSON text.  The stores' Lua is unchanged: an
`EVALSHA <sha> n keys... args...` in a batch calls that script's function with the same
KEYS and ARGV.  A batch runs atomically (stronger than a pipeline, never weaker).

What crosses as JSON, both ways: plain ASCII text as it is; any value that is not ASCII
or starts with NUL as "\\0" + hex, so bytes from the wire (not UTF-8, or with NULs) come
back byte for byte and the JSON text is always ASCII (Kamailio's PV layer hands it to
Python without a decoding error).  Replies as RespClient gives them: bulk strings as
bytes, integers as int, arrays as lists, status replies as str, nil as None, an error
reply as RedisReplyError (raised by `call`, in place in `pipeline`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from kemi.storage.resp import (
    CircuitBreaker,
    CommandApi,
    RedisProtocolError,
    RedisReplyError,
    RedisUnavailable,
    guarded,
)
from kemi.storage.scripts import SCRIPTS

Send = Callable[[str, str, str], str]

_RUNNER_HEAD = """
local S = {}
"""

# The Lua -> reply conversion of Redis itself (a number is an integer, truncated; true is
# 1, false and nil are nil; an array ends at its first nil), written as JSON.
_RUNNER_TAIL = r"""
local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
local function unhex(s)
  return (string.gsub(s, '%x%x', function(h) return string.char(tonumber(h, 16)) end))
end
local function arg(v)
  if string.byte(v, 1) == 0 then return unhex(string.sub(v, 2)) end
  return v
end
local function out(v)
  local t = type(v)
  if t == 'string' then
    if string.find(v, '[\128-\255]') or string.byte(v, 1) == 0 then
      return '\0' .. hex(v)
    end
    return v
  elseif t == 'number' then
    if v >= 0 then v = math.floor(v) else v = math.ceil(v) end
    if v > -1e14 and v < 1e14 then return v end
    return {i = string.format('%.0f', v)}
  elseif t == 'boolean' then
    if v then return 1 end
    return cjson.null
  elseif t == 'table' then
    if v.err then return {e = tostring(v.err)} end
    if v.ok then return {o = tostring(v.ok)} end
    local a, i = {}, 1
    while v[i] ~= nil do a[i] = out(v[i]); i = i + 1 end
    if i == 1 then return {l = 0} end
    return a
  end
  return cjson.null
end
local function failed(e)
  if type(e) == 'table' and e.err then return {e = tostring(e.err)} end
  return {e = tostring(e)}
end
local batch, answers = cjson.decode(ARGV[1]), {}
for n, c in ipairs(batch) do
  local a = {}
  for i, v in ipairs(c) do a[i] = arg(v) end
  local ok, r
  if a[1] == '\1script' then
    local f = S[a[2]]
    if not f then
      answers[n] = {e = 'NOSCRIPT No matching script in the packed runner'}
    else
      local k = tonumber(a[3])
      local keys, argv = {}, {}
      for i = 4, 3 + k do keys[#keys + 1] = a[i] end
      for i = 4 + k, #a do argv[#argv + 1] = a[i] end
      ok, r = pcall(f, keys, argv)
      if ok then answers[n] = out(r) else answers[n] = failed(r) end
    end
  else
    answers[n] = out(redis.pcall(unpack(a)))
  end
end
return cjson.encode(answers)
"""

_SCRIPT_MARK = "\x01script"


def resp_transport(resp: Any) -> Send:
    """The packed transport over a kemi.storage.resp.RespClient: EVALSHA of the runner,
    EVAL after a NOSCRIPT -- what kemi.kamailio.ndb does through ndb_redis (and its
    fallback when ndb_redis names another Redis than referee.toml)."""

    def send(sha: str, text: str, payload: str) -> str:
        try:
            answer = resp.call("EVALSHA", sha, 0, payload)
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
            answer = resp.call("EVAL", text, 0, payload)
        return _s(answer)

    return send


def _register_all() -> None:
    """Every store module's scripts registered, so that every process (and `referee
    check`) builds the same runner, whatever it imported."""
    import kemi.storage.dialogs  # noqa: F401
    import kemi.storage.transfers  # noqa: F401


def runner_text() -> str:
    """The runner: every registered script as `S[sha] = function(KEYS, ARGV) ... end`
    (its own KEYS and ARGV shadow the runner's), then the batch loop."""
    _register_all()
    parts = [_RUNNER_HEAD]
    for script in sorted(SCRIPTS, key=lambda s: s.sha):
        parts.append(f"S['{script.sha}'] = function(KEYS, ARGV)\n{script.text}\nend\n")
    parts.append(_RUNNER_TAIL)
    return "".join(parts)


def _wire(value: str | bytes | int | float) -> str:
    """One argument as JSON-safe ASCII text (non-ASCII or a leading NUL: "\\0" + hex)."""
    if isinstance(value, str) and value.isascii() and not value.startswith("\x00"):
        return value  # the common case, without a round through bytes
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, float):
        raw = repr(value).encode()
    else:
        raw = str(int(value)).encode()
    if raw.isascii() and not raw.startswith(b"\x00"):
        return raw.decode("ascii")
    return "\x00" + raw.hex()


def encode_batch(commands: Sequence[Sequence[str | bytes | int | float]],
                 scripts: dict[str, str]) -> str:
    """The batch as the runner reads it.  EVALSHA/EVAL of a known script becomes a call of
    its function; an unknown one stays a plain command (Redis refuses it from a script,
    which is as clear an error as a NOSCRIPT)."""
    batch = []
    for command in commands:
        name = str(command[0]).upper() if command else ""
        if name in ("EVALSHA", "EVAL") and len(command) >= 3:
            body = _s(command[1])
            sha = body if name == "EVALSHA" else hashlib.sha1(body.encode()).hexdigest()
            if sha in scripts:
                numkeys = command[2]
                batch.append([_SCRIPT_MARK, sha,
                              str(numkeys) if type(numkeys) is int else _wire(numkeys),
                              *_wired(command[3:])])
                continue
        batch.append(_wired(command))
    return json.dumps(batch, separators=(",", ":"))


def _wired(values: Sequence) -> list[str]:
    """`_wire` of each value, in one check when all are plain ASCII text without a NUL
    (a script call's 20-50 arguments: the REFER path's common case)."""
    try:
        joined = "".join(values)
    except TypeError:  # bytes or numbers among them
        return [_wire(v) for v in values]
    if joined.isascii() and "\x00" not in joined:
        return list(values)
    return [_wire(v) for v in values]


def decode_answers(text: str, count: int) -> list:
    """The runner's JSON answer as RespClient replies; anything else is a protocol error."""
    try:
        answers = json.loads(text)
    except ValueError as exc:
        raise RedisProtocolError(f"packed answer is not JSON: {text[:80]!r}") from exc
    if isinstance(answers, dict) and not answers:
        answers = []  # cjson writes an empty Lua table as {}
    if not isinstance(answers, list) or len(answers) != count:
        raise RedisProtocolError(f"packed answer holds {len(answers)} replies, not {count}")
    return [_reply(a) for a in answers]


def _reply(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("\x00"):
            return bytes.fromhex(value[1:])
        return value.encode("ascii")
    if isinstance(value, bool) or value is None:
        return None if value is None else int(value)
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, list):
        return [_reply(v) for v in value]
    if isinstance(value, dict):
        if "e" in value:
            return RedisReplyError(str(value["e"]))
        if "o" in value:
            return str(value["o"])
        if "i" in value:
            return int(value["i"])
        return []  # {"l": 0} or {}: an empty array
    raise RedisProtocolError(f"unexpected packed reply {value!r}")


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class PackedClient(CommandApi):
    """RespClient's API over a packed transport.  `send(sha, text, payload)` performs one
    round trip (EVALSHA of the runner, EVAL of `text` after a NOSCRIPT) and returns the
    runner's JSON answer; it raises kemi.storage.resp.RedisUnavailable when Redis cannot
    be used.  The breaker and the observer work as RespClient's: refused at once while
    open, told "trip", "failure", "breaker-open", "breaker-close"."""

    cluster = False

    def __init__(self, send: Send, address: str, timeout_s: float,
                 breaker: CircuitBreaker | None = None) -> None:
        self._send = send
        self.address = address
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.observer: Callable[[str], None] | None = None
        self.clock_offset: float | None = None
        self._text = ""
        self._sha = ""
        self._scripts: dict[str, str] = {}
        self.round_trips = 0

    @property
    def transport(self) -> Send:
        return self._send

    def run_script(self, sha: str, text: str, payload: str) -> str:
        """One script of its own (not the runner) with one payload, behind the breaker:
        what the cfg sends itself (kemi.storage.dialogs.CFG_INDEX_LUA); its text answer."""
        return self._trip(sha, text, payload)

    def _runner(self) -> tuple[str, str]:
        # Built on first use, when every store module has registered its scripts.
        if not self._scripts:
            self._text = runner_text()
            self._sha = hashlib.sha1(self._text.encode()).hexdigest()
            self._scripts = {s.sha: s.text for s in SCRIPTS}
        return self._sha, self._text

    def _round_trip(self, commands: Sequence[Sequence]) -> list:
        sha, text = self._runner()
        # Redis's clock rides along the first trip (and the first after a failure), as
        # RespClient reads it in a new connection's handshake.
        clock = self.clock_offset is None
        batch = [("TIME",), *commands] if clock else commands
        payload = encode_batch(batch, self._scripts)
        answers = decode_answers(self._trip(sha, text, payload), len(batch))
        if clock:
            self.note_clock(answers.pop(0))
        return answers

    def note_clock(self, redis_time: Sequence) -> None:
        """Redis's clock minus ours, from a TIME reply (what RespClient reads on connect)."""
        try:
            sec, usec = redis_time
            self.clock_offset = int(sec) + int(usec) / 1e6 - time.time()
        except (TypeError, ValueError):
            pass

    def close(self) -> None:
        """Nothing to close here: the connection is the transport's."""

    def _trip(self, sha: str, text: str, payload: str) -> str:
        """One round trip behind the breaker, as RespClient's; a failure forgets Redis's
        clock (a new connection may be to a new Redis)."""
        def failed(exc: BaseException) -> RedisUnavailable:
            self.clock_offset = None
            return exc  # type: ignore[return-value] - only RedisUnavailable is caught

        answer = guarded(self, lambda: self._send(sha, text, payload), (RedisUnavailable,),
                         failed)
        self.round_trips += 1
        return answer

    def _observe(self, what: str) -> None:
        if self.observer is not None:
            self.observer(what)
