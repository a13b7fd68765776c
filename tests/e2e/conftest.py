"""The end-to-end set-up: real redis-server, a policy DB made with the `referee` command,
and real Kamailio 5.6 running one of the example configs, all on loopback."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_py
import redis.cluster  # noqa: F401 - redis_py.cluster.RedisCluster

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import Kamailio, write_referee_config
from kemi.cli.demo.sipp import Sipp
from kemi.core.metrics import PREFIX
from kemi.storage.transfers import TransferStore
from tests.support.redis_cluster import redis_cluster  # noqa: F401 - a fixture (Cluster labs)

REFEREE = str(Path(sys.prefix) / "bin" / "referee")


def referee_cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the operator's command, as an operator would."""
    return subprocess.run(
        [REFEREE, "--db", str(db), *args], capture_output=True, text=True, timeout=30
    )


_POLICY_TEMPLATE: list[Path] = []


def fresh_policy_db(db: Path) -> None:
    """A new policy DB at `db`, as `referee db init` makes it: made by that command once
    per test session, then copied (each lab paid a ~0.15 s interpreter start for it)."""
    if not _POLICY_TEMPLATE:
        where = Path(tempfile.mkdtemp(prefix="referee-policy-template-"))
        atexit.register(shutil.rmtree, where, True)
        init = referee_cli(where / "policy.db", "db", "init")
        assert init.returncode == 0, init.stderr
        _POLICY_TEMPLATE.append(where / "policy.db")
    shutil.copyfile(_POLICY_TEMPLATE[0], db)


@dataclass
class Lab:
    """One proxy with referee, its Redis and policy DB, and a place for SIPp parties."""

    tmp: Path
    redis: object
    db: Path
    kamailio: Kamailio
    rcli: redis_py.Redis  # redis-py's Redis, or its RedisCluster for a Cluster lab
    store_client: object = None  # referee's own client, where redis-py's will not do

    @property
    def client(self):
        """The client referee's stores take (on a Cluster, referee's ClusterClient)."""
        return self.store_client or self.rcli

    @property
    def store(self) -> TransferStore:
        return TransferStore(self.client)

    def policy(self, *args: str) -> str:
        out = referee_cli(self.db, *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def party(self, name: str, xml: str, *, remote: bool = True, **kw) -> Sipp:
        path = scenarios.write(self.tmp / f"{name}.xml", xml)
        return Sipp(path, self.tmp / "sipp", remote=self.kamailio.address if remote else None, **kw)

    def register(self, user: str, port: int) -> None:
        reg = self.party(f"register-{user}", scenarios.register(user), port=port, timeout_s=5)
        assert reg.run() == 0, reg.report()

    def finished(self) -> list[dict[str, str]]:
        return self.store.finished(50)

    def stats(self) -> dict[str, int]:
        """referee's counters as `kamcmd stats.get_statistics script:` shows them."""
        out = {}
        for line in self.kamailio.kamcmd("stats.get_statistics", "script:").splitlines():
            key, _, value = line.strip().partition(" = ")
            if key.startswith(f"script:{PREFIX}"):
                out[key.removeprefix(f"script:{PREFIX}")] = int(value)
        return out

    def records(self) -> list[dict[str, str]]:
        """Every transfer hash in Redis (open or final)."""
        out = []
        for key in self.rcli.scan_iter("referee:*:xfer:*"):
            if key.endswith(b":log"):
                continue
            out.append({k.decode(): v.decode() for k, v in self.rcli.hgetall(key).items()})
        return out


def make_lab(tmp_path: Path, redis_server, cfg: str, **settings: str) -> Lab:
    """A lab (Kamailio not started yet) on `redis_server`: a single Redis, or a Cluster
    (tests.support.redis_cluster, flushed here; redis-py's RedisCluster for the tests'
    own reads, referee's ClusterClient for its stores)."""
    cluster = getattr(redis_server, "nodes", None) is not None
    if cluster:
        redis_server.flush()
    db = tmp_path / "policy.db"
    fresh_policy_db(db)
    conf = write_referee_config(
        tmp_path / "referee.toml", redis_url=redis_server.url, policy_db=db, **settings
    )
    kam = Kamailio(tmp_path / "kamailio", conf, cfg=cfg)
    if not cluster:
        return Lab(tmp_path, redis_server, db, kam, redis_py.Redis.from_url(redis_server.url))
    from kemi.storage.resp import RespClient

    rcli = redis_py.cluster.RedisCluster(host="127.0.0.1", port=redis_server.nodes[0].port)
    return Lab(tmp_path, redis_server, db, kam, rcli,  # type: ignore[arg-type]
               store_client=RespClient(redis_server.url, timeout_s=5))


def redis_for(request, redis_server) -> tuple[object, str]:
    """(the Redis, the cfg) a fixture's param names: "<cfg>" or "<cfg>+cluster"."""
    cfg, _, where = request.param.partition("+")
    return (request.getfixturevalue("redis_cluster") if where == "cluster"
            else redis_server), cfg


def close_lab(lab: Lab) -> None:
    if lab.store_client is not None:
        lab.store_client.close()
        lab.rcli.close()


CFGS = ["kamailio.cfg", "kamailio-native.cfg"]
ON_CLUSTER = "kamailio-native.cfg+cluster"


def pytest_generate_tests(metafunc):
    """Each `lab` test runs against both example configs; in a module that sets
    `LAB_ON_CLUSTER = True` (or to a set of its tests' names) a third time: the native
    cfg with referee.toml's url naming a 3-master Redis Cluster (the Cluster's own
    paths: shared keys pipelined per node around the call's scripts)."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get("lab")
    if defs and defs[-1].params is not None:
        return  # a module's own `lab` fixture, with its own params
    if "lab" in metafunc.fixturenames:
        on_cluster = getattr(metafunc.module, "LAB_ON_CLUSTER", False)
        if not isinstance(on_cluster, bool):  # the names of the tests that run there
            on_cluster = metafunc.function.__name__ in on_cluster
        metafunc.parametrize("lab", [*CFGS, ON_CLUSTER] if on_cluster else CFGS,
                             indirect=True)


@pytest.fixture
def lab(request, tmp_path, redis_server):
    """A running proxy; each test runs against both example configs (and, in a module
    with LAB_ON_CLUSTER, on a Redis Cluster too)."""
    lab = make_lab(tmp_path, *redis_for(request, redis_server))
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    close_lab(lab)
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)
