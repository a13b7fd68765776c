"""`referee transfer show`: a record and its event ladder as an operator reads them."""

from __future__ import annotations

from kemi.cli.transfers import format_record
from kemi.storage.transfers import SEP


def test_show_lists_fields_and_the_ladder_with_times_from_the_refer():
    record = {"call_id": "c1@h", "refer_id": "2", "state": "succeeded",
              "tie_field": f"c1@h{SEP}2"}
    log = [
        "100.000|refer|new|refer-seen|applied|",
        "100.250|notify-success|refer-seen|succeeded|applied|200 OK",
        "100.500|bye-transferor|succeeded|succeeded|ignored|",
        "100.600|note|succeeded|succeeded|noted|ami: A released",
    ]
    text = format_record(record, log).splitlines()
    assert text[0] == "transfer c1@h / 2: succeeded"
    assert "  tie_field        c1@h / 2" in text  # the separator shown, not swallowed
    assert any("+  0.250s  notify-success" in line and "refer-seen -> succeeded" in line
               and line.endswith("200 OK") for line in text)
    assert any("bye-transferor" in line and "succeeded (ignored)" in line for line in text)
    assert any("note" in line and "succeeded (noted)" in line and "A released" in line
               for line in text)


# -- against a real Redis: live transfers, show by Call-ID, --json ---------------------------
import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from kemi.cli import main  # noqa: E402
from kemi.core.anchor import Progress  # noqa: E402
from kemi.core.state import Event  # noqa: E402
from kemi.storage.resp import RespClient  # noqa: E402
from kemi.storage.transfers import TransferStore  # noqa: E402


@pytest.fixture
def lab(tmp_path, redis_server):
    """A settings file naming the test's (fresh) Redis, and a store on it."""
    conf = tmp_path / "referee.toml"
    conf.write_text(f'[redis]\nurl = "{redis_server.url}"\n')
    store = TransferStore(RespClient(redis_server.url, timeout_s=2.0))
    return conf, store


def _create(store, call_id, rid, now, node="127.0.0.1:5060", **fields):
    store.create(call_id, rid, {"node": node, **fields}, now=now, deadline=now + 60,
                 transferor="andrew@x", transferee="mckenzie@x", target="marsha@x")


