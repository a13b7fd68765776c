"""A private redis-server on loopback (free port, temp dir, no persistence), stopped by PID.

It can be stopped, restarted on the same port, and paused/resumed (SIGSTOP/SIGCONT) to
play a hung Redis.  Used by the tests and by `referee demo`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1:<port> and a unix socket in its temp dir.

    Without `conf` it persists nothing; with it, the file's persistence settings hold
    (port, bind, dir and the log file are still ours).  `args` go last, e.g.
    ("--replicaof", "127.0.0.1", "6380").
    """

    def __init__(self, directory: Path, port: int | None = None, conf: Path | None = None,
                 args: Sequence[str] = ()):
        self.dir = directory
        self.port = port or _free_port()
        self.conf = conf
        self.args = list(args)
        self.unix_path = str(directory / "redis.sock")
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_path}?db=0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 5.0) -> None:
        """Start (or restart) on the same port; returns once it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        persistence = [] if self.conf else ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, *([str(self.conf)] if self.conf else []),
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.unix_path, "--unixsocketperm", "700",
                *persistence, "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
                *self.args,
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {log}")
            if self.ping():
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Terminate by PID (resuming it first if paused); SIGKILL if asked or it lingers.

        SIGTERM waits for redis' next cron tick (~100 ms); nothing is persisted either way.
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            os.kill(proc.pid, signal.SIGCONT)
            self.paused = False
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False
