"""The dialog index against a real redis-server and a real 3-master Redis Cluster (the
`raw`/`dialogs` fixtures run each behaviour test on both): each SIP event one round trip,
the Lua agreeing with kemi.core.dialogs' table cell by cell, every key with a TTL, and RFC 3891
matching from the middle (either side's tag may be the recipient's)."""

from __future__ import annotations

import pytest
import redis

from kemi.core.dialogs import TRANSITIONS, Dialog, DialogEvent, DialogState, response_event, step
from kemi.core.replaces import ApprovedRefer, InviteReplacesOk, check_invite_replaces
from kemi.core.sip.headers import parse_refer_to
from kemi.storage.dialogs import DialogStore
from kemi.storage.resp import RespClient
from kemi.storage.transfers import call_tag
from tests.support.packed import packed_client
from tests.support.redis_cluster import all_keys, redis_cluster  # noqa: F401 - a fixture

NOW = 1_700_000_000.0
CID = "consult-7f3a@pc33.atlanta.example.com"
ANDREW, MARSHA = "andrew@example.com", "marsha@example.com"
E, S = DialogEvent, DialogState


class Counting:
    """A client wrapper that counts round trips."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[str] = []

    def call(self, *args):
        self.calls.append(str(args[0]))
        fn = getattr(self.inner, "call", None) or self.inner.execute_command
        return fn(*args)


@pytest.fixture(params=["single", "packed", "cluster"])
def raw(request):
    """A client of a fresh single Redis (direct, or packed as Kamailio's ndb_redis carries
    it), or of the module's (flushed) Redis Cluster."""
    if request.param == "single":
        c = RespClient(request.getfixturevalue("redis_server").url, timeout_s=5)
    elif request.param == "packed":
        c = packed_client(request.getfixturevalue("redis_server").url)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        c = RespClient(cluster.url, timeout_s=5)
    yield c
    c.close()


@pytest.fixture
def dialogs(raw):
    return DialogStore(raw)


def invite(ds: DialogStore, call_id=CID, tag="a1", now=NOW, **kw):
    return ds.record(E.INVITE, call_id, tag, now, caller=ANDREW, callee=MARSHA, node="k1", **kw)


def respond(ds: DialogStore, event, to_tag, call_id=CID, tag="a1", now=NOW + 1):
    return ds.record(event, call_id, tag, now, callee_tag=to_tag, caller=ANDREW, callee=MARSHA)


def ttls(raw: RespClient) -> dict[str, int]:
    return {k: raw.call("TTL", k) for k in all_keys(raw)}


# ----------------------------------------------------------------- events


def test_initial_invite_is_trying_with_no_callee_tag(dialogs, raw):
    assert invite(dialogs) is S.TRYING
    d = dialogs.get(CID, "a1")
    assert d == Dialog(CID, "a1", "", ANDREW, MARSHA, S.TRYING, NOW, NOW, node="k1")
    assert list(ttls(raw)) == [f"referee:{{{CID}}}:dlg:a1"]
    assert 595 <= raw.call("TTL", dialogs.dialog_key(CID, "a1")) <= 600  # setup TTL


def test_a_trying_record_is_no_dialog_and_matches_no_replaces(dialogs):
    invite(dialogs)
    assert dialogs.find(CID, "a1", "") == []
    assert dialogs.find(CID, "a1", "m1") == []


def test_tagged_provisional_makes_it_early_with_the_callee_tag(dialogs):
    invite(dialogs)
    assert respond(dialogs, E.PROVISIONAL, "m1") is S.EARLY
    d = dialogs.get(CID, "a1")
    assert (d.state, d.callee_tag, d.created_at, d.updated_at) == (S.EARLY, "m1", NOW, NOW + 1)


