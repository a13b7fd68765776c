"""`referee db`, `referee policy` and `referee tenant`: edit the policy and dry-run a REFER.

Every edit is validated with the same model classes the loader uses, so what the CLI
accepts the Kamailio workers will load; the workers pick an edit up on their next
policy_version check (triggers bump it), no restart.

Why this file is long: `referee db`, `policy` and `tenant` share their argument
readers and their row printers; each subcommand is a short function.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kemi.cli import EXIT_FAILED, EXIT_OK, Context, Failed, UsageError
from kemi.core.policy.evaluate import decide, replaces_crossing
from kemi.core.policy.model import (
    BUILTIN_CLASSES,
    CALLER_IDS,
    DEFAULT_TENANT,
    PLAN_FIELDS,
    REPLACES_SCOPES,
    UNREADABLE_NUMBERS,
    Policy,
    ReferFacts,
    Rule,
    Tenant,
    compile_rule,
    compile_tenant,
)
from kemi.core.sip.errors import SipParseError
from kemi.core.sip.uri import parse_uri
from kemi.storage import policy_db

# option dest -> tenants column
_TENANT_OPTIONS = {
    "priority": "priority",
    "source": "match_source",
    "domain": "match_domain",
    "user": "match_user",
    "home_cc": "home_cc",
    "allow_pstn": "allow_pstn",
    "allow_out_of_dialog": "allow_out_of_dialog",
    "allow_replaces": "allow_replaces",
    "max_per_call": "max_transfers_per_call",
    "per_minute": "refers_per_minute",
    "expiry": "subscription_expiry_s",
    "bye_wait": "transferor_bye_wait_s",
    "caller_id": "caller_id",
    "replaces_scope": "replaces_scope",
    "dial_prefixes": "dial_prefixes",
    "unreadable_numbers": "unreadable_numbers",
}
_CLEAR = ""  # what "none" parses to: store NULL


def register(subparsers: Any) -> None:
    dbp = subparsers.add_parser("db", help="policy database")
    dbs = dbp.add_subparsers(title="commands", metavar="COMMAND")
    dbp.set_defaults(help_parser=dbp)
    init = dbs.add_parser("init", help="create or upgrade the policy tables (idempotent)")
    init.set_defaults(handler=cmd_db_init)

    pol = subparsers.add_parser("policy", help="transfer rules: list, add, remove, test")
    pols = pol.add_subparsers(title="commands", metavar="COMMAND")
    pol.set_defaults(help_parser=pol)
    pols.add_parser("list", help="tenants, rules, number classes and invalid rows"
                    ).set_defaults(handler=cmd_policy_list)
    add = pols.add_parser("add", help="add an allow or deny rule")
    add.add_argument("--tenant", help="tenant the rule belongs to (default: every tenant)")
    add.add_argument("--priority", type=_natural, default=100,
                     help="lower is tried first (default 100)")
    add.add_argument("--action", required=True, choices=("allow", "deny"))
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--domain", help="target host: example.com or *.example.com")
    target.add_argument("--user", help="target user part, a glob: 'sales-*', '9???'")
    target.add_argument("--e164-prefix", dest="e164_prefix", help="e.g. +4420")
    target.add_argument("--class", dest="number_class", help="number class, e.g. premium")
    target.add_argument("--any", action="store_true", help="every target")
    add.add_argument("--code", type=int, choices=(403, 603),
                     help="reply for deny (default 403)")
    add.add_argument("--reason", help="text for the reply's Reason and for logs")
    add.add_argument("--name", help="short name shown in decisions (default from the target)")
    add.add_argument("--disabled", action="store_true", help="store it switched off")
    plan = add.add_argument_group(
        "transfer plan (allow rules; for transfers anchored in Asterisk)",
        "Unset: caller-ID and release timer from the tenant (--caller-id, --bye-wait of "
        "`tenant set`), no announcement, 30 s, reconnect.")
    plan.add_argument("--announcement", metavar="SOUND",
                      help="Asterisk sound played to the transferee first, e.g. custom/hold")
    plan.add_argument("--caller-id", dest="caller_id", metavar="keep|transferor|NUMBER",
                      help="caller-ID presented to the target: the transferee's own (keep), "
                           "the transferor's, or this number")
    plan.add_argument("--dial-timeout", dest="dial_timeout_s", type=_natural, metavar="S",
                      help="seconds the target rings (1-600, default 30)")
    plan.add_argument("--on-failure", dest="on_failure",
                      metavar="reconnect|fallback:CONTEXT,EXTEN,PRIORITY",
                      help="when the target fails: back to the transferor (default), or "
                           "this dialplan location")
    plan.add_argument("--release-after", dest="release_after_s", type=_natural, metavar="S",
                      help="seconds after which the transferor's leg is released (0-3600)")
    add.set_defaults(handler=cmd_policy_add)
    rm = pols.add_parser("remove", help="remove a rule by id")
    rm.add_argument("id", type=_natural, metavar="ID")
    rm.set_defaults(handler=cmd_policy_remove)
    test = pols.add_parser("test", help="what the policy does with a REFER (no SIP)")
    test.add_argument("--target", required=True, metavar="URI", help="the Refer-To URI")
    test.add_argument("--from", dest="from_uri", metavar="URI", help="the transferor (From)")
    test.add_argument("--source", default="", metavar="IP", help="source address of the REFER")
    test.add_argument("--auth-user", dest="auth_user", metavar="USER",
                      help="authenticated (digest) user")
    test.add_argument("--out-of-dialog", dest="out_of_dialog", action="store_true")
    test.add_argument("--replaces", action="store_true", help="Refer-To carries Replaces")
    test.add_argument("--replaces-party", dest="replaces_parties", action="append",
                      metavar="URI", default=[],
                      help="a party of the dialog Replaces names (repeat for both; implies "
                           "--replaces): checks the tenant's replaces_scope")
    test.set_defaults(handler=cmd_policy_test)

    ten = subparsers.add_parser("tenant", help="who sends REFERs: matchers, switches, limits")
    tens = ten.add_subparsers(title="commands", metavar="COMMAND")
    ten.set_defaults(help_parser=ten)
    tadd = tens.add_parser("add", help="add a tenant")
    tadd.add_argument("name")
    _tenant_options(tadd)
    tadd.set_defaults(handler=cmd_tenant_add)
    tset = tens.add_parser("set", help="change a tenant (only the options given)")
    tset.add_argument("name")
    _tenant_options(tset)
    tset.set_defaults(handler=cmd_tenant_set)
    tens.add_parser("list", help="tenants in matching order").set_defaults(handler=cmd_tenant_list)
    trm = tens.add_parser("remove", help="remove a tenant and its rules")
    trm.add_argument("name")
    trm.set_defaults(handler=cmd_tenant_remove)


def _tenant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--priority", type=_natural, help="lower is matched first (default 100)")
    p.add_argument("--source", type=_text_or_none, metavar="CIDR",
                   help="source IP or CIDR, several comma-separated; 'none' clears")
    p.add_argument("--domain", type=_text_or_none, help="From domain ('*.example.com' ok)")
    p.add_argument("--user", type=_text_or_none, help="authenticated user")
    p.add_argument("--home-cc", dest="home_cc", type=_text_or_none, metavar="CC",
                   help="country code for 'international', e.g. 1 or 44")
    p.add_argument("--allow-pstn", dest="allow_pstn", type=_yes_no, metavar="yes|no")
    p.add_argument("--allow-out-of-dialog", dest="allow_out_of_dialog", type=_yes_no,
                   metavar="yes|no")
    p.add_argument("--allow-replaces", dest="allow_replaces", type=_yes_no, metavar="yes|no")
    p.add_argument("--max-per-call", dest="max_per_call", type=_count_or_none, metavar="N|none")
    p.add_argument("--per-minute", dest="per_minute", type=_count_or_none, metavar="N|none",
                   help="REFERs per transferor per minute")
    p.add_argument("--expiry", type=_natural, metavar="S", help="subscription expiry, seconds")
    p.add_argument("--bye-wait", dest="bye_wait", type=_natural, metavar="S",
                   help="seconds to wait for the transferor's BYE")
    p.add_argument("--caller-id", dest="caller_id", choices=CALLER_IDS,
                   help="caller-ID on the new leg unless a rule's plan says otherwise")
    p.add_argument("--replaces-scope", dest="replaces_scope", choices=REPLACES_SCOPES,
                   help="tenant: Replaces may not name a dialog with another tenant's party")
    p.add_argument("--dial-prefixes", dest="dial_prefixes", type=_dial_prefixes,
                   metavar="'*67 9 ...'|none",
                   help="feature codes and outside-line prefixes taken off a dial string "
                        "before it is read as a number")
    p.add_argument("--unreadable-numbers", dest="unreadable_numbers",
                   choices=UNREADABLE_NUMBERS,
                   help="a target that has a number's digits but cannot be read as one: "
                        "refuse (default, 403 saying why) or allow (as a PSTN number)")


# argparse types: each error is the one line argparse prints after the option name.

def _dial_prefixes(text: str) -> str:
    """The prefixes, space-separated; 'none' (or nothing) clears them."""
    return "" if text.strip().lower() == "none" else " ".join(text.split())

def _yes_no(text: str) -> bool:
    low = text.lower()
    if low in ("yes", "y", "true", "on", "1"):
        return True
    if low in ("no", "n", "false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _count_or_none(text: str) -> int | str:
    if text.lower() in ("none", "unlimited"):
        return _CLEAR
    value = _natural(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number >= 1, or none")
    return value


def _text_or_none(text: str) -> str:
    return _CLEAR if text.lower() == "none" else text


@contextmanager
def _open(ctx: Context, create: bool = False) -> Iterator[policy_db.Connection]:
    try:
        conn = policy_db.connect(ctx.db, create=create)
    except policy_db.DbError as exc:
        raise Failed(str(exc)) from None
    try:
        yield conn
    except policy_db.DbError as exc:
        raise Failed(str(exc)) from None
    finally:
        conn.close()


def cmd_db_init(ctx: Context, args: argparse.Namespace) -> int:
    with _open(ctx, create=True) as conn:
        done = policy_db.migrate(conn)
        names = policy_db.applied(conn)
    where = policy_db.Target.parse(ctx.db).display
    if done:
        print(f"{where}: applied {', '.join(done)}")
    else:
        print(f"{where}: up to date ({names[-1] if names else 'no migrations'})")
    return EXIT_OK


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _tenant_table(tenants: Sequence[Tenant]) -> str:
    rows = []
    for t in tenants:
        match = [f"source {t.match_source}" if t.match_source else "",
                 f"domain {t.match_domain}" if t.match_domain else "",
                 f"user {t.match_user}" if t.match_user else ""]
        rows.append((t.name, "last" if t.name == DEFAULT_TENANT else t.priority,
                     " ".join(m for m in match if m) or "everything", t.home_cc, t.allow_pstn,
                     t.allow_out_of_dialog, t.allow_replaces, t.replaces_scope,
                     t.max_transfers_per_call, t.refers_per_minute, t.subscription_expiry_s,
                     t.transferor_bye_wait_s, t.caller_id, t.dial_prefixes or None,
                     t.unreadable_numbers))
    return _table(("NAME", "PRI", "MATCH", "HOME-CC", "PSTN", "OUT-OF-DIALOG", "REPLACES",
                   "REPLACES-SCOPE", "MAX/CALL", "PER-MIN", "EXPIRY-S", "BYE-WAIT-S",
                   "CALLER-ID", "DIAL-PREFIXES", "UNREADABLE"), rows)


def _plan_text(rule: Rule) -> str:
    """The plan fields a rule sets, 'name=value' (an empty announcement shown as '')."""
    return " ".join(f"{k}={_plan_value(v)}" for k, v in rule.plan_fields.items())


def _plan_value(value: Any) -> str:
    return "''" if value == "" else str(value)


def _load(conn: policy_db.Connection) -> Policy:
    return policy_db.load_policy(conn)


def cmd_policy_list(ctx: Context, args: argparse.Namespace) -> int:
    with _open(ctx) as conn:
        policy = _load(conn)
    out = [f"policy version {policy.version} ({policy_db.Target.parse(ctx.db).display})", "",
           "TENANTS (first match wins)", _tenant_table(policy.tenants), "",
           "RULES (tenant's and global, lowest priority first; first match wins)"]
    rules = [(r.id, r.priority, r.tenant or "*", r.name, r.action, r.target, r.reply_code,
              r.reason, r.enabled, _plan_text(r) or None) for r in policy.rules]
    out.append(_table(("ID", "PRI", "TENANT", "NAME", "ACTION", "TARGET", "CODE", "REASON",
                       "ENABLED", "PLAN"), rules) if rules else "(none: every target allowed)")
    out += ["", "NUMBER CLASSES (plus built-in: " + ", ".join(BUILTIN_CLASSES) + ")"]
    grouped: dict[str, list[str]] = {}
    for nc in policy.classes:
        grouped.setdefault(nc.name, []).append(nc.e164_prefix)
    width = max((len(n) for n in grouped), default=0)
    for name, prefixes in grouped.items():
        out.append(textwrap.fill(" ".join(prefixes), width=100,
                                 initial_indent=name.ljust(width) + "  ",
                                 subsequent_indent=" " * (width + 2)))
    out += ["", f"INVALID ROWS (skipped): {len(policy.errors)}"]
    out += [f"  {err}" for err in policy.errors]
    print("\n".join(out))
    return EXIT_OK


def _plan_option(field_name: str) -> str:
    """The `policy add` option of a plan field: dial_timeout_s -> --dial-timeout."""
    return "--" + field_name.removesuffix("_s").replace("_", "-")


def _default_name(action: str, kind: str, value: str | None) -> str:
    return (f"{action}-{kind}" + (f"-{value}" if value else ""))[:64]


def cmd_policy_add(ctx: Context, args: argparse.Namespace) -> int:
    kinds = (("domain", args.domain), ("user", args.user), ("e164-prefix", args.e164_prefix),
             ("class", args.number_class))
    kind, value = next(((k, v) for k, v in kinds if v is not None), ("any", None))
    if args.action == "allow" and args.code is not None:
        raise UsageError("--code is for deny rules only")
    plan = {k: getattr(args, k) for k in PLAN_FIELDS if getattr(args, k) is not None}
    if args.action == "deny" and plan:
        options = ", ".join(_plan_option(k) for k in plan)
        raise UsageError(f"a deny rule takes no transfer plan ({options})")
    code = (args.code or 403) if args.action == "deny" else None
    reason = args.reason if args.reason is not None else (
        "transfer target not allowed" if args.action == "deny" else "")
    with _open(ctx) as conn:
        if args.tenant is not None and not _tenant_row(conn, args.tenant):
            raise UsageError(f"no tenant {args.tenant!r} (see `referee tenant list`)")
        classes = {r["name"] for r in conn.rows("SELECT DISTINCT name FROM number_classes")}
        classes |= set(BUILTIN_CLASSES)
        try:
            rule = Rule(args.name or _default_name(args.action, kind, value), args.action, kind,
                        value, args.tenant, args.priority, code, reason, not args.disabled,
                        **plan)
            compile_rule(rule, classes)
        except ValueError as exc:
            message = str(exc)
            if kind == "class" and value not in classes:
                message = f"unknown class {value!r} (known: {', '.join(sorted(classes))})"
            raise UsageError(message) from None
        # Only the plan columns given: a rule without a plan can still be added to a
        # database that has not been upgraded yet.
        cols = {"tenant": rule.tenant, "name": rule.name, "priority": rule.priority,
                "action": rule.action, "target_kind": rule.target_kind,
                "target_value": rule.target_value, "reply_code": rule.reply_code,
                "reason": rule.reason, "enabled": rule.enabled, **rule.plan_fields}
        with conn.transaction():
            row = conn.rows(
                f"INSERT INTO rules ({', '.join(cols)}) VALUES "
                f"({', '.join('?' for _ in cols)}) RETURNING id", list(cols.values()))
    code_text = f" {rule.reply_code}" if rule.reply_code else ""
    plan_text = f"; plan: {_plan_text(rule)}" if rule.plan_fields else ""
    print(f"added rule {row[0]['id']} {rule.name!r}: {rule.action} {rule.target}{code_text} "
          f"(tenant {rule.tenant or '*'}, priority {rule.priority}"
          f"{', disabled' if not rule.enabled else ''}){plan_text}")
    return EXIT_OK


def cmd_policy_remove(ctx: Context, args: argparse.Namespace) -> int:
    with _open(ctx) as conn, conn.transaction():
        rows = conn.rows("SELECT name FROM rules WHERE id = ?", (args.id,))
        if not rows:
            raise UsageError(f"no rule {args.id} (see `referee policy list`)")
        conn.execute("DELETE FROM rules WHERE id = ?", (args.id,))
    print(f"removed rule {args.id} {rows[0]['name']!r}")
    return EXIT_OK


def cmd_policy_test(ctx: Context, args: argparse.Namespace) -> int:
    try:
        target = parse_uri(args.target)
        sender = parse_uri(args.from_uri) if args.from_uri is not None else None
    except SipParseError as exc:
        raise UsageError(str(exc)) from None
    if args.source:
        try:
            ipaddress.ip_address(args.source)
        except ValueError:
            raise UsageError(f"--source {args.source!r} is not an IP address") from None
    try:
        parties = [parse_uri(u).aor for u in args.replaces_parties]
    except SipParseError as exc:
        raise UsageError(f"--replaces-party: {exc}") from None
    facts = ReferFacts(
        source_ip=args.source,
        from_domain=sender.host if sender else None,
        auth_user=args.auth_user,
        transferor=sender.aor if sender else "",
        in_dialog=not args.out_of_dialog,
        target=target,
        has_replaces=args.replaces or bool(parties),
    )
    with _open(ctx) as conn:
        policy = _load(conn)
    if policy.errors:
        print(f"referee: warning: {len(policy.errors)} invalid policy rows skipped "
              "(see `referee policy list`)", file=sys.stderr)
    decision = decide(policy, facts)
    crossing = replaces_crossing(policy, decision.tenant, parties) if decision.allowed else None
    if crossing is not None:
        party, owner = crossing
        print(f"DENY 403 Forbidden: Replaces across tenants: {party} belongs to tenant "
              f"{owner.name} (tenant {decision.tenant.name}: replaces_scope tenant)")
        return EXIT_FAILED
    line = decision.describe()
    if decision.allowed:
        line += f"; limits: {decision.limits()}"
    print(line)
    if decision.allowed:
        print(f"anchored plan: {decision.plan.describe()}")
    if decision.number:
        print(f"target number {decision.number}: {', '.join(sorted(decision.classes))}")
    return EXIT_OK if decision.allowed else EXIT_FAILED


def _tenant_row(conn: policy_db.Connection, name: str) -> dict[str, Any] | None:
    rows = conn.rows("SELECT * FROM tenants WHERE name = ?", (name,))
    return rows[0] if rows else None


def _tenant_from(values: dict[str, Any]) -> Tenant:
    try:
        tenant = Tenant(**values)
        compile_tenant(tenant)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return tenant


def _given(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for dest, column in _TENANT_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None:
            # dial_prefixes is NOT NULL: '' is its "none"
            out[column] = None if value == _CLEAR and column != "dial_prefixes" else value
    return out


# Columns of 002 and 003: written only when they differ from the default, so `tenant add`
# works on a database not upgraded yet (and says to upgrade when the option needs it).
_NOT_NULL_002 = {"replaces_scope": "any", "dial_prefixes": "", "unreadable_numbers": "refuse"}


def _columns(tenant: Tenant) -> dict[str, Any]:
    cols = {c: getattr(tenant, c) for c in ("name", *_TENANT_OPTIONS.values())}
    return {c: v for c, v in cols.items() if _NOT_NULL_002.get(c, object()) != v}


def cmd_tenant_add(ctx: Context, args: argparse.Namespace) -> int:
    tenant = _tenant_from({"name": args.name, **_given(args)})
    with _open(ctx) as conn, conn.transaction():
        if _tenant_row(conn, tenant.name):
            raise UsageError(f"tenant {tenant.name!r} exists (change it with `referee tenant set`)")
        cols = _columns(tenant)
        conn.execute(f"INSERT INTO tenants ({', '.join(cols)}) "
                     f"VALUES ({', '.join('?' for _ in cols)})", list(cols.values()))
    print(f"added tenant {tenant.name}")
    return EXIT_OK


def cmd_tenant_set(ctx: Context, args: argparse.Namespace) -> int:
    changes = _given(args)
    if not changes:
        raise UsageError("nothing to change: give at least one option (see --help)")
    with _open(ctx) as conn, conn.transaction():
        row = _tenant_row(conn, args.name)
        if row is None:
            raise UsageError(f"no tenant {args.name!r} (see `referee tenant list`)")
        current = {c: row[c] for c in ("name", *_TENANT_OPTIONS.values())
                   if row.get(c) is not None or c not in _NOT_NULL_002}
        for key in ("allow_pstn", "allow_out_of_dialog", "allow_replaces"):
            current[key] = bool(current[key])
        _tenant_from({**current, **changes})
        conn.execute(f"UPDATE tenants SET {', '.join(f'{c} = ?' for c in changes)} "
                     "WHERE name = ?", [*changes.values(), args.name])
    print(f"changed tenant {args.name}: " + ", ".join(
        f"{c} {_cell(v)}" for c, v in changes.items()))
    return EXIT_OK


def cmd_tenant_list(ctx: Context, args: argparse.Namespace) -> int:
    with _open(ctx) as conn:
        policy = _load(conn)
    print(_tenant_table(policy.tenants))
    for err in policy.errors:
        if err.table == "tenants":
            print(f"invalid (skipped): {err}")
    return EXIT_OK


def cmd_tenant_remove(ctx: Context, args: argparse.Namespace) -> int:
    if args.name == DEFAULT_TENANT:
        raise UsageError("the default tenant cannot be removed (change it with `tenant set`)")
    with _open(ctx) as conn, conn.transaction():
        if _tenant_row(conn, args.name) is None:
            raise UsageError(f"no tenant {args.name!r} (see `referee tenant list`)")
        n = conn.rows("SELECT count(*) AS n FROM rules WHERE tenant = ?", (args.name,))[0]["n"]
        conn.execute("DELETE FROM tenants WHERE name = ?", (args.name,))
    print(f"removed tenant {args.name} and its {n} rule{'s' if n != 1 else ''}")
    return EXIT_OK
