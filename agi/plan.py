"""The transfer's media part as a plan, sans-IO: commands out, replies in, an outcome at the end.

A run is a generator: it yields a `Command` (an AGI line to send, or a `Note` for the
transfer record), receives the `Reply` for it (None for a Note) and returns an `Outcome`
(`StopIteration.value`).  Nothing here touches a socket or Redis; `agi.handler` drives it
on an AGISession and writes the notes with TransferStore.annotate, and the tests drive it
with scripted replies.  If the connection is lost in the middle, the driver asks the run
for `lost(reason)`: the outcome with what was known by then.

Two modes, chosen from the FastAGI script name (`agi://host:port/<script>`):

anchored (script "anchored"): the AMI controller redirected P here after setting
    XFER_ID (<refer-cseq>@<call-id>), XFER_PEER (A's channel), XFER_PEER_UID,
    XFER_TARGET (dial string), XFER_RECONNECT, XFER_DIAL_TIMEOUT and optionally
    XFER_ANNOUNCE, XFER_CALLERID, XFER_FALLBACK.  Commands, in order:

        GET VARIABLE XFER_ID / XFER_PEER / XFER_PEER_UID / XFER_TARGET / XFER_RECONNECT /
            XFER_DIAL_TIMEOUT / XFER_ANNOUNCE / XFER_CALLERID [/ XFER_FALLBACK]
        [EXEC Playback <announce>]            (-1: CHANNEL STATUS; 511 -> caller-gone)
        [SET VARIABLE CALLERID(num) <num>]
        CHANNEL STATUS                        511 (or a HANGUP line) -> caller-gone
        EXEC Dial <target>,<timeout>,m
        GET VARIABLE DIALSTATUS               ANSWER -> bridged-target (Dial returns when
                                              the P-T call has ended)
        [CHANNEL STATUS]                      after result -1: 511 -> caller-gone
        GET VARIABLE HANGUPCAUSE
        GET FULL VARIABLE ${CHANNEL_EXISTS(<peer>)}
        EXEC UserEvent "XferFailed,XferId: <id>,DialStatus: <status>"
        then by XFER_RECONNECT and whether A's leg still exists:
          bridgeapp / bridgeapp-uid, A exists:
            EXEC Bridge <peer | peer uid>; GET VARIABLE BRIDGERESULT;
            SUCCESS -> CHANNEL STATUS (who ended it) -> reconnected
            anything else (NONEXISTENT: A vanished) -> SET VARIABLE XFER_RESULT WAIT
          A gone, or wait (or amibridge-in-agi: we never hold P inside the AGI while the
          controller bridges, see asterisk-ami README sec. 6) ->
            SET VARIABLE XFER_RESULT WAIT -> wait-recall
          fallback (XFER_FALLBACK = <context>,<exten>,<priority>) ->
            SET CONTEXT / SET EXTENSION / SET PRIORITY -> fallback

relayed (script "relayed"): Asterisk took the REFER itself (res_pjsip_refer) and sent P
    to the transfer extension.  No reconnect is possible (the transferor's channel is
    gone, BRIDGERESULT=NONEXISTENT); the true outcome is recorded.

        GET VARIABLE SIPREFERTOHDR
        GET VARIABLE BLINDTRANSFER
        GET FULL VARIABLE ${HASH(TRANSFER_DATA,X-Transfer-Id)}
        [EXEC Playback <announce>]            (a HANGUP line by now -> caller-gone)
        EXEC Dial <dial from the Refer-To>,<timeout>,m
        GET VARIABLE DIALSTATUS / [CHANNEL STATUS] / GET VARIABLE HANGUPCAUSE
        -> bridged-target | caller-gone | target-failed

Outcomes (`agi_result`): bridged-target, reconnected, wait-recall, fallback, caller-gone,
target-failed (relayed only), error.

Why this file is long: the two runs (anchored, relayed) share their steps (announcement,
caller ID, dial, outcome) and are read side by side; each is one generator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from agi.session import Reply, command_line
from kemi.core.anchored import dial_string

ANCHORED = "anchored"
RELAYED = "relayed"

BRIDGED = "bridged-target"
RECONNECTED = "reconnected"
WAIT = "wait-recall"
FALLBACK = "fallback"
CALLER_GONE = "caller-gone"
TARGET_FAILED = "target-failed"
ERROR = "error"
RESULTS = (BRIDGED, RECONNECTED, WAIT, FALLBACK, CALLER_GONE, TARGET_FAILED, ERROR)

RECONNECT_MODES = ("bridgeapp", "bridgeapp-uid", "wait", "fallback")
# Asterisk's names for the same thing in older lab scripts: never hold P inside the AGI
# while the controller bridges it (P would be yanked away from the AGI thread).
_RECONNECT_ALIASES = {"": "bridgeapp", "reconnect": "bridgeapp", "amibridge-in-agi": "wait"}

XFER_VARS = ("XFER_ID", "XFER_PEER", "XFER_PEER_UID", "XFER_TARGET", "XFER_RECONNECT",
             "XFER_DIAL_TIMEOUT", "XFER_ANNOUNCE", "XFER_CALLERID")
TRANSFER_ID_EXPR = "${HASH(TRANSFER_DATA,X-Transfer-Id)}"
DEFAULT_DIAL_TIMEOUT = 30

_FALLBACK = re.compile(r"^([^,\s]+),([^,\s]+),([^,\s]+)$")
_CALLERID = re.compile(r"^[+0-9A-Za-z*#._-]{1,40}$")
_SOUND = re.compile(r"^[A-Za-z0-9_./&-]{1,200}$")


# -- commands


@dataclass(frozen=True)
class Command:
    """An AGI command: `line` is exactly what goes on the wire."""

    name: str
    args: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        return command_line(self.name, *self.args)


@dataclass(frozen=True)
class Note:
    """Not an AGI command: facts for the transfer record (TransferStore.annotate)."""

    fields: dict[str, str]
    detail: str = ""


Step = Command | Note


def get(name: str) -> Command:
    return Command("GET VARIABLE", (name,))


def get_full(expr: str) -> Command:
    return Command("GET FULL VARIABLE", (expr,))


def exec_(app: str, data: str = "") -> Command:
    return Command("EXEC", (app, data) if data else (app,))


def set_var(name: str, value: str) -> Command:
    return Command("SET VARIABLE", (name, value))


CHANNEL_STATUS = Command("CHANNEL STATUS")


# -- plan and outcome


@dataclass(frozen=True)
class TransferPlan:
    """What the run will do, as read from the channel (or the relayed configuration)."""

    mode: str
    xfer_id: str  # "<refer-cseq>@<call-id>", "" when unknown
    dial: str  # Asterisk dial string of the target
    dial_timeout_s: int = DEFAULT_DIAL_TIMEOUT
    peer: str = ""  # A's channel name (anchored)
    peer_uid: str = ""
    reconnect: str = "bridgeapp"  # bridgeapp | bridgeapp-uid | wait | fallback
    fallback: tuple[str, str, str] | None = None  # context, exten, priority
    announce: str = ""
    caller_id: str = ""
    target_uri: str = ""  # relayed: SIPREFERTOHDR
    transferor_channel: str = ""  # relayed: BLINDTRANSFER
    problems: tuple[str, ...] = ()  # what was wrong in the variables (and how it was read)
    dial_options: str = "m"  # always music on hold; relayed external_replaces adds b(...)

    @property
    def dial_data(self) -> str:
        return f"{self.dial},{self.dial_timeout_s},{self.dial_options}"


@dataclass
class Outcome:
    result: str
    plan: TransferPlan | None = None
    dialstatus: str = ""
    hangupcause: str = ""
    dial_result: int | None = None
    peer_exists: bool | None = None
    bridgeresult: str = ""
    ended_by: str = ""  # after a reconnect: "caller" (P hung up) or "peer" (A hung up)
    error: str = ""
    steps: list[str] = field(default_factory=list)  # short log of what was done

    def fields(self) -> dict[str, str]:
        out = {"agi_result": self.result}
        for key, value in (
            ("agi_dialstatus", self.dialstatus), ("agi_hangupcause", self.hangupcause),
            ("agi_bridgeresult", self.bridgeresult), ("agi_ended_by", self.ended_by),
            ("agi_error", self.error),
        ):
            if value:
                out[key] = value
        if self.peer_exists is not None:
            out["agi_peer_exists"] = "1" if self.peer_exists else "0"
        return out

    def detail(self) -> str:
        return "; ".join(self.steps)


class PlanAborted(Exception):
    """Raised inside a run when a reply makes going on pointless (e.g. 510/520)."""


Run = Generator[Step, Reply | None, Outcome]


def parse_fallback(value: str) -> tuple[str, str, str] | None:
    m = _FALLBACK.match(value.strip())
    return (m.group(1), m.group(2), m.group(3)) if m else None


def bare_uri(refer_to: str) -> str:
    """The URI of a Refer-To as SIPREFERTOHDR gives it (bare, or in <> with parameters
    after); its user and host are read by kemi.core.anchored.dial_string."""
    text = refer_to.strip()
    if text.startswith("<") and ">" in text:
        text = text[1:text.index(">")]
    return text


class _Base:
    mode = ""

    def __init__(self):
        self.outcome = Outcome(ERROR)
        self.hangup_seen = False  # a HANGUP line came with some reply: P is gone
        self.dialling = False  # EXEC Dial sent, its reply not yet in

    def _step(self, text: str) -> None:
        self.outcome.steps.append(text)

    def lost(self, reason: str) -> Outcome:
        """The outcome when the connection went away in the middle of the run."""
        o = self.outcome
        if o.result == ERROR and not o.error:
            if o.dialstatus == "ANSWER":
                o.result = BRIDGED
            elif self.dialling:
                # Dial was running (ringing, or the P-T call itself): Asterisk writes its
                # result only when it returns, so the outcome is unknown here.
                o.error = f"connection lost during EXEC Dial, outcome unknown: {reason}"
            else:
                o.error = f"connection lost: {reason}"
        self._step(f"connection lost: {reason}")
        return o

    def _check(self, reply: Reply | None, what: str) -> Reply:
        if reply is None:
            raise PlanAborted(f"{what}: no reply")
        self.hangup_seen = self.hangup_seen or reply.hangup_seen
        if reply.code != 200:
            raise PlanAborted(f"{what}: {reply.code} {reply.text}".strip())
        return reply

    def _var(self, reply: Reply | None, what: str) -> str | None:
        r = self._check(reply, what)
        return r.data if r.result == 1 else None

    def steps(self) -> Run:
        try:
            return (yield from self._steps())
        except PlanAborted as exc:
            self.outcome.result = ERROR
            self.outcome.error = str(exc)
            self._step(f"error: {exc}")
            yield Note(self.outcome.fields(), self.outcome.detail())
            return self.outcome

    def _steps(self) -> Run:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    # -- shared pieces

    def _gone_after(self, reply: Reply, what: str) -> Generator[Step, Reply | None, bool]:
        """After an EXEC returned -1: True when P's channel is dead (CHANNEL STATUS 511)."""
        status = yield CHANNEL_STATUS
        if status is None:
            raise PlanAborted("CHANNEL STATUS: no reply")
        self.hangup_seen = self.hangup_seen or status.hangup_seen
        if status.code == 511:
            self._step(f"{what}: -1, channel dead (511)")
            return True
        self._step(f"{what}: -1 but the channel is up (status {status.result})")
        return False

    def _caller_gone(self) -> Generator[Step, Reply | None, Outcome]:
        self.outcome.result = CALLER_GONE
        yield Note(self.outcome.fields(), self.outcome.detail())
        return self.outcome

    def _announce(self, plan: TransferPlan) -> Generator[Step, Reply | None, bool]:
        """Play the announcement; False when P hung up meanwhile."""
        if not plan.announce:
            return True
        r = self._check((yield exec_("Playback", plan.announce)), "EXEC Playback")
        self._step(f"Playback {plan.announce}: {r.result}")
        if r.result == -1:
            return not (yield from self._gone_after(r, "Playback"))
        return True

    def _dial(self, plan: TransferPlan) -> Generator[Step, Reply | None, str]:
        """Dial the target; returns "answer", "gone" or "failed" (with the outcome filled)."""
        o = self.outcome
        self.dialling = True
        r = self._check((yield exec_("Dial", plan.dial_data)), "EXEC Dial")
        self.dialling = False
        o.dial_result = r.result
        if r.result == -2:
            raise PlanAborted("EXEC Dial: no such application (-2)")
        status = self._var((yield get("DIALSTATUS")), "GET VARIABLE DIALSTATUS") or ""
        o.dialstatus = status
        self._step(f"Dial {plan.dial_data}: result {r.result}, DIALSTATUS {status or '-'}")
        if status == "ANSWER":
            o.result = BRIDGED
            return "answer"
        if r.result == -1 and (yield from self._gone_after(r, "Dial")):
            return "gone"
        cause = self._var((yield get("HANGUPCAUSE")), "GET VARIABLE HANGUPCAUSE") or ""
        o.hangupcause = cause
        if status in ("", "CANCEL"):
            # CANCEL means the caller hung up; an empty status means Dial never ran.
            self._step(f"DIALSTATUS {status or 'empty'} with the channel up")
        return "failed"


