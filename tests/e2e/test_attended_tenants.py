"""Replaces across tenants, end to end: [kamailio] dialog_index = true, a tenant with
replaces_scope 'tenant', real Kamailio, Redis and SIPp on loopback.

Tenant "home" claims the lab's parties (their AORs are user@127.0.0.1); tenant "globex"
claims globex.example.  Gina is globex's: her call's To says gina@globex.example (the
Request-URI stays the lab's, so the registrar still finds her).
"""

from __future__ import annotations

import uuid

import pytest

from kemi.cli.demo.kamailio_node import free_udp_port
from kemi.core.dialogs import DialogState
from kemi.storage.dialogs import DialogStore
from tests.e2e.conftest import make_lab, referee_cli
from tests.e2e.parties import received
from tests.e2e.test_attended import INDEX_ON, SIPP_PARTIES, Call, replace
from tests.support.attended import Callee, Caller, _reply, cid_args


@pytest.fixture(params=["kamailio.cfg", "kamailio-native.cfg"])
def tlab(request, tmp_path, redis_server):
    """A lab with the dialog index on and the two tenants in its policy."""
    lab = make_lab(tmp_path, redis_server, request.param,
                   kamailio=f"{INDEX_ON}\n{SIPP_PARTIES}")  # SIPps play the parties
    if request.param == "kamailio-native.cfg":
        lab.kamailio.defines = ("WITH_DIALOG_INDEX",)
    for args in (("tenant", "add", "home", "--domain", "127.0.0.1", "--priority", "10",
                  "--replaces-scope", "tenant"),
                 ("tenant", "add", "globex", "--domain", "globex.example", "--priority", "20")):
        r = referee_cli(lab.db, *args)
        assert r.returncode == 0, r.stderr
    lab.kamailio.start()
    yield lab
    lab.kamailio.stop()
    errors = lab.kamailio.python_errors()
    assert not errors, "a referee route raised:\n" + "\n".join(errors)


class TenantCall(Call):
    """Call, with the callee's AOR (To) in `callee_domain`, and a callee that accepts one
    REFER (202) when `accepts_refer`."""

    def __init__(self, lab, caller: str, callee: str, callee_domain: str | None = None,
                 hold_ms: int = 3500, accepts_refer: bool = False, **kw):
        self.lab = lab
        self.caller_tag = f"{caller}-{uuid.uuid4().hex[:8]}"
        self.callee_tag = f"{callee}-{uuid.uuid4().hex[:8]}"
        extra, self.call_id = cid_args(f"{caller}-{callee}-{uuid.uuid4().hex[:8]}")
        port = free_udp_port()
        lab.register(callee, port)
        callee_xml = Callee(callee, self.callee_tag).xml()
        # No 180: Kamailio's UDP workers may relay it after the 200, and the caller's
        # scenario then aborts on it (tests/support/attended.py expects 180 before 200).
        ringing = _reply("180 Ringing", callee, self.callee_tag)
        assert ringing in callee_xml
        callee_xml = callee_xml.replace(ringing, "", 1)
        if accepts_refer:
            callee_xml = callee_xml.replace(
                '  <recv request="BYE"/>\n',
                '  <recv request="REFER"/>\n' + _reply("202 Accepted", callee, self.callee_tag)
                + '  <recv request="BYE"/>\n', 1)
        self.callee = lab.party(callee, callee_xml, port=port).start()
        caller_xml = Caller(caller, callee, self.caller_tag, hold_ms=hold_ms, **kw).xml()
        if callee_domain:
            caller_xml = caller_xml.replace(f"<sip:{callee}@[remote_ip]>",
                                            f"<sip:{callee}@{callee_domain}>")
        self.caller = lab.party(f"{caller}-to-{callee}", caller_xml, extra=extra).start()

    def refer_to(self, target: str) -> str:
        """A Refer-To for `target` (at the proxy) with a Replaces naming this call."""
        return (f"<sip:{target}@127.0.0.1:{self.lab.kamailio.port}?Replaces={self.call_id}"
                f"%3Bto-tag%3D{self.callee_tag}%3Bfrom-tag%3D{self.caller_tag}>")


def test_a_refer_with_replaces_naming_another_tenants_dialog_is_403_naming_the_setting(tlab):
    alab = tlab
    consultation = TenantCall(alab, "andrew", "gina", callee_domain="globex.example")
    consultation.wait_state(DialogState.CONFIRMED)
    d = DialogStore(alab.rcli).get(consultation.call_id, consultation.caller_tag)
    assert (d.caller, d.callee) == ("andrew@127.0.0.1", "gina@globex.example")

    original = TenantCall(alab, "andrew", "mckenzie", hold_ms=0,
                          refer_to=consultation.refer_to("gina"), expect_refer=403)
    original.finish()

    [answer] = received(original.caller, "REFER", status=403)
    warning = answer.header("Warning") or ""
    assert "Replaces across tenants: gina@globex.example" in warning, warning
    assert "belongs to tenant globex" in warning
    assert "denied by tenant home: replaces_scope tenant" in warning
    assert received(original.callee, "REFER") == []  # refused before McKenzie saw it
    assert consultation.state() == DialogState.CONFIRMED
    consultation.finish()


def test_a_refer_with_replaces_naming_a_dialog_within_the_tenant_is_relayed(tlab):
    alab = tlab
    consultation = TenantCall(alab, "andrew", "marsha")
    consultation.wait_state(DialogState.CONFIRMED)

    original = TenantCall(alab, "andrew", "mckenzie", hold_ms=0, accepts_refer=True,
                          refer_to=consultation.refer_to("marsha"), expect_refer=202)
    original.finish()

    assert len(received(original.callee, "REFER")) == 1  # McKenzie got it, and said 202
    assert received(original.caller, "REFER", status=202)
    consultation.finish()


def test_an_invite_with_replaces_from_a_party_naming_its_cross_tenant_dialog_is_403(tlab):
    """Andrew is a party to his call with Gina, so the RFC would let him replace it; his
    tenant's replaces_scope does not."""
    consultation = TenantCall(tlab, "andrew", "gina", callee_domain="globex.example")
    consultation.wait_state(DialogState.CONFIRMED)

    final = replace(tlab, "andrew", "gina", consultation.replaces(), 403)

    warning = final.header("Warning") or ""
    assert "Replaces across tenants: gina@globex.example" in warning, warning
    assert "denied by tenant home: replaces_scope tenant" in warning
    assert consultation.state() == DialogState.CONFIRMED
    consultation.finish()
    assert len(received(consultation.callee, "INVITE")) == 1  # the replacing one never came
