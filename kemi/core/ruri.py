"""A Request-URI with header fields pasted into it, repaired before routing (ua-quirks.md).

One transferee, instead of turning the Refer-To's embedded headers into header fields
of its new INVITE (RFC 3261 19.1.5), pastes them into the Request-URI:

    INVITE sip:charlie@host?Require=replaces&Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2

and sends no Replaces header.  Headers are not allowed in a Request-URI (RFC 3261
19.1.1, table 1).  Passed on as is, the target sees an ordinary call (the consultation
call is not replaced; it rings a second time) or a UA chokes on the `?`; rejected, an
attended transfer that the transferor was entitled to fails for a formatting slip.

Decision: **repair what the RFC says the URI meant, nothing more**.  The Replaces moves
into a Replaces header field (with `Require: replaces`), where it is then checked like
any other (RFC 3891 rules, 403/481/486/603): the repair grants no authority a correct
INVITE would not have.  A pasted Replaces that cannot be read is answered 400 with what
is wrong, never guessed at.  Every other pasted header is dropped (logged), never copied
into the request: a URI from the wire must not be able to add Route, Via or anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.headers import parse_replaces
from kemi.core.sip.uri import parse_uri_in
from kemi.core.transfer import Reply


@dataclass(frozen=True)
class RequestUriRepair:
    """What to do to the INVITE: route by `request_uri`; add `replaces` (and
    `Require: replaces` unless it already requires it) when not None."""

    request_uri: str
    replaces: str | None
    dropped: tuple[str, ...]  # names of the other pasted headers, for the log

    def describe(self) -> str:
        parts = []
        if self.replaces is not None:
            parts.append(f"Replaces moved into a header ({self.replaces})")
        if self.dropped:
            parts.append("dropped " + ", ".join(self.dropped))
        return "; ".join(parts) or "headers removed"


def repair_request_uri(
    request_uri: str, replaces_headers: Sequence[str]
) -> RequestUriRepair | Reply | None:
    """None: nothing pasted (or a URI routing will judge anyway); a Reply: answer it."""
    if "?" not in request_uri:
        return None
    try:
        uri = parse_uri_in(request_uri, "Request-URI")
    except SipParseError:
        return None  # not ours to judge: the proxy's sanity checks and routing answer it
    if not uri.headers:
        return None
    pasted = uri.headers_named("Replaces")
    dropped = tuple(sorted({k for k, _ in uri.headers if k.lower() not in ("replaces",
                                                                            "require")}))
    bare = request_uri.strip().split("?", 1)[0]  # as sent: '?' cannot occur before
    if not pasted:
        return RequestUriRepair(bare, None, dropped)
    if len(pasted) > 1:
        return Reply(
            400, "Bad Request", f"Request-URI carries {len(pasted)} Replaces; at most one"
        )
    try:
        meant = parse_replaces(pasted[0], "Replaces (pasted in the Request-URI)")
    except SipParseError as exc:
        return Reply(
            400, "Bad Request",
            f"{exc}; send the Replaces as a header field, not in the Request-URI (RFC 3891)",
        )
    value = pasted[0].strip()
    existing = [v.strip() for raw in replaces_headers for v in raw.split(",") if v.strip()]
    if existing:
        try:
            same = all(parse_replaces(v) == meant for v in existing)
        except SipParseError:
            same = False
        if not same:
            return Reply(
                400, "Multiple Replaces",
                "a Replaces header and a different Replaces pasted in the Request-URI",
            )
        return RequestUriRepair(bare, None, dropped)  # the header says it already
    return RequestUriRepair(bare, value, dropped)
