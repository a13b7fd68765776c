"""decide(): what the policy says about one REFER.  Pure, no I/O, runs on every REFER.

Order (each step can end it, and the Decision names what did):
1. tenant: the first by priority whose non-null matchers all match; 'default' last;
2. out-of-dialog REFER and Replaces: tenant switches (RFC 3515 s2.4.7 wants approval for the
   former, RFC 3891 s6 the latter);
3. the target as a telephone number: its classes, and the tenant's PSTN switch, which
   comes before any rule because toll fraud through transfer is the case carriers gate;
4. the tenant's and the global rules by priority, first match wins;
5. nothing matched: the tenant's default, allow.

An allow decision carries the anchored transfer plan (Decision.plan: the matching rule's
plan fields over the tenant's and built-in defaults).  Cross-tenant Replaces
(replaces_crossing) is judged apart, once the dialog a Replaces names is known.
"""

from __future__ import annotations

import socket
import unicodedata
from dataclasses import dataclass

from kemi.core.policy.model import Decision, Policy, ReferFacts, RuleMatcher, Tenant
from kemi.core.sip.uri import Uri

_MAPPED = b"\0" * 10 + b"\xff\xff"


def _address(text: str) -> tuple[int, int] | None:
    """(ip version, address as int), IPv4-mapped IPv6 as IPv4; None if not an address.
    inet_pton rather than ipaddress: ~10x cheaper, and this runs on every REFER."""
    text = text.strip("[]")
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None
    if packed[:12] == _MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def select_tenant(policy: Policy, facts: ReferFacts) -> Tenant:
    """The first tenant whose set matchers all match; 'default' (always last) matches all."""
    return tenant_for(policy, facts.source_ip, facts.from_domain, facts.auth_user)


def tenant_for(policy: Policy, source_ip: str, from_domain: str | None,
               auth_user: str | None) -> Tenant:
    """select_tenant for any request (an INVITE with Replaces too), from the same facts."""
    version, value = (_address(source_ip) or (0, 0)) if policy.uses_source else (0, 0)
    domain = (from_domain or "").lower().rstrip(".")
    for m in policy.matchers:
        if m.networks:
            for v, net, mask in m.networks:
                if v == version and value & mask == net:
                    break
            else:
                continue
        if m.domain is not None and (not domain or not m.domain.matches(domain)):
            continue
        if m.user is not None and auth_user != m.user:
            continue
        return m.tenant
    return policy.matchers[-1].tenant  # pragma: no cover - default has no matchers


def classify(policy: Policy, number: str, home_cc: str | None) -> frozenset[str]:
    """Classes of an E.164 number: 'pstn', 'international' unless it is in home_cc (every
    number when the tenant has no home_cc: fail closed), and every class with a prefix of it."""
    out = {"pstn"}
    if home_cc is None or not number.startswith("+" + home_cc):
        out.add("international")
    prefixes = policy.prefixes
    for end in range(2, len(number) + 1):
        names = prefixes.get(number[:end])
        if names:
            out.update(names)
    return frozenset(out)


_VISUAL = str.maketrans("", "", "-.() ")
# A dial string this long is a telephone number, not an extension or a short code.
MIN_DIALED_DIGITS = 7


def dialed_number(user: str | None, home_cc: str | None) -> tuple[str | None, bool]:
    """Read a SIP user part that is a dial string (`sip:01909...@gw`, `sip:19005551234@gw`):
    (its E.164 form or None, whether it is a telephone number at all).

    Gateways route such users to the PSTN although the URI says nothing of it, so toll
    fraud hides there.  Digit strings of MIN_DIALED_DIGITS or more count as numbers:
    00 (and 011 in NANP) is the international prefix; in NANP 1+10 or 10 digits are
    national; elsewhere a single leading 0 is the trunk prefix.  A number that cannot be
    placed (no home_cc) is still a number: PSTN and international, failing closed.
    Shorter strings are extensions or short codes: use `user` rules for those.
    """
    if not user:
        return None, False
    digits = user.translate(_VISUAL)
    if not (digits.isdigit() and digits.isascii()) or len(digits) < MIN_DIALED_DIGITS:
        return None, False
    if digits.startswith("00"):
        return "+" + digits[2:], True
    if home_cc == "1":
        if digits.startswith("011"):
            return "+" + digits[3:], True
        if len(digits) == 11 and digits[0] == "1":
            return "+" + digits, True
        if len(digits) == 10:
            return "+1" + digits, True
        return None, True
    if home_cc and digits[0] == "0" and digits[1] != "0":
        return "+" + home_cc + digits[1:], True
    return None, True


