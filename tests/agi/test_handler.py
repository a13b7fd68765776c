"""TransferHandler glue: script names, Redis hung, a session cut by the time limit."""

from __future__ import annotations

import io
import socket
import time

from agi.handler import TransferHandler, script_name
from agi.plan import ANCHORED, RELAYED
from kemi.storage.resp import RespClient
from kemi.storage.transfers import TransferStore
from tests.support import transcript
from tests.support.agi_replay import ReplayPeer, split

LAB = {"amixfer": ANCHORED, "transfer": RELAYED}
OPTIONALS = {b"GET VARIABLE XFER_ANNOUNCE\n": b"200 result=0\n",
             b"GET VARIABLE XFER_CALLERID\n": b"200 result=0\n"}


def wait_outcome(handler: TransferHandler, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not handler.outcomes and time.monotonic() < deadline:
        time.sleep(0.01)
    return handler.outcomes[0][1]


def test_script_name():
    assert script_name({"agi_network_script": "anchored"}) == "anchored"
    assert script_name({"agi_request": "agi://127.0.0.1:4573/relayed"}) == "relayed"
    assert script_name({"agi_network_script": "", "agi_request": "agi://h/anchored?x=1"}) == \
        "anchored"


def test_default_scripts_are_anchored_and_relayed():
    h = TransferHandler()
    assert h.scripts == {"anchored": ANCHORED, "relayed": RELAYED}


def test_unknown_script_sends_nothing(agi_server):
    handler = TransferHandler(None)  # the lab's "amixfer" is not one of ours
    server = agi_server(handler)
    peer = ReplayPeer(split(transcript.agi("a-target-answers")), scale=0.01)
    peer.start(server.port).join()
    peer.check()
    assert peer.commands == [] and peer.saw_half_close
    assert wait_outcome(handler).error == "unknown script"


def test_redis_hung_does_not_hold_the_reconnect(agi_server, redis_server):
    client = RespClient(redis_server.url, timeout_s=0.1)
    store = TransferStore(client, "referee")
    now = time.time()
    store.create("x-busy-1", "1", {}, now=now, deadline=now + 600)
    redis_server.pause()
    try:
        handler = TransferHandler(store, scripts=LAB)
        server = agi_server(handler)
        rec = split(transcript.agi("b-target-busy-bridge-app"),
                    rename={b"x-busy-1": b"1@x-busy-1"})
        peer = ReplayPeer(rec, scale=0.01, extra=OPTIONALS).start(server.port).join()
        peer.check()
        assert b"EXEC Bridge PJSIP/amipbx-00000030\n" in peer.commands
        assert wait_outcome(handler).result == "reconnected"
        assert handler.store_errors >= 1 and handler.notes_written == 0
    finally:
        redis_server.resume()


def test_session_cut_by_the_limit_is_recorded(agi_server, store):
    """i-session-timer-noanswer-50s at its real pace: the Dial rings 50 s; a 0.5 s limit cuts
    the session while Dial runs, and the record says so."""
    now = time.time()
    store.create("x-noans-3", "1", {}, now=now, deadline=now + 600)
    handler = TransferHandler(store, scripts=LAB)
    server = agi_server(handler, session_limit_s=0.5)
    rec = split(transcript.agi("i-session-timer-noanswer-50s"),
                rename={b"x-noans-3": b"1@x-noans-3"})
    peer = ReplayPeer(rec, scale=1.0, extra=OPTIONALS, timeout_s=3.0)
    t0 = time.monotonic()
    peer.start(server.port).join(timeout=5)
    assert time.monotonic() - t0 < 3.0
    assert peer.closed_early and peer.errors == []
    assert peer.commands[-1] == b"EXEC Dial PJSIP/sttarget,50,m\n"
    o = wait_outcome(handler)
    assert o.result == "error" and "session limit 0.5 s" in o.error
    assert "during EXEC Dial, outcome unknown" in o.error
    record = store.get("x-noans-3", "1")
    assert record["agi_result"] == "error" and "session limit" in record["agi_error"]


def test_concurrent_replays_share_one_store(agi_server, store):
    """Four anchored sessions at once through one handler and one Redis connection."""
    names = ["a-target-answers", "b-target-busy-bridge-app", "d-recall-originate",
             "c-target-noanswer-bridge-app"]
    handler = TransferHandler(store, scripts=LAB)
    server = agi_server(handler)
    peers = []
    now = time.time()
    for name in names:
        rec0 = split(transcript.agi(name))
        lab_id = rec0.exchanges[0].replies[0].data.decode().split("(")[1].split(")")[0]
        store.create(lab_id, "1", {}, now=now, deadline=now + 600)
        rec = split(transcript.agi(name), rename={lab_id.encode(): f"1@{lab_id}".encode()})
        peers.append((lab_id, ReplayPeer(rec, scale=0.01, extra=OPTIONALS)))
    for _, p in peers:
        p.start(server.port)
    for _, p in peers:
        p.join()
        p.check()
    deadline = time.monotonic() + 5
    while len(handler.outcomes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    results = {lab_id: store.get(lab_id, "1")["agi_result"] for lab_id, _ in peers}
    assert results == {"x-answer-1": "bridged-target", "x-busy-1": "reconnected",
                       "x-recall-1": "wait-recall", "x-noans-1": "reconnected"}
    assert handler.store_errors == 0


def test_handler_survives_a_peer_that_vanishes(agi_server, store):
    handler = TransferHandler(store, scripts=LAB)
    server = agi_server(handler)
    env = b"".join(c.data for c in split(transcript.agi("a-target-answers")).env)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(env)
        s.recv(100)  # GET VARIABLE XFER_ID
    o = wait_outcome(handler)
    assert o.result == "error" and "connection lost" in o.error


# -- a session whose replies are scripted (no socket): what reaches the record


class _Notes:
    """A TransferStore stand-in that keeps what annotate() was given."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def annotate(self, call_id, refer_id, now, fields, detail=""):
        self.calls.append((call_id, refer_id, dict(fields)))
        return True


ANCHORED_ENV = "agi_network_script: anchored\nagi_channel: PJSIP/p-00000001\n\n"


def _anchored_replies(target: str, after: list[str]) -> str:
    values = ["200 result=1 (1@c1)", "200 result=1 (PJSIP/a-00000002)",
              "200 result=1 (1700000000.2)", f"200 result=1 ({target})", "200 result=0",
              "200 result=0", "200 result=0", "200 result=0"]
    return "".join(f"{v}\n" for v in values + after)


def _run(store, replies: str):
    from agi.session import AGISession

    out = io.StringIO()
    session = AGISession(rfile=io.StringIO(ANCHORED_ENV + replies), wfile=out, name="t")
    handler = TransferHandler(store)
    handler(session)
    return handler.outcomes[0][1], out.getvalue().splitlines()


def test_a_value_that_cannot_be_sent_ends_the_plan_as_a_recorded_error():
    """XFER_TARGET with a CR inside: no Dial line can carry it; the plan stops before the
    Dial and the record says why (the handler must not die with a ValueError)."""
    notes = _Notes()
    o, sent = _run(notes, _anchored_replies("PJSIP/20\r00", ["200 result=6"]))
    assert not any(line.startswith("EXEC Dial") for line in sent)
    assert o.result == "error" and "CR/LF" in o.error
    assert notes.calls[-1][:2] == ("c1", "1")
    assert notes.calls[-1][2]["agi_result"] == "error"


def test_garbage_from_asterisk_mid_session_is_recorded_as_an_error():
    notes = _Notes()
    o, sent = _run(notes, _anchored_replies("PJSIP/2000", ["this is not AGI"]))
    assert sent[-1] == "CHANNEL STATUS"
    assert o.result == "error" and "not an AGI reply" in o.error
    assert notes.calls[-1][2]["agi_result"] == "error"


def test_a_bug_in_the_plan_is_logged_and_recorded(monkeypatch, caplog):
    from agi.plan import AnchoredRun

    def broken(self, plan):
        raise RuntimeError("boom")
        yield

    monkeypatch.setattr(AnchoredRun, "_announce", broken)
    notes = _Notes()
    o, _ = _run(notes, _anchored_replies("PJSIP/2000", []))
    assert o.result == "error" and "RuntimeError: boom" in o.error
    assert notes.calls[-1][2] == {"agi_result": "error",
                                  "agi_error": "internal error: RuntimeError: boom"}
    assert "transfer plan failed" in caplog.text
