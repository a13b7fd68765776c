"""A minimal RESP2 Redis client for Kamailio's synchronous SIP workers.

Why our own: redis-py costs ~2.5x a C client per command (notes/kamailio-kemi.md), and a
SIP worker must never wait on Redis longer than a fixed budget.  So the client is small:

* a sans-IO part (`encode`, `RespParser`) tested on any split of the byte stream;
* a socket part (`RespClient`) that connects lazily (Kamailio forks after mod_init, and
  a socket inherited across fork is dropped), bounds the *whole* call — connect, send,
  receive — by one deadline, closes the socket on any transport trouble so the next
  call starts clean, and reports to a per-process `CircuitBreaker` that fails fast while
  Redis is known to be down.

Error replies are values (`RedisReplyError`) in the parser and in `pipeline`, and raised
by `call`; transport trouble always raises `RedisUnavailable`.

A Sentinel-managed primary: `SentinelClient` (what `RespClient("redis+sentinel://s1:p,
s2:p/name")` gives) asks the Sentinels where the primary is before connecting, and again
after a transport failure or a READONLY reply (a failover made the old address a
replica): that call fails (the REFER gets its 503), the next one goes to the new primary.

Redis Cluster: `ClusterClient` (what `RespClient("redis+cluster://h1:p1,h2:p2")` gives)
keeps the same API, routes each command by its first key's slot (CRC16, written here),
follows MOVED/ASK, and sends a pipeline to all the nodes it touches before reading any
reply -- still one deadline and one breaker per call.

Why this file is long: the RESP parser, the bounded client and its Cluster variant share
one failure behaviour (deadline, breaker, redirects).  Issue 12 replaces most of it with
ndb_redis in Kamailio and redis-py elsewhere; it is not split before that.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

from kemi.core.redis_url import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    node_url,
    parse_cluster_url,
    parse_redis_url,
    parse_sentinel_url,
)

__all__ = [
    "NEED_MORE",
    "CommandApi",
    "guarded",
    "CircuitBreaker",
    "ClusterClient",
    "RedisError",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisUnavailable",
    "RespClient",
    "SentinelClient",
    "RespParser",
    "command_key",
    "crc16",
    "encode",
    "key_slot",
]


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class RedisUnavailable(RedisError):
    """Redis could not be used: refused, timed out, closed, or the breaker is open."""


class RedisProtocolError(RedisError):
    """The byte stream is not RESP2 (the connection cannot be trusted any more)."""


class RedisReplyError(RedisError):
    """An error reply (e.g. NOSCRIPT, WRONGTYPE): Redis answered, the command failed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        """The error's first word, e.g. "NOSCRIPT"."""
        return self.message.split(" ", 1)[0]


# --------------------------------------------------------------------------- sans-IO


def _arg(value: str | bytes | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # bytes that came off the wire undecoded (kemi.core.sip.text) go back as they came
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):  # bool is an int: refuse the ambiguity
        raise TypeError("encode: bool is not a Redis argument; pass 0/1 or a string")
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"encode: {type(value).__name__} is not a Redis argument")


def encode(*args: str | bytes | int | float) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()


