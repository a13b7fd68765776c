"""The mark a Kamailio node keeps of a dialog that carries a transfer ("tag|rid[|a]").

Why a mark at all: BYEs and answers to referee's own NOTIFYs must be recognised without a
Redis trip for calls without transfers; the mark lives in node-local shared memory
(kemi.kamailio.marks).  Its text form is written and read only here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DialogMark:
    transferor_tag: str  # the From-tag of the REFER: whose BYE is the transferor's
    refer_id: str  # the dialog's latest transfer
    anchored: bool = False  # referee NOTIFYs in this dialog itself (anchored, accepted)

    def encode(self) -> str:
        return f"{self.transferor_tag}|{self.refer_id}" + ("|a" if self.anchored else "")

    @classmethod
    def decode(cls, text: str) -> DialogMark | None:
        """None for text that is no mark (an older or foreign value)."""
        parts = text.split("|")
        if len(parts) < 2:
            return None
        return cls(parts[0], parts[1], len(parts) > 2 and parts[2] == "a")
