"""The KSR glue: read a message, ask kemi.transfer, perform what it says.

Two ways in, one logic:

* kamailio.cfg with ``cfgengine "python"``: Kamailio calls ``ksr_request_route`` and the
  small proxy in kemi.proxy routes everything, calling the ``on_*`` handlers below.
* a native kamailio.cfg (the drop-in): ``python_exec("referee_request")`` for REFER,
  NOTIFY, INVITE and BYE.  The method returns 1 to let the cfg go on relaying and 0 when
  referee has answered the request itself (0 ends the cfg route, as `exit` would).

Rules kept everywhere (notes/kamailio-kemi.md): every route returns an int, no exception
escapes (an escaped one means no SIP reply at all), Redis waits are bounded by the
client's budget and its circuit breaker, and non-transfer traffic never reaches Redis --
unless [kamailio] dialog_index is on: then every initial INVITE, its responses and every
BYE are recorded in the dialog index (kemi.dialogs), and a Replaces, in a REFER's
Refer-To or an INVITE, is checked against it (kemi.replaces) before it is relayed.

Anchored transfers ([anchored] in referee.toml, kemi.anchored): an in-dialog REFER sent
to an Asterisk listed there is answered 202 here (mode "accept"), its NOTIFYs are sent by
referee in Asterisk's name -- 100 at once, the rest from the Asterisk side's progress,
read by the `referee_progress` rtimer, never by a SIP worker -- and the channels are
moved by the AMI controller (a MoveJob on the Asterisk's job stream).  Because those
NOTIFYs use CSeq numbers of Asterisk's direction, every later request Asterisk sends in
that dialog is renumbered (kemi.cseq) and A's replies are numbered back.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
import traceback

import KSR  # provided by app_python3

from kemi import anchored, config, persistence, replaces, ruri, transfer
from kemi.anchor import PROGRESS_GROUP, AnchorError, Progress, jobs_key, progress_key, xfer_id
from kemi.cseq import CSeqError, CSeqShift, parse_cseq_number
from kemi.dialogs import DialogEvent, DialogStore, response_event
from kemi.journal import Journal
from kemi.order import Timing
from kemi.policy.cache import PolicyCache, PolicyUnavailable
from kemi.resp import CircuitBreaker, RedisError, RespClient
from kemi.sequencer import Deferred, Sequencer
from kemi.sip.headers import contact_uri
from kemi.sip.text import printable, text_fault
from kemi.state import Event, State
from kemi.store import TransferStore

CONTINUE = 1  # let the caller (cfg or proxy) go on routing
HANDLED = 0  # referee answered; the cfg route must end here

HTABLE = "referee"  # dialogs with a transfer on this node: Call-ID -> "from-tag|refer-id"
# Anchored mode (see kamailio.cfg / kamailio-native.cfg for the modparams):
AST_TABLE = "referee_ast"  # "ip:port" of each [anchored] Asterisk -> its name
CSEQ_TABLE = "referee_cs"  # Call-ID -> the last CSeq an Asterisk sent in that dialog
SHIFT_TABLE = "referee_x"  # Call-ID -> kemi.cseq state of a dialog referee NOTIFYs in
SHIFT_KEEP_S = 60  # how long a dialog's CSeq state outlives its BYE
JOBS_MAXLEN = 10000
DIALOGS_TTL_S = 86400  # as the htables' autoexpire
PROGRESS_BATCH = 50
# Held NOTIFYs resumed per tick by kamailio-native.cfg's while loop (Kamailio ends a
# loop after max_while_loops, 100 by default): the rest go on the next tick.
NATIVE_BATCH = 64
REPLY_ROUTE = "referee_reply"
# A REFER's record is refused by Redis if its script runs later than the budget plus this
# (the REFER was answered 503 meanwhile): the error of reading Redis's clock, not policy.
LATE_MARGIN_S = 0.05
FAILURE_ROUTE = "referee_failure"


def _log(level, text: str) -> None:
    # A NUL or an undecodable byte from the wire would make the log call itself raise.
    level(f"referee: {printable(text, keep_newlines=True)}\n")


def route(kind: str):
    """Wrap a route: an int always comes back; the unexpected is logged and, on a request,
    answered 500 so the sender is never left waiting in silence."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(self, msg, *args):
            try:
                rc = fn(self, msg)  # rtimer and event routes pass extra arguments
                return CONTINUE if rc is None else int(rc)
            except Exception as exc:  # noqa: BLE001 - the last line of defence
                _log(KSR.err, f"{kind} {fn.__name__} failed: {exc!r}\n{traceback.format_exc()}")
                if kind == "request":
                    try:
                        KSR.hdr.append_to_reply(
                            f'Warning: 399 referee "internal error: {type(exc).__name__}"\r\n'
                        )
                        KSR.sl.send_reply(500, "Server Internal Error")
                    except Exception:  # noqa: BLE001
                        pass
                    return HANDLED
                return CONTINUE

        return inner

    return wrap


def _get(spec: str) -> str | None:
    """A pseudo-variable as text; bytes that are not UTF-8 come back as surrogate escapes
    (kemi.sip.text) instead of raising in app_python3."""
    try:
        value = KSR.pv.get(spec)
    except UnicodeDecodeError:
        return _undecoded(spec[1:])
    return None if value is None else str(value)


def _undecoded(inner: str) -> str | None:
    """`$(<inner>)` read again through Kamailio's hex transformation, byte for byte."""
    hexed = KSR.pv.get(f"$({inner}{{s.encode.hexa}})")
    if hexed is None:
        return None
    return bytes.fromhex(str(hexed)).decode("utf-8", "surrogateescape")


def _source() -> str:
    """Where the current message came from, "ip:port" (what a forger cannot choose)."""
    return f"{_get('$si') or ''}:{_get('$sp') or ''}"


def _headers(name: str) -> list[str]:
    """Every instance of a header (compact forms and any case match, as Kamailio parses)."""
    out = []
    i = 0
    while True:
        try:
            value = KSR.hdr.get_idx(name, i)
        except UnicodeDecodeError:
            value = _undecoded(f"hdr({name})[{i}]")
        if value is None:
            return out
        out.append(str(value))
        i += 1


def _send(reply: transfer.Reply) -> int:
    extra = reply.headers()
    if extra:
        KSR.hdr.append_to_reply(extra)
    KSR.sl.send_reply(reply.code, reply.reason)
    return HANDLED


