"""Hand-made SIP over UDP: exactly the bytes a test means, including those no UA would
send (a byte that is not UTF-8, a NUL, an empty header), and the answers they get.

`RawUA` plays both ends of a request through the proxy when asked: it sends from its own
port and, if the proxy relays the request back to it (its address in the Request-URI),
answers that with `answer` so the proxy has a final response to relay."""

from __future__ import annotations

import re
import socket
import time
import uuid
from dataclasses import dataclass


@dataclass
class Response:
    raw: bytes

    @property
    def code(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        m = re.search(rb"^" + name.encode() + rb":[ \t]*(.*?)\r$", self.raw, re.M | re.I)
        return m.group(1).decode("utf-8", "replace") if m else None


class RawUA:
    def __init__(self, proxy_port: int, host: str = "127.0.0.1"):
        self.proxy = ("127.0.0.1", proxy_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))  # any 127.x.y.z is this host's on Linux
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.relayed: list[bytes] = []  # requests the proxy sent on to us

    def close(self) -> None:
        self.sock.close()

    def fields(self) -> dict[str, str]:
        """Fresh values for a template: {port}, {proxy}, {branch}, {tag}, {cid}."""
        return {"port": str(self.port), "proxy": f"127.0.0.1:{self.proxy[1]}",
                "branch": "z9hG4bK" + uuid.uuid4().hex[:12], "tag": uuid.uuid4().hex[:8],
                "cid": uuid.uuid4().hex}

    def send(self, data: bytes, timeout: float = 3.0, answer: int = 202) -> Response | None:
        """Send one request; the first final response to it (None if none came)."""
        self.sock.sendto(data, self.proxy)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got, src = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            if got.startswith(b"SIP/2.0 "):
                r = Response(got)
                if r.code >= 200:
                    return r
                continue
            self.relayed.append(got)
            if not got.startswith(b"ACK "):
                self.sock.sendto(_answer(got, answer), src)
        return None


def _answer(request: bytes, code: int) -> bytes:
    """A response copying what RFC 3261 8.2.6.2 says to copy."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [ln for ln in head[1:] if re.match(rb"(?i)(via|from|to|call-id|cseq):", ln)]
    keep = [ln + (b";tag=raw" if ln.lower().startswith(b"to:") and b"tag=" not in ln else b"")
            for ln in keep]
    return (b"SIP/2.0 %d Answer\r\n" % code + b"\r\n".join(keep)
            + b"\r\nContent-Length: 0\r\n\r\n")


REFER = (
    "REFER sip:mckenzie@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
    "Route: <sip:{proxy};lr>\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:andrew@127.0.0.1>;tag={tag}\r\n"
    "To: <sip:mckenzie@127.0.0.1>;tag=mk{tag}\r\n"
    "Call-ID: @CID@\r\n"
    "CSeq: 2 REFER\r\n"
    "Contact: <sip:andrew@127.0.0.1:{port}>\r\n"
    "Refer-To: @REFER_TO@\r\n"
    "Referred-By: @REFERRED_BY@\r\n"
    "Content-Length: 0\r\n\r\n"
)
NOTIFY = (
    "NOTIFY sip:andrew@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
    "Route: <sip:{proxy};lr>\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:mckenzie@127.0.0.1>;tag=mk{tag}\r\n"
    "To: <sip:andrew@127.0.0.1>;tag={tag}\r\n"
    "Call-ID: {cid}\r\n"
    "CSeq: 7 NOTIFY\r\n"
    "Contact: <sip:mckenzie@127.0.0.1:{port}>\r\n"
    "Event: @EVENT@\r\n"
    "Subscription-State: active;expires=60\r\n"
    "Content-Type: @CTYPE@\r\n"
    "Content-Length: @LEN@\r\n\r\n"
)


def refer(ua, *, refer_to=b"<sip:marsha@127.0.0.1>", referred_by=b"<sip:andrew@127.0.0.1>",
          call_id=None, request_uri: bytes | None = None) -> bytes:
    """An in-dialog REFER routed through the proxy back to `ua` (which answers it)."""
    f = ua.fields()
    head = REFER.format(**f).encode()
    if request_uri is not None:
        first, rest = head.split(b"\r\n", 1)
        head = b"REFER " + request_uri + b" SIP/2.0\r\n" + rest
    return (head.replace(b"@CID@", call_id or f["cid"].encode())
            .replace(b"@REFER_TO@", refer_to).replace(b"@REFERRED_BY@", referred_by))


def notify(ua, *, event=b"refer", ctype=b"message/sipfrag", body=b"SIP/2.0 100 Trying\r\n"):
    head = NOTIFY.format(**ua.fields()).encode()
    head = head.replace(b"@EVENT@", event).replace(b"@CTYPE@", ctype)
    return head.replace(b"@LEN@", str(len(body)).encode()) + body
