"""One error type for every SIP reading failure, so a route maps all of them to one 400."""

from __future__ import annotations

__all__ = ["SipParseError", "excerpt"]


class SipParseError(ValueError):
    """Input that could not be read; ``str(e)`` is ``"<header>: <reason>"``.

    Reasons built by kemi.core.sip quote input only through :func:`excerpt`, so they are
    printable ASCII without ``"`` or ``\\`` and can go into a Warning or Reason header.
    """

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason

    def __reduce__(self) -> tuple[type[SipParseError], tuple[str, str]]:
        # ValueError pickles as cls(*args), which would lose the two-argument form.
        return (type(self), (self.header, self.reason))


_LIMIT = 40
# Printable ASCII except '"' and '\' survive; everything else becomes '?'.
_SAFE = str.maketrans({c: "?" for c in range(128) if not 0x20 <= c <= 0x7E or chr(c) in '"\\'})


def excerpt(text: str, limit: int = _LIMIT) -> str:
    """Quote untrusted input for an error reason: bounded, printable, header-safe."""
    cut = text[:limit]
    if not cut.isascii():
        cut = "".join(c if c.isascii() else "?" for c in cut)
    return "'" + cut.translate(_SAFE) + ("...'" if len(text) > limit else "'")
