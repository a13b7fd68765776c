"""Traces operators open in Homer or sngrep: with -A WITH_HOMER both example cfgs send
every SIP message to a HEP collector, and referee's decision about a message as a HEP log
correlated by its Call-ID.  The collector here is a UDP socket of the test's own that
decodes HEPv3."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import pytest

from kemi.cli.demo import phones as scenarios
from tests.e2e.conftest import make_lab
from tests.e2e.parties import Parties, received

LOG = 0x64  # HEP protocol type of a log (hlog); 0x01 is SIP


@dataclass
class Hep:
    proto: int = 0
    correlation: str = ""
    payload: str = ""
    chunks: dict[int, bytes] = field(default_factory=dict)

    @property
    def call_id(self) -> str:
        for line in self.payload.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() in ("call-id", "i"):
                return value.strip()
        return ""

    @property
    def first_line(self) -> str:
        return self.payload.split("\r\n", 1)[0]


def decode(packet: bytes) -> Hep:
    """One HEPv3 packet: "HEP3", total length, then chunks (vendor, type, length)."""
    assert packet[:4] == b"HEP3", packet[:16]
    total = struct.unpack("!H", packet[4:6])[0]
    assert total == len(packet)
    hep, i = Hep(), 6
    while i < total:
        _vendor, kind, length = struct.unpack("!HHH", packet[i:i + 6])
        hep.chunks[kind] = packet[i + 6:i + length]
        i += length
    hep.proto = hep.chunks.get(0x000b, b"\0")[0]
    hep.correlation = hep.chunks.get(0x0011, b"").decode(errors="replace")
    hep.payload = hep.chunks.get(0x000f, b"").decode(errors="replace")
    return hep


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def hlab(request, tmp_path, redis_server):
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(0.2)
    lab = make_lab(tmp_path, redis_server, request.param)
    port = collector.getsockname()[1]
    lab.kamailio.defines = ("WITH_HOMER", f'HOMER_COLLECTOR="sip:127.0.0.1:{port}"')
    lab.kamailio.start()
    lab.collector = collector
    yield lab
    lab.kamailio.stop()
    collector.close()
    assert not lab.kamailio.python_errors()


def heard(lab, settle_s: float = 1.0) -> list[Hep]:
    out, quiet_until = [], time.monotonic() + settle_s
    while time.monotonic() < quiet_until:
        try:
            data = lab.collector.recv(65535)
        except TimeoutError:
            continue
        out.append(decode(data))
        quiet_until = time.monotonic() + settle_s
    return out


def test_a_transfers_messages_and_referees_decision_reach_the_collector(hlab):
    an, _, _ = Parties(hlab).run(scenarios.Andrew(), scenarios.McKenzie(),
                                 scenarios.Marsha())
    [refer] = received(an, "REFER", status=202)
    call_id = refer.header("Call-ID")
    packets = heard(hlab)
    sip = [p for p in packets if p.proto == 0x01 and p.call_id == call_id]
    lines = [p.first_line for p in sip]
    assert any(line.startswith("REFER ") for line in lines), lines
    assert any(line.startswith("NOTIFY ") for line in lines), lines
    assert "SIP/2.0 202 Accepted" in lines
    logs = [p for p in packets if p.proto == LOG]
    mine = [p for p in logs if p.correlation == call_id]
    assert any(p.payload.startswith(f"referee: REFER {call_id}/") and "allowed" in p.payload
               for p in mine), [p.payload for p in logs]
    # Each SIP message crosses the proxy twice (in and out): both legs are traced.
    assert sum(line.startswith("REFER ") for line in lines) == 2
