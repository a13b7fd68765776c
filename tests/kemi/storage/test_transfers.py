"""The transfer store against a real redis-server and a real 3-master Redis Cluster (the
`raw`/`store` fixtures run each behaviour test on each, and on a single Redis through the
packed runner Kamailio's ndb_redis path uses): one round trip per event on a
single Redis, atomic under concurrency, the Lua agreeing with kemi.core.state cell by cell,
every key with a TTL.  Cluster-only behaviour (routing, MOVED, crash between the steps)
is in test_cluster.py."""

from __future__ import annotations

import multiprocessing

import pytest
import redis

from kemi.core.state import FINAL, Event, State, step
from kemi.storage.packed import PackedClient
from kemi.storage.resp import RedisReplyError, RespClient
from kemi.storage.transfers import SEP, ApplyResult, CreateResult, TransferStore, call_tag
from tests.support.packed import packed_client
from tests.support.redis_cluster import all_keys, redis_cluster  # noqa: F401 - a fixture

NOW = 1_700_000_000.0
CID = "a84b4c76e66710@pc33.atlanta.example.com"


class Counting:
    """A client wrapper that counts round trips: a call is one, a pipeline is one (its
    commands are sent before any reply is read), recorded as "PIPELINE:CMD,CMD"."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[str] = []
        self.cluster = getattr(inner, "cluster", False) is True

    def call(self, *args):
        self.calls.append(str(args[0]))
        fn = getattr(self.inner, "call", None) or self.inner.execute_command
        return fn(*args)

    def pipeline(self, commands):
        self.calls.append("PIPELINE:" + ",".join(str(c[0]) for c in commands))
        if hasattr(self.inner, "call"):
            return self.inner.pipeline(commands)
        p = self.inner.pipeline(transaction=False)
        for c in commands:
            p.execute_command(*c)
        return p.execute(raise_on_error=False)


@pytest.fixture(params=["single", "packed", "cluster"])
def raw(request):
    """A client of a fresh single Redis (direct, or packed as Kamailio's ndb_redis carries
    it: kemi.storage.packed), or of the module's (flushed) Redis Cluster."""
    if request.param == "single":
        c = RespClient(request.getfixturevalue("redis_server").url, timeout_s=5)
    elif request.param == "packed":
        c = packed_client(request.getfixturevalue("redis_server").url)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        c = RespClient(cluster.url, timeout_s=5)
        assert c.cluster
    yield c
    c.close()


@pytest.fixture
def store(raw):
    return TransferStore(raw)


def _create(store: TransferStore, call_id=CID, refer_id="1", **kw) -> CreateResult:
    args = dict(
        fields={"refer_to": "sip:marsha@example.com"}, now=NOW, deadline=NOW + 600,
        transferor="andrew@example.com", transferee="mckenzie@example.com",
        target="marsha@example.com",
    )
    args.update(kw)
    return store.create(call_id, refer_id, **args)


def assert_every_key_has_ttl(raw: RespClient) -> list[str]:
    keys = all_keys(raw)
    for key in keys:
        assert raw.call("TTL", key) > 0, key
    return keys


# ----------------------------------------------------------------- basics


def test_create_and_apply(store, raw):
    res = _create(store)
    assert res == CreateResult(True, "created", 1, 1)
    rec = store.get(CID, "1")
    assert rec is not None
    assert rec["state"] == "refer-seen" and rec["refer_to"] == "sip:marsha@example.com"
    assert rec["call_id"] == CID and rec["transferee"] == "mckenzie@example.com"
    assert rec["created_at"] == f"{NOW:.3f}" and rec["events"] == "1"

    r = store.apply(CID, "1", Event.REFER_ACCEPTED, NOW + 1, {"accept_code": "202"})
    assert r == ApplyResult("1", State.REFER_SEEN, State.ACCEPTED, "applied", False)
    r = store.apply(CID, 1, Event.NOTIFY_TRYING, NOW + 2, detail="SIP/2.0 100 Trying")
    assert (r.new, r.outcome) == (State.TRYING, "applied")
    rec = store.get(CID, "1")
    assert rec["state"] == "trying" and rec["accept_code"] == "202" and rec["events"] == "3"
    assert raw.call("HGETALL", store.index_key(CID)) == [b"1", b"trying"]
    log = [line.split("|", 5) for line in store.log(CID, "1")]
    assert log == [
        [f"{NOW:.3f}", "refer", "new", "refer-seen", "applied", ""],
        [f"{NOW + 1:.3f}", "refer-accepted", "refer-seen", "accepted", "applied", ""],
        [f"{NOW + 2:.3f}", "notify-trying", "accepted", "trying", "applied",
         "SIP/2.0 100 Trying"],
    ]
    assert store.find_for_invite("mckenzie@example.com") == [(CID, "1", "marsha@example.com")]
    assert_every_key_has_ttl(raw)


