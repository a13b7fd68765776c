"""kemi.core.sip.uri: what a URI reads as, what it refuses, and how it is written back."""

from __future__ import annotations

import pickle
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.uri import Uri, parse_uri

from .strategies import PARAMCHARS, any_text, hosts, near_valid, safe_reason, tokens


def reason_of(text: str) -> str:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.header == "URI"
    return info.value.reason


# --- schemes -------------------------------------------------------------------------


def test_sip_uri_fields_are_split_and_host_lowercased():
    uri = parse_uri("sip:Alice@Example.COM:5070;Transport=UDP;lr")
    assert uri == Uri("sip", "Alice", "example.com", 5070, (("transport", "UDP"), ("lr", None)))


def test_scheme_is_case_insensitive_and_lowercased():
    assert parse_uri("SIP:a@h").scheme == "sip"
    assert parse_uri("Sips:a@h").scheme == "sips"
    assert parse_uri("TEL:+15551234").scheme == "tel"


@pytest.mark.parametrize(
    "text", ["http://example.com", "mailto:a@b", "urn:service:sos", "im:a@b", "h323:a@b"]
)
def test_unsupported_scheme_is_refused_naming_the_scheme(text):
    reason = reason_of(text)
    assert "unsupported" in reason
    assert text.split(":")[0] in reason


@pytest.mark.parametrize("text", ["alice@example.com", "example.com", ":a@b", "1sip:a@b"])
def test_text_without_a_scheme_is_refused(text):
    assert "scheme" in reason_of(text)


def test_surrounding_whitespace_is_ignored():
    assert parse_uri("  sip:a@h \t") == parse_uri("sip:a@h")


@pytest.mark.parametrize("text", ["", "   ", "sip:", "sip:a@", "sip:@h", "tel:", "sips:;lr"])
def test_empty_parts_are_refused(text):
    reason_of(text)


@pytest.mark.parametrize(
    "text",
    ["sip:a b@h", "sip:a@h\r\nX: y", "sip:a@h\x00", 'sip:a"@h', "sip:<a>@h", "sip:jos\u00e9@h"],
)
def test_characters_a_uri_cannot_hold_are_refused(text):
    assert "illegal character" in reason_of(text)


def test_non_text_input_is_a_parse_error_not_a_type_error():
    with pytest.raises(SipParseError):
        parse_uri(b"sip:a@h")  # type: ignore[arg-type]
    with pytest.raises(SipParseError):
        parse_uri(None)  # type: ignore[arg-type]


# --- user part -----------------------------------------------------------------------


def test_uri_without_user_part_has_user_none_and_keeps_user_phone():
    # ua-quirks: "A Refer-To may have no user part (sip:host:port;user=phone)".
    uri = parse_uri("sip:10.0.0.1:5060;user=phone")
    assert uri.user is None
    assert uri.host == "10.0.0.1"
    assert uri.port == 5060
    assert uri.param("user") == "phone"
    assert uri.aor == "10.0.0.1"


def test_user_part_is_unescaped():
    assert parse_uri("sip:%2B1%20555@h").user == "+1 555"
    assert parse_uri("sip:a%40b@h").user == "a@b"


def test_plus_in_user_is_literal():
    assert parse_uri("sip:+15551234@h").user == "+15551234"


def test_user_may_contain_semicolons_before_the_at():
    uri = parse_uri("sip:+1-212-555-1212;isub=1411@h;user=phone")
    assert uri.user == "+1-212-555-1212;isub=1411"
    assert uri.params == (("user", "phone"),)


def test_password_is_kept_apart_from_the_user():
    uri = parse_uri("sip:alice:secret@h")
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.aor == "alice@h"


# --- host and port -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("sip:a@[2001:DB8::1]:5061", "[2001:db8::1]", 5061),
        ("sip:[::1]", "[::1]", None),
        ("sips:b@[::ffff:192.0.2.1];transport=tls", "[::ffff:192.0.2.1]", None),
        ("sip:a@h:0", "h", 0),
        ("sip:a@h:65535", "h", 65535),
        ("sip:a@my_host.example", "my_host.example", None),
    ],
)
def test_hosts_and_ports(text, host, port):
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)


def test_ipv6_host_keeps_brackets_in_aor_and_text():
    uri = parse_uri("sip:bob@[2001:db8::1]:5060")
    assert uri.aor == "bob@[2001:db8::1]"
    assert str(uri) == "sip:bob@[2001:db8::1]:5060"


