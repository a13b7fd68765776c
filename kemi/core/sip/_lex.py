"""Shared scanning for SIP header values: unfolding, quoted strings, ;params, commas.

Kept apart from headers.py so each reader stays short; all regexes compile once here.
"""

from __future__ import annotations

import re

from .errors import SipParseError, excerpt

Params = tuple[tuple[str, str | None], ...]

# RFC 3261 token (used for tags, event packages, states).
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Header parameter: ;name[=token-ish|quoted-string], LWS allowed around ';' and '='.
_PARAM = re.compile(
    r'[ \t]*;[ \t]*([^\s;=,"<>]*)(?:[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^\s;,"<>]*))?[ \t]*'
)
_FOLD = re.compile(r"\r?\n[ \t]+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_SPLIT_MARKS = re.compile(r'[",<>\\]')


def text_value(value: object, header: str) -> str:
    """Check the type, unfold continuation lines and strip; empty values are an error."""
    if not isinstance(value, str):
        raise SipParseError(header, f"expected text, got {type(value).__name__}")
    if "\n" in value:
        value = _FOLD.sub(" ", value)
    value = value.strip()
    if not value:
        raise SipParseError(header, "empty value")
    return value


def unquote_qs(inner: str) -> str:
    """Content of a quoted-string (without its quotes) with quoted-pairs resolved."""
    return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner


def parse_params(s: str, pos: int, header: str) -> Params:
    """Read ``;name=value`` pairs from ``s[pos:]`` to the end (names lowercased).

    Quoted values are returned unquoted; a parameter without '=' has value None.
    """
    n = len(s)
    if pos >= n:
        return ()
    out: list[tuple[str, str | None]] = []
    match = _PARAM.match
    while pos < n:
        m = match(s, pos)
        if m is None:
            rest = s[pos:].lstrip()
            if rest.startswith(","):
                raise SipParseError(header, "more than one value")
            raise SipParseError(header, f"malformed parameter near {excerpt(rest)}")
        pos = m.end()
        name, value = m.group(1, 2)
        if not name:
            if value is None:
                continue  # empty segment such as ';;' or a trailing ';'
            raise SipParseError(header, "parameter without a name")
        if value is not None and value[:1] == '"':
            value = unquote_qs(value[1:-1])
        out.append((name.lower(), value))
    return tuple(out)


def find_param(params: Params, name: str) -> str | None:
    """Value of the first parameter called ``name`` (already lowercase), else None."""
    for key, value in params:
        if key == name:
            return value
    return None


def split_values(value: str) -> list[str]:
    """Split a header line on top-level commas (outside quotes and <...>), stripped.

    Empty elements (``a,,b``, a trailing comma) are dropped, so the length counts values.
    Never raises: an unterminated quote or '<' simply extends the last element.
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    skip_to = -1
    for m in _SPLIT_MARKS.finditer(value):
        i = m.start()
        if i < skip_to:
            continue  # the character after a backslash inside quotes
        c = value[i]
        if in_quotes:
            if c == "\\":
                skip_to = i + 2
            elif c == '"':
                in_quotes = False
        elif in_angle:
            if c == ">":
                in_angle = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            in_angle = True
        elif c == ",":
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p for p in (p.strip() for p in parts) if p]
