"""The Recorder's deferred store calls (what reply routes leave to the sweep), against a
real redis-server through the packed client Kamailio uses and a real journal: one round
trip per run of events and per run of notes, in their order -- not one per transfer --
and, when Redis goes, nothing lost and nothing reordered."""

from __future__ import annotations

import json
from types import SimpleNamespace

from kemi.core.state import Event
from kemi.storage.journal import Journal
from kemi.storage.resp import RedisUnavailable
from kemi.storage.transfers import TransferStore
from tests.kemi.kamailio.test_answers import table  # noqa: F401 - the in-memory htable
from tests.support.packed import packed_client

NOW = 1_700_000_000.0


def _transfer(store: TransferStore, call_id: str) -> None:
    store.create(call_id, "1", fields={"refer_to": "sip:marsha@example.com"}, now=NOW,
                 deadline=NOW + 600, transferor="andrew@example.com",
                 transferee="mckenzie@example.com", target="marsha@example.com")


def test_the_sweep_stores_what_was_left_for_later_in_one_trip_per_run(ksr, redis_server):
    from kemi.kamailio.recorder import Recorder

    client = packed_client(redis_server.url)
    store = TransferStore(client)
    cids = [f"call-{n}@example.com" for n in range(4)]
    for cid in cids:
        _transfer(store, cid)
        store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    for cid in cids[:3]:  # the final NOTIFY came: the answer to it is noted after the end
        store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 2, {"final_sipfrag": "200 OK"})
    answered = [(cid, {"k": "note", "r": "1", "f": {"final_notify_reply": "200"},
                       "d": "NOTIFY answered 200", "t": NOW + 3}) for cid in cids[:3]]
    ended = [(cids[3], {"k": "apply", "r": "1", "e": "notify-success", "d": "200 OK",
                        "t": NOW + 4})]
    streamed = client.call("XLEN", store.stream_key)
    trips = client.round_trips

    rec = Recorder(SimpleNamespace(store=store))
    rec.store_later_many(answered + ended)

    assert client.round_trips - trips == 2  # the notes' run, then the event's
    for cid in cids[:3]:
        assert store.get(cid, "1")["final_notify_reply"] == "200"
    assert store.get(cids[3], "1")["state"] == "succeeded"
    # every note restreamed its final record (the SQL log upserts it), plus the new end
    assert client.call("XLEN", store.stream_key) == streamed + 4
    assert not [line for line in ksr.logged if "LOST" in line or "spooled" in line]


def test_a_481_to_a_held_notify_without_id_is_recorded_after_the_transfer_ended(
        ksr, redis_server):
    """McKenzie's NOTIFY without ;id= was held for its turn, so the note on its transaction
    never learnt the refer id; Andrew answered it 481, and by the sweep the INVITE's 2xx
    had ended the transfer.  The 481 goes where its note goes (the dialog's latest
    transfer), logged as the state table takes it -- it was lost as "unknown"."""
    from kemi.kamailio.recorder import Recorder

    store = TransferStore(packed_client(redis_server.url))
    cid = "held@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.BYE_TRANSFEROR, NOW + 1)
    store.apply(cid, "1", Event.INVITE_2XX, NOW + 2, {"invite_reply": "200"})
    answer = {"k": "note", "r": None, "f": {"notify_reply": "481"},
              "d": "NOTIFY CSeq 1 (100 Trying) answered 481 by the transferor", "t": NOW + 3}
    event = {"k": "apply", "r": None, "e": "notify-481", "f": {"notify_reply": "481"},
             "d": "481", "t": NOW + 3}
    Recorder(SimpleNamespace(store=store)).store_later_many([(cid, answer), (cid, event)])
    steps = [line.split("|")[1:5] for line in store.log(cid, "1")]
    assert steps[-2:] == [["note", "succeeded", "succeeded", "noted"],
                          ["notify-481", "succeeded", "succeeded", "ignored"]]
    assert not [line for line in ksr.logged if "unknown" in line]


