"""A Sentinel-managed Redis on loopback for the tests: a primary, two replicas and three
Sentinels (redis-server --sentinel), each a real process in its own temp dir, stopped by
PID; `failover()` asks the Sentinels to promote the replica (SENTINEL FAILOVER)."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kemi.cli.demo.kamailio_node import REPO
from kemi.cli.demo.redis_server import REDIS_SERVER, _free_port
from kemi.storage.resp import RespClient

NAME = "mymaster"


@dataclass
class SentinelSet:
    top: Path
    ports: dict[str, int] = field(default_factory=dict)  # primary, replica, s1..s3
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[s]}" for s in ("s1", "s2", "s3"))
        return f"redis+sentinel://{hosts}/{NAME}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.top / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen([REDIS_SERVER, *args], stdout=log, stderr=log,
                                           cwd=self.top))
        log.close()

    def start(self) -> SentinelSet:
        for name in ("primary", "replica", "replica2", "s1", "s2", "s3"):
            self.ports[name] = _free_port()
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no"]
        for name in ("primary", "replica", "replica2"):
            (self.top / name).mkdir(parents=True, exist_ok=True)
        # As config-examples/redis/redis-sentinel-node.conf says (read from it): a primary
        # whose replica has left (promoted) refuses writes instead of keeping ones a
        # failover would lose.
        safe = []
        for line in (REPO / "config-examples/redis/redis-sentinel-node.conf").read_text() \
                .splitlines():
            if line.startswith("min-replicas-"):
                key, value = line.split()
                safe += [f"--{key}", value]
        assert len(safe) == 4, safe
        self._start("primary", ["--port", str(self.ports["primary"]),
                                "--dir", str(self.top / "primary"), *base, *safe])
        for name in ("replica", "replica2"):
            self._start(name, ["--port", str(self.ports[name]),
                               "--dir", str(self.top / name), *base, *safe,
                               "--replicaof", "127.0.0.1", str(self.ports["primary"])])
        for s in ("s1", "s2", "s3"):
            conf = self.top / f"{s}.conf"
            conf.write_text(
                f"port {self.ports[s]}\nbind 127.0.0.1\ndir {self.top}\n"
                f"sentinel monitor {NAME} 127.0.0.1 {self.ports['primary']} 2\n"
                f"sentinel down-after-milliseconds {NAME} 1000\n"
                f"sentinel failover-timeout {NAME} 5000\n")
            self._start(s, [str(conf), "--sentinel"])
        self._wait(lambda: self.replicas_in_sync() and self.sentinels_agree(), 20)
        return self

    def client(self, port: int) -> RespClient:
        return RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)

    def _ask(self, port: int, *args):
        c = self.client(port)
        try:
            return c.call(*args)
        finally:
            c.close()

    def replicas_in_sync(self) -> bool:
        try:
            info = self._ask(self.ports["primary"], "INFO", "replication")
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return b"connected_slaves:2" in info and info.count(b"state=online") == 2

    def sentinels_agree(self) -> bool:
        try:
            return all(int(self._ask(self.ports[s], "SENTINEL", "replicas", NAME) and 1) and
                       self._ask(self.ports[s], "SENTINEL", "get-master-addr-by-name", NAME)
                       for s in ("s1", "s2", "s3"))
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def describe(self) -> str:
        """Each data node's port, role and good replicas (for a failing test's message)."""
        out = []
        for name in ("primary", "replica", "replica2"):
            try:
                info = self._ask(self.ports[name], "INFO", "replication").decode()
            except Exception as exc:  # noqa: BLE001
                out.append(f"{name}:{self.ports[name]} {exc}")
                continue
            keep = [ln for ln in info.splitlines()
                    if ln.startswith(("role", "min_slaves_good", "master_port"))]
            out.append(f"{name}:{self.ports[name]} " + " ".join(keep))
        return "; ".join(out)

    def primary_port(self) -> int:
        host, port = self._ask(self.ports["s1"], "SENTINEL", "get-master-addr-by-name", NAME)
        return int(port)

    def failover(self, timeout_s: float = 20.0) -> int:
        """Promote the replica; the new primary's port once every Sentinel says so and
        the old primary has become its replica."""
        old = self.primary_port()
        self._ask(self.ports["s1"], "SENTINEL", "FAILOVER", NAME)
        self._wait(lambda: all(
            int(self._ask(self.ports[s], "SENTINEL", "get-master-addr-by-name", NAME)[1])
            != old for s in ("s1", "s2", "s3")), timeout_s)
        return self.primary_port()

    def settled(self, old: int, new: int, timeout_s: float = 30.0) -> None:
        """Wait until the failover is over: the old primary replicates the new one, which
        has a good replica (so takes writes again)."""
        def done() -> bool:
            try:
                was = self._ask(old, "INFO", "replication")
                now = self._ask(new, "INFO", "replication")
            except Exception:  # noqa: BLE001
                return False
            return b"role:slave" in was and b"min_slaves_good_slaves:0" not in now
        self._wait(done, timeout_s)

    @staticmethod
    def _wait(check, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError("Sentinel set not ready in time")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def running() -> Iterator[SentinelSet]:
    """A started SentinelSet in its own temp dir, stopped (by PID) and removed after."""
    with tempfile.TemporaryDirectory(prefix="referee-sentinel-") as top:
        s = SentinelSet(Path(top))
        try:
            yield s.start()
        finally:
            s.stop()
