"""The transfer store: each REFER and each later event applied atomically in one round trip.

Why Lua: the events of one transfer are handled by different Kamailio workers (and nodes)
at the same time, so read-state / decide / write must be one atomic step.  The apply
script carries kemi.core.state's table as its JSON text (`table_as_json`) and looks each cell
up with a plain string find, so the Lua and the Python agree by construction.

Keys (p = prefix; tag = the dialog's Call-ID, or sha1[:16] of it when it contains a brace,
so every key of a dialog is hash-tagged to one Redis Cluster slot):

    p:{tag}:xfer:<refer_id>      hash   one transfer (refer_id = the REFER's CSeq number)
    p:{tag}:xfer:<refer_id>:log  list   "ts|event|old|new|outcome|detail", for the ladder
    p:{tag}:xfers                hash   refer_id -> current state (all of the dialog's REFERs)
    p:deadlines                  zset   "<call_id>\\x1f<refer_id>" scored by deadline (epoch s)
    p:rate:<transferor>:<minute> string REFERs per transferor per epoch minute
    p:tie:<transferee>           hash   "<call_id>\\x1f<refer_id>" -> target (for its INVITE)
    p:finished                   stream every transfer when it turns final (XADD MAXLEN ~),
                                 and again when facts are written to it after that

Members end in "\\x1f<digits>", so rsplit gives back any Call-ID unchanged.  Every key has
a TTL: an open transfer lives until its deadline + `ttl_margin_s` (never shortened while
it is open), a final one `done_ttl_s`; shared keys (index, deadlines, tie, stream) only
ever have their TTL extended.  The stream therefore vanishes after `done_ttl_s` without a
finished transfer: its reader must create its consumer group with MKSTREAM and expect that.

Deployment.  Single Redis or a Sentinel-managed primary (RespClient or SentinelClient,
redis-py): one script
per event does everything -- the call's keys and the four shared ones -- atomically, in
one round trip.  Redis Cluster (ClusterClient, `redis+cluster://` in [redis] url): the
same scripts run under a `#!lua` shebang, so Redis itself refuses any key outside the
call's slot, and they touch only the `p:{tag}:` keys (the transfer of a NOTIFY without
`;id=` is named inside the script from the dialog's index: same tag, same slot).  The
shared keys are not hash-tagged to the call -- each is one key, written by single-key
commands, which is all a Cluster asks -- and are written around the script, in an order
that makes a crash between two steps leave only entries that are harmless:

* create: first, in one pipeline (grouped by node, sent before any reply is read): the
  rate INCR (its count goes to the script as an argument), the deadline entry
  (ZADD LT) and the tie entry; then the script.  A refused or duplicate REFER takes them
  back (a third trip, only then).  Crash in between: a deadline entry without a transfer
  (the sweep's EXPIRY finds it unknown and drops it), a tie entry without one
  (find_for_invite ignores it), a count for a REFER never recorded (as a refused one).
* apply: the script first; then, only when it says so: on a final transition XADD the
  record it returns, ZREM the deadline, HDEL the tie; on a deadline moved earlier lower
  the entry (ZADD XX LT).  A deadline moved later is left in the index at the earlier
  score: the sweep's EXPIRY checks the record's own deadline, answers "ignored" (not
  due) and re-indexes it.  So an entry is never later than its record's deadline, or,
  after a lost "lower" step, the record (whose TTL is never shortened) outlives it.
  Crash after a final script: apply raises, the glue spools the event (kemi.storage.journal),
  and its replay -- the same event at the same instant, which the script recognises in
  the log -- redoes only the steps after it; meanwhile the stale tie entry is filtered
  by find_for_invite (it checks each entry's state in its dialog's index) and the stale
  deadline entry expires nothing (EXPIRY on a final transfer is ignored and drops it).

Round trips (each a pipeline or one command): single Redis, 1 per REFER and per NOTIFY,
as ever.  Cluster: REFER 2; NOTIFY 1, the final one 2, one moving the deadline earlier 2;
referred INVITE lookup 2 when the transferee has open transfers; a node's first sight of
a script adds the EVAL after its NOSCRIPT.  Cluster mode needs Redis 7.0 (EXPIRE NX/GT,
script shebangs).

Why this file is long: a sixth of it is the key layout and crash-safety argument above;
the rest is one store API whose methods share those keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kemi.core.state import FINAL, Event, State, step
from kemi.core.transfer import OpenTransfer
from kemi.storage.scripts import (  # noqa: F401 - SEP and call_tag are part of this API
    SEP,
    ScriptStore,
    _is_noscript,
    _pairs,
    _s,
    _Script,
    call_tag,
    normalise_refer_id,
)
from kemi.storage.transfer_scripts import ANNOTATE_LUA, APPLY_LUA, CREATE_LUA

# Hash fields the store maintains; callers' `fields` may never set them.
STORE_OWNED = frozenset({
    "state", "created_at", "updated_at", "final_at", "deadline", "events", "anomalies",
    "last_event", "tie_key", "tie_field", "key", "notify_seq",
})
# The REFER's identity: written by create from its arguments; `fields` may repeat them
# at create (same value) but never change them.
IDENTITY = frozenset({"call_id", "refer_id", "transferor", "transferee", "target"})

ApplyOutcome = Literal["applied", "ignored", "illegal", "unknown", "ambiguous"]
CreateReason = Literal["created", "duplicate", "per-call-limit", "rate-limit", "too-late"]


@dataclass
class CreateResult:
    created: bool
    reason: CreateReason
    transfers_in_call: int  # REFERs recorded in the dialog, this one included if created
    refers_this_minute: int  # the transferor's count this minute (0 if not counted)


@dataclass
class ApplyResult:
    refer_id: str | None
    old: State | None
    new: State | None
    outcome: ApplyOutcome
    final: bool


# KEYS: transfer records; ARGV: field names.  Single Redis only (a Cluster spreads the
# records over slots: a pipeline of HMGET instead).
RECORDS_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, unpack(ARGV)) end
return out
"""

