"""Hostile bytes get a deliberate answer, never referee's 500 (issue 9, items 1-3).

The exact bytes of the probe that found them, sent by hand (tests/support/raw.py) through
a real Kamailio with each example config: a byte that is not UTF-8 in a URI, a Call-ID,
an Event id or a sipfrag (400 naming the header), in a display name (read tolerantly:
the transfer goes on), an empty Replaces (400), a NUL in a Content-Type (415).  The lab
fixture fails the test if a referee route raised.
"""

from __future__ import annotations

import time

import pytest

from kemi.cli.demo.kamailio_node import sip_options
from tests.e2e.parties import wait_for
from tests.e2e.test_attended import start_node
from tests.support.raw import RawUA, notify, refer

INVITE = (
    "INVITE sip:marsha@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:mallory@127.0.0.1>;tag={tag}\r\n"
    "To: <sip:marsha@127.0.0.1>\r\n"
    "Call-ID: {cid}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:mallory@127.0.0.1:{port}>\r\n"
    "@REPLACES@"
    "Content-Length: 0\r\n\r\n"
)


@pytest.fixture
def ua(lab):
    ua = RawUA(lab.kamailio.port)
    yield ua
    ua.close()


def answered(ua, data: bytes, code: int, reason: str, warning: str):
    r = ua.send(data)
    assert r is not None, "no answer"
    assert (r.code, r.raw.split(b"\r\n")[0].decode("latin-1")) == (
        code, f"SIP/2.0 {code} {reason}"), r.raw
    assert warning in (r.header("Warning") or ""), r.raw
    return r


def test_a_byte_that_is_not_utf8_in_the_refer_to_uri_is_400_naming_it(lab, ua):
    answered(ua, refer(ua, refer_to=b"<sip:mar\xffsha@127.0.0.1>"), 400, "Bad Refer-To",
             "Refer-To: illegal character '?' in URI")


def test_latin1_in_a_referred_by_display_name_is_read_tolerantly(lab, ua):
    r = ua.send(refer(ua, referred_by=b'"Andr\xe9" <sip:andrew@127.0.0.1>',
                      call_id=b"latin1@127.0.0.1"))
    assert r is not None and r.code == 202, r and r.raw  # relayed, and our 202 came back
    record = lab.store.get("latin1@127.0.0.1", 2)
    assert record["transferor"] == "andrew@127.0.0.1"
    assert record["referred_by"].encode("utf-8", "surrogateescape") == \
        b'"Andr\xe9" <sip:andrew@127.0.0.1>'  # kept byte for byte


def test_a_byte_that_is_not_utf8_in_the_call_id_is_400(lab, ua):
    answered(ua, refer(ua, call_id=b"abc\xffdef@127.0.0.1"), 400, "Bad Call-ID",
             "Call-ID has byte 0xff that is not UTF-8 at 3")
    assert lab.records() == []


def test_a_byte_that_is_not_utf8_in_the_event_id_is_400(lab, ua):
    answered(ua, notify(ua, event=b"refer;id=\xff"), 400, "Bad Event", "Event: bad id")


def test_a_byte_that_is_not_utf8_in_a_sipfrag_is_400(lab, ua):
    answered(ua, notify(ua, body=b"SIP/2.0 200 OK\xff\r\n"), 400, "Bad sipfrag",
             "message/sipfrag body has byte 0xff that is not UTF-8 at 14")


def test_a_nul_in_the_content_type_is_415_and_logged_safely(lab, ua):
    answered(ua, notify(ua, ctype=b"text/plain\x00x"), 415, "Unsupported Media Type",
             "refer NOTIFY body is text/plain%00x, not message/sipfrag")
    assert "text/plain\\x00x" in lab.kamailio.log()


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
@pytest.mark.parametrize("value", [b"", b" , "])
def test_an_empty_replaces_on_an_invite_is_400_naming_it(tmp_path, redis_server, cfg, value):
    lab = start_node(tmp_path, redis_server, cfg)
    ua = RawUA(lab.kamailio.port)
    try:
        data = INVITE.format(**ua.fields()).encode().replace(
            b"@REPLACES@", b"Replaces: " + value + b"\r\nRequire: replaces\r\n")
        answered(ua, data, 400, "Bad Replaces", "empty Replaces header")
        assert ua.relayed == []  # Marsha never saw it
        assert sip_options(lab.kamailio.port)[0] == "SIP/2.0 200 Keepalive"
    finally:
        ua.close()
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_a_refer_the_proxy_cannot_relay_is_closed_rejected_with_its_code(lab, ua):
    """Issue 9 item 8: an in-dialog REFER to a host that does not resolve is answered by
    Kamailio itself (t_relay fails); no reply or failure route ever sees it, and its
    record used to sit in refer-seen until it expired."""
    r = ua.send(refer(ua, call_id=b"nowhere@127.0.0.1",
                      request_uri=b"sip:mckenzie@unresolvable.invalid"))
    assert r is not None, "no answer"
    assert (r.code, r.header("Warning")) == (
        478, 'referee "the proxy could not send the REFER on (t_relay -478)"'.join(
            ["399 ", ""])), r.raw
    # answered first, then recorded
    assert wait_for(lambda: lab.store.get("nowhere@127.0.0.1", 2)["state"] == "rejected", 2)
    record = lab.store.get("nowhere@127.0.0.1", 2)
    assert record["refer_reply"] == "478"
    assert [t for t in lab.store.finished() if t["call_id"] == "nowhere@127.0.0.1"]


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_an_invented_to_tag_is_no_dialog_when_the_index_is_on(tmp_path, redis_server, cfg):
    """Issue 9 item 6: any REFER with a To-tag passed as in-dialog (so past the
    out-of-dialog gate, allow_out_of_dialog off) and was relayed.  With the dialog
    index on, the dialog its Call-ID and tags name must exist: 481 otherwise."""
    lab = start_node(tmp_path, redis_server, cfg)
    ua = RawUA(lab.kamailio.port)
    try:
        answered(ua, refer(ua), 481, "Call/Transaction Does Not Exist",
                 "no dialog with this Call-ID and these tags passed this proxy")
        assert ua.relayed == [] and lab.records() == []
    finally:
        ua.close()
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_without_the_index_a_to_tag_is_taken_at_its_word(lab, ua):
    """What the gate cannot tell without the index (README, Known limits): the REFER
    with an invented To-tag is relayed as in-dialog."""
    r = ua.send(refer(ua))
    assert r is not None and r.code == 202 and len(ua.relayed) == 1


