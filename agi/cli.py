"""`referee asterisk run` and `referee asterisk check`: the Asterisk side as a service.

run: the AMI controller (agi.ami) and the FastAGI server (agi.fastagi with
agi.handler.TransferHandler) in one process, stopped cleanly by SIGTERM or SIGINT
(FastAGI sessions get a grace period, the AMI session logs off).
check: log in to AMI and say what is there — Asterisk's version, and whether the
dialplan contexts the controller redirects to exist — without changing anything.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from kemi.cli import EXIT_FAILED, EXIT_OK, Context, Failed, stop_on_signals

log = logging.getLogger("referee.asterisk")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("asterisk", help="the Asterisk side: AMI controller + FastAGI")
    sub = p.add_subparsers(title="asterisk commands", metavar="COMMAND")
    p.set_defaults(help_parser=p)
    # --config after the command too ("referee asterisk run --config F"); only when given,
    # so the top-level --config still works.
    for name, fn, text in (
        ("run", cmd_run, "run the AMI controller and the FastAGI server until SIGTERM"),
        ("check", cmd_check, "log in to AMI and show version and dialplan contexts"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                       help="settings file (as referee --config)")
        c.set_defaults(handler=fn)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _agi_server(settings):
    """The FastAGI server with the transfer handler; None if agi/ is not installed."""
    try:
        from agi.fastagi import FastAGIServer
        from agi.handler import TransferHandler
    except ImportError as exc:  # pragma: no cover - the AGI part ships in the same tree
        log.error("FastAGI part unavailable (%s): running the AMI controller only", exc)
        return None
    from kemi.storage.resp import RespClient
    from kemi.storage.transfers import TransferStore

    r, a = settings.redis, settings.asterisk
    store = TransferStore(RespClient(r.url, timeout_s=max(r.timeout_ms / 1000, 0.5)),
                          prefix=r.prefix, done_ttl_s=settings.transfer.done_ttl_s)
    handler = TransferHandler(
        store=store, relayed_dial=settings.anchored.dial,
        relayed_timeout_s=a.relayed_timeout_s, relayed_announce=a.relayed_announce,
        replaces_predial=a.replaces_predial,
    )
    return FastAGIServer(a.agi_host, a.agi_port, handler, a.agi_session_limit_s)


def cmd_run(ctx: Context, args) -> int:
    from agi.ami import AmiController

    _logging()
    settings = ctx.settings
    stop = stop_on_signals(log)
    server = _agi_server(settings)
    if server is not None:
        try:
            server.start()
        except OSError as exc:
            raise Failed(f"FastAGI cannot listen on {settings.asterisk.agi_host}:"
                         f"{settings.asterisk.agi_port}: {exc}") from None
    controller = AmiController(settings)
    a = settings.asterisk
    metrics = None
    if a.metrics_port:
        from agi.metrics import MetricsServer

        try:
            metrics = MetricsServer(a.metrics_host, a.metrics_port, controller, server)
        except OSError as exc:
            if server is not None:
                server.shutdown(grace_s=0.0)
            raise Failed(f"metrics cannot listen on {a.metrics_host}:{a.metrics_port}: "
                         f"{exc}") from None
    controller.start()
    if metrics is not None:
        metrics.start()
    log.info("referee asterisk %r: AMI %s:%s as %r, jobs from %s", a.name, a.ami_host,
             a.ami_port, a.ami_user, controller.jobs_key)
    while not stop.wait(0.5):
        pass
    if server is not None:
        server.shutdown(grace_s=5.0)
    if metrics is not None:
        metrics.stop()
    controller.stop()
    log.info("stopped")
    return EXIT_OK


def cmd_check(ctx: Context, args) -> int:
    from asterisk.manager import ManagerException

    from agi.ami import AmiSession

    a = ctx.settings.asterisk
    session = AmiSession(action_timeout_s=3.0)
    try:
        greeting = session.connect(a.ami_host, a.ami_port, timeout_s=3.0)
        session.login(a.ami_user, a.ami_secret)
    except ManagerException as exc:
        session.stop(logoff=False)
        raise Failed(f"AMI {a.ami_host}:{a.ami_port} as {a.ami_user!r}: {exc}") from None
    ok = True
    try:
        print(f"AMI {a.ami_host}:{a.ami_port}: logged in as {a.ami_user!r} "
              f"({getattr(session, 'title', '?')}/{getattr(session, 'version', '?')})")
        del greeting
        try:
            r = session.send_action({"Action": "CoreSettings"})
            version = r.get_header("AsteriskVersion") or f"unknown ({r.get_header('Message')})"
        except ManagerException as exc:
            version = f"unknown ({exc})"
        print(f"Asterisk version: {version}")
        for what, context in (("transfer", a.transfer_context), ("hold", a.hold_context),
                              ("recall", a.recall_context)):
            try:
                r = session.send_action({"Action": "ShowDialPlan", "Context": context})
                found = r.get_header("Response") == "Success"
                why = "" if found else f": {r.get_header('Message')}"
            except ManagerException as exc:
                found, why = False, f": {exc}"
            ok = ok and found
            print(f"{what} context {context!r}: {'present' if found else 'MISSING' + why}")
    finally:
        session.stop()
    return EXIT_OK if ok else EXIT_FAILED