@pytest.mark.parametrize(
    "text,words",
    [
        ("sip:a@2001:db8::1", "brackets"),
        ("sip:a@[2001:db8::1", "IPv6"),
        ("sip:a@[zz::1]", "IPv6"),
        ("sip:a@[1:2:3]", "IPv6"),
        ("sip:a@[::1]x", "after IPv6"),
        ("sip:a@h:65536", "port"),
        ("sip:a@h:", "port"),
        ("sip:a@h:50x", "port"),
        ("sip:a@h:123456", "port"),
        ("sip:a@h:\u0665\u0660", "illegal character"),
        ("sip:a@ho!st", "host"),
        ("sip:a@[remote_ip]:5060", "IPv6"),
    ],
)
def test_bad_hosts_and_ports_are_refused_with_a_reason(text, words):
    assert words in reason_of(text)


# --- parameters and headers ----------------------------------------------------------


def test_params_keep_order_lowercase_names_and_verbatim_values():
    uri = parse_uri("sip:a@h;Maddr=10.0.0.1;LR;x=;ttl=15;x=%41")
    assert uri.params == (
        ("maddr", "10.0.0.1"), ("lr", None), ("x", ""), ("ttl", "15"), ("x", "%41")
    )
    assert uri.param("MADDR") == "10.0.0.1"
    assert uri.param("x") == ""  # the first one wins
    assert uri.param("lr") is None and uri.has_param("LR")
    assert uri.param("absent") is None and not uri.has_param("absent")


def test_empty_param_segments_are_skipped_but_nameless_values_are_not():
    assert parse_uri("sip:a@h;;lr;").params == (("lr", None),)
    assert "without a name" in reason_of("sip:a@h;=x")


def test_embedded_headers_are_decoded_with_unquote_not_unquote_plus():
    uri = parse_uri("sip:a@h?Subject=a+b%20c&Call-Info=%3Csip:x%3E")
    assert uri.headers == (("Subject", "a+b c"), ("Call-Info", "<sip:x>"))


def test_header_lookup_is_case_insensitive_and_names_keep_their_case():
    uri = parse_uri("sip:a@h?replaces=x%3Bto-tag%3D1&REPLACES=y")
    assert uri.header("Replaces") == "x;to-tag=1"
    assert uri.headers_named("Replaces") == ("x;to-tag=1", "y")
    assert uri.headers[0][0] == "replaces"
    assert uri.header("Require") is None


def test_request_uri_with_a_pasted_replaces_and_extra_question_marks_parses():
    # ua-quirks: a transferee pastes the Replaces into the INVITE's R-URI with '?' inside.
    uri = parse_uri("sip:charlie@host?Require=replaces&Replaces=abc123?to-tag?x?from-tag?y")
    assert uri.aor == "charlie@host"
    assert uri.header("Replaces") == "abc123?to-tag?x?from-tag?y"
    assert uri.without_headers() == parse_uri("sip:charlie@host")


def test_unescaped_at_in_an_embedded_header_does_not_move_the_user_part():
    uri = parse_uri("sip:bob@h?Replaces=abc@def;to-tag=1;from-tag=2")
    assert uri.aor == "bob@h"
    assert uri.header("replaces") == "abc@def;to-tag=1;from-tag=2"


def test_header_without_a_value_reads_as_empty_and_nameless_header_is_refused():
    assert parse_uri("sip:a@h?X&&Y=1").headers == (("X", ""), ("Y", "1"))
    assert "without a name" in reason_of("sip:a@h?=1")


def test_without_headers_keeps_everything_else():
    uri = parse_uri("sips:a:pw@h:1;lr?X=1")
    assert uri.without_headers() == Uri("sips", "a", "h", 1, (("lr", None),), (), "pw")
    plain = parse_uri("sip:a@h")
    assert plain.without_headers() is plain


# --- tel: ----------------------------------------------------------------------------


def test_tel_uri_keeps_the_number_with_its_visual_separators():
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri.user == "+1-201-555-0123"
    assert uri.host is None and uri.port is None
    assert uri.param("phone-context") == "example.com"
    assert uri.aor == "+1-201-555-0123"


@pytest.mark.parametrize("text", ["tel:+1(201)555.0123", "tel:*67", "tel:#31#", "tel:7042"])
def test_tel_numbers_that_parse(text):
    assert parse_uri(text).scheme == "tel"