@pytest.mark.parametrize("event, state", [(Event.REFER_ACCEPTED, "accepted"),
                                          (Event.REFER_ACCEPTED_NOSUB, "accepted-nosub")])
def test_a_create_can_apply_the_accept_in_the_same_script(store, raw, event, state):
    """An anchored REFER, answered 202 by referee itself: created and accepted in one
    round trip, logged as the two steps applying them one by one would log."""
    counting = Counting(raw)
    one = TransferStore(counting)
    _create(one, call_id="warm")  # the scripts loaded
    counting.calls.clear()
    res = _create(one, fields={"refer_to": "sip:marsha@example.com", "refer_reply": "202"},
                  then=event, then_detail="202 by referee (anchored)")
    assert res == CreateResult(True, "created", 1, 2)
    # one script run (a Cluster pipelines its shared keys per node around it, as for any
    # create: kemi.storage.transfers, the Cluster path)
    assert [c for c in counting.calls if not c.startswith("PIPELINE:")] == ["EVALSHA"]
    assert raw.cluster or counting.calls == ["EVALSHA"]
    rec = store.get(CID, "1")
    assert rec["state"] == state and rec["events"] == "2" and rec["last_event"] == event.value
    assert rec["refer_reply"] == "202"
    assert raw.call("HGETALL", store.index_key(CID)) == [b"1", state.encode()]
    log = [line.split("|", 5) for line in store.log(CID, "1")]
    assert log == [
        [f"{NOW:.3f}", "refer", "new", "refer-seen", "applied", ""],
        [f"{NOW:.3f}", event.value, "refer-seen", state, "applied",
         "202 by referee (anchored)"],
    ]
    # what comes next applies to it as to any accepted transfer
    r = store.apply(CID, "1", Event.NOTIFY_TRYING, NOW + 1)
    assert r.old == State(state) and r.outcome == step(State(state), Event.NOTIFY_TRYING).outcome
    assert_every_key_has_ttl(raw)


def test_a_duplicate_or_refused_create_applies_nothing_after_it(store, raw):
    _create(store)
    res = _create(store, then=Event.REFER_ACCEPTED)  # a retransmission: recorded already
    assert res.reason == "duplicate"
    assert store.get(CID, "1")["state"] == "refer-seen" and len(store.log(CID, "1")) == 1
    res = _create(store, refer_id="2", max_per_call=1, then=Event.REFER_ACCEPTED)
    assert res.reason == "per-call-limit"
    assert store.get(CID, "2") is None and store.log(CID, "2") == []


def test_only_an_event_the_table_applies_to_a_new_refer_can_follow_the_create(store, raw):
    with pytest.raises(ValueError, match="cannot follow a new REFER"):
        _create(store, then=Event.REFER)
    assert all_keys(raw) == []  # nothing written, on any path


def test_lua_agrees_with_the_table_for_every_cell(store, raw):
    """Force each state into a record and apply each event: Lua == kemi.core.state.step."""
    n = 0
    for state in State:
        if state is State.NEW:
            continue
        for event in Event:
            n += 1
            cid = f"cell-{n}"
            _create(store, call_id=cid, transferee=None, deadline=NOW)  # EXPIRY is due
            raw.call("HSET", store.xfer_key(cid, "1"), "state", state.value)
            raw.call("HSET", store.index_key(cid), "1", state.value)
            want = step(state, event)
            got = store.apply(cid, "1", event, NOW + 1, {"probe": "x"})
            assert (got.old, got.new, got.outcome, got.final) == (
                want.old, want.new, want.outcome, want.final
            ), (state, event)
            rec = store.get(cid, "1")
            assert rec["state"] == want.new.value
            assert ("probe" in rec) == (want.outcome != "illegal")
            assert rec.get("anomalies") == ("1" if want.outcome == "illegal" else None)


def test_unknown_transfer_touches_nothing(store, raw):
    r = store.apply(CID, "5", Event.NOTIFY_SUCCESS, NOW)
    assert r == ApplyResult("5", None, None, "unknown", False)
    assert all_keys(raw) == []
    # A refer id that is no CSeq number cannot name a transfer: no round trip at all.
    counted = Counting(raw)
    assert TransferStore(counted).apply(CID, "abc", Event.NOTIFY_SUCCESS, NOW).outcome == (
        "unknown"
    )
    assert counted.calls == []


def test_refer_id_is_the_cseq_number(store):
    _create(store, refer_id=7)
    assert store.apply(CID, "007", Event.REFER_ACCEPTED, NOW).outcome == "applied"
    assert store.get(CID, "7")["state"] == "accepted"
    with pytest.raises(ValueError):
        _create(store, refer_id="1a")


