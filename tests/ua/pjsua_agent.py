"""One pjsua2 phone in its own process, driven by JSON lines.

Started by tests/ua/phone.py as ``python pjsua_agent.py '<json config>'``.
It reads one JSON command per line on stdin and writes one JSON object per line
on stdout: replies ``{"id": n, "ok": true, "result": ...}`` /
``{"id": n, "ok": false, "error": "..."}`` and unsolicited events
``{"event": "...", ...}``.  pjsua's own log (with every SIP message) goes to the
file named in the config, never to stdout.  End of stdin means quit, so the
phone dies with its driver.

Everything runs on the main thread: pjsua2 is created with no worker threads
and polled with libHandleEvents() between reads of stdin.
"""

from __future__ import annotations

import json
import os
import select
import sys
import traceback

import pjsua2 as pj

# The JSON channel is the original stdout; fd 1 is then pointed at stderr so
# that nothing pjlib prints can corrupt it.
_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

_INV_STATES = {
    pj.PJSIP_INV_STATE_NULL: "null",
    pj.PJSIP_INV_STATE_CALLING: "calling",
    pj.PJSIP_INV_STATE_INCOMING: "incoming",
    pj.PJSIP_INV_STATE_EARLY: "early",
    pj.PJSIP_INV_STATE_CONNECTING: "connecting",
    pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
    pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected",
}


def emit(obj: dict) -> None:
    _OUT.write(json.dumps(obj) + "\n")
    _OUT.flush()


def log(msg: str) -> None:
    sys.stderr.write(f"[pjsua_agent] {msg}\n")
    sys.stderr.flush()


