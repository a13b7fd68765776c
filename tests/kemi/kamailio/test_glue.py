"""kemi.kamailio.glue's route wrapper, the last line of defence: every route returns an
int, and an exception in a request route still answers the request (500) instead of
leaving it unanswered."""

from __future__ import annotations

import pytest


@pytest.fixture
def glue(ksr):
    import kemi.kamailio.glue as glue

    return glue, ksr


def test_an_exception_in_a_request_route_answers_500_and_ends_the_route(glue):
    mod, ksr = glue

    class Routes:
        @mod.route("request")
        def boom(self, msg):
            raise KeyError("surprise")

    assert Routes().boom(object()) == mod.HANDLED == 0
    assert ("send_reply", 500, "Server Internal Error") in ksr.sl.calls
    assert any("internal error: KeyError" in c[1] for c in ksr.hdr.calls)
    assert "boom failed: KeyError('surprise')" in ksr.logged[0]


def test_an_exception_in_a_reply_route_is_logged_and_lets_the_reply_through(glue):
    mod, ksr = glue

    class Routes:
        @mod.route("reply")
        def boom(self, msg):
            raise ValueError("bad")

    assert Routes().boom(object()) == mod.CONTINUE == 1
    assert ksr.sl.calls == []
    assert ksr.logged


def test_a_route_that_returns_nothing_still_returns_an_int(glue):
    mod, _ = glue

    class Routes:
        @mod.route("request")
        def quiet(self, msg, *extra):
            return None

    assert Routes().quiet(object(), "rtimer-extra-argument") == 1
