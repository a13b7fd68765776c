"""Readers for the header values a transfer depends on: Refer-To, Replaces, Referred-By,
Event and Subscription-State.

Tolerant of what phones send (see notes/ua-quirks.md); anything unreadable raises one
SipParseError naming the header and what was wrong, ready for a 400's Warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from ._lex import TOKEN, Params, find_param, parse_params, split_values, text_value, unquote_qs
from .errors import SipParseError, excerpt
from .uri import Uri, parse_uri_in

__all__ = [
    "EventHeader",
    "NameAddr",
    "ReferTo",
    "Replaces",
    "SubscriptionState",
    "parse_event",
    "parse_name_addr",
    "parse_refer_to",
    "parse_referred_by",
    "parse_replaces",
    "parse_subscription_state",
    "split_values",
]

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
# An unquoted display name: words of token-ish characters (any script) and blanks.
_TOKEN_DISPLAY = re.compile(r"[\w\-.!%*+`'~ \t]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Call-ID (RFC 3261 word ["@" word]): printable ASCII except ';' and ','.
_CALL_ID = re.compile(r"[!-+\--:<-~]+")
# Leading token of Event and Subscription-State.
_LEAD = re.compile(r"[^\s;,]+")
_SMALL_INT = re.compile(r"[0-9]{1,10}")
_REASON_REPEATS = re.compile(r"(?:reason=)*")


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;params`` (or the bare form); ``params`` are the header's own."""

    display: str | None
    uri: Uri
    params: Params = ()

    def param(self, name: str) -> str | None:
        return find_param(self.params, name.lower())

    def __str__(self) -> str:
        # Always the name-addr form (RFC 8217: a URI with ',;?' must be in <>).
        out = f"<{self.uri}>"
        if self.display is not None:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            out = f'"{escaped}" {out}'
        for key, value in self.params:
            if value is None:
                out += f";{key}"
            elif value and TOKEN.fullmatch(value):
                out += f";{key}={value}"
            else:
                out += ";{}=\"{}\"".format(key, value.replace("\\", "\\\\").replace('"', '\\"'))
        return out


def parse_name_addr(value: str, header: str = "name-addr") -> NameAddr:
    """Read name-addr or bare addr-spec; bare ';params' are the header's (RFC 3261 §20.10)."""
    return _name_addr(text_value(value, header), header, bare_params_in_uri=False)


def _name_addr(s: str, header: str, bare_params_in_uri: bool) -> NameAddr:
    display: str | None = None
    if s[0] == '"':
        m = _QUOTED.match(s)
        if m is None:
            raise SipParseError(header, "unterminated quoted display name")
        display = unquote_qs(m.group(1))
        if _CONTROL.search(display):
            raise SipParseError(header, "control character in display name")
        lt = m.end()
        while lt < len(s) and s[lt] in " \t":
            lt += 1
        if lt == len(s) or s[lt] != "<":
            raise SipParseError(header, "expected '<' after the display name")
    else:
        lt = s.find("<")
        semi = s.find(";")
        if lt < 0 or 0 <= semi < lt:
            return _bare(s, header, bare_params_in_uri)
        if lt > 0:
            text = s[:lt].strip()
            if not _TOKEN_DISPLAY.fullmatch(text):
                raise SipParseError(header, f"display name {excerpt(text)} must be quoted")
            display = text
    gt = s.find(">", lt + 1)
    if gt < 0:
        raise SipParseError(header, "missing '>'")
    uri = parse_uri_in(s[lt + 1 : gt], header)
    return NameAddr(display, uri, parse_params(s, gt + 1, header))


def _bare(s: str, header: str, params_in_uri: bool) -> NameAddr:
    if params_in_uri:
        if " " in s or "\t" in s:
            # Blanks around ';' and '=' are header LWS, not part of the URI (split, not
            # a regex: a leading [ \t]* in re.sub is quadratic on long blank runs).
            s = ";".join(
                "=".join(p.strip(" \t") for p in seg.split("=", 1)) for seg in s.split(";")
            )
        return NameAddr(None, parse_uri_in(s, header))
    semi = s.find(";")
    if semi < 0:
        return NameAddr(None, parse_uri_in(s, header))
    return NameAddr(None, parse_uri_in(s[:semi], header), parse_params(s, semi, header))


@dataclass(frozen=True, slots=True)
class Replaces:
    """The dialog an INVITE (or an attended transfer's Refer-To) asks to replace (RFC 3891)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


def parse_replaces(value: str, header: str = "Replaces") -> Replaces:
    """Read ``call-id;to-tag=..;from-tag=..[;early-only]`` (params in any order and case).

    Both tags are required (RFC 3891 §3); a repeated tag is an error, not a choice.
    """
    s = text_value(value, header)
    m = _CALL_ID.match(s)
    if m is None:
        raise SipParseError(header, "lacks call-id")
    to_tag = from_tag = None
    early_only = False
    for name, param in parse_params(s, m.end(), header):
        if name == "to-tag" or name == "from-tag":
            if param and not TOKEN.fullmatch(param):
                raise SipParseError(header, f"bad {name} {excerpt(param)}")
            if name == "to-tag":
                if to_tag is not None:
                    raise SipParseError(header, "more than one to-tag")
                to_tag = param or ""
            else:
                if from_tag is not None:
                    raise SipParseError(header, "more than one from-tag")
                from_tag = param or ""
        elif name == "early-only":
            early_only = True
    if not to_tag or not from_tag:
        missing = " and ".join(n for n, t in (("to-tag", to_tag), ("from-tag", from_tag)) if not t)
        raise SipParseError(header, f"lacks {missing}")
    return Replaces(m.group(), to_tag, from_tag, early_only)


@dataclass(frozen=True)
class ReferTo:
    """A REFER's target, and the dialog it replaces for an attended transfer."""

    target: NameAddr
    replaces: Replaces | None

    @cached_property
    def uri(self) -> Uri:
        """Target URI without embedded ?headers: what policy checks and the INVITE goes to."""
        return self.target.uri.without_headers()


