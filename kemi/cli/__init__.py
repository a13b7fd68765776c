"""`referee`: the operator's command.  A small dispatcher; commands live in kemi/cli/.

A command module exposes register(subparsers), adds its parsers there, and gives each
one a handler through set_defaults(handler=fn), fn(ctx, args) -> exit code.  Adding
commands (transfers, stats, ...) means adding a module name to COMMAND_MODULES.  Another
package adds its own through the `referee.commands` entry-point group (agi/ adds
`referee asterisk` that way), so kemi never imports it.
Exit codes: 0 ok, 1 denied or failed, 2 bad usage or input; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NoReturn

from kemi import config

COMMAND_MODULES = ("kemi.cli.policy", "kemi.cli.transfers", "kemi.cli.demo", "kemi.cli.check",
                   "kemi.cli.log")
PLUGIN_GROUP = "referee.commands"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the operator: exit 2."""


class Failed(Exception):
    """The command could not do its job (database unreadable, ...): exit 1."""


@dataclass(frozen=True)
class Context:
    """What every command may need, resolved once from --config and --db."""

    settings: config.Settings
    db: str  # --db, else the settings file's policy_db


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("referee policy add: error: ...")."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set by SIGTERM or SIGINT: how a long-running command (a service) stops."""
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


def build_parser() -> Parser:
    parser = Parser(prog="referee", description="Safe SIP call transfer: policy and tools.")
    parser.add_argument("--config", metavar="PATH",
                        help="settings file (default $REFEREE_CONFIG or /etc/referee/referee.toml)")
    parser.add_argument("--db", metavar="DB",
                        help="policy database: SQLite path, sqlite:///path or postgresql://... "
                             "(default: policy_db from the settings)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugin.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # "referee" or "referee policy" alone: show what can follow.
        (getattr(args, "help_parser", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    try:
        settings = config.load(args.config)
        ctx = Context(settings, args.db or settings.policy_db)
        return int(handler(ctx, args))
    except (UsageError, config.ConfigError) as exc:
        print(f"referee: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as exc:
        print(f"referee: {exc}", file=sys.stderr)
        return EXIT_FAILED
