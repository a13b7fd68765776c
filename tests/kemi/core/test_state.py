"""The transfer state machine, checked cell by cell against a specification written here.

The grid below is written independently of kemi/state.py: a change to the table must be
made in both places, on purpose.  Cells: a state name (applied), "-" (ignored, legal),
"X" (illegal, recorded as an anomaly).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from kemi.core.state import (
    FINAL,
    IGNORE,
    ILLEGAL,
    TRANSITIONS,
    Event,
    State,
    Step,
    notify_event,
    step,
    table_as_json,
)

SHORT = {
    "new": State.NEW, "seen": State.REFER_SEEN, "rej": State.REJECTED,
    "acc": State.ACCEPTED, "accn": State.ACCEPTED_NOSUB, "try": State.TRYING,
    "ring": State.RINGING, "cln": State.CALLING_NOSUB, "gone": State.TRANSFEROR_GONE,
    "ok": State.SUCCEEDED, "fail": State.FAILED, "exp": State.EXPIRED,
}

COLUMNS = [
    Event.REFER, Event.REFER_ACCEPTED, Event.REFER_ACCEPTED_NOSUB, Event.REFER_REJECTED,
    Event.NOTIFY_TRYING, Event.NOTIFY_RINGING, Event.NOTIFY_SUCCESS, Event.NOTIFY_FAILURE,
    Event.NOTIFY_FAILURE_NONFINAL, Event.NOTIFY_481, Event.INVITE, Event.INVITE_2XX,
    Event.INVITE_FAILED, Event.BYE_TRANSFEROR, Event.BYE_TRANSFEREE, Event.EXPIRY,
    Event.OPERATOR_END,
]

SPEC = """
# ref=REFER acc/accn/rej=its 2xx / 2xx Refer-Sub:false / rejection; n*=NOTIFY try,
# ring, ok, failure, failure-nonfinal, 481; inv/i2xx/ifl=transferee's INVITE and its
# 2xx / failure; byr=BYE from transferor, bye=from transferee; exp=expiry;
# end=an operator's `referee transfer end`
# state ref  acc  accn rej  ntry nrng nok  nfl  nfn  n481 inv  i2xx ifl  byr  bye  exp  end
new   seen X    X    X    X    X    X    X    X    X    X    X    X    X    X    X    X
seen  -    acc  accn rej  try  ring ok   fail try  gone try  try  try  gone -    exp  exp
rej   X    X    X    X    X    X    X    X    X    -    -    -    -    -    -    -    -
acc   -    -    X    X    try  ring ok   fail acc  gone try  -    -    gone -    exp  exp
accn  -    X    -    X    X    X    X    X    X    X    cln  ok   fail -    -    exp  exp
try   -    -    cln  X    try  ring ok   fail try  gone try  -    -    gone -    exp  exp
ring  -    -    cln  X    -    ring ok   fail ring gone -    -    -    gone -    exp  exp
cln   -    X    -    X    X    X    X    X    X    X    cln  ok   fail -    -    exp  exp
gone  -    -    -    rej  -    -    ok   fail -    -    -    ok   fail -    -    exp  exp
ok    X    -    X    X    X    X    -    X    X    -    -    -    -    -    -    -    -
fail  X    -    X    X    X    X    X    -    X    -    -    -    -    -    -    -    -
exp   X    X    X    X    X    X    X    X    X    -    -    -    -    -    -    -    -
"""


def _spec() -> dict[tuple[State, Event], str]:
    out = {}
    for line in SPEC.strip().splitlines():
        if line.startswith("#"):
            continue
        name, *cells = line.split()
        assert len(cells) == len(COLUMNS), name
        for event, cell in zip(COLUMNS, cells, strict=True):
            out[(SHORT[name], event)] = cell
    return out


EXPECTED = _spec()


def test_spec_and_table_are_complete():
    pairs = {(s, e) for s in State for e in Event}
    assert set(EXPECTED) == pairs
    assert set(TRANSITIONS) == pairs
    for cell in TRANSITIONS.values():
        assert cell in (IGNORE, ILLEGAL) or isinstance(cell, State)


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED), ids=lambda v: str(v))
def test_every_cell_matches_the_spec(state: State, event: Event):
    want = EXPECTED[(state, event)]
    got = step(state, event)
    assert (got.old, got.event) == (state, event)
    if want == "-":
        assert (got.outcome, got.new, got.final) == ("ignored", state, False)
    elif want == "X":
        assert (got.outcome, got.new, got.final) == ("illegal", state, False)
    else:
        target = SHORT[want]
        assert (got.outcome, got.new) == ("applied", target)
        assert got.final == (target in FINAL and state not in FINAL)


def test_final_states():
    assert FINAL == {State.REJECTED, State.SUCCEEDED, State.FAILED, State.EXPIRED}
    # Nothing leaves a final state.
    for (state, _event), cell in TRANSITIONS.items():
        if state in FINAL:
            assert cell in (IGNORE, ILLEGAL)


def test_notify_after_terminated_is_illegal():
    for final in (State.SUCCEEDED, State.FAILED):
        for ev in (Event.NOTIFY_TRYING, Event.NOTIFY_RINGING, Event.NOTIFY_FAILURE_NONFINAL):
            assert step(final, ev).outcome == "illegal"


def test_a_final_notify_contradicting_the_outcome_is_illegal():
    assert step(State.SUCCEEDED, Event.NOTIFY_FAILURE).outcome == "illegal"
    assert step(State.FAILED, Event.NOTIFY_SUCCESS).outcome == "illegal"
    assert step(State.EXPIRED, Event.NOTIFY_SUCCESS).outcome == "illegal"
    assert step(State.REJECTED, Event.REFER_REJECTED).outcome == "illegal"


def test_a_final_notify_agreeing_with_the_outcome_is_ignored():
    """The tied INVITE's 200 decided while the transferor was gone; the transferee's final
    NOTIFY then reports the same outcome: expected (RFC 5057), not an anomaly."""
    assert step(State.SUCCEEDED, Event.NOTIFY_SUCCESS).outcome == "ignored"
    assert step(State.FAILED, Event.NOTIFY_FAILURE).outcome == "ignored"


def test_rejection_after_202_is_illegal():
    for state in (State.ACCEPTED, State.ACCEPTED_NOSUB, State.TRYING, State.RINGING):
        assert step(state, Event.REFER_REJECTED).outcome == "illegal"


def test_notify_before_202_is_legal():
    s = step(State.REFER_SEEN, Event.NOTIFY_TRYING)
    assert (s.outcome, s.new) == ("applied", State.TRYING)
    # ... and the 202 that arrives after it is no anomaly.
    assert step(State.TRYING, Event.REFER_ACCEPTED).outcome == "ignored"
    done = step(State.REFER_SEEN, Event.NOTIFY_SUCCESS)
    assert (done.new, done.final) == (State.SUCCEEDED, True)
    assert step(State.SUCCEEDED, Event.REFER_ACCEPTED).outcome == "ignored"


def test_transferor_bye_keeps_the_outcome():
    path = [Event.REFER, Event.REFER_ACCEPTED, Event.NOTIFY_TRYING, Event.BYE_TRANSFEROR,
            Event.NOTIFY_RINGING, Event.NOTIFY_SUCCESS]
    state = State.NEW
    steps = []
    for ev in path:
        s = step(state, ev)
        steps.append(s)
        state = s.new
    assert state == State.SUCCEEDED
    assert [s.final for s in steps] == [False] * 5 + [True]


def test_nosub_path_is_closed_by_the_invite():
    state = State.NEW
    for ev in (Event.REFER, Event.REFER_ACCEPTED_NOSUB, Event.BYE_TRANSFEROR, Event.INVITE):
        state = step(state, ev).new
    assert state == State.CALLING_NOSUB
    assert step(state, Event.NOTIFY_SUCCESS).outcome == "illegal"
    assert step(state, Event.INVITE_FAILED).new == State.FAILED


def test_step_is_a_frozen_dataclass():
    s = step(State.REFER_SEEN, Event.REFER_ACCEPTED)
    assert s == Step(State.REFER_SEEN, Event.REFER_ACCEPTED, State.ACCEPTED, "applied", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.new = State.FAILED  # type: ignore[misc]


def test_step_accepts_plain_strings():
    assert step("accepted", "notify-success").new == State.SUCCEEDED  # type: ignore[arg-type]


def test_table_as_json_round_trips():
    text = table_as_json()
    assert " " not in text
    flat = json.loads(text)
    assert len(flat) == len(State) * len(Event)
    for (state, event), cell in TRANSITIONS.items():
        assert flat[f"{state.value}|{event.value}"] == str(cell)
    assert flat["refer-seen|notify-trying"] == "trying"
    assert flat["new|notify-success"] == "illegal"
    assert flat["succeeded|bye-transferor"] == "ignore"


@pytest.mark.parametrize(
    ("code", "terminated", "event"),
    [
        (100, False, Event.NOTIFY_TRYING),
        (183, False, Event.NOTIFY_RINGING),
        (180, False, Event.NOTIFY_RINGING),
        (181, False, Event.NOTIFY_RINGING),
        (199, False, Event.NOTIFY_TRYING),
        (100, True, Event.NOTIFY_FAILURE),
        (180, True, Event.NOTIFY_FAILURE),
        (200, False, Event.NOTIFY_SUCCESS),
        (200, True, Event.NOTIFY_SUCCESS),
        (202, True, Event.NOTIFY_SUCCESS),
        (486, True, Event.NOTIFY_FAILURE),
        (486, False, Event.NOTIFY_FAILURE_NONFINAL),
        (603, True, Event.NOTIFY_FAILURE),
        (302, False, Event.NOTIFY_FAILURE_NONFINAL),
    ],
)
def test_notify_event(code: int, terminated: bool, event: Event):
    assert notify_event(code, terminated) is event


@pytest.mark.parametrize("code", [0, 99, 1000, -200])
def test_notify_event_rejects_non_status_codes(code: int):
    with pytest.raises(ValueError):
        notify_event(code, True)
