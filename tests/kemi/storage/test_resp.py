"""The RESP2 client: the sans-IO parser on any split of the stream, then a real redis-server
(commands, pipeline, errors, the time budget with a hung server, the circuit breaker)."""

from __future__ import annotations

import multiprocessing
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.storage.resp import (
    NEED_MORE,
    CircuitBreaker,
    RedisProtocolError,
    RedisReplyError,
    RedisUnavailable,
    RespClient,
    RespParser,
    encode,
)

# ----------------------------------------------------------------- sans-IO


def test_encode():
    assert encode("SET", "k", b"v\r\n", 12, 1.5) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )
    assert encode("GET", "é") == b"*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    assert encode() == b"*0\r\n"


@pytest.mark.parametrize("bad", [None, True, object(), ["x"]])
def test_encode_refuses_ambiguous_arguments(bad):
    with pytest.raises(TypeError):
        encode("SET", "k", bad)


def _drain(parser: RespParser) -> list:
    out = []
    while (value := parser.get()) is not NEED_MORE:
        out.append(value)
    return out


def test_parser_types():
    p = RespParser()
    p.feed(b"+OK\r\n-ERR wrong\r\n:42\r\n:-7\r\n$3\r\nabc\r\n$0\r\n\r\n$-1\r\n*-1\r\n")
    p.feed(b"*3\r\n:1\r\n*1\r\n$1\r\nx\r\n$-1\r\n*0\r\n")
    values = _drain(p)
    err = values[1]
    assert isinstance(err, RedisReplyError) and err.message == "ERR wrong" and err.code == "ERR"
    values[1] = "error"
    assert values == ["OK", "error", 42, -7, b"abc", b"", None, None, [1, [b"x"], None], []]


def test_parser_waits_for_the_whole_reply():
    p = RespParser()
    p.feed(b"*2\r\n$5\r\nhel")
    assert p.get() is NEED_MORE
    p.feed(b"lo\r")
    assert p.get() is NEED_MORE
    p.feed(b"\n:5")
    assert p.get() is NEED_MORE
    p.feed(b"\r\n")
    assert p.get() == [b"hello", 5]
    assert p.get() is NEED_MORE


def test_parser_rejects_garbage():
    p = RespParser()
    p.feed(b"?what\r\n")
    with pytest.raises(RedisProtocolError):
        p.get()
    p = RespParser()
    p.feed(b"$x\r\n")
    with pytest.raises(RedisProtocolError):
        p.get()


def test_a_large_reply_read_in_pieces_is_scanned_once():
    """What was read of an unfinished array is kept as values, not re-read at the next
    piece: a log writer's batch (thousands of items, many socket reads) costs one scan."""
    items = [b"field-%04d" % i for i in range(2000)]
    stream = b"*2000\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in items)
    p = RespParser()
    half = len(stream) // 2
    p.feed(stream[:half])
    assert p.get() is NEED_MORE
    # at most the one item cut in two is left to read again, not the first thousand
    assert len(p._buf) - p._pos < 20
    p.feed(stream[half:])
    assert p.get() == items
    assert p.get() is NEED_MORE


