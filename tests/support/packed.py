"""A packed client (kemi.storage.packed) whose transport is a RespClient: the same runner
and JSON that ndb_redis carries inside Kamailio, run by a real redis-server, so the
stores' behaviour tests hold for the packed path too."""

from __future__ import annotations

from kemi.storage.packed import PackedClient, resp_transport
from kemi.storage.resp import RespClient


def packed_client(url: str, timeout_s: float = 5.0) -> PackedClient:
    resp = RespClient(url, timeout_s=timeout_s)
    client = PackedClient(resp_transport(resp), resp.address, timeout_s)
    client.close = resp.close  # type: ignore[method-assign]
    client.url = url  # type: ignore[attr-defined]
    return client
