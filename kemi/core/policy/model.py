"""Policy data: tenants, rules and number classes as frozen values, checked and compiled once.

Rows come from SQL that operators edit by hand, so nothing here trusts them: every row is
validated again, and a bad one is skipped and reported (PolicyError) instead of breaking
every REFER in a Kamailio worker.  Whatever the hot path needs (parsed networks, lowercase
domains, compiled globs, a prefix table) is computed here, once per reload.

Why this file is long: every policy row kind (tenant, rule, number class, dialled-number
reading) with its validation sits beside the value it builds, so what the CLI accepts and
what the workers load cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from fnmatch import translate
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from kemi.core.sip.uri import Uri

DEFAULT_TENANT = "default"
ACTIONS = ("allow", "deny")
TARGET_KINDS = ("any", "domain", "user", "e164-prefix", "class")
CALLER_IDS = ("transferee", "transferor")
DENY_CODES = (403, 603)
# Classes computed for every number rather than stored: 'pstn' (any number) and
# 'international' (country code other than the tenant's home_cc).
BUILTIN_CLASSES = ("pstn", "international")
REASON_PHRASES = {403: "Forbidden", 603: "Decline"}
# Which dialogs a tenant's REFER or INVITE may name in Replaces: any, or only dialogs with
# no party that another tenant claims (see kemi.core.policy.evaluate.replaces_crossing).
REPLACES_SCOPES = ("any", "tenant")
UNREADABLE_NUMBERS = ("refuse", "allow")
_DIAL_PREFIX_RE = re.compile(r"[0-9*#,]{1,8}")

# The anchored transfer plan (a rule's columns; NULL = the default below or the tenant's).
PLAN_CALLER_IDS = ("keep", "transferor")  # or a literal number
DEFAULT_DIAL_TIMEOUT_S = 30
DEFAULT_ON_FAILURE = "reconnect"
DIAL_TIMEOUT_RANGE = (1, 600)
RELEASE_AFTER_RANGE = (0, 3600)

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX_RE = re.compile(r"\+[0-9]{1,15}")
_CC_RE = re.compile(r"[1-9][0-9]{0,2}")
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# An Asterisk sound name as Playback takes it: no spaces, no '&' or ',' (they would chain
# files or split arguments), no extension (Asterisk picks the format).
_SOUND_RE = re.compile(r"/?[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}")
_SOUND_EXTENSIONS = (".wav", ".wav16", ".gsm", ".ulaw", ".alaw", ".sln", ".sln16", ".g722",
                     ".g729", ".mp3", ".ogg")
_CALLER_NUMBER_RE = re.compile(r"\+?[0-9]{2,15}")
_CONTEXT_RE = re.compile(r"[A-Za-z0-9_-]{1,79}")
_EXTEN_RE = re.compile(r"[A-Za-z0-9+*#_-]{1,79}")
_PRIORITY_RE = re.compile(r"[1-9][0-9]{0,8}|[A-Za-z][A-Za-z0-9_-]{0,63}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _int(value: Any, what: str, *, low: int, high: int | None = None) -> None:
    _need(isinstance(value, int) and not isinstance(value, bool),
          f"{what} must be an integer, not {value!r}")
    _need(value >= low and (high is None or value <= high),
          (f"{what} must be {low}..{high}" if high is not None else f"{what} must be >= {low}")
          + f", not {value}")


def _flag(value: Any, what: str) -> None:
    _need(isinstance(value, bool), f"{what} must be true or false")


@dataclass(frozen=True)
class Tenant:
    """Who sends the REFER (a customer, a trunk): its matchers, switches and limits."""

    name: str
    priority: int = 100
    match_source: str | None = None
    match_domain: str | None = None
    match_user: str | None = None
    home_cc: str | None = None
    allow_pstn: bool = False
    allow_out_of_dialog: bool = False
    allow_replaces: bool = True
    max_transfers_per_call: int | None = None
    refers_per_minute: int | None = None
    subscription_expiry_s: int = 120
    transferor_bye_wait_s: int = 32
    caller_id: str = "transferee"
    replaces_scope: str = "any"
    dial_prefixes: str = ""  # feature codes / outside-line prefixes, space-separated
    unreadable_numbers: str = "refuse"
    id: int = 0

    def __post_init__(self) -> None:
        _need(isinstance(self.name, str) and bool(_NAME_RE.fullmatch(self.name)),
              f"tenant name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        _int(self.priority, "priority", low=0)
        for what in ("match_source", "match_domain", "match_user"):
            value = getattr(self, what)
            _need(value is None or (isinstance(value, str) and value.strip() != ""),
                  f"{what} must be a non-empty text or NULL")
        if self.name == DEFAULT_TENANT:
            _need(self.match_source is None and self.match_domain is None
                  and self.match_user is None, "the default tenant matches everything: no matchers")
        _need(self.home_cc is None or (isinstance(self.home_cc, str)
                                       and bool(_CC_RE.fullmatch(self.home_cc))),
              f"home_cc {self.home_cc!r} must be a country code of 1-3 digits, e.g. '1' or '44'")
        for what in ("allow_pstn", "allow_out_of_dialog", "allow_replaces"):
            _flag(getattr(self, what), what)
        for what in ("max_transfers_per_call", "refers_per_minute"):
            if getattr(self, what) is not None:
                _int(getattr(self, what), what, low=1)
        _int(self.subscription_expiry_s, "subscription_expiry_s", low=10, high=3600)
        _int(self.transferor_bye_wait_s, "transferor_bye_wait_s", low=0, high=3600)
        _need(self.caller_id in CALLER_IDS, f"caller_id {self.caller_id!r} must be one of "
              + ", ".join(CALLER_IDS))
        _need(self.replaces_scope in REPLACES_SCOPES,
              f"replaces_scope {self.replaces_scope!r} must be any or tenant")
        _need(isinstance(self.dial_prefixes, str) and len(self.dial_prefixes) <= 64
              and all(_DIAL_PREFIX_RE.fullmatch(p) for p in self.dial_prefixes.split()),
              f"dial_prefixes {self.dial_prefixes!r} must be prefixes of 1-8 of "
              "'0-9*#,', space-separated, e.g. '*67 *82 9'")
        _need(self.unreadable_numbers in UNREADABLE_NUMBERS,
              f"unreadable_numbers {self.unreadable_numbers!r} must be refuse or allow")

    @property
    def prefixes(self) -> tuple[str, ...]:
        """dial_prefixes, longest first (the one to take off when several fit)."""
        return tuple(sorted(self.dial_prefixes.split(), key=len, reverse=True))


PLAN_FIELDS = ("announcement", "caller_id", "dial_timeout_s", "on_failure", "release_after_s")


def parse_on_failure(text: str) -> tuple[str, str, str] | None:
    """'reconnect' -> None; 'fallback:<context>,<exten>,<priority>' -> the three parts.
    ValueError names the part that is wrong."""
    form = ("must be 'reconnect' or 'fallback:<context>,<exten>,<priority>', "
            "e.g. fallback:voicemail,s,1")
    _need(isinstance(text, str), f"on_failure {text!r} {form}")
    if text == "reconnect":
        return None
    kind, sep, rest = text.partition(":")
    _need(kind == "fallback" and bool(sep), f"on_failure {text!r} {form}")
    parts = rest.split(",")
    _need(len(parts) == 3, f"on_failure {text!r} {form}")
    context, exten, priority = parts
    _need(bool(_CONTEXT_RE.fullmatch(context)),
          f"on_failure {text!r}: context {context!r} must be 1-79 letters, digits, '_' or '-'")
    _need(bool(_EXTEN_RE.fullmatch(exten)),
          f"on_failure {text!r}: extension {exten!r} must be 1-79 of A-Z a-z 0-9 + * # _ -")
    _need(bool(_PRIORITY_RE.fullmatch(priority)),
          f"on_failure {text!r}: priority {priority!r} must be a number >= 1 or a label")
    return context, exten, priority


def check_plan(announcement: Any, caller_id: Any, dial_timeout_s: Any, on_failure: Any,
               release_after_s: Any) -> None:
    """ValueError, naming the field and what it accepts, for a plan value that makes no
    sense; None means "not set" for every field."""
    if announcement is not None:
        _need(isinstance(announcement, str), "announcement must be text")
        if announcement:
            _need(bool(_SOUND_RE.fullmatch(announcement)) and not announcement.endswith("/")
                  and ".." not in announcement.split("/"),
                  f"announcement {announcement!r} must be an Asterisk sound name: letters, "
                  "digits, '_', '-', '.', '/' (no spaces, no '..'), e.g. custom/please-hold")
            _need(not announcement.lower().endswith(_SOUND_EXTENSIONS),
                  f"announcement {announcement!r}: give the sound without its extension "
                  "(Asterisk picks the format)")
    if caller_id is not None:
        _need(isinstance(caller_id, str) and (caller_id in PLAN_CALLER_IDS
                                              or bool(_CALLER_NUMBER_RE.fullmatch(caller_id))),
              f"caller_id {caller_id!r} must be keep, transferor, or a number "
              "('+' optional, 2-15 digits, no spaces)")
    if dial_timeout_s is not None:
        _int(dial_timeout_s, "dial_timeout_s", low=DIAL_TIMEOUT_RANGE[0],
             high=DIAL_TIMEOUT_RANGE[1])
    if on_failure is not None:
        parse_on_failure(on_failure)
    if release_after_s is not None:
        _int(release_after_s, "release_after_s", low=RELEASE_AFTER_RANGE[0],
             high=RELEASE_AFTER_RANGE[1])


@dataclass(frozen=True)
class TransferPlan:
    """What Asterisk does with an approved transfer anchored in it (issue 4): announcement
    to P ('' none), caller-ID presented to the target ('keep' P's own, 'transferor' A's,
    or a literal number), how long the target rings, what P gets when it fails
    ('reconnect' to A or 'fallback:<context>,<exten>,<priority>'), and after how many
    seconds A's leg is released."""

    announcement: str = ""
    caller_id: str = "keep"
    dial_timeout_s: int = DEFAULT_DIAL_TIMEOUT_S
    on_failure: str = DEFAULT_ON_FAILURE
    release_after_s: int = 32

    @classmethod
    def resolve(cls, rule: Rule | None, tenant: Tenant) -> TransferPlan:
        """The allow rule's fields where it sets them; otherwise the tenant's caller_id
        ('transferee' is 'keep') and transferor_bye_wait_s (the release timer), and the
        built-in defaults for the rest."""
        own = rule.plan_fields if rule is not None else {}
        base = cls(caller_id="transferor" if tenant.caller_id == "transferor" else "keep",
                   release_after_s=tenant.transferor_bye_wait_s)
        return cls(**{**{n: getattr(base, n) for n in PLAN_FIELDS}, **own})

    def describe(self) -> str:
        return (f"announcement {self.announcement or 'none'}, caller-ID {self.caller_id}, "
                f"dial timeout {self.dial_timeout_s} s, on failure {self.on_failure}, "
                f"release transferor after {self.release_after_s} s")


