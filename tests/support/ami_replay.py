"""An AMI peer that replays a recorded Asterisk 20 session (../shared/asterisk-ami) to the
controller under test, on 127.0.0.1:<free port>.

It sends the recorded greeting and every recorded event and response as the exact bytes
Asterisk sent, in the recorded order and relative timing (gaps scaled by `scale` and capped
at `max_gap` so a 60 s recording plays in a few seconds).  The recorded client's actions
are *gates*: the replay stops there until the client under test sends an action of the
same type, then answers with the recorded response (its ActionID, and a ChannelId the
recording used, replaced by ours) and goes on — events caused by an action are never
sent before the action.

The recording's controller and ours do not send the same actions, so each recorded
action is either
* a gate: its type is in `ours` (and, if `pick` names the type, its index among the
  recorded actions of that type is picked), or
* skipped: its response and the events tagged with its ActionID (list items) are dropped.
An action of ours that meets a gate of another type is answered from `reuse` (a recorded
response of that type, e.g. Setvar "Variable Set") when allowed, else it is an error:
`errors` says which action, at which point of the recording — the test fails on it.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from tests.support.transcript import Transcript


@dataclass(frozen=True)
class Msg:
    t: float
    side: str  # "A" Asterisk, "S" the recorded client
    raw: bytes
    headers: dict[str, str]  # first value of each header

    @property
    def action(self) -> str:
        return self.headers.get("Action", "")

    @property
    def event(self) -> str:
        return self.headers.get("Event", "")

    @property
    def action_id(self) -> str:
        return self.headers.get("ActionID", "")


def parse_headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key and key not in out:
            out[key] = value.strip()
    return out


def messages(tr: Transcript) -> list[Msg]:
    """The transcript as whole AMI messages (the greeting is one with no headers)."""
    out: list[Msg] = []
    buf = {"A": b"", "S": b""}
    start = {"A": 0.0, "S": 0.0}
    for c in tr.chunks:
        if c.side == "A" and not out and c.data.startswith(b"Asterisk Call Manager"):
            out.append(Msg(c.t, "A", c.data, {}))
            continue
        if not buf[c.side]:
            start[c.side] = c.t
        buf[c.side] += c.data
        if c.data == b"\r\n":
            raw = buf[c.side]
            out.append(Msg(start[c.side], c.side, raw, parse_headers(raw)))
            buf[c.side] = b""
    return out


@dataclass(frozen=True)
class Cast:
    """Who is who in a recording: P, A, and the SIP Call-ID of A's dialog (the job's)."""

    p: str
    p_uid: str
    a: str
    a_uid: str
    call_id: str


def cast(tr: Transcript) -> Cast:
    """P is the first channel (the caller), A the second (P's Dial to the PBX); the
    job's Call-ID is what P's BRIDGEPVTCALLID says about its bridge peer."""
    msgs = [m for m in messages(tr) if m.side == "A"]
    new = [m.headers for m in msgs if m.event == "Newchannel"]
    p, a = new[0], new[1]
    call_id = next(m.headers["Value"] for m in msgs if m.event == "VarSet"
                   and m.headers.get("Variable") == "BRIDGEPVTCALLID"
                   and m.headers.get("Uniqueid") == p["Uniqueid"] and m.headers.get("Value"))
    return Cast(p["Channel"], p["Uniqueid"], a["Channel"], a["Uniqueid"], call_id)


def events(tr: Transcript) -> list[tuple[float, dict[str, str]]]:
    """(t, headers) of every event Asterisk sent, for unit tests of the core."""
    return [(m.t, m.headers) for m in messages(tr) if m.side == "A" and m.event]


def response_to(tr: Transcript, action: str, success: bool = True) -> bytes:
    """A recorded response to an action type, ActionID replaced by "{ActionID}"."""
    msgs = messages(tr)
    for i, m in enumerate(msgs):
        if m.side != "S" or m.action != action:
            continue
        for r in msgs[i + 1:]:
            if r.side == "A" and r.action_id == m.action_id and "Response" in r.headers:
                if (r.headers["Response"] == "Success") == success:
                    return r.raw.replace(m.action_id.encode(), b"{ActionID}")
                break
    raise LookupError(f"no recorded {'successful' if success else 'failed'} {action} "
                      f"response in {tr.name}")


@dataclass
class Received:
    """One action the client under test sent, and what the replay did with it."""

    headers: dict[str, list[str]]
    how: str  # "gate" | "reused" | "error" | "after-end"
    recorded: dict[str, str] | None = None  # the recorded action it was matched to
    at: float = 0.0

    def get(self, key: str, default: str = "") -> str:
        values = self.headers.get(key)
        return values[0] if values else default

    @property
    def action(self) -> str:
        return self.get("Action")


class ReplayPeer:
    """Listens like Asterisk's AMI and replays one recorded session to the first client."""

    def __init__(
        self,
        transcript: Transcript,
        ours: Collection[str],
        pick: Mapping[str, Sequence[int]] | None = None,
        reuse: Mapping[str, bytes] | None = None,
        scale: float = 0.1,
        max_gap: float = 0.25,
        gate_timeout: float = 5.0,
        on_first_gate: Callable[[], None] | None = None,
        until: float | None = None,
        port: int = 0,
    ):
        self.transcript = transcript
        self.msgs = messages(transcript)
        self.ours = set(ours) | {"Login"}
        self.pick = {k: set(v) for k, v in (pick or {}).items()}
        self.reuse = dict(reuse or {})
        self.gate_timeout = gate_timeout
        self.on_first_gate = on_first_gate
        self.until = until
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.done = threading.Event()
        self._actions: queue.Queue[tuple[dict[str, list[str]], bytes] | None] = queue.Queue()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(4)
        self.port = self._sock.getsockname()[1]
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ami-replay", daemon=True)
        # Scaled times: each recorded gap scaled, long idle gaps capped.
        self._st: list[float] = []
        prev_t = prev_s = 0.0
        for m in self.msgs:
            prev_s += min(max(0.0, m.t - prev_t) * scale, max_gap)
            prev_t = m.t
            self._st.append(prev_s)

    # -- control

    def start(self) -> ReplayPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._actions.put(None)
        for s in (self._conn, self._sock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self._thread.join(timeout=5)

    def drop(self) -> None:
        """Close the client's connection now (an Asterisk restart, as the client sees it)."""
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def sent(self, action: str) -> list[Received]:
        return [r for r in self.received if r.action == action]

    # -- the session

    def _run(self) -> None:
        try:
            self._sock.settimeout(10)
            conn, _ = self._sock.accept()
        except OSError:
            self.errors.append("no client connected")
            self.done.set()
            return
        self._conn = conn
        reader = threading.Thread(target=self._read, args=(conn,), name="ami-replay-read",
                                  daemon=True)
        reader.start()
        try:
            self._play()
        except OSError as exc:
            if not self._stop.is_set():
                self.errors.append(f"replay connection failed: {exc}")
        finally:
            self.done.set()
        if self.until is not None:  # cut short: the client sees Asterisk go away
            self.drop()
            return
        # After the recording: answer Logoff like Asterisk, anything else is an error.
        while not self._stop.is_set():
            item = self._actions.get()
            if item is None:
                return
            headers, _raw = item
            rec = Received(headers, "after-end", at=time.monotonic())
            self.received.append(rec)
            name = rec.action
            if name == "Logoff":
                self._answer(rec, b"Response: Goodbye\r\nActionID: {ActionID}\r\n"
                                  b"Message: Thanks for all the fish.\r\n\r\n")
                return
            if name in self.reuse:
                rec.how = "reused"
                self._answer(rec, self.reuse[name])
            else:
                self._unrecorded(rec, "after the end of the recording")

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._actions.put(None)
                return
            buf += data
            while b"\r\n\r\n" in buf:
                raw, buf = buf.split(b"\r\n\r\n", 1)
                headers: dict[str, list[str]] = {}
                for line in raw.decode("utf-8", "replace").split("\r\n"):
                    key, sep, value = line.partition(":")
                    if sep:
                        headers.setdefault(key.strip(), []).append(value.strip())
                self._actions.put((headers, raw))

    def _send(self, data: bytes) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(data)

    def _answer(self, rec: Received, template: bytes) -> None:
        self._send(template.replace(b"{ActionID}", rec.get("ActionID").encode()))

    def _unrecorded(self, rec: Received, where: str) -> None:
        rec.how = "error"
        self.errors.append(f"unrecorded action {rec.action} {dict(rec.headers)} ({where})")
        self._answer(rec, b"Response: Error\r\nActionID: {ActionID}\r\nMessage: replay: "
                          + f"unrecorded action {rec.action}".encode() + b"\r\n\r\n")

    def _play(self) -> None:
        counts: dict[str, int] = {}
        skipped: set[str] = set()
        subst: dict[bytes, bytes] = {}  # recorded ChannelId -> ours
        ids: dict[str, str] = {}  # recorded ActionID -> ours
        base = time.monotonic()
        first_gate = True
        for i, m in enumerate(self.msgs):
            if self._stop.is_set():
                return
            if self.until is not None and m.t > self.until:
                return
            delay = base + self._st[i] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if m.side == "S":
                kind = m.action
                n = counts.get(kind, 0)
                counts[kind] = n + 1
                if kind not in self.ours or (kind in self.pick and n not in self.pick[kind]):
                    skipped.add(m.action_id)
                    continue
                if first_gate and kind != "Login":
                    first_gate = False
                    if self.on_first_gate is not None:
                        self.on_first_gate()
                got = self._gate(m, n)
                if got is None:
                    skipped.add(m.action_id)
                    continue
                ids[m.action_id] = got.get("ActionID")
                rec_cid = m.headers.get("ChannelId", "")
                if rec_cid and got.get("ChannelId") and rec_cid != got.get("ChannelId"):
                    subst[rec_cid.encode()] = got.get("ChannelId").encode()
                base = time.monotonic() - self._st[i]  # keep the timing relative to it
                continue
            data = m.raw
            if m.action_id:
                if m.action_id in skipped:
                    continue
                if m.action_id in ids:
                    data = data.replace(f"ActionID: {m.action_id}\r\n".encode(),
                                        f"ActionID: {ids[m.action_id]}\r\n".encode())
            for old, new in subst.items():
                data = data.replace(old, new)
            self._send(data)

    def _gate(self, m: Msg, n: int) -> Received | None:
        """Wait for the client's action of m's type; None if it never came."""
        deadline = time.monotonic() + self.gate_timeout
        while True:
            try:
                item = self._actions.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.errors.append(f"recorded {m.action} #{n} at t={m.t:.3f} "
                                   f"({m.headers}) was never sent by the client")
                return None
            if item is None:
                self._actions.put(None)
                raise OSError("client closed the connection")
            headers, _raw = item
            rec = Received(headers, "gate", at=time.monotonic())
            self.received.append(rec)
            if rec.action == m.action:
                rec.recorded = m.headers
                return rec
            if rec.action in self.reuse:
                rec.how = "reused"
                self._answer(rec, self.reuse[rec.action])
                continue
            self._unrecorded(rec, f"the recording's next action here is {m.action} #{n} "
                                  f"at t={m.t:.3f}")
