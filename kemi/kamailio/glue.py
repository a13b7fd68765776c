"""What every Kamailio-facing module of referee shares: the route wrapper, reading
pseudo-variables and headers safely, answering, logging, and the return codes.

Rules kept everywhere (notes/kamailio-kemi.md): every route returns an int, no exception
escapes (an escaped one means no SIP reply at all), and nothing read off the wire can
make a KSR call raise (undecodable bytes come back as surrogate escapes).
"""

from __future__ import annotations

import functools
import traceback

import KSR  # provided by app_python3

from kemi.core.actions import Reply
from kemi.core.sip.text import printable

CONTINUE = 1  # let the caller (cfg or proxy) go on routing
HANDLED = 0  # referee answered; the cfg route must end here
REPLY_ROUTE = "referee_reply"
FAILURE_ROUTE = "referee_failure"


def log(level, text: str) -> None:
    # A NUL or an undecodable byte from the wire would make the log call itself raise.
    level(f"referee: {printable(text, keep_newlines=True)}\n")


def route(kind: str):
    """Wrap a route: an int always comes back; the unexpected is logged and, on a request,
    answered 500 so the sender is never left waiting in silence."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, msg, *args):
            try:
                rc = fn(self, msg)  # rtimer and event routes pass extra arguments
                return CONTINUE if rc is None else int(rc)
            except Exception as exc:  # noqa: BLE001 - the last line of defence
                log(KSR.err, f"{kind} {fn.__name__} failed: {exc!r}\n{traceback.format_exc()}")
                if kind == "request":
                    try:
                        KSR.hdr.append_to_reply(
                            f'Warning: 399 referee "internal error: {type(exc).__name__}"\r\n'
                        )
                        KSR.sl.send_reply(500, "Server Internal Error")
                    except Exception:  # noqa: BLE001
                        pass
                    return HANDLED
                return CONTINUE

        return inner

    return wrap


def pv(spec: str) -> str | None:
    """A pseudo-variable as text; bytes that are not UTF-8 come back as surrogate escapes
    (kemi.core.sip.text) instead of raising in app_python3."""
    try:
        value = KSR.pv.get(spec)
    except UnicodeDecodeError:
        return _undecoded(spec[1:])
    return None if value is None else str(value)


def _undecoded(inner: str) -> str | None:
    """`$(<inner>)` read again through Kamailio's hex transformation, byte for byte."""
    hexed = KSR.pv.get(f"$({inner}{{s.encode.hexa}})")
    if hexed is None:
        return None
    return bytes.fromhex(str(hexed)).decode("utf-8", "surrogateescape")


def source() -> str:
    """Where the current message came from, "ip:port" (what a forger cannot choose)."""
    return f"{pv('$si') or ''}:{pv('$sp') or ''}"


def header_values(name: str) -> list[str]:
    """Every instance of a header (compact forms and any case match, as Kamailio parses)."""
    out = []
    i = 0
    while True:
        try:
            value = KSR.hdr.get_idx(name, i)
        except UnicodeDecodeError:
            value = _undecoded(f"hdr({name})[{i}]")
        if value is None:
            return out
        out.append(str(value))
        i += 1


def answer(reply: Reply) -> int:
    extra = reply.headers()
    if extra:
        KSR.hdr.append_to_reply(extra)
    KSR.sl.send_reply(reply.code, reply.reason)
    return HANDLED


def arm_routes() -> None:
    """The current transaction's replies and failure reach referee."""
    KSR.tm.t_on_reply(REPLY_ROUTE)
    KSR.tm.t_on_failure(FAILURE_ROUTE)


def as_text(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def as_pairs(flat) -> dict[str, str]:
    if isinstance(flat, dict):
        return {as_text(k): as_text(v) for k, v in flat.items()}
    it = iter(flat)
    return {as_text(k): as_text(v) for k, v in zip(it, it, strict=False)}


def source_key(addr: str) -> str:
    """'host:port' as the cfg's $si:$sp reads it (IPv6 without brackets)."""
    host, _, port = addr.rpartition(":")
    return f"{host.strip('[]').lower()}:{int(port)}"
