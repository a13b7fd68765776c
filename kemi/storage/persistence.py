"""Whether the Redis referee writes to keeps what it was told through a crash.

Debian's stock redis.conf snapshots (RDB) only: a `kill -9` or a power cut loses every
transfer accepted since the last snapshot (a probe lost 500 of 696).  With the append
only file (`appendonly yes`, `appendfsync everysec`) at most about a second is lost; a
replica under Sentinel survives the host too.  Pure: the glue and `referee check` hand
over what `INFO persistence` said.
"""

from __future__ import annotations


def aof_enabled(info: str) -> bool | None:
    """From `INFO persistence`: is the append-only file on?  None if it does not say."""
    for line in info.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "aof_enabled":
            return value.strip() == "1"
    return None


def persistence_warning(address: str, info: str) -> str | None:
    """The warning for an operator when `address`'s Redis would lose transfers."""
    if aof_enabled(info) is False:
        return (f"Redis at {address} has appendonly off: a crash loses every transfer "
                "recorded since its last snapshot; set 'appendonly yes' and 'appendfsync "
                "everysec' (config-examples/redis/redis.conf)")
    return None
