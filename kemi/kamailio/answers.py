"""A REFER's 2xx answers, noted in shared memory by the reply route in one step (no
Redis trip, in kamailio-native.cfg no Python), taken in at the dialog's next use."""

from __future__ import annotations

import time
from collections.abc import Callable

import KSR  # provided by app_python3

from kemi.kamailio.htables import table_keys

# A REFER's 2xx answer as noted: (refer id, status code, when its reply route ran).
Answer = tuple[str, int, float]

ANSWER_TABLE = "referee_ans"


class Answers:
    """2xx answers to REFERs, noted by the reply route in one step -- by
    kamailio-native.cfg itself (no Python for a REFER's 202), or by referee's reply route
    -- instead of two read-modify-writes of the order state and the deferred accepts.

        referee_ans   Call-ID -> "<refer id> <code> <time>;" per answer, appended under
                      the slot lock (the cfg's sht_lock, KSR.htable.sht_lock here)

    Taken by kemi.kamailio.sequencer.Sequencer when the dialog's order state is next read
    (a NOTIFY, the order timer), before the dialog's next record
    (Recorder.apply_after_accepts), or by the sweep; until then a NOTIFY of the dialog
    waits as it would for an unanswered REFER.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self._usable: bool | None = None  # None: not probed yet in this process

    @property
    def usable(self) -> bool:
        """The cfg declares the table -- probed once per process (by a slot lock: htable
        logs an ERROR for every use of an undeclared table, so nothing else touches it)."""
        if self._usable is None:
            why = ""
            try:
                if KSR.htable.sht_lock(ANSWER_TABLE, "probe") < 0:
                    why = "not declared"
                else:
                    KSR.htable.sht_unlock(ANSWER_TABLE, "probe")
            except Exception as exc:  # noqa: BLE001 - htable module missing
                why = str(exc)
            self._usable = not why
            if why:
                self.log(f"htable '{ANSWER_TABLE}' unusable ({why}): REFER 2xx answers are "
                         "written to the order state and the deferred accepts instead (two "
                         "locked writes each); declare it as the example cfgs do")
        return self._usable

    def note(self, cid: str, refer_id: str, code: int) -> bool:
        """False: the cfg lacks the table (said once per process); the caller records
        the answer the older way."""
        if not self.usable:
            return False
        entry = f"{refer_id} {code} {time.time():.6f};"
        KSR.htable.sht_lock(ANSWER_TABLE, cid)
        try:
            have = KSR.htable.sht_get(ANSWER_TABLE, cid)
            return KSR.htable.sht_sets(
                ANSWER_TABLE, cid, entry if have is None else str(have) + entry) >= 0
        finally:
            KSR.htable.sht_unlock(ANSWER_TABLE, cid)

    def oldest(self, cid: str) -> float:
        """When the dialog's oldest answer was noted: inf if it has none, -inf if none of
        them can be read (to be taken, and said, at once rather than left to expire)."""
        text = KSR.htable.sht_get(ANSWER_TABLE, cid) if self.usable else None
        if text is None:
            return float("inf")
        times = [a[2] for a in map(_answer, str(text).split(";")) if a is not None]
        return min(times) if times else float("-inf")

    def waiting(self, cid: str) -> bool:
        return self.usable and KSR.htable.sht_get(ANSWER_TABLE, cid) is not None

    def take(self, cid: str) -> list[Answer]:
        """The dialog's answers, oldest first, removed; [] at once when there are none
        (read without the lock: one noted meanwhile is taken next time)."""
        if not self.usable or KSR.htable.sht_get(ANSWER_TABLE, cid) is None:
            return []
        KSR.htable.sht_lock(ANSWER_TABLE, cid)
        try:
            text = KSR.htable.sht_get(ANSWER_TABLE, cid)
            if text is None:
                return []
            KSR.htable.sht_rm(ANSWER_TABLE, cid)
        finally:
            KSR.htable.sht_unlock(ANSWER_TABLE, cid)
        out: list[Answer] = []
        for item in str(text).split(";"):
            answer = _answer(item)
            if answer is not None:
                out.append(answer)
            elif item.strip():
                self.log(f"dialog {cid}: noted REFER answer {item!r} unreadable; dropped")
        return out

    def dialogs(self) -> list[str]:
        return table_keys(ANSWER_TABLE) if self.usable else []


def _answer(item: str) -> Answer | None:
    """"<refer id> <code> <time>" (the cfg writes $TV(Sn), "sec.usec")."""
    parts = item.split()
    if len(parts) != 3:
        return None
    try:
        code, at = int(parts[1]), float(parts[2])
    except ValueError:
        return None
    if not 200 <= code < 300:
        return None
    return parts[0], code, at
