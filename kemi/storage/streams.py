"""The Redis streams of anchored mode, one definition for both sides: Kamailio queues a
MoveJob for its Asterisk's controller and reads the Progress reported back; the AMI
controller (agi.ami) reads jobs and publishes progress.  Messages and key names:
kemi.core.anchor.  Every command of the protocol is written here and nowhere else.

`client` is anything with `.call(*args)` (kemi.storage.resp.RespClient).
"""

from __future__ import annotations

from typing import Any

from kemi.core.anchor import MoveJob, Progress, jobs_key
from kemi.storage.scripts import _pairs, _s

# Entries kept per stream (approximate trimming): far more than can wait unread.
STREAM_MAXLEN = 10000

Entry = tuple[str, dict[str, str] | None]  # (entry id, fields; None: trimmed meanwhile)


def _flat(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def job_command(prefix: str, asterisk: str, job: MoveJob) -> tuple:
    """The XADD that queues `job`, to send in a round trip with others."""
    return ("XADD", jobs_key(prefix, asterisk), "MAXLEN", "~", STREAM_MAXLEN, "*",
            *_flat(job.to_fields()))


def publish_progress(client: Any, stream: str, progress: Progress) -> None:
    """To the reply_to stream of the job: the node that accepted the REFER reads it."""
    client.call("XADD", stream, "MAXLEN", "~", STREAM_MAXLEN, "*",
                *_flat(progress.to_fields()))


def ensure_group(client: Any, key: str, group: str) -> None:
    """The consumer group, made with its stream if need be (an existing one is fine)."""
    try:
        client.call("XGROUP", "CREATE", key, group, "0", "MKSTREAM")
    except Exception as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_group(client: Any, key: str, group: str, consumer: str, start: str, count: int,
               block_ms: int | None = None) -> list[Entry]:
    """XREADGROUP: `start` "0" re-reads this consumer's pending entries, ">" new ones."""
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return entries(client.call(*args, "STREAMS", key, start))


def ack(client: Any, key: str, group: str, *entry_ids: str) -> None:
    """Acknowledge entries, any number in one XACK (one round trip for a batch)."""
    if entry_ids:
        client.call("XACK", key, group, *entry_ids)


def claim_idle(client: Any, key: str, group: str, consumer: str, idle_ms: int,
               count: int = 100) -> list[Entry]:
    """Entries other consumers left pending longer than idle_ms, now this consumer's."""
    reply = client.call("XAUTOCLAIM", key, group, consumer, idle_ms, "0-0", "COUNT", count)
    items = reply[1] if reply and len(reply) > 1 else []
    return [(_s(e[0]), _pairs(e[1]) if e[1] is not None else None) for e in items if e]


def entries(reply: Any) -> list[Entry]:
    """[(entry id, fields)] out of an XREADGROUP reply (all its streams)."""
    out: list[Entry] = []
    for _key, items in reply or ():
        for entry_id, body in items or ():
            out.append((_s(entry_id), _pairs(body) if body is not None else None))
    return out