@pytest.mark.parametrize("text", ["tel:alice", "tel:+", "tel:+1@h", "tel:+1:2", "tel:%3B1"])
def test_tel_with_something_that_is_not_a_number_is_refused(text):
    assert "telephone number" in reason_of(text)


# --- E.164 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("tel:+1-201-555-0123", "+12015550123"),
        ("tel:+1 (201) 555.0123".replace(" ", "%20"), "+12015550123"),
        ("sip:+12015550123@gw.example;user=phone", "+12015550123"),
        ("sip:+1-900-555-0199@gw.example", "+19005550199"),  # premium-like, no user=phone
        ("sip:+1900@gw", "+1900"),
        ("sip:+44%2020%207946%200000@gw", "+442079460000"),
        ("sip:+1-212-555-1212;isub=1411@gw;user=phone", "+12125551212"),
        ("sip:+15551234@gw;user=PHONE", "+15551234"),
    ],
)
def test_e164_of_international_numbers(text, expected):
    assert parse_uri(text).e164() == expected
    assert parse_uri(text).e164(default_cc="1") == expected


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sip:+abc@h",
        "sip:+@h",
        "sip:+-.@h",
        "sip:+1-555;ext=1@h",  # ';' inside a user that is not user=phone
        "sip:+1%2B2@h",
        "sip:10.0.0.1;user=phone",  # no user part at all
        "tel:*67",
        "tel:+1-AB",
        "sip:+\u0661\u0662@h".replace("\u0661\u0662", "%D9%A1%D9%A2"),  # non-ASCII digits
    ],
)
def test_e164_is_none_for_things_that_are_not_numbers(text):
    assert parse_uri(text).e164() is None
    assert parse_uri(text).e164(default_cc="1") is None


@pytest.mark.parametrize(
    "text",
    ["tel:2015550123", "sip:2015550123@gw;user=phone", "tel:7042;phone-context=example.com"],
)
def test_e164_never_guesses_a_national_number_even_with_a_default_country(text):
    uri = parse_uri(text)
    assert uri.e164() is None
    assert uri.e164(default_cc="1") is None
    assert uri.e164(default_cc="+44") is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("tel:0044-20-7946-0000", "+442079460000"),
        ("sip:00419005550@gw;user=phone", "+419005550"),
    ],
)
def test_e164_reads_00_prefixed_international_form_only_with_a_default_country(text, expected):
    uri = parse_uri(text)
    assert uri.e164() is None
    assert uri.e164(default_cc="1") == expected
    assert uri.e164(default_cc="+1") == expected


def test_e164_does_not_treat_a_plain_sip_user_with_digits_as_a_number():
    # Dial strings without user=phone are policy's business (match them by user pattern).
    assert parse_uri("sip:0044207946@gw").e164(default_cc="1") is None
    assert parse_uri("sip:2015550123@gw").e164(default_cc="1") is None


# --- writing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("SIP:Bob@Biloxi.COM", "sip:Bob@biloxi.com"),
        ("sip:%61lice@h", "sip:alice@h"),
        ("sip:a%3Ab@h", "sip:a%3Ab@h"),
        ("sip:a@h;LR;Transport=tcp", "sip:a@h;lr;transport=tcp"),
        ("sip:a@h?Replaces=x%40y%3bto-tag%3d1", "sip:a@h?Replaces=x%40y%3Bto-tag%3D1"),
        ("sip:a@h?Subject=a+b&X=", "sip:a@h?Subject=a+b&X="),
        ("tel:+1%20555", "tel:+1%20555"),
        ("sip:h:5060;user=phone", "sip:h:5060;user=phone"),
        ("sip:a:p%40ss@h", "sip:a:p%40ss@h"),
    ],
)
def test_str_is_canonical(text, canonical):
    assert str(parse_uri(text)) == canonical
    assert parse_uri(canonical) == parse_uri(text)


def test_uri_is_frozen_hashable_and_picklable():
    uri = parse_uri("sip:a@h;lr?X=1")
    with pytest.raises(AttributeError):
        uri.host = "evil"  # type: ignore[misc]
    assert {uri: 1}[parse_uri("sip:a@H;LR?X=1")] == 1
    assert pickle.loads(pickle.dumps(uri)) == uri


def test_parse_error_names_the_header_and_pickles():
    err = SipParseError("URI", "empty host")
    assert str(err) == "URI: empty host"
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.header, back.reason) == ("URI", "empty host")


