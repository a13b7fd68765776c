"""decide(): tenant selection, each switch and target kind, rule order, invalid rows."""

from __future__ import annotations

import pytest

from kemi.core.policy.evaluate import classify, decide, select_tenant
from kemi.core.policy.model import NumberClass, Policy, PolicyError, ReferFacts, Rule, Tenant
from kemi.core.sip.uri import parse_uri

DEFAULT = Tenant("default", priority=2147483647, id=1)
PSTN_DEFAULT = Tenant("default", priority=2147483647, id=1, allow_pstn=True, home_cc="1")
CLASSES = (
    NumberClass("premium", "+1900"),
    NumberClass("premium", "+4490"),
    NumberClass("emergency", "+1911"),
    NumberClass("nanp-international", "+1876"),
)


def policy(*tenants: Tenant, rules: tuple[Rule, ...] = (), classes=CLASSES) -> Policy:
    if not any(t.name == "default" for t in tenants):
        tenants = (*tenants, DEFAULT)
    built = Policy.build(tenants, rules, classes, version=7)
    assert built.errors == ()
    return built


def facts(target: str = "sip:bob@example.com", *, source: str = "192.0.2.1",
          domain: str | None = None, user: str | None = None, in_dialog: bool = True,
          replaces: bool = False) -> ReferFacts:
    return ReferFacts(source, domain, user, "alice@example.com", in_dialog,
                      parse_uri(target), replaces)


# -- tenant selection ----------------------------------------------------------------

def test_tenant_by_source_cidr_and_bare_address():
    pol = policy(Tenant("trunk", match_source="10.0.0.0/8, 198.51.100.7", id=2))
    assert select_tenant(pol, facts(source="10.20.30.40")).name == "trunk"
    assert select_tenant(pol, facts(source="198.51.100.7")).name == "trunk"
    assert select_tenant(pol, facts(source="198.51.100.8")).name == "default"
    assert select_tenant(pol, facts(source="")).name == "default"  # unknown source


def test_tenant_by_source_ipv6_and_ipv4_mapped():
    pol = policy(Tenant("v6", match_source="2001:db8::/32", id=2),
                 Tenant("v4", match_source="10.0.0.0/8", id=3))
    assert select_tenant(pol, facts(source="2001:db8::1")).name == "v6"
    assert select_tenant(pol, facts(source="[2001:db8::1]")).name == "v6"
    assert select_tenant(pol, facts(source="::ffff:10.1.1.1")).name == "v4"


def test_tenant_by_from_domain_exact_and_wildcard_case_insensitive():
    pol = policy(Tenant("exact", match_domain="Acme.example", id=2),
                 Tenant("wild", match_domain="*.corp.example", id=3))
    assert select_tenant(pol, facts(domain="ACME.example")).name == "exact"
    assert select_tenant(pol, facts(domain="pbx.corp.example")).name == "wild"
    assert select_tenant(pol, facts(domain="corp.example")).name == "default"  # apex
    assert select_tenant(pol, facts(domain="evilcorp.example")).name == "default"
    assert select_tenant(pol, facts(domain=None)).name == "default"


def test_tenant_by_authenticated_user_is_exact():
    pol = policy(Tenant("pbx1", match_user="pbx1", id=2))
    assert select_tenant(pol, facts(user="pbx1")).name == "pbx1"
    assert select_tenant(pol, facts(user="PBX1")).name == "default"
    assert select_tenant(pol, facts(user=None)).name == "default"


def test_every_set_matcher_must_match():
    pol = policy(Tenant("both", match_source="10.0.0.0/8", match_user="pbx1", id=2))
    assert select_tenant(pol, facts(source="10.0.0.1", user="pbx1")).name == "both"
    assert select_tenant(pol, facts(source="10.0.0.1", user="pbx2")).name == "default"
    assert select_tenant(pol, facts(source="192.0.2.1", user="pbx1")).name == "default"


def test_lower_priority_first_and_default_always_last():
    pol = policy(Tenant("broad", priority=50, match_source="10.0.0.0/8", id=2),
                 Tenant("narrow", priority=10, match_source="10.1.0.0/16", id=3),
                 Tenant("default", priority=0, id=1))
    assert [t.name for t in pol.tenants] == ["narrow", "broad", "default"]
    assert select_tenant(pol, facts(source="10.1.2.3")).name == "narrow"
    assert select_tenant(pol, facts(source="10.2.2.3")).name == "broad"


# -- tenant switches -----------------------------------------------------------------

