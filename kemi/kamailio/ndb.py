"""Redis from a SIP worker through Kamailio's ndb_redis (C, hiredis) instead of the Python
RESP client: the packed runner of kemi.storage.packed carried as one `%s` value.

The cfg loads ndb_redis with a server named "referee" (-A REFEREE_REDIS=..., see the
example cfgs); Python finds `KSR.ndb_redis` and, for a plain redis:// url in referee.toml,
sends every round trip through it.  Measured on one 2 vCPU VM (bench/README.md, issue 12),
a REFER costs about the same CPU either way: packing the batch as JSON costs what the
Python client's socket work cost.  It is the base for Redis calls made from cfg alone.

The cfg's server and referee.toml's url are written in two places, so on its first trip a
process proves they name the same Redis (a nonce written through ndb_redis, read back
through the url).  If they do not, it says so in the log and talks to the url's Redis
with the Python client: referee.toml is what every other part of referee reads.
"""

from __future__ import annotations

import sys
import time
import uuid

import KSR  # provided by app_python3

from kemi.core.redis_url import ndb_server
from kemi.kamailio.glue import log, pv
from kemi.storage.packed import PackedClient, resp_transport
from kemi.storage.resp import CircuitBreaker, RedisReplyError, RedisUnavailable, RespClient

SERVER = "referee"  # the name in modparam("ndb_redis", "server", "name=referee;...")
REPLY = "rf"  # the $redis(rf=>...) container of a reply
_ERROR = 6  # hiredis REDIS_REPLY_ERROR


def available(url: str) -> bool:
    """ndb_redis is loaded and referee.toml's url is one it can reach (redis:// or
    unix://: Debian's ndb_redis has no TLS; Sentinel and Cluster stay with the Python
    client)."""
    return hasattr(KSR, "ndb_redis") and ndb_server(url) is not None


class NdbTransport:
    """`send(sha, text, payload)` for kemi.storage.packed.PackedClient."""

    def __init__(self, url: str, timeout_s: float, prefix: str) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.prefix = prefix
        # The check, and the fallback.  Its breaker never opens: referee's own breaker
        # (PackedClient's) stands in front of every call; a second one, opened by the
        # fallback's failures during an outage, would refuse the trial once Redis is back.
        self.resp = RespClient(url, timeout_s=timeout_s,
                               breaker=CircuitBreaker(failures=sys.maxsize))
        self.same: bool | None = None  # None: not checked yet
        self.loaded: set[str] = set()  # scripts Redis has (sent once by EVAL)
        self._fallback = resp_transport(self.resp)
        self.around = False  # calls going around ndb_redis's disable window (_around)

    @property
    def address(self) -> str:
        return self.resp.address

    def __call__(self, sha: str, text: str, payload: str) -> str:
        """`EVALSHA sha 0 payload` (the packed runner, or a script the cfg also runs)."""
        started = time.monotonic()
        try:
            if self.same is None:  # (a process whose first trips met no Redis checks again)
                self._check()
            if not self.same:
                return self._fallback(sha, text, payload)
            value = self._ndb(sha, text, payload)
        except RedisUnavailable as exc:
            if time.monotonic() - started > self.timeout_s / 4:
                raise  # it waited for Redis: Redis does not answer
            return self._around(exc, sha, text, payload)
        if self.around:
            self.around = False
            log(KSR.notice, f"ndb_redis server {SERVER!r} answers again: Redis calls go "
                            "through it again")
        return value

    def _around(self, exc: RedisUnavailable, sha: str, text: str, payload: str) -> str:
        """ndb_redis refused without waiting for Redis: after failures it disables the
        server for its disable_time, counted from its own last failure, and that window
        may outlast referee's breaker ([redis] breaker_open_s), which has just let this
        call through.  The call goes to Redis itself through the Python client: Redis
        back is seen now, not up to one window later (REFERs refused 503 meanwhile)."""
        value = self._fallback(sha, text, payload)  # Redis away too: raises
        if not self.around:
            self.around = True
            log(KSR.notice, f"ndb_redis server {SERVER!r} refused at once ({exc}) -- its "
                            "disable window (disable_time) is still open -- but Redis "
                            f"answers: calls go through the Python client to {self.address} "
                            "until ndb_redis answers again")
        return value

    def _ndb(self, sha: str, text: str, payload: str) -> str:
        if sha not in self.loaded:
            # A process's first trip sends the runner itself (Redis caches it): no
            # NOSCRIPT, which ndb_redis would log as an error, in a fresh process.
            kind, value = self._command("EVAL %s 0 %s", text, payload)
        else:
            kind, value = self._command("EVALSHA %s 0 %s", sha, payload)
            if kind == _ERROR and value.startswith("NOSCRIPT"):  # Redis restarted
                kind, value = self._command("EVAL %s 0 %s", text, payload)
        if kind != _ERROR:
            self.loaded.add(sha)
        if kind == _ERROR:
            raise RedisReplyError(value)
        return value

    def _command(self, fmt: str, a: str, b: str) -> tuple[int | None, str]:
        """One ndb_redis command; (hiredis reply type, text).  No reply at all (refused,
        timed out, closed: ndb_redis reconnects on the next command) raises.  A success
        reads one PV: the runner answers ASCII text (kemi.storage.packed), so no decoding
        can fail."""
        rc = KSR.ndb_redis.redis_cmd_p2(SERVER, fmt, a, b, REPLY)
        try:
            if rc > 0:
                value = KSR.pv.get(f"$redis({REPLY}=>value)")
                if value is not None:
                    return 1, str(value)
            kind = _int(pv(f"$redis({REPLY}=>type)"))
            if kind == _ERROR:
                value = pv(f"$redis({REPLY}=>info)") or pv(f"$redis({REPLY}=>value)") or ""
            else:
                value = pv(f"$redis({REPLY}=>value)") or ""
        finally:
            KSR.ndb_redis.redis_free(REPLY)
        if kind is None or (rc < 0 and kind != _ERROR):
            raise RedisUnavailable(
                f"redis {self.address} (ndb_redis server {SERVER!r}): no reply within "
                f"{self.timeout_s * 1000:.0f} ms or no connection (rc {rc})"
            )
        return kind, value

    def _check(self) -> None:
        """Written through ndb_redis, read through the url: the same Redis, or say so."""
        key = f"{self.prefix}:ndb-check:{uuid.uuid4().hex}"
        nonce = uuid.uuid4().hex
        kind, value = self._command("SET %s %s EX 60", key, nonce)
        if kind == _ERROR:
            raise RedisReplyError(value)
        got = self.resp.call("GET", key)  # RedisUnavailable: checked again next time
        self.resp.call("DEL", key)
        self.same = got == nonce.encode()
        if self.same:
            self.resp.close()
            return
        log(KSR.err, f"ndb_redis server {SERVER!r} is not the Redis of referee.toml's "
                     f"[redis] url {self.address}: this process uses the url through the "
                     "Python client (slower); make REFEREE_REDIS in the cfg name the same "
                     "Redis")


def client(url: str, timeout_s: float, prefix: str, breaker: CircuitBreaker) -> PackedClient:
    transport = NdbTransport(url, timeout_s, prefix)
    return PackedClient(transport, transport.address, timeout_s, breaker)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