class Agent:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.calls: dict[int, AgentCall] = {}
        self.next_key = 1
        self.running = True
        # behaviour knobs (can be changed with the "set" command)
        self.accept_refer = int(cfg.get("accept_refer", 202))
        self.auto_ringing = bool(cfg.get("auto_ringing", True))
        self.auto_answer = cfg.get("auto_answer")  # None or a status code

        self.ep = pj.Endpoint()
        self.ep.libCreate()
        ep_cfg = pj.EpConfig()
        ep_cfg.uaConfig.threadCnt = 0
        ep_cfg.uaConfig.mainThreadOnly = True
        ep_cfg.uaConfig.maxCalls = 8
        ep_cfg.logConfig.level = 5
        ep_cfg.logConfig.consoleLevel = 0
        ep_cfg.logConfig.msgLogging = True
        if cfg.get("log"):
            ep_cfg.logConfig.filename = cfg["log"]
        ep_cfg.medConfig.hasIoqueue = True
        ep_cfg.medConfig.noVad = True
        self.ep.libInit(ep_cfg)

        tcfg = pj.TransportConfig()
        tcfg.boundAddress = "127.0.0.1"
        tcfg.publicAddress = "127.0.0.1"
        tcfg.port = int(cfg.get("sip_port", 0))
        self.tp_id = self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        self.sip_port = self.ep.transportGetInfo(self.tp_id).localName.split(":")[-1]

        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{cfg['user']}@{cfg['domain']}"
        acfg.regConfig.registrarUri = f"sip:{cfg['domain']}"
        acfg.regConfig.registerOnAdd = False
        acfg.regConfig.timeoutSec = 300
        acfg.sipConfig.proxies.append(f"sip:{cfg['proxy_host']}:{cfg['proxy_port']};lr")
        acfg.sipConfig.transportId = self.tp_id
        acfg.natConfig.contactRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.sipOutboundUse = 0
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.port = int(cfg.get("rtp_port", 0))
        acfg.mediaConfig.transportConfig.portRange = 200
        # pjsua's default sends an extra re-INVITE to "lock" a codec when the
        # answer lists several; off unless asked for, so tests see only theirs.
        acfg.mediaConfig.lockCodecEnabled = bool(cfg.get("lock_codec", False))
        self.acc = AgentAccount(self)
        self.acc.create(acfg)

    # -- bookkeeping -------------------------------------------------------
    def add_call(self, call: AgentCall, origin: str) -> int:
        key = self.next_key
        self.next_key += 1
        call.key = key
        self.calls[key] = call
        emit(
            {
                "event": "new_call",
                "call": key,
                "origin": origin,
                "remote": call.remote,
                "parent": call.parent,
            }
        )
        return key

    def call(self, key) -> AgentCall:
        try:
            return self.calls[int(key)]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"no such call {key!r}") from None

    # -- commands ------------------------------------------------------------
    def do_register(self, _c):
        self.acc.setRegistration(True)
        return None

    def do_unregister(self, _c):
        self.acc.setRegistration(False)
        return None

    def do_call(self, c):
        call = AgentCall(self, self.acc)
        call.remote = c["uri"]
        prm = pj.CallOpParam(True)
        _add_headers(prm.txOption, c.get("headers"))
        key = self.add_call(call, "outgoing")
        call.makeCall(c["uri"], prm)
        return key

    def do_answer(self, c):
        call = self.call(c["call"])
        prm = pj.CallOpParam()
        prm.statusCode = int(c.get("code", 200))
        if c.get("reason"):
            prm.reason = c["reason"]
        _add_headers(prm.txOption, c.get("headers"))
        call.answer(prm)
        return None

    def do_hangup(self, c):
        call = self.call(c["call"])
        prm = pj.CallOpParam()
        if c.get("code"):
            prm.statusCode = int(c["code"])
        call.hangup(prm)
        return None

    def do_hold(self, c):
        call = self.call(c["call"])
        call.reinvite_pending = True
        call.setHold(pj.CallOpParam(True))
        return None

    def do_reinvite(self, c):
        call = self.call(c["call"])
        call.reinvite_pending = True
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        call.reinvite(prm)
        return None

    def do_xfer(self, c):
        call = self.call(c["call"])
        prm = pj.CallOpParam(True)
        headers = dict(c.get("headers") or {})
        if not c.get("refer_sub", True):
            headers["Refer-Sub"] = "false"
        _add_headers(prm.txOption, headers)
        call.xfer(c["target"], prm)
        return None

    def do_xfer_replaces(self, c):
        """Attended transfer: REFER `call` to the remote party of `dest`, with Replaces."""
        call = self.call(c["call"])
        dest = self.call(c["dest"])
        call.xferReplaces(dest, pj.CallOpParam(True))
        return None

    def do_set(self, c):
        if "accept_refer" in c:
            self.accept_refer = int(c["accept_refer"])
        if "auto_ringing" in c:
            self.auto_ringing = bool(c["auto_ringing"])
        if "auto_answer" in c:
            self.auto_answer = c["auto_answer"]
        return None

    def do_info(self, c):
        call = self.call(c["call"])
        return call.snapshot()

    def do_ping(self, _c):
        return {"sip_port": int(self.sip_port)}

    def do_quit(self, _c):
        self.running = False
        return None

    def handle_line(self, line: str) -> None:
        try:
            c = json.loads(line)
        except json.JSONDecodeError as e:
            emit({"id": None, "ok": False, "error": f"bad json: {e}"})
            return
        cid = c.get("id")
        fn = getattr(self, "do_" + str(c.get("cmd")), None)
        if fn is None:
            emit({"id": cid, "ok": False, "error": f"unknown command {c.get('cmd')!r}"})
            return
        try:
            emit({"id": cid, "ok": True, "result": self.retry_busy(fn, c)})
        except pj.Error as e:
            emit(
                {
                    "id": cid,
                    "ok": False,
                    "error": f"pjsua2 {e.title}: {e.reason} (status {e.status})",
                }
            )
        except Exception as e:  # report, keep running
            emit({"id": cid, "ok": False, "error": f"{type(e).__name__}: {e}"})

    def retry_busy(self, fn, c, seconds: float = 3.0):
        """Run a command; while the dialog is busy with another INVITE
        transaction (PJSIP_EPENDINGTX and friends), keep polling and retry."""
        tries = int(seconds / 0.02)
        for i in range(tries):
            try:
                return fn(c)
            except pj.Error as e:
                if e.status not in _BUSY or i == tries - 1:
                    raise
                self.ep.libHandleEvents(20)
        return None

    def run(self) -> None:
        emit(
            {"event": "ready", "sip_port": int(self.sip_port), "version": self.ep.libVersion().full}
        )
        buf = b""
        fd = sys.stdin.fileno()
        while self.running:
            self.ep.libHandleEvents(10)
            r, _, _ = select.select([fd], [], [], 0)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self.handle_line(line.decode())
        try:
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.ep.libHandleEvents(10)
        except Exception:
            pass
        emit({"event": "bye"})
        _OUT.flush()
        # libDestroy() would wait for unregistration and can crash on the
        # SWIG directors; the process is going away anyway.
        os._exit(0)


# PJSIP_EPENDINGTX (171064), PJ_EINVALIDOP (70013), PJ_EBUSY (70011):
# raised when a re-INVITE/REFER is asked for while another INVITE is in progress.
_BUSY = {171064, 70013, 70011}


