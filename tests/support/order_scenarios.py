"""SIPp parties for the ordering tests: a transferee that sends in bursts and a transferor
that fails on anything out of order.

McKenzie (BurstTransferee) sends her 202 and her first NOTIFY in the same millisecond,
and, once Marsha has answered, the NOTIFYs for 180 and for the final response in the same
millisecond too (without waiting for the first one's 200).  Andrew (StrictTransferor) is
what linphone and pjsip are: a NOTIFY that reaches him before the 202 of his REFER is
refused `491 Request Pending` (linphone), NOTIFYs whose sipfrags do not come as 100, then
18x, then the final are refused `500 Invalid CSeq` (pjsip answers an older CSeq so);
either fails his SIPp call, so the failed calls are the transfers whose order the proxy
broke.  Each SIPp process runs many calls.

SIPp aborts a call that receives a message while it is about to send, so Andrew reads the
two NOTIFYs of the second burst before answering either, and answers each from headers
captured from that very NOTIFY ([last_*] would name the second one for both).
"""

from __future__ import annotations

from dataclasses import dataclass

from kemi.cli.demo.phones import HEAD, _me, _phrase, _reply, _reply_sdp, _send, _with_sdp


def _capture(n: int) -> str:
    """Actions keeping what an answer to this NOTIFY needs, in variables suffixed n."""
    return "".join(
        f'      <ereg regexp=".*" search_in="hdr" header="{h}:"{occ} assign_to="{v}{n}"/>\n'
        for h, occ, v in (
            ("Via", ' occurrence="1"', "via1_"), ("Via", ' occurrence="2"', "via2_"),
            ("From", "", "from_"), ("To", "", "to_"), ("Call-ID", "", "cid_"),
            ("CSeq", "", "cseq_"),
        )
    )


def _recv_notify(n: int, sipfrag: str | None = None, optional: str = "") -> str:
    """Receive a NOTIFY; `sipfrag` (a regexp of the status code) sets in_order<n>."""
    check = "" if sipfrag is None else (
        f'      <ereg regexp="^SIP/2.0 {sipfrag} " search_in="body" check_it="false"'
        f' assign_to="in_order{n}"/>\n'
    )
    opt = f' optional="true" next="{optional}"' if optional else ""
    return (f'  <recv request="NOTIFY"{opt}>\n    <action>\n{check}{_capture(n)}'
            "    </action>\n  </recv>\n")


def _answer(n: int, code: str) -> str:
    return _send(f"""
SIP/2.0 {code}
Via:[$via1_{n}]
Via:[$via2_{n}]
From:[$from_{n}]
To:[$to_{n}]
Call-ID:[$cid_{n}]
CSeq:[$cseq_{n}]
Content-Length: 0
""")


def _fail(label: str, answers: str) -> str:
    """Answer out-of-order NOTIFYs as a strict UA would, then fail this SIPp call."""
    return (
        f'  <label id="{label}"/>\n' + answers
        + '  <recv request="NEVER" timeout="100"/>\n'  # no ontimeout: the call fails
    )


