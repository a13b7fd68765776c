"""A transferor that answers a NOTIFY `491 Request Pending` still learns the outcome
(issue 8).

linphone answers 491 to a NOTIFY that reaches it while a transaction of its own in the
dialog is open; pjsip, as transferee, then ends the subscription and never sends the
final NOTIFY.  referee sends a refused NOTIFY again ([kamailio] notify_491_retries, 2,
notify_491_retry_ms apart); if a progress NOTIFY is still refused, referee answers the
transferee 200 itself, so the subscription lives and the final NOTIFY still comes.  SIPp
parties through both example configs.
"""

from __future__ import annotations

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import free_udp_port
from tests.e2e.parties import received, wait_for
from tests.support.order_scenarios import PendingTransferor


def run(lab, andrew):
    mk_port, ma_port = free_udp_port(), free_udp_port()
    lab.register("mckenzie", mk_port)
    lab.register("marsha", ma_port)
    ma = lab.party("marsha", scenarios.Marsha().xml(), port=ma_port).start()
    mk = lab.party("mckenzie", scenarios.McKenzie().xml(), port=mk_port).start()
    an = lab.party("andrew", andrew.xml(), auto_answer=False)
    rc = an.run()
    assert rc == 0, an.report() + lab.kamailio.log()[-3000:]
    for p in (mk, ma):
        assert p.wait() == 0, p.report()
    return an, mk


def sipfrags(party) -> list[str]:
    return [m.body.split("\r\n")[0].strip() for m in received(party, "NOTIFY")]


def test_a_notify_refused_491_once_is_sent_again_and_accepted(lab):
    an, mk = run(lab, PendingTransferor(refusals=1))
    assert sipfrags(an) == ["SIP/2.0 100 Trying", "SIP/2.0 100 Trying",
                            "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    first, again = received(an, "NOTIFY")[:2]
    assert first.cseq == again.cseq  # the same NOTIFY, sent again
    assert len(received(mk, "NOTIFY", status=200)) == 3  # 100 (after the retry), 180, 200
    assert not received(mk, "NOTIFY", status=491)
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    assert "refused 491 by the transferor: sent again in 250 ms" in lab.kamailio.log()


def test_a_progress_notify_refused_491_every_time_keeps_the_subscription_alive(lab):
    an, mk = run(lab, PendingTransferor(refusals=3))
    # The 100 three times (refused, and refused again twice), then 180 and 200 taken.
    assert sipfrags(an) == ["SIP/2.0 100 Trying"] * 3 + ["SIP/2.0 180 Ringing",
                                                         "SIP/2.0 200 OK"]
    # McKenzie got a 200 for her 100 -- from referee -- and went on to the final NOTIFY.
    [ok100, *_] = received(mk, "NOTIFY", status=200)
    assert ok100.header("Server") == "referee"
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    key = (record["call_id"], record["refer_id"])
    assert wait_for(lambda: lab.store.get(*key).get("final_notify_reply") == "200", 4)
    now = lab.store.get(*key)
    assert now["notify_491"] == "answered 200 by referee"
