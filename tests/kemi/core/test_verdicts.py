"""kemi.core.verdicts: what referee does with a message, as the actions the glue performs
-- the answer and the log line, the edits to what it relays, the record writes, the
journal when Redis is away."""

from __future__ import annotations

from kemi.core import transfer, verdicts
from kemi.core.actions import Count, Log, Notify, Relay, Reply, Spool, Store, Verdict
from kemi.core.anchor import Progress
from kemi.core.policy.model import Policy, Tenant
from kemi.core.sip.uri import parse_uri
from kemi.core.state import Event
from tests.kemi.core.test_transfer import refer  # the same REFER as the rules are tested on

DEFAULT = Tenant("default", priority=2147483647, id=1)
POLICY = Policy.build((DEFAULT,), (), (), version=1)
GOOD = "abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2"


def acts(v: Verdict) -> tuple:
    """What the glue does, counters aside."""
    return tuple(a for a in v.actions if not isinstance(a, Count))


def counts(v: Verdict) -> list[str]:
    return [a.name for a in v.actions if isinstance(a, Count)]


def plan() -> transfer.ReferPlan:
    v = verdicts.refer(refer(), POLICY)
    assert not v.answered and v.value is not None
    return v.value


# -- REFER -------------------------------------------------------------------------------
def test_a_refused_refer_is_answered_with_one_log_line_naming_it():
    v = verdicts.refer(refer(refer_to=[]), POLICY)
    assert v.answered and v.value is None
    log, reply = acts(v)
    assert isinstance(reply, Reply) and (reply.code, reply.reason) == (400, "Missing Refer-To")
    assert log == Log("notice", f"REFER abc@host/2 answered 400: {reply.warning}")


def test_an_allowed_refer_goes_on_with_its_plan_and_nothing_done_yet():
    v = verdicts.refer(refer(), POLICY)
    assert acts(v) == () and v.value.target_uri.startswith("sip:marsha@example.com")


def test_redis_away_fail_closed_answers_503_with_retry_after():
    v = verdicts.refer_without_store(plan(), "timeout", fail_open=False, now=100.0,
                                     max_open_s=60, retry_after_s=5)
    log, reply = acts(v)
    assert reply == Reply(503, "Service Unavailable", verdicts.STORE_DOWN, 5)
    assert log.level == "err" and "refused 503 (Redis: timeout)" in log.text
    assert "Retry-After: 5" in reply.headers()


def test_redis_away_fail_open_spools_the_record_and_lets_the_refer_go_on():
    p = plan()
    v = verdicts.refer_without_store(p, "timeout", fail_open=True, now=100.0,
                                     max_open_s=30, retry_after_s=5)
    assert not v.answered and v.value is True
    spool, log = acts(v)
    assert isinstance(spool, Spool) and spool.op == "create"
    assert spool.entry["deadline"] == 100.0 + min(p.expiry_s, 30)
    assert spool.entry["call_id"] == "abc@host" and spool.entry["refer_id"] == p.refer_id
    assert "relayed while Redis is away (timeout); spooled" in log.text


def test_a_refer_tm_cannot_relay_is_answered_and_its_transfer_closed_rejected():
    v = verdicts.refer_unrelayed("c1", "7", -478)
    reply, store, log = acts(v)
    assert isinstance(reply, Reply) and v.answered
    assert store == Store("c1", "7", Event.REFER_REJECTED,
                          {"refer_reply": str(reply.code), "refer_unrelayed": "-478"},
                          f"{reply.code} by the proxy: t_relay failed (-478)")
    assert log.level == "notice"


# -- NOTIFY ------------------------------------------------------------------------------
def notify(**kw) -> transfer.NotifyMessage:
    base = dict(event="refer", subscription_state="active;expires=60",
                content_type="message/sipfrag", body="SIP/2.0 180 Ringing\r\n")
    base.update(kw)
    return transfer.NotifyMessage(**base)


def test_a_notify_that_can_be_read_goes_on_untouched():
    v = verdicts.notify("c1", notify())
    assert acts(v) == () and v.value.status.code == 180


def test_a_notify_without_a_sipfrag_is_answered_415():
    v = verdicts.notify("c1", notify(content_type="text/plain"))
    assert v.answered and acts(v)[1].code == 415


def test_a_malformed_subscription_state_is_relayed_repaired_and_logged():
    v = verdicts.notify("c1", notify(subscription_state="terminated;reason=reason=noresource",
                                     body="SIP/2.0 200 OK\r\n"))
    relay, log = acts(v)
    assert relay.remove == ("Subscription-State",)
    assert relay.add == ("Subscription-State: terminated;reason=noresource",)
    assert log.level == "notice" and "relayed as" in log.text


def test_a_notify_with_an_unusable_call_id_is_answered_400():
    v = verdicts.notify("a\x00b", notify())
    assert v.answered and acts(v)[1].code == 400


# -- INVITE ------------------------------------------------------------------------------
def test_a_plain_request_uri_needs_nothing():
    v = verdicts.invite_request_uri("i1", "sip:marsha@example.com", [], [])
    assert v == Verdict((), [])


def test_a_pasted_replaces_becomes_a_header_and_the_uri_is_cleaned():
    v = verdicts.invite_request_uri("i1", f"sip:c@h?Replaces={GOOD}", [], [])
    relay, log = acts(v)
    assert relay == Relay(request_uri="sip:c@h",
                          add=("Replaces: abc@h;to-tag=1;from-tag=2", "Require: replaces"))
    assert v.value == ["abc@h;to-tag=1;from-tag=2"] and log.level == "notice"