class RespParser:
    """Incremental RESP2 reply parser: feed bytes, get values one at a time.

    Values: simple string -> str, bulk -> bytes, integer -> int, array -> list,
    nil bulk/array -> None, error -> a RedisReplyError instance (returned, not raised).

    Resumable: the arrays still open and the items they hold are kept between calls, so a
    large reply arriving in many reads is scanned once (a log writer's batch of 100
    records is ~5000 items; scanning from the start at every read was what it cost).
    """

    def __init__(self) -> None:
        self._buf = b""  # bytes, not bytearray: a slice of it is the value, one copy
        self._pos = 0
        self._open: list[list] = []  # [items, still to come] per array not yet complete

    def feed(self, data: bytes) -> None:
        self._buf = self._buf[self._pos:] + data if self._pos else self._buf + data
        self._pos = 0

    def get(self):
        """The next complete value, or NEED_MORE if it is not all here yet."""
        buf, pos, open_ = self._buf, self._pos, self._open
        size = len(buf)
        find = buf.find
        while True:
            if pos >= size:
                break
            kind = buf[pos]
            end = find(b"\r\n", pos + 1)
            if end < 0:
                break
            if kind == 0x24:  # $ bulk
                n = self._int(buf, pos + 1, end)
                if n < 0:
                    value, pos = None, end + 2
                else:
                    stop = end + 2 + n
                    if size < stop + 2:
                        break
                    if buf[stop] != 13 or buf[stop + 1] != 10:  # CR LF
                        self._fail()
                        raise RedisProtocolError("bulk string not terminated by CRLF")
                    value, pos = buf[end + 2:stop], stop + 2
            elif kind == 0x2A:  # * array
                n = self._int(buf, pos + 1, end)
                pos = end + 2
                if n > 0:
                    open_.append([[], n])
                    continue
                value = None if n < 0 else []
            elif kind == 0x3A:  # : integer
                value, pos = self._int(buf, pos + 1, end), end + 2
            elif kind == 0x2B:  # + simple
                value, pos = buf[pos + 1:end].decode("utf-8", "replace"), end + 2
            elif kind == 0x2D:  # - error
                value = RedisReplyError(buf[pos + 1:end].decode("utf-8", "replace"))
                pos = end + 2
            else:
                self._fail()
                raise RedisProtocolError(f"unknown RESP2 type byte {bytes([kind])!r}")
            while open_:  # the value completes an item of the innermost open array
                top = open_[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                value = open_.pop()[0]
            else:
                self._consumed(pos)
                return value
        self._consumed(pos)
        return NEED_MORE

    def _consumed(self, pos: int) -> None:
        if pos == len(self._buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = pos  # the rest moves to the front at the next feed

    def _fail(self) -> None:
        """The stream is broken: nothing of it is kept (the caller drops the connection)."""
        self._buf, self._pos = b"", 0
        self._open.clear()

    def _int(self, buf: bytes, start: int, end: int) -> int:
        try:
            return int(buf[start:end])
        except ValueError:
            line = buf[start:end]
            self._fail()
            raise RedisProtocolError(f"bad RESP2 length/integer {line!r}") from None


# --------------------------------------------------------------------------- breaker


class CircuitBreaker:
    """Fail fast while Redis is known to be down.

    Opens after `failures` consecutive transport failures; after `open_s` lets one trial
    call through (half-open): its success closes the breaker, its failure re-opens it.
    One per process (each Kamailio worker has its own); not thread-safe, need not be.
    """

    def __init__(
        self, failures: int = 3, open_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        if failures < 1:
            raise ValueError("failures must be >= 1")
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._count = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._trial_at is not None or self._clock() - self._opened_at >= self.open_s:
            return "half-open"
        return "open"

    @property
    def retry_in(self) -> float:
        """Seconds until the next trial is allowed (0 when closed or half-open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        now = self._clock()
        if self._trial_at is not None:
            # One trial at a time; a trial that never reported does not block forever.
            if now - self._trial_at < self.open_s:
                return False
        elif now - self._opened_at < self.open_s:
            return False
        self._trial_at = now
        return True

    @property
    def tripped(self) -> bool:
        """Open or half-open: not closed since its last opening."""
        return self._opened_at is not None

    def success(self) -> None:
        self._count = 0
        self._opened_at = None
        self._trial_at = None

    def failure(self) -> None:
        self._count += 1
        if self._trial_at is not None or self._count >= self.failures:
            self._opened_at = self._clock()
            self._trial_at = None


# --------------------------------------------------------------------------- client


class _Timeout(Exception):
    pass


class _Refused(Exception):
    """AUTH/SELECT refused on a new connection."""


_TRANSPORT = (_Timeout, _Refused, RedisProtocolError, OSError)


def _unavailable(exc: BaseException, address: str, timeout_s: float) -> RedisUnavailable:
    """The RedisUnavailable a transport failure surfaces as (the same words everywhere)."""
    if isinstance(exc, _Timeout):
        return RedisUnavailable(f"timeout after {timeout_s * 1000:.0f} ms talking to {address}")
    if isinstance(exc, ConnectionRefusedError):
        return RedisUnavailable(f"connection refused by {address}")
    if isinstance(exc, RedisProtocolError):
        return RedisUnavailable(f"protocol error from {address}: {exc}")
    if isinstance(exc, _Refused):
        return RedisUnavailable(f"AUTH/SELECT refused by {address}: {exc}")
    if isinstance(exc, OSError):
        return RedisUnavailable(f"{exc.strerror or exc} ({address})")
    return RedisUnavailable(f"{exc!r} ({address})")  # pragma: no cover


def guarded(client: Any, work: Callable[[], Any],
            failures: tuple[type[BaseException], ...],
            failed: Callable[[BaseException], RedisUnavailable]) -> Any:
    """One Redis call behind `client.breaker`: refused at once while it is open; a failure
    in `failures` counted (and raised as `failed(exc)`), a success closes it; the
    client's `_observe` told "trip", "failure", "breaker-open" and "breaker-close"."""
    breaker = client.breaker
    if not breaker.allow():
        raise RedisUnavailable(
            f"circuit breaker open for {client.address} after {breaker.failures} "
            f"failures; next try in {breaker.retry_in:.1f} s"
        )
    try:
        result = work()
    except failures as exc:
        was = breaker.state
        breaker.failure()
        client._observe("failure")
        if was != "open" and breaker.state == "open":
            client._observe("breaker-open")
        raise failed(exc) from None
    reopened = breaker.tripped
    breaker.success()
    client._observe("trip")
    if reopened:
        client._observe("breaker-close")
    return result


class CommandApi:
    """`call` and `pipeline` over a subclass's `_round_trip(commands) -> replies` (shared
    by RespClient and kemi.storage.packed.PackedClient)."""

    def _round_trip(self, commands: Sequence[Sequence]) -> list:
        raise NotImplementedError

    def call(self, *args: str | bytes | int | float):
        """Run one command; raise RedisReplyError for an error reply."""
        (value,) = self._round_trip([args])
        if isinstance(value, RedisReplyError):
            raise value
        return value

    def pipeline(self, commands: Sequence[Sequence[str | bytes | int | float]]) -> list:
        """Run commands in one round trip; error replies are returned in place."""
        if not commands:
            return []
        return self._round_trip(commands)


class RespClient(CommandApi):
    """A synchronous RESP2 client whose every call is bounded by `timeout_s`.

    URLs: redis://host:port/db, redis://[user]:password@host:port/db,
    unix:///path/to/redis.sock?db=N[&password=...].  A new connection's AUTH, SELECT and
    TIME (Redis's clock offset, `clock_offset`) are one round trip before its first
    command.  `breaker=None` gives a default CircuitBreaker(); pass your own to tune or
    share it.  Name hosts by IP or
    /etc/hosts: a DNS lookup is outside the budget (it is done once and cached).

    A redis+cluster://host:port,host:port URL gives a ClusterClient instead (same API),
    so whatever builds its client from [redis] url gets Cluster mode by configuration.
    """

    cluster = False  # a ClusterClient says True: the stores then keep scripts in one slot

    def __new__(cls, url: str = "redis://127.0.0.1:6379/0", *args, **kwargs):
        if cls is RespClient and isinstance(url, str) and url.startswith(CLUSTER_SCHEMES):
            cls = ClusterClient
        elif cls is RespClient and isinstance(url, str) and url.startswith(SENTINEL_SCHEMES):
            cls = SentinelClient
        return super().__new__(cls)

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        # Told "trip", "failure", "breaker-open" and "breaker-close" (Kamailio's counters
        # and the breaker file `referee check` reads); None: nobody.
        self.observer: Callable[[str], None] | None = None
        self._family, self._sockaddr, self.address, self._db, self._auth = _parse_url(url)
        self._tls = _tls_context(url) if url.startswith("rediss://") else None
        self._addrinfo: tuple | None = None
        self._sock: socket.socket | None = None
        self._pid = 0
        self._parser = RespParser()
        # Redis's clock minus ours (s), read with TIME in each connection's handshake:
        # what a deadline a script checks against Redis's TIME is written in.
        self.clock_offset: float | None = None

    # -- public


    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._parser = RespParser()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- internals

    # What `_bounded` counts as the call failing (a ClusterClient adds its own).
    _FAILURES: tuple[type[BaseException], ...] = _TRANSPORT

    def _bounded(self, work: Callable[[float], Any]) -> Any:
        """`work(deadline)` as one call: refused at once while the breaker is open, bounded
        by one `timeout_s` deadline, its outcome reported to the breaker, and any failure
        in `_FAILURES` raised as RedisUnavailable (see `_failed`)."""
        return guarded(self, lambda: work(time.monotonic() + self.timeout_s),
                       self._FAILURES, self._failed)

    def _observe(self, what: str) -> None:
        if self.observer is not None:
            self.observer(what)

    def _failed(self, exc: BaseException) -> RedisUnavailable:
        return _unavailable(exc, self.address, self.timeout_s)

    def _round_trip(self, commands: Sequence[Sequence]) -> list:
        return self._bounded(lambda deadline: self._exchange(commands, deadline))

    def _exchange(self, commands: Sequence[Sequence], deadline: float) -> list:
        return self._finish(len(commands), self._start(commands, deadline), deadline)

    def _start(self, commands: Sequence[Sequence], deadline: float) -> int:
        """Connect if need be and send the commands; the number of replies to skip before
        theirs (0: a new connection's handshake is a round trip of its own, so that a
        command is never left behind in a Redis that did not answer it: it would run
        when Redis resumes, long after its caller gave up).  Transport trouble raises
        with the socket closed.  No breaker here: the caller owns the whole call."""
        payload = b"".join(encode(*c) for c in commands)
        try:
            if not self._usable():
                self.close()
                self._connect(deadline)
                self._pid = os.getpid()
                self._greet(deadline)
            self._send(payload, deadline)
        except BaseException:
            self.close()
            raise
        return 0

    def _greet(self, deadline: float) -> None:
        """AUTH/SELECT, then TIME (which may fail alone: then no clock offset)."""
        pre = self._handshake()
        self._send(b"".join(encode(*c) for c in pre), deadline)
        replies = self._receive(len(pre), deadline)
        for reply in replies[:-1]:
            if isinstance(reply, RedisReplyError):
                raise _Refused(reply.message)
        self._note_clock(replies[-1])

    def _finish(self, count: int, handshake: int, deadline: float) -> list:
        """Read the replies of what `_start` sent."""
        try:
            replies = self._receive(handshake + count, deadline)
        except BaseException:
            self.close()
            raise
        return replies[handshake:]

    def _note_clock(self, reply) -> None:
        try:
            sec, usec = reply
            self.clock_offset = int(sec) + int(usec) / 1e6 - time.time()
        except (TypeError, ValueError):
            pass  # a proxy in front of Redis that does not do TIME: no deadline checks

    def _usable(self) -> bool:
        """A connection made in this process that the server has not closed meanwhile."""
        sock = self._sock
        if sock is None:
            return False
        if self._pid != os.getpid():
            return False  # inherited across fork: close our copy, never share it
        try:
            sock.settimeout(0)  # with a timeout, Python would poll() before the peek
            # (the raw socket's bytes: an SSLSocket refuses recv flags; any TLS record
            # waiting -- a close_notify -- means start over, as stray bytes do)
            socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True  # nothing to read: alive and idle
        except OSError:
            return False
        return False  # b"" (closed by the server) or stray bytes: start over

    def _handshake(self) -> list[tuple]:
        pre: list[tuple] = []
        if self._auth is not None:
            pre.append(("AUTH", *self._auth))
        if self._db:
            pre.append(("SELECT", self._db))
        pre.append(("TIME",))  # last: _finish reads the clock offset from it
        return pre

    def _connect(self, deadline: float) -> None:
        if self._family == socket.AF_UNIX:
            family, kind, proto, addr = socket.AF_UNIX, socket.SOCK_STREAM, 0, self._sockaddr
        else:
            if self._addrinfo is None:
                host, port = self._sockaddr
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                fam, kind, proto, _, addr = infos[0]
                self._addrinfo = (fam, kind, proto, addr)
            family, kind, proto, addr = self._addrinfo
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining(deadline))
            try:
                sock.connect(addr)
            except TimeoutError:
                raise _Timeout from None
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(_remaining(deadline))
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self._sockaddr[0])
                except TimeoutError:
                    raise _Timeout from None
        except BaseException:
            sock.close()
            if family != socket.AF_UNIX:
                self._addrinfo = None  # look the name up again next time
            raise
        self._sock = sock
        self._parser = RespParser()

    def _send(self, payload: bytes, deadline: float) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(_remaining(deadline))
        try:
            sock.sendall(payload)  # since 3.5 the timeout bounds the whole sendall
        except TimeoutError:
            raise _Timeout from None

    def _receive(self, count: int, deadline: float) -> list:
        sock = self._sock
        assert sock is not None
        parser = self._parser
        out: list = []
        while len(out) < count:
            value = parser.get()
            if value is not NEED_MORE:
                out.append(value)
                continue
            sock.settimeout(_remaining(deadline))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise _Timeout from None
            if not data:
                raise ConnectionResetError(0, "connection closed by the server")
            parser.feed(data)
        return out


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout
    return left


def _parse_url(url: str):
    """(family, sockaddr, printable address, db, auth args or None) from a Redis URL."""
    ep = parse_redis_url(url)
    if ep.unix_path:
        return socket.AF_UNIX, ep.unix_path, ep.address, ep.db, ep.auth
    return socket.AF_INET, (ep.host, ep.port), ep.address, ep.db, ep.auth


def _tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS context of a rediss:// URL (server certificate and host checked), else None;
    OSError (ssl.SSLError, FileNotFoundError) for files that cannot be used."""
    ep = parse_redis_url(url)
    if not ep.tls:
        return None
    ctx = ssl.create_default_context(cafile=ep.ca_file or None)
    if ep.cert_file:
        ctx.load_cert_chain(ep.cert_file, ep.key_file)
    return ctx


# --------------------------------------------------------------------------- sentinel

# Replies that say this address no longer takes writes as the primary: READONLY (it is a
# replica now) and NOREPLICAS (min-replicas-to-write: its replica left, as during a
# failover -- config-examples/redis/sentinel.conf sets it so that no write is accepted
# by a primary about to be demoted).
DEMOTED = frozenset({"READONLY", "NOREPLICAS"})


class SentinelClient(RespClient):
    """RespClient to the primary a set of Sentinels name (module text)."""

    def __init__(
        self,
        url: str = "redis+sentinel://127.0.0.1:26379/mymaster",
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ):
        self.target = parse_sentinel_url(url)
        # The primary's address is replaced below, its TLS options are the URL's.
        super().__init__(node_url(url, "127.0.0.1:6379"), timeout_s, breaker)
        self.url = url
        self._db, self._auth = self.target.db, self.target.auth
        self._sockaddr = None  # the primary's (host, port), asked of the Sentinels
        self.address = f"{self.target.primary} (via Sentinel)"
        self.discoveries = 0  # how often the primary was looked up (tests, metrics)

    def call(self, *args: str | bytes | int | float):
        try:
            return super().call(*args)
        except RedisReplyError as exc:
            if exc.code in DEMOTED:
                raise self._demoted(exc) from None
            raise

    def pipeline(self, commands: Sequence[Sequence[str | bytes | int | float]]) -> list:
        replies = super().pipeline(commands)
        for reply in replies:
            if isinstance(reply, RedisReplyError) and reply.code in DEMOTED:
                raise self._demoted(reply)
        return replies

    def _demoted(self, exc: RedisReplyError) -> RedisUnavailable:
        old = self.address
        self._forget()
        return RedisUnavailable(f"{old} no longer takes writes as the primary "
                                f"({exc.message}): asking the Sentinels again")

    def _forget(self) -> None:
        self.close()
        self._sockaddr = None
        self._addrinfo = None

    def _failed(self, exc: BaseException) -> RedisUnavailable:
        out = super()._failed(exc)
        self._forget()  # the primary may have moved: ask again next time
        return out

    def _connect(self, deadline: float) -> None:
        if self._sockaddr is None:
            self._discover(deadline)
        super()._connect(deadline)

    def _discover(self, deadline: float) -> None:
        """The primary's address from the first Sentinel that knows it."""
        why = "no Sentinel answered"
        for sentinel in self.target.sentinels:
            ask = RespClient(node_url(self.url, sentinel),
                             timeout_s=max(_remaining(deadline), 0.001),
                             breaker=CircuitBreaker(1_000_000))
            try:
                reply = ask.call("SENTINEL", "get-master-addr-by-name", self.target.primary)
            except RedisError as exc:
                why = f"Sentinel {sentinel}: {exc}"
                continue
            finally:
                ask.close()
            if isinstance(reply, list) and len(reply) == 2:
                host, port = (x.decode() if isinstance(x, bytes) else str(x) for x in reply)
                self._sockaddr, self._addrinfo = (host, int(port)), None
                self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self.discoveries += 1
                return
            why = f"Sentinel {sentinel} does not know {self.target.primary!r}"
        raise OSError(0, f"primary not found: {why}")  # said as "<why> (<name> via Sentinel)"


# --------------------------------------------------------------------------- cluster

SLOTS = 16384
MAX_REDIRECTS = 5


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection): Redis Cluster's key hash."""
    crc = 0
    table = _CRC16
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ table[(crc >> 8) ^ b]
    return crc


