"""`tie_token = true`: the transferee's INVITE names its transfer exactly (issue 8).

referee adds `?X-Referee-Tie=<token>` to the Refer-To of each REFER it relays; pjsua2, as
transferee, copies a Refer-To's embedded headers into its INVITE (RFC 3261 19.1.5), and
referee ties that INVITE by the token and takes the header off before the target sees
it.  Real pjsua2 phones, both example configs.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import make_lab
from tests.e2e.test_real_phones import establish, final_record, phones  # noqa: F401
from tests.ua.phone import parse_sip


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def lab(request, tmp_path, redis_server):
    lab = make_lab(tmp_path, redis_server, request.param, kamailio="tie_token = true")
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_pjsua2_copies_the_token_and_its_invite_is_tied_by_it(lab, phones):  # noqa: F811
    andrew, mckenzie, marsha = phones(andrew="pjsua2", mckenzie="pjsua2", marsha="pjsua2")
    a_call, m_call = establish(andrew, mckenzie)
    andrew.transfer(a_call, marsha.aor)
    assert andrew.wait_refer_response(a_call) == 202
    [refer] = [m for m in m_call.messages if m.startswith("REFER ")]
    refer_to = parse_sip(refer)["headers"]["refer-to"]
    assert "?X-Referee-Tie=" in refer_to, refer_to
    s_call = marsha.wait_incoming(5)
    invite = parse_sip(marsha.wait_for(lambda: s_call.messages[:1], 5, "Marsha's INVITE")[0])
    assert "x-referee-tie" not in invite["headers"], invite  # taken off on the way
    marsha.answer(s_call, 180)
    marsha.answer(s_call, 200)
    marsha.wait_state(s_call, "confirmed")
    assert andrew.wait_transfer_final(a_call, 5) == 200
    record = final_record(lab)
    assert record["state"] == "succeeded"
    assert record["invite_tie"] == "tie token"
    assert record["tie_token"] == refer_to.split("X-Referee-Tie=")[1].split(">")[0]
