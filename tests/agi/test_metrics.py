"""agi.metrics: `referee asterisk run`'s counters as Prometheus text -- rendered from what
the controller and the FastAGI server know, and served on [asterisk] metrics_port by the
real command against a recorded Asterisk."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from agi.metrics import render
from tests.agi.test_cli import ROOT, _config, _free_port, _referee
from tests.support import transcript
from tests.support.ami_replay import ReplayPeer


class Controller:
    def __init__(self, logins=2, jobs=5, results=None, ready=True):
        self.logins, self.jobs_seen = logins, jobs
        self.results = collections.Counter(results or {})
        self.ready = threading.Event()
        if ready:
            self.ready.set()


class Server:
    sessions_total, sessions_failed, sessions_cut = 7, 1, 0

    def active_sessions(self):
        return 2


def _values(text: str) -> dict[str, int]:
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_the_page_says_what_the_controller_and_the_agi_server_know():
    page = render(Controller(results={"moved": 4, "reconnected": 1, "recalled": 1,
                                      "a-released": 2}), Server())
    v = _values(page)
    assert v["referee_asterisk_ami_logged_in"] == 1
    assert v["referee_asterisk_ami_logins_total"] == 2
    assert v["referee_asterisk_ami_reconnects_total"] == 1
    assert v["referee_asterisk_jobs_taken_total"] == 5
    assert v["referee_asterisk_moves_total"] == 4
    assert v["referee_asterisk_reconnects_total"] == 1
    assert v["referee_asterisk_recalls_total"] == 1
    assert v['referee_asterisk_results_total{result="a-released"}'] == 2
    assert v["referee_asterisk_agi_sessions_live"] == 2
    assert v["referee_asterisk_agi_sessions_total"] == 7
    assert "# TYPE referee_asterisk_agi_sessions_live gauge" in page


def test_a_controller_not_logged_in_says_so_and_nothing_else_is_invented():
    v = _values(render(Controller(logins=0, jobs=0, ready=False), None))
    assert v["referee_asterisk_ami_logged_in"] == 0
    assert v["referee_asterisk_ami_reconnects_total"] == 0
    assert not any(k.startswith("referee_asterisk_agi_") for k in v)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_run_serves_its_metrics_on_the_configured_port(tmp_path, redis_server):
    peer = ReplayPeer(transcript.ami("a-target-answers"), set(), gate_timeout=2).start()
    metrics_port = _free_port()
    cfg = _config(tmp_path, redis_server.url, peer.port, _free_port())
    cfg.write_text(cfg.read_text() + f"metrics_port = {metrics_port}\n")
    proc = subprocess.Popen(_referee("asterisk", "run", "--config", str(cfg)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline, page = time.monotonic() + 15, ""
        while time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(url, timeout=1).read().decode()
                if _values(page)["referee_asterisk_ami_logged_in"] == 1:
                    break
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        v = _values(page)
        assert v["referee_asterisk_ami_logged_in"] == 1
        assert v["referee_asterisk_ami_logins_total"] == 1
        assert v["referee_asterisk_jobs_taken_total"] == 0
        assert v["referee_asterisk_agi_sessions_live"] == 0
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=2)
        assert err.value.code == 404
        proc.send_signal(signal.SIGTERM)
        _out, errors = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peer.stop()
    assert proc.returncode == 0, errors
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in errors
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=0.5).close()


def test_a_metrics_port_that_is_taken_is_a_clear_failure(tmp_path, redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _config(tmp_path, redis_server.url, _free_port(), _free_port())
        cfg.write_text(cfg.read_text() + f"metrics_port = {port}\n")
        p = subprocess.run(_referee("asterisk", "run", "--config", str(cfg)), cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and f"metrics cannot listen on 127.0.0.1:{port}" in p.stderr
