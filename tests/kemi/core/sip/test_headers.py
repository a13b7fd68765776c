"""kemi.core.sip.headers: Refer-To, Replaces, Referred-By, Event, Subscription-State as sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.headers import (
    EventHeader,
    NameAddr,
    ReferTo,
    Replaces,
    SubscriptionState,
    contact_uri,
    parse_event,
    parse_name_addr,
    parse_refer_to,
    parse_referred_by,
    parse_replaces,
    parse_subscription_state,
    split_values,
)
from kemi.core.sip.uri import parse_uri

from .strategies import any_text, near_valid, safe_reason, tokens, uri_like


def error_of(func, value, *args) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        func(value, *args)
    return info.value


# --- name-addr -----------------------------------------------------------------------


def test_name_addr_with_quoted_display_and_header_params():
    na = parse_name_addr('"Bob \\"B\\" Smith" <sip:bob@biloxi.com;transport=tcp>;tag=a6c85cf')
    assert na.display == 'Bob "B" Smith'
    assert na.uri == parse_uri("sip:bob@biloxi.com;transport=tcp")
    assert na.params == (("tag", "a6c85cf"),)
    assert na.param("TAG") == "a6c85cf"


def test_name_addr_with_token_display_and_no_display():
    assert parse_name_addr("alice <sip:alice@h>").display == "alice"
    assert parse_name_addr("Bob  Smith<sip:b@h>").display == "Bob  Smith"
    assert parse_name_addr("<sip:alice@h>").display is None
    assert parse_name_addr('"" <sip:a@h>').display == ""


def test_non_ascii_display_names_are_read():
    assert parse_name_addr('"Jos\u00e9 M\u00fcller" <sip:j@h>').display == "Jos\u00e9 M\u00fcller"
    assert parse_name_addr("J\u00f6rg <sip:j@h>").display == "J\u00f6rg"


def test_bare_addr_spec_params_belong_to_the_header():
    # RFC 3261 §20.10: in 'sip:a@b;tag=x' the tag is the header's, not the URI's.
    na = parse_name_addr("sip:alice@atlanta.com;tag=1928301774")
    assert na.uri == parse_uri("sip:alice@atlanta.com")
    assert na.params == (("tag", "1928301774"),)


def test_header_params_allow_blanks_quotes_and_valueless_names():
    na = parse_name_addr('<sip:a@h> ; tag = x ;lr; cid="<a;b@c>" ;')
    assert na.params == (("tag", "x"), ("lr", None), ("cid", "<a;b@c>"))


def test_name_addr_str_is_always_the_bracketed_form():
    assert str(parse_name_addr("sip:a@h;tag=x")) == "<sip:a@h>;tag=x"
    assert str(parse_name_addr('"A \\"q\\"" <sip:a@h>;x="y z"')) == '"A \\"q\\"" <sip:a@h>;x="y z"'
    na = parse_name_addr('"Smith, Bob" <sip:b@h>;tag=1;x')
    assert parse_name_addr(str(na)) == na


@pytest.mark.parametrize(
    "value,words",
    [
        ("", "empty"),
        ('"Bob <sip:b@h>', "unterminated"),
        ('"Bob" sip:b@h', "expected '<'"),
        ("<sip:b@h", "missing '>'"),
        ("Bob: <sip:b@h>", "must be quoted"),
        ("<sip:b@h> junk", "malformed parameter"),
        ("<sip:b@h>;=x", "without a name"),
        ("<sip:b@h>;x=\"open", "malformed parameter"),
        ("<sip:a@h>, <sip:b@h>", "more than one value"),
        ("<http://h>", "unsupported"),
        ('"Bob\x01" <sip:b@h>', "control character"),
    ],
)
def test_name_addr_errors_carry_the_given_header_name(value, words):
    err = error_of(parse_name_addr, value, "Contact")
    assert err.header == "Contact"
    assert words in err.reason


def test_folded_header_lines_are_unfolded():
    assert parse_name_addr('"Bob"\r\n <sip:b@h>\r\n\t;tag=1').params == (("tag", "1"),)


# --- split_values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,parts",
    [
        ("sip:a@h", ["sip:a@h"]),
        ("", []),
        ("<sip:a@h>, <sip:b@h>", ["<sip:a@h>", "<sip:b@h>"]),
        ('"Smith, Bob" <sip:b@h>', ['"Smith, Bob" <sip:b@h>']),
        ('"a \\" , b" <sip:x@h>, c', ['"a \\" , b" <sip:x@h>', "c"]),
        ("<sip:a,b@h;x=1?y=2,3>", ["<sip:a,b@h;x=1?y=2,3>"]),
        ("sip:a@h, sip:b@h,", ["sip:a@h", "sip:b@h"]),
        (" , ,", []),
        ('"unterminated, <sip:a@h>', ['"unterminated, <sip:a@h>']),
    ],
)
def test_split_values_splits_on_top_level_commas_only(value, parts):
    assert split_values(value) == parts


# --- Replaces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "425928@bobster.example.org;to-tag=7743;from-tag=6472",
        "425928@bobster.example.org;from-tag=6472;to-tag=7743",
        "425928@bobster.example.org;To-Tag=7743;FROM-TAG=6472",
        "425928@bobster.example.org ; to-tag = 7743 ; from-tag = 6472",
        "425928@bobster.example.org;to-tag=7743;x=y;from-tag=6472",
    ],
)
def test_replaces_params_in_any_order_and_case(value):
    assert parse_replaces(value) == Replaces("425928@bobster.example.org", "7743", "6472", False)


def test_replaces_early_only_flag():
    assert parse_replaces("a;to-tag=1;from-tag=2;early-only").early_only
    assert parse_replaces("a;early-only;to-tag=1;from-tag=2").early_only
    assert not parse_replaces("a;to-tag=1;from-tag=2").early_only


def test_replaces_call_id_may_hold_plus_and_other_word_characters():
    assert parse_replaces("a+b/c:d@[::1];to-tag=1;from-tag=2").call_id == "a+b/c:d@[::1]"


@pytest.mark.parametrize(
    "value,reason",
    [
        ("abc;from-tag=2", "lacks to-tag"),
        ("abc;to-tag=1", "lacks from-tag"),
        ("abc", "lacks to-tag and from-tag"),
        ("abc;to-tag=;from-tag=2", "lacks to-tag"),
        ("abc;to-tag;from-tag=2", "lacks to-tag"),
        (";to-tag=1;from-tag=2", "lacks call-id"),
        ("abc;to-tag=1;to-tag=3;from-tag=2", "more than one to-tag"),
        ("abc;to-tag=1;from-tag=2;from-tag=2", "more than one from-tag"),
        ('abc;to-tag="a b";from-tag=2', "bad to-tag"),
        ("a;to-tag=1;from-tag=2, b;to-tag=1;from-tag=2", "more than one value"),
    ],
)
def test_malformed_replaces_names_what_is_wrong(value, reason):
    err = error_of(parse_replaces, value)
    assert err.header == "Replaces"
    assert err.reason.startswith(reason)


# --- Refer-To ------------------------------------------------------------------------


def test_bare_blind_transfer_refer_to():
    # ua-quirks: all three phones write blind-transfer Refer-To bare.
    rt = parse_refer_to("sip:charlie@192.0.2.4:5060")
    assert rt.uri == parse_uri("sip:charlie@192.0.2.4:5060")
    assert rt.replaces is None
    assert rt.target.display is None


def test_bare_refer_to_params_are_read_as_the_uris():
    # What the sender means; makes user=phone count for E.164 classification.
    rt = parse_refer_to("sip:00419005550@gw ; user=phone;transport=udp")
    assert rt.uri.param("user") == "phone"
    assert rt.uri.param("transport") == "udp"
    assert rt.target.params == ()
    assert rt.uri.e164(default_cc="1") == "+419005550"


def test_refer_to_without_user_part():
    # ua-quirks / asterisk no_target_in_refer: 'sip:host:port;user=phone'.
    rt = parse_refer_to("sip:192.0.2.4:5060;user=phone")
    assert rt.uri.user is None
    assert rt.uri.host == "192.0.2.4"
    assert rt.uri.e164() is None


def test_name_addr_refer_to_with_display_and_header_params():
    rt = parse_refer_to('"Charlie" <sip:charlie@h;transport=tcp>;x=1')
    assert rt.target.display == "Charlie"
    assert rt.target.params == (("x", "1"),)
    assert rt.uri.param("transport") == "tcp"


ATTENDED = [
    # (Refer-To value, call-id, to-tag, from-tag): escapes in either case, tags either order.
    (
        "<sip:dave@denver.example.org?Replaces=12345%40192.168.118.3%3Bto-tag%3D12345"
        "%3Bfrom-tag%3D5FFE-3994>",
        "12345@192.168.118.3", "12345", "5FFE-3994",
    ),
    (
        "<sip:dave@h?Require=replaces&Replaces=abc%40h%3bfrom-tag%3d9%3bto-tag%3d8>",
        "abc@h", "8", "9",
    ),
    (
        '"Dave" <sips:dave@[2001:db8::9]:5061;transport=tls?replaces=x%3BTo-Tag%3D1%3BFrom-Tag%3D2'
        "&require=replaces>",
        "x", "1", "2",
    ),
    ("<sip:d@h?Replaces=id%2Bplus%3Bto-tag%3Da%3Bfrom-tag%3Db>", "id+plus", "a", "b"),
    # Unescaped '@' and ';' inside the brackets (not RFC-clean, seen in the wild).
    ("<sip:d@h?Replaces=abc@def;to-tag=1;from-tag=2>", "abc@def", "1", "2"),
    # Bare form with embedded headers (RFC 8217 wants <>, read it anyway).
    ("sip:d@h?Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2", "c", "1", "2"),
]


@pytest.mark.parametrize("value,call_id,to_tag,from_tag", ATTENDED)
def test_attended_refer_to_carries_replaces(value, call_id, to_tag, from_tag):
    rt = parse_refer_to(value)
    assert rt.replaces == Replaces(call_id, to_tag, from_tag, False)
    assert rt.uri.headers == ()  # the target to route to and check, without ?headers
    assert rt.target.uri.header("replaces") is not None


def test_attended_refer_to_with_early_only():
    rt = parse_refer_to("<sip:d@h?Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2%3Bearly-only>")
    assert rt.replaces is not None and rt.replaces.early_only


def test_refer_to_uri_property_strips_headers_and_is_stable():
    rt = parse_refer_to("<sip:d@h;lr?Require=replaces&Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2>")
    assert rt.uri == parse_uri("sip:d@h;lr")
    assert rt.uri is rt.uri


def test_refer_to_with_other_embedded_headers_has_no_replaces():
    rt = parse_refer_to("<sip:d@h?Subject=hello%20there&Require=replaces>")
    assert rt.replaces is None
    assert rt.target.uri.header("subject") == "hello there"


@pytest.mark.parametrize(
    "value,reason",
    [
        ("<sip:d@h?Replaces=c%3Bfrom-tag%3D2>", "Replaces lacks to-tag"),
        ("<sip:d@h?Replaces=c%3Bto-tag%3D1>", "Replaces lacks from-tag"),
        ("<sip:d@h?Require=replaces&Replaces=c>", "Replaces lacks to-tag and from-tag"),
        ("<sip:d@h?Replaces=%3Bto-tag%3D1%3Bfrom-tag%3D2>", "Replaces lacks call-id"),
        ("<sip:d@h?Replaces=>", "Replaces empty value"),
        (
            "<sip:d@h?Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2&Replaces=c%3Bto-tag%3D1%3Bfrom-tag%3D2>",
            "more than one Replaces",
        ),
        ("<sip:a@h>, <sip:b@h>", "more than one Refer-To value"),
        ("sip:a@h, sip:b@h", "more than one Refer-To value"),
        ("sip:a,b@h", "more than one Refer-To value"),  # RFC 8217: ',' needs <>
        (",", "empty value"),
        ("", "empty value"),
        ("<http://example.com/>", "scheme 'http' unsupported"),
        ("<urn:service:sos>", "scheme 'urn' unsupported"),
    ],
)
def test_bad_refer_to_raises_one_refer_to_error_saying_why(value, reason):
    err = error_of(parse_refer_to, value)
    assert err.header == "Refer-To"
    assert err.reason == reason
    assert str(err) == f"Refer-To: {reason}"


def test_rfc8217_name_addr_may_hold_comma_semicolon_and_question_mark():
    rt = parse_refer_to('"Smith, Bob" <sip:a,b;c@h;x=1?Subject=%2C>')
    assert rt.uri.user == "a,b;c"
    assert rt.uri.param("x") == "1"
    assert rt.target.uri.header("Subject") == ","


@pytest.mark.parametrize(
    "value",
    [
        # Values from the third-party SIPp scenarios in ../shared/conformance (substituted).
        "<sip:+15551234567@example.com>",
        "<sip:invalid@0.0.0.0:9;transport=udp>",
        "sip:1234@127.0.0.1:5060;user=phone",
        "sip:127.0.0.1:5060;user=phone",
        "<sip:charlie@127.0.0.1>",
        "<sip:bob@127.0.0.1:5062?Replaces=REMOTE1%40127.0.0.1%3Bto-tag%3D11%3Bfrom-tag%3D22>",
    ],
)
def test_refer_to_values_from_conformance_scenarios_parse(value):
    assert isinstance(parse_refer_to(value), ReferTo)


# --- Referred-By ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,aor,params",
    [
        ("sip:alice@192.0.2.1:5060", "alice@192.0.2.1", ()),  # bare (asterisk/sipp)
        ("sip:alice@h;tag=8a7b", "alice@h", (("tag", "8a7b"),)),  # linphone blind
        ("<sip:alice@h>;tag=8a7b", "alice@h", (("tag", "8a7b"),)),
        ("<sip:192.0.2.1:5060>", "192.0.2.1", ()),  # no user (jambonz)
        ("alice <sip:alice@192.0.2.1>", "alice@192.0.2.1", ()),
        ('<sip:a@h>;cid="20398823.2UWQFN309shb3@referrer.example"', "a@h",
         (("cid", "20398823.2UWQFN309shb3@referrer.example"),)),
    ],
)
def test_referred_by_is_read_tolerantly(value, aor, params):
    na = parse_referred_by(value)
    assert isinstance(na, NameAddr)
    assert na.uri.aor == aor
    assert na.params == params


def test_referred_by_rejects_two_values_and_names_itself():
    err = error_of(parse_referred_by, "<sip:a@h>, <sip:b@h>")
    assert (err.header, err.reason) == ("Referred-By", "more than one Referred-By value")
    assert error_of(parse_referred_by, "<mailto:a@h>").header == "Referred-By"


# --- Event ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("refer", EventHeader("refer", None, ())),
        ("Refer", EventHeader("refer", None, ())),
        ("refer;id=93809824", EventHeader("refer", "93809824", (("id", "93809824"),))),
        ("REFER ; ID = 7", EventHeader("refer", "7", (("id", "7"),))),
        ("refer;x=1;id=2", EventHeader("refer", "2", (("x", "1"), ("id", "2")))),
        ("presence.winfo", EventHeader("presence.winfo", None, ())),
    ],
)
def test_event_with_and_without_id(value, expected):
    assert parse_event(value) == expected


@pytest.mark.parametrize(
    "value,words",
    [
        ("", "empty"),
        (";id=1", "lacks event package"),
        ("refer;id=", "bad id"),
        ("refer;id", "bad id"),
        ("re/fer", "bad event package"),
        ("refer, presence", "more than one value"),
        ("refer id=1", "malformed parameter"),
    ],
)
def test_bad_event_is_refused(value, words):
    err = error_of(parse_event, value)
    assert err.header == "Event"
    assert words in err.reason


# --- Subscription-State --------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("active", SubscriptionState("active", None, None, None)),
        ("active;expires=60", SubscriptionState("active", None, 60, None)),
        ("Pending ; Expires = 600", SubscriptionState("pending", None, 600, None)),
        ("terminated;reason=noresource", SubscriptionState("terminated", "noresource")),
        ("terminated;reason=reason=noresource", SubscriptionState("terminated", "noresource")),
        ("TERMINATED;Reason=NoResource", SubscriptionState("terminated", "noresource")),
        ("terminated;reason=timeout;retry-after=30", SubscriptionState("terminated", "timeout",
                                                                       None, 30)),
        ('terminated;reason="noresource"', SubscriptionState("terminated", "noresource")),
        ("terminated;reason=", SubscriptionState("terminated", None)),
        ("active;expires=60;expires=5", SubscriptionState("active", None, 60)),
        ("waiting;x=y", SubscriptionState("waiting")),
    ],
)
def test_subscription_state_forms(value, expected):
    assert parse_subscription_state(value) == expected


def test_terminated_property():
    assert parse_subscription_state("terminated;reason=noresource").terminated
    assert not parse_subscription_state("active;expires=60").terminated


@pytest.mark.parametrize(
    "value,words",
    [
        ("active;expires=abc", "bad expires"),
        ("active;expires=-1", "bad expires"),
        ("active;expires=", "bad expires"),
        ("active;expires", "bad expires"),
        ("active;expires=" + "9" * 5000, "bad expires"),
        ("terminated;retry-after=soon", "bad retry-after"),
        ('terminated;reason="no resource"', "bad reason"),
        ("", "empty"),
        ("act(ive", "bad state"),
    ],
)
def test_bad_subscription_state_is_refused(value, words):
    err = error_of(parse_subscription_state, value)
    assert err.header == "Subscription-State"
    assert words in err.reason
    assert safe_reason(err.reason)


# --- properties ----------------------------------------------------------------------

PARSERS = [
    (parse_name_addr, NameAddr),
    (parse_refer_to, ReferTo),
    (parse_referred_by, NameAddr),
    (parse_replaces, Replaces),
    (parse_event, EventHeader),
    (parse_subscription_state, SubscriptionState),
]


@pytest.mark.parametrize("func,result_type", PARSERS, ids=lambda p: getattr(p, "__name__", ""))
@given(text=any_text)
def test_any_text_parses_or_raises_only_sip_parse_error(func, result_type, text):
    try:
        result = func(text)
    except SipParseError as e:
        assert safe_reason(e.reason)
        return
    assert isinstance(result, result_type)


@given(any_text)
def test_split_values_never_raises_and_without_quotes_or_brackets_is_a_plain_split(text):
    parts = split_values(text)
    assert all(p and p == p.strip() for p in parts)
    if not any(c in text for c in '"<>\\'):
        assert parts == [p.strip() for p in text.split(",") if p.strip()]


@given(st.lists(st.sampled_from(['"Smith, Bob" <sip:a@h>', "<sip:a,b@h>", "sip:x@h;tag=1",
                                 '"q\\"," <sip:y@h>;p="1,2"']), min_size=1, max_size=5))
def test_split_values_counts_values(values):
    assert split_values(", ".join(values)) == values


# RFC 3261 word characters (Call-ID), minus ';' and ',' which the reader treats as delimiters.
CALL_ID_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ';,')


def _escape(text: str, upper: bool) -> str:
    out = "".join(f"%{ord(c):02X}" if c in ";=@%&?<>\"" or c in " " else c for c in text)
    return out if upper else out.replace("%3B", "%3b").replace("%3D", "%3d")


@given(
    call_id=st.text(CALL_ID_CHARS, min_size=1, max_size=20),
    to_tag=tokens,
    from_tag=tokens,
    tags_first=st.sampled_from(["to", "from"]),
    upper=st.booleans(),
    require=st.booleans(),
    bare=st.booleans(),
    early=st.booleans(),
)
def test_generated_attended_refer_to_reads_back_its_replaces(
    call_id, to_tag, from_tag, tags_first, upper, require, bare, early
):
    tags = [f"to-tag={to_tag}", f"from-tag={from_tag}"]
    if tags_first == "from":
        tags.reverse()
    if early:
        tags.append("early-only")
    replaces = _escape(";".join([call_id, *tags]), upper)
    uri = "sip:target@example.com:5060?" + ("Require=replaces&" if require else "")
    uri += "Replaces=" + replaces
    rt = parse_refer_to(uri if bare else f"<{uri}>")
    assert rt.replaces == Replaces(call_id, to_tag, from_tag, early)
    assert rt.uri == parse_uri("sip:target@example.com:5060")


@given(near_valid)
def test_near_valid_refer_to_never_escapes_anything_but_sip_parse_error(text):
    try:
        parse_refer_to(text)
    except SipParseError as e:
        assert e.header == "Refer-To"


@given(uri_like, st.booleans())
def test_refer_to_target_is_exactly_the_uri_in_bare_and_bracketed_form(text, bare):
    value = text if bare else f"<{text}>"
    try:
        uri = parse_uri(text)
    except SipParseError:
        with pytest.raises(SipParseError):
            parse_refer_to(value)
        return
    try:
        rt = parse_refer_to(value)
    except SipParseError as e:
        assert e.header == "Refer-To"
        assert e.reason.startswith(("Replaces", "more than one"))
        return
    assert rt.target.uri == uri
    assert rt.uri == uri.without_headers()
    assert (rt.replaces is None) == (uri.header("replaces") is None)


def test_long_inputs_are_read_in_linear_time():
    # No timing assertion (bench/ measures speed): a quadratic scan would hang this test.
    n = 100_000
    state = parse_subscription_state("terminated;reason=" + "reason=" * n + "noresource")
    assert state.reason == "noresource"
    assert parse_refer_to("sip:a@h" + " " * n + ";x").uri.has_param("x")
    assert parse_name_addr("<sip:a@h>;" + " " * n + "x").params == (("x", None),)
    with pytest.raises(SipParseError):
        parse_name_addr("<sip:a@h>;x" + " " * n + "y")
    assert len(split_values('<a,' * n)) == 1
    assert len(split_values('"a,"' * n)) == 1


@pytest.mark.parametrize("value,expect", [
    ('"PBX" <sip:pbxa@10.0.0.1:5070;transport=udp>;expires=60',
     "sip:pbxa@10.0.0.1:5070;transport=udp"),
    ("sip:pbxa@10.0.0.1;ob", "sip:pbxa@10.0.0.1"),
    ("<sip:a@h>, <sip:b@h>", "sip:a@h"),
    ("", None), (None, None),
])
def test_contact_uri(value, expect):
    assert contact_uri(value) == expect
