"""Fixtures for the AGI tests: a FastAGI server on a free loopback port, a store on a
private redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from agi.fastagi import FastAGIServer
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore


@pytest.fixture
def agi_server() -> Iterator[Callable[..., FastAGIServer]]:
    """agi_server(handler, **kw) -> a started FastAGIServer on 127.0.0.1:<free port>."""
    started: list[FastAGIServer] = []

    def make(handler, **kw) -> FastAGIServer:
        kw.setdefault("session_limit_s", 30.0)
        server = FastAGIServer("127.0.0.1", 0, handler, **kw)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.shutdown(grace_s=1.0)


@pytest.fixture
def resp(redis_server) -> Iterator[RespClient]:
    client = RespClient(redis_server.url, timeout_s=2.0)
    yield client
    client.close()


@pytest.fixture
def store(resp) -> TransferStore:
    return TransferStore(resp, "referee")
