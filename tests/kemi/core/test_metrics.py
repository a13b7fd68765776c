"""kemi.core.metrics: the counters' names, the refusal pair and the outcome of a final
transfer -- and config-examples/kamailio/referee-stats.cfg declaring exactly them."""

from __future__ import annotations

import re

import pytest

from kemi.cli.demo.kamailio_node import CONFIGS
from kemi.core import metrics


def test_a_refusal_counts_its_code_and_what_refused_it():
    assert metrics.refused(403, "policy") == ("refers_refused_403", "refers_refused_policy")
    assert metrics.refused(415, "syntax") == ("refers_refused_other", "refers_refused_syntax")
    with pytest.raises(AssertionError):
        metrics.refused(400, "bad luck")


@pytest.mark.parametrize("state, sipfrag, name", [
    ("succeeded", "200 OK", "transfers_succeeded"),
    ("failed", "486 Busy Here", "transfers_failed_4xx"),
    ("failed", "503 Service Unavailable", "transfers_failed_5xx"),
    ("failed", "603 Decline", "transfers_failed_6xx"),
    ("failed", "", "transfers_failed_other"),
    ("expired", "", "transfers_expired"),
    ("rejected", "", "transfers_rejected"),
])
def test_a_final_transfer_is_counted_by_outcome_and_sipfrag_class(state, sipfrag, name):
    assert metrics.outcome(state, sipfrag) == name and name in metrics.NAMES


@pytest.mark.parametrize("event, result, final, new, fields, names", [
    ("notify-trying", "applied", False, "trying", {}, ["notifies_applied"]),
    ("notify-trying", "ignored", False, "ringing", {}, ["notifies_applied"]),
    ("notify-success", "applied", True, "succeeded", {"final_sipfrag": "200 OK"},
     ["notifies_applied", "transfers_succeeded"]),
    ("notify-failure", "illegal", False, "refer-seen", {}, ["events_illegal"]),
    ("invite-failed", "applied", True, "failed", {"invite_reply": "486 Busy"},
     ["transfers_failed_4xx"]),
    ("refer-accepted", "applied", False, "accepted", {}, []),
    ("expiry", "applied", True, "expired", {}, ["transfers_expired"]),
])
def test_an_event_the_store_took_counts_what_it_decided(event, result, final, new, fields,
                                                       names):
    assert metrics.recorded(event, result, final, new, fields) == names


def test_the_kamailio_declarations_are_exactly_the_names():
    text = (CONFIGS / "referee-stats.cfg").read_text()
    declared = re.findall(r'modparam\("statistics", "variable", "referee_(\w+)(/no_reset)?"\)',
                          text)
    assert [name for name, _ in declared] == list(metrics.NAMES)
    # Counters never reset; the gauge is reset by the sweep before it is set.
    assert {name for name, flag in declared if not flag} == {"transfers_live"}


def test_both_example_cfgs_include_the_declarations():
    for cfg in ("kamailio.cfg", "kamailio-native.cfg"):
        assert 'include_file "referee-stats.cfg"' in (CONFIGS / cfg).read_text()
