"""A private 3-master Redis Cluster on loopback (free ports, temp dir, no persistence, no
replicas), stopped by PID.

Slots are assigned by hand (CLUSTER ADDSLOTSRANGE, then CLUSTER MEET) in thirds, as
`redis-cli --cluster create` would, without its interactive checks.  `move_slot` reshards
one slot the way an operator does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE) so a test
can watch a client follow MOVED.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kemi.cli.demo.redis_server import REDIS_SERVER, _free_port
from kemi.storage.resp import CircuitBreaker, RespClient, key_slot

RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


@dataclass(frozen=True)
class Tls:
    """TLS for every node and the bus: redis-server's tls-* arguments, and the ssl_*
    query clients add to rediss:// URLs."""
    server_args: tuple[str, ...]
    query: str


class ClusterNode:
    def __init__(self, directory: Path, port: int, bus_port: int, tls: Tls | None = None):
        self.dir = directory
        self.port = port
        self.bus_port = bus_port
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        url = (f"rediss://127.0.0.1:{port}/0?{tls.query}" if tls else
               f"redis://127.0.0.1:{port}/0")
        self.client = RespClient(url, timeout_s=5, breaker=CircuitBreaker(10**9))
        self.id = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = (["--port", "0", "--tls-port", str(self.port), "--tls-cluster", "yes",
                  *self.tls.server_args] if self.tls else ["--port", str(self.port)])
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, *ports, "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self.bus_port),
                "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def call(self, *args):
        return self.client.call(*args)

    def up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.dir / "redis.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"redis-server {self.address} exited: {log}")
        return self.call("PING") == "PONG"

    def stop(self) -> None:
        self.client.close()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()  # by PID: Popen.kill signals exactly this process
        proc.wait(timeout=5)


class RedisCluster:
    """Three masters; `url` is the redis+cluster:// form referee's [redis] url takes."""

    def __init__(self, directory: Path, tls: Tls | None = None):
        self.dir = directory
        self.tls = tls
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        seeds = ",".join(n.address for n in self.nodes)
        if self.tls:
            return f"rediss+cluster://{seeds}?{self.tls.query}"
        return "redis+cluster://" + seeds

    def start(self, timeout: float = 15.0) -> None:
        ports: list[int] = []
        while len(ports) < 6:  # a client port and a bus port per node
            port = _free_port()
            if port not in ports:
                ports.append(port)
        self.nodes = [ClusterNode(self.dir / f"node{i}", ports[2 * i], ports[2 * i + 1],
                                  self.tls) for i in range(3)]
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait(lambda n=node: n.up(), deadline, f"{node.address} up")
            node.id = node.call("CLUSTER", "MYID").decode()
        for node, (lo, hi) in zip(self.nodes, RANGES, strict=True):
            node.call("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            first.call("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._wait(self.ready, deadline, "cluster_state:ok on every node")

    def ready(self) -> bool:
        for node in self.nodes:
            info = node.call("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                return False
            owned = sum(int(e[1]) - int(e[0]) + 1 for e in node.call("CLUSTER", "SLOTS"))
            if owned != 16384:
                return False
        return True

    @staticmethod
    def _wait(check, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.02)
        raise RuntimeError(f"Redis Cluster: no {what} in time")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    # -- helpers for tests

    def node_of(self, key: str) -> ClusterNode:
        """The node serving a key's slot (asked of the cluster itself)."""
        slot = key_slot(key)
        for entry in self.nodes[0].call("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                port = int(entry[2][1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(slot)

    def flush(self) -> None:
        for node in self.nodes:
            node.call("FLUSHALL")

    def keys(self) -> list[str]:
        out = []
        for node in self.nodes:
            out += [k.decode() for k in node.call("KEYS", "*")]
        return sorted(out)

    def error_stats(self) -> dict[str, int]:
        """errorstat_<CODE> counts summed over the nodes (CROSSSLOT must never appear)."""
        total: dict[str, int] = {}
        for node in self.nodes:
            for line in node.call("INFO", "errorstats").decode().splitlines():
                if line.startswith("errorstat_"):
                    name, _, rest = line.partition(":")
                    count = int(rest.split(",")[0].split("=")[1])
                    total[name[len("errorstat_"):]] = total.get(name[len("errorstat_"):], 0) + count
        return total

    def reset_stats(self) -> None:
        for node in self.nodes:
            node.call("CONFIG", "RESETSTAT")

    def move_slot(self, slot: int, dest: ClusterNode) -> None:
        """Reshard one slot to `dest` with its keys, as an operator would."""
        src = next(n for n in self.nodes if self._owner(n, slot) == n.port)
        if src is dest:
            return
        dest.call("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
        src.call("CLUSTER", "SETSLOT", slot, "MIGRATING", dest.id)
        while True:
            keys = src.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.call("MIGRATE", "127.0.0.1", dest.port, "", 0, 5000, "KEYS", *keys)
        for node in (dest, src, *[n for n in self.nodes if n not in (src, dest)]):
            node.call("CLUSTER", "SETSLOT", slot, "NODE", dest.id)
        self._wait(lambda: all(self._owner(n, slot) == dest.port for n in self.nodes),
                   time.monotonic() + 10, f"slot {slot} on {dest.address} everywhere")

    @staticmethod
    def _owner(node: ClusterNode, slot: int) -> int | None:
        for entry in node.call("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                return int(entry[2][1])
        return None


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for a test module (import this name into the module);
    tests flush it (`RedisCluster.flush`) rather than paying ~2 s for a new one each."""
    with tempfile.TemporaryDirectory(prefix="referee-cluster-") as tmp:
        cluster = RedisCluster(Path(tmp))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def all_keys(client) -> list[str]:
    """Every key, on a single Redis or on every master of a Cluster (tests only: KEYS)."""
    if getattr(client, "cluster", False) is True:
        replies = client.on_each_master("KEYS", "*").values()
        return sorted(k.decode() for keys in replies for k in keys)
    return sorted(k.decode() for k in client.call("KEYS", "*"))