def test_kamailio_warns_at_start_when_redis_would_lose_transfers(lab):
    """Issue 9 item 9: the tests' Redis runs with appendonly off, as Debian's stock
    redis.conf: Kamailio's log says so once per Redis (each master of a Cluster), with
    what to set."""
    servers = getattr(lab.redis, "nodes", None) or [lab.redis]
    addresses = sorted(f"127.0.0.1:{s.port}" for s in servers)
    said = lambda: [ln for ln in lab.kamailio.log().splitlines()  # noqa: E731
                    if "has appendonly off" in ln]
    assert wait_for(lambda: len(said()) >= len(addresses), 5)
    assert all("WARNING" in ln and "appendonly yes" in ln for ln in said())
    named = sorted(ln.split("Redis at ")[1].split()[0] for ln in said())
    assert named == addresses


FULLWIDTH = "".join(f"%EF%BC%{0x90 + int(d):02X}" for d in "19005550100")
SPELLINGS = [  # issue 9 item 4: six spellings of one premium number passed every policy
    "sip:+19005550100;isub=1@gw", "sip:19005550100;npdi@gw", "sip:*6719005550100@gw",
    "sip:19005550100#@gw", "sip:9,19005550100@gw", f"sip:{FULLWIDTH}@gw",
]


def test_premium_number_spellings_are_refused_through_the_proxy(lab, ua):
    """Each spelling in a Refer-To through the real proxy: refused by the default
    policy (no PSTN), and with PSTN allowed and premium denied, by the premium rule or as
    an unreadable number -- never relayed."""
    for target in SPELLINGS:
        r = ua.send(refer(ua, refer_to=f"<{target}>".encode()))
        assert r is not None and r.code == 403, (target, r and r.raw)
    lab.policy("tenant", "set", "default", "--allow-pstn", "yes", "--home-cc", "1")
    # (+1900 is 'premium' in the seeded number classes)
    lab.policy("policy", "add", "--action", "deny", "--class", "premium", "--name",
               "no-premium", "--reason", "no premium")
    time.sleep(0.4)  # the workers re-read the policy every 0.2 s in tests
    refused = {}
    for target in SPELLINGS:
        r = ua.send(refer(ua, refer_to=f"<{target}>".encode()))
        assert r is not None and r.code == 403, (target, r and r.raw)
        refused[target] = r.raw.split(b"\r\n")[0].decode()
    assert ua.relayed == []
    assert refused["sip:*6719005550100@gw"] == "SIP/2.0 403 Unreadable Number"
    assert refused["sip:9,19005550100@gw"] == "SIP/2.0 403 Unreadable Number"
    for target in ("sip:+19005550100;isub=1@gw", "sip:19005550100;npdi@gw",
                   "sip:19005550100#@gw", f"sip:{FULLWIDTH}@gw"):
        assert refused[target] == "SIP/2.0 403 no premium", target
    lab.policy("tenant", "set", "default", "--dial-prefixes", "*67 9,")
    time.sleep(0.4)
    for target in ("sip:*6719005550100@gw", "sip:9,19005550100@gw"):
        r = ua.send(refer(ua, refer_to=f"<{target}>".encode()))
        assert r.raw.split(b"\r\n")[0] == b"SIP/2.0 403 no premium", target


# -- Replaces authority a forged From cannot borrow (issue 9 item 5) -----------------------

FORGED_FROM = ["<sip:andrew@127.0.0.1>", "<sip:andrew@127.0.0.1:5099>",
               "<sips:andrew@127.0.0.1>", "<sip:%61ndrew@127.0.0.1>"]


