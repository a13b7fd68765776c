"""Glue: run the transfer plan (agi.plan) on an AGISession and write what happened into the
transfer record with TransferStore.annotate.

Mode by FastAGI script name (the path of `AGI(agi://host:port/<script>)`, which Asterisk
sends as `agi_network_script`, and in `agi_request`): "anchored" -> AnchoredRun,
"relayed" -> RelayedRun; any other name ends the session at once (logged, nothing
dialled).  `scripts` maps more names if a dialplan uses others.

Redis is never on the media path: every annotate is tried once, and a failure (Redis down,
hung, or no such transfer) is logged and counted; the plan goes on, so P is still
reconnected (or parked, or sent to the fallback).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from agi.plan import (
    ANCHORED,
    ERROR,
    RELAYED,
    AnchoredRun,
    Note,
    Outcome,
    PlanAborted,
    RelayedRun,
    dial_template,
)
from agi.session import AGIError, AGIHangup, AGISession
from kemi.core.anchor import AnchorError, split_xfer_id

log = logging.getLogger("referee.agi.handler")

DEFAULT_SCRIPTS = {"anchored": ANCHORED, "relayed": RELAYED}


def script_name(env: dict[str, str]) -> str:
    """The script part of agi://host:port/<script>[?args], from agi_network_script or
    agi_request."""
    name = env.get("agi_network_script", "").strip()
    if not name:
        name = urlsplit(env.get("agi_request", "")).path
    return name.strip("/").split("?", 1)[0]


class TransferHandler:
    """callable(session) for FastAGIServer.

    store: a kemi.storage.transfers.TransferStore (or None: nothing recorded, e.g. a dry run).
    relayed_dial: template for the relayed path's dial string over the Refer-To
    ({user}, {host}, {uri}); relayed_timeout_s, relayed_announce: its Dial timeout and
    optional sound; replaces_predial: pre-dial handler (context^exten^priority) used for
    Asterisk's `external_replaces` extension.
    """

    def __init__(
        self,
        store: Any = None,
        scripts: dict[str, str] | None = None,
        relayed_dial: str = "PJSIP/{user}",
        relayed_timeout_s: int = 30,
        relayed_announce: str = "",
        replaces_predial: str = "",
        clock: Callable[[], float] = time.time,
        keep_outcomes: int = 1000,
    ):
        self.store = store
        self.scripts = dict(DEFAULT_SCRIPTS if scripts is None else scripts)
        self.relayed_dial = relayed_dial
        self.relayed_timeout_s = relayed_timeout_s
        self.relayed_announce = relayed_announce
        self.replaces_predial = replaces_predial
        self.clock = clock
        self._store_lock = threading.Lock()  # RespClient is one socket: one caller at a time
        self.store_errors = 0
        self.notes_written = 0
        self.outcomes: deque[tuple[str, Outcome]] = deque(maxlen=keep_outcomes)

    # -- recording

    def _ids(self, xfer: str) -> tuple[str, str] | None:
        if not xfer:
            return None
        try:
            return split_xfer_id(xfer)
        except AnchorError:
            return None

    def _annotate(self, xfer: str, note: Note, name: str) -> None:
        if self.store is None:
            return
        ids = self._ids(xfer)
        if ids is None:
            log.warning("%s: transfer id %r unusable: not recorded: %s %s",
                        name, xfer, note.fields, note.detail)
            return
        call_id, refer_id = ids
        try:
            with self._store_lock:
                found = self.store.annotate(call_id, refer_id, self.clock(), note.fields,
                                            note.detail)
        except Exception as exc:  # noqa: BLE001 - Redis must never stop the media part
            self.store_errors += 1
            log.warning("%s: could not record %s for %s (%s: %s); going on",
                        name, note.fields, xfer, type(exc).__name__, exc)
            return
        if not found:
            log.warning("%s: no transfer %s in the store; not recorded: %s",
                        name, xfer, note.fields)
            return
        self.notes_written += 1

    def _record_end(self, outcome: Outcome, name: str) -> None:
        plan = outcome.plan
        self._annotate(plan.xfer_id if plan else "", Note(outcome.fields(), outcome.detail()),
                       name)

    # -- the session

    def make_run(self, session: AGISession):
        script = script_name(session.env)
        mode = self.scripts.get(script)
        if mode == ANCHORED:
            return AnchoredRun()
        if mode == RELAYED:
            return RelayedRun(
                dial_template(self.relayed_dial), self.relayed_timeout_s,
                self.relayed_announce, session.env.get("agi_extension", ""),
                self.replaces_predial,
            )
        return None

    def __call__(self, session: AGISession) -> None:
        name = session.env.get("agi_channel", "?")
        run = self.make_run(session)
        if run is None:
            log.error("%s: unknown FastAGI script %r (known: %s): nothing done", name,
                      script_name(session.env), ", ".join(sorted(self.scripts)))
            self.outcomes.append((name, Outcome(ERROR, error="unknown script")))
            return
        gen = run.steps()
        outcome: Outcome
        try:
            step = next(gen)
            while True:
                if isinstance(step, Note):
                    plan = run.outcome.plan
                    self._annotate(plan.xfer_id if plan else "", step, name)
                    step = gen.send(None)
                else:
                    try:
                        line = step.line
                    except ValueError as exc:
                        # A value read from the channel that cannot go on the wire (CR/LF):
                        # the plan ends as an error, through its own path (recorded).
                        step = gen.throw(PlanAborted(f"{step.name}: {exc}"))
                        continue
                    reply = session.command(line, raise_errors=False)
                    step = gen.send(reply)
        except StopIteration as stop:
            outcome = stop.value
        except (AGIHangup, AGIError, OSError) as exc:
            reason = getattr(session, "cut_reason", "") or f"{type(exc).__name__}: {exc}"
            outcome = run.lost(reason)
            self._record_end(outcome, name)
        except Exception as exc:  # noqa: BLE001 - a bug in a plan must still be recorded
            log.exception("%s: %s transfer plan failed", name, run.mode)
            outcome = run.outcome
            outcome.result = ERROR
            outcome.error = outcome.error or f"internal error: {type(exc).__name__}: {exc}"
            self._record_end(outcome, name)
        log.info("%s: %s transfer %s: %s (%s)", name, run.mode,
                 outcome.plan.xfer_id if outcome.plan else "-", outcome.result,
                 outcome.detail())
        self.outcomes.append((name, outcome))
