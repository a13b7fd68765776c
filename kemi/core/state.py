"""The transfer state machine: every transition of a REFER in one table (h11's rule).

Why one table: the Kamailio glue, the Redis Lua script (built from `table_as_json`), the
CLI's ladder view and the tests all read the same cells, so a rule changes in one place.
Each cell is a target `State` (applied), `IGNORE` (legal, nothing changes: retransmissions,
stale progress, late BYEs) or `ILLEGAL` (recorded as an anomaly, nothing changes).  Nothing
here does I/O.

Two facts shape the table: Kamailio processes the 202, the NOTIFYs and the BYEs of one
transfer in different worker processes, so the store may see them in any order (a NOTIFY
overtaking its 202 is legal anyway, RFC 3515/6665); and the table cannot remember history
beyond the state, so a cell that is reachable two ways is written for the likelier one
(each such choice says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal


class State(StrEnum):
    NEW = "new"  # pseudo-state: no transfer recorded yet
    REFER_SEEN = "refer-seen"
    REJECTED = "rejected"
    ACCEPTED = "accepted"  # 2xx, implicit subscription
    ACCEPTED_NOSUB = "accepted-nosub"  # 2xx echoing Refer-Sub: false (RFC 4488)
    TRYING = "trying"
    RINGING = "ringing"
    CALLING_NOSUB = "calling-nosub"  # transferee's INVITE seen, no subscription
    TRANSFEROR_GONE = "transferor-gone"  # transferor left; outcome still awaited
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


class Event(StrEnum):
    REFER = "refer"
    REFER_ACCEPTED = "refer-accepted"
    REFER_ACCEPTED_NOSUB = "refer-accepted-nosub"
    REFER_REJECTED = "refer-rejected"
    NOTIFY_TRYING = "notify-trying"  # sipfrag 1xx other than 18x
    NOTIFY_RINGING = "notify-ringing"  # sipfrag 18x
    NOTIFY_SUCCESS = "notify-success"  # sipfrag 2xx
    NOTIFY_FAILURE = "notify-failure"  # >=300 terminated, or terminated with a 1xx
    NOTIFY_FAILURE_NONFINAL = "notify-failure-nonfinal"  # >=300, subscription still active
    NOTIFY_481 = "notify-481"  # transferor answered a NOTIFY with 481
    INVITE = "invite"  # transferee's new INVITE tied to this transfer
    INVITE_2XX = "invite-2xx"
    INVITE_FAILED = "invite-failed"  # a final failure (the glue must not report 401/407)
    BYE_TRANSFEROR = "bye-transferor"
    BYE_TRANSFEREE = "bye-transferee"
    EXPIRY = "expiry"
    # An operator closed the transfer (`referee transfer end`): no outcome will be learnt.
    OPERATOR_END = "operator-end"


IGNORE: Final = "ignore"
ILLEGAL: Final = "illegal"
Cell = State | Literal["ignore", "illegal"]
Outcome = Literal["applied", "ignored", "illegal"]

FINAL: frozenset[State] = frozenset(
    {State.REJECTED, State.SUCCEEDED, State.FAILED, State.EXPIRED}
)

S, E = State, Event

# Rows shared by the subscription states (ACCEPTED, TRYING, RINGING): the NOTIFY decides.
# Each row adds REFER_ACCEPTED_NOSUB and NOTIFY_FAILURE_NONFINAL (a self-transition: the
# sipfrag fields are recorded as applied, the state stays).
_SUBSCRIBED: dict[Event, Cell] = {
    E.REFER: IGNORE,  # a retransmission that crossed our 202; tm absorbs most
    E.REFER_ACCEPTED: IGNORE,  # retransmitted 2xx, or a 202 overtaken by a NOTIFY
    E.REFER_REJECTED: ILLEGAL,  # a rejection after acceptance
    E.NOTIFY_TRYING: S.TRYING,
    E.NOTIFY_RINGING: S.RINGING,
    E.NOTIFY_SUCCESS: S.SUCCEEDED,
    E.NOTIFY_FAILURE: S.FAILED,
    E.NOTIFY_481: S.TRANSFEROR_GONE,  # RFC 6665: the subscription is gone, not the call
    E.INVITE: S.TRYING,
    E.INVITE_2XX: IGNORE,  # recorded; the final NOTIFY still decides
    E.INVITE_FAILED: IGNORE,  # recorded; the transferee may try again, the NOTIFY decides
    E.BYE_TRANSFEROR: S.TRANSFEROR_GONE,  # RFC 5589: must not lose the outcome
    # The transferee may end the old call once its new one is up, and the refer
    # subscription is a separate dialog usage that outlives a BYE (RFC 5057).
    E.BYE_TRANSFEREE: IGNORE,
    E.EXPIRY: S.EXPIRED,
    E.OPERATOR_END: S.EXPIRED,
}

# Rows shared by the no-subscription states: the transferee's INVITE outcome closes it.
_NOSUB: dict[Event, Cell] = {
    E.REFER: IGNORE,  # retransmission
    E.REFER_ACCEPTED: ILLEGAL,  # a second 2xx contradicting the Refer-Sub: false one
    E.REFER_ACCEPTED_NOSUB: IGNORE,  # retransmitted 2xx
    E.REFER_REJECTED: ILLEGAL,  # a rejection after acceptance
    # No subscription was agreed, so no NOTIFY may come (nor a 481 to one).
    E.NOTIFY_TRYING: ILLEGAL,
    E.NOTIFY_RINGING: ILLEGAL,
    E.NOTIFY_SUCCESS: ILLEGAL,
    E.NOTIFY_FAILURE: ILLEGAL,
    E.NOTIFY_FAILURE_NONFINAL: ILLEGAL,
    E.NOTIFY_481: ILLEGAL,
    E.INVITE: S.CALLING_NOSUB,  # also a retry (e.g. after a 407) while calling
    E.INVITE_2XX: S.SUCCEEDED,
    E.INVITE_FAILED: S.FAILED,
    E.BYE_TRANSFEROR: IGNORE,  # normal right after a 202 with Refer-Sub: false
    E.BYE_TRANSFEREE: IGNORE,  # the old call may end before or after the new one
    E.EXPIRY: S.EXPIRED,
    E.OPERATOR_END: S.EXPIRED,
}


def _final_row(state: State) -> dict[Event, Cell]:
    row: dict[Event, Cell] = {
        E.REFER: ILLEGAL,  # a REFER reusing a finished transfer's CSeq
        E.REFER_ACCEPTED_NOSUB: ILLEGAL,
        E.REFER_REJECTED: ILLEGAL,  # a second final for the REFER
        E.NOTIFY_TRYING: ILLEGAL,  # NOTIFY after terminated
        E.NOTIFY_RINGING: ILLEGAL,
        E.NOTIFY_SUCCESS: ILLEGAL,  # a second final
        E.NOTIFY_FAILURE: ILLEGAL,
        E.NOTIFY_FAILURE_NONFINAL: ILLEGAL,
        E.NOTIFY_481: IGNORE,  # the transferor dropping a subscription that is over anyway
        E.INVITE: IGNORE,
        E.INVITE_2XX: IGNORE,
        E.INVITE_FAILED: IGNORE,
        E.BYE_TRANSFEROR: IGNORE,  # RFC 5589: the BYE normally follows the final NOTIFY
        E.BYE_TRANSFEREE: IGNORE,
        E.EXPIRY: IGNORE,  # the sweep racing a final event
        E.OPERATOR_END: IGNORE,  # the operator racing a final event
    }
    # A final NOTIFY may be processed before its 202 (another worker, RFC 3515 rule 8;
    # FreeSWITCH sends its final 200 at once): that late 202 is no anomaly.  After a
    # rejection or an expiry a 2xx is one.
    late_202_ok = state in (S.SUCCEEDED, S.FAILED)
    row[E.REFER_ACCEPTED] = IGNORE if late_202_ok else ILLEGAL
    # A final NOTIFY that agrees with the outcome is the transferee's report of what the
    # tied INVITE (or the transferor leaving) already decided: expected, not an anomaly.
    # One that contradicts it stays illegal.
    if state is S.SUCCEEDED:
        row[E.NOTIFY_SUCCESS] = IGNORE
    if state is S.FAILED:
        row[E.NOTIFY_FAILURE] = IGNORE
    return row


TRANSITIONS: dict[tuple[State, Event], Cell] = {}


def _row(state: State, cells: dict[Event, Cell]) -> None:
    for event, cell in cells.items():
        TRANSITIONS[(state, event)] = cell


# NEW: nothing is known of the transfer; only its REFER may start it.
_row(S.NEW, {ev: ILLEGAL for ev in Event} | {E.REFER: S.REFER_SEEN})

_row(S.REFER_SEEN, {
    E.REFER: IGNORE,  # retransmission
    E.REFER_ACCEPTED: S.ACCEPTED,
    E.REFER_ACCEPTED_NOSUB: S.ACCEPTED_NOSUB,
    E.REFER_REJECTED: S.REJECTED,
    # A NOTIFY may overtake the 202 (RFC 3515, RFC 6665 4.1.2.4): legal, it decides.
    E.NOTIFY_TRYING: S.TRYING,
    E.NOTIFY_RINGING: S.RINGING,
    E.NOTIFY_SUCCESS: S.SUCCEEDED,
    E.NOTIFY_FAILURE: S.FAILED,
    E.NOTIFY_FAILURE_NONFINAL: S.TRYING,  # a live subscription, the transferee still trying
    # A compliant transferor accepts a NOTIFY before the 202; a 481 means it no longer
    # knows the dialog, i.e. it is gone.  The outcome is still awaited.
    E.NOTIFY_481: S.TRANSFEROR_GONE,
    E.INVITE: S.TRYING,  # the transferee acted before its 202 reached us
    # Its new call ended before we saw the 202: record that the call is under way and let
    # the 202 / NOTIFY decide.  (With Refer-Sub: false this outcome is lost to expiry; it
    # needs a 202 slower than a whole call set-up.)
    E.INVITE_2XX: S.TRYING,
    E.INVITE_FAILED: S.TRYING,
    E.BYE_TRANSFEROR: S.TRANSFEROR_GONE,  # Teams BYEs within ms of sending the REFER/202
    # The transferee ending the old call does not answer the REFER: its final response
    # (or expiry) still decides.
    E.BYE_TRANSFEREE: IGNORE,
    E.EXPIRY: S.EXPIRED,
    E.OPERATOR_END: S.EXPIRED,
})

_row(S.ACCEPTED, _SUBSCRIBED | {
    E.REFER_ACCEPTED_NOSUB: ILLEGAL,  # a second 2xx contradicting the first
    E.NOTIFY_FAILURE_NONFINAL: S.ACCEPTED,
})

_row(S.TRYING, _SUBSCRIBED | {
    E.NOTIFY_FAILURE_NONFINAL: S.TRYING,
    E.INVITE: S.TRYING,  # recorded as applied: the INVITE itself is now seen
    # TRYING may have been reached by the transferee's INVITE before its 202: a
    # Refer-Sub: false 2xx then means the INVITE outcome decides.
    E.REFER_ACCEPTED_NOSUB: S.CALLING_NOSUB,
})

_row(S.RINGING, _SUBSCRIBED | {
    E.NOTIFY_TRYING: IGNORE,  # stale progress after a 18x
    E.NOTIFY_FAILURE_NONFINAL: S.RINGING,
    E.INVITE: IGNORE,  # already further than that
    E.REFER_ACCEPTED_NOSUB: S.CALLING_NOSUB,  # as for TRYING: the 2xx says who decides
})

_row(S.ACCEPTED_NOSUB, _NOSUB)
_row(S.CALLING_NOSUB, _NOSUB)

_row(S.TRANSFEROR_GONE, {
    # The 202 may still be in flight when the transferor leaves (or its BYE was
    # processed first by another worker).
    E.REFER: IGNORE,
    E.REFER_ACCEPTED: IGNORE,
    E.REFER_ACCEPTED_NOSUB: IGNORE,
    # The REFER's final response is unique: a rejection here means no 2xx came first,
    # so the transfer never started (the cell cannot tell if a 2xx was seen).
    E.REFER_REJECTED: S.REJECTED,
    E.NOTIFY_TRYING: IGNORE,
    E.NOTIFY_RINGING: IGNORE,
    E.NOTIFY_SUCCESS: S.SUCCEEDED,
    E.NOTIFY_FAILURE: S.FAILED,
    E.NOTIFY_FAILURE_NONFINAL: IGNORE,
    E.NOTIFY_481: IGNORE,  # expected once the transferor is gone
    E.INVITE: IGNORE,
    E.INVITE_2XX: S.SUCCEEDED,  # nobody may NOTIFY any more: the INVITE decides too
    E.INVITE_FAILED: S.FAILED,
    E.BYE_TRANSFEROR: IGNORE,
    E.BYE_TRANSFEREE: IGNORE,
    E.EXPIRY: S.EXPIRED,
    E.OPERATOR_END: S.EXPIRED,
})

for _state in FINAL:
    _row(_state, _final_row(_state))

del _state, _row
assert len(TRANSITIONS) == len(State) * len(Event), "every (State, Event) needs a cell"


@dataclass(frozen=True)
class Step:
    """What one event did to one transfer."""

    old: State
    event: Event
    new: State
    outcome: Outcome
    final: bool  # this step made the transfer final


def step(state: State, event: Event) -> Step:
    """Apply one event to a state (pure: the store applies the same table in Lua)."""
    cell = TRANSITIONS[(State(state), Event(event))]
    if cell == IGNORE:
        return Step(state, event, state, "ignored", False)
    if cell == ILLEGAL:
        return Step(state, event, state, "illegal", False)
    target = State(cell)
    return Step(state, event, target, "applied", target in FINAL and state not in FINAL)


def table_as_json() -> str:
    """The table as compact JSON {"state|event": "target|ignore|illegal"} for the Lua script."""
    flat = {f"{s.value}|{e.value}": str(c) for (s, e), c in TRANSITIONS.items()}
    return json.dumps(flat, separators=(",", ":"), sort_keys=True)


def notify_event(code: int, terminated: bool) -> Event:
    """The event a refer NOTIFY stands for, from its sipfrag status code and whether
    Subscription-State says terminated.

    A 2xx is success whatever the Subscription-State (the referenced request succeeded);
    a terminated NOTIFY with a 1xx ends the subscription without an outcome, a failure.
    """
    if not 100 <= code <= 999:
        raise ValueError(f"sipfrag status code {code} is not a SIP status code")
    if code < 200:
        if terminated:
            return Event.NOTIFY_FAILURE
        return Event.NOTIFY_RINGING if 180 <= code <= 189 else Event.NOTIFY_TRYING
    if code < 300:
        return Event.NOTIFY_SUCCESS
    return Event.NOTIFY_FAILURE if terminated else Event.NOTIFY_FAILURE_NONFINAL
