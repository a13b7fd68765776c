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
"""

from __future__ import annotations

import functools
import time
import traceback

import KSR  # provided by app_python3

from kemi import config, replaces, transfer
from kemi.dialogs import DialogEvent, DialogStore, response_event
from kemi.journal import Journal
from kemi.policy.cache import PolicyCache, PolicyUnavailable
from kemi.resp import CircuitBreaker, RedisError, RespClient
from kemi.state import Event
from kemi.store import TransferStore

CONTINUE = 1  # let the caller (cfg or proxy) go on routing
HANDLED = 0  # referee answered; the cfg route must end here

HTABLE = "referee"  # dialogs with a transfer on this node: Call-ID -> "from-tag|refer-id"
REPLY_ROUTE = "referee_reply"
FAILURE_ROUTE = "referee_failure"


def _log(level, text: str) -> None:
    level(f"referee: {text}\n")


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
    value = KSR.pv.get(spec)
    return None if value is None else str(value)


def _headers(name: str) -> list[str]:
    """Every instance of a header (compact forms and any case match, as Kamailio parses)."""
    out = []
    i = 0
    while True:
        value = KSR.hdr.get_idx(name, i)
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
        self.journal = Journal(self.settings.kamailio.journal_dir)

    # -- process lifecycle -------------------------------------------------------------
    def child_init(self, rank: int) -> int:
        # Sockets are opened lazily in each process (never before the fork).
        self._store = None
        self._dialogs = None
        self._client = None
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

    @route("reply")
    def referee_reply(self, msg) -> int:
        return self.on_reply(int(KSR.pv.get("$rs") or 0))

    @route("failure")
    def referee_failure(self, msg) -> int:
        # Local timeouts (408) never pass a reply route: they are seen only here.
        return self.on_reply(int(KSR.pv.get("$T_reply_code") or 0))

    @route("timer")
    def referee_sweep(self, msg) -> int:
        """rtimer: replay spooled events, then close transfers whose final NOTIFY never came."""
        now = time.time()
        if self.journal.pending():
            report = self.journal.replay(self.store, lambda text: _log(KSR.err, text))
            if report.applied or report.kept:
                _log(KSR.notice, f"journal replay: {report.applied} events stored, "
                                 f"{report.kept} still waiting for Redis")
            if report.kept:
                return CONTINUE  # Redis still away: expiring now would race the replay
        try:
            due = self.store.due(now, limit=200)
        except RedisError as exc:
            _log(KSR.warn, f"expiry sweep skipped: {exc}")
            return CONTINUE
        for call_id, refer_id in due:
            res = self._apply(call_id, refer_id, Event.EXPIRY, detail="sweep")
            if res is not None and res.final:
                _log(KSR.notice, f"transfer {call_id}/{refer_id} expired without a final NOTIFY")
        return CONTINUE

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
        if self.dialog_index and verdict.replaces is not None:
            judged = self._check_refer_replaces(verdict)
            if judged is not None:
                return judged
        return self._track_refer(verdict)

    def _check_refer_replaces(self, plan: transfer.ReferPlan) -> int | None:
        """The dialog an attended transfer names, judged against the index: an int when
        the REFER was answered (or Redis is away), None to go on and record it."""
        rp = plan.replaces
        try:
            found = self.dialogs.find(rp.call_id, rp.to_tag, rp.from_tag)
        except RedisError as exc:
            return self._redis_down_refer(plan, exc)
        ok = replaces.check_refer_replaces(rp, found, plan.transferor,
                                           self.policy.current(), plan.decision.tenant)
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
            )
        except RedisError as exc:
            return self._redis_down_refer(plan, exc)
        if not res.created and res.reason != "duplicate":
            reply = transfer.limit_reply(res.reason, d)
            _log(KSR.notice, f"REFER {plan.call_id}/{plan.refer_id} answered 403: {reply.warning}")
            return _send(reply)
        self._follow(plan.call_id, plan.refer_id, plan.nosub_requested)
        _log(
            KSR.info,
            f"REFER {plan.call_id}/{plan.refer_id} {plan.transferor} -> {plan.target_uri} "
            f"allowed ({d.rule})",
        )
        return CONTINUE

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
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)

    def _spool(self, op: str, **entry) -> bool:
        try:
            self.journal.append(op, **entry)
            return True
        except OSError as exc:
            _log(KSR.crit, f"journal {self.journal.dir} unwritable ({exc}): {op} {entry!r:.200}")
            return False

    def _mark_dialog(self, call_id: str, from_tag: str, refer_id: str) -> None:
        """Remember on this node that the dialog carries a transfer, so BYEs are cheap to
        recognise (shared memory, no Redis for calls without transfers)."""
        try:
            KSR.htable.sht_sets(HTABLE, call_id, f"{from_tag}|{refer_id}")
        except Exception as exc:  # noqa: BLE001 - htable not loaded: BYEs go unrecorded
            _log(KSR.warn, f"htable '{HTABLE}' unusable, BYEs will not be recorded: {exc}")

    # -- replies ---------------------------------------------------------------------------
    def on_reply(self, code: int) -> int:
        if _get("$avp(rf_dlg)") == "1" and _get("$rm") == "INVITE":
            self._record_response(code)
        call_id = _get("$avp(rf_cid)")
        if not call_id or code < 200:
            return CONTINUE
        refer_id = _get("$avp(rf_id)")
        method = _get("$rm")
        if method == "REFER":
            event = transfer.refer_response_event(
                code, _get("$avp(rf_nosub)") == "1", _get("$hdr(Refer-Sub)")
            )
        elif method == "NOTIFY":
            if code != 481:
                return CONTINUE
            event = Event.NOTIFY_481
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
            )
        except transfer.SipParseError as exc:
            _log(KSR.notice, f"dialog {call_id} {event} not indexed: {exc}")
        except RedisError as exc:
            _log(KSR.warn, f"dialog {call_id} {event} not indexed (Redis: {exc})")

    def _apply(self, call_id, refer_id, event: Event, fields=None, detail="", deadline=None):
        now = time.time()
        try:
            res = self.store.apply(
                call_id, refer_id, event, now, fields=fields, deadline=deadline, detail=detail
            )
        except RedisError as exc:
            spooled = self._spool(
                "apply", call_id=call_id, refer_id=refer_id, event=str(event), now=now,
                fields=fields, deadline=deadline, detail=detail,
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
        event_hdr = _get("$hdr(Event)")
        ctype = _get("$hdr(Content-Type)")
        if not transfer.is_refer_notify(event_hdr, ctype):
            return CONTINUE
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
        status = facts.status
        fields = {"last_notify": str(status.code) if status else "none"}
        if facts.terminated and status is not None:
            fields["final_sipfrag"] = f"{status.code} {status.reason}"
        deadline = None
        if facts.expires and not facts.terminated:
            deadline = time.time() + min(facts.expires, self.settings.transfer.max_open_s)
        detail = f"{status.code} {status.reason}" if status else "no body"
        res = self._apply(call_id, facts.refer_id, facts.event, fields, detail, deadline)
        if res is not None and res.refer_id:
            KSR.pv.sets("$avp(rf_cid)", call_id)
            KSR.pv.sets("$avp(rf_id)", res.refer_id)
            KSR.tm.t_on_reply(REPLY_ROUTE)
        return CONTINUE

    # -- the transferee's INVITE --------------------------------------------------------------
    def on_invite(self) -> int:
        if _get("$tt"):
            return CONTINUE  # re-INVITE: not a triggered request
        if self.dialog_index:
            rc = self._check_invite_replaces()
            if rc is not None:
                return rc
            self._record(DialogEvent.INVITE)
            KSR.pv.sets("$avp(rf_dlg)", "1")
            KSR.tm.t_on_reply(REPLY_ROUTE)
            KSR.tm.t_on_failure(FAILURE_ROUTE)
        if not KSR.hdr.is_present("Referred-By") > 0:
            return CONTINUE  # an ordinary call pays nothing
        return self._tie_referred_invite()

    def _check_invite_replaces(self) -> int | None:
        """RFC 3891 for an INVITE carrying Replaces, answered here before the target sees
        it; None: no Replaces, or a Replaces to relay (tied to its transfer if any)."""
        values = _headers("Replaces")
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
                    approved.append(replaces.ApprovedRefer(sender, record["replaces"], xcid, rid))
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
                                            auth_user=_get("$au"))
        if isinstance(ok, transfer.Reply):
            _log(KSR.notice, f"INVITE {call_id} with Replaces from {sender} answered "
                             f"{ok.code}: {ok.warning}")
            return _send(ok)
        if ok is None or ok.transfer is None:
            return None
        # Tied to the attended transfer that named the dialog: its final NOTIFY closes it.
        t = ok.transfer
        self._record(DialogEvent.INVITE)
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
        try:
            caller = transfer.parse_name_addr(_get("$hdr(From)") or "", "From").uri
            target = transfer.parse_uri_lenient(_get("$ru") or "")
        except transfer.SipParseError as exc:
            return _send(transfer.Reply(400, "Bad Request", str(exc)))
        try:
            open_transfers = self.store.find_for_invite(caller.aor)
        except RedisError as exc:
            _log(KSR.err, f"referred INVITE from {caller.aor} not tied (Redis: {exc})")
            return CONTINUE
        tie = transfer.tie_invite(open_transfers, target)
        if isinstance(tie, transfer.Reply):
            _log(KSR.notice,
                 f"referred INVITE from {caller.aor} answered {tie.code}: {tie.warning}")
            return _send(tie)
        if tie is None:
            _log(KSR.info, f"referred INVITE from {caller.aor} matches no open transfer")
            return CONTINUE
        call_id, refer_id = tie
        self._apply(call_id, refer_id, Event.INVITE, {"invite_call_id": _get("$ci") or ""})
        KSR.pv.sets("$avp(rf_cid)", call_id)
        KSR.pv.sets("$avp(rf_id)", refer_id)
        KSR.tm.t_on_reply(REPLY_ROUTE)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        return CONTINUE

    # -- BYE ---------------------------------------------------------------------------------
    def on_bye(self) -> int:
        call_id = _get("$ci") or ""
        if self.dialog_index:
            self._record(DialogEvent.BYE, callee_tag=_get("$tt") or "")
        try:
            mark = KSR.htable.sht_get(HTABLE, call_id)
        except Exception:  # noqa: BLE001 - htable not loaded
            return CONTINUE
        if not mark:
            return CONTINUE
        transferor_tag, _, refer_id = str(mark).partition("|")
        by_transferor = (_get("$ft") or "") == transferor_tag
        event = Event.BYE_TRANSFEROR if by_transferor else Event.BYE_TRANSFEREE
        self._apply(call_id, refer_id or None, event)
        return CONTINUE


def mod_init() -> Referee:
    """app_python3 calls this in the main process, before forking the workers."""
    from kemi.proxy import Proxy  # the cfgengine-python routing, which wraps Referee

    return Proxy()
