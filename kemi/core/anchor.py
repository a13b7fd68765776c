"""Anchored transfers: the messages Kamailio and the Asterisk side exchange through Redis.

Sans-IO: dataclasses, their flat encodings for Redis stream entries, stream key names and
the mapping from Asterisk's dial outcome to the sipfrag the transferor is told.  The
Kamailio glue (kemi.kamailio), the AMI controller and the FastAGI server (agi/) all speak
through these and nothing else, so each side is tested against the same definitions.

Why streams: the Asterisk side may be down, slow or restarted; a job or a progress line
waits in Redis until it is read and acknowledged (consumer groups), and Kamailio reads its
progress from its sweep timer, never from a SIP worker.

    p:{anchor:<asterisk>}:jobs       stream  MoveJob entries, group "controllers"
    p:{anchor:<node>}:progress       stream  Progress entries for the node that accepted
                                             the REFER, group "kamailio"
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields

JOBS_GROUP = "controllers"
PROGRESS_GROUP = "kamailio"


class AnchorError(ValueError):
    """A job or progress entry that cannot be used; the message says which field and why."""


def jobs_key(prefix: str, asterisk: str) -> str:
    return f"{prefix}:{{anchor:{asterisk}}}:jobs"


def progress_key(prefix: str, node: str) -> str:
    return f"{prefix}:{{anchor:{node}}}:progress"


def xfer_id(call_id: str, refer_id: str) -> str:
    """The transfer's name on the Asterisk side (channel variable XFER_ID)."""
    return f"{refer_id}@{call_id}"


def split_xfer_id(value: str) -> tuple[str, str]:
    """(call_id, refer_id) back from xfer_id(); AnchorError if it is not one."""
    refer_id, sep, call_id = value.partition("@")
    if not sep or not refer_id.isdigit() or not call_id:
        raise AnchorError(f"XFER_ID {value!r} is not <refer-cseq>@<call-id>")
    return call_id, refer_id


def _encode(obj) -> dict[str, str]:
    out = {}
    for key, value in asdict(obj).items():
        if isinstance(value, bool):
            value = "1" if value else "0"
        out[key] = str(value)
    return out


def _decode(cls, raw: dict, what: str):
    raw = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            if f.default is not MISSING:
                continue
            raise AnchorError(f"{what}: field {f.name!r} missing")
        value = raw[f.name]
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        try:
            if kind == "int":
                value = int(value)
            elif kind == "float":
                value = float(value)
            elif kind == "bool":
                if value not in ("0", "1"):
                    raise ValueError(value)
                value = value == "1"
        except ValueError:
            raise AnchorError(f"{what}: field {f.name!r} = {value!r} is not a {kind}") from None
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class MoveJob:
    """Kamailio -> AMI controller: move the channels of an anchored dialog.

    The REFER came from the transferor A inside its dialog with Asterisk (call_id); the
    controller finds the channel bridged to A's (the transferee P), sets the XFER_*
    variables on P and redirects P to the transfer context and A to the hold context.
    """

    call_id: str  # the A-Asterisk dialog (and the REFER's) Call-ID
    refer_id: str  # the REFER's CSeq number: the transfer's id within the dialog
    target: str  # the approved Refer-To URI
    dial: str  # what Asterisk dials, e.g. "PJSIP/2000" ([anchored] dial)
    transferor: str  # A's address-of-record (Referred-By, else From)
    reply_to: str  # the progress stream of the node that accepted the REFER
    created_at: float
    announcement: str = ""  # sound played to P before dialling ("" = none)
    caller_id: str = ""  # CALLERID(num) presented to the target ("" = P's own)
    dial_timeout_s: int = 30
    # What P gets when the target fails: "reconnect" (back to A, or A recalled when its
    # leg is gone) or "fallback:<context>,<exten>,<priority>".
    on_failure: str = "reconnect"
    release_after_s: float = 32.0
    # A's Contact from its REFER: where a recall of A is sent when A's leg is gone
    # ("" = the endpoint's AOR contact, which may have no user part).
    recall_uri: str = ""

    @property
    def xfer_id(self) -> str:
        return xfer_id(self.call_id, self.refer_id)

    def to_fields(self) -> dict[str, str]:
        return _encode(self)

    @classmethod
    def from_fields(cls, raw: dict) -> MoveJob:
        job = _decode(cls, raw, "move job")
        if not job.refer_id.isdigit():
            raise AnchorError(f"move job: refer_id {job.refer_id!r} is not a CSeq number")
        if job.on_failure != "reconnect" and not job.on_failure.startswith("fallback:"):
            raise AnchorError(
                f"move job: on_failure {job.on_failure!r} is neither 'reconnect' nor "
                "'fallback:<context>,<exten>,<priority>'"
            )
        if job.dial_timeout_s <= 0:
            raise AnchorError(f"move job: dial_timeout_s {job.dial_timeout_s} must be > 0")
        return job


