"""The AMI controller's brain, sans-IO: channels as AMI shows them, and one state machine
per anchored transfer (a kemi.core.anchor.MoveJob).

Why sans-IO: the controller's hard part is ordering — the Redirect's Success comes before
the channels move, DialEnd before the target's Hangup, OriginateResponse before or after
DialEnd — and that is tested here by feeding the events recorded from a real Asterisk 20,
without a socket, a thread or Redis.  The glue (agi/ami.py) feeds in AMI events (dicts),
action responses, jobs and clock ticks, and performs what comes back:

    SendAction  an AMI action (ActionID chosen here, so responses route back by it)
    Publish     a kemi.core.anchor.Progress to XADD to the job's reply_to stream
    Annotate    facts for TransferStore.annotate (the transfer record)
    Ack         XACK the job: it is handled or definitively failed

Each job sends at most one action at a time and waits for its response, so a failed
Setvar never lets the Redirect through, and pyst2's FIFO response matching stays right.

Why this file is long: it is one state machine, and h11's rule is ours -- every
transition in one table (PHASES), in one file, next to the handlers that take them.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agi import plan
from kemi.core.anchor import MoveJob, Progress, final_status

log = logging.getLogger("referee.ami")

# The channel variables the FastAGI side (agi/plan.py) reads on P: its own list, plus
# XFER_FALLBACK (read there only for XFER_RECONNECT=fallback, always set here).
XFER_VARS = (*plan.XFER_VARS, "XFER_FALLBACK")
# XFER_RECONNECT: the AGI reconnects P to A itself with EXEC Bridge (11 ms after the
# target fails in the recordings); an AMI Bridge while the AGI runs strands the AGI on a
# Surrogate channel (README §6), so the controller bridges only after XFER_RESULT=WAIT.
RECONNECT_MODE = "bridgeapp"


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class SendAction:
    """An AMI action; `fields` has Action and ActionID first; a list value repeats the header."""

    fields: dict[str, str | list[str]]

    @property
    def action(self) -> str:
        return str(self.fields["Action"])

    @property
    def action_id(self) -> str:
        return str(self.fields["ActionID"])


@dataclass(frozen=True)
class Publish:
    stream: str
    progress: Progress


@dataclass(frozen=True)
class Annotate:
    call_id: str
    refer_id: str
    fields: dict[str, str]
    detail: str = ""


@dataclass(frozen=True)
class Ack:
    entry_id: str


Output = SendAction | Publish | Annotate | Ack


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FollowSettings:
    """Dialplan locations (kemi.config.AsteriskSettings) and how long to wait for things."""

    transfer_context: str = "referee-transfer"
    hold_context: str = "referee-hold"
    hold_exten: str = "hold"
    recall_context: str = "referee-recall"
    # Dual Redirect answered Success -> the move events (≈15 ms in the recordings).
    move_confirm_s: float = 3.0
    # DialEnd -> the target's Hangup that carries the Q.850 cause (≈1 ms recorded).
    cause_wait_s: float = 0.5
    # Failure -> P and A in one bridge again (≈11 ms with EXEC Bridge).
    reconnect_wait_s: float = 15.0
    # A's leg gone at the failure: how long the AGI gets to park P (XFER_RESULT=WAIT)
    # before the recall is placed anyway.
    wait_grace_s: float = 3.0
    # Originate of the recall -> A answered and bridged to P.
    recall_wait_s: float = 45.0
    # A final Progress -> A's leg released (P hung up, fallback, the release timer): the
    # Kamailio node NOTIFYs A from its progress timer (150 ms), and A must get that
    # NOTIFY before Asterisk's BYE -- a PBX that ends the dialog at the BYE answers the
    # NOTIFY 481 and never learns the outcome (issue 10.5).
    final_notify_wait_s: float = 1.0
    recall_timeout_ms: int = 30000
    # Beyond dial_timeout_s: the longest an announcement + set-up may take before a job
    # without any dial outcome is closed (408).
    follow_slack_s: float = 120.0
    # Hung-up channels are forgotten after this long.
    forget_after_s: float = 60.0
    # A job older than this when read (the controller or AMI was down) is refused with
    # a final 503 rather than moving a call whose parties have long moved on.
    max_job_age_s: float = 120.0


# --------------------------------------------------------------------------- channels


@dataclass
class Channel:
    name: str
    uid: str
    linkedid: str = ""
    bridge_peer: str = ""  # BRIDGEPEER: the peer's channel name while bridged
    peer_call_id: str = ""  # BRIDGEPVTCALLID: the peer's SIP Call-ID while bridged
    bridge_id: str = ""  # BridgeUniqueid from BridgeEnter/BridgeLeave
    gone_at: float | None = None
    cause: int | None = None

    @property
    def alive(self) -> bool:
        return self.gone_at is None


class Channels:
    """What Asterisk has, learnt from every event since login (any event naming a channel
    adds it, so a controller started mid-call still learns from re-published VarSets)."""

    def __init__(self) -> None:
        self.by_uid: dict[str, Channel] = {}
        self.by_name: dict[str, str] = {}  # name -> uid of the newest channel so named

    def get(self, key: str) -> Channel | None:
        """By Uniqueid or channel name."""
        ch = self.by_uid.get(key)
        if ch is None and key in self.by_name:
            ch = self.by_uid.get(self.by_name[key])
        return ch

    def touch(self, ev: Mapping[str, str]) -> Channel | None:
        uid, name = ev.get("Uniqueid", ""), ev.get("Channel", "")
        if not uid or not name or uid == "<unknown>":
            return None
        ch = self.by_uid.get(uid)
        if ch is None:
            ch = self.by_uid[uid] = Channel(name, uid, ev.get("Linkedid", ""))
        else:
            ch.name = name
            if ev.get("Linkedid"):
                ch.linkedid = ev["Linkedid"]
        self.by_name[name] = uid
        return ch

    def update(self, ev: Mapping[str, str], now: float) -> Channel | None:
        """Apply one event; returns the channel it is about (if any)."""
        name = ev.get("Event", "")
        ch = self.touch(ev)
        if ch is None:
            return None
        if name == "VarSet":
            var = ev.get("Variable", "")
            if var == "BRIDGEPEER":
                ch.bridge_peer = ev.get("Value", "")
            elif var == "BRIDGEPVTCALLID":
                ch.peer_call_id = ev.get("Value", "")
        elif name == "BridgeEnter":
            ch.bridge_id = ev.get("BridgeUniqueid", "")
        elif name == "BridgeLeave":
            if ch.bridge_id == ev.get("BridgeUniqueid", ch.bridge_id):
                ch.bridge_id = ""
                ch.bridge_peer = ch.peer_call_id = ""
        elif name == "CoreShowChannel":
            ch.bridge_id = ev.get("BridgeId", "")
        elif name == "Rename" and ev.get("Newname"):
            ch.name = ev["Newname"]
            self.by_name[ch.name] = ch.uid
        elif name == "Hangup":
            ch.gone_at = now
            ch.cause = _int(ev.get("Cause"))
            ch.bridge_id = ch.bridge_peer = ch.peer_call_id = ""
        return ch

    def find_pair(self, call_id: str) -> tuple[Channel, Channel] | None:
        """(P, A): P is the live channel whose bridge peer's SIP Call-ID is call_id, A is
        P's BRIDGEPEER.  None if unknown or ambiguous (a multi-party bridge)."""
        found = [c for c in self.by_uid.values()
                 if c.alive and c.peer_call_id == call_id and c.bridge_peer]
        if len(found) != 1 or "," in found[0].bridge_peer:
            return None
        p = found[0]
        a = self.get(p.bridge_peer)
        if a is None or not a.alive or a.uid == p.uid:
            return None
        return p, a

    def forget(self, now: float, after_s: float, keep: set[str]) -> None:
        for uid, ch in list(self.by_uid.items()):
            if ch.gone_at is not None and now - ch.gone_at > after_s and uid not in keep:
                del self.by_uid[uid]
                if self.by_name.get(ch.name) == uid:
                    del self.by_name[ch.name]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


