"""The transfer demo: Redis + Kamailio (kamailio.cfg) + referee, and SIPp as Andrew,
McKenzie and Marsha.  Played by `referee demo`; tests/e2e/test_demo.py runs it too, so the
README's first command keeps working."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import Kamailio, free_udp_port, write_referee_config
from kemi.cli.demo.redis_server import RedisServer
from kemi.cli.demo.sipp import Sipp
from kemi.cli.ladder import draw, read_sipp_log
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore


@dataclass
class DemoResult:
    ladder: str
    record: dict[str, str]
    log: list[str]


def _sipp(tmp: Path, name: str, xml: str, proxy: str, port: int) -> Sipp:
    path = scenarios.write(tmp / f"{name}.xml", xml)
    return Sipp(path, tmp / "sipp", remote=proxy, port=port, timeout_s=20)


def play(tmp: Path, target_final: int = 200, out: Callable[[str], None] = print) -> DemoResult:
    """Run the whole transfer once; everything started here is stopped here, by PID."""
    redis = RedisServer(tmp / "redis")
    (tmp / "redis").mkdir(parents=True, exist_ok=True)
    kam = None
    try:
        out("starting redis-server on 127.0.0.1 ...")
        redis.start()
        db = tmp / "policy.db"
        referee = Path(sys.prefix) / "bin" / "referee"
        subprocess.run([str(referee), "--db", str(db), "db", "init"], check=True,
                       capture_output=True, text=True)
        conf = write_referee_config(tmp / "referee.toml", redis_url=redis.url, policy_db=db)
        kam = Kamailio(tmp / "kamailio", conf, cfg="kamailio.cfg")
        out(f"starting Kamailio 5.6 (config-examples/kamailio/kamailio.cfg) on {kam.address}")
        kam.start()
        ports = {name: free_udp_port() for name in ("andrew", "mckenzie", "marsha")}
        for user in ("mckenzie", "marsha"):
            out(f"{user} registers from 127.0.0.1:{ports[user]}")
            reg = _sipp(tmp, f"register-{user}", scenarios.register(user), kam.address, ports[user])
            if reg.run() != 0:
                raise RuntimeError(f"{user} could not register:\n{reg.report()}")
        out(f"andrew calls mckenzie, then transfers her to marsha (marsha answers {target_final})")
        marsha = _sipp(tmp, "marsha", scenarios.Marsha(final=target_final).xml(), kam.address,
                       ports["marsha"]).start()
        mckenzie = _sipp(tmp, "mckenzie", scenarios.McKenzie(target_final=target_final).xml(),
                         kam.address, ports["mckenzie"]).start()
        andrew = _sipp(tmp, "andrew", scenarios.Andrew().xml(), kam.address, ports["andrew"])
        rc = andrew.run()
        results = {"andrew": rc, "mckenzie": mckenzie.wait(), "marsha": marsha.wait()}
        for name, code in results.items():
            if code != 0:
                party = {"andrew": andrew, "mckenzie": mckenzie, "marsha": marsha}[name]
                raise RuntimeError(f"{name} did not complete its part:\n{party.report()}")
        arrows = []
        for name, party in (("Andrew", andrew), ("McKenzie", mckenzie), ("Marsha", marsha)):
            arrows += read_sipp_log(party.messages(), name, "Kamailio+referee")
        ladder = draw(arrows, ["Andrew", "Kamailio+referee", "McKenzie", "Marsha"], width=30)
        store = TransferStore(RespClient(redis.url))
        finished = store.finished(1)
        if not finished:
            raise RuntimeError("referee recorded no finished transfer")
        record = finished[0]
        log = store.log(record["call_id"], record["refer_id"])
        return DemoResult(ladder, record, log)
    finally:
        if kam is not None:
            kam.stop()
        redis.stop()
        out("stopped Kamailio and redis-server")