def test_out_of_dialog_denied_unless_tenant_allows():
    pol = policy(Tenant("open", match_user="open", allow_out_of_dialog=True, id=2))
    d = decide(pol, facts(in_dialog=False))
    assert (d.allowed, d.code) == (False, 403)
    assert d.reason == "out-of-dialog REFER not allowed"
    assert d.rule == "tenant default: allow_out_of_dialog off"
    assert decide(pol, facts(in_dialog=False, user="open")).allowed


def test_replaces_denied_when_tenant_disallows():
    pol = policy(Tenant("strict", match_user="s", allow_replaces=False, id=2))
    d = decide(pol, facts(user="s", replaces=True))
    assert (d.allowed, d.code, d.reason) == (False, 403, "Replaces not allowed")
    assert d.rule == "tenant strict: allow_replaces off"
    assert decide(pol, facts(user="s")).allowed
    assert decide(pol, facts(replaces=True)).allowed  # default allows Replaces


def test_out_of_dialog_is_checked_before_replaces():
    pol = policy(Tenant("default", id=1, allow_replaces=False))
    assert decide(pol, facts(in_dialog=False, replaces=True)).reason.startswith("out-of-dialog")


def test_pstn_switch_off_denies_numbers_before_any_rule():
    allow_all = Rule("allow-everything", "allow", "any", priority=0, id=1)
    pol = policy(rules=(allow_all,))
    d = decide(pol, facts("sip:+15551234567@gw.example"))
    assert (d.allowed, d.code) == (False, 403)
    assert d.reason == "PSTN targets not allowed for tenant default"
    assert d.rule == "tenant default: allow_pstn off"
    assert d.number == "+15551234567"
    # a SIP user that is not a number is not PSTN: the rule applies
    assert decide(pol, facts("sip:bob@example.com")).rule == "rule 1 'allow-everything'"


def test_pstn_on_number_with_no_rule_is_default_allow():
    d = decide(policy(PSTN_DEFAULT), facts("tel:+1-555-123-4567"))
    assert d.allowed and d.code == 0
    assert d.rule == "tenant default default allow"
    assert d.classes == {"pstn"}


# -- classification --------------------------------------------------------------------

def test_classes_by_prefix_plus_pstn_and_international():
    pol = policy()
    assert classify(pol, "+19005551234", "1") == {"pstn", "premium"}
    assert classify(pol, "+449091234567", "1") == {"pstn", "premium", "international"}
    assert classify(pol, "+449091234567", "44") == {"pstn", "premium"}
    assert classify(pol, "+18765551234", "1") == {"pstn", "nanp-international"}
    assert classify(pol, "+4930123456", "49") == {"pstn"}


def test_no_home_cc_means_every_number_is_international():
    assert classify(policy(), "+15551234567", None) == {"pstn", "international"}


def test_home_cc_lets_a_phone_uri_use_the_00_prefix():
    tenant = Tenant("default", id=1, allow_pstn=True, home_cc="1")
    deny = Rule("no-premium", "deny", "class", "premium", reply_code=403, id=3)
    d = decide(policy(tenant, rules=(deny,)), facts("sip:00449091234567@gw;user=phone"))
    assert d.number == "+449091234567"
    assert d.classes == {"pstn", "premium", "international"}
    assert not d.allowed and d.rule == "rule 3 'no-premium'"


# -- target kinds ----------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "value", "target", "hit"), [
    ("any", None, "sip:x@anything.example", True),
    ("domain", "partner.example", "sip:x@Partner.Example", True),
    ("domain", "partner.example", "sip:x@sub.partner.example", False),
    ("domain", "*.partner.example", "sip:x@sub.partner.example", True),
    ("domain", "*.partner.example", "sip:x@partner.example", False),
    ("domain", "partner.example", "tel:+15551234567", False),
    ("user", "sales-*", "sip:sales-7@pbx.example", True),
    ("user", "sales-*", "sip:Sales-7@pbx.example", False),  # user parts are case-sensitive
    ("user", "9???", "sip:9123@pbx.example", True),
    ("user", "9???", "sip:91234@pbx.example", False),
    ("user", "[0-9]*", "sip:0044909123@gw.example", True),
    ("e164-prefix", "+1555", "sip:+1-555-123-4567@gw.example", True),
    ("e164-prefix", "+1555", "sip:+15661234567@gw.example", False),
    ("e164-prefix", "+1555", "sip:1555123@gw.example", False),  # not E.164: no guess
    ("class", "premium", "tel:+19005550000", True),
    ("class", "premium", "tel:+15555550000", False),
    ("class", "pstn", "tel:+15555550000", True),
    ("class", "international", "tel:+445555550000", True),
    ("class", "international", "tel:+15555550000", False),
    ("class", "emergency", "tel:+1911", True),
])
def test_target_kinds(kind, value, target, hit):
    rule = Rule("r", "deny", kind, value, reply_code=603, reason="nope", id=9)
    d = decide(policy(PSTN_DEFAULT, rules=(rule,)), facts(target))
    assert (not d.allowed) == hit
    if hit:
        assert (d.code, d.reason, d.rule, d.rule_id) == (603, "nope", "rule 9 'r'", 9)
    else:
        assert d.rule == "tenant default default allow"


