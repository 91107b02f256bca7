"""SIP over TCP (SPEC §4 "Transports", §3.1 sip.*; RFC 3261 §18.3 framing by
Content-Length, §18.2.2 responses over the connection the request came on, RFC 5626
§4.4.1 double-CRLF keepalive, RFC 3581 received/rport, connection reuse): a Python client
on lunasip's tcp: listener, Python TCP listeners as UAS, UDP peers, and SIPp over TCP
(-t t1 / -t tn). Counters are read from the control socket's `stats`."""
import os
import re
import signal
import socket
import subprocess
import time

import lsip
from lsip import request

LO = "127.0.0.1"

# Answers every request, or routes it when it says so:
#   X-Route-Transport: T   proxy:route(req, R-URI host, R-URI port, T)
#   X-Route-Back: 1        proxy:route(req, source ip, source port, "tcp"): back to the client
SCRIPT = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local tp, back = req:header("X-Route-Transport"), req:header("X-Route-Back")
  if tp or back then
    local proxy = lunasip.Proxy.new("proxy_out")
    proxy:on_error(function(status, reason, code)
      lunasip.log.notice("MARK on_error %s %s %s", tostring(status), tostring(code), tostring(reason))
    end)
    if back then
      proxy:route(req, req.source_ip, req.source_port, "tcp")
    else
      local u = req.ruri
      proxy:route(req, u.host, u.port or 5060, tp)
    end
    return
  end
  req:reply(200, "OK", { ["X-Transport"] = tostring(req.transport),
                         ["X-Source-Port"] = tostring(req.source_port) })
end
'''

# The SIPp proxy runs: every request to its R-URI over TCP (in-dialog ones after loose_route).
PROXY_SCRIPT = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if not req:check_max_forwards(70) then return end
  if req:is_in_dialog() then req:loose_route() end
  local proxy = lunasip.Proxy.new("proxy_out")
  proxy:on_error(function(status, reason, code)
    lunasip.log.notice("MARK on_error %s %s %s", tostring(status), tostring(code), tostring(reason))
  end)
  local u = req.ruri
  proxy:route(req, u.host, u.port or 5060, "tcp")
end
'''

PROXIES = ("default_proxy = { do_record_routing = true }\n"
           "proxy_out = { timer_B = 8, timer_F = 8, timer_C = 20 }\n")


def start(t, script=SCRIPT, streams=("tcp",), sip_extra="", conf_extra="", name=None):
    inst = t.instance(script, name=name, start=False, ipv6=False, streams=streams, ctl=True,
                      sip_extra=sip_extra, proxies=PROXIES,
                      conf_extra="core.shutdown_grace = 1\n" + conf_extra)
    inst.start()
    for k in streams:
        t.check(inst.wait_log(r"listening on %s:127\.0\.0\.1:%d\b" % (k, inst.ports[k]), 1),
                "%s: no 'listening on %s:127.0.0.1:%d' line" % (inst.name, k, inst.ports[k]))
    return inst


def options(c, **kw):
    """An OPTIONS from a stream client c: Via SIP/2.0/TCP client.invalid:5060;rport (a
    sent-by where nothing listens: the answer must come over the connection)."""
    kw.setdefault("via", ("client.invalid", 5060))
    kw.setdefault("transport", "TCP")
    return request("OPTIONS", kw.pop("ruri", "sip:probe@%s" % LO), **kw)


def check_200(t, what, r, msg, c, transport="tcp"):
    """r answers msg with 200 from the script, over c, with received/rport of c."""
    if not t.check(r is not None, "%s: no answer on the connection" % what):
        return False
    t.eq(r.status, 200, what + ": status")
    t.eq(r.header("Call-ID"), msg.call_id, what + ": Call-ID")
    t.eq(r.header("X-Transport"), transport, what + ": msg.transport seen by the script")
    t.eq(r.header("X-Source-Port"), str(c.port), what + ": msg.source_port seen by the script")
    vp = r.top_via_params()
    t.eq(vp.get("branch"), msg.branch, what + ": Via branch")
    t.eq(vp.get("received"), LO, what + ": Via received (RFC 3581)")
    t.eq(vp.get("rport"), str(c.port), what + ": Via rport (RFC 3581)")
    t.eq(r.count("Via"), 1, what + ": Via count")
    return True


