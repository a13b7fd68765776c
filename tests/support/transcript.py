"""Read the AGI and AMI transcripts recorded from a real Asterisk 20 (../shared/asterisk-agi,
../shared/asterisk-ami) back into the exact bytes and times that crossed the socket.

Format (from the recordings' own headers): one line per chunk ending at a "\\n" of the
stream, "[    t] A> bytes" from Asterisk or "[    t] S> bytes" from the client/server
under test, t in seconds since accept, with \\r \\n \\\\ and \\xNN escaped; lines starting
with "#" are the recorder's notes (a NOTE keeps its time in brackets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared"
AGI_DIR = SHARED / "asterisk-agi"
AMI_DIR = SHARED / "asterisk-ami"

_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] ([AS])> (.*)$")
_NOTE = re.compile(r"^# \[\s*(\d+\.\d+)\] (.*)$")
_ESC = re.compile(rb"\\(x[0-9a-fA-F]{2}|r|n|\\)")


def unescape(text: str) -> bytes:
    """The bytes a transcript line stands for."""
    raw = text.encode("utf-8")  # escapes are ASCII; anything else stands for itself

    def sub(m: re.Match) -> bytes:
        code = m.group(1)
        if code == b"r":
            return b"\r"
        if code == b"n":
            return b"\n"
        if code == b"\\":
            return b"\\"
        return bytes([int(code[1:], 16)])

    return _ESC.sub(sub, raw)


@dataclass(frozen=True)
class Chunk:
    t: float  # seconds since the connection was accepted
    side: str  # "A" = Asterisk sent it, "S" = the peer under test sent it
    data: bytes


@dataclass(frozen=True)
class Note:
    t: float
    text: str


@dataclass
class Transcript:
    name: str
    chunks: list[Chunk]
    notes: list[Note]

    def sent_by(self, side: str) -> bytes:
        return b"".join(c.data for c in self.chunks if c.side == side)

    def from_asterisk(self) -> list[Chunk]:
        return [c for c in self.chunks if c.side == "A"]

    def from_peer(self) -> list[Chunk]:
        return [c for c in self.chunks if c.side == "S"]


def read(path: Path | str) -> Transcript:
    path = Path(path)
    chunks: list[Chunk] = []
    notes: list[Note] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _LINE.match(line)
        if m:
            chunks.append(Chunk(float(m.group(1)), m.group(2), unescape(m.group(3))))
            continue
        n = _NOTE.match(line)
        if n:
            notes.append(Note(float(n.group(1)), n.group(2)))
    name = path.name.split(".")[0]
    return Transcript(name, chunks, notes)


def agi(name: str) -> Transcript:
    """An AGI transcript by scenario name, e.g. agi("blind-transfer-target-busy")."""
    for base in (AGI_DIR, AMI_DIR):
        p = base / f"{name}.agi.txt"
        if p.exists():
            return read(p)
    raise FileNotFoundError(f"no AGI transcript {name!r} in {AGI_DIR} or {AMI_DIR}")


def ami(name: str) -> Transcript:
    """An AMI transcript by scenario name, e.g. ami("b-target-busy-bridge-app")."""
    return read(AMI_DIR / f"{name}.ami.txt")


def names(kind: str) -> list[str]:
    """Every recorded scenario of a kind ("agi" in either set, or "ami")."""
    if kind == "ami":
        return sorted(p.name.split(".")[0] for p in AMI_DIR.glob("*.ami.txt"))
    found = {p.name.split(".")[0] for base in (AGI_DIR, AMI_DIR) for p in base.glob("*.agi.txt")}
    return sorted(found)
