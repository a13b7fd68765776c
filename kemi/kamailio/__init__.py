"""referee inside Kamailio (app_python3): mod_init hands Kamailio the object whose methods
the configs name.

* kemi.kamailio.app.Referee: the routes a native kamailio.cfg calls (the drop-in);
* kemi.kamailio.proxy.Proxy: the whole small proxy of kamailio.cfg with cfgengine
  "python", built on Referee (the proxy depends on the app, never the reverse).

Rules kept everywhere (notes/kamailio-kemi.md): every route returns an int, no exception
escapes (kemi.kamailio.glue.route), Redis waits are bounded by the client's budget and its
circuit breaker, and non-transfer traffic never reaches Redis -- unless [kamailio]
dialog_index is on: then every initial INVITE, its responses and every BYE are recorded
in the dialog index (kemi.storage.dialogs; kamailio-native.cfg writes an ordinary call's
events itself, kemi.kamailio.dialog_index is its fallback), and a Replaces, in a REFER's
Refer-To or an INVITE, is checked against it (kemi.core.replaces) before it is relayed.
"""

from __future__ import annotations

from kemi.kamailio.app import Referee
from kemi.kamailio.proxy import Proxy


def mod_init() -> Referee:
    """app_python3 calls this in the main process, before forking the workers.  The
    Proxy is a Referee: a native cfg calls only the referee_* routes of it."""
    return Proxy()
