"""referee's FastAGI server: one thread per session, a hard time limit per session, clean
shutdown.  (pyst2's `asterisk.fastagi` imports `SocketServer` and does not load on
Python 3.)

    server = FastAGIServer("127.0.0.1", 4573, handler, session_limit_s=600.0)
    server.start()          # listening when it returns; server.port is the bound port
    ...
    server.shutdown(grace_s=5.0)

`handler(session)` gets an `agi.session.AGISession` whose agi_ environment has been read.
When it returns, the server half-closes the connection (Asterisk then ends the AGI; it
writes one last `HANGUP` line, which is read and dropped) and closes it.

Time limit: a session still running `session_limit_s` after the accept is cut: its socket
is shut down, so the handler's next read fails with AGIConnectionClosed and
`session.cut_reason` says why.  Asterisk is not reading the socket while an EXEC runs
(Dial, Bridge), so a cut during a call never drops the call; the AGI only ends when the
application returns.

Shutdown: stop accepting, let running sessions finish for up to `grace_s`, then cut the
rest the same way and wait for their threads.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from agi.session import AGIConnectionClosed, AGIProtocolError, AGISession

log = logging.getLogger("referee.agi.fastagi")

Handler = Callable[[AGISession], None]


class _Conn:
    def __init__(self, sock: socket.socket, addr, limit_s: float):
        self.sock = sock
        self.addr = addr
        self.started = time.monotonic()
        self.deadline = self.started + limit_s
        self.session: AGISession | None = None
        self.thread: threading.Thread | None = None
        self.cut_reason = ""
        self._lock = threading.Lock()

    def cut(self, reason: str) -> None:
        with self._lock:
            if self.cut_reason:
                return
            self.cut_reason = reason
            if self.session is not None:
                self.session.cut_reason = reason
        log.warning("AGI session from %s:%s cut: %s", *self.addr[:2], reason)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class FastAGIServer:
    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        session_limit_s: float = 600.0,
        env_timeout_s: float = 10.0,
        drain_s: float = 1.0,
        backlog: int = 128,
        max_sessions: int = 1000,
    ):
        self.host = host
        self.port = port
        self.handler = handler
        self.session_limit_s = float(session_limit_s)
        self.env_timeout_s = env_timeout_s
        self.drain_s = drain_s
        self.backlog = backlog
        self.max_sessions = max_sessions
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.sessions_total = 0
        self.sessions_cut = 0
        self.sessions_failed = 0

    # -- lifecycle

    def _bind(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(self.backlog)
        sock.settimeout(0.2)  # so the accept loop sees shutdown promptly
        self._listener = sock
        self.port = sock.getsockname()[1]
        log.info("FastAGI listening on %s:%s (session limit %.0f s)", self.host, self.port,
                 self.session_limit_s)

    def start(self) -> None:
        """Bind, listen and serve in background threads; returns once listening."""
        self._bind()
        self._watch_thread = threading.Thread(target=self._watch, name="fastagi-watch",
                                              daemon=True)
        self._watch_thread.start()
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               name="fastagi-accept", daemon=True)
        self._accept_thread.start()

    def serve_forever(self) -> None:
        """Serve in this thread until shutdown() is called from another one."""
        self._bind()
        self._watch_thread = threading.Thread(target=self._watch, name="fastagi-watch",
                                              daemon=True)
        self._watch_thread.start()
        self._accept_loop()

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop accepting; give running sessions `grace_s` to end, then cut them."""
        self._stopping.set()
        if self._listener is not None:
            # shutdown() on a listening socket refuses new connections at once and wakes
            # a blocked accept() (Linux); close() alone would leave the backlog open.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
        acceptor = self._accept_thread
        if acceptor is not None and acceptor is not threading.current_thread():
            acceptor.join()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        deadline = time.monotonic() + max(grace_s, 0.0)
        while time.monotonic() < deadline and self.active_sessions():
            time.sleep(0.02)
        with self._lock:
            left = list(self._conns)
        for conn in left:
            conn.cut("server shutting down")
        for conn in left:
            if conn.thread is not None:
                conn.thread.join(timeout=5.0)
        self._stopped.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=1.0)
        log.info("FastAGI on %s:%s stopped (%d sessions, %d cut)", self.host, self.port,
                 self.sessions_total, self.sessions_cut)

    def active_sessions(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- threads

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                log.exception("FastAGI accept failed")
                time.sleep(0.1)
                continue
            sock.settimeout(None)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, addr, self.session_limit_s)
            with self._lock:
                if len(self._conns) >= self.max_sessions:
                    log.error("FastAGI: %d sessions running, refusing %s:%s",
                              len(self._conns), *addr[:2])
                    sock.close()
                    continue
                self._conns.add(conn)
                self.sessions_total += 1
            conn.thread = threading.Thread(target=self._serve, args=(conn,),
                                           name=f"fastagi-{addr[1]}", daemon=True)
            conn.thread.start()

    def _watch(self) -> None:
        """Cut sessions past their deadline."""
        while not self._stopped.wait(0.05):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._conns if c.deadline <= now and not c.cut_reason]
            for conn in late:
                self.sessions_cut += 1
                conn.cut(f"session limit {self.session_limit_s:g} s reached")

    def _serve(self, conn: _Conn) -> None:
        peer = f"{conn.addr[0]}:{conn.addr[1]}"
        try:
            try:
                session = AGISession(conn.sock, env_timeout_s=self.env_timeout_s, name=peer)
            except (AGIConnectionClosed, AGIProtocolError, UnicodeError) as exc:
                self.sessions_failed += 1
                log.warning("FastAGI %s: no session: %s", peer, conn.cut_reason or exc)
                return
            session.cut_reason = conn.cut_reason
            conn.session = session
            if conn.cut_reason:  # cut while reading the environment
                return
            try:
                self.handler(session)
            except Exception:  # noqa: BLE001 - one broken session must not stop the server
                self.sessions_failed += 1
                log.exception("FastAGI %s: handler failed", peer)
            self._finish(conn, session)
        finally:
            if conn.session is not None:
                conn.session.close()  # the makefile()s hold the fd open until closed
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # ends the TCP session whatever refs
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._conns.discard(conn)

    def _finish(self, conn: _Conn, session: AGISession) -> None:
        """Half-close (the AGI's end for Asterisk), drain its trailing HANGUP, close."""
        if conn.cut_reason:
            return
        with contextlib.suppress(Exception):
            session.stdout.flush()
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        conn.sock.settimeout(self.drain_s)
        end = time.monotonic() + self.drain_s
        with contextlib.suppress(OSError):
            while time.monotonic() < end:
                if not conn.sock.recv(4096):
                    break
