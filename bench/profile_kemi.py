"""The loader bench/profile_refer.py gives app_python3 instead of referee_kemi.py: referee
as shipped, with CPU-time counters (time.thread_time) around the functions of the REFER
path.  Each worker writes its table to $REFEREE_PROFILE_DIR/sections-<pid>.txt every 500
REFERs.  Counting costs a little itself (two clock reads per wrapped call).
"""

import gc
import os
import site
import sysconfig
import time

_venv = os.environ.get("REFEREE_VENV")
if _venv:
    # The venv's site-packages for the interpreter app_python3 runs (lib/pythonX.Y/...);
    # "venv": Debian's default scheme would name /usr/local-style dist-packages.
    site.addsitedir(sysconfig.get_path("purelib", "venv", vars={"base": _venv, "platbase": _venv}))

import kemi.kamailio.app as A  # noqa: E402
import kemi.kamailio.ndb as N  # noqa: E402
import kemi.kamailio.notify as Y  # noqa: E402
import kemi.kamailio.recorder as C  # noqa: E402
import kemi.kamailio.refer as F  # noqa: E402
import kemi.kamailio.replies as P  # noqa: E402
import kemi.kamailio.sequencer as Q  # noqa: E402
import kemi.kamailio.timers as T  # noqa: E402
import kemi.storage.packed as K  # noqa: E402
import kemi.storage.resp as R  # noqa: E402
import kemi.storage.transfers as S  # noqa: E402
from kemi.kamailio import mod_init as _mod_init  # noqa: E402
from kemi.storage.policy_cache import PolicyCache  # noqa: E402

OUT = os.environ.get("REFEREE_PROFILE_DIR", "/tmp")
_sections: dict[str, list] = {}


def _wrap(owner, name: str, label: str) -> None:
    static = isinstance(vars(owner).get(name), staticmethod)
    fn = getattr(owner, name)

    def inner(*args, **kwargs):
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            s = _sections.setdefault(label, [0, 0.0])
            s[0] += 1
            s[1] += time.thread_time() - t

    setattr(owner, name, staticmethod(inner) if static else inner)


_ORDER = [
    (A.Referee, "referee_request", "referee_request (all)"),
    (F.ReferRoutes, "on_refer", "  on_refer"),
    (F, "pv", "    pv (KSR.pv.get)"),
    (F, "header_values", "    header_values (KSR.hdr.get_idx)"),
    (F.verdicts, "refer", "    verdicts.refer (parse + policy)"),
    (PolicyCache, "current", "    policy.current"),
    (S.TransferStore, "create", "    store.create"),
    (S.TransferStore, "_field_args", "      _field_args"),
    (S.TransferStore, "_eval", "      _eval"),
    (F.ReferRoutes, "_follow", "    _follow (avps, htable, t_on_*)"),
    (F, "mark_dialog", "      mark_dialog"),
    (Q.Sequencer, "refer_relayed", "      order.refer_relayed"),
    (F, "arm_routes", "      arm_routes"),
    (F, "perform", "    perform (answers, log, counters)"),
    (A.Referee, "referee_reply", "referee_reply (all)"),
    (P.ReplyRoutes, "on_reply", "  on_reply"),
    (P, "restore_reply_cseq", "    restore_reply_cseq"),
    (P, "pv", "    pv (KSR.pv.get) in replies"),
    (Q.Deferred, "add", "    later.add"),
    (Q.Sequencer, "refer_answered", "    order.refer_answered"),
    (P.metrics, "bump", "    metrics.bump"),
    (S.TransferStore, "apply", "    store.apply"),
    (Y.NotifyRoutes, "on_notify", "on_notify (NOTIFY request route)"),
    (Y.verdicts, "notify", "  verdicts.notify (read)"),
    (Y.NotifyRoutes, "_target", "  _target"),
    (Q.Sequencer, "verdict", "  order.verdict"),
    (Y.NotifyRoutes, "record_notify", "  record_notify (Redis)"),
    (Q.Sequencer, "admit", "  order.admit"),
    (Q.Sequencer, "mark_sent", "  order.mark_sent"),
    (Y.NotifyRoutes, "delivered", "delivered (200 to a NOTIFY, reply route)"),
    (T.Timers, "sweep", "sweep (timer process)"),
    (Q.Sequencer, "fold_due", "  order.fold_due (2xx noted, no NOTIFY came)"),
    (Q.Deferred, "due", "  later.due"),
    (C.Recorder, "store_later_many", "  store_later_many (Redis)"),
    (R.RespClient, "_round_trip", "RespClient._round_trip (both)"),
    (R.RespClient, "_usable", "  _usable"),
    (R, "encode", "  encode"),
    (R.RespClient, "_send", "  _send"),
    (R.RespClient, "_receive", "  _receive"),
    (K.PackedClient, "_round_trip", "PackedClient._round_trip (ndb_redis)"),
    (K, "encode_batch", "  encode_batch"),
    (N.NdbTransport, "_command", "  ndb_redis command + reply PVs"),
    (K, "decode_answers", "  decode_answers"),
]
for _owner, _name, _label in _ORDER:
    _wrap(_owner, _name, _label)

_GC = "gc collections (any route)"
_ORDER.append((None, "", _GC))
_gc_start = [0.0]


def _gc_timer(phase: str, info: dict) -> None:
    """Python's cyclic collector, timed: it runs inside whichever route allocated last."""
    if phase == "start":
        _gc_start[0] = time.thread_time()
        return
    s = _sections.setdefault(_GC, [0, 0.0])
    s[0] += 1
    s[1] += time.thread_time() - _gc_start[0]


gc.callbacks.append(_gc_timer)

_count = [0]


def _dump() -> None:
    refers = max(_sections.get("  on_refer", [0])[0], 1)
    with open(os.path.join(OUT, f"sections-{os.getpid()}.txt"), "w") as fh:
        for _o, _n, label in _ORDER:
            calls, cpu = _sections.get(label, (0, 0.0))
            fh.write(f"{label}\t{calls}\t{cpu}\t{refers}\n")


_on_refer = F.ReferRoutes.on_refer


def _counted(self):
    try:
        return _on_refer(self)
    finally:
        _count[0] += 1
        if _count[0] % 500 == 0:
            _dump()


F.ReferRoutes.on_refer = _counted

_sweep = T.Timers.sweep


def _swept(self):
    """The sweep's process handles no REFER: it writes its table after every tick."""
    try:
        return _sweep(self)
    finally:
        _dump()


T.Timers.sweep = _swept


def mod_init():
    return _mod_init()
