"""bench: native-refer.cfg's route[TRANSFER] ported line for line to KEMI Python (the
`native-kemi` variant, `-A NATIVE_KEMI`): the same checks, the same answers, the same one
pipelined ndb_redis round trip.  Not referee: what Python in Kamailio costs for the
baseline's own job, so bench/README.md can tell app_python3's cost from referee's."""

from __future__ import annotations

import hashlib
import re

import KSR  # provided by app_python3

SCHEME = re.compile(r"^(sip|sips|tel):")
PSTN_USER = re.compile(r"^\+[0-9().-]+$")
PREMIUM = re.compile(r"^\+(1900|1976|449[018]|3389|49900|49137|4390[0]|4393[09]|4190[016]|"
                     r"39899|3480[367]|3190[069]|61190|979|870|88[123])")
DENIED = re.compile(r"(^|\.)(invalid|localhost|example\.net)$")
SEVERAL = re.compile(r">[ \t]*,")


def refuse(code: int, reason: str, warn: str) -> int:
    KSR.hdr.append_to_reply(f'Warning: 399 referee "{warn}"\r\n')
    KSR.sl.send_reply(code, reason)
    return 0  # the cfg exits


# HSET of the fields (one value, a field or value per line) + EXPIRE 420 s, as the cfg's
# pipeline does; 420 s: referee's subscription expiry (120 s) + its TTL margin (300 s)
RECORD = ("local t = {}\nfor v in string.gmatch(ARGV[1], '([^\\n]*)\\n?') do "
          "t[#t + 1] = v end\nif t[#t] == '' then t[#t] = nil end\n"
          "redis.call('HSET', KEYS[1], unpack(t))\n"
          "redis.call('EXPIRE', KEYS[1], 420)\nreturn 1")
SHA = hashlib.sha1(RECORD.encode()).hexdigest()


class Handler:
    loaded = False  # this process sent the script once (EVAL): EVALSHA from then on

    def child_init(self, rank: int) -> int:
        return 0

    def native_transfer(self, msg) -> int:
        """1: go on to route(LOCATION); 0: answered here."""
        if KSR.pv.get("$rm") != "REFER":
            return 1
        count = KSR.pv.get("$hdrc(Refer-To)")
        if not count:
            return refuse(400, "Missing Refer-To", "REFER without a Refer-To header")
        if count > 1 or SEVERAL.search(KSR.pv.get("$hdr(Refer-To)") or ""):
            return refuse(400, "Multiple Refer-To", "REFER with several Refer-To values")
        if KSR.pv.get("$hdrc(Referred-By)") > 1:
            return refuse(400, "Multiple Referred-By", "more than one Referred-By")
        rt = KSR.pv.get("$rt")
        if rt is None or not SCHEME.match(rt):
            return refuse(400, "Bad Refer-To", "Refer-To is not a sip, sips or tel URI")
        KSR.pv.sets("$var(rt)", rt)
        user = KSR.pv.get("$(var(rt){uri.user})") or ""
        host = KSR.pv.get("$(var(rt){uri.host})") or ""
        if not user and not host:
            return refuse(400, "Bad Refer-To", "Refer-To names neither a user nor a host")
        if KSR.pv.get("$tt") is None:
            return refuse(403, "Forbidden", "out-of-dialog REFER not allowed")
        if rt.startswith("tel:") or ";user=phone" in rt or PSTN_USER.match(user):
            warn = ("premium-rate or high-cost target" if PREMIUM.match(user)
                    else "PSTN targets not allowed")
            return refuse(403, "Forbidden", warn)
        if DENIED.search(host):
            return refuse(403, "Forbidden", "target domain denied")
        # ndb_redis has no pipelining through KEMI (redis_cmd with at most 3 %s values):
        # the baseline's six pipelined commands as one script, the fields in one value.
        ci, cs = KSR.pv.get("$ci"), KSR.pv.get("$cs")
        key = f"referee:{{{ci}}}:xfer:{int(cs)}"
        fields = "\n".join((
            "call_id", ci, "refer_id", cs, "transferor", KSR.pv.get("$fu"),
            "transferee", KSR.pv.get("$tu"), "target", rt, "source", KSR.pv.get("$si"),
            "from_tag", KSR.pv.get("$ft"), "created_at", str(KSR.pv.get("$TS")),
            "state", "refer-seen"))
        if self.loaded:
            rc = KSR.ndb_redis.redis_cmd_p3("rd", "EVALSHA %s 1 %s %s", SHA, key, fields, "r1")
        else:
            rc = KSR.ndb_redis.redis_cmd_p3("rd", "EVAL %s 1 %s %s", RECORD, key, fields, "r1")
            self.loaded = rc >= 0  # KEMI redis_cmd: 0 on success
        KSR.ndb_redis.redis_free("r1")
        if rc < 0:
            KSR.err(f"REFER {ci}/{cs} refused 503: Redis unreachable\n")
            KSR.hdr.append_to_reply("Retry-After: 30\r\n")
            return refuse(503, "Service Unavailable", "transfer state store unreachable")
        return 1


def mod_init() -> Handler:
    return Handler()
