"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), read tolerantly and written canonically.

Only schemes a transfer can act on are accepted: anything else is a SipParseError, which
the REFER route turns into a 400 (RFC 3515: do not accept a scheme you cannot act on).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .errors import SipParseError, excerpt

__all__ = ["Uri", "parse_uri"]

Params = tuple[tuple[str, str | None], ...]

_SCHEMES = frozenset(("sip", "sips", "tel"))
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
# A URI is printable ASCII without space, '"', '<' or '>' (those end it in a header).
_ILLEGAL = re.compile(r"[^!#-;=?-~]")
_HOSTNAME = re.compile(r"[a-z0-9_.\-]+")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3966 global or local number, plus the space some phones escape in as %20.
_TEL = re.compile(r"\+?[\-.() ]*[0-9a-fA-F*#][0-9a-fA-F*#\-.() ]*")

# Characters written unescaped by __str__ (letters, digits and "_.-~" always are).
_USER_SAFE = "!*'()&=+$,;/"
_PASSWORD_SAFE = "!*'()&=+$,"
_TEL_SAFE = "!*'()+"
_HNV_SAFE = "!*'()[]/?:+$"

_SEPARATORS = str.maketrans("", "", "-.() ")

# What most REFERs carry: sip:user@host[:port], lower-case, nothing to unescape, no
# params.  Read at once; anything else takes the full reading below (the same Uri for
# whatever this matches: tests/kemi/core/sip/test_uri.py holds the two against each other).
_PLAIN = re.compile(r"(sips?):([A-Za-z0-9\-_.!~*'()&=+$,]+)@([a-z0-9_.\-]+)(?::([0-9]{1,5}))?")


@dataclass(frozen=True, slots=True)
class Uri:
    """A parsed URI; fields are already normalised for comparison (see module doc)."""

    scheme: str
    user: str | None
    host: str | None
    port: int | None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None

    def param(self, name: str) -> str | None:
        """Value of the first URI parameter ``name`` (None if absent or valueless)."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(key == name for key, _ in self.params)

    def header(self, name: str) -> str | None:
        """Decoded value of the first embedded ?header called ``name`` (any case)."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def headers_named(self, name: str) -> tuple[str, ...]:
        """All values of embedded header ``name`` (any case), to detect duplicates."""
        name = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == name)

    @property
    def aor(self) -> str:
        """Address-of-record: ``user@host`` without port or params; tel: the number."""
        if self.scheme == "tel" or self.host is None:
            return self.user or ""
        return f"{self.user}@{self.host}" if self.user is not None else self.host

    def e164(self, default_cc: str | None = None) -> str | None:
        """``+digits`` if the user part is an international telephone number, else None.

        A user is a telephone number in tel: URIs, with ``user=phone``, or when it is
        ``+`` then digits and visual separators.  National numbers are never guessed
        (a wrong guess misclassifies premium or international targets); giving
        ``default_cc`` only enables reading the ``00`` international prefix.
        """
        user = self.user
        if user is None:
            return None
        phone = self.scheme == "tel"
        if not phone:
            for key, value in self.params:
                if key == "user":
                    phone = value is not None and value.lower() == "phone"
                    break
        if phone:
            semi = user.find(";")  # tel-subscriber params such as ;isub= or ;postd=
            if semi >= 0:
                user = user[:semi]
        if user[:1] == "+":
            digits = user[1:].translate(_SEPARATORS)
            if digits.isdigit() and digits.isascii():
                return "+" + digits
            return None
        if not phone or default_cc is None:
            return None
        digits = user.translate(_SEPARATORS)
        if len(digits) > 2 and digits[:2] == "00" and digits.isdigit() and digits.isascii():
            return "+" + digits[2:]
        return None

    def without_headers(self) -> Uri:
        """The same URI without ?headers (what a target is compared and routed by)."""
        if not self.headers:
            return self
        return Uri(self.scheme, self.user, self.host, self.port, self.params, (), self.password)

    def __str__(self) -> str:
        if self.scheme == "tel":
            out = "tel:" + quote(self.user or "", safe=_TEL_SAFE)
        else:
            out = self.scheme + ":"
            if self.user is not None:
                out += quote(self.user, safe=_USER_SAFE)
                if self.password is not None:
                    out += ":" + quote(self.password, safe=_PASSWORD_SAFE)
                out += "@"
            out += self.host or ""
            if self.port is not None:
                out += f":{self.port}"
        for key, value in self.params:
            out += f";{key}" if value is None else f";{key}={value}"
        if self.headers:
            out += "?" + "&".join(
                f"{key}={quote(value, safe=_HNV_SAFE)}" for key, value in self.headers
            )
        return out


