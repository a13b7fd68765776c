"""kemi.storage.persistence: when the Redis referee writes to would lose transfers in a crash."""

from __future__ import annotations

from kemi.storage.persistence import aof_enabled, persistence_warning

OFF = "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:12\r\naof_enabled:0\r\n"
ON = "# Persistence\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n"


def test_the_append_only_file_is_read_from_info_persistence():
    assert aof_enabled(OFF) is False and aof_enabled(ON) is True
    assert aof_enabled("# Persistence\r\nloading:0\r\n") is None


def test_aof_off_is_a_warning_that_says_what_to_set():
    warning = persistence_warning("10.0.0.5:6379", OFF)
    assert "10.0.0.5:6379 has appendonly off" in warning
    assert "appendonly yes" in warning and "appendfsync everysec" in warning


def test_aof_on_or_unknown_is_no_warning():
    assert persistence_warning("r", ON) is None
    assert persistence_warning("r", "") is None
