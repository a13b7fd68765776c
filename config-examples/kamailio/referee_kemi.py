"""The file app_python3 loads: it only wires the Python path and hands Kamailio referee.

Set REFEREE_VENV to the virtualenv referee is installed in (made with /usr/bin/python3,
the interpreter app_python3 links); REFEREE_CONFIG names referee.toml.
"""

import os
import site

_venv = os.environ.get("REFEREE_VENV")
if _venv:
    site.addsitedir(os.path.join(_venv, "lib", "python3.11", "site-packages"))

from kemi.kamailio import mod_init  # noqa: E402,F401  (app_python3 calls mod_init())