@dataclass(frozen=True)
class Dialled:
    """What a target's user part dials, read the way a gateway would."""

    number: str | None = None  # E.164, when it can be placed
    is_number: bool = False  # a telephone number at all (placeable or not)
    unreadable: str | None = None  # why it looks like a number referee cannot read
    routing: Dialled | None = None  # ;rn= (number portability): where it is routed


_PAUSES = ",pPwW"


def _ascii_digits(text: str) -> str:
    """Every Unicode decimal digit (full-width, Arabic-Indic, ...) as its ASCII digit."""
    if text.isascii():  # nearly every Refer-To: no per-character loop
        return text
    out = []
    for ch in text:
        d = unicodedata.decimal(ch, None) if not ch.isascii() else None
        out.append(str(d) if d is not None else ch)
    return "".join(out)


def read_dialled(target: Uri, tenant: Tenant) -> Dialled:
    """A Refer-To's user part as a number, the way a gateway reads a dial string.

    Taken off first: user-part parameters (`;isub=`, `;npdi`, `;ext=`, ...; a `;rn=`
    routing number is read too, and judged as well), visual separators, the tenant's
    feature codes and outside-line prefixes (dial_prefixes: `*67`, `9,`, ...), and a `#`
    terminator; every Unicode digit counts as its ASCII digit (a percent-encoded full-
    width 1 is a 1 to a gateway).  What is left is a number if it is `+`digits or digits
    (MIN_DIALED_DIGITS or more: shorter ones are extensions and short codes); if it still
    holds that many digits among other characters (a pause, a `*`, letters) it is
    `unreadable`: fail closed, unless the tenant says unreadable_numbers allow.
    """
    if target.scheme == "tel":
        number = target.e164(tenant.home_cc)
        if number is not None:
            return Dialled(number, True)
    user = target.user
    if not user:
        return Dialled()
    main, *params = user.split(";")
    routing = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "rn" and value:
            routing = _read_digits(value, tenant, prefixes=False)
    found = _read_digits(main, tenant, prefixes=True, phone=target.e164() is not None)
    if found.is_number and target.e164(tenant.home_cc):
        found = Dialled(target.e164(tenant.home_cc), True)
    return Dialled(found.number, found.is_number, found.unreadable, routing)


def _read_digits(text: str, tenant: Tenant, *, prefixes: bool, phone: bool = False
                 ) -> Dialled:
    s = _ascii_digits(text).translate(_VISUAL)
    if prefixes:
        for _ in range(4):  # '*67' then '9,' ...
            cut = next((p for p in tenant.prefixes if s.startswith(p) and len(s) > len(p)),
                       None)
            if cut is None:
                break
            s = s[len(cut):]
    s = s.rstrip("#")
    if s[:1] == "+" and s[1:].isdigit() and s.isascii():
        return Dialled(s, True)
    if s.isdigit() and s.isascii():
        number, is_number = dialed_number(s, tenant.home_cc)
        return Dialled(number, is_number)
    digits = sum(ch.isdigit() for ch in s)
    if digits >= MIN_DIALED_DIGITS or (phone and digits):
        odd = "".join(sorted({ch for ch in s if not ch.isdigit() and ch != "+"}))
        what = "a pause" if set(odd) <= set(_PAUSES) else f"{odd!r}"
        return Dialled(None, True, f"dial string {text!r} has {what} among its {digits} "
                                   "digits")
    return Dialled()


def _matches(m: RuleMatcher, host: str | None, user: str | None, number: str | None,
             classes: frozenset[str]) -> bool:
    kind = m.rule.target_kind
    if kind == "any":
        return True
    if kind == "class":
        return m.value in classes
    if kind == "e164-prefix":
        return number is not None and number.startswith(m.value)
    if kind == "domain":
        return host is not None and m.value.matches(host)
    return user is not None and m.value.match(user) is not None  # 'user' glob


