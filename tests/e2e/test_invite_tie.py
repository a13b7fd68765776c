"""Each transferee INVITE is tied to its own transfer (issue 8, second part).

Seen on the wire: a transfer whose final NOTIFY never came stayed open; the same
transferee's INVITE for its next transfer, to the same target, was tied to the open one
(the first by Call-ID), which was then recorded `succeeded` from an INVITE that was not
its own, while the real transfer's record had no INVITE at all.  Here, with SIPp parties
through both example configs: McKenzie's first transfer to Marsha ends with Marsha's 486
and no final NOTIFY, Andrew hangs up (the record waits for an outcome: transferor-gone);
then a second call and a second transfer to Marsha, who answers.
"""

from __future__ import annotations

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import free_udp_port
from tests.e2e.parties import wait_for


def play(lab, ports, andrew, mckenzie, marsha):
    parties = [lab.party("mckenzie", mckenzie.xml(), port=ports["mckenzie"]).start()]
    if marsha is not None:
        parties.append(lab.party("marsha", marsha.xml(), port=ports["marsha"]).start())
    an = lab.party("andrew", andrew.xml())
    rc = an.run()
    assert rc == 0, an.report() + lab.kamailio.log()[-4000:]
    for p in parties:
        assert p.wait() == 0, p.report()


def test_two_transfers_to_the_same_target_each_get_their_own_invite(lab):
    ports = {"mckenzie": free_udp_port(), "marsha": free_udp_port()}
    for user, port in ports.items():
        lab.register(user, port)
    # 1: Marsha busy, McKenzie never sends the final NOTIFY, Andrew hangs up meanwhile.
    play(lab, ports,
         scenarios.Andrew(follow_notifies=False, hold_ms=1500),
         scenarios.McKenzie(target_final=486, final_notify=False),
         scenarios.Marsha(final=486, ring_ms=100))
    [first] = lab.records()
    assert first["state"] == "transferor-gone", first
    assert first["invite_reply"] == "486"
    # 2: the same transferee, the same target, a new call: Marsha answers.
    play(lab, ports, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    second = wait_for(lambda: next((r for r in lab.finished()
                                    if r["call_id"] != first["call_id"]), None), 5)
    assert second is not None, lab.records()
    assert (second["state"], second.get("invite_reply")) == ("succeeded", "200"), second
    assert second.get("invite_call_id") == f"xfer///{second['call_id']}", second
    # The first transfer kept its own INVITE and its open state: nothing of the second.
    first_now = lab.store.get(first["call_id"], first["refer_id"])
    assert first_now["state"] == "transferor-gone", first_now
    assert first_now["invite_call_id"] == f"xfer///{first['call_id']}", first_now
    assert first_now["invite_reply"] == "486", first_now
    assert "invite-2xx" not in [ln.split("|")[1] for ln in
                                lab.store.log(first["call_id"], first["refer_id"])]


def test_two_transfers_waiting_for_an_invite_to_one_target_tie_neither(lab):
    """Two open transfers of one transferee to one target, neither with its INVITE yet,
    the same Referred-By: the INVITE could be either's.  It is relayed (the target is
    approved), tied to neither, and both records say so -- a guess could be wrong."""
    ports = {"mckenzie": free_udp_port(), "marsha": free_udp_port()}
    for user, port in ports.items():
        lab.register(user, port)
    # 1: McKenzie accepts and NOTIFYs but never calls Marsha; Andrew hangs up.
    play(lab, ports,
         scenarios.Andrew(follow_notifies=False, hold_ms=300),
         scenarios.McKenzie(call_target=False),
         None)
    [first] = lab.records()
    # 2: a second call and transfer to Marsha; this time she is called and answers.
    play(lab, ports, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    records = {r["call_id"]: r for r in lab.records()}
    second = next(r for cid, r in records.items() if cid != first["call_id"])
    for record in (records[first["call_id"]], second):
        assert "invite_call_id" not in record, record
        assert record["invite_ambiguous"] == f"xfer///{second['call_id']}", record
    assert second["state"] == "succeeded"  # its final NOTIFY said so
    assert "tied to no transfer: 2 open transfers" in lab.kamailio.log()
