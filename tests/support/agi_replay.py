"""A replay peer: plays Asterisk's side of a recorded FastAGI session against our server.

It connects to the server as Asterisk does, sends the recorded agi_ environment, and then
answers each command the server sends with the bytes Asterisk sent for that same command
in the recording: every `A>` chunk between that recorded `S>` line and the next one,
spontaneous `HANGUP\\n` lines included, at the recorded pace (times multiplied by
`scale`).  When the server half-closes, it sends what Asterisk sent after the recorder's
half-close (the trailing `HANGUP\\n`) and closes.

Matching: our commands are matched in order against the recorded ones; ours may be a
subsequence (recorded commands we do not send are skipped, and their replies are not
sent, except bare `HANGUP\\n` lines in them: Asterisk writes that line once when it
notices the hangup, whatever the server asked, so it is delivered before the next reply).
A command that is not recorded (from the current position on) fails the replay with a
clear message, unless the test declared it:

* `extra`: {our exact line: reply bytes} for a command the recorded script did not send
  (e.g. reading XFER_ANNOUNCE, which the lab controller never set: an unset variable
  answers `200 result=0\\n`, as recorded for BLINDTRANSFER in the same session);
* `alias`: {our exact line: recorded line}: ours is answered as that recorded command
  (e.g. our `Dial ...,m` for a recorded `Dial ...` without `m`; the option changes only
  what P hears while the target rings, not Dial's result);
* `rename`: {recorded bytes: bytes} applied to both directions of the recording, for
  values whose format the lab did not follow (its XFER_ID `x-busy-1` is not our
  `<refer-cseq>@<call-id>`).

Everything else is byte for byte.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.support.transcript import Chunk, Transcript

HANGUP = b"HANGUP\n"


class _ServerClosed(Exception):
    """The server closed while the peer waited to send a reply (a cut session)."""


@dataclass
class Exchange:
    command: Chunk  # the recorded S> line
    replies: list[Chunk]  # the A> chunks up to the next S> (or the recorder's half-close)


@dataclass
class Recording:
    name: str
    env: list[Chunk]
    exchanges: list[Exchange]
    epilogue: list[Chunk]  # A> chunks after the recorder half-closed
    close_t: float  # when the recorder half-closed (or the last chunk)

    @property
    def has_session(self) -> bool:
        return bool(self.env)

    def commands(self) -> list[bytes]:
        return [e.command.data for e in self.exchanges]


def split(transcript: Transcript, rename: dict[bytes, bytes] | None = None) -> Recording:
    """A transcript as environment / exchanges / epilogue."""
    def ren(c: Chunk) -> Chunk:
        data = c.data
        for old, new in (rename or {}).items():
            data = data.replace(old, new)
        return Chunk(c.t, c.side, data)

    chunks = [ren(c) for c in transcript.chunks]
    # agirec.py notes its half-close; agiproxy.py (pyst2 runs) notes the server's EOF
    close_t = next((n.t for n in transcript.notes
                    if "shutdown(SHUT_WR)" in n.text or "EOF from AGI server" in n.text),
                   chunks[-1].t if chunks else 0.0)
    env: list[Chunk] = []
    exchanges: list[Exchange] = []
    epilogue: list[Chunk] = []
    for c in chunks:
        if c.side == "S":
            exchanges.append(Exchange(c, []))
        elif not exchanges:
            env.append(c)
        elif c.t > close_t:
            epilogue.append(c)
        else:
            exchanges[-1].replies.append(c)
    return Recording(transcript.name, env, exchanges, epilogue, close_t)


@dataclass
class Match:
    line: bytes  # what our server sent
    recorded: int | None  # index of the recorded exchange, None = declared extra


@dataclass
class ReplayPeer:
    """One replayed session; `start(port)` runs it in a thread, `join()` waits for it."""

    recording: Recording
    scale: float = 0.05
    extra: dict[bytes, bytes] = field(default_factory=dict)
    alias: dict[bytes, bytes] = field(default_factory=dict)
    timeout_s: float = 10.0
    sent_env: bool = False
    matches: list[Match] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    saw_half_close: bool = False
    closed_early: bool = False  # the server closed while a recorded reply was pending
    _thread: threading.Thread | None = None

    @property
    def commands(self) -> list[bytes]:
        return [m.line for m in self.matches]

    def start(self, port: int, host: str = "127.0.0.1") -> ReplayPeer:
        self._thread = threading.Thread(target=self._run, args=(host, port), daemon=True,
                                        name=f"replay-{self.recording.name}")
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> ReplayPeer:
        assert self._thread is not None
        self._thread.join(self.timeout_s + 5 if timeout is None else timeout)
        if self._thread.is_alive():
            self.errors.append("replay peer still running after the time limit")
        return self

    def check(self) -> None:
        """Raise AssertionError with every problem the replay found."""
        if self.errors:
            raise AssertionError(f"replay of {self.recording.name}: " + "; ".join(self.errors))

    # -- the peer

    def _pace(self, t0: float, offset: float, sock: socket.socket | None = None) -> None:
        """Wait until the recorded time; while waiting, notice the server closing (a cut
        session) and stop there (_ServerClosed)."""
        end = t0 + offset * self.scale
        while True:
            delay = end - time.monotonic()
            if delay <= 0:
                return
            if sock is None:
                time.sleep(delay)
                return
            readable, _, _ = select.select([sock], [], [], min(delay, 0.05))
            if readable:
                try:
                    peek = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    self.closed_early = True
                    raise _ServerClosed
                time.sleep(min(delay, 0.05))

    def _run(self, host: str, port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=self.timeout_s) as sock:
                sock.settimeout(self.timeout_s)
                self._talk(sock)
        except _ServerClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - reported through errors
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _talk(self, sock: socket.socket) -> None:
        rec = self.recording
        t0 = time.monotonic()
        for c in rec.env:
            self._pace(t0, c.t)
            sock.sendall(c.data)
        self.sent_env = True
        buf = b""
        pos = 0  # next recorded exchange that may match
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\n" not in buf:
                if time.monotonic() > deadline:
                    self.errors.append("no command from the server in time")
                    return
                data = sock.recv(4096)
                if not data:
                    self.saw_half_close = True
                    t_close = time.monotonic()
                    for c in rec.epilogue:
                        self._pace(t_close, c.t - rec.close_t)
                        try:
                            sock.sendall(c.data)
                        except OSError:
                            break
                    return
                buf += data
            line, buf = buf.split(b"\n", 1)
            line += b"\n"
            t_cmd = time.monotonic()
            wanted = self.alias.get(line, line)
            found = next((k for k in range(pos, len(rec.exchanges))
                          if rec.exchanges[k].command.data == wanted), None)
            if found is None:
                if line in self.extra:
                    self.matches.append(Match(line, None))
                    sock.sendall(self.extra[line])
                    continue
                recorded = [e.command.data.decode("utf-8", "replace").rstrip("\n")
                            for e in rec.exchanges[pos:pos + 3]]
                self.errors.append(
                    f"unrecorded command {line!r} (command #{len(self.matches) + 1}; "
                    f"next recorded: {recorded})")
                sock.shutdown(socket.SHUT_RDWR)
                return
            skipped_hangups = [c for e in rec.exchanges[pos:found] for c in e.replies
                               if c.data == HANGUP]
            pos = found + 1
            self.matches.append(Match(line, found))
            exchange = rec.exchanges[found]
            for c in skipped_hangups:
                sock.sendall(c.data)
            for c in exchange.replies:
                self._pace(t_cmd, c.t - exchange.command.t, sock)
                sock.sendall(c.data)
            deadline = time.monotonic() + self.timeout_s
