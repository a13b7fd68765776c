"""The dialog index as kamailio-native.cfg writes it without Python (CFG_INDEX_LUA): the
same records as referee's own path, event for event, against a real redis-server (and,
through DialogStore.record_cfg, the packed runner and a real Redis Cluster).

The cfg sends `EVALSHA <sha> 0 <payload>` through ndb_redis; here the same text goes to
Redis with EVAL.  `cfg_fields` builds the message's part as the cfg writes it ("=" + the
value), or, for a value that is not printable ASCII (whitespace, which the cfg hands to
Python, or other bytes), as Python sends it ("x" + hex)."""

from __future__ import annotations

import pytest

from kemi.core.dialogs import Dialog, DialogEvent, DialogState
from kemi.storage.dialogs import DialogStore, cfg_fields
from kemi.storage.resp import RedisReplyError, RespClient
from tests.kemi.storage.test_dialogs import dialogs, raw  # noqa: F401 - fixtures
from tests.support.redis_cluster import all_keys, redis_cluster  # noqa: F401 - a fixture

NOW = 1_700_000_000.0
CID = "consult-7f3a@pc33.atlanta.example.com"
FROM_URI, TO_URI = "sip:andrew@example.com;transport=udp", "sip:marsha@Example.COM"
ANDREW, MARSHA = "andrew@example.com", "marsha@example.com"
CALLER_SRC, CALLEE_SRC, NODE = "192.0.2.10:5060", "192.0.2.20:5062", "127.0.0.1:5060"
E, S = DialogEvent, DialogState


def fields(event: str, to_tag: str = "m1", now: float = NOW + 1, cseq: str = "1",
           call_id: str | bytes = CID, from_tag: str = "a1", from_uri: str | bytes = FROM_URI,
           to_uri: str | bytes = TO_URI, source: str = CALLEE_SRC,
           invite_source: str = CALLER_SRC) -> str:
    return cfg_fields(event, f"{now:.6f}", call_id, from_tag, to_tag, from_uri, to_uri, NODE,
                      source, invite_source, cseq)


@pytest.fixture
def single(redis_server):
    c = RespClient(redis_server.url, timeout_s=5)
    yield c
    c.close()


def as_cfg(client: RespClient, store: DialogStore, f: str) -> str | int:
    """What the cfg sends through ndb_redis: the script with no keys and one payload."""
    sha, text = store.cfg_script
    answer = client.call("EVAL", text, 0, store.cfg_payload(f))
    return answer.decode() if isinstance(answer, bytes) else answer


def same_facts(d: Dialog) -> tuple:
    return (d.call_id, d.caller_tag, d.callee_tag, d.caller, d.callee, d.state, d.ended_by,
            d.node, d.caller_src, d.callee_src)


def test_a_call_indexed_by_the_cfg_is_the_record_python_would_have_written(single):
    cfg, py = DialogStore(single), DialogStore(single, prefix="py")
    # Python: the INVITE as relayed, then each response; the cfg: responses only.
    py.record(E.INVITE, CID, "a1", NOW + 1, caller=ANDREW, callee=MARSHA, node=NODE,
              source=CALLER_SRC)
    assert as_cfg(single, cfg, fields("1xx")) == "early"
    assert py.record(E.PROVISIONAL, CID, "a1", NOW + 1, callee_tag="m1", node=NODE,
                     source=CALLEE_SRC) is S.EARLY
    assert as_cfg(single, cfg, fields("2xx", now=NOW + 5)) == "confirmed"
    py.record(E.ANSWERED, CID, "a1", NOW + 5, callee_tag="m1", node=NODE, source=CALLEE_SRC)
    assert same_facts(cfg.get(CID, "a1")) == same_facts(py.get(CID, "a1"))
    assert as_cfg(single, cfg, fields("bye", to_tag="m1", now=NOW + 60,
                                      source=CALLER_SRC, invite_source="")) == "terminated"
    py.record(E.BYE, CID, "a1", NOW + 60, callee_tag="m1", source=CALLER_SRC)
    ended = cfg.get(CID, "a1")
    assert same_facts(ended) == same_facts(py.get(CID, "a1"))
    assert (ended.ended_by, ended.ended_at, ended.created_at) == ("bye-caller", NOW + 60, NOW + 1)
    assert 295 <= single.call("TTL", cfg.dialog_key(CID, "a1")) <= 300