def forged_replaces(ua, call, from_uri: str) -> bytes:
    f = ua.fields()
    return (
        f"INVITE sip:marsha@{f['proxy']} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ua.host}:{f['port']};branch={f['branch']};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_uri};tag={f['tag']}\r\n"
        "To: <sip:marsha@127.0.0.1>\r\n"
        f"Call-ID: {f['cid']}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:mallory@{ua.host}:{f['port']}>\r\n"
        f"Replaces: {call.replaces()}\r\nRequire: replaces\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def forged_refer(ua, call) -> bytes:
    """A REFER in Andrew and Marsha's dialog -- its Call-ID and tags, From andrew --
    sent by someone else, to move Marsha to Eve."""
    f = ua.fields()
    return (
        f"REFER sip:marsha@127.0.0.1:{call.callee_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ua.host}:{f['port']};branch={f['branch']};rport\r\n"
        f"Route: <sip:{f['proxy']};lr>\r\nMax-Forwards: 70\r\n"
        f"From: <sip:andrew@127.0.0.1>;tag={call.caller_tag}\r\n"
        f"To: <sip:marsha@127.0.0.1>;tag={call.callee_tag}\r\n"
        f"Call-ID: {call.call_id}\r\nCSeq: 77 REFER\r\n"
        f"Contact: <sip:andrew@{ua.host}:{f['port']}>\r\n"
        "Refer-To: <sip:eve@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_a_forged_from_borrows_no_party_authority(tmp_path, redis_server, cfg):
    """With the index on, an INVITE with Replaces from a stranger who sets From to a
    party's address -- plain, with a port, sips: or %61ndrew -- used to reach Marsha and
    hijack the call, and a REFER with a forged 'From: andrew' in the dialog got 202.
    The index knows where Andrew sends from; the stranger is elsewhere: 403."""
    from tests.e2e.test_attended import Call

    lab = start_node(tmp_path, redis_server, cfg)  # party_match "address", the default
    call = Call(lab, "andrew", "marsha", hold_ms=3000)
    ua = RawUA(lab.kamailio.port)
    try:
        from kemi.core.dialogs import DialogState

        call.wait_state(DialogState.CONFIRMED)
        for from_uri in FORGED_FROM:
            answered(ua, forged_replaces(ua, call, from_uri), 403, "Forbidden",
                     "andrew@127.0.0.1 is neither a party to the dialog named in Replaces")
        answered(ua, forged_refer(ua, call), 403, "Forbidden",
                 f"REFER from 127.0.0.1:{ua.port}, but andrew@127.0.0.1 in this dialog "
                 "sends from 127.0.0.1:")
        assert ua.relayed == [] and lab.records() == []
        call.finish()  # the call went on untouched, and ended by its own BYE
    finally:
        ua.close()
        lab.kamailio.stop()
    assert not lab.kamailio.python_errors()


def test_with_party_match_host_a_forger_on_another_ip_is_refused(tmp_path, redis_server):
    from kemi.core.dialogs import DialogState
    from tests.e2e.test_attended import Call

    lab = start_node(tmp_path, redis_server, "kamailio.cfg", party_match="host")
    call = Call(lab, "andrew", "marsha", hold_ms=3000)
    ua = RawUA(lab.kamailio.port, host="127.0.0.2")
    try:
        call.wait_state(DialogState.CONFIRMED)
        answered(ua, forged_replaces(ua, call, "<sip:andrew@127.0.0.1>"), 403, "Forbidden",
                 "neither a party")
        call.finish()
    finally:
        ua.close()
        lab.kamailio.stop()


def test_a_request_for_another_host_without_a_user_is_relayed_not_484(lab, ua):
    """Issue 10 item 4: Asterisk's recall of a PBX (Originate PJSIP/customer-pbx) sends
    INVITE sip:<host>:<port> through Kamailio; the example cfgs answered 484 to any
    Request-URI without a user, so the recall failed and P was hung up.  For this
    domain a user is still needed (484); another host's is relayed."""
    f = ua.fields()
    invite = (
        f"INVITE sip:127.0.0.1:{ua.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch={f['branch']};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:asterisk@127.0.0.1>;tag={f['tag']}\r\nTo: <sip:127.0.0.1:{ua.port}>\r\n"
        f"Call-ID: {f['cid']}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:asterisk@127.0.0.1:{ua.port}>\r\nContent-Length: 0\r\n\r\n"
    )
    r = ua.send(invite.encode(), answer=486)
    assert r is not None and r.code == 486  # relayed to us, and our answer relayed back
    assert ua.relayed[0].startswith(f"INVITE sip:127.0.0.1:{ua.port} ".encode())
    own = invite.replace(f"INVITE sip:127.0.0.1:{ua.port}", f"INVITE sip:{f['proxy']}")
    own = own.replace(f["branch"], f["branch"] + "x").replace(f["cid"], f["cid"] + "x")
    r = ua.send(own.encode())
    assert r is not None and r.code == 484
