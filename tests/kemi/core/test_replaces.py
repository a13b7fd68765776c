"""kemi.core.replaces: the Replaces rules of an attended transfer, one test per rule (no I/O).

The flow: Andrew (tag a1) called Marsha (tag m1) for a consultation; Andrew REFERs
McKenzie with a Replaces naming it; McKenzie's INVITE with Replaces reaches Marsha.
"""

from __future__ import annotations

import dataclasses

import pytest

from kemi.core.dialogs import Dialog, DialogState
from kemi.core.policy.model import Policy, Tenant
from kemi.core.replaces import (
    ApprovedRefer,
    InviteReplacesOk,
    ReferReplacesOk,
    check_invite_replaces,
    check_refer_replaces,
    read_invite_replaces,
)
from kemi.core.sip.headers import Replaces
from kemi.core.transfer import Reply

CID = "consult@pc33.atlanta.example.com"
ANDREW, MARSHA, MCKENZIE = "andrew@example.com", "marsha@example.com", "mckenzie@example.com"
EVE = "eve@example.com"
NOW = 1_700_000_000.0

CONSULTATION = Dialog(CID, "a1", "m1", ANDREW, MARSHA, DialogState.CONFIRMED, NOW, NOW)
ENDED = dataclasses.replace(
    CONSULTATION, state=DialogState.TERMINATED, ended_at=NOW + 9, ended_by="bye-callee"
)
EARLY = dataclasses.replace(CONSULTATION, state=DialogState.EARLY)
# Replaces as Marsha must read it: to-tag is hers (the recipient's), from-tag Andrew's.
AT_MARSHA = Replaces(CID, "m1", "a1")
HEADER = f"{CID};to-tag=m1;from-tag=a1"
APPROVED = ApprovedRefer(MCKENZIE, CID, "orig@host", "2")


def invite(values=(HEADER,), found=(CONSULTATION,), sender=MCKENZIE, approved=(APPROVED,),
           method="INVITE"):
    return check_invite_replaces(list(values), method, list(found), sender, list(approved))


def assert_reply(r, code: int, *words: str) -> Reply:
    assert isinstance(r, Reply), r
    assert r.code == code, r
    for w in words:
        assert w in r.warning, r.warning
    return r


# -- REFER with Replaces -------------------------------------------------------------------


def test_refer_naming_a_dialog_referee_does_not_know_passes_marked_unknown():
    ok = check_refer_replaces(AT_MARSHA, [], ANDREW)
    assert ok == ReferReplacesOk(AT_MARSHA, None, 0)
    assert ok.fields()["replaces_dialog"] == "unknown"


@pytest.mark.parametrize("transferor", [ANDREW, MARSHA])
def test_refer_by_a_party_to_the_dialog_passes_naming_it(transferor):
    ok = check_refer_replaces(AT_MARSHA, [CONSULTATION], transferor)
    assert ok == ReferReplacesOk(AT_MARSHA, CONSULTATION, 1)


def test_refer_by_a_non_party_is_403_because_a_replaces_from_the_wire_is_no_authority():
    r = check_refer_replaces(AT_MARSHA, [CONSULTATION], EVE)
    assert_reply(r, 403, "not a party", "a Replaces taken from the wire is no authority")
    assert r.reason == "Forbidden"


def test_refer_naming_an_ended_dialog_is_603():
    r = assert_reply(check_refer_replaces(AT_MARSHA, [ENDED], ANDREW), 603, "ended")
    assert r.reason == "Decline"


def test_refer_by_a_non_party_is_403_even_for_an_ended_dialog_so_it_learns_nothing():
    assert_reply(check_refer_replaces(AT_MARSHA, [ENDED], EVE), 403)


def test_refer_replaces_tags_match_in_either_direction():
    at_andrew = Replaces(CID, "a1", "m1")
    assert check_refer_replaces(at_andrew, [CONSULTATION], ANDREW).dialog == CONSULTATION


def test_refer_ignores_found_dialogs_that_do_not_match():
    other = dataclasses.replace(CONSULTATION, callee_tag="zz", caller=EVE, callee=EVE)
    assert check_refer_replaces(AT_MARSHA, [other], ANDREW).matches == 0


def test_refer_naming_several_dialogs_passes_as_ambiguous_only_for_a_party_to_one():
    glare = Dialog(CID, "m1", "a1", MARSHA, ANDREW, DialogState.CONFIRMED, NOW, NOW)
    ok = check_refer_replaces(AT_MARSHA, [CONSULTATION, glare], ANDREW)
    assert ok == ReferReplacesOk(AT_MARSHA, None, 2) and ok.known == "ambiguous"
    assert_reply(check_refer_replaces(AT_MARSHA, [CONSULTATION, glare], EVE), 403)


