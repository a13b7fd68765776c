"""config-examples/kamailio/referee_kemi.py, the file app_python3 loads: with only
REFEREE_VENV set it finds referee in that venv, whatever Python minor version the venv
was made with, and hands Kamailio mod_init.  (Every e2e test loads it inside a real
Kamailio too; this one runs it under /usr/bin/python3 -I, nothing else on the path.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kemi.cli.demo.kamailio_node import CONFIGS

LOADER = CONFIGS / "referee_kemi.py"


def test_the_loader_finds_referee_in_the_venv_named_by_referee_venv(tmp_path: Path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "KSR.py").write_text("")  # app_python3's module, absent outside Kamailio
    code = (f"import sys, runpy; sys.path.insert(0, {str(stub)!r}); "
            f"ns = runpy.run_path({str(LOADER)!r}); "
            "import kemi; print(ns['mod_init'].__module__, kemi.__file__)")
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", code], cwd=tmp_path,
                         env={"REFEREE_VENV": sys.prefix, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    module, kemi_file = out.stdout.split()
    assert module == "kemi.kamailio"
    assert Path(kemi_file).resolve().parent.parent == Path(__file__).resolve().parents[3]


def test_without_referee_venv_referee_is_not_found(tmp_path: Path):
    """The venv is the only place the loader looks: no REFEREE_VENV, no referee."""
    out = subprocess.run(["/usr/bin/python3", "-I", str(LOADER)], cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "No module named 'kemi'" in out.stderr


def test_the_loader_names_no_python_version():
    assert "python3." not in LOADER.read_text()
