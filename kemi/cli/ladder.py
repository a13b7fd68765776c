"""Ladder diagrams: SIP messages between parties, drawn as text, and SIPp logs read into them.

Sans-IO: functions take text and return text, so the demo, the CLI and tests share them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Arrow:
    """One message as it crossed the wire: `src` sent it to `dst`."""

    at: float  # epoch seconds
    src: str
    dst: str
    label: str  # the request method or the status line, plus what matters (sipfrag...)


_STAMP = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")
_DIR = re.compile(r"^(UDP|TCP) message (sent|received)")


def read_sipp_log(text: str, party: str, peer: str) -> list[Arrow]:
    """Arrows from a SIPp `-trace_msg` file of `party` whose only peer is `peer` (the proxy)."""
    arrows: list[Arrow] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stamp = _STAMP.match(lines[i])
        if not stamp or i + 1 >= len(lines):
            i += 1
            continue
        direction = _DIR.match(lines[i + 1])
        if not direction:
            i += 1
            continue
        j = i + 2
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines):
            break
        first, body = lines[j].strip(), _message_until_next(lines, j)
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        sent = direction.group(2) == "sent"
        arrows.append(
            Arrow(at, party if sent else peer, peer if sent else party, describe(first, body))
        )
        i = j + 1
    return arrows


def _message_until_next(lines: list[str], start: int) -> list[str]:
    out = []
    for line in lines[start:]:
        if _STAMP.match(line):
            break
        out.append(line)
    return out


def describe(first_line: str, message: list[str]) -> str:
    """A short label: 'REFER', '202 Accepted', 'NOTIFY [SIP/2.0 180 Ringing]'."""
    if first_line.startswith("SIP/2.0 "):
        label = first_line[8:]
        cseq = _header(message, "CSeq")
        return f"{label} ({cseq.split()[-1]})" if cseq else label
    method = first_line.split(" ", 1)[0]
    if method == "NOTIFY":
        frag = next((ln.strip() for ln in message[1:] if ln.startswith("SIP/2.0 ")), "")
        state = _header(message, "Subscription-State")
        extra = " terminated" if state and state.lower().startswith("terminated") else ""
        return f"NOTIFY [{frag[8:]}]{extra}" if frag else "NOTIFY"
    if method == "REFER":
        target = _header(message, "Refer-To") or ""
        return f"REFER -> {target.strip('<>')}"
    return method


def _header(message: list[str], name: str) -> str | None:
    prefix = name.lower() + ":"
    for line in message[1:]:
        if not line.strip():
            return None
        if line.lower().startswith(prefix):
            return line.split(":", 1)[1].strip()
    return None


def draw(arrows: list[Arrow], columns: list[str], width: int = 24) -> str:
    """Draw arrows in time order between named columns (one column per party)."""
    pos = {name: i * width + width // 2 for i, name in enumerate(columns)}
    total = len(columns) * width
    out = ["".join(name.center(width) for name in columns)]
    lanes = "".join("|".center(width) for _ in columns)
    out.append(lanes)
    start = min((a.at for a in arrows), default=0.0)
    for a in sorted(arrows, key=lambda a: a.at):
        if a.src not in pos or a.dst not in pos:
            continue
        row = list(lanes.ljust(total))
        lo, hi = sorted((pos[a.src], pos[a.dst]))
        for k in range(lo + 1, hi):
            row[k] = "-"
        if pos[a.dst] > pos[a.src]:
            row[hi - 1] = ">"
        else:
            row[lo + 1] = "<"
        label = f" {a.label} "
        mid = lo + 1 + max(0, (hi - lo - 1 - len(label)) // 2)
        if len(label) <= hi - lo - 3:
            row[mid : mid + len(label)] = label
            text = "".join(row).rstrip()
        else:
            text = "".join(row).rstrip() + f"   {a.label}"
        out.append(f"{text}   +{a.at - start:6.3f}s")
    return "\n".join(out)
