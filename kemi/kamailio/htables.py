"""Reading a whole htable from Python (what the timers scan)."""

from __future__ import annotations

import KSR  # provided by app_python3


def table_keys(table: str) -> list[str]:
    """The keys of an htable, read with its iterator (empty if the cfg lacks it)."""
    it = f"{table}_it"
    out: list[str] = []
    try:
        if KSR.htable.sht_iterator_start(it, table) < 0:
            return out
    except Exception:  # noqa: BLE001 - htable missing
        return out
    try:
        while KSR.htable.sht_iterator_next(it) > 0:
            key = KSR.pv.get(f"$shtitkey({it})")
            if key is not None:
                out.append(str(key))
    finally:
        KSR.htable.sht_iterator_end(it)
    return out
