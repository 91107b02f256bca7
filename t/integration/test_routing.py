"""Where answers go (RFC 3261 §18.2.2 without rport: the sent-by port, maddr, default ports;
RFC 3581 with rport) and what the core answers before server.lua sees a request (CANCEL 481,
ACK of lunasip's own negative answer absorbed, Proxy-Require 420, unknown scheme 416)."""
import re

import lsip
from lsip import request

PLAIN_LUA = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  lunasip.log.notice("SEEN %s %s", req.method, req.call_id)
  if req.method == "ACK" then return end
  if req:header("X-Action") == "error" then error("failing on purpose") end
  if req.method == "INVITE" then
    req:reply(486, "Busy Here")
    return
  end
  local ok, err = req:reply(200, "OK")
  if not ok then lunasip.log.warn("REPLY-FAILED %s %s", req.call_id, tostring(err)) end
end
'''


def _nothing(t, peer, what, timeout=0.3):
    got = peer.drain(timeout)
    t.check(not got, "%s: unexpected datagram(s) on %s:%d: %r" % (what, peer.host, peer.port, [d[:40] for d, _ in got]))


def test_answer_goes_to_sent_by_port_without_rport(t):
    inst = t.instance(PLAIN_LUA)
    ip = lsip.random_loopback()
    sender = t.peer(ip)
    sentby = t.peer(ip)

    # sent-by is the source IP: answer to source IP : sent-by port, not to the sending port
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=(ip, sentby.port), rport=False)
    sender.send(msg, inst.addr4)
    resp = sentby.recv_response(msg, 2)
    if t.check(resp is not None, "IP sent-by: no answer on the sent-by port %s:%d" % (ip, sentby.port)):
        t.eq(resp.status, 200, "IP sent-by: status")
        t.check("rport" not in resp.top_via_params(), "IP sent-by: rport added without being asked: %s" % resp.header("Via"))
    _nothing(t, sender, "IP sent-by: the sending socket")

    # sent-by is a name: received=<source IP> is added, the answer goes to source IP : port
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=("client.invalid", sentby.port), rport=False)
    sender.send(msg, inst.addr4)
    resp = sentby.recv_response(msg, 2)
    if t.check(resp is not None, "name sent-by: no answer on %s:%d" % (ip, sentby.port)):
        vp = resp.top_via_params()
        t.eq(vp.get("received"), ip, "name sent-by: received")
        t.check("rport" not in vp, "name sent-by: rport added without being asked")
    _nothing(t, sender, "name sent-by: the sending socket")

    # the same over IPv6
    sender6, sentby6 = t.peer("::1"), t.peer("::1")
    msg = request("OPTIONS", "sip:x@[::1]", via=("::1", sentby6.port), rport=False)
    sender6.send(msg, inst.addr6)
    resp = sentby6.recv_response(msg, 2)
    t.check(resp is not None and resp.status == 200, "IPv6: no 200 on the sent-by port [::1]:%d: %r" % (sentby6.port, resp))
    _nothing(t, sender6, "IPv6: the sending socket")

    # with rport the answer comes back to the sending port, whatever the sent-by says
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=(ip, sentby.port), rport=True)
    resp = sender.request(msg, inst.addr4)
    if t.check(resp is not None, "rport: no answer at the source port"):
        t.eq(resp.top_via_params().get("rport"), str(sender.port), "rport: rport value")
    _nothing(t, sentby, "rport: the sent-by socket")


def test_answer_goes_to_default_ports_5060_and_5061(t):
    inst = t.instance(PLAIN_LUA)
    ip = lsip.random_loopback()  # a fresh 127.x address: its 5060/5061 are ours
    sender = t.peer(ip)
    p5060, p5061 = t.peer(ip, 5060), t.peer(ip, 5061)
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=(ip, None), rport=False)
    sender.send(msg, inst.addr4)
    resp = p5060.recv_response(msg, 2)
    t.check(resp is not None and resp.status == 200, "UDP Via without port: no 200 on %s:5060: %r" % (ip, resp))
    _nothing(t, p5061, "UDP Via: port 5061", 0.05)
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=(ip, None), transport="TLS", rport=False)
    sender.send(msg, inst.addr4)
    resp = p5061.recv_response(msg, 2)
    t.check(resp is not None and resp.status == 200, "TLS Via without port: no 200 on %s:5061: %r" % (ip, resp))
    _nothing(t, p5060, "TLS Via: port 5060", 0.05)
    _nothing(t, sender, "default ports: the sending socket", 0.05)


def test_answer_goes_to_maddr(t):
    inst = t.instance(PLAIN_LUA)
    ip = lsip.random_loopback()
    sender = t.peer(ip)
    target = t.peer("127.0.0.3")
    port = target.port
    try:
        decoy = t.peer(ip, port)  # the source IP with the sent-by port: must stay silent
    except OSError:
        decoy = None
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=("client.invalid", port), via_params=";maddr=127.0.0.3",
                  rport=False)
    sender.send(msg, inst.addr4)
    resp = target.recv_response(msg, 2)
    if t.check(resp is not None, "maddr: no answer on 127.0.0.3:%d" % port):
        t.eq(resp.status, 200, "maddr: status")
        t.eq(resp.top_via_params().get("maddr"), "127.0.0.3", "maddr: kept in the top Via")
    _nothing(t, sender, "maddr: the sending socket", 0.1)
    if decoy:
        _nothing(t, decoy, "maddr: source IP with the sent-by port", 0.05)


def test_cancel_gets_481_from_the_core(t):
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    msg = request("CANCEL", "sip:x@127.0.0.1", via=(peer.host, peer.port))
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "CANCEL: no answer"):
        t.eq(resp.status, 481, "CANCEL: status")
        t.eq(resp.header("CSeq"), "1 CANCEL", "CANCEL: CSeq")
        t.check(lsip.tag_of(resp.header("To")), "CANCEL: the 481 has no To tag")
    t.check(t.probe(inst) is not None, "no answer to a probe")
    t.check("SEEN CANCEL" not in inst.log(), "server.lua saw the CANCEL")


def test_ack_of_own_negative_answer_is_absorbed(t):
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    inv = request("INVITE", "sip:busy@127.0.0.1", via=(peer.host, peer.port), cseq=5,
                  extra=["Contact: <sip:tester@127.0.0.1:%d>" % peer.port])
    resp = peer.request(inv, inst.addr4)
    if not t.check(resp is not None and resp.status == 486, "INVITE: expected 486, got %r" % resp):
        return
    totag = lsip.tag_of(resp.header("To"))
    t.check(totag, "the 486 has no To tag")
    # RFC 3261 §17.1.1.3: the ACK of a non-2xx has the INVITE's branch, Call-ID, From and the
    # To of the answer (with its tag), CSeq number of the INVITE with method ACK.
    ack = request("ACK", "sip:busy@127.0.0.1", via=(peer.host, peer.port), branch=inv.branch, call_id=inv.call_id,
                  cseq=5, from_tag=inv.from_tag, to_tag=totag)
    peer.send(ack, inst.addr4)
    t.check(t.probe(inst) is not None, "no answer to a probe after the ACK")
    _nothing(t, peer, "the ACK was answered", 0.2)
    log = inst.log()
    t.check("SEEN INVITE %s" % inv.call_id in log, "server.lua did not see the INVITE")
    t.check("SEEN ACK %s" % inv.call_id not in log, "server.lua saw the ACK of lunasip's own 486 (must be absorbed)")
    # control: an ACK carrying another To tag (say, of a 2xx from elsewhere) goes to server.lua
    other = request("ACK", "sip:busy@127.0.0.1", via=(peer.host, peer.port), to_tag="not-ours-1234")
    peer.send(other, inst.addr4)
    t.check(inst.wait_log(r"SEEN ACK " + re.escape(other.call_id), 3),
            "an ACK that is not for lunasip's answer did not reach server.lua")
    _nothing(t, peer, "an ACK was answered", 0.2)


def test_proxy_require_gets_420_with_unsupported(t):
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    msg = request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), extra=["Proxy-Require: foo, bar"])
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "Proxy-Require: no answer"):
        t.eq(resp.status, 420, "Proxy-Require: status")
        t.eq(resp.header_all("Unsupported"), ["foo, bar"], "Proxy-Require: Unsupported")
    msg2 = request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port),
                   extra=["Proxy-Require: foo", "Proxy-Require: bar"])
    resp = peer.request(msg2, inst.addr4)
    if t.check(resp is not None, "two Proxy-Require lines: no answer"):
        t.eq(resp.status, 420, "two Proxy-Require lines: status")
        t.eq(resp.header_all("Unsupported"), ["foo, bar"], "two Proxy-Require lines: Unsupported")
    # Require is for the UAS (here server.lua), not a reason for the proxy core to refuse
    msg3 = request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), extra=["Require: foo"])
    resp = peer.request(msg3, inst.addr4)
    t.check(resp is not None and resp.status == 200, "Require (not Proxy-Require) must reach server.lua: %r" % resp)
    log = inst.log()
    t.check("SEEN OPTIONS %s" % msg.call_id not in log, "server.lua saw the Proxy-Require request")
    t.check("SEEN OPTIONS %s" % msg2.call_id not in log, "server.lua saw the Proxy-Require request (two lines)")


def test_unknown_uri_scheme_gets_416(t):
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    msg = request("OPTIONS", "nobodyKnowsThisScheme:x", via=(peer.host, peer.port))
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "unknown scheme: no answer"):
        t.eq(resp.status, 416, "unknown scheme: status")
        t.check(lsip.tag_of(resp.header("To")), "unknown scheme: the 416 has no To tag")
    t.check("SEEN OPTIONS %s" % msg.call_id not in inst.log(), "server.lua saw the unknown-scheme request")
    # tel: is a known scheme (RFC 3966): server.lua decides
    msg = request("OPTIONS", "tel:+15551234567", via=(peer.host, peer.port))
    resp = peer.request(msg, inst.addr4)
    t.check(resp is not None and resp.status == 200, "tel: R-URI: expected server.lua's 200, got %r" % resp)


def test_answer_to_request_with_70_via_lines(t):
    """Max-Forwards 70 lets a request cross 69 proxies: it then carries 70 Via lines, and its
    answer must copy all of them (RFC 3261 §8.2.6.2), in order."""
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    for n in (64, 65, 70):
        hops = ["Via: SIP/2.0/UDP 10.0.0.%d:5060;branch=z9hG4bKhop%d" % (i + 1, i) for i in range(n - 1)]
        msg = request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), extra=hops, max_forwards=70 - (n - 1))
        resp = peer.request(msg, inst.addr4)
        if resp is None:
            m = inst.wait_log(r"REPLY-FAILED %s [^\n]*" % re.escape(msg.call_id), 1)
            t.check(False, "%d Via lines: no answer; server.lua's req:reply(200) returned %s" % (
                n, repr(m.group(0).split(" ", 2)[2]) if m else "true?"))
            continue
        t.eq(resp.status, 200, "%d Via lines: status" % n)
        vias = [v.strip() for line in resp.header_all("Via") for v in line.split(",")]
        t.eq(len(vias), n, "%d Via lines: Via values in the answer" % n)
        if len(vias) == n:
            t.eq(vias[1:], [h[5:] for h in hops], "%d Via lines: Vias copied in order" % n)
    t.check(t.probe(inst) is not None, "no answer to a probe")


def test_core_answers_requests_with_large_headers(t):
    """The answers the core builds itself (481, 416, 400, the 500 after a handler error) copy
    Via/From/To/Call-ID/CSeq: a request well below sip.max_message_size with a 20 KB From or
    To must still get its answer."""
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    big = "d" * 20000
    cases = [
        ("CANCEL with a 20 KB From", 481,
         request("CANCEL", "sip:x@127.0.0.1", via=(peer.host, peer.port), from_uri='"%s" <sip:a@b>' % big)),
        ("unknown scheme with a 20 KB To", 416,
         request("OPTIONS", "nobodyKnowsThisScheme:x", via=(peer.host, peer.port), to="<sip:%s@example.com>" % big)),
        ("CSeq mismatch with a 20 KB From", 400,
         request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), cseq_method="INVITE",
                 from_uri='"%s" <sip:a@b>' % big)),
        ("handler error with a 20 KB From", 500,
         request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), extra=["X-Action: error"],
                 from_uri='"%s" <sip:a@b>' % big)),
        ("server.lua's 200 with a 20 KB From (control)", 200,
         request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), from_uri='"%s" <sip:a@b>' % big)),
    ]
    for what, status, msg in cases:
        resp = peer.request(msg, inst.addr4, timeout=1.0)
        if t.check(resp is not None, "%s (%d bytes): no answer, expected %d" % (what, len(msg.data), status)):
            t.eq(resp.status, status, what + ": status")
            t.check(big in (resp.header("From") or "") + (resp.header("To") or ""), what + ": the big header was not copied")
    t.check(t.probe(inst) is not None, "no answer to a probe")


def test_proxy_require_with_unusual_values_is_never_ignored(t):
    """RFC 3261 §16.3 step 5: a request whose Proxy-Require lunasip cannot honour must not be
    handled as if the header were absent: 420 (or 400 when the value is malformed)."""
    inst = t.instance(PLAIN_LUA)
    peer = t.peer()
    long_tag = "x" * 1500
    for what, value, ok in (("a 1500-byte option tag", long_tag, (420,)),
                            ("space-separated tags", "foo bar", (420, 400)),
                            ("a quoted tag", '"foo"', (420, 400))):
        msg = request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port), extra=["Proxy-Require: " + value])
        resp = peer.request(msg, inst.addr4)
        if not t.check(resp is not None, "%s: no answer" % what):
            continue
        t.check(resp.status in ok, "Proxy-Require with %s: expected %s, got %s %s" % (
            what, " or ".join(map(str, ok)), resp.status, resp.reason))
        if resp.status == 420 and value == long_tag:
            t.eq(resp.header("Unsupported"), long_tag, what + ": Unsupported")
    log = inst.log()
    t.check("SEEN OPTIONS" not in log, "server.lua saw %d request(s) carrying a Proxy-Require" % log.count("SEEN OPTIONS"))
