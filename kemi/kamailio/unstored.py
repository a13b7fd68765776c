"""Transfers this node relayed while Redis was away (fail open: their records are in the
journal), remembered in shared memory as tying their transferees' INVITEs needs them:
with Redis away the INVITE cannot look its transfer up, and it went untied -- the
replayed record never learnt its INVITE.  Node-local: an INVITE reaching another node
meanwhile is not tied (as before).

    referee   "unstored:<transferee AOR>" -> JSON list of kemi.core.transfer.OpenTransfer
              fields, under that slot's lock; kept for the transfer's open time at most
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

import KSR  # provided by app_python3

from kemi.core.transfer import OpenTransfer, ReferPlan
from kemi.kamailio.marks import HTABLE

PREFIX = "unstored:"
KEEP = 16  # per transferee: a phone places one call per REFER


def _load(text) -> list[OpenTransfer]:
    try:
        rows = json.loads(str(text)) if text else []
        return [OpenTransfer(**row) for row in rows]
    except (ValueError, TypeError):
        return []


def _update(aor: str, change) -> list[OpenTransfer]:
    """`change` applied to the transferee's list under its slot lock; the list after it
    ([] when the cfg lacks the htable)."""
    key = PREFIX + aor
    try:
        KSR.htable.sht_lock(HTABLE, key)
    except Exception:  # noqa: BLE001 - htable not loaded: nothing remembered
        return []
    try:
        have = _load(KSR.htable.sht_get(HTABLE, key))
        now = change(have)
        if now:
            KSR.htable.sht_sets(HTABLE, key, json.dumps([asdict(t) for t in now[-KEEP:]],
                                                        separators=(",", ":")))
        elif have:
            KSR.htable.sht_rm(HTABLE, key)
        return now
    finally:
        KSR.htable.sht_unlock(HTABLE, key)


def remember(plan: ReferPlan, open_s: float) -> None:
    """A REFER relayed with its record spooled."""
    now = time.time()
    entry = OpenTransfer(plan.call_id, plan.refer_id, plan.target,
                         referred_by=plan.fields.get("referred_by", ""), created_at=now)
    _update(plan.transferee, lambda have: [
        *(t for t in have if now - t.created_at < open_s
          and (t.call_id, t.refer_id) != (entry.call_id, entry.refer_id)), entry])


def open_for(transferee: str, open_s: float) -> list[OpenTransfer]:
    """The transferee's remembered transfers, as TransferStore.open_for_invite gives
    them."""
    now = time.time()
    return _update(transferee, lambda have: [t for t in have
                                             if now - t.created_at < open_s])


def tied(transferee: str, call_id: str, refer_id: str, invite_call_id: str) -> None:
    """The transfer has its INVITE now: a second one is not tied to it."""
    _update(transferee, lambda have: [
        replace(t, invite_call_id=invite_call_id)
        if (t.call_id, t.refer_id) == (call_id, refer_id) else t for t in have])
