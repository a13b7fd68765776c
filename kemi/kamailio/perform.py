"""Perform what the core decided (kemi.core.actions): the one place each action turns
into KSR calls, record writes or the journal."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import KSR  # provided by app_python3

from kemi.core.actions import Action, Count, Log, Notify, Relay, Reply, Spool, Store
from kemi.core.sip.text import printable
from kemi.kamailio import metrics
from kemi.kamailio.glue import CONTINUE, HANDLED, answer, log
from kemi.kamailio.recorder import Recorder

_LEVELS = {"info": "info", "notice": "notice", "warn": "warn", "err": "err"}


_hep: bool | None = None  # siptrace loaded (-A WITH_HOMER)? known after the first try


def hep_log(text: str) -> None:
    """referee's decision beside the message's ladder in Homer: a HEP log correlated by
    the current message's Call-ID (siptrace hlog); nothing without siptrace."""
    global _hep
    if _hep is False:
        return
    try:
        KSR.siptrace.hlog(f"referee: {printable(text)}")
        _hep = True
    except Exception:  # noqa: BLE001 - no siptrace in this cfg: no HEP logs
        _hep = False


def perform(actions: Iterable[Action], rec: Recorder,
            notify: Callable[[Notify], object] | None = None) -> int:
    """Each action in order: HANDLED once a Reply has gone out, else CONTINUE."""
    rc = CONTINUE
    for action in actions:
        if isinstance(action, Log):
            log(getattr(KSR, _LEVELS[action.level]), action.text)
            hep_log(action.text)
        elif isinstance(action, Reply):
            answer(action)
            rc = HANDLED
        elif isinstance(action, Relay):
            if action.request_uri is not None:
                KSR.pv.sets("$ru", action.request_uri)
            for name in action.remove:
                KSR.hdr.remove(name)
            for line in action.add:
                KSR.hdr.append(f"{line}\r\n")
        elif isinstance(action, Store):
            rec.store(action)
        elif isinstance(action, Spool):
            rec.spool(action.op, **action.entry)
        elif isinstance(action, Count):
            metrics.bump(action.name, action.n)
        elif isinstance(action, Notify):
            if notify is None:
                raise TypeError("a Notify where no notifier is given")
            notify(action)
    return rc
