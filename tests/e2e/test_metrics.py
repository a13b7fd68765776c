"""referee's counters in a real Kamailio (both example cfgs, -A WITH_PROMETHEUS): what
`kamcmd stats.get_statistics script:` and xhttp_prom's /metrics show moves by exactly
what happened -- one transfer that succeeds, one REFER refused by syntax, one by policy."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from kemi.cli.demo import phones as scenarios
from kemi.core.metrics import NAMES, PREFIX
from tests.e2e.conftest import make_lab
from tests.e2e.parties import Parties, SilentPhone, wait_for

COUNTERS = [n for n in NAMES if n != "transfers_live"]


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def mlab(request, tmp_path, redis_server):
    lab = make_lab(tmp_path, redis_server, request.param)
    lab.http = _free_tcp_port()
    lab.kamailio.defines = ("WITH_PROMETHEUS", f"PROMETHEUS_LISTEN=tcp:127.0.0.1:{lab.http}")
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


def scrape(lab) -> dict[str, int]:
    """/metrics, referee's lines only: {name: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.http}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(f"kamailio_script_{PREFIX}"):
            name, value, _ts = line.split()
            out[name.removeprefix(f"kamailio_script_{PREFIX}")] = int(value)
    return out


def kamcmd_stats(lab) -> dict[str, int]:
    return lab.stats()


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {n: after[n] - before[n] for n in COUNTERS if after[n] != before[n]}


def test_every_counter_is_served_and_starts_at_zero(mlab):
    metrics, stats = scrape(mlab), kamcmd_stats(mlab)
    assert set(metrics) == set(NAMES) == set(stats)
    assert all(metrics[n] == 0 for n in COUNTERS) and stats == metrics


def test_a_transfer_that_succeeds_moves_exactly_its_counters(mlab):
    before = scrape(mlab)
    an, _, _ = Parties(mlab).run(scenarios.Andrew(), scenarios.McKenzie(),
                                 scenarios.Marsha())
    assert wait_for(lambda: mlab.finished(), 5)
    after = wait_for(lambda: (lambda m: m if m["refers_accepted"] else None)(scrape(mlab)), 5)
    assert after, str(sorted(scrape(mlab).items())) + mlab.kamailio.log()[-3000:]
    delta = moved(before, after)
    trips = delta.pop("redis_round_trips")
    assert trips >= 4  # create, the 202 with the first NOTIFY, two more NOTIFYs, the tie
    assert delta == {
        "refers_received": 1, "refers_relayed": 1, "refers_accepted": 1,
        "notifies_received": 3, "notifies_applied": 3,  # 100, 180, 200
        "invites_tied": 1, "transfers_succeeded": 1,
    }, delta
    assert wait_for(lambda: scrape(mlab)["transfers_live"] == 0, 5)
    assert kamcmd_stats(mlab)["transfers_succeeded"] == after["transfers_succeeded"]


def test_refused_refers_are_counted_by_code_and_by_what_refused_them(mlab):
    before = scrape(mlab)
    Parties(mlab).run(
        scenarios.Andrew(refer_to=["<sip:marsha@[remote_ip]:[remote_port]>",
                                   "<sip:mary@[remote_ip]:[remote_port]>"], expect_refer=400),
        scenarios.McKenzie(expect_refer=False))
    mlab.policy("policy", "add", "--action", "deny", "--user", "marsha", "--name", "no")
    time.sleep(0.3)  # workers re-read the policy every 0.2 s in tests
    marsha = SilentPhone(mlab, "marsha")
    try:
        Parties(mlab).run(scenarios.Andrew(expect_refer=403),
                          scenarios.McKenzie(expect_refer=False))
    finally:
        marsha.close()
    delta = moved(before, scrape(mlab))
    delta.pop("redis_round_trips", None)  # the 403 is decided before any Redis trip
    assert delta == {
        "refers_received": 2,
        "refers_refused_400": 1, "refers_refused_syntax": 1,
        "refers_refused_403": 1, "refers_refused_policy": 1,
    }, delta


def test_any_other_http_path_is_404(mlab):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{mlab.http}/", timeout=5)
    assert err.value.code == 404