def test_2xx_confirms_and_gets_the_open_ttl(dialogs, raw):
    invite(dialogs)
    respond(dialogs, E.PROVISIONAL, "m1")
    assert respond(dialogs, E.ANSWERED, "m1", now=NOW + 5) is S.CONFIRMED
    d = dialogs.get(CID, "a1")
    assert (d.state, d.callee_tag, d.ended_at) == (S.CONFIRMED, "m1", None)
    assert 86390 <= raw.call("TTL", dialogs.dialog_key(CID, "a1")) <= 86400


def test_a_response_creates_the_record_when_the_invite_was_not_recorded(dialogs):
    assert respond(dialogs, E.ANSWERED, "m1") is S.CONFIRMED
    d = dialogs.get(CID, "a1")
    assert (d.caller, d.callee, d.caller_tag, d.callee_tag) == (ANDREW, MARSHA, "a1", "m1")


def test_final_failure_ends_it_kept_for_the_ended_ttl(dialogs, raw):
    invite(dialogs)
    respond(dialogs, E.PROVISIONAL, "m1")
    assert respond(dialogs, E.FAILED, "m1", now=NOW + 9) is S.TERMINATED
    d = dialogs.get(CID, "a1")
    assert (d.state, d.ended_at, d.ended_by) == (S.TERMINATED, NOW + 9, "failure")
    assert 295 <= raw.call("TTL", dialogs.dialog_key(CID, "a1")) <= 300


def test_a_failure_with_no_record_writes_nothing(dialogs, raw):
    assert respond(dialogs, E.FAILED, "m1") is None
    assert all_keys(raw) == []


@pytest.mark.parametrize(
    "from_tag, to_tag, by", [("a1", "m1", "bye-caller"), ("m1", "a1", "bye-callee")]
)
def test_bye_from_either_party_ends_it_naming_who(dialogs, raw, from_tag, to_tag, by):
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    state = dialogs.record(E.BYE, CID, from_tag, NOW + 60, callee_tag=to_tag)
    assert state is S.TERMINATED
    d = dialogs.get(CID, "a1")
    assert (d.state, d.ended_at, d.ended_by) == (S.TERMINATED, NOW + 60, by)
    assert list(ttls(raw).values()) == [pytest.approx(300, abs=5)]


def test_bye_matching_only_one_tag_touches_nothing(dialogs, raw):
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    for from_tag, to_tag in (("a1", "x9"), ("x9", "a1"), ("m1", "x9"), ("a1", "")):
        assert dialogs.record(E.BYE, CID, from_tag, NOW + 60, callee_tag=to_tag) is None
    assert dialogs.get(CID, "a1").state is S.CONFIRMED
    assert len(all_keys(raw)) == 1


def test_refresh_renews_an_open_dialog_ttl(dialogs, raw):
    dialogs = DialogStore(raw, open_ttl_s=100)
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    key = dialogs.dialog_key(CID, "a1")
    raw.call("EXPIRE", key, 5)
    assert dialogs.record(E.REFRESH, CID, "m1", NOW + 50, callee_tag="a1") is S.CONFIRMED
    assert 95 <= raw.call("TTL", key) <= 100
    assert dialogs.get(CID, "a1").updated_at == NOW + 50


def test_ignored_events_renew_an_open_dialog_but_never_an_ended_one(dialogs, raw):
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    key = dialogs.dialog_key(CID, "a1")
    raw.call("EXPIRE", key, 5)
    assert respond(dialogs, E.ANSWERED, "m1") is S.CONFIRMED  # a retransmitted 2xx
    assert raw.call("TTL", key) > 86000
    dialogs.record(E.BYE, CID, "a1", NOW + 60, callee_tag="m1")
    raw.call("EXPIRE", key, 5)
    assert respond(dialogs, E.ANSWERED, "m1") is S.TERMINATED  # late: no effect
    assert dialogs.record(E.BYE, CID, "m1", NOW + 61, callee_tag="a1") is S.TERMINATED
    assert raw.call("TTL", key) <= 5
    assert dialogs.get(CID, "a1").ended_at == NOW + 60


