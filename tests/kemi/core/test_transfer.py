"""kemi.core.transfer: what referee decides about each message of a transfer (no I/O)."""

from __future__ import annotations

import pytest

from kemi.core import transfer
from kemi.core.policy.model import Policy, Rule, Tenant
from kemi.core.sip.headers import parse_subscription_state
from kemi.core.sip.uri import parse_uri
from kemi.core.state import Event

DEFAULT = Tenant("default", priority=2147483647, id=1)


def policy(*rules: Rule, tenant: Tenant = DEFAULT) -> Policy:
    tenants = (tenant,) if tenant.name == "default" else (tenant, DEFAULT)
    return Policy.build(tenants, rules, (), version=1)


def refer(**kw) -> transfer.ReferMessage:
    base = dict(
        call_id="abc@host", cseq=2, from_uri="<sip:andrew@example.com>;tag=a1",
        from_tag="a1", to_uri="<sip:mckenzie@example.com>;tag=m1", to_tag="m1",
        request_uri="sip:mckenzie@192.0.2.5", source_ip="192.0.2.1",
        refer_to=["<sip:marsha@example.com>"], referred_by=["<sip:andrew@example.com>"],
        contact="<sip:andrew@192.0.2.1>",
    )
    base.update(kw)
    return transfer.ReferMessage(**base)


# -- REFER -------------------------------------------------------------------------------
def test_no_refer_to_is_400():
    r = transfer.check_refer(refer(refer_to=[]), policy())
    assert (r.code, r.reason) == (400, "Missing Refer-To")


@pytest.mark.parametrize("values", [["<sip:a@x>", "<sip:b@x>"], ["<sip:a@x>, <sip:b@x>"]])
def test_two_refer_to_values_in_two_headers_or_one_line_are_400(values):
    r = transfer.check_refer(refer(refer_to=values), policy())
    assert (r.code, r.reason) == (400, "Multiple Refer-To")
    assert "2 Refer-To" in r.warning


def test_replaces_without_tags_is_400_saying_what_is_missing():
    r = transfer.check_refer(refer(refer_to=["<sip:marsha@x?Replaces=abc%40host>"]), policy())
    assert r.code == 400 and "lacks" in r.warning and "to-tag" in r.warning


def test_unparsable_refer_to_is_400_with_the_parser_reason():
    r = transfer.check_refer(refer(refer_to=["<mailto:x@y>"]), policy())
    assert r.code == 400 and r.reason == "Bad Refer-To" and r.warning


def test_two_referred_by_is_400():
    r = transfer.check_refer(refer(referred_by=["<sip:a@x>", "<sip:b@x>"]), policy())
    assert (r.code, r.reason) == (400, "Multiple Referred-By")


def test_out_of_dialog_without_contact_is_400():
    r = transfer.check_refer(refer(to_tag="", to_uri="<sip:mckenzie@example.com>", contact=None),
                             policy())
    assert (r.code, r.reason) == (400, "Missing Contact")


def test_out_of_dialog_is_denied_by_default_policy_naming_the_switch():
    r = transfer.check_refer(refer(to_tag="", to_uri="<sip:mckenzie@example.com>"), policy())
    assert r.code == 403 and "allow_out_of_dialog" in r.warning


def test_policy_denial_uses_the_rule_code_reason_and_names_the_rule():
    deny = Rule("no-marsha", "deny", "user", "marsha", reply_code=603, reason="not her", id=4)
    r = transfer.check_refer(refer(), policy(deny))
    assert (r.code, r.reason) == (603, "not her")
    assert r.warning == "denied by rule 4 'no-marsha'"
    assert r.headers() == "Warning: 399 referee \"denied by rule 4 'no-marsha'\"\r\n"


def test_reason_with_control_characters_is_made_safe_for_a_status_line():
    deny = Rule("r", "deny", "any", reply_code=403, reason="bad\r\nInjected: 1", id=2)
    r = transfer.check_refer(refer(), policy(deny))
    assert "\r" not in r.reason and "\n" not in r.reason


def test_an_allowed_refer_becomes_a_plan_with_what_the_store_needs():
    plan = transfer.check_refer(refer(refer_sub="false"), policy())
    assert isinstance(plan, transfer.ReferPlan)
    assert (plan.call_id, plan.refer_id) == ("abc@host", "2")
    assert (plan.transferor, plan.transferee, plan.target) == (
        "andrew@example.com", "mckenzie@example.com", "marsha@example.com")
    assert plan.nosub_requested and plan.fields["refer_sub"] == "false"
    assert plan.fields["rule"] == "tenant default default allow"


def test_a_numeric_target_is_keyed_by_its_e164_form():
    assert transfer.target_key(parse_uri("sip:+1-555-0100@gw;user=phone")) == "+15550100"
    assert transfer.target_key(parse_uri("sip:marsha@Example.COM:5070")) == "marsha@example.com"