def closed_line(inst, port, words, since=0):
    """Log lines naming the client's port (:PORT) and matching words."""
    return [ln for ln in inst.log_lines(words, since) if re.search(r":%d\b" % port, ln)]


# ---------------------------------------------------------------------------------- framing

def test_tcp_options_answered_on_same_connection(t):
    inst = start(t)
    c = t.stream(inst, "tcp")
    for i in range(3):
        m = options(c, cseq=i + 1)
        check_200(t, "OPTIONS %d over TCP" % (i + 1), c.request(m), m, c)
    t.check(not c.eof, "the connection was closed after the answers")
    st = inst.stats("conn_")
    t.eq(st.get("conn_accepted"), 1, "conn_accepted after one client connection")
    t.eq(st.get("conn_closed"), 0, "conn_closed while the client is connected")
    # `lunasip ctl connections` lists it, seen from lunasip's side
    conns = inst.rpc("connections")
    cport = c.local[1]
    t.check(isinstance(conns, list) and len(conns) == 1, "connections: %r" % (conns,))
    if conns:
        got = {k: conns[0].get(k) for k in ("transport", "direction", "state", "remote_ip", "remote_port",
                                           "local_port")}
        t.eq(got, {"transport": "tcp", "direction": "in", "state": "open", "remote_ip": "127.0.0.1",
                   "remote_port": cport, "local_port": inst.ports["tcp"]}, "connections[0]")
    # the client closes: lunasip notices and counts it
    c.close()
    t.eq(inst.wait_stat("conn_closed", 1), 1, "conn_closed after the client closed")
    # a second connection gets its own answers
    c2 = t.stream(inst, "tcp")
    m = options(c2)
    check_200(t, "OPTIONS on a second connection", c2.request(m), m, c2)
    t.eq(inst.stat("conn_accepted"), 2, "conn_accepted after two connections")
    lsip.no_error_log(t, inst)


def test_tcp_pipelined_requests_in_one_write(t):
    inst = start(t)
    c = t.stream(inst, "tcp")
    m1, m2, m3 = options(c, cseq=1), options(c, cseq=2), options(c, cseq=3, body=b"v=0\r\n",
                                                                     extra=["Content-Type: application/sdp"])
    t.check(c.send(bytes(m1) + bytes(m2) + bytes(m3)), "send failed")
    got = [c.recv_message(3) for _ in range(3)]
    t.check(all(r is not None for r in got), "answers to 3 pipelined requests: %r" % got)
    for r, m, n in zip(got, (m1, m2, m3), (1, 2, 3)):
        if r is not None:
            check_200(t, "pipelined request %d" % n, r, m, c)
    t.check(c.recv_message(0.5) is None, "more than 3 messages answered 3 pipelined requests")
    lsip.no_error_log(t, inst)