def parse_uri(text: str) -> Uri:
    """Read a sip:, sips: or tel: URI; any other input raises SipParseError("URI", ...).

    Parameter values are kept verbatim (escapes not decoded); user, password and
    ?header values are decoded with urllib.parse.unquote ('+' stays '+').
    """
    return parse_uri_in(text, "URI")


def parse_uri_in(text: str, header: str) -> Uri:
    """parse_uri, with errors naming ``header`` (for URIs read out of a header)."""
    plain = _PLAIN.fullmatch(text) if type(text) is str else None
    if plain is not None:
        scheme, user, host, port = plain.groups()
        if port is None:
            return Uri(scheme, user, host, None)
        if int(port) <= 65535:
            return Uri(scheme, user, host, int(port))
    return read_uri(text, header)


def read_uri(text: str, header: str) -> Uri:
    """The full reading, every form and every error (parse_uri_in's plain forms give the
    same Uri without it)."""
    if not isinstance(text, str):
        raise SipParseError(header, f"expected text, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise SipParseError(header, "empty URI")
    bad = _ILLEGAL.search(s)
    if bad is not None:
        raise SipParseError(header, f"illegal character {excerpt(bad.group())} in URI")
    colon = s.find(":")
    scheme = s[:colon].lower() if colon > 0 else ""
    if scheme not in _SCHEMES:
        if not _SCHEME.fullmatch(scheme):
            raise SipParseError(header, f"missing scheme in {excerpt(s)}")
        raise SipParseError(header, f"scheme {excerpt(scheme)} unsupported")
    body, _, header_text = s[colon + 1 :].partition("?")
    headers = _uri_headers(header_text, header) if header_text else ()

    if scheme == "tel":
        number, _, param_text = body.partition(";")
        user = unquote(number)
        if not user:
            raise SipParseError(header, "empty telephone number")
        if not _TEL.fullmatch(user):
            raise SipParseError(header, f"bad telephone number {excerpt(number)}")
        return Uri("tel", user, None, None, _uri_params(param_text, header), headers)

    # The last '@' before any '?' ends the userinfo (users may contain ';').
    at = body.rfind("@")
    user = password = None
    if at >= 0:
        user_text, has_password, password_text = body[:at].partition(":")
        if not user_text:
            raise SipParseError(header, "empty user part")
        user = unquote(user_text)
        if has_password:
            password = unquote(password_text)
        body = body[at + 1 :]
    hostport, _, param_text = body.partition(";")
    host, port = _hostport(hostport, header)
    return Uri(scheme, user, host, port, _uri_params(param_text, header), headers, password)


def _hostport(text: str, header: str) -> tuple[str, int | None]:
    if not text:
        raise SipParseError(header, "empty host")
    text = text.lower()
    if text[0] == "[":
        end = text.find("]") + 1
        host = text[:end]
        if not end or not _IPV6.fullmatch(host) or not _is_ipv6(host[1:-1]):
            raise SipParseError(header, f"bad IPv6 reference {excerpt(text)}")
        tail = text[end:]
        if tail and tail[0] != ":":
            raise SipParseError(header, f"unexpected {excerpt(tail)} after IPv6 reference")
        has_port, port_text = bool(tail), tail[1:]
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
        if ":" in port_text:
            raise SipParseError(header, "IPv6 address must be in brackets")
        if not _HOSTNAME.fullmatch(host):
            raise SipParseError(header, f"bad host {excerpt(host)}")
    if not has_port:
        return host, None
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise SipParseError(header, f"bad port {excerpt(port_text)}")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _uri_params(text: str, header: str) -> Params:
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for segment in text.split(";"):
        if not segment:
            continue
        name, has_value, value = segment.partition("=")
        if not name:
            raise SipParseError(header, "URI parameter without a name")
        out.append((name.lower(), value if has_value else None))
    return tuple(out)


def _uri_headers(text: str, header: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for segment in text.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        if not name:
            raise SipParseError(header, "URI header without a name")
        out.append((name, unquote(value)))
    return tuple(out)
