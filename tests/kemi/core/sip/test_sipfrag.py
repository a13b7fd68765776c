"""kemi.core.sip.sipfrag: the Status-Line a refer NOTIFY reports, read as transferees send it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.sipfrag import StatusLine, is_sipfrag, parse_sipfrag

from .strategies import any_text, safe_reason


def reason_of(body) -> str:
    with pytest.raises(SipParseError) as info:
        parse_sipfrag(body)
    assert info.value.header == "sipfrag"
    return info.value.reason


@pytest.mark.parametrize(
    "body,expected",
    [
        ("SIP/2.0 100 Trying\r\n", StatusLine("SIP/2.0", 100, "Trying")),
        ("SIP/2.0 180 Ringing", StatusLine("SIP/2.0", 180, "Ringing")),
        (b"SIP/2.0 200 OK\r\n", StatusLine("SIP/2.0", 200, "OK")),
        ("SIP/2.0 200 Ok\n", StatusLine("SIP/2.0", 200, "Ok")),  # mixed case (ua-quirks)
        ("sip/2.0 200 OK", StatusLine("SIP/2.0", 200, "OK")),
        ("SIP/2.0 486 Busy Here\n", StatusLine("SIP/2.0", 486, "Busy Here")),  # bare LF
        ("SIP/2.0 603 Declined\r", StatusLine("SIP/2.0", 603, "Declined")),  # bare CR
        ("SIP/2.0 200", StatusLine("SIP/2.0", 200, "")),  # no reason phrase
        ("SIP/2.0  503   Unavailable  \r\n", StatusLine("SIP/2.0", 503, "Unavailable")),
        ("SIP/2.0 183 Session Progress\r\nContact: <sip:x@h>\r\nContent-Length: 0\r\n\r\n",
         StatusLine("SIP/2.0", 183, "Session Progress")),
        ("SIP/2.0 200 D\u00e9j\u00e0\r\n".encode(), StatusLine("SIP/2.0", 200, "D\u00e9j\u00e0")),
        (bytearray(b"SIP/2.0 404 Not Found\r\n"), StatusLine("SIP/2.0", 404, "Not Found")),
        (memoryview(b"SIP/2.0 100 Trying"), StatusLine("SIP/2.0", 100, "Trying")),
    ],
)
def test_status_lines_as_transferees_send_them(body, expected):
    assert parse_sipfrag(body) == expected


def test_leading_blank_lines_and_bom_are_skipped():
    # Decided: nothing but the Status-Line can be meant, so skip blank lines before it.
    assert parse_sipfrag("\r\n\r\nSIP/2.0 180 Ringing\r\n").code == 180
    assert parse_sipfrag(b"\n \tSIP/2.0 180 Ringing").code == 180
    assert parse_sipfrag("\ufeffSIP/2.0 200 OK").code == 200
    assert parse_sipfrag(b"\xef\xbb\xbfSIP/2.0 200 OK").code == 200


def test_only_the_first_line_must_be_utf8():
    assert parse_sipfrag(b"SIP/2.0 200 OK\r\nX-Junk: \xff\xfe\r\n").code == 200


@pytest.mark.parametrize(
    "code,provisional,success,failure,final",
    [
        (100, True, False, False, False),
        (180, True, False, False, False),
        (200, False, True, False, True),
        (202, False, True, False, True),
        (300, False, False, True, True),
        (486, False, False, True, True),
        (699, False, False, True, True),
    ],
)
def test_classification(code, provisional, success, failure, final):
    line = parse_sipfrag(f"SIP/2.0 {code} X")
    assert (line.is_provisional, line.is_success, line.is_failure, line.is_final) == (
        provisional, success, failure, final,
    )


def test_str_writes_the_status_line_back():
    assert str(parse_sipfrag("sip/2.0 200 Ok\r\n")) == "SIP/2.0 200 Ok"
    assert str(parse_sipfrag("SIP/2.0 200")) == "SIP/2.0 200"


@pytest.mark.parametrize(
    "body,words",
    [
        ("", "empty"),
        (b"", "empty"),
        ("\r\n\r\n", "empty"),
        ("INVITE sip:bob@h SIP/2.0\r\n", "request-line"),
        ("NOTIFY sip:a@h SIP/2.0", "request-line"),
        ("SIP/2.0 099 Too Low", "out of range"),
        ("SIP/2.0 700 Too High", "out of range"),
        ("SIP/2.0 2000 OK", "not a SIP Status-Line"),
        ("SIP/2.0 20 OK", "not a SIP Status-Line"),
        ("SIP/2.0 OK", "not a SIP Status-Line"),
        ("200 OK", "not a SIP Status-Line"),  # no SIP-Version
        ("HTTP/1.1 200 OK", "not a SIP Status-Line"),
        ("SIP/2.0 \u0662\u0660\u0660 OK", "not a SIP Status-Line"),  # non-ASCII digits
        (b"\xff\xfe\x00\x01garbage", "not UTF-8"),
        (b"SIP/2.0 200 \xc3(", "not UTF-8"),
        (None, "expected text"),
        (200, "expected text"),
    ],
)
def test_bodies_without_a_status_line_are_refused(body, words):
    assert words in reason_of(body)


def test_reason_quotes_the_bad_line_safely():
    reason = reason_of('garbage "with" \\ quotes and more text than fits in a reason at all')
    assert safe_reason(reason)


@pytest.mark.parametrize(
    "content_type",
    [
        "message/sipfrag",
        "message/sipfrag;version=2.0",
        "Message/SipFrag; version=2.0",
        "MESSAGE/SIPFRAG",
        " message / sipfrag ;version=2.0",
    ],
)
def test_is_sipfrag_accepts_any_case_with_or_without_version(content_type):
    assert is_sipfrag(content_type)


@pytest.mark.parametrize(
    "content_type", [None, "", "application/sdp", "message/sip", "message/sipfragx", "text/plain"]
)
def test_is_sipfrag_rejects_other_types_and_none(content_type):
    assert not is_sipfrag(content_type)


# --- properties ----------------------------------------------------------------------


@given(st.one_of(any_text, st.binary(), any_text.map(lambda s: s.encode("utf-8", "replace"))))
def test_any_body_parses_or_raises_only_sip_parse_error(body):
    try:
        line = parse_sipfrag(body)
    except SipParseError as e:
        assert e.header == "sipfrag"
        assert safe_reason(e.reason)
        return
    assert 100 <= line.code <= 699


@given(
    code=st.integers(100, 699),
    reason=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20),
    sip=st.sampled_from(["SIP", "sip", "Sip"]),
    eol=st.sampled_from(["\r\n", "\n", "\r", ""]),
    lead=st.sampled_from(["", "\r\n", "\n\n"]),
    trailer=st.sampled_from(["", "Contact: <sip:a@h>\r\n", "Content-Length: 0\r\n\r\n"]),
    as_bytes=st.booleans(),
)
def test_generated_status_lines_read_back(code, reason, sip, eol, lead, trailer, as_bytes):
    body = f"{lead}{sip}/2.0 {code} {reason}{eol}{trailer if eol else ''}"
    line = parse_sipfrag(body.encode() if as_bytes else body)
    assert (line.version, line.code, line.reason) == ("SIP/2.0", code, reason.strip(" \t"))


@given(st.text() | st.none())
def test_is_sipfrag_never_raises(content_type):
    assert isinstance(is_sipfrag(content_type), bool)


def test_long_blank_runs_do_not_take_quadratic_time():
    # A lazy reason group before trailing blanks would backtrack O(n^2) on this.
    body = "SIP/2.0 200 x" + " " * 200_000 + "y"
    assert parse_sipfrag(body).reason.endswith("y")
