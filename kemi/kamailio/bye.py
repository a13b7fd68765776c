"""BYE: the end of a dialog that carries a transfer, recorded with who ended it; with the
dialog index on, every BYE ends its dialog's record."""

from __future__ import annotations

from kemi.core.dialogs import DialogEvent
from kemi.core.sip.text import text_fault
from kemi.core.state import Event
from kemi.kamailio.anchored import AnchoredRoutes
from kemi.kamailio.glue import CONTINUE, pv, source
from kemi.kamailio.marks import read_mark
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.services import Services


class ByeRoutes:
    def __init__(self, services: Services, recorder: Recorder,
                 anchoring: AnchoredRoutes) -> None:
        self.s = services
        self.rec = recorder
        self.anchoring = anchoring

    def on_bye(self) -> int:
        call_id = pv("$ci") or ""
        if text_fault(call_id) is not None:
            return CONTINUE  # no dialog referee follows has such a Call-ID
        if self.s.dialog_index:
            self.rec.record_dialog(DialogEvent.BYE, callee_tag=pv("$tt") or "")
        mark = read_mark(call_id)
        if mark is None:
            return CONTINUE
        by_transferor = (pv("$ft") or "") == mark.transferor_tag
        event = Event.BYE_TRANSFEROR if by_transferor else Event.BYE_TRANSFEREE
        ended_by, detail = "transferor" if by_transferor else "transferee", ""
        if mark.anchored and not by_transferor:
            ended_by, detail = self.anchoring.bye_sender(source()) or (ended_by, "")
        self.rec.apply_after_accepts(
            call_id, mark.refer_id or None, event, {"ended_by": ended_by},
            f"BYE from the {ended_by}" + (f" ({detail})" if detail else ""))
        if mark.anchored:
            self.anchoring.dialog_ended(call_id)
        return CONTINUE
