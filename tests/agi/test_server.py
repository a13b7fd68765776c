"""FastAGIServer: concurrent sessions, the per-session time limit, shutdown, bad peers."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agi.fastagi import FastAGIServer
from agi.session import AGIHangup, AGISession

ENV = (b"agi_network: yes\nagi_network_script: anchored\n"
       b"agi_request: agi://127.0.0.1:4573/anchored\nagi_channel: PJSIP/p-%d\n\n")


def connect(port: int, n: int = 1) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(ENV % n)
    return s


def read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            return buf
        buf += chunk
    return buf


def read_to_eof(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return out
        out += chunk


def test_start_binds_a_free_port_and_serves(agi_server):
    got = []

    def handler(session: AGISession):
        got.append((session.env["agi_channel"], session.variable("XFER_ID")))

    server = agi_server(handler)
    assert server.port != 0
    with connect(server.port, 7) as s:
        assert read_line(s) == b"GET VARIABLE XFER_ID\n"
        s.sendall(b"200 result=1 (1@call)\n")
        assert read_to_eof(s) == b""  # half-closed after the handler returned
        s.sendall(b"HANGUP\n")  # what Asterisk writes after the server's half-close
    deadline = time.monotonic() + 2
    while server.active_sessions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [("PJSIP/p-7", "1@call")]
    assert server.active_sessions() == 0


def test_concurrent_sessions(agi_server):
    barrier = threading.Barrier(8, timeout=5)
    done = []

    def handler(session: AGISession):
        barrier.wait()  # all 8 sessions are inside the handler at the same time
        done.append(session.variable("X"))

    server = agi_server(handler)
    socks = [connect(server.port, i) for i in range(8)]
    for s in socks:
        assert read_line(s) == b"GET VARIABLE X\n"
        s.sendall(b"200 result=1 (ok)\n")
    for s in socks:
        read_to_eof(s)
        s.close()
    assert done == ["ok"] * 8


def test_session_limit_cuts_a_stuck_session(agi_server):
    seen = []

    def handler(session: AGISession):
        try:
            session.exec_app("Dial", "PJSIP/t,600,m")  # Asterisk never answers
        except AGIHangup as exc:
            seen.append((type(exc).__name__, session.cut_reason))

    server = agi_server(handler, session_limit_s=0.3)
    t0 = time.monotonic()
    with connect(server.port) as s:
        assert read_line(s) == b"EXEC Dial PJSIP/t,600,m\n"
        assert read_to_eof(s) == b""
    assert time.monotonic() - t0 < 2.0
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [("AGIConnectionClosed", "session limit 0.3 s reached")]
    assert server.sessions_cut == 1


def test_peer_that_sends_nothing_is_dropped_after_the_env_timeout(agi_server):
    server = agi_server(lambda s: None, env_timeout_s=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        assert read_to_eof(s) == b""
    assert server.sessions_failed == 1


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\xff\xfe garbage\n\n",
    b"agi_network: yes\n" * 500,
])
def test_garbage_is_refused_and_the_server_goes_on(agi_server, garbage):
    calls = []
    server = agi_server(lambda s: calls.append(s.env))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(garbage)
        assert read_to_eof(s) == b""
    assert calls == []
    with connect(server.port) as s:  # still serving
        read_to_eof(s)
    assert len(calls) == 1


def test_peer_closes_in_the_middle_of_the_environment(agi_server):
    calls = []
    server = agi_server(lambda s: calls.append(s))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"agi_network: yes\nagi_chan")
    deadline = time.monotonic() + 2
    while server.sessions_failed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.sessions_failed == 1 and calls == []


def test_peer_closes_in_the_middle_of_a_session(agi_server):
    errors = []

    def handler(session: AGISession):
        try:
            session.variable("X")
        except AGIHangup as exc:
            errors.append(str(exc))

    server = agi_server(handler)
    with connect(server.port) as s:
        assert read_line(s) == b"GET VARIABLE X\n"
    deadline = time.monotonic() + 2
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert errors and "EOF" in errors[0]


def test_a_failing_handler_does_not_stop_the_server(agi_server):
    def handler(session: AGISession):
        raise RuntimeError("boom")

    server = agi_server(handler)
    for i in range(2):
        with connect(server.port, i) as s:
            assert read_to_eof(s) == b""
    assert server.sessions_failed == 2


def test_shutdown_lets_sessions_finish_within_the_grace_period():
    release = threading.Event()
    finished = []

    def handler(session: AGISession):
        release.wait(5)
        finished.append(session.variable("X"))

    server = FastAGIServer("127.0.0.1", 0, handler, session_limit_s=30)
    server.start()
    s = connect(server.port)
    time.sleep(0.05)
    stopper = threading.Thread(target=server.shutdown, kwargs={"grace_s": 3.0})
    stopper.start()
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    release.set()
    assert read_line(s) == b"GET VARIABLE X\n"
    s.sendall(b"200 result=1 (done)\n")
    stopper.join(5)
    assert not stopper.is_alive()
    assert finished == ["done"]
    s.close()


def test_shutdown_cuts_sessions_after_the_grace_period():
    cut = []

    def handler(session: AGISession):
        try:
            session.exec_app("Bridge", "PJSIP/a-1")  # never answered
        except AGIHangup:
            cut.append(session.cut_reason)

    server = FastAGIServer("127.0.0.1", 0, handler, session_limit_s=30)
    server.start()
    s = connect(server.port)
    assert read_line(s) == b"EXEC Bridge PJSIP/a-1\n"
    t0 = time.monotonic()
    server.shutdown(grace_s=0.2)
    assert 0.15 < time.monotonic() - t0 < 3.0
    assert cut == ["server shutting down"]
    assert read_to_eof(s) == b""
    s.close()


def test_serve_forever_in_a_thread():
    server = FastAGIServer("127.0.0.1", 0, lambda s: None)
    t = threading.Thread(target=server.serve_forever)
    t.start()
    deadline = time.monotonic() + 2
    while server.port == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with connect(server.port) as s:
        assert read_to_eof(s) == b""
    server.shutdown(grace_s=1)
    t.join(2)
    assert not t.is_alive()