# -- the REFER's response ------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, asked, echoed, event",
    [
        (100, False, None, None),
        (202, False, None, Event.REFER_ACCEPTED),
        (200, True, "false", Event.REFER_ACCEPTED_NOSUB),
        (202, True, None, Event.REFER_ACCEPTED),  # asked but not echoed: NOTIFYs will come
        (202, False, "false", Event.REFER_ACCEPTED),  # echoed without asking: ignored
        (603, False, None, Event.REFER_REJECTED),
    ],
)
def test_refer_response_event_follows_rfc_4488(code, asked, echoed, event):
    assert transfer.refer_response_event(code, asked, echoed) == event


# -- NOTIFY --------------------------------------------------------------------------------
def notify(body="SIP/2.0 180 Ringing\r\n", state="active;expires=60", event="refer",
           ctype="message/sipfrag;version=2.0") -> transfer.NotifyMessage:
    return transfer.NotifyMessage(event, state, ctype, body)


def test_is_refer_notify_by_event_or_by_a_sipfrag_body_when_event_is_missing():
    assert transfer.is_refer_notify("refer;id=7", None)
    assert not transfer.is_refer_notify("presence", "message/sipfrag")
    assert transfer.is_refer_notify(None, "message/sipfrag")
    assert not transfer.is_refer_notify(None, "application/sdp")


def test_progress_notify():
    f = transfer.read_notify(notify(event="refer;id=93"))
    assert (f.refer_id, f.event, f.status.code, f.expires, f.terminated) == (
        "93", Event.NOTIFY_RINGING, 180, 60, False)


def test_final_failure_notify():
    f = transfer.read_notify(notify("SIP/2.0 486 Busy Here", "terminated;reason=noresource"))
    assert f.event == Event.NOTIFY_FAILURE and f.terminated


def test_failure_with_subscription_still_active_is_not_final():
    f = transfer.read_notify(notify("SIP/2.0 486 Busy Here", "active"))
    assert f.event == Event.NOTIFY_FAILURE_NONFINAL


def test_notify_without_subscription_state_and_a_final_status_ends_it():
    f = transfer.read_notify(notify("SIP/2.0 200 OK", state=None, event=None))
    assert f.event == Event.NOTIFY_SUCCESS and f.terminated


def test_broken_sipfrag_is_400_with_the_reason():
    r = transfer.read_notify(notify("garbage"))
    assert isinstance(r, transfer.Reply) and (r.code, r.reason) == (400, "Bad sipfrag")
    assert r.warning.startswith("sipfrag:")


def test_missing_body_on_a_progress_notify_is_400_but_a_terminating_one_closes():
    r = transfer.read_notify(notify(""))
    assert (r.code, r.reason) == (400, "Missing sipfrag")
    f = transfer.read_notify(notify("", "terminated;reason=timeout"))
    assert f.event == Event.NOTIFY_FAILURE and f.status is None


def test_other_body_type_is_415():
    r = transfer.read_notify(notify(ctype="application/sdp"))
    assert r.code == 415


def test_bad_subscription_state_is_400():
    r = transfer.read_notify(notify(state="active;expires=soon"))
    assert (r.code, r.reason) == (400, "Bad Subscription-State")


@pytest.mark.parametrize(
    "value, relayed",
    [
        # linphone 5.1's final NOTIFY, which pjsip refuses as a syntax error
        ("terminated;reason=reason=noresource", "terminated;reason=noresource"),
        ("terminated;reason=reason=reason=timeout", "terminated;reason=timeout"),
        # the rest of the value is kept as sent
        ("Terminated ; Reason = REASON=noresource;retry-after=5",
         "Terminated ; Reason = noresource;retry-after=5"),
    ],
)
def test_a_repeated_reason_is_repaired_to_what_it_was_read_as(value, relayed):
    assert transfer.repaired_subscription_state(value) == relayed
    assert parse_subscription_state(relayed) == parse_subscription_state(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "terminated;reason=noresource",  # well-formed: relayed untouched
        "active;expires=60",
        'terminated;reason="noresource"',
        "terminated;reason=reason=",  # nothing left to say: not guessed at
        "terminated;reason=reason=no(resource",  # unreadable: not referee's to rewrite
        "terminated;x=reason=reason=y",  # another parameter's value
    ],
)
def test_anything_else_is_relayed_as_it_came(value):
    assert transfer.repaired_subscription_state(value) is None


# -- the transferee's INVITE ----------------------------------------------------------------
OT = transfer.OpenTransfer
MARSHA = parse_uri("sip:marsha@example.com:5060")


