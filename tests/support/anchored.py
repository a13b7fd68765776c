"""SIPp parties for anchored transfers: "Asterisk" calls the customer PBX "A" through the
proxy (record-routed), A REFERs Asterisk inside that dialog, and Asterisk later sends its
own in-dialog requests (session-timer UPDATE, BYE) to A.

The test stands in for the Asterisk side's controller (reads the MoveJob, writes
Progress) and tells the Asterisk party when to go on with a UDP "INFO" sent straight to
it (SIPp maps it to the call by its Call-ID, fixed with -cid_str).

A is strict about CSeq as pjsip is (the recording h-proxy-notify-cseq-collision): every
request it receives in Asterisk's direction must carry a CSeq above the one before, or
it answers ``500 Invalid CSeq`` and its scenario fails.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

from kemi.cli.demo.phones import HEAD, _reply, _reply_sdp, _send, _with_sdp
from tests.support.order_scenarios import _answer, _capture

ASTERISK_CSEQ = 4711  # Asterisk's first CSeq in its dialog with A (random in real life)
A_CSEQ = 20  # A's own numbering of its requests to Asterisk


def cid_args(prefix: str) -> tuple[tuple[str, ...], str]:
    return ("-cid_str", f"{prefix}-%u"), f"{prefix}-1"


def _strict_recv(method: str, i: int, extra_actions: str = "") -> str:
    """Receive `method` from Asterisk's direction as request number i (i >= 1): its CSeq
    must be above request i-1's (0 is Asterisk's INVITE), else 500 and the call fails."""
    return (
        f'  <recv request="{method}">\n    <action>\n'
        f'      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cs{i}"/>\n'
        f'      <todouble assign_to="csd{i}" variable="cs{i}"/>\n'
        f'      <test assign_to="bad{i}" variable="csd{i}" compare="less_than_equal"'
        f' variable2="csd{i - 1}"/>\n'
        f"{extra_actions}"
        "    </action>\n  </recv>\n"
        f'  <nop next="badcseq" test="bad{i}"/>\n'
    )


@dataclass
class PbxA:
    """The transferor: a customer PBX answering Asterisk's call, then REFERring it."""

    asterisk_uri: str  # Asterisk's From URI, e.g. sip:asterisk@127.0.0.1:5062
    refer_to: str = "<sip:2000@127.0.0.1>"
    refer_sub_false: bool = False
    expect_refer: int = 202
    notifies: int = 3  # NOTIFYs expected (100, 180, final) before Asterisk's requests
    then: list[str] = field(default_factory=lambda: ["UPDATE", "BYE"])  # from Asterisk
    bye_after_refer: bool = False  # A hangs up itself after the REFER's answer
    notify_481_at: int | None = None  # answer this NOTIFY (1-based) 481 and expect no more
    # The NOTIFYs come back to back (Asterisk's relayed path): read them all, each CSeq
    # above the one before, then answer each (SIPp cannot take a message while it is
    # about to send one; tests.support.order_scenarios).
    burst: bool = False

    def xml(self) -> str:
        out = HEAD + '<scenario name="pbx A (transferor)">\n'
        out += (
            '  <Global variables="me"/>\n'
            '  <nop><action><assignstr assign_to="me" value="pbxa"/></action></nop>\n'
            '  <recv request="INVITE" rrs="true">\n    <action>\n'
            '      <ereg regexp=";tag=([^;> \\r\\n]+)" search_in="hdr" header="From:"'
            ' assign_to="x,atag"/>\n'
            '      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cs0"/>\n'
            '      <todouble assign_to="csd0" variable="cs0"/>\n'
            "    </action>\n  </recv>\n"
            '  <nop><action><log message="asterisk tag [$x] [$atag]"/></action></nop>\n'
        )
        out += _reply("180 Ringing")
        out += _send(_reply_sdp("200 OK", to_tag=True), retrans=True)
        out += '  <recv request="ACK"/>\n  <pause milliseconds="100"/>\n'
        headers = [f"Refer-To: {self.refer_to}", "Referred-By: <sip:pbxa@127.0.0.1>"]
        if self.refer_sub_false:
            headers.append("Refer-Sub: false")
        out += _send(self._in_dialog("REFER", A_CSEQ, headers), retrans=True)
        out += '  <recv response="100" optional="true"/>\n'
        out += f'  <recv response="{self.expect_refer}"/>\n'
        i = 1
        for n in range(1, self.notifies + 1):
            answer = "481 Subscription Does Not Exist" if n == self.notify_481_at else "200 OK"
            if self.burst:
                out += _strict_recv("NOTIFY", i, _capture(i))
            else:
                out += _strict_recv("NOTIFY", i) + _reply(answer, to_tag=False)
            i += 1
        if self.burst:
            for n in range(1, self.notifies + 1):
                if n > 1:  # the answers reach Asterisk in this order too
                    out += '  <pause milliseconds="20"/>\n'
                out += _answer(n, "481 Subscription Does Not Exist"
                               if n == self.notify_481_at else "200 OK")
        if self.bye_after_refer:
            out += _send(self._in_dialog("BYE", A_CSEQ + 1, []), retrans=True)
            out += '  <recv response="200"/>\n'
        for method in self.then:
            if method == "INVITE":  # a re-INVITE: its ACK must carry the INVITE's number
                out += _strict_recv(method, i)
                out += _send(_reply_sdp("200 OK", to_tag=False), retrans=True)
                out += (
                    '  <recv request="ACK">\n    <action>\n'
                    f'      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:"'
                    f' assign_to="ack{i}"/>\n'
                    f'      <todouble assign_to="ackd{i}" variable="ack{i}"/>\n'
                    f'      <test assign_to="acklo{i}" variable="ackd{i}" compare="less_than"'
                    f' variable2="csd{i}"/>\n'
                    f'      <test assign_to="ackhi{i}" variable="ackd{i}"'
                    f' compare="greater_than" variable2="csd{i}"/>\n'
                    "    </action>\n  </recv>\n"
                    f'  <nop next="badcseq" test="acklo{i}"/>\n'
                    f'  <nop next="badcseq" test="ackhi{i}"/>\n'
                )
            else:
                out += _strict_recv(method, i) + _reply("200 OK", to_tag=False)
            i += 1
        out += '  <nop next="end"/>\n'
        out += '  <label id="badcseq"/>\n' + _reply("500 Invalid CSeq", to_tag=False)
        # Fail the call: nothing ever answers this.
        out += '  <recv request="NEVER" timeout="100"/>\n'
        out += '  <label id="end"/>\n'
        out += '  <Reference variables="x,csd0"/>\n'
        return out + "</scenario>\n"

    def _in_dialog(self, method: str, cseq: int, headers: list[str]) -> str:
        extra = "\n".join(headers)
        return f"""
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:pbxa@[remote_ip]>;tag=[pid]SIPpTag01[call_number]
To: <{self.asterisk_uri}>;tag=[$atag]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:pbxa@[local_ip]:[local_port]>
Max-Forwards: 70
{extra}
Content-Length: 0
"""