# -- rule order ------------------------------------------------------------------------

def test_first_match_by_priority_then_id_across_tenant_and_global_rules():
    acme = Tenant("acme", match_user="acme", allow_pstn=True, home_cc="1", id=2)
    rules = (
        Rule("global-deny", "deny", "class", "pstn", reply_code=403, priority=20, id=1),
        Rule("acme-allow", "allow", "e164-prefix", "+1555", tenant="acme", priority=10, id=5),
        Rule("tie-later", "allow", "any", priority=20, id=3),
        Rule("other-tenant", "allow", "any", tenant="zeta", priority=0, id=4),
    )
    zeta = Tenant("zeta", match_user="zeta", id=3)
    pol = policy(acme, zeta, rules=rules)
    assert decide(pol, facts("tel:+15551234567", user="acme")).rule == "rule 5 'acme-allow'"
    # same priority: lower id first; zeta's own rule never applies to acme
    d = decide(pol, facts("tel:+16661234567", user="acme"))
    assert d.rule == "rule 1 'global-deny'" and not d.allowed
    assert decide(pol, facts("sip:bob@x.example", user="acme")).rule == "rule 3 'tie-later'"
    assert decide(pol, facts("sip:bob@x.example", user="zeta")).rule == "rule 4 'other-tenant'"


def test_disabled_rule_is_listed_but_never_matches():
    rule = Rule("off", "deny", "any", reply_code=403, enabled=False, id=1)
    pol = policy(rules=(rule,))
    assert pol.rules == (rule,)
    assert decide(pol, facts()).allowed


def test_decision_names_rule_and_tenant_and_carries_limits():
    acme = Tenant("acme", match_user="acme", allow_pstn=True, home_cc="1", id=2,
                  max_transfers_per_call=3, refers_per_minute=10, subscription_expiry_s=300,
                  transferor_bye_wait_s=5, caller_id="transferor")
    deny = Rule("no-premium", "deny", "class", "premium", reply_code=403,
                reason="premium-rate target", id=7)
    pol = policy(acme, rules=(deny,))
    d = decide(pol, facts("tel:+19005550000", user="acme"))
    assert d.describe() == ("DENY 403 Forbidden: premium-rate target "
                            "(rule 7 'no-premium', tenant acme)")
    ok = decide(pol, facts(user="acme"))
    assert ok.describe() == "ALLOW (tenant acme default allow)"
    assert (ok.max_transfers_per_call, ok.refers_per_minute, ok.subscription_expiry_s,
            ok.transferor_bye_wait_s, ok.caller_id) == (3, 10, 300, 5, "transferor")
    assert ok.limits() == ("max transfers/call 3, REFERs/min 10, subscription 300 s, "
                           "transferor BYE wait 5 s")
    assert ok.plan.describe() == (
        "announcement none, caller-ID transferor, dial timeout 30 s, on failure reconnect, "
        "release transferor after 5 s")


# -- invalid rows ----------------------------------------------------------------------

def _tenant_row(**kw):
    row = {"id": 1, "name": "default", "priority": 2147483647, "match_source": None,
           "match_domain": None, "match_user": None, "home_cc": "1", "allow_pstn": 1,
           "allow_out_of_dialog": 0, "allow_replaces": 1, "max_transfers_per_call": None,
           "refers_per_minute": None, "subscription_expiry_s": 120,
           "transferor_bye_wait_s": 32, "caller_id": "transferee"}
    return {**row, **kw}


def _rule_row(**kw):
    row = {"id": 1, "tenant": None, "name": "r", "priority": 100, "action": "deny",
           "target_kind": "class", "target_value": "premium", "reply_code": 403,
           "reason": "", "enabled": 1}
    return {**row, **kw}


