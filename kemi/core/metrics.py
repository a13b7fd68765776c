"""The counters referee keeps in Kamailio's statistics (group "script" -- the statistics
module's group for variables a config declares -- every name prefixed "referee_"), so
`kamcmd stats.get_statistics script:` and xhttp_prom's /metrics show them on every node.

The names are declared once here; config-examples/kamailio/referee-stats.cfg declares the
same list for Kamailio (a test holds the two equal).  Decisions count through
kemi.core.actions.Count; the glue counts what only it sees (Redis trips, the journal).
"""

from __future__ import annotations

PREFIX = "referee_"

REFUSED_CODES = (400, 403, 481, 486, 500, 503, 603)
REFUSED_KINDS = ("syntax", "policy", "limit", "out_of_dialog", "replaces", "store")
OUTCOMES = ("succeeded", "rejected", "expired", "failed_4xx", "failed_5xx", "failed_6xx",
            "failed_other")

NAMES: tuple[str, ...] = (
    "refers_received", "refers_relayed", "refers_relayed_unrecorded", "refers_accepted",
    "refers_unrelayed",
    *(f"refers_refused_{c}" for c in REFUSED_CODES), "refers_refused_other",
    *(f"refers_refused_{k}" for k in REFUSED_KINDS),
    *(f"transfers_{o}" for o in OUTCOMES),
    "transfers_live",  # gauge: open transfers of the whole cluster (the sweep sets it)
    # notifies_applied: NOTIFY events the state table took (applied or ignored as
    # legal); events_illegal: any event it refused (recorded as an anomaly).
    "notifies_received", "notifies_refused", "notifies_applied", "events_illegal",
    "replaces_tied", "replaces_accepted", "replaces_refused",
    "invites_tied", "invites_untied", "invites_refused",
    "redis_round_trips", "redis_failures", "redis_breaker_openings",
    "redis_breakers_open",  # gauge: this node's processes whose breaker is open now
    "events_spooled", "events_replayed",
    "anchored_accepted", "anchored_jobs_queued", "anchored_progress_read",
    # index writes kamailio-native.cfg handed to Python (first of a process, NOSCRIPT,
    # no reply, no ndb_redis): an ordinary call's are made in cfg
    "dialog_index_python",
)


def refused(code: int, kind: str) -> tuple[str, str]:
    """The two counters a refused REFER bumps: by code, and by what refused it."""
    assert kind in REFUSED_KINDS, kind
    by_code = f"refers_refused_{code}" if code in REFUSED_CODES else "refers_refused_other"
    return by_code, f"refers_refused_{kind}"


def outcome(state: str, final_sipfrag: str = "") -> str:
    """The counter of a transfer that just turned final."""
    if state != "failed":
        return f"transfers_{state}"
    code = final_sipfrag[:1]
    return f"transfers_failed_{code}xx" if code in ("4", "5", "6") else "transfers_failed_other"



def recorded(event: str, result: str, final: bool, new: str | None,
             fields: dict[str, str]) -> list[str]:
    """The counters one event bumps once the store took it, live or replayed from the
    journal: a NOTIFY the state table took (`result` applied or ignored: legal), an
    illegal event, and the outcome of a transfer the event made final."""
    out = []
    if event.startswith("notify-") and result in ("applied", "ignored"):
        out.append("notifies_applied")
    if result == "illegal":
        out.append("events_illegal")
    if result == "applied" and final and new is not None:
        out.append(outcome(new, fields.get("final_sipfrag") or fields.get("invite_reply", "")))
    return out