def test_the_cfg_names_the_keys_python_names_a_braced_call_id_included(single):
    store = DialogStore(single)
    braced = "{weird}call@example.com"
    as_cfg(single, store, fields("2xx", call_id=braced))
    assert [k.decode() for k in single.call("KEYS", "*")] == [store.dialog_key(braced, "a1")]
    assert store.cfg_keys(fields("bye", call_id=braced)) == [
        store.dialog_key(braced, "a1"), store.dialog_key(braced, "m1")]


def test_a_bye_from_the_callee_ends_it_naming_who(single):
    store = DialogStore(single)
    as_cfg(single, store, fields("2xx"))
    f = cfg_fields("bye", f"{NOW + 60:.6f}", CID, "m1", "a1", TO_URI, FROM_URI, NODE,
                   CALLEE_SRC, "", "2")
    assert as_cfg(single, store, f) == "terminated"
    assert store.get(CID, "a1").ended_by == "bye-callee"


def test_a_retry_after_407_with_a_new_cseq_starts_the_record_over(single):
    store = DialogStore(single)
    assert as_cfg(single, store, fields("failure", to_tag="proxy-tag", cseq="1")) == "terminated"
    assert as_cfg(single, store, fields("2xx", to_tag="m1", cseq="2", now=NOW + 3)) == "confirmed"
    d = store.get(CID, "a1")
    assert (d.state, d.callee_tag, d.created_at, d.ended_by) == (S.CONFIRMED, "m1", NOW + 3, "")


def test_a_2xx_retransmitted_after_the_bye_does_not_bring_the_dialog_back(single):
    store = DialogStore(single)
    as_cfg(single, store, fields("2xx"))
    as_cfg(single, store, fields("bye", now=NOW + 60, source=CALLER_SRC, invite_source=""))
    assert as_cfg(single, store, fields("2xx", now=NOW + 61)) == "terminated"
    assert store.get(CID, "a1").ended_at == NOW + 60


def test_a_failure_before_any_tagged_response_leaves_no_matchable_record(single):
    store = DialogStore(single)
    assert as_cfg(single, store, fields("failure", to_tag="")) == "terminated"
    assert store.find(CID, "a1", "m1") == []


def test_parties_are_read_by_referees_parser(single):
    store = DialogStore(single)
    as_cfg(single, store, fields("2xx", from_uri="sip:%61ndrew@EXAMPLE.com:5070;user=x",
                                 to_uri="tel:+1-212-555-0100;phone-context=x"))
    d = store.get(CID, "a1")
    assert (d.caller, d.callee) == ("andrew@example.com", "+1-212-555-0100")
    assert len(store.find(CID, "m1", "a1")) == 1


@pytest.mark.parametrize("from_uri", [b"sip:andr\xffew@example.com", "mailto:a@example.com", ""])
def test_a_party_referee_cannot_read_makes_the_dialog_unknown_as_python_would(single, from_uri):
    """Python does not index a dialog whose From it refuses (a Replaces naming it: 481);
    the cfg indexes it, and the lookup treats it as not there."""
    store = DialogStore(single)
    assert as_cfg(single, store, fields("2xx", from_uri=from_uri)) == "confirmed"
    assert store.get(CID, "a1").parties_known is False
    assert store.find(CID, "m1", "a1") == []


def test_bytes_that_are_not_utf8_round_trip_through_the_hex(single):
    store = DialogStore(single)
    tag = "a1\udcff\udcfe"  # bytes ff fe, as Kamailio would hand them on
    as_cfg(single, store, cfg_fields("2xx", f"{NOW:.6f}", CID, tag, "m1", FROM_URI, TO_URI,
                                     NODE, CALLEE_SRC, CALLER_SRC, "1"))
    assert store.get(CID, tag).caller_tag == tag


@pytest.mark.parametrize("raw_value", ["a b@host", "tab\there@host", "nul\x00ends@host"])
def test_whitespace_in_a_value_the_cfg_sent_as_it_is_writes_nothing_and_answers_0(
        single, raw_value):
    """The cfg does not check values: one with whitespace splits into more fields (a NUL
    ends the text, fewer), the script answers 0, and the cfg hands the message over."""
    store = DialogStore(single)
    good = fields("2xx").split()
    good[2] = "=" + raw_value
    payload = store.cfg_payload(" ".join(good)).encode().split(b"\x00")[0]  # as C reads it
    sha, text = store.cfg_script
    assert single.call("EVAL", text, 0, payload) == 0
    assert single.call("KEYS", "*") == []


