"""`referee asterisk run`'s own counters, served as Prometheus text on [asterisk]
metrics_host:metrics_port (loopback by default; port 0: not served).

Read from the controller (agi.ami) and the FastAGI server (agi.fastagi) at each scrape:
nothing is counted twice, and a scrape never blocks either of them.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("referee.asterisk")
PREFIX = "referee_asterisk_"


def render(controller: Any, server: Any | None) -> str:
    """The metrics page (text exposition format 0.0.4)."""
    out: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[tuple[str, int]]) -> None:
        out.append(f"# HELP {PREFIX}{name} {text}")
        out.append(f"# TYPE {PREFIX}{name} {kind}")
        out.extend(f"{PREFIX}{name}{labels} {value}" for labels, value in samples)

    logins = controller.logins
    metric("ami_logged_in", "gauge", "1 while the AMI session is logged in",
           [("", int(controller.ready.is_set()))])
    metric("ami_logins_total", "counter", "AMI logins since start", [("", logins)])
    metric("ami_reconnects_total", "counter", "AMI logins after the first",
           [("", max(logins - 1, 0))])
    metric("jobs_taken_total", "counter", "move jobs read from the jobs stream",
           [("", controller.jobs_seen)])
    results = dict(controller.results)
    metric("moves_total", "counter", "transfers whose channels were moved",
           [("", results.get("moved", 0))])
    metric("reconnects_total", "counter", "P and A bridged again after a failed target",
           [("", results.get("reconnected", 0))])
    metric("recalls_total", "counter", "A recalled after its leg was gone",
           [("", results.get("recalled", 0))])
    metric("results_total", "counter", "every ami_result the controller recorded",
           [(f'{{result="{k}"}}', v) for k, v in sorted(results.items())])
    if server is not None:
        metric("agi_sessions_live", "gauge", "FastAGI sessions running",
               [("", server.active_sessions())])
        metric("agi_sessions_total", "counter", "FastAGI sessions accepted",
               [("", server.sessions_total)])
        metric("agi_sessions_failed_total", "counter", "FastAGI sessions that failed",
               [("", server.sessions_failed)])
        metric("agi_sessions_cut_total", "counter", "FastAGI sessions cut at their limit",
               [("", server.sessions_cut)])
    return "\n".join(out) + "\n"


class MetricsServer:
    """GET /metrics on its own thread; anything else 404."""

    def __init__(self, host: str, port: int, controller: Any, server: Any | None):
        page = lambda: render(controller, server)  # noqa: E731 - read at each scrape

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "use /metrics")
                    return
                body = page().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:  # scrapes are not news
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        name="referee-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
