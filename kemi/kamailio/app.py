"""The routes the Kamailio configs name, each handed to the feature that handles it.

Two ways in, one logic:

* kamailio.cfg with ``cfgengine "python"``: Kamailio calls ``ksr_request_route`` and the
  small proxy in kemi.kamailio.proxy routes everything, calling the ``on_*`` handlers.
* a native kamailio.cfg (the drop-in): ``python_exec("referee_request")`` for REFER,
  NOTIFY, INVITE and BYE, and the other ``referee_*`` names below for its reply, failure
  and timer routes.  A route returns 1 to let the cfg go on relaying and 0 when referee
  has answered the request itself (0 ends the cfg route, as `exit` would).

Each feature lives in its own module and gets the services it needs: refer, notify,
invite, bye, replies, anchored (with its CSeq renumbering and progress reader), timers;
what they share is kemi.kamailio.services and kemi.kamailio.recorder.
"""

from __future__ import annotations

import KSR  # provided by app_python3

from kemi.kamailio.anchored import AnchoredRoutes
from kemi.kamailio.anchored.cseq import forget_asterisk_cseq, on_asterisk_request
from kemi.kamailio.anchored.progress import ProgressReader
from kemi.kamailio.bye import ByeRoutes
from kemi.kamailio.dialog_index import CfgIndex
from kemi.kamailio.glue import CONTINUE, pv, route
from kemi.kamailio.invite import InviteRoutes
from kemi.kamailio.notify import NotifyRoutes
from kemi.kamailio.recorder import Recorder
from kemi.kamailio.refer import ReferRoutes
from kemi.kamailio.replies import ReplyRoutes
from kemi.kamailio.services import Services
from kemi.kamailio.timers import Timers


class Referee:
    """One per Kamailio process (app_python3 forks the object made in mod_init)."""

    def __init__(self) -> None:
        self.s = Services()
        self.rec = Recorder(self.s)
        self.s.order.on_answer = self.rec.defer  # a noted REFER 2xx, once taken
        self.anchoring = AnchoredRoutes(self.s, self.rec)
        self.refer = ReferRoutes(self.s, self.rec, self.anchoring)
        self.notify = NotifyRoutes(self.s, self.rec)
        self.invite = InviteRoutes(self.s, self.rec)
        self.bye = ByeRoutes(self.s, self.rec, self.anchoring)
        self.index = CfgIndex(self.s)
        self.replies = ReplyRoutes(self.s, self.rec, self.notify)
        self.progress = ProgressReader(self.s, self.rec, self.anchoring)
        self.timers = Timers(self.s, self.rec, self.notify, self.anchoring)

    @property
    def asterisk_sources(self) -> dict[str, str]:
        """"ip:port" of each [anchored] Asterisk -> its name."""
        return self.anchoring.sources

    def child_init(self, rank: int) -> int:
        self.s.child_init()
        self.progress.child_init()
        self.timers.child_init()
        self.anchoring.child_init(rank)
        return 0

    # -- the handlers (the python-engine proxy calls them directly) ----------------------
    def on_refer(self) -> int:
        return self.refer.on_refer()

    def on_notify(self) -> int:
        return self.notify.on_notify()

    def on_invite(self) -> int:
        return self.invite.on_invite()

    def on_bye(self) -> int:
        return self.bye.on_bye()

    def on_unrelayed(self, rc: int) -> int:
        return self.refer.on_unrelayed(rc)

    def on_notify_reply(self, code: int) -> int:
        return self.anchoring.on_notify_reply(code)

    def on_asterisk_request(self) -> int:
        return on_asterisk_request()

    def forget_asterisk_cseq(self) -> None:
        forget_asterisk_cseq()

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

    @route("reply")
    def referee_index(self, msg) -> int:
        """kamailio-native.cfg with WITH_DIALOG_INDEX: a dialog index write the cfg could
        not make alone (from a reply, failure or request route; never answers)."""
        return self.index.on_write()

    @route("request")
    def referee_unrelayed(self, msg) -> int:
        """kamailio-native.cfg: t_relay could not send a REFER on (an unresolvable host, no
        route; its return code in $var(rf_relay)): referee answers it."""
        try:
            rc = int(pv("$var(rf_relay)") or -1)
        except ValueError:
            rc = -1
        return self.on_unrelayed(rc)

    @route("reply")
    def referee_reply(self, msg) -> int:
        return self.replies.on_reply(int(KSR.pv.get("$rs") or 0))

    @route("reply")
    def referee_uac_reply(self, msg) -> int:
        """A reply to a NOTIFY referee sent itself (no transaction route sees those)."""
        return self.on_notify_reply(int(KSR.pv.get("$rs") or 0))

    @route("failure")
    def referee_failure(self, msg) -> int:
        return self.replies.on_failure()

    @route("failure")
    def referee_resume(self, msg, *_evname) -> int:
        return self.notify.resume()

    def referee_resumed(self, msg, *_args) -> int:
        return self.notify.resumed()

    @route("timer")
    def referee_order(self, msg) -> int:
        return self.timers.order()

    def referee_next(self, msg, *_args) -> int:
        """Not wrapped by `route`: on an error it must end the cfg's loop (-1)."""
        return self.timers.next_due()

    @route("timer")
    def referee_sweep(self, msg) -> int:
        return self.timers.sweep()

    @route("timer")
    def referee_progress(self, msg) -> int:
        return self.progress.tick()
