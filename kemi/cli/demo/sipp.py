"""Run SIPp scenarios (the demo's phones, the tests' own, or third-party ones in ../shared)
as real UAs on loopback, each in its own process and temp dir, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kemi.cli.demo.kamailio_node import free_udp_port


@dataclass
class Sipp:
    scenario: Path
    workdir: Path
    remote: str | None = None  # host:port SIPp sends its first request to
    port: int = field(default_factory=free_udp_port)
    keys: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    calls: int = 1
    timeout_s: int = 30
    # SIPp answers an INFO/NOTIFY/OPTIONS/UPDATE it does not expect 200 (-aa); a party
    # that must fail on a NOTIFY out of order turns this off.
    auto_answer: bool = True
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.scenario.stem + f"-{self.port}"

    @property
    def messages_path(self) -> Path:
        return self.workdir / f"{self.name}.messages.log"

    @property
    def errors_path(self) -> Path:
        return self.workdir / f"{self.name}.errors.log"

    def command(self) -> list[str]:
        cmd = [
            "sipp", "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
            "-m", str(self.calls), "-nostdin", "-timeout", f"{self.timeout_s}s", "-timeout_error",
            "-trace_msg", "-message_file", str(self.messages_path),
            "-trace_err", "-error_file", str(self.errors_path),
            "-max_recv_loops", "1000",
        ]
        if self.auto_answer:
            cmd.append("-aa")
        for k, v in self.keys.items():
            cmd += ["-key", k, str(v)]
        cmd += list(self.extra)
        if self.remote:
            cmd.append(self.remote)
        return cmd

    def start(self) -> Sipp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = open(self.workdir / f"{self.name}.stdout", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
        )
        out.close()
        time.sleep(0.05)
        return self

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout if timeout is not None else self.timeout_s + 10)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def messages(self) -> str:
        try:
            return self.messages_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> str:
        try:
            return self.errors_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def report(self) -> str:
        """What to show when a scenario fails: its errors and the last messages."""
        return (
            f"--- {self.name} errors:\n{self.errors()[-3000:]}\n"
            f"--- messages:\n{self.messages()[-6000:]}"
        )

    def run(self, timeout: float | None = None) -> int:
        return self.start().wait(timeout)
