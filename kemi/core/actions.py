"""The vocabulary of what referee does about a message, as values: Log, Reply, Relay,
Store, Spool, Notify and Count.

Every decision of the core about a message comes out as a Verdict -- the actions the
glue performs, in order, and the value the next step goes on with when the message is
not answered here -- the way agi/follow.py's outputs drive the AMI controller.  The glue
has one way to perform each action (kemi.kamailio.perform), so what referee does with a
message, log lines included, is decided and tested here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from kemi.core.sip.text import printable
from kemi.core.state import Event

Level = Literal["info", "notice", "warn", "err"]
T = TypeVar("T")


@dataclass(frozen=True)
class Log:
    level: Level
    text: str


@dataclass(frozen=True)
class Reply:
    """A final answer referee sends itself instead of relaying."""

    code: int
    reason: str
    warning: str = ""
    retry_after: int | None = None

    def headers(self, agent: str = "referee") -> str:
        """Extra header block for the reply, CRLF-terminated (may be empty)."""
        out = ""
        if self.warning:
            # a quoted-string: no '\\' or '"', bad bytes as %XX
            text = printable(self.warning, escape="%{:02X}").replace("\\", "/")
            text = text.replace('"', "'")
            out += f'Warning: 399 {agent} "{text}"\r\n'
        if self.retry_after is not None:
            out += f"Retry-After: {self.retry_after}\r\n"
        return out


@dataclass(frozen=True)
class Relay:
    """Let the request go on, after these edits to it."""

    request_uri: str | None = None
    add: tuple[str, ...] = ()  # header lines to append, without CRLF
    remove: tuple[str, ...] = ()  # header names to remove (before `add`)


@dataclass(frozen=True)
class Store:
    """Write to a transfer record: apply `event`, or, with no event, annotate it."""

    call_id: str
    refer_id: str | None
    event: Event | None
    fields: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Spool:
    """Keep a store operation in the journal, for the sweep to replay once Redis is back."""

    op: str
    entry: Mapping[str, Any]


@dataclass(frozen=True)
class Notify:
    """NOTIFY the transferor in the notifier's name (anchored mode), recording `event`."""

    call_id: str
    refer_id: str
    code: int
    reason: str
    terminated: bool
    expires_s: int
    event: Event | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Count:
    """Bump one of referee's counters (kemi.core.metrics.NAMES)."""

    name: str
    n: int = 1


Action = Log | Reply | Relay | Store | Spool | Notify | Count


@dataclass(frozen=True)
class Verdict(Generic[T]):
    """The actions to perform, in order, and what the next step goes on with."""

    actions: tuple[Action, ...] = ()
    value: T | None = None

    @property
    def answered(self) -> bool:
        """A Reply is among the actions: the request ends here."""
        return any(isinstance(a, Reply) for a in self.actions)


def refused(what: str, reply: Reply, level: Level = "notice",
            counts: tuple[str, ...] = ()) -> Verdict[Any]:
    """The request answered by referee, with the one log line an operator reads and the
    counters it bumps."""
    return Verdict((Log(level, f"{what} answered {reply.code}: {reply.warning}"), reply,
                    *(Count(c) for c in counts)))


def go_on(value: T, *actions: Action) -> Verdict[T]:
    return Verdict(tuple(actions), value)
