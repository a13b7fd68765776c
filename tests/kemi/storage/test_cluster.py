"""referee on a real Redis Cluster (3 masters on loopback): the client's routing (CRC16
against CLUSTER KEYSLOT, MOVED, ASK, pipelines over several nodes, the budget when a node
hangs), and the transfer store's Cluster path -- scripts confined to the call's slot
(Redis itself enforces it: the Cluster scripts carry a `#!lua` shebang), the cross-slot
work done around them in an order a crash between the steps cannot lose a transfer by,
and the round trips that costs.  The behaviour tests of the store and the dialog index
run on the cluster too (test_store.py, test_dialogs.py)."""

from __future__ import annotations

import binascii
import time

import pytest

from kemi import config
from kemi.core.state import Event, State
from kemi.storage.journal import Journal
from kemi.storage.resp import (
    CircuitBreaker,
    ClusterClient,
    RedisReplyError,
    RedisUnavailable,
    RespClient,
    command_key,
    crc16,
    key_slot,
)
from kemi.storage.transfers import SEP, TransferStore
from tests.support.redis_cluster import RedisCluster, redis_cluster  # noqa: F401 - a fixture

NOW = 1_700_000_000.0
ANDREW, MCKENZIE, MARSHA = "andrew@example.com", "mckenzie@example.com", "marsha@example.com"


class Counting:
    """Counts round trips: a call is one, a pipeline is one however many nodes it reaches
    (all of them are sent to before any reply is read)."""

    cluster = True

    def __init__(self, inner: ClusterClient):
        self.inner = inner
        self.calls: list[str] = []

    def call(self, *args):
        self.calls.append(str(args[0]))
        return self.inner.call(*args)

    def pipeline(self, commands):
        self.calls.append("PIPELINE:" + ",".join(str(c[0]) for c in commands))
        return self.inner.pipeline(commands)


@pytest.fixture
def cluster(redis_cluster):  # noqa: F811 - the imported fixture
    redis_cluster.flush()
    redis_cluster.reset_stats()
    return redis_cluster


@pytest.fixture
def client(cluster):
    c = RespClient(cluster.url, timeout_s=5)
    yield c
    c.close()


@pytest.fixture
def store(client):
    return TransferStore(client)


