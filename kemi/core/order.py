"""The order in which a transfer's messages leave the proxy: which NOTIFY may go now,
which must wait, and which waiting ones go next.  Pure code: the glue keeps one
`DialogOrder` per dialog in Kamailio's shared memory (htable, under its slot lock),
suspends a NOTIFY that must wait (tm t_suspend) and resumes the released ones, one after
another, from a single timer process (t_continue), so those leave in CSeq order.

Why this is needed: Kamailio's SIP workers take datagrams from one socket and each
relays its own, so two messages a transferee sends in the same millisecond (its 202 and
its first NOTIFY; two NOTIFYs) can leave in either order, and a transferor refuses what
it did not expect first (linphone answers a NOTIFY before the 202 `491`, pjsip answers an
older CSeq `500`, and then the transferee gives up the subscription: the transferor
never learns the outcome).  The rules:

* A NOTIFY waits while a REFER in its dialog (sent the other way) has no final response
  relayed yet, and for `grace_s` after one was: a NOTIFY overtaking the 202 is legal
  (RFC 3515), but what the transferor gets must be the order the transferee meant.
  A REFER answered after `refer_wait_s` no longer holds anything back.
* NOTIFYs from one sender go in CSeq order.  One whose CSeq follows the last one relayed
  goes at once once that one is sent (`sent`); a first one goes at once if its sipfrag
  is a `100` (nothing comes before it), else it waits `window_s` for an earlier one still
  in another worker; one after a gap (a request that does not pass referee, e.g. a
  re-INVITE, took a number) waits `window_s` too.
* Once any NOTIFY of a sender waits, every later one joins the queue, and the timer
  releases the queue in CSeq order.

What it rests on: referee marks a NOTIFY sent after tm's t_relay has returned (UDP: sent).
A REFER's 2xx has no such moment (tm relays it after its reply route returns), so a
NOTIFY waits `grace_s` after that route: the order holds unless the worker relaying the
2xx is descheduled for longer than that between its reply route and its send -- the
default leaves two orders of magnitude.  `grace_s` is also how long a NOTIFY waits behind
one decided but never marked sent (its worker failed between the two).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["relay", "hold"]


class OrderError(ValueError):
    """A stored order state that cannot be read (it is then started afresh)."""


@dataclass(frozen=True)
class Timing:
    grace_s: float = 0.02
    window_s: float = 0.05
    refer_wait_s: float = 4.0


@dataclass(frozen=True)
class Held:
    """A suspended NOTIFY: its transaction (tm hash index and label) and its place."""

    tag: str  # the sender's From tag
    cseq: int
    tindex: int
    tlabel: int
    since: float
    first: bool = False  # its sipfrag is 100: nothing of its sender can precede it
    not_before: float = 0.0  # a retry after the transferor's 491 waits until then
    note: str = ""  # the glue's own note on the NOTIFY (opaque here), kept while it waits


@dataclass(frozen=True)
class Last:
    """The highest CSeq of a sender decided to go, and whether it has left yet."""

    cseq: int
    at: float  # when it was decided
    sent: bool = False


@dataclass
class DialogOrder:
    """What the proxy has relayed in one dialog, as far as ordering needs it."""

    # REFER CSeq -> (the REFER sender's From tag, when it was relayed): no final yet.
    refers: dict[str, tuple[str, float]] = field(default_factory=dict)
    final_at: float | None = None  # when the last final response to a REFER was relayed
    last: dict[str, Last] = field(default_factory=dict)  # by sender's From tag
    held: list[Held] = field(default_factory=list)

    # -- what passes -------------------------------------------------------------------
    def refer_relayed(self, refer_id: str, tag: str, now: float) -> None:
        self.refers[refer_id] = (tag, now)

    def refer_answered(self, refer_id: str, now: float) -> None:
        """A final response to the REFER is being relayed (its reply route ran at `now`;
        one noted earlier may be taken in after a later one: the latest counts)."""
        if self.refers.pop(refer_id, None) is not None:
            self.final_at = now if self.final_at is None else max(self.final_at, now)

    def _blocked(self, tag: str, now: float, t: Timing) -> bool:
        """A REFER of the other party still unanswered, or answered too recently."""
        for rtag, at in self.refers.values():
            if rtag != tag and now - at < t.refer_wait_s:
                return True
        return self.final_at is not None and now - self.final_at < t.grace_s

    def _next_ok(self, tag: str, cseq: int, now: float, t: Timing) -> bool:
        """Whether a NOTIFY whose sender has a last CSeq may follow it now."""
        prev = self.last[tag]
        if cseq <= prev.cseq:
            return True  # late or repeated: nothing to wait for
        return cseq == prev.cseq + 1 and (prev.sent or now - prev.at >= t.grace_s)

    def verdict(self, tag: str, cseq: int, first: bool, now: float, t: Timing) -> Verdict:
        """What `admit` would say now, changing nothing."""
        if any(h.tag == tag for h in self.held) or self._blocked(tag, now, t):
            return "hold"
        if tag not in self.last:
            return "relay" if first else "hold"
        return "relay" if self._next_ok(tag, cseq, now, t) else "hold"

    def admit(self, tag: str, cseq: int, first: bool, now: float, t: Timing,
              hold: bool = False) -> Verdict:
        """May this NOTIFY be relayed now by the worker that has it?  "relay" commits it
        (relay it at once, then `mark_sent`); "hold" queues it, as a place the worker
        fills in with its suspended transaction (`attach`) or gives up (`withdraw`).
        `hold`: queue it whatever the rules say."""
        verdict: Verdict = "hold" if hold else self.verdict(tag, cseq, first, now, t)
        if verdict == "relay":
            self._commit(tag, cseq, now)
        else:
            self.hold(Held(tag, cseq, -1, -1, now, first))
        return verdict

    def mark_sent(self, tag: str, cseq: int) -> None:
        """tm has relayed it: the next CSeq need not wait."""
        prev = self.last.get(tag)
        if prev is not None and prev.cseq == cseq:
            self.last[tag] = Last(prev.cseq, prev.at, True)

    def attach(self, tag: str, cseq: int, tindex: int, tlabel: int, note: str = "") -> bool:
        """The suspended transaction of a NOTIFY `admit` queued (and the glue's note on
        it); False if its place is gone (dropped as stale meanwhile)."""
        for i, h in enumerate(self.held):
            if (h.tag, h.cseq) == (tag, cseq):
                self.held[i] = Held(tag, cseq, tindex, tlabel, h.since, h.first, h.not_before,
                                    note)
                return True
        return False

    def withdraw(self, tag: str, cseq: int, now: float) -> None:
        """A queued NOTIFY that could not be suspended (the worker relays it itself)."""
        self.held = [h for h in self.held if (h.tag, h.cseq) != (tag, cseq)]
        self._commit(tag, cseq, now)

    def hold(self, held: Held) -> None:
        """Queue a NOTIFY (a retry after the transferor's 491 comes this way too)."""
        self.held = [h for h in self.held if (h.tag, h.cseq) != (held.tag, held.cseq)]
        self.held.append(held)

    def release(self, now: float, t: Timing, limit: int | None = None) -> list[Held]:
        """The held NOTIFYs that go now, in the order to resume them: the caller resumes
        them one after another in one process and marks each sent once its t_continue
        has returned; at most `limit`, the rest stay held in order."""
        out: list[Held] = []
        for tag in sorted({h.tag for h in self.held}):
            if (limit is not None and len(out) >= limit) or self._blocked(tag, now, t):
                continue
            queue = sorted((h for h in self.held if h.tag == tag), key=lambda h: h.cseq)
            for h in queue:
                if limit is not None and len(out) >= limit:
                    break
                if h.tindex < 0 or now < h.not_before:
                    break  # not suspended yet, or a retry not due: nothing after it goes
                if tag not in self.last:
                    ok = h.first or now - h.since >= t.window_s
                elif out and out[-1].tag == tag and h.cseq == out[-1].cseq + 1:
                    ok = True  # the one before it goes just before it, in this batch
                else:
                    ok = self._next_ok(tag, h.cseq, now, t) or (
                        h.cseq > self.last[tag].cseq + 1 and now - h.since >= t.window_s
                        and (self.last[tag].sent or now - self.last[tag].at >= t.grace_s))
                if not ok:
                    break
                out.append(h)
                self._commit(tag, h.cseq, now)
        gone = {(h.tag, h.cseq) for h in out}
        self.held = [h for h in self.held if (h.tag, h.cseq) not in gone]
        return out

    def _commit(self, tag: str, cseq: int, now: float) -> None:
        prev = self.last.get(tag)
        if prev is None or cseq > prev.cseq:
            self.last[tag] = Last(cseq, now)

    def forget_stale(self, now: float, t: Timing, held_limit_s: float) -> list[Held]:
        """Drop REFERs past waiting for and return held entries older than
        `held_limit_s` (their transactions are gone: tm timed them out)."""
        self.refers = {
            rid: (tag, at) for rid, (tag, at) in self.refers.items()
            if now - at < t.refer_wait_s
        }
        stale = [h for h in self.held if now - h.since >= held_limit_s]
        self.held = [h for h in self.held if now - h.since < held_limit_s]
        return stale

    # -- shared memory form ------------------------------------------------------------
    def encode(self) -> str:
        return json.dumps({
            "r": {k: [v[0], round(v[1], 4)] for k, v in self.refers.items()},
            "f": None if self.final_at is None else round(self.final_at, 4),
            "l": {k: [v.cseq, round(v.at, 4), int(v.sent)] for k, v in self.last.items()},
            "h": [[h.tag, h.cseq, h.tindex, h.tlabel, round(h.since, 4), int(h.first),
                   round(h.not_before, 4), *([h.note] if h.note else [])]
                  for h in self.held],
        }, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> DialogOrder:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(
                refers={str(k): (str(v[0]), float(v[1])) for k, v in raw["r"].items()},
                final_at=None if raw["f"] is None else float(raw["f"]),
                last={str(k): Last(int(v[0]), float(v[1]), bool(v[2]))
                      for k, v in raw["l"].items()},
                held=[Held(str(h[0]), int(h[1]), int(h[2]), int(h[3]), float(h[4]),
                           bool(h[5]), float(h[6]), str(h[7]) if len(h) > 7 else "")
                      for h in raw["h"]],
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise OrderError(f"order state unreadable: {exc}") from exc
