"""What every referee store shares: the Redis client seen through `.call`, a key prefix,
scripts sent by EVALSHA (EVAL after NOSCRIPT), and the hash tag that keeps a call's keys
in one Cluster slot."""

from __future__ import annotations

import hashlib
from typing import Any

SEP = "\x1f"


def _s(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A hash reply as a dict, whether the client gave a flat list or a dict (redis-py)."""
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    it = iter(reply or ())
    return {_s(k): _s(v) for k, v in zip(it, it, strict=True)}


def _is_noscript(exc: Exception) -> bool:
    text = str(getattr(exc, "message", "") or exc)
    return (
        type(exc).__name__ == "NoScriptError"
        or text.startswith("NOSCRIPT")
        or "No matching script" in text
    )


def call_tag(call_id: str) -> str:
    """The hash tag of a dialog: its Call-ID, unless a brace would break the tag."""
    if not call_id:
        raise ValueError("empty Call-ID")
    if "{" in call_id or "}" in call_id:
        return hashlib.sha1(call_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return call_id


def normalise_refer_id(refer_id: str | int) -> str:
    """A REFER's CSeq number as canonical text ("007" and 7 are the same REFER)."""
    text = str(refer_id).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(f"refer id {refer_id!r} is not a CSeq number")
    return str(int(text))


class _Script:
    """A script and its Cluster variant: the same text under a `#!lua` shebang, which makes
    Redis (7.0+) itself refuse any access outside the slot of the script's keys."""

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.cluster_text = "#!lua\n" + text
        self.cluster_sha = hashlib.sha1(self.cluster_text.encode()).hexdigest()
        SCRIPTS.append(self)


SCRIPTS: list[_Script] = []  # every script the stores send (`referee check` asks Redis)


class ScriptStore:
    """What every referee store shares: a client, a brace-free key prefix, and scripts run
    by EVALSHA with EVAL as the fallback after a NOSCRIPT (a restarted or flushed Redis, or
    a Cluster node that has not seen the script yet).

    `client` is anything with `.call(*args)` (kemi.storage.resp.RespClient / ClusterClient) or
    redis-py's `execute_command`.  A client whose `cluster` attribute is true gets the
    Cluster path (scripts confined to the call's slot).  Transport errors propagate: the
    caller picks fail-open/closed.
    """

    def __init__(self, client: Any, prefix: str):
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix {prefix!r} must be non-empty and brace-free")
        self._client = client
        self._call = getattr(client, "call", None) or client.execute_command
        self.cluster = getattr(client, "cluster", False) is True  # redis-py: a method
        self.prefix = prefix
        self.noscript_fallbacks = 0

    @property
    def client(self) -> Any:
        """The client the store talks through (for commands beside its own)."""
        return self._client

    def _eval(self, script: _Script, keys: list[str], args: list[str]):
        sha, text = (script.cluster_sha, script.cluster_text) if self.cluster else (
            script.sha, script.text)
        try:
            return self._call("EVALSHA", sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
        self.noscript_fallbacks += 1
        return self._call("EVAL", text, len(keys), *keys, *args)

    def _pipeline(self, commands: list[tuple]) -> list:
        """Commands in one round trip (the Cluster path only: ClusterClient groups them by
        node); an error reply raises after all ran, as `call` would."""
        replies = self._client.pipeline(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