def test_store_fields_are_refused_identity_may_be_repeated(store):
    with pytest.raises(ValueError, match="state"):
        _create(store, fields={"state": "succeeded"})
    with pytest.raises(ValueError, match="target"):
        _create(store, fields={"target": "someone@else"})
    # The REFER's own facts may be repeated in fields (transfer.ReferPlan does).
    same = {"call_id": CID, "refer_id": "01", "transferor": "andrew@example.com",
            "target": "marsha@example.com", "rule": "r1"}
    assert _create(store, fields=same).created
    rec = store.get(CID, "1")
    assert rec["refer_id"] == "1" and rec["rule"] == "r1" and rec["state"] == "refer-seen"
    with pytest.raises(ValueError):
        store.apply(CID, "1", Event.NOTIFY_TRYING, NOW, {"events": "0"})
    with pytest.raises(ValueError):
        store.apply(CID, "1", Event.NOTIFY_TRYING, NOW, {"target": "x"})


def test_illegal_event_is_logged_but_sets_no_field(store):
    _create(store)
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW)
    r = store.apply(CID, "1", Event.REFER_REJECTED, NOW + 1, {"code": "603"}, detail="603")
    assert (r.outcome, r.new) == ("illegal", State.ACCEPTED)
    rec = store.get(CID, "1")
    assert "code" not in rec and rec["anomalies"] == "1" and rec["state"] == "accepted"
    assert store.log(CID, "1")[-1].endswith("|refer-rejected|accepted|accepted|illegal|603")


# ----------------------------------------------------------------- final transitions


FINAL_PATHS = {
    "succeeded": [Event.REFER_ACCEPTED, Event.NOTIFY_RINGING, Event.NOTIFY_SUCCESS],
    "failed": [Event.REFER_ACCEPTED, Event.BYE_TRANSFEROR, Event.NOTIFY_FAILURE],
    "nosub-succeeded": [Event.REFER_ACCEPTED_NOSUB, Event.INVITE, Event.INVITE_2XX],
    "expired": [Event.REFER_ACCEPTED, Event.EXPIRY],
}


@pytest.mark.parametrize("path", sorted(FINAL_PATHS))
def test_final_transition_streams_and_sets_ttls(store, raw, path):
    _create(store, refer_id="3", deadline=NOW + 1)  # due when the "expired" path expires it
    _create(store, refer_id="4", transferee=None)  # a second, open transfer in the dialog
    events = FINAL_PATHS[path]
    results = [store.apply(CID, "3", ev, NOW + i, {f"f{i}": "v"}) for i, ev in
               enumerate(events, 1)]
    assert [r.final for r in results] == [False] * (len(events) - 1) + [True]
    final_state = results[-1].new
    assert final_state in FINAL

    (entry,) = store.finished(10)
    assert entry["state"] == final_state.value and entry["key"] == store.xfer_key(CID, "3")
    assert entry["call_id"] == CID and entry["refer_id"] == "3"
    assert entry["f1"] == "v" and entry["final_at"] == f"{NOW + len(events):.3f}"
    assert entry["stream_id"]
    # Final: done TTL on the transfer's keys, deadline and tie entry gone.
    xk = store.xfer_key(CID, "3")
    for key in (xk, xk + ":log"):
        assert 3590 <= raw.call("TTL", key) <= 3600, key
    assert raw.call("TTL", store.index_key(CID)) >= 3590
    assert raw.call("ZSCORE", store.deadlines_key, f"{CID}{SEP}3") is None
    assert raw.call("ZSCORE", store.deadlines_key, f"{CID}{SEP}4") is not None
    assert store.find_for_invite("mckenzie@example.com") == []
    assert raw.call("HGET", store.index_key(CID), "3") == final_state.value.encode()
    keys = assert_every_key_has_ttl(raw)
    assert store.stream_key in keys
    # Later events without facts are recorded, never streamed again.
    assert store.apply(CID, "3", Event.NOTIFY_SUCCESS, NOW + 9).final is False
    assert len(store.finished(10)) == 1
    assert raw.call("XLEN", store.stream_key) == 1


def test_a_fact_after_the_end_streams_the_record_again_and_it_is_listed_once(store, raw):
    # What the transferor answered to the final NOTIFY comes after the transfer ended;
    # the SQL log is written from the stream, so the record is streamed again with it.
    _create(store)
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW + 1)
    store.apply(CID, "1", Event.NOTIFY_SUCCESS, NOW + 2, {"final_sipfrag": "200 OK"})
    late = store.apply(CID, "1", Event.NOTIFY_SUCCESS, NOW + 3, {"final_notify_reply": "200"})
    assert (late.final, late.new) == (False, State.SUCCEEDED)
    assert raw.call("XLEN", store.stream_key) == 2
    [entry] = store.finished(10)
    assert entry["final_notify_reply"] == "200" and entry["final_sipfrag"] == "200 OK"
    assert entry["final_at"] == f"{NOW + 2:.3f}"  # still when it ended