class Referee:
    """One per Kamailio process (app_python3 forks the object made in mod_init)."""

    def __init__(self) -> None:
        self.settings = config.load()
        self.policy = PolicyCache(
            self.settings.policy_db, check_interval_s=self.settings.policy_check_interval_s
        )
        self._store: TransferStore | None = None
        self._dialogs: DialogStore | None = None
        self._client: RespClient | None = None
        self.dialog_index = self.settings.kamailio.dialog_index
        self.host_only = self.settings.kamailio.party_match == "host"
        self.journal = Journal(self.settings.kamailio.journal_dir)
        self.anchored = self.settings.anchored
        self.asterisk_sources = {
            _source_key(addr): name for name, addr in self.anchored.asterisk.items()
        }
        self._progress_ready = False  # consumer group made (progress timer process)
        self._progress_pending = True  # claim our own unacknowledged entries first
        self._progress_down = False  # Redis failing for the progress timer (logged once)
        self._rebuilt = False  # htable marks of anchored dialogs restored after a start
        self._persistence_checked = False  # Redis's AOF looked at (sweep process)
        self._anchored_ready = False  # the cfg has the anchored-mode htables
        k = self.settings.kamailio
        self.order = Sequencer(
            Timing(grace_s=k.order_grace_ms / 1000.0, window_s=k.order_window_ms / 1000.0),
            lambda text: _log(KSR.warn, text),
        )
        self.later = Deferred(lambda text: _log(KSR.warn, text))
        self._due: list | None = None  # released this tick, not yet resumed (native cfg)
        self._resumed: list[tuple[str, dict]] = []  # relayed by t_continue, to record
        self._continued: tuple[str, str, int] | None = None  # resumed, not marked sent

    # -- process lifecycle -------------------------------------------------------------
    def child_init(self, rank: int) -> int:
        # Sockets are opened lazily in each process (never before the fork).
        self._store = None
        self._dialogs = None
        self._client = None
        self._progress_ready = False
        self._progress_pending = True
        self._progress_down = False
        self._rebuilt = False
        self._persistence_checked = False
        self.order.ready = True
        # The cfg recognises an Asterisk's requests by source address in this table.
        self._anchored_ready = bool(self.asterisk_sources)
        for addr, name in self.asterisk_sources.items():
            try:
                if KSR.htable.sht_sets(AST_TABLE, addr, name) < 0:
                    raise LookupError(f"no htable {AST_TABLE}")
            except Exception as exc:  # noqa: BLE001 - htable missing: anchored mode off
                if rank == 1:
                    _log(KSR.err, f"htable '{AST_TABLE}' unusable ({exc}): [anchored] "
                                  "REFERs are relayed (kamailio-native.cfg needs "
                                  "-A WITH_ANCHORED)")
                self._anchored_ready = False
                break
        return 0

    @property
    def client(self) -> RespClient:
        """One Redis connection per process, shared by the transfer store and the index."""
        if self._client is None:
            r = self.settings.redis
            self._client = RespClient(
                r.url,
                timeout_s=r.timeout_ms / 1000.0,
                breaker=CircuitBreaker(r.breaker_failures, r.breaker_open_s),
            )
        return self._client

    @property
    def dialogs(self) -> DialogStore:
        if self._dialogs is None:
            self._dialogs = DialogStore(self.client, prefix=self.settings.redis.prefix)
        return self._dialogs

    @property
    def store(self) -> TransferStore:
        if self._store is None:
            r = self.settings.redis
            self._store = TransferStore(
                self.client,
                prefix=r.prefix,
                done_ttl_s=self.settings.transfer.done_ttl_s,
                stream_maxlen=self.settings.transfer.stream_maxlen,
            )
        return self._store

    # -- native-cfg entry points -------------------------------------------------------
    @route("request")
    def referee_request(self, msg) -> int:
        method = KSR.pv.get("$rm")
        if method == "REFER":
            return self.on_refer()
        if method == "NOTIFY":
            return self.on_notify()
        if method == "INVITE":
            return self.on_invite()
        if method == "BYE":
            return self.on_bye()
        return CONTINUE

    @route("request")
    def referee_cseq(self, msg) -> int:
        """A request from an [anchored] Asterisk in a dialog referee NOTIFYs in."""
        return self.on_asterisk_request()

    @route("request")
    def referee_unrelayed(self, msg) -> int:
        """kamailio-native.cfg: t_relay could not send a REFER on (an unresolvable host, no
        route; its return code in $var(rf_relay)): referee answers it."""
        try:
            rc = int(_get("$var(rf_relay)") or -1)
        except ValueError:
            rc = -1
        return self.on_unrelayed(rc)

    def on_unrelayed(self, rc: int) -> int:
        """A REFER tm could not relay (`rc`: t_relay's error): answered here, and, since no
        reply or failure route will ever see it, its transfer closed as rejected with
        that answer."""
        if (_get("$rm") or "").upper() != "REFER":
            return CONTINUE
        try:
            refer_id = str(parse_cseq_number(_get("$cs")))
        except CSeqError:
            return CONTINUE
        reply = transfer.unrelayed_reply(rc)
        code = reply.code
        _send(reply)
        call_id = _get("$ci") or ""
        self.order.refer_answered(call_id, refer_id)
        res = self._apply(call_id, refer_id, Event.REFER_REJECTED,
                          {"refer_reply": str(code), "refer_unrelayed": str(rc)},
                          f"{code} by the proxy: t_relay failed ({rc})")
        if res is not None and res.final:
            _log(KSR.notice, f"REFER {call_id}/{refer_id} could not be relayed (t_relay "
                             f"{rc}): answered {code}, transfer rejected")
        return CONTINUE

    @route("reply")
    def referee_reply(self, msg) -> int:
        return self.on_reply(int(KSR.pv.get("$rs") or 0))

    @route("reply")
    def referee_uac_reply(self, msg) -> int:
        """A reply to a NOTIFY referee sent itself (no transaction route sees those)."""
        return self.on_notify_reply(int(KSR.pv.get("$rs") or 0))

    @route("failure")
    def referee_failure(self, msg) -> int:
        # Local timeouts (408) never pass a reply route: they are seen only here.
        code = int(KSR.pv.get("$T_reply_code") or 0)
        if (_get("$rm") or "").upper() == "NOTIFY" and _get("$avp(rf_nfy)"):
            return self.on_notify_failure(code)
        return self.on_reply(code)

    @route("timer")
    def referee_order(self, msg) -> int:
        """rtimer of kamailio.cfg (every few ms, its own process): resume the held NOTIFYs
        whose turn has come, one after another, so they leave in CSeq order
        (kemi.order); each goes on in the proxy's referee_resume."""
        for cid, h in self.order.due():
            if KSR.tmx.t_continue(h.tindex, h.tlabel, "referee_resume") < 0:
                _log(KSR.warn, f"held NOTIFY [{h.tindex}:{h.tlabel}] not resumed (its "
                               "transaction ended)")
            self.order.mark_sent(cid, h.tag, h.cseq)
        self._record_resumed()
        return CONTINUE

    def referee_next(self, msg, *_args) -> int:
        """kamailio-native.cfg's route[REFEREE_ORDER] loops on this: 1 with the next held
        transaction to resume in $var(rf_ti)/$var(rf_tl), -1 when none is due (its
        t_continue names a cfg route, which KSR.tmx.t_continue cannot).  Not wrapped by
        `route`: on an error it must end the loop (-1), never continue it."""
        try:
            if self._continued is not None:  # the one t_continue just relayed
                self.order.mark_sent(*self._continued)
                self._continued = None
            self._record_resumed()  # (outside the transaction's lock)
            if self._due is None:  # the first call of this tick
                self._due = self.order.due(limit=NATIVE_BATCH)
            if not self._due:
                self._due = None
                return -1
            cid, h = self._due.pop(0)
            self._continued = (cid, h.tag, h.cseq)
            KSR.pv.seti("$var(rf_ti)", h.tindex)
            KSR.pv.seti("$var(rf_tl)", h.tlabel)
            return 1
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            self._due = self._continued = None
            _log(KSR.err, f"timer referee_next failed: {exc!r}\n{traceback.format_exc()}")
            return -1

    @route("failure")
    def referee_resume(self, msg, *_evname) -> int:
        """A held NOTIFY resumed (tm t_continue): arm its routes again before the cfg (or
        kemi.proxy) relays it -- what was armed before the suspension went with it -- and
        mark its Request-URI new: a NOTIFY sent again after a 491 was suspended in its
        failure route, where tm counts the Request-URI as used ("no branches")."""
        self._arm_notify_routes()
        note = self._notify_note()
        target = (note or {}).get("u")
        KSR.pv.sets("$ru", target or _get("$ru") or "")
        if target:
            KSR.pv.unset("$du")  # (see _notify_target)
        return CONTINUE

    @route("timer")
    def referee_sweep(self, msg) -> int:
        """rtimer: replay spooled events, then close transfers whose final NOTIFY never came."""
        now = time.time()
        if not self._persistence_checked:
            self._check_persistence()
        if self.journal.pending():
            report = self.journal.replay(self.store, lambda text: _log(KSR.err, text))
            if report.applied or report.kept:
                _log(KSR.notice, f"journal replay: {report.applied} events stored, "
                                 f"{report.kept} still waiting for Redis")
            if report.kept:
                return CONTINUE  # Redis still away: expiring now would race the replay
        for cid, entry in self.later.due():
            self._store_later(cid, entry)
        try:
            due = self.store.due(now, limit=200)
        except RedisError as exc:
            _log(KSR.warn, f"expiry sweep skipped: {exc}")
            return CONTINUE
        for call_id, refer_id in due:
            res = self._apply(call_id, refer_id, Event.EXPIRY, detail="sweep")
            if res is not None and res.final:
                _log(KSR.notice, f"transfer {call_id}/{refer_id} expired without a final NOTIFY")
                self._expire_anchored(call_id, refer_id)
        return CONTINUE

    def _check_persistence(self) -> None:
        """Once per start (the sweep's process): warn when Redis would lose transfers in
        a crash (kemi.persistence).  Retried on the next tick while Redis is away."""
        try:
            if self.client.cluster:
                infos = self.client.on_each_master("INFO", "persistence")
            else:
                infos = {self.client.address: self.client.call("INFO", "persistence")}
        except RedisError:
            return
        self._persistence_checked = True
        for addr, info in infos.items():
            warning = persistence.persistence_warning(str(addr), _text(info))
            if warning:
                _log(KSR.warn, warning)

    def _expire_anchored(self, call_id: str, refer_id: str) -> None:
        """referee is the notifier of an accepted anchored transfer: it ends A's
        subscription itself when the Asterisk side never reported an outcome."""
        if not self.anchored.asterisk:
            return
        try:
            record = self.store.get(call_id, refer_id) or {}
        except RedisError:
            return
        if record.get("anchor_mode") != "accept" or record.get("refer_sub") == "false":
            return
        self._notify_anchored(call_id, refer_id, record, 408, "Request Timeout", True, 0)

    # -- REFER ---------------------------------------------------------------------------
    def on_refer(self) -> int:
        cseq = int((_get("$cs") or "0").strip() or 0)
        msg = transfer.ReferMessage(
            call_id=_get("$ci") or "",
            cseq=cseq,
            from_uri=_get("$hdr(From)") or "",
            from_tag=_get("$ft") or "",
            to_uri=_get("$hdr(To)") or "",
            to_tag=_get("$tt") or "",
            request_uri=_get("$ru") or "",
            source_ip=_get("$si") or "",
            refer_to=_headers("Refer-To"),
            referred_by=_headers("Referred-By"),
            contact=_get("$hdr(Contact)"),
            refer_sub=_get("$hdr(Refer-Sub)"),
            auth_user=_get("$au"),
        )
        try:
            policy = self.policy.current()
        except PolicyUnavailable as exc:
            _log(KSR.err, f"REFER {msg.call_id}: policy unavailable: {exc}")
            return _send(
                transfer.Reply(500, "Server Internal Error", "transfer policy unavailable")
            )
        verdict = transfer.check_refer(msg, policy)
        if isinstance(verdict, transfer.Reply):
            _log(KSR.notice,
                 f"REFER {msg.call_id}/{cseq} answered {verdict.code}: {verdict.warning}")
            return _send(verdict)
        transferor = plan_transferor = verdict.transferor
        if self.dialog_index and msg.to_tag:
            judged = self._check_refer_dialog(verdict, msg)
            if isinstance(judged, int):
                return judged
            transferor = judged.transferor
        if self.dialog_index and verdict.replaces is not None:
            judged = self._check_refer_replaces(verdict, transferor or plan_transferor)
            if judged is not None:
                return judged
        return self._track_refer(verdict)

    def _check_refer_dialog(self, plan: transfer.ReferPlan, msg: transfer.ReferMessage
                            ) -> int | replaces.ReferDialog:
        """An in-dialog REFER must be in a dialog the index knows, from one of its parties
        (by tag and by source): a To-tag is no proof of a dialog (anyone can invent one
        to pass the out-of-dialog gate), a From is no proof of a party.  An int when
        answered, else what the index says of the dialog (noted on the record)."""
        try:
            found = self.dialogs.find(msg.call_id, msg.from_tag, msg.to_tag)
        except RedisError as exc:
            return self._redis_down_refer(plan, exc)
        ok = replaces.check_refer_dialog(found, msg.from_tag, _source(), msg.auth_user,
                                         self.host_only)
        if isinstance(ok, transfer.Reply):
            _log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered {ok.code}: "
                             f"{ok.warning}")
            return _send(ok)
        if ok.transferee_src:
            plan.fields["transferee_src"] = ok.transferee_src
        return ok

    def _check_refer_replaces(self, plan: transfer.ReferPlan, transferor: str) -> int | None:
        """The dialog an attended transfer names, judged against the index: an int when
        the REFER was answered (or Redis is away), None to go on and record it."""
        rp = plan.replaces
        try:
            found = self.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
        except RedisError as exc:
            return self._redis_down_refer(plan, exc)
        ok = replaces.check_refer_replaces(rp, found, transferor,
                                           self.policy.current(), plan.decision.tenant,
                                           source=_source(), auth_user=_get("$au"),
                                           host_only=self.host_only)
        if isinstance(ok, transfer.Reply):
            _log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered {ok.code}: "
                             f"{ok.warning}")
            return _send(ok)
        plan.fields.update(ok.fields())
        return None

    def _track_refer(self, plan: transfer.ReferPlan) -> int:
        now = time.time()
        d = plan.decision
        expiry = min(plan.expiry_s, self.settings.transfer.max_open_s)
        asterisk, mode = self._anchoring(plan)
        token = ""
        if self.settings.kamailio.tie_token and mode != "accept":
            token = plan.fields["tie_token"] = secrets.token_hex(6)
        try:
            res = self.store.create(
                plan.call_id,
                plan.refer_id,
                plan.fields,
                now=now,
                deadline=now + expiry,
                max_per_call=d.max_transfers_per_call,
                transferor=plan.transferor,
                rate_limit=d.refers_per_minute,
                transferee=plan.transferee,
                target=plan.target,
                answered_after_s=self.settings.redis.timeout_ms / 1000.0 + LATE_MARGIN_S,
            )
        except RedisError as exc:
            return self._redis_down_refer(plan, exc)
        if res.reason == "too-late":  # Redis ran it past our budget: nothing was recorded
            return self._redis_down_refer(plan, RedisError("Redis answered past the budget"))
        if not res.created and res.reason != "duplicate":
            reply = transfer.limit_reply(res.reason, d)
            _log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered 403: {reply.warning}")
            return _send(reply)
        if mode == "accept":
            return self._accept_anchored(plan, asterisk, duplicate=not res.created, now=now)
        if asterisk is not None:
            # Relayed to the anchored Asterisk: its AGI finds the record by this header.
            KSR.hdr.append(f"X-Transfer-Id: {xfer_id(plan.call_id, plan.refer_id)}\r\n")
        if token and res.created:
            refer_to = _headers("Refer-To")[0]
            KSR.hdr.remove("Refer-To")
            KSR.hdr.append(f"Refer-To: {transfer.with_tie_token(refer_to, token)}\r\n")
        self._follow(plan.call_id, plan.refer_id, plan.nosub_requested)
        _log(
            KSR.info,
            f"REFER {plan.call_id}/{plan.refer_id} {plan.transferor} -> {plan.target_uri} "
            f"allowed ({d.rule})",
        )
        return CONTINUE

    # -- anchored transfers ------------------------------------------------------------------
    def _anchoring(self, plan: transfer.ReferPlan) -> tuple[str | None, str | None]:
        """(Asterisk name, "accept" | "relay") for a REFER to an anchored Asterisk, else
        (None, None); the fields a NOTIFY needs go into the record for "accept"."""
        if not self.anchored.asterisk:
            return None, None
        name = anchored.asterisk_for(
            self.anchored.asterisk, _get("$ru") or "", _get("$du"),
            in_dialog=bool(_get("$tt")),
        )
        if name is None:
            return None, None
        mode = self.anchored.mode
        fields = {"anchored": name}
        if mode == "accept" and not self._anchored_ready:
            mode = "relay"  # the cfg lacks the anchored-mode lines (logged at start)
            fields["anchor_fallback"] = "cfg-without-anchored-mode"
        elif mode == "accept" and not plan.nosub_requested \
                and self._last_cseq(plan.call_id) is None:
            # Without Asterisk's last CSeq toward A no NOTIFY can be numbered safely: let
            # Asterisk take the REFER itself rather than break the dialog.
            _log(KSR.warn, f"REFER {plan.call_id}/{plan.refer_id} to anchored {name}: no "
                           "CSeq of Asterisk's seen in this dialog (its INVITE did not pass "
                           "this node since it started?); relayed instead of accepted")
            mode = "relay"
            fields["anchor_fallback"] = "no-asterisk-cseq"
        fields["anchor_mode"] = mode
        if mode == "accept":
            contact = contact_uri(_get("$hdr(Contact)"))
            if contact is None:
                _log(KSR.warn, f"REFER {plan.call_id}/{plan.refer_id} without Contact: "
                               f"relayed to anchored {name}")
                fields["anchor_mode"] = mode = "relay"
            else:
                proto = (_get("$pr") or "udp").lower()
                fields.update(anchored.NotifyRoute(
                    from_hdr=_get("$hdr(To)") or "", to_hdr=_get("$hdr(From)") or "",
                    ruri=contact, contact=_get("$ru") or "",
                    nexthop=f"sip:{_get('$si')}:{_get('$sp')};transport={proto}",
                    socket=f"{proto}:{_get('$Ri')}:{_get('$Rp')}",
                ).fields())
        plan.fields.update(fields)
        return name, mode

    def _accept_anchored(self, plan: transfer.ReferPlan, asterisk: str, duplicate: bool,
                         now: float) -> int:
        """202 here, NOTIFY 100 at once, and the job for the Asterisk side; the REFER is
        never relayed (Asterisk's own REFER handling would hang A up at once)."""
        cid, rid, nosub = plan.call_id, plan.refer_id, plan.nosub_requested
        if nosub:
            KSR.hdr.append_to_reply("Refer-Sub: false\r\n")
        KSR.sl.send_reply(202, "Accepted")
        if duplicate:
            return HANDLED  # a retransmission: everything below was done the first time
        try:
            self._after_202(plan, asterisk, now)
        except Exception as exc:  # noqa: BLE001 - the 202 is out: a 500 now would be a
            # second final response; A hears of the failure by NOTIFY, if one can go out
            _log(KSR.err, f"REFER {cid}/{rid} accepted for anchored {asterisk}, then failed: "
                          f"{exc!r}\n{traceback.format_exc()}")
            try:
                self._finish_unqueued(cid, rid, plan.fields, nosub, f"failed: {exc!r}")
            except Exception as exc2:  # noqa: BLE001
                _log(KSR.err, f"REFER {cid}/{rid}: failure not notified either ({exc2!r}); "
                              "the expiry sweep closes it")
        return HANDLED

    def _after_202(self, plan: transfer.ReferPlan, asterisk: str, now: float) -> None:
        cid, rid, nosub = plan.call_id, plan.refer_id, plan.nosub_requested
        self._mark_dialog(cid, _get("$ft") or "", rid, anchored_dialog=True)
        event = Event.REFER_ACCEPTED_NOSUB if nosub else Event.REFER_ACCEPTED
        self._apply(cid, rid, event, {"refer_reply": "202"}, "202 by referee (anchored)")
        expires = int(min(plan.expiry_s, self.settings.transfer.max_open_s))
        if not nosub:
            self._notify_anchored(cid, rid, plan.fields, 100, "Trying", False, expires,
                                  event=Event.NOTIFY_TRYING, detail="100 Trying (referee)")
            self._remember_dialog(cid, rid)  # renumbered from now on: listed for a restart
        try:
            job = anchored.move_job(
                call_id=cid, refer_id=rid, target_uri=plan.target_uri,
                transferor=plan.transferor, decision=plan.decision,
                dial_template=self.anchored.dial, prefix=self.settings.redis.prefix,
                node=self.anchored.node, now=now,
                recall_uri=plan.fields.get("n_ruri", ""),  # A's Contact (NotifyRoute)
            )
            flat = [x for kv in job.to_fields().items() for x in kv]
            self.client.call("XADD", jobs_key(self.settings.redis.prefix, asterisk),
                             "MAXLEN", "~", JOBS_MAXLEN, "*", *flat)
        except (RedisError, AnchorError) as exc:
            _log(KSR.err, f"REFER {cid}/{rid}: move job for {asterisk} not queued ({exc}); "
                          "transfer failed")
            self._finish_unqueued(cid, rid, plan.fields, nosub)
            return
        _log(KSR.info, f"REFER {cid}/{rid} {plan.transferor} -> {plan.target_uri} accepted "
                       f"for anchored {asterisk} ({plan.decision.rule}); dial {job.dial}")

    @property
    def _dialogs_key(self) -> str:
        """This node's anchored dialogs with renumbered CSeq: Call-ID -> refer id, so a
        restarted Kamailio can restore their htable state (kept in the records)."""
        return f"{self.settings.redis.prefix}:{{anchor:{self.anchored.node}}}:dialogs"

    def _remember_dialog(self, cid: str, rid: str) -> None:
        try:
            self.client.pipeline([
                ("HSET", self._dialogs_key, cid, rid),
                ("EXPIRE", self._dialogs_key, DIALOGS_TTL_S),
            ])
        except Exception as exc:  # noqa: BLE001 - the 202 is out: never fail the route now
            _log(KSR.warn, f"dialog {cid} not listed for a restart ({exc}): a restart "
                           "before its end would leave Asterisk's requests unrenumbered")

    def _forget_dialog(self, cid: str) -> None:
        try:
            self.client.call("HDEL", self._dialogs_key, cid)
        except RedisError as exc:
            _log(KSR.notice, f"dialog {cid} left in {self._dialogs_key} ({exc}); it expires")

    def _rebuild_marks(self) -> None:
        """After a start: the CSeq state and BYE mark of every anchored dialog this node
        renumbers, from the transfer records (the htables are gone with the old process).
        The next NOTIFY in such a dialog jumps kemi.cseq.REBUILD_MARGIN ahead, in case
        Asterisk sent requests after the record was last written."""
        listed = _pairs(self.client.call("HGETALL", self._dialogs_key) or [])
        restored = 0
        for cid, rid in listed.items():
            if KSR.htable.sht_get(SHIFT_TABLE, cid) is not None:
                continue  # live: this was a reload, not a restart
            record = self.store.get(cid, rid)
            if not record or not record.get("cs_state"):
                self._forget_dialog(cid)
                continue
            try:
                shift = CSeqShift.decode(record["cs_state"]).rebuilt()
            except CSeqError as exc:
                _log(KSR.err, f"dialog {cid}: CSeq state not restored: {exc}")
                continue
            KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
            self._mark_dialog(cid, record.get("from_tag", ""), rid, anchored_dialog=True)
            restored += 1
        if restored:
            _log(KSR.notice, f"CSeq renumbering restored for {restored} anchored dialog(s)")

    def _finish_unqueued(self, cid: str, rid: str, record: dict, nosub: bool,
                         why: str = "job not queued") -> None:
        fields = {"anchor_error": why}
        if nosub:
            self._apply(cid, rid, Event.INVITE_FAILED, fields, f"503 {why}")
            return
        self._notify_anchored(cid, rid, record, 503, "Service Unavailable", True, 0,
                              event=Event.NOTIFY_FAILURE, detail=f"503 {why}",
                              fields=fields)

    def _last_cseq(self, call_id: str) -> int | None:
        """The last CSeq an Asterisk sent in this dialog (the cfg or on_asterisk_request
        records it), or the translated one if referee already NOTIFYs in it."""
        try:
            shift = KSR.htable.sht_get(SHIFT_TABLE, call_id)
            if shift is not None:
                return CSeqShift.decode(str(shift)).last_sent
            value = KSR.htable.sht_get(CSEQ_TABLE, call_id)
        except Exception as exc:  # noqa: BLE001 - htable missing or a bad value
            _log(KSR.warn, f"dialog {call_id}: CSeq state unreadable: {exc}")
            return None
        try:
            return None if value is None else parse_cseq_number(value)
        except CSeqError:
            return None

    def _notify_anchored(self, cid: str, rid: str, record: dict, code: int, reason: str,
                         terminated: bool, expires_s: int, event: Event | None = None,
                         detail: str = "", fields: dict | None = None,
                         record_first: bool = False) -> int | None:
        """Send A one NOTIFY in Asterisk's name; its CSeq number, or None if it could not
        be sent.  Numbered and sent under the htable slot lock of the dialog's CSeq
        state, so a request Asterisk sends meanwhile is numbered after it.

        `event` (with `fields`, `detail`) is recorded whether or not the NOTIFY could be
        sent: after it, with its CSeq and the CSeq state (one round trip), or with
        record_first before it -- then A's answer (a 481) can never be recorded before
        the NOTIFY it answers, and the CSeq state follows as an annotation.  Nothing is
        recorded between numbering and sending: a Redis round trip there would let a
        request of Asterisk's, numbered after the NOTIFY, overtake it on the wire."""
        fields = {**(fields or {}), "last_notify": str(code)}
        if terminated:
            fields["final_sipfrag"] = f"{code} {reason}"
        if event is not None and record_first:
            self._apply(cid, rid, event, fields, detail)
        cseq = self._number_and_send(cid, rid, record, code, reason, terminated, expires_s)
        cs_fields = {} if cseq is None else {
            "notify_cseq": str(cseq), "cs_state": record["cs_state"]}
        if event is not None and not record_first:
            self._apply(cid, rid, event, {**fields, **cs_fields}, detail)
        elif event is not None and cs_fields:
            try:
                self.store.annotate(cid, rid, time.time(), cs_fields, f"NOTIFY CSeq {cseq}")
            except RedisError as exc:
                _log(KSR.warn, f"CSeq state of {cid} not stored ({exc}); a restart now "
                               "would resume with a margin")
        return cseq

    def _number_and_send(self, cid: str, rid: str, record: dict, code: int, reason: str,
                         terminated: bool, expires_s: int) -> int | None:
        try:
            route_ = anchored.NotifyRoute.from_record(record)
        except ValueError as exc:
            _log(KSR.err, f"NOTIFY for {cid}/{rid} not sent: {exc}")
            return None
        KSR.htable.sht_lock(SHIFT_TABLE, cid)
        try:
            shift = self._shift_for(cid, record)
            if shift is None:
                _log(KSR.err, f"NOTIFY for {cid}/{rid} not sent: Asterisk's CSeq unknown")
                return None
            cseq = shift.next_notify()
            headers, body = anchored.notify_request(
                route_, cid, rid, cseq, code, reason, terminated, expires_s
            )
            rc = KSR.tm.t_uac_send("NOTIFY", route_.ruri, route_.nexthop, route_.socket,
                                   headers, body)
            if rc is not None and rc < 0:
                _log(KSR.err, f"NOTIFY {code} for {cid}/{rid} (CSeq {cseq}) not sent: "
                              f"tm {rc}")
                return None  # the number stays unused: a gap is legal, a repeat is not
            KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
        finally:
            KSR.htable.sht_unlock(SHIFT_TABLE, cid)
        record["cs_state"] = shift.encode()
        _log(KSR.info, f"NOTIFY {code} {reason} for {cid}/{rid} sent (CSeq {cseq}"
                       f"{', terminated' if terminated else ''})")
        return cseq

    def _shift_for(self, cid: str, record: dict) -> CSeqShift | None:
        """The dialog's CSeq state (call under the slot lock): the htable's, else a new
        one from Asterisk's last CSeq, else the record's copy after a restart."""
        text = KSR.htable.sht_get(SHIFT_TABLE, cid)
        try:
            if text is not None:
                return CSeqShift.decode(str(text))
            last = KSR.htable.sht_get(CSEQ_TABLE, cid)
            if last is not None:
                return CSeqShift.start(parse_cseq_number(last))
            if record.get("cs_state"):
                _log(KSR.notice, f"dialog {cid}: CSeq state rebuilt from the transfer record")
                return CSeqShift.decode(record["cs_state"]).rebuilt()
        except CSeqError as exc:
            _log(KSR.err, f"dialog {cid}: CSeq state unusable: {exc}")
        return None

    def on_asterisk_request(self) -> int:
        """A request from an [anchored] Asterisk: its CSeq recorded, and renumbered when
        referee has sent NOTIFYs in the dialog (kemi.cseq).  Requests from A to Asterisk
        need nothing: referee never sends in A's name, so A's numbers stay A's."""
        method = (_get("$rm") or "").upper()
        if method == "CANCEL":
            # tm builds the CANCEL it sends, and the hop-by-hop ACK of a failed re-INVITE,
            # from the INVITE it relayed -- renumbered already (tm reparse_invite = 1, the
            # default).  The ACK of a 2xx is end to end: it passes here, as its INVITE did.
            return CONTINUE
        if method != "INVITE" and not _get("$tt"):
            # Only INVITE dialogs carry a REFER: out-of-dialog requests (qualify OPTIONS,
            # REGISTER, ...: a new Call-ID each) would only fill CSEQ_TABLE for a day.
            return CONTINUE
        cid = _get("$ci") or ""
        try:
            orig = parse_cseq_number(_get("$cs"))
        except CSeqError:
            return CONTINUE  # sanity_check answers it
        KSR.htable.sht_lock(SHIFT_TABLE, cid)
        try:
            text = KSR.htable.sht_get(SHIFT_TABLE, cid)
            if text is None:
                if method == "BYE":
                    KSR.htable.sht_rm(CSEQ_TABLE, cid)
                elif method != "ACK":
                    KSR.htable.sht_sets(CSEQ_TABLE, cid, str(orig))
                return CONTINUE
            shift = CSeqShift.decode(str(text))
            out = shift.on_request(method, orig)
            KSR.htable.sht_sets(SHIFT_TABLE, cid, shift.encode())
        finally:
            KSR.htable.sht_unlock(SHIFT_TABLE, cid)
        if out != orig:
            KSR.hdr.remove("CSeq")
            KSR.hdr.append(f"CSeq: {out} {method}\r\n")
            if method != "ACK":
                # The reply must reach Asterisk with its own number: kept per transaction.
                KSR.pv.sets("$avp(rf_cs)", str(orig))
                KSR.tm.t_on_reply(REPLY_ROUTE)
            _log(KSR.info, f"{method} {cid} from Asterisk: CSeq {orig} sent to A as {out}")
        return CONTINUE

    def forget_asterisk_cseq(self) -> None:
        """The other party's BYE ends a dialog whose Asterisk CSeq was recorded."""
        cid = _get("$ci") or ""
        try:
            if KSR.htable.sht_get(CSEQ_TABLE, cid) is not None:
                KSR.htable.sht_rm(CSEQ_TABLE, cid)
        except Exception:  # noqa: BLE001 - htable missing: nothing recorded either
            pass

    def _restore_reply_cseq(self) -> None:
        """A's reply to a renumbered Asterisk request goes back with Asterisk's number."""
        orig = _get("$avp(rf_cs)")
        if not orig:
            return
        method = (_get("$rm") or "").upper()
        KSR.hdr.remove("CSeq")
        KSR.hdr.append(f"CSeq: {orig} {method}\r\n")

    def on_notify_reply(self, code: int) -> int:
        """A's answer to a NOTIFY referee sent: a 481 ends the subscription (RFC 6665)."""
        if code != 481 or (_get("$rm") or "").upper() != "NOTIFY":
            return CONTINUE
        cid = _get("$ci") or ""
        try:
            mark = KSR.htable.sht_get(HTABLE, cid)
        except Exception:  # noqa: BLE001
            return CONTINUE
        if not mark:
            return CONTINUE
        parts = str(mark).split("|")
        if len(parts) < 3 or parts[2] != "a":
            return CONTINUE  # a relayed NOTIFY's 481: its own reply route records it
        self._apply(cid, parts[1], Event.NOTIFY_481, {"notify_reply": "481"}, "481")
        return CONTINUE

    # -- progress from the Asterisk side (rtimer process, never a SIP worker) --------------
    @route("timer")
    def referee_progress(self, msg) -> int:
        """rtimer: NOTIFY A of what the Asterisk side reported for the transfers this node
        accepted (its progress stream, consumer group "kamailio")."""
        if not self.anchored.asterisk or self.anchored.mode != "accept":
            return CONTINUE
        key = progress_key(self.settings.redis.prefix, self.anchored.node)
        try:
            if not self._rebuilt:
                self._rebuild_marks()
                self._rebuilt = True
            if not self._progress_ready:
                try:
                    self.client.call("XGROUP", "CREATE", key, PROGRESS_GROUP, "0", "MKSTREAM")
                except RedisError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._progress_ready = True
            start = "0" if self._progress_pending else ">"
            reply = self.client.call(
                "XREADGROUP", "GROUP", PROGRESS_GROUP, self.anchored.node,
                "COUNT", PROGRESS_BATCH, "STREAMS", key, start,
            )
        except RedisError as exc:
            if "NOGROUP" in str(exc):
                self._progress_ready = False  # the stream expired or was deleted
            if not self._progress_down:  # once per outage, not every tick
                _log(KSR.warn, f"anchored progress not read ({exc}); NOTIFYs wait for Redis")
                self._progress_down = True
            return CONTINUE
        if self._progress_down:
            _log(KSR.notice, "anchored progress read again")
            self._progress_down = False
        entries = []
        for _stream, items in reply or ():
            entries.extend(items or ())
        if start == "0" and not entries:
            self._progress_pending = False
        # One NOTIFY per transfer per tick: a 180 and a final reported together would
        # otherwise leave back to back, and a transferor still answering the first takes
        # the second for an unexpected request.  The rest waits (pending) for the next.
        # Entries not acknowledged stay pending and are read again ("0") on a later tick.
        notified: set[tuple[str, str]] = set()
        for entry_id, raw in entries:
            eid = _text(entry_id)
            try:
                fields = _pairs(raw) if raw is not None else None
                which = (fields.get("call_id", ""), fields.get("refer_id", "")) if fields \
                    else None
                if which in notified:
                    self._progress_pending = True
                    break
                if fields is None:
                    _log(KSR.warn, f"progress {eid} trimmed from the stream before it was "
                                   "handled: acknowledged without a NOTIFY")
                else:
                    self._progress_one(eid, fields)
                    notified.add(which)
            except RedisError as exc:
                _log(KSR.warn, f"progress {eid} left pending (Redis: {exc})")
                self._progress_pending = True
                break
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stall the rest
                _log(KSR.err, f"progress {eid} failed and is acknowledged (its NOTIFY may "
                              f"not have gone out): {exc!r}\n{traceback.format_exc()}")
            try:
                self.client.call("XACK", key, PROGRESS_GROUP, eid)
            except RedisError as exc:
                _log(KSR.warn, f"progress {eid} handled but not acknowledged ({exc}): it is "
                               "read again, and a NOTIFY for it may repeat")
                self._progress_pending = True
                break
        return CONTINUE

    def _progress_one(self, entry_id: str, raw: dict) -> None:
        try:
            p = Progress.from_fields(raw)
        except AnchorError as exc:
            _log(KSR.err, f"progress {entry_id} dropped: {exc}")
            return
        record = self.store.get(p.call_id, p.refer_id)
        if record is None:
            _log(KSR.notice, f"progress {entry_id} for unknown transfer "
                             f"{p.call_id}/{p.refer_id} dropped")
            return
        nosub = record.get("refer_sub") == "false"
        fields = {"last_progress": f"{p.code} {p.reason}"}
        detail = f"{p.code} {p.reason}" + (f" ({p.detail})" if p.detail else "")
        state = record.get("state", "")
        live = state in (State.REFER_SEEN, State.ACCEPTED, State.TRYING, State.RINGING)
        event = anchored.progress_event(p, nosub)
        if not nosub and live:
            deadline = float(record.get("deadline") or 0) or time.time()
            self._notify_anchored(
                p.call_id, p.refer_id, record, p.code, p.reason, p.final,
                int(deadline - time.time()), event=event, detail=detail, fields=fields,
                record_first=True,
            )
            return
        if not nosub:
            detail += f"; no NOTIFY (transfer {state})"
        self._apply(p.call_id, p.refer_id, event, fields, detail)

    def _redis_down_refer(self, plan: transfer.ReferPlan, exc: Exception) -> int:
        k = self.settings.kamailio
        if k.redis_fail_mode == "open":
            now = time.time()
            spooled = self._spool(
                "create", call_id=plan.call_id, refer_id=plan.refer_id, fields=plan.fields,
                now=now, deadline=now + min(plan.expiry_s, self.settings.transfer.max_open_s),
                transferor=plan.transferor, transferee=plan.transferee, target=plan.target,
            )
            _log(KSR.err, f"REFER {plan.call_id}/{plan.refer_id} relayed while Redis is away "
                          f"({exc}); {'spooled' if spooled else 'NOT RECORDED'}")
            self._follow(plan.call_id, plan.refer_id, plan.nosub_requested)
            return CONTINUE
        _log(KSR.err, f"REFER {plan.call_id}/{plan.refer_id} refused 503 (Redis: {exc})")
        return _send(
            transfer.Reply(
                503, "Service Unavailable", "transfer state store unreachable", k.retry_after_s
            )
        )

    def _follow(self, call_id: str, refer_id: str, nosub: bool) -> None:
        """Arm the REFER's reply and failure routes and mark its dialog for BYEs."""
        KSR.pv.sets("$avp(rf_cid)", call_id)
        KSR.pv.sets("$avp(rf_id)", refer_id)
        KSR.pv.sets("$avp(rf_nosub)", "1" if nosub else "0")
        self._mark_dialog(call_id, _get("$ft") or "", refer_id)
        self.order.refer_relayed(call_id, refer_id, _get("$ft") or "")
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)

    def _spool(self, op: str, **entry) -> bool:
        try:
            self.journal.append(op, **entry)
            return True
        except OSError as exc:
            _log(KSR.crit, f"journal {self.journal.dir} unwritable ({exc}): {op} {entry!r:.200}")
            return False

    def _mark_dialog(self, call_id: str, from_tag: str, refer_id: str,
                     anchored_dialog: bool = False) -> None:
        """Remember on this node that the dialog carries a transfer, so BYEs are cheap to
        recognise (shared memory, no Redis for calls without transfers); "|a" marks a
        dialog referee NOTIFYs in itself (anchored, accepted here)."""
        value = f"{from_tag}|{refer_id}" + ("|a" if anchored_dialog else "")
        try:
            KSR.htable.sht_sets(HTABLE, call_id, value)
        except Exception as exc:  # noqa: BLE001 - htable not loaded: BYEs go unrecorded
            _log(KSR.warn, f"htable '{HTABLE}' unusable, BYEs will not be recorded: {exc}")

    # -- replies ---------------------------------------------------------------------------
    def on_reply(self, code: int) -> int:
        self._restore_reply_cseq()
        method = _get("$rm")
        if _get("$avp(rf_dlg)") == "1" and method == "INVITE":
            self._record_response(code)
        if method == "NOTIFY":
            if 200 <= code < 300:
                self._notify_delivered(code)
            return CONTINUE  # a failure is seen by the failure route
        call_id = _get("$avp(rf_cid)")
        if not call_id or code < 200:
            return CONTINUE
        refer_id = _get("$avp(rf_id)")
        if method == "REFER":
            self.order.refer_answered(call_id, refer_id or "")
            event = transfer.refer_response_event(
                code, _get("$avp(rf_nosub)") == "1", _get("$hdr(Refer-Sub)")
            )
            if event is Event.REFER_ACCEPTED and self.later.add(
                    call_id, {"k": "accept", "r": refer_id or "", "c": code}):
                # Relayed at once; recorded with the first NOTIFY the transferor accepts
                # (a Redis trip here would let that NOTIFY overtake this 2xx).
                return CONTINUE
        elif method == "INVITE":
            event = transfer.invite_response_event(code)
        else:
            return CONTINUE
        if event is None:
            return CONTINUE
        self._apply(call_id, refer_id, event, {f"{method.lower()}_reply": str(code)}, str(code))
        return CONTINUE

    def _record_response(self, code: int) -> None:
        """A response to an indexed initial INVITE (or, in the failure route, its final
        failure: the message there is the request, which carries no callee tag)."""
        to_tag = _get("$tt") or ""
        event = response_event(code, to_tag)
        if event is None:
            return
        self._record(event, callee_tag=to_tag)

    def _record(self, event: DialogEvent, callee_tag: str | None = None) -> None:
        """Apply one event of the current message's dialog to the index; never blocks the
        call: a Redis failure is logged and the message goes on."""
        call_id = _get("$ci") or ""
        try:
            caller = callee = None
            if event not in (DialogEvent.BYE, DialogEvent.REFRESH):
                caller = transfer.parse_name_addr(_get("$hdr(From)") or "", "From").uri.aor
                callee = transfer.parse_name_addr(_get("$hdr(To)") or "", "To").uri.aor
            self.dialogs.record(
                event, call_id, _get("$ft") or "", time.time(), callee_tag=callee_tag,
                caller=caller, callee=callee, node=f"{_get('$Ri') or ''}:{_get('$Rp') or ''}",
                source=_source() if event is not DialogEvent.FAILED else "",
            )
        except transfer.SipParseError as exc:
            _log(KSR.notice, f"dialog {call_id} {event} not indexed: {exc}")
        except RedisError as exc:
            _log(KSR.warn, f"dialog {call_id} {event} not indexed (Redis: {exc})")

    def _apply(self, call_id, refer_id, event: Event, fields=None, detail="", deadline=None,
               seq: int | None = None, at: float | None = None):
        now = time.time() if at is None else at
        try:
            res = self.store.apply(
                call_id, refer_id, event, now, fields=fields, deadline=deadline, detail=detail,
                seq=seq,
            )
        except RedisError as exc:
            spooled = self._spool(
                "apply", call_id=call_id, refer_id=refer_id, event=str(event), now=now,
                fields=fields, deadline=deadline, detail=detail, seq=seq,
            )
            _log(KSR.err, f"{event} for {call_id}/{refer_id} {'spooled' if spooled else 'LOST'}"
                          f" (Redis: {exc})")
            return None
        if res.outcome in ("illegal", "ambiguous", "unknown"):
            _log(KSR.notice, f"{event} for {call_id}/{refer_id}: {res.outcome} in state {res.old}")
        elif res.final:
            _log(KSR.info, f"transfer {call_id}/{res.refer_id} {res.new}")
        return res

    # -- NOTIFY ----------------------------------------------------------------------------
    def on_notify(self) -> int:
        """A refer NOTIFY: read (400/415 for what cannot be used), its event recorded,
        noted on its transaction so the transferor's answer is recorded too, and relayed
        in its turn (kemi.order) -- never before the REFER's 2xx or an earlier NOTIFY."""
        event_hdr = _get("$hdr(Event)")
        ctype = _get("$hdr(Content-Type)")
        if not transfer.is_refer_notify(event_hdr, ctype):
            return CONTINUE
        if KSR.tm.t_check_trans() == 0:
            # A retransmission: tm has re-sent the last answer (none while it is held).
            # Handled before anything else: it must neither be recorded again nor queued.
            return HANDLED
        bad = transfer.bad_call_id(_get("$ci") or "")
        if bad is not None:
            _log(KSR.notice, f"NOTIFY answered {bad.code}: {bad.warning}")
            return _send(bad)
        sub_state = _get("$hdr(Subscription-State)")
        facts = transfer.read_notify(
            transfer.NotifyMessage(
                event=event_hdr,
                subscription_state=sub_state,
                content_type=ctype,
                body=_get("$rb") or "",
            )
        )
        call_id = _get("$ci") or ""
        if isinstance(facts, transfer.Reply):
            _log(KSR.notice, f"NOTIFY {call_id} answered {facts.code}: {facts.warning}")
            return _send(facts)
        repaired = transfer.repaired_subscription_state(sub_state)
        if repaired is not None:
            # Read tolerantly, write strictly: a strict transferor drops the malformed one.
            KSR.hdr.remove("Subscription-State")
            KSR.hdr.append(f"Subscription-State: {repaired}\r\n")
            _log(KSR.notice, f"NOTIFY {call_id}: Subscription-State {sub_state!r} "
                             f"relayed as {repaired!r}")
        ruri = self._notify_target(call_id, facts.refer_id)
        status = facts.status
        fields = {"last_notify": str(status.code) if status else "none"}
        if facts.terminated and status is not None:
            fields["final_sipfrag"] = f"{status.code} {status.reason}"
        deadline = None
        if facts.expires and not facts.terminated:
            deadline = time.time() + min(facts.expires, self.settings.transfer.max_open_s)
        try:
            cseq: int | None = parse_cseq_number(_get("$cs"))
        except CSeqError:
            cseq = None  # sanity_check lets few through; relayed unordered, recorded
        note = {
            "e": str(facts.event), "r": facts.refer_id, "f": fields, "dl": deadline,
            "d": f"{status.code} {status.reason}" if status else "no body",
            "c": cseq, "t": _get("$ft") or "", "x": facts.terminated, "a": False,
        }
        if ruri is not None:
            note["u"] = ruri  # a held one is resumed without it: set again then
        first = status is not None and status.code == 100
        verdict = None if cseq is None else self.order.verdict(call_id, note["t"], cseq, first)
        if verdict != "hold":
            # It may leave now: recorded first, then committed and relayed at once (a
            # Redis trip between the commit and the send could let a later one overtake).
            self._record_notify(call_id, note)
        self._arm_notify_routes()
        if verdict is None or cseq is None:
            KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
            return CONTINUE  # not a dialog referee orders: the cfg relays it
        if self.order.admit(call_id, note["t"], cseq, first,
                            hold=verdict == "hold") == "hold":
            KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
            if self.order.suspend(call_id, note["t"], cseq):
                _log(KSR.info, f"NOTIFY {call_id} CSeq {cseq} held: an earlier message "
                               "of its transfer is still on its way")
                return HANDLED
            if not note["a"]:
                self._record_notify(call_id, note)
        KSR.pv.sets("$avp(rf_nfy)", json.dumps(note, separators=(",", ":")))
        # Relayed here rather than by the cfg, so that the next NOTIFY may follow as soon
        # as t_relay has returned (sent) instead of waiting order_grace_ms.
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()
        self.order.mark_sent(call_id, note["t"], cseq)
        return HANDLED

    def _notify_target(self, call_id: str, refer_id: str | None) -> str | None:
        """A NOTIFY whose Request-URI is this proxy itself -- an Asterisk with pjsip's
        rewrite_contact = yes sends the subscription's NOTIFYs to the address the
        transferor's messages came from -- goes to the transferor's Contact from its
        REFER instead of looping back here (answered 404 while the record said
        success).  Returns the Request-URI set, or None."""
        if not _get("$tt") or not KSR.is_myself_ruri():
            return None
        try:
            contact = self.store.transferor_contact(call_id, refer_id)
        except RedisError as exc:
            _log(KSR.err, f"NOTIFY {call_id} to this proxy itself: no transferor "
                          f"Contact (Redis: {exc})")
            return None
        if contact is None:
            _log(KSR.notice, f"NOTIFY {call_id} to this proxy itself ({_get('$ru')}): "
                             "no transfer with the transferor's Contact")
            return None
        _log(KSR.info, f"NOTIFY {call_id} to this proxy itself ({_get('$ru')}): sent to "
                       f"the transferor's Contact {contact}")
        KSR.pv.sets("$ru", contact)
        # rr took the Request-URI for a strict router's and set the destination to this
        # proxy: the Contact is where it goes.
        KSR.pv.unset("$du")
        return contact

    def _take_accepts(self, call_id: str) -> None:
        """2xx answers to REFERs of this dialog not yet recorded (kemi.sequencer.Deferred):
        recorded before the event that follows them."""
        for entry in self.later.take_accepts(call_id):
            self._store_later(call_id, entry)

    def _store_later(self, call_id: str, e: dict) -> None:
        """Make a store call a reply route left for later (kemi.sequencer.Deferred)."""
        at = e.get("t") or time.time()
        if e["k"] == "accept":
            self._apply(call_id, e["r"], Event.REFER_ACCEPTED, {"refer_reply": str(e["c"])},
                        str(e["c"]), at=at)
        elif e["k"] == "apply":
            self._apply(call_id, e.get("r"), Event(e["e"]), e.get("f"), e.get("d", ""), at=at)
        elif e["k"] == "note":
            try:
                self.store.annotate(call_id, e.get("r"), at, e.get("f") or {}, e.get("d", ""))
            except RedisError as exc:
                spooled = self._spool("annotate", call_id=call_id, refer_id=e.get("r"),
                                      now=at, fields=e.get("f") or {}, detail=e.get("d", ""))
                _log(KSR.err, f"note for {call_id} {'spooled' if spooled else 'LOST'} "
                              f"(Redis: {exc})")

    def _record_notify(self, call_id: str, note: dict) -> None:
        """A NOTIFY's event into the record, after any 2xx to a REFER of the dialog that
        waited for it; `note` learns which transfer."""
        self._take_accepts(call_id)
        res = self._apply(call_id, note["r"], Event(note["e"]), note["f"], note["d"],
                          note["dl"], seq=note["c"])
        if res is not None and res.refer_id:
            note["r"] = res.refer_id
        note["a"] = True

    def referee_resumed(self, msg, *_args) -> int:
        """A held NOTIFY has been relayed (after route[REFEREE_RESUME]'s t_relay, or the
        proxy's).  Its event is recorded by the timer once t_continue has returned: tm
        holds the transaction's reply lock for the whole resumed route, and a Redis trip
        there would hold the transferor's answer while the next message overtakes it."""
        note = self._notify_note()
        if note is not None and not note.get("a"):
            self._resumed.append((_get("$ci") or "", note))
        return CONTINUE

    def _record_resumed(self) -> None:
        done, self._resumed = self._resumed, []
        for call_id, note in done:
            try:
                self._record_notify(call_id, note)
            except Exception as exc:  # noqa: BLE001 - one bad note must not stop the rest
                _log(KSR.err, f"NOTIFY {call_id} not recorded: {exc!r}\n"
                              f"{traceback.format_exc()}")

    @staticmethod
    def _arm_notify_routes() -> None:
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)

    @staticmethod
    def _notify_note() -> dict | None:
        """What on_notify noted on the NOTIFY's transaction."""
        try:
            note = json.loads(_get("$avp(rf_nfy)") or "")
        except ValueError:
            return None
        return note if isinstance(note, dict) else None

    def _note_delivery(self, note: dict, code: int, extra: dict | None = None) -> None:
        """What the transferor answered to a NOTIFY, beside the transfer's state (stored
        by the sweep: kemi.sequencer.Deferred)."""
        fields = {"notify_reply": str(code), **(extra or {})}
        if note.get("x"):
            fields["final_notify_reply"] = str(code)
        self._defer(_get("$ci") or "", {
            "k": "note", "r": note.get("r"), "f": fields,
            "d": f"NOTIFY CSeq {note.get('c')} ({note.get('d', '')}) answered {code} by the "
                 "transferor"})

    def _defer(self, call_id: str, entry: dict) -> None:
        """A store call made by the sweep, never in this reply route; made now if the cfg
        lacks the table."""
        if not self.later.add(call_id, entry):
            self._store_later(call_id, {**entry, "t": time.time()})

    def _notify_delivered(self, code: int) -> None:
        """The transferor accepted a NOTIFY: for the final one, the record says so."""
        note = self._notify_note()
        if note is not None and note.get("x"):
            self._note_delivery(note, code)

    def on_notify_failure(self, code: int) -> int:
        """The transferor refused a NOTIFY (or never answered: 408).  491 -- linphone,
        while a transaction of its own is open -- is retried; a progress NOTIFY still
        refused is answered 200 to the transferee by referee, so its subscription, and its
        final NOTIFY, go on.  What the transferor answered is recorded; a 481 ends the
        subscription (RFC 6665)."""
        note = self._notify_note()
        if note is None:
            return CONTINUE
        call_id = _get("$ci") or ""
        k = self.settings.kamailio
        tries = int(_get("$avp(rf_491)") or 0)
        final = bool(note.get("x"))
        if code == 491 and tries < k.notify_491_retries and note.get("c") is not None:
            KSR.pv.sets("$avp(rf_491)", str(tries + 1))
            if self.order.requeue(call_id, note.get("t", ""), int(note["c"]),
                                  k.notify_491_retry_ms / 1000.0):
                _log(KSR.notice, f"NOTIFY {call_id} CSeq {note['c']} refused 491 by the "
                                 f"transferor: sent again in {k.notify_491_retry_ms} ms")
                return HANDLED
        if code == 491 and not final:
            KSR.tm.t_reply(200, "OK")
            _log(KSR.notice, f"NOTIFY {call_id} CSeq {note.get('c')} refused 491 "
                             f"{tries + 1} times: the transferee is told 200 so that its "
                             "final NOTIFY still comes")
            self._note_delivery(note, code, {"notify_491": "answered 200 by referee"})
            return HANDLED
        if final:
            _log(KSR.warn, f"final NOTIFY {call_id} ({note.get('d', '')}) refused {code} "
                           "by the transferor: it has not learnt the outcome")
        self._note_delivery(note, code)
        if code == 481:
            self._defer(call_id, {"k": "apply", "r": note.get("r"),
                                  "e": str(Event.NOTIFY_481), "f": {"notify_reply": "481"},
                                  "d": "481"})
        return CONTINUE

    # -- the transferee's INVITE --------------------------------------------------------------
    def on_invite(self) -> int:
        if _get("$tt"):
            return CONTINUE  # re-INVITE: not a triggered request
        bad = transfer.bad_call_id(_get("$ci") or "")
        if bad is not None:
            if _headers("Replaces") or KSR.hdr.is_present("Referred-By") > 0 \
                    or KSR.hdr.is_present(transfer.TIE_HEADER) > 0:
                _log(KSR.notice, f"INVITE answered {bad.code}: {bad.warning}")
                return _send(bad)
            _log(KSR.notice, f"INVITE not indexed: {bad.warning}")
            return CONTINUE  # an ordinary call referee has nothing to say about
        pasted = self._repair_request_uri()
        if isinstance(pasted, int):
            return pasted
        if self.dialog_index:
            rc = self._check_invite_replaces(pasted)
            if rc is not None:
                return rc
            self._record(DialogEvent.INVITE)
            KSR.pv.sets("$avp(rf_dlg)", "1")
            KSR.tm.t_on_reply(REPLY_ROUTE)
            KSR.tm.t_on_failure(FAILURE_ROUTE)
        if not (KSR.hdr.is_present("Referred-By") > 0
                or KSR.hdr.is_present(transfer.TIE_HEADER) > 0):
            return CONTINUE  # an ordinary call pays nothing
        return self._tie_referred_invite()

    def _repair_request_uri(self) -> int | list[str] | None:
        """ua-quirks: header fields pasted into an initial INVITE's Request-URI (kemi.ruri):
        the Request-URI loses them, a pasted Replaces becomes the header it meant (then
        checked like any other); the Replaces values to judge, or the reply sent."""
        ruri_text = _get("$ru") or ""
        if "?" not in ruri_text:
            return None
        call_id = _get("$ci") or ""
        fix = ruri.repair_request_uri(ruri_text, _headers("Replaces"))
        if fix is None:
            return None
        if isinstance(fix, transfer.Reply):
            _log(KSR.notice, f"INVITE {call_id} with headers in its Request-URI answered "
                             f"{fix.code}: {fix.warning}")
            return _send(fix)
        KSR.pv.sets("$ru", fix.request_uri)
        added: list[str] = []
        if fix.replaces is not None:
            KSR.hdr.append(f"Replaces: {fix.replaces}\r\n")
            require = ",".join(_headers("Require")).lower()
            if "replaces" not in require:
                KSR.hdr.append("Require: replaces\r\n")
            added = [fix.replaces]
        _log(KSR.notice, f"INVITE {call_id}: Request-URI repaired to {fix.request_uri} "
                         f"({fix.describe()})")
        return added or None

    def _check_invite_replaces(self, repaired: list[str] | None = None) -> int | None:
        """RFC 3891 for an INVITE carrying Replaces, answered here before the target sees
        it; None: no Replaces, or a Replaces to relay (tied to its transfer if any).
        `repaired`: the Replaces referee itself just added (not yet readable as a header)."""
        values = repaired or _headers("Replaces")
        if not values:
            return None
        call_id = _get("$ci") or ""
        rp = replaces.read_invite_replaces(values, "INVITE")
        if isinstance(rp, transfer.Reply):
            _log(KSR.notice, f"INVITE {call_id} with Replaces answered {rp.code}: {rp.warning}")
            return _send(rp)
        try:
            sender = transfer.parse_name_addr(_get("$hdr(From)") or "", "From").uri.aor
        except transfer.SipParseError as exc:
            return _send(transfer.Reply(400, "Bad Request", str(exc)))
        try:
            found = self.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
            approved = []
            for xcid, rid, _target in self.store.find_for_invite(sender):
                record = self.store.get(xcid, rid) or {}
                if record.get("replaces"):
                    approved.append(replaces.ApprovedRefer(
                        sender, record["replaces"], xcid, rid,
                        record.get("transferee_src", "")))
        except RedisError as exc:
            k = self.settings.kamailio
            if k.redis_fail_mode == "open":
                _log(KSR.err, f"INVITE {call_id} with Replaces relayed unchecked (Redis: {exc})")
                return None
            _log(KSR.err, f"INVITE {call_id} with Replaces refused 503 (Redis: {exc})")
            return _send(transfer.Reply(
                503, "Service Unavailable", "dialog index unreachable", k.retry_after_s
            ))
        try:
            policy = self.policy.current()
        except PolicyUnavailable:
            policy = None  # none loaded yet: judged on the dialog alone
        ok = replaces.check_invite_replaces(values, "INVITE", found, sender, approved,
                                            policy=policy, source_ip=_get("$si") or "",
                                            auth_user=_get("$au"), source=_source(),
                                            host_only=self.host_only)
        if isinstance(ok, transfer.Reply):
            _log(KSR.notice, f"INVITE {call_id} with Replaces from {sender} answered "
                             f"{ok.code}: {ok.warning}")
            return _send(ok)
        if ok is None or ok.transfer is None:
            return None
        # Tied to the attended transfer that named the dialog: its final NOTIFY closes it.
        t = ok.transfer
        self._record(DialogEvent.INVITE)
        self._take_accepts(t.call_id)
        self._apply(t.call_id, t.refer_id, Event.INVITE, {"invite_call_id": call_id})
        KSR.pv.sets("$avp(rf_cid)", t.call_id)
        KSR.pv.sets("$avp(rf_id)", t.refer_id)
        KSR.pv.sets("$avp(rf_dlg)", "1")
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        _log(KSR.info, f"INVITE {call_id} with Replaces from {sender} tied to transfer "
                       f"{t.call_id}/{t.refer_id}")
        return CONTINUE

    def _tie_referred_invite(self) -> int:
        """The transferee's INVITE: only to an approved target, and tied to its own
        transfer (transfer.tie_invite) or, when nothing names one transfer, to none."""
        call_id = _get("$ci") or ""
        token = (_get(f"$hdr({transfer.TIE_HEADER})") or "").strip()
        if token:
            KSR.hdr.remove(transfer.TIE_HEADER)  # referee's own: the target never sees it
        try:
            caller = transfer.parse_name_addr(_get("$hdr(From)") or "", "From").uri
            target = transfer.parse_uri_lenient(_get("$ru") or "")
        except transfer.SipParseError as exc:
            return _send(transfer.Reply(400, "Bad Request", str(exc)))
        try:
            open_transfers = self.store.open_for_invite(caller.aor)
        except RedisError as exc:
            _log(KSR.err, f"referred INVITE from {caller.aor} not tied (Redis: {exc})")
            return CONTINUE
        tie = transfer.tie_invite(open_transfers, target, invite_call_id=call_id,
                                  referred_by=_get("$hdr(Referred-By)") or "", token=token)
        if isinstance(tie, transfer.Reply):
            _log(KSR.notice,
                 f"referred INVITE from {caller.aor} answered {tie.code}: {tie.warning}")
            return _send(tie)
        if tie is None:
            _log(KSR.info, f"referred INVITE from {caller.aor} matches no open transfer")
            return CONTINUE
        if isinstance(tie, transfer.NoTie):
            _log(KSR.notice, f"referred INVITE {call_id} from {caller.aor} tied to no "
                             f"transfer: {tie.reason}")
            for xcid, rid in tie.candidates:
                try:
                    self.store.annotate(xcid, rid, time.time(),
                                        {"invite_ambiguous": call_id},
                                        f"INVITE {call_id} not tied: {tie.reason}")
                except RedisError as exc:
                    _log(KSR.warn, f"ambiguous INVITE not noted on {xcid}/{rid} ({exc})")
            return CONTINUE
        self._take_accepts(tie.call_id)
        self._apply(tie.call_id, tie.refer_id, Event.INVITE,
                    {"invite_call_id": call_id, "invite_tie": tie.how})
        _log(KSR.info, f"referred INVITE {call_id} tied to transfer "
                       f"{tie.call_id}/{tie.refer_id} ({tie.how})")
        KSR.pv.sets("$avp(rf_cid)", tie.call_id)
        KSR.pv.sets("$avp(rf_id)", tie.refer_id)
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        return CONTINUE

    # -- BYE ---------------------------------------------------------------------------------
    def on_bye(self) -> int:
        call_id = _get("$ci") or ""
        if text_fault(call_id) is not None:
            return CONTINUE  # no dialog referee follows has such a Call-ID
        if self.dialog_index:
            self._record(DialogEvent.BYE, callee_tag=_get("$tt") or "")
        try:
            mark = KSR.htable.sht_get(HTABLE, call_id)
        except Exception:  # noqa: BLE001 - htable not loaded
            return CONTINUE
        if not mark:
            return CONTINUE
        transferor_tag, refer_id, *flags = str(mark).split("|") + [""]
        by_transferor = (_get("$ft") or "") == transferor_tag
        event = Event.BYE_TRANSFEROR if by_transferor else Event.BYE_TRANSFEREE
        ended_by = "transferor" if by_transferor else "transferee"
        if not by_transferor and "a" in flags and _source() in self.asterisk_sources:
            # Asterisk's BYE to A carries P's identity in its From, yet P may well be
            # talking on: Asterisk released A's leg (the controller's ami_result says why).
            ended_by = "asterisk"
        self._take_accepts(call_id)
        self._apply(call_id, refer_id or None, event, {"ended_by": ended_by},
                    f"BYE from the {ended_by}" + (" (A's leg released by Asterisk)"
                                                  if ended_by == "asterisk" else ""))
        if "a" in flags:
            # The anchored dialog ends: nothing of it stays in shared memory for long.
            # The CSeq state stays SHIFT_KEEP_S: a final NOTIFY still on its way (the
            # progress timer's) is numbered right after the BYE, not REBUILD_MARGIN
            # ahead as after a restart.  (A BYE the peer refuses would leave the dialog
            # up without translation; rare enough.)
            for table in (HTABLE, CSEQ_TABLE):
                try:
                    KSR.htable.sht_rm(table, call_id)
                except Exception:  # noqa: BLE001
                    pass
            try:
                KSR.htable.sht_setex(SHIFT_TABLE, call_id, SHIFT_KEEP_S)
            except Exception:  # noqa: BLE001 - htable missing: nothing to keep either
                pass
            self._forget_dialog(call_id)
        return CONTINUE


def _text(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _pairs(flat) -> dict[str, str]:
    if isinstance(flat, dict):
        return {_text(k): _text(v) for k, v in flat.items()}
    it = iter(flat)
    return {_text(k): _text(v) for k, v in zip(it, it, strict=False)}


def _source_key(addr: str) -> str:
    """'host:port' as the cfg's $si:$sp reads it (IPv6 without brackets)."""
    host, _, port = addr.rpartition(":")
    return f"{host.strip('[]').lower()}:{int(port)}"


def mod_init() -> Referee:
    """app_python3 calls this in the main process, before forking the workers."""
    from kemi.proxy import Proxy  # the cfgengine-python routing, which wraps Referee

    return Proxy()