def test_the_transfer_record_keeps_the_replaced_dialog():
    ok = check_refer_replaces(Replaces(CID, "m1", "a1", early_only=True), [CONSULTATION], ANDREW)
    assert ok.fields() == {
        "replaces": CID, "replaces_to_tag": "m1", "replaces_from_tag": "a1",
        "replaces_dialog": "known", "replaces_early_only": "1", "replaces_state": "confirmed",
    }


# -- INVITE with Replaces: RFC 3891 section 3 ------------------------------------------------


def test_a_request_without_replaces_is_nothing_to_check():
    assert invite(values=[]) is None
    assert read_invite_replaces([], "INVITE") is None


@pytest.mark.parametrize("values", [[""], [" "], [" , "], ["", ","]])
def test_an_empty_replaces_header_is_400_naming_it(values):
    """Issue 9: `Replaces:` with nothing in it used to reach the dialog lookup as None."""
    r = read_invite_replaces(values, "INVITE")
    assert (r.code, r.reason, r.warning) == (400, "Bad Replaces", "empty Replaces header")


@pytest.mark.parametrize("method", ["UPDATE", "REFER", "NOTIFY"])
def test_replaces_on_a_non_invite_is_400(method):
    assert_reply(invite(method=method), 400, method)


@pytest.mark.parametrize("values", [[HEADER, HEADER], [f"{HEADER}, {HEADER}"]])
def test_more_than_one_replaces_is_400(values):
    r = assert_reply(invite(values=values), 400, "2 Replaces")
    assert r.reason == "Multiple Replaces"


@pytest.mark.parametrize("value", [CID, f"{CID};to-tag=m1", ";to-tag=m1;from-tag=a1"])
def test_a_malformed_replaces_is_400_with_the_parser_reason(value):
    r = assert_reply(invite(values=[value]), 400)
    assert r.reason == "Bad Replaces" and r.warning


def test_no_matching_dialog_is_481():
    r = assert_reply(invite(found=[]), 481, "no dialog")
    assert r.reason == "Call/Transaction Does Not Exist"


def test_a_dialog_that_is_only_trying_matches_nothing_481():
    trying = dataclasses.replace(CONSULTATION, callee_tag="", state=DialogState.TRYING)
    assert_reply(invite(found=[trying]), 481)


def test_several_matching_dialogs_are_481_as_if_none_matched():
    glare = Dialog(CID, "m1", "a1", MARSHA, ANDREW, DialogState.CONFIRMED, NOW, NOW)
    assert_reply(invite(found=[CONSULTATION, glare]), 481, "2 dialogs", "as none")


def test_an_ended_dialog_is_603():
    r = assert_reply(invite(found=[ENDED]), 603, "ended")
    assert r.reason == "Decline"


def test_an_ended_dialog_is_603_before_early_only_and_authority_in_rfc_order():
    assert invite(values=[HEADER + ";early-only"], found=[ENDED], sender=EVE).code == 603


def test_early_only_on_a_confirmed_dialog_is_486():
    r = assert_reply(invite(values=[HEADER + ";early-only"]), 486, "early-only")
    assert r.reason == "Busy Here"


def test_early_only_on_an_early_dialog_replaced_at_its_caller_passes():
    at_andrew = f"{CID};to-tag=a1;from-tag=m1;early-only"
    ok = invite(values=[at_andrew], found=[EARLY], sender=MARSHA)
    assert isinstance(ok, InviteReplacesOk) and ok.dialog == EARLY


def test_an_early_dialog_replaced_at_a_ua_that_did_not_originate_it_is_481():
    assert_reply(invite(found=[EARLY]), 481, "did not originate")


def test_a_sender_neither_party_nor_approved_transferee_is_403():
    """The hijack: a third UA copies the consultation's identifiers off the wire."""
    r = assert_reply(invite(sender=EVE), 403, "neither a party", "no authority")
    assert r.reason == "Forbidden"


def test_the_transferee_of_an_approved_refer_naming_the_dialog_passes_tied_to_it():
    assert invite() == InviteReplacesOk(CONSULTATION, APPROVED, by_party=False)


@pytest.mark.parametrize(
    "approved",
    [ApprovedRefer(EVE, CID, "orig@host", "2"), ApprovedRefer(MCKENZIE, "other@host", "o", "1")],
    ids=["another-transferee", "another-dialog"],
)
def test_an_approved_refer_for_another_transferee_or_dialog_gives_no_authority(approved):
    assert_reply(invite(approved=[approved]), 403)


