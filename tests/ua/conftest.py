"""Fixtures for driving real phones against the minimal Kamailio of this folder."""

from __future__ import annotations

import shutil

import pytest

from .phone import PhoneError, make_phone, pjsua2_available
from .proxy import MinimalProxy, kamailio_binary

DOMAIN = "referee.test"

_BINARIES = {"baresip": "baresip", "linphone": "linphonec"}


def require_kind(kind: str) -> None:
    """Fail loudly when a phone of this kind cannot run here: .ci/setup installs all three."""
    if kind == "pjsua2":
        why = pjsua2_available()
        if why:
            pytest.fail(f"{why} (see tests/ua/INSTALL.md)")
    elif not shutil.which(_BINARIES[kind], path="/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.fail(f"{_BINARIES[kind]} not installed (see tests/ua/INSTALL.md)")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    return any(
        getattr(request.node, f"rep_{w}", None) is not None
        and getattr(request.node, f"rep_{w}").failed
        for w in ("setup", "call")
    )


@pytest.fixture
def proxy(request):
    if not kamailio_binary():
        pytest.fail("kamailio not installed (run .ci/setup)")
    px = MinimalProxy().start()
    yield px
    px.stop()
    if _failed(request):
        print(f"\nkamailio log kept: {px.log_path}")
    else:
        px.cleanup()


@pytest.fixture
def phones(proxy, request, tmp_path):
    """phones(andrew="pjsua2", mckenzie="baresip", ...) -> started, registered phones."""
    made = []

    def factory(**kinds):
        out = []
        for name, kind in kinds.items():
            require_kind(kind)
            p = make_phone(
                kind, name, name, proxy.host, proxy.port, DOMAIN, workdir=tmp_path / name
            )
            made.append(p)
            p.start()
            out.append(p)
        for p in out:
            p.register()
        return out

    yield factory
    for p in made:
        try:
            p.stop()
        except PhoneError:
            pass
    if _failed(request):
        for p in made:
            print(f"{p.name} ({p.kind}) log: {p.workdir}")
