"""The refer subscription's edge cases through a real Kamailio with both example configs:
no subscription (Refer-Sub: false), a transferee that never NOTIFYs, a transferor that
hangs up right after the 202."""

from __future__ import annotations

import pytest

from kemi.cli.demo import phones as scenarios
from tests.e2e.conftest import make_lab
from tests.e2e.parties import Parties, finish, received, wait_for

# These run a third time on a Redis Cluster (tests/e2e/conftest.py): the sweep's
# pipelines and the transferor's BYE recorded across the Cluster's slots.
LAB_ON_CLUSTER = {
    "test_a_202_is_noted_at_once_and_recorded_by_the_sweep_with_its_own_time",
    "test_transferor_bye_right_after_202_still_records_the_outcome",
}


def events(lab, record) -> list[tuple[str, str, str, str]]:
    """(event, old, new, outcome) of each line of a transfer's log, in order."""
    out = []
    for line in lab.store.log(record["call_id"], record["refer_id"]):
        _ts, event, old, new, outcome, _detail = line.split("|", 5)
        out.append((event, old, new, outcome))
    return out


def test_refer_sub_false_means_no_notify_and_the_invite_2xx_closes_it_succeeded(lab):
    an, _, ma = Parties(lab).run(
        scenarios.Andrew(extra_refer_headers=["Refer-Sub: false"], follow_notifies=False),
        scenarios.McKenzie(echo_nosub=True, notify=False, bye_after_2xx=True),
        scenarios.Marsha(),
    )
    [accepted] = received(an, "REFER", status=202)
    assert accepted.header("Refer-Sub") == "false"
    assert received(an, "NOTIFY") == []
    [invite] = received(ma, "INVITE")
    assert invite.header("Referred-By") == "<sip:andrew@127.0.0.1>"
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    assert record["refer_sub"] == "false"
    assert record["invite_reply"] == "200"
    assert events(lab, record) == [
        ("refer", "new", "refer-seen", "applied"),
        ("refer-accepted-nosub", "refer-seen", "accepted-nosub", "applied"),
        ("bye-transferor", "accepted-nosub", "accepted-nosub", "ignored"),
        ("invite", "accepted-nosub", "calling-nosub", "applied"),
        ("invite-2xx", "calling-nosub", "succeeded", "applied"),
    ]


MAX_OPEN_S = 2
SWEEP_S = 1  # kemi.cli.demo.kamailio_node.Kamailio.sweep_interval


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def short_lived_lab(request, tmp_path, redis_server):
    """A proxy whose transfers may stay open only MAX_OPEN_S seconds.

    The tenant's subscription expiry cannot go below 10 s (`referee tenant set default
    --expiry` refuses less), so the operator's cap in referee.toml makes it short.
    """
    lab = make_lab(tmp_path, redis_server, request.param)
    conf = lab.kamailio.referee_config
    conf.write_text(conf.read_text() + f"[transfer]\nmax_open_s = {MAX_OPEN_S}\n")
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    assert not lab.kamailio.python_errors(), "\n".join(lab.kamailio.python_errors())


def test_transferee_that_never_notifies_is_closed_expired_by_the_sweep(short_lived_lab):
    lab = short_lived_lab
    # Andrew stays on the call past the expiry, waiting for NOTIFYs that never come.
    an, mk, _ = Parties(lab).start(
        scenarios.Andrew(follow_notifies=False, hold_ms=(MAX_OPEN_S + SWEEP_S + 1) * 1000),
        scenarios.McKenzie(notify=False, call_target=False),
    )
    finished = wait_for(lab.finished, MAX_OPEN_S + 2 * SWEEP_S + 2)
    assert an.proc.poll() is None, "Andrew left before the expiry"
    finish(lab, an, mk)
    assert received(an, "NOTIFY") == []
    [record] = finished
    assert record["state"] == "expired"
    assert record["last_event"] == "expiry"
    open_for = float(record["final_at"]) - float(record["created_at"])
    assert MAX_OPEN_S <= open_for <= MAX_OPEN_S + 2 * SWEEP_S + 0.5
    assert events(lab, record) == [
        ("refer", "new", "refer-seen", "applied"),
        ("refer-accepted", "refer-seen", "accepted", "applied"),
        ("expiry", "accepted", "expired", "applied"),
        ("bye-transferor", "expired", "expired", "ignored"),  # Andrew gave up afterwards
    ]
    [stored] = lab.records()
    assert stored["state"] == "expired"


def test_transferor_bye_right_after_202_still_records_the_outcome(lab):
    an, mk, ma = Parties(lab).run(
        scenarios.Andrew(
            bye_right_after_202=True, answer_notify_481_after_bye=True, follow_notifies=False
        ),
        scenarios.McKenzie(bye_after_2xx=True),
        scenarios.Marsha(),
    )
    # McKenzie's NOTIFY still went through the proxy to Andrew, whose 481 came back.
    [notify] = received(an, "NOTIFY")
    assert notify.body == "SIP/2.0 100 Trying"
    assert len(received(mk, "NOTIFY", status=481)) == 1
    assert len(received(ma, "INVITE")) == 1
    [record] = lab.finished()
    assert record["state"] == "succeeded"
    assert record["invite_reply"] == "200"
    # After Andrew's BYE nothing but the INVITE's 2xx changes the state.  McKenzie's
    # NOTIFY, sent within order_grace_ms of her 202, is held for its turn and recorded
    # once it has left, and Andrew's 481 is stored by the sweep (no reply route waits for
    # Redis): both may land before or after the INVITE's events.
    # The sweep stores the 481 as a note (what Andrew answered to which NOTIFY) and then
    # as the notify-481 event, in two trips: wait for the event, not the note's field.
    def steps_now() -> list[tuple]:
        return [e for e in events(lab, record) if e[0] != "note"]

    assert wait_for(lambda: any(e[0] == "notify-481" for e in steps_now()), 5), steps_now()
    assert lab.store.get(record["call_id"], record["refer_id"])["notify_reply"] == "481"
    steps = steps_now()
    assert steps[:3] == [
        ("refer", "new", "refer-seen", "applied"),
        ("refer-accepted", "refer-seen", "accepted", "applied"),
        ("bye-transferor", "accepted", "transferor-gone", "applied"),
    ]
    assert sorted(steps[3:]) == sorted([
        ("notify-trying", "transferor-gone", "transferor-gone", "ignored"),
        ("invite", "transferor-gone", "transferor-gone", "ignored"),
        ("invite-2xx", "transferor-gone", "succeeded", "applied"),
        ("notify-481", *next(e[1:3] for e in steps if e[0] == "notify-481"), "ignored"),
    ])
    assert [e for e in steps if e[3] == "applied"][-1][0] == "invite-2xx"


