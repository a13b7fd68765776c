"""Fixtures shared by every test suite.

`redis_server`: a private redis-server per test (kemi.cli.demo.redis_server.RedisServer).
redis-server is part of what CI installs; a machine without it fails these tests loudly
rather than skipping them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.cli.demo.redis_server import RedisServer
from tests.support.postgres import pg_dsn  # noqa: F401 - a fixture, for every test module


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    with tempfile.TemporaryDirectory(prefix="referee-redis-") as tmp:
        server = None
        for _attempt in range(3):  # the free port may be taken between probe and bind
            server = RedisServer(Path(tmp))
            try:
                server.start()
                break
            except RuntimeError:
                server.stop(kill=True)
                server = None
        if server is None:
            pytest.fail("could not start redis-server")
        try:
            yield server
        finally:
            server.stop(kill=True)
