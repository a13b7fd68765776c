"""The conformance set-up: the e2e lab (real Kamailio + referee, real Redis, a policy DB made
with the `referee` command), third-party SIPp scenarios read from ../shared/conformance,
and our counterparts (tests/conformance/counterparts.py) behind the proxy.

`lab` runs the python-engine config (kamailio.cfg); a test that is cheap enough also runs
the native drop-in with `@pytest.mark.parametrize("lab", BOTH_CONFIGS, indirect=True)`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kemi.cli.demo.kamailio_node import REPO, free_udp_port
from kemi.cli.demo.sipp import Sipp
from tests.conformance.counterparts import Party, Target, received
from tests.e2e.conftest import Lab, make_lab
from tests.e2e.test_attended import INDEX_ON, start_node

# The third-party scenarios are test data outside the project (licences differ): read in
# place, never copied in.
SHARED = REPO.parent / "shared" / "conformance"
ASTERISK = SHARED / "asterisk-testsuite"
BLIND = ASTERISK / "tests/channels/pjsip/transfers/blind_transfer"
BOTH_CONFIGS = ["kamailio.cfg", "kamailio-native.cfg"]
# A record unchanged for SETTLE_S (the order timer ticks every 50 ms) is what referee has
# written for what happened.
SETTLE_S = 0.2
SETTLE_MAX_S = 3.0


@pytest.fixture
def lab(request, tmp_path, redis_server):
    """A running proxy with referee (kamailio.cfg unless parametrized indirectly)."""
    cfg = getattr(request, "param", "kamailio.cfg")
    lab = make_lab(tmp_path, redis_server, cfg)
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


@dataclass
class Run:
    """The SIPp parties of one conformance case, all talking to the lab's proxy."""

    lab: Lab
    parties: list[Sipp] = field(default_factory=list)

    def third_party(self, path: Path, *, register: str | None = None, service: str | None = None,
                    keys: dict[str, str] | None = None, extra: tuple[str, ...] = (),
                    timeout_s: int = 15, calls: int = 1) -> Sipp:
        """A third-party scenario, unmodified, from ../shared/conformance; `register`: the
        user it is reachable as at the proxy (a scenario that answers a call); `calls`:
        its -m."""
        assert path.is_file(), f"third-party scenario missing: {path}"
        args = extra + (("-s", service) if service else ())
        sipp = Sipp(path, self.lab.tmp / "sipp", remote=self.lab.kamailio.address,
                    keys=dict(keys or {}), extra=args, timeout_s=timeout_s, calls=calls)
        if register:
            self.lab.register(register, sipp.port)
        self.parties.append(sipp)
        return sipp

    def ours(self, name: str, party: Party | Target, *, register: tuple[str, ...] = (),
             timeout_s: int = 15, calls: int = 1, extra: tuple[str, ...] = ()) -> Sipp:
        """One of our parties; `calls`: how many calls it takes before it exits."""
        port = free_udp_port()
        for user in register:
            self.lab.register(user, port)
        sipp = self.lab.party(name, party.xml(), port=port, timeout_s=timeout_s,
                              calls=calls, extra=extra)
        self.parties.append(sipp)
        return sipp

    def play(self, *listeners: Sipp, caller: Sipp) -> dict[str, int]:
        """Start the listeners, run the caller, wait for everyone: exit code per party."""
        for sipp in listeners:
            sipp.start()
        codes = {caller.name: caller.run()}
        for sipp in listeners:
            codes[sipp.name] = sipp.wait()
        return codes

    def play_twins(self, *listeners: Sipp, twin: Sipp, caller: Sipp) -> dict[str, int]:
        """`play` for a SIPp 3PCC pair (both started with `-3pcc <twin_address>`): the
        twin (the scenario that starts with recvCmd) listens for its controller, which
        connects as it starts, so the twin starts first and the rest once it listens."""
        twin.start()
        port = int(next(a for a in twin.extra if a.startswith("127.0.0.1:")).split(":")[1])
        deadline = time.monotonic() + 5
        while not _listening(port):
            assert twin.proc.poll() is None and time.monotonic() < deadline, twin.report()
            time.sleep(0.02)
        for sipp in listeners:
            sipp.start()
        codes = {caller.name: caller.run()}
        for sipp in (*listeners, twin):
            codes[sipp.name] = sipp.wait()
        return codes

    def report(self) -> str:
        return "\n".join(p.report() for p in self.parties) + (
            "\n--- kamailio:\n" + self.lab.kamailio.log()[-4000:]
        )

    def ladder(self, record: dict[str, str]) -> list[tuple[str, str, str]]:
        """(event, state after it, outcome) for each event referee recorded."""
        entries = self.lab.store.log(record["call_id"], record["refer_id"])
        out = []
        for entry in entries:
            _at, event, _old, new, outcome, *_detail = entry.split("|")
            out.append((event, new, outcome))
        return out

    def audio(self) -> None:
        """The RTP file some asterisk scenarios stream (`lib/python/asterisk/audio.ulaw`,
        relative to SIPp's directory): one second of mu-law silence, made here."""
        path = self.lab.tmp / "sipp" / "lib" / "python" / "asterisk" / "audio.ulaw"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff" * 8000)

    def transfer(self) -> dict[str, str]:
        """The one transfer record referee keeps for the case, once it has stopped
        changing: a NOTIFY held for its turn is recorded by the order timer just after it
        is relayed, so the parties may be done a few ms before the record is."""
        records = self.lab.records()
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            again = self.lab.records()
            if again == records:
                break
            records = again
        assert len(records) == 1, records
        return records[0]


@pytest.fixture
def run(lab) -> Run:
    return Run(lab)


# -- attended transfer: the dialog index on -----------------------------------------------
@pytest.fixture
def dlab(request, tmp_path, redis_server):
    """`lab` with the dialog index on: `[kamailio] dialog_index = true`, and for the
    native cfg the WITH_DIALOG_INDEX define (tests/e2e/test_attended.py's start_node)."""
    # SIPp twins (3PCC) play one party from several ports: known by IP (SIPP_PARTIES)
    lab = start_node(tmp_path, redis_server, getattr(request, "param", "kamailio.cfg"),
                     party_match="host")
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


@pytest.fixture
def drun(dlab) -> Run:
    return Run(dlab)


def twin_address() -> str:
    """A free loopback TCP address for a SIPp 3PCC pair's command link (-3pcc)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _listening(port: int) -> bool:
    """Whether some process listens on TCP `port` (a SIPp twin binds it on every
    address).  Read from /proc, not tried with a connect: the first connection a twin
    accepts is taken for its controller's."""
    want = f":{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(want) and fields[3] == "0A":
            return True
    return False


__all__ = ["ASTERISK", "BLIND", "BOTH_CONFIGS", "INDEX_ON", "SHARED", "Run", "received",
           "twin_address"]
