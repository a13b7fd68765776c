"""KSR exists only inside Kamailio; the end-to-end tests drive the real one.  What they
cannot provoke on purpose -- an unexpected exception, a failed XACK at the right moment --
is tested here with a recording stand-in for KSR, checking only referee's own contract."""

from __future__ import annotations

import sys
import types

import pytest


class Recorder:
    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        def record(*args):
            self.calls.append((name, *args))
            return 1

        return record


def _forget_kamailio_modules() -> None:
    for name in [m for m in sys.modules if m.startswith("kemi.kamailio")]:
        del sys.modules[name]


@pytest.fixture
def ksr(monkeypatch):
    """A stand-in KSR module, and kemi.kamailio imported afresh against it."""
    fake = types.ModuleType("KSR")
    fake.sl, fake.hdr, fake.tm, fake.htable = Recorder(), Recorder(), Recorder(), Recorder()
    fake.err = fake.warn = fake.info = fake.notice = fake.crit = \
        lambda text: fake.logged.append(text)
    fake.logged = []
    monkeypatch.setitem(sys.modules, "KSR", fake)
    _forget_kamailio_modules()
    yield fake
    _forget_kamailio_modules()