class AnchoredRun(_Base):
    """The anchored transfer (see the module docstring)."""

    mode = ANCHORED

    def _read(self) -> Generator[Step, Reply | None, TransferPlan]:
        values: dict[str, str | None] = {}
        for name in XFER_VARS:
            values[name] = self._var((yield get(name)), f"GET VARIABLE {name}")
        problems = []
        reconnect = (values["XFER_RECONNECT"] or "").strip()
        reconnect = _RECONNECT_ALIASES.get(reconnect, reconnect)
        fallback = None
        if reconnect == "fallback":
            raw = self._var((yield get("XFER_FALLBACK")), "GET VARIABLE XFER_FALLBACK") or ""
            fallback = parse_fallback(raw)
            if fallback is None:
                problems.append(f"XFER_FALLBACK {raw!r} is not <context>,<exten>,<priority>:"
                                " reconnecting instead")
                reconnect = "bridgeapp"
        elif reconnect not in RECONNECT_MODES:
            problems.append(f"XFER_RECONNECT {values['XFER_RECONNECT']!r} unknown: bridgeapp")
            reconnect = "bridgeapp"
        timeout_text = (values["XFER_DIAL_TIMEOUT"] or "").strip()
        try:
            timeout = int(timeout_text)
            if timeout <= 0:
                raise ValueError
        except ValueError:
            if timeout_text:
                problems.append(f"XFER_DIAL_TIMEOUT {timeout_text!r} is not a positive integer")
            timeout = DEFAULT_DIAL_TIMEOUT
        announce = (values["XFER_ANNOUNCE"] or "").strip()
        if announce and not _SOUND.match(announce):
            problems.append(f"XFER_ANNOUNCE {announce!r} is not a sound file name: not played")
            announce = ""
        caller_id = (values["XFER_CALLERID"] or "").strip()
        if caller_id and not _CALLERID.match(caller_id):
            problems.append(f"XFER_CALLERID {caller_id!r} is not a caller number: not set")
            caller_id = ""
        return TransferPlan(
            mode=ANCHORED, xfer_id=(values["XFER_ID"] or "").strip(),
            dial=(values["XFER_TARGET"] or "").strip(), dial_timeout_s=timeout,
            peer=(values["XFER_PEER"] or "").strip(),
            peer_uid=(values["XFER_PEER_UID"] or "").strip(),
            reconnect=reconnect, fallback=fallback, announce=announce, caller_id=caller_id,
            problems=tuple(problems),
        )

    def _steps(self) -> Run:
        o = self.outcome
        plan = yield from self._read()
        o.plan = plan
        for p in plan.problems:
            self._step(p)
        if not plan.dial or any(c in plan.dial for c in ",|\n"):
            raise PlanAborted(f"XFER_TARGET {plan.dial!r} is not a dial string")
        if not plan.peer and plan.reconnect in ("bridgeapp", "bridgeapp-uid"):
            self._step("XFER_PEER empty: A cannot be bridged back, waiting for a recall")
        yield Note({"agi_mode": ANCHORED, "agi_target": plan.dial,
                    "agi_reconnect": plan.reconnect}, "AGI started")
        if not (yield from self._announce(plan)):
            return (yield from self._caller_gone())
        if plan.caller_id:
            self._check((yield set_var("CALLERID(num)", plan.caller_id)), "SET CALLERID")
            self._step(f"CALLERID(num) {plan.caller_id}")
        # Is P still there?  (P may hang up between the Redirect and now; a HANGUP line
        # would already have told, but not with AGISIGHUP=no.)  Never dial for a dead P.
        status = yield CHANNEL_STATUS
        if status is None or status.code == 511 or status.hangup_seen:
            self._step("P hung up before the Dial")
            return (yield from self._caller_gone())
        how = yield from self._dial(plan)
        if how == "answer":
            yield Note(o.fields(), o.detail())
            return o
        if how == "gone":
            return (yield from self._caller_gone())
        yield Note({"agi_dialstatus": o.dialstatus, "agi_hangupcause": o.hangupcause},
                   f"target failed: {o.dialstatus} cause {o.hangupcause or '-'}")
        exists = False
        if plan.peer:
            value = self._var((yield get_full(f"${{CHANNEL_EXISTS({plan.peer})}}")),
                              "CHANNEL_EXISTS")
            exists = (value or "").strip() == "1"
        o.peer_exists = exists
        self._step(f"A's leg {plan.peer or '-'} {'exists' if exists else 'is gone'}")
        self._check((yield exec_("UserEvent", f"XferFailed,XferId: {plan.xfer_id},"
                                              f"DialStatus: {o.dialstatus or 'UNKNOWN'}")),
                    "EXEC UserEvent")
        if plan.reconnect == "fallback" and plan.fallback:
            ctx, exten, prio = plan.fallback
            for cmd, arg in (("SET CONTEXT", ctx), ("SET EXTENSION", exten),
                             ("SET PRIORITY", prio)):
                self._check((yield Command(cmd, (arg,))), cmd)
            o.result = FALLBACK
            self._step(f"fallback to {ctx},{exten},{prio}")
            yield Note({**o.fields(), "agi_fallback": f"{ctx},{exten},{prio}"}, o.detail())
            return o
        if exists and plan.reconnect in ("bridgeapp", "bridgeapp-uid"):
            who = plan.peer_uid if plan.reconnect == "bridgeapp-uid" and plan.peer_uid \
                else plan.peer
            r = self._check((yield exec_("Bridge", who)), "EXEC Bridge")
            bridgeresult = self._var((yield get("BRIDGERESULT")),
                                     "GET VARIABLE BRIDGERESULT") or ""
            o.bridgeresult = bridgeresult
            self._step(f"Bridge {who}: result {r.result}, BRIDGERESULT {bridgeresult or '-'}")
            if bridgeresult == "SUCCESS":
                o.result = RECONNECTED
                status = yield CHANNEL_STATUS
                if status is not None and status.code == 511:
                    o.ended_by = "caller"
                elif status is not None and status.code == 200:
                    o.ended_by = "peer"
                yield Note(o.fields(), o.detail())
                return o
            if r.result == -1 and (yield from self._gone_after(r, "Bridge")):
                return (yield from self._caller_gone())
        self._check((yield set_var("XFER_RESULT", "WAIT")), "SET VARIABLE XFER_RESULT")
        o.result = WAIT
        self._step("XFER_RESULT=WAIT: P waits in the dialplan for the controller")
        yield Note(o.fields(), o.detail())
        return o