def test_referred_invite_is_tied_to_the_only_transfer_naming_its_target():
    opened = [OT("c1", "2", "bob@x"), OT("c1", "3", "marsha@example.com")]
    assert transfer.tie_invite(opened, MARSHA) == transfer.Tie(
        "c1", "3", "the only transfer to its target")


def test_referred_invite_to_another_target_is_403():
    r = transfer.tie_invite([OT("c1", "2", "marsha@example.com")], parse_uri("sip:+1900555@gw"))
    assert r.code == 403 and "marsha@example.com" in r.warning


def test_referred_invite_with_no_open_transfer_is_an_ordinary_call():
    assert transfer.tie_invite([], MARSHA) is None


def test_a_transfer_that_has_its_invite_does_not_take_the_next_one():
    """Issue 8: a transfer left open (no final NOTIFY) kept stealing the transferee's next
    INVITE to the same target.  One call per REFER: it already has its own."""
    opened = [OT("a", "2", "marsha@example.com", invite_call_id="inv-1"),
              OT("b", "2", "marsha@example.com")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv-2")
    assert (tie.call_id, tie.refer_id) == ("b", "2")


def test_a_retry_of_the_same_invite_stays_with_its_transfer():
    opened = [OT("a", "2", "marsha@example.com", invite_call_id="inv-1"),
              OT("b", "2", "marsha@example.com")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv-1")  # after a 407
    assert (tie.call_id, tie.how) == ("a", "the same INVITE again")


def test_two_transfers_waiting_for_an_invite_are_told_apart_by_referred_by():
    opened = [OT("a", "2", "marsha@example.com", referred_by="<sip:andrew@example.com>"),
              OT("b", "2", "marsha@example.com", referred_by="sip:mary@example.com;tag=1")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv",
                              referred_by="Mary <sip:mary@example.com>")
    assert (tie.call_id, tie.how) == ("b", "Referred-By")


def test_when_nothing_tells_them_apart_the_invite_is_tied_to_none():
    opened = [OT("a", "2", "marsha@example.com"), OT("b", "2", "marsha@example.com")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv")
    assert isinstance(tie, transfer.NoTie) and tie.ambiguous
    assert tie.candidates == (("a", "2"), ("b", "2"))


def test_an_invite_when_every_transfer_to_its_target_has_one_is_tied_to_none():
    opened = [OT("a", "2", "marsha@example.com", invite_call_id="inv-1")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv-2")
    assert isinstance(tie, transfer.NoTie) and not tie.ambiguous
    assert "has its INVITE already" in tie.reason


def test_the_tie_token_names_the_transfer_whatever_else_is_open():
    opened = [OT("a", "2", "marsha@example.com", tie_token="aaa"),
              OT("b", "2", "marsha@example.com", tie_token="bbb")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv", token="bbb")
    assert (tie.call_id, tie.how) == ("b", "tie token")


def test_a_tie_token_does_not_open_another_target():
    opened = [OT("a", "2", "marsha@example.com", tie_token="aaa")]
    r = transfer.tie_invite(opened, parse_uri("sip:+19005550100@gw"), token="aaa")
    assert r.code == 403


def test_an_unknown_tie_token_is_no_authority():
    opened = [OT("a", "2", "marsha@example.com", tie_token="aaa")]
    tie = transfer.tie_invite(opened, MARSHA, invite_call_id="inv", token="forged")
    assert (tie.call_id, tie.how) == ("a", "the only transfer to its target")


@pytest.mark.parametrize("refer_to, carried", [
    ("<sip:marsha@example.com>", "<sip:marsha@example.com?X-Referee-Tie=t1>"),
    ("Marsha <sip:marsha@example.com;user=phone>;x=1",
     "Marsha <sip:marsha@example.com;user=phone?X-Referee-Tie=t1>;x=1"),
    ("<sip:m@h?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>",
     "<sip:m@h?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2&X-Referee-Tie=t1>"),
    ("sip:marsha@example.com:5060", "<sip:marsha@example.com:5060?X-Referee-Tie=t1>"),
    ("sip:m@h;transport=udp", "<sip:m@h;transport=udp?X-Referee-Tie=t1>"),
])
def test_the_tie_token_rides_in_the_refer_to_as_an_embedded_header(refer_to, carried):
    out = transfer.with_tie_token(refer_to, "t1")
    assert out == carried
    parsed = transfer.parse_refer_to(out)
    assert parsed.target.uri.header("X-Referee-Tie") == "t1"


@pytest.mark.parametrize("code, event", [(180, None), (200, Event.INVITE_2XX),
                                          (407, None), (401, None), (486, Event.INVITE_FAILED),
                                          (408, Event.INVITE_FAILED)])
def test_invite_response_events_ignore_auth_challenges(code, event):
    assert transfer.invite_response_event(code) == event
