"""referee's own settings, read from one TOML file so Kamailio, the CLI and tests agree.

The file is named by $REFEREE_CONFIG (default /etc/referee/referee.toml); every key has a
default, so a missing file means "all defaults".  Why TOML: stdlib (tomllib), comments
allowed, and operators already edit kamailio.cfg-like text files.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields

from kemi.core.redis_url import check_redis_url, node_url, parse_redis_url

DEFAULT_PATH = "/etc/referee/referee.toml"


@dataclass(frozen=True)
class RedisSettings:
    # redis://host:port/db or unix:///path?db=N (one Redis, or a Sentinel-managed primary);
    # redis+cluster://host:port,host:port,... for a Redis Cluster (seed nodes; the client
    # is then kemi.storage.resp.ClusterClient and the stores keep each script in one slot).
    url: str = "redis://127.0.0.1:6379/0"
    # Budget for one Redis round trip on the SIP path (connect + command), in ms.
    timeout_ms: int = 50
    # Circuit breaker: open after this many consecutive failures, for this long.
    breaker_failures: int = 3
    breaker_open_s: float = 5.0
    prefix: str = "referee"


@dataclass(frozen=True)
class KamailioSettings:
    # What a REFER gets when Redis cannot be reached: "closed" answers 503 + Retry-After,
    # "open" relays the REFER untracked (logged loudly).
    redis_fail_mode: str = "closed"
    retry_after_s: int = 30
    # Where events Redis could not take are spooled until the sweep replays them.
    journal_dir: str = "/var/spool/referee"
    # Index every INVITE dialog in Redis (kemi.storage.dialogs) so a Replaces is checked here,
    # against dialogs set up through any node (RFC 3891).  Costs one Redis write per
    # initial INVITE, per tagged response to it and per BYE, on every call.  Off: only
    # transfers touch Redis.  A native kamailio-native.cfg must be started with the
    # define WITH_DIALOG_INDEX too, or those messages never reach Python.
    dialog_index: bool = False
    # The order of a transfer's messages (kemi.core.order).  A NOTIFY that reaches the proxy
    # before the REFER's 2xx has been relayed, or right after another NOTIFY of its
    # dialog, is held (tm t_suspend) and relayed in turn.  order_grace_ms: how long after
    # a worker decided to relay a message referee takes it to be on the wire;
    # order_window_ms: how long a NOTIFY that may have an earlier one still in another
    # worker waits for it (ms).
    order_grace_ms: int = 20
    order_window_ms: int = 50
    # A NOTIFY the transferor answers 491 Request Pending (linphone does while a
    # transaction of its own in the dialog is open) is sent again, this many times, this
    # long apart; a progress NOTIFY still refused is answered 200 to the transferee by
    # referee, so the subscription lives on and its final NOTIFY still reaches the
    # transferor.
    notify_491_retries: int = 2
    notify_491_retry_ms: int = 250
    # Put a tie token into the Refer-To of every REFER relayed (an embedded header,
    # <sip:target?X-Referee-Tie=...>): a transferee that copies it into its INVITE (RFC
    # 3261 19.1.5; pjsua2 does) has that INVITE tied to its transfer exactly.  Without it
    # the INVITE is tied by what else names the transfer, or recorded as untied.
    tie_token: bool = False
    # With the dialog index: a party to a dialog is known by its AOR *and* by where its
    # messages came from (a From header is the sender's to choose).  "address": the same
    # IP and port as the party's own messages in the dialog; "host": the same IP, any
    # port (for UAs that send from several ports, or NATs that move ports mid-call).  An
    # authenticated user ($au) equal to the party's user part counts too.
    party_match: str = "address"


@dataclass(frozen=True)
class TransferSettings:
    # How long a record stays in Redis after it is final (seconds).
    done_ttl_s: int = 3600
    # Cap on any open transfer's life, whatever the NOTIFY's expires says (seconds).
    max_open_s: int = 900
    stream_maxlen: int = 100000


@dataclass(frozen=True)
class AnchoredSettings:
    """Transfers of calls anchored in Asterisk (kemi.core.anchor): which REFERs referee accepts
    itself instead of relaying, and what the Asterisk side does with them."""

    # name -> "host:port" of each Asterisk whose dialogs are anchored.  An in-dialog REFER
    # whose Request-URI (the Asterisk's Contact) is at one of these addresses is an
    # anchored transfer.  Empty: no anchored mode, every REFER is relayed as before.
    asterisk: dict[str, str] = field(default_factory=dict)
    # "accept": referee answers 202 itself, sends truthful NOTIFYs, and has the AMI
    # controller move the channels (the path with a real reconnect).  "relay": the REFER
    # goes to Asterisk (res_pjsip_refer accepts it); referee checks and records only.
    mode: str = "accept"
    # What Asterisk dials for an approved Refer-To; {user}, {host}, {uri} are filled in.
    dial: str = "PJSIP/{user}"
    # This Kamailio node's name: progress for the transfers it accepted comes back on
    # its own stream, read by its sweep timer (never by a SIP worker).
    node: str = "kamailio"


@dataclass(frozen=True)
class AsteriskSettings:
    """The Asterisk side (agi/): the AMI controller and the FastAGI server."""

    # This Asterisk's name, as in [anchored] asterisk (its job stream is named by it).
    name: str = "asterisk"
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "referee"
    ami_secret: str = ""
    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    # An AGI session is cut after this long whatever happens (seconds).  Dial with
    # music on hold keeps the session open for the whole answered call, so this must
    # exceed the dial timeout plus the longest call you expect (default 4 h).
    agi_session_limit_s: float = 14400.0
    # The relayed path (Asterisk accepted the REFER itself): the Dial timeout, an
    # optional sound played first, and the pre-dial handler (context^exten^priority)
    # that puts the Replaces header on the INVITE for `external_replaces`
    # (config-examples/asterisk/extensions.conf).
    relayed_timeout_s: int = 30
    relayed_announce: str = ""
    replaces_predial: str = "referee-add-replaces^s^1"
    # Dialplan locations the controller redirects to (config-examples/asterisk/).
    transfer_context: str = "referee-transfer"
    hold_context: str = "referee-hold"
    hold_exten: str = "hold"
    recall_context: str = "referee-recall"
    # `referee asterisk run`'s counters as Prometheus text at http://host:port/metrics
    # (AMI session, jobs, outcomes, AGI sessions); 0: not served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # (How long after the target answered the transferor's leg is released is policy, per
    # rule or tenant -- `policy add --release-after`, `tenant set --bye-wait` -- carried
    # by each MoveJob, not a setting here.)


@dataclass(frozen=True)
class Settings:
    policy_db: str = "/var/lib/referee/policy.db"
    policy_check_interval_s: float = 1.0
    redis: RedisSettings = field(default_factory=RedisSettings)
    kamailio: KamailioSettings = field(default_factory=KamailioSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    anchored: AnchoredSettings = field(default_factory=AnchoredSettings)
    asterisk: AsteriskSettings = field(default_factory=AsteriskSettings)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key and the file."""