@dataclass(frozen=True)
class Rule:
    """One allow/deny line; tenant None means it applies to every tenant."""

    name: str
    action: str
    target_kind: str
    target_value: str | None = None
    tenant: str | None = None
    priority: int = 100
    reply_code: int | None = None
    reason: str = ""
    enabled: bool = True
    id: int = 0
    # The plan for a transfer anchored in Asterisk that this (allow) rule approves; None:
    # the default (see TransferPlan.resolve).
    announcement: str | None = None
    caller_id: str | None = None
    dial_timeout_s: int | None = None
    on_failure: str | None = None
    release_after_s: int | None = None

    def __post_init__(self) -> None:
        _need(isinstance(self.name, str) and 1 <= len(self.name) <= 64,
              "rule name must be 1-64 characters")
        _need(self.action in ACTIONS, f"action {self.action!r} must be allow or deny")
        _need(self.target_kind in TARGET_KINDS,
              f"target_kind {self.target_kind!r} must be one of " + ", ".join(TARGET_KINDS))
        if self.target_kind == "any":
            _need(self.target_value is None, "a rule of kind 'any' takes no target_value")
        else:
            _need(isinstance(self.target_value, str) and self.target_value.strip() != "",
                  f"a rule of kind {self.target_kind!r} needs a target_value")
        if self.target_kind == "e164-prefix":
            _need(bool(_PREFIX_RE.fullmatch(self.target_value or "")),
                  f"e164-prefix {self.target_value!r} must be '+' and digits, e.g. +1900")
        _int(self.priority, "priority", low=0)
        if self.action == "deny":
            _need(self.reply_code in DENY_CODES,
                  f"reply_code {self.reply_code!r} must be 403 or 603 for deny")
        else:
            _need(self.reply_code is None, "an allow rule takes no reply_code")
        _need(isinstance(self.reason, str), "reason must be text")
        _flag(self.enabled, "enabled")
        check_plan(self.announcement, self.caller_id, self.dial_timeout_s, self.on_failure,
                   self.release_after_s)
        if self.action == "deny":
            given = [n for n in PLAN_FIELDS if getattr(self, n) is not None]
            _need(not given, "a deny rule takes no transfer plan (" + ", ".join(given) + ")")

    @property
    def plan_fields(self) -> dict[str, Any]:
        """The plan fields this rule sets (the others come from the defaults)."""
        return {n: getattr(self, n) for n in PLAN_FIELDS if getattr(self, n) is not None}

    @property
    def label(self) -> str:
        """How a decision names this rule: "rule 7 'no-premium'"."""
        return f"rule {self.id} {self.name!r}"

    @property
    def target(self) -> str:
        return "any" if self.target_kind == "any" else f"{self.target_kind} {self.target_value}"


