"""The message API of SPEC §5.2 seen on the wire: a server.lua that answers with headers echoing
the accessors, fed with compact headers, folding, multi-valued Via/Route, an IPv6 R-URI and
binary bodies; reply headers as a map and as a list; a second req:reply; header injection
attempts; req:fix_nat()."""
import re

import lsip
from lsip import request

ECHO_LUA = r'''
local lunasip = require "lunasip"
local log = lunasip.log
local function s(v) if v == nil then return "nil" end return tostring(v) end

local function echo(req)
  local ruri, from, to = req.ruri, req.from, req.to
  local routes = req:header_all("Route")
  local h = {
    "X-Method: " .. s(req.method),
    "X-Ruri: " .. s(ruri),
    "X-Ruri-User: " .. s(ruri and ruri.user),
    "X-Ruri-Host: " .. s(ruri and ruri.host),
    "X-Ruri-Port: " .. s(ruri and ruri.port),
    "X-Ruri-Transport: " .. s(ruri and ruri:param("transport")),
    "X-From-Uri: " .. s(from and from.uri),
    "X-From-Display: " .. s(from and from.display_name),
    "X-From-Tag: " .. s(req.from_tag),
    "X-To-Display: " .. s(to and to.display_name),
    "X-To-Tag: " .. s(req.to_tag),
    "X-Call-Id: " .. s(req.call_id),
    "X-CSeq: " .. s(req.cseq),
    "X-Max-Forwards: " .. s(req.max_forwards),
    "X-Transport: " .. s(req.transport),
    "X-Source-Ip: " .. s(req.source_ip),
    "X-Source-Port: " .. s(req.source_port),
    "X-Via-Count: " .. #req:header_all("Via"),
    "X-Via-Top: " .. s(req:header("Via")),
    "X-Has-Route: " .. s(req:has_header("Route")),
    "X-Route-Count: " .. #routes,
    "X-Route-Last: " .. s(routes[#routes]),
    "X-Contact-Uri: " .. s(req.contact and req.contact.uri),
    "X-Body-Len: " .. #req.body,
    "X-Folded: " .. s(req:header("X-Folded")),
    "X-Initial: " .. s(req:is_initial()),
    "X-In-Dialog: " .. s(req:is_in_dialog()),
    "X-Has-Missing: " .. s(req:has_header("X-Missing")),
    "X-Missing: " .. s(req:header("X-Missing")),
  }
  req:reply(200, "Echo", h, "echo:" .. req.body)
end

local modes = {}
modes.echo = echo
function modes.map(req)
  req:reply(200, "Map", { ["X-Map-A"] = "1", ["X-Map-B"] = { "b1", "b2" }, ["X-Map-N"] = 42 })
end
function modes.twice(req)
  local ok1, err1 = req:reply(200, "First")
  local ok2, err2 = req:reply(486, "Second")
  log.notice("REPLY-TWICE first=%s/%s second=%s/%s", tostring(ok1), tostring(err1), tostring(ok2), tostring(err2))
end
function modes.inject_list(req) req:reply(200, "OK", { "X-A: b\r\nX-Evil: 1" }) end
function modes.inject_lf(req) req:reply(200, "OK", { "X-A: b\nX-Evil: 1" }) end
function modes.inject_nul(req) req:reply(200, "OK", { "X-A: b\0X-Evil: 1" }) end
function modes.inject_map_value(req) req:reply(200, "OK", { ["X-A"] = "b\r\nX-Evil: 1" }) end
function modes.inject_map_name(req) req:reply(200, "OK", { ["X-A: b\r\nX-Evil"] = "1" }) end
function modes.inject_reason(req) req:reply(200, "OK\r\nX-Evil: 1") end
function modes.inject_set_header(req)
  req:set_header("X-A", "b\r\nX-Evil: 1")
  req:reply(200, "OK")
end
function modes.override_length(req) req:reply(200, "OK", { "Content-Length: 0" }, "abcdef") end
function modes.override_via(req) req:reply(200, "OK", { "Via: SIP/2.0/UDP evil.example.com;branch=z9hG4bKevil" }) end
local kept
function modes.keep(req)
  kept = req
  req:reply(200, "Kept")
end
function modes.stale(req)
  local ok, err = kept:reply(200, "Stale")
  local m, merr = kept.method
  local h, herr = kept:header("Via")
  req:reply(200, "Fresh", { "X-Stale-Reply: " .. s(ok) .. "/" .. s(err),
                            "X-Stale-Method: " .. s(m) .. "/" .. s(merr),
                            "X-Stale-Header: " .. s(h) .. "/" .. s(herr) })
end
function modes.prov(req)
  req:reply(100)
  req:reply(180, "Ringing")
  req:reply(200, "After Ringing")
end
function modes.badcode(req) req:reply(tonumber(req:header("X-Code"))) end
function modes.mf(req)
  if not req:check_max_forwards(70) then return end
  req:reply(200, "MF", { "X-MF: " .. s(req.max_forwards) })
end
function modes.bigbody(req)
  local n = tonumber(req:header("X-Size"))
  local ok, err = req:reply(200, "Big", nil, string.rep("0123456789", n / 10))
  log.notice("BIGBODY %d ok=%s err=%s", n, s(ok), s(err))
end
function modes.edit(req)
  req:set_header("X-Set", "set-value")
  req:set_header("X-Multi", { "m1", "m2" })
  req:insert_header("X-Top", "top-value")
  req:append_header("X-Bottom", "bottom-value")
  local n = req:delete_header("X-Del")
  local n1 = req:delete_header_top("X-Del-Top")
  req.ruri = "sip:changed@example.net;lr"
  req:reply(200, "Edited", { "X-Deleted: " .. n .. "/" .. n1,
                             "X-Set-Read: " .. s(req:header("X-Set")),
                             "X-Ruri-Read: " .. s(req.ruri),
                             "X-Del-Left: " .. #req:header_all("X-Del-Top") }, tostring(req))
end
function modes.fixnat(req)
  req:fix_nat()
  req:reply(200, "Fixed")
end

function modes.ackreply(req) req:reply(200, "Answering An ACK") end

function SipEvents.on_request(req)
  local mode = req:header("X-Mode") or "echo"
  if req.method == "ACK" and mode ~= "ackreply" then return end
  modes[mode](req)
end
'''


