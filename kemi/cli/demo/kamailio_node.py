"""Start a real Kamailio 5.6 with one of the example configs, on loopback, stopped by PID.

`referee demo` runs it; the tests start every Kamailio through it too.  It needs the
source checkout's config-examples/ (the demo says so when they are missing)."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kemi import config
from kemi.core.redis_url import ndb_server

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "config-examples" / "kamailio"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sip_options(port: int, timeout: float = 1.0) -> tuple[str | None, float]:
    """Send one OPTIONS keepalive to 127.0.0.1:port; (status line or None, seconds taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lp = s.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        msg = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        started = time.monotonic()
        s.sendto(msg.encode(), ("127.0.0.1", port))
        try:
            data = s.recv(65535)
        except TimeoutError:
            return None, time.monotonic() - started
        return data.decode(errors="replace").split("\r\n", 1)[0], time.monotonic() - started


@dataclass
class Kamailio:
    """One Kamailio process tree; `cfg` is a file name in config-examples/kamailio."""

    workdir: Path
    referee_config: Path | None
    cfg: str = "kamailio.cfg"
    port: int = field(default_factory=free_udp_port)
    workers: int = 2
    sweep_interval: int = 1
    defines: tuple[str, ...] = ()
    # Redis through ndb_redis (REFEREE_REDIS from referee.toml's url) where it can reach
    # that Redis; False: referee's Python client, as without the define.
    ndb: bool = True
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    @property
    def ctl(self) -> str:
        return f"unix:{self.workdir}/kamailio_ctl"

    def command(self) -> list[str]:
        cmd = [
            "kamailio", "-f", str(CONFIGS / self.cfg), "-DD", "-E",
            "-P", str(self.workdir / "kamailio.pid"),
            "-w", str(self.workdir), "-Y", str(self.workdir),
            "-A", f"LISTEN=udp:127.0.0.1:{self.port}",
            "-A", f'REFEREE_SCRIPT="{CONFIGS / "referee_kemi.py"}"',
            "-A", f'CTL_SOCKET="{self.ctl}"',
            "-A", f'SWEEP_TIMER="name=referee;interval={self.sweep_interval};mode=1;"',
            "-A", f"WORKERS={self.workers}",
            "-m", "64", "-M", "16",
        ]
        for d in (*self.redis_defines(), *self.defines):
            cmd += ["-A", d]
        return cmd

    def redis_defines(self) -> list[str]:
        """REFEREE_REDIS, its timeout and ndb_redis' breaker for referee.toml's [redis]
        (see config-examples/kamailio/referee-redis.cfg), or none."""
        if not self.ndb or self.referee_config is None or any(
                d.startswith("REFEREE_REDIS") for d in self.defines):
            return []
        try:
            redis = config.load(str(self.referee_config)).redis  # checked, with defaults
        except (OSError, config.ConfigError):
            return []  # referee inside Kamailio says what is wrong with the file
        spec = ndb_server(redis.url)
        if spec is None:
            return []
        return [f'REFEREE_REDIS="{spec}"',
                f"REFEREE_REDIS_TIMEOUT_MS={max(1, redis.timeout_ms // 2)}",
                f"REFEREE_REDIS_ALLOWED_TIMEOUTS={redis.breaker_failures - 1}",
                f"REFEREE_REDIS_DISABLE_S={max(1, math.ceil(redis.breaker_open_s))}"]

    def env(self) -> dict[str, str]:
        env = {"PATH": CLEAN_PATH, "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        if self.referee_config is not None:
            env["REFEREE_CONFIG"] = str(self.referee_config)
        env["REFEREE_VENV"] = sys.prefix
        return env

    def start(self, timeout: float = 10.0) -> Kamailio:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
            cwd=self.workdir, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            # a short wait per probe: until Kamailio binds, each one waits it out whole
            status, _ = sip_options(self.port, timeout=0.05)
            if status:
                return self
        self.stop()
        raise RuntimeError(
            f"kamailio did not answer OPTIONS within {timeout}s:\n{self.log()[-4000:]}"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kamcmd(self, *args: str) -> str:
        out = subprocess.run(
            ["kamcmd", "-s", self.ctl, *args], capture_output=True, text=True, timeout=10,
            env={"PATH": CLEAN_PATH},
        )
        return out.stdout + out.stderr

    def python_errors(self) -> list[str]:
        """Lines where a Python route failed: a test of normal flow asserts there are none."""
        return [ln for ln in self.log().splitlines() if "referee:" in ln and "failed:" in ln]


def write_referee_config(path: Path, *, redis_url: str, policy_db: Path, **extra: str) -> Path:
    kam = extra.pop("kamailio", "")
    if "journal_dir" not in kam:
        kam += f'\njournal_dir = "{path.parent / "journal"}"\n'
    red = extra.pop("redis", "")
    text = (
        f'policy_db = "{policy_db}"\npolicy_check_interval_s = 0.2\n'
        f'[redis]\nurl = "{redis_url}"\ntimeout_ms = 100\n{red}\n'
        f"[kamailio]\n{kam}\n"
    )
    path.write_text(text)
    return path


if __name__ == "__main__":  # pragma: no cover - manual poking
    print(sip_options(int(sys.argv[1])))
    os._exit(0)