@dataclass(frozen=True)
class NumberClass:
    """One prefix of a named class (premium, emergency, ...); a class is all its rows."""

    name: str
    e164_prefix: str
    note: str = ""

    def __post_init__(self) -> None:
        _need(isinstance(self.name, str) and 1 <= len(self.name) <= 64,
              "class name must be 1-64 characters")
        _need(self.name not in BUILTIN_CLASSES, f"class name {self.name!r} is built in")
        _need(isinstance(self.e164_prefix, str) and bool(_PREFIX_RE.fullmatch(self.e164_prefix)),
              f"e164_prefix {self.e164_prefix!r} must be '+' and digits")


@dataclass(frozen=True)
class PolicyError:
    """A row the loader skipped, and why; shown by the CLI, logged by the cache."""

    table: str
    row: str
    reason: str

    def __str__(self) -> str:
        return f"{self.table} row {self.row}: {self.reason}"


@dataclass(frozen=True)
class DomainPattern:
    """'example.com' (exactly) or '*.example.com' (any subdomain, not the apex)."""

    text: str
    suffix: str | None  # ".example.com" for a wildcard, else None

    @classmethod
    def parse(cls, text: str) -> DomainPattern:
        low = text.strip().lower().rstrip(".")
        wild = low.startswith("*.")
        body = low[2:] if wild else low
        _need(all(_LABEL_RE.fullmatch(label) for label in body.split(".")),
              f"domain {text!r} must be a host name or '*.' and a host name")
        return cls(low, "." + body if wild else None)

    def matches(self, host: str) -> bool:
        """host must already be lowercase."""
        if self.suffix is None:
            return host == self.text
        return host.endswith(self.suffix) and len(host) > len(self.suffix)


