"""The file app_python3 loads: it only wires the Python path and hands Kamailio referee.

Set REFEREE_VENV to the virtualenv referee is installed in (made with /usr/bin/python3,
the interpreter app_python3 links); REFEREE_CONFIG names referee.toml.
"""

import os
import site
import sysconfig

_venv = os.environ.get("REFEREE_VENV")
if _venv:
    # The venv's site-packages for the interpreter app_python3 runs (lib/pythonX.Y/...);
    # "venv": Debian's default scheme would name /usr/local-style dist-packages.
    site.addsitedir(sysconfig.get_path("purelib", "venv", vars={"base": _venv, "platbase": _venv}))

from kemi.kamailio import mod_init  # noqa: E402,F401  (app_python3 calls mod_init())