def call_ids_on_every_node(cluster: RedisCluster, store: TransferStore, base: str) -> list[str]:
    """One Call-ID per master, in node order: their transfers live on different nodes."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < len(cluster.nodes):
        cid = f"{base}-{i}@pc33.atlanta.example.com"
        node = cluster.nodes.index(cluster.node_of(store.index_key(cid)))
        out.setdefault(node, cid)
        i += 1
    return [out[n] for n in sorted(out)]


def _create(store: TransferStore, call_id: str, refer_id="1", **kw):
    args = dict(fields={"refer_to": f"sip:{MARSHA}"}, now=NOW, deadline=NOW + 600,
                transferor=ANDREW, transferee=MCKENZIE, target=MARSHA)
    args.update(kw)
    return store.create(call_id, refer_id, **args)


def assert_no_crossslot(cluster: RedisCluster) -> None:
    errors = cluster.error_stats()
    assert "CROSSSLOT" not in errors, errors
    # Only what the client handles by design: a node meeting a script the first time,
    # and redirects a test provoked.
    assert set(errors) <= {"NOSCRIPT", "MOVED", "ASK"}, errors


# ----------------------------------------------------------------- the hash slot


def test_crc16_xmodem_known_vectors():
    assert crc16(b"") == 0
    assert crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    for data in (b"a", b"referee", bytes(range(256)), "ümlaut".encode()):
        assert crc16(data) == binascii.crc_hqx(data, 0)  # the stdlib's CCITT, init 0
    # Redis Cluster specification examples
    assert key_slot("foo") == 12182 and key_slot("bar") == 5061
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % 16384  # empty tag: whole key
    assert key_slot("foo{{bar}}zap") == crc16(b"{bar") % 16384
    assert key_slot("foo{bar}{zap}") == key_slot("bar")


def test_key_slot_agrees_with_cluster_keyslot(client, store):
    keys = ["foo", "{}", "{", "}", "a{b", "x{}y{z}", "ümlaut{ß}", "sp ace", "\x1f",
            store.xfer_key("{odd}@host", 1), store.deadlines_key, store.stream_key,
            store.rate_key(ANDREW, NOW), store.tie_key(MCKENZIE)]
    keys += [store.index_key(f"call-{i}@h") for i in range(200)]
    for key in keys:
        assert client.call("CLUSTER", "KEYSLOT", key) == key_slot(key), key


def test_command_key():
    assert command_key(("EVALSHA", "abc", 2, "k1", "k2", "arg")) == "k1"
    assert command_key(("EVAL", "return 1", 0)) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "STREAMS", "s", ">")) == "s"
    assert command_key(("XGROUP", "CREATE", "s", "g", "$")) == "s"
    assert command_key(("HSET", "h", "f", "v")) == "h"
    assert command_key(("PING",)) is None and command_key(("CLUSTER", "SLOTS")) is None


# ----------------------------------------------------------------- the client


def test_configuration_selects_cluster_mode():
    c = RespClient("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]:7002", timeout_s=0.1)
    assert isinstance(c, ClusterClient) and c.cluster
    assert c.seeds == ["127.0.0.1:7000", "127.0.0.1:7001", "[::1]:7002"]
    assert not c.connected  # lazy, like RespClient
    assert not RespClient("redis://127.0.0.1:6379/0").cluster
    with pytest.raises(ValueError, match="database 0"):
        RespClient("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="seed"):
        RespClient("redis+cluster://")
    settings = config.parse('[redis]\nurl = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"\n')
    assert settings.redis.url.startswith("redis+cluster://")


def test_commands_and_pipelines_reach_every_node(cluster, client):
    keys = [f"k{i}" for i in range(60)]
    assert {cluster.node_of(k).port for k in keys} == {n.port for n in cluster.nodes}
    out = client.pipeline([("SET", k, i) for i, k in enumerate(keys)] +
                          [("GET", k) for k in keys] + [("HGET", "k0", "f")])
    assert out[:60] == ["OK"] * 60
    assert out[60:120] == [str(i).encode() for i in range(60)]  # in command order
    assert isinstance(out[120], RedisReplyError) and out[120].code == "WRONGTYPE"
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        client.call("HGET", "k0", "f")
    assert client.map_loads == 1 and client.redirects == 0
    for node in cluster.nodes:  # each node holds exactly its own keys
        assert node.call("DBSIZE") == sum(cluster.node_of(k) is node for k in keys)


def test_moved_is_followed_and_the_map_reloaded(cluster, client, store):
    cid = call_ids_on_every_node(cluster, store, "moved")[0]
    assert _create(store, cid).created
    slot = key_slot(store.index_key(cid))
    before = cluster.node_of(store.index_key(cid))
    dest = next(n for n in cluster.nodes if n is not before)
    cluster.move_slot(slot, dest)  # the client still believes the old map
    r = store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    assert (r.outcome, r.new) == ("applied", State.ACCEPTED)
    assert client.redirects >= 1
    assert client.node_for(store.index_key(cid)) == dest.address
    assert store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 2).final
    assert client.map_loads >= 2  # a MOVED means more may have moved: the map is reloaded
    assert store.finished(5)[0]["call_id"] == cid
    assert "MOVED" in cluster.error_stats()
    assert_no_crossslot(cluster)


def test_ask_is_followed_while_a_slot_migrates(cluster, client, store):
    cid = call_ids_on_every_node(cluster, store, "ask")[1]
    _create(store, cid)
    slot = key_slot(store.index_key(cid))
    src = cluster.node_of(store.index_key(cid))
    dest = next(n for n in cluster.nodes if n is not src)
    dest.call("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
    src.call("CLUSTER", "SETSLOT", slot, "MIGRATING", dest.id)
    keys = src.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
    src.call("MIGRATE", "127.0.0.1", dest.port, "", 0, 5000, "KEYS", *keys)
    # Half-way through a reshard: the source answers ASK, the client asks the target.
    r = store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    assert (r.outcome, r.new) == ("applied", State.ACCEPTED)
    assert client.redirects >= 1 and "ASK" in cluster.error_stats()
    assert client.node_for(store.index_key(cid)) == src.address  # ASK never moves the map
    for node in cluster.nodes:
        node.call("CLUSTER", "SETSLOT", slot, "NODE", dest.id)
    assert store.get(cid, "1")["state"] == "accepted"


def test_a_hung_node_costs_the_budget_and_surfaces_as_unavailable(cluster, store):
    fast = RespClient(cluster.url, timeout_s=0.1, breaker=CircuitBreaker(100, 0.01))
    s = TransferStore(fast)
    a, b, c = call_ids_on_every_node(cluster, store, "hung")
    for cid in (a, b, c):
        _create(s, cid, transferee=None, transferor=None)
    victim = cluster.node_of(store.index_key(b))
    victim.proc.send_signal(19)  # SIGSTOP: accepts connections, answers nothing
    try:
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable, match="timeout after 100 ms"):
            s.apply(b, "1", Event.REFER_ACCEPTED, NOW + 1)
        assert time.monotonic() - t0 < 0.3
        assert s.apply(a, "1", Event.REFER_ACCEPTED, NOW + 1).outcome == "applied"
    finally:
        victim.proc.send_signal(18)  # SIGCONT
    # The script sent before the timeout ran once the node woke up; the node serves again.
    assert s.get(b, "1")["state"] == "accepted"
    assert s.apply(b, "1", Event.NOTIFY_TRYING, NOW + 2).outcome == "applied"


def test_breaker_opens_on_consecutive_failures(cluster):
    c = RespClient("redis+cluster://127.0.0.1:1", timeout_s=0.1,
                   breaker=CircuitBreaker(2, open_s=5))
    for _ in range(2):
        with pytest.raises(RedisUnavailable, match="refused"):
            c.call("GET", "x")
    with pytest.raises(RedisUnavailable, match="breaker open"):
        c.call("GET", "x")


# ----------------------------------------------------------------- the store's Cluster path


def test_cluster_scripts_cannot_leave_the_calls_slot(cluster, client, store):
    """What makes "no CROSSSLOT" a guarantee rather than luck: a `#!lua` script touching a
    key of another slot is refused by Redis itself (a legacy script would be allowed on
    the same node).  Every store script runs that way on a Cluster."""
    a = call_ids_on_every_node(cluster, store, "slot")[0]
    node = cluster.node_of(store.index_key(a))
    elsewhere = next(k for k in (f"k{i}" for i in range(10_000))
                     if cluster.node_of(k) is node and key_slot(k) != key_slot(a))
    script = "return redis.call('GET', ARGV[1])"
    assert client.call("EVAL", script, 1, store.index_key(a), elsewhere) is None  # legacy
    with pytest.raises(RedisReplyError, match="same slot"):
        client.call("EVAL", "#!lua\n" + script, 1, store.index_key(a), elsewhere)
    # ...while a key of the call's own slot, named inside the script, is fine (a NOTIFY
    # without ;id= finds its transfer's key in the dialog's index).
    assert client.call("EVAL", "#!lua\n" + script, 1, store.index_key(a),
                       store.xfer_key(a, 7)) is None


def test_full_life_on_three_nodes_without_crossslot(cluster, client, store):
    a, b, c = call_ids_on_every_node(cluster, store, "life")
    minute = (NOW // 60) * 60
    # blind transfer on a: REFER, 202, NOTIFYs (one without ;id=), success
    assert _create(store, a, now=minute).created
    store.apply(a, "1", Event.REFER_ACCEPTED, minute + 1, {"accept_code": "202"})
    assert store.apply(a, None, Event.NOTIFY_TRYING, minute + 2).refer_id == "1"
    assert store.find_for_invite(MCKENZIE) == [(a, "1", MARSHA)]
    assert store.apply(a, "1", Event.INVITE, minute + 2, {"invite_call_id": "x"}).outcome in (
        "applied", "ignored")
    assert store.annotate(a, "1", minute + 3, {"asterisk_result": "none"}, detail="n/a")
    assert store.apply(a, "1", Event.NOTIFY_SUCCESS, minute + 4).final
    # two REFERs in dialog b, one refused by the per-call limit, one rejected
    assert _create(store, b, "1", now=minute + 5, max_per_call=2).created
    assert _create(store, b, "2", now=minute + 5, max_per_call=2, target="bob@example.com"
                   ).created
    assert _create(store, b, "3", now=minute + 5, max_per_call=2).reason == "per-call-limit"
    assert store.apply(b, None, Event.NOTIFY_TRYING, minute + 6).outcome == "ambiguous"
    assert store.reject(b, "2", minute + 6, {"reply": "503"}).final
    # a duplicate and a rate limit on c
    assert _create(store, c, now=minute + 7, rate_limit=5).refers_this_minute == 5
    dup = _create(store, c, now=minute + 8, rate_limit=5)
    assert (dup.created, dup.reason, dup.refers_this_minute) == (False, "duplicate", 5)
    limited = _create(store, c, "9", now=minute + 8, rate_limit=5)
    assert (limited.reason, limited.refers_this_minute) == ("rate-limit", 6)
    # what is left: b/1 and c/1 open, tied and due in order; a and b/2 on the stream
    assert sorted(store.find_for_invite(MCKENZIE)) == sorted([(b, "1", MARSHA),
                                                            (c, "1", MARSHA)])
    assert [(r["call_id"], r["refer_id"]) for r in store.finished(10)] == [(b, "2"), (a, "1")]
    assert store.due(minute + 10_000) == [(b, "1"), (c, "1")]
    for cid, rid in store.due(minute + 10_000):
        assert store.apply(cid, rid, Event.EXPIRY, minute + 10_000).new == State.EXPIRED
    assert store.due(minute + 10_000) == [] and store.find_for_invite(MCKENZIE) == []
    assert len(store.finished(10)) == 4
    assert store.log(a, "1")[-2].split("|")[1] == "note"
    for key in cluster.keys():
        assert client.call("TTL", key) > 0, key
    assert_no_crossslot(cluster)


def test_round_trips_on_a_cluster(cluster, client):
    for node in cluster.nodes:
        node.call("SCRIPT", "FLUSH")
    counted = Counting(client)
    store = TransferStore(counted)
    cid = "trips@h"
    _create(store, cid, "1")  # a node meeting the script: NOSCRIPT, then EVAL
    assert counted.calls == ["PIPELINE:INCR,EXPIRE,ZADD,EXPIRE,EXPIRE,HSET,EXPIRE,EXPIRE",
                             "EVALSHA", "EVAL"]
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    trips = {}
    for name, fn in {
        "REFER": lambda: _create(store, cid, "2"),
        "NOTIFY": lambda: store.apply(cid, "1", Event.NOTIFY_TRYING, NOW + 2,
                                      deadline=NOW + 900),
        "NOTIFY, earlier deadline": lambda: store.apply(cid, "1", Event.NOTIFY_RINGING,
                                                        NOW + 3, deadline=NOW + 60),
        "final NOTIFY": lambda: store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 4),
        "NOTIFY without id": lambda: store.apply(cid, None, Event.NOTIFY_TRYING, NOW + 5),
        "referred INVITE lookup": lambda: store.find_for_invite(MCKENZIE),
        "due": lambda: store.due(NOW),
        "finished": lambda: store.finished(5),
    }.items():
        counted.calls.clear()
        fn()
        trips[name] = list(counted.calls)
    assert trips == {
        "REFER": ["PIPELINE:INCR,EXPIRE,ZADD,EXPIRE,EXPIRE,HSET,EXPIRE,EXPIRE", "EVALSHA"],
        "NOTIFY": ["EVALSHA"],
        "NOTIFY, earlier deadline": ["EVALSHA", "PIPELINE:ZADD"],
        "final NOTIFY": ["EVALSHA", "PIPELINE:XADD,EXPIRE,EXPIRE,ZREM,HDEL"],
        "NOTIFY without id": ["EVALSHA"],
        "referred INVITE lookup": ["HGETALL", "PIPELINE:HGET"],
        "due": ["ZRANGEBYSCORE"],
        "finished": ["XREVRANGE"],
    }


# ----------------------------------------------------------------- a crash between the steps


class FailPipelineOnce:
    """A client whose next pipeline never reaches Redis (a crash, or Redis going away,
    right after the script)."""

    cluster = True

    def __init__(self, inner: ClusterClient):
        self.inner = inner
        self.armed = False

    def call(self, *args):
        return self.inner.call(*args)

    def pipeline(self, commands):
        if self.armed:
            self.armed = False
            raise RedisUnavailable("lost after the script")
        return self.inner.pipeline(commands)


def test_finished_record_survives_losing_the_steps_after_the_final_script(
        cluster, client, tmp_path):
    flaky = FailPipelineOnce(client)
    store = TransferStore(flaky)
    cid = "crash-final@h"
    _create(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    flaky.armed = True
    with pytest.raises(RedisUnavailable):  # the glue spools the event, as for any failure
        store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 2, {"last_notify": "200"})
    journal = Journal(tmp_path / "spool")
    journal.append("apply", call_id=cid, refer_id="1", event=str(Event.NOTIFY_SUCCESS),
                   now=NOW + 2, fields={"last_notify": "200"}, deadline=None, detail="")
    # Until the replay: the state is final, the stream does not have it yet, and the
    # entries left behind decide nothing (the tie is filtered, the sweep drops the entry).
    assert store.get(cid, "1")["state"] == "succeeded" and store.finished() == []
    # The calls go on: the BYEs after a transfer are logged meanwhile.
    assert store.apply(cid, "1", Event.BYE_TRANSFEROR, NOW + 2.5).outcome == "ignored"
    assert client.call("HGETALL", store.tie_key(MCKENZIE)) != []
    assert store.find_for_invite(MCKENZIE) == []
    report = journal.replay(store)
    assert (report.applied, report.kept, report.bad) == (1, 0, 0)
    [record] = store.finished()
    assert record["state"] == "succeeded" and record["last_notify"] == "200"
    assert store.due(NOW + 10_000) == []
    assert client.call("HGETALL", store.tie_key(MCKENZIE)) == []
    log = store.log(cid, "1")
    assert len(log) == 4 and log[-2].split("|")[1:5] == [
        "notify-success", "accepted", "succeeded", "applied"]  # applied once, not twice
    # A late retransmission of that NOTIFY is no replay: it is not streamed again.
    assert store.apply(cid, "1", Event.NOTIFY_SUCCESS, NOW + 3).final is False
    assert len(store.finished()) == 1


def test_entries_written_before_a_create_that_never_ran_are_harmless(cluster, client, store):
    cid = "crash-create@h"
    member = f"{cid}{SEP}1"
    # The steps before the script, then nothing (the worker died).
    store._before_create(member, NOW, NOW + 5, 305, ANDREW, store.tie_key(MCKENZIE), MARSHA)
    assert store.find_for_invite(MCKENZIE) == []  # no transfer: ties nothing
    assert store.due(NOW + 10) == [(cid, "1")]
    assert store.apply(cid, "1", Event.EXPIRY, NOW + 10).outcome == "unknown"
    assert store.due(NOW + 10) == []  # the sweep dropped it


def test_a_stale_tie_never_decides_an_invite(cluster, client, store):
    """The HDEL after a final script lost: the tie names a closed transfer."""
    cid = "stale-tie@h"
    _create(store, cid)
    store.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1)
    store.apply(cid, "1", Event.NOTIFY_FAILURE, NOW + 2)
    client.call("HSET", store.tie_key(MCKENZIE), f"{cid}{SEP}1", MARSHA)  # as if not removed
    assert store.find_for_invite(MCKENZIE) == []
    assert client.call("HGETALL", store.tie_key(MCKENZIE)) == []  # and tidied
    # Had the glue tied an INVITE to it anyway, a closed transfer does not move.
    r = store.apply(cid, "1", Event.INVITE, NOW + 3)
    assert r.new == State.FAILED and r.outcome in ("ignored", "illegal") and not r.final


def test_a_lost_deadline_update_delays_an_expiry_but_loses_nothing(cluster, client, store):
    """The index entry is never later than the record's deadline, except after a lost
    'lowered' update -- and then the record's TTL still outlives the entry."""
    cid = "crash-lower@h"
    flaky = FailPipelineOnce(client)
    s = TransferStore(flaky, ttl_margin_s=300)
    _create(s, cid, deadline=NOW + 900)
    flaky.armed = True
    with pytest.raises(RedisUnavailable):
        s.apply(cid, "1", Event.REFER_ACCEPTED, NOW + 1, deadline=NOW + 60)
    assert s.get(cid, "1")["deadline"] == f"{NOW + 60:.3f}"
    assert client.call("TTL", s.xfer_key(cid, 1)) >= 1100  # 900 + margin, not 60 + margin
    assert s.due(NOW + 100) == []  # late...
    assert s.due(NOW + 900) == [(cid, "1")]  # ...but there, and the record with it
    assert s.apply(cid, "1", Event.EXPIRY, NOW + 900).new == State.EXPIRED