def key_slot(key: str | bytes) -> int:
    """The Cluster slot of a key: CRC16 of its hash tag (the first non-empty {...}) or of
    the whole key, mod 16384 -- what CLUSTER KEYSLOT answers."""
    raw = _arg(key)
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return crc16(raw) & (SLOTS - 1)


_SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_SUBCOMMAND_KEY = frozenset({"XGROUP", "XINFO", "OBJECT", "MEMORY"})
_KEYLESS = frozenset({
    "PING", "ECHO", "INFO", "CLUSTER", "SCRIPT", "FUNCTION", "CLIENT", "CONFIG", "DBSIZE",
    "FLUSHALL", "FLUSHDB", "KEYS", "SCAN", "TIME", "COMMAND", "HELLO", "AUTH", "SELECT",
    "ASKING", "READONLY", "READWRITE", "WAIT", "DEBUG", "LASTSAVE", "ROLE", "SLOWLOG",
    "LATENCY",
})


def command_key(args: Sequence) -> str | bytes | None:
    """The key a command is routed by: the first key it names (for EVAL/EVALSHA the first
    KEYS entry; for XREAD(GROUP) the first stream), None for a command without keys."""
    if not args:
        return None
    name = args[0]
    name = (name.decode() if isinstance(name, bytes) else str(name)).upper()
    if name in _SCRIPT_COMMANDS:
        return args[3] if len(args) > 3 and int(args[2]) > 0 else None
    if name in ("XREAD", "XREADGROUP"):
        for i, a in enumerate(args):
            if (a.decode() if isinstance(a, bytes) else str(a)).upper() == "STREAMS":
                return args[i + 1] if i + 1 < len(args) else None
        return None
    if name in _SUBCOMMAND_KEY:
        return args[2] if len(args) > 2 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return args[1]


