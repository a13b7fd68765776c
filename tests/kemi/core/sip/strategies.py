"""Hypothesis strategies shared by the kemi.core.sip tests: arbitrary and near-valid SIP text."""

from __future__ import annotations

import string

from hypothesis import strategies as st

# Pieces real headers are made of, plus the characters that break naive parsers.
FRAGMENTS = [
    "sip:", "sips:", "tel:", "SIP:", "http:", "alice", "Bob", "+1", "00", "-", ".", "(", ")",
    "@", ":", "5060", "65536", ";", "user=phone", "transport=udp", "lr", "?", "&", "=",
    "Require=replaces", "Replaces=", "%3B", "%3b", "%40", "%3D", "%", "%zz", "%FF", "%00",
    "[", "]", "::1", "2001:db8::1", "example.com", "10.0.0.1", "<", ">", '"', "\\", ",",
    " ", "\t", "\r\n ", "\n", "\r", "to-tag=", "from-tag=", "early-only", "tag=", "id=",
    "expires=", "retry-after=", "reason=", "noresource", "refer", "active", "terminated",
    "SIP/2.0", "sip/2.0", " 200", " 180 Ringing", " OK", "INVITE", "abc@host", "\x00",
    "\u00e9", "\ufeff", "\ud7ff", "9" * 30, "",
]

near_valid = st.lists(
    st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=24
).map("".join)



def _piece(alphabet: str, max_size: int = 8) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=max_size)


# URI-shaped text: each slot mostly valid, sometimes not, so many samples parse.
uri_like = st.tuples(
    st.sampled_from(["sip:", "SIPS:", "sips:", "tel:", "tel:+", "Sip:"]),
    st.none() | _piece("ab+-.%3B40:;=&$,/!~*'()").map(lambda u: u + "@"),
    st.sampled_from(["example.com", "H.Example", "10.0.0.1", "[::1]", "[2001:DB8::A]", "x_y"])
    | _piece("ab.1[]:_-"),
    st.none() | _piece("0123456789", 6).map(lambda p: ":" + p),
    st.lists(st.sampled_from(["lr", "user=phone", "transport=UDP", "x=", "=", "%41=b"])
             | _piece("abX=%;@-_[]:"), max_size=3).map(lambda ps: "".join(";" + p for p in ps)),
    st.none() | st.lists(st.sampled_from(["Replaces=a%3Bto-tag%3D1%3Bfrom-tag%3D2", "X=a+b",
                                          "Y", "=z", "Z=%zz", "Q=?"])
                         | _piece("ab=%3B?@+&"), max_size=3).map(lambda hs: "?" + "&".join(hs)),
).map(lambda parts: "".join(p for p in parts if p is not None))

any_text = st.text() | near_valid | uri_like

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
# Characters a URI parameter value may carry unescaped (RFC 3261 paramchar, minus '%').
PARAMCHARS = string.ascii_letters + string.digits + "-_.!~*'()[]/:&+$"


def hostnames() -> st.SearchStrategy[str]:
    label = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=10)
    return st.lists(label, min_size=1, max_size=4).map(".".join)


def hosts() -> st.SearchStrategy[str]:
    return (
        hostnames()
        | st.ip_addresses(v=4).map(str)
        | st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
    )


def safe_reason(text: str) -> bool:
    """What SipParseError reasons promise: printable ASCII without '"' or '\\'."""
    return all(" " <= c <= "~" and c not in '"\\' for c in text)
