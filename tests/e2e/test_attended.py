"""Attended transfer checked at the edge: [kamailio] dialog_index = true (and, for the
native cfg, the WITH_DIALOG_INDEX define), real Kamailio, Redis and SIPp on loopback.

Each test sets up real calls through the proxy, with Call-IDs and tags it knows, and a
party that names one of them in a Replaces; the proxy answers before the target sees it.
"""

from __future__ import annotations

import uuid

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from kemi.core.dialogs import DialogState
from kemi.storage.dialogs import DialogStore
from tests.e2e.conftest import CFGS, ON_CLUSTER, close_lab, make_lab, redis_for
from tests.e2e.parties import received, wait_for
from tests.support.attended import Callee, Caller, Replacer, cid_args
from tests.ua.conftest import require_kind
from tests.ua.phone import PhoneError, make_phone, parse_sip

INDEX_ON = "dialog_index = true"
# Where several SIPp processes play one party (its call from one port, its INVITE with
# Replaces from another -- as no single phone would), the party is known by its IP only
# ([kamailio] party_match "host"); real phones, and the forged-From tests of
# test_hostile, run with the default "address".
SIPP_PARTIES = 'party_match = "host"'


def start_node(tmp, redis_server, cfg, party_match: str = "address", start: bool = True,
               **settings: str):
    """A lab with the dialog index on (and any other referee.toml `settings`), running
    unless `start` is false (the define for the native cfg)."""
    tmp.mkdir(parents=True, exist_ok=True)
    lab = make_lab(tmp, redis_server, cfg,
                   kamailio=f'{INDEX_ON}\nparty_match = "{party_match}"', **settings)
    if cfg == "kamailio-native.cfg":
        lab.kamailio.defines = ("WITH_DIALOG_INDEX",)
    if start:
        lab.kamailio.start()
    return lab


@pytest.fixture(params=[*CFGS, ON_CLUSTER])
def alab(request, tmp_path, redis_server):
    """Dialog index on; party_match "host" for a test marked sipp_parties; on a single
    Redis with both cfgs, and on a Redis Cluster (every index write from Python there)."""
    mode = "host" if request.node.get_closest_marker("sipp_parties") else "address"
    redis, cfg = redis_for(request, redis_server)
    lab = start_node(tmp_path, redis, cfg, mode)
    yield lab
    lab.kamailio.stop()
    close_lab(lab)
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


class Call:
    """One call caller -> callee through `lab`, with known Call-ID and tags."""

    def __init__(self, lab, caller: str, callee: str, hold_ms: int = 3500, via=None,
                 call_id_prefix: str = "", **kw):
        self.lab = lab
        self.caller_tag = f"{caller}-{uuid.uuid4().hex[:8]}"
        self.callee_tag = f"{callee}-{uuid.uuid4().hex[:8]}"
        extra, self.call_id = cid_args(
            f"{call_id_prefix}{caller}-{callee}-{uuid.uuid4().hex[:8]}")
        port = self.callee_port = free_udp_port()
        lab.register(callee, port)
        self.callee = lab.party(callee, Callee(callee, self.callee_tag).xml(), port=port).start()
        caller_xml = Caller(caller, callee, self.caller_tag, hold_ms=hold_ms, **kw).xml()
        self.caller = lab.party(f"{caller}-to-{callee}", caller_xml, extra=extra).start()

    def replaces(self, early_only: bool = False) -> str:
        """The Replaces value the callee's side would be sent (to-tag: the callee's)."""
        out = f"{self.call_id};to-tag={self.callee_tag};from-tag={self.caller_tag}"
        return out + (";early-only" if early_only else "")

    def state(self) -> DialogState | None:
        d = DialogStore(self.lab.client).get(self.call_id, self.caller_tag)
        return d.state if d else None

    def wait_state(self, state: DialogState, timeout_s: float = 10) -> None:
        assert wait_for(lambda: self.state() == state, timeout_s), (
            f"dialog {self.call_id} is {self.state()}, not {state}\n"
            + self.lab.kamailio.log()[-3000:]
        )

    def finish(self) -> None:
        for p in (self.caller, self.callee):
            rc = p.wait()
            assert rc == 0, p.report() + "\n--- kamailio:\n" + self.lab.kamailio.log()[-4000:]


