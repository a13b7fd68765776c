"""Start/stop the minimal Kamailio of tests/ua/minimal-proxy.cfg (test use only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .phone import free_port

HERE = Path(__file__).resolve().parent
CFG = HERE / "minimal-proxy.cfg"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def kamailio_binary() -> str | None:
    return shutil.which("kamailio", path=CLEAN_PATH)


class MinimalProxy:
    def __init__(self, port: int | None = None, dump_msgs: bool = True):
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.dump_msgs = dump_msgs
        self.tmp = Path(tempfile.mkdtemp(prefix="minimal-kamailio-"))
        self.pidfile = self.tmp / "kamailio.pid"
        self.ctl = self.tmp / "kamailio_ctl"
        self.log_path = self.tmp / "kamailio.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [
            kamailio_binary() or "kamailio",
            "-f",
            str(CFG),
            "-DD",
            "-E",
            "-P",
            str(self.pidfile),
            "-w",
            str(self.tmp),
            "-Y",
            str(self.tmp),
            "-m",
            "64",
            "-M",
            "8",
            "-A",
            f"SIP_PORT={self.port}",
            "-A",
            f'CTL_SOCK="unix:{self.ctl}"',
        ]
        if self.dump_msgs:
            argv += ["-A", "DUMP_MSGS"]
        return argv

    def start(self, timeout: float = 10.0) -> MinimalProxy:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env={"PATH": CLEAN_PATH, "LANG": "C"},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.proc.returncode}:\n{self.log()}")
            if self.pidfile.exists() and self.ctl.exists() and self._answers_options():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"kamailio did not come up:\n{self.log()}")

    def _answers_options(self) -> bool:
        """True once the SIP socket answers (an OPTIONS gets any reply)."""
        msg = (
            f"OPTIONS sip:ping@{self.host}:{self.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe{time.monotonic_ns()}\r\n"
            "Max-Forwards: 1\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\n"
            f"To: <sip:ping@{self.host}>\r\nCall-ID: probe-{time.monotonic_ns()}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.3)
            # the Via above points elsewhere; use rport-less direct reply via source
            msg = msg.replace("127.0.0.1:9;", f"127.0.0.1:{s.getsockname()[1]};")
            s.sendto(msg.encode(), (self.host, self.port))
            try:
                s.recvfrom(4096)
                return True
            except OSError:
                return False

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self):
        if self.proc is None:
            return
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        for p in {pid, self.proc.pid} - {None}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self._log.close()

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
