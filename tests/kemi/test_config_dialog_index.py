"""[kamailio] dialog_index: off unless asked for, and only a boolean turns it on."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi import config

EXAMPLE = Path(__file__).resolve().parents[2] / "config-examples" / "kamailio" / "referee.toml"


def test_dialog_index_is_off_by_default_and_in_the_example():
    assert config.parse("").kamailio.dialog_index is False
    assert config.load(str(EXAMPLE)).kamailio.dialog_index is False


def test_dialog_index_true_turns_it_on():
    assert config.parse("[kamailio]\ndialog_index = true\n").kamailio.dialog_index is True


def test_a_non_boolean_dialog_index_is_refused_with_its_key():
    with pytest.raises(config.ConfigError, match="dialog_index must be true or false"):
        config.parse('[kamailio]\ndialog_index = "yes"\n')
