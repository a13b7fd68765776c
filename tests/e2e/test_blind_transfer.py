"""Blind transfer through a real Kamailio: Andrew transfers McKenzie to Marsha."""

from __future__ import annotations

from kemi.cli.demo import phones as scenarios
from kemi.cli.demo.kamailio_node import free_udp_port


def run_transfer(lab, andrew, mckenzie, marsha=None):
    """Register the called parties, start them, let Andrew play; return the three SIPps."""
    mk_port = free_udp_port()
    lab.register("mckenzie", mk_port)
    parties = []
    if marsha is not None:
        ma_port = free_udp_port()
        lab.register("marsha", ma_port)
        parties.append(lab.party("marsha", marsha.xml(), port=ma_port).start())
    mk = lab.party("mckenzie", mckenzie.xml(), port=mk_port).start()
    parties.append(mk)
    an = lab.party("andrew", andrew.xml())
    rc = an.run()
    others = [(p, p.wait()) for p in parties]
    assert rc == 0, an.report() + lab.kamailio.log()[-5000:]
    for p, prc in others:
        assert prc == 0, p.report()
    return an, mk


def test_success_reports_100_180_200_and_records_succeeded(lab):
    an, _ = run_transfer(lab, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    notifies = [ln for ln in an.messages().splitlines() if ln.startswith("SIP/2.0 ")]
    assert "SIP/2.0 100 Trying" in notifies and "SIP/2.0 180 Ringing" in notifies
    assert "SIP/2.0 200 OK" in notifies
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    assert record["target"] == "marsha@127.0.0.1"
    assert record["node"] == lab.kamailio.address  # the node that took the REFER


def test_the_record_lists_the_transfer_in_the_order_it_happened(lab):
    """McKenzie sends the 202, the NOTIFY 100 and his INVITE to Marsha back to back.  The
    NOTIFY is held for the 202's head start and recorded after it leaves; his INVITE,
    taken meanwhile by another worker, must not be recorded before them (it was, every
    demo run: `invite refer-seen -> trying`, then `refer-accepted trying (ignored)`)."""
    run_transfer(lab, scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    [record] = lab.finished()
    steps = [line.split("|", 5)[1:5]
             for line in lab.store.log(record["call_id"], record["refer_id"])]
    said = "\n".join(ln for ln in lab.kamailio.log().splitlines()
                     if record["call_id"] in ln or "referee" in ln)[-6000:]
    assert [s[0] for s in steps[:4]] == ["refer", "refer-accepted", "notify-trying",
                                         "invite"], f"{steps}\n{said}"
    assert all(s[3] == "applied" for s in steps[:4]), f"{steps}\n{said}"