def replace(lab, me: str, target: str, replaces: str, expect: int):
    """Send one INVITE with Replaces through `lab`; the party asserts the status."""
    party = lab.party(f"{me}-replaces", Replacer(me, target, replaces, expect).xml(), timeout_s=10)
    rc = party.run()
    assert rc == 0, party.report() + "\n--- kamailio:\n" + alog(lab)
    [final] = received(party, "INVITE", status=expect)
    return final


def alog(lab) -> str:
    return lab.kamailio.log()[-4000:]


def test_a_copied_replaces_from_a_third_party_is_403_and_both_calls_go_on(alab):
    original = Call(alab, "andrew", "mckenzie")
    consultation = Call(alab, "andrew", "marsha")
    original.wait_state(DialogState.CONFIRMED)
    consultation.wait_state(DialogState.CONFIRMED)

    final = replace(alab, "eve", "marsha", consultation.replaces(), 403)

    warning = final.header("Warning") or ""
    assert "neither a party to the dialog named in Replaces nor the transferee" in warning
    # Neither call was touched: still confirmed, and each ends with its own BYE/200.
    assert original.state() == consultation.state() == DialogState.CONFIRMED
    original.finish()
    consultation.finish()
    assert len(received(consultation.callee, "INVITE")) == 1  # the copy never reached her
    assert len(received(original.callee, "INVITE")) == 1
    assert original.state() == consultation.state() == DialogState.TERMINATED


def test_replaces_for_a_dialog_that_ended_is_603(alab):
    call = Call(alab, "andrew", "marsha", hold_ms=0)
    call.finish()
    call.wait_state(DialogState.TERMINATED)

    final = replace(alab, "mckenzie", "marsha", call.replaces(), 603)

    assert "has ended (bye-caller)" in (final.header("Warning") or "")


def test_early_only_for_a_confirmed_dialog_is_486(alab):
    call = Call(alab, "andrew", "marsha")
    call.wait_state(DialogState.CONFIRMED)

    final = replace(alab, "mckenzie", "marsha", call.replaces(early_only=True), 486)

    assert "early-only" in (final.header("Warning") or "")
    assert call.state() == DialogState.CONFIRMED
    call.finish()
    assert len(received(call.callee, "INVITE")) == 1


def test_replaces_for_an_unknown_dialog_is_481(alab):
    port = free_udp_port()
    alab.register("marsha", port)
    unknown = f"nobody-{uuid.uuid4().hex};to-tag=t1;from-tag=f1"

    final = replace(alab, "mckenzie", "marsha", unknown, 481)

    assert "no dialog matches Replaces" in (final.header("Warning") or "")


def test_ordinary_calls_are_indexed_with_their_parties_and_end_state(alab):
    call = Call(alab, "andrew", "marsha", hold_ms=0)
    call.finish()
    call.wait_state(DialogState.TERMINATED)
    d = DialogStore(alab.client).get(call.call_id, call.caller_tag)
    assert (d.caller, d.callee) == ("andrew@127.0.0.1", "marsha@127.0.0.1")
    assert d.callee_tag == call.callee_tag
    assert d.ended_by == "bye-caller"


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_a_refer_through_one_node_is_checked_against_a_dialog_set_up_through_another(
    cfg, tmp_path, redis_server
):
    node_a = start_node(tmp_path / "a", redis_server, cfg)
    node_b = start_node(tmp_path / "b", redis_server, cfg)
    try:
        consultation = Call(node_a, "andrew", "marsha")
        consultation.wait_state(DialogState.CONFIRMED)
        assert DialogStore(node_b.rcli).get(
            consultation.call_id, consultation.caller_tag
        ).node.endswith(f":{node_a.kamailio.port}")

        # Eve, in a call with McKenzie through node B, names Andrew's call in a REFER.
        refer_to = (
            f"<sip:marsha@127.0.0.1:{node_a.kamailio.port}?Replaces="
            f"{consultation.call_id}%3Bto-tag%3D{consultation.callee_tag}"
            f"%3Bfrom-tag%3D{consultation.caller_tag}>"
        )
        eve = Call(node_b, "eve", "mckenzie", hold_ms=0, refer_to=refer_to, expect_refer=403)
        eve.finish()
        [answer] = received(eve.caller, "REFER", status=403)
        assert "not a party to the dialog named in Replaces" in (answer.header("Warning") or "")
        assert received(eve.callee, "REFER") == []  # refused before McKenzie saw it
        assert consultation.state() == DialogState.CONFIRMED
        consultation.finish()
    finally:
        node_a.kamailio.stop()
        node_b.kamailio.stop()
    for node in (node_a, node_b):
        assert not node.kamailio.python_errors()