_CHANNEL_SUFFIX = re.compile(r"-[0-9a-fA-F]{8}$")


def endpoint_of(channel_name: str) -> str:
    """The dial string of a channel's endpoint: PJSIP/amipbx-0000002d -> PJSIP/amipbx."""
    return _CHANNEL_SUFFIX.sub("", channel_name.split(";")[0])


def recall_channel(channel_name: str, recall_uri: str) -> str:
    """The Originate channel that calls A back: its endpoint, sent to A's own Contact
    (from its REFER) when referee has it -- the endpoint's AOR contact alone may have no
    user part, and a proxy on the way may refuse such a Request-URI (484)."""
    endpoint = endpoint_of(channel_name)
    if not recall_uri or not endpoint.startswith("PJSIP/"):
        return endpoint
    return f"{endpoint}/{recall_uri}"


def reconnect_mode(job: MoveJob) -> str:
    """XFER_RECONNECT as agi/plan.py reads it: "fallback" or the EXEC Bridge mode."""
    return "fallback" if job.on_failure.startswith("fallback:") else RECONNECT_MODE


def fallback_location(job: MoveJob) -> str:
    """XFER_FALLBACK as agi/plan.py reads it: "<context>,<exten>,<priority>" or ""."""
    return job.on_failure.partition(":")[2] if job.on_failure.startswith("fallback:") else ""


def target_exten(target: str) -> str:
    """The extension P is redirected to: the user part of the approved Refer-To."""
    uri = target.strip().strip("<>")
    scheme, sep, rest = uri.partition(":")
    if not sep:
        rest = scheme
    user = rest.split("@", 1)[0] if "@" in rest else rest
    return user.split(";", 1)[0] or "s"


# --------------------------------------------------------------------------- transfers


class Phase(enum.Enum):
    LOCATE = "locate"  # finding P and A by AMI actions (not known from events)
    SETVAR = "setvar"  # Setvar XFER_* on P, one by one
    REDIRECT = "redirect"  # the dual Redirect is out
    MOVING = "moving"  # Redirect succeeded; waiting for the channels to move
    DIALING = "dialing"  # the AGI is (about to be) dialling the target
    CAUSE = "cause"  # DialEnd failure seen; waiting briefly for the target's cause
    RECONNECT = "reconnect"  # final failure sent; waiting for P and A in one bridge
    RECALL = "recall"  # A's leg was gone: recall placed, waiting for it to be bridged
    RELEASE = "release"  # A is released: release_after_s after an answer, else after
    # final_notify_wait_s (its final NOTIFY first)
    DONE = "done"


@dataclass
class Transfer:
    job: MoveJob
    entry_id: str
    started: float
    phase: Phase = Phase.LOCATE
    p: Channel | None = None
    a: Channel | None = None
    t_uid: str = ""
    dialstatus: str = ""
    cause: int | None = None
    deadline: float | None = None
    final_sent: bool = False
    moved_p: bool = False
    moved_a: bool = False
    wait_seen: bool = False  # VarSet XFER_RESULT=WAIT on P: the AGI handed P back to us
    recall_uid: str = ""
    originate_id: str = ""  # ActionID of the recall's Originate (OriginateResponse has it)
    last_action: str = ""  # what the awaited late action was for (Hangup-A, Bridge, ...)
    release_result: str = "a-released"
    release_why: str = ""  # why A is released once final_notify_wait_s has passed
    final_at: float | None = None  # when the final Progress was published
    rang: bool = False
    pending: list[dict[str, str | list[str]]] = field(default_factory=list)  # to send
    inflight: str = ""  # ActionID awaited
    inflight_fields: dict[str, str | list[str]] = field(default_factory=dict)
    listing: list[Mapping[str, str]] = field(default_factory=list)  # CoreShowChannel
    probe: list[str] = field(default_factory=list)  # channels still to Getvar call-id

    @property
    def key(self) -> str:
        return self.job.xfer_id


