"""config-examples/asterisk works as shipped (issue 10 item 1), checked the way Asterisk
20 reads the files (tests/support/asterisk_conf.py) against what referee's side expects
(kemi.config defaults, config-examples/kamailio/referee.toml, README).

Found by an operator wiring a real Asterisk: the PBX endpoint did not route through
Kamailio (referee never saw the REFER), three different `dial` strings, a `;` inside a
NoOp that Asterisk reads as a comment ("No closing parenthesis found?" on every load),
and a transport bound to 0.0.0.0 in an example meant for one box.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi import config
from tests.support import asterisk_conf

REPO = Path(__file__).resolve().parents[2]
AST = REPO / "config-examples" / "asterisk"
SETTINGS = config.load(str(REPO / "config-examples" / "kamailio" / "referee.toml"))
A = SETTINGS.asterisk


@pytest.fixture(scope="module")
def steps():
    return asterisk_conf.dialplan(asterisk_conf.read(AST / "extensions.conf"))


def prios(steps, context: str, exten: str) -> dict[int, asterisk_conf.Step]:
    out = {s.priority: s for s in steps if s.context == context and s.exten == exten}
    assert out, f"{context},{exten} is not in extensions.conf"
    return out


def test_every_file_reads_as_asterisk_reads_it():
    for name in ("extensions.conf", "pjsip.conf", "manager.conf"):
        asterisk_conf.read(AST / name)


def test_a_semicolon_inside_an_application_is_a_comment_to_asterisk():
    """The reader itself: what the example had, Asterisk refuses."""
    bad = AST.parent / "x.conf"
    try:
        bad.write_text("[c]\nexten => s,1,NoOp(answered; bridging ${X})\n")
        with pytest.raises(ValueError, match="No closing parenthesis found"):
            asterisk_conf.dialplan(asterisk_conf.read(bad))
        bad.write_text("[c]\nexten => s,1,NoOp(answered\\; bridging ${X})\n")
        [step] = asterisk_conf.dialplan(asterisk_conf.read(bad))
        assert step.args == "answered; bridging ${X}"
    finally:
        bad.unlink()


def test_the_dialplan_parses_with_every_parenthesis_closed(steps):
    assert len(steps) > 20


def test_the_contexts_and_priorities_referee_drives(steps):
    conf = asterisk_conf.read(AST / "extensions.conf")
    [glob] = conf.named("globals")
    assert glob.get("REFEREE_AGI") == f"agi://{A.agi_host}:{A.agi_port}"
    for pattern in ("_X.", "_[+a-zA-Z]."):
        p = prios(steps, A.transfer_context, pattern)
        assert (p[1].app, p[2].app) == ("NoOp", "AGI") and p[2].args.endswith("/anchored")
        wait = next(s for s in p.values() if s.label == "wait")
        assert wait.app == "MusicOnHold" and p[wait.priority + 1].app == "Hangup"
    hold = prios(steps, A.hold_context, A.hold_exten)
    # A continues at its own priority + 1 after a bridge ends (recorded: hold,3).
    assert (hold[2].app, hold[3].app) == ("MusicOnHold", "Hangup")
    recall = prios(steps, A.recall_context, "s")
    assert recall[2].app == "Bridge" and recall[2].args == "${XFER_PEER}"
    assert recall[3].app == "Hangup"
    for pattern in ("_X.", "_+X.", "_[a-zA-Z]."):
        assert prios(steps, "referee-relayed", pattern)[1].args.endswith("/relayed")
    context, exten, prio = A.replaces_predial.split("^")
    pre = prios(steps, context, exten)
    assert int(prio) in pre and pre[max(pre)].app == "Return"


def test_a_hangup_follows_every_bridge_dial_and_agi(steps):
    """README: a Hangup() after every bridge -- a channel that leaves one continues at
    the next priority; without one it would fall off the dialplan or linger."""
    for s in steps:
        if s.app in ("Bridge", "Dial", "AGI", "MusicOnHold"):
            after = prios(steps, s.context, s.exten).get(s.priority + 1)
            assert after is not None, f"nothing after {s.context},{s.exten},{s.priority}"


def _endpoint(pj, name: str) -> None:
    assert pj.has(name, "endpoint"), f"no endpoint {name} in pjsip.conf"


def test_the_pbx_endpoint_routes_its_dialogs_through_kamailio():
    """A's dialog with Asterisk must pass Kamailio, or referee never sees A's REFER."""
    pj = asterisk_conf.read(AST / "pjsip.conf")
    _endpoint(pj, "customer-pbx")
    proxy = pj.of_type("customer-pbx", "endpoint", "outbound_proxy")
    assert proxy is not None, "customer-pbx has no outbound_proxy"
    assert proxy.endswith(";lr"), proxy  # written \;lr: a bare ; would start a comment
    kamailio = pj.of_type("kamailio", "aor", "contact")
    assert proxy.removesuffix(";lr") == kamailio, (proxy, kamailio)


def test_no_endpoint_rewrites_contacts_to_kamailios_address():
    """With rewrite_contact = yes Asterisk sends A's later in-dialog requests (the
    relayed path's NOTIFYs, its BYE) to Kamailio's own address (issue 10.2)."""
    pj = asterisk_conf.read(AST / "pjsip.conf")
    for name in ("customer-pbx", "kamailio"):
        assert pj.of_type(name, "endpoint", "rewrite_contact") == "no", name


def test_one_dial_string_everywhere():
    """referee.toml's [anchored] dial names an endpoint pjsip.conf has, and the README
    and the pjsip.conf comment say the same string."""
    dial = SETTINGS.anchored.dial
    assert dial.startswith("PJSIP/{user}@")
    _endpoint(asterisk_conf.read(AST / "pjsip.conf"), dial.split("@", 1)[1])
    assert f'dial = "{dial}"' in (AST / "pjsip.conf").read_text()
    readme = (REPO / "README.md").read_text()
    assert f'dial = "{dial}"' in readme
    assert "PJSIP/{user}@carrier" not in readme


def test_the_example_binds_loopback_as_one_box_wants():
    pj = asterisk_conf.read(AST / "pjsip.conf")
    bind = pj.resolved("transport-udp", "bind")
    assert bind.startswith("127.0.0.1:"), bind


def test_the_ami_user_is_the_one_referee_logs_in_as():
    mgr = asterisk_conf.read(AST / "manager.conf")
    [general] = mgr.named("general")
    assert general.get("bindaddr") == "127.0.0.1" and int(general.get("port")) == A.ami_port
    [user] = mgr.named(A.ami_user)
    assert set(user.get("read").split(",")) >= {"call", "dialplan", "user"}
    assert set(user.get("write").split(",")) >= {"call", "originate", "reporting"}