@dataclass
class StrictTransferor:
    callee: str = "mckenzie"
    target: str = "marsha"
    final: int = 200

    def call_and_refer(self, name: str) -> str:
        """The scenario's start: call the transferee, then REFER it to the target."""
        out = HEAD + f'<scenario name="{name}">\n' + _me("andrew")
        out += _send(_with_sdp(self._request("INVITE", 1, initial=True)), retrans=True)
        out += '  <recv response="100" optional="true"/>\n'
        out += '  <recv response="180" optional="true"/>\n'
        out += '  <recv response="200" rrs="true"/>\n'
        out += _send(self._request("ACK", 1) + "\nContent-Length: 0")
        out += '  <pause milliseconds="50"/>\n'
        refer = (
            f"Refer-To: <sip:{self.target}@[remote_ip]:[remote_port]>\n"
            "Referred-By: <sip:andrew@[remote_ip]>\nContent-Length: 0"
        )
        return out + _send(self._request("REFER", 2) + "\n" + refer, retrans=True)

    def xml(self) -> str:
        out = self.call_and_refer("strict transferor")
        out += _recv_notify(9, optional="before_202")
        out += '  <recv response="100" optional="true"/>\n'
        out += '  <recv response="202"/>\n'
        out += _recv_notify(0, "100")
        out += '  <nop next="ok0" test="in_order0"/>\n  <nop next="first_wrong"/>\n'
        out += '  <label id="ok0"/>\n' + _answer(0, "200 OK")
        out += _recv_notify(1, "18[0-9]") + _recv_notify(2, str(self.final))
        out += '  <nop next="ok1" test="in_order1"/>\n  <nop next="swapped"/>\n'
        out += '  <label id="ok1"/>\n'
        out += '  <nop next="ok2" test="in_order2"/>\n  <nop next="swapped"/>\n'
        out += '  <label id="ok2"/>\n' + _answer(1, "200 OK") + _answer(2, "200 OK")
        out += '  <pause milliseconds="50"/>\n'
        out += _send(self._request("BYE", 3) + "\nContent-Length: 0", retrans=True)
        out += '  <recv response="200"/>\n'
        out += '  <nop next="end"/>\n'
        out += _fail("before_202", _answer(9, "491 Request Pending"))
        out += _fail("first_wrong", _answer(0, "500 Invalid CSeq"))
        out += _fail("swapped", _answer(2, "200 OK") + _answer(1, "500 Invalid CSeq"))
        out += '  <label id="end"/>\n'
        return out + "</scenario>\n"

    def _request(self, method: str, cseq: int, initial: bool = False) -> str:
        uri = f"sip:{self.callee}@[remote_ip]:[remote_port]" if initial else "[next_url]"
        lines = [
            f"{method} {uri} SIP/2.0",
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
            *([] if initial else ["[routes]"]),
            "From: <sip:andrew@[remote_ip]>;tag=[pid]andrew[call_number]",
            f"To: <sip:{self.callee}@[remote_ip]>" + ("" if initial else "[peer_tag_param]"),
            "Call-ID: [call_id]",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:andrew@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
        ]
        return "\n".join(lines)


@dataclass
class BurstTransferee:
    """Answers Andrew, accepts the REFER with 202 + NOTIFY 100 sent together, calls the
    target, and reports 180 and the final response in two NOTIFYs sent together."""

    target: str = "marsha"
    target_final: int = 200

    def xml(self) -> str:
        out = HEAD + '<scenario name="burst transferee">\n' + _me("mckenzie")
        out += (
            '  <recv request="INVITE" rrs="true">\n    <action>\n'
            '      <ereg regexp=";tag=([^;> \\r\\n]+)" search_in="hdr" header="From:"'
            ' assign_to="x,atag"/>\n'
            "    </action>\n  </recv>\n"
            '  <nop><action><log message="andrew tag [$x]"/></action></nop>\n'
        )
        out += _send(_reply_sdp("200 OK", to_tag=True), retrans=True)
        out += '  <recv request="ACK"/>\n'
        out += (
            '  <recv request="REFER">\n    <action>\n'
            '      <ereg regexp=".*" search_in="hdr" header="Referred-By:" check_it="false"'
            ' assign_to="rby"/>\n'
            "    </action>\n  </recv>\n"
        )
        out += _reply("202 Accepted", to_tag=False)
        out += self._notify(1, "100 Trying", "active;expires=60")
        out += '  <recv response="200"/>\n'
        target = f"sip:{self.target}@[remote_ip]:[remote_port]"
        out += _send(_with_sdp(f"""
INVITE {target} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
To: <{target}>
Call-ID: xfer///[call_id]
CSeq: 1 INVITE
Contact: <sip:mckenzie@[local_ip]:[local_port]>
Referred-By: [$rby]
Max-Forwards: 70
"""), retrans=True)
        out += '  <recv response="100" optional="true"/>\n  <recv response="180"/>\n'
        final = self.target_final
        if final < 300:  # the 2xx's ACK is end to end: to Marsha's Contact, by her route
            out += (
                f'  <recv response="{final}">\n    <action>\n'
                '      <ereg regexp="&lt;([^&gt;]+)&gt;" search_in="hdr" header="Contact:"'
                ' assign_to="x,mcontact"/>\n'
                '      <ereg regexp=".*" search_in="hdr" header="Record-Route:"'
                ' check_it="false" assign_to="mrr"/>\n'
                '      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="mto"/>\n'
                "    </action>\n  </recv>\n"
            )
            ack = """
ACK [$mcontact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Route: [$mrr]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
To: [$mto]
"""
        else:
            out += f'  <recv response="{final}"/>\n'
            ack = f"""
ACK {target} SIP/2.0
[last_Via:]
From: <sip:mckenzie@[remote_ip]>;tag=[pid]xfer[call_number]
[last_To:]
"""
        out += _send(ack.rstrip() + """
Call-ID: xfer///[call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
""")
        out += self._notify(2, "180 Ringing", "active;expires=60")
        out += self._notify(3, f"{final} {_phrase(final)}", "terminated;reason=noresource")
        out += '  <recv response="200"/>\n  <recv response="200"/>\n'
        out += '  <recv request="BYE"/>\n' + _reply("200 OK", to_tag=False)
        return out + "</scenario>\n"

    @staticmethod
    def _notify(cseq: int, sipfrag: str, state: str) -> str:
        return _send(f"""
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

SIP/2.0 {sipfrag}
""")  # no retransmission: the next one follows at once (loopback loses nothing)


