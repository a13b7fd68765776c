"""referee's counters in Kamailio's statistics module (names: kemi.core.metrics).

Each bump is one KSR call into shared memory (atomic, no lock of ours).  A cfg without
the statistics module, or without referee-stats.cfg's declarations, keeps no counters:
that is said once per process, and routing goes on.
"""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core.metrics import NAMES, PREFIX
from kemi.kamailio.glue import log

_KNOWN = frozenset(NAMES)
_off = False  # the statistics module is missing: said once, then silent


def bump(name: str, n: int = 1) -> None:
    global _off
    if _off:
        return
    if name not in _KNOWN:  # a bug of ours: said, never a failed route
        log(KSR.err, f"no counter named {name!r} (kemi.core.metrics.NAMES)")
        return
    try:
        if KSR.statistics.update_stat(PREFIX + name, n) < 0:
            raise LookupError(f"{PREFIX}{name} not declared (include referee-stats.cfg)")
    except Exception as exc:  # noqa: BLE001 - counters must never break routing
        _off = True
        log(KSR.warn, f"counters off in this process: {exc}")


def set_gauge(name: str, value: int) -> None:
    """A gauge: reset, then raised to `value` (two calls; a scrape in between reads 0)."""
    if _off:
        return
    try:
        KSR.statistics.reset_stat(PREFIX + name)
    except Exception:  # noqa: BLE001 - reported by bump
        pass
    bump(name, value)