def run(conf, *args, capsys) -> tuple[int, str, str]:
    rc = main(["--config", str(conf), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_live_lists_the_open_transfers_of_every_node_and_not_the_finished(lab, capsys):
    conf, store = lab
    now = time.time()
    _create(store, "c1@h", "2", now - 30, node="10.0.0.1:5060")
    _create(store, "c2@h", "5", now - 5, node="10.0.0.2:5060", anchored="pbx1",
            anchor_mode="accept")
    _create(store, "c3@h", "1", now - 10)
    store.apply("c3@h", "1", Event.REFER_REJECTED, now)
    rc, out, _ = run(conf, "transfers", "--live", capsys=capsys)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 3 and "transferor -> transferee -> target" in lines[0]
    c1 = next(line for line in lines if "c1@h / 2" in line)
    assert "andrew@x -> mckenzie@x -> marsha@x" in c1 and "10.0.0.1:5060" in c1
    assert c1.split()[0] in ("30s", "31s") and "refer-seen" in c1
    c2 = next(line for line in lines if "c2@h / 5" in line)
    assert "pbx1 (accept)" in c2 and "10.0.0.2:5060" in c2
    assert "c3@h" not in out


def test_live_json_is_the_records_themselves(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", time.time())
    rc, out, _ = run(conf, "transfers", "--live", "--json", capsys=capsys)
    [record] = json.loads(out)
    assert rc == 0 and record["call_id"] == "c1@h" and record["state"] == "refer-seen"


def test_no_open_transfers_says_so(lab, capsys):
    conf, _ = lab
    assert run(conf, "transfers", "--live", capsys=capsys)[:2] == (0, "no open transfers\n")


def test_finished_json_lists_the_finished_stream(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", time.time())
    store.apply("c1@h", "2", Event.REFER_REJECTED, time.time(), fields={"refer_reply": "403"})
    rc, out, _ = run(conf, "transfers", "--json", capsys=capsys)
    [record] = json.loads(out)
    assert rc == 0 and record["state"] == "rejected" and record["refer_reply"] == "403"


def test_show_finds_the_one_transfer_of_a_call_id_and_draws_its_ladder(lab, capsys):
    conf, store = lab
    now = time.time()
    _create(store, "c1@h", "2", now)
    store.apply("c1@h", "2", Event.REFER_ACCEPTED, now + 0.01, detail="202")
    store.apply("c1@h", "2", Event.NOTIFY_TRYING, now + 0.02, detail="100 Trying")
    store.apply("c1@h", "2", Event.INVITE, now + 0.03)
    store.apply("c1@h", "2", Event.NOTIFY_SUCCESS, now + 0.2, detail="200 OK")
    rc, out, _ = run(conf, "transfer", "show", "c1@h", capsys=capsys)
    assert rc == 0
    assert out.startswith("transfer c1@h / 2: succeeded")
    ladder = out.split("ladder (what referee recorded):\n", 1)[1].splitlines()
    assert ladder[0] == "transferor=andrew@x  transferee=mckenzie@x  target=marsha@x"
    assert ladder[1].split() == ["transferor", "referee", "transferee", "target"]
    arrows = [line for line in ladder[3:]]
    assert "REFER" in arrows[0] and ">" in arrows[0]
    assert "202" in arrows[1] and "<" in arrows[1]
    assert "NOTIFY 100 Trying" in arrows[2]
    assert "INVITE" in arrows[3]
    assert "NOTIFY 200 OK" in arrows[4] and arrows[4].rstrip().endswith("s")


def test_show_json_has_the_record_and_its_events(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", 100.0)
    rc, out, _ = run(conf, "transfer", "show", "c1@h", "2", "--json", capsys=capsys)
    data = json.loads(out)
    assert rc == 0 and data["record"]["refer_id"] == "2"
    assert data["events"][0]["event"] == "refer" and data["events"][0]["new"] == "refer-seen"


def test_show_by_call_id_alone_refuses_to_guess_between_two_transfers(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", time.time())
    _create(store, "c1@h", "4", time.time())
    rc, _, err = run(conf, "transfer", "show", "c1@h", capsys=capsys)
    assert rc == 2 and "has 2 transfers (REFER CSeq 2, 4): name one" in err


def test_show_of_an_unknown_call_id_fails_clearly(lab, capsys):
    conf, _ = lab
    rc, _, err = run(conf, "transfer", "show", "nope@h", capsys=capsys)
    assert rc == 1 and "no transfer in dialog nope@h" in err


def test_redis_away_is_a_clear_failure(tmp_path, capsys):
    conf = tmp_path / "referee.toml"
    conf.write_text('[redis]\nurl = "redis://127.0.0.1:1"\n')
    rc, _, err = run(conf, "transfers", "--live", capsys=capsys)
    assert rc == 1 and "cannot read transfers from Redis" in err


# -- referee transfer end -------------------------------------------------------------------
def test_end_closes_a_stuck_transfer_as_expired_with_the_reason(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", time.time())
    store.apply("c1@h", "2", Event.REFER_ACCEPTED, time.time())
    rc, out, _ = run(conf, "transfer", "end", "c1@h", "2", "--reason", "ticket 42",
                     capsys=capsys)
    assert rc == 0 and "closed: accepted -> expired (ticket 42)" in out
    assert "not notified (the transferee is its notifier)" in out
    record = store.get("c1@h", "2")
    assert record["state"] == "expired" and record["operator_end"] == "ticket 42"
    assert store.log("c1@h", "2")[-1].split("|")[1:5] == [
        "operator-end", "accepted", "expired", "applied"]
    assert json.loads(run(conf, "transfers", "--live", "--json", capsys=capsys)[1]) == []


def test_end_refuses_a_transfer_that_is_already_final(lab, capsys):
    conf, store = lab
    _create(store, "c1@h", "2", time.time())
    store.apply("c1@h", "2", Event.REFER_REJECTED, time.time())
    rc, _, err = run(conf, "transfer", "end", "c1@h", "2", capsys=capsys)
    assert rc == 1 and "is already rejected: nothing to end" in err


def test_end_of_an_unknown_transfer_fails_clearly(lab, capsys):
    conf, _ = lab
    rc, _, err = run(conf, "transfer", "end", "nope@h", "9", capsys=capsys)
    assert rc == 1 and "no transfer nope@h / 9" in err


def test_end_of_an_anchored_transfer_asks_its_node_then_closes_if_it_does_not_answer(
        lab, capsys):
    """The node's NOTIFY is tested end to end (tests/e2e/test_anchored.py); here no node
    runs: the request is left on its progress stream and the record closed."""
    conf, store = lab
    _create(store, "c1@h", "2", time.time(), anchor_mode="accept", anchor_node="kam1")
    rc, out, _ = run(conf, "transfer", "end", "c1@h", "2", "--wait", "0.3", capsys=capsys)
    assert rc == 0 and "node kam1 did not NOTIFY within 0.3 s" in out
    assert "not notified (its node did not answer)" in out
    [(_, flat)] = store.client.call("XRANGE", "referee:{anchor:kam1}:progress", "-", "+")
    words = [x.decode() if isinstance(x, bytes) else x for x in flat]
    sent = Progress.from_fields(dict(zip(words[0::2], words[1::2], strict=True)))
    assert (sent.code, sent.reason, sent.final) == (487, "Request Terminated", True)
    assert store.get("c1@h", "2")["state"] == "expired"
