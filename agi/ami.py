"""The AMI controller's glue: pyst2's Manager to Asterisk, Redis for jobs, progress and the
transfer record, and the sans-IO core (agi.follow) in between.

Threads, and why:
* pyst2's own two (socket reader, event dispatcher): its design.  The dispatcher only
  puts each event on our queue.
* the job reader: XREADGROUP ... BLOCK on the jobs stream with its own RespClient (one
  socket per thread; RespClient bounds every call, so BLOCK works when its timeout is
  longer than the BLOCK — kemi.storage.resp is used rather than redis-py to keep one client with
  one failure behaviour on both sides).  It reads only while AMI is logged in, so jobs
  wait in Redis while Asterisk is away.
* the loop: the only thread that feeds the core, sends AMI actions and writes Redis, so
  the core needs no lock and actions go out one at a time (pyst2 matches responses FIFO).

pyst2 0.5.1 defects handled here (README §7, notes/asterisk-agi.md):
* `send_action(cdict={})` mutates its default dict: `AmiSession.send_action` always
  builds a fresh dict and the core chooses every ActionID;
* responses are matched FIFO, not by ActionID, and `send_action` waits forever: ours
  sends one action at a time under a lock, waits with a timeout, checks the ActionID, and
  treats a timeout or a mismatch as a broken session (reconnect; the core is told);
* `connect()` has no timeout and the reader thread only ends on EOF: ours connects with
  a timeout and shuts the socket down to stop;
* `Manager.redirect()` lacks Extra*: the dual Redirect goes through send_action;
* `Command` keeps only the last Output line: the controller uses no Command;
* a `ChanVariable` header (manager.conf channelvars) raises in pyst2's message loop
  (`dict.has_key`), after which no message is handled and nothing says so: the
  controller Pings every `ping_every_s`, and a Ping without answer is a dropped session;
* a synchronous Originate blocks the session: the recall is `Async: true`;
* a Manager object connects once (its threads are created in __init__): each session
  is a new object.

Why this file is long: it is all the controller's I/O -- AMI session, job reader, Redis
writes -- around one queue; its threads are only understood together.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asterisk.manager import (
    EOL,
    Manager,
    ManagerAuthException,
    ManagerException,
    ManagerSocketException,
)

from agi.follow import (
    Ack,
    Annotate,
    Follower,
    FollowSettings,
    Output,
    Publish,
    SendAction,
)
from kemi.config import Settings
from kemi.core.anchor import JOBS_GROUP, AnchorError, MoveJob, Progress, jobs_key
from kemi.storage import streams
from kemi.storage.resp import RedisError, RespClient
from kemi.storage.transfers import TransferStore

log = logging.getLogger("referee.ami")


class AmiTimeout(ManagerException):
    """No response in time: the FIFO pairing of responses can no longer be trusted."""


class AmiSession(Manager):
    """pyst2's Manager with a bounded connect, bounded responses and one action at a time."""

    def __init__(self, action_timeout_s: float = 5.0):
        super().__init__()
        self.action_timeout_s = action_timeout_s
        self._send_lock = threading.Lock()
        self._raw: socket.socket | None = None
        self.broken = ""  # why this session must not be used any more

    def connect(self, host: str, port: int = 5038, timeout_s: float = 5.0):  # type: ignore[override]
        """Connect and read the greeting, each bounded by timeout_s."""
        if self._connected.is_set():
            raise ManagerException("Already connected to manager")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout_s)
        except OSError as exc:
            raise ManagerSocketException(exc.errno or 0, str(exc)) from None
        raw.settimeout(None)  # pyst2's reader blocks; stop() shuts the socket down
        self._raw = raw
        self._sock = raw.makefile(mode="rwb", buffering=0)
        self._connected.set()
        self._running.set()
        self.message_thread.start()
        self.event_dispatch_thread.start()
        try:
            greeting = self._response_queue.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            raise ManagerSocketException(0, f"no AMI greeting from {host}:{port}") from None
        if not greeting:
            self.stop()
            raise ManagerSocketException(0, f"{host}:{port} closed before the greeting")
        return greeting

    def send_action(self, cdict: dict | None = None, timeout_s: float | None = None,
                    **kwargs: Any):  # type: ignore[override]
        fields = dict(cdict or {})  # never pyst2's shared default dict
        fields.update(kwargs)
        if self.broken:
            raise ManagerException(f"AMI session unusable: {self.broken}")
        if not self._connected.is_set():
            raise ManagerSocketException(0, "not connected")
        fields.setdefault("ActionID", f"referee-{os.getpid()}-{self.next_seq():08x}")
        lines = []
        for key, value in fields.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key}: {item}")
        data = (EOL.join(lines) + EOL + EOL).encode("utf-8", "ignore")
        with self._send_lock:
            self._reswaiting.insert(0, 1)  # before writing: a drop then wakes us up
            try:
                try:
                    self._sock.write(data)
                    self._sock.flush()
                except OSError as exc:
                    self.broken = f"write failed: {exc}"
                    raise ManagerSocketException(exc.errno or 0, str(exc)) from None
                try:
                    response = self._response_queue.get(
                        timeout=timeout_s or self.action_timeout_s)
                except queue.Empty:
                    self.broken = f"no response to {fields.get('Action')} in time"
                    raise AmiTimeout(self.broken) from None
            finally:
                self._reswaiting.pop(0)
        if not response:
            self.broken = "connection terminated"
            raise ManagerSocketException(0, "Connection Terminated")
        got = response.get_header("ActionID")
        if got != fields["ActionID"]:
            self.broken = f"response ActionID {got!r} for {fields['ActionID']!r}"
            raise ManagerException(f"out-of-order AMI response: {self.broken}")
        return response

    def alive(self) -> bool:
        return (not self.broken and self._connected.is_set()
                and self.message_thread.is_alive() and self.event_dispatch_thread.is_alive())

    def stop(self, logoff: bool = True) -> None:
        """Log off (bounded) and stop pyst2's threads without waiting on a hung peer."""
        if logoff and self.alive():
            try:
                self.send_action({"Action": "Logoff"}, timeout_s=1.0)
            except ManagerException:
                pass
        self._connected.clear()
        if self._raw is not None:
            try:
                self._raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._running.is_set():
            self._message_queue.put(None)
            self._event_queue.put(None)  # the dispatcher waits here if message_loop died
            self._running.clear()
        for t in (self.message_thread, self.event_dispatch_thread):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout=2)
        if self._raw is not None:
            self._raw.close()

    close = stop  # pyst2's __del__ calls close()


