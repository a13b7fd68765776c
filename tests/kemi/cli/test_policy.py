"""The `referee` console script, run for real (subprocess) against a temp SQLite database."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kemi.core.sip.errors import SipParseError
from kemi.core.sip.uri import parse_uri

REFEREE = Path(sys.executable).with_name("referee")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.db = str(tmp_path / "policy.db")
        self.env = {k: v for k, v in os.environ.items() if k != "REFEREE_CONFIG"}

    def __call__(self, *args: str, db: bool = True, env: dict | None = None) -> Run:
        argv = [str(REFEREE), *(["--db", self.db] if db else []), *args]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           env={**self.env, **(env or {})})
        return Run(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert (r.code, r.err) == (0, ""), r
        return r.out

    def usage_error(self, *args: str) -> str:
        r = self(*args)
        assert r.code == 2 and r.out == "", r
        assert r.err.count("\n") == 1, r.err  # one line
        return r.err.strip()


@pytest.fixture(scope="module")
def installed():
    if not REFEREE.exists():
        pytest.fail(f"console script {REFEREE} missing: run `pip install -e .`")


@pytest.fixture()
def cli(tmp_path, installed) -> Cli:
    c = Cli(tmp_path)
    assert c.ok("db", "init").strip() == (
        f"{c.db}: applied 001_policy, 002_transfer_plan, 003_dialled_numbers, "
        "004_transfer_log")
    return c


def test_init_is_idempotent(cli):
    assert cli.ok("db", "init").strip() == f"{cli.db}: up to date (004_transfer_log)"


def test_commands_before_init_fail_with_a_hint(tmp_path, installed):
    c = Cli(tmp_path)
    r = c("policy", "list")
    assert r.code == 1
    assert r.err.strip() == f"referee: policy database {c.db}: no such file (run `referee db init`)"
    assert not Path(c.db).exists()


def test_db_from_config_file_and_env(tmp_path, installed):
    c = Cli(tmp_path)
    conf = tmp_path / "referee.toml"
    conf.write_text(f'policy_db = "sqlite://{c.db}"\n')
    assert "applied 001_policy" in c("--config", str(conf), "db", "init", db=False).out
    r = c("tenant", "list", db=False, env={"REFEREE_CONFIG": str(conf)})
    assert r.code == 0 and r.out.splitlines()[1].startswith("default")
    r = c("--config", str(tmp_path / "nope.toml"), "tenant", "list", db=False)
    assert r.code == 2 and "nope.toml: no such file" in r.err


def test_tenant_add_set_list_remove(cli):
    assert cli.ok("tenant", "add", "acme", "--source", "10.0.0.0/8", "--home-cc", "44",
                  "--allow-pstn", "yes", "--max-per-call", "3", "--priority", "10"
                  ) == "added tenant acme\n"
    out = cli.ok("tenant", "set", "acme", "--per-minute", "10", "--caller-id", "transferor",
                 "--allow-out-of-dialog", "no")
    assert out == ("changed tenant acme: allow_out_of_dialog no, refers_per_minute 10, "
                   "caller_id transferor\n")
    lines = cli.ok("tenant", "list").splitlines()
    header = lines[0]
    assert header.split() == ["NAME", "PRI", "MATCH", "HOME-CC", "PSTN", "OUT-OF-DIALOG",
                              "REPLACES", "REPLACES-SCOPE", "MAX/CALL", "PER-MIN", "EXPIRY-S",
                              "BYE-WAIT-S", "CALLER-ID", "DIAL-PREFIXES", "UNREADABLE"]
    assert lines[1].split() == ["acme", "10", "source", "10.0.0.0/8", "44", "yes", "no", "yes",
                                "any", "3", "10", "120", "32", "transferor", "-", "refuse"]
    assert lines[2].split()[:3] == ["default", "last", "everything"]
    # aligned: every column starts at the same offset on every line
    for col in ("PRI", "HOME-CC", "CALLER-ID"):
        at = header.index(col)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines[1:])
    cli.ok("tenant", "set", "acme", "--source", "none", "--user", "pbx1")
    assert "user pbx1" in cli.ok("tenant", "list").splitlines()[1]
    out = cli.ok("tenant", "set", "acme", "--dial-prefixes", "*67 9,",
                 "--unreadable-numbers", "allow")
    assert out == "changed tenant acme: dial_prefixes *67 9,, unreadable_numbers allow\n"
    assert cli.ok("tenant", "list").splitlines()[1].split()[-3:] == ["*67", "9,", "allow"]
    cli.ok("tenant", "set", "acme", "--dial-prefixes", "none")
    assert cli.ok("tenant", "list").splitlines()[1].split()[-2:] == ["-", "allow"]
    r = cli("tenant", "set", "acme", "--dial-prefixes", "*67;")
    assert r.code == 2 and "dial_prefixes '*67;' must be prefixes" in r.err, r
    cli.ok("policy", "add", "--tenant", "acme", "--action", "allow", "--any")
    assert cli.ok("tenant", "remove", "acme") == "removed tenant acme and its 1 rule\n"
    assert [ln.split()[0] for ln in cli.ok("tenant", "list").splitlines()] == ["NAME", "default"]


def test_policy_add_list_remove(cli):
    cli.ok("tenant", "add", "acme", "--domain", "acme.example")
    out = cli.ok("policy", "add", "--tenant", "acme", "--priority", "5", "--action", "deny",
                 "--user", "sales-*", "--code", "603", "--reason", "no sales", "--name",
                 "no-sales")
    m = re.fullmatch(r"added rule (\d+) 'no-sales': deny user sales-\* 603 "
                     r"\(tenant acme, priority 5\)\n", out)
    assert m, out
    rule_id = m.group(1)
    out = cli.ok("policy", "add", "--action", "allow", "--e164-prefix", "+4420", "--disabled")
    assert re.fullmatch(r"added rule \d+ 'allow-e164-prefix-\+4420': allow e164-prefix \+4420 "
                        r"\(tenant \*, priority 100, disabled\)\n", out), out
    listing = cli.ok("policy", "list")
    assert listing.startswith("policy version ")
    rules = listing.split("RULES")[1].split("NUMBER CLASSES")[0].strip().splitlines()[2:]
    assert rules[0].split()[:6] == [rule_id, "5", "acme", "no-sales", "deny", "user"]
    assert rules[1].split()[-2:] == ["no", "-"]  # the disabled one, priority 100, no plan
    assert [r.split()[3] for r in rules[2:]] == ["no-premium", "no-high-cost", "no-international",
                                                "no-nanp-international"]
    assert re.search(r"^premium +\+1900 \+1976 ", listing, re.M)
    assert "INVALID ROWS (skipped): 0" in listing
    assert cli.ok("policy", "remove", rule_id) == f"removed rule {rule_id} 'no-sales'\n"
    assert "no-sales" not in cli.ok("policy", "list")


def test_policy_test_decisions_and_exit_codes(cli):
    cli.ok("tenant", "add", "acme", "--source", "10.0.0.0/8", "--home-cc", "1", "--allow-pstn",
           "yes", "--max-per-call", "3", "--per-minute", "10")
    r = cli("policy", "test", "--target", "sip:+19005550100@gw.example", "--source", "10.1.2.3")
    assert r.code == 1
    assert r.out.splitlines() == [
        "DENY 403 Forbidden: premium-rate target (rule 1 'no-premium', tenant acme)",
        "target number +19005550100: premium, pstn"]
    r = cli("policy", "test", "--target", "sip:+15551230000@gw.example", "--source", "10.1.2.3",
            "--from", "sip:alice@acme.example")
    assert r.code == 0
    assert r.out.splitlines()[:2] == [
        "ALLOW (tenant acme default allow); limits: max transfers/call 3, REFERs/min 10, "
        "subscription 120 s, transferor BYE wait 32 s",
        "anchored plan: announcement none, caller-ID keep, dial timeout 30 s, "
        "on failure reconnect, release transferor after 32 s"]
    r = cli("policy", "test", "--target", "sip:+15551230000@gw.example")
    assert (r.code, r.out.splitlines()[0]) == (
        1, "DENY 403 Forbidden: PSTN targets not allowed for tenant default "
           "(tenant default: allow_pstn off)")
    r = cli("policy", "test", "--target", "sip:bob@example.com", "--out-of-dialog")
    assert (r.code, r.out) == (1, "DENY 403 Forbidden: out-of-dialog REFER not allowed "
                                  "(tenant default: allow_out_of_dialog off)\n")
    cli.ok("tenant", "set", "default", "--allow-replaces", "no")
    r = cli("policy", "test", "--target", "sip:bob@example.com", "--replaces")
    assert (r.code, r.out) == (1, "DENY 403 Forbidden: Replaces not allowed "
                                  "(tenant default: allow_replaces off)\n")
    cli.ok("policy", "add", "--tenant", "acme", "--action", "deny", "--domain", "*.evil.example",
           "--reason", "blocked partner", "--name", "evil")
    r = cli("policy", "test", "--target", "sip:x@a.evil.example", "--source", "10.9.9.9",
            "--auth-user", "u1")
    assert (r.code, r.out) == (1, "DENY 403 Forbidden: blocked partner "
                                  "(rule 5 'evil', tenant acme)\n")


def test_policy_test_warns_about_invalid_rows_and_list_shows_them(cli):
    raw = sqlite3.connect(cli.db)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("INSERT INTO rules (id, name, action, target_kind, target_value, reply_code) "
                "VALUES (40, 'typo', 'deny', 'class', 'premuim', 403)")
    raw.execute("INSERT INTO rules (id, name, action, target_kind, reply_code) "
                "VALUES (41, 'ok-code', 'deny', 'any', 200)")
    raw.execute("INSERT INTO tenants (id, name, match_source) VALUES (9, 'net', '10.0.0.0/33')")
    raw.commit()
    listing = cli.ok("policy", "list")
    invalid = listing.split("INVALID ROWS (skipped): 3\n")[1].splitlines()
    assert invalid == [
        "  tenants row 9: match_source '10.0.0.0/33' is not an IP address or CIDR",
        "  rules row 40: unknown class 'premuim'",
        "  rules row 41: reply_code 200 must be 403 or 603 for deny",
    ]
    r = cli("policy", "test", "--target", "sip:bob@example.com")
    assert r.code == 0
    assert r.err == ("referee: warning: 3 invalid policy rows skipped "
                     "(see `referee policy list`)\n")


def test_policy_add_with_a_transfer_plan_list_and_test(cli):
    cli.ok("tenant", "add", "acme", "--domain", "acme.example", "--caller-id", "transferor",
           "--bye-wait", "20")
    out = cli.ok("policy", "add", "--tenant", "acme", "--action", "allow", "--domain",
                 "partner.example", "--name", "partner", "--announcement", "custom/transfer",
                 "--caller-id", "+15551230000", "--dial-timeout", "25", "--on-failure",
                 "fallback:acme-vm,s,1", "--release-after", "40")
    assert re.fullmatch(
        r"added rule \d+ 'partner': allow domain partner.example \(tenant acme, priority 100\); "
        r"plan: announcement=custom/transfer caller_id=\+15551230000 dial_timeout_s=25 "
        r"on_failure=fallback:acme-vm,s,1 release_after_s=40\n", out), out
    cli.ok("policy", "add", "--tenant", "acme", "--action", "allow", "--domain", "pbx.example",
           "--name", "pbx", "--priority", "101", "--dial-timeout", "15")
    listing = cli.ok("policy", "list")
    rules = listing.split("RULES")[1].split("NUMBER CLASSES")[0].strip().splitlines()[1:]
    assert rules[0].split()[-1] == "PLAN"
    assert rules[1].split()[3] == "partner" and rules[1].endswith(
        "yes      announcement=custom/transfer caller_id=+15551230000 dial_timeout_s=25 "
        "on_failure=fallback:acme-vm,s,1 release_after_s=40")
    assert rules[2].split()[3] == "pbx" and rules[2].endswith("yes      dial_timeout_s=15")
    assert rules[3].split()[-1] == "-"  # a seed deny rule: no plan

    r = cli("policy", "test", "--target", "sip:x@partner.example", "--from",
            "sip:alice@acme.example")
    assert r.code == 0 and r.out.splitlines()[1] == (
        "anchored plan: announcement custom/transfer, caller-ID +15551230000, dial timeout 25 s, "
        "on failure fallback:acme-vm,s,1, release transferor after 40 s")
    # unset fields: the tenant's caller-ID and BYE wait, the built-in rest
    r = cli("policy", "test", "--target", "sip:x@pbx.example", "--from", "sip:alice@acme.example")
    assert r.out.splitlines()[1] == (
        "anchored plan: announcement none, caller-ID transferor, dial timeout 15 s, "
        "on failure reconnect, release transferor after 20 s")


def test_a_hand_edited_nonsense_plan_is_listed_as_invalid(cli):
    raw = sqlite3.connect(cli.db)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("INSERT INTO rules (id, name, action, target_kind, dial_timeout_s) "
                "VALUES (50, 'neg', 'allow', 'any', -5)")
    raw.execute("INSERT INTO rules (id, name, action, target_kind, on_failure) "
                "VALUES (51, 'vm', 'allow', 'any', 'fallback:voice mail,s,1')")
    raw.commit()
    invalid = cli.ok("policy", "list").split("INVALID ROWS (skipped): 2\n")[1].splitlines()
    assert invalid == [
        "  rules row 50: dial_timeout_s must be 1..600, not -5",
        "  rules row 51: on_failure 'fallback:voice mail,s,1': context 'voice mail' must be "
        "1-79 letters, digits, '_' or '-'",
    ]


def test_replaces_scope_tenant_in_policy_test(cli):
    cli.ok("tenant", "add", "acme", "--domain", "acme.example", "--priority", "10")
    cli.ok("tenant", "add", "globex", "--domain", "globex.example", "--priority", "20")
    assert cli.ok("tenant", "set", "acme", "--replaces-scope", "tenant") == (
        "changed tenant acme: replaces_scope tenant\n")
    assert cli.ok("tenant", "list").splitlines()[1].split()[8] == "tenant"
    base = ("policy", "test", "--target", "sip:bob@acme.example", "--from",
            "sip:alice@acme.example", "--replaces-party", "sip:alice@acme.example")
    r = cli(*base, "--replaces-party", "sip:eve@globex.example")
    assert (r.code, r.out) == (1, "DENY 403 Forbidden: Replaces across tenants: "
                                  "eve@globex.example belongs to tenant globex "
                                  "(tenant acme: replaces_scope tenant)\n")
    r = cli(*base, "--replaces-party", "sip:carol@acme.example")
    assert r.code == 0 and r.out.startswith("ALLOW")
    cli.ok("tenant", "set", "acme", "--replaces-scope", "any")
    assert cli(*base, "--replaces-party", "sip:eve@globex.example").code == 0


def test_the_cli_on_a_database_not_yet_upgraded(tmp_path, installed):
    """A 001-only database (a referee release before 002): reads and plain edits work,
    a plan or a scope says to upgrade, and `db init` upgrades it in place."""
    c = Cli(tmp_path)
    raw = sqlite3.connect(c.db)
    raw.executescript(Path(policy_sql("001_policy.sql")).read_text())
    raw.execute("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
    raw.execute("INSERT INTO schema_migrations (version, name) VALUES ('001', '001_policy')")
    raw.commit()
    raw.close()
    c.ok("tenant", "add", "acme", "--domain", "acme.example")
    c.ok("tenant", "set", "acme", "--allow-pstn", "yes")
    c.ok("policy", "add", "--action", "allow", "--domain", "partner.example", "--name", "p")
    assert "INVALID ROWS (skipped): 0" in c.ok("policy", "list")
    r = c("policy", "add", "--action", "allow", "--any", "--dial-timeout", "20")
    assert r.code == 1 and "schema older than this referee? run `referee db init`" in r.err, r
    r = c("tenant", "set", "acme", "--replaces-scope", "tenant")
    assert r.code == 1 and "run `referee db init` to upgrade it" in r.err, r
    assert c.ok("db", "init").strip() == (
        f"{c.db}: applied 002_transfer_plan, 003_dialled_numbers, 004_transfer_log")
    c.ok("policy", "add", "--action", "allow", "--any", "--dial-timeout", "20")
    c.ok("tenant", "set", "acme", "--replaces-scope", "tenant")
    assert c.ok("tenant", "list").splitlines()[1].split()[:2] == ["acme", "100"]
    listing = c.ok("policy", "list")
    assert "dial_timeout_s=20" in listing and " p " in listing


def policy_sql(name: str) -> str:
    from importlib import resources
    return str(resources.files("sql").joinpath("sqlite", name))


def _sip_error(text: str) -> str:
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    return str(info.value)


@pytest.mark.parametrize(("args", "message"), [
    (("policy", "test", "--target", "http://example.com/"), _sip_error("http://example.com/")),
    (("policy", "test", "--target", "sip:bob@example.com", "--from", "sip:"),
     _sip_error("sip:")),
    (("policy", "test", "--target", "sip:a@b", "--source", "10.0.0.256"),
     "--source '10.0.0.256' is not an IP address"),
    (("tenant", "add", "bad", "--source", "10.0.0.0/33"),
     "match_source '10.0.0.0/33' is not an IP address or CIDR"),
    (("tenant", "add", "bad", "--home-cc", "+44"), "home_cc '+44' must be a country code"),
    (("tenant", "add", "bad name"), "tenant name 'bad name' must be"),
    (("tenant", "add", "default"), "tenant 'default' exists"),
    (("tenant", "set", "default", "--domain", "x.example"),
     "the default tenant matches everything: no matchers"),
    (("tenant", "set", "nobody", "--expiry", "60"), "no tenant 'nobody'"),
    (("tenant", "set", "default"), "nothing to change"),
    (("tenant", "set", "default", "--expiry", "5"), "subscription_expiry_s must be 10..3600"),
    (("tenant", "remove", "default"), "the default tenant cannot be removed"),
    (("tenant", "remove", "nobody"), "no tenant 'nobody'"),
    (("policy", "add", "--action", "deny", "--class", "premuim"), "unknown class 'premuim'"),
    (("policy", "add", "--action", "deny", "--tenant", "nobody", "--any"), "no tenant 'nobody'"),
    (("policy", "add", "--action", "allow", "--any", "--code", "403"),
     "--code is for deny rules only"),
    (("policy", "add", "--action", "deny", "--e164-prefix", "1900"),
     "e164-prefix '1900' must be '+' and digits"),
    (("policy", "add", "--action", "deny", "--domain", "bad..example"), "domain 'bad..example'"),
    (("policy", "remove", "999"), "no rule 999"),
    (("policy", "add", "--action", "allow", "--any", "--caller-id", "+44 20 7946"),
     "caller_id '+44 20 7946' must be keep, transferor, or a number ('+' optional, 2-15 digits, "
     "no spaces)"),
    (("policy", "add", "--action", "allow", "--any", "--dial-timeout", "0"),
     "dial_timeout_s must be 1..600"),
    (("policy", "add", "--action", "allow", "--any", "--release-after", "7200"),
     "release_after_s must be 0..3600"),
    (("policy", "add", "--action", "allow", "--any", "--on-failure", "voicemail"),
     "on_failure 'voicemail' must be 'reconnect' or 'fallback:<context>,<exten>,<priority>', "
     "e.g. fallback:voicemail,s,1"),
    (("policy", "add", "--action", "allow", "--any", "--on-failure", "fallback:vm,s,0"),
     "on_failure 'fallback:vm,s,0': priority '0' must be a number >= 1 or a label"),
    (("policy", "add", "--action", "allow", "--any", "--announcement", "please hold"),
     "announcement 'please hold' must be an Asterisk sound name"),
    (("policy", "add", "--action", "allow", "--any", "--announcement", "hold.wav"),
     "announcement 'hold.wav': give the sound without its extension"),
    (("policy", "add", "--action", "deny", "--any", "--caller-id", "keep", "--dial-timeout",
      "20"), "a deny rule takes no transfer plan (--caller-id, --dial-timeout)"),
    (("policy", "test", "--target", "sip:a@b", "--replaces-party", "http://x"),
     "--replaces-party: "),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    err = cli.usage_error(*args)
    assert err.startswith("referee: error: ") and message in err, err


@pytest.mark.parametrize(("args", "message"), [
    (("tenant", "add", "x", "--allow-pstn", "maybe"),
     "referee tenant add: error: argument --allow-pstn: expected yes or no, got 'maybe'"),
    (("tenant", "add", "x", "--max-per-call", "0"), "expected a number >= 1, or none"),
    (("policy", "add", "--action", "deny"), "one of the arguments --domain --user"),
    (("policy", "add", "--action", "deny", "--any", "--class", "premium"), "not allowed with"),
    (("policy", "add", "--action", "maybe", "--any"), "invalid choice: 'maybe'"),
    (("policy", "add", "--action", "deny", "--any", "--code", "404"), "invalid choice: 404"),
    (("policy", "remove", "seven"), "expected a whole number, got 'seven'"),
    (("policy", "add", "--action", "allow", "--any", "--dial-timeout", "-5"),
     "argument --dial-timeout: expected a number >= 0, got '-5'"),
    (("policy", "add", "--action", "allow", "--any", "--release-after", "soon"),
     "argument --release-after: expected a whole number, got 'soon'"),
    (("tenant", "set", "default", "--replaces-scope", "global"), "invalid choice: 'global'"),
    (("policy", "test"), "the following arguments are required: --target"),
    (("policy", "frobnicate"), "invalid choice: 'frobnicate'"),
])
def test_argparse_errors_are_one_line_and_exit_2(cli, args, message):
    err = cli.usage_error(*args)
    assert message in err, err


def test_no_command_prints_help_and_exits_2(cli):
    r = cli()
    assert r.code == 2 and "usage: referee" in r.err
    r = cli("policy")
    assert r.code == 2 and "usage: referee policy" in r.err