def test_invalid_rows_are_skipped_and_reported_with_row_id_and_reason():
    tenants = [
        _tenant_row(),
        _tenant_row(id=2, name="badnet", priority=1, match_source="10.0.0.300/8"),
        _tenant_row(id=3, name="badcid", priority=2, caller_id="nobody"),
        _tenant_row(id=4, name="good", priority=3, match_user="good"),
    ]
    rules = [
        _rule_row(id=1, name="typo", target_value="premuim"),
        _rule_row(id=2, name="code200", reply_code=200),
        _rule_row(id=3, name="kind", target_kind="regex", target_value="x"),
        _rule_row(id=4, name="orphan", tenant="badnet", target_kind="any", target_value=None),
        _rule_row(id=5, name="no-premium"),
        _rule_row(id=6, name="bad-domain", target_kind="domain", target_value="a..b"),
    ]
    classes = [{"name": "premium", "e164_prefix": "+1900", "note": ""},
               {"name": "premium", "e164_prefix": "1900x", "note": ""}]
    pol = Policy.from_rows(3, tenants, rules, classes)
    assert [t.name for t in pol.tenants] == ["good", "default"]
    assert [r.id for r in pol.rules] == [5]
    reasons = {(e.table, e.row): e.reason for e in pol.errors}
    assert reasons[("tenants", "2")] == "match_source '10.0.0.300/8' is not an IP address or CIDR"
    assert "caller_id 'nobody'" in reasons[("tenants", "3")]
    assert reasons[("rules", "1")] == "unknown class 'premuim'"
    assert "reply_code 200 must be 403 or 603" in reasons[("rules", "2")]
    assert "target_kind 'regex'" in reasons[("rules", "3")]
    assert reasons[("rules", "4")] == "unknown or skipped tenant 'badnet'"
    assert "domain 'a..b'" in reasons[("rules", "6")]
    assert "e164_prefix '1900x'" in reasons[("number_classes", "premium 1900x")]
    assert len(pol.errors) == 8
    assert str(PolicyError("rules", "1", "unknown class 'premuim'")) == (
        "rules row 1: unknown class 'premuim'")
    # what survived still decides
    d = decide(pol, facts("tel:+19005550000"))
    assert d.rule == "rule 5 'no-premium'"


def test_missing_default_tenant_falls_back_to_builtin_defaults():
    pol = Policy.build([Tenant("acme", match_user="a", id=2)], [], [], version=1)
    assert [t.name for t in pol.tenants] == ["acme", "default"]
    assert "no valid 'default' tenant" in str(pol.errors[0])
    d = decide(pol, facts("tel:+15551234567"))
    assert d.reason == "PSTN targets not allowed for tenant default"


def test_sqlite_integers_become_booleans_and_bad_flags_are_errors():
    pol = Policy.from_rows(1, [_tenant_row(allow_pstn=1), _tenant_row(id=2, name="x",
                                                                     allow_pstn=2)], [], [])
    assert pol.tenants[-1].allow_pstn is True
    assert "allow_pstn must be true or false" in str(pol.errors[0])


# Dial strings: a gateway sends `sip:<digits>@gw` to the PSTN, so they are numbers too.
@pytest.mark.parametrize(
    "user, home_cc, expected",
    [
        ("19005551234", "1", ("+19005551234", True)),  # NANP 1 + 10 digits
        ("9005551234", "1", ("+19005551234", True)),  # NANP 10 digits
        ("011442079460000", "1", ("+442079460000", True)),  # NANP international prefix
        ("00442079460000", "44", ("+442079460000", True)),  # ITU international prefix
        ("09098790000", "44", ("+449098790000", True)),  # national with trunk 0
        ("0909-879-0000", "44", ("+449098790000", True)),  # visual separators
        ("9098790000", None, (None, True)),  # a number nobody can place: still a number
        ("2000", "1", (None, False)),  # an extension
        ("911", "1", (None, False)),  # a short code: user rules decide
        ("marsha", "1", (None, False)),
        (None, "1", (None, False)),
    ],
)
def test_dial_strings_are_read_as_numbers(user, home_cc, expected):
    from kemi.core.policy.evaluate import dialed_number

    assert dialed_number(user, home_cc) == expected


def test_pstn_switch_catches_a_premium_dial_string_without_user_phone():
    t = Tenant(name="acme", priority=10, match_domain="acme.example", home_cc="1")
    d = decide(policy(t), facts("sip:19005551234@gw.example", domain="acme.example"))
    assert not d.allowed and d.code == 403
    assert d.rule == "tenant acme: allow_pstn off"


def test_premium_class_rule_applies_to_dial_strings_once_pstn_is_on():
    t = Tenant(name="acme", priority=10, match_domain="acme.example", home_cc="1", allow_pstn=True)
    no_premium = (Rule("no-premium", "deny", "class", "premium", reply_code=403, id=3),)
    d = decide(policy(t, rules=no_premium), facts("sip:19005551234@gw.example",
                                                           domain="acme.example"))
    assert not d.allowed and "premium" in (d.reason + d.rule)