_CREATE = _Script(CREATE_LUA)
_APPLY = _Script(APPLY_LUA)
_ANNOTATE = _Script(ANNOTATE_LUA)
_RECORDS = _Script(RECORDS_LUA)


class TransferStore(ScriptStore):
    """Transfers in Redis, one round trip per create/apply (EVALSHA; EVAL on NOSCRIPT) on a
    single Redis; on a Cluster the steps around the script described in the module text.

    `client` is anything with `.call(*args)` (kemi.storage.resp.RespClient) or redis-py's
    `execute_command`.  Transport errors propagate: the caller picks fail-open/closed.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "referee",
        done_ttl_s: int = 3600,
        stream_maxlen: int = 100000,
        ttl_margin_s: int = 300,
        log_maxlen: int = 500,
    ):
        super().__init__(client, prefix)
        self.done_ttl_s = int(done_ttl_s)
        self.stream_maxlen = int(stream_maxlen)
        self.ttl_margin_s = int(ttl_margin_s)
        self.log_maxlen = int(log_maxlen)

    # -- keys

    def _base(self, call_id: str) -> str:
        return f"{self.prefix}:{{{call_tag(call_id)}}}"

    def xfer_key(self, call_id: str, refer_id: str | int) -> str:
        return f"{self._base(call_id)}:xfer:{normalise_refer_id(refer_id)}"

    def index_key(self, call_id: str) -> str:
        return f"{self._base(call_id)}:xfers"

    @property
    def deadlines_key(self) -> str:
        return f"{self.prefix}:deadlines"

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:finished"

    def rate_key(self, transferor: str, now: float) -> str:
        return f"{self.prefix}:rate:{transferor}:{int(now // 60)}"

    def tie_key(self, transferee: str) -> str:
        return f"{self.prefix}:tie:{transferee}"

    # -- scripts

    @staticmethod
    def _field_args(
        fields: dict[str, str] | None, identity: dict[str, str | None] | None = None
    ) -> list[str]:
        out: list[str] = []
        for k, v in (fields or {}).items():
            if k in STORE_OWNED:
                raise ValueError(f"field {k!r} is the store's own")
            if k in IDENTITY:
                given = (identity or {}).get(k)
                if identity is None or (given is not None and given != str(v)):
                    raise ValueError(f"field {k!r} may not differ from the REFER's {k}")
                if given is not None:
                    continue  # written from the argument already
            out += [k, str(v)]
        return out

    def _ttl(self, now: float, deadline: float) -> int:
        return max(math.ceil(deadline - now), 0) + self.ttl_margin_s

    # -- API

    def create(
        self,
        call_id: str,
        refer_id: str | int,
        fields: dict[str, str],
        now: float,
        deadline: float,
        max_per_call: int | None = None,
        transferor: str | None = None,
        rate_limit: int | None = None,
        transferee: str | None = None,
        target: str | None = None,
        detail: str = "",
        answered_after_s: float | None = None,
        then: Event | None = None,
        then_detail: str = "",
    ) -> CreateResult:
        """Record a REFER (state refer-seen) unless a duplicate or over a limit.

        `then`: an event applied in the same script once the REFER is created (logged as
        its own step; nothing for a duplicate or a refusal) -- an anchored REFER's accept,
        which referee answers 202 itself: one round trip where there were two.

        Every non-duplicate REFER counts toward the transferor's rate, even one refused
        by a limit; a refused one creates nothing else.  `answered_after_s`: the caller
        answers the REFER itself (503) if no reply came by then; a script Redis runs later
        than that (it hung, then resumed) creates nothing ("too-late").  Checked against
        Redis's own clock, once the client has read its offset.
        """
        then_args = self._then_args(then, then_detail)  # before anything is written
        rid = normalise_refer_id(refer_id)
        xk = self.xfer_key(call_id, rid)
        identity = {"call_id": call_id, "refer_id": rid, "transferor": transferor,
                    "transferee": transferee, "target": target}
        extra = self._field_args(
            {**fields, "refer_id": normalise_refer_id(fields["refer_id"])}
            if "refer_id" in fields else fields,
            identity,
        )
        for name in ("transferor", "transferee", "target"):
            if identity[name] is not None:
                extra += [name, identity[name]]
        ttl = self._ttl(now, deadline)
        keys = [self.index_key(call_id), xk, xk + ":log"]
        rate_pos = tie_pos = 0
        tk = self.tie_key(transferee) if transferee else ""
        counted = ""
        member = f"{call_id}{SEP}{rid}"
        if self.cluster:
            counted = self._before_create(member, now, deadline, ttl, transferor, tk, target)
        else:
            keys.append(self.deadlines_key)
            if transferor:
                keys.append(self.rate_key(transferor, now))
                rate_pos = len(keys)
            if tk:
                keys.append(tk)
                tie_pos = len(keys)
        offset = getattr(self._client, "clock_offset", None)
        too_late = ""
        if answered_after_s is not None and isinstance(offset, float):
            too_late = f"{time.time() + answered_after_s + offset:.6f}"
        args = [
            rid, call_id, f"{now:.3f}", f"{deadline:.3f}", str(ttl),
            "" if max_per_call is None else str(max_per_call),
            "" if rate_limit is None else str(rate_limit),
            str(rate_pos), str(tie_pos), target or "", detail, counted, tk, too_late,
            *then_args, *extra,
        ]
        reply = self._eval(_CREATE, keys, args)
        created, reason, n, count = reply[:4]
        result = CreateResult(bool(int(created)), _s(reason), int(n), int(count))  # type: ignore[arg-type]
        if self.cluster and not result.created:
            result.refers_this_minute = self._undo_create(
                result, reply, member, now, transferor, tk
            )
        return result

    @staticmethod
    def _then_args(then: Event | None, detail: str) -> list[str]:
        """The create script's event applied at once: its name, the state the table gives
        it after refer-seen (the table decides, as for any event), its detail."""
        if then is None:
            return ["", "", ""]
        st = step(State.REFER_SEEN, then)
        if st.outcome != "applied":
            raise ValueError(f"{then} cannot follow a new REFER (table: {st.outcome})")
        return [str(then.value), str(st.new.value), detail]

    # -- the Cluster path: the cross-slot keys, written around the call's script

    @staticmethod
    def _extend(key: str, ttl: int) -> list[tuple]:
        """Give a shared key at least `ttl` seconds, never less than it has (Redis 7.0)."""
        return [("EXPIRE", key, ttl, "NX"), ("EXPIRE", key, ttl, "GT")]

    def _before_create(self, member: str, now: float, deadline: float, ttl: int,
                       transferor: str | None, tk: str, target: str | None) -> str:
        """Deadline entry, tie entry and rate count, before the script: a crash after this
        leaves entries for a transfer that does not exist, which the sweep and
        find_for_invite discard; the other order could leave a transfer nobody expires."""
        cmds: list[tuple] = []
        if transferor:
            rk = self.rate_key(transferor, now)
            cmds += [("INCR", rk), ("EXPIRE", rk, 120)]
        cmds += [("ZADD", self.deadlines_key, "LT", f"{deadline:.3f}", member),
                 *self._extend(self.deadlines_key, ttl)]
        if tk:
            cmds += [("HSET", tk, member, target or ""), *self._extend(tk, ttl)]
        replies = self._pipeline(cmds)
        return str(int(replies[0])) if transferor else ""

    def _undo_create(self, result: CreateResult, reply: list, member: str, now: float,
                     transferor: str | None, tk: str) -> int:
        """A REFER the script refused: take back the entries written for it.  A duplicate
        is not counted and leaves the first REFER's entries as they were."""
        cmds: list[tuple] = []
        count = result.refers_this_minute
        if result.reason == "duplicate":
            state, first_tie, first_target = (_s(x) for x in reply[4:7])
            is_open = bool(state) and State(state) not in FINAL
            if transferor:
                cmds.append(("DECR", self.rate_key(transferor, now)))
                count = max(count - 1, 0)
            if tk and not (is_open and first_tie == tk):
                cmds.append(("HDEL", tk, member))
            if is_open and first_tie:
                cmds.append(("HSET", first_tie, member, first_target))
        else:
            cmds.append(("ZREM", self.deadlines_key, member))
            if tk:
                cmds.append(("HDEL", tk, member))
        if cmds:
            self._pipeline(cmds)
        return count

    def _after_apply(self, event: Event, rid: str, call_id: str, reply: list,
                     deadline: float | None) -> None:
        """What the Cluster script left to do outside the call's slot (see APPLY_LUA)."""
        todo = _s(reply[5]) if len(reply) > 5 else ""
        member = f"{call_id}{SEP}{rid}"
        if todo == "final":
            tie_key, tie_field = _s(reply[6]), _s(reply[7])
            cmds: list[tuple] = [
                ("XADD", self.stream_key, "MAXLEN", "~", self.stream_maxlen, "*", *reply[8:]),
                *self._extend(self.stream_key, self.done_ttl_s),
                ("ZREM", self.deadlines_key, member),
            ]
            if tie_key:
                cmds.append(("HDEL", tie_key, tie_field))
        elif todo == "lowered" and deadline is not None:
            cmds = [("ZADD", self.deadlines_key, "XX", "LT", f"{deadline:.3f}", member)]
        elif todo == "not-due":
            cmds = [("ZADD", self.deadlines_key, "XX", _s(reply[6]), member)]
        elif todo == "restream":
            cmds = [("XADD", self.stream_key, "MAXLEN", "~", self.stream_maxlen, "*",
                     *reply[6:])]
        elif todo == "drop" and event is Event.EXPIRY:
            cmds = [("ZREM", self.deadlines_key, member)]
        else:
            return
        self._pipeline(cmds)

    def apply(
        self,
        call_id: str,
        refer_id: str | int | None,
        event: Event,
        now: float,
        fields: dict[str, str] | None = None,
        deadline: float | None = None,
        detail: str = "",
        seq: int | None = None,
    ) -> ApplyResult:
        """Apply one event to a transfer through kemi.core.state's table, atomically.

        refer_id None (a NOTIFY without ;id=) means the dialog's only open transfer.
        `seq`, a NOTIFY's CSeq: an event older than one applied already is "ignored".
        A refer_id that is not a CSeq number cannot name a transfer: "unknown", no trip.
        EXPIRY before the transfer's own deadline (the sweep read a stale index entry) is
        "ignored" and re-indexes it.
        """
        event = Event(event)
        prepared = self._apply_call(call_id, refer_id, event, now, fields, deadline, detail,
                                    seq)
        if isinstance(prepared, ApplyResult):
            return prepared
        keys, args = prepared
        return self._applied(call_id, event, deadline, self._eval(_APPLY, keys, args))

    def apply_many(self, events: list[dict]) -> list[ApplyResult]:
        """Several events applied in order, in one round trip on a single Redis (a
        pipeline of the apply script; the packed client of kemi.storage.packed runs it as
        one script): a REFER's 2xx that waited for the transfer's first NOTIFY goes with
        it.  Each dict holds apply's arguments by name.  On a Cluster, or after a
        NOSCRIPT, one `apply` after the other.  A transport error raises before any
        result: the caller spools them all (each apply is idempotent on replay)."""
        return self.apply_many_with(events, ())[0]

    def apply_many_with(self, events: list[dict], commands: Sequence[tuple]
                        ) -> tuple[list[ApplyResult], list]:
        """apply_many, and plain `commands` after the events in the same round trip (an
        anchored REFER's NOTIFY 100 recorded with its dialog listed and its move job
        queued); their replies, an error reply in place.  On a Cluster the commands go in
        a pipeline of their own after the events.  An error reply to an event raises as
        apply_many's does, with the commands' replies as its `replies` (they ran)."""
        commands = list(commands)
        if self.cluster or not hasattr(self._client, "call") or (
                len(events) < 2 and not commands):
            results = [self.apply(**e) for e in events]
            return results, (self._client.pipeline(commands) if commands else [])
        calls: list[tuple | ApplyResult] = []
        for e in events:
            ev = Event(e["event"])
            calls.append(self._apply_call(
                e["call_id"], e.get("refer_id"), ev, e["now"], e.get("fields"),
                e.get("deadline"), e.get("detail", ""), e.get("seq")))
        scripts = [("EVALSHA", _APPLY.sha, len(c[0]), *c[0], *c[1])
                   for c in calls if not isinstance(c, ApplyResult)]
        everything = self._client.pipeline(scripts + commands)
        replies, extra = iter(everything[:len(scripts)]), everything[len(scripts):]
        out: list[ApplyResult] = []
        for n, (e, c) in enumerate(zip(events, calls, strict=True)):
            if isinstance(c, ApplyResult):
                out.append(c)
                continue
            reply = next(replies)
            if isinstance(reply, Exception):
                if not _is_noscript(reply):
                    # The commands did run: the caller must not take them for lost.
                    reply.replies = extra  # type: ignore[attr-defined]
                    raise reply
                return out + [self.apply(**rest) for rest in events[n:]], extra
            out.append(self._applied(e["call_id"], Event(e["event"]), e.get("deadline"),
                                     reply))
        return out, extra

    def _apply_call(self, call_id: str, refer_id: str | int | None, event: Event,
                    now: float, fields: dict[str, str] | None, deadline: float | None,
                    detail: str, seq: int | None) -> tuple[list[str], list[str]] | ApplyResult:
        """The apply script's keys and arguments, or the result when no trip is needed."""
        keys = [self.index_key(call_id)]
        if not self.cluster:
            keys += [self.deadlines_key, self.stream_key]
        rid = ""
        if refer_id is not None:
            try:
                rid = normalise_refer_id(refer_id)
            except ValueError:
                return ApplyResult(str(refer_id), None, None, "unknown", False)
            xk = self.xfer_key(call_id, rid)
            keys += [xk, xk + ":log"]
        args = [
            event.value, rid, call_id, f"{now:.3f}",
            "" if deadline is None else f"{deadline:.3f}", detail,
            str(self.done_ttl_s), str(self.stream_maxlen), str(self.ttl_margin_s),
            str(self.log_maxlen), f"{self._base(call_id)}:xfer:", "1" if self.cluster else "",
            "" if seq is None else str(int(seq)), *self._field_args(fields),
        ]
        return keys, args

    def _applied(self, call_id: str, event: Event, deadline: float | None,
                 reply: list) -> ApplyResult:
        rid_out, old, new, outcome, final = reply[:5]
        rid_text, old_text, new_text = _s(rid_out), _s(old), _s(new)
        if self.cluster and rid_text:
            # If this raises, the glue spools the event; its replay redoes only this part.
            self._after_apply(event, rid_text, call_id, reply, deadline)
        return ApplyResult(
            refer_id=rid_text or None,
            old=State(old_text) if old_text else None,
            new=State(new_text) if new_text else None,
            outcome=_s(outcome),  # type: ignore[arg-type]
            final=bool(int(final)),
        )

    def annotate(
        self, call_id: str, refer_id: str | int | None, now: float, fields: dict[str, str],
        detail: str = "",
    ) -> bool:
        """Write facts beside a transfer's state (one round trip, the call's slot only) and
        log them as a "note" line; the state is untouched.  False: no such transfer.
        refer_id None (a NOTIFY without ;id=): the dialog's only open transfer, else its
        latest (one more round trip)."""
        if refer_id is None:
            refer_id = self.latest(call_id)
            if refer_id is None:
                return False
        keys, args = self._annotate_call(call_id, refer_id, now, fields, detail)
        return self._annotated(self._eval(_ANNOTATE, keys, args))

    def annotate_many(self, notes: list[dict]) -> list[bool]:
        """Several notes (annotate's arguments by name, each with its refer_id), in one
        round trip on a single Redis (a pipeline of the annotate script); one after the
        other on a Cluster, after a NOSCRIPT, or for a note without a refer_id.  A
        transport error raises before any result: the caller spools them all (a note is
        idempotent on replay)."""
        if (self.cluster or len(notes) < 2 or not hasattr(self._client, "call")
                or any(n.get("refer_id") is None for n in notes)):
            return [self.annotate(**n) for n in notes]
        calls = [self._annotate_call(n["call_id"], n["refer_id"], n["now"], n["fields"],
                                     n.get("detail", "")) for n in notes]
        replies = self._client.pipeline(
            [("EVALSHA", _ANNOTATE.sha, len(k), *k, *a) for k, a in calls])
        out: list[bool] = []
        for n, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if not _is_noscript(reply):
                    raise reply
                return out + [self.annotate(**rest) for rest in notes[n:]]
            out.append(self._annotated(reply))
        return out

    def _annotate_call(self, call_id: str, refer_id: str | int, now: float,
                       fields: dict[str, str], detail: str) -> tuple[list[str], list[str]]:
        xk = self.xfer_key(call_id, refer_id)
        keys = [xk, xk + ":log"] + ([] if self.cluster else [self.stream_key])
        args = [f"{now:.3f}", detail, str(self.log_maxlen), str(self.stream_maxlen),
                *self._field_args(fields)]
        return keys, args

    def _annotated(self, reply) -> bool:
        if isinstance(reply, list):
            # A fact after the end on a Cluster: the record goes to the stream again, so
            # the SQL log's row holds it.  Not atomic with the script: a failure here
            # raises, the glue spools the note, and its replay writes both again (both
            # are idempotent).
            self._call("XADD", self.stream_key, "MAXLEN", "~", self.stream_maxlen, "*",
                       *reply)
            return True
        return bool(int(reply))

    def latest(self, call_id: str) -> str | None:
        """The dialog's only open transfer, else its latest (None: none, or several open)
        -- the transfer a message without ;id= that came in the dialog belongs to."""
        states = _pairs(self._call("HGETALL", self.index_key(call_id)))
        open_ = [rid for rid, st in states.items() if st and State(st) not in FINAL]
        if len(open_) > 1:
            return None
        pool = open_ or [rid for rid in states if rid.isdigit()]
        return max(pool, key=int) if pool else None

    def reject(
        self, call_id: str, refer_id: str | int, now: float, fields: dict[str, str] | None = None,
        detail: str = "",
    ) -> ApplyResult:
        """Close a transfer referee itself refused after create (its own 4xx/5xx/6xx)."""
        return self.apply(call_id, refer_id, Event.REFER_REJECTED, now, fields, detail=detail)

    def find_for_invite(self, transferee_aor: str) -> list[tuple[str, str, str]]:
        """Open transfers whose transferee is this AOR: (call_id, refer_id, target).

        On a Cluster the tie hash is written outside the transfer's script, so an entry
        may outlive its transfer (a crash between the steps): each entry is checked
        against its dialog's index (one more pipelined trip, only when there are entries)
        and a closed transfer's entry is dropped, so it never decides an INVITE."""
        tk = self.tie_key(transferee_aor)
        out = []
        for member, target in _pairs(self._call("HGETALL", tk)).items():
            call_id, _, rid = member.rpartition(SEP)
            out.append((call_id, rid, target))
        if self.cluster and out:
            states = self._pipeline([("HGET", self.index_key(cid), rid) for cid, rid, _ in out])
            kept, stale = [], []
            for entry, state in zip(out, states, strict=True):
                if state is None:
                    continue  # not (yet) created: a create may be under way
                if State(_s(state)) in FINAL:
                    stale.append(f"{entry[0]}{SEP}{entry[1]}")
                else:
                    kept.append(entry)
            if stale:
                try:
                    self._call("HDEL", tk, *stale)
                except Exception:  # noqa: BLE001 - only tidying: they are filtered anyway
                    pass
            out = kept
        return sorted(out)

    def open_for_invite(self, transferee_aor: str) -> list[OpenTransfer]:
        """find_for_invite with what tying an INVITE needs of each record (one more round
        trip, only when the transferee has open transfers)."""
        found = self.find_for_invite(transferee_aor)
        if not found:
            return []
        fields = ("state", "invite_call_id", "referred_by", "tie_token", "created_at")
        keys = [self.xfer_key(cid, rid) for cid, rid, _ in found]
        if self.cluster:
            rows = self._pipeline([("HMGET", k, *fields) for k in keys])
        else:
            rows = self._eval(_RECORDS, keys, list(fields))
        out = []
        for (cid, rid, target), row in zip(found, rows, strict=True):
            state, invite_cid, referred_by, token, created = (
                _s(v) if v is not None else "" for v in row)
            if not state or State(state) in FINAL:
                continue
            out.append(OpenTransfer(cid, rid, target, invite_cid, referred_by, token,
                                    float(created or 0)))
        return out

    def due(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        """Transfers past their deadline, oldest first, for the expiry sweep (apply EXPIRY)."""
        members = self._call(
            "ZRANGEBYSCORE", self.deadlines_key, "-inf", f"{now:.3f}", "LIMIT", 0, limit
        )
        out = []
        for m in members or ():
            call_id, _, rid = _s(m).rpartition(SEP)
            out.append((call_id, rid))
        return out

    def open_transfers(self, limit: int = 100) -> list[dict[str, str]]:
        """Open transfers of the whole cluster (the deadline index), soonest deadline
        first; an entry whose record is gone or final meanwhile is left out."""
        members = self._call("ZRANGE", self.deadlines_key, 0, max(limit, 1) - 1)
        out = []
        for m in members or ():
            call_id, _, rid = _s(m).rpartition(SEP)
            record = self.get(call_id, rid)
            if record and record.get("state") not in FINAL:
                out.append(record)
        return out

    def open_count(self) -> int:
        """How many transfers of the whole cluster are open (their deadline entries)."""
        return int(self._call("ZCARD", self.deadlines_key) or 0)

    def refer_ids(self, call_id: str) -> list[str]:
        """The REFERs referee recorded in a dialog (its index), oldest first."""
        return sorted(_pairs(self._call("HGETALL", self.index_key(call_id))), key=int)

    def transferor_contact(self, call_id: str, refer_id: str | None) -> str | None:
        """The Contact of the transferor's REFER (the latest open transfer of the dialog
        when the NOTIFY names none)."""
        rid = refer_id if refer_id is not None else self.latest(call_id)
        if rid is None:
            return None
        value = self._call("HGET", self.xfer_key(call_id, rid), "transferor_contact")
        return _s(value) if value else None

    def get(self, call_id: str, refer_id: str | int) -> dict[str, str] | None:
        return _pairs(self._call("HGETALL", self.xfer_key(call_id, refer_id))) or None

    def log(self, call_id: str, refer_id: str | int) -> list[str]:
        key = self.xfer_key(call_id, refer_id) + ":log"
        return [_s(x) for x in self._call("LRANGE", key, 0, -1)]

    def finished(self, count: int = 100) -> list[dict[str, str]]:
        """The newest ``count`` finished transfers, newest first; each dict has "stream_id"
        too. A record streamed again (facts after its end) is listed once, as it is now, and
        counts once: the stream is read in pages until ``count`` transfers are found."""
        out: list[dict[str, str]] = []
        seen: set[tuple[str | None, str | None]] = set()
        end = "+"
        page = max(count, 16)
        while len(out) < count:
            entries = self._call("XREVRANGE", self.stream_key, end, "-", "COUNT", page) or ()
            for stream_id, body in entries:
                record = _pairs(body)
                key = (record.get("call_id"), record.get("refer_id"))
                if key in seen:
                    continue
                seen.add(key)
                record["stream_id"] = _s(stream_id)
                out.append(record)
                if len(out) == count:
                    break
            if len(entries) < page:
                break
            end = "(" + _s(entries[-1][0])
        out.sort(key=lambda r: _float(r.get("final_at")), reverse=True)
        return out


def _float(text: str | None) -> float:
    """A record's timestamp for sorting; an unreadable one sorts last."""
    try:
        return float(text or 0)
    except ValueError:
        return 0.0