def test_password_reaches_every_node(cluster):
    for node in cluster.nodes:
        node.call("CONFIG", "SET", "requirepass", "s3cr%t")
    try:
        authed = RespClient(cluster.url.replace("//", "//:s3cr%25t@", 1), timeout_s=1)
        assert isinstance(authed, ClusterClient)
        assert authed.pipeline([("SET", f"k{i}", i) for i in range(30)]) == ["OK"] * 30
        assert len(authed.masters) == 3
        with pytest.raises(RedisUnavailable, match="AUTH/SELECT refused"):
            RespClient(cluster.url.replace("//", "//:nope@", 1), timeout_s=1).call("GET", "k1")
    finally:
        for node in cluster.nodes:
            plain = node.client
            plain.close()
            RespClient(f"redis://:s3cr%25t@127.0.0.1:{node.port}/0", timeout_s=5).call(
                "CONFIG", "SET", "requirepass", "")
            assert plain.call("PING") == "PONG"


# ----------------------------------------------------------------- a cluster that misbehaves


class FakeNode:
    """One loopback "cluster node" that answers each command with `answer(args)` (raw RESP
    bytes): enough to play a cluster that redirects forever or sends a nonsense slot map."""

    def __init__(self, answer):
        import socket
        import threading

        self.answer = answer
        self.commands: list[list[bytes]] = []
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from kemi.storage.resp import NEED_MORE, RespParser

        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            parser = RespParser()
            with conn:
                while data := conn.recv(65536):
                    parser.feed(data)
                    while (cmd := parser.get()) is not NEED_MORE:
                        self.commands.append(cmd)
                        conn.sendall(self.answer(cmd))

    def close(self) -> None:
        self._srv.close()


