"""Our side of each third-party scenario: SIPp parties that stand where the scenario's
author had Asterisk (or jambonz, or siphon), behind the proxy.

A third-party scenario talks to its remote (the proxy) only, copies no Record-Route and
puts no Route in its in-dialog requests; it addresses them to a user at the proxy (the
example proxy routes those by location, RFC 3261 16.5).  So each party here:

* registers under the user name the third-party scenario puts in its Request-URIs;
* reaches the third-party party through the proxy: with the Record-Route it learnt when
  it answered the call, or, when it placed the call and the peer's 200 OK carried no
  Record-Route, with a Route to the proxy in front of the peer's Contact;
* plays the transferee or the transferor exactly as far as the scenario checks it, e.g.
  answers a REFER with 202 and sends the NOTIFYs whose sipfrags the scenario matches.

A flow is built step by step (`Party.calls(...).takes_refer().notify(...)...`) so each test
states, in its own words, what our side does.  The transferee's new call to the target
uses SIPp's `///` Call-ID convention (one SIPp process plays both of its dialogs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kemi.cli.demo.phones import HEAD, _send
from kemi.cli.demo.phones import _with_sdp as _sdp
from tests.support.siplog import SipMessage, sip_messages

PROXY_ROUTE = "Route: <sip:[remote_ip]:[remote_port];lr>"

PHRASES = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 481: "Subscription Does Not Exist",
    484: "Address Incomplete", 486: "Busy Here", 503: "Service Unavailable",
}


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&quot;")


def _contains(text: str) -> str:
    """An action checking the whole message contains `text` (the call fails otherwise)."""
    return (f'      <ereg regexp="{_xml(re.escape(text))}" search_in="msg" check_it="true"'
            ' assign_to="seen"/>\n')


def _ereg(header: str, regexp: str, assign_to: str) -> str:
    regexp = _xml(regexp)
    return (f'      <ereg regexp="{regexp}" search_in="hdr" header="{header}:"'
            f' check_it="true" assign_to="{assign_to}"/>\n')


def _reply(code: int, *, to_tag: str | None = None, sdp: bool = False, extra: str = "",
           retrans: bool = False) -> str:
    to = f"[last_To:];tag={to_tag}" if to_tag else "[last_To:]"
    head = f"""
SIP/2.0 {code} {PHRASES.get(code, "Whatever")}
[last_Via:]
[last_From:]
{to}
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:[$me]@[local_ip]:[local_port]>
{extra}
"""
    head = "\n".join(line for line in head.strip().splitlines() if line.strip())
    if sdp:
        return _send(_sdp(head), retrans=retrans)
    return _send(head + "\nContent-Length: 0", retrans=retrans)


@dataclass
class Party:
    """One SIPp party of ours; `me` is the user it is (From, Contact)."""

    me: str
    steps: list[str] = field(default_factory=list)
    cseq: int = 0  # our CSeq in the original dialog
    xfer_cseq: int = 0  # ... and in the transferee's dialog with the target
    _target: str = ""
    ruri: str = ""  # how we address the peer of the original call
    route: str = ""
    from_: str = ""
    to: str = ""
    _labels: int = 0
    # Global variables (shared by every SIPp call of the process): the flags one call
    # raises and another waits for (`raises`, `waits_for`).
    flags: list[str] = field(default_factory=list)

    def xml(self, name: str = "ours") -> str:
        body = "".join(self.steps)
        # SIPp refuses a variable that is set and never used: mark every one as used.
        names = sorted({v for group in re.findall(r'assign_to="([^"]+)"', body)
                        for v in group.split(",")} - {"me", *self.flags})
        refs = f'  <Reference variables="{",".join(names)}"/>\n' if names else ""
        shared = ",".join(["me", *self.flags])
        return (
            HEAD + f'<scenario name="{name}">\n  <Global variables="{shared}"/>\n'
            f'  <nop><action><assignstr assign_to="me" value="{self.me}"/></action></nop>\n'
            + body + refs + "</scenario>\n"
        )

    def _add(self, text: str) -> Party:
        self.steps.append(text)
        return self

    def _label(self) -> str:
        self._labels += 1
        return f"l{self._labels}"

    # -- the original call -------------------------------------------------------------
    def calls(self, user: str, *, peer_copies_rr: bool = False, sdp: bool = True) -> Party:
        """Call `user` at the proxy; take the 200's Contact (and Record-Route if the peer
        copies it) as the way to reach the peer in the dialog, then ACK."""
        self.cseq = 1
        invite = f"""
