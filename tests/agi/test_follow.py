"""The AMI controller's core (agi.follow) without sockets: events recorded from a real
Asterisk 20 (../shared/asterisk-ami) in, actions / Progress / notes out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import pytest

from agi.follow import (
    Ack,
    Annotate,
    Follower,
    FollowSettings,
    Phase,
    Publish,
    SendAction,
    endpoint_of,
    target_exten,
)
from kemi.core.anchor import MoveJob
from tests.support import transcript
from tests.support.ami_replay import Cast, cast, events, messages

S = FollowSettings(transfer_context="ami-xfer", hold_context="ami-hold", hold_exten="hold",
                   recall_context="ami-recall")
# For cases about something else than when A is released after a final (tested below).
S_NOW = replace(S, final_notify_wait_s=0.0)
OK = {"Response": "Success", "Message": "Variable Set"}


def job_for(who: Cast, **kw) -> MoveJob:
    args = dict(call_id=who.call_id, refer_id="3", target="sip:2000@127.0.0.1",
                dial="PJSIP/amitarget", transferor="amipbx@x", reply_to="prog", created_at=0.0,
                release_after_s=2.0)
    args.update(kw)
    return MoveJob(**args)


class Driver:
    """Feeds a recording's events to a Follower, answers its actions via `answer`."""

    def __init__(self, name: str, answer: Callable[[SendAction], Mapping[str, str]] | None = None,
                 settings: FollowSettings = S, **job_kw):
        self.tr = transcript.ami(name)
        self.who = cast(self.tr)
        self.f = Follower(settings)
        self.job = job_for(self.who, **job_kw)
        self.answer = answer or (lambda a: OK)
        self.out: list = []
        self.at: list[float] = []  # when each of `out` came
        self.events = events(self.tr)
        self.gate = next(m.t for m in messages(self.tr) if m.side == "S" and m.action != "Login")

    def _do(self, outs: Iterable, now: float) -> None:
        work = list(outs)
        while work:
            o = work.pop(0)
            self.out.append(o)
            self.at.append(now)
            if isinstance(o, SendAction):
                work[:0] = self.f.response(o.action_id, self.answer(o), now)

    def run(self, until: float = 1e9, inject: Callable[[float, dict], list[dict]] | None = None,
            job_at: float | None = None) -> Driver:
        sent = False
        job_at = self.gate if job_at is None else job_at
        for t, ev in self.events:
            if t > until:
                break
            if not sent and t >= job_at:
                sent = True
                self._do(self.f.job(self.job, "1-1", t), t)
            self._ticks(t)
            for e in (inject(t, ev) if inject else [ev]):
                self._do(self.f.event(e, t), t)
        self._ticks(until if until < 1e9 else self.events[-1][0] + 100)
        return self

    def _ticks(self, now: float) -> None:
        d = self.f.next_deadline()
        while d is not None and d <= now:
            self._do(self.f.tick(d), d)
            d = self.f.next_deadline()

    def actions(self, name: str | None = None) -> list[dict]:
        return [o.fields for o in self.out if isinstance(o, SendAction)
                and (name is None or o.action == name)]

    def progress(self) -> list[tuple[int, bool]]:
        return [(o.progress.code, o.progress.final) for o in self.out if isinstance(o, Publish)]

    def notes(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for o in self.out:
            if isinstance(o, Annotate):
                merged.update(o.fields)
        return merged

    def when(self, kind: type, match: Callable[[object], bool] = lambda o: True) -> list[float]:
        return [t for t, o in zip(self.at, self.out, strict=True)
                if isinstance(o, kind) and match(o)]

    def acked(self) -> bool:
        return any(isinstance(o, Ack) for o in self.out)


# ------------------------------------------------------------------ small pieces


def test_endpoint_and_exten():
    assert endpoint_of("PJSIP/amipbx-0000002d") == "PJSIP/amipbx"
    assert endpoint_of("PJSIP/my-pbx-trunk-0000002d") == "PJSIP/my-pbx-trunk"
    assert target_exten("sip:2000@127.0.0.1") == "2000"
    assert target_exten("<sips:+4930123;user=phone@x>") == "+4930123"
    assert target_exten("tel:+4930123") == "+4930123"


def test_pair_found_from_bridgepvtcallid():
    """P = the channel whose bridge peer's Call-ID is the job's; A = P's BRIDGEPEER."""
    d = Driver("a-target-answers")
    for t, ev in d.events:
        if t > 1.0:
            break
        d.f.channels.update(ev, t)
    p, a = d.f.channels.find_pair(d.who.call_id)
    assert (p.name, p.uid, a.name, a.uid) == (d.who.p, d.who.p_uid, d.who.a, d.who.a_uid)
    # A's own Call-ID is P's (pjsua's) — not the job's: no pair for it.
    assert d.f.channels.find_pair(a.peer_call_id) != (p, a)


# ------------------------------------------------------------------ recorded flows


def test_answer_flow_and_release():
    d = Driver("a-target-answers").run()
    acts = d.actions()
    assert [a["Action"] for a in acts] == ["Setvar"] * 9 + ["Redirect", "Hangup"]
    assert acts[-1] == {"Action": "Hangup", "Channel": d.who.a, "Cause": "16",
                        "ActionID": acts[-1]["ActionID"]}
    assert len({a["ActionID"] for a in acts}) == len(acts)
    assert d.progress() == [(180, False), (200, True)]
    assert d.notes()["ami_result"] == "a-released" and d.acked()
    assert d.f.transfers == {}


def test_a_hangs_up_before_release_timer_no_hangup_sent():
    """P↔T up, A's PBX hangs up itself before release_after_s: nothing to release."""
    d = Driver("a-target-answers", release_after_s=30.0)

    def inject(t, ev):
        if ev.get("Event") == "BridgeEnter" and ev.get("Uniqueid") == d.who.p_uid and t > 5:
            return [ev, {"Event": "Hangup", "Channel": d.who.a, "Uniqueid": d.who.a_uid,
                         "Linkedid": d.who.p_uid, "Cause": "16"}]
        return [ev]

    d.run(until=6.0, inject=inject)
    assert d.actions("Hangup") == []
    assert d.notes()["ami_release"] == "a hung up first" and d.acked()


def test_busy_cause_from_hanguprequest_before_dialend():
    d = Driver("b-target-busy-bridge-app").run()
    assert d.progress() == [(180, False), (486, True)]
    n = d.notes()
    assert (n["ami_dialstatus"], n["ami_cause"], n["ami_result"]) == ("BUSY", "17", "reconnected")
    assert [a["Action"] for a in d.actions()] == ["Setvar"] * 9 + ["Redirect"]


def test_cause_arriving_after_dialend_is_waited_for():
    """Without T's HangupRequest, the cause comes with T's Hangup after DialEnd: the
    final waits for it (cause 17 -> 486 even if DialStatus said CONGESTION)."""
    d = Driver("b-target-busy-bridge-app")

    def inject(t, ev):
        if ev.get("Event") == "HangupRequest" and ev.get("Cause") == "17":
            return []
        if ev.get("Event") == "DialEnd" and ev.get("DialStatus") == "BUSY":
            return [{**ev, "DialStatus": "CONGESTION"}]
        return [ev]

    d.run(inject=inject)
    assert d.progress() == [(180, False), (486, True)]


def test_noanswer_cause_zero_and_timeout_without_hangup():
    d = Driver("c-target-noanswer-bridge-app").run()
    assert d.progress() == [(180, False), (480, True)]
    # No Hangup of T at all: the final goes out after cause_wait_s.
    d = Driver("c-target-noanswer-bridge-app")
    d.run(inject=lambda t, ev: [] if ev.get("Event") == "Hangup" and ev.get(
        "Channel", "").startswith("PJSIP/amitarget") else [ev])
    assert d.progress() == [(180, False), (480, True)]


@pytest.mark.parametrize("dialstatus,cause,code", [
    ("CHANUNAVAIL", "1", 404),  # unallocated number: the target does not exist
    ("CHANUNAVAIL", "20", 503),  # subscriber absent (no contact, no answer to INVITE)
    ("CONGESTION", "34", 503),  # no circuit
])
def test_unreachable_target_final_carries_the_status_its_cause_names(dialstatus, cause, code):
    """An unreachable target never rings: A is told 100 then the failure, with the status
    Asterisk's cause names, and P goes back to A as for a busy target."""
    d = Driver("b-target-busy-bridge-app")

    def inject(t, ev):
        name = ev.get("Event")
        if name == "DialState":
            return []  # no ringing
        if name in ("HangupRequest", "Hangup") and ev.get("Cause") == "17":
            return [{**ev, "Cause": cause}]
        if name == "DialEnd" and ev.get("DialStatus") == "BUSY":
            return [{**ev, "DialStatus": dialstatus}]
        return [ev]

    d.run(inject=inject)
    assert d.progress() == [(code, True)]
    n = d.notes()
    assert (n["ami_dialstatus"], n["ami_cause"]) == (dialstatus, cause)
    assert n["ami_result"] == "reconnected"


def test_userevent_xferfailed_when_dialend_is_filtered():
    d = Driver("b-target-busy-bridge-app")
    d.run(inject=lambda t, ev: [] if ev.get("Event") in ("DialEnd", "HangupRequest",
                                                         "Hangup") and t < 5 else [ev])
    assert d.progress() == [(180, False), (486, True)]


def test_p_hangs_up_while_ringing_487_and_a_released():
    d = Driver("c-target-noanswer-bridge-app")

    def inject(t, ev):
        if ev.get("Event") == "DialState" and ev.get("DialStatus") == "RINGING" and t > 2:
            return [ev, {"Event": "Hangup", "Channel": d.who.p, "Uniqueid": d.who.p_uid,
                         "Linkedid": d.who.p_uid, "Cause": "16"}]
        return [ev]

    d.run(until=4.0, inject=inject)
    assert d.progress() == [(180, False), (487, True)]
    assert d.actions("Hangup")[0]["Channel"] == d.who.a
    assert d.notes()["ami_result"] == "caller-gone" and d.acked()


def test_a_is_released_only_once_its_final_notify_has_had_time_to_leave():
    """Issue 10.5: A got Asterisk's BYE 40 ms before the NOTIFY 487 (Kamailio NOTIFYs
    from a 150 ms progress timer; a PBX ending the dialog at the BYE answers 481).  The
    controller publishes the 487 at P's hangup and hangs A up final_notify_wait_s later;
    A hanging up meanwhile ends the job with no Hangup sent at all."""
    def run(a_leaves: bool) -> Driver:
        d = Driver("c-target-noanswer-bridge-app")
        gone: list[float] = []

        def inject(t, ev):
            out = [ev]
            if ev.get("Event") == "DialState" and ev.get("DialStatus") == "RINGING" and t > 2:
                gone.append(t)
                out.append({"Event": "Hangup", "Channel": d.who.p, "Uniqueid": d.who.p_uid,
                            "Linkedid": d.who.p_uid, "Cause": "16"})
                if a_leaves:  # (within the wait: the next event may come after it)
                    out.append({"Event": "Hangup", "Channel": d.who.a,
                                "Uniqueid": d.who.a_uid, "Linkedid": d.who.p_uid,
                                "Cause": "16"})
            return out

        return d.run(until=6.0, inject=inject)

    d = run(a_leaves=False)
    [final] = d.when(Publish, lambda o: o.progress.final)
    [hangup] = d.when(SendAction, lambda o: o.action == "Hangup")
    assert hangup - final == pytest.approx(S.final_notify_wait_s)
    assert d.notes()["ami_result"] == "caller-gone" and d.acked()

    d = run(a_leaves=True)
    assert d.progress() == [(180, False), (487, True)]
    assert d.actions("Hangup") == []
    assert d.notes()["ami_result"] == "caller-gone" and d.acked()


def test_exactly_one_final():
    """After the 200, P's hangup (and every later event) publishes nothing more."""
    d = Driver("a-target-answers", release_after_s=0.1).run()
    assert sum(1 for c, final in d.progress() if final) == 1


def test_ami_bridge_after_wait_and_recall_when_a_gone():
    d = Driver("b-target-busy-ami-bridge").run(until=5.0)
    (bridge,) = d.actions("Bridge")
    assert (bridge["Channel1"], bridge["Channel2"], bridge["Tone"]) == (d.who.p, d.who.a, "no")
    d = Driver("d-recall-originate").run(until=5.0)
    (orig,) = d.actions("Originate")
    assert orig["Async"] == "true"  # never a synchronous Originate: it blocks the session
    assert orig["Channel"] == "PJSIP/amipbx" and orig["Context"] == "ami-recall"
    assert orig["Variable"][0] == f"XFER_PEER={d.who.p}"
    assert d.f.transfers[d.job.xfer_id].phase is Phase.RECALL


def test_the_recall_goes_to_as_contact_when_referee_has_it():
    """Issue 10 item 4: the endpoint alone made the recall's Request-URI the AOR contact
    with no user (INVITE sip:host:port), which the example proxy answered 484: A was
    never called back and P was hung up.  The job carries A's Contact from its REFER."""
    d = Driver("d-recall-originate", recall_uri="sip:pbx@10.0.0.8:5060").run(until=5.0)
    (orig,) = d.actions("Originate")
    assert orig["Channel"] == "PJSIP/amipbx/sip:pbx@10.0.0.8:5060"


def test_recall_failure_hangs_up_p():
    """OriginateResponse Failure (recorded in e-ami-errors: Reason 0, Uniqueid <unknown>):
    recall-failed, and P is hung up rather than left parked in MOH."""
    rec = next(m.headers for m in messages(transcript.ami("e-ami-errors"))
               if m.event == "OriginateResponse")
    d = Driver("d-recall-originate")
    d.run(until=5.0)
    orig = d.actions("Originate")[0]
    d._do(d.f.event({**rec, "ActionID": orig["ActionID"]}, 5.1), 5.1)
    assert d.notes()["ami_result"] == "recall-failed"
    assert d.actions("Hangup")[-1]["Channel"] == d.who.p
    assert d.acked()


def test_hangup_of_a_refused_no_such_channel():
    def answer(a):
        if a.action == "Hangup":
            return {"Response": "Error", "Message": "No such channel"}
        return OK

    d = Driver("a-target-answers", answer=answer, settings=S_NOW,
               release_after_s=0.1).run(until=6.0)
    assert d.notes()["ami_release"] == "already gone (No such channel)" and d.acked()


@pytest.mark.parametrize("message", ["Channel does not exist: PJSIP/nosuch-00000099",
                                     "ExtraChannel does not exist: PJSIP/nosuch-00000099"])
def test_redirect_refused(message):
    def answer(a):
        return {"Response": "Error", "Message": message} if a.action == "Redirect" else OK

    d = Driver("e-ami-errors", answer=answer).run()
    assert d.progress() == [(503, True)]
    assert d.notes()["ami_result"] == "redirect-failed" and d.acked()
    assert [a["Action"] for a in d.actions()][-1] == "Redirect"


def test_setvar_refused_no_redirect():
    d = Driver("e-ami-errors", answer=lambda a: {"Response": "Error",
                                                 "Message": "No such channel"}).run()
    assert [a["Action"] for a in d.actions()] == ["Setvar"]
    assert d.progress() == [(503, True)]


def test_fallback_sets_plan_vars_and_releases_a_after_its_final_notify():
    d = Driver("b-target-busy-bridge-app", on_failure="fallback:vm,s,1").run(until=6.0)
    v = {a["Variable"]: a["Value"] for a in d.actions("Setvar")}
    assert v["XFER_RECONNECT"] == "fallback" and v["XFER_FALLBACK"] == "vm,s,1"
    assert d.actions("Hangup")[0]["Channel"] == d.who.a
    [final] = d.when(Publish, lambda o: o.progress.final)
    [hangup] = d.when(SendAction, lambda o: o.action == "Hangup")
    assert hangup - final == pytest.approx(S.final_notify_wait_s)


def test_redirect_success_but_nothing_moves():
    d = Driver("a-target-answers")
    d.run(until=7.0, inject=lambda t, ev: [] if t > 3.5 else [ev])
    assert d.progress() == [(503, True)]
    assert d.notes()["ami_result"] == "redirect-unconfirmed"


# ------------------------------------------------------------------ finding channels


def test_channels_not_known_asks_asterisk():
    """Controller started after the call: CoreShowChannels (events as recorded in
    a-target-answers), then Getvar CHANNEL(pjsip,call-id) on bridged PJSIP channels."""
    tr = transcript.ami("a-target-answers")
    who = cast(tr)
    listing = [m.headers for m in messages(tr) if m.event.startswith("CoreShowChannel")]
    f = Follower(S)
    (ask,) = f.job(job_for(who), "9-0", 10.0)
    assert ask.fields["Action"] == "CoreShowChannels"
    assert f.response(ask.action_id, {"Response": "Success"}, 10.0) == []
    out = []
    for ev in listing:
        out += f.event({**ev, "ActionID": ask.action_id}, 10.0)
    getvars = []
    while out and isinstance(out[-1], SendAction) and out[-1].action == "Getvar":
        g = out[-1]
        getvars.append(g.fields["Channel"])
        assert g.fields["Variable"] == "CHANNEL(pjsip,call-id)"
        value = who.call_id if g.fields["Channel"] == who.a else "other"
        out = f.response(g.action_id, {"Response": "Success", "Variable": "x", "Value": value},
                         10.0)
    assert who.a in getvars
    sv = [o for o in out if isinstance(o, SendAction)]
    assert sv[0].fields["Action"] == "Setvar" and sv[0].fields["Channel"] == who.p


def test_channels_not_found_503():
    f = Follower(S)
    who = cast(transcript.ami("a-target-answers"))
    (ask,) = f.job(job_for(who), "9-0", 10.0)
    f.response(ask.action_id, {"Response": "Success"}, 10.0)
    out = f.event({"Event": "CoreShowChannelsComplete", "ActionID": ask.action_id}, 10.0)
    pub = [o for o in out if isinstance(o, Publish)]
    assert [(p.progress.code, p.progress.detail) for p in pub] == [
        (503, "channels not found")]
    assert any(isinstance(o, Ack) for o in out)


def test_session_lost_mid_redirect():
    d = Driver("a-target-answers")
    held: list[SendAction] = []

    def answer(a):
        if a.action == "Redirect":
            held.append(a)
            return None
        return OK

    f = d.f
    for t, ev in d.events:
        if t > d.gate:
            break
        f.event(ev, t)
    out = f.job(d.job, "1-1", d.gate)
    while out:
        o = out.pop(0)
        if isinstance(o, SendAction) and o.action != "Redirect":
            out[:0] = f.response(o.action_id, OK, d.gate)
    res = f.session_restarted(d.gate + 1)
    assert [(o.progress.code, o.progress.detail) for o in res if isinstance(o, Publish)] == [
        (503, "Redirect: AMI session lost")]


# ------------------------------------------------------------------ manager.conf filter


def _filters() -> list:
    import re
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "config-examples/asterisk/manager.conf"
    pats = [line.split("=", 1)[1].strip() for line in conf.read_text().splitlines()
            if line.startswith("eventfilter")]
    assert pats
    return [re.compile(p, re.DOTALL) for p in pats]


@pytest.mark.parametrize("name,progress,result", [
    ("a-target-answers", [(180, False), (200, True)], "a-released"),
    ("b-target-busy-bridge-app", [(180, False), (486, True)], "reconnected"),
    ("d-recall-originate", [(180, False), (486, True)], None),
])
def test_example_event_filter_keeps_what_the_core_needs(name, progress, result):
    """The eventfilter lines of config-examples/asterisk/manager.conf, applied to the
    recorded event text: the core reaches the same outcome on what passes."""
    filters = _filters()
    d = Driver(name, release_after_s=0.5)
    kept = [(m.t, m.headers) for m in messages(d.tr) if m.side == "A" and m.event
            and any(f.search(m.raw.decode()) for f in filters)]
    assert len(kept) < len(d.events) / 2  # it does cut the noise
    d.events = kept
    d.run(until=5.0 if name.startswith("d-") else 1e9)
    assert d.progress() == progress
    if result:
        assert d.notes()["ami_result"] == result
    else:
        assert d.actions("Originate")


def test_late_action_requeued_after_session_loss():
    """The release Hangup of A was out when the session dropped: sent again on the next
    session, not failed (a Redirect in the same spot fails the job: see above)."""
    held: list[SendAction] = []

    def answer(a):
        if a.action == "Hangup":
            held.append(a)
            return None
        return OK

    d = Driver("a-target-answers", answer=answer, settings=S_NOW, release_after_s=0.1)
    d.f.response = _hold_hangup(d.f.response)  # type: ignore[method-assign]
    d.run(until=6.0)
    assert len(held) == 1 and not d.acked()
    assert d.f.session_restarted(6.1) == []
    (again,) = d.f.resume(6.2)
    assert again.fields["Channel"] == d.who.a and again.action_id != held[0].action_id
    out = d.f.response(again.action_id, {"Response": "Success"}, 6.3)
    assert any(isinstance(o, Ack) for o in out)


def _hold_hangup(response):
    def wrapped(action_id, resp, now):
        return [] if resp is None else response(action_id, resp, now)
    return wrapped


def test_stale_job_refused():
    who = cast(transcript.ami("a-target-answers"))
    f = Follower(S)
    out = f.job(job_for(who, created_at=0.0), "1-0", S.max_job_age_s + 1)
    assert [(o.progress.code, o.progress.final) for o in out if isinstance(o, Publish)] == [
        (503, True)]
    assert not [o for o in out if isinstance(o, SendAction)]
    assert any(isinstance(o, Ack) for o in out)


def test_rename_followed():
    f = Follower(S)
    f.event({"Event": "Newchannel", "Channel": "PJSIP/x-00000001", "Uniqueid": "1.1",
             "Linkedid": "1.1"}, 0.0)
    f.event({"Event": "Rename", "Channel": "PJSIP/x-00000001", "Newname": "PJSIP/y-00000002",
             "Uniqueid": "1.1"}, 0.0)
    assert f.channels.get("PJSIP/y-00000002").uid == "1.1"


# ------------------------------------------------------------------ reclaimed jobs


def test_reclaimed_jobs_resume_from_the_record():
    who = cast(transcript.ami("b-target-busy-bridge-app"))
    job = job_for(who)
    # Finished before the crash: acked, nothing sent.
    f = Follower(S)
    assert f.reclaimed(job, "1-0", 5.0, {"ami_p_uid": who.p_uid, "ami_result": "reconnected",
                                         "ami_final": "486"}) == [Ack("1-0")]
    # Answered, A not yet released: released now.
    f = Follower(S)
    out = f.reclaimed(job, "1-0", 5.0, {"ami_p_uid": who.p_uid, "ami_p_channel": who.p,
                                        "ami_a_uid": who.a_uid, "ami_a_channel": who.a,
                                        "ami_result": "target-answered", "ami_final": "200"})
    (hangup,) = [o for o in out if isinstance(o, SendAction)]
    assert hangup.fields["Channel"] == who.a and not [o for o in out if isinstance(o, Publish)]
    # Moved, target still ringing: followed again from the record's channels.
    d = Driver("b-target-busy-bridge-app")
    d._do(d.f.reclaimed(d.job, "1-0", 3.5, {
        "ami_p_uid": who.p_uid, "ami_p_channel": who.p, "ami_a_uid": who.a_uid,
        "ami_a_channel": who.a, "ami_result": "moved"}), 3.5)
    for t, ev in d.events:
        if t > 3.5:
            d._do(d.f.event(ev, t), t)
    assert d.progress() == [(486, True)]
    assert d.notes()["ami_result"] == "reconnected" and d.acked()


def test_a_job_read_again_while_followed_is_ignored():
    """The reader re-reads its pending entries after a failure: a job still being followed
    must neither be acked early nor replaced by a fresh Transfer."""
    who = cast(transcript.ami("b-target-busy-bridge-app"))
    job = job_for(who)
    f = Follower(S)
    f.job(job, "1-0", 1.0)
    running = f.transfers[job.xfer_id]
    for rec in (None, {"ami_p_uid": who.p_uid, "ami_p_channel": who.p, "ami_a_uid": who.a_uid,
                       "ami_a_channel": who.a, "ami_result": "moved"}):
        assert f.reclaimed(job, "1-0", 2.0, rec) == []
        assert f.transfers[job.xfer_id] is running


def _recorded_error(action: str) -> dict[str, str]:
    msgs = messages(transcript.ami("e-ami-errors"))
    for i, m in enumerate(msgs):
        if m.side == "S" and m.action == action:
            return next(r.headers for r in msgs[i + 1:] if r.action_id == m.action_id
                        and "Response" in r.headers)
    raise LookupError(action)


def test_bridge_refused_then_recall_refused():
    """AMI Bridge answered "Channel2 does not exist" (e-ami-errors): A is gone, so A is
    recalled; the Originate answered with an error (as a synchronous one was, recorded):
    recall-failed and P hung up, nothing left parked."""
    bridge_err = _recorded_error("Bridge")
    assert bridge_err["Message"].startswith("Channel2 does not exist")
    orig_err = {"Response": "Error", "Message": "Originate failed"}

    def answer(a):
        return {"Bridge": bridge_err, "Originate": orig_err}.get(a.action, OK)

    d = Driver("b-target-busy-ami-bridge", answer=answer).run(until=5.0)
    assert [a["Action"] for a in d.actions()][-3:] == ["Bridge", "Originate", "Hangup"]
    assert d.actions("Hangup")[0]["Channel"] == d.who.p
    assert d.notes()["ami_result"] == "recall-failed" and d.acked()