def parse_refer_to(value: str) -> ReferTo:
    """Read exactly one Refer-To value, bare or name-addr, with any embedded Replaces.

    Deviation from parse_name_addr: in the bare form (``sip:b@h:5060;user=phone``, sent
    by phones for blind transfers) the ';params' are read as the URI's, which is what
    the sender means (RFC 8217 asks for <> but Refer-To has no header params of note).
    """
    s = text_value(value, "Refer-To")
    parts = split_values(s) if "," in s else [s]
    if len(parts) != 1:
        reason = "more than one Refer-To value" if parts else "empty value"
        raise SipParseError("Refer-To", reason)
    target = _name_addr(parts[0], "Refer-To", bare_params_in_uri=True)
    replaces = None
    if target.uri.headers:
        found = target.uri.headers_named("replaces")
        if len(found) > 1:
            raise SipParseError("Refer-To", "more than one Replaces")
        if found:
            try:
                replaces = parse_replaces(found[0])
            except SipParseError as e:
                raise SipParseError("Refer-To", f"Replaces {e.reason}") from None
    return ReferTo(target, replaces)


def parse_referred_by(value: str) -> NameAddr:
    """Read one Referred-By (RFC 3892): bare, name-addr, with ;tag or ;cid, with no user.

    It is information only: unsigned, it is spoofable and must never authorise anything.
    """
    s = text_value(value, "Referred-By")
    if "," in s and len(split_values(s)) > 1:
        raise SipParseError("Referred-By", "more than one Referred-By value")
    return _name_addr(s, "Referred-By", bare_params_in_uri=False)


def _lead_and_params(value: str, header: str, what: str) -> tuple[str, Params]:
    s = text_value(value, header)
    m = _LEAD.match(s)
    if m is None:
        raise SipParseError(header, f"lacks {what}")
    lead = m.group()
    if not TOKEN.fullmatch(lead):
        raise SipParseError(header, f"bad {what} {excerpt(lead)}")
    return lead.lower(), parse_params(s, m.end(), header)


@dataclass(frozen=True, slots=True)
class EventHeader:
    """Event (RFC 6665); for refer, ``id`` is the CSeq of the REFER it reports on."""

    package: str
    id: str | None = None
    params: Params = ()

    def param(self, name: str) -> str | None:
        return find_param(self.params, name.lower())


def parse_event(value: str) -> EventHeader:
    """Read ``refer`` or ``refer;id=93809824``; ``params`` holds every param, id included."""
    package, params = _lead_and_params(value, "Event", "event package")
    event_id = None
    for name, param in params:
        if name == "id":
            if param is None or not TOKEN.fullmatch(param):
                raise SipParseError("Event", f"bad id {excerpt(param or '')}")
            event_id = param
            break
    return EventHeader(package, event_id, params)


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """Subscription-State (RFC 6665 §8.2.3); values lowercased, numbers in seconds."""

    state: str
    reason: str | None = None
    expires: int | None = None
    retry_after: int | None = None

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"


def parse_subscription_state(value: str) -> SubscriptionState:
    """Read ``active;expires=60``, ``terminated;reason=noresource`` and the like.

    linphone's ``reason=reason=noresource`` reads as reason ``noresource``. The first
    of repeated parameters wins; a non-numeric expires or retry-after is an error.
    """
    header = "Subscription-State"
    state, params = _lead_and_params(value, header, "state")
    reason = find_param(params, "reason")
    if reason is not None:
        reason = reason.lower()
        if reason.startswith("reason="):
            reason = reason[_REASON_REPEATS.match(reason).end() :]
        if not reason:
            reason = None
        elif not TOKEN.fullmatch(reason):
            raise SipParseError(header, f"bad reason {excerpt(reason)}")
    return SubscriptionState(
        state,
        reason,
        _seconds(params, "expires", header),
        _seconds(params, "retry-after", header),
    )


def _seconds(params: Params, name: str, header: str) -> int | None:
    for key, value in params:
        if key == name:
            if value is None or not _SMALL_INT.fullmatch(value):
                raise SipParseError(header, f"bad {name} {excerpt(value or '')}")
            return int(value)
    return None


def contact_uri(contact: str | None) -> str | None:
    """The URI of a Contact header value (the first one, without display name/params)."""
    if not contact:
        return None
    text = contact.strip()
    if "<" in text:
        inner = text.split("<", 1)[1]
        return inner.split(">", 1)[0].strip() or None
    first = text.split(",", 1)[0]
    return first.split(";", 1)[0].strip() or None
