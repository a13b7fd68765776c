"""CSeq translation for a dialog in which referee sends requests in another party's name.

Anchored transfers (kemi.core.anchor): referee accepts A's REFER in Kamailio and sends A the
NOTIFYs inside A's dialog with Asterisk, as if Asterisk sent them.  Each such NOTIFY
uses a CSeq number of Asterisk's direction that Asterisk does not know about; its next
request to A (a session-timer UPDATE, a re-INVITE, the BYE) would reuse that number and
A would answer ``500 Invalid CSeq`` (RFC 3261 12.2.2; recorded in
asterisk-ami/h-proxy-notify-cseq-collision).  So for the rest of the dialog Kamailio
shifts the CSeq of every request Asterisk sends to A by the number of NOTIFYs referee
put in front of it; A's replies go back to Asterisk with the request's original number,
kept per transaction by the glue (kemi.kamailio, $avp(rf_cs)).

Only Asterisk -> A needs this: requests A -> Asterisk keep A's own numbers (referee never
sends in A's name, so Asterisk's view of A's CSeq space is untouched).

Sans-IO: one small state per dialog, encoded as a short string for Kamailio's htable and
the transfer record.  Gaps in CSeq are legal (RFC 3261 8.1.1.5 asks only for increase),
so every rule here errs towards a larger number, never a repeated one.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CSEQ = 2**31 - 1  # RFC 3261 8.1.1.5: below 2**31

# After a restart the htable state is rebuilt from the transfer record, which may lag
# behind requests Asterisk sent meanwhile; the next NOTIFY then jumps this far ahead.
REBUILD_MARGIN = 1000


class CSeqError(ValueError):
    """A CSeq value or an encoded state that cannot be used."""


@dataclass
class CSeqShift:
    """The translation state of one dialog (Asterisk -> A direction).

    last_orig  highest CSeq Asterisk itself used toward A (as Asterisk numbered it)
    last_sent  highest CSeq A has been sent in Asterisk's direction (translated Asterisk
               requests and referee's NOTIFYs alike)
    offset     added to every new Asterisk request
    last_offset
               the offset `last_orig` was sent with (a retransmission keeps its number)
    invite_orig / invite_offset
               Asterisk's last INVITE and the offset it was sent with: its ACK (a new
               request after a 2xx) and its CANCEL carry the INVITE's number and must be
               translated exactly as the INVITE was, whatever NOTIFYs went out between.
    """

    last_orig: int
    last_sent: int
    offset: int = 0
    last_offset: int = 0
    invite_orig: int = -1
    invite_offset: int = 0

    @classmethod
    def start(cls, last_orig: int) -> CSeqShift:
        """The state of a dialog in which Asterisk's last request had CSeq `last_orig` and
        referee has sent nothing yet."""
        _check(last_orig)
        return cls(last_orig=last_orig, last_sent=last_orig)

    def on_request(self, method: str, cseq: int) -> int:
        """The CSeq to put on Asterisk's request `method` `cseq` as it goes to A."""
        _check(cseq)
        method = method.upper()
        if method in ("ACK", "CANCEL") and cseq == self.invite_orig:
            return cseq + self.invite_offset
        if cseq == self.last_orig:
            return cseq + self.last_offset  # a retransmission keeps its number
        if cseq < self.last_orig:
            # Overtaken by a later request (A will refuse it whatever we do): shifted,
            # the state is left alone.
            return cseq + self.offset
        out = cseq + self.offset
        if out <= self.last_sent:
            # Cannot happen while every NOTIFY went through next_notify(); kept monotonic
            # whatever the state says.
            self.offset += self.last_sent + 1 - out
            out = self.last_sent + 1
        if out > MAX_CSEQ:
            raise CSeqError(f"translated CSeq {out} exceeds 2**31-1")
        self.last_orig = cseq
        self.last_sent = out
        self.last_offset = self.offset
        if method == "INVITE":
            self.invite_orig, self.invite_offset = cseq, self.offset
        return out

    def next_notify(self) -> int:
        """The CSeq for one more request referee sends to A in Asterisk's name; every
        later Asterisk request is shifted past it."""
        n = self.last_sent + 1
        if n > MAX_CSEQ:
            raise CSeqError("CSeq space exhausted")
        self.last_sent = n
        self.offset = n - self.last_orig
        return n

    def rebuilt(self, margin: int = REBUILD_MARGIN) -> CSeqShift:
        """The state to resume from after a restart, from a copy that may be stale: the
        next NOTIFY jumps `margin` ahead of anything the copy knew."""
        return CSeqShift(
            last_orig=self.last_orig, last_sent=min(self.last_sent + margin, MAX_CSEQ - 1),
            offset=self.offset, last_offset=self.last_offset, invite_orig=self.invite_orig,
            invite_offset=self.invite_offset,
        )

    def encode(self) -> str:
        return (f"{self.last_orig}|{self.last_sent}|{self.offset}|{self.last_offset}|"
                f"{self.invite_orig}|{self.invite_offset}")

    @classmethod
    def decode(cls, text: str) -> CSeqShift:
        parts = str(text).split("|")
        if len(parts) != 6:
            raise CSeqError(f"CSeq state {text!r}: expected 6 fields")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise CSeqError(f"CSeq state {text!r}: not numbers") from None
        last_orig, last_sent, offset, last_offset, _, invite_offset = values
        if last_sent < last_orig or min(offset, last_offset, invite_offset) < 0:
            raise CSeqError(f"CSeq state {text!r}: inconsistent")
        return cls(*values)


def parse_cseq_number(value: str | int | None) -> int:
    """The number of a CSeq header value ("101 INVITE") or of $cs."""
    if value is None:
        raise CSeqError("no CSeq")
    text = str(value).strip().split(" ", 1)[0]
    if not text.isascii() or not text.isdigit():
        raise CSeqError(f"CSeq {value!r} is not a number")
    n = int(text)
    _check(n)
    return n


def _check(n: int) -> None:
    if not 0 <= n <= MAX_CSEQ:
        raise CSeqError(f"CSeq {n} outside 0..2**31-1")
