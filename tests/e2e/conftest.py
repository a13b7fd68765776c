"""The end-to-end set-up: real redis-server, a policy DB made with the `referee` command,
and real Kamailio 5.6 running one of the example configs, all on loopback."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_py

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import Kamailio, write_referee_config
from kemi.cli.demo.sipp import Sipp
from kemi.core.metrics import PREFIX
from kemi.storage.transfers import TransferStore

REFEREE = str(Path(sys.prefix) / "bin" / "referee")


def referee_cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the operator's command, as an operator would."""
    return subprocess.run(
        [REFEREE, "--db", str(db), *args], capture_output=True, text=True, timeout=30
    )


@dataclass
class Lab:
    """One proxy with referee, its Redis and policy DB, and a place for SIPp parties."""

    tmp: Path
    redis: object
    db: Path
    kamailio: Kamailio
    rcli: redis_py.Redis

    @property
    def store(self) -> TransferStore:
        return TransferStore(self.rcli)

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
    db = tmp_path / "policy.db"
    init = referee_cli(db, "db", "init")
    assert init.returncode == 0, init.stderr
    conf = write_referee_config(
        tmp_path / "referee.toml", redis_url=redis_server.url, policy_db=db, **settings
    )
    kam = Kamailio(tmp_path / "kamailio", conf, cfg=cfg)
    return Lab(tmp_path, redis_server, db, kam, redis_py.Redis.from_url(redis_server.url))


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def lab(request, tmp_path, redis_server):
    """A running proxy; each test runs against both example configs."""
    lab = make_lab(tmp_path, redis_server, request.param)
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)