def test_a_retry_after_407_starts_the_record_over(dialogs):
    invite(dialogs)
    assert respond(dialogs, E.FAILED, "proxy-tag") is S.TERMINATED
    assert invite(dialogs, now=NOW + 2) is S.TRYING
    d = dialogs.get(CID, "a1")
    assert (d.state, d.callee_tag, d.ended_at, d.ended_by, d.created_at) == (
        S.TRYING, "", None, "", NOW + 2
    )


def test_an_ended_dialog_restarted_by_a_new_invite_never_matches_again(dialogs):
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    dialogs.record(E.BYE, CID, "a1", NOW + 60, callee_tag="m1")
    assert len(dialogs.find(CID, "m1", "a1")) == 1  # ended: still found, for a 603
    invite(dialogs, now=NOW + 70)
    assert dialogs.find(CID, "m1", "a1") == []  # 481 now, never a live match


def test_a_spoofed_initial_invite_does_not_reset_a_live_dialog(dialogs):
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    before = dialogs.get(CID, "a1")
    spoof = dialogs.record(E.INVITE, CID, "a1", NOW + 9, caller="mallory@evil.example",
                           callee=MARSHA, node="k2")
    assert spoof is S.CONFIRMED
    assert dialogs.get(CID, "a1") == before


def test_forking_keeps_the_newest_early_tag_then_the_confirmed_one(dialogs):
    invite(dialogs)
    respond(dialogs, E.PROVISIONAL, "fork1")
    respond(dialogs, E.PROVISIONAL, "fork2")
    assert dialogs.get(CID, "a1").callee_tag == "fork2"
    assert dialogs.find(CID, "fork1", "a1") == []  # lost: an earlier fork's early dialog
    assert respond(dialogs, E.ANSWERED, "fork1") is S.CONFIRMED
    assert dialogs.get(CID, "a1").callee_tag == "fork1"
    # Another fork's 2xx is not indexed, and the caller's BYE for it ends nothing.
    assert respond(dialogs, E.ANSWERED, "fork2") is S.CONFIRMED
    assert dialogs.get(CID, "a1").callee_tag == "fork1"
    assert dialogs.record(E.BYE, CID, "a1", NOW + 2, callee_tag="fork2") is None
    assert dialogs.get(CID, "a1").state is S.CONFIRMED


def test_events_lacking_a_tag_they_need_cost_no_round_trip(raw):
    counted = Counting(raw)
    ds = DialogStore(counted)
    assert ds.record(E.PROVISIONAL, CID, "a1", NOW) is None
    assert ds.record(E.ANSWERED, CID, "a1", NOW, callee_tag="") is None
    assert ds.record(E.BYE, CID, "a1", NOW) is None
    assert ds.record(E.INVITE, CID, "", NOW) is None
    assert ds.record(E.INVITE, "", "a1", NOW) is None
    assert ds.find(CID, "a1", "") == []
    assert counted.calls == []


def test_lua_agrees_with_the_table_for_every_cell(dialogs, raw):
    """Force each state into a record and apply each event: Lua == kemi.core.dialogs.step."""
    for n, ((state, event), _cell) in enumerate(sorted(TRANSITIONS.items()), 1):
        cid = f"cell-{n}"
        if state is not S.NEW:
            invite(dialogs, call_id=cid)
            raw.call("HSET", dialogs.dialog_key(cid, "a1"), "state", state.value,
                     "callee_tag", "m1")
        if event in (E.BYE, E.REFRESH):
            got = dialogs.record(event, cid, "m1", NOW + 1, callee_tag="a1")
        else:
            got = respond(dialogs, event, "m1", call_id=cid)
        want = step(state, event)
        assert (got or S.NEW) is want, (state, event)
        d = dialogs.get(cid, "a1")
        assert (d.state if d else S.NEW) is want, (state, event)
        if want is S.TERMINATED and state is not S.TERMINATED:
            assert d.ended_at == NOW + 1


