"""Mutated REFER, NOTIFY, INVITE and BYE through a real Kamailio with each example config
(issue 9): every request gets a deliberate answer, never referee's 500, and no referee
route raises.

Seeded, so a failure repeats: each message is one of four well-formed templates with one
to three mutations a fuzzer or a broken phone makes -- a byte that is not UTF-8, a
Latin-1 letter, a NUL or a control character put into a header value, a header emptied,
doubled or dropped, a value cut short, SIP punctuation inserted, the body cut.  What the
proxy's own parser drops gets no answer (Kamailio's choice, logged by it); everything
else is answered by referee or relayed (to this test's socket, which answers 202/200).
The dialog index is on, so INVITEs and BYEs reach referee too.
"""

from __future__ import annotations

import random
import time

import pytest

from kemi.cli.demo.kamailio_node import sip_options
from tests.e2e.test_attended import start_node
from tests.support.raw import RawUA

SEED = 20261204
COUNT = 300  # messages per config

HEAD = (
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
    "Max-Forwards: 70\r\n"
)
TEMPLATES = {
    "REFER": (
        "REFER sip:mckenzie@127.0.0.1:{port} SIP/2.0\r\n" + HEAD
        + "Route: <sip:{proxy};lr>\r\n"
        "From: \"Andrew\" <sip:andrew@127.0.0.1>;tag={tag}\r\n"
        "To: <sip:mckenzie@127.0.0.1>;tag=mk{tag}\r\n"
        "Call-ID: {cid}\r\nCSeq: 2 REFER\r\n"
        "Contact: <sip:andrew@127.0.0.1:{port}>\r\n"
        "Refer-To: <sip:marsha@127.0.0.1?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n"
        "Referred-By: <sip:andrew@127.0.0.1>\r\nEvent: refer\r\nContent-Length: 0\r\n\r\n"
    ),
    "NOTIFY": (
        "NOTIFY sip:andrew@127.0.0.1:{port} SIP/2.0\r\n" + HEAD
        + "Route: <sip:{proxy};lr>\r\n"
        "From: <sip:mckenzie@127.0.0.1>;tag=mk{tag}\r\n"
        "To: <sip:andrew@127.0.0.1>;tag={tag}\r\n"
        "Call-ID: {cid}\r\nCSeq: 7 NOTIFY\r\n"
        "Contact: <sip:mckenzie@127.0.0.1:{port}>\r\n"
        "Event: refer;id=2\r\nSubscription-State: terminated;reason=noresource\r\n"
        "Content-Type: message/sipfrag;version=2.0\r\nContent-Length: 16\r\n\r\n"
        "SIP/2.0 200 OK\r\n"
    ),
    "INVITE": (
        "INVITE sip:marsha@127.0.0.1:{port} SIP/2.0\r\n" + HEAD
        + "From: <sip:mallory@127.0.0.1>;tag={tag}\r\n"
        "To: \"Marsha\" <sip:marsha@127.0.0.1>\r\n"
        "Call-ID: {cid}\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:mallory@127.0.0.1:{port}>\r\n"
        "Replaces: abc;to-tag=1;from-tag=2\r\nRequire: replaces\r\n"
        "Referred-By: <sip:andrew@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
    ),
    "BYE": (
        "BYE sip:marsha@127.0.0.1:{port} SIP/2.0\r\n" + HEAD
        + "Route: <sip:{proxy};lr>\r\n"
        "From: <sip:mallory@127.0.0.1>;tag={tag}\r\n"
        "To: <sip:marsha@127.0.0.1>;tag=ms{tag}\r\n"
        "Call-ID: {cid}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n"
    ),
}
NASTY = [b"\xff", b"\xe9", b"\x00", b"\x01", b"\x80\x80", b'"', b"<", b">", b";", b",",
         b"?", b"%", b"%zz", b"=", b"\t", b" ", b"@", b"\xc3\x28"]


def mutate(rng: random.Random, msg: bytes) -> bytes:
    head, sep, body = msg.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(2, len(lines))  # keep the request line and the Via
        name, colon, value = lines[i].partition(b":")
        kind = rng.randrange(7)
        if kind == 0 and value:  # a nasty byte somewhere in the value
            at = rng.randrange(len(value))
            value = value[:at] + rng.choice(NASTY) + value[at + 1:]
        elif kind == 1:  # inserted
            at = rng.randrange(len(value) + 1)
            value = value[:at] + rng.choice(NASTY) + value[at:]
        elif kind == 2:  # emptied
            value = b" "
        elif kind == 3 and not lines[i].lower().startswith(b"content-length"):
            lines.insert(i, lines[i])  # doubled
        elif kind == 4 and len(lines) > 4:
            del lines[i]  # dropped
            continue
        elif kind == 5 and value:  # cut short
            value = value[: rng.randrange(len(value))]
        elif kind == 6:
            body = body[: rng.randrange(len(body) + 1)]
        lines[i] = name + colon + value
    return b"\r\n".join(lines) + sep + body


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_mutated_requests_never_get_referees_500(tmp_path, redis_server, cfg):
    lab = start_node(tmp_path, redis_server, cfg)
    ua = RawUA(lab.kamailio.port)
    rng = random.Random(SEED)
    answers: dict[int, int] = {}
    internal = []
    try:
        for _ in range(COUNT):
            method = rng.choice(sorted(TEMPLATES))
            msg = mutate(rng, TEMPLATES[method].format(**ua.fields()).encode())
            r = ua.send(msg, timeout=0.1, answer=200 if method == "NOTIFY" else 202)
            if r is None:
                continue
            answers[r.code] = answers.get(r.code, 0) + 1
            if "internal error" in (r.header("Warning") or ""):
                internal.append(msg)
        time.sleep(0.5)
        assert sip_options(lab.kamailio.port)[0] == "SIP/2.0 200 Keepalive"  # still serving
    finally:
        ua.close()
        lab.kamailio.stop()
    assert not internal, f"{len(internal)} got referee's 500, e.g. {internal[:3]}"
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors[:5])
    assert sum(answers.values()) > COUNT // 2, answers  # most were answered at all
    assert any(400 <= c < 500 for c in answers), answers  # and referee refused some