def _section(cls, raw: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        out[key] = value
    try:
        return cls(**out)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{where}: {exc}") from exc


def parse(text: str, where: str = "<config>") -> Settings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    top = dict(raw)
    sections = {
        "redis": RedisSettings,
        "kamailio": KamailioSettings,
        "transfer": TransferSettings,
        "anchored": AnchoredSettings,
        "asterisk": AsteriskSettings,
    }
    built = {}
    for name, cls in sections.items():
        value = top.pop(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        built[name] = _section(cls, value, f"{where} [{name}]")
    settings = _section(Settings, top, where)
    settings = Settings(
        policy_db=settings.policy_db,
        policy_check_interval_s=settings.policy_check_interval_s,
        **built,
    )
    if settings.kamailio.redis_fail_mode not in ("open", "closed"):
        raise ConfigError(f"{where} [kamailio] redis_fail_mode must be 'open' or 'closed'")
    for key in ("dialog_index", "tie_token"):
        if not isinstance(getattr(settings.kamailio, key), bool):
            raise ConfigError(f"{where} [kamailio] {key} must be true or false")
    _check_order(settings.kamailio, f"{where} [kamailio]")
    if settings.kamailio.party_match not in ("address", "host"):
        raise ConfigError(f"{where} [kamailio] party_match must be 'address' or 'host'")
    _check_anchored(settings.anchored, f"{where} [anchored]")
    _check_asterisk(settings.asterisk, f"{where} [asterisk]")
    _check_redis(settings.redis, f"{where} [redis]")
    _check_redis_url(settings.redis.url, f"{where} [redis] url")
    return settings


def _check_redis_url(url: object, where: str) -> None:
    """The URL as the client will read it (building one parses, never connects), so a
    typo stops the start with the file and key named rather than the first SIP worker."""
    _text(url, where)
    try:
        check_redis_url(url)  # type: ignore[arg-type]
        if str(url).startswith(("rediss://", "rediss+")):
            one = str(url) if str(url).startswith("rediss://") else node_url(str(url), "x:1")
            for f in parse_redis_url(one).files():
                if not os.access(f, os.R_OK):
                    raise ValueError(f"TLS file {f} is not readable")
    except ValueError as exc:
        text = str(exc) if str(url) in str(exc) else f"{url}: {exc}"
        raise ConfigError(f"{where}: {text}") from None


# A name that goes into a Redis key's hash tag ({anchor:<name>}) and a consumer name.
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RULE = "1-64 letters, digits, '.', '_' or '-'"
_DIAL_FIELDS = {"user": "", "host": "", "uri": ""}


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _port(value: object, what: str) -> None:
    _need(type(value) is int and 0 < value < 65536, f"{what} = {value!r}: must be a port, 1-65535")


def _seconds(value: object, what: str, low: float, high: float, integer: bool = False) -> None:
    ok = type(value) is int or (type(value) is float and not integer)
    _need(ok and low <= value <= high,  # type: ignore[operator]
          f"{what} = {value!r}: must be {'a whole number of ' if integer else ''}seconds, "
          f"{low:g}-{high:g}")


def _text(value: object, what: str, empty: bool = False) -> None:
    _need(isinstance(value, str) and (empty or bool(value.strip())),
          f"{what} = {value!r}: must be {'a' if empty else 'a non-empty'} string")


def _whole(value: object, what: str, low: int, high: int, unit: str) -> None:
    _need(type(value) is int and low <= value <= high,
          f"{what} = {value!r}: must be a whole number of {unit}, {low}-{high}")


def _check_redis(r: RedisSettings, where: str) -> None:
    # A value here that Python could not compare or count would surface only when Redis
    # fails (the breaker) -- and it also sets ndb_redis' own breaker in the cfg.
    _whole(r.timeout_ms, f"{where} timeout_ms", 1, 60000, "ms")
    _whole(r.breaker_failures, f"{where} breaker_failures", 1, 1000, "failures")
    _seconds(r.breaker_open_s, f"{where} breaker_open_s", 0.01, 3600)


def _check_order(k: KamailioSettings, where: str) -> None:
    _whole(k.order_grace_ms, f"{where} order_grace_ms", 1, 1000, "ms")
    _whole(k.order_window_ms, f"{where} order_window_ms", 1, 5000, "ms")
    _whole(k.notify_491_retries, f"{where} notify_491_retries", 0, 5, "retries")
    _whole(k.notify_491_retry_ms, f"{where} notify_491_retry_ms", 10, 5000, "ms")


def _check_anchored(a: AnchoredSettings, where: str) -> None:
    _need(a.mode in ("accept", "relay"), f"{where} mode = {a.mode!r}: must be 'accept' or 'relay'")
    _need(isinstance(a.asterisk, dict),
          f"{where} asterisk must be a table of name = \"host:port\"")
    for name, addr in a.asterisk.items():
        _need(bool(_NAME_RE.fullmatch(name)), f"{where} asterisk.{name}: a name is {_NAME_RULE}")
        host, _, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
        _need(bool(host) and port.isdigit() and 0 < int(port) < 65536,
              f"{where} asterisk.{name} = {addr!r}: expected \"host:port\", port 1-65535")
    _text(a.dial, f"{where} dial")
    try:
        a.dial.format(**_DIAL_FIELDS)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where} dial = {a.dial!r}: unusable template ({exc!r}); only "
                          "{user}, {host} and {uri} are filled in") from None
    _need(isinstance(a.node, str) and bool(_NAME_RE.fullmatch(a.node)),
          f"{where} node = {a.node!r}: must be {_NAME_RULE} (it names a Redis stream)")


