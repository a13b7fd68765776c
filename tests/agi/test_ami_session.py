"""agi.ami.AmiSession: pyst2 0.5.1's Manager with its defects handled, against a tiny
scripted AMI peer on loopback (these are pyst2 behaviours, not Asterisk's)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from asterisk.manager import ManagerException

from agi.ami import AmiSession, AmiTimeout

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]
GREETING = b"Asterisk Call Manager/9.0.0\r\n"


class Peer:
    """Accepts one client, sends the greeting, then answers each action via `reply`."""

    def __init__(self, reply):
        self.reply = reply
        self.actions: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.conn, _ = self.sock.accept()
        self.conn.sendall(GREETING)
        buf = b""
        while True:
            data = self.conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                raw, buf = buf.split(b"\r\n\r\n", 1)
                self.actions.append(raw)
                out = self.reply(raw)
                if out:
                    self.conn.sendall(out)

    def close(self) -> None:
        for s in (self.conn, self.sock):
            if s is not None:
                s.close()


def _action_id(raw: bytes) -> bytes:
    return next(line.split(b": ", 1)[1] for line in raw.split(b"\r\n")
                if line.startswith(b"ActionID:"))


def test_fresh_dict_and_own_action_ids():
    """pyst2's send_action(cdict={}) reuses its default dict (same ActionID every time);
    ours builds a fresh one per call."""
    peer = Peer(lambda raw: b"Response: Success\r\nActionID: " + _action_id(raw)
                + b"\r\nPing: Pong\r\n\r\n")
    s = AmiSession(action_timeout_s=2)
    try:
        s.connect("127.0.0.1", peer.port, 2)
        s.send_action(Action="Ping")
        s.send_action(Action="Ping")
        s.send_action({"Action": "Ping", "ActionID": "mine-1"})
    finally:
        s.stop()
        peer.close()
    ids = [_action_id(a) for a in peer.actions if b"Action: Ping" in a]
    assert len(ids) == 3 and len(set(ids)) == 3 and ids[2] == b"mine-1"


def test_response_for_another_action_breaks_the_session():
    """pyst2 pairs responses FIFO: one with a foreign ActionID means the pairing is off."""
    peer = Peer(lambda raw: b"Response: Success\r\nActionID: someone-else\r\n\r\n")
    s = AmiSession(action_timeout_s=2)
    try:
        s.connect("127.0.0.1", peer.port, 2)
        with pytest.raises(ManagerException, match="out-of-order"):
            s.send_action({"Action": "Ping"})
        assert not s.alive() and "someone-else" in s.broken
    finally:
        s.stop()
        peer.close()


def test_chanvariable_stops_pyst2_and_ping_notices():
    """A ChanVariable header makes pyst2's message loop die (dict.has_key) with every
    thread still alive: only an unanswered action shows it."""
    peer = Peer(lambda raw: b"Response: Success\r\nActionID: " + _action_id(raw)
                + b"\r\n\r\n")
    s = AmiSession(action_timeout_s=2)
    try:
        s.connect("127.0.0.1", peer.port, 2)
        time.sleep(0.1)
        peer.conn.sendall(b"Event: Newchannel\r\nChannel: PJSIP/x-00000001\r\n"
                          b"ChanVariable: FOO=bar\r\n\r\n")
        time.sleep(0.3)
        assert s.alive()  # nothing tells yet
        with pytest.raises(AmiTimeout):
            s.send_action({"Action": "Ping"}, timeout_s=0.5)
        assert not s.alive()
    finally:
        t = time.monotonic()
        s.stop(logoff=False)
        assert time.monotonic() - t < 1.5  # no thread left waiting on a dead loop
        peer.close()


def test_connect_without_greeting_times_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    s = AmiSession()
    try:
        t = time.monotonic()
        with pytest.raises(ManagerException, match="greeting"):
            s.connect("127.0.0.1", srv.getsockname()[1], timeout_s=0.5)
        assert time.monotonic() - t < 2
    finally:
        srv.close()
