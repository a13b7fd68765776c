"""siphon-rs sip-testkit REFER scenarios, unmodified, through Kamailio + referee.

Both place a call to `[service]` (our transferee, registered at the proxy), REFER it, take
exactly one NOTIFY and hang up at once: the transferee must survive the transferor's BYE
and referee must still learn the outcome (RFC 5589).
"""

from __future__ import annotations

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from tests.conformance.conftest import BOTH_CONFIGS, SHARED
from tests.conformance.counterparts import Party, Target, received

SIPP = SHARED / "siphon-rs/sip-testkit/sipp"


@pytest.mark.parametrize("lab", BOTH_CONFIGS, indirect=True)
def test_refer_transferor_leaves_after_the_first_notify_and_referee_still_records_success(run):
    """refer.xml takes its Refer-To host and port from `-inf refer_target.csv`: ours, in
    the test's directory, names the target SIPp's own loopback port (the target is not
    at the proxy: the transferee's INVITE goes through the proxy to it)."""
    port = free_udp_port()
    csv = run.lab.tmp / "refer_target.csv"
    csv.write_text(f"SEQUENTIAL\n127.0.0.1;{port}\n")
    target = run.lab.party("transfer", Target("transfer", ring_ms=100).xml(), port=port,
                           remote=False, timeout_s=15)
    run.parties.append(target)
    bob = (
        Party("bob").answers().takes_refer()
        .notify(100)
        .takes_bye()
        .calls_target(f"sip:transfer@127.0.0.1:{port};transport=udp")
        .notify(200, "terminated;reason=noresource", wait=False)
        .hangs_up_target()
    )
    bob_sipp = run.ours("bob", bob, register=("bob",))
    siphon = run.third_party(SIPP / "refer.xml", service="bob", extra=("-inf", str(csv)))
    codes = run.play(bob_sipp, target, caller=siphon)
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"
    [refer] = received(bob_sipp.messages_path, "REFER")
    assert refer.header("Refer-To") == f"<sip:transfer@127.0.0.1:{port};transport=udp>"
    record = run.transfer()
    assert record["state"] == "succeeded" and record["invite_reply"] == "200"
    # The BYE came after the 100 NOTIFY; the tied INVITE's 200 then decided.  Our final
    # NOTIFY (legal: the subscription outlives the BYE, RFC 5057) comes after that
    # decision, without ;id=: it belongs to the dialog's latest transfer, where it agrees
    # with the outcome (ignored, no anomaly).  (What the transferor answered to each
    # NOTIFY is noted by the sweep, later: "note" lines.)
    events = [step for step in run.ladder(record) if step[0] != "note"]
    assert events[-4:] == [
        ("bye-transferor", "transferor-gone", "applied"),
        ("invite", "transferor-gone", "ignored"),
        ("invite-2xx", "succeeded", "applied"),
        ("notify-success", "succeeded", "ignored"),
    ]
    assert "anomalies" not in record


def test_refer_fail_unreachable_target_is_reported_failed(run):
    """refer_fail.xml REFERs to `sip:invalid@0.0.0.0:9`: on Linux 0.0.0.0 is this host,
    so that is already a closed loopback port (nothing answers; the file is used as is).
    Our transferee tries it through the proxy, gives up after a second and NOTIFYs 408;
    siphon takes that one NOTIFY and hangs up."""
    bob = (
        Party("bob").answers().takes_refer()
        .calls_target("sip:invalid@0.0.0.0:9;transport=udp", give_up_ms=1000)
        .notify(408, "terminated;reason=noresource")
        .takes_bye()
    )
    bob_sipp = run.ours("bob", bob, register=("bob",))
    siphon = run.third_party(SIPP / "refer_fail.xml", service="bob")
    codes = run.play(bob_sipp, caller=siphon)
    assert set(codes.values()) == {0}, f"{codes}\n{run.report()}"
    record = run.transfer()
    assert record["state"] == "failed" and record["final_sipfrag"] == "408 Request Timeout"
    assert record["target"] == "invalid@0.0.0.0"
