"""The node-local mark of a dialog that carries a transfer (htable `referee`): BYEs and
NOTIFY answers are recognised from shared memory, with no Redis trip for other calls.
Its text form is kemi.core.mark.DialogMark's."""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core.mark import DialogMark
from kemi.kamailio.glue import log

HTABLE = "referee"  # Call-ID -> DialogMark text


def mark_dialog(call_id: str, from_tag: str, refer_id: str,
                anchored_dialog: bool = False) -> None:
    """Remember on this node that the dialog carries a transfer; anchored: a dialog
    referee NOTIFYs in itself (anchored, accepted here)."""
    value = DialogMark(from_tag, refer_id, anchored_dialog).encode()
    try:
        KSR.htable.sht_sets(HTABLE, call_id, value)
    except Exception as exc:  # noqa: BLE001 - htable not loaded: BYEs go unrecorded
        log(KSR.warn, f"htable '{HTABLE}' unusable, BYEs will not be recorded: {exc}")


def read_mark(call_id: str) -> DialogMark | None:
    """The dialog's mark on this node, None when it has none (or no htable)."""
    try:
        text = KSR.htable.sht_get(HTABLE, call_id)
    except Exception:  # noqa: BLE001 - htable not loaded
        return None
    return DialogMark.decode(str(text)) if text else None


def forget_mark(call_id: str) -> None:
    try:
        KSR.htable.sht_rm(HTABLE, call_id)
    except Exception:  # noqa: BLE001
        pass