@dataclass
class Asterisk:
    """Asterisk's side of the anchored dialog: calls A through the proxy, then either
    takes a REFER (relay mode) or waits for the test's go and sends `then` to A."""

    wait_for_go: bool = True
    then: list[str] = field(default_factory=lambda: ["UPDATE", "BYE"])
    expect_refer: bool = False  # relay mode: the REFER reaches Asterisk
    expect_bye: bool = False  # A hangs up instead
    # Relay mode: the NOTIFYs Asterisk sends after its 202 (sipfrag status lines, the
    # last one terminated), back to back as res_pjsip_refer does (same millisecond), in
    # its own format: "Event: refer" without id, From P's identity.
    notify: list[str] = field(default_factory=list)
    # The NOTIFYs' Request-URI.  "[$acontact]" is A's Contact; with pjsip's
    # rewrite_contact = yes it is the address A's 200 came from: the proxy itself
    # ("sip:pbxa@[remote_ip]:[remote_port]").
    notify_ruri: str = "[$acontact]"
    notify_answers: tuple[int, ...] = ()  # what A answers each NOTIFY (default: 200s)

    def xml(self) -> str:
        out = HEAD + '<scenario name="asterisk (anchor)">\n'
        out += (
            '  <Global variables="me"/>\n'
            '  <nop><action><assignstr assign_to="me" value="asterisk"/></action></nop>\n'
            '  <Reference variables="me"/>\n'  # used only by the variants that reply
        )
        out += _send(
            _with_sdp(
                f"""
INVITE sip:pbxa@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:asterisk@[local_ip]:[local_port]>;tag=[pid]ast[call_number]
To: <sip:pbxa@[remote_ip]>
Call-ID: [call_id]
CSeq: {ASTERISK_CSEQ} INVITE
Contact: <sip:asterisk@[local_ip]:[local_port]>
Session-Expires: 1800
Max-Forwards: 70
"""
            ),
            retrans=True,
        )
        out += '  <recv response="100" optional="true"/>\n'
        out += '  <recv response="180" optional="true"/>\n'
        out += (
            '  <recv response="200" rrs="true">\n    <action>\n'
            '      <ereg regexp=";tag=([^;> \\r\\n]+)" search_in="hdr" header="To:"'
            ' assign_to="x,ptag"/>\n'
            '      <ereg regexp="&lt;([^&gt;]+)&gt;" search_in="hdr" header="Contact:"'
            ' assign_to="y,acontact"/>\n'
            "    </action>\n  </recv>\n"
            '  <Reference variables="x,y"/>\n'
        )
        out += _send(self._in_dialog("ACK", ASTERISK_CSEQ))
        if self.expect_refer:
            out += '  <recv request="REFER"/>\n'
            out += _reply("202 Accepted", to_tag=False)
            if self.notify:
                out += self._notifies()
            else:
                # Let the 202 reach A before anything else (the proxy records it).
                out += '  <pause milliseconds="300"/>\n'
        if self.wait_for_go:
            out += '  <recv request="INFO"/>\n'
        if self.expect_bye:
            out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
        cseq = ASTERISK_CSEQ + len(self.notify)
        for method in self.then:
            cseq += 1
            if method == "INVITE":
                out += _send(_with_sdp(self._in_dialog(method, cseq, body=True)), retrans=True)
                out += '  <recv response="100" optional="true"/>\n  <recv response="200"/>\n'
                out += _send(self._in_dialog("ACK", cseq))
                continue
            out += _send(self._in_dialog(method, cseq), retrans=True)
            out += '  <recv response="200"/>\n'
        return out + "</scenario>\n"

    def _notifies(self) -> str:
        out = ""
        last = len(self.notify) - 1
        for n, frag in enumerate(self.notify):
            state = "terminated;reason=noresource" if n == last else "active;expires=599"
            body = f"SIP/2.0 {frag}\r\n"
            head = self._headers("NOTIFY", ASTERISK_CSEQ + 1 + n).replace(
                "[$acontact]", self.notify_ruri, 1)
            out += _send(
                head.strip() + "\nEvent: refer\n"
                f"Subscription-State: {state}\n"
                "Content-Type: message/sipfrag;version=2.0\n"
                f"Content-Length: {len(body)}\n\n{body}",
                retrans=n == last)
        for n, _ in enumerate(self.notify):
            code = self.notify_answers[n] if self.notify_answers else 200
            out += f'  <recv response="{code}"/>\n'
        return out

    def _in_dialog(self, method: str, cseq: int, body: bool = False) -> str:
        text = self._headers(method, cseq)
        return text if body else text + "Content-Length: 0\n"

    def _headers(self, method: str, cseq: int) -> str:
        return f"""
{method} [$acontact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:asterisk@[local_ip]:[local_port]>;tag=[pid]ast[call_number]
To: <sip:pbxa@[remote_ip]>;tag=[$ptag]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:asterisk@[local_ip]:[local_port]>
Max-Forwards: 70
"""


def go(port: int, call_id: str) -> None:
    """Tell the Asterisk party to go on: an INFO in its call, straight to its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        lp = s.getsockname()[1]
        msg = (
            f"INFO sip:asterisk@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:test@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:asterisk@127.0.0.1:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), ("127.0.0.1", port))
