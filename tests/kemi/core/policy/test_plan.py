"""The anchored transfer plan on rules, and Replaces across tenants (no I/O)."""

from __future__ import annotations

import pytest

from kemi.core.policy.evaluate import aor_host, decide, party_tenant, replaces_crossing, tenant_for
from kemi.core.policy.model import Policy, ReferFacts, Rule, Tenant, TransferPlan, parse_on_failure
from kemi.core.sip.uri import parse_uri

DEFAULT = Tenant("default", priority=2147483647, id=1)


def facts(target: str = "sip:bob@example.com", *, user: str | None = None,
          domain: str | None = None) -> ReferFacts:
    return ReferFacts("192.0.2.1", domain, user, "alice@example.com", True, parse_uri(target))


def allow(**plan) -> Rule:
    return Rule("plan", "allow", "domain", "partner.example", id=5, **plan)


# -- validation -------------------------------------------------------------------------

@pytest.mark.parametrize("plan", [
    {"announcement": "custom/please-hold"},
    {"announcement": "/var/lib/asterisk/sounds/en/transfer"},
    {"announcement": ""},
    {"caller_id": "keep"},
    {"caller_id": "transferor"},
    {"caller_id": "+442071234567"},
    {"caller_id": "02071234567"},
    {"dial_timeout_s": 1},
    {"dial_timeout_s": 600},
    {"on_failure": "reconnect"},
    {"on_failure": "fallback:voicemail,s,1"},
    {"on_failure": "fallback:acme-vm,+4420,start"},
    {"release_after_s": 0},
    {"release_after_s": 3600},
])
def test_sensible_plans_are_accepted(plan):
    assert allow(**plan).plan_fields == plan


@pytest.mark.parametrize(("plan", "message"), [
    ({"announcement": "please hold"}, "announcement 'please hold' must be an Asterisk sound"),
    ({"announcement": "a&b"}, "must be an Asterisk sound name"),
    ({"announcement": "../../etc/passwd"}, "no '..'"),
    ({"announcement": "custom/"}, "must be an Asterisk sound name"),
    ({"announcement": "hold.wav"}, "without its extension"),
    ({"caller_id": "+44 20 7123"}, "caller_id '+44 20 7123' must be keep, transferor, or a number"),
    ({"caller_id": "transferee"}, "must be keep, transferor, or a number"),
    ({"caller_id": "+1234567890123456"}, "2-15 digits"),
    ({"dial_timeout_s": -5}, "dial_timeout_s must be 1..600"),
    ({"dial_timeout_s": 0}, "dial_timeout_s must be 1..600"),
    ({"dial_timeout_s": "30"}, "dial_timeout_s must be an integer"),
    ({"dial_timeout_s": True}, "dial_timeout_s must be an integer"),
    ({"release_after_s": -1}, "release_after_s must be 0..3600"),
    ({"on_failure": "hangup"}, "on_failure 'hangup' must be 'reconnect' or "
                               "'fallback:<context>,<exten>,<priority>'"),
    ({"on_failure": "fallback:vm,s"}, "must be 'reconnect' or 'fallback:"),
    ({"on_failure": "fallback:vm,s,1,2"}, "must be 'reconnect' or 'fallback:"),
    ({"on_failure": "fallback:my vm,s,1"}, "context 'my vm' must be"),
    ({"on_failure": "fallback:vm,,1"}, "extension '' must be"),
    ({"on_failure": "fallback:vm,s,0"}, "priority '0' must be a number >= 1 or a label"),
    ({"on_failure": "Fallback:vm,s,1"}, "must be 'reconnect' or 'fallback:"),
])
def test_nonsense_plans_are_refused_with_the_field_and_what_it_takes(plan, message):
    with pytest.raises(ValueError) as info:
        allow(**plan)
    assert message in str(info.value)


def test_a_deny_rule_takes_no_plan():
    with pytest.raises(ValueError, match=r"a deny rule takes no transfer plan \(caller_id, "
                                         r"dial_timeout_s\)"):
        Rule("d", "deny", "any", reply_code=403, caller_id="keep", dial_timeout_s=20)