def _slots_to(port: int) -> bytes:
    return (b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n" % port)


@pytest.fixture
def fake_node():
    nodes: list[FakeNode] = []

    def make(answer) -> FakeNode:
        nodes.append(FakeNode(answer))
        return nodes[-1]

    yield make
    for n in nodes:
        n.close()


def test_a_moved_loop_ends_as_unavailable_after_max_redirects(fake_node):
    port = []
    node = fake_node(lambda cmd: _slots_to(port[0]) if cmd[0] == b"CLUSTER"
                     else b"-MOVED 866 127.0.0.1:%d\r\n" % port[0])
    port.append(node.port)
    c = RespClient(f"redis+cluster://127.0.0.1:{node.port}", timeout_s=1,
                   breaker=CircuitBreaker(5, open_s=5))
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match=r"still redirected after 5 redirects "
                       r"\(last: MOVED 866 127.0.0.1"):
        c.call("GET", "x")
    assert time.monotonic() - t0 < 1
    assert sum(1 for cmd in node.commands if cmd[0] == b"GET") == 6  # first try + 5
    assert c.breaker._count == 1  # counted as a failure of the call
    c.close()


def test_a_malformed_redirect_is_returned_as_the_error_it_is(fake_node):
    port = []
    node = fake_node(lambda cmd: _slots_to(port[0]) if cmd[0] == b"CLUSTER"
                     else b"-MOVED soon somewhere\r\n")
    port.append(node.port)
    c = RespClient(f"redis+cluster://127.0.0.1:{node.port}", timeout_s=1)
    with pytest.raises(RedisReplyError, match="MOVED soon somewhere"):
        c.call("GET", "x")
    assert c.redirects == 0
    c.close()


def test_an_unreadable_slot_map_is_unavailable_and_the_next_seed_is_asked(fake_node):
    bad = fake_node(lambda cmd: b"*1\r\n*3\r\n:0\r\n:99999\r\n*0\r\n")
    port = []
    good = fake_node(lambda cmd: _slots_to(port[0]) if cmd[0] == b"CLUSTER" else b"$1\r\nv\r\n")
    port.append(good.port)
    only_bad = RespClient(f"redis+cluster://127.0.0.1:{bad.port}", timeout_s=1)
    with pytest.raises(RedisUnavailable, match="unreadable CLUSTER SLOTS reply"):
        only_bad.call("GET", "x")
    only_bad.close()  # the fake serves one connection at a time
    both = RespClient(f"redis+cluster://127.0.0.1:{bad.port},127.0.0.1:{good.port}",
                      timeout_s=1)
    assert both.call("GET", "x") == b"v"
    assert both.masters == [f"127.0.0.1:{good.port}"]
    both.close()


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:0", "redis+cluster://h:65536",
                                 "redis+cluster://h:70a", "redis+cluster://:7000"])
def test_a_bad_seed_is_refused_when_the_client_is_built(url):
    with pytest.raises(ValueError, match="bad seed node"):
        RespClient(url)