def parse_networks(text: str) -> tuple[Network, ...]:
    """'10.0.0.0/8, 192.0.2.7' -> networks; a bare address is a /32 (/128)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"match_source {part!r} is not an IP address or CIDR") from None
    return tuple(out)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A user-part glob ('sales-*', '1???'), case-sensitive as SIP user parts are."""
    return re.compile(translate(pattern))


@dataclass(frozen=True)
class TenantMatcher:
    tenant: Tenant
    # (ip version, network as int, netmask as int): a membership test is one AND, ~10x
    # cheaper than `address in ip_network` on the per-REFER path.
    networks: tuple[tuple[int, int, int], ...]
    domain: DomainPattern | None
    user: str | None


@dataclass(frozen=True)
class RuleMatcher:
    rule: Rule
    # per kind: None (any), DomainPattern, compiled glob, '+prefix', or class name
    value: Any


def compile_tenant(tenant: Tenant) -> TenantMatcher:
    """Parse the tenant's matchers; ValueError names the one that does not parse."""
    nets = parse_networks(tenant.match_source) if tenant.match_source else ()
    return TenantMatcher(
        tenant,
        tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets),
        DomainPattern.parse(tenant.match_domain) if tenant.match_domain else None,
        tenant.match_user,
    )


def compile_rule(rule: Rule, class_names: Iterable[str]) -> RuleMatcher:
    """Parse the rule's target; ValueError for a bad pattern or a class not in class_names."""
    kind, value = rule.target_kind, rule.target_value or ""
    if kind == "domain":
        return RuleMatcher(rule, DomainPattern.parse(value))
    if kind == "user":
        return RuleMatcher(rule, compile_glob(value))
    if kind == "class":
        _need(value in class_names, f"unknown class {value!r}")
    return RuleMatcher(rule, value if kind != "any" else None)


