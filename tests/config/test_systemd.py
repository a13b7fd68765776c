"""config-examples/systemd: the unit for `referee asterisk run` and the tmpfiles.d entry,
checked by systemd's own tools (systemd-analyze verify, systemd-tmpfiles --root) and
against referee's defaults, so what an operator installs starts what the README says."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kemi import config
from kemi.cli.demo.kamailio_node import REPO

SYSTEMD = REPO / "config-examples" / "systemd"
UNIT = SYSTEMD / "referee-asterisk.service"
LOG_UNIT = SYSTEMD / "referee-log.service"
TMPFILES = SYSTEMD / "referee.tmpfiles.conf"
VENV_REFEREE = "/opt/referee/.venv/bin/referee"


def _unit(path: Path = UNIT) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive in systemd
    unit.read_string(path.read_text())
    return unit


def test_the_unit_runs_the_asterisk_side_restarts_it_and_reads_referees_settings():
    service = _unit()["Service"]
    assert shlex.split(service["ExecStart"]) == [VENV_REFEREE, "asterisk", "run"]
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert service["Environment"] == f"REFEREE_CONFIG={config.DEFAULT_PATH}"
    assert service["EnvironmentFile"] == "-/etc/default/referee"  # optional ("-")
    assert service["User"] and service["User"] != "root"
    default = dict(line.split("=", 1) for line in (SYSTEMD / "referee.default").read_text()
                   .splitlines() if line and not line.startswith("#"))
    assert default == {"REFEREE_CONFIG": config.DEFAULT_PATH}


def test_the_log_writers_unit_runs_it_where_it_may_write_the_database():
    service = _unit(LOG_UNIT)["Service"]
    assert shlex.split(service["ExecStart"]) == [VENV_REFEREE, "log", "run"]
    assert service["Restart"] == "on-failure"
    assert service["ReadWritePaths"] == str(Path(config.Settings().policy_db).parent)


@pytest.mark.parametrize("unit", [UNIT, LOG_UNIT], ids=lambda p: p.name)
def test_systemd_accepts_the_unit(tmp_path: Path, unit: Path):
    """With ExecStart pointed at this checkout's venv (verify wants the binary to exist)."""
    referee = Path(sys.prefix) / "bin" / "referee"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(VENV_REFEREE, str(referee)))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_the_command_the_unit_runs_exists():
    referee = Path(sys.prefix) / "bin" / "referee"
    out = subprocess.run([str(referee), "asterisk", "run", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--config" in out.stdout


def test_tmpfiles_makes_the_journal_and_policy_directories_for_kamailio(tmp_path: Path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):  # users are resolved inside --root
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    out = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(TMPFILES)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    defaults = config.Settings()
    for path in (Path(defaults.kamailio.journal_dir), Path(defaults.policy_db).parent):
        made = root / path.relative_to("/")
        assert made.is_dir(), path
        assert made.owner() == "kamailio" and oct(made.stat().st_mode & 0o777) == "0o750"
