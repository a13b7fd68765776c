"""Real SIP phones that tests can drive: pjsua2 and baresip behind one interface.

Every phone is its own process (a UA crash cannot take pytest down), bound to
127.0.0.1 on free ports, with its own temporary directory for config, home
and logs, and null audio.  It is stopped by PID in stop().

    phone = make_phone("pjsua2", "andrew", "andrew", "127.0.0.1", 5070, "referee.test")
    phone.start(); phone.register()
    call = phone.call("sip:mckenzie@referee.test")
    phone.wait_state(call, "confirmed")
    phone.transfer(call, "sip:marsha@referee.test")
    phone.wait_transfer_final(call)   # -> 200, 486, ...
    phone.transfer_events(call)        # -> [100, 180, 200]
    phone.stop()

Kinds (see tests/ua/INSTALL.md for how each is installed):
  * PjsuaPhone   ("pjsua2")   -- pjsua2 from the PyPI wheel ``pjsua2-python``,
    driven by tests/ua/pjsua_agent.py over JSON lines on stdin/stdout.  Every
    role, every option.
  * BaresipPhone ("baresip")  -- Debian's baresip 1.0.0, driven over its
    ctrl_tcp module (netstring-framed JSON); its SIP trace (-s) is parsed for
    the SIP messages it sends and receives.  Acts on its newest call only,
    rejects only with 486, no extra headers.
  * LinphonePhone ("linphone") -- Debian's linphonec 5.1 over stdin; its -d 6
    log on stdout carries the SIP messages.  Rejects only with 603, one active
    call at a time ("Terminate or hold on the current call first"), no extra
    headers; its re-INVITE is a pause + resume.

Call handles are ``Call`` objects; their state is kept up to date from the
phone's events by reader threads, so call_state() never blocks.  States are
normalised to: null, calling, incoming, early, connecting, confirmed,
disconnected ("confirmed" = 2xx and ACK exchanged, for every kind).

``transfer_events(call)`` is read off the wire, not from the UA's API: the
sipfrag status codes of the refer NOTIFYs the transferor accepted, in order.
``call.xfer`` keeps what the UA's own API reported (pjsua2's
onCallTransferStatus, baresip's TRANSFER_FAILED), ``call.notifies`` the parsed
NOTIFYs, ``call.refer_responses`` the final codes of our REFERs and
``call.messages`` every SIP message received on the call.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT = HERE / "pjsua_agent.py"

# Normalised call states, shared by all kinds.
STATES = ("null", "calling", "incoming", "early", "connecting", "confirmed", "disconnected")


class PhoneError(RuntimeError):
    pass


def free_port(kind: str = "udp") -> int:
    """A port that was free on 127.0.0.1 for both UDP and TCP a moment ago."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PhoneError("no free port")


def parse_sip(text: str) -> dict:
    """Tolerant split of one SIP message: first line, headers (lower-case, compact
    forms expanded, first value wins), body."""
    norm = text.replace("\r\n", "\n")
    head, _, body = norm.partition("\n\n")
    lines = head.split("\n")
    first = lines[0].strip() if lines else ""
    compact = {
        "i": "call-id",
        "o": "event",
        "c": "content-type",
        "r": "refer-to",
        "b": "referred-by",
        "f": "from",
        "t": "to",
        "m": "contact",
        "l": "content-length",
    }
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        headers.setdefault(compact.get(name, name), value.strip())
    status = method = None
    m = re.match(r"SIP/2\.0\s+(\d{3})", first, re.I)
    if m:
        status = int(m.group(1))
    else:
        method = first.split(" ", 1)[0].upper() if first else None
    cseq = headers.get("cseq", "").split()
    return {
        "first": first,
        "method": method,
        "status": status,
        "headers": headers,
        "cseq_method": cseq[1].upper() if len(cseq) > 1 else None,
        "body": body,
    }


def sipfrag_code(body: str) -> int | None:
    """Status code of a message/sipfrag body ('SIP/2.0 200 OK' -> 200)."""
    m = re.match(r"\s*SIP/2\.0\s+(\d{3})", body or "", re.I)
    return int(m.group(1)) if m else None


@dataclass
class Call:
    """A call as seen by one phone.  ``id`` is the phone's own key for it."""

    phone: Phone
    id: str
    origin: str  # "outgoing" | "incoming" | "transfer"
    remote: str = ""
    state: str = "null"
    code: int = 0
    reason: str = ""
    parent: str | None = None  # for origin "transfer": the call that was REFERred
    notifies: list = field(default_factory=list)  # refer NOTIFYs received: {"code", ...}
    refer_responses: list = field(default_factory=list)  # final codes of our REFERs
    xfer: list = field(default_factory=list)  # the UA's own transfer reports (API callbacks)
    reinvites: list = field(default_factory=list)  # final codes of our re-INVITEs
    refer_requests: list = field(default_factory=list)  # REFERs received on this call
    messages: list = field(default_factory=list)  # raw SIP messages received
    history: list = field(default_factory=list)  # states passed through
    acked: bool = False  # incoming calls: the ACK to our 2xx has been seen

    def __repr__(self) -> str:
        return f"<Call {self.phone.name}#{self.id} {self.origin} {self.state} {self.remote}>"