@dataclass(frozen=True)
class Policy:
    """Everything decide() needs, valid rows only; errors lists the rows that were skipped."""

    version: int
    tenants: tuple[Tenant, ...]  # in matching order, 'default' last
    rules: tuple[Rule, ...]  # by priority then id, disabled ones included (for listing)
    classes: tuple[NumberClass, ...]
    errors: tuple[PolicyError, ...] = ()
    matchers: tuple[TenantMatcher, ...] = field(default=(), repr=False, compare=False)
    chains: Mapping[str, tuple[RuleMatcher, ...]] = field(
        default_factory=dict, repr=False, compare=False)
    prefixes: Mapping[str, frozenset[str]] = field(
        default_factory=dict, repr=False, compare=False)
    uses_source: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def build(cls, tenants: Iterable[Tenant], rules: Iterable[Rule],
              classes: Iterable[NumberClass], version: int = 0,
              errors: Iterable[PolicyError] = ()) -> Policy:
        """Compile valid objects; anything that does not compile joins errors and is dropped."""
        errs = list(errors)
        class_list = sorted(set(classes), key=lambda c: (c.name, c.e164_prefix))
        prefixes: dict[str, set[str]] = {}
        for nc in class_list:
            prefixes.setdefault(nc.e164_prefix, set()).add(nc.name)
        class_names = {c.name for c in class_list} | set(BUILTIN_CLASSES)

        matchers: list[TenantMatcher] = []
        default: TenantMatcher | None = None
        for tenant in sorted(tenants, key=lambda t: (t.priority, t.id, t.name)):
            try:
                matcher = compile_tenant(tenant)
            except ValueError as exc:
                errs.append(PolicyError("tenants", str(tenant.id), str(exc)))
                continue
            if tenant.name == DEFAULT_TENANT:
                default = matcher
            else:
                matchers.append(matcher)
        if default is None:
            errs.append(PolicyError("tenants", DEFAULT_TENANT,
                                    "no valid 'default' tenant: using built-in defaults"))
            default = compile_tenant(Tenant(DEFAULT_TENANT, priority=2147483647))
        matchers.append(default)
        known_tenants = {m.tenant.name for m in matchers}

        kept: list[Rule] = []
        compiled: list[RuleMatcher] = []
        for rule in sorted(rules, key=lambda r: (r.priority, r.id)):
            try:
                _need(rule.tenant is None or rule.tenant in known_tenants,
                      f"unknown or skipped tenant {rule.tenant!r}")
                matcher = compile_rule(rule, class_names)
            except ValueError as exc:
                errs.append(PolicyError("rules", str(rule.id), str(exc)))
                continue
            kept.append(rule)
            if rule.enabled:
                compiled.append(matcher)
        chains = {name: tuple(m for m in compiled if m.rule.tenant in (None, name))
                  for name in known_tenants}
        errs.sort(key=_error_order)
        return cls(
            version=version,
            tenants=tuple(m.tenant for m in matchers),
            rules=tuple(kept),
            classes=tuple(class_list),
            errors=tuple(errs),
            matchers=tuple(matchers),
            chains=MappingProxyType(chains),
            prefixes=MappingProxyType({p: frozenset(n) for p, n in prefixes.items()}),
            uses_source=any(m.networks for m in matchers),
        )

    @classmethod
    def from_rows(cls, version: int, tenant_rows: Iterable[Mapping[str, Any]],
                  rule_rows: Iterable[Mapping[str, Any]],
                  class_rows: Iterable[Mapping[str, Any]]) -> Policy:
        """Build from database rows (column name -> value); SQLite's 0/1 become booleans."""
        errs: list[PolicyError] = []
        tenants = _objects(Tenant, tenant_rows, "tenants", errs)
        rules = _objects(Rule, rule_rows, "rules", errs)
        classes = _objects(NumberClass, class_rows, "number_classes", errs)
        return cls.build(tenants, rules, classes, version, errs)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def class_names(self) -> tuple[str, ...]:
        return tuple(sorted({c.name for c in self.classes}))