def test_a_pasted_replaces_adds_no_second_require():
    v = verdicts.invite_request_uri("i1", f"sip:c@h?Replaces={GOOD}", [], ["timer, Replaces"])
    assert acts(v)[0].add == ("Replaces: abc@h;to-tag=1;from-tag=2",)


def test_an_invite_with_a_bad_call_id_and_no_part_in_a_transfer_goes_on_unindexed():
    v = verdicts.invite_call_id("a\x00b", transfer_related=False)
    assert v.value is False and not v.answered and acts(v)[0].level == "notice"
    assert verdicts.invite_call_id("a\x00b", transfer_related=True).answered


MARSHA = parse_uri("sip:marsha@example.com:5060")
OT = transfer.OpenTransfer


def test_a_referred_invite_tied_to_its_transfer_is_stored_with_how():
    v = verdicts.referred_invite("inv", "mckenzie@x", [OT("c1", "3", "marsha@example.com")],
                                 MARSHA, referred_by="", token="")
    assert v.value == ("c1", "3")
    store, log = acts(v)
    assert store == Store("c1", "3", Event.INVITE, {
        "invite_call_id": "inv", "invite_tie": "the only transfer to its target"})
    assert log.level == "info" and "tied to transfer c1/3" in log.text


def test_an_invite_nothing_ties_notes_every_candidate_record():
    opened = [OT("a", "2", "marsha@example.com"), OT("b", "2", "marsha@example.com")]
    v = verdicts.referred_invite("inv", "mckenzie@x", opened, MARSHA, referred_by="",
                                 token="")
    assert v.value is None and not v.answered
    notes = [a for a in v.actions if isinstance(a, Store)]
    assert [(n.call_id, n.refer_id, n.event) for n in notes] == [("a", "2", None),
                                                                 ("b", "2", None)]
    assert all(n.fields == {"invite_ambiguous": "inv"} for n in notes)


def test_a_referred_invite_to_another_target_is_refused():
    v = verdicts.referred_invite("inv", "mckenzie@x", [OT("c1", "2", "marsha@example.com")],
                                 parse_uri("sip:+1900555@gw"), referred_by="", token="")
    assert v.answered and acts(v)[1].code == 403


# -- anchored progress -------------------------------------------------------------------
def test_progress_of_a_live_subscribed_transfer_is_notified():
    p = Progress("c1", "3", 180, "Ringing", False, 10.0)
    v = verdicts.progress(p, {"state": "trying", "deadline": "70"}, now=10.0)
    (n,) = acts(v)
    assert isinstance(n, Notify) and (n.code, n.terminated, n.expires_s) == (180, False, 60)
    assert n.event is Event.NOTIFY_RINGING


def test_progress_after_the_transfer_ended_is_only_recorded():
    p = Progress("c1", "3", 200, "OK", True, 10.0)
    (store,) = acts(verdicts.progress(p, {"state": "failed"}, now=10.0))
    assert isinstance(store, Store) and store.detail.endswith("no NOTIFY (transfer failed)")


def test_progress_without_a_subscription_is_recorded_as_the_new_calls_outcome():
    p = Progress("c1", "3", 200, "OK", True, 10.0)
    (store,) = acts(verdicts.progress(p, {"state": "accepted-nosub", "refer_sub": "false"},
                                      now=10.0))
    assert store.event is Event.INVITE_2XX


# -- what each decision counts (kemi.core.metrics) ------------------------------------------
def test_a_refer_is_counted_received_and_a_refusal_by_code_and_kind():
    assert counts(verdicts.refer(refer(), POLICY)) == ["refers_received"]
    assert counts(verdicts.refer(refer(refer_to=[]), POLICY)) == [
        "refers_received", "refers_refused_400", "refers_refused_syntax"]
    assert counts(verdicts.refer_over_limit(plan(), "rate-limit")) == [
        "refers_refused_403", "refers_refused_limit"]
    assert counts(verdicts.refer_without_store(plan(), "x", fail_open=False, now=0.0,
                                               max_open_s=60, retry_after_s=5)) == [
        "refers_refused_503", "refers_refused_store"]
    assert counts(verdicts.refer_without_store(plan(), "x", fail_open=True, now=0.0,
                                               max_open_s=60, retry_after_s=5)) == [
        "refers_relayed_unrecorded"]
    assert counts(verdicts.refer_allowed(plan())) == ["refers_relayed"]


def test_notifies_and_invites_count_what_became_of_them():
    assert counts(verdicts.notify("c1", notify())) == ["notifies_received"]
    assert counts(verdicts.notify("c1", notify(content_type="text/plain"))) == [
        "notifies_refused"]
    opened = [OT("c1", "3", "marsha@example.com")]
    assert counts(verdicts.referred_invite("i", "m@x", opened, MARSHA, referred_by="",
                                           token="")) == ["invites_tied"]


def test_every_count_a_decision_makes_is_a_declared_counter():
    from kemi.core.metrics import NAMES

    made = set()
    for v in (verdicts.refer(refer(refer_to=[]), POLICY), verdicts.refer(refer(), POLICY),
              verdicts.refer_unrelayed("c", "1", -1), verdicts.notify("c", notify()),
              verdicts.policy_unavailable("REFER c", "x"),
              verdicts.progress(Progress("c", "3", 180, "Ringing", False, 1.0),
                                {"state": "trying"}, now=1.0)):
        made.update(counts(v))
    assert made <= set(NAMES)