DialFor = Callable[[str], str]


def dial_template(template: str) -> DialFor:
    """A relayed dial string from a template over the Refer-To: {user}, {host}, {uri}, filled
    in exactly as for anchored transfers ([anchored] dial, kemi.core.anchored.dial_string)."""
    return lambda uri: dial_string(template, uri)


class RelayedRun(_Base):
    """The relayed transfer (see the module docstring)."""

    mode = RELAYED

    def __init__(self, dial_for: DialFor, dial_timeout_s: int = DEFAULT_DIAL_TIMEOUT,
                 announce: str = "", extension: str = "", replaces_predial: str = ""):
        super().__init__()
        self.dial_for = dial_for
        self.dial_timeout_s = dial_timeout_s
        self.announce = announce
        # Asterisk sends an attended transfer whose Replaces it does not know to extension
        # "external_replaces"; a pre-dial handler (context^exten^priority) copies
        # SIPREPLACESHDR/SIPREFERREDBYHDR into the INVITE (config-examples/asterisk).
        self.extension = extension
        self.replaces_predial = replaces_predial

    def _steps(self) -> Run:
        o = self.outcome
        refer_to = self._var((yield get("SIPREFERTOHDR")), "GET VARIABLE SIPREFERTOHDR") or ""
        transferor = self._var((yield get("BLINDTRANSFER")), "GET VARIABLE BLINDTRANSFER") or ""
        xfer = self._var((yield get_full(TRANSFER_ID_EXPR)), "X-Transfer-Id") or ""
        problems = []
        dial = ""
        if refer_to:
            try:
                dial = self.dial_for(bare_uri(refer_to)).strip()
            except (KeyError, IndexError, ValueError) as exc:
                problems.append(f"dial template failed: {exc}")
        options = "m"
        if self.extension == "external_replaces":
            if self.replaces_predial:
                options = f"mb({self.replaces_predial})"
            else:
                problems.append("external_replaces without a pre-dial handler: the target "
                                "gets no Replaces header")
        plan = TransferPlan(mode=RELAYED, xfer_id=xfer.strip(), dial=dial,
                            dial_timeout_s=self.dial_timeout_s, announce=self.announce,
                            target_uri=refer_to, transferor_channel=transferor,
                            problems=tuple(problems), dial_options=options)
        o.plan = plan
        for p in problems:
            self._step(p)
        if not refer_to:
            raise PlanAborted("SIPREFERTOHDR unset: not a transferred channel")
        if not dial or any(c in dial for c in ",|\n"):
            raise PlanAborted(f"no usable dial string for {refer_to!r}")
        yield Note({"agi_mode": RELAYED, "agi_target": dial,
                    "agi_transferor_channel": transferor}, "AGI started")
        if not (yield from self._announce(plan)):
            return (yield from self._caller_gone())
        if self.hangup_seen:
            self._step("P hung up before the Dial (HANGUP from Asterisk)")
            return (yield from self._caller_gone())
        how = yield from self._dial(plan)
        if how == "gone":
            return (yield from self._caller_gone())
        if how == "failed":
            o.result = TARGET_FAILED
            self._step("no reconnect on the relayed path: Asterisk hung the transferor up")
        yield Note(o.fields(), o.detail())
        return o


def drive(run: _Base, replies: Callable[[Command], Reply]) -> tuple[Outcome, list[Step]]:
    """Run a plan against a function that answers each command (tests, dry runs).
    Returns the outcome and every step (commands and notes) in order."""
    steps: list[Step] = []
    gen = run.steps()
    try:
        step = next(gen)
        while True:
            steps.append(step)
            step = gen.send(None if isinstance(step, Note) else replies(step))
    except StopIteration as stop:
        return stop.value, steps
