"""One FastAGI session on a socket: pyst2's `asterisk.agi.AGI` with its defects fixed.

pyst2 0.5.1 stays underneath (its exception classes, its command helpers such as
`stream_file` or `set_context` still work through the methods overridden here), but what
the recordings in ../shared/asterisk-agi and ../shared/asterisk-ami show it gets wrong is
replaced (see ../shared/notes/asterisk-agi.md):

* no SIGHUP handler: `AGI.__init__` calls `signal.signal`, which raises in any thread but
  the main one; we never call it, so a threaded server works;
* text-mode socket files (`makefile('r'/'w', encoding='utf-8', newline='\\n')`): pyst2
  writes `str`, and Asterisk never sends `\\r`;
* a bare `HANGUP` line (AGISIGHUP on, the FastAGI default) is a hangup *signal*: it sets
  `hungup` and the reply is read from the next line, so replies never shift by one;
* `200 result=-1` from EXEC is returned, not raised: it means "the channel hung up or the
  application failed", told apart by `hungup` / CHANNEL STATUS (511 = dead);
* `511` raises `AGIDeadChannel` (an `AGIHangup`), `510` `AGIInvalidCommand` and `520`
  `AGIUsageError` with Asterisk's text (the whole multi-line usage for 520);
* arguments are quoted only when they must be, with `\\"` and `\\\\` escaped as Asterisk's
  parser expects (pyst2 wraps everything in quotes and escapes nothing, so
  `say "hi"` arrives as `say hi`); CR/LF in an argument is refused (it would inject a
  second command);
* `${...}` expressions go through GET FULL VARIABLE (EXEC does not expand them);
* pyst2's stderr debug output (one line per command, the whole environment) is dropped;
  we log through `logging` instead.
"""

from __future__ import annotations

import io
import logging
import re
import socket
from dataclasses import dataclass

from asterisk.agi import (
    AGI,
    AGIAppError,
    AGIError,
    AGIHangup,
    AGIInvalidCommand,
    AGIUnknownError,
    AGIUsageError,
)

__all__ = [
    "AGISession", "Reply", "AGIDeadChannel", "AGIConnectionClosed", "AGIProtocolError",
    "AGIError", "AGIHangup", "AGIAppError", "AGIInvalidCommand", "AGIUsageError",
    "AGIUnknownError", "quote", "command_line",
]

log = logging.getLogger("referee.agi.session")

MAX_LINE = 65536  # longest line we accept from Asterisk
MAX_ENV_LINES = 200  # Asterisk sends ~22 agi_* lines plus agi_arg_N


class AGIDeadChannel(AGIHangup):
    """511: the command is not permitted on a dead channel (the caller hung up)."""


class AGIConnectionClosed(AGIHangup):
    """The FastAGI connection ended (EOF, reset, or the server cut the session)."""


class AGIProtocolError(AGIError):
    """Asterisk's side sent something that is not AGI (garbage, an endless environment)."""


_NEEDS_QUOTES = re.compile(r'[\s"\\]')
_REPLY = re.compile(r"^(\d{3})([ -])(.*)$", re.S)
_RESULT = re.compile(r"^result=(-?\d+)(?: \((.*)\))?(?: (.*))?$", re.S)


def quote(arg: object) -> str:
    """One AGI command argument as Asterisk's parser (res_agi parse_args) reads it back.

    Plain words go as they are (`GET VARIABLE XFER_ID`, `EXEC Dial PJSIP/t,20,m`, as the
    recordings show); an empty value or one with blanks, `"` or `\\` goes in double
    quotes with `"` and `\\` backslash-escaped.  CR and LF cannot be sent at all.
    """
    text = str(arg)
    if "\n" in text or "\r" in text:
        raise ValueError(f"AGI argument {text!r} contains CR/LF")
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command_line(command: str, *args: object) -> str:
    """The exact line sent for a command and its arguments, "\\n" included."""
    if "\n" in command or "\r" in command:
        raise ValueError(f"AGI command {command!r} contains CR/LF")
    parts = [command.strip(), *(quote(a) for a in args)]
    return " ".join(parts) + "\n"


@dataclass(frozen=True)
class Reply:
    """One reply from Asterisk.

    code 200: `result` is the number after result=, `data` the text in parentheses (None
    when there were none: an unset variable answers `200 result=0`, a missing HASH key
    `200 result=1 ()` = ""), `extra` what follows (e.g. "endpos=28000").  code 511: the
    channel is dead (only returned by `command(..., raise_errors=False)`).
    `hangup_seen`: a bare HANGUP line came in before this reply (or earlier in the session).
    """

    code: int
    result: int | None = None
    data: str | None = None
    extra: str = ""
    text: str = ""
    hangup_seen: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 200