def _echo(t, inst, peer, data, dst, what):
    """Sends raw bytes; returns the answer (matched on the Call-ID header)."""
    cid = re.search(rb"(?im)^(?:call-id|i)\s*:\s*(\S+)", data).group(1).decode()
    cseq = re.search(rb"(?im)^cseq\s*:\s*(\d+)", data).group(1).decode()
    m = lsip.Msg(data, cid, cseq, None, None, None)
    resp = peer.request(m, dst)
    if not t.check(resp is not None, "%s: no answer" % what):
        return None
    if not t.check(resp.status == 200, "%s: status %r %r, expected 200 (log tail: %s)" % (
            what, resp.status, resp.reason, inst.tail(6))):
        return None
    return resp


def _expect_headers(t, resp, expected, what):
    for name, value in expected.items():
        t.eq(resp.header(name), value, "%s: %s" % (what, name))


def _check_body(t, resp, body, what):
    t.eq(resp.body, body, what + ": body")
    t.eq(resp.header("Content-Length"), str(len(body)), what + ": Content-Length")
    t.eq(resp.count("Content-Length"), 1, what + ": number of Content-Length headers")


def test_message_accessors_full_form(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    p = peer.port
    body = b"v=0\r\no=carol 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    data = ("INVITE sip:alice@example.com:5080;transport=udp SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKapi-a\r\n"
            "From: \"Carol Caller\" <sip:carol@example.org>;tag=ft-123\r\n"
            "To: \"Alice Display\" <sip:alice@example.com>\r\n"
            "Call-ID: api-a@lunasip-it\r\n"
            "CSeq: 42 INVITE\r\n"
            "Max-Forwards: 33\r\n"
            "Contact: <sip:carol@127.0.0.1:%d>\r\n"
            "Content-Type: application/sdp\r\n"
            "Content-Length: %d\r\n\r\n" % (p, p, len(body))).encode() + body
    resp = _echo(t, inst, peer, data, inst.addr4, "full form")
    if not resp:
        return
    _expect_headers(t, resp, {
        "X-Method": "INVITE", "X-Ruri": "sip:alice@example.com:5080;transport=udp",
        "X-Ruri-User": "alice", "X-Ruri-Host": "example.com", "X-Ruri-Port": "5080",
        "X-Ruri-Transport": "udp", "X-From-Uri": "sip:carol@example.org", "X-From-Display": "Carol Caller",
        "X-From-Tag": "ft-123", "X-To-Display": "Alice Display", "X-To-Tag": "nil",
        "X-Call-Id": "api-a@lunasip-it", "X-CSeq": "42", "X-Max-Forwards": "33", "X-Transport": "udp",
        "X-Source-Ip": "127.0.0.1", "X-Source-Port": str(p), "X-Via-Count": "1",
        "X-Via-Top": "SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKapi-a" % p,
        "X-Has-Route": "false", "X-Route-Count": "0", "X-Route-Last": "nil",
        "X-Contact-Uri": "sip:carol@127.0.0.1:%d" % p, "X-Body-Len": str(len(body)), "X-Folded": "nil",
        "X-Initial": "true", "X-In-Dialog": "false", "X-Has-Missing": "false", "X-Missing": "nil",
    }, "full form")
    t.eq(resp.reason, "Echo", "full form: reason phrase")
    _check_body(t, resp, b"echo:" + body, "full form")
    t.eq(resp.header("CSeq"), "42 INVITE", "full form: CSeq copied")
    t.check(lsip.tag_of(resp.header("To")), "full form: the answer's To has no tag")


