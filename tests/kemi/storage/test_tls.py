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