def test_finished_counts_transfers_not_stream_entries(store, raw):
    # Every transfer here is streamed twice (its end, then its final NOTIFY's answer):
    # asking for the newest N finished transfers gives N, each once, even past a page.
    for n in range(1, 21):
        rid = str(n)
        _create(store, refer_id=rid, transferee=None)
        store.apply(CID, rid, Event.REFER_ACCEPTED, NOW + n)
        store.apply(CID, rid, Event.NOTIFY_SUCCESS, NOW + n, {"final_sipfrag": "200 OK"})
        # The answer in the same millisecond as the NOTIFY (a fast link): no replay.
        store.apply(CID, rid, Event.NOTIFY_SUCCESS, NOW + n, {"final_notify_reply": "200"})
    assert raw.call("XLEN", store.stream_key) == 40
    assert [r["refer_id"] for r in store.finished(3)] == ["20", "19", "18"]
    listed = store.finished(20)
    assert sorted(int(r["refer_id"]) for r in listed) == list(range(1, 21))
    assert all(r.get("final_notify_reply") == "200" for r in listed)
    assert len(store.finished(100)) == 20


def test_a_note_after_the_end_streams_the_record_again(store, raw):
    _create(store)
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW + 1)
    store.apply(CID, "1", Event.NOTIFY_FAILURE, NOW + 2, {"final_sipfrag": "486 Busy"})
    assert store.annotate(CID, "1", NOW + 5, {"ami_result": "reconnected"}, "late AMI")
    [entry] = store.finished(10)
    assert entry["ami_result"] == "reconnected" and entry["state"] == "failed"
    assert raw.call("XLEN", store.stream_key) == 2
    # A note on an open transfer is not streamed.
    _create(store, refer_id="2", transferee=None)
    assert store.annotate(CID, "2", NOW + 6, {"ami_result": "x"})
    assert raw.call("XLEN", store.stream_key) == 2


def test_a_note_after_the_end_is_one_round_trip_on_a_single_redis(raw):
    """The stream is written by the annotate script itself where it can (a single Redis);
    a Cluster keeps the stream in another slot, so the store streams it after."""
    store = TransferStore(Counting(raw))
    _create(store)
    _create(store, refer_id="2", transferee=None)
    store.annotate(CID, "2", NOW + 1, {"ami_result": "x"})  # Redis has the script now
    store.apply(CID, "1", Event.NOTIFY_FAILURE, NOW + 2, {"final_sipfrag": "486 Busy"})
    store._client.calls.clear()
    assert store.annotate(CID, "1", NOW + 5, {"final_notify_reply": "200"}, "answered")
    assert store._client.calls == (["EVALSHA", "XADD"] if raw.cluster else ["EVALSHA"])
    assert store.finished(10)[0]["final_notify_reply"] == "200"


def test_annotate_many_writes_every_note_in_one_round_trip(raw):
    store = TransferStore(Counting(raw))
    for n in ("1", "2", "3"):
        _create(store, refer_id=n, transferee=None)
    store.apply(CID, "3", Event.NOTIFY_SUCCESS, NOW + 2)  # final: streamed again
    store.annotate(CID, "1", NOW + 3, {"ami_result": "0"})  # Redis has the script now
    xlen = raw.call("XLEN", store.stream_key)
    store._client.calls.clear()
    notes = [{"call_id": CID, "refer_id": n, "now": NOW + 5, "fields": {"ami_result": n},
              "detail": f"note {n}"} for n in ("1", "2", "3", "99")]
    assert store.annotate_many(notes) == [True, True, True, False]
    if raw.cluster:  # one script after the other, the stream from the store
        assert store._client.calls == ["EVALSHA"] * 3 + ["XADD", "EVALSHA"]
    else:
        assert store._client.calls == ["PIPELINE:" + ",".join(["EVALSHA"] * 4)]
    assert [store.get(CID, n)["ami_result"] for n in ("1", "2", "3")] == ["1", "2", "3"]
    assert raw.call("XLEN", store.stream_key) == xlen + 1
    assert store.finished(1)[0]["ami_result"] == "3"


def test_annotate_many_after_a_redis_restart_falls_back_in_order(redis_server):
    client = RespClient(redis_server.url, timeout_s=5)
    store = TransferStore(client)
    for n in ("1", "2"):
        _create(store, refer_id=n, transferee=None)
    client.call("SCRIPT", "FLUSH")  # NOSCRIPT for every EVALSHA of the pipeline
    notes = [{"call_id": CID, "refer_id": n, "now": NOW + 5, "fields": {"ami_result": n}}
             for n in ("1", "2")]
    assert store.annotate_many(notes) == [True, True]
    assert store.get(CID, "2")["ami_result"] == "2"


def test_reject_closes_a_transfer(store, raw):
    _create(store)
    r = store.reject(CID, "1", NOW + 1, {"reply": "503"})
    assert (r.new, r.final) == (State.REJECTED, True)
    assert store.finished(1)[0]["reply"] == "503"
    assert store.due(NOW + 10_000) == []
    assert_every_key_has_ttl(raw)