def test_the_index_stays_off_by_default(tmp_path, redis_server):
    lab = make_lab(tmp_path, redis_server, "kamailio.cfg")
    lab.kamailio.start()
    try:
        call = Call(lab, "andrew", "marsha", hold_ms=0)
        call.finish()
        assert list(lab.rcli.scan_iter("referee:*:dlg:*")) == []
    finally:
        lab.kamailio.stop()



def registered_phones(lab, tmp_path, kinds: dict[str, str]):
    """Phones of the given kinds (name -> "pjsua2" / "linphone") registered with the
    lab's proxy; yields them in order and stops them after the test."""
    for kind in set(kinds.values()):
        require_kind(kind)
    made = []
    for name, kind in kinds.items():
        extra = {"auto_ringing": False} if kind == "pjsua2" else {}
        phone = make_phone(kind, name, name, "127.0.0.1", lab.kamailio.port,
                           lab.kamailio.address, workdir=tmp_path / "phones" / name, **extra)
        made.append(phone)
        phone.start()
    for phone in made:
        phone.register()
    yield made
    for phone in made:
        try:
            phone.stop()
        except PhoneError:
            pass


@pytest.fixture
def pjsua_phones(alab, tmp_path):
    """andrew, mckenzie, marsha: pjsua2 phones registered with the lab's proxy."""
    yield from registered_phones(
        alab, tmp_path, {"andrew": "pjsua2", "mckenzie": "pjsua2", "marsha": "pjsua2"})


def consultation(andrew, mckenzie, marsha):
    """Andrew calls McKenzie and holds her, then calls Marsha (the consultation call);
    both calls answered.  Returns (a_call, m_call, consult, s_call): Andrew's and
    McKenzie's ends of the first call, Andrew's and Marsha's of the second."""
    a_call = andrew.call(mckenzie.aor)
    m_call = mckenzie.wait_incoming(5)
    mckenzie.answer(m_call, 200)
    andrew.wait_state(a_call, "confirmed")
    assert andrew.hold(a_call) == 200
    consult = andrew.call(marsha.aor)
    s_call = marsha.wait_incoming(5)
    marsha.answer(s_call, 200)
    andrew.wait_state(consult, "confirmed")
    marsha.wait_state(s_call, "confirmed")
    return a_call, m_call, consult, s_call


def test_pjsua2_attended_transfer_succeeds_and_the_record_keeps_the_replaced_dialog(
    alab, pjsua_phones
):
    andrew, mckenzie, marsha = pjsua_phones
    a_call, _m_call, consult, s_call = consultation(andrew, mckenzie, marsha)
    consult_id = parse_sip(s_call.messages[0])["headers"]["call-id"]

    andrew.transfer_replaces(a_call, consult)

    assert andrew.wait_refer_response(a_call) == 202
    new = marsha.replacing(s_call, 10)  # McKenzie's INVITE with Replaces reached her
    marsha.wait_state(new, "confirmed")
    marsha.wait_state(s_call, "disconnected")  # the consultation call was replaced
    andrew.wait_state(consult, "disconnected")
    assert andrew.wait_transfer_final(a_call, 5) == 200
    record = wait_for(lambda: (alab.finished() or [None])[0], 5)
    assert record and record["state"] == "succeeded", (record, alab.records())
    assert record["replaces"] == consult_id
    assert record["replaces_dialog"] == "known"
    assert record["replaces_state"] == "confirmed"
    assert record["invite_reply"] == "200"  # the INVITE with Replaces was tied to it ...
    assert "with Replaces from mckenzie@127.0.0.1 tied to transfer" in alab.kamailio.log()
    assert record["transferee"] == "mckenzie@127.0.0.1"
    if andrew.call_state(a_call) != "disconnected":
        andrew.hangup(a_call)
    marsha.hangup(new)
    marsha.wait_state(new, "disconnected")
