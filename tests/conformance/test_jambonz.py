"""jambonz-feature-server REFER scenarios, unmodified, through Kamailio + referee.

uac-refer-*.xml play the TRANSFEREE: they call `[to]` (our transferor, registered at the
proxy; `-s` names it too, for the Request-URIs of their in-dialog requests) and receive
its REFER.  uas-dial-refer.xml plays the TRANSFEROR on a call we place to it.
"""

from __future__ import annotations

import time

import pytest

from tests.conformance.conftest import BOTH_CONFIGS, SHARED
from tests.conformance.counterparts import Party, received
from tests.e2e.parties import wait_for

SCENARIOS = SHARED / "jambonz-feature-server/test/scenarios"
MARSHA = "<sip:marsha@[remote_ip]:[remote_port]>"


def transferee(run, name: str, *, timeout_s: int = 15):
    return run.third_party(SCENARIOS / name, service="andrew",
                           keys={"to": "andrew", "from": "mckenzie"}, timeout_s=timeout_s)


@pytest.mark.parametrize("lab", BOTH_CONFIGS, indirect=True)
def test_uac_refer_with_notify_one_bare_notify_ends_the_transfer(run):
    """The transferee answers 202 with an SDP body and sends a single NOTIFY with neither
    Event nor Subscription-State (ua-quirks.md): referee reads the sipfrag body, takes a
    final status without Subscription-State as the end, and records succeeded."""
    andrew = run.ours("andrew", Party("andrew").answers().refers(
        MARSHA, referred_by="<sip:andrew@[remote_ip]>", notify="SIP/2.0 200 OK"),
        register=("andrew",))
    jambonz = transferee(run, "uac-refer-with-notify.xml")
    codes = run.play(andrew, caller=jambonz)
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"
    [accepted] = received(andrew.messages_path, "REFER", status=202)
    assert accepted.header("Content-Type") == "application/sdp"
    [notify] = received(andrew.messages_path, "NOTIFY")
    assert notify.header("Event") is None and notify.header("Subscription-State") is None
    record = run.transfer()
    assert record["state"] == "succeeded" and record["final_sipfrag"] == "200 OK"
    assert record["transferee"] == "mckenzie@127.0.0.1" and record["target"] == "marsha@127.0.0.1"


def test_uac_refer_no_notify_transfer_expires(run):
    """The transferee answers 202 and never NOTIFYs (the orphaned-transfer case): referee
    keeps the transfer open (accepted) and its sweep closes it as expired when the
    subscription's time is up (the tenant's expiry, set to its 10 s minimum here)."""
    run.lab.policy("tenant", "set", "default", "--expiry", "10")
    time.sleep(0.3)  # workers re-read the policy every 0.2 s in tests
    andrew = run.ours("andrew", Party("andrew").answers().refers(
        MARSHA, referred_by="<sip:andrew@[remote_ip]>"), register=("andrew",))
    jambonz = transferee(run, "uac-refer-no-notify.xml")
    codes = run.play(andrew, caller=jambonz)
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"
    # The 202 is relayed at once and recorded with the next event of the transfer; with
    # none coming, the sweep records it about a second later.
    record = run.transfer()
    key = (record["call_id"], record["refer_id"])
    assert wait_for(lambda: run.lab.store.get(*key)["state"] == "accepted", 4)
    record = run.lab.store.get(*key)
    assert record["refer_reply"] == "202"
    assert float(record["deadline"]) - float(record["created_at"]) == pytest.approx(10, abs=1)
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline and not run.lab.finished():
        time.sleep(0.25)
    [done] = run.lab.finished()
    assert done["state"] == "expired" and done["last_event"] == "expiry"


def dial_refer(run, *, expect: int):
    """We call uas-dial-refer.xml (it copies Record-Route, so we use the route set it
    returns); it REFERs us to +15551234567@example.com, a PSTN number, and wants 202."""
    dialer = run.third_party(SCENARIOS / "uas-dial-refer.xml", register="dialer", timeout_s=6)
    service = Party("service").calls("dialer", peer_copies_rr=True)
    if expect < 300:
        service.takes_refer().notify(100).hangs_up()
    ours = run.ours("service", service, register=("service",), timeout_s=6)
    return dialer, ours, run.play(dialer, caller=ours)


def test_uas_dial_refer_pstn_target_is_refused_403_by_default(run):
    """referee's default policy gates PSTN targets (toll fraud through transfer): the
    REFER gets 403 from referee, never reaches us, and the scenario, which wants 202,
    fails on it.  Nothing is recorded."""
    dialer, ours, codes = dial_refer(run, expect=403)
    assert codes[ours.name] == 0, run.report()
    assert codes[dialer.name] != 0
    [refused] = received(dialer.messages_path, "REFER", status=403)
    assert refused.start_line == "SIP/2.0 403 PSTN targets not allowed for tenant default"
    assert "allow_pstn off" in refused.header("Warning")
    assert received(ours.messages_path, "REFER") == []
    assert run.lab.records() == []


def test_uas_dial_refer_pstn_target_allowed_for_a_tenant_with_pstn_at_home(run):
    """With `referee tenant set default --allow-pstn yes --home-cc 1` (a North American
    deployment, as jambonz's number suggests; without home_cc every number counts as
    international, which the default rules deny) the same REFER is relayed: we answer
    202 and NOTIFY 100 (the scenario's -aa answers it), then hang up, which the scenario
    waits for.  referee: trying, the target read as an E.164 number (no user=phone
    needed: a `+digits` user is a number)."""
    run.lab.policy("tenant", "set", "default", "--allow-pstn", "yes", "--home-cc", "1")
    time.sleep(0.3)
    dialer, ours, codes = dial_refer(run, expect=202)
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"
    [refer] = received(ours.messages_path, "REFER")
    assert refer.header("Referred-By").startswith("<sip:127.0.0.1:")  # no user part
    record = run.transfer()
    assert record["state"] == "trying" and record["target"] == "+15551234567"
    assert record["rule"] == "tenant default default allow"