@pytest.mark.parametrize("bad, says", [
    (fields("2xx").replace(" =", " y", 1), "field 7 is neither =<text> nor x<hex>"),
    (fields("2xx").replace(" =", " xz", 1), "field 7 is neither =<text> nor x<hex>"),
    (fields("2xx").replace("2xx", "invite", 1), "no dialog index event invite"),
])
def test_a_payload_that_is_not_the_cfgs_is_a_clear_error(single, bad, says):
    store = DialogStore(single)
    with pytest.raises(RedisReplyError, match=says):
        as_cfg(single, store, bad)
    with pytest.raises(ValueError, match="dialog index fields"):
        store.cfg_keys(bad)


@pytest.mark.parametrize("bad", ["2xx 1.0 x61", fields("2xx") + " =x"])
def test_fields_python_would_send_are_checked_before_any_round_trip(single, bad):
    store = DialogStore(single)
    with pytest.raises(ValueError, match="not the cfg's dialog index fields"):
        store.record_cfg(bad)
    assert single.call("KEYS", "*") == []


def test_record_cfg_writes_the_same_record_on_every_kind_of_redis(dialogs, raw):  # noqa: F811
    """Python's fallback for the cfg (its first write in a process, NOSCRIPT, Cluster):
    the keys named in Python, the same script."""
    assert dialogs.record_cfg(fields("1xx")) is S.EARLY
    assert dialogs.record_cfg(fields("2xx", now=NOW + 5)) is S.CONFIRMED
    d = dialogs.get(CID, "a1")
    assert (d.caller, d.callee, d.callee_tag, d.caller_src, d.callee_src) == (
        ANDREW, MARSHA, "m1", CALLER_SRC, CALLEE_SRC)
    assert dialogs.record_cfg(fields("bye", now=NOW + 9, source=CALLER_SRC)) is S.TERMINATED
    assert len(all_keys(raw)) == 1
    assert dialogs.record_cfg(fields("failure", call_id="")) is None


@pytest.mark.parametrize("call_id", ["abc%41@host", "a b@host", "tab\there@host",
                                     "caf\u00e9@host", "=looks-raw@host", "x41@host"])
def test_a_value_that_is_not_printable_ascii_goes_as_hex_and_round_trips(single, call_id):
    """Python sends whitespace (which the cfg hands it) and other bytes as hex; values
    that merely look like the encodings, or hold a "%", are taken as they are."""
    store = DialogStore(single)
    f = fields("2xx", call_id=call_id)
    assert f.split()[2].startswith("x" if any(c in call_id for c in " \t\u00e9") else "=")
    assert store.record_cfg(f) is S.CONFIRMED
    assert store.get(call_id, "a1").call_id == call_id
    assert len(store.find(call_id, "m1", "a1")) == 1


@pytest.mark.parametrize("raw_id", [b"ctl\x01id@host", b"del\x7fid@host", b"caf\xc3\xa9@host",
                                    b"bad\xffid@host"])
def test_a_raw_call_id_with_control_or_non_ascii_bytes_is_handed_to_python(single, raw_id):
    """referee does not index a Call-ID that is not SIP text (control bytes, not UTF-8);
    the script does not judge UTF-8, so any byte outside printable ASCII in a Call-ID the
    cfg sent as it is answers 0 (kemi.kamailio.dialog_index judges it)."""
    store = DialogStore(single)
    good = fields("2xx").split()
    sha, text = store.cfg_script
    payload = store.cfg_payload(" ".join(good)).encode().replace(
        b" =" + CID.encode(), b" =" + raw_id)
    assert single.call("EVAL", text, 0, payload) == 0
    assert single.call("KEYS", "*") == []
    # the same bytes in a tag are written (only the Call-ID is judged, as on Python's path)
    ok = store.cfg_payload(" ".join(good)).encode().replace(b" =a1 ", b" =a\x01 ")
    assert single.call("EVAL", text, 0, ok) == b"confirmed"