def _check_asterisk(a: AsteriskSettings, where: str) -> None:
    _need(isinstance(a.name, str) and bool(_NAME_RE.fullmatch(a.name)),
          f"{where} name = {a.name!r}: must be {_NAME_RULE} (it names a Redis stream)")
    for key in ("ami_host", "agi_host", "ami_user", "transfer_context", "hold_context",
                "hold_exten", "recall_context"):
        _text(getattr(a, key), f"{where} {key}")
    for key in ("ami_secret", "relayed_announce", "replaces_predial"):
        _text(getattr(a, key), f"{where} {key}", empty=True)
    _port(a.ami_port, f"{where} ami_port")
    _port(a.agi_port, f"{where} agi_port")
    _text(a.metrics_host, f"{where} metrics_host")
    _need(a.metrics_port == 0 or (type(a.metrics_port) is int and 0 < a.metrics_port < 65536),
          f"{where} metrics_port = {a.metrics_port!r}: must be a port, 1-65535, or 0 (off)")
    _seconds(a.agi_session_limit_s, f"{where} agi_session_limit_s", 1, 7 * 86400)
    _seconds(a.relayed_timeout_s, f"{where} relayed_timeout_s", 1, 600, integer=True)
    _need(a.replaces_predial == "" or len(a.replaces_predial.split("^")) == 3,
          f"{where} replaces_predial = {a.replaces_predial!r}: must be "
          "context^exten^priority (or \"\" for none)")
    _need(a.agi_session_limit_s > a.relayed_timeout_s,
          f"{where} agi_session_limit_s ({a.agi_session_limit_s:g}) must exceed "
          f"relayed_timeout_s ({a.relayed_timeout_s}): the session would end before the dial")


def load(path: str | None = None) -> Settings:
    """Read the settings file: a missing default file means defaults, a missing named one
    is an error."""
    explicit = path or os.environ.get("REFEREE_CONFIG")
    target = explicit or DEFAULT_PATH
    try:
        with open(target, encoding="utf-8") as fh:
            return parse(fh.read(), target)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"{target}: no such file (named by --config or REFEREE_CONFIG)"
            ) from None
        return Settings()
