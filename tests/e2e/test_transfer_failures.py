"""Blind transfers that fail or are refused, through a real Kamailio with both example
configs: the target refuses, the policy denies, the REFER is malformed, the transferee's
NOTIFY is broken."""

from __future__ import annotations

import time

import pytest

from kemi.cli.demo import phones as scenarios
from tests.e2e.parties import Parties, SilentPhone, received


@pytest.mark.parametrize("code", [404, 486])
def test_target_failure_reaches_andrew_in_final_notify_and_he_resumes_the_call(lab, code):
    phrase = {404: "Not Found", 486: "Busy Here"}[code]
    an, mk, _ = Parties(lab).run(
        scenarios.Andrew(reinvite_after=True),
        scenarios.McKenzie(target_final=code, expect_reinvite=True),
        scenarios.Marsha(final=code),
    )
    notifies = received(an, "NOTIFY")
    final = notifies[-1]
    assert final.header("Subscription-State").startswith("terminated")
    assert final.body == f"SIP/2.0 {code} {phrase}"
    assert all(not n.body.startswith("SIP/2.0 2") for n in notifies)
    [record] = lab.finished()
    assert record["state"] == "failed"
    assert record["final_sipfrag"] == f"{code} {phrase}"
    # The original call is still there: Andrew's re-INVITE to McKenzie is answered 200.
    assert [m.cseq for m in received(an, "INVITE", status=200)] == [1, 3]
    assert [m.cseq for m in received(mk, "INVITE")] == [1, 3]


def test_policy_denied_target_gets_403_naming_the_rule_and_goes_nowhere(lab):
    added = lab.policy("policy", "add", "--action", "deny", "--user", "marsha",
                       "--name", "no-marsha", "--reason", "Marsha takes no transfers")
    assert "no-marsha" in added
    marsha = SilentPhone(lab, "marsha")
    try:
        # Workers check the policy version every policy_check_interval_s (0.2 s in tests).
        time.sleep(0.3)
        an, mk, _ = Parties(lab).run(
            scenarios.Andrew(expect_refer=403), scenarios.McKenzie(expect_refer=False)
        )
        heard = marsha.heard()
    finally:
        marsha.close()
    [refused] = received(an, "REFER", status=403)
    assert refused.start_line == "SIP/2.0 403 Marsha takes no transfers"
    warning = refused.header("Warning")
    assert "no-marsha" in warning and warning.startswith("399 ")
    assert received(mk, "REFER") == []
    assert heard == []
    assert lab.records() == [] and lab.finished() == []


@pytest.mark.parametrize(
    ("refer_to", "reason", "warning"),
    [
        (
            ["<sip:marsha@[remote_ip]:[remote_port]>", "<sip:mary@[remote_ip]:[remote_port]>"],
            "Multiple Refer-To",
            "REFER with 2 Refer-To values",
        ),
        (
            ["<sip:marsha@[remote_ip]:[remote_port]?Replaces=abc%40host>"],
            "Bad Refer-To",
            "Replaces lacks to-tag and from-tag",
        ),
    ],
    ids=["two-refer-to", "replaces-without-tags"],
)
def test_malformed_refer_gets_400_whose_warning_says_what_is_wrong(lab, refer_to, reason, warning):
    an, mk, _ = Parties(lab).run(
        scenarios.Andrew(refer_to=refer_to, expect_refer=400),
        scenarios.McKenzie(expect_refer=False),
    )
    [refused] = received(an, "REFER", status=400)
    assert refused.start_line == f"SIP/2.0 400 {reason}"
    assert warning in refused.header("Warning")
    assert received(mk, "REFER") == []
    assert lab.records() == []


def test_broken_notify_sipfrag_gets_400_and_the_proxy_keeps_serving(lab):
    parties = Parties(lab)
    an, mk, _ = parties.run(
        scenarios.Andrew(),
        scenarios.McKenzie(bad_notify_body="garbage"),
        scenarios.Marsha(),
    )
    [refused] = received(mk, "NOTIFY", status=400)
    assert refused.start_line == "SIP/2.0 400 Bad sipfrag"
    assert "not a SIP Status-Line: 'garbage'" in refused.header("Warning")
    assert all("garbage" not in n.body for n in received(an, "NOTIFY"))
    # A following, well-behaved transfer through the same proxy succeeds.
    an2, _, _ = parties.run(scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
    assert received(an2, "NOTIFY")[-1].body == "SIP/2.0 200 OK"
    assert [r["state"] for r in lab.finished()] == ["succeeded", "succeeded"]