def parse_reply(line: str, hangup_seen: bool = False) -> Reply:
    """A single reply line (without its newline) as a Reply; 520 multi-line is read by the
    session, this only sees its first line."""
    m = _REPLY.match(line)
    if not m:
        raise AGIProtocolError(f"not an AGI reply: {line!r}")
    code, rest = int(m.group(1)), m.group(3)
    if code != 200:
        return Reply(code, text=rest, hangup_seen=hangup_seen)
    r = _RESULT.match(rest)
    if not r:
        raise AGIProtocolError(f"200 reply without result=: {line!r}")
    return Reply(200, int(r.group(1)), r.group(2), r.group(3) or "", rest, hangup_seen)


class _NullWriter(io.TextIOBase):
    """Where pyst2's stderr chatter goes."""

    def write(self, s: str) -> int:
        return len(s)


class AGISession(AGI):
    """pyst2's AGI on a FastAGI socket, safe in a thread.  `env` holds the agi_* variables
    (`agi_network_script`, `agi_channel`, ...), `args` the agi_arg_N values in order.

    `sock` may be None when `rfile`/`wfile` are given (tests, a pipe).
    """

    def __init__(
        self,
        sock: socket.socket | None = None,
        rfile=None,
        wfile=None,
        env_timeout_s: float | None = 10.0,
        name: str = "",
    ):
        # Deliberately not AGI.__init__: it installs a SIGHUP handler (main thread only)
        # and writes sys.argv and the environment to stderr.
        self.sock = sock
        if sock is not None:
            rfile = rfile or sock.makefile("r", encoding="utf-8", errors="replace", newline="\n")
            wfile = wfile or sock.makefile("w", encoding="utf-8", newline="\n")
        if rfile is None or wfile is None:
            raise ValueError("AGISession needs a socket or both rfile and wfile")
        self.stdin = rfile
        self.stdout = wfile
        self.stderr = _NullWriter()
        self._got_sighup = False
        self.hungup = False  # a HANGUP line was seen (the caller's channel went away)
        self.hangup_lines = 0
        self.closed = False
        self.cut_reason = ""  # set by the server when it cuts the session
        self.name = name
        self.env: dict[str, str] = {}
        self.args: list[str] = []
        self.commands_sent = 0
        if sock is not None and env_timeout_s is not None:
            sock.settimeout(env_timeout_s)
        try:
            self._get_agi_env()
        except TimeoutError:
            self.close()
            raise AGIProtocolError(f"no complete agi_ environment in {env_timeout_s} s") from None
        except Exception:
            self.close()
            raise
        if sock is not None:
            sock.settimeout(None)

    # -- reading

    def _readline(self) -> str:
        if self.closed:
            raise AGIConnectionClosed("session closed")
        try:
            line = self.stdin.readline(MAX_LINE)
        except TimeoutError:
            self.closed = True
            raise
        except (OSError, ValueError) as exc:  # ValueError: file closed under us
            self.closed = True
            raise AGIConnectionClosed(f"connection lost: {exc}") from None
        if line == "":
            self.closed = True
            raise AGIConnectionClosed("EOF from Asterisk")
        if not line.endswith("\n"):
            if len(line) >= MAX_LINE:
                raise AGIProtocolError(f"line longer than {MAX_LINE} characters")
            self.closed = True
            raise AGIConnectionClosed(f"EOF in the middle of a line: {line[:80]!r}")
        return line[:-1]

    def _get_agi_env(self) -> None:
        for _ in range(MAX_ENV_LINES):
            try:
                line = self._readline()
            except AGIConnectionClosed as exc:
                raise AGIConnectionClosed(
                    f"before the end of the agi_ environment: {exc}") from None
            if line == "":
                if not self.env:
                    raise AGIProtocolError("empty agi_ environment")
                return
            key, sep, value = line.partition(":")
            key = key.strip()
            if not sep or not key.startswith("agi_"):
                raise AGIProtocolError(f"not an agi_ environment line: {line[:80]!r}")
            value = value[1:] if value.startswith(" ") else value
            self.env[key] = value
            if key.startswith("agi_arg_"):
                self.args.append(value)
        raise AGIProtocolError(f"agi_ environment longer than {MAX_ENV_LINES} lines")

    def _read_reply(self) -> Reply:
        while True:
            line = self._readline()
            if line == "HANGUP":
                # AGISIGHUP: a signal, not a reply.  The reply follows on the next line.
                self.hangup_lines += 1
                if not self.hungup:
                    log.info("%s: HANGUP from Asterisk (the channel hung up)", self.name)
                self.hungup = True
                continue
            break
        reply = parse_reply(line, self.hungup)
        if reply.code == 520 and line[3:4] == "-":
            usage = [line]
            while True:
                more = self._readline()
                if more == "HANGUP":
                    self.hangup_lines += 1
                    self.hungup = True
                    continue
                usage.append(more)
                if more.startswith("520 "):
                    break
            reply = Reply(520, text="\n".join(usage), hangup_seen=self.hungup)
        return reply

    # -- writing

    def send_line(self, line: str) -> None:
        if self.closed:
            raise AGIConnectionClosed("session closed")
        try:
            self.stdout.write(line)
            self.stdout.flush()
        except (OSError, ValueError) as exc:
            self.closed = True
            raise AGIConnectionClosed(f"connection lost while sending: {exc}") from None
        self.commands_sent += 1
        log.debug("%s: > %s", self.name, line.rstrip("\n"))

    def command(self, line: str, raise_errors: bool = True) -> Reply:
        """Send one raw command line ("\\n" added if missing) and read its reply.

        raise_errors: 511 -> AGIDeadChannel, 510 -> AGIInvalidCommand, 520 ->
        AGIUsageError, anything else but 200 -> AGIUnknownError; with False every reply
        comes back as a Reply.
        """
        if not line.endswith("\n"):
            line += "\n"
        self.send_line(line)
        reply = self._read_reply()
        log.debug("%s: < %s", self.name, reply.text or reply.code)
        if raise_errors:
            self._raise_for(reply, line)
        return reply

    @staticmethod
    def _raise_for(reply: Reply, line: str) -> None:
        if reply.code == 200:
            return
        cmd = line.rstrip("\n")
        if reply.code == 511:
            raise AGIDeadChannel(f"{cmd}: 511 {reply.text}")
        if reply.code == 510:
            raise AGIInvalidCommand(f"{cmd}: 510 {reply.text}")
        if reply.code == 520:
            raise AGIUsageError(f"{cmd}: {reply.text}")
        raise AGIUnknownError(reply.code, f"{cmd}: {reply.text}")

    def run(self, command: str, *args: object) -> Reply:
        return self.command(command_line(command, *args))

    # -- pyst2's plumbing, overridden so its helpers use the fixed I/O

    def _quote(self, string) -> str:  # used by pyst2 helpers (stream_file, ...)
        return quote(string) if str(string) else '""'

    def test_hangup(self) -> None:
        if self.hungup:
            raise AGIHangup("the channel hung up (HANGUP from Asterisk)")

    def send_command(self, command, *args) -> None:
        # pyst2 helpers pass pre-quoted arguments: join them as they are.
        line = " ".join([command.strip(), *(str(a) for a in args)]).strip()
        if "\n" in line or "\r" in line:
            raise ValueError(f"AGI command {line!r} contains CR/LF")
        self.send_line(line + "\n")

    def get_result(self, stdin=None) -> dict:
        """pyst2's result dict from the fixed reader; -1 raises AGIAppError as pyst2 did
        (its helpers rely on that), 511 AGIDeadChannel."""
        reply = self._read_reply()
        self._raise_for(reply, "")
        result = {"result": (str(reply.result), reply.data or "")}
        if reply.extra:
            for key, _, value in (kv.partition("=") for kv in reply.extra.split()):
                result[key] = (value, "")
        if reply.result == -1:
            raise AGIAppError("Error executing application, or hangup")
        return result

    # -- the commands referee uses (plain returns, no surprises)

    def get_variable(self, name: str) -> str:
        """The value, or "" when unset (as pyst2)."""
        value = self.variable(name)
        return "" if value is None else value

    def variable(self, name: str) -> str | None:
        """GET VARIABLE: the value, or None when Asterisk says result=0 (unset).  A name
        with `${` in it is an expression and goes through GET FULL VARIABLE (GET VARIABLE
        would look up a variable literally named so)."""
        command = "GET FULL VARIABLE" if "${" in name else "GET VARIABLE"
        reply = self.run(command, name)
        return reply.data if reply.result == 1 else None

    def get_full_variable(self, expr: str, channel: str | None = None) -> str:
        """GET FULL VARIABLE: `${...}` expanded on the channel ("" when empty)."""
        reply = self.run("GET FULL VARIABLE", expr, *([channel] if channel else []))
        return reply.data or "" if reply.result == 1 else ""

    def set_variable(self, name: str, value: object) -> None:
        self.run("SET VARIABLE", name, value)

    def exec_app(self, app: str, data: str = "") -> Reply:
        """EXEC: the Reply; result -1 = the channel hung up or the application failed
        (`hungup`, or CHANNEL STATUS raising AGIDeadChannel, says which).  -2 = no such
        application.  Never raises for -1."""
        if data:
            return self.run("EXEC", app, data)
        return self.run("EXEC", app)

    def appexec(self, application, options=""):  # pyst2's name
        return self.exec_app(application, options).result

    def channel_status(self, channel: str = "") -> int:
        """CHANNEL STATUS (6 = up); AGIDeadChannel when the channel is gone."""
        reply = self.run("CHANNEL STATUS", *([channel] if channel else []))
        return int(reply.result or 0)

    def alive(self) -> bool:
        """False when the channel is dead (511) or the connection is gone."""
        if self.hungup:
            return False
        try:
            self.channel_status()
        except AGIHangup:
            return False
        return True

    def close(self) -> None:
        self.closed = True
        for f in (self.stdout, self.stdin):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken socket file
                pass