class Step(enum.Enum):
    """What moves a transfer from one phase to the next (PHASES)."""

    RESUMED = "resumed"  # a reclaimed job whose channels had moved: follow its dial
    LOCATED = "located"  # P and A found
    VARS_SET = "vars-set"  # the last Setvar accepted: the dual Redirect is out
    REDIRECTED = "redirected"  # the dual Redirect accepted
    MOVED = "moved"  # both channels in their contexts (or dial events prove it)
    DIAL_FAILED = "dial-failed"  # DialEnd with a failure: the target's cause may follow
    ANSWERED = "answered"  # the target answered: A is released later
    FAILED = "failed"  # the final failure told to A: P and A are reconnected
    RECALLING = "recalling"  # A's leg was gone: it is called back
    RELEASING = "releasing"  # A is to be released
    FINISHED = "finished"  # the job is acknowledged


class FollowError(RuntimeError):
    """A step the phase table does not allow from the transfer's phase: a bug here, never
    an input from Asterisk (events are filtered by phase before they step)."""


P_ = Phase
# Every transition of a followed transfer, and only these (h11's rule: one table, one
# file).  FINISHED is allowed from every phase but DONE: a job can end early anywhere
# (channels gone, a refusal, a timeout).  RELEASING is wherever A can be left parked:
# after an answer, a fallback, P's hangup, a reclaimed job that had been answered.
PHASES: dict[tuple[Phase, Step], Phase] = {
    (P_.LOCATE, Step.LOCATED): P_.SETVAR,
    (P_.LOCATE, Step.RESUMED): P_.DIALING,
    (P_.SETVAR, Step.VARS_SET): P_.REDIRECT,
    (P_.REDIRECT, Step.REDIRECTED): P_.MOVING,
    (P_.MOVING, Step.MOVED): P_.DIALING,
    (P_.DIALING, Step.ANSWERED): P_.RELEASE,
    (P_.DIALING, Step.DIAL_FAILED): P_.CAUSE,
    (P_.DIALING, Step.FAILED): P_.RECONNECT,
    (P_.CAUSE, Step.FAILED): P_.RECONNECT,
    (P_.RECONNECT, Step.RECALLING): P_.RECALL,
    **{(phase, Step.RELEASING): P_.RELEASE for phase in (
        P_.LOCATE, P_.SETVAR, P_.MOVING, P_.DIALING, P_.CAUSE, P_.RECONNECT, P_.RELEASE)},
    **{(phase, Step.FINISHED): P_.DONE for phase in Phase if phase is not P_.DONE},
}


def advance(tr: Transfer, step: Step) -> None:
    """Move `tr` on by one step of PHASES."""
    target = PHASES.get((tr.phase, step))
    if target is None:
        raise FollowError(f"transfer {tr.job.xfer_id}: {step.value} in phase {tr.phase.value}")
    tr.phase = target