INVITE sip:{user}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]{self.me}[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Max-Forwards: 70
"""
        self._add(_send(_sdp(invite) if sdp else invite.strip() + "\nContent-Length: 0",
                        retrans=True))
        self._add('  <recv response="100" optional="true"/>\n'
                  '  <recv response="180" optional="true"/>\n'
                  '  <recv response="183" optional="true"/>\n')
        rrs = ' rrs="true"' if peer_copies_rr else ""
        self._add(f'  <recv response="200"{rrs}>\n    <action>\n'
                  + _ereg("Contact", r"sip:[^>;, \r\n]+", "peer_contact")
                  + _ereg("To", ";tag=([^;> \r\n]+)", "x,peer_tag")
                  + "    </action>\n  </recv>\n")
        self.ruri = "[$peer_contact]"
        self.route = "[routes]" if peer_copies_rr else PROXY_ROUTE
        self.from_ = f"<sip:{self.me}@[remote_ip]>;tag=[pid]{self.me}[call_number]"
        self.to = f"<sip:{user}@[remote_ip]>;tag=[$peer_tag]"
        return self._add(_send(self._request("ACK", 1) + "\nContent-Length: 0"))

    def answers(self, *, ring: bool = True) -> Party:
        """Answer the call the third-party party places to us (Record-Route learnt)."""
        self.cseq = 0
        self._add('  <recv request="INVITE" rrs="true">\n    <action>\n'
                  + _ereg("From", ".*", "peer_from") + _ereg("To", ".*", "inv_to")
                  + "    </action>\n  </recv>\n")
        tag = f"[pid]{self.me}[call_number]"
        if ring:
            self._add(_reply(180, to_tag=tag))
        self._add(_reply(200, to_tag=tag, sdp=True, retrans=True))
        self.ruri, self.route = "[next_url]", "[routes]"
        self.from_, self.to = f"[$inv_to];tag={tag}", "[$peer_from]"
        return self._add('  <recv request="ACK"/>\n')

    def _request(self, method: str, cseq: int, headers: str = "") -> str:
        return f"""
{method} {self.ruri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
{self.route}
From: {self.from_}
To: {self.to}
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Max-Forwards: 70
{headers}
""".strip()

    def takes_reinvite(self, *, ack: bool = True) -> Party:
        """Answer an in-dialog INVITE (the peer puts us on hold) and take its ACK (ack
        False: answer once and go on, the peer will not ACK)."""
        self._add('  <recv request="INVITE"/>\n')
        self._add(_reply(200, sdp=True, retrans=ack))
        return self._add('  <recv request="ACK"/>\n') if ack else self

    def takes_bye(self) -> Party:
        return self._add('  <recv request="BYE"/>\n' + _reply(200))

    def hangs_up(self, *, wait: bool = True) -> Party:
        self.cseq += 1
        self._add(_send(self._request("BYE", self.cseq) + "\nContent-Length: 0", retrans=wait))
        return self._add('  <recv response="200"/>\n') if wait else self

    def expects(self, code: int) -> Party:
        """The response to our last request (when something else came in between)."""
        return self._add(f'  <recv response="{code}"/>\n')

    def takes(self, method: str, code: int) -> Party:
        """Receive an out-of-dialog or in-dialog `method` and answer it `code`."""
        return self._add(f'  <recv request="{method}"/>\n' + _reply(code))

    def pause(self, ms: int) -> Party:
        return self._add(f'  <pause milliseconds="{ms}"/>\n')

    # -- transferee ----------------------------------------------------------------------
    def takes_refer(self, code: int = 202, *, sdp: bool = False, expect: str | None = None
                    ) -> Party:
        """Receive the REFER (keeping its Referred-By, and checking `expect` is in it) and
        answer it `code`."""
        check = _contains(expect) if expect else ""
        self._add('  <recv request="REFER">\n    <action>\n'
                  '      <ereg regexp=".*" search_in="hdr" header="Referred-By:"'
                  ' check_it="false" assign_to="rby"/>\n' + check + "    </action>\n  </recv>\n")
        self._add(_reply(code, sdp=sdp))
        # Give the 202 a head start: the proxy's workers could deliver a NOTIFY sent at
        # once before it (legal, RFC 3515; the third-party scenarios expect the 202 first).
        return self.pause(100) if code < 300 else self

    def notify(self, code: int, state: str = "active;expires=60", *, wait: bool | int = True
               ) -> Party:
        """A NOTIFY of the refer subscription with `SIP/2.0 <code> <phrase>`.  wait: True
        for the 200, False to go on at once (the peer never answers), or a response code
        that is also accepted (e.g. 481)."""
        self.cseq += 1
        body = f"SIP/2.0 {code} {PHRASES[code]}"
        self._add(_send(
            self._request("NOTIFY", self.cseq,
                          f"Event: refer\nSubscription-State: {state}\n"
                          "Content-Type: message/sipfrag;version=2.0\nContent-Length: [len]")
            + f"\n\n{body}",
            retrans=wait is not False,
        ))
        if wait is True:
            self._add('  <recv response="200"/>\n')
        elif wait is not False:
            done = self._label()
            self._add(f'  <recv response="200" optional="true" next="{done}"/>\n'
                      f'  <recv response="{wait}"/>\n  <label id="{done}"/>\n')
        return self

    def calls_target(self, uri: str, final: int | None = 200, *, ringing: int | None = 180,
                     notify_ringing: bool = False, give_up_ms: int | None = None) -> Party:
        """The transferee's new call to the Refer-To target, through the proxy, carrying
        the REFER's Referred-By.  notify_ringing: NOTIFY the 18x.  final None: the final
        response is taken later (`target_answers`).  give_up_ms: no answer is expected
        (an unreachable target): wait that long, then carry on."""
        self._target = uri
        self._add(_send(_sdp(f"""
INVITE {uri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]xfer[call_number]
To: <{uri}>
Call-ID: xfer///[call_id]
CSeq: 1 INVITE
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Referred-By: [$rby]
Max-Forwards: 70
"""), retrans=give_up_ms is None))
        if give_up_ms is not None:
            # The proxy's 100 Trying comes at once (tm); then nothing.
            return self._add('  <recv response="100"/>\n').pause(give_up_ms)
        self._add('  <recv response="100" optional="true"/>\n')
        if ringing:
            self._add(f'  <recv response="{ringing}"/>\n')
            if notify_ringing:
                self.notify(ringing)
        return self if final is None else self.target_answers(final)

    def target_answers(self, final: int = 200) -> Party:
        """The target's final response to the transferee's INVITE, and the ACK."""
        if final < 300:
            self._add(f'  <recv response="{final}">\n    <action>\n'
                      + _ereg("Contact", "<([^>]+)>", "x,tcontact")
                      + '      <ereg regexp=".*" search_in="hdr" header="Record-Route:"'
                      ' check_it="false" assign_to="trr"/>\n'
                      + _ereg("To", ".*", "tto") + "    </action>\n  </recv>\n")
            self.xfer_cseq = 1
            return self._add(_send(self._xfer("ACK", 1)))
        self._add(f'  <recv response="{final}"/>\n')
        return self._add(_send(f"""
ACK {self._target} SIP/2.0
[last_Via:]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]xfer[call_number]
[last_To:]
Call-ID: xfer///[call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
"""))

    def _xfer(self, method: str, cseq: int) -> str:
        return f"""
{method} [$tcontact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Route: [$trr]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]xfer[call_number]
To: [$tto]
Call-ID: xfer///[call_id]
CSeq: {cseq} {method}
Max-Forwards: 70
Content-Length: 0
"""

    def hangs_up_target(self) -> Party:
        self.xfer_cseq += 1
        self._add(_send(self._xfer("BYE", self.xfer_cseq), retrans=True))
        return self._add('  <recv response="200"/>\n')

    # -- transferor ----------------------------------------------------------------------
    def refers(self, refer_to: str, *, expect: int = 202, referred_by: str | None = None,
               notify: str | None = None) -> Party:
        """Send the REFER in the original dialog and expect `expect`.  notify: then one
        NOTIFY containing that text, which may come before the 202 (RFC 3515: the
        transferee's NOTIFY can overtake its 202 through the proxy's workers)."""
        self.cseq += 1
        headers = f"Refer-To: {refer_to}"
        if referred_by:
            headers += f"\nReferred-By: {referred_by}"
        self._add(_send(self._request("REFER", self.cseq, headers) + "\nContent-Length: 0",
                        retrans=True))
        self._add('  <recv response="100" optional="true"/>\n')
        if notify is None:
            return self._add(f'  <recv response="{expect}"/>\n')
        in_order, done = self._label(), self._label()
        self._add(f'  <recv response="{expect}" optional="true" next="{in_order}"/>\n')
        # The NOTIFY came first and the 202 is right behind it: SIPp would take a 202
        # arriving before our answer to the NOTIFY is sent as unexpected, so take the
        # 202 first and answer the NOTIFY from what we kept of it.
        self._add('  <recv request="NOTIFY">\n    <action>\n' + _contains(notify)
                  # The proxy's Via and the sender's, each kept whole.
                  + '      <ereg regexp="Via: ([^[:cntrl:]]*)[[:cntrl:]]+Via: ([^[:cntrl:]]*)"'
                  ' search_in="msg" check_it="true" assign_to="x,nvia1,nvia2"/>\n'
                  + _ereg("From", ".*", "nfrom")
                  + _ereg("To", ".*", "nto") + _ereg("CSeq", ".*", "ncseq")
                  + "    </action>\n  </recv>\n")
        self._add(f'  <recv response="{expect}"/>\n')
        self._add(_send("""
SIP/2.0 200 OK
Via: [$nvia1]
Via: [$nvia2]
From: [$nfrom]
To: [$nto]
Call-ID: [call_id]
CSeq: [$ncseq]
Content-Length: 0
"""))
        self._add(f'  <nop next="{done}"/>\n  <label id="{in_order}"/>\n')
        return self.takes_notify(expect=notify)._add(f'  <label id="{done}"/>\n')

    def refers_out_of_dialog(self, user: str, refer_to: str, *, expect: int) -> Party:
        """A REFER outside any dialog, to `user` at the proxy, with no Contact."""
        self._add(_send(f"""
REFER sip:{user}@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]{self.me}[call_number]
To: <sip:{user}@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 REFER
Max-Forwards: 70
Refer-To: {refer_to}
Content-Length: 0
""", retrans=True))
        return self._add(f'  <recv response="{expect}"/>\n')

    def takes_notify(self, *, expect: str | None = None) -> Party:
        """Receive one NOTIFY (checking `expect` is in it) and answer 200."""
        check = f"    <action>\n{_contains(expect)}    </action>\n" if expect else ""
        return self._add(f'  <recv request="NOTIFY">\n{check}  </recv>\n' + _reply(200))

    # -- attended transfer (RFC 3891): several calls in one process ---------------------
    # SIPp starts every new Call-ID at the top of the scenario, so a party that takes
    # two calls (the target: the consultation call, then the INVITE with Replaces) has
    # one scenario with a branch per call, and its calls coordinate through global
    # flags (`raises`, `waits_for`).
    def label(self, name: str) -> Party:
        return self._add(f'  <label id="{name}"/>\n')

    def goto(self, name: str) -> Party:
        return self._add(f'  <nop next="{name}"/>\n')

    def raises(self, flag: str) -> Party:
        """Set a flag every call of this process sees."""
        if flag not in self.flags:
            self.flags.append(flag)
        return self._add(f'  <nop><action><assign assign_to="{flag}" value="1"/>'
                         "</action></nop>\n")

    def waits_for(self, flag: str, every_ms: int = 50) -> Party:
        """Wait until another call of this process `raises` the flag."""
        if flag not in self.flags:
            self.flags.append(flag)
        again, go = self._label(), self._label()
        return self._add(f'  <label id="{again}"/>\n  <pause milliseconds="{every_ms}"/>\n'
                         f'  <nop next="{go}" test="{flag}"/>\n  <nop next="{again}"/>\n'
                         f'  <label id="{go}"/>\n')

    def takes_invite(self, *, replacing: str | None = None, later: str | None = None
                     ) -> Party:
        """Receive a new call (Record-Route learnt) without answering it yet; jump to
        label `replacing` if it carries Replaces, to `later` if it is not the first call
        this process takes."""
        actions = _ereg("From", ".*", "peer_from") + _ereg("To", ".*", "inv_to")
        jumps = ""
        if replacing:
            actions += ('      <ereg regexp=".+" search_in="hdr" header="Replaces:"'
                        ' check_it="false" assign_to="has_replaces"/>\n')
            jumps += f'  <nop next="{replacing}" test="has_replaces"/>\n'
        if later:
            if "legs" not in self.flags:
                self.flags.append("legs")
            actions += ('      <add assign_to="legs" value="1"/>\n'
                        '      <test assign_to="later_leg" variable="legs"'
                        ' compare="greater_than" value="1"/>\n')
            jumps += f'  <nop next="{later}" test="later_leg"/>\n'
        self._add(f'  <recv request="INVITE" rrs="true">\n    <action>\n{actions}'
                  "    </action>\n  </recv>\n" + jumps)
        self.ruri, self.route = "[next_url]", "[routes]"
        return self

    def answers_it(self, *, ring: bool = True) -> Party:
        """Answer the call `takes_invite` took (180, 200 with SDP, the ACK)."""
        tag = f"[pid]{self.me}[call_number]"
        if ring:
            # A pause: the proxy's workers could relay a 180 and a 200 sent back to back
            # in either order, and a 180 after the 200 aborts a third-party caller.
            self._add(_reply(180, to_tag=tag)).pause(50)
        self._add(_reply(200, to_tag=tag, sdp=True, retrans=True))
        self.from_, self.to = f"[$inv_to];tag={tag}", "[$peer_from]"
        return self._add('  <recv request="ACK"/>\n')

    def takes_attended_refer(self, code: int = 202) -> Party:
        """Receive a REFER whose Refer-To carries Replaces; keep the target URI, the
        Replaces' parts and the Referred-By; answer `code`."""
        self._add('  <recv request="REFER">\n    <action>\n'
                  '      <ereg regexp=".*" search_in="hdr" header="Referred-By:"'
                  ' check_it="false" assign_to="rby"/>\n'
                  f'      <ereg regexp="{_xml(REFER_TO_REPLACES)}" search_in="msg"'
                  ' check_it="true" assign_to="x,xuri,rcid1,rcid2,rtotag,rfromtag"/>\n'
                  "    </action>\n  </recv>\n")
        self._add(_reply(code))
        return self.pause(100) if code < 300 else self

    def calls_replacing(self, *, self_target: bool = False, final: int = 200) -> Party:
        """The transferee's INVITE with Replaces to the Refer-To URI (through the proxy,
        which is that URI's host), with the REFER's Referred-By; the target answers 200
        (or the proxy `final`, >= 300) and we ACK.  self_target: the Refer-To names a
        user this very process is (both of the transferor's calls reached the same UA),
        so the proxy brings the INVITE back here, and SIPp maps it (Call-ID
        `xfer///<ours>`) to this call, which then plays the target's side too: answers
        it and takes the ACK."""
        self._target = "[$xuri]"
        self._add(_send(_sdp(f"""
INVITE [$xuri] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:{self.me}@[remote_ip]>;tag=[pid]xfer[call_number]
To: <[$xuri]>
Call-ID: xfer///[call_id]
CSeq: 1 INVITE
Contact: <sip:{self.me}@[local_ip]:[local_port]>
Referred-By: [$rby]
Replaces: [$rcid1]@[$rcid2];to-tag=[$rtotag];from-tag=[$rfromtag]
Max-Forwards: 70
"""), retrans=True))
        self._add('  <recv response="100" optional="true"/>\n')
        if final >= 300:
            return self.target_answers(final)
        if self_target:
            self._add('  <recv request="INVITE">\n    <action>\n'
                      + _contains("Replaces: ") + "    </action>\n  </recv>\n")
            self._add(_reply(200, to_tag=f"[pid]{self.me}target[call_number]", sdp=True,
                             retrans=True))
        else:
            self._add('  <recv response="180" optional="true"/>\n')
        self.target_answers(200)
        return self._add('  <recv request="ACK"/>\n') if self_target else self

    def hangs_up_replacing(self, *, self_target: bool = False) -> Party:
        """BYE the call that replaced the other (self_target: and take it ourselves)."""
        if not self_target:
            return self.hangs_up_target()
        self.xfer_cseq += 1
        self._add(_send(self._xfer("BYE", self.xfer_cseq), retrans=True))
        self._add('  <recv request="BYE"/>\n' + _reply(200))
        return self._add('  <recv response="200"/>\n')

    def accepts_replacing(self) -> Party:
        """The target's side of the INVITE with Replaces `takes_invite` took: 200 with
        SDP, the ACK, then the flag `replaced` that tells the replaced call to end."""
        self._add(_reply(200, to_tag=f"[pid]{self.me}[call_number]", sdp=True, retrans=True))
        return self._add('  <recv request="ACK"/>\n').raises("replaced")

    # -- SIPp 3PCC (-3pcc): the twin scenario's commands ---------------------------------
    def tells_twin(self, *lines: str) -> Party:
        body = "\n".join(lines)
        return self._add(f"  <sendCmd><![CDATA[\n{body}\n]]></sendCmd>\n")

    def hears_twin(self) -> Party:
        """The twin's answer as asterisk's referer.xml reads it: the URI, tags and the
        Call-ID (split at its @) of the call the twin placed."""
        def hdr(name: str, regexp: str, to: str) -> str:
            return (f'      <ereg regexp="{regexp}" search_in="hdr" header="{name}:"'
                    f' check_it="true" assign_to="{to}"/>\n')
        return self._add(
            "  <recvCmd>\n    <action>\n"
            + hdr("Remote-URI", " (.+)", "x,remote_uri")
            + hdr("Remote-To-Tag", " (.+)", "x,remote_to_tag")
            + hdr("Remote-From-Tag", " (.+)", "x,remote_from_tag")
            + hdr("Call-ID", " (.+)@(.+)", "x,twin_cid1,twin_cid2")
            + "    </action>\n  </recvCmd>\n")


