"""Outbound over UDP (RFC 5626 §5.1/§5.3, SPEC §4 "Outbound"): a client that asks for it
(one Via, Contact with ;ob) gets a flow token in the Record-Route facing it; an in-dialog
request carrying that Route goes back to the address the client sent from, whatever its
Contact says; a token that does not verify gets 403; req:incoming_outbound_requested()."""
import re
import time

import lsip
from lsip import request

LO = "127.0.0.1"

SCRIPT = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "ACK" and not req:loose_route() then return end
  local p = lunasip.Proxy.new()
  p:on_error(function(status, reason, code) lunasip.log.notice("MARK error %s %s", tostring(status), code) end)
  if req:is_initial() then
    lunasip.log.notice("MARK ob=%s %s", tostring(req:incoming_outbound_requested()), req.call_id)
    p:route(req, "127.0.0.1", @UAS@, "udp")
  elseif req:loose_route() then
    p:route(req)
  else
    req:reply(404)
  end
end
'''


def _final(peer, m, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = peer.recv_response(m, timeout=max(end - time.monotonic(), 0.01))
        if r is None or r.status >= 200:
            return r
    return None


def _reply(uas, raw, status, extra=()):
    """The UAS's answer to a request it received (raw bytes): Vias, From, To (+tag), Call-ID,
    CSeq copied, with extra header lines."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    keep = [ln for ln in lines[1:] if re.match(r"(?i)(via|from|to|call-id|cseq|record-route)\s*:", ln)]
    keep = [ln + ";tag=uas1" if re.match(r"(?i)to\s*:", ln) and "tag=" not in ln else ln for ln in keep]
    out = ["SIP/2.0 %d OK" % status] + keep + list(extra) + ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()


def test_outbound_udp_flow_token_routes_back_and_forgery_403(t):
    uac, uas = t.peer(), t.peer()
    inst = t.instance(SCRIPT.replace("@UAS@", str(uas.port)), ipv6=False, ctl=True)
    dead_port = lsip.free_port()  # the Contact names a port nobody listens on
    contact = "Contact: <sip:alice@127.0.0.1:%d;ob>" % dead_port
    inv = request("INVITE", "sip:bob@127.0.0.1:%d" % uas.port, via=(uac.host, uac.port), extra=[contact])
    uac.send(inv, inst.addr4)
    got = uas.recv(3)
    if not t.check(got is not None, "the INVITE did not reach the UAS"):
        return
    raw = got[0]
    rr = re.findall(rb"(?im)^Record-Route:\s*(.*)$", raw)
    t.eq(len(rr), 1, "Record-Route lines (same transport and family: one)")
    m = re.match(rb"<sip:(Ls[A-Za-z0-9_-]+)@127\.0\.0\.1:%d;transport=udp;lr;ob>" % inst.port4, rr[0].strip()) \
        if rr else None
    t.check(m is not None, "Record-Route with a flow token and ;ob: %r" % rr)
    t.check(inst.wait_log(r"MARK ob=true %s" % re.escape(inv.call_id), 2), "incoming_outbound_requested() not true")
    uas.send(_reply(uas, raw, 200, ["Contact: <sip:bob@127.0.0.1:%d>" % uas.port]), inst.addr4)
    r = _final(uac, inv)
    t.eq(r.status if r else None, 200, "200 to the INVITE at the UAC")
    if m is None:
        return
    token = m.group(1).decode()
    route = "Route: <sip:%s@127.0.0.1:%d;transport=udp;lr;ob>" % (token, inst.port4)

    # the callee's BYE: R-URI is the Contact (a dead port), the Route names the flow
    bye = request("BYE", "sip:alice@127.0.0.1:%d" % dead_port, via=(uas.host, uas.port), call_id=inv.call_id,
                  from_uri="<sip:bob@127.0.0.1>", from_tag="uas1", to="<sip:tester@lunasip.invalid>",
                  to_tag=inv.from_tag, cseq=1, extra=[route])
    uas.send(bye, inst.addr4)
    got = uac.recv(3)
    t.check(got is not None and got[0].startswith(b"BYE "), "the BYE did not come back over the flow: %r" % (got,))
    t.eq(inst.stat("flow_routed"), 1, "flow_routed")

    # the same Route with the token altered: 403, nothing forwarded
    i = len(token) // 2
    forged_tok = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    bye2 = request("BYE", "sip:alice@127.0.0.1:%d" % dead_port, via=(uas.host, uas.port), call_id=inv.call_id,
                   from_uri="<sip:bob@127.0.0.1>", from_tag="uas1", to="<sip:tester@lunasip.invalid>",
                   to_tag=inv.from_tag, cseq=2, extra=[route.replace(token, forged_tok)])
    uas.send(bye2, inst.addr4)
    r = _final(uas, bye2)
    t.eq(r.status if r else None, 403, "forged flow token")
    t.eq(inst.stat("flow_forged"), 1, "flow_forged")
    t.check(inst.log_lines(r"refused a flow token"), "no log line for the forged token")
    t.eq([d for d, _ in uac.drain(0.3) if d.startswith(b"BYE ")], [], "requests forwarded with a forged token")

    # a request without ;ob and with two Vias does not ask for Outbound: no token
    inv2 = request("INVITE", "sip:bob@127.0.0.1:%d" % uas.port, via=(uac.host, uac.port),
                   extra=["Contact: <sip:alice@127.0.0.1:%d>" % uac.port])
    uac.send(inv2, inst.addr4)
    got = uas.recv(3)
    t.check(got is not None and re.search(rb"(?im)^Record-Route:\s*<sip:127\.0\.0\.1:%d;transport=udp;lr>" % inst.port4,
                                          got[0]), "plain Record-Route without token: %r" % (got and got[0][:400]))
    t.check(inst.wait_log(r"MARK ob=false %s" % re.escape(inv2.call_id), 2), "incoming_outbound_requested() not false")
    lsip.no_error_log(t, inst)
