"""SIPp scenarios for Andrew (transferor), McKenzie (transferee) and Marsha (target), built
per test so each test states, in its own words, what every party sends and expects.

Every scenario talks only to the proxy (SIPp's remote address); in-dialog requests carry
the route set learnt from Record-Route, so they really pass Kamailio's loose_route.
McKenzie's triggered INVITE uses SIPp's `///` Call-ID convention (the part after `///`
maps the messages to the same SIPp call) so one SIPp process plays the transferee's two
dialogs.

Why this file is long: three SIPp scenarios written out as XML, step by step, which is
the point: each party's messages can be read in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'


def _send(text: str, retrans: bool = False, extra: str = "") -> str:
    r = ' retrans="500"' if retrans else ""
    return f"  <send{r}{extra}><![CDATA[\n{text.strip()}\n\n]]></send>\n"


def _reply_head(code: str, to_tag: bool) -> str:
    """A response's start line and the headers it copies from the request, plus our
    Contact (`me`); to_tag: add our To tag (a dialog-forming response)."""
    to = "[last_To:];tag=[pid]SIPpTag01[call_number]" if to_tag else "[last_To:]"
    return f"""
SIP/2.0 {code}
[last_Via:]
[last_From:]
{to}
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:[$me]@[local_ip]:[local_port]>
"""


def _reply(code: str, extra_headers: str = "", to_tag: bool = True) -> str:
    return _send(_reply_head(code, to_tag) + f"{extra_headers}\nContent-Length: 0\n")


SDP = """v=0
o=user1 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [auto_media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000"""


def _with_sdp(headers: str) -> str:
    return headers.strip() + "\nContent-Type: application/sdp\nContent-Length: [len]\n\n" + SDP


def register(user: str) -> str:
    """REGISTER user at the proxy with this SIPp's address as Contact."""
    return (
        HEAD
        + f'<scenario name="register {user}">\n'
        + _send(
            f"""
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{user}@[remote_ip]>;tag=[pid]reg[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
Expires: 600
Max-Forwards: 70
Content-Length: 0
""",
            retrans=True,
        )
        + '  <recv response="200"/>\n</scenario>\n'
    )


@dataclass
class Andrew:
    """The transferor: calls McKenzie, REFERs her to a target, follows the NOTIFYs."""

    callee: str = "mckenzie"
    refer_to: list[str] = field(default_factory=lambda: ["<sip:marsha@[remote_ip]:[remote_port]>"])
    extra_refer_headers: list[str] = field(default_factory=list)
    referred_by: str | None = "<sip:andrew@[remote_ip]>"
    expect_refer: int = 202
    follow_notifies: bool = True  # read NOTIFYs until Subscription-State: terminated
    bye_right_after_202: bool = False
    reinvite_after: bool = False  # re-INVITE the original call once the transfer is over
    answer_notify_481_after_bye: bool = False
    hold_ms: int = 0  # stay in the call this long after the REFER's answer, then go on
    refers: int = 1  # REFERs sent one after another, each expecting expect_refer (>= 300)

    def xml(self) -> str:
        me = "andrew"
        out = HEAD + '<scenario name="andrew transferor">\n'
        out += _me(me)
        out += _send(
            _with_sdp(
                f"""
INVITE sip:{self.callee}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{me}@[remote_ip]>;tag=[pid]andrew[call_number]
To: <sip:{self.callee}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{me}@[local_ip]:[local_port]>
Max-Forwards: 70
"""
            ),
            retrans=True,
        )
        out += '  <recv response="100" optional="true"/>\n'
        out += '  <recv response="180" optional="true"/>\n'
        out += '  <recv response="200" rrs="true"/>\n'
        out += self._ack(1)
        out += '  <pause milliseconds="100"/>\n'
        refer_lines = [f"Refer-To: {v}" for v in self.refer_to]
        if self.referred_by:
            refer_lines.append(f"Referred-By: {self.referred_by}")
        refer_lines += self.extra_refer_headers
        if self.refers != 1 and self.expect_refer < 300:
            raise ValueError("several REFERs only when each is refused")
        cseq = 2
        for _ in range(self.refers):
            out += _send(
                self._in_dialog("REFER", cseq, "\n".join(refer_lines)) + "\nContent-Length: 0",
                retrans=True,
            )
            out += '  <recv response="100" optional="true"/>\n'
            out += f'  <recv response="{self.expect_refer}"/>\n'
            cseq += 1
        if self.expect_refer >= 300:
            out += self._ack_negative_refer_is_not_needed()
            out += self._bye(cseq)
            return out + "</scenario>\n"
        if self.bye_right_after_202:
            out += self._bye(3, tolerate_notify=self.answer_notify_481_after_bye)
            if self.answer_notify_481_after_bye:
                out += self._late_notify_481()
            return out + "</scenario>\n"
        if self.follow_notifies:
            out += self._notify_loop()
        if self.hold_ms:
            out += f'  <pause milliseconds="{self.hold_ms}"/>\n'
        cseq = 3
        if self.reinvite_after:
            out += _send(_with_sdp(self._in_dialog("INVITE", cseq, "")), retrans=True)
            out += '  <recv response="100" optional="true"/>\n  <recv response="200"/>\n'
            out += self._ack(cseq)
            cseq += 1
        out += self._bye(cseq)
        return out + "</scenario>\n"

    def _in_dialog(self, method: str, cseq: int, headers: str) -> str:
        return f"""
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:andrew@[remote_ip]>;tag=[pid]andrew[call_number]
To: <sip:{self.callee}@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:andrew@[local_ip]:[local_port]>
Max-Forwards: 70
{headers}
""".rstrip()

    def _ack(self, cseq: int) -> str:
        return _send(self._in_dialog("ACK", cseq, "") + "\nContent-Length: 0")

    def _ack_negative_refer_is_not_needed(self) -> str:
        return ""  # a non-INVITE transaction has no ACK

    def _notify_loop(self, most: int = 6) -> str:
        """Answer NOTIFYs until one says Subscription-State: terminated (unrolled: SIPp
        handles forward jumps only reliably)."""
        out = ""
        for i in range(most):
            out += (
                '  <recv request="NOTIFY">\n    <action><ereg regexp="terminated" search_in="hdr"'
                f' header="Subscription-State:" check_it="false" assign_to="term{i}"/></action>\n'
                "  </recv>\n"
                + _reply("200 OK", to_tag=False)
                + f'  <nop next="notified" test="term{i}"/>\n'
            )
        return out + '  <label id="notified"/>\n'

    def _bye(self, cseq: int, tolerate_notify: bool = False) -> str:
        out = _send(self._in_dialog("BYE", cseq, "") + "\nContent-Length: 0", retrans=True)
        if tolerate_notify:
            out += '  <recv request="NOTIFY" optional="true" next="late_notify"/>\n'
        out += '  <recv response="200"/>\n'
        return out

    def _late_notify_481(self) -> str:
        """One NOTIFY for the dialog he left, before or after the BYE's 200: 481 (RFC 6665:
        the subscription ended with the dialog)."""
        return (
            '  <recv request="NOTIFY"/>\n'
            + _reply("481 Call/Transaction Does Not Exist", to_tag=False)
            + '  <nop next="end"/>\n  <label id="late_notify"/>\n'
            + _reply("481 Call/Transaction Does Not Exist", to_tag=False)
            + '  <recv response="200"/>\n  <label id="end"/>\n'
        )


@dataclass
class McKenzie:
    """The transferee: answers Andrew, accepts his REFER and calls the target through the
    proxy, reporting the target's progress back in NOTIFYs (RFC 3515)."""

    target: str = "sip:marsha@[remote_ip]:[remote_port]"
    target_final: int = 200  # what Marsha will answer (200, 404, 486 ...)
    notify: bool = True  # False: a transferee that answers 202 and never NOTIFYs
    call_target: bool = True
    echo_nosub: bool = False
    refer_reply: int = 202
    expect_reinvite: bool = False
    expect_refer: bool = True
    # Andrew hangs up right after her 2xx: take his BYE before anything else, then NOTIFY
    # once (he answers 481, which ends the subscription, RFC 6665) and call the target.
    bye_after_2xx: bool = False
    # A broken transferee: its first NOTIFY carries this body as its message/sipfrag; the
    # proxy answers it `bad_notify_reply` and the transfer goes on with proper NOTIFYs.
    bad_notify_body: str | None = None
    bad_notify_reply: int = 400
    # False: a transferee that never sends the final NOTIFY (its subscription left open)
    final_notify: bool = True

    def xml(self) -> str:
        out = HEAD + '<scenario name="mckenzie transferee">\n'
        out += _me("mckenzie")
        out += (
            '  <recv request="INVITE" rrs="true">\n    <action>\n'
            '      <ereg regexp=";tag=([^;> \\r\\n]+)" search_in="hdr" header="From:"'
            ' assign_to="x,atag"/>\n'
            "    </action>\n  </recv>\n"
            # SIPp refuses a variable used once: the whole-match slot is "used" here.
            '  <nop><action><log message="andrew tag [$x]"/></action></nop>\n'
            # Variants without NOTIFYs never use it: declared referenced for SIPp.
            '  <Reference variables="atag"/>\n'
        )
        out += _reply("180 Ringing")
        out += _send(_reply_sdp("200 OK", to_tag=True), retrans=True)
        out += '  <recv request="ACK"/>\n'
        if not self.expect_refer:
            out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
            return out + "</scenario>\n"
        out += (
            '  <recv request="REFER">\n    <action>\n'
            '      <ereg regexp=".*" search_in="hdr" header="Referred-By:" check_it="false"'
            ' assign_to="rby"/>\n'
            "    </action>\n  </recv>\n"
            '  <Reference variables="rby"/>\n'  # unused when she does not call the target
        )
        nosub = "Refer-Sub: false" if self.echo_nosub else ""
        reason = {202: "Accepted", 200: "OK", 603: "Decline", 403: "Forbidden"}.get(
            self.refer_reply, "X"
        )
        out += _reply(f"{self.refer_reply} {reason}", nosub, to_tag=False)
        if self.refer_reply >= 300:
            out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
            return out + "</scenario>\n"
        if self.bye_after_2xx:
            out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
        cseq = 1
        if self.bad_notify_body is not None:
            out += self._notify(
                cseq, "", "active;expires=60", body=self.bad_notify_body,
                expect=self.bad_notify_reply,
            )
            cseq += 1
        if self.notify:
            out += self._notify(
                cseq, "100 Trying", "active;expires=60", expect=481 if self.bye_after_2xx else 200
            )
            cseq += 1
        keep_notifying = self.notify and not self.bye_after_2xx
        if self.call_target:
            out += _send(
                _with_sdp(
                    f"""
INVITE {self.target} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
To: <{self.target}>
Call-ID: xfer///[call_id]
CSeq: 1 INVITE
Contact: <sip:mckenzie@[local_ip]:[local_port]>
Referred-By: [$rby]
Max-Forwards: 70
"""
                ),
                retrans=True,
            )
            out += '  <recv response="100" optional="true"/>\n  <recv response="180"/>\n'
            if keep_notifying:
                out += self._notify(cseq, "180 Ringing", "active;expires=60")
                cseq += 1
            if self.target_final < 300:
                out += (
                    f'  <recv response="{self.target_final}">\n    <action>\n'
                    '      <ereg regexp="&lt;([^&gt;]+)&gt;" search_in="hdr" header="Contact:"'
                    ' assign_to="x,mcontact"/>\n'
                    '      <ereg regexp=".*" search_in="hdr" header="Record-Route:"'
                    ' check_it="false" assign_to="mrr"/>\n'
                    '      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="mto"/>\n'
                    "    </action>\n  </recv>\n"
                )
                out += _send(self._xfer_request("ACK", 1))
            else:
                out += f'  <recv response="{self.target_final}"/>\n'
                out += _send(
                    """
ACK {target} SIP/2.0
[last_Via:]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
[last_To:]
Call-ID: xfer///[call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
""".replace("{target}", self.target)
                )
            if keep_notifying and self.final_notify:
                out += self._notify(
                    cseq, f"{self.target_final} {_phrase(self.target_final)}",
                    "terminated;reason=noresource",
                )
                cseq += 1
        if self.expect_reinvite:
            out += '  <recv request="INVITE"/>\n'
            out += _send(_reply_sdp("200 OK", to_tag=False), retrans=True)
            out += '  <recv request="ACK"/>\n'
        if not self.bye_after_2xx:
            out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
        if self.call_target and self.target_final < 300:
            out += _send(self._xfer_request("BYE", 2), retrans=True)
            out += '  <recv response="200"/>\n'
        return out + "</scenario>\n"

    def _notify(
        self, cseq: int, sipfrag: str, state: str, body: str | None = None, expect: int = 200
    ) -> str:
        body = f"SIP/2.0 {sipfrag}" if body is None else body
        return _send(
            f"""
NOTIFY [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]SIPpTag01[call_number]
To: <sip:andrew@[remote_ip]>;tag=[$atag]
Call-ID: [call_id]
CSeq: {cseq} NOTIFY
Contact: <sip:mckenzie@[local_ip]:[local_port]>
Event: refer
Subscription-State: {state}
Max-Forwards: 70
Content-Type: message/sipfrag;version=2.0
Content-Length: [len]

{body}
""",
            retrans=True,
        ) + f'  <recv response="{expect}"/>\n'

    def _xfer_request(self, method: str, cseq: int) -> str:
        return f"""
{method} [$mcontact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Route: [$mrr]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
To: [$mto]
Call-ID: xfer///[call_id]
CSeq: {cseq} {method}
Max-Forwards: 70
Content-Length: 0
"""


@dataclass
class Marsha:
    """The target: rings, then answers `final` (200, or a failure such as 404/486)."""

    final: int = 200
    ring_ms: int = 300

    def xml(self) -> str:
        out = HEAD + '<scenario name="marsha target">\n'
        out += _me("marsha")
        out += '  <recv request="INVITE"/>\n'
        out += _reply("180 Ringing")
        # Ring a while, as a person would (and so the transferee's NOTIFY for the 180 is
        # answered before the final response arrives: SIPp matches responses by Call-ID).
        out += f'  <pause milliseconds="{self.ring_ms}"/>\n'
        if self.final < 300:
            out += _send(_reply_sdp("200 OK", to_tag=True), retrans=True)
            out += '  <recv request="ACK"/>\n  <recv request="BYE"/>\n'
            out += _reply("200 OK", to_tag=False)
        else:
            out += _reply(f"{self.final} {_phrase(self.final)}")
            out += '  <recv request="ACK"/>\n'
        return out + "</scenario>\n"


def _me(name: str) -> str:
    """The scenario's global $me (the user part of its Contact)."""
    return (
        '  <Global variables="me"/>\n'
        f'  <nop><action><assignstr assign_to="me" value="{name}"/></action></nop>\n'
    )


def _phrase(code: int) -> str:
    return {200: "OK", 404: "Not Found", 486: "Busy Here", 480: "Temporarily Unavailable",
            408: "Request Timeout", 603: "Decline"}.get(code, "Failed")


def _reply_sdp(code: str, to_tag: bool) -> str:
    return _with_sdp(_reply_head(code, to_tag))


def write(path: Path, xml: str) -> Path:
    path.write_text(xml)
    return path