@dataclass(frozen=True)
class Progress:
    """Asterisk side -> the Kamailio node that accepted the REFER: one NOTIFY to send.

    code/reason form the sipfrag status line; final means the subscription ends with this
    NOTIFY (Subscription-State: terminated).
    """

    call_id: str
    refer_id: str
    code: int
    reason: str
    final: bool
    at: float
    detail: str = ""  # what Asterisk showed, e.g. "DialEnd BUSY cause 17"

    def sipfrag(self) -> str:
        return f"SIP/2.0 {self.code} {self.reason}\r\n"

    def to_fields(self) -> dict[str, str]:
        return _encode(self)

    @classmethod
    def from_fields(cls, raw: dict) -> Progress:
        p = _decode(cls, raw, "progress")
        if not 100 <= p.code <= 699:
            raise AnchorError(f"progress: code {p.code} is not a SIP status")
        if p.code < 200 and p.final:
            raise AnchorError(f"progress: a final progress needs a final status, not {p.code}")
        if p.code >= 200 and not p.final:
            raise AnchorError(f"progress: status {p.code} must be final")
        return p


# Asterisk's DIALSTATUS (with HANGUPCAUSE where it tells more) -> what the transferor hears.
_DIALSTATUS = {
    "ANSWER": (200, "OK"),
    "BUSY": (486, "Busy Here"),
    "NOANSWER": (480, "Temporarily Unavailable"),
    "CANCEL": (487, "Request Terminated"),
    "CONGESTION": (503, "Service Unavailable"),
    "CHANUNAVAIL": (503, "Service Unavailable"),
    "DONTCALL": (603, "Decline"),
    "TORTURE": (603, "Decline"),
    "INVALIDARGS": (500, "Server Internal Error"),
}
# Q.850 causes that name the SIP status better than DIALSTATUS does (RFC 3398 / Asterisk).
_CAUSE = {
    1: (404, "Not Found"),
    3: (404, "Not Found"),
    17: (486, "Busy Here"),
    18: (408, "Request Timeout"),
    19: (480, "Temporarily Unavailable"),
    21: (603, "Decline"),
    27: (502, "Bad Gateway"),
    28: (484, "Address Incomplete"),
    34: (503, "Service Unavailable"),
    38: (503, "Service Unavailable"),
}


def final_status(dialstatus: str, cause: int | None = None) -> tuple[int, str]:
    """The sipfrag status for how Asterisk's Dial ended.  ANSWER is 200 whatever the cause;
    for a failure a telling Q.850 cause wins (CHANUNAVAIL with cause 1 is a 404)."""
    status = dialstatus.strip().upper()
    if status == "ANSWER":
        return 200, "OK"
    if cause in _CAUSE and status not in ("CANCEL",):
        return _CAUSE[cause]
    if status in _DIALSTATUS:
        return _DIALSTATUS[status]
    return 500, "Server Internal Error"