@dataclass
class QuickTarget:
    """Marsha: rings and answers 20 ms later; she waits for the ACK and no more (the
    transferee's new call is left to expire: only the transfer's order is tested).  The
    gap is a real phone's: a 180 and a final response in the same millisecond may leave
    Kamailio in either order (its workers), and tm drops a 180 after the final -- that
    is Kamailio's own reply relaying, with or without referee."""

    final: int = 200

    def xml(self) -> str:
        out = HEAD + '<scenario name="quick target">\n' + _me("marsha")
        out += '  <recv request="INVITE"/>\n' + _reply("180 Ringing")
        out += '  <pause milliseconds="20"/>\n'
        if self.final < 300:
            out += _send(_reply_sdp("200 OK", to_tag=True), retrans=True)
        else:
            out += _reply(f"{self.final} {_phrase(self.final)}")
        out += '  <recv request="ACK"/>\n'
        return out + "</scenario>\n"


@dataclass
class PendingTransferor:
    """Andrew as linphone is while a transaction of his own is open: he answers the
    first `refusals` NOTIFYs he gets `491 Request Pending` -- referee's retries of the
    same NOTIFY included -- and takes the rest; he follows until the final NOTIFY."""

    refusals: int = 1
    callee: str = "mckenzie"
    target: str = "marsha"

    def xml(self) -> str:
        st = StrictTransferor(self.callee, self.target)
        out = st.call_and_refer("pending transferor")
        out += '  <recv response="100" optional="true"/>\n  <recv response="202"/>\n'
        for i in range(self.refusals):
            out += _recv_notify(10 + i) + _answer(10 + i, "491 Request Pending")
        for i in range(6):  # the rest, until one says terminated
            out += (
                '  <recv request="NOTIFY">\n    <action>\n'
                '      <ereg regexp="terminated" search_in="hdr" header="Subscription-State:"'
                f' check_it="false" assign_to="term{i}"/>\n' + _capture(20 + i)
                + "    </action>\n  </recv>\n" + _answer(20 + i, "200 OK")
                + f'  <nop next="done" test="term{i}"/>\n'
            )
        out += '  <label id="done"/>\n  <pause milliseconds="50"/>\n'
        out += _send(st._request("BYE", 3) + "\nContent-Length: 0", retrans=True)
        out += '  <recv response="200"/>\n'
        return out + "</scenario>\n"
