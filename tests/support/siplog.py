"""SIPp's -trace_msg log read back into messages, for tests that check what a party saw."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_ENTRY = re.compile(
    r"^-{20,} (\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)\n"
    r"\w+ message (sent|received)[^\n]*\n\n",
    re.M,
)


@dataclass
class SipMessage:
    """One message as a SIPp party logged it."""

    at: datetime
    direction: str  # "sent" or "received"
    start_line: str
    headers: list[tuple[str, str]]
    body: str

    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        """The request's method, or the CSeq method of a response."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        return (self.header("CSeq") or " ").split()[-1]

    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.start_line.split()[1])

    @property
    def cseq(self) -> int:
        return int((self.header("CSeq") or "0").split()[0])

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        found = self.all(name)
        return found[0] if found else None


def sip_messages(log: str) -> list[SipMessage]:
    """Parse a SIPp message log into messages, in order."""
    out = []
    marks = list(_ENTRY.finditer(log))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(log)
        text = log[m.end():end].replace("\r\n", "\n")
        head, _, body = text.partition("\n\n")
        lines = head.strip("\n").split("\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        out.append(SipMessage(
            at=datetime.fromisoformat(f"{m.group(1)} {m.group(2)}"),
            direction=m.group(3),
            start_line=lines[0].strip(),
            headers=headers,
            body=body.strip("\n"),
        ))
    return out
