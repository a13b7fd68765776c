"""Redis over TLS (rediss://): a real redis-server with TLS only, its own CA, and client
certificates required (tls-auth-clients yes) -- the certificates made here with openssl."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from kemi import config
from kemi.cli.demo.redis_server import REDIS_SERVER, _free_port
from kemi.core.state import Event
from kemi.storage.resp import RedisUnavailable, RespClient
from kemi.storage.transfers import TransferStore
from tests.support.redis_cluster import RedisCluster, Tls


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}", cwd=d)


def _cert(d: Path, name: str, ca: str) -> None:
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "ext.cnf",
             cwd=d)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _cert(d, "server", "ca")
    _cert(d, "client", "ca")
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "yes",
         "--save", "", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'ca.crt'}"
           f"&ssl_certfile={d / 'client.crt'}&ssl_keyfile={d / 'client.key'}")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                RespClient(url, timeout_s=1.0).call("PING")
                break
            except RedisUnavailable:
                assert time.monotonic() < deadline and proc.poll() is None, "no TLS Redis"
                time.sleep(0.05)
        yield d, port, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_transfers_are_recorded_over_tls_on_one_connection(tls_redis):
    _d, _port, url = tls_redis
    client = RespClient(url, timeout_s=1.0)
    store = TransferStore(client)
    store.create("c1@h", "2", {}, now=1.0, deadline=61.0, transferor="a@x",
                 transferee="b@x", target="c@x")
    store.apply("c1@h", "2", Event.REFER_ACCEPTED, 2.0)
    sock = client._sock
    assert store.get("c1@h", "2")["state"] == "accepted"
    assert client._sock is sock  # the TLS connection is reused, not made per call


def test_without_a_client_certificate_redis_refuses_and_says_so(tls_redis):
    d, port, _url = tls_redis
    client = RespClient(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'ca.crt'}",
                        timeout_s=1.0)
    with pytest.raises(RedisUnavailable) as err:
        client.call("PING")
    assert f"127.0.0.1:{port}" in str(err.value)


def test_a_server_certificate_from_another_ca_is_refused(tls_redis):
    d, port, _url = tls_redis
    client = RespClient(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={d / 'other-ca.crt'}"
                        f"&ssl_certfile={d / 'client.crt'}&ssl_keyfile={d / 'client.key'}",
                        timeout_s=1.0)
    with pytest.raises(RedisUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        client.call("PING")


@pytest.mark.parametrize("query, fault", [
    ("?ssl_ca_certs=/nonexistent/ca.crt", "TLS file /nonexistent/ca.crt is not readable"),
    ("?ssl_certfile=/x.crt", "needs both ssl_certfile and ssl_keyfile"),
])
def test_tls_settings_that_cannot_work_stop_the_start(tmp_path, query, fault):
    path = tmp_path / "referee.toml"
    path.write_text(f'[redis]\nurl = "rediss://127.0.0.1:6380/0{query}"\n')
    with pytest.raises(config.ConfigError, match=fault):
        config.load(str(path))


def test_ssl_options_without_rediss_are_refused(tmp_path):
    path = tmp_path / "referee.toml"
    path.write_text('[redis]\nurl = "redis://127.0.0.1/0?ssl_ca_certs=/ca.crt"\n')
    with pytest.raises(config.ConfigError, match="ssl_\\* options need rediss://"):
        config.load(str(path))


# ------------------------------------------------------------- Cluster and Sentinel over TLS


def _tls(d: Path) -> Tls:
    return Tls(
        ("--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "yes",
         "--tls-replication", "yes"),
        f"ssl_ca_certs={d / 'ca.crt'}&ssl_certfile={d / 'client.crt'}"
        f"&ssl_keyfile={d / 'client.key'}")


def _life(client) -> None:
    """A transfer from REFER to its end, read back from the finished stream."""
    store = TransferStore(client)
    store.create("c1@h", "2", {}, now=1.0, deadline=61.0, transferor="a@x",
                 transferee="b@x", target="c@x")
    store.apply("c1@h", "2", Event.REFER_ACCEPTED, 2.0)
    store.apply("c1@h", "2", Event.NOTIFY_SUCCESS, 3.0, fields={"final_sipfrag": "200 OK"})
    [record] = store.finished(5)
    assert (record["call_id"], record["state"]) == ("c1@h", "succeeded")


def test_a_cluster_whose_nodes_speak_only_tls(tls_redis):
    d, _port, _url = tls_redis
    cluster = RedisCluster(d / "cluster", tls=_tls(d))
    try:
        cluster.start()
        assert cluster.url.startswith("rediss+cluster://")
        client = RespClient(cluster.url, timeout_s=2.0)
        assert client.cluster
        _life(client)
        assert len(client.masters) == 3  # the slot map named the nodes' TLS ports
        plain = RespClient(cluster.url.replace("rediss+", "redis+").split("?")[0],
                           timeout_s=1.0)
        with pytest.raises(RedisUnavailable):
            plain.call("SET", "k", "v")  # the same ports without TLS get nowhere
    finally:
        cluster.stop()


def test_a_sentinel_and_its_primary_spoken_to_over_tls(tls_redis):
    d, _port, _url = tls_redis
    tls = _tls(d)
    primary, sentinel = _free_port(), _free_port()
    top = d / "sentinel"
    top.mkdir()
    conf = top / "s1.conf"
    conf.write_text(
        f"port 0\ntls-port {sentinel}\nbind 127.0.0.1\ndir {top}\n"
        f"tls-cert-file {d / 'server.crt'}\ntls-key-file {d / 'server.key'}\n"
        f"tls-ca-cert-file {d / 'ca.crt'}\ntls-auth-clients yes\ntls-replication yes\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary} 1\n")
    procs = [
        subprocess.Popen([REDIS_SERVER, "--port", "0", "--tls-port", str(primary),
                          "--bind", "127.0.0.1", "--save", "", "--dir", str(top),
                          *tls.server_args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    url = f"rediss+sentinel://127.0.0.1:{sentinel}/mymaster?{tls.query}"
    try:
        client = RespClient(url, timeout_s=2.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.call("PING")
                break
            except RedisUnavailable:
                assert time.monotonic() < deadline, "no TLS Sentinel/primary"
                time.sleep(0.1)
        assert client.address == f"127.0.0.1:{primary}"  # asked of the Sentinel, over TLS
        _life(client)
        no_cert = RespClient(f"rediss+sentinel://127.0.0.1:{sentinel}/mymaster"
                             f"?ssl_ca_certs={d / 'ca.crt'}", timeout_s=1.0)
        with pytest.raises(RedisUnavailable, match=f"Sentinel 127.0.0.1:{sentinel}"):
            no_cert.call("PING")  # the Sentinel wants a client certificate too
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.parametrize("url, fault", [
    ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/ca.crt", "need rediss\\+cluster://"),
    ("redis+sentinel://127.0.0.1:26379/m?ssl_ca_certs=/ca.crt", "need rediss\\+cluster://"),
    ("rediss+cluster://127.0.0.1:7000?ssl_ca_certs=/nonexistent/ca.crt",
     "TLS file /nonexistent/ca.crt is not readable"),
    ("rediss+sentinel://127.0.0.1:26379/m?ssl_certfile=/x.crt",
     "needs both ssl_certfile and ssl_keyfile"),
])
def test_tls_options_of_cluster_and_sentinel_urls_are_checked_at_start(tmp_path, url, fault):
    path = tmp_path / "referee.toml"
    path.write_text(f'[redis]\nurl = "{url}"\n')
    with pytest.raises(config.ConfigError, match=fault):
        config.load(str(path))
