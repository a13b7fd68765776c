"""`referee check --cfg`: the htables and rtimers referee needs of an operator's Kamailio
cfg, read as kamailio's preprocessor reads it -- on the example cfgs as shipped, and on
copies with a piece taken out, as an operator's merged cfg would lack it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kemi.cli import cfg_check

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "config-examples" / "kamailio"
REFEREE = str(Path(sys.prefix) / "bin" / "referee")


def copy_without(tmp_path: Path, cfg: str, *needles: str) -> Path:
    """The example cfgs copied, `cfg` with every line containing a needle removed."""
    for f in EXAMPLES.glob("*.cfg"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / cfg
    lines = path.read_text().splitlines()
    kept = [ln for ln in lines if not any(n in ln for n in needles)]
    assert len(kept) < len(lines), needles  # the needle was there
    path.write_text("\n".join(kept) + "\n")
    return path


@pytest.mark.parametrize("cfg", ["kamailio.cfg", "kamailio-native.cfg"])
def test_the_example_cfgs_have_everything_referee_needs(cfg):
    lines, ok = cfg_check.judge(cfg_check.read(EXAMPLES / cfg, {}))
    assert ok, lines
    assert not [ln for ln in lines if "MISSING" in ln or ln.startswith("warning")], lines
    for name in ("referee", "referee_seq", "referee_held", "referee_later", "referee_ans"):
        assert f"cfg: htable {name}: declared" in lines
    assert any(ln.startswith("cfg: rtimer referee: runs route") for ln in lines)
    assert any(ln.startswith("cfg: rtimer referee_order: runs route") for ln in lines)


def test_anchored_pieces_are_checked_where_the_defines_wire_them():
    plain = cfg_check.read(EXAMPLES / "kamailio-native.cfg", {})
    assert "referee_ast" not in plain.htables  # behind #!ifdef WITH_ANCHORED
    wired = cfg_check.read(EXAMPLES / "kamailio-native.cfg",
                           cfg_check.defines_from(["WITH_ANCHORED"]))
    lines, ok = cfg_check.judge(wired)
    assert ok, lines
    assert "cfg: htable referee_x: declared" in lines
    assert any(ln.startswith("cfg: rtimer referee_progress: runs route") for ln in lines)


def test_without_ordering_tables_notifies_go_unordered_a_warning(tmp_path):
    path = copy_without(tmp_path, "kamailio-native.cfg", "referee_seq=>")
    lines, ok = cfg_check.judge(cfg_check.read(path, {}))
    assert ok  # the node still works
    [said] = [ln for ln in lines if "referee_seq" in ln]
    assert said.startswith("warning:") and "unordered" in said


def test_without_the_sweep_timer_the_cfg_fails(tmp_path):
    path = copy_without(tmp_path, "kamailio-native.cfg", "timer=referee;route")
    lines, ok = cfg_check.judge(cfg_check.read(path, {}))
    assert not ok
    [said] = [ln for ln in lines if "rtimer referee:" in ln]
    assert "MISSING" in said and "never replayed" in said


def test_ordering_without_its_timer_would_hold_notifies_for_good(tmp_path):
    path = copy_without(tmp_path, "kamailio.cfg", "timer=referee_order")
    lines, ok = cfg_check.judge(cfg_check.read(path, {}))
    assert not ok
    assert any("referee_order: MISSING" in ln and "never resumed" in ln for ln in lines)


def test_a_table_declared_only_in_an_inactive_branch_is_not_declared(tmp_path):
    path = tmp_path / "k.cfg"
    path.write_text('#!define SWEEP "name=referee;interval=2;"\n'
                    'loadmodule "app_python3.so"\n'
                    '#!ifdef NOT_GIVEN\n'
                    'modparam("htable", "htable", "referee=>size=8;")\n'
                    '#!else\n'
                    'modparam("htable", "htable", "other=>size=8;")\n'
                    '#!endif\n'
                    '/* modparam("htable", "htable", "referee_seq=>size=8;")\n*/\n'
                    'modparam("rtimer", "timer", SWEEP)\n'
                    'modparam("rtimer", "exec", "timer=referee;route=SWEEP_ROUTE")\n')
    cfg = cfg_check.read(path, {})
    assert cfg.htables == {"other"} and cfg.timers == {"referee"}
    assert cfg_check.read(path, {"NOT_GIVEN": ""}).htables == {"referee"}


def test_the_command_says_each_piece_and_exits_1_when_one_is_missing(tmp_path):
    ok = subprocess.run([REFEREE, "check", "--cfg", str(EXAMPLES / "kamailio.cfg")],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "cfg: htable referee: declared" in ok.stdout
    broken = copy_without(tmp_path, "kamailio.cfg", "referee=>size")
    bad = subprocess.run([REFEREE, "check", "--cfg", str(broken)], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 1
    assert "cfg: htable referee: MISSING" in bad.stdout
    gone = subprocess.run([REFEREE, "check", "--cfg", str(tmp_path / "none.cfg")],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "UNREADABLE" in gone.stdout


def test_an_include_loop_is_said_not_followed_for_ever(tmp_path):
    (tmp_path / "a.cfg").write_text('include_file "b.cfg"\n')
    (tmp_path / "b.cfg").write_text('include_file "a.cfg"\n')
    with pytest.raises(cfg_check.CfgError, match="include_file loop"):
        cfg_check.read(tmp_path / "a.cfg", {})
    out = subprocess.run([REFEREE, "check", "--cfg", str(tmp_path / "a.cfg")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "UNREADABLE" in out.stdout and not out.stderr