def test_tcp_request_in_one_byte_writes(t):
    inst = start(t)
    c = t.stream(inst, "tcp")
    m = options(c, body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n", extra=["Content-Type: application/sdp"])
    t.check(c.send_slowly(m, 1, 0.001), "the connection broke while writing byte by byte")
    check_200(t, "OPTIONS written 1 byte at a time", c.recv_response(m, 3), m, c)
    # a second one, split at the worst places: inside the empty line and inside the body
    m2 = options(c, cseq=2, body=b"0123456789", extra=["Content-Type: text/plain"])
    raw = bytes(m2)
    cut = raw.index(b"\r\n\r\n") + 2
    for part in (raw[:cut], raw[cut:cut + 3], raw[cut + 3:]):
        c.send(part)
        time.sleep(0.05)
    check_200(t, "OPTIONS split in the empty line and the body", c.recv_response(m2, 3), m2, c)
    lsip.no_error_log(t, inst)


def test_tcp_double_crlf_keepalive_answered_with_one_crlf(t):
    inst = start(t)
    c = t.stream(inst, "tcp")
    t.check(c.send(b"\r\n\r\n"), "send failed")
    got = c.recv_raw(1.0, want=2)
    got += c.recv_raw(0.5)  # nothing more may come
    t.eq(got, b"\r\n", "answer to a double-CRLF keepalive (RFC 5626 §4.4.1: exactly one CRLF)")
    t.check(not c.eof, "the connection was closed after a keepalive")
    t.eq(inst.stat("conn_keepalives"), 1, "conn_keepalives")
    # two keepalives in one write: two pongs
    c.send(b"\r\n\r\n\r\n\r\n")
    got = c.recv_raw(1.0, want=4) + c.recv_raw(0.3)
    t.eq(got, b"\r\n\r\n", "answers to two keepalives in one write")
    # SIP goes on, and the answer does not start with a stray CRLF
    m = options(c)
    c.send(m)
    raw = c.recv_raw(2.0, want=12)
    t.check(raw.startswith(b"SIP/2.0 200"), "OPTIONS after keepalives: answer starts %r" % raw[:20])
    lsip.no_error_log(t, inst)


def test_tcp_single_crlf_ignored(t):
    inst = start(t)
    c = t.stream(inst, "tcp")
    c.send(b"\r\n")
    got = c.recv_raw(0.7)
    t.eq(got, b"", "answer to a single CRLF (must be ignored)")
    t.check(not c.eof, "a single CRLF closed the connection")
    t.eq(inst.stat("conn_keepalives"), 0, "conn_keepalives after a single CRLF")
    # a request that follows it (RFC 3261 §7.5: CRLFs before a start line are ignored)
    m = options(c)
    c.send(m)
    check_200(t, "OPTIONS after a single CRLF", c.recv_response(m, 2), m, c)
    c.send(b"\r\n" + bytes(options(c, cseq=2)))
    r = c.recv_message(2)
    t.check(r is not None and r.status == 200 and r.header("CSeq") == "2 OPTIONS",
            "OPTIONS after a CRLF in the same write: %r" % r)
    lsip.no_error_log(t, inst)


def test_tcp_oversized_message_closes_connection(t):
    inst = start(t, sip_extra="max_message_size = 1024")
    # a Content-Length that makes the message bigger than sip.max_message_size
    c = t.stream(inst, "tcp")
    mark = inst.mark()
    m = options(c, body=b"x" * 2000, extra=["Content-Type: text/plain"])
    t0 = time.monotonic()
    c.send(m)
    t.check(c.wait_closed(3), "a 2000-byte body with max_message_size 1024: connection not closed")
    t.eq(c.buf, b"", "bytes sent back for a message above max_message_size (it is closed unanswered)")
    t.check(time.monotonic() - t0 < 3, "oversized message: closed after %.1f s" % (time.monotonic() - t0))
    t.eq(inst.wait_stat("conn_oversized", 1), 1, "conn_oversized after one oversized message")
    t.check(closed_line(inst, c.port, r"(?i)max_message_size|too (big|large|long)|oversized|size", mark),
            "no log line naming the connection (:%d) and the size limit" % c.port)
    # a head that never ends and outgrows the limit: closed at once, not at header_timeout (10 s)
    c2 = t.stream(inst, "tcp")
    c2.send(b"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\n")
    t0 = time.monotonic()
    for i in range(40):
        if not c2.send(b"X-Filler-%02d: %s\r\n" % (i, b"y" * 60)):
            break
    t.check(c2.wait_closed(3), "a head of 3 KB with max_message_size 1024: connection not closed")
    t.check(time.monotonic() - t0 < 3, "oversized head: closed after %.1f s" % (time.monotonic() - t0))
    t.eq(inst.wait_stat("conn_oversized", 2), 2, "conn_oversized after an oversized head")
    # a message just under the limit still passes
    c3 = t.stream(inst, "tcp")
    base = len(bytes(options(c3, body=b"")))
    m3 = options(c3, body=b"z" * (1000 - base - 40), extra=["Content-Type: text/plain"])
    t.check(len(bytes(m3)) < 1024, "test bug: message not under the limit")
    check_200(t, "a message under max_message_size", c3.request(m3, 2), m3, c3)
    lsip.no_error_log(t, inst)


def test_tcp_missing_content_length(t):
    """RFC 3261 §18.3: on a stream Content-Length is mandatory, and without it the stream cannot
    be framed again: the connection is closed without an answer, counted and logged."""
    inst = start(t)
    c = t.stream(inst, "tcp")
    mark = inst.mark()
    raw = bytes(options(c))
    raw = re.sub(rb"Content-Length: 0\r\n", b"", raw)
    t.check(b"Content-Length" not in raw, "test bug: Content-Length still there")
    c.send(raw)
    t.check(c.wait_closed(3), "a request without Content-Length on TCP: connection not closed")
    t.eq(c.buf, b"", "bytes sent back for a request without Content-Length")
    t.eq(inst.wait_stat("conn_framing_errors", 1), 1, "conn_framing_errors")
    t.check(closed_line(inst, c.port, r"(?i)content-length|fram|malformed", mark),
            "no log line naming the connection (:%d) and the framing error" % c.port)
    # a Content-Length that is not a number: same treatment
    c2 = t.stream(inst, "tcp")
    c2.send(bytes(options(c2)).replace(b"Content-Length: 0", b"Content-Length: zero"))
    t.check(c2.wait_closed(3), "Content-Length: zero on TCP: connection not closed")
    t.eq(c2.buf, b"", "bytes sent back for Content-Length: zero")
    t.eq(inst.wait_stat("conn_framing_errors", 2), 2, "conn_framing_errors after Content-Length: zero")
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------------- proxying

def _vias(msg):
    return lsip.header_values(msg, "Via")


def test_tcp_proxy_udp_to_tcp(t):
    inst = start(t)
    uac, uas = t.peer(), t.stream_server()
    m = request("OPTIONS", "sip:uas@%s:%d" % (LO, uas.port), via=(uac.host, uac.port),
                extra=["X-Route-Transport: tcp"])
    uac.send(m, inst.addr4)
    conn = uas.accept(3)
    if not t.check(conn is not None, "lunasip did not connect to the TCP peer"):
        return
    req = conn.recv_request("OPTIONS", 3)
    if not t.check(req is not None, "the OPTIONS did not reach the TCP peer"):
        return
    vias = _vias(req)
    t.check(len(vias) == 2, "Vias at the TCP peer: %r" % vias)
    top = lsip.top_via(req.raw)
    t.eq(top[:3], ("TCP", LO, inst.ports["tcp"]), "top Via of the forwarded request (SIP/2.0/TCP lunasip's tcp listener)")
    t.check(str(top[3].get("branch", "")).startswith("z9hG4bK"), "lunasip's Via branch: %r" % top[3])
    if len(vias) == 2:
        p = lsip.via_params(vias[1])
        t.check(vias[1].upper().startswith("SIP/2.0/UDP"), "second Via is not the UDP client's: %r" % vias[1])
        t.eq(p.get("rport"), str(uac.port), "the client's Via rport")
        t.eq(p.get("branch"), m.branch, "the client's Via branch")
    t.eq(req.header("Max-Forwards"), "69", "Max-Forwards")
    conn.send(lsip.reply_bytes(req, 200, "OK"))
    r = uac.recv_response(m, 3)
    if t.check(r is not None, "the 200 from the TCP peer did not reach the UDP client"):
        t.eq(r.status, 200, "status at the UDP client")
        t.eq(r.count("Via"), 1, "Vias at the UDP client")
    st = inst.stats("conn_")
    t.eq(st.get("conn_connected"), 1, "conn_connected")
    t.eq(st.get("conn_accepted"), 0, "conn_accepted")
    lsip.no_error_log(t, inst)


def test_tcp_proxy_tcp_to_udp(t):
    inst = start(t)
    uas = t.peer()
    c = t.stream(inst, "tcp")
    m = options(c, ruri="sip:uas@%s:%d" % (LO, uas.port), extra=["X-Route-Transport: udp"])
    c.send(m)
    req = lsip.wait_request(uas, "OPTIONS", 3)
    if not t.check(req is not None, "the OPTIONS did not reach the UDP peer"):
        return
    vias = _vias(req)
    t.check(len(vias) == 2, "Vias at the UDP peer: %r" % vias)
    top = lsip.top_via(req.raw)
    t.eq(top[:3], ("UDP", LO, inst.port4), "top Via of the forwarded request (lunasip's UDP)")
    if len(vias) == 2:
        t.check(re.match(r"(?i)SIP\s*/\s*2\.0\s*/\s*TCP\s", vias[1]), "second Via is not the TCP client's: %r" % vias[1])
        p = lsip.via_params(vias[1])
        t.eq(p.get("received"), LO, "the TCP client's Via received (RFC 3581)")
        t.eq(p.get("rport"), str(c.port), "the TCP client's Via rport (its connection's port)")
    lsip.uas_reply(uas, req, 200, "OK")
    r = c.recv_response(m, 3)
    if t.check(r is not None, "the 200 did not come back over the client's TCP connection"):
        t.eq(r.status, 200, "status over TCP")
        t.eq(r.count("Via"), 1, "Vias at the TCP client")
        t.eq(r.top_via_params().get("branch"), m.branch, "branch at the TCP client")
    t.eq(inst.stat("conn_connected"), 0, "conn_connected (nothing to open)")
    lsip.no_error_log(t, inst)


def test_tcp_connection_reuse_to_peer(t):
    """Two requests routed to the same TCP peer travel over one connection (the peer
    accepts once), and so does the ACK-less second transaction after the first ended."""
    inst = start(t)
    uac, uas = t.peer(), t.stream_server()
    ms = [request("OPTIONS", "sip:uas@%s:%d" % (LO, uas.port), via=(uac.host, uac.port),
                  extra=["X-Route-Transport: tcp"]) for _ in range(2)]
    uac.send(ms[0], inst.addr4)
    conn = uas.accept(3)
    if not t.check(conn is not None, "lunasip did not connect to the TCP peer"):
        return
    r1 = conn.recv_request("OPTIONS", 3)
    t.check(r1 is not None, "first OPTIONS not received")
    if r1 is not None:
        conn.send(lsip.reply_bytes(r1, 200, "OK"))
    t.check(uac.recv_response(ms[0], 3) is not None, "no 200 for the first OPTIONS")
    uac.send(ms[1], inst.addr4)
    r2 = conn.recv_request("OPTIONS", 3)
    t.check(r2 is not None, "second OPTIONS did not come over the first connection")
    if r2 is not None:
        t.eq(r2.header("Call-ID"), ms[1].call_id, "Call-ID of the second request")
        conn.send(lsip.reply_bytes(r2, 200, "OK"))
    t.check(uac.recv_response(ms[1], 3) is not None, "no 200 for the second OPTIONS")
    t.check(not uas.pending(0.5), "lunasip opened a second connection to the same peer")
    t.eq(uas.accepted, 1, "connections the peer accepted")
    t.eq(inst.stat("conn_connected"), 1, "conn_connected")
    lsip.no_error_log(t, inst)


def test_tcp_reuse_of_accepted_connection(t):
    """A request for the address a client connected from goes over that client's
    connection (nothing listens there: a new connection would be refused)."""
    inst = start(t)
    c = t.stream(inst, "tcp")
    m = options(c, ruri="sip:me@%s:%d" % (LO, c.port), extra=["X-Route-Back: 1"])
    c.send(m)
    fwd = c.recv_request("OPTIONS", 3)
    if not t.check(fwd is not None, "the request routed to the client's own address did not come over its connection"):
        return
    t.eq(len(_vias(fwd)), 2, "Vias of the request routed back")
    t.eq(lsip.top_via(fwd.raw)[:3], ("TCP", LO, inst.ports["tcp"]), "lunasip's Via on the request routed back")
    c.send(lsip.reply_bytes(fwd, 200, "OK"))
    r = c.recv_response(m, 3)
    t.check(r is not None and r.status == 200, "no 200 for the original request: %r" % r)
    st = inst.stats("conn_")
    t.eq(st.get("conn_connected"), 0, "conn_connected (the accepted connection must be reused)")
    t.eq(st.get("conn_connect_failed"), 0, "conn_connect_failed")
    lsip.no_error_log(t, inst)


def test_tcp_proxy_to_closed_port_fails_fast(t):
    """A TCP target that refuses the connection is a transport error (RFC 3261 §17.1.4):
    the caller gets a final error long before Timer F (8 s here)."""
    inst = start(t)
    uac = t.peer()
    dead = lsip.free_port(socket.AF_INET, LO, socket.SOCK_STREAM)
    m = request("OPTIONS", "sip:dead@%s:%d" % (LO, dead), via=(uac.host, uac.port), extra=["X-Route-Transport: tcp"])
    t0 = time.monotonic()
    uac.send(m, inst.addr4)
    r = None
    end = t0 + 4
    while time.monotonic() < end:
        r = uac.recv_response(m, end - time.monotonic())
        if r is None or r.status >= 200:
            break
    t.check(r is not None and r.status >= 400, "no final error for a refused TCP target within 4 s: %r" % r)
    t.check(inst.wait_log(r"MARK on_error", 1), "proxy:on_error was not called")
    t.eq(inst.stat("conn_connect_failed"), 1, "conn_connect_failed")
    lsip.no_error_log(t, inst)


def test_tcp_connect_timeout(t):
    """sip.tcp_connect_timeout: a TCP target whose listen queue is full never completes the
    handshake (the kernel drops the SYN); lunasip gives up after the timeout, logs it, and the
    routing ends with an error long before Timer F (8 s here)."""
    inst = start(t, sip_extra="tcp_connect_timeout = 1")
    uac = t.peer()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind((LO, 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue; nobody accepts
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((LO, port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.2)
    try:
        m = request("OPTIONS", "sip:slow@%s:%d" % (LO, port), via=(uac.host, uac.port),
                    extra=["X-Route-Transport: tcp"])
        t0 = time.monotonic()
        uac.send(m, inst.addr4)
        r = None
        end = t0 + 5
        while time.monotonic() < end:
            r = uac.recv_response(m, end - time.monotonic())
            if r is None or r.status >= 200:
                break
        took = time.monotonic() - t0
        t.check(r is not None and r.status >= 500, "no final error within 5 s: %r" % r)
        t.check(0.8 <= took <= 3.5, "final error after %.2f s, expected about tcp_connect_timeout (1 s)" % took)
        t.check(inst.log_lines(r"cannot connect to tcp:127\.0\.0\.1:%d: no answer within sip\.tcp_connect_timeout"
                               % port), "no log line for the connect timeout")
        t.eq(inst.stat("conn_connect_failed"), 1, "conn_connect_failed")
    finally:
        for s in fillers:
            s.close()
        lsock.close()
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------------- SIPp

def _sipp_ok(t, run, rc, what, calls):
    ok = t.eq(rc, 0, "%s: SIPp exit status" % what)
    st = run.stats()
    ok &= t.eq(st.get("SuccessfulCall(C)"), calls, "%s: successful calls" % what)
    ok &= t.eq(st.get("FailedCall(C)"), 0, "%s: failed calls" % what)
    if not ok:
        t.errors.extend("    %s: %s" % (what, ln) for ln in run.errors(6) + run.output_tail(6))
    return ok


def test_tcp_sipp_options_t1(t):
    """300 OPTIONS from SIPp over one TCP connection (-t t1)."""
    inst = start(t)
    run = t.sipp(inst.addr("tcp"), "options.xml", calls=300, rate=150, timeout_s=30, transport="t1")
    _sipp_ok(t, run, run.wait(), "SIPp -t t1", 300)
    st = inst.stats()
    t.eq(st.get("conn_accepted"), 1, "conn_accepted (SIPp t1 uses one connection)")
    t.check(st.get("rx_requests", 0) >= 300, "rx_requests %r < 300" % st.get("rx_requests"))
    lsip.no_error_log(t, inst)


def test_tcp_sipp_options_tn(t):
    """200 OPTIONS from SIPp with a TCP connection per call (-t tn)."""
    inst = start(t)
    run = t.sipp(inst.addr("tcp"), "options.xml", calls=200, rate=100, timeout_s=30, transport="tn")
    _sipp_ok(t, run, run.wait(), "SIPp -t tn", 200)
    t.check(inst.stat("conn_accepted") >= 200, "conn_accepted %r < 200 (one connection per call)" % inst.stat("conn_accepted"))
    lsip.no_error_log(t, inst)


def _proxy_calls(t, uac_mode, calls):
    inst = start(t, script=PROXY_SCRIPT)
    uas = t.sipp(inst.addr("tcp"), "proxy_uas.xml", calls, 1, 40, transport="t1")
    if not lsip.wait_tcp_listening(uas.port):
        t.fail("SIPp UAS did not listen on TCP %s:%d" % (LO, uas.port))
    uac = t.sipp((LO, uas.port), "proxy_uac.xml", calls, 50, 40, transport=uac_mode,
                 extra=["-rsa", "%s:%d" % inst.addr("tcp")])
    rc_uac = uac.wait()
    try:
        rc_uas = uas.proc.wait(5)
    except subprocess.TimeoutExpired:
        os.kill(uas.proc.pid, signal.SIGKILL)
        uas.proc.wait()
        rc_uas = None
    lsip._unregister(uas.proc.pid)
    _sipp_ok(t, uac, rc_uac, "UAC -t %s" % uac_mode, calls)
    _sipp_ok(t, uas, rc_uas, "UAS -t t1", calls)
    st = inst.stats()
    t.eq(st.get("conn_connected"), 1, "conn_connected (one connection to the UAS, reused for every call)")
    t.check(st.get("proxy_requests", 0) >= 2 * calls, "proxy_requests %r < %d" % (st.get("proxy_requests"), 2 * calls))
    t.check(not inst.log_lines(r"MARK on_error"), "on_error called: %r" % inst.log_lines(r"MARK on_error")[:3])
    return inst, st


def test_tcp_sipp_proxy_calls_t1(t):
    """100 calls SIPp UAC (-t t1) → lunasip → SIPp UAS (-t t1), all over TCP."""
    inst, st = _proxy_calls(t, "t1", 100)
    t.eq(st.get("conn_accepted"), 1, "conn_accepted (the UAC's one connection)")
    lsip.no_error_log(t, inst)


def test_tcp_sipp_proxy_calls_tn(t):
    """60 calls with a UAC connection per call (-t tn) to the same UAS connection."""
    inst, st = _proxy_calls(t, "tn", 60)
    t.check(st.get("conn_accepted", 0) >= 60, "conn_accepted %r < 60" % st.get("conn_accepted"))
    lsip.no_error_log(t, inst)