def test_an_answer_whose_transfer_the_recorder_cannot_resolve_is_still_stored(
        ksr, redis_server):
    """An index value that is no state of referee's (written by hand, or a newer
    version's) makes the recorder's own resolution fail: the event is not dropped as
    unreadable, it goes to the store, which resolves the dialog's one transfer itself."""
    from kemi.kamailio.recorder import Recorder

    client = packed_client(redis_server.url)
    store = TransferStore(client)
    cid = "odd-index@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    client.call("HSET", store.index_key(cid), "1", "no-such-state")
    event = {"k": "apply", "r": None, "e": "notify-481", "f": {"notify_reply": "481"},
             "d": "481", "t": NOW + 2}
    Recorder(SimpleNamespace(store=store)).store_later_many([(cid, event)])
    assert not [line for line in ksr.logged if "unreadable" in line]
    assert store.log(cid, "1")[-1].split("|")[1:5] == [
        "notify-481", "accepted", "transferor-gone", "applied"]


def test_a_large_backlog_goes_in_pieces_so_redis_is_never_held_long(ksr, redis_server):
    """Under load a sweep tick finds thousands of 202s left for it: sent as one packed
    script they would hold Redis past every SIP worker's timeout."""
    from kemi.kamailio.recorder import LATER_BATCH, Recorder

    client = packed_client(redis_server.url)
    store = TransferStore(client)
    n = 2 * LATER_BATCH + 5
    cids = [f"call-{i}@example.com" for i in range(n)]
    for cid in cids:
        _transfer(store, cid)
    trips = client.round_trips
    Recorder(SimpleNamespace(store=store)).store_later_many(
        [(cid, {"k": "accept", "r": "1", "c": 202, "t": NOW + 1}) for cid in cids])
    assert client.round_trips - trips == 3
    assert {store.get(cid, "1")["state"] for cid in cids} == {"accepted"}


