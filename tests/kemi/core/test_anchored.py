"""kemi.core.anchored: which REFER is anchored, the NOTIFY referee sends in Asterisk's name,
the job for the Asterisk side, and what each progress line stands for."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kemi.core import anchored
from kemi.core.actions import Verdict
from kemi.core.anchor import AnchorError, MoveJob, Progress, progress_key
from kemi.core.anchored import (
    NotifyRoute,
    asterisk_for,
    dial_string,
    move_job,
    notify_request,
    progress_event,
)
from kemi.core.state import Event

AST = {"pbx1": "127.0.0.1:5062", "pbx2": "192.0.2.7:5060"}


@pytest.mark.parametrize("ruri,du,expect", [
    ("sip:asterisk@127.0.0.1:5062", None, "pbx1"),
    ("sip:s@127.0.0.1:5062;transport=udp", None, "pbx1"),
    ("<sip:x@127.0.0.1:5062>", None, "pbx1"),
    ("sip:asterisk@192.0.2.7", None, "pbx2"),  # default port 5060
    ("sip:asterisk@127.0.0.1", None, None),  # 5060 is not pbx1's port
    ("sip:asterisk@example.com", "sip:127.0.0.1:5062;lr", "pbx1"),  # via loose_route's $du
    ("sip:asterisk@example.com", "sip:198.51.100.1;lr", None),
    ("sips:asterisk@192.0.2.7", None, None),  # sips defaults to 5061
    ("tel:+4930123", None, None),
    ("not a uri", None, None),
])
def test_asterisk_for(ruri, du, expect):
    assert asterisk_for(AST, ruri, du) == expect


def test_out_of_dialog_or_unconfigured_is_never_anchored():
    assert asterisk_for(AST, "sip:a@127.0.0.1:5062", in_dialog=False) is None
    assert asterisk_for({}, "sip:a@127.0.0.1:5062") is None


ROUTE = NotifyRoute(
    from_hdr="<sip:asterisk@127.0.0.1:5062>;tag=ast1", to_hdr="<sip:pbxa@127.0.0.1>;tag=a1",
    ruri="sip:pbxa@127.0.0.1:5070", contact="sip:asterisk@127.0.0.1:5062",
    nexthop="sip:127.0.0.1:5070;transport=udp", socket="udp:127.0.0.1:5060",
)


def test_notify_route_round_trips_through_the_record():
    record = {"state": "accepted", **ROUTE.fields()}
    assert NotifyRoute.from_record(record) == ROUTE
    with pytest.raises(ValueError, match="n_from"):
        NotifyRoute.from_record({"state": "accepted"})


def test_notify_request_active_and_terminated():
    headers, body = notify_request(ROUTE, "cid-1", "20", 4712, 180, "Ringing", False, 57)
    assert body == "SIP/2.0 180 Ringing\r\n"
    lines = headers.split("\r\n")
    assert lines[-1] == ""
    assert "From: <sip:asterisk@127.0.0.1:5062>;tag=ast1" in lines
    assert "To: <sip:pbxa@127.0.0.1>;tag=a1" in lines
    assert "Call-ID: cid-1" in lines
    assert "CSeq: 4712 NOTIFY" in lines
    assert "Contact: <sip:asterisk@127.0.0.1:5062>" in lines
    assert "Event: refer;id=20" in lines
    assert "Subscription-State: active;expires=57" in lines
    assert "Content-Type: message/sipfrag;version=2.0" in lines
    assert not any(line.lower().startswith("content-length") for line in lines)
    headers, _ = notify_request(ROUTE, "cid-1", "20", 4713, 200, "OK", True, 0)
    assert "Subscription-State: terminated;reason=noresource\r\n" in headers
    headers, _ = notify_request(ROUTE, "cid-1", "20", 4713, 100, "Trying", False, -3)
    assert "Subscription-State: active;expires=1\r\n" in headers  # never 0 while active


def _p(code, final):
    return Progress("c", "1", code, "x", final, 0.0)


@pytest.mark.parametrize("code,final,nosub,event", [
    (100, False, False, Event.NOTIFY_TRYING),
    (180, False, False, Event.NOTIFY_RINGING),
    (200, True, False, Event.NOTIFY_SUCCESS),
    (486, True, False, Event.NOTIFY_FAILURE),
    (180, False, True, Event.INVITE),
    (200, True, True, Event.INVITE_2XX),
    (480, True, True, Event.INVITE_FAILED),
])
def test_progress_event(code, final, nosub, event):
    assert progress_event(_p(code, final), nosub) is event


def test_dial_string():
    assert dial_string("PJSIP/{user}", "sip:2000@pbx.example") == "PJSIP/2000"
    assert dial_string("PJSIP/{user}@{host}", "sip:2000@pbx.example") == \
        "PJSIP/2000@pbx.example"
    assert dial_string("PJSIP/trunk/{uri}", "sip:2000@h") == "PJSIP/trunk/sip:2000@h"
    assert dial_string("PJSIP/{user}", "tel:+4930123") == "PJSIP/+4930123"


@pytest.mark.parametrize("template", ["PJSIP/{exten}", "PJSIP/{0}", "PJSIP/{user", "{uri.x}"])
def test_a_dial_template_naming_anything_else_is_an_anchor_error(template):
    # Raised after the 202 is out: kemi.kamailio turns it into a failure NOTIFY, never
    # into an exception that would answer the accepted REFER 500 as well.
    with pytest.raises(AnchorError, match="dial"):
        dial_string(template, "sip:2000@pbx.example")


@dataclass
class OldDecision:  # a decision without the plan fields (before the policy colleague's)
    caller_id: str = "transferee"


@dataclass
class PlanDecision:
    announcement: str = "custom/please-hold"
    caller_id: str = "transferor"
    dial_timeout_s: int = 20
    on_failure: str = "fallback:voicemail,s,1"
    release_after_s: int = 10


def _job(decision) -> MoveJob:
    return move_job(call_id="cid", refer_id="20", target_uri="sip:2000@h",
                    transferor="pbxa@127.0.0.1", decision=decision,
                    dial_template="PJSIP/{user}", prefix="referee", node="k1", now=5.0)


def test_move_job_defaults_without_plan_fields():
    job = _job(OldDecision())
    assert job.dial == "PJSIP/2000"
    assert job.reply_to == progress_key("referee", "k1")
    assert (job.announcement, job.caller_id, job.dial_timeout_s, job.on_failure,
            job.release_after_s) == ("", "", 30, "reconnect", 32.0)
    assert MoveJob.from_fields(job.to_fields()) == job


def test_move_job_takes_the_decisions_plan():
    job = _job(PlanDecision())
    assert job.announcement == "custom/please-hold"
    assert job.caller_id == "pbxa"  # the transferor's number
    assert job.dial_timeout_s == 20
    assert job.on_failure == "fallback:voicemail,s,1"
    assert job.release_after_s == 10.0
    assert _job(PlanDecision(caller_id="+4930999")).caller_id == "+4930999"
    assert _job(PlanDecision(caller_id="keep")).caller_id == ""
    assert MoveJob.from_fields(job.to_fields()) == job


# -- accept or relay -----------------------------------------------------------------------
def _choice(mode="accept", **kw):
    args = dict(cfg_ready=True, nosub=False, cseq_known=True, contact="sip:a@192.0.2.1")
    args.update(kw)
    return anchored.accept_or_relay("REFER c1/3", "pbx1", mode, **args)


def test_an_anchored_refer_is_accepted_when_everything_needed_is_there():
    v = _choice()
    assert v.actions == () and v.value == ("accept", {"anchored": "pbx1", "anchor_mode": "accept"})


def test_a_cfg_without_the_anchored_lines_relays_and_the_record_says_why():
    mode, fields = _choice(cfg_ready=False).value
    assert mode == "relay" and fields["anchor_fallback"] == "cfg-without-anchored-mode"


def test_without_asterisks_cseq_a_subscribed_refer_is_relayed_with_a_warning():
    v = _choice(cseq_known=False)
    assert v.value[0] == "relay" and v.value[1]["anchor_fallback"] == "no-asterisk-cseq"
    assert v.actions[0].level == "warn" and "no CSeq of Asterisk's" in v.actions[0].text


def test_without_a_subscription_no_cseq_is_needed():
    assert _choice(cseq_known=False, nosub=True).value[0] == "accept"


def test_a_refer_without_contact_is_relayed_nothing_could_notify_a():
    v = _choice(contact=None)
    assert v.value[0] == "relay" and "without Contact" in v.actions[0].text


def test_relay_mode_is_kept_as_configured():
    v = _choice("relay", cfg_ready=False, cseq_known=False)
    assert v == Verdict((), ("relay", {"anchored": "pbx1", "anchor_mode": "relay"}))
