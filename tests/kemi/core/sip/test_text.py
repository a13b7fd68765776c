"""kemi.core.sip.text: what makes a value read off the wire unusable as SIP text, and how any
value is written into a log line or a header without breaking it."""

from __future__ import annotations

import pytest

from kemi.core.sip.text import printable, text_fault

FF = b"\xff".decode("utf-8", "surrogateescape")  # how the glue hands over byte 0xff


@pytest.mark.parametrize("value, fault", [
    ("abc" + FF + "def", "byte 0xff that is not UTF-8 at 3"),
    ("text/plain\x00x", "a NUL byte at 10"),
    ("a\x01b", "control character 0x01 at 1"),
    ("a\x7fb", "control character 0x7f at 1"),
    ("two\r\nlines", "control character 0x0d at 3"),
])
def test_what_is_no_sip_text_is_named(value, fault):
    assert text_fault(value) == fault


@pytest.mark.parametrize("value", ["Andr\u00e9", "a\tb", "", "SIP/2.0 200 OK"])
def test_utf8_text_and_tabs_are_fine(value):
    assert text_fault(value) is None


def test_a_body_may_have_line_ends():
    assert text_fault("SIP/2.0 200 OK\r\n", allow_newlines=True) is None
    assert text_fault("SIP/2.0 200 OK" + FF + "\r\n", allow_newlines=True) == (
        "byte 0xff that is not UTF-8 at 14")


def test_printable_escapes_what_a_log_call_or_a_header_cannot_take():
    assert printable("a\x00b" + FF) == "a\\x00b\\xff"
    assert printable("a\x00b", escape="%{:02X}") == "a%00b"
    assert printable("line\nnext\x01", keep_newlines=True) == "line\nnext\\x01"
    assert printable("plain text") == "plain text"
    printable("a\x00" + FF).encode("utf-8")  # encodable, NUL-free


@pytest.mark.parametrize("allow_newlines", [False, True])
def test_every_code_point_up_to_the_surrogates_is_judged_one_by_one(allow_newlines):
    """The search (done in C) names the same first fault a character-by-character reading
    of RFC 3261's TEXT-UTF8 would: controls but tab, DEL, undecodable bytes."""
    def fault_of(o: int) -> bool:
        if allow_newlines and o in (0x0D, 0x0A):
            return False
        return 0xDC80 <= o <= 0xDCFF or (o < 0x20 and o != 0x09) or o == 0x7F

    for o in range(0xE000):
        found = text_fault("ab" + chr(o) + "\x01", allow_newlines)
        assert found is not None and found.endswith(" at 2" if fault_of(o) else " at 3"), (
            hex(o), found)