# ----------------------------------------------------------------- NOTIFY without ;id=


def test_notify_without_id_resolves_only_an_unambiguous_transfer(store):
    assert store.apply(CID, None, Event.NOTIFY_TRYING, NOW).outcome == "unknown"
    _create(store, refer_id="1")
    r = store.apply(CID, None, Event.NOTIFY_TRYING, NOW + 1)
    assert (r.refer_id, r.new, r.outcome) == ("1", State.TRYING, "applied")
    _create(store, refer_id="2")
    before = (store.log(CID, "1"), store.log(CID, "2"))
    r = store.apply(CID, None, Event.NOTIFY_SUCCESS, NOW + 2)
    assert r == ApplyResult(None, None, None, "ambiguous", False)
    assert (store.log(CID, "1"), store.log(CID, "2")) == before  # never guessed
    # Once the first is final, the second is the only open one.
    store.apply(CID, "1", Event.NOTIFY_SUCCESS, NOW + 3)
    r = store.apply(CID, None, Event.NOTIFY_RINGING, NOW + 4)
    assert (r.refer_id, r.new) == ("2", State.RINGING)
    store.apply(CID, "2", Event.NOTIFY_FAILURE, NOW + 5)
    assert store.apply(CID, None, Event.NOTIFY_TRYING, NOW + 6).outcome == "unknown"


def test_two_refers_in_a_dialog_are_kept_apart(store):
    _create(store, refer_id="1")
    _create(store, refer_id="2", target="bob@example.com")
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW + 1)
    store.apply(CID, "2", Event.REFER_REJECTED, NOW + 1)
    store.apply(CID, "1", Event.NOTIFY_SUCCESS, NOW + 2)
    assert store.get(CID, "1")["state"] == "succeeded"
    assert store.get(CID, "2")["state"] == "rejected"
    assert store.get(CID, "2")["target"] == "bob@example.com"
    assert len(store.log(CID, "1")) == 3 and len(store.log(CID, "2")) == 2
    assert {e["refer_id"]: e["state"] for e in store.finished(10)} == {
        "1": "succeeded", "2": "rejected"
    }


# ----------------------------------------------------------------- limits


def test_duplicate_refer(store, raw):
    _create(store)
    res = _create(store)
    assert res == CreateResult(False, "duplicate", 1, 1)  # a retransmission is not counted
    assert len(store.log(CID, "1")) == 1


def test_per_call_limit(store, raw):
    assert _create(store, refer_id="1", max_per_call=2).created
    assert _create(store, refer_id="2", max_per_call=2).transfers_in_call == 2
    res = _create(store, refer_id="3", max_per_call=2)
    assert res == CreateResult(False, "per-call-limit", 2, 3)
    assert store.get(CID, "3") is None and store.log(CID, "3") == []
    assert raw.call("HLEN", store.index_key(CID)) == 2
    assert raw.call("ZCARD", store.deadlines_key) == 2
    assert len(store.find_for_invite("mckenzie@example.com")) == 2
    assert_every_key_has_ttl(raw)