def test_every_key_has_a_ttl_fitting_its_state(dialogs, raw):
    ds = DialogStore(raw, setup_ttl_s=111, open_ttl_s=2222, ended_ttl_s=33)
    invite(ds, tag="t")
    invite(ds, tag="e")
    respond(ds, E.PROVISIONAL, "m", tag="e")
    invite(ds, tag="c")
    respond(ds, E.ANSWERED, "m", tag="c")
    invite(ds, tag="x")
    respond(ds, E.FAILED, "m", tag="x")
    got = {k.rsplit(":", 1)[1]: t for k, t in ttls(raw).items()}
    assert got == {"t": 111, "e": 111, "c": 2222, "x": 33}


# ----------------------------------------------------------------- find


@pytest.fixture
def consultation(dialogs):
    """Andrew called Marsha: Andrew's tag a1, Marsha's m1."""
    invite(dialogs)
    respond(dialogs, E.ANSWERED, "m1")
    return dialogs.get(CID, "a1")


def test_find_matches_the_recipient_tag_against_either_side(dialogs, consultation):
    # Replacing at Marsha: to-tag m1 (hers), from-tag a1; at Andrew: the other way round.
    assert dialogs.find(CID, "m1", "a1") == [consultation]
    assert dialogs.find(CID, "a1", "m1") == [consultation]


@pytest.mark.parametrize(
    "call_id, a, b", [(CID, "m1", "zz"), (CID, "m1", "m1"), ("other@h", "m1", "a1")]
)
def test_find_needs_the_call_id_and_both_tags(dialogs, consultation, call_id, a, b):
    assert dialogs.find(call_id, a, b) == []


def test_find_returns_every_match_so_several_can_be_told_apart(dialogs, consultation):
    # Glare (or forgery): Marsha's INVITE with tag m1 got Andrew's answer with tag a1.
    dialogs.record(E.INVITE, CID, "m1", NOW, caller=MARSHA, callee=ANDREW)
    dialogs.record(E.ANSWERED, CID, "m1", NOW + 1, callee_tag="a1")
    found = dialogs.find(CID, "m1", "a1")
    assert sorted((d.caller_tag, d.callee_tag) for d in found) == [("a1", "m1"), ("m1", "a1")]


def test_find_returns_ended_dialogs(dialogs, consultation):
    dialogs.record(E.BYE, CID, "m1", NOW + 9, callee_tag="a1")
    (d,) = dialogs.find(CID, "m1", "a1")
    assert (d.state, d.ended_by) == (S.TERMINATED, "bye-callee")


@pytest.mark.parametrize("call_id", ["{abc}@host", "a}b{c", "sp ace@h", "ümlaut@h"])
def test_any_call_id_is_hash_tagged_and_round_trips(dialogs, call_id):
    tag = call_tag(call_id)
    assert dialogs.dialog_key(call_id, "a1") == f"referee:{{{tag}}}:dlg:a1"
    invite(dialogs, call_id=call_id)
    respond(dialogs, E.ANSWERED, "m1", call_id=call_id)
    (d,) = dialogs.find(call_id, "m1", "a1")
    assert d.call_id == call_id


def test_a_bad_prefix_or_ttl_is_refused():
    with pytest.raises(ValueError):
        DialogStore(object(), prefix="a{b}")
    with pytest.raises(ValueError):
        DialogStore(object(), ended_ttl_s=0)


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["resp", "redis-py"])
def test_one_round_trip_per_event_find_and_get(redis_server, kind):
    inner = (RespClient(redis_server.url, timeout_s=5) if kind == "resp"
             else redis.Redis(port=redis_server.port))
    counted = Counting(inner)
    ds = DialogStore(counted)
    # First use of each script after a (re)start: NOSCRIPT, then EVAL, counted.
    invite(ds)
    assert counted.calls == ["EVALSHA", "EVAL"] and ds.noscript_fallbacks == 1
    counted.calls.clear()
    ds.find(CID, "m1", "a1")
    assert counted.calls == ["EVALSHA", "EVAL"] and ds.noscript_fallbacks == 2
    for fn in (
        lambda: respond(ds, E.PROVISIONAL, "m1"),
        lambda: respond(ds, E.ANSWERED, "m1"),
        lambda: ds.record(E.REFRESH, CID, "m1", NOW + 2, callee_tag="a1"),
        lambda: ds.get(CID, "a1"),
        lambda: ds.find(CID, "m1", "a1"),
        lambda: ds.record(E.BYE, CID, "m1", NOW + 3, callee_tag="a1"),
        lambda: respond(ds, E.FAILED, "m1"),
        lambda: invite(ds, tag="b2"),
    ):
        counted.calls.clear()
        fn()
        assert len(counted.calls) == 1, counted.calls
    assert ds.noscript_fallbacks == 2
    assert ds.get(CID, "a1").ended_by == "bye-callee"


