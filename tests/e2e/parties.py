"""Helpers the end-to-end tests share: run the three SIPp parties through the lab's proxy,
read what each party sent and received (SIPp's -trace_msg log), and a silent phone."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from kemi.cli.demo.kamailio_node import free_udp_port
from kemi.cli.demo.sipp import Sipp
from tests.support.siplog import SipMessage, sip_messages


def received(party: Sipp, method: str | None = None, status: int | None = None) -> list[SipMessage]:
    """What `party` received: requests of `method`, or responses with `status`
    (and, if given, to `method`); a retransmission counts once."""
    out = []
    seen = set()
    for msg in sip_messages(party.messages()):
        if msg.direction != "received":
            continue
        key = (msg.start_line, msg.header("Call-ID"), msg.header("CSeq"), msg.header("Via"))
        if key in seen:
            continue
        seen.add(key)
        if status is None and (not msg.is_request or msg.method != method):
            continue
        if status is not None and (msg.status != status or (method and msg.method != method)):
            continue
        out.append(msg)
    return out


@dataclass
class Parties:
    """The phones of one lab: McKenzie and Marsha keep their ports (and registrations)
    across transfers, so several transfers can run through one proxy."""

    lab: object
    mckenzie_port: int = field(default_factory=free_udp_port)
    marsha_port: int = field(default_factory=free_udp_port)

    def start(self, andrew, mckenzie, marsha=None) -> tuple[Sipp, Sipp, Sipp | None]:
        """Register the called parties and start all three; nobody is waited for."""
        lab = self.lab
        lab.register("mckenzie", self.mckenzie_port)
        ma = None
        if marsha is not None:
            lab.register("marsha", self.marsha_port)
            ma = lab.party("marsha", marsha.xml(), port=self.marsha_port).start()
        mk = lab.party("mckenzie", mckenzie.xml(), port=self.mckenzie_port).start()
        an = lab.party("andrew", andrew.xml()).start()
        return an, mk, ma

    def run(self, andrew, mckenzie, marsha=None) -> tuple[Sipp, Sipp, Sipp | None]:
        """A whole transfer; every party's scenario must complete."""
        an, mk, ma = self.start(andrew, mckenzie, marsha)
        finish(self.lab, an, mk, ma)
        return an, mk, ma


def finish(lab, *parties: Sipp | None) -> None:
    """Wait for every party; fail with its report (and the proxy's log) if one failed."""
    results = [(p, p.wait()) for p in parties if p is not None]
    for p, rc in results:
        assert rc == 0, p.report() + "\n--- kamailio:\n" + lab.kamailio.log()[-4000:]


class SilentPhone:
    """A registered contact that only listens: proves nothing was sent to it."""

    def __init__(self, lab, user: str):
        self.port = free_udp_port()
        lab.register(user, self.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.setblocking(False)

    def heard(self, linger_s: float = 0.2) -> list[bytes]:
        time.sleep(linger_s)
        out = []
        while True:
            try:
                out.append(self.sock.recv(65535))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout_s: float, step_s: float = 0.05):
    """Poll until predicate() is truthy; return its value (or the last falsy one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step_s)
