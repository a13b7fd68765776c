"""`referee asterisk run` / `check`, run for real (subprocess) against an AMI replay peer
and a private redis-server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import transcript
from tests.support.ami_replay import ReplayPeer

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, redis_url: str, ami_port: int, agi_port: int) -> Path:
    path = tmp_path / "referee.toml"
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n\n'
        f'[asterisk]\nname = "ast1"\nami_port = {ami_port}\nami_user = "referee"\n'
        f'ami_secret = "s3cret"\nagi_host = "127.0.0.1"\nagi_port = {agi_port}\n'
    )
    return path


def _referee(*args: str, **kw) -> list[str]:
    return [sys.executable, "-m", "kemi.cli", *args]


def test_check_logs_in_and_reports(tmp_path, redis_server):
    # The recordings hold no CoreSettings/ShowDialPlan: the replay answers them with an
    # error, which check must report as unknown / missing (exit 1), not crash on.
    peer = ReplayPeer(transcript.ami("a-target-answers"), set(), gate_timeout=2).start()
    try:
        cfg = _config(tmp_path, redis_server.url, peer.port, _free_port())
        p = subprocess.run(_referee("asterisk", "check", "--config", str(cfg)), cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    finally:
        peer.stop()
    assert "logged in as 'referee' (Asterisk Call Manager/9.0.0)" in p.stdout
    assert "Asterisk version: unknown" in p.stdout
    assert "transfer context 'referee-transfer': MISSING" in p.stdout
    assert p.returncode == 1
    assert peer.received[0].action == "Login" and peer.received[0].get("Username") == "referee"


def test_check_unreachable(tmp_path, redis_server):
    cfg = _config(tmp_path, redis_server.url, _free_port(), _free_port())
    p = subprocess.run(_referee("--config", str(cfg), "asterisk", "check"), cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "AMI 127.0.0.1:" in p.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_run_serves_and_stops_on_sigterm(tmp_path, redis_server):
    peer = ReplayPeer(transcript.ami("a-target-answers"), set(), gate_timeout=2).start()
    agi_port = _free_port()
    cfg = _config(tmp_path, redis_server.url, peer.port, agi_port)
    proc = subprocess.Popen(_referee("asterisk", "run", "--config", str(cfg)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 15
        listening = False
        while time.monotonic() < deadline and not listening:
            try:
                socket.create_connection(("127.0.0.1", agi_port), timeout=0.5).close()
                listening = True
            except OSError:
                time.sleep(0.1)
        assert listening, "FastAGI port never listened"
        while time.monotonic() < deadline and not peer.received:
            time.sleep(0.05)
        assert peer.received and peer.received[0].action == "Login"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peer.stop()
    assert proc.returncode == 0, err
    assert "AMI logged in" in err and "stopped" in err
