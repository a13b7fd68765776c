"""SIPp parties for attended-transfer checks (RFC 3891): plain calls whose Call-ID and
tags the test knows in advance, and a party that sends an INVITE with Replaces naming
one of them.

A caller's Call-ID is fixed through SIPp's ``-cid_str`` (SIPp maps messages to its call
by Call-ID, so a literal one in the scenario would not be recognised); the tags are
literals.  Everything goes through the proxy (SIPp's remote address), in-dialog requests
along the route set learnt from Record-Route.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from kemi.cli.demo.phones import HEAD, SDP, _send, _with_sdp


def cid_args(prefix: str) -> tuple[tuple[str, ...], str]:
    """SIPp arguments making the (one) call's Call-ID known, and that Call-ID."""
    return ("-cid_str", f"{prefix}-%u"), f"{prefix}-1"


@dataclass
class Caller:
    """Calls `callee`, stays `hold_ms`, maybe sends one in-dialog REFER, then hangs up."""

    me: str
    callee: str
    tag: str
    hold_ms: int = 0
    refer_to: str | None = None  # a REFER's Refer-To, sent once the call is up
    expect_refer: int = 202

    def xml(self) -> str:
        out = HEAD + f'<scenario name="{self.me} calls {self.callee}">\n'
        out += _send(
            _with_sdp(
                f"""
INVITE sip:{self.callee}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag={self.tag}
To: <sip:{self.callee}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Max-Forwards: 70
"""
            ),
            retrans=True,
        )
        out += '  <recv response="100" optional="true"/>\n'
        out += '  <recv response="180" optional="true"/>\n'
        out += '  <recv response="200" rrs="true"/>\n'
        out += _send(self._in_dialog("ACK", 1, "") + "\nContent-Length: 0")
        # Kamailio's UDP workers may relay two requests sent back to back in either
        # order: the callee expects the ACK before anything else.
        out += '  <pause milliseconds="200"/>\n'
        cseq = 2
        if self.refer_to is not None:
            out += _send(
                self._in_dialog("REFER", cseq, f"Refer-To: {self.refer_to}")
                + "\nContent-Length: 0",
                retrans=True,
            )
            out += '  <recv response="100" optional="true"/>\n'
            out += f'  <recv response="{self.expect_refer}"/>\n'
            cseq += 1
        if self.hold_ms:
            out += f'  <pause milliseconds="{self.hold_ms}"/>\n'
        out += _send(self._in_dialog("BYE", cseq, "") + "\nContent-Length: 0", retrans=True)
        out += '  <recv response="200"/>\n'
        return out + "</scenario>\n"

    def _in_dialog(self, method: str, cseq: int, headers: str) -> str:
        return f"""
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:{self.me}@[remote_ip]>;tag={self.tag}
To: <sip:{self.callee}@[remote_ip]>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Max-Forwards: 70
{headers}
""".rstrip()


@dataclass
class Callee:
    """Rings, answers with To-tag `tag`, waits for the caller's BYE."""

    me: str
    tag: str

    def xml(self) -> str:
        out = HEAD + f'<scenario name="{self.me} answers">\n'
        out += '  <recv request="INVITE"/>\n'
        out += _reply("180 Ringing", self.me, self.tag)
        # Kamailio's UDP workers may relay a 180 and a 200 sent back to back in either
        # order, and a caller that sees the 180 after the 200 aborts: leave a gap.
        out += '  <pause milliseconds="50"/>\n'
        out += _reply("200 OK", self.me, self.tag, sdp=True)
        out += '  <recv request="ACK"/>\n  <recv request="BYE"/>\n'
        out += _reply("200 OK", self.me, "", tagged=False)
        return out + "</scenario>\n"


@dataclass
class Replacer:
    """Sends `target` an INVITE with `Replaces: <replaces>` and expects `expect` (>= 300)
    from the proxy, then ACKs it."""

    me: str
    target: str
    replaces: str
    expect: int
    # The quirk of ua-quirks.md: the Replaces pasted into the Request-URI (escaped, with
    # Require=replaces), no Replaces header.
    in_ruri: bool = False

    def xml(self) -> str:
        out = HEAD + f'<scenario name="{self.me} replaces">\n'
        ruri = f"sip:{self.target}@[remote_ip]:[remote_port]"
        header = f"\nReplaces: {self.replaces}\nRequire: replaces"
        if self.in_ruri:
            ruri += "?Require=replaces&Replaces=" + quote(self.replaces, safe="")
            header = ""
        out += _send(
            _with_sdp(
                f"""
INVITE {ruri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]{self.me}[call_number]
To: <sip:{self.target}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{self.me}@[local_ip]:[local_port]>{header}
Max-Forwards: 70
"""
            ),
            retrans=True,
        )
        out += '  <recv response="100" optional="true"/>\n'
        out += f'  <recv response="{self.expect}"/>\n'
        out += _send(
            f"""
ACK sip:{self.target}@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]{self.me}[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
"""
        )
        return out + "</scenario>\n"


def _reply(status: str, me: str, tag: str, sdp: bool = False, tagged: bool = True) -> str:
    to = f"[last_To:];tag={tag}" if tagged else "[last_To:]"
    head = f"""
SIP/2.0 {status}
[last_Via:]
[last_From:]
{to}
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:{me}@[local_ip]:[local_port]>
"""
    if sdp:
        return _send(head.strip() + "\nContent-Type: application/sdp\nContent-Length: [len]\n\n"
                     + SDP, retrans=True)
    return _send(head.strip() + "\nContent-Length: 0")
