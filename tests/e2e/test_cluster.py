"""A blind transfer through a real Kamailio whose [redis] url names a 3-master Redis
Cluster (redis+cluster://...): the glue builds its client from the url as ever and gets
kemi.storage.resp.ClusterClient, and the transfer comes out recorded and streamed, with no
CROSSSLOT anywhere and nothing left in the shared keys."""

from __future__ import annotations

import pytest

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import Kamailio, write_referee_config
from kemi.storage.resp import RespClient
from tests.e2e.conftest import Lab, fresh_policy_db
from tests.e2e.test_blind_transfer import run_transfer
from tests.support.redis_cluster import redis_cluster  # noqa: F401 - a fixture


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def cluster_lab(request, tmp_path, redis_cluster):  # noqa: F811 - the imported fixture
    redis_cluster.flush()
    redis_cluster.reset_stats()
    db = tmp_path / "policy.db"
    fresh_policy_db(db)
    conf = write_referee_config(tmp_path / "referee.toml", redis_url=redis_cluster.url,
                                policy_db=db)
    kam = Kamailio(tmp_path / "kamailio", conf, cfg=request.param)
    client = RespClient(redis_cluster.url, timeout_s=5)
    lab = Lab(tmp_path, redis_cluster, db, kam, client)  # type: ignore[arg-type]
    kam.start()
    yield lab
    kam.stop()
    client.close()
    errors = kam.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


def test_blind_transfer_on_a_redis_cluster(cluster_lab):
    lab = cluster_lab
    an, _ = run_transfer(lab, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    notifies = [ln for ln in an.messages().splitlines() if ln.startswith("SIP/2.0 ")]
    assert "SIP/2.0 100 Trying" in notifies and "SIP/2.0 200 OK" in notifies
    [record] = lab.finished()
    assert record["state"] == "succeeded" and record["target"] == "marsha@127.0.0.1"
    store = lab.store
    assert store.cluster
    assert store.due(float("inf")) == []
    assert store.find_for_invite(record["transferee"]) == []
    cluster = lab.redis
    keys = cluster.keys()
    assert store.xfer_key(record["call_id"], record["refer_id"]) in keys
    assert store.stream_key in keys and store.deadlines_key not in keys
    errors = cluster.error_stats()
    assert "CROSSSLOT" not in errors and set(errors) <= {"NOSCRIPT"}, errors
    log = lab.kamailio.log()
    assert "(Redis:" not in log and "spooled" not in log, log[-3000:]  # never failed over