class Follower:
    """Every transfer this controller runs, and the channels they live on.

    Inputs (each returns the outputs to perform, in order):
        job(job, entry_id, now)              a MoveJob read from the jobs stream
        reclaimed(job, entry_id, now, rec)   a job left pending by a stopped controller
        event(headers, now)                  any AMI event
        response(action_id, headers, now)   the response to a SendAction of ours
        tick(now)                            timers (next_deadline() says when)
        session_restarted(now) / resume(now) the AMI session dropped / is back
    """

    def __init__(self, settings: FollowSettings | None = None, name: str = "referee"):
        self.s = settings or FollowSettings()
        self.name = name
        self.channels = Channels()
        self.transfers: dict[str, Transfer] = {}
        self._seq = 0
        self._inflight: dict[str, str] = {}  # ActionID -> transfer key
        self._listings: dict[str, str] = {}  # CoreShowChannels ActionID -> transfer key

    # -- inputs

    def reclaimed(self, job: MoveJob, entry_id: str, now: float,
                  record: Mapping[str, str] | None) -> list[Output]:
        """A job left pending by a controller that stopped (or crashed) mid-way, with the
        transfer record's ami_* notes: what was already done is not done again."""
        if job.xfer_id in self.transfers:
            # Read again while still being followed (the reader re-reads its pending
            # entries after a failure): the running transfer acks it when it ends.
            return []
        rec = record or {}
        result, final = rec.get("ami_result", ""), rec.get("ami_final", "")
        if not rec.get("ami_p_uid") and not final:
            return self.job(job, entry_id, now)  # nothing was done: run it
        if result not in ("moved", "target-answered") or (final and final != "200"):
            log.info("reclaimed job %s (%s): already %s; acked", entry_id, job.xfer_id,
                     result or f"final {final}")
            return [Ack(entry_id)]
        tr = Transfer(job, entry_id, now, final_sent=bool(final))
        self.transfers[tr.key] = tr
        tr.p = self._adopt(rec.get("ami_p_channel", ""), rec.get("ami_p_uid", ""))
        tr.a = self._adopt(rec.get("ami_a_channel", ""), rec.get("ami_a_uid", ""))
        if final == "200":
            log.warning("reclaimed job %s (%s): target had answered; releasing A now",
                        entry_id, job.xfer_id)
            return self._release_a(tr, now, "reclaimed after the answer")
        log.warning("reclaimed job %s (%s): channels moved, following again from here",
                    entry_id, job.xfer_id)
        advance(tr, Step.RESUMED)
        tr.deadline = now + job.dial_timeout_s + self.s.follow_slack_s
        return [self._note(tr, {"ami_reclaimed": f"{now:.3f}"}, "job reclaimed")]

    def _adopt(self, name: str, uid: str) -> Channel:
        ch = self.channels.get(uid)
        if ch is None:
            ch = self.channels.by_uid[uid] = Channel(name, uid)
            self.channels.by_name[name] = uid
        return ch

    def job(self, job: MoveJob, entry_id: str, now: float) -> list[Output]:
        """A new MoveJob read from the jobs stream."""
        if job.xfer_id in self.transfers:
            log.warning("job %s for transfer %s is already being handled; acked",
                        entry_id, job.xfer_id)
            return [Ack(entry_id)]
        tr = Transfer(job, entry_id, now)
        self.transfers[tr.key] = tr
        age = now - job.created_at
        if age > self.s.max_job_age_s:
            log.error("transfer %s: job %s is %.0f s old (limit %.0f s); not run", tr.key,
                      entry_id, age, self.s.max_job_age_s)
            return self._fail_early(tr, now, "job-expired", f"job {age:.0f} s old, not run")
        pair = self.channels.find_pair(job.call_id)
        if pair is None:
            log.info("transfer %s: channels of Call-ID %s not known from events; asking "
                     "Asterisk (CoreShowChannels)", tr.key, job.call_id)
            out: list[Output] = []
            self._queue(tr, {"Action": "CoreShowChannels"})
            tr.deadline = now + self.s.move_confirm_s * 3
            return out + self._pump(tr)
        return self._located(tr, pair[0], pair[1], now)

    def event(self, ev: Mapping[str, str], now: float) -> list[Output]:
        """One AMI event, as a dict of its headers."""
        name = ev.get("Event", "")
        ch = self.channels.update(ev, now)
        out: list[Output] = []
        action_id = ev.get("ActionID", "")
        if action_id in self._listings:
            out += self._listing_event(self._listings[action_id], ev, now)
        if name == "OriginateResponse":
            for tr in list(self.transfers.values()):
                if action_id and action_id == tr.originate_id:
                    out += self._originate_response(tr, ev, now)
            return out
        for tr in list(self.transfers.values()):
            if tr.phase in (Phase.LOCATE, Phase.SETVAR, Phase.DONE) or tr.p is None:
                continue
            out += self._transfer_event(tr, name, ev, ch, now)
        return out

    def response(self, action_id: str, resp: Mapping[str, str], now: float) -> list[Output]:
        """The response to an action this core asked for (matched by ActionID)."""
        key = self._inflight.pop(action_id, None)
        tr = self.transfers.get(key) if key else None
        if tr is None:
            return []
        tr.inflight = ""
        return self._response(tr, resp, now)

    def tick(self, now: float) -> list[Output]:
        """Timers: call at next_deadline() (or any time; early calls do nothing)."""
        out: list[Output] = []
        for tr in list(self.transfers.values()):
            if tr.deadline is not None and now >= tr.deadline and not tr.inflight:
                tr.deadline = None
                out += self._timeout(tr, now)
        keep = {u for tr in self.transfers.values()
                for u in (tr.p.uid if tr.p else "", tr.a.uid if tr.a else "", tr.recall_uid)}
        self.channels.forget(now, self.s.forget_after_s, keep)
        return out

    def next_deadline(self) -> float | None:
        times = [tr.deadline for tr in self.transfers.values()
                 if tr.deadline is not None and not tr.inflight]
        return min(times) if times else None

    def disconnected(self, now: float) -> list[Output]:
        """The AMI session dropped: every awaited response is lost.  Before the move
        (lookup, Setvar, Redirect) the job fails as an error — a Redirect may or may not
        have happened, and a second one must not be risked.  After it (Hangup of A,
        Bridge, Originate, Hangup of P) the action is queued again for the next session
        (`resume`); jobs that were only following events keep going after the re-login."""
        out: list[Output] = []
        for action_id, key in list(self._inflight.items()):
            tr = self.transfers.get(key)
            if tr is not None and tr.phase not in (Phase.LOCATE, Phase.SETVAR,
                                                   Phase.REDIRECT):
                del self._inflight[action_id]
                again = {k: v for k, v in tr.inflight_fields.items() if k != "ActionID"}
                tr.pending.insert(0, again)
                tr.inflight = ""
                continue
            out += self.response(action_id, {"Response": "Error",
                                             "Message": "AMI session lost"}, now)
        self._listings.clear()
        return out

    def resume(self, now: float) -> list[Output]:
        """A new session is up: send what was queued again by `disconnected`."""
        out: list[Output] = []
        for tr in list(self.transfers.values()):
            out += self._pump(tr)
        return out

    def session_restarted(self, now: float) -> list[Output]:
        """A new AMI session: what happened meanwhile is unknown, so the channel table
        starts again (new jobs fall back to asking Asterisk), keeping only the channels
        of transfers still being followed."""
        out = self.disconnected(now)
        keep = [ch for tr in self.transfers.values()
                for ch in (tr.p, tr.a, self.channels.get(tr.recall_uid) if tr.recall_uid
                           else None) if ch is not None]
        self.channels = Channels()
        for ch in keep:
            self.channels.by_uid[ch.uid] = ch
            self.channels.by_name[ch.name] = ch.uid
        return out

    # -- locating P and A

    def _located(self, tr: Transfer, p: Channel, a: Channel, now: float) -> list[Output]:
        tr.p, tr.a = p, a
        advance(tr, Step.LOCATED)
        tr.deadline = None
        job = tr.job
        log.info("transfer %s: P=%s (%s) A=%s (%s); moving P to %s,%s and A to %s,%s",
                 tr.key, p.name, p.uid, a.name, a.uid, self.s.transfer_context,
                 target_exten(job.target), self.s.hold_context, self.s.hold_exten)
        values = {
            "XFER_ID": job.xfer_id, "XFER_PEER": a.name, "XFER_PEER_UID": a.uid,
            "XFER_TARGET": job.dial, "XFER_RECONNECT": reconnect_mode(job),
            "XFER_DIAL_TIMEOUT": str(job.dial_timeout_s), "XFER_ANNOUNCE": job.announcement,
            "XFER_CALLERID": job.caller_id, "XFER_FALLBACK": fallback_location(job),
        }
        # All of them, every time: a second transfer of the same P must not inherit the
        # first one's announcement or caller-ID.
        for var in XFER_VARS:
            self._queue(tr, {"Action": "Setvar", "Channel": p.name, "Variable": var,
                             "Value": values[var]})
        self._queue(tr, {
            "Action": "Redirect", "Channel": p.name, "Context": self.s.transfer_context,
            "Exten": target_exten(job.target), "Priority": "1", "ExtraChannel": a.name,
            "ExtraContext": self.s.hold_context, "ExtraExten": self.s.hold_exten,
            "ExtraPriority": "1",
        })
        out: list[Output] = [self._note(tr, {
            "ami_p_channel": p.name, "ami_p_uid": p.uid, "ami_a_channel": a.name,
            "ami_a_uid": a.uid}, f"P={p.name} A={a.name}")]
        return out + self._pump(tr)

    def _listing_event(self, key: str, ev: Mapping[str, str], now: float) -> list[Output]:
        tr = self.transfers.get(key)
        if tr is None or tr.phase is not Phase.LOCATE:
            return []
        if ev.get("Event") == "CoreShowChannel":
            tr.listing.append(dict(ev))
            return []
        if ev.get("Event") != "CoreShowChannelsComplete":
            return []
        self._listings.pop(ev.get("ActionID", ""), None)
        # Only channels in a two-party bridge can be A; ask each its SIP Call-ID.
        members: dict[str, list[str]] = {}
        for item in tr.listing:
            if item.get("BridgeId"):
                members.setdefault(item["BridgeId"], []).append(item.get("Channel", ""))
        tr.probe = [n for names in members.values() if len(names) == 2 for n in names
                    if n.startswith("PJSIP/")]
        return self._probe_next(tr, now)

    def _probe_next(self, tr: Transfer, now: float) -> list[Output]:
        if not tr.probe:
            return self._fail_early(tr, now, "channels not found",
                                    f"no channel of Call-ID {tr.job.call_id} is bridged")
        self._queue(tr, {"Action": "Getvar", "Channel": tr.probe[0],
                         "Variable": "CHANNEL(pjsip,call-id)"})
        return self._pump(tr)

    def _probe_result(self, tr: Transfer, resp: Mapping[str, str], now: float) -> list[Output]:
        name = tr.probe.pop(0)
        if resp.get("Response") != "Success" or resp.get("Value") != tr.job.call_id:
            return self._probe_next(tr, now)
        a = self.channels.get(name)
        bridge = a.bridge_id if a else ""
        others = [i for i in tr.listing
                  if i.get("BridgeId") == bridge and i.get("Channel") != name]
        if a is None or not bridge or len(others) != 1:
            return self._fail_early(tr, now, "channels not found",
                                    f"{name} has Call-ID {tr.job.call_id} but no single peer")
        p = self.channels.get(others[0].get("Uniqueid", "")) or self.channels.get(
            others[0].get("Channel", ""))
        if p is None:
            return self._fail_early(tr, now, "channels not found", f"peer of {name} unknown")
        return self._located(tr, p, a, now)

    # -- actions and responses

    def _queue(self, tr: Transfer, fields: dict[str, str | list[str]]) -> None:
        tr.pending.append(fields)

    def _pump(self, tr: Transfer) -> list[Output]:
        """Send the transfer's next queued action unless one is awaited."""
        if tr.inflight or not tr.pending:
            return []
        fields = tr.pending.pop(0)
        self._seq += 1
        action_id = f"{self.name}-{self._seq:06d}"
        fields = {"Action": fields["Action"], **{k: v for k, v in fields.items()
                                                 if k != "Action"}, "ActionID": action_id}
        tr.inflight = action_id
        tr.inflight_fields = fields
        if fields["Action"] == "Originate":
            tr.originate_id = action_id
        self._inflight[action_id] = tr.key
        if fields["Action"] == "CoreShowChannels":
            self._listings[action_id] = tr.key
        return [SendAction(fields)]

    def _response(self, tr: Transfer, resp: Mapping[str, str], now: float) -> list[Output]:
        ok = resp.get("Response") == "Success"
        message = resp.get("Message", "")
        if tr.phase is Phase.LOCATE:
            if tr.probe:
                return self._probe_result(tr, resp, now)
            if not ok:  # CoreShowChannels refused
                return self._fail_early(tr, now, "channels not found",
                                        f"CoreShowChannels: {message}")
            return []  # the listing follows as events
        if tr.phase is Phase.SETVAR:
            if not ok:
                tr.pending.clear()
                log.error("transfer %s: Setvar on P %s refused: %s; nothing moved",
                          tr.key, tr.p.name if tr.p else "?", message)
                return self._fail_early(tr, now, "redirect-failed", f"Setvar: {message}")
            if tr.pending and tr.pending[0]["Action"] == "Redirect":
                advance(tr, Step.VARS_SET)
            return self._pump(tr)
        if tr.phase is Phase.REDIRECT:
            if not ok:
                log.error("transfer %s: dual Redirect of %s/%s refused: %s; P and A stay "
                          "bridged", tr.key, tr.p.name if tr.p else "?",
                          tr.a.name if tr.a else "?", message)
                return self._fail_early(tr, now, "redirect-failed", f"Redirect: {message}")
            advance(tr, Step.REDIRECTED)
            tr.deadline = now + self.s.move_confirm_s
            return self._check_moved(tr, now)
        # Later actions: Hangup of A, AMI Bridge, Originate of the recall, Hangup of P.
        return self._late_response(tr, ok, message, now)

    def _late_response(self, tr: Transfer, ok: bool, message: str,
                       now: float) -> list[Output]:
        last = tr.last_action
        if last == "Hangup-A":
            how = "hangup" if ok else f"already gone ({message})"
            log.info("transfer %s: A %s released: %s", tr.key, tr.a.name if tr.a else "?", how)
            return self._finish(tr, now, {"ami_result": tr.release_result, "ami_release": how},
                                f"A released: {how}")
        if last == "Hangup-P":
            return self._finish(tr, now, {"ami_p_hangup": "ok" if ok else message},
                                "P hung up: nothing to bring it back to")
        if last == "Bridge":
            if ok:
                tr.deadline = now + self.s.reconnect_wait_s
                return self._check_reconnected(tr, now)
            log.warning("transfer %s: AMI Bridge of P and A refused: %s; recalling A",
                        tr.key, message)
            return self._recall(tr, now)
        if last == "Originate":
            if not ok:
                return self._recall_failed(tr, now, f"Originate: {message}")
            tr.deadline = now + self.s.recall_wait_s
            return []
        return []

    def _send(self, tr: Transfer, purpose: str, fields: dict[str, str | list[str]]
              ) -> list[Output]:
        tr.last_action = purpose
        self._queue(tr, fields)
        return self._pump(tr)

    # -- following one transfer

    def _transfer_event(self, tr: Transfer, name: str, ev: Mapping[str, str],
                        ch: Channel | None, now: float) -> list[Output]:
        p, a = tr.p, tr.a
        assert p is not None and a is not None
        uid = ev.get("Uniqueid", "")
        out: list[Output] = []
        if tr.phase in (Phase.REDIRECT, Phase.MOVING):
            if uid == p.uid and (name == "BridgeLeave" or (
                    name == "Newexten" and ev.get("Context") == self.s.transfer_context)):
                tr.moved_p = True
            if uid == a.uid and (name in ("BridgeLeave", "MusicOnHoldStart", "Hangup") or (
                    name == "Newexten" and ev.get("Context") == self.s.hold_context)):
                tr.moved_a = True
            out += self._check_moved(tr, now)
        if name == "Hangup" and uid == a.uid:
            log.info("transfer %s: A's leg %s hung up (cause %s)", tr.key, a.name,
                     ev.get("Cause"))
            out += self._a_gone(tr, now)
        if name == "Hangup" and uid == p.uid:
            out += self._p_gone(tr, now, ev)
            return out
        if tr.phase in (Phase.DIALING, Phase.MOVING):
            out += self._dial_event(tr, name, ev, now)
        elif tr.phase is Phase.CAUSE:
            if uid and uid == tr.t_uid and name in ("Hangup", "HangupRequest"):
                c = _int(ev.get("Cause"))
                if c:
                    tr.cause = c
                if name == "Hangup" or c:
                    out += self._final_failure(tr, now)
            elif name == "UserEvent" and ev.get("UserEvent") == "XferFailed" and uid == p.uid:
                out += self._final_failure(tr, now)
        if name == "VarSet" and uid == p.uid and ev.get("Variable") == "XFER_RESULT":
            tr.wait_seen = ev.get("Value", "").upper() == "WAIT"
            if tr.wait_seen and tr.phase is Phase.RECONNECT:
                out += self._handed_back(tr, now)
        if name == "BridgeEnter" and tr.phase in (Phase.CAUSE, Phase.RECONNECT, Phase.RECALL):
            out += self._check_reconnected(tr, now)
        return out

    def _check_moved(self, tr: Transfer, now: float) -> list[Output]:
        if tr.phase is not Phase.MOVING or tr.inflight or not (tr.moved_p and tr.moved_a):
            return []
        advance(tr, Step.MOVED)
        tr.deadline = now + tr.job.dial_timeout_s + self.s.follow_slack_s
        log.info("transfer %s: moved (P to %s, A to %s)", tr.key, self.s.transfer_context,
                 self.s.hold_context)
        return [self._note(tr, {"ami_result": "moved"}, "dual Redirect done")]

    def _dial_event(self, tr: Transfer, name: str, ev: Mapping[str, str],
                    now: float) -> list[Output]:
        p = tr.p
        assert p is not None
        uid = ev.get("Uniqueid", "")
        if name == "DialBegin" and uid == p.uid:
            tr.t_uid = ev.get("DestUniqueid", "")
            self._mark_moved(tr)
            return [self._note(tr, {"ami_t_channel": ev.get("DestChannel", "")},
                               f"dialling {ev.get('DestChannel', '')}")]
        if name == "DialState" and uid == p.uid and ev.get("DialStatus") == "RINGING":
            if tr.rang or tr.final_sent:
                return []
            tr.rang = True
            return [*self._progress(tr, 180, "Ringing", now, "DialState RINGING")]
        if name == "HangupRequest" and uid and uid == tr.t_uid:
            tr.cause = _int(ev.get("Cause")) or tr.cause
            return []
        if name == "Hangup" and uid and uid == tr.t_uid:
            tr.cause = _int(ev.get("Cause")) or tr.cause
            return []
        if name == "DialEnd" and uid == p.uid:
            status = ev.get("DialStatus", "").upper()
            tr.dialstatus = status
            self._mark_moved(tr)
            if status == "ANSWER":
                return self._answered(tr, now)
            advance(tr, Step.DIAL_FAILED)
            if tr.cause:
                return self._final_failure(tr, now)
            tr.deadline = now + self.s.cause_wait_s
            return []
        if name == "UserEvent" and ev.get("UserEvent") == "XferFailed" and uid == p.uid:
            # The AGI's own report: used when DialEnd was never seen (an event filter).
            tr.dialstatus = tr.dialstatus or ev.get("DialStatus", "").upper() or "CONGESTION"
            self._mark_moved(tr)
            return self._final_failure(tr, now)
        return []

    def _mark_moved(self, tr: Transfer) -> None:
        if tr.phase is Phase.MOVING:  # dial events prove the move even if we missed it
            advance(tr, Step.MOVED)

    def _answered(self, tr: Transfer, now: float) -> list[Output]:
        assert tr.a is not None
        out: list[Output] = [
            *self._progress(tr, 200, "OK", now, "DialEnd ANSWER"),
            self._note(tr, {"ami_result": "target-answered", "ami_dialstatus": "ANSWER"},
                       "target answered"),
        ]
        advance(tr, Step.ANSWERED)
        if not tr.a.alive:
            out += self._finish(tr, now, {"ami_result": "a-released",
                                          "ami_release": "a hung up first"},
                                "A had already hung up")
        else:
            tr.deadline = now + tr.job.release_after_s
        return out

    def _final_failure(self, tr: Transfer, now: float) -> list[Output]:
        if tr.final_sent:
            return []
        status = tr.dialstatus or "CONGESTION"
        code, reason = final_status(status, tr.cause)
        detail = f"DialEnd {status}" + (f" cause {tr.cause}" if tr.cause is not None else "")
        log.info("transfer %s: target failed (%s) -> %d %s", tr.key, detail, code, reason)
        out: list[Output] = [
            *self._progress(tr, code, reason, now, detail),
            self._note(tr, {"ami_dialstatus": status, "ami_cause": str(tr.cause or "")},
                       detail),
        ]
        advance(tr, Step.FAILED)
        tr.deadline = now + self.s.reconnect_wait_s
        assert tr.a is not None
        if tr.job.on_failure.startswith("fallback:"):
            # The AGI takes P to the fallback; nobody comes back to A.
            return out + self._release_a(tr, now, "fallback")
        out += self._check_reconnected(tr, now)
        if tr.phase is Phase.RECONNECT:
            if tr.wait_seen:
                out += self._handed_back(tr, now)
            elif not tr.a.alive:
                tr.deadline = now + self.s.wait_grace_s
        return out

    def _handed_back(self, tr: Transfer, now: float) -> list[Output]:
        """XFER_RESULT=WAIT: the AGI left P parked for us.  A alive: AMI Bridge (safe now,
        the AGI has ended); A gone: recall it."""
        assert tr.p is not None and tr.a is not None
        if tr.inflight or tr.phase is not Phase.RECONNECT:
            return []
        if tr.a.alive:
            log.info("transfer %s: AGI parked P (XFER_RESULT=WAIT); bridging P and A", tr.key)
            return self._send(tr, "Bridge", {"Action": "Bridge", "Channel1": tr.p.name,
                                             "Channel2": tr.a.name, "Tone": "no"})
        return self._recall(tr, now)

    def _check_reconnected(self, tr: Transfer, now: float) -> list[Output]:
        p = tr.p
        assert p is not None
        other = self.channels.get(tr.recall_uid) if tr.recall_uid else tr.a
        if other is None or not p.bridge_id or p.bridge_id != other.bridge_id:
            return []
        if not tr.final_sent:
            # Bridged before the cause arrived: the failure is certain, publish it now.
            out = self._final_failure(tr, now)
            return out if tr.phase is Phase.DONE else out + self._check_reconnected(tr, now)
        if tr.recall_uid:
            return self._finish(tr, now, {"ami_result": "recalled", "ami_bridge": p.bridge_id,
                                          "ami_recall_channel": other.name},
                                f"recalled A ({other.name}) and bridged to P")
        how = "ami-bridge" if tr.last_action == "Bridge" else "agi"
        return self._finish(tr, now, {"ami_result": "reconnected", "ami_bridge": p.bridge_id,
                                      "ami_reconnect": how},
                            f"P and A bridged again ({p.bridge_id}, by {how})")

    def _recall(self, tr: Transfer, now: float) -> list[Output]:
        assert tr.p is not None and tr.a is not None
        if tr.recall_uid:
            return []
        advance(tr, Step.RECALLING)
        tr.deadline = now + self.s.recall_wait_s
        tr.recall_uid = f"{self.name}-recall-{tr.job.refer_id}-{self._seq + 1}"
        endpoint = recall_channel(tr.a.name, tr.job.recall_uri)
        log.info("transfer %s: A's leg is gone; recalling %s as %s", tr.key, endpoint,
                 tr.recall_uid)
        out: list[Output] = [self._note(tr, {"ami_recall_channel_id": tr.recall_uid},
                                        f"recall {endpoint}")]
        return out + self._send(tr, "Originate", {
            "Action": "Originate", "Channel": endpoint, "Context": self.s.recall_context,
            "Exten": "s", "Priority": "1", "Timeout": str(self.s.recall_timeout_ms),
            "Variable": [f"XFER_PEER={tr.p.name}", f"XFER_ID={tr.job.xfer_id}"],
            "Async": "true", "ChannelId": tr.recall_uid,
        })

    def _originate_response(self, tr: Transfer, ev: Mapping[str, str],
                            now: float) -> list[Output]:
        if ev.get("Response") == "Success":
            return self._check_reconnected(tr, now)
        return self._recall_failed(tr, now, f"OriginateResponse {ev.get('Response')} "
                                            f"reason {ev.get('Reason')}")

    def _recall_failed(self, tr: Transfer, now: float, why: str) -> list[Output]:
        assert tr.p is not None
        if tr.phase is Phase.DONE:
            return []
        log.error("transfer %s: recall of A failed (%s); hanging up P %s so it is not left "
                  "parked", tr.key, why, tr.p.name)
        out: list[Output] = [self._note(tr, {"ami_result": "recall-failed"}, why)]
        if not tr.p.alive:
            return out + self._finish(tr, now, {}, "P already gone")
        return out + self._send(tr, "Hangup-P", {"Action": "Hangup", "Channel": tr.p.name,
                                                 "Cause": "16"})

    def _release_a(self, tr: Transfer, now: float, why: str,
                   result: str = "a-released") -> list[Output]:
        assert tr.a is not None
        advance(tr, Step.RELEASING)
        tr.deadline = None
        tr.release_result = result
        if not tr.a.alive:
            return self._finish(tr, now, {"ami_result": result,
                                          "ami_release": "a hung up first"},
                                f"A had already hung up ({why})")
        notified_at = None if tr.final_at is None else tr.final_at + self.s.final_notify_wait_s
        if notified_at is not None and now < notified_at:
            tr.deadline, tr.release_why = notified_at, why
            log.info("transfer %s: releasing A %s in %.2f s, after its final NOTIFY (%s)",
                     tr.key, tr.a.name, notified_at - now, why)
            return []
        tr.release_why = ""
        log.info("transfer %s: releasing A %s (%s)", tr.key, tr.a.name, why)
        return self._send(tr, "Hangup-A", {"Action": "Hangup", "Channel": tr.a.name,
                                           "Cause": "16"})

    def _a_gone(self, tr: Transfer, now: float) -> list[Output]:
        if tr.phase is Phase.RELEASE and not tr.inflight:
            return self._finish(tr, now, {"ami_result": tr.release_result,
                                          "ami_release": "a hung up first"},
                                "A hung up before the release timer")
        if tr.phase is Phase.RECONNECT and not tr.inflight and not tr.wait_seen:
            tr.deadline = now + self.s.wait_grace_s
        return [self._note(tr, {"ami_a_hungup": f"{now:.3f}"}, "A's leg hung up")]

    def _p_gone(self, tr: Transfer, now: float, ev: Mapping[str, str]) -> list[Output]:
        """P hung up.  Before an outcome: 487.  Whatever the phase, A must not stay parked."""
        out: list[Output] = []
        if not tr.final_sent:
            if tr.phase is Phase.CAUSE:
                out += self._final_failure(tr, now)  # the target's failure came first
            elif tr.phase in (Phase.MOVING, Phase.DIALING):
                log.info("transfer %s: P hung up before the target answered", tr.key)
                out += self._progress(tr, 487, "Request Terminated", now,
                                      f"P hung up (cause {ev.get('Cause')})")
        if tr.inflight or tr.phase in (Phase.DONE, Phase.REDIRECT):
            return out  # the awaited response decides what comes next
        if tr.phase is Phase.RELEASE and tr.last_action == "Hangup-A":
            return out
        if tr.phase is Phase.RECALL:
            return out + self._finish(tr, now, {"ami_result": "caller-gone"},
                                      "P hung up during the recall")
        return out + self._release_a(tr, now, "P hung up", result="caller-gone")

    def _timeout(self, tr: Transfer, now: float) -> list[Output]:
        if tr.phase is Phase.LOCATE:
            return self._fail_early(tr, now, "channels not found", "no answer to the lookup")
        if tr.phase is Phase.MOVING:
            log.error("transfer %s: Redirect answered Success but no move seen in %.1f s",
                      tr.key, self.s.move_confirm_s)
            out = self._progress(tr, 503, "Service Unavailable", now,
                                 "redirect not confirmed")
            return out + self._finish(tr, now, {"ami_result": "redirect-unconfirmed"},
                                      "no BridgeLeave/Newexten/MusicOnHoldStart after Redirect")
        if tr.phase is Phase.DIALING:
            out = self._progress(tr, 408, "Request Timeout", now, "no dial outcome seen")
            return out + self._finish(tr, now, {"ami_result": "no-outcome"},
                                      "no DialEnd within the dial timeout")
        if tr.phase is Phase.CAUSE:
            return self._final_failure(tr, now)
        if tr.phase is Phase.RECONNECT:
            assert tr.a is not None
            if not tr.a.alive or tr.wait_seen:
                return self._handed_back(tr, now) if tr.a.alive else self._recall(tr, now)
            log.error("transfer %s: P and A not bridged again within %.0f s", tr.key,
                      self.s.reconnect_wait_s)
            return self._finish(tr, now, {"ami_result": "reconnect-unconfirmed"},
                                "no BridgeEnter of P and A")
        if tr.phase is Phase.RECALL:
            return self._recall_failed(tr, now, "recall not bridged in time")
        if tr.phase is Phase.RELEASE:
            why = tr.release_why or f"release_after_s={tr.job.release_after_s:g}"
            return self._release_a(tr, now, why, result=tr.release_result)
        return []

    # -- endings

    def _fail_early(self, tr: Transfer, now: float, result: str, detail: str) -> list[Output]:
        """Nothing moved: final 503 and P/A left as they were."""
        if result == "channels not found":
            log.error("transfer %s: channels not found (%s); call left as it was",
                      tr.key, detail)
            fields = {"ami_result": "channels-not-found"}
            pdetail = "channels not found"
        else:
            fields = {"ami_result": result, "ami_error": detail}
            pdetail = detail
        out = self._progress(tr, 503, "Service Unavailable", now, pdetail)
        return out + self._finish(tr, now, fields, detail)

    def _finish(self, tr: Transfer, now: float, fields: dict[str, str],
                detail: str) -> list[Output]:
        if tr.phase is Phase.DONE:
            return []
        advance(tr, Step.FINISHED)
        tr.deadline = None
        tr.pending.clear()
        self.transfers.pop(tr.key, None)
        out: list[Output] = []
        if fields or detail:
            out.append(self._note(tr, fields, detail))
        out.append(Ack(tr.entry_id))
        return out

    def _progress(self, tr: Transfer, code: int, reason: str, now: float,
                  detail: str) -> list[Output]:
        """One Progress; never a second final (the subscription is already terminated)."""
        final = code >= 200
        if tr.final_sent:
            log.warning("transfer %s: %d %s (%s) not sent: the final is already out",
                        tr.key, code, reason, detail)
            return []
        tr.final_sent = final
        if final:
            tr.final_at = now
        job = tr.job
        fields = [Annotate(job.call_id, job.refer_id, {"ami_final": str(code)}, detail)
                  ] if final else []
        return [Publish(job.reply_to, Progress(job.call_id, job.refer_id, code, reason, final,
                                               now, detail)), *fields]

    def _note(self, tr: Transfer, fields: dict[str, str], detail: str) -> Annotate:
        return Annotate(tr.job.call_id, tr.job.refer_id, dict(fields), detail)