class Phone:
    """One interface for every kind of phone.  Subclasses implement the _do_* hooks."""

    kind = "abstract"

    def __init__(
        self,
        name: str,
        user: str,
        proxy_host: str,
        proxy_port: int,
        domain: str,
        *,
        workdir: str | os.PathLike | None = None,
        accept_refer: int = 202,
        auto_ringing: bool = True,
        auto_answer: int | None = None,
        keep_workdir: bool = False,
    ):
        self.name = name
        self.user = user
        self.proxy_host = proxy_host
        self.proxy_port = int(proxy_port)
        self.domain = domain
        self.accept_refer = accept_refer
        self.auto_ringing = auto_ringing
        self.auto_answer = auto_answer
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"phone-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.sip_port: int | None = None
        self.registered: int | None = None  # last REGISTER final code
        self.reg_history: list[int] = []
        self._cv = threading.Condition()
        self._calls: dict[str, Call] = {}
        self._order: list[str] = []
        self._taken: set[str] = set()  # incoming calls already handed out
        self._threads: list[threading.Thread] = []

    # -- identity ------------------------------------------------------------
    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "phone.log"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.aor} pid={self.pid}>"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- waiting -------------------------------------------------------------
    def wait_for(self, pred, timeout: float, what: str):
        """Wait until pred() is truthy (evaluated under the phone's lock)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PhoneError(f"{self.name}: timed out after {timeout}s waiting for {what}")
                if self.proc is not None and self.proc.poll() is not None:
                    raise PhoneError(
                        f"{self.name}: process exited ({self.proc.returncode}) "
                        f"while waiting for {what}; see {self.log_path}"
                    )
                self._cv.wait(min(left, 0.2))

    def _notify(self):
        self._cv.notify_all()

    # -- call bookkeeping (called with or without the lock) -------------------
    def _new_call(self, cid: str, origin: str, remote: str = "", parent=None) -> Call:
        with self._cv:
            call = self._calls.get(cid)
            if call is None:
                call = Call(self, cid, origin, remote=remote, parent=parent)
                self._calls[cid] = call
                self._order.append(cid)
            self._notify()
            return call

    # True where the UA reports "established" when it sends its 200, before the
    # ACK: call_state() then says "connecting" until the ACK has been seen, so
    # "confirmed" means the same for every kind (a REFER sent on a call the
    # callee has not seen ACKed yet gets 491 from linphone).
    wait_ack = False

    def _set_state(self, call: Call, state: str, code: int = 0, reason: str = ""):
        with self._cv:
            if (
                state == "confirmed"
                and self.wait_ack
                and call.origin == "incoming"
                and not call.acked
            ):
                state = "connecting"
            if call.state != "disconnected" or state == "disconnected":
                call.state = state
            if code:
                call.code = code
            if reason:
                call.reason = reason
            if not call.history or call.history[-1] != state:
                call.history.append(state)
            self._notify()

    def _record_rx(self, call: Call, text: str):
        """Keep a received SIP message; note refer NOTIFYs and answers to our REFERs."""
        with self._cv:
            call.messages.append(text)
            msg = parse_sip(text)
            if msg["method"] == "ACK" and not call.acked:
                call.acked = True
                if call.state == "connecting":
                    self._set_state(call, "confirmed")
            elif msg["method"] == "NOTIFY":
                event = msg["headers"].get("event", "")
                ctype = msg["headers"].get("content-type", "")
                if event.split(";")[0].strip().lower() == "refer" or "sipfrag" in ctype.lower():
                    call.notifies.append(
                        {
                            "code": sipfrag_code(msg["body"]),
                            "event": event,
                            "subscription_state": msg["headers"].get("subscription-state", ""),
                            "content_type": ctype,
                            "body": msg["body"],
                        }
                    )
            elif msg["status"] and msg["cseq_method"] == "REFER" and msg["status"] >= 200:
                call.refer_responses.append(msg["status"])
            self._notify()

    def calls(self) -> list[Call]:
        with self._cv:
            return [self._calls[c] for c in self._order]

    # -- the interface -------------------------------------------------------
    def start(self):
        raise NotImplementedError

    def register(self, timeout: float = 5.0) -> int:
        """Register with the proxy; wait for the final answer, raise unless 200."""
        with self._cv:
            seen = len(self.reg_history)
        self._do_register()
        code = self.wait_for(
            lambda: self.reg_history[seen:] and self.reg_history[-1],
            timeout,
            "REGISTER final response",
        )
        if code != 200:
            raise PhoneError(f"{self.name}: REGISTER answered {code}")
        return code

    def call(self, uri: str, headers: dict | None = None) -> Call:
        return self._do_call(uri, headers)

    def wait_incoming(self, timeout: float = 5.0) -> Call:
        """Next incoming call not handed out before (transfer INVITEs included)."""

        def pred():
            for cid in self._order:
                c = self._calls[cid]
                if c.origin == "incoming" and cid not in self._taken:
                    return c
            return None

        call = self.wait_for(pred, timeout, "an incoming call")
        with self._cv:
            self._taken.add(call.id)
        return call

    def answer(self, call: Call, code: int = 200, reason: str | None = None):
        """Answer an incoming call: 200 accepts, 18x sends provisional, >=300 rejects."""
        self._do_answer(call, code, reason)

    def reject(self, call: Call, code: int = 486, reason: str | None = None):
        self._do_answer(call, code, reason)

    def hold(self, call: Call, timeout: float = 5.0) -> int:
        """Put the call on hold with a re-INVITE; return its final status code."""
        return self._reinvite(call, timeout, hold=True)

    def reinvite(self, call: Call, timeout: float = 5.0) -> int:
        """Send a re-INVITE (unhold/refresh) on an established call; return its final code."""
        return self._reinvite(call, timeout, hold=False)

    def _reinvite(self, call: Call, timeout: float, hold: bool) -> int:
        with self._cv:
            n = len(call.reinvites)
        self._do_reinvite(call, hold)
        return self.wait_for(
            lambda: call.reinvites[n:] and call.reinvites[n],
            timeout,
            f"final response to re-INVITE on {call}",
        )

    def transfer(
        self, call: Call, target_uri: str, refer_sub: bool = True, headers: dict | None = None
    ):
        """Blind transfer: send REFER with Refer-To target_uri on the call."""
        self._do_transfer(call, target_uri, refer_sub, headers)

    def transfer_replaces(self, call: Call, dest: Call):
        """Attended transfer: REFER `call`'s peer to `dest`'s peer, Replaces naming `dest`."""
        self._do_transfer_replaces(call, dest)

    def _do_transfer_replaces(self, call, dest):
        raise PhoneError(f"{self.name}: attended transfer is driven for pjsua2 phones only")

    def replacing(self, call: Call, timeout: float = 5.0) -> Call:
        """The call that took `call` over by an INVITE with Replaces."""
        return self.wait_call(
            lambda c: c.origin == "replacing" and c.parent == call.id, timeout,
            f"a call replacing {call}",
        )

    def transfer_events(self, call: Call) -> list[int]:
        """Status codes of the message/sipfrag bodies of the refer NOTIFYs received."""
        with self._cv:
            return [n["code"] for n in call.notifies if n["code"] is not None]

    def wait_transfer_final(self, call: Call, timeout: float = 10.0) -> int:
        """Wait for a final transfer outcome and return its code: the first
        sipfrag >= 200 in a NOTIFY, or the REFER's own failure response (>= 300)."""

        def pred():
            for n in call.notifies:
                if n["code"] is not None and n["code"] >= 200:
                    return n["code"]
            return next((c for c in call.refer_responses if c >= 300), None)

        return self.wait_for(pred, timeout, f"final transfer status on {call}")

    def wait_refer_response(self, call: Call, timeout: float = 5.0) -> int:
        """Final response code to the (last) REFER sent on the call."""
        return self.wait_for(
            lambda: call.refer_responses and call.refer_responses[-1],
            timeout,
            f"response to REFER on {call}",
        )

    def hangup(self, call: Call):
        self._do_hangup(call)

    def call_state(self, call: Call) -> str:
        with self._cv:
            return call.state

    def wait_state(self, call: Call, states, timeout: float = 5.0) -> str:
        if isinstance(states, str):
            states = (states,)
        return self.wait_for(
            lambda: call.state in states and call.state,
            timeout,
            f"{call} to reach {'/'.join(states)}",
        )

    def wait_call(self, pred, timeout: float = 5.0, what: str = "a call") -> Call:
        """Wait for any call of this phone for which pred(call) holds."""
        return self.wait_for(
            lambda: next((self._calls[c] for c in self._order if pred(self._calls[c])), None),
            timeout,
            what,
        )

    def stop(self):
        raise NotImplementedError

    # -- hooks -----------------------------------------------------------------
    def _do_register(self):
        raise NotImplementedError

    def _do_call(self, uri, headers):
        raise NotImplementedError

    def _do_answer(self, call, code, reason):
        raise NotImplementedError

    def _do_reinvite(self, call, hold):
        raise NotImplementedError

    def _do_transfer(self, call, target, refer_sub, headers):
        raise NotImplementedError

    def _do_hangup(self, call):
        raise NotImplementedError

    # -- process helpers -------------------------------------------------------
    def _spawn(self, argv, env=None, stdin=subprocess.DEVNULL):
        self._log = open(self.log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )

    def _thread(self, target):
        t = threading.Thread(target=target, name=f"phone-{self.name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _kill(self, grace: float = 3.0):
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for t in self._threads:
            t.join(timeout=2)
        with contextlib.suppress(Exception):
            self._log.close()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# pjsua2
# ---------------------------------------------------------------------------


class PjsuaPhone(Phone):
    """pjsua2 (PyPI wheel pjsua2-python) in tests/ua/pjsua_agent.py."""

    kind = "pjsua2"

    def __init__(self, *a, python: str | None = None, lock_codec: bool = False, **kw):
        super().__init__(*a, **kw)
        self.python = python or sys.executable
        self.lock_codec = lock_codec
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self.version = None

    @property
    def pjsua_log(self) -> Path:
        return self.workdir / "pjsua.log"

    def start(self, timeout: float = 10.0):
        cfg = {
            "user": self.user,
            "domain": self.domain,
            "proxy_host": self.proxy_host,
            "proxy_port": self.proxy_port,
            "sip_port": 0,
            "rtp_port": free_port(),
            "log": str(self.pjsua_log),
            "accept_refer": self.accept_refer,
            "auto_ringing": self.auto_ringing,
            "auto_answer": self.auto_answer,
            "lock_codec": self.lock_codec,
        }
        env = dict(os.environ, HOME=str(self.workdir), TMPDIR=str(self.workdir))
        self._spawn(
            [self.python, "-u", str(AGENT), json.dumps(cfg)], env=env, stdin=subprocess.PIPE
        )
        self._thread(self._reader)
        self.wait_for(lambda: self.sip_port, timeout, "pjsua agent to be ready")
        return self

    def _reader(self):
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except json.JSONDecodeError:
                continue
            with self._cv:
                if "id" in msg and "event" not in msg:
                    self._replies[msg["id"]] = msg
                else:
                    self._on_event(msg)
                self._notify()
        with self._cv:
            self._notify()

    def _on_event(self, ev: dict):
        kind = ev["event"]
        if kind == "ready":
            self.sip_port = ev["sip_port"]
            self.version = ev.get("version")
        elif kind == "reg":
            if ev["code"] >= 200:
                self.registered = ev["code"]
                self.reg_history.append(ev["code"])
        elif kind == "new_call":
            parent = str(ev["parent"]) if ev.get("parent") else None
            c = self._new_call(str(ev["call"]), ev["origin"], ev.get("remote", ""), parent)
            if ev["origin"] == "incoming":
                c.state = "incoming"
                c.history.append("incoming")
        elif kind == "call_state":
            c = self._calls.get(str(ev["call"]))
            if c:
                if ev.get("remote"):
                    c.remote = ev["remote"]
                self._set_state(c, ev["state"], ev.get("code", 0), ev.get("reason", ""))
        elif kind == "xfer_status":  # pjsua2 onCallTransferStatus
            c = self._calls.get(str(ev["call"]))
            if c:
                c.xfer.append({"code": ev["code"], "reason": ev["reason"], "final": ev["final"]})
        elif kind == "reinvite":
            c = self._calls.get(str(ev["call"]))
            if c:
                c.reinvites.append(ev["code"])
        elif kind == "refer_request":
            c = self._calls.get(str(ev["call"]))
            if c:
                c.refer_requests.append(
                    {"refer_to": ev["refer_to"], "code": ev["code"], "new_call": ev.get("new_call")}
                )
        elif kind == "sipmsg":
            c = self._calls.get(str(ev["call"]))
            if c:
                self._record_rx(c, ev["msg"])

    def _cmd(self, cmd: str, timeout: float = 5.0, **args):
        if self.proc is None or self.proc.poll() is not None:
            raise PhoneError(f"{self.name}: pjsua agent is not running")
        rid = next(self._ids)
        line = json.dumps({"id": rid, "cmd": cmd, **args}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise PhoneError(f"{self.name}: pjsua agent is gone") from e
        reply = self.wait_for(lambda: self._replies.pop(rid, None), timeout, f"reply to {cmd}")
        if not reply["ok"]:
            raise PhoneError(f"{self.name}: {cmd} failed: {reply['error']}")
        return reply["result"]

    def _do_register(self):
        self._cmd("register")

    def _do_call(self, uri, headers):
        key = self._cmd("call", uri=uri, headers=headers or {})
        with self._cv:
            return self._calls[str(key)]

    def _do_answer(self, call, code, reason):
        self._cmd("answer", call=call.id, code=code, reason=reason or "")

    def _do_reinvite(self, call, hold):
        self._cmd("hold" if hold else "reinvite", call=call.id)

    def _do_transfer(self, call, target, refer_sub, headers):
        self._cmd("xfer", call=call.id, target=target, refer_sub=refer_sub, headers=headers or {})

    def _do_hangup(self, call):
        self._cmd("hangup", call=call.id)

    def _do_transfer_replaces(self, call, dest):
        self._cmd("xfer_replaces", call=call.id, dest=dest.id)

    def set_options(self, **opts):
        """accept_refer=<code>, auto_ringing=bool, auto_answer=<code>|None."""
        self._cmd("set", **opts)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(b'{"id": 0, "cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
        self._kill(grace=3.0)


_PJSUA2_CHECK: dict[str, str | None] = {}


def pjsua2_available(python: str | None = None) -> str | None:
    """None if the pjsua2 bindings load in ``python`` (default: this one), else why.

    Checked in a child process, so that a broken shared library cannot hurt
    the caller and pjsua2 is never loaded into pytest itself.
    """
    python = python or sys.executable
    if python not in _PJSUA2_CHECK:
        try:
            r = subprocess.run(
                [python, "-c", "import pjsua2; pjsua2.Endpoint"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            why = (
                None
                if r.returncode == 0
                else ("pjsua2 not importable: " + (r.stderr.strip().splitlines() or ["?"])[-1])
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"pjsua2 check failed: {e}"
        _PJSUA2_CHECK[python] = why
    return _PJSUA2_CHECK[python]


# ---------------------------------------------------------------------------
# baresip
# ---------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BaresipPhone(Phone):
    """Debian's baresip 1.0.0 driven over ctrl_tcp; SIP trace parsed from -s output.

    baresip 1.0.0 has no per-call addressing over ctrl_tcp: commands act on the
    "current" call, which is the newest one.  Good enough for target and
    transferee roles (one call at a time, REFER is followed by baresip itself).
    Rejecting an incoming call always sends 486 (baresip 1.0.0 cannot choose
    the code); reject(call, 486) is therefore the only reject it offers.
    """

    kind = "baresip"
    wait_ack = True
    BINARY = "baresip"
    MODULES = "/usr/lib/baresip/modules"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.ctrl_port: int | None = None
        self._sock: socket.socket | None = None
        self._tokens = itertools.count(1)
        self._replies: dict[str, dict] = {}
        self._send_lock = threading.Lock()
        self._by_sip_callid: dict[str, Call] = {}
        self.raw_events: list[dict] = []
        self.trace: list[dict] = []  # {"dir": "rx"|"tx", "msg": text}
        self._pending_refer: list[Call] = []
        self._orphans: dict[str, list[str]] = {}  # rx messages before their call was known

    def _write_config(self):
        if self.accept_refer != 202:
            raise PhoneError(
                "baresip 1.0.0 always accepts REFER (202); accept_refer is pjsua2-only"
            )
        if self.auto_answer not in (None, 200):
            raise PhoneError("baresip can only auto-answer with 200")
        self.sip_port = free_port()
        self.ctrl_port = free_port()
        answermode = "auto" if self.auto_answer == 200 else "manual"
        rtp = free_port()
        cfg = f"""\
module_path\t\t{self.MODULES}
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{self.sip_port}
net_interface\t\t127.0.0.1
call_local_timeout\t120
call_max_calls\t\t4
audio_player\t\taubridge,nil
audio_source\t\taubridge,nil
audio_alert\t\taubridge,nil
audio_buffer\t\t20
rtp_ports\t\t{rtp}-{rtp + 20}
module\t\t\tg711.so
module\t\t\taubridge.so
module_tmp\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{self.ctrl_port}
ringback_disabled\tyes
"""
        (self.workdir / "config").write_text(cfg)
        acc = (
            f"<sip:{self.user}@{self.domain}>;"
            f'outbound="sip:{self.proxy_host}:{self.proxy_port}";'
            f"regint=300;answermode={answermode};audio_codecs=pcmu,pcma\n"
        )
        (self.workdir / "accounts").write_text(acc)
        (self.workdir / "contacts").write_text("")

    def start(self, timeout: float = 10.0, attempts: int = 3):
        """baresip exits at once when one of its ports (probed free, SIP, control, RTP)
        was taken meanwhile by another process: it is started again on fresh ports."""
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "LANG": "C",
        }
        for attempt in range(1, attempts + 1):
            self._write_config()
            self._spawn([self.BINARY, "-f", str(self.workdir), "-s"], env=env)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port),
                                                          timeout=1)
                    break
                except OSError:
                    if self.proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise PhoneError(f"{self.name}: ctrl_tcp did not come up") from None
                    time.sleep(0.05)
            if self._sock is not None:
                break
            if attempt == attempts:
                raise PhoneError(f"{self.name}: baresip exited {attempts} times; see "
                                 f"{self.log_path}")
        self._thread(self._stdout_reader)
        self._sock.settimeout(None)
        self._thread(self._ctrl_reader)
        return self

    # -- ctrl_tcp ----------------------------------------------------------------
    def _ctrl_reader(self):
        buf = b""
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            buf += data
            while True:
                m = re.match(rb"(\d+):", buf)
                if not m:
                    break
                n = int(m.group(1))
                start = m.end()
                if len(buf) < start + n + 1:
                    break
                payload, buf = buf[start : start + n], buf[start + n + 1 :]
                try:
                    msg = json.loads(payload)
                except json.JSONDecodeError:
                    continue
                with self._cv:
                    if msg.get("response"):
                        self._replies[str(msg.get("token"))] = msg
                    elif msg.get("event"):
                        self.raw_events.append(msg)
                        self._on_event(msg)
                    self._notify()
        with self._cv:
            self._notify()

    def _cmd(self, command: str, params: str | None = None, timeout: float = 5.0) -> str:
        if self._sock is None:
            raise PhoneError(f"{self.name}: not started")
        token = f"t{next(self._tokens)}"
        d = {"command": command, "token": token}
        if params is not None:
            d["params"] = params
        payload = json.dumps(d).encode()
        with self._send_lock:
            self._sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        reply = self.wait_for(
            lambda: self._replies.pop(token, None), timeout, f"reply to {command}"
        )
        if not reply.get("ok", False):
            raise PhoneError(f"{self.name}: {command} failed: {reply.get('data')}")
        return reply.get("data", "")

    _EV_STATE = {
        "CALL_INCOMING": "incoming",
        "CALL_RINGING": "early",
        "CALL_PROGRESS": "early",
        "CALL_ANSWERED": "connecting",
        "CALL_ESTABLISHED": "confirmed",
        "CALL_CLOSED": "disconnected",
    }

    def _on_event(self, ev: dict):
        etype = ev.get("type", "")
        if etype.startswith("REGISTER_"):
            if etype == "REGISTER_OK":
                self.registered = 200
                self.reg_history.append(200)
            elif etype == "REGISTER_FAIL":
                m = re.search(r"(\d{3})", ev.get("param", ""))
                code = int(m.group(1)) if m else 999
                self.registered = code
                self.reg_history.append(code)
            return
        if ev.get("class") != "call":
            return
        sid = ev.get("id", "")
        call = self._by_sip_callid.get(sid)
        if call is None:
            if ev.get("direction") == "incoming" or etype == "CALL_INCOMING":
                call = self._new_call(sid, "incoming", ev.get("peeruri", ""))
            else:
                # ours (dialled, still keyed "pending-N") or baresip following a REFER
                peer = ev.get("peeruri", "")
                pending = [c for c in self._calls.values() if c.id.startswith("pending-")]
                mine = [c for c in pending if c.remote == peer] or (
                    pending if not self._pending_refer else []
                )
                if mine:
                    call = mine[0]
                    self._rekey(call, sid)
                else:
                    parent = self._pending_refer.pop(0).id if self._pending_refer else None
                    call = self._new_call(sid, "transfer", peer, parent)
            self._by_sip_callid[sid] = call
            for text in self._orphans.pop(sid, []):
                self._record_rx(call, text)
        if ev.get("peeruri"):
            call.remote = ev["peeruri"]
        state = self._EV_STATE.get(etype)
        if state:
            code = 0
            m = re.match(r"(\d{3})\b", ev.get("param", "") or "")
            if m:
                code = int(m.group(1))
            self._set_state(call, state, code, ev.get("param", ""))
        elif etype in ("TRANSFER", "CALL_TRANSFER"):
            call.refer_requests.append({"refer_to": ev.get("param", ""), "code": 202})
            self._pending_refer.append(call)
        elif etype in ("TRANSFER_FAILED", "CALL_TRANSFER_FAILED"):
            call.xfer.append(
                {
                    "code": _first_code(ev.get("param", "")) or 0,
                    "reason": ev.get("param", ""),
                    "final": True,
                }
            )

    def _rekey(self, call: Call, sid: str):
        old = call.id
        self._calls[sid] = self._calls.pop(old)
        self._order[self._order.index(old)] = sid
        call.id = sid

    # -- SIP trace on stdout ---------------------------------------------------------
    def _stdout_reader(self):
        block: list[str] | None = None
        for raw in self.proc.stdout:
            self._log.write(raw)
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip("\r\n")
            if line == "#":
                if block:
                    self._on_trace(block)
                block = []
                continue
            if block is not None:
                if not line and block and block[-1] == "" and len(block) > 2:
                    self._on_trace(block)
                    block = None
                    continue
                block.append(line)
        if block:
            self._on_trace(block)

    def _on_trace(self, block: list[str]):
        if len(block) < 2:
            return
        m = re.match(r"(\w+) (\S+) -> (\S+)", block[0])
        if not m:
            return
        local = f"127.0.0.1:{self.sip_port}"
        direction = "tx" if m.group(2) == local else "rx"
        text = "\r\n".join(block[1:]).strip("\r\n") + "\r\n"
        with self._cv:
            self.trace.append({"dir": direction, "msg": text})
            if direction == "rx":
                self._on_rx_message(text)
            else:
                self._on_tx_message(text)
            self._notify()

    def _on_rx_message(self, text: str):
        msg = parse_sip(text)
        if msg["status"] and msg["cseq_method"] == "REGISTER" and msg["status"] >= 200:
            # seen here too because baresip registers before ctrl_tcp is connected
            self.registered = msg["status"]
            self.reg_history.append(msg["status"])
            return
        cid = msg["headers"].get("call-id", "")
        call = self._by_sip_callid.get(cid)
        if call is None:
            self._orphans.setdefault(cid, []).append(text)
            return
        self._record_rx(call, text)
        if msg["method"] == "BYE":
            self._set_state(call, "disconnected", reason="BYE received")

    def _on_tx_message(self, text: str):
        # baresip 1.0.0 raises no CALL_CLOSED when it hangs up by itself (e.g. the
        # transferor's BYE after a transfer); the trace shows it.
        msg = parse_sip(text)
        call = self._by_sip_callid.get(msg["headers"].get("call-id", ""))
        if call is None:
            return
        if msg["method"] == "BYE":
            self._set_state(call, "disconnected", reason="BYE sent")
        elif (
            msg["status"]
            and msg["status"] >= 300
            and msg["cseq_method"] == "INVITE"
            and call.state in ("incoming", "early")
        ):
            self._set_state(call, "disconnected", msg["status"], msg["first"])

    # -- hooks -------------------------------------------------------------------
    def _do_register(self):
        # baresip registers by itself at start-up (regint in accounts); nothing to send.
        pass

    def register(self, timeout: float = 5.0) -> int:
        code = self.wait_for(lambda: self.registered, timeout, "REGISTER final response")
        if code != 200:
            raise PhoneError(f"{self.name}: REGISTER answered {code}")
        return code

    def _current(self, call: Call):
        with self._cv:
            live = [self._calls[c] for c in self._order if self._calls[c].state != "disconnected"]
        if call.state == "disconnected":
            raise PhoneError(f"{self.name}: {call} is disconnected")
        if len(live) > 1 and live[-1] is not call:
            raise PhoneError(
                f"{self.name}: baresip 1.0.0 can only act on its newest call; {call} is not it"
            )

    def _do_call(self, uri, headers):
        if headers:
            raise PhoneError("baresip 1.0.0 cannot add headers to an INVITE")
        with self._cv:
            tmp = f"pending-{next(self._tokens)}"
            call = self._new_call(tmp, "outgoing", uri)
            call.state = "calling"
        self._cmd("dial", uri)
        return call

    def _do_answer(self, call, code, reason):
        self._current(call)
        if code == 200:
            self._cmd("accept")
        elif code == 486:
            self._cmd("hangup")
        elif 100 < code < 200:
            pass  # baresip sends 180 Ringing by itself
        else:
            raise PhoneError(f"baresip 1.0.0 can only answer 200 or reject with 486, not {code}")

    def _do_reinvite(self, call, hold):
        self._current(call)
        call_reinvites = len(call.reinvites)
        before = len(self.trace)
        self._cmd("hold" if hold else "reinvite")
        self._thread(lambda: self._watch_reinvite(call, before, call_reinvites))

    def _watch_reinvite(self, call, before, n):
        # the final response to our re-INVITE shows up in the SIP trace
        def pred():
            for t in self.trace[before:]:
                if t["dir"] == "rx" and t["msg"].startswith("SIP/2.0 "):
                    head = t["msg"].split("\r\n\r\n", 1)[0]
                    if re.search(r"(?im)^CSeq:\s*\d+\s+INVITE\s*$", head) and call.id in head:
                        code = int(t["msg"].split()[1])
                        if code >= 200:
                            return code
            return None

        try:
            code = self.wait_for(pred, 10, "re-INVITE response")
        except PhoneError:
            return
        with self._cv:
            if len(call.reinvites) == n:
                call.reinvites.append(code)
            self._notify()

    def _do_transfer(self, call, target, refer_sub, headers):
        if headers or not refer_sub:
            raise PhoneError("baresip 1.0.0 cannot add headers to a REFER")
        self._current(call)
        self._cmd("transfer", target)

    def _do_hangup(self, call):
        self._current(call)
        self._cmd("hangup")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None and self._sock is not None:
            with contextlib.suppress(Exception):
                payload = json.dumps({"command": "quit", "token": "quit"}).encode()
                self._sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
        self._kill(grace=3.0)
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self._sock.close()


# ---------------------------------------------------------------------------
# linphone (linphonec)
# ---------------------------------------------------------------------------

_TS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:\d{3} ")
_PROMPT = re.compile(r"^(?:linphonec> ?)+")


def _bare_uri(uri: str) -> str:
    """'<sip:a@b;x=y>;tag=1' -> 'sip:a@b' (for matching URIs loosely)."""
    m = re.search(r"<([^>]*)>", uri or "")
    u = m.group(1) if m else (uri or "").strip()
    return u.split(";", 1)[0].split("?", 1)[0].lower()


class LinphonePhone(Phone):
    """Debian's linphonec 5.1 driven over stdin; its stdout (-d 6) carries both
    the console's own lines ("Call 1 with ... connected.") and belle-sip's log
    with every SIP message sent and received, in order.

    Calls are addressed by linphonec's call ids.  linphonec cannot choose the
    code of a rejection ("terminate" on an incoming call answers 603 Decline)
    nor add headers, and it prints nothing about a transfer's progress: the
    transferor's sipfrags come from the NOTIFYs in the log.
    """

    kind = "linphone"
    wait_ack = True
    BINARY = "linphonec"
    REJECT_CODE = 603

    _LINES = [
        (re.compile(r"Receiving new incoming call from (\S+), assigned id (\d+)"), "incoming"),
        (re.compile(r"Establishing call id to (\S+), assigned id (\d+)"), "establishing"),
        (re.compile(r"Call (\d+) to (\S+) in progress\."), "calling"),
        (re.compile(r"Call (\d+) to (\S+) ringing\."), "early"),
        (re.compile(r"Call (\d+) with (\S+) early media\."), "early"),
        (re.compile(r"Call (\d+) with (\S+) connected\."), "confirmed"),
        (re.compile(r"Call (\d+) with (\S+) ended \((.*)\)\."), "disconnected"),
        (re.compile(r"Call (\d+) with (\S+) error\."), "disconnected"),
    ]

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._by_sip_callid: dict[str, Call] = {}
        self._unbound_out: list[Call] = []  # our calls still waiting for their INVITE
        self._last_rx_invite: tuple[str, str] | None = None  # (call-id, text)
        self._dialing = 0
        self._pending_reinvite: dict[str, int] = {}
        self._held: set[str] = set()
        self.trace: list[dict] = []
        self.lines: list[str] = []  # linphonec's own output lines

    def _write_config(self):
        if self.accept_refer != 202 or self.auto_answer is not None:
            raise PhoneError("linphonec: accept_refer and auto_answer are not supported")
        self.sip_port = free_port()
        rtp = free_port()
        (self.workdir / ".local/share/linphone").mkdir(parents=True, exist_ok=True)
        proxy = f"sip:{self.proxy_host}:{self.proxy_port};transport=udp"
        (self.workdir / "linphonerc").write_text(f"""\
[sip]
sip_port={self.sip_port}
sip_tcp_port=0
sip_tls_port=0
default_proxy=0
register_only_when_network_is_up=0
register_only_when_upnp_is_ok=0
auto_send_ringing=1
inc_timeout=60

[rtp]
audio_rtp_port={rtp}-{rtp + 40}

[misc]
max_calls=4

[proxy_0]
reg_proxy=<{proxy}>
reg_route=<{proxy};lr>
reg_identity=sip:{self.user}@{self.domain}
reg_expires=300
reg_sendregister=1
publish=0
""")

    def start(self, timeout: float = 10.0):
        self._write_config()
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.workdir),
            "TMPDIR": str(self.workdir),
            "LANG": "C",
        }
        self._spawn(
            [self.BINARY, "-c", str(self.workdir / "linphonerc"), "-d", "6"],
            env=env,
            stdin=subprocess.PIPE,
        )
        self._thread(self._reader)
        self.wait_for(
            lambda: (
                any(ln.startswith("Warning: video") or "linphonec>" in ln for ln in self.lines)
                or self.registered
            ),
            timeout,
            "linphonec to start",
        )
        return self

    def _send(self, line: str):
        if self.proc is None or self.proc.poll() is not None:
            raise PhoneError(f"{self.name}: linphonec is not running")
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    # -- stdout ----------------------------------------------------------------
    def _reader(self):
        it = iter(self.proc.stdout)
        pending: str | None = None
        while True:
            if pending is not None:
                raw, pending = pending, None
            else:
                try:
                    raw = next(it)
                except StopIteration:
                    break
                self._log.write(raw)
                raw = raw.decode(errors="replace")
            line = _PROMPT.sub("", raw.rstrip("\r\n"))
            if _TS.match(line):
                m = re.search(r"(received \[\d+\] new bytes from|message sent to) \[", line)
                if m:
                    text, pending = self._read_sip(it)
                    with self._cv:
                        self._on_sip("rx" if m.group(1).startswith("received") else "tx", text)
                        self._notify()
                continue
            if line.strip():
                with self._cv:
                    self.lines.append(line)
                    self._on_line(line)
                    self._notify()
        with self._cv:
            self._notify()

    def _read_sip(self, it):
        """Read one SIP message from the log; return (text, first line not part of it)."""
        head: list[str] = []
        for raw in it:
            self._log.write(raw)
            line = raw.decode(errors="replace").rstrip("\r\n")
            if _TS.match(_PROMPT.sub("", line)) and not head:
                return "", line + "\n"
            if line == "":
                break
            head.append(line)
        else:
            return "\r\n".join(head) + "\r\n\r\n", None
        clen = 0
        for h in head:
            k, _, v = h.partition(":")
            if k.strip().lower() in ("content-length", "l"):
                with contextlib.suppress(ValueError):
                    clen = int(v.strip())
        body = ""
        while len(body.encode()) < clen:
            try:
                raw = next(it)
            except StopIteration:
                break
            self._log.write(raw)
            body += raw.decode(errors="replace").replace("\r\n", "\n").replace("\n", "\r\n")
        return "\r\n".join(head) + "\r\n\r\n" + body, None

    def _on_line(self, line: str):
        for rx, what in self._LINES:
            m = rx.search(line)
            if not m:
                continue
            if what == "incoming":
                uri, cid = m.group(1), m.group(2)
                call = self._new_call(cid, "incoming", uri)
                self._set_state(call, "incoming")
                if self._last_rx_invite:
                    sip_cid, text = self._last_rx_invite
                    self._last_rx_invite = None
                    self._by_sip_callid[sip_cid] = call
                    self._record_rx(call, text)
            elif what == "establishing":
                uri, cid = m.group(1), m.group(2)
                if self._dialing:
                    self._dialing -= 1
                    call = self._new_call(cid, "outgoing", uri)
                else:  # linphone following a REFER
                    parent = next(
                        (
                            c.id
                            for c in reversed(self.calls())
                            if c.refer_requests and c.state != "disconnected"
                        ),
                        None,
                    )
                    call = self._new_call(cid, "transfer", uri, parent)
                self._set_state(call, "calling")
                self._unbound_out.append(call)
            else:
                call = self._calls.get(m.group(1))
                if call is None:
                    return
                reason = m.group(3) if what == "disconnected" and m.lastindex >= 3 else ""
                self._set_state(call, what, reason=reason)
            return

    def _on_sip(self, direction: str, text: str):
        if not text:
            return
        self.trace.append({"dir": direction, "msg": text})
        msg = parse_sip(text)
        hdr = msg["headers"]
        sip_cid = hdr.get("call-id", "")
        if msg["status"] and msg["cseq_method"] == "REGISTER":
            if direction == "rx" and msg["status"] >= 200:
                self.registered = msg["status"]
                self.reg_history.append(msg["status"])
            return
        call = self._by_sip_callid.get(sip_cid)
        initial = msg["method"] == "INVITE" and ";tag=" not in hdr.get("to", "")
        if call is None and initial:
            if direction == "tx" and self._unbound_out:
                call = self._unbound_out.pop(0)
                self._by_sip_callid[sip_cid] = call
            elif direction == "rx":
                self._last_rx_invite = (sip_cid, text)
                return
        if call is None:
            return
        if direction == "rx":
            self._record_rx(call, text)
            if msg["method"] == "REFER":
                call.refer_requests.append({"refer_to": hdr.get("refer-to", ""), "code": None})
            if (
                msg["status"]
                and msg["status"] >= 200
                and msg["cseq_method"] == "INVITE"
                and self._pending_reinvite.get(call.id)
            ):
                cseq = int(hdr.get("cseq", "0").split()[0] or 0)
                if cseq >= self._pending_reinvite[call.id]:
                    self._pending_reinvite.pop(call.id)
                    call.reinvites.append(msg["status"])
        elif msg["status"] and msg["cseq_method"] == "REFER" and call.refer_requests:
            if call.refer_requests[-1]["code"] is None:
                call.refer_requests[-1]["code"] = msg["status"]

    def _max_invite_cseq(self, call: Call) -> int:
        best = 0
        for t in self.trace:  # our own INVITEs only: each side has its own CSeq space
            if t["dir"] != "tx":
                continue
            msg = parse_sip(t["msg"])
            if (
                self._by_sip_callid.get(msg["headers"].get("call-id", "")) is call
                and msg["method"] == "INVITE"
            ):
                with contextlib.suppress(ValueError, IndexError):
                    best = max(best, int(msg["headers"]["cseq"].split()[0]))
        return best

    # -- hooks -------------------------------------------------------------------
    def _do_register(self):
        pass  # linphone registers by itself at start-up ([proxy_0] reg_sendregister)

    def register(self, timeout: float = 5.0) -> int:
        code = self.wait_for(lambda: self.registered, timeout, "REGISTER final response")
        if code != 200:
            raise PhoneError(f"{self.name}: REGISTER answered {code}")
        return code

    def _do_call(self, uri, headers):
        if headers:
            raise PhoneError("linphonec cannot add headers to an INVITE")
        with self._cv:
            self._dialing += 1
            known = set(self._calls)
            nlines = len(self.lines)
        self._send(f"call {uri}")

        def dialled():
            for ln in self.lines[nlines:]:
                if "current call first" in ln:  # "Terminate or hold on the current call first."
                    return ln
            return next(
                (
                    self._calls[c]
                    for c in self._order
                    if c not in known and self._calls[c].origin == "outgoing"
                ),
                None,
            )

        got = self.wait_for(dialled, 5.0, f"linphonec to dial {uri}")
        if isinstance(got, str):
            with self._cv:
                self._dialing = max(0, self._dialing - 1)
            raise PhoneError(f"{self.name}: linphonec refused to dial: {got}")
        return got

    def _do_answer(self, call, code, reason):
        if code == 200:
            self._send(f"answer {call.id}")
        elif 100 < code < 200:
            pass  # linphone sends 180 Ringing by itself
        elif code == self.REJECT_CODE:
            self._send(f"terminate {call.id}")
        else:
            raise PhoneError(
                f"linphonec can only answer 200 or reject with {self.REJECT_CODE}, not {code}"
            )

    def reject(self, call: Call, code: int | None = None, reason: str | None = None):
        self._do_answer(call, code or self.REJECT_CODE, reason)

    def _reinvite(self, call: Call, timeout: float, hold: bool) -> int:
        # linphonec has no plain re-INVITE: "resume" only acts on a paused call,
        # so a re-INVITE on a running call is a pause followed by a resume.
        if not hold and call.id not in self._held:
            super()._reinvite(call, timeout, hold=True)
        return super()._reinvite(call, timeout, hold)

    def _do_reinvite(self, call, hold):
        with self._cv:
            self._pending_reinvite[call.id] = self._max_invite_cseq(call) + 1
            (self._held.add if hold else self._held.discard)(call.id)
        self._send(f"{'pause' if hold else 'resume'} {call.id}")

    def _do_transfer(self, call, target, refer_sub, headers):
        if headers or not refer_sub:
            raise PhoneError("linphonec cannot add headers to a REFER")
        self._send(f"transfer {call.id} {target}")

    def _do_transfer_replaces(self, call, dest):
        # linphonec's attended form: REFER on `call` naming `dest`'s peer with Replaces.
        self._send(f"transfer {call.id} --to-call {dest.id}")

    def _do_hangup(self, call):
        self._send(f"terminate {call.id}")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._send("quit")
                self.proc.stdin.close()
        self._kill(grace=3.0)


def _first_code(text: str) -> int | None:
    m = re.search(r"\b([1-6]\d\d)\b", text or "")
    return int(m.group(1)) if m else None


KINDS = {"pjsua2": PjsuaPhone, "baresip": BaresipPhone, "linphone": LinphonePhone}


def make_phone(kind: str, *a, **kw) -> Phone:
    try:
        cls = KINDS[kind]
    except KeyError:
        raise PhoneError(f"unknown phone kind {kind!r}; known: {sorted(KINDS)}") from None
    return cls(*a, **kw)