# A reply tree and its RESP2 encoding, written here independently of the parser.
_line_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    max_size=20,
)
_leaf = st.one_of(
    st.tuples(st.just("simple"), _line_text),
    st.tuples(st.just("error"), _line_text),
    st.tuples(st.just("int"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just("bulk"), st.binary(max_size=40)),
    st.tuples(st.just("nil"), st.none()),
)
_reply = st.recursive(
    _leaf, lambda kids: st.tuples(st.just("array"), st.lists(kids, max_size=5)), max_leaves=20
)


def _wire(node) -> bytes:
    kind, v = node
    if kind == "simple":
        return b"+" + v.encode() + b"\r\n"
    if kind == "error":
        return b"-" + v.encode() + b"\r\n"
    if kind == "int":
        return b":%d\r\n" % v
    if kind == "bulk":
        return b"$%d\r\n" % len(v) + v + b"\r\n"
    if kind == "nil":
        return b"$-1\r\n"
    return b"*%d\r\n" % len(v) + b"".join(_wire(k) for k in v)


def _expect(node):
    kind, v = node
    if kind == "simple":
        return v
    if kind == "error":
        return ("error", v)
    if kind in ("int", "bulk", "nil"):
        return v
    return [_expect(k) for k in v]


def _comparable(value):
    if isinstance(value, RedisReplyError):
        return ("error", value.message)
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


@given(replies=st.lists(_reply, min_size=1, max_size=8), data=st.data())
def test_any_split_of_a_reply_stream_gives_the_same_values(replies, data):
    stream = b"".join(_wire(r) for r in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    p = RespParser()
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        p.feed(stream[start:cut])
        start = cut
        got.extend(_drain(p))
    assert [_comparable(v) for v in got] == [_expect(r) for r in replies]
    assert p.get() is NEED_MORE


# ----------------------------------------------------------------- breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_and_half_opens_once():
    clock = FakeClock()
    b = CircuitBreaker(failures=3, open_s=5.0, clock=clock)
    assert b.state == "closed" and b.allow()
    b.failure()
    b.failure()
    b.success()  # a success resets the count
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state == "half-open"
    assert b.allow()  # the one trial
    assert not b.allow()  # nobody else while it runs
    b.failure()  # trial failed: open again for open_s
    assert b.state == "open" and not b.allow()
    clock.now += 5.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_trial_that_never_reports_does_not_block_forever():
    clock = FakeClock()
    b = CircuitBreaker(failures=1, open_s=1.0, clock=clock)
    b.failure()
    clock.now += 1.0
    assert b.allow()
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()


# ----------------------------------------------------------------- real server


@pytest.fixture
def client(redis_server):
    c = RespClient(redis_server.url, timeout_s=0.5)
    yield c
    c.close()


def test_construction_never_connects():
    c = RespClient("redis://127.0.0.1:1/0")
    assert not c.connected
    with pytest.raises(RedisUnavailable, match="refused by 127.0.0.1:1"):
        c.call("PING")


@pytest.mark.parametrize(("url", "message"), [
    ("http://x", "unsupported scheme (use redis://, rediss://, unix://, redis+cluster://, "
     "redis+sentinel:// or rediss+ for TLS)"),
    ("redis://h/x", "database 'x' is not a number"),
    ("redis://h:1/?db=a", "database 'a' is not a number"),
    ("unix:///tmp/r.sock?db=-1", "database '-1' is not a number"),
    ("unix://", "without a socket path"),
])
def test_a_bad_url_is_refused_by_name_when_the_client_is_built(url, message):
    with pytest.raises(ValueError, match=re.escape(f"{url}: ") + ".*" + re.escape(message)):
        RespClient(url)


def test_url_forms(redis_server):
    with pytest.raises(ValueError):
        RespClient("http://x")
    RespClient(redis_server.url).call("SET", "where", "db0")
    c3 = RespClient(f"redis://127.0.0.1:{redis_server.port}/3", timeout_s=0.5)
    assert c3.call("GET", "where") is None
    c3.call("SET", "where", "db3")
    unix = RespClient(f"unix://{redis_server.unix_path}?db=3", timeout_s=0.5)
    assert unix.call("GET", "where") == b"db3"
    assert unix.address == f"unix:{redis_server.unix_path}"
    # A password (AUTH goes in the first round trip of each connection).
    RespClient(redis_server.url).call("CONFIG", "SET", "requirepass", "s3cr%t")
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        RespClient(redis_server.url).call("GET", "where")
    authed = RespClient(f"redis://:s3cr%25t@127.0.0.1:{redis_server.port}/3", timeout_s=0.5)
    assert authed.call("GET", "where") == b"db3"
    wrong = RespClient(f"redis://:nope@127.0.0.1:{redis_server.port}/0", timeout_s=0.5)
    with pytest.raises(RedisUnavailable, match="AUTH/SELECT refused"):
        wrong.call("PING")
    assert not wrong.connected


def test_commands_and_error_reply(client):
    assert client.call("PING") == "PONG"
    assert client.call("SET", "k", "v") == "OK"
    assert client.call("GET", "k") == b"v"
    assert client.call("GET", "missing") is None
    assert client.call("INCR", "n") == 1
    assert client.call("RPUSH", "l", "a", "b") == 2
    assert client.call("LRANGE", "l", 0, -1) == [b"a", b"b"]
    with pytest.raises(RedisReplyError) as info:
        client.call("INCR", "k")
    assert "not an integer" in info.value.message
    # An error reply is not transport trouble: the connection stays.
    assert client.connected and client.breaker.state == "closed"
    with pytest.raises(RedisReplyError) as info:
        client.call("EVALSHA", "0" * 40, 0)
    assert info.value.code == "NOSCRIPT"


def test_large_values_cross_many_reads(client):
    big = bytes(range(256)) * 8192  # 2 MiB
    client.call("SET", "big", big)
    assert client.call("GET", "big") == big


def test_pipeline_is_one_round_trip_with_errors_in_place(client):
    assert client.pipeline([]) == []
    out = client.pipeline([("SET", "a", "1"), ("INCR", "a"), ("HSET", "a", "f", "v"), ("GET", "a")])
    assert out[0] == "OK" and out[1] == 2 and out[3] == b"2"
    assert isinstance(out[2], RedisReplyError) and out[2].code == "WRONGTYPE"


def test_reconnects_transparently_after_a_restart(redis_server, client):
    assert client.call("PING") == "PONG"
    redis_server.stop()
    redis_server.start()
    # The dead connection is noticed before sending: no error, no breaker failure.
    assert client.call("PING") == "PONG"
    assert client.breaker.state == "closed"


def test_budget_holds_when_the_server_hangs(redis_server):
    c = RespClient(redis_server.url, timeout_s=0.05, breaker=CircuitBreaker(failures=100))
    assert c.call("PING") == "PONG"
    redis_server.pause()
    for fresh in (False, True):  # on the open connection, then a new one (connect succeeds)
        if fresh:
            c.close()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable, match="timeout after 50 ms"):
            c.call("GET", "x")
        assert time.monotonic() - t0 < 0.2
        assert not c.connected
    redis_server.resume()
    assert c.call("PING") == "PONG"


def test_breaker_fails_fast_then_recovers_when_resumed(redis_server):
    c = RespClient(redis_server.url, timeout_s=0.05, breaker=CircuitBreaker(3, open_s=0.3))
    told: list[str] = []
    c.observer = told.append  # Kamailio's counters and the breaker file listen here
    c.call("PING")
    redis_server.pause()
    for _ in range(3):
        with pytest.raises(RedisUnavailable, match="timeout"):
            c.call("PING")
    assert c.breaker.state == "open"
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match="circuit breaker open for 127.0.0.1"):
        c.call("PING")
    assert time.monotonic() - t0 < 0.02
    assert not c.connected  # the network was not touched
    redis_server.resume()
    time.sleep(0.35)
    assert c.breaker.state == "half-open"
    assert c.call("PING") == "PONG"
    assert c.breaker.state == "closed"
    assert told == ["trip", "failure", "failure", "failure", "breaker-open", "trip",
                    "breaker-close"]


def test_breaker_recovers_after_a_restart(redis_server):
    c = RespClient(redis_server.url, timeout_s=0.05, breaker=CircuitBreaker(2, open_s=0.2))
    c.call("SET", "k", "v")
    redis_server.stop()
    for _ in range(2):
        with pytest.raises(RedisUnavailable, match="refused"):
            c.call("PING")
    with pytest.raises(RedisUnavailable, match="breaker open"):
        c.call("PING")
    redis_server.start()
    time.sleep(0.25)
    assert c.call("GET", "k") is None  # a new, empty server
    assert c.breaker.state == "closed"


def _child_client_id(c: RespClient, q) -> None:
    q.put(c.call("CLIENT", "ID"))


def test_a_forked_child_never_shares_the_parents_connection(client):
    parent_id = client.call("CLIENT", "ID")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_child_client_id, args=(client, q))
    child.start()
    child_id = q.get(timeout=10)
    child.join(10)
    assert child_id != parent_id
    assert client.call("CLIENT", "ID") == parent_id  # the parent's connection survived