def test_parse_on_failure():
    assert parse_on_failure("reconnect") is None
    assert parse_on_failure("fallback:vm,s,1") == ("vm", "s", "1")


# -- resolution -------------------------------------------------------------------------

def test_defaults_without_a_rule_come_from_the_tenant_and_built_ins():
    pol = Policy.build([DEFAULT], [], [])
    d = decide(pol, facts())
    assert d.allowed and d.rule == "tenant default default allow"
    assert (d.announcement, d.caller_id, d.dial_timeout_s, d.on_failure, d.release_after_s) == (
        "", "keep", 30, "reconnect", 32)
    assert d.plan == TransferPlan()


def test_tenant_caller_id_and_bye_wait_are_the_plan_defaults():
    acme = Tenant("acme", match_user="acme", caller_id="transferor", transferor_bye_wait_s=10,
                  id=2)
    pol = Policy.build([acme, DEFAULT], [allow(dial_timeout_s=20)], [])
    d = decide(pol, facts("sip:x@partner.example", user="acme"))
    assert d.rule == "rule 5 'plan'"
    assert (d.caller_id, d.dial_timeout_s, d.release_after_s) == ("transferor", 20, 10)


def test_the_matching_allow_rule_sets_the_plan_it_names():
    rule = allow(announcement="custom/transfer", caller_id="+15551230000", dial_timeout_s=25,
                 on_failure="fallback:voicemail,s,1", release_after_s=40)
    pol = Policy.build([DEFAULT], [rule], [])
    d = decide(pol, facts("sip:x@partner.example"))
    assert (d.announcement, d.caller_id, d.dial_timeout_s, d.on_failure, d.release_after_s) == (
        "custom/transfer", "+15551230000", 25, "fallback:voicemail,s,1", 40)
    other = decide(pol, facts("sip:x@elsewhere.example"))
    assert other.plan == TransferPlan()


def test_a_hand_edited_nonsense_plan_row_is_skipped_and_reported():
    base = {"tenant": None, "priority": 100, "action": "allow", "target_kind": "any",
            "target_value": None, "reply_code": None, "reason": "", "enabled": 1}
    rows = [
        {**base, "id": 1, "name": "neg", "dial_timeout_s": -5},
        {**base, "id": 2, "name": "spaces", "caller_id": "+44 20"},
        {**base, "id": 3, "name": "form", "on_failure": "voicemail"},
        {**base, "id": 4, "name": "ok", "priority": 200, "dial_timeout_s": 15},
    ]
    tenant = {"id": 1, "name": "default", "priority": 2147483647}
    pol = Policy.from_rows(2, [tenant], rows, [])
    assert [r.name for r in pol.rules] == ["ok"]
    assert [str(e) for e in pol.errors] == [
        "rules row 1: dial_timeout_s must be 1..600, not -5",
        "rules row 2: caller_id '+44 20' must be keep, transferor, or a number "
        "('+' optional, 2-15 digits, no spaces)",
        "rules row 3: on_failure 'voicemail' must be 'reconnect' or "
        "'fallback:<context>,<exten>,<priority>', e.g. fallback:voicemail,s,1",
    ]
    assert decide(pol, facts()).dial_timeout_s == 15


def test_rows_of_a_database_not_yet_upgraded_load_with_default_plans():
    tenant = {"id": 1, "name": "default", "priority": 2147483647}  # no replaces_scope
    pol = Policy.from_rows(1, [tenant], [], [])
    assert pol.errors == () and pol.tenants[0].replaces_scope == "any"
    pol = Policy.from_rows(1, [{**tenant, "replaces_scope": None}], [], [])
    assert pol.errors == () and pol.tenants[0].replaces_scope == "any"


# -- Replaces across tenants ------------------------------------------------------------