# ----------------------------------------------------------------- sans-IO helpers


@pytest.mark.parametrize(
    "code, to_tag, event",
    [(100, "", None), (100, "m1", None), (180, "", None), (180, "m1", E.PROVISIONAL),
     (183, "m1", E.PROVISIONAL), (200, "m1", E.ANSWERED), (407, "p1", E.FAILED),
     (487, "m1", E.FAILED), (603, None, E.FAILED)],
)
def test_response_event(code, to_tag, event):
    assert response_event(code, to_tag) is event


def test_matching_needs_the_callee_tag():
    d = Dialog(CID, "a1", "", ANDREW, MARSHA, S.TRYING, NOW, NOW)
    assert not d.matches(CID, "a1", "")


# ----------------------------------------------------------------- the attended flow


def test_an_attended_transfer_checked_against_the_shared_index(raw):
    """Marsha's INVITE from McKenzie, handled by node k2, is judged on the dialog node k1
    indexed: the transferee of the approved REFER passes, a copycat does not."""
    k1 = DialogStore(RespClient(raw.url, timeout_s=5))
    k2 = DialogStore(RespClient(raw.url, timeout_s=5))
    invite(k1)
    respond(k1, E.ANSWERED, "m1")
    refer_to = parse_refer_to(
        f"<sip:marsha@example.com?Replaces={CID.replace('@', '%40')}%3Bto-tag%3Dm1"
        "%3Bfrom-tag%3Da1>"
    )
    r = refer_to.replaces
    header = f"{r.call_id};to-tag={r.to_tag};from-tag={r.from_tag}"
    found = k2.find(r.call_id, r.to_tag, r.from_tag)
    approved = [ApprovedRefer("mckenzie@example.com", CID, "orig@host", "2")]
    ok = check_invite_replaces([header], "INVITE", found, "mckenzie@example.com", approved)
    assert isinstance(ok, InviteReplacesOk)
    assert ok.dialog.node == "k1" and ok.transfer == approved[0] and not ok.by_party
    copycat = check_invite_replaces([header], "INVITE", found, "eve@example.com", approved)
    assert copycat.code == 403


def test_where_each_party_sends_from_is_kept(dialogs):
    """Issue 9 item 5: the caller's source from its INVITE, the callee's from its tagged
    responses (the newest: forking), so a forged From cannot pass for a party."""
    invite(dialogs, source="192.0.2.1:5060")
    dialogs.record(E.PROVISIONAL, CID, "a1", NOW + 1, callee_tag="m1", source="192.0.2.2:5062")
    dialogs.record(E.ANSWERED, CID, "a1", NOW + 2, callee_tag="m1", source="192.0.2.2:5060")
    d = dialogs.get(CID, "a1")
    assert (d.caller_src, d.callee_src) == ("192.0.2.1:5060", "192.0.2.2:5060")
    dialogs.record(E.BYE, CID, "m1", NOW + 3, callee_tag="a1", source="203.0.113.9:1")
    assert dialogs.get(CID, "a1").caller_src == "192.0.2.1:5060"  # a BYE changes no source