def test_reasons_quote_input_safely_and_briefly():
    reason = reason_of('foo"\\bar:' + "x" * 500)
    assert safe_reason(reason)
    assert len(reason) < 120


# --- properties ----------------------------------------------------------------------


@given(any_text)
@example("sip:a@h;x=@")
@example("sip:h;maddr=a@b")
@example("sip:a@h??x=1&&y")
@example("tel:+1;a=b@c?d")
def test_any_text_parses_or_raises_sip_parse_error_and_parsed_uris_round_trip(text):
    try:
        uri = parse_uri(text)
    except SipParseError as e:
        assert e.header == "URI"
        assert safe_reason(e.reason)
        return
    assert isinstance(uri, Uri)
    assert parse_uri(str(uri)) == uri
    e164 = uri.e164(default_cc="1")
    assert e164 is None or (e164[0] == "+" and e164[1:].isdigit())


@given(
    scheme=st.sampled_from(["sip", "sips", "SIP", "Sips"]),
    user=st.none() | st.text(min_size=1, max_size=12),
    password=st.none() | st.text(max_size=6),
    host=hosts(),
    port=st.none() | st.integers(0, 65535),
    params=st.lists(
        st.tuples(tokens.map(str.lower), st.none() | st.text(PARAMCHARS, max_size=8)),
        max_size=4,
    ),
    headers=st.lists(st.tuples(tokens, st.text(max_size=12)), max_size=3),
)
def test_generated_sip_uris_read_back_their_parts_and_round_trip(
    scheme, user, password, host, port, params, headers
):
    text = scheme + ":"
    if user is not None:
        text += quote(user, safe="")
        if password is not None:
            text += ":" + quote(password, safe="")
        text += "@"
    text += host + ("" if port is None else f":{port}")
    text += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    if headers:
        text += "?" + "&".join(f"{n}={quote(v, safe='')}" for n, v in headers)

    uri = parse_uri(text)
    assert uri.scheme == scheme.lower()
    assert uri.user == user
    assert uri.password == (password if user is not None else None)
    assert uri.host == host.lower()
    assert uri.port == port
    assert uri.params == tuple(params)
    assert uri.headers == tuple(headers)
    assert parse_uri(str(uri)) == uri
    assert str(parse_uri(str(uri))) == str(uri)


@given(
    cc=st.text("123456789", min_size=1, max_size=3),
    groups=st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=1, max_size=4),
    sep=st.sampled_from(["-", ".", "", "%20"]),
    form=st.sampled_from(["tel:{}", "sip:{}@gw;user=phone", "sip:{}@gw"]),
)
def test_generated_international_numbers_have_e164_and_round_trip(cc, groups, sep, form):
    number = "+" + cc + sep + sep.join(groups)
    uri = parse_uri(form.format(number))
    assert uri.e164() == "+" + cc + "".join(groups)
    assert parse_uri(str(uri)) == uri


@given(near_valid)
def test_near_valid_text_never_escapes_anything_but_sip_parse_error(text):
    try:
        parse_uri(text)
    except SipParseError:
        pass


# --- the plain form read at once (kemi.core.sip.uri._PLAIN) ----------------------------

_PLAINISH = st.text("sSiptel:@.-_!~*'()&=+$,;?%[]<>\" \t09aAzZ", max_size=24)


@given(st.one_of(
    _PLAINISH,
    st.builds(lambda s, u, h, p: f"{s}:{u}@{h}{p}",
              st.sampled_from(["sip", "sips", "SIP", "tel", "sipx"]),
              st.text("abcXYZ019-_.!~*'()&=+$,%;:", min_size=0, max_size=8),
              st.text("abcXYZ019-_.[]:", min_size=0, max_size=10),
              st.sampled_from(["", ":5060", ":0", ":65535", ":65536", ":99999", ":00080",
                               ":", ":x", ";lr", "?h=v", " "]))))
@example("sip:alice@example.com")
@example("sip:alice@example.com:70000")
@example("sips:+1555@h_1.-:5061")
def test_a_plain_uri_read_at_once_is_what_the_full_reading_gives(text):
    from kemi.core.sip.uri import parse_uri_in, read_uri

    try:
        want: Uri | str = read_uri(text, "URI")
    except SipParseError as exc:
        want = exc.reason
    try:
        got: Uri | str = parse_uri_in(text, "URI")
    except SipParseError as exc:
        got = exc.reason
    assert got == want