@pytest.mark.parametrize("sender", [ANDREW, MARSHA])
def test_a_party_may_replace_its_own_dialog(sender):
    assert invite(sender=sender, approved=[]) == InviteReplacesOk(CONSULTATION, None, True)


def test_two_approved_refers_naming_the_dialog_authorise_but_tie_to_neither():
    second = dataclasses.replace(APPROVED, refer_id="3")
    ok = invite(approved=[APPROVED, second])
    assert ok == InviteReplacesOk(CONSULTATION, None, by_party=False)


def test_an_empty_sender_is_no_party_and_no_transferee():
    assert_reply(invite(sender="", approved=[dataclasses.replace(APPROVED, transferee="")]), 403)


# -- policy: allow_replaces and replaces_scope ----------------------------------------------
# Andrew, Marsha and McKenzie are example.com (tenant "home"); Gina is globex.example.

GINA = "gina@globex.example"
HOME = Tenant("home", priority=10, match_domain="example.com", replaces_scope="tenant", id=2)
GLOBEX = Tenant("globex", priority=20, match_domain="globex.example", id=3)
PBX = Tenant("pbx", priority=5, match_source="10.0.0.0/8", allow_replaces=False, id=4)
POLICY = Policy.build([HOME, GLOBEX, PBX, Tenant("default", priority=2147483647, id=1)], [], [])
CROSS = Dialog("x@host", "a2", "g2", ANDREW, GINA, DialogState.CONFIRMED, NOW, NOW)
CROSS_AT_GINA = Replaces("x@host", "g2", "a2")
CROSS_HEADER = "x@host;to-tag=g2;from-tag=a2"


def test_refer_scope_tenant_denies_a_dialog_with_another_tenants_party_naming_the_setting():
    r = check_refer_replaces(CROSS_AT_GINA, [CROSS], ANDREW, POLICY, HOME)
    assert_reply(r, 403, "Replaces across tenants", GINA, "belongs to tenant globex",
                 "denied by tenant home: replaces_scope tenant")
    assert r.reason == "Forbidden"
    assert "replaces_scope tenant" in r.headers()


def test_refer_scope_tenant_lets_a_dialog_within_the_tenant_pass():
    ok = check_refer_replaces(AT_MARSHA, [CONSULTATION], ANDREW, POLICY, HOME)
    assert ok == ReferReplacesOk(AT_MARSHA, CONSULTATION, 1)


def test_refer_scope_any_or_no_policy_lets_a_cross_tenant_dialog_pass():
    any_scope = dataclasses.replace(HOME, replaces_scope="any")
    assert check_refer_replaces(CROSS_AT_GINA, [CROSS], ANDREW, POLICY, any_scope).dialog == CROSS
    assert check_refer_replaces(CROSS_AT_GINA, [CROSS], ANDREW).dialog == CROSS


def test_refer_scope_comes_after_authority_so_a_non_party_learns_nothing():
    r = check_refer_replaces(CROSS_AT_GINA, [CROSS], EVE, POLICY, HOME)
    assert_reply(r, 403, "not a party")
    assert "tenant" not in r.warning


def test_refer_scope_for_an_unknown_dialog_is_left_to_its_invite():
    assert check_refer_replaces(CROSS_AT_GINA, [], ANDREW, POLICY, HOME).matches == 0


def scoped_invite(values=(HEADER,), found=(CONSULTATION,), sender=MCKENZIE, approved=(APPROVED,),
                  source="192.0.2.9"):
    return check_invite_replaces(list(values), "INVITE", list(found), sender, list(approved),
                                 policy=POLICY, source_ip=source)


def test_invite_scope_tenant_denies_a_dialog_with_another_tenants_party():
    approved = ApprovedRefer(MCKENZIE, "x@host", "orig@host", "2")
    r = scoped_invite([CROSS_HEADER], [CROSS], approved=[approved])
    assert_reply(r, 403, "Replaces across tenants", GINA,
                 "denied by tenant home: replaces_scope tenant")


def test_invite_scope_tenant_lets_a_dialog_within_the_tenant_pass():
    assert scoped_invite() == InviteReplacesOk(CONSULTATION, APPROVED, by_party=False)


def test_invite_scope_is_the_senders_tenant():
    """Gina (globex, scope any) may replace her own dialog with a home party."""
    r = scoped_invite([CROSS_HEADER], [CROSS], sender=GINA, approved=[])
    assert r == InviteReplacesOk(CROSS, None, by_party=True)


