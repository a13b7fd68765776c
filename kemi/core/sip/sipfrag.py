"""The message/sipfrag body of a refer NOTIFY (RFC 3420, RFC 3515 §2.4.5).

Only the Status-Line matters to a transfer (1xx progress, 2xx success, >=300 failure);
anything after the first line is ignored, never required.

Decisions: leading blank lines, whitespace and a UTF-8 BOM before the Status-Line are
skipped; a line may end in CRLF, bare LF or bare CR; "SIP" is matched in any case and
the reason phrase kept as sent ("Ok") and may be empty; for bytes, only the first line
must be UTF-8. A status line without "SIP/x.y" is not accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SipParseError, excerpt

__all__ = ["StatusLine", "is_sipfrag", "parse_sipfrag"]

_HEADER = "sipfrag"
_LEADING = "\ufeff\r\n \t"
# Greedy reason, stripped afterwards: a lazy group before trailing blanks backtracks O(n^2).
_STATUS = re.compile(r"SIP/([0-9]{1,3}\.[0-9]{1,3})[ \t]+([0-9]{3})(?:[ \t](.*))?", re.I | re.S)
_REQUEST = re.compile(r"[A-Za-z]+[ \t]+\S+[ \t]+SIP/", re.I)
_EOL = re.compile(r"[\r\n]")


@dataclass(frozen=True, slots=True)
class StatusLine:
    """``SIP/2.0 180 Ringing``: version is ``SIP/<n.n>`` with "SIP" uppercased."""

    version: str
    code: int
    reason: str

    @property
    def is_provisional(self) -> bool:
        return self.code < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_failure(self) -> bool:
        return self.code >= 300

    @property
    def is_final(self) -> bool:
        return self.code >= 200

    def __str__(self) -> str:
        return f"{self.version} {self.code} {self.reason}".rstrip()


def parse_sipfrag(body: str | bytes) -> StatusLine:
    """Read the Status-Line that starts a sipfrag body (see module doc for tolerance)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body).lstrip(b"\r\n \t")
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:].lstrip(b"\r\n \t")
        cut = len(raw)
        for eol in (b"\r", b"\n"):
            i = raw.find(eol, 0, cut)
            if i >= 0:
                cut = i
        try:
            line = raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            raise SipParseError(_HEADER, "first line is not UTF-8 text") from None
    elif isinstance(body, str):
        text = body.lstrip(_LEADING)
        m = _EOL.search(text)
        line = text[: m.start()] if m else text
    else:
        raise SipParseError(_HEADER, f"expected text, got {type(body).__name__}")
    if not line:
        raise SipParseError(_HEADER, "empty body")
    m = _STATUS.fullmatch(line)
    if m is None:
        if _REQUEST.match(line):
            raise SipParseError(_HEADER, "request-line where a Status-Line was expected")
        raise SipParseError(_HEADER, f"not a SIP Status-Line: {excerpt(line)}")
    code = int(m.group(2))
    if not 100 <= code <= 699:
        raise SipParseError(_HEADER, f"status code {code} out of range")
    return StatusLine("SIP/" + m.group(1), code, (m.group(3) or "").strip(" \t"))


def is_sipfrag(content_type: str | None) -> bool:
    """True for ``message/sipfrag`` in any case, with or without parameters."""
    if not isinstance(content_type, str):
        return False
    media = content_type.partition(";")[0]
    return "".join(media.split()).lower() == "message/sipfrag"