def _add_headers(tx: pj.SipTxOption, headers) -> None:
    for name, value in (headers or {}).items():
        h = pj.SipHeader()
        h.hName = name
        h.hValue = str(value)
        tx.headers.append(h)


def _guard(fn):
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except Exception:
            log("callback failed:\n" + traceback.format_exc())

    return wrapper


class AgentAccount(pj.Account):
    def __init__(self, agent: Agent):
        super().__init__()
        self.agent = agent

    @_guard
    def onRegState(self, prm):
        emit({"event": "reg", "code": prm.code, "reason": prm.reason, "expires": prm.expiration})

    @_guard
    def onIncomingCall(self, prm):
        agent = self.agent
        call = AgentCall(agent, self, prm.callId)
        info = call.getInfo()
        call.remote = info.remoteUri
        call.state = "incoming"
        agent.add_call(call, "incoming")
        call.record_msg("rx", prm.rdata.wholeMsg)
        if agent.auto_answer:
            op = pj.CallOpParam()
            op.statusCode = int(agent.auto_answer)
            call.answer(op)
        elif agent.auto_ringing:
            op = pj.CallOpParam()
            op.statusCode = 180
            call.answer(op)


class AgentCall(pj.Call):
    def __init__(self, agent: Agent, acc, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.agent = agent
        self.key = None
        self.parent = None
        self.remote = ""
        self.state = "null"
        self.last_code = 0
        self.last_reason = ""
        self.reinvite_pending = False

    def snapshot(self) -> dict:
        return {
            "call": self.key,
            "state": self.state,
            "code": self.last_code,
            "reason": self.last_reason,
            "remote": self.remote,
        }

    def record_msg(self, direction: str, text: str) -> None:
        emit({"event": "sipmsg", "call": self.key, "dir": direction, "msg": text})

    @_guard
    def onCallState(self, prm):
        info = self.getInfo()
        self.state = _INV_STATES.get(info.state, str(info.state))
        self.last_code = info.lastStatusCode
        self.last_reason = info.lastReason
        if info.remoteUri:
            self.remote = info.remoteUri
        emit({"event": "call_state", **self.snapshot()})

    @_guard
    def onCallReplaced(self, prm):
        """An INVITE with Replaces took this call over: follow the new call."""
        new = AgentCall(self.agent, self.acc_ref(), prm.newCallId)
        new.parent = self.key
        new.state = "incoming"
        try:
            new.remote = new.getInfo().remoteUri
        except pj.Error:
            pass
        key = self.agent.add_call(new, "replacing")
        prm.newCall = new
        emit({"event": "replaced", "call": self.key, "new_call": key})

    @_guard
    def onCallMediaState(self, prm):
        pass  # null audio device: nothing to connect

    @_guard
    def onCallTsxState(self, prm):
        e = prm.e
        if e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        ts = e.body.tsxState
        tsx = ts.tsx
        if ts.type == pj.PJSIP_EVENT_RX_MSG:
            try:
                self.record_msg("rx", ts.src.rdata.wholeMsg)
            except Exception:
                pass
        if (
            self.reinvite_pending
            and tsx.method == "INVITE"
            and tsx.role == pj.PJSIP_ROLE_UAC
            and tsx.statusCode >= 200
            and tsx.state in (pj.PJSIP_TSX_STATE_COMPLETED, pj.PJSIP_TSX_STATE_TERMINATED)
        ):
            self.reinvite_pending = False
            emit(
                {
                    "event": "reinvite",
                    "call": self.key,
                    "code": tsx.statusCode,
                    "reason": tsx.statusText,
                }
            )

    @_guard
    def onCallTransferRequest(self, prm):
        agent = self.agent
        prm.statusCode = agent.accept_refer
        new_key = None
        if 200 <= agent.accept_refer < 300:
            child = AgentCall(agent, self.acc_ref())
            child.parent = self.key
            child.remote = prm.dstUri
            child.state = "calling"
            new_key = agent.add_call(child, "transfer")
            prm.newCall = child
        emit(
            {
                "event": "refer_request",
                "call": self.key,
                "refer_to": prm.dstUri,
                "code": agent.accept_refer,
                "new_call": new_key,
            }
        )

    def acc_ref(self):
        return self.agent.acc

    @_guard
    def onCallTransferStatus(self, prm):
        prm.cont = True
        emit(
            {
                "event": "xfer_status",
                "call": self.key,
                "code": prm.statusCode,
                "reason": prm.reason,
                "final": bool(prm.finalNotify),
            }
        )


def main() -> None:
    cfg = json.loads(sys.argv[1])
    Agent(cfg).run()


if __name__ == "__main__":
    main()
