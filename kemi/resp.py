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
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "NEED_MORE",
    "CircuitBreaker",
    "RedisError",
    "RedisProtocolError",
    "RedisReplyError",
    "RedisUnavailable",
    "RespClient",
    "RespParser",
    "encode",
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
        return value.encode()
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


class _Short(Exception):
    """Internal: the buffer ends inside a reply."""


class RespParser:
    """Incremental RESP2 reply parser: feed bytes, get values one at a time.

    Values: simple string -> str, bulk -> bytes, integer -> int, array -> list,
    nil bulk/array -> None, error -> a RedisReplyError instance (returned, not raised).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def get(self):
        """The next complete value, or NEED_MORE (nothing consumed) if it is not all here."""
        if self._pos >= len(self._buf):
            return NEED_MORE
        try:
            value, pos = self._parse(self._pos)
        except _Short:
            return NEED_MORE
        self._pos = pos
        if pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif pos > 65536:
            del self._buf[:pos]
            self._pos = 0
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Short
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int):
        buf = self._buf
        if pos >= len(buf):
            raise _Short
        kind = buf[pos]
        line, pos = self._line(pos + 1)
        if kind == 0x24:  # $ bulk
            n = self._int(line)
            if n < 0:
                return None, pos
            end = pos + n
            if len(buf) < end + 2:
                raise _Short
            if buf[end:end + 2] != b"\r\n":
                raise RedisProtocolError("bulk string not terminated by CRLF")
            return bytes(buf[pos:end]), end + 2
        if kind == 0x2A:  # * array
            n = self._int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        if kind == 0x2B:  # + simple
            return line.decode("utf-8", "replace"), pos
        if kind == 0x3A:  # : integer
            return self._int(line), pos
        if kind == 0x2D:  # - error
            return RedisReplyError(line.decode("utf-8", "replace")), pos
        raise RedisProtocolError(f"unknown RESP2 type byte {bytes([kind])!r}")

    @staticmethod
    def _int(line: bytes) -> int:
        try:
            return int(line)
        except ValueError:
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


class RespClient:
    """A synchronous RESP2 client whose every call is bounded by `timeout_s`.

    URLs: redis://host:port/db, redis://[user]:password@host:port/db,
    unix:///path/to/redis.sock?db=N[&password=...].  AUTH and SELECT go in the same
    round trip as the first command on each new connection.  `breaker=None` gives a
    default CircuitBreaker(); pass your own to tune or share it.  Name hosts by IP or
    /etc/hosts: a DNS lookup is outside the budget (it is done once and cached).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._family, self._sockaddr, self.address, self._db, self._auth = _parse_url(url)
        self._addrinfo: tuple | None = None
        self._sock: socket.socket | None = None
        self._pid = 0
        self._parser = RespParser()

    # -- public

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

    def _round_trip(self, commands: Sequence[Sequence]) -> list:
        if not self.breaker.allow():
            raise RedisUnavailable(
                f"circuit breaker open for {self.address} after {self.breaker.failures} "
                f"failures; next try in {self.breaker.retry_in:.1f} s"
            )
        payload = b"".join(encode(*c) for c in commands)
        deadline = time.monotonic() + self.timeout_s
        try:
            handshake = 0
            if not self._usable():
                self.close()
                self._connect(deadline)
                self._pid = os.getpid()
                pre = self._handshake()
                handshake = len(pre)
                payload = b"".join(encode(*c) for c in pre) + payload
            self._send(payload, deadline)
            replies = self._receive(handshake + len(commands), deadline)
        except _Timeout:
            self._fail()
            raise RedisUnavailable(
                f"timeout after {self.timeout_s * 1000:.0f} ms talking to {self.address}"
            ) from None
        except ConnectionRefusedError:
            self._fail()
            raise RedisUnavailable(f"connection refused by {self.address}") from None
        except RedisProtocolError as exc:
            self._fail()
            raise RedisUnavailable(f"protocol error from {self.address}: {exc}") from None
        except OSError as exc:
            self._fail()
            raise RedisUnavailable(f"{exc.strerror or exc} ({self.address})") from None
        for reply in replies[:handshake]:
            if isinstance(reply, RedisReplyError):
                self._fail()
                raise RedisUnavailable(
                    f"AUTH/SELECT refused by {self.address}: {reply.message}"
                )
        self.breaker.success()
        return replies[handshake:]

    def _fail(self) -> None:
        self.close()
        self.breaker.failure()

    def _usable(self) -> bool:
        """A connection made in this process that the server has not closed meanwhile."""
        sock = self._sock
        if sock is None:
            return False
        if self._pid != os.getpid():
            return False  # inherited across fork: close our copy, never share it
        try:
            sock.settimeout(0)  # with a timeout, Python would poll() before the peek
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
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
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password is not None else None
    user = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url}: unix:// URL without a socket path")
        db = int(query.get("db", ["0"])[0])
        if "password" in query:
            password = query["password"][0]
        family, sockaddr, address = socket.AF_UNIX, parts.path, f"unix:{parts.path}"
    elif parts.scheme == "redis":
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 6379
        path = parts.path.strip("/")
        db = int(path) if path else int(query.get("db", ["0"])[0])
        family, sockaddr = socket.AF_INET, (host, port)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    else:
        raise ValueError(f"{url}: unsupported scheme (use redis:// or unix://)")
    auth = None
    if password is not None:
        auth = (user, password) if user else (password,)
    return family, sockaddr, address, db, auth
