"""agi.follow's phase table: every transition of a followed transfer is in PHASES, one
table in one file, and a step it does not list is refused, never taken."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agi.follow as follow
from agi.follow import PHASES, FollowError, Phase, Step, Transfer, advance
from kemi.core.anchor import MoveJob


def _transfer(phase: Phase) -> Transfer:
    job = MoveJob(call_id="c1", refer_id="7", target="sip:t@x", dial="PJSIP/t",
                  transferor="a@x", reply_to="p:{anchor:n}:progress", created_at=0.0)
    return Transfer(job, "1-0", 0.0, phase=phase)


def _reachable() -> set[Phase]:
    seen, todo = {Phase.LOCATE}, [Phase.LOCATE]
    while todo:
        here = todo.pop()
        for (src, _step), dst in PHASES.items():
            if src is here and dst not in seen:
                seen.add(dst)
                todo.append(dst)
    return seen


def test_every_phase_is_reachable_from_locate_and_done_is_the_only_end():
    assert _reachable() == set(Phase)
    ends = {p for p in Phase if not any(src is p for src, _ in PHASES)}
    assert ends == {Phase.DONE}


def test_every_phase_but_done_can_finish():
    assert all(PHASES[(p, Step.FINISHED)] is Phase.DONE for p in Phase if p is not Phase.DONE)


@pytest.mark.parametrize("phase, step", [
    (Phase.LOCATE, Step.ANSWERED),  # nothing dials before the channels moved
    (Phase.DONE, Step.FINISHED),  # a job is acknowledged once
    (Phase.RELEASE, Step.FAILED),  # after the answer, no failure can be told
    (Phase.RECALL, Step.RECALLING),  # one recall per transfer
])
def test_a_step_the_table_does_not_list_is_refused(phase, step):
    tr = _transfer(phase)
    with pytest.raises(FollowError, match=f"{step.value} in phase {phase.value}"):
        advance(tr, step)
    assert tr.phase is phase


def test_a_listed_step_moves_the_transfer_to_its_target():
    tr = _transfer(Phase.DIALING)
    advance(tr, Step.DIAL_FAILED)
    assert tr.phase is Phase.CAUSE


def test_no_code_but_advance_sets_a_phase():
    tree = ast.parse(Path(follow.__file__).read_text())
    setters = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AugAssign)
        and any(isinstance(t, ast.Attribute) and t.attr == "phase"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
    ]
    assert len(setters) == 1, [ast.unparse(n) for n in setters]  # the one in advance()