class _FailsFrom:
    """The packed client, refusing every round trip from the n-th on (Redis gone)."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.trips = inner, n, 0
        self.cluster = False

    def call(self, *args):
        return self.inner.call(*args)

    def pipeline(self, commands):
        self.trips += 1
        if self.trips >= self.n:
            raise RedisUnavailable("redis gone (test)")
        return self.inner.pipeline(commands)


class _Gone:
    """A client whose every round trip fails (one trip timed out)."""

    cluster = False

    def call(self, *args):
        raise RedisUnavailable("no reply within the timeout (test)")

    pipeline = call


def test_once_redis_fails_the_rest_is_spooled_in_order_and_one_bad_entry_loses_nothing(
        ksr, redis_server, tmp_path):
    """Redis gone after the first piece: that piece stored, every later one spooled in
    its order (the journal replays them so); an unreadable entry is said and skipped."""
    from kemi.kamailio.recorder import LATER_BATCH, Recorder

    client = packed_client(redis_server.url)
    store = TransferStore(client)
    cids = [f"call-{i}@example.com" for i in range(LATER_BATCH + 3)]
    for cid in cids:
        _transfer(store, cid)
    failing = TransferStore(_FailsFrom(client, 2))
    journal = Journal(tmp_path / "journal")
    entries = [(cid, {"k": "accept", "r": "1", "c": 202, "t": NOW + 1}) for cid in cids]
    entries.insert(3, ("call-x@example.com", {"k": "apply", "r": "1", "e": "no-such-event"}))
    entries.append((cids[0], {"k": "note", "r": "1", "f": {"notify_reply": "200"},
                              "d": "answered", "t": NOW + 2}))
    Recorder(SimpleNamespace(store=failing, journal=journal)).store_later_many(entries)

    stored = [cid for cid in cids if store.get(cid, "1")["state"] == "accepted"]
    assert stored == cids[:LATER_BATCH]  # the first piece, before Redis went
    lines = [json.loads(line) for path in journal.dir.glob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert [(x["op"], x["call_id"]) for x in lines] == [
        *(("apply", cid) for cid in cids[LATER_BATCH:]), ("annotate", cids[0])]
    assert any("unreadable" in text and "no-such-event" in text for text in ksr.logged)


def test_events_after_a_spooled_create_are_spooled_behind_it_not_dropped(
        ksr, redis_server, tmp_path):
    """Seen in a full run: Redis back after an outage, a worker's first trip on its old
    connection failed, so the REFER was relayed (fail-open) and its create spooled; every
    later event of that transfer went to Redis live, found no record and was dropped as
    unknown -- the replayed record stayed refer-seen.  While the journal holds spooled
    calls, an event for an unknown transfer is spooled behind them and replayed in time
    order."""
    from kemi.kamailio.recorder import Recorder

    store = TransferStore(packed_client(redis_server.url))
    journal = Journal(tmp_path / "journal")
    rec = Recorder(SimpleNamespace(store=store, journal=journal))
    cid = "after-outage@example.com"
    rec.spool("create", call_id=cid, refer_id="2", fields={"refer_to": "sip:m@example.com"},
              now=NOW, deadline=NOW + 600, transferor="andrew@example.com",
              transferee="mckenzie@example.com", target="marsha@example.com")
    rec.apply(cid, "2", Event.REFER_ACCEPTED, {"refer_reply": "202"}, "202", at=NOW + 1)
    rec.apply(cid, "2", Event.NOTIFY_SUCCESS, {"final_sipfrag": "200 OK"}, "200 OK",
              at=NOW + 2)
    assert store.get(cid, "2") is None  # nothing live yet: all of it waits in the journal
    journal.replay(store)
    steps = [line.split("|")[1:5] for line in store.log(cid, "2")]
    assert steps == [["refer", "new", "refer-seen", "applied"],
                     ["refer-accepted", "refer-seen", "accepted", "applied"],
                     ["notify-success", "accepted", "succeeded", "applied"]]
    assert not journal.pending()


def test_an_unknown_transfer_with_nothing_spooled_is_said_and_not_spooled(
        ksr, redis_server, tmp_path):
    from kemi.kamailio.recorder import Recorder

    journal = Journal(tmp_path / "journal")
    rec = Recorder(SimpleNamespace(store=TransferStore(packed_client(redis_server.url)),
                                   journal=journal))
    res = rec.apply("nobody@example.com", "2", Event.NOTIFY_SUCCESS, {}, "200 OK")
    assert res.outcome == "unknown"
    assert not journal.pending()
    assert any("unknown" in text for text in ksr.logged)


def test_answers_left_for_the_sweep_are_stored_before_the_dialogs_next_event(
        table, redis_server):  # noqa: F811
    """Seen in CI (asterisk callee_refer_only): Bob answered the final NOTIFY 200, then
    sent BYE; the answer waited for the sweep, the BYE was applied live, and the log read
    bye-transferor, then the note -- the wire's order reversed.  The dialog's next event
    takes what its reply routes left for later (answers to NOTIFYs, a 481's event, 2xx to
    REFERs) and stores it first, in its order."""
    from kemi.kamailio.recorder import Recorder
    from kemi.kamailio.sequencer import Deferred

    store = TransferStore(packed_client(redis_server.url))
    cid = "answered-then-bye@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1, {"refer_reply": "202"})
    store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 2, {"final_sipfrag": "200 OK"})
    later = Deferred(lambda text: None, accept_after_s=60)
    order = SimpleNamespace(fold=lambda call_id: [])
    rec = Recorder(SimpleNamespace(store=store, later=later, order=order))
    rec.defer(cid, {"k": "note", "r": "1", "f": {"final_notify_reply": "200"},
                    "d": "NOTIFY CSeq 2 (200 OK) answered 200 by the transferor",
                    "t": NOW + 3})

    rec.apply_after_accepts(cid, "1", Event.BYE_TRANSFEROR, {"ended_by": "transferor"},
                            "BYE from the transferor")

    steps = [line.split("|")[1:5] for line in store.log(cid, "1")]
    assert steps[-2:] == [["note", "succeeded", "succeeded", "noted"],
                          ["bye-transferor", "succeeded", "succeeded", "ignored"]]
    assert store.get(cid, "1")["final_notify_reply"] == "200"
    assert later.due() == []  # nothing left for the sweep to store twice


def test_an_event_left_for_the_sweep_is_applied_before_the_dialogs_next_event(
        table, redis_server):  # noqa: F811
    """The transferor refused a progress NOTIFY 481 (its subscription is over), then hung
    up: the notify-481, left for the sweep by the failure route, comes before the BYE in
    the record as it did on the wire -- and so the BYE finds the subscription ended."""
    from kemi.kamailio.recorder import Recorder
    from kemi.kamailio.sequencer import Deferred

    store = TransferStore(packed_client(redis_server.url))
    cid = "refused-then-bye@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1, {"refer_reply": "202"})
    later = Deferred(lambda text: None, accept_after_s=60)
    rec = Recorder(SimpleNamespace(store=store, later=later,
                                   order=SimpleNamespace(fold=lambda call_id: [])))
    rec.defer(cid, {"k": "note", "r": "1", "f": {"notify_reply": "481"},
                    "d": "NOTIFY CSeq 1 (100 Trying) answered 481", "t": NOW + 2})
    rec.defer(cid, {"k": "apply", "r": "1", "e": "notify-481", "f": {"notify_reply": "481"},
                    "d": "481", "t": NOW + 2})

    rec.apply_after_accepts(cid, "1", Event.BYE_TRANSFEROR, {"ended_by": "transferor"},
                            "BYE from the transferor")

    events = [line.split("|")[1] for line in store.log(cid, "1")]
    assert events[-3:] == ["note", "notify-481", "bye-transferor"]
    assert later.due() == []


def test_the_answer_to_a_held_notify_stays_after_the_notify_itself(
        table, redis_server):  # noqa: F811
    """A held NOTIFY is recorded just after it left (no Redis trip while tm holds it), so
    the transferor's answer to it can be waiting already: the answers to earlier NOTIFYs
    go before its event, the answer to it after."""
    from kemi.kamailio.recorder import Recorder
    from kemi.kamailio.sequencer import Deferred

    store = TransferStore(packed_client(redis_server.url))
    cid = "held-answered@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1, {"refer_reply": "202"})
    store.apply(cid, "1", Event.NOTIFY_TRYING, NOW + 2, seq=1)
    later = Deferred(lambda text: None, accept_after_s=60)
    rec = Recorder(SimpleNamespace(store=store, later=later,
                                   order=SimpleNamespace(fold=lambda call_id: [])))
    rec.defer(cid, {"k": "note", "r": "1", "n": 1, "f": {"notify_reply": "200"},
                    "d": "NOTIFY CSeq 1 answered 200", "t": NOW + 3})
    rec.defer(cid, {"k": "note", "r": "1", "n": 2, "f": {"final_notify_reply": "200"},
                    "d": "NOTIFY CSeq 2 answered 200", "t": NOW + 5})

    rec.apply_after_accepts(cid, "1", Event.NOTIFY_SUCCESS, {"final_sipfrag": "200 OK"},
                            "200 OK", seq=2)

    steps = [(line.split("|")[1], line.split("|")[-1]) for line in store.log(cid, "1")]
    assert [s[0] for s in steps[-3:]] == ["note", "notify-success", "note"]
    assert "CSeq 1" in steps[-3][1] and "CSeq 2" in steps[-1][1]
    assert later.due() == []


def test_events_after_one_spooled_are_spooled_behind_it_in_their_order(
        table, redis_server, tmp_path):  # noqa: F811
    """One trip failed under load (the timer's, recording a NOTIFY 100): that event was
    spooled, the transfer's next ones went live, and the journal replayed the 100 after
    them -- the record's order was not the wire's.  While the journal holds an event of a
    transfer, the transfer's later events are spooled behind it; once it is replayed,
    they go live again."""
    from kemi.kamailio.recorder import Recorder

    client = packed_client(redis_server.url)
    store = TransferStore(client)
    journal = Journal(tmp_path / "journal")
    cid = "one-trip-failed@example.com"
    _transfer(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1, {"refer_reply": "202"})
    failing = Recorder(SimpleNamespace(store=TransferStore(_Gone()), journal=journal))
    failing.apply(cid, "1", Event.NOTIFY_TRYING, {"last_notify": "100"}, "100 Trying",
                  at=NOW + 2)
    rec = Recorder(SimpleNamespace(store=store, journal=journal))
    rec.apply(cid, "1", Event.INVITE, {"invite_call_id": "i1"}, at=NOW + 3)
    rec.apply(cid, "1", Event.NOTIFY_RINGING, {"last_notify": "180"}, "180 Ringing",
              at=NOW + 4)
    assert store.get(cid, "1")["state"] == "accepted"  # nothing went around the 100
    journal.replay(store)
    steps = [line.split("|")[1:5] for line in store.log(cid, "1")]
    assert steps[-3:] == [["notify-trying", "accepted", "trying", "applied"],
                          ["invite", "trying", "trying", "applied"],
                          ["notify-ringing", "trying", "ringing", "applied"]]
    rec.apply(cid, "1", Event.NOTIFY_SUCCESS, {"final_sipfrag": "200 OK"}, "200 OK",
              at=NOW + 5)
    assert store.get(cid, "1")["state"] == "succeeded"  # live again
    assert not journal.pending()
