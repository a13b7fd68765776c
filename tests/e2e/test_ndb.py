"""Redis through Kamailio's ndb_redis (config-examples/kamailio/referee-redis.cfg): with
REFEREE_REDIS defined, every Redis call of a SIP worker goes through ndb_redis as the
packed runner (kemi.storage.packed); without it, or when the cfg names another Redis than
referee.toml, through referee's Python client -- with the same records either way."""

from __future__ import annotations

import hashlib

import pytest

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.redis_server import RedisServer
from kemi.core.redis_url import ndb_server
from kemi.storage.packed import runner_text
from kemi.storage.scripts import SCRIPTS
from kemi.storage.transfers import TransferStore  # noqa: F401 - registers the scripts
from tests.e2e.conftest import make_lab
from tests.e2e.test_blind_transfer import run_transfer

RUNNER_SHA = hashlib.sha1(runner_text().encode()).hexdigest()


def cached(rcli, sha: str) -> bool:
    return rcli.script_exists(sha)[0]


def transfer_succeeds(lab) -> dict[str, str]:
    run_transfer(lab, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    [record] = lab.finished()
    assert record["state"] == "succeeded" and record["refer_reply"] == "202"
    return record


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def cfg(request):
    return request.param


def test_with_the_define_every_worker_call_goes_through_ndb_redis(tmp_path, redis_server, cfg):
    lab = make_lab(tmp_path, redis_server, cfg)
    defines = lab.kamailio.redis_defines()
    assert defines[0] == f'REFEREE_REDIS="{ndb_server(redis_server.url)}"'
    # ndb_redis' breaker as referee's own: referee.toml's defaults, 3 failures and 5 s.
    assert defines[2:] == ["REFEREE_REDIS_ALLOWED_TIMEOUTS=2", "REFEREE_REDIS_DISABLE_S=5"]
    lab.kamailio.start()
    try:
        transfer_succeeds(lab)
        # The runner is what Redis ran; no store script was sent on its own.
        assert cached(lab.rcli, RUNNER_SHA)
        assert not any(cached(lab.rcli, s.sha) for s in SCRIPTS)
        log = lab.kamailio.log()
        assert "ndb_redis" not in log, log[-3000:]  # no NOSCRIPT or connection error
    finally:
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_without_the_define_the_python_client_does_the_same(tmp_path, redis_server, cfg):
    lab = make_lab(tmp_path, redis_server, cfg)
    lab.kamailio.ndb = False
    assert lab.kamailio.redis_defines() == []
    lab.kamailio.start()
    try:
        transfer_succeeds(lab)
        assert not cached(lab.rcli, RUNNER_SHA)
        assert any(cached(lab.rcli, s.sha) for s in SCRIPTS)
    finally:
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_a_cfg_naming_another_redis_is_caught_and_referee_toml_wins(tmp_path, redis_server):
    other = RedisServer(tmp_path / "other-redis")
    (tmp_path / "other-redis").mkdir()
    other.start()
    try:
        lab = make_lab(tmp_path, redis_server, "kamailio-native.cfg")
        lab.kamailio.defines = (f'REFEREE_REDIS="{ndb_server(other.url)}"',
                                "REFEREE_REDIS_TIMEOUT_MS=25")
        lab.kamailio.start()
        try:
            transfer_succeeds(lab)  # recorded in referee.toml's Redis
        finally:
            lab.kamailio.stop()
        log = lab.kamailio.log()
        assert "ndb_redis server 'referee' is not the Redis of referee.toml's" in log
        assert f"url {redis_server.url.split('//')[1].split('/')[0]}" in log
        assert not lab.kamailio.python_errors()
    finally:
        other.stop(kill=True)


@pytest.mark.parametrize(("url", "spec"), [
    ("redis://127.0.0.1:6379/0", "name=referee;addr=127.0.0.1;port=6379;db=0"),
    ("redis://:s3cret@10.0.0.5:6380/2", "name=referee;addr=10.0.0.5;port=6380;db=2;pass=s3cret"),
    ("unix:///run/redis/redis.sock?db=1", "name=referee;unix=/run/redis/redis.sock;db=1"),
    ("redis://user:pw@127.0.0.1:6379/0", None),  # an ACL user: ndb_redis 5.6 sends no user
    ("rediss://127.0.0.1:6379/0", None),  # Debian's ndb_redis has no TLS
    ("redis+sentinel://127.0.0.1:26379/mymaster", None),
    ("redis+cluster://127.0.0.1:7000", None),
    ("redis://:a;b@127.0.0.1:6379/0", None),  # would end the spec early
])
def test_the_define_for_a_url(url, spec):
    assert ndb_server(url) == spec