def test_rate_limit_per_transferor_per_minute(store, raw):
    minute = (NOW // 60) * 60
    for i in range(3):
        assert _create(store, call_id=f"c{i}", now=minute + i, rate_limit=3).created
    res = _create(store, call_id="c3", now=minute + 30, rate_limit=3)
    assert res == CreateResult(False, "rate-limit", 0, 4)
    assert store.get("c3", "1") is None
    assert raw.call("EXISTS", store.index_key("c3")) == 0
    # Another transferor, or the next minute, is not limited.
    assert _create(store, call_id="c4", now=minute + 30, rate_limit=3,
                   transferor="bob@example.com").refers_this_minute == 1
    assert _create(store, call_id="c5", now=minute + 60, rate_limit=3).created
    assert 0 < raw.call("TTL", store.rate_key("andrew@example.com", minute)) <= 120
    assert_every_key_has_ttl(raw)


# ----------------------------------------------------------------- odd Call-IDs


@pytest.mark.parametrize(
    "call_id",
    ["{abc}@host", "a}b{c", "50%25+off@host", "x+y%z@[::1]", "sp ace\x1fsep@h", "ümlaut@h"],
)
def test_any_call_id_round_trips(store, raw, call_id):
    tag = call_tag(call_id)
    if "{" in call_id or "}" in call_id:
        assert len(tag) == 16 and "{" not in tag
    else:
        assert tag == call_id
    assert store.xfer_key(call_id, 1) == f"referee:{{{tag}}}:xfer:1"
    _create(store, call_id=call_id, deadline=NOW + 5)
    assert store.due(NOW + 10) == [(call_id, "1")]
    assert store.find_for_invite("mckenzie@example.com") == [
        (call_id, "1", "marsha@example.com")
    ]
    assert store.apply(call_id, None, Event.NOTIFY_SUCCESS, NOW + 1).refer_id == "1"
    assert store.get(call_id, "1")["call_id"] == call_id
    assert store.finished(1)[0]["call_id"] == call_id
    assert store.due(NOW + 10) == []


def test_brace_prefix_refused():
    with pytest.raises(ValueError):
        TransferStore(object(), prefix="a{b}")


# ----------------------------------------------------------------- deadlines


def sweep(store: TransferStore, now: float) -> list[tuple[str, str]]:
    """What the glue's rtimer does: EXPIRY for each entry due() lists; the ones it closed."""
    return [(cid, rid) for cid, rid in store.due(now)
            if store.apply(cid, rid, Event.EXPIRY, now, detail="sweep").final]


def test_deadlines_expiry_sweep_and_ttl(store, raw):
    _create(store, refer_id="1", deadline=NOW + 60)
    _create(store, refer_id="2", deadline=NOW + 600)
    xk = store.xfer_key(CID, "1")

    def score() -> float:
        return float(raw.call("ZSCORE", store.deadlines_key, f"{CID}{SEP}1"))

    assert 355 <= raw.call("TTL", xk) <= 360  # deadline + margin
    # A NOTIFY's expires moves the deadline (and the TTL).  A single Redis moves the index
    # entry in the same script; on a Cluster the entry keeps the earlier score (never a
    # later one than the record's) until the sweep finds the transfer not due and
    # re-indexes it -- an early entry costs a look, a late one could lose an expiry.
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW + 1, deadline=NOW + 1200)
    assert score() == (NOW + 60 if store.cluster else NOW + 1200)
    assert 1490 <= raw.call("TTL", xk) <= 1500
    assert store.get(CID, "1")["deadline"] == f"{NOW + 1200:.3f}"
    # An illegal event does not move it.
    store.apply(CID, "1", Event.REFER_REJECTED, NOW + 2, deadline=NOW + 5)
    assert store.get(CID, "1")["deadline"] == f"{NOW + 1200:.3f}"
    assert score() == (NOW + 60 if store.cluster else NOW + 1200)
    assert store.due(NOW + 700) == ([(CID, "1"), (CID, "2")] if store.cluster else [(CID, "2")])
    assert store.due(NOW + 700, limit=1) == [(CID, "1" if store.cluster else "2")]
    # Only 2 is due; 1 is not, whatever the index said (an EXPIRY checks the record).
    assert store.apply(CID, "1", Event.EXPIRY, NOW + 700).outcome == "ignored"
    assert sweep(store, NOW + 700) == [(CID, "2")]
    assert score() == NOW + 1200 and store.due(NOW + 700) == []
    assert store.get(CID, "1")["state"] == "accepted"
    # A deadline moved earlier moves the index entry with it, in both modes; the record's
    # TTL is not shortened (so it outlives any entry a crash could have left behind).
    store.apply(CID, "1", Event.NOTIFY_TRYING, NOW + 701, deadline=NOW + 800)
    assert score() == NOW + 800
    assert raw.call("TTL", xk) >= 1490
    assert sweep(store, NOW + 799) == []
    assert sweep(store, NOW + 800) == [(CID, "1")]
    assert store.get(CID, "1")["state"] == "expired"
    assert store.due(NOW + 2000) == []
    assert_every_key_has_ttl(raw)


def test_stale_deadline_of_a_vanished_transfer_is_dropped(store, raw):
    _create(store, deadline=NOW)
    raw.call("DEL", store.xfer_key(CID, "1"))
    assert store.due(NOW + 1) == [(CID, "1")]
    assert store.apply(CID, "1", Event.EXPIRY, NOW + 1).outcome == "unknown"
    assert store.due(NOW + 1) == []


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["resp", "redis-py"])
def test_one_round_trip_per_create_and_apply(redis_server, kind):
    inner = (RespClient(redis_server.url, timeout_s=5) if kind == "resp"
             else redis.Redis(port=redis_server.port))
    counted = Counting(inner)
    store = TransferStore(counted)
    # First use after a (re)start: NOSCRIPT, then EVAL: counted, and once per script.
    _create(store, refer_id="1")
    assert counted.calls == ["EVALSHA", "EVAL"] and store.noscript_fallbacks == 1
    counted.calls.clear()
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW)
    assert counted.calls == ["EVALSHA", "EVAL"] and store.noscript_fallbacks == 2
    for fn in (
        lambda: _create(store, refer_id="2"),
        lambda: store.apply(CID, "1", Event.NOTIFY_TRYING, NOW),
        lambda: store.apply(CID, None, Event.NOTIFY_TRYING, NOW),
        lambda: store.apply(CID, "2", Event.NOTIFY_SUCCESS, NOW),
        lambda: store.reject(CID, "1", NOW),
        lambda: store.get(CID, "1"),
        lambda: store.log(CID, "1"),
        lambda: store.finished(5),
        lambda: store.due(NOW),
        lambda: store.find_for_invite("mckenzie@example.com"),
    ):
        counted.calls.clear()
        fn()
        assert len(counted.calls) == 1, counted.calls
    assert store.noscript_fallbacks == 2
    # (the reject came after a 202: illegal, so only transfer 2 finished)
    assert [(e["refer_id"], e["state"]) for e in store.finished(5)] == [("2", "succeeded")]