def test_a_202_is_noted_at_once_and_recorded_by_the_sweep_with_its_own_time(lab):
    """The REFER's 2xx takes no Redis trip: its reply route notes it in shared memory
    (htable referee_ans, kemi.kamailio.answers); with no NOTIFY to carry it, the sweep
    records it a second or two later, stamped with the time the 202 went through, and
    the note is gone.  (Who writes the note in kamailio-native.cfg: the next test.)"""
    an, mk, _ = Parties(lab).start(
        scenarios.Andrew(follow_notifies=False, hold_ms=4000),
        scenarios.McKenzie(notify=False, call_target=False),
    )
    noted = wait_for(lambda: "202 " in lab.kamailio.kamcmd("htable.dump", "referee_ans"), 3)
    assert noted, "the 202 was not noted in referee_ans"
    [live] = wait_for(lambda: [r for r in lab.records() if r.get("refer_reply")], 5)
    finish(lab, an, mk)
    assert live["refer_reply"] == "202"
    stamps = {e: float(ts) for ts, e, *_ in (
        line.split("|", 5) for line in lab.store.log(live["call_id"], live["refer_id"]))}
    assert 0 <= stamps["refer-accepted"] - stamps["refer"] < 0.5  # the 202's time, not the sweep's
    assert "202 " not in lab.kamailio.kamcmd("htable.dump", "referee_ans")


def patched_cfg(tmp_path, name: str, old: str, new: str):
    """A copy of the example cfgs with `old` (found exactly once) in `name` made `new`."""
    import shutil

    from kemi.cli.demo.kamailio_node import CONFIGS

    copy = tmp_path / "cfg"
    shutil.copytree(CONFIGS, copy)
    cfg = copy / name
    text = cfg.read_text()
    assert text.count(old) == 1, f"{name} changed: update this test"
    cfg.write_text(text.replace(old, new))
    return cfg


def test_in_the_native_cfg_a_plain_202_never_enters_python(tmp_path, redis_server):
    """kamailio-native.cfg notes a REFER's plain 2xx itself.  Run here from a copy whose
    python_exec("referee_reply") also logs each reply it is called for: the NOTIFYs'
    200s are among them (the probe works), the REFER's 202 is not, and the transfer is
    recorded accepted all the same."""
    call = '\tpython_exec("referee_reply");\n}'
    native = patched_cfg(tmp_path, "kamailio-native.cfg", call,
                         '\txlog("L_NOTICE", "TEST python reply $rm $rs\\n");\n' + call)
    lab = make_lab(tmp_path, redis_server, str(native))
    lab.kamailio.start()
    try:
        Parties(lab).run(scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
        [record] = lab.finished()
        assert record["state"] == "succeeded" and record["refer_reply"] == "202"
        assert "refer-accepted" in [e[0] for e in events(lab, record)]
        log = lab.kamailio.log()
        assert "TEST python reply NOTIFY 200" in log
        assert "TEST python reply REFER" not in log
    finally:
        lab.kamailio.stop()


def test_a_cfg_written_before_referee_ans_still_records_the_202_in_order(
        tmp_path, redis_server):
    """An operator's cfg from before the noted 2xx (no `referee_ans` htable): referee says
    once per process what is missing, does not touch the table again (Kamailio would log
    an ERROR for each use), and records each REFER 2xx the older way (order state and
    deferred accepts written in the reply route); the transfer is recorded accepted, the
    accept before the first NOTIFY's event.  Only kamailio.cfg can be run so: the native
    cfg's reply route writes referee_ans itself, and Kamailio refuses to start a cfg that
    names an undeclared htable."""
    cfg = patched_cfg(tmp_path, "kamailio.cfg",
                      'modparam("htable", "htable", "referee_ans=>size=8;autoexpire=600;")\n',
                      "")
    lab = make_lab(tmp_path, redis_server, str(cfg))
    lab.kamailio.start()
    try:
        Parties(lab).run(scenarios.Andrew(), scenarios.McKenzie(), scenarios.Marsha())
        [record] = lab.finished()
        assert record["state"] == "succeeded" and record["refer_reply"] == "202"
        names = [e[0] for e in events(lab, record)]
        assert "refer-accepted" in names
        assert names.index("refer-accepted") < names.index("notify-trying")
        log = lab.kamailio.log()
        assert "htable 'referee_ans' unusable (not declared)" in log
        # probed once per process, then left alone: no htable ERROR for each message
        assert "No such htable: referee_ans" not in log
        assert "cannot get hash table [referee_ans]" not in log  # the sweep's iterator
        assert lab.kamailio.python_errors() == []
    finally:
        lab.kamailio.stop()