# The Replaces a Refer-To carries, %-escaped in the URI's headers (RFC 3261 19.1.1), as
# asterisk's referer.xml writes it: `<uri?Replaces=<a>%40<b>%3Bto-tag%3D<t>%3Bfrom-tag%3D<f>>`.
# SIPp cannot unescape, so the parts are taken one by one (the Call-ID split at its @).
REFER_TO_REPLACES = (r"<(sip:[^?>]+)\?Replaces=([^%>]+)%40([^%>]+)%3Bto-tag%3D([^%>]+)"
                     r"%3Bfrom-tag%3D([^%>]+)>")
# What a REFER naming the twin's call carries (hears_twin's variables).
REFER_TO_TWIN = ("<[$remote_uri]?Replaces=REMOTE[$twin_cid1]%40[$twin_cid2]"
                 "%3Bto-tag%3D[$remote_to_tag]%3Bfrom-tag%3D[$remote_from_tag]>")


@dataclass
class Target:
    """The transfer target: rings `ring_ms`, then answers `final`; after a 200 it waits
    for the transferee's BYE."""

    me: str
    final: int = 200
    ring_ms: int = 300
    ring: int = 180

    def xml(self) -> str:
        party = Party(self.me)
        tag = f"[pid]{self.me}[call_number]"
        party._add('  <recv request="INVITE"/>\n')
        party._add(_reply(self.ring, to_tag=tag))
        party.pause(self.ring_ms)
        if self.final < 300:
            party._add(_reply(200, to_tag=tag, sdp=True, retrans=True))
            party._add('  <recv request="ACK"/>\n')
            party.takes_bye()
        else:
            party._add(_reply(self.final, to_tag=tag))
            party._add('  <recv request="ACK"/>\n')
        return party.xml(f"target {self.me}")


def messages(log_path: Path) -> list[SipMessage]:
    """Every message a SIPp party logged with -trace_msg, in order."""
    try:
        return sip_messages(log_path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def received(log_path: Path, method: str, status: int | None = None) -> list[SipMessage]:
    """What a party received: requests of `method`, or (with status) responses to it."""
    return [
        m for m in messages(log_path)
        if m.direction == "received" and m.method == method
        and (m.is_request if status is None else m.status == status)
    ]
