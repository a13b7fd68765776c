"""AmiController's threads outlive failures that are not Redis or AMI errors."""

from __future__ import annotations

import time

import pytest

from agi.ami import AmiController
from kemi.config import AsteriskSettings, RedisSettings, Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:asterisk.manager")


def _settings(url: str) -> Settings:
    return Settings(redis=RedisSettings(url=url, prefix="referee"),
                    asterisk=AsteriskSettings(name="ast1", ami_port=1))


def _wait(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)
    return pred()


def test_loop_survives_a_login_that_raises():
    attempts: list[float] = []

    def factory():
        attempts.append(time.monotonic())
        raise RuntimeError("boom")

    c = AmiController(_settings("redis://127.0.0.1:1/0"), session_factory=factory,
                      backoff_max_s=0.05)
    c.start()
    try:
        assert _wait(lambda: len(attempts) >= 3), "the loop died after the first failure"
        assert c._threads[0].is_alive()
    finally:
        c.stop()
