"""A complete small proxy in KEMI Python (kamailio.cfg with cfgengine "python").

Registrar with in-memory location, record-route, loose-route, no NAT handling: the
smallest proxy that carries a transfer between registered phones.  It reads like the
request_route of Kamailio's default kamailio.cfg, with referee's handlers where REFER,
NOTIFY, the transferee's INVITE and BYE pass.

Every INVITE and BYE is handed to its handler; the handlers consult [kamailio]
dialog_index themselves (kemi.kamailio), so with it off an ordinary call returns at once
without touching Redis, and with it on each dialog is indexed (no cfg define needed here).

Requests from an [anchored] Asterisk (by source address) pass referee first: it records
their CSeq (shared memory, no Redis) and renumbers them in a dialog referee has sent
NOTIFYs in (kemi.core.cseq); replies to those NOTIFYs reach `ksr_reply_route`.
"""

from __future__ import annotations

import KSR

from kemi.kamailio.app import Referee
from kemi.kamailio.glue import CONTINUE, HANDLED, route

TRANSFER_METHODS = {
    "REFER": "on_refer", "NOTIFY": "on_notify", "INVITE": "on_invite", "BYE": "on_bye",
}


class Proxy(Referee):
    @route("request")
    def ksr_request_route(self, msg) -> int:
        if self.reqinit() == HANDLED:
            return HANDLED
        if self.asterisk_sources:
            if f"{KSR.pv.get('$si')}:{KSR.pv.get('$sp')}" in self.asterisk_sources:
                self.on_asterisk_request()
            elif KSR.is_BYE():
                self.forget_asterisk_cseq()
        if KSR.is_CANCEL():
            if KSR.tm.t_check_trans() > 0:
                self.relay()
            return HANDLED
        if KSR.siputils.has_totag() > 0:
            return self.withindlg()
        # Retransmissions of initial requests are absorbed by tm.
        if KSR.tm.t_check_trans() == 0:
            return HANDLED
        if KSR.is_REGISTER():
            return self.registrar()
        if KSR.is_method_in("IS"):  # INVITE, SUBSCRIBE
            KSR.rr.record_route()
        elif KSR.is_REFER():
            KSR.rr.record_route()  # an out-of-dialog REFER creates a dialog too
        if self.transfer_hook() == HANDLED:
            return HANDLED
        return self.location()

    @route("reply")
    def ksr_reply_route(self, msg) -> int:
        """Every reply (kemi.reply_route_callback): only a failure answering a NOTIFY of
        referee's own (anchored mode) matters here; relayed transactions have their own
        reply routes."""
        if not self.asterisk_sources or int(KSR.pv.get("$rs") or 0) < 300:
            return CONTINUE
        return self.on_notify_reply(int(KSR.pv.get("$rs") or 0))

    @route("failure")
    def referee_resume(self, msg, *_evname) -> int:
        """A held NOTIFY whose turn has come (kemi.kamailio.referee_order)."""
        Referee.referee_resume(self, msg)
        if KSR.tm.t_relay() < 0:
            KSR.tm.t_reply(500, "Server Internal Error")
        self.referee_resumed(msg)
        return HANDLED

    @route("request")
    def ksr_xhttp_event(self, msg, *_evname) -> int:
        """An HTTP request (-A WITH_PROMETHEUS): /metrics is referee's counters, served by
        xhttp_prom; anything else 404."""
        if (KSR.pv.get("$hu") or "").startswith("/metrics"):
            KSR.xhttp_prom.dispatch()
            return HANDLED
        KSR.xhttp.xhttp_reply(404, "Not Found", "text/plain", "use /metrics")
        return HANDLED

    def reqinit(self) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.send_reply(483, "Too Many Hops")
            return HANDLED
        if KSR.is_OPTIONS() and KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0:
            KSR.sl.send_reply(200, "Keepalive")
            return HANDLED
        if KSR.sanity.sanity_check(17895, 7) < 0:
            return HANDLED
        return CONTINUE

    def withindlg(self) -> int:
        if KSR.rr.loose_route() > 0:
            if self.transfer_hook() == HANDLED:
                return HANDLED
            self.relay()
            return HANDLED
        if KSR.is_ACK() and KSR.tm.t_check_trans() > 0:
            self.relay()
            return HANDLED
        if KSR.is_myself_ruri() and KSR.corex.has_ruri_user() > 0:
            return self.routeless_in_dialog()
        if not KSR.is_ACK():
            KSR.sl.send_reply(404, "Not here")
        return HANDLED

    def routeless_in_dialog(self) -> int:
        """An in-dialog request without Route, for a user of this proxy.

        Some UAs ignore Record-Route and send every request of a dialog to the proxy
        with the peer's address-of-record as Request-URI (SIPp scenarios written for a
        B2BUA do).  RFC 3261 16.5 routes a request for this domain by the location
        service whether or not it has a to-tag, so it is routed as an initial request
        would be, with referee's hook first.  Requests for any other address still
        need a Route (no open relay).  Such UAs also build a request's Via by copying one
        they received, so the reply goes back where the request came from (RFC 3581).
        """
        KSR.force_rport()
        if KSR.is_ACK():
            if KSR.registrar.lookup("location") > 0:
                self.relay()  # t_relay forwards an ACK statelessly
            return HANDLED  # an ACK is never answered
        # The destination first: referee relays a transfer's NOTIFYs itself (in order).
        if KSR.registrar.lookup("location") < 0:
            KSR.tm.t_newtran()
            KSR.tm.t_reply(404, "Not Found")
            return HANDLED
        if self.transfer_hook() == HANDLED:
            return HANDLED
        self.relay()
        return HANDLED

    def transfer_hook(self) -> int:
        handler = TRANSFER_METHODS.get(KSR.pv.get("$rm"))
        if handler is None:
            return CONTINUE
        return getattr(self, handler)()

    def registrar(self) -> int:
        if KSR.registrar.save("location", 0) < 0:
            KSR.sl.sl_reply_error()
        return HANDLED

    def location(self) -> int:
        # Only a request for this domain needs a user to be looked up; one for another
        # host (an Asterisk recalling a PBX at its AOR contact, sip:host:port) is relayed.
        if KSR.is_myself_ruri() and KSR.corex.has_ruri_user() < 0:
            KSR.sl.send_reply(484, "Address Incomplete")
            return HANDLED
        if KSR.is_myself_ruri():
            rc = KSR.registrar.lookup("location")
            if rc < 0:
                KSR.tm.t_newtran()
                if rc in (-1, -3):
                    KSR.tm.t_reply(404, "Not Found")
                elif rc == -2:
                    KSR.tm.t_reply(405, "Method Not Allowed")
                return HANDLED
        self.relay()
        return HANDLED

    def relay(self) -> None:
        rc = KSR.tm.t_relay()
        if rc < 0:
            if KSR.is_REFER():
                self.on_unrelayed(rc)  # answered by referee, its transfer closed
            else:
                KSR.sl.sl_reply_error()
