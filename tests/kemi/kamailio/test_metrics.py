"""kemi.kamailio.metrics: a counter is one statistics call; a missing statistics module
or a name that is not declared costs a log line, never the route."""

from __future__ import annotations

from tests.kemi.kamailio.conftest import Recorder


def test_a_declared_counter_is_one_update_stat(ksr):
    ksr.statistics = Recorder()
    from kemi.kamailio import metrics

    metrics.bump("refers_received", 2)
    assert ksr.statistics.calls == [("update_stat", "referee_refers_received", 2)]


def test_an_unknown_name_is_logged_and_nothing_raises(ksr):
    ksr.statistics = Recorder()
    from kemi.kamailio import metrics

    metrics.bump("refers_recieved")
    assert ksr.statistics.calls == []
    assert any("no counter named 'refers_recieved'" in t for t in ksr.logged)


def test_without_the_statistics_module_counters_go_quiet_after_one_warning(ksr):
    from kemi.kamailio import metrics  # the stand-in KSR has no statistics

    metrics.bump("refers_received")
    metrics.bump("refers_relayed")
    assert sum("counters off in this process" in t for t in ksr.logged) == 1
