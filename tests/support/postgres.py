"""A throwaway PostgreSQL 15 for the tests (Debian's postgresql, installed by .ci/setup):
its own data directory and Unix socket in a temp dir, run as 'postgres' when we are root,
stopped when the module's tests are done."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_dsn():
    """A throwaway PostgreSQL 15 in a temp dir (run as 'postgres' when we are root)."""
    import psycopg  # noqa: F401 - part of the test extra; a missing one must fail, not skip
    initdb = shutil.which("initdb", path=str(PG_BIN)) or shutil.which("initdb")
    pg_ctl = shutil.which("pg_ctl", path=str(PG_BIN)) or shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.fail("PostgreSQL server binaries not installed (run .ci/setup)")
    prefix: list[str] = []
    top = tempfile.mkdtemp(prefix="referee-pg-")
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(top, "postgres")
    data, port = os.path.join(top, "data"), _free_port()
    run = dict(check=True, capture_output=True, timeout=60)
    subprocess.run([*prefix, initdb, "-D", data, "-A", "trust", "-U", "referee", "--no-sync"],
                   **run)
    subprocess.run([*prefix, pg_ctl, "-D", data, "-l", os.path.join(top, "log"), "-w", "-o",
                    f"-k {top} -p {port} -c listen_addresses='' -c fsync=off", "start"], **run)
    try:
        yield f"postgresql://referee@/postgres?host={top}&port={port}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)
