"""The packed runner (kemi.storage.packed) against a real redis-server: what ndb_redis
carries inside Kamailio gives exactly the replies RespClient gives, byte for byte, for
every kind of value; the stores' own behaviour through it is in test_transfers.py and
test_dialogs.py (their "packed" parameter)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.storage.packed import (
    PackedClient,
    decode_answers,
    encode_batch,
    resp_transport,
    runner_text,
)
from kemi.storage.resp import RedisProtocolError, RedisReplyError, RedisUnavailable, RespClient
from kemi.storage.scripts import SCRIPTS
from tests.support.packed import packed_client


@pytest.fixture
def pair(redis_server):
    direct = RespClient(redis_server.url, timeout_s=5)
    packed = packed_client(redis_server.url)
    yield direct, packed
    direct.close()
    packed.close()


VALUES = [b"plain", b"", b"\xff\xfe not utf-8", b"\x00leading nul", b"mid\x00nul",
          "caf\u00e9 \u260e".encode(), b"\x01\x1f\x7f controls", b'"quoted" \\ /']


@pytest.mark.parametrize("value", VALUES)
def test_a_value_round_trips_byte_for_byte_both_ways(pair, value):
    direct, packed = pair
    assert packed.call("SET", b"k:" + value, value) == "OK"
    assert direct.call("GET", b"k:" + value) == value  # written as sent
    assert packed.call("GET", b"k:" + value) == value  # read as stored
    assert packed.call("HSET", "h", value, value) == 1
    assert packed.call("HGETALL", "h") == direct.call("HGETALL", "h") == [value, value]


def test_every_reply_kind_is_what_resp_gives(pair):
    # Integers are exact up to 2**53: Redis hands a script's replies to Lua as doubles
    # (referee's counters, TTLs and CSeqs stay far below; a larger one would round).
    direct, packed = pair
    commands = [("INCRBY", "n", 2**53 - 1), ("GET", "absent"), ("LRANGE", "none", 0, -1),
                ("RPUSH", "l", "a", "b"), ("LRANGE", "l", 0, -1), ("PING",),
                ("INCRBY", "neg", -5), ("HGET", "l", "x"), ("ZADD", "z", "1.5", "m"),
                ("ZSCORE", "z", "m")]
    got = packed.pipeline(commands)
    direct.call("FLUSHDB")
    want = direct.pipeline(commands)
    assert [type(g) for g in got] == [type(w) for w in want]
    assert got[:-3] == want[:-3] and got[-2:] == want[-2:]
    assert got[0] == 2**53 - 1 and got[1] is None and got[2] == [] and got[5] == "PONG"
    assert isinstance(got[-3], RedisReplyError) and got[-3].code == "WRONGTYPE"


def test_an_error_reply_raises_from_call_and_stays_in_place_in_a_pipeline(pair):
    _, packed = pair
    with pytest.raises(RedisReplyError, match="(?i)unknown.*command"):
        packed.call("NOSUCHCOMMAND", "x")
    first, bad, last = packed.pipeline([("SET", "a", "1"), ("INCR", "a", "b"), ("GET", "a")])
    assert first == "OK" and isinstance(bad, RedisReplyError) and last == b"1"


def test_scripts_run_as_their_own_functions_with_their_keys_and_argv(pair):
    direct, packed = pair
    script = SCRIPTS[0]
    # An EVALSHA of a referee script in a batch calls its function; the same call made
    # directly gives the same reply (here: the create script refusing a bad call).
    via_packed = packed.pipeline([("EVALSHA", script.sha, 1, "k", "x")])[0]
    direct.call("SCRIPT", "LOAD", script.text)
    try:
        via_direct = direct.call("EVALSHA", script.sha, 1, "k", "x")
    except RedisReplyError as exc:
        via_direct = exc
    assert type(via_packed) is type(via_direct)
    unknown = packed.pipeline([("EVALSHA", "0" * 40, 0)])[0]
    assert isinstance(unknown, RedisReplyError)


def test_the_runner_is_loaded_once_then_called_by_sha(redis_server):
    direct = RespClient(redis_server.url, timeout_s=5)
    packed = packed_client(redis_server.url)
    packed.call("PING")
    sha = packed._runner()[0]
    assert direct.call("SCRIPT", "EXISTS", sha) == [1]
    direct.call("SCRIPT", "FLUSH")  # a restarted Redis: NOSCRIPT, then EVAL again
    assert packed.call("PING") == "PONG"
    assert direct.call("SCRIPT", "EXISTS", sha) == [1]
    assert runner_text().count("= function(KEYS, ARGV)") == len(SCRIPTS)


def test_the_first_trip_reads_redis_clock(pair):
    _, packed = pair
    assert packed.clock_offset is None
    packed.call("PING")
    assert isinstance(packed.clock_offset, float) and abs(packed.clock_offset) < 5


def test_the_json_on_the_wire_is_ascii_whatever_the_values():
    payload = encode_batch([("SET", b"\xff\x00", "caf\u00e9"), ("GET", "\udcff")], {})
    assert payload.isascii()


@given(st.lists(st.one_of(st.text(max_size=6), st.text("ab\x00", max_size=3), st.binary(max_size=4),
                         st.integers(), st.floats(allow_nan=False)), max_size=8))
def test_a_batch_of_plain_text_checked_at_once_is_what_each_value_checked_gives(values):
    from kemi.storage.packed import _wire, _wired

    assert _wired(values) == [_wire(v) for v in values]


def test_an_answer_that_is_not_the_runners_is_a_protocol_error():
    with pytest.raises(RedisProtocolError):
        decode_answers("not json", 1)
    with pytest.raises(RedisProtocolError):
        decode_answers("[1, 2]", 1)


def test_a_failed_transport_counts_for_the_breaker_and_forgets_the_clock():
    seen: list[str] = []

    def down(sha, text, payload):
        raise RedisUnavailable("redis 127.0.0.1:1: connection refused")

    client = PackedClient(down, "127.0.0.1:1", 0.05)
    client.observer = seen.append
    for _ in range(client.breaker.failures):
        with pytest.raises(RedisUnavailable, match="refused"):
            client.call("PING")
    with pytest.raises(RedisUnavailable, match="circuit breaker open"):
        client.call("PING")
    assert seen.count("failure") == client.breaker.failures and "breaker-open" in seen
    assert client.clock_offset is None


def test_the_resp_transport_carries_a_batch_in_one_round_trip(redis_server):
    # What the tests use for ndb_redis, and what ndb.py falls back to.
    resp = RespClient(redis_server.url, timeout_s=5)
    client = PackedClient(resp_transport(resp), resp.address, 5)
    assert client.pipeline([("SET", "a", "b"), ("GET", "a")]) == ["OK", b"b"]
