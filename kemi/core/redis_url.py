"""A Redis URL read the way referee's clients connect, without connecting: config checks
it at start (a typo names the file and key, not the first SIP worker), and
kemi.storage.resp builds its sockets from it.

    redis://[user:password@]host[:port][/db]     unix://path[?db=N&password=P]
    rediss://...same...?ssl_ca_certs=CA[&ssl_certfile=CERT&ssl_keyfile=KEY]   (TLS)
    redis+cluster://[user:password@]host:port,host:port
    redis+sentinel://[user:password@]host:port,host:port/<primary name>[/db]
    rediss+cluster://..., rediss+sentinel://...   the same over TLS, with rediss://'s ssl_*
                                                  options: every node (and Sentinel) is
                                                  spoken to over TLS with those files
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

CLUSTER_SCHEME = "redis+cluster://"
SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEMES = (CLUSTER_SCHEME, "rediss+cluster://")
SENTINEL_SCHEMES = (SENTINEL_SCHEME, "rediss+sentinel://")


def node_url(url: str, addr: str, userinfo: str = "", db: int = 0) -> str:
    """The redis:// (or, for a rediss+ URL, rediss:// with its ssl_* options) URL of one
    node or Sentinel that a cluster or Sentinel URL leads to."""
    tls = url.startswith("rediss+")
    query = url.partition("?")[2]  # not urlsplit: a seed list is no netloc it can read
    return (f"{'rediss' if tls else 'redis'}://{userinfo}{addr}/{db}"
            + (f"?{query}" if query else ""))


def _checked_tls(url: str, some_addr: str) -> None:
    """ValueError for ssl_* options a node URL could not take (or without rediss+)."""
    if url.partition("?")[2] and not url.startswith("rediss+"):
        raise ValueError(f"{url}: options after '?' (ssl_*) need rediss+cluster:// or "
                         "rediss+sentinel://")
    parse_redis_url(node_url(url, some_addr))


@dataclass(frozen=True)
class Endpoint:
    address: str  # printable: "host:port", "[v6]:port" or "unix:/path"
    db: int
    auth: tuple[str, ...] | None  # AUTH's arguments: (password,) or (user, password)
    host: str = ""
    port: int = 0
    unix_path: str = ""
    tls: bool = False  # rediss://: TLS, the server's certificate checked against ca_file
    ca_file: str = ""  # "" with TLS: the system's CA store
    cert_file: str = ""  # a client certificate (Redis tls-auth-clients yes), with its key
    key_file: str = ""

    def files(self) -> list[str]:
        """The files TLS reads (named in the URL)."""
        return [f for f in (self.ca_file, self.cert_file, self.key_file) if f]


def _db_number(url: str, text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{url}: database {text!r} is not a number")
    return int(text)


def parse_redis_url(url: str) -> Endpoint:
    """A redis:// or unix:// URL; ValueError saying what is wrong."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password is not None else None
    user = unquote(parts.username) if parts.username else None
    auth = None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url}: unix:// URL without a socket path")
        db = _db_number(url, query.get("db", ["0"])[0])
        if "password" in query:
            password = query["password"][0]
        if password is not None:
            auth = (user, password) if user else (password,)
        return Endpoint(f"unix:{parts.path}", db, auth, unix_path=parts.path)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url}: unsupported scheme (use redis://, rediss://, unix://, "
                         f"{CLUSTER_SCHEME}, {SENTINEL_SCHEME} or rediss+ for TLS)")
    tls = parts.scheme == "rediss"
    files = {k: query.get(k, [""])[0] for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")}
    if not tls and any(files.values()):
        raise ValueError(f"{url}: ssl_* options need rediss://")
    if bool(files["ssl_certfile"]) != bool(files["ssl_keyfile"]):
        raise ValueError(f"{url}: a client certificate needs both ssl_certfile and "
                         "ssl_keyfile")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    path = parts.path.strip("/")
    db = _db_number(url, path or query.get("db", ["0"])[0])
    if password is not None:
        auth = (user, password) if user else (password,)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Endpoint(address, db, auth, host=host, port=port, tls=tls,
                    ca_file=files["ssl_ca_certs"], cert_file=files["ssl_certfile"],
                    key_file=files["ssl_keyfile"])


def parse_cluster_url(url: str) -> tuple[list[str], str]:
    """(seed "host:port" list, "user:password@" or "") from a redis+cluster:// (or
    rediss+cluster://) URL."""
    rest = url.split("://", 1)[1].partition("?")[0]
    rest, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"{url}: a Redis Cluster has only database 0")
    userinfo, _, hosts = rest.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
            host = f"[{host}]"
        else:
            host, _, port = item.partition(":")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"{url}: bad seed node {item!r} (want host:port, port 1-65535)")
        seeds.append(f"{host}:{port or 6379}")
    if not seeds:
        raise ValueError(f"{url}: no seed node")
    _checked_tls(url, seeds[0])
    return seeds, (userinfo + "@" if userinfo else "")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[str, ...]  # "host:port" of each Sentinel, asked in this order
    primary: str  # the name the Sentinels monitor it by
    db: int
    auth: tuple[str, ...] | None  # for the primary (Sentinels are asked without)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """A redis+sentinel:// (or rediss+sentinel://) URL; ValueError saying what is wrong."""
    rest, _, query = url.split("://", 1)[1].partition("?")
    hosts, _, path = rest.partition("/")
    name, _, db_text = path.strip("/").partition("/")
    if not name:
        raise ValueError(f"{url}: no primary name (redis+sentinel://h:p,h:p/<name>)")
    seeds, userinfo = parse_cluster_url(CLUSTER_SCHEME + hosts)
    _checked_tls(url, seeds[0])
    auth = None
    if userinfo:
        user, sep, password = userinfo[:-1].partition(":")
        auth = (unquote(user), unquote(password)) if sep and user else (
            unquote(password if sep else user),)
    return SentinelTarget(tuple(seeds), name, _db_number(url, db_text or "0"), auth)


def check_redis_url(url: str) -> None:
    """ValueError if a client could not be built from `url` (of any supported scheme)."""
    if url.startswith(CLUSTER_SCHEMES):
        parse_cluster_url(url)
    elif url.startswith(SENTINEL_SCHEMES):
        parse_sentinel_url(url)
    else:
        parse_redis_url(url)


def ndb_server(url: str, name: str = "referee") -> str | None:
    """ndb_redis's server spec for the same Redis as `url` (the cfg's REFEREE_REDIS,
    config-examples/kamailio/referee-redis.cfg), or None where ndb_redis cannot reach it
    as referee does: TLS, Sentinel, Cluster, an ACL user (ndb_redis 5.6 sends only a
    password), or a character that would end ndb_redis's `;`-separated spec."""
    if not url.startswith(("redis://", "unix://")):
        return None
    try:
        end = parse_redis_url(url)
    except ValueError:
        return None
    if end.auth is not None and len(end.auth) > 1:
        return None
    where = f"unix={end.unix_path}" if end.unix_path else f"addr={end.host};port={end.port}"
    spec = f"name={name};{where};db={end.db}"
    if end.auth:
        spec += f";pass={end.auth[0]}"
    if any(c in spec for c in '"\\') or spec.count(";") != spec.count("=") - 1:
        return None
    return spec