def test_invite_from_a_tenant_with_replaces_off_is_403_before_the_dialog_is_judged():
    for found in ([CONSULTATION], [], [ENDED]):  # known, unknown (481), ended (603)
        r = scoped_invite(found=found, source="10.1.2.3")
        assert_reply(r, 403, "denied by tenant pbx: allow_replaces off")
        assert r.reason == "Replaces not allowed"


def test_invite_without_replaces_or_with_a_bad_one_is_not_a_policy_matter():
    assert scoped_invite(values=(), source="10.1.2.3") is None
    assert_reply(scoped_invite(values=("x;to-tag=1",), source="10.1.2.3"), 400)


# -- authority rests on where a message came from (issue 9 item 5) -------------------------

SRC_ANDREW, SRC_MARSHA, SRC_EVE = "192.0.2.1:5060", "192.0.2.2:5060", "203.0.113.9:5060"
KNOWN = dataclasses.replace(CONSULTATION, caller_src=SRC_ANDREW, callee_src=SRC_MARSHA)


@pytest.mark.parametrize("sender", [ANDREW, MARSHA])
def test_a_forged_from_naming_a_party_is_no_party_from_another_address(sender):
    """Eve sets From to a party's address (any spelling: the AOR is what is compared, so
    a port, sips: or %61ndrew change nothing): the index knows where that party sends
    from, and Eve is not there."""
    r = check_invite_replaces([HEADER], "INVITE", [KNOWN], sender, [], source=SRC_EVE)
    assert_reply(r, 403, "neither a party", "no authority")


def test_a_party_sending_from_its_own_address_replaces_its_dialog():
    ok = check_invite_replaces([HEADER], "INVITE", [KNOWN], ANDREW, [], source=SRC_ANDREW)
    assert isinstance(ok, InviteReplacesOk) and ok.by_party


def test_an_authenticated_party_may_send_from_elsewhere():
    ok = check_invite_replaces([HEADER], "INVITE", [KNOWN], ANDREW, [], source=SRC_EVE,
                               auth_user="andrew")
    assert isinstance(ok, InviteReplacesOk) and ok.by_party
    r = check_invite_replaces([HEADER], "INVITE", [KNOWN], ANDREW, [], source=SRC_EVE,
                              auth_user="eve")
    assert_reply(r, 403, "neither a party")


def test_the_transferee_of_an_approved_refer_is_known_by_its_address_too():
    approved = dataclasses.replace(APPROVED, transferee_src="198.51.100.7:5060")
    ok = check_invite_replaces([HEADER], "INVITE", [KNOWN], MCKENZIE, [approved],
                               source="198.51.100.7:5060")
    assert isinstance(ok, InviteReplacesOk) and ok.transfer == approved
    r = check_invite_replaces([HEADER], "INVITE", [KNOWN], MCKENZIE, [approved],
                              source=SRC_EVE)
    assert_reply(r, 403, "nor the transferee of an approved REFER")


def test_a_refer_with_a_forged_from_names_no_dialog_it_is_party_to():
    r = check_refer_replaces(AT_MARSHA, [KNOWN], ANDREW, source=SRC_EVE)
    assert_reply(r, 403, "not a party")
    assert isinstance(check_refer_replaces(AT_MARSHA, [KNOWN], ANDREW, source=SRC_ANDREW),
                      ReferReplacesOk)


def test_an_in_dialog_refer_must_come_from_its_partys_address():
    from kemi.core.replaces import ReferDialog, check_refer_dialog

    ok = check_refer_dialog([KNOWN], "a1", SRC_ANDREW)
    assert ok == ReferDialog(KNOWN, ANDREW, MARSHA, SRC_MARSHA)
    assert_reply(check_refer_dialog([KNOWN], "a1", SRC_EVE), 403,
                 f"REFER from {SRC_EVE}, but {ANDREW} in this dialog sends from {SRC_ANDREW}")
    assert isinstance(check_refer_dialog([KNOWN], "a1", SRC_EVE, auth_user="andrew"),
                      ReferDialog)
    assert_reply(check_refer_dialog([], "a1", SRC_ANDREW), 481, "no dialog")
    assert_reply(check_refer_dialog([dataclasses.replace(KNOWN, state=DialogState.TERMINATED)],
                                    "a1", SRC_ANDREW), 481, "ended")


def test_a_record_from_before_sources_were_kept_falls_back_to_the_address():
    ok = check_invite_replaces([HEADER], "INVITE", [CONSULTATION], ANDREW, [], source=SRC_EVE)
    assert isinstance(ok, InviteReplacesOk)  # the index has no source for this dialog
