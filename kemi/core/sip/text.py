"""What a header value or body read off the wire is, as text, and how to write any of it
back into a log line or a header safely.

The KSR glue hands over bytes that are not UTF-8 as lone surrogates (Python's
"surrogateescape": byte 0xff becomes U+DCFF), so nothing is lost and nothing raises on
the way in.  `text_fault` says what makes a value unusable as SIP text (RFC 3261 25.1:
TEXT-UTF8, no control characters but horizontal tab); `printable` is the value fit for a
Kamailio log call or a Warning (a NUL there makes app_python3 raise, a surrogate cannot
be encoded at all).
"""

from __future__ import annotations

import re

__all__ = ["printable", "text_fault"]

# The characters _fault_of names (searched in C: a per-character loop in Python cost a
# REFER ~20 µs for its Call-ID and tags alone), without and with CR and LF.
_FAULTY = re.compile("[\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]")
_FAULTY_BUT_NEWLINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\udc80-\udcff]")


def _fault_of(ch: str) -> str | None:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:
        return f"byte 0x{o - 0xDC00:02x} that is not UTF-8"
    if o == 0:
        return "a NUL byte"
    if (o < 0x20 and ch != "\t") or o == 0x7F:
        return f"control character 0x{o:02x}"
    return None


def text_fault(value: str, allow_newlines: bool = False) -> str | None:
    """Why `value` is no SIP text ("byte 0xff that is not UTF-8 at 9"), or None.
    `allow_newlines`: a body's line ends (CR, LF) are no fault."""
    found = (_FAULTY_BUT_NEWLINES if allow_newlines else _FAULTY).search(value)
    if found is None:
        return None
    return f"{_fault_of(found.group())} at {found.start()}"


def printable(text: str, keep_newlines: bool = False, escape: str = "\\x{:02x}") -> str:
    """`text` with every undecodable byte, NUL and control character written as \\xNN
    (or `escape`; newlines kept if asked: a traceback in a log line)."""
    if text_fault(text, keep_newlines) is None:
        return text
    out = []
    for ch in text:
        if keep_newlines and ch == "\n":
            out.append(ch)
        elif _fault_of(ch) is None:
            out.append(ch)
        else:
            o = ord(ch)
            out.append(escape.format(o - 0xDC00 if o >= 0xDC80 else o))
    return "".join(out)
