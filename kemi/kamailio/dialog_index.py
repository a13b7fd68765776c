"""The dialog index as kamailio-native.cfg writes it itself (WITH_DIALOG_INDEX): an
ordinary call never enters Python; the cfg sends one EVALSHA through ndb_redis per tagged
response and per BYE (kemi.storage.dialogs.CFG_INDEX_LUA).  Python is its fallback, for
what the cfg cannot do alone:

* the script's sha and referee's settings (key prefix, TTLs) are referee's: published
  here in the htable referee_ix ("sha", "args") once a process has proved that ndb_redis
  names referee.toml's Redis (kemi.kamailio.ndb).  Until then, and for a Redis the cfg
  cannot reach (TLS, Sentinel, Cluster; no ndb_redis), every write comes here;
* a NOSCRIPT (Redis restarted or flushed): the write is sent here with EVAL, which loads
  the script again for the cfg;
* no reply from Redis: tried once more here, behind referee's circuit breaker, and
  logged; the call goes on either way;
* a Call-ID with a control byte or bytes above ASCII: judged here as referee judges the
  INVITE on its own path -- not SIP text, not indexed (a notice); UTF-8 text is written.
"""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.core import transfer
from kemi.kamailio import metrics
from kemi.kamailio.glue import CONTINUE, log, pv, source
from kemi.kamailio.ndb import NdbTransport
from kemi.kamailio.services import Services
from kemi.storage.dialogs import cfg_fields
from kemi.storage.packed import PackedClient
from kemi.storage.resp import RedisError

HTABLE = "referee_ix"


class CfgIndex:
    def __init__(self, services: Services) -> None:
        self.s = services

    def on_write(self) -> int:
        """The cfg handed this write over (its event in $var(rf_ixe), the INVITE's source
        in $var(rf_ixs)): do it as the cfg would have, and publish what the cfg needs to
        do the next ones alone."""
        metrics.bump("dialog_index_python")
        event = pv("$var(rf_ixe)") or ""
        call_id = pv("$ci") or ""
        bad = transfer.bad_call_id(call_id)
        if bad is not None:  # as the Python path judges the INVITE (verdicts.invite_call_id)
            log(KSR.notice, f"dialog {call_id} {event} not indexed: {bad.warning}")
            return CONTINUE
        fields = cfg_fields(
            event, pv("$TV(Sn)") or "0", call_id, pv("$ft") or "", pv("$tt") or "",
            pv("$fu") or "", pv("$tu") or "", f"{pv('$Ri') or ''}:{pv('$Rp') or ''}",
            source(), pv("$var(rf_ixs)") or "", pv("$cs") or "0")
        store = self.s.dialogs
        try:
            client = store.client
            if isinstance(client, PackedClient) and isinstance(client.transport, NdbTransport):
                sha, text = store.cfg_script
                # As the cfg sends it (EVAL, first use or after a NOSCRIPT, loads it); an
                # event that names no record (no tag) needs no trip.
                if store.cfg_keys(fields):
                    client.run_script(sha, text, store.cfg_payload(fields))
                if client.transport.same:
                    self._publish(sha, store.static_args())
            else:
                store.record_cfg(fields)
        except ValueError as exc:
            log(KSR.err, f"dialog {call_id} not indexed: {exc} (the cfg's "
                         "route[REFEREE_INDEX_WRITE] and referee's version must match)")
        except RedisError as exc:
            log(KSR.warn, f"dialog {call_id} {event} not indexed (Redis: {exc})")
        return CONTINUE

    @staticmethod
    def _publish(sha: str, args: str) -> None:
        for name, value in (("args", args), ("sha", sha)):
            if KSR.htable.sht_sets(HTABLE, name, value) < 0:
                log(KSR.err, f"htable {HTABLE} missing: add modparam(\"htable\", \"htable\", "
                             f"\"{HTABLE}=>size=2;\") (kamailio-native.cfg, WITH_DIALOG_INDEX); "
                             "until then every call's index write enters Python")
                return