def test_extensions_are_not_numbers():
    d = decide(policy(), facts("sip:2000@pbx.example"))
    assert d.allowed


# -- dial strings a gateway would place (issue 9 item 4: toll fraud by spelling) ----------

FULLWIDTH = "".join(f"%EF%BC%{0x90 + int(d):02X}" for d in "19005550100")
PREMIUM_SPELLINGS = [
    "sip:+19005550100@gw",  # the plain one, for comparison
    "sip:+19005550100;isub=1@gw",
    "sip:19005550100;npdi@gw",
    "sip:19005550100;ext=12@gw",
    "sip:*6719005550100@gw",
    "sip:19005550100#@gw",
    "sip:9,19005550100@gw",
    f"sip:{FULLWIDTH}@gw",
    "sip:1-900-555-0100@gw",
    "sip:+12125551212;rn=+19005550100;npdi@gw",  # routed (number portability) to premium
]
NO_PREMIUM = Rule("no-premium", "deny", "class", "premium", reply_code=403, id=3)


@pytest.mark.parametrize("target", PREMIUM_SPELLINGS)
def test_every_spelling_of_a_number_is_refused_by_the_default_policy(target):
    """The default tenant has allow_pstn off: a number, however spelt, is refused (an
    unreadable one because it is unreadable)."""
    d = decide(policy(), facts(target))
    assert not d.allowed and d.code == 403, d
    assert "allow_pstn off" in d.rule or "unreadable_numbers refuse" in d.rule


@pytest.mark.parametrize("target", PREMIUM_SPELLINGS)
def test_every_spelling_of_a_premium_number_is_refused_by_a_premium_deny(target):
    d = decide(policy(PSTN_DEFAULT, rules=(NO_PREMIUM,)), facts(target))
    assert not d.allowed, d
    assert "no-premium" in d.rule or "unreadable_numbers refuse" in d.rule, d.rule


@pytest.mark.parametrize("target", [
    "sip:*6719005550100@gw", "sip:9,19005550100@gw", "sip:9w19005550100@gw",
    "sip:+1900555010O@gw",  # a letter O among the digits
])
def test_an_almost_number_is_refused_with_the_reason(target):
    d = decide(policy(PSTN_DEFAULT, rules=(NO_PREMIUM,)), facts(target))
    assert (d.allowed, d.code, d.reason) == (False, 403, "Unreadable Number")
    assert "dial string" in d.rule and "among its" in d.rule


def test_the_tenants_dial_prefixes_make_a_feature_code_readable():
    tenant = Tenant("default", id=1, allow_pstn=True, home_cc="1", dial_prefixes="*67 9,")
    pol = policy(tenant, rules=(NO_PREMIUM,))
    for target in ("sip:*6719005550100@gw", "sip:9,19005550100@gw", "sip:*679,19005550100@gw"):
        d = decide(pol, facts(target))
        assert d.number == "+19005550100" and d.rule == "rule 3 'no-premium'", (target, d)
    ok = decide(pol, facts("sip:*6712125551212@gw"))
    assert ok.allowed and ok.number == "+12125551212"


def test_a_tenant_may_take_unreadable_numbers_as_pstn_numbers():
    tenant = Tenant("default", id=1, allow_pstn=True, home_cc="1", unreadable_numbers="allow")
    d = decide(policy(tenant), facts("sip:9,19005550100@gw"))
    assert d.allowed and d.classes == {"pstn", "international"} and d.number is None
    no_pstn = Tenant("default", id=1, unreadable_numbers="allow")
    assert not decide(policy(no_pstn), facts("sip:9,19005550100@gw")).allowed


@pytest.mark.parametrize("target", ["sip:marsha@example.com", "sip:1234@pbx", "sip:*72@pbx",
                                    "sip:alice.smith@example.com", "sip:2001@pbx;user=phone"])
def test_names_extensions_and_short_codes_are_no_numbers(target):
    d = decide(policy(PSTN_DEFAULT, rules=(NO_PREMIUM,)), facts(target))
    assert d.allowed and d.number is None and d.classes == frozenset(), d


@pytest.mark.parametrize("prefixes", ["*67 *82 9", "9,", "#31#", ""])
def test_dial_prefixes_are_checked(prefixes):
    assert Tenant("t", dial_prefixes=prefixes).dial_prefixes == prefixes


@pytest.mark.parametrize("prefixes", ["*67;", "abc", "*123456789", "9 " * 40])
def test_a_dial_prefix_that_is_no_dial_string_is_refused(prefixes):
    with pytest.raises(ValueError, match="dial_prefixes"):
        Tenant("t", dial_prefixes=prefixes)