def _counted_store(raw, refer_id: str, event: Event) -> tuple[TransferStore, Counting]:
    """A transfer created and one event applied (Redis has the script: no NOSCRIPT), then
    a store whose round trips are counted."""
    store = TransferStore(raw)
    _create(store)
    store.apply(CID, refer_id, event, NOW)
    counted = Counting(raw)
    return TransferStore(counted), counted


def test_a_2xx_that_waited_goes_with_the_first_notify_in_one_round_trip(raw):
    store, counted = _counted_store(raw, "9", Event.NOTIFY_TRYING)
    events = [
        {"call_id": CID, "refer_id": "1", "event": Event.REFER_ACCEPTED, "now": NOW + 1,
         "fields": {"refer_reply": "202"}, "detail": "202"},
        {"call_id": CID, "refer_id": "1", "event": Event.NOTIFY_TRYING, "now": NOW + 2,
         "seq": 1},
        {"call_id": CID, "refer_id": "x", "event": Event.NOTIFY_RINGING, "now": NOW + 3},
    ]
    results = store.apply_many(events)
    assert [(str(r.new), r.outcome) for r in results] == [
        ("accepted", "applied"), ("trying", "applied"), ("None", "unknown")]
    if raw.cluster:  # the Cluster path writes around each script: one apply at a time
        assert counted.calls.count("EVALSHA") == 2
    else:
        assert counted.calls == ["PIPELINE:EVALSHA,EVALSHA"]
    record = store.get(CID, "1")
    assert record["refer_reply"] == "202" and record["state"] == "trying"
    assert [line.split("|")[1] for line in store.log(CID, "1")] == [
        "refer", "refer-accepted", "notify-trying"]


def test_an_event_and_plain_commands_go_in_one_round_trip_with_replies_in_place(raw):
    store, counted = _counted_store(raw, "1", Event.REFER_ACCEPTED)
    trying = {"call_id": CID, "refer_id": "1", "event": Event.NOTIFY_TRYING, "now": NOW + 1}
    [result], replies = store.apply_many_with(
        [trying], [("HSET", "listed", CID, "1"), ("INCR", "listed"), ("XADD", "jobs", "*",
                                                                        "k", "v")])
    assert (str(result.new), result.outcome) == ("trying", "applied")
    assert replies[0] == 1 and isinstance(replies[1], RedisReplyError)  # WRONGTYPE
    assert isinstance(replies[2], bytes)  # the stream entry's id
    if raw.cluster:  # the script writes around itself; the commands go in a pipeline
        assert counted.calls[-1] == "PIPELINE:HSET,INCR,XADD"
    else:
        assert counted.calls == ["PIPELINE:EVALSHA,HSET,INCR,XADD"]
    assert store.apply_many_with([], []) == ([], [])


def test_an_event_redis_refuses_raises_with_the_replies_of_the_commands_that_ran(raw):
    # An anchored REFER's move job queued in the same trip as an event the apply script
    # refuses: the caller spools the event, and must know the job is queued.
    store, _ = _counted_store(raw, "1", Event.REFER_ACCEPTED)
    raw.call("SET", store.xfer_key(CID, "1") + ":log", "not a list")  # WRONGTYPE in Lua
    trying = {"call_id": CID, "refer_id": "1", "event": Event.NOTIFY_TRYING, "now": NOW + 1}
    with pytest.raises(RedisReplyError) as refused:
        store.apply_many_with([trying], [("XADD", "jobs", "*", "k", "v")])
    if raw.cluster:  # the event went alone first: the commands were never sent
        assert getattr(refused.value, "replies", None) is None
        assert raw.call("EXISTS", "jobs") == 0
    else:
        [queued] = refused.value.replies
        assert isinstance(queued, bytes) and raw.call("XLEN", "jobs") == 1


def test_apply_many_after_a_redis_restart_falls_back_in_order(redis_server):
    client = RespClient(redis_server.url, timeout_s=5)
    store = TransferStore(client)
    _create(store)
    client.call("SCRIPT", "FLUSH")  # NOSCRIPT for every EVALSHA of the pipeline
    results = store.apply_many([
        {"call_id": CID, "refer_id": "1", "event": Event.REFER_ACCEPTED, "now": NOW + 1},
        {"call_id": CID, "refer_id": "1", "event": Event.NOTIFY_SUCCESS, "now": NOW + 2},
    ])
    assert [str(r.new) for r in results] == ["accepted", "succeeded"]
    assert store.get(CID, "1")["events"] == "3"


# ----------------------------------------------------------------- concurrency