ACME = Tenant("acme", priority=10, match_domain="acme.example", replaces_scope="tenant", id=2)
ACME_ANY = Tenant("acme", priority=10, match_domain="acme.example", id=2)
GLOBEX = Tenant("globex", priority=20, match_domain="*.globex.example", id=3)
TRUNK = Tenant("trunk", priority=5, match_source="10.0.0.0/8", replaces_scope="tenant", id=4)
SCOPED_DEFAULT = Tenant("default", priority=2147483647, replaces_scope="tenant", id=1)


def test_replaces_scope_is_validated():
    with pytest.raises(ValueError, match="replaces_scope 'global' must be any or tenant"):
        Tenant("x", replaces_scope="global")


def test_aor_host():
    assert aor_host("bob@Acme.Example.") == "acme.example"
    assert aor_host("acme.example") == "acme.example"
    assert aor_host("+15551230000") == aor_host("") == ""


def test_party_tenant_is_the_tenant_whose_domain_claims_the_address():
    pol = Policy.build([ACME, GLOBEX, DEFAULT], [], [])
    assert party_tenant(pol, "bob@acme.example").name == "acme"
    assert party_tenant(pol, "eve@pbx.globex.example").name == "globex"
    assert party_tenant(pol, "x@outside.example") is None
    assert party_tenant(pol, "+15551230000") is None
    # two tenants on one domain (told apart by source): the asking tenant's own wins
    branch = Tenant("acme-branch", priority=30, match_domain="acme.example",
                    match_source="10.2.0.0/16", replaces_scope="tenant", id=5)
    pol = Policy.build([ACME, branch, DEFAULT], [], [])
    assert party_tenant(pol, "bob@acme.example").name == "acme"
    assert party_tenant(pol, "bob@acme.example", prefer=branch).name == "acme-branch"


def test_scope_tenant_denies_a_dialog_with_another_tenants_party():
    pol = Policy.build([ACME, GLOBEX, DEFAULT], [], [])
    hit = replaces_crossing(pol, ACME, ("alice@acme.example", "eve@pbx.globex.example"))
    assert hit is not None and hit[0] == "eve@pbx.globex.example" and hit[1].name == "globex"
    assert replaces_crossing(pol, ACME, ("alice@acme.example", "bob@acme.example")) is None
    # an outside party (a number, a carrier, nobody's domain) is no other tenant
    assert replaces_crossing(pol, ACME, ("alice@acme.example", "+15551230000")) is None
    assert replaces_crossing(pol, ACME, ("alice@acme.example", "x@gw.carrier.example")) is None


def test_scope_any_never_denies():
    pol = Policy.build([ACME_ANY, GLOBEX, DEFAULT], [], [])
    assert replaces_crossing(pol, ACME_ANY, ("alice@acme.example", "eve@pbx.globex.example")) \
        is None


def test_the_default_tenant_scoped_keeps_out_of_named_tenants_dialogs():
    pol = Policy.build([ACME, SCOPED_DEFAULT], [], [])
    assert replaces_crossing(pol, SCOPED_DEFAULT, ("x@outside.example", "bob@acme.example")) \
        == ("bob@acme.example", ACME)
    assert replaces_crossing(pol, SCOPED_DEFAULT, ("x@outside.example", "y@else.example")) \
        is None


def test_a_tenant_known_by_source_only_is_kept_out_of_domain_tenants_dialogs():
    pol = Policy.build([TRUNK, ACME, DEFAULT], [], [])
    assert replaces_crossing(pol, TRUNK, ("1000@10.1.2.3", "bob@acme.example"))[1].name == "acme"
    # its own parties cannot be recognised by address: they are nobody's, not another's
    assert replaces_crossing(pol, TRUNK, ("1000@10.1.2.3", "2000@10.1.2.3")) is None


def test_tenant_for_selects_as_for_a_refer():
    pol = Policy.build([TRUNK, ACME, DEFAULT], [], [])
    assert tenant_for(pol, "10.9.9.9", "acme.example", None).name == "trunk"
    assert tenant_for(pol, "192.0.2.1", "acme.example", None).name == "acme"
    assert tenant_for(pol, "", None, None).name == "default"