_TABLES = ("tenants", "rules", "number_classes")


def _error_order(err: PolicyError) -> tuple[int, int, str]:
    table = _TABLES.index(err.table) if err.table in _TABLES else len(_TABLES)
    return (table, int(err.row) if err.row.isdigit() else -1, err.row)


_BOOL_FIELDS = {"allow_pstn", "allow_out_of_dialog", "allow_replaces", "enabled"}
# Columns a newer migration added: NULL in a row means "not set", the field's default.
_NULL_IS_DEFAULT = {"replaces_scope", "dial_prefixes", "unreadable_numbers"}


def _objects(cls: type, rows: Iterable[Mapping[str, Any]], table: str,
             errs: list[PolicyError]) -> list[Any]:
    names = {f.name for f in fields(cls)}
    out = []
    for row in rows:
        values = {k: v for k, v in row.items()
                  if k in names and not (v is None and k in _NULL_IS_DEFAULT)}
        for key in _BOOL_FIELDS & values.keys():
            if values[key] in (0, 1):  # SQLite; PostgreSQL already gives bool
                values[key] = bool(values[key])
        try:
            out.append(cls(**values))
        except (TypeError, ValueError) as exc:
            key = row.get("id")
            if key is None:
                key = " ".join(str(row.get(k)) for k in ("name", "e164_prefix"))
            errs.append(PolicyError(table, str(key), str(exc)))
    return out


@dataclass(frozen=True)
class ReferFacts:
    """What the REFER says about itself, as the KSR glue (or `referee policy test`) read it.

    source_ip '' (or anything unparsable) matches no tenant's match_source.
    """

    source_ip: str
    from_domain: str | None
    auth_user: str | None
    transferor: str  # the transferor's AOR; rate limits key on it
    in_dialog: bool
    target: Uri
    has_replaces: bool = False


@dataclass(frozen=True)
class Decision:
    """The answer for one REFER: allowed or the code and reason to reply with, what decided
    (rule names the rule or tenant switch), and the tenant whose limits the caller applies."""

    allowed: bool
    code: int  # 0 when allowed, else 403 or 603
    reason: str
    rule: str
    tenant: Tenant
    rule_id: int | None = None
    number: str | None = None  # the target as E.164, when it is a telephone number
    classes: frozenset[str] = frozenset()
    matched_rule: Rule | None = field(default=None, repr=False)  # the allow rule, if any

    @cached_property
    def plan(self) -> TransferPlan:
        """The anchored transfer plan; worked out only when something reads it."""
        return TransferPlan.resolve(self.matched_rule, self.tenant)

    @property
    def announcement(self) -> str:
        return self.plan.announcement

    @property
    def caller_id(self) -> str:
        """'keep' (the transferee's own), 'transferor', or a literal number."""
        return self.plan.caller_id

    @property
    def dial_timeout_s(self) -> int:
        return self.plan.dial_timeout_s

    @property
    def on_failure(self) -> str:
        return self.plan.on_failure

    @property
    def release_after_s(self) -> int:
        return self.plan.release_after_s

    @property
    def max_transfers_per_call(self) -> int | None:
        return self.tenant.max_transfers_per_call

    @property
    def refers_per_minute(self) -> int | None:
        return self.tenant.refers_per_minute

    @property
    def subscription_expiry_s(self) -> int:
        return self.tenant.subscription_expiry_s

    @property
    def transferor_bye_wait_s(self) -> int:
        return self.tenant.transferor_bye_wait_s

    def describe(self) -> str:
        """One line for logs and the CLI, e.g.
        "DENY 403 Forbidden: premium-rate target (rule 3 'no-premium', tenant default)"."""
        where = self.rule if self.rule_id is None else f"{self.rule}, tenant {self.tenant.name}"
        if self.allowed:
            return f"ALLOW ({where})"
        phrase = REASON_PHRASES.get(self.code, "")
        return f"DENY {self.code} {phrase}: {self.reason} ({where})"

    def limits(self) -> str:
        t = self.tenant
        per_call = t.max_transfers_per_call or "unlimited"
        per_min = t.refers_per_minute or "unlimited"
        return (f"max transfers/call {per_call}, REFERs/min {per_min}, "
                f"subscription {t.subscription_expiry_s} s, "
                f"transferor BYE wait {t.transferor_bye_wait_s} s")