def follow_settings(settings: Settings) -> FollowSettings:
    a = settings.asterisk
    return FollowSettings(transfer_context=a.transfer_context, hold_context=a.hold_context,
                          hold_exten=a.hold_exten, recall_context=a.recall_context)


@dataclass
class _Job:
    job: MoveJob
    entry_id: str
    reclaimed: bool = False
    record: dict[str, str] | None = None


class AmiController:
    """Reads MoveJobs for this Asterisk, runs them on AMI, reports Progress and notes."""

    def __init__(
        self,
        settings: Settings,
        follow: FollowSettings | None = None,
        consumer: str | None = None,
        block_ms: int = 1000,
        claim_idle_s: float = 600.0,
        claim_every_s: float = 60.0,
        action_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        ping_every_s: float = 10.0,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], AmiSession] | None = None,
    ):
        self.settings = settings
        self.a = settings.asterisk
        self.prefix = settings.redis.prefix
        self.jobs_key = jobs_key(self.prefix, self.a.name)
        # Stable across restarts: a restarted controller re-reads its own pending jobs.
        self.consumer = consumer or f"{socket.gethostname()}-{self.a.name}"
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.claim_every_s = claim_every_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.ping_every_s = ping_every_s
        self._last_ping = time.monotonic()
        self.clock = clock
        self.follower = Follower(follow or follow_settings(settings))
        self._session_factory = session_factory or (lambda: AmiSession(action_timeout_s))
        self.session: AmiSession | None = None
        self._queue: queue.Queue[tuple] = queue.Queue()
        self._stop = threading.Event()
        self.ready = threading.Event()  # logged in to AMI
        self._threads: list[threading.Thread] = []
        self._redis = RespClient(settings.redis.url, timeout_s=2.0)
        self.store = TransferStore(self._redis, prefix=self.prefix,
                                   done_ttl_s=settings.transfer.done_ttl_s)
        self.logins = 0
        self.jobs_seen = 0
        self.results: collections.Counter[str] = collections.Counter()  # ami_result notes
        self._last_tick = 0.0

    # -- lifecycle

    def start(self) -> None:
        for target, name in ((self._loop, "ami-loop"), (self._read_jobs, "ami-jobs")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._queue.put(("wake",))
        for t in self._threads:
            t.join(timeout=timeout_s)
        if self.session is not None:
            self.session.stop()
            self.session = None
        self._redis.close()

    # -- AMI session

    def _login(self) -> bool:
        session = self._session_factory()
        try:
            session.connect(self.a.ami_host, self.a.ami_port, self.connect_timeout_s)
            session.register_event("*", self._on_event)
            session.login(self.a.ami_user, self.a.ami_secret)
        except ManagerAuthException as exc:
            log.error("AMI login to %s:%s as %r refused: %s", self.a.ami_host, self.a.ami_port,
                      self.a.ami_user, exc)
            session.stop(logoff=False)
            return False
        except ManagerException as exc:
            log.warning("AMI %s:%s unreachable: %s", self.a.ami_host, self.a.ami_port, exc)
            session.stop(logoff=False)
            return False
        self.session = session
        self.logins += 1
        self._last_ping = time.monotonic()
        log.info("AMI logged in to %s:%s (%s %s)", self.a.ami_host, self.a.ami_port,
                 getattr(session, "title", "?"), getattr(session, "version", "?"))
        self.ready.set()
        self._perform(self.follower.resume(self.clock()))
        return True

    def _on_event(self, event, _manager) -> None:
        """pyst2's dispatcher thread: hand the event over, nothing else."""
        self._queue.put(("event", dict(event.headers)))

    def _session_lost(self, why: str) -> None:
        log.warning("AMI session lost (%s); reconnecting", why)
        self.ready.clear()
        if self.session is not None:
            self.session.stop(logoff=False)
            self.session = None
        self._perform(self.follower.session_restarted(self.clock()))

    # -- the loop

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if self.session is None or not self.session.alive():
                try:
                    if self.session is not None:
                        self._session_lost(self.session.broken or "connection closed")
                    logged_in = self._login()
                except Exception:  # noqa: BLE001 - the loop must outlive a failed login
                    log.exception("AMI controller: login or session restart failed")
                    logged_in = False
                if not logged_in:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                backoff = 0.5
            now = self.clock()
            deadline = self.follower.next_deadline()
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - now))
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ("tick",)
            try:
                self._handle(item)
            except Exception:  # noqa: BLE001 - the controller must outlive one bad input
                log.exception("AMI controller: failed on %s", item[0])
            if time.monotonic() - self._last_ping >= self.ping_every_s:
                self._ping()

    def _ping(self) -> None:
        """Keepalive: a hung Asterisk, a half-open TCP or a dead pyst2 message loop all
        show as a Ping without answer (the session is then marked broken)."""
        self._last_ping = time.monotonic()
        session = self.session
        if session is None:
            return
        try:
            session.send_action({"Action": "Ping"}, timeout_s=min(5.0, self.ping_every_s))
        except ManagerException as exc:
            log.error("AMI keepalive Ping failed: %s", exc)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        now = self.clock()
        if kind == "event":
            self._perform(self.follower.event(item[1], now))
        elif kind == "job":
            job: _Job = item[1]
            if job.reclaimed:
                self._perform(self.follower.reclaimed(job.job, job.entry_id, now, job.record))
            else:
                self._perform(self.follower.job(job.job, job.entry_id, now))
        deadline = self.follower.next_deadline()
        now = self.clock()
        if (deadline is not None and deadline <= now) or now - self._last_tick >= 1.0:
            self._last_tick = now
            self._perform(self.follower.tick(now))

    def _perform(self, outputs: list[Output]) -> None:
        work = list(outputs)
        while work:
            out = work.pop(0)
            if isinstance(out, SendAction):
                resp = self._send(out)
                if resp is None:  # the session broke: session_restarted() decides
                    continue
                work[:0] = self.follower.response(out.action_id, resp, self.clock())
            elif isinstance(out, Publish):
                self._publish(out)
            elif isinstance(out, Annotate):
                self._annotate(out)
            elif isinstance(out, Ack):
                self._ack(out.entry_id)

    def _send(self, out: SendAction) -> dict[str, str] | None:
        """The response's headers; None when the session broke (no answer is known)."""
        session = self.session
        if session is None or not session.alive():
            log.warning("AMI %s (%s) not sent: no session", out.action, out.action_id)
            return None
        try:
            resp = session.send_action(dict(out.fields))
        except ManagerException as exc:
            log.error("AMI %s (%s) failed: %s", out.action, out.action_id, exc)
            if session.broken or not session.alive():
                return None
            return {"Response": "Error", "Message": f"AMI: {exc}"}
        headers = dict(resp.headers)
        if headers.get("Response") != "Success":
            log.warning("AMI %s %s -> %s: %s", out.action,
                        {k: v for k, v in out.fields.items() if k not in ("Action",)},
                        headers.get("Response"), headers.get("Message"))
        return headers

    # -- Redis writes (the loop thread's own RespClient)

    def _publish(self, out: Publish) -> None:
        for attempt in (1, 2):
            try:
                streams.publish_progress(self._redis, out.stream, out.progress)
                return
            except RedisError as exc:
                log.error("progress %d for %s@%s not published (try %d): %s",
                          out.progress.code, out.progress.refer_id, out.progress.call_id,
                          attempt, exc)

    def _annotate(self, out: Annotate) -> None:
        if "ami_result" in out.fields:
            self.results[out.fields["ami_result"]] += 1
        try:
            found = self.store.annotate(out.call_id, out.refer_id, self.clock(), out.fields,
                                        out.detail)
        except (RedisError, ValueError) as exc:
            log.error("record %s@%s not annotated %s: %s", out.refer_id, out.call_id,
                      out.fields, exc)
            return
        if not found:
            log.warning("no transfer %s@%s in the store; not recorded: %s", out.refer_id,
                        out.call_id, out.fields)

    def _ack(self, entry_id: str) -> None:
        try:
            streams.ack(self._redis, self.jobs_key, JOBS_GROUP, entry_id)
        except RedisError as exc:
            log.error("job %s not acked (it will be reclaimed): %s", entry_id, exc)

    # -- the job reader

    def _read_jobs(self) -> None:
        client = RespClient(self.settings.redis.url, timeout_s=self.block_ms / 1000 + 2.0)
        group_ready = False
        backlog = "0"  # first our own pending entries (a restart), then new ones
        last_claim = 0.0
        while not self._stop.is_set():
            if not self.ready.wait(timeout=0.2):
                continue
            try:
                if not group_ready:
                    streams.ensure_group(client, self.jobs_key, JOBS_GROUP)
                    group_ready = True
                if time.monotonic() - last_claim >= self.claim_every_s:
                    last_claim = time.monotonic()
                    self._claim(client)
                if backlog:
                    entries = streams.read_group(client, self.jobs_key, JOBS_GROUP,
                                                 self.consumer, backlog, 100)
                    backlog = entries[-1][0] if entries else ""
                    self._take(client, entries, reclaimed=True)
                    continue
                self._take(client, streams.read_group(
                    client, self.jobs_key, JOBS_GROUP, self.consumer, ">", 10,
                    block_ms=self.block_ms), reclaimed=False)
            except Exception as exc:  # noqa: BLE001 - the reader must outlive one failure
                if isinstance(exc, RedisError):
                    log.error("jobs stream %s: %s; retrying", self.jobs_key, exc)
                else:
                    log.exception("jobs stream %s: reading failed; retrying", self.jobs_key)
                group_ready = False
                # Entries Redis delivered before the failure (a reply lost to a timeout, a
                # batch cut short) are pending for us: read them again, never wait for the
                # idle reclaim.  Ones still being followed are ignored by the core.
                backlog = "0"
                self._stop.wait(1.0)
        client.close()

    def _claim(self, client: RespClient) -> None:
        """Jobs a crashed controller left pending (idle longer than any transfer lives)."""
        entries = streams.claim_idle(client, self.jobs_key, JOBS_GROUP, self.consumer,
                                     self.claim_idle_ms)
        if entries:
            log.warning("reclaimed %d job(s) idle > %d s from other controllers",
                        len(entries), self.claim_idle_ms // 1000)
        self._take(client, entries, reclaimed=True)

    def _take(self, client: RespClient, entries: list[streams.Entry], reclaimed: bool
              ) -> None:
        for entry_id, fields in entries:
            raw = fields or {}
            try:
                job = MoveJob.from_fields(raw)
            except AnchorError as exc:
                log.error("job %s on %s unusable, dropped: %s", entry_id, self.jobs_key, exc)
                try:
                    self._refuse(client, raw, str(exc))
                    streams.ack(client, self.jobs_key, JOBS_GROUP, entry_id)
                except RedisError as ack_exc:  # the rest of the batch still goes on
                    log.error("job %s not acked (read again later): %s", entry_id, ack_exc)
                continue
            record = self._record(client, job) if reclaimed else None
            self.jobs_seen += 1
            log.info("job %s: transfer %s to %s (reply to %s)%s", entry_id, job.xfer_id,
                     job.dial, job.reply_to, " [reclaimed]" if reclaimed else "")
            self._queue.put(("job", _Job(job, entry_id, reclaimed, record)))

    def _refuse(self, client: RespClient, raw: dict[str, str], why: str) -> None:
        """An unusable job that still names its transfer and reply stream: the transferor is
        told 503 at once (not the subscription's expiry) and the record says why."""
        call_id, refer_id = raw.get("call_id", ""), raw.get("refer_id", "")
        reply_to = raw.get("reply_to", "")
        if not call_id or not refer_id.isdigit():
            return
        now = self.clock()
        if reply_to:
            streams.publish_progress(client, reply_to, Progress(
                call_id, refer_id, 503, "Service Unavailable", True, now, "move job unusable"))
        TransferStore(client, prefix=self.prefix).annotate(
            call_id, refer_id, now, {"ami_result": "job-unusable", "ami_error": why},
            "move job unusable")

    def _record(self, client: RespClient, job: MoveJob) -> dict[str, str] | None:
        """The transfer record (its ami_* notes say how far a reclaimed job had got)."""
        try:
            return TransferStore(client, prefix=self.prefix).get(job.call_id, job.refer_id)
        except RedisError as exc:
            log.warning("record of reclaimed job %s unreadable (%s); running it afresh",
                        job.xfer_id, exc)
            return None
