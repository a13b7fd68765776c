"""A Request-URI with pasted header fields (ua-quirks.md): repaired into what RFC 3261
19.1.5 says the URI meant, or answered 400 -- never routed with the headers in it."""

from __future__ import annotations

import pytest

from kemi.core.ruri import RequestUriRepair, repair_request_uri
from kemi.core.transfer import Reply

GOOD = "abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2"


def test_a_plain_request_uri_is_left_alone():
    assert repair_request_uri("sip:charlie@host:5060;transport=udp", []) is None


def test_a_pasted_replaces_moves_into_a_header_and_the_uri_loses_its_headers():
    fix = repair_request_uri(f"sip:charlie@Host:5060;lr?Require=replaces&Replaces={GOOD}", [])
    assert fix == RequestUriRepair("sip:charlie@Host:5060;lr", "abc@h;to-tag=1;from-tag=2", ())
    assert "Replaces moved into a header" in fix.describe()


def test_lower_case_escapes_and_tags_in_either_order_are_read_as_everywhere_else():
    fix = repair_request_uri("sip:c@h?Replaces=x%3bfrom-tag%3d2%3bto-tag%3d1", [])
    assert isinstance(fix, RequestUriRepair) and fix.replaces == "x;from-tag=2;to-tag=1"


@pytest.mark.parametrize("pasted, why", [
    ("abc123?to-tag?x?from-tag?y", "lacks"),  # the garbled form of ua-quirks.md
    ("abc123", "lacks to-tag and from-tag"),
])
def test_a_pasted_replaces_that_cannot_be_read_is_400_saying_what_is_wrong(pasted, why):
    reply = repair_request_uri(f"sip:charlie@host?Require=replaces&Replaces={pasted}", [])
    assert isinstance(reply, Reply) and reply.code == 400
    assert why in reply.warning and "not in the Request-URI" in reply.warning


def test_two_pasted_replaces_are_400():
    reply = repair_request_uri(f"sip:c@h?Replaces={GOOD}&Replaces={GOOD}", [])
    assert isinstance(reply, Reply) and reply.code == 400 and "2 Replaces" in reply.warning


def test_a_replaces_header_saying_the_same_wins_and_a_different_one_is_400():
    same = repair_request_uri(f"sip:c@h?Replaces={GOOD}", ["abc@h;from-tag=2;to-tag=1"])
    assert same == RequestUriRepair("sip:c@h", None, ())
    other = repair_request_uri(f"sip:c@h?Replaces={GOOD}", ["zzz@h;to-tag=1;from-tag=2"])
    assert isinstance(other, Reply) and other.code == 400 and other.reason == "Multiple Replaces"


def test_other_pasted_headers_are_dropped_never_copied_into_the_request():
    fix = repair_request_uri("sip:c@h?Route=%3Csip:evil%3E&Subject=hi", [])
    assert fix == RequestUriRepair("sip:c@h", None, ("Route", "Subject"))
    assert "dropped Route, Subject" in fix.describe()


def test_an_unparsable_request_uri_is_left_to_routing():
    assert repair_request_uri("sip:?@@?", []) is None
