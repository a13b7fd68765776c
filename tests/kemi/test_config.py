"""referee.toml: the shipped example loads as is, and a setting that cannot be used stops
the start with the file, the key and the fault named (kemi/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi import config

EXAMPLE = Path(__file__).resolve().parents[2] / "config-examples" / "kamailio" / "referee.toml"


def test_the_example_file_loads_and_documents_every_setting():
    settings = config.load(str(EXAMPLE))
    assert settings.anchored.mode == "accept" and settings.asterisk.agi_port == 4573
    text = EXAMPLE.read_text()
    for section in ("redis", "kamailio", "transfer", "anchored", "asterisk"):
        cls = type(getattr(settings, section))
        for name in cls.__dataclass_fields__:
            assert f"\n{name} = " in text or f"\n# {name} = " in text, (section, name)


@pytest.mark.parametrize("text, fault", [
    ('[anchored]\nasterisk = { pbx1 = "127.0.0.1" }', 'asterisk.pbx1 = \'127.0.0.1\': expected'),
    ('[anchored]\nasterisk = { pbx1 = "h:70000" }', "port 1-65535"),
    ('[anchored]\nasterisk = { "pbx 1" = "h:5060" }', "a name is 1-64 letters"),
    ('[anchored]\nmode = "maybe"', "mode = 'maybe': must be 'accept' or 'relay'"),
    ('[anchored]\ndial = "PJSIP/{number}"', "only {user}, {host} and {uri}"),
    ('[anchored]\nnode = "a{b}"', "node = 'a{b}': must be 1-64"),
    ("[asterisk]\nami_port = 0", "ami_port = 0: must be a port"),
    ('[asterisk]\nagi_port = "4573"', "agi_port = '4573': must be a port"),
    ('[asterisk]\nmetrics_port = 70000', "metrics_port = 70000: must be a port, 1-65535, "
                                         "or 0 (off)"),
    ('[asterisk]\nname = ""', "name = '': must be 1-64"),
    ('[asterisk]\nreplaces_predial = "ctx^s"', "must be context^exten^priority"),
    ("[asterisk]\nagi_session_limit_s = 20.0\nrelayed_timeout_s = 30",
     "agi_session_limit_s (20) must exceed relayed_timeout_s (30)"),
    ("[asterisk]\nrelease_after_s = 5", "unknown key 'release_after_s'"),
    ('[redis]\nurl = "http://x"', "[redis] url"),
    ("[redis]\ntimeout_ms = 0", "timeout_ms = 0: must be a whole number of ms, 1-60000"),
    ('[redis]\nbreaker_failures = "x"', "breaker_failures = 'x': must be a whole number"),
    ("[redis]\nbreaker_failures = 0", "breaker_failures = 0: must be a whole number"),
    ("[redis]\nbreaker_open_s = -1", "breaker_open_s = -1: must be seconds, 0.01-3600"),
    ('[kamailio]\nredis_fail_mode = "sometimes"', "must be 'open' or 'closed'"),
])
def test_a_setting_that_cannot_be_used_is_refused_naming_key_and_value(text, fault):
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, "referee.toml")
    assert str(err.value).startswith("referee.toml"), err.value
    assert fault in str(err.value), err.value