class _ClusterTrouble(Exception):
    """The cluster as a whole cannot serve the call (CLUSTERDOWN, endless redirects)."""


class _NodeFailed(Exception):
    def __init__(self, address: str, cause: BaseException):
        super().__init__(address)
        self.address = address
        self.cause = cause


class ClusterClient(RespClient):
    """Redis Cluster behind RespClient's API: `call`, `pipeline`, `close`, `connected`.

    URL: redis+cluster://[[user]:password@]host:port[,host:port...] -- seed nodes (masters
    or replicas); the slot map (CLUSTER SLOTS, masters only) is loaded from the first seed
    that answers, on first use.  Each command goes to the master of its first key's slot
    (EVAL/EVALSHA: the first KEYS entry); keyless commands go to any master.  A pipeline is
    grouped by node and sent to all of them before any reply is read, so it costs one
    round trip of latency however many nodes it touches; replies come back in command
    order.  MOVED updates the slot and reloads the map at the next call; ASK is followed
    with ASKING for that one command.  The whole call -- map load, every node, every
    redirect -- is bounded by one `timeout_s` deadline and reported to one CircuitBreaker,
    and transport trouble surfaces as RedisUnavailable, exactly as RespClient's does.
    A pipeline is not a transaction: on a cluster each node runs its part in order.
    """

    cluster = True

    def __init__(
        self,
        url: str = "redis+cluster://127.0.0.1:7000",
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.observer: Callable[[str], None] | None = None  # passed on to node clients
        self.seeds, self._userinfo = parse_cluster_url(url)
        self.address = ",".join(self.seeds)
        self._nodes: dict[str, RespClient] = {}
        self._slots: list[str | None] = [None] * SLOTS
        self._masters: list[str] = []
        self._map_stale = True
        self.map_loads = 0  # for tests and metrics
        self.redirects = 0

    # -- public (call and pipeline are RespClient's: they end in `_round_trip`)

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()

    @property
    def connected(self) -> bool:
        return any(node.connected for node in self._nodes.values())

    @property
    def clock_offset(self) -> float | None:  # type: ignore[override]
        """Any connected node's (a cluster's clocks are taken to agree)."""
        for node in self._nodes.values():
            if node.clock_offset is not None:
                return node.clock_offset
        return None

    @clock_offset.setter
    def clock_offset(self, value: float | None) -> None:
        pass  # RespClient.__init__ sets it; the nodes keep their own

    def node_for(self, key: str | bytes) -> str | None:
        """The master serving a key's slot, as the loaded map says (None: no map yet)."""
        return self._slots[key_slot(key)]

    @property
    def masters(self) -> list[str]:
        return list(self._masters)

    def on_each_master(self, *args: str | bytes | int | float) -> dict[str, object]:
        """Run one keyless command on every master (KEYS, FLUSHALL, SCRIPT FLUSH, INFO):
        for operators and tests, never on the SIP path."""
        def work(deadline: float) -> dict[str, object]:
            if self._map_stale:
                self._load_map(deadline)
            groups = {addr: [(0, tuple(args), False)] for addr in self._masters}
            got = self._send_groups(groups, deadline)
            return {addr: got[addr][0] for addr in groups}

        return self._bounded(work)

    # -- internals

    def _node(self, addr: str) -> RespClient:
        node = self._nodes.get(addr)
        if node is None:
            node = RespClient(node_url(self.url, addr, self._userinfo), self.timeout_s,
                              self.breaker)
            node.observer = self.observer
            self._nodes[addr] = node
        return node

    _FAILURES = (_NodeFailed, _ClusterTrouble)

    def _failed(self, exc: BaseException) -> RedisUnavailable:
        self._map_stale = True  # a node may have failed over: ask again next time
        if isinstance(exc, _NodeFailed):
            return _unavailable(exc.cause, exc.address, self.timeout_s)
        return RedisUnavailable(f"cluster {self.address}: {exc}")

    def _exchange(self, commands: Sequence[Sequence], deadline: float) -> list:
        replies = self._route(commands, deadline)
        for reply in replies:
            if isinstance(reply, RedisReplyError) and reply.code == "CLUSTERDOWN":
                raise _ClusterTrouble(reply.message)
        return replies

    def _addr_for(self, command: Sequence) -> str:
        key = command_key(command)
        addr = self._slots[key_slot(key)] if key is not None else None
        return addr or (self._masters[0] if self._masters else self.seeds[0])

    def _route(self, commands: Sequence[Sequence], deadline: float) -> list:
        if self._map_stale:
            self._load_map(deadline)
        replies: list = [None] * len(commands)
        todo = [(i, tuple(c), self._addr_for(c), False) for i, c in enumerate(commands)]
        for _attempt in range(MAX_REDIRECTS + 1):
            groups: dict[str, list[tuple[int, tuple, bool]]] = {}
            for i, cmd, addr, asking in todo:
                groups.setdefault(addr, []).append((i, cmd, asking))
            got = self._send_groups(groups, deadline)
            redo = []
            for addr, items in groups.items():
                for (i, cmd, _asking), reply in zip(items, got[addr], strict=True):
                    replies[i] = reply
                    redirect = _redirect(reply, addr)
                    if redirect is None:
                        continue
                    slot, target, ask = redirect
                    if not ask:
                        self._slots[slot] = target
                        self._map_stale = True  # more slots likely moved too
                    self.redirects += 1
                    redo.append((i, cmd, target, ask))
            if not redo:
                return replies
            todo = sorted(redo)  # commands to one node keep their order
        # Still redirected after MAX_REDIRECTS: a cluster being resharded under us or
        # nodes that disagree; the map is reloaded on the next call.
        raise _ClusterTrouble(f"still redirected after {MAX_REDIRECTS} redirects "
                              f"(last: {replies[todo[0][0]].message})")

    def _send_groups(self, groups: dict[str, list[tuple[int, tuple, bool]]],
                     deadline: float) -> dict[str, list]:
        """Send each node its commands, then read every node's replies: one round trip of
        latency.  Any transport failure closes every connection of the batch."""
        started = []
        addr = ""
        try:
            for addr, items in groups.items():
                node = self._node(addr)
                cmds: list[tuple] = []
                for _i, cmd, asking in items:
                    if asking:
                        cmds.append(("ASKING",))
                    cmds.append(cmd)
                started.append((addr, node, items, len(cmds), node._start(cmds, deadline)))
            out: dict[str, list] = {}
            for addr, node, items, n, handshake in started:
                raw = node._finish(n, handshake, deadline)
                kept = []
                pos = 0
                for _i, _cmd, asking in items:
                    pos += 1 if asking else 0  # the ASKING's own +OK
                    kept.append(raw[pos])
                    pos += 1
                out[addr] = kept
            return out
        except _TRANSPORT as exc:
            for _addr, node, *_ in started:
                node.close()
            raise _NodeFailed(addr, exc) from None

    def _load_map(self, deadline: float) -> None:
        """Read CLUSTER SLOTS from a known master or a seed, the first that answers."""
        failure: _NodeFailed | None = None
        for addr in dict.fromkeys([*self._masters, *self.seeds]):
            node = self._node(addr)
            try:
                (reply,) = node._finish(1, node._start([("CLUSTER", "SLOTS")], deadline),
                                        deadline)
            except _Timeout as exc:
                raise _NodeFailed(addr, exc) from None  # no time left for another seed
            except _TRANSPORT as exc:
                failure = _NodeFailed(addr, exc)
                continue
            if isinstance(reply, RedisReplyError):
                raise RedisReplyError(f"{addr} gave no slot map: {reply.message}")
            try:
                slots, masters = _slot_map(reply, addr)
            except (TypeError, ValueError, IndexError, AttributeError):
                bad = RedisProtocolError(f"unreadable CLUSTER SLOTS reply {str(reply)[:80]}")
                failure = _NodeFailed(addr, bad)
                continue  # another seed may answer sense
            self._slots = slots
            self._masters = masters
            self._map_stale = False
            self.map_loads += 1
            return
        assert failure is not None
        raise failure


def _slot_map(reply: object, asked: str) -> tuple[list[str | None], list[str]]:
    """The slot -> master table and the masters of a CLUSTER SLOTS reply (IndexError,
    TypeError or ValueError for one that is not)."""
    if not isinstance(reply, list):
        raise TypeError("not an array")
    slots: list[str | None] = [None] * SLOTS
    masters: dict[str, None] = {}
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        if not 0 <= start <= end < SLOTS:
            raise ValueError(f"slot range {start}-{end}")
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        target = _node_address(f"{host}:{int(master[1])}", asked)
        masters[target] = None
        for slot in range(start, end + 1):
            slots[slot] = target
    return slots, list(masters)


def _redirect(reply: object, asked: str) -> tuple[int, str, bool] | None:
    """(slot, node, is ASK) of a well-formed "MOVED <slot> <host:port>" or "ASK ..." error
    reply; None for any other reply (a malformed redirect stays the error it is)."""
    if not isinstance(reply, RedisReplyError) or reply.code not in ("MOVED", "ASK"):
        return None
    parts = reply.message.split()
    if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= SLOTS:
        return None
    return int(parts[1]), _node_address(parts[2], asked), reply.code == "ASK"


def _node_address(text: str, asked: str) -> str:
    """host:port of a node as the cluster names it ("" or "?" host: the one we asked)."""
    host, _, port = text.rpartition(":")
    if host in ("", "?"):
        host = asked.rpartition(":")[0]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