def decide(policy: Policy, facts: ReferFacts) -> Decision:
    tenant = select_tenant(policy, facts)
    name = tenant.name
    if not facts.in_dialog and not tenant.allow_out_of_dialog:
        return Decision(False, 403, "out-of-dialog REFER not allowed",
                        f"tenant {name}: allow_out_of_dialog off", tenant)
    if facts.has_replaces and not tenant.allow_replaces:
        return Decision(False, 403, "Replaces not allowed",
                        f"tenant {name}: allow_replaces off", tenant)
    target = facts.target
    dialled = read_dialled(target, tenant)
    first = _judge(policy, tenant, target, dialled)
    if not first.allowed or dialled.routing is None or not dialled.routing.is_number:
        return first
    # ;rn= with npdi: the gateway routes to the routing number -- it must pass too.
    routed = _judge(policy, tenant, target, dialled.routing)
    if not routed.allowed:
        return Decision(False, routed.code, routed.reason,
                        f"{routed.rule} (the routing number ;rn={dialled.routing.number or '?'})",
                        tenant, routed.rule_id, routed.number, routed.classes)
    return first


def _judge(policy: Policy, tenant: Tenant, target: Uri, dialled: Dialled) -> Decision:
    name = tenant.name
    number, is_number = dialled.number, dialled.is_number
    if dialled.unreadable is not None and tenant.unreadable_numbers == "refuse":
        return Decision(False, 403, "Unreadable Number",
                        f"tenant {name}: {dialled.unreadable} (unreadable_numbers refuse)",
                        tenant, None, None, frozenset({"pstn", "international"}))
    if number:
        classes = classify(policy, number, tenant.home_cc)
    else:
        classes = frozenset({"pstn", "international"}) if is_number else frozenset()
    if is_number and not tenant.allow_pstn:
        return Decision(False, 403, f"PSTN targets not allowed for tenant {name}",
                        f"tenant {name}: allow_pstn off", tenant, None, number, classes)
    host = target.host.lower() if target.host else None
    for m in policy.chains[name]:
        if _matches(m, host, target.user, number, classes):
            rule = m.rule
            if rule.action == "allow":
                return Decision(True, 0, rule.reason or "allowed", rule.label, tenant,
                                rule.id, number, classes, rule)
            return Decision(False, rule.reply_code or 403,
                            rule.reason or "transfer target not allowed", rule.label, tenant,
                            rule.id, number, classes)
    return Decision(True, 0, "no rule matched", f"tenant {name} default allow", tenant,
                    None, number, classes)


# -- Replaces across tenants ----------------------------------------------------------------

def aor_host(aor: str) -> str:
    """The host of an AOR ('user@host' or 'host'), lowercase; '' for a tel: number."""
    if not aor:
        return ""
    host = aor.rpartition("@")[2] if "@" in aor else aor
    if host.startswith("+") or host.isdigit():
        return ""
    return host.lower().rstrip(".")


def party_tenant(policy: Policy, aor: str, prefer: Tenant | None = None) -> Tenant | None:
    """The tenant that claims a dialog party by its address: `prefer` when its match_domain
    matches the AOR's host, else the first tenant in matching order whose match_domain
    does; None when no tenant's domain matches (an outside party, a number, or a tenant
    known only by source address or authenticated user, which an address cannot show)."""
    host = aor_host(aor)
    if not host:
        return None
    first = None
    for m in policy.matchers:
        if m.domain is not None and m.domain.matches(host):
            if prefer is not None and m.tenant.name == prefer.name:
                return m.tenant
            first = first or m.tenant
    return first


def replaces_crossing(policy: Policy, tenant: Tenant,
                      parties: tuple[str, ...] | list[str]) -> tuple[str, Tenant] | None:
    """With the tenant's replaces_scope 'tenant': the first party of the dialog a Replaces
    names that another tenant claims (party_tenant), with that tenant; None when the
    Replaces may go on (scope 'any', or every party is the tenant's own or nobody's)."""
    if tenant.replaces_scope != "tenant":
        return None
    for aor in parties:
        owner = party_tenant(policy, aor, prefer=tenant)
        if owner is not None and owner.name != tenant.name:
            return aor, owner
    return None