def test_message_accessors_compact_folded_multivalue(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    p = peer.port
    data = ("OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
            "v: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKapi-b1 , SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKapi-b2\r\n"
            "Via: SIP/2.0/TCP 10.0.0.2:5062;branch=z9hG4bKapi-b3\r\n"
            "f: Bob <sip:bob@example.org>;tag=ft-b\r\n"
            "t: \"Bob, Display\" <sip:bob@example.com>;tag=tt-b\r\n"
            "i: api-b@lunasip-it\r\n"
            "CSeq: 7 OPTIONS\r\n"
            "Max-Forwards: 010\r\n"
            "Route: <sip:r1.example.com;lr>, <sip:r2.example.com;lr>\r\n"
            "Route: <sip:r3.example.com;lr>\r\n"
            "X-Folded: first part\r\n"
            "    second part\r\n"
            "m: <sip:bob@127.0.0.1:%d>\r\n"
            "l: 0\r\n\r\n" % (p, p)).encode()
    resp = _echo(t, inst, peer, data, inst.addr4, "compact")
    if not resp:
        return
    _expect_headers(t, resp, {
        "X-Method": "OPTIONS", "X-Ruri-User": "bob", "X-Ruri-Host": "127.0.0.1", "X-Ruri-Port": "nil",
        "X-From-Display": "Bob", "X-From-Tag": "ft-b", "X-To-Display": "Bob, Display", "X-To-Tag": "tt-b",
        "X-Call-Id": "api-b@lunasip-it", "X-CSeq": "7", "X-Max-Forwards": "10",
        "X-Via-Count": "3", "X-Via-Top": "SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKapi-b1" % p,
        "X-Has-Route": "true", "X-Route-Count": "3", "X-Route-Last": "<sip:r3.example.com;lr>",
        "X-Contact-Uri": "sip:bob@127.0.0.1:%d" % p, "X-Body-Len": "0",
        "X-Folded": "first part second part", "X-Initial": "false", "X-In-Dialog": "true",
    }, "compact")
    _check_body(t, resp, b"echo:", "compact")
    # the answer copies every Via value, in order, the top one with received/rport
    vias = [v.strip() for line in resp.header_all("Via") for v in line.split(",")]
    t.eq(len(vias), 3, "compact: Via values in the answer")
    if len(vias) == 3:
        t.eq(vias[1], "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKapi-b2", "compact: second Via copied")
        t.eq(vias[2], "SIP/2.0/TCP 10.0.0.2:5062;branch=z9hG4bKapi-b3", "compact: third Via copied")
        vp = lsip.via_params(vias[0])
        t.eq((vp.get("received"), vp.get("rport")), ("127.0.0.1", str(p)), "compact: top Via received/rport")
    t.eq(resp.header("To"), "\"Bob, Display\" <sip:bob@example.com>;tag=tt-b", "compact: To (tag kept, none added)")
    t.eq(resp.header("From"), "Bob <sip:bob@example.org>;tag=ft-b", "compact: From")
    t.eq(resp.header("Call-ID"), "api-b@lunasip-it", "compact: Call-ID")


def test_message_accessors_ipv6_ruri_and_binary_body(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer("::1")
    p = peer.port
    body = "héllo\r\n".encode() + b"\x00\x01\xff binary\r\n\r\nafter an empty line"
    data = ("MESSAGE sip:alice@[2001:db8::1]:5070;transport=udp SIP/2.0\r\n"
            "Via: SIP/2.0/UDP [::1]:%d;rport;branch=z9hG4bKapi-c1,\r\n"
            " SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKapi-c2\r\n"
            "From: <sip:x@[::1]>;tag=ft-c\r\n"
            "To: <sip:alice@[2001:db8::1]>\r\n"
            "Call-ID: api-c@lunasip-it\r\n"
            "CSeq: 1 MESSAGE\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Length: %d\r\n\r\n" % (p, len(body))).encode() + body
    resp = _echo(t, inst, peer, data, inst.addr6, "IPv6")
    if not resp:
        return
    _expect_headers(t, resp, {
        "X-Method": "MESSAGE", "X-Ruri": "sip:alice@[2001:db8::1]:5070;transport=udp",
        "X-Ruri-User": "alice", "X-Ruri-Host": "2001:db8::1", "X-Ruri-Port": "5070",
        "X-Ruri-Transport": "udp", "X-From-Uri": "sip:x@[::1]", "X-Source-Ip": "::1",
        "X-Source-Port": str(p), "X-Via-Count": "2", "X-Body-Len": str(len(body)),
    }, "IPv6")
    _check_body(t, resp, b"echo:" + body, "IPv6")
    vp = resp.top_via_params()
    t.check(vp.get("received") in ("::1", "[::1]"), "IPv6: top Via received=%r" % vp.get("received"))
    t.eq(vp.get("rport"), str(p), "IPv6: top Via rport")


def _mode_request(peer, mode, rport=True, via=None):
    return request("OPTIONS", "sip:api@127.0.0.1", via=via or (peer.host, peer.port), rport=rport,
                   extra=["X-Mode: " + mode])


def test_reply_headers_map_and_list(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    resp = peer.request(_mode_request(peer, "map"), inst.addr4)
    if t.check(resp is not None, "map: no answer"):
        t.eq((resp.status, resp.reason), (200, "Map"), "map: status")
        t.eq(resp.header_all("X-Map-A"), ["1"], "map: X-Map-A")
        t.eq(resp.header_all("X-Map-B"), ["b1", "b2"], "map: X-Map-B (a list gives one line per value, in order)")
        t.eq(resp.header_all("X-Map-N"), ["42"], "map: X-Map-N (a number)")
        t.eq(resp.header("Content-Length"), "0", "map: Content-Length")
    # the list form is what the echo mode uses
    resp = peer.request(_mode_request(peer, "echo"), inst.addr4)
    if t.check(resp is not None, "list: no answer"):
        t.eq(resp.header("X-Method"), "OPTIONS", "list: X-Method")
        t.eq(resp.count("X-Via-Count"), 1, "list: one line per list entry")


def test_reply_twice_says_already_answered(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    m0 = inst.mark()
    msg = _mode_request(peer, "twice")
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "no answer"):
        t.eq((resp.status, resp.reason), (200, "First"), "the first reply is the one sent")
    extra = peer.drain(0.3)
    t.check(not extra, "a second answer went out: %r" % [d[:30] for d, _ in extra])
    m = inst.wait_log(r"REPLY-TWICE [^\n]*", 3, m0)
    if t.check(m, "no REPLY-TWICE log line"):
        t.eq(m.group(0), "REPLY-TWICE first=true/nil second=nil/already answered", "results of the two req:reply calls")


INJECTIONS = ["inject_list", "inject_lf", "inject_nul", "inject_map_value", "inject_map_name",
              "inject_reason", "inject_set_header"]


def test_reply_header_injection_is_refused(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    for mode in INJECTIONS:
        m0 = inst.mark()
        resp = peer.request(_mode_request(peer, mode), inst.addr4)
        if not t.check(resp is not None, "%s: no answer" % mode):
            continue
        t.eq(resp.status, 500, mode + ": status")
        t.check(b"X-Evil" not in resp.raw and b"x-evil" not in resp.raw.lower(),
                "%s: injected header on the wire: %r" % (mode, resp.raw))
        t.check(inst.wait_log(r"stack traceback", 3, m0), "%s: the Lua error was not logged" % mode)
        t.check(not peer.drain(0.05), "%s: more than one answer" % mode)
    # headers the response builder owns cannot be overridden into a broken answer
    resp = peer.request(_mode_request(peer, "override_length"), inst.addr4)
    if t.check(resp is not None, "override_length: no answer"):
        if resp.status != 500:
            t.eq(resp.count("Content-Length"), 1, "override_length: Content-Length headers")
            t.eq(resp.header("Content-Length"), str(len(resp.body)), "override_length: Content-Length value")
    resp = peer.request(_mode_request(peer, "override_via"), inst.addr4)
    if t.check(resp is not None, "override_via: no answer"):
        t.check(b"evil.example.com" not in resp.raw, "override_via: a Via from Lua reached the wire: %r" % resp.raw)
    # still serving
    resp = peer.request(_mode_request(peer, "echo"), inst.addr4)
    t.check(resp is not None and resp.status == 200, "no 200 after the injection attempts: %r" % resp)


def test_fix_nat_answers_to_source_port(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    closed = lsip.free_port()  # nobody listens there
    msg = _mode_request(peer, "fixnat", rport=False, via=("127.0.0.1", closed))
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "fix_nat: no answer at the source port (sent-by port %d is closed)" % closed):
        t.eq((resp.status, resp.reason), (200, "Fixed"), "fix_nat: answer")
        vp = resp.top_via_params()
        t.eq((vp.get("received"), vp.get("rport")), ("127.0.0.1", str(peer.port)), "fix_nat: top Via received/rport")
    # control: without fix_nat the answer goes to the (closed) sent-by port, not to us
    msg = _mode_request(peer, "echo", rport=False, via=("127.0.0.1", closed))
    peer.send(msg, inst.addr4)
    got = peer.drain(0.5)
    t.check(not got, "without fix_nat and rport the answer came to the source port: %r" % [d[:30] for d, _ in got])


def test_stale_message_handle_answers_gone(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    resp = peer.request(_mode_request(peer, "keep"), inst.addr4)
    t.check(resp is not None and resp.status == 200, "keep: %r" % resp)
    resp = peer.request(_mode_request(peer, "stale"), inst.addr4)
    if t.check(resp is not None, "stale: no answer"):
        t.eq((resp.status, resp.reason), (200, "Fresh"), "stale: the new request's answer")
        t.eq(resp.header("X-Stale-Reply"), "nil/gone", "req:reply on a message whose handler returned")
        # a field read goes through __index, which returns one value: nil (no room for "gone")
        t.eq(resp.header("X-Stale-Method"), "nil/nil", "msg.method on a message whose handler returned")
        t.eq(resp.header("X-Stale-Header"), "nil/gone", "msg:header on a message whose handler returned")
    t.check(not peer.drain(0.2), "an answer went out for the stale message")


def test_reply_provisional_then_final(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    msg = _mode_request(peer, "prov")
    peer.send(msg, inst.addr4)
    got = [lsip.Response(d, a) for d, a in peer.drain(0.5)]
    t.eq([(r.status, r.reason) for r in got], [(100, "Trying"), (180, "Ringing"), (200, "After Ringing")],
         "answers in order")
    if len(got) == 3:
        t.eq(lsip.tag_of(got[0].header("To")), None, "100 Trying carries no To tag (RFC 3261 §8.2.6.1)")
        t1, t2 = lsip.tag_of(got[1].header("To")), lsip.tag_of(got[2].header("To"))
        t.check(t1 and t1 == t2, "180 and 200 must carry the same To tag: %r / %r" % (t1, t2))


def test_reply_misuse_raises(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    for code in ("99", "700", "200.5", "nope"):
        m = request("OPTIONS", "sip:api@127.0.0.1", via=(peer.host, peer.port), extra=["X-Mode: badcode", "X-Code: " + code])
        resp = peer.request(m, inst.addr4)
        t.check(resp is not None and resp.status == 500, "req:reply(%s): expected 500 (a Lua error), got %r" % (code, resp))
    # an ACK is never answered: req:reply on it is an error (logged), and nothing goes out
    m0 = inst.mark()
    ack = request("ACK", "sip:api@127.0.0.1", via=(peer.host, peer.port), to_tag="foreign-tag", extra=["X-Mode: ackreply"])
    peer.send(ack, inst.addr4)
    t.check(inst.wait_log(r"stack traceback", 3, m0), "req:reply on an ACK did not raise an error")
    got = peer.drain(0.3)
    t.check(not got, "an ACK was answered: %r" % [d[:40] for d, _ in got])


def test_check_max_forwards_clamps(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    for mf, expect in (("200", "70"), ("5", "5"), (None, "70"), ("0", None)):
        m = request("OPTIONS", "sip:api@127.0.0.1", via=(peer.host, peer.port), extra=["X-Mode: mf"], max_forwards=mf)
        resp = peer.request(m, inst.addr4)
        if not t.check(resp is not None, "Max-Forwards %s: no answer" % mf):
            continue
        if expect is None:
            t.eq(resp.status, 483, "Max-Forwards 0: status")
        else:
            t.eq((resp.status, resp.header("X-MF")), (200, expect), "Max-Forwards %s: status, value after the check" % mf)


def test_reply_with_large_body(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    m = request("OPTIONS", "sip:api@127.0.0.1", via=(peer.host, peer.port), extra=["X-Mode: bigbody", "X-Size: 30000"])
    resp = peer.request(m, inst.addr4)
    if t.check(resp is not None, "30000-byte body: no answer"):
        t.eq(len(resp.body), 30000, "30000-byte body: body length")
        t.eq(resp.header("Content-Length"), "30000", "30000-byte body: Content-Length")
        t.check(resp.body == b"0123456789" * 3000, "30000-byte body: content differs")
    # a body that cannot fit in a UDP datagram: no crash, req:reply reports it
    m0 = inst.mark()
    m = request("OPTIONS", "sip:api@127.0.0.1", via=(peer.host, peer.port), extra=["X-Mode: bigbody", "X-Size: 70000"])
    peer.send(m, inst.addr4)
    line = inst.wait_log(r"BIGBODY 70000 [^\n]*", 3, m0)
    if t.check(line, "70000-byte body: the handler did not finish"):
        t.eq(line.group(0), "BIGBODY 70000 ok=nil err=send failed", "70000-byte body over UDP: req:reply result")
    peer.drain(0.1)
    t.check(t.probe(inst) is not None, "no answer after the oversized reply")


def test_header_edits_and_serialisation(t):
    inst = t.instance(ECHO_LUA)
    peer = t.peer()
    m = request("OPTIONS", "sip:orig@127.0.0.1", via=(peer.host, peer.port),
                extra=["X-Mode: edit", "X-Del: a", "X-Del: b", "X-Del-Top: 1", "X-Del-Top: 2", "X-Set: old"])
    resp = peer.request(m, inst.addr4)
    if not t.check(resp is not None and resp.status == 200, "edit: no 200: %r" % resp):
        return
    t.eq(resp.header("X-Deleted"), "2/1", "delete_header / delete_header_top counts")
    t.eq(resp.header("X-Set-Read"), "set-value", "header() sees set_header")
    t.eq(resp.header("X-Ruri-Read"), "sip:changed@example.net;lr", "msg.ruri after assignment")
    t.eq(resp.header("X-Del-Left"), "1", "X-Del-Top lines left")
    ser = lsip.Response(resp.body)  # tostring(req): the request as it would be forwarded
    t.eq(ser.start, "OPTIONS sip:changed@example.net;lr SIP/2.0", "serialised Request-Line")
    t.eq(ser.header_all("X-Set"), ["set-value"], "serialised X-Set")
    t.eq(ser.header_all("X-Multi"), ["m1", "m2"], "serialised X-Multi (set_header with a list)")
    t.eq(ser.header_all("X-Del"), [], "serialised X-Del (deleted)")
    t.eq(ser.header_all("X-Del-Top"), ["2"], "serialised X-Del-Top (top one deleted)")
    names = [n.lower() for n, _ in ser.headers]
    t.check(names and names[0] == "x-top", "insert_header must put X-Top first: %r" % names[:3])
    t.check(names and names[-1] == "x-bottom" or (len(names) > 1 and names[-2] == "x-bottom" and names[-1] == "content-length"),
            "append_header must put X-Bottom last (before or after Content-Length): %r" % names[-3:])
    t.eq(ser.header("Call-ID"), m.call_id, "serialised Call-ID")