def _racer(url: str, me: int, rounds: int, start, out, packed: bool = False) -> None:
    client = packed_client(url) if packed else RespClient(url, timeout_s=5)
    store = TransferStore(client, log_maxlen=100_000)
    results = []
    start.wait(10)
    for i in range(rounds):
        field = f"p{me}_{i}"
        if me == 0 and i == rounds // 2:
            r = store.apply(CID, "1", Event.NOTIFY_SUCCESS, NOW + 1, {"winner": "yes"})
            results.append(("success", r.outcome, r.final, "winner"))
        r = store.apply(CID, "1", Event.NOTIFY_FAILURE_NONFINAL, NOW + 1, {field: "x"})
        results.append(("nonfinal", r.outcome, r.final, field))
    out.put((me, results))


def test_concurrent_events_lose_no_update(store, raw):
    rounds = 300
    _create(store, transferee=None)
    store.apply(CID, "1", Event.REFER_ACCEPTED, NOW)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    packed = isinstance(raw, PackedClient)
    procs = [ctx.Process(target=_racer, args=(raw.url, me, rounds, start, out, packed))
             for me in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    flat = [r for me in (0, 1) for r in results[me]]
    assert len(flat) == 2 * rounds + 1

    rec = store.get(CID, "1")
    log = store.log(CID, "1")
    # Every event is in the log and the counter: nothing lost, nothing doubled.
    assert len(log) == int(rec["events"]) == 2 + len(flat)
    assert rec["state"] == "succeeded" and rec["winner"] == "yes"
    assert sum(1 for r in flat if r[2]) == 1
    # A field is there exactly when its event was not illegal (set atomically with it).
    illegal = [r for r in flat if r[1] == "illegal"]
    assert int(rec.get("anomalies", "0")) == len(illegal)
    for _kind, outcome, _final, field in flat:
        assert (field in rec) == (outcome != "illegal"), (field, outcome)
    # The log is serial: every NONFINAL before the success was applied, every one after
    # it illegal (a NOTIFY after the final one).
    outcomes = [line.split("|")[1:5] for line in log[2:]]
    cut = outcomes.index(["notify-success", "accepted", "succeeded", "applied"])
    assert all(o == ["notify-failure-nonfinal", "accepted", "accepted", "applied"]
               for o in outcomes[:cut])
    assert all(o == ["notify-failure-nonfinal", "succeeded", "succeeded", "illegal"]
               for o in outcomes[cut + 1:])
    assert len(store.finished(10)) == 1
    assert_every_key_has_ttl(raw)


def test_annotate_writes_facts_beside_the_state_and_logs_them(store, raw):
    _create(store)
    store.apply(CID, "1", Event.REFER_ACCEPTED, now=NOW + 1)
    assert store.annotate(
        CID, "1", NOW + 2, {"asterisk_result": "reconnected"}, detail="P back with A"
    )
    record = store.get(CID, "1")
    assert record["state"] == "accepted"  # untouched
    assert record["asterisk_result"] == "reconnected"
    assert store.log(CID, "1")[-1].split("|") == [
        f"{NOW + 2:.3f}", "note", "accepted", "accepted", "noted", "P back with A"
    ]
    assert_every_key_has_ttl(raw)


def test_annotate_refuses_the_stores_own_fields_and_unknown_transfers(store):
    with pytest.raises(ValueError):
        store.annotate(CID, "1", NOW, {"state": "succeeded"})
    assert store.annotate(CID, "99", NOW, {"asterisk_result": "x"}) is False
    assert store.get(CID, "99") is None


# ----------------------------------------------------------------- a REFER answered already


def test_a_create_redis_runs_past_the_callers_budget_writes_nothing(store, raw):
    """Issue 9 item 7: Redis hung, the REFER was answered 503, then Redis resumed and ran
    the create.  Modelled by a budget already spent: nothing is written -- no record, no
    index, no tie entry -- so nothing ties the transferee's next INVITE."""
    raw.call("PING")  # a connection, so the client knows Redis's clock
    assert isinstance(raw.clock_offset, float)
    res = _create(store, answered_after_s=-1.0)
    assert res.reason == "too-late" and not res.created
    assert store.get(CID, "1") is None
    assert raw.call("HLEN", store.index_key(CID)) == 0
    assert store.find_for_invite("mckenzie@example.com") == []


def test_a_create_within_the_budget_is_recorded(store, raw):
    raw.call("PING")
    assert _create(store, answered_after_s=0.5).created


def test_without_redis_clock_offset_no_budget_is_checked(redis_server):
    """A client that has not read Redis's clock yet (its first command) checks nothing:
    better a record than a refusal on a guess."""
    client = RespClient(redis_server.url, timeout_s=5)
    try:
        assert client.clock_offset is None
        assert _create(TransferStore(client), answered_after_s=-1.0).created
        assert isinstance(client.clock_offset, float)  # read in that first handshake
    finally:
        client.close()
