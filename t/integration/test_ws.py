"""SIP over WebSocket (SPEC §3.1 websocket.*, §4 "Transports": RFC 6455 + RFC 7118, the sip
subprotocol required, strict framing, close codes 1002/1007/1009, size limits; §5.1
WebSocketEvents; RFC 3581 received/rport on WebSocket too), driven by wsclient.py, a raw
RFC 6455 client that can also break every framing rule on purpose. WSS over Python's ssl
module against lunasip's generated self-signed certificate."""
import re
import signal
import struct
import time

import lsip
import wsclient
from lsip import request
from wsclient import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WsClient, frame

LO = "127.0.0.1"

SCRIPT = r'''
local lunasip = require "lunasip"
local REJECT = @REJECT@
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local tp = req:header("X-Route-Transport")
  if tp then
    local proxy = lunasip.Proxy.new("proxy_out")
    local u = req.ruri
    proxy:route(req, u.host, u.port or 5060, tp)
    return
  end
  req:reply(200, "OK", { ["X-Transport"] = tostring(req.transport),
                         ["X-Source-Port"] = tostring(req.source_port),
                         ["X-Body-Length"] = tostring(#(req.body or "")) })
end
function WebSocketEvents.on_connection(conn, http_request)
  lunasip.log.notice("MARK on_connection")
  if REJECT then conn:http_reject(403, "Forbidden here") end
end
function WebSocketEvents.on_disconnection(conn, client_closed)
  lunasip.log.notice("MARK on_disconnection client_closed=%s", tostring(client_closed))
end
function WebSocketEvents.on_client_tls_handshake(conn, pems)
  lunasip.log.notice("MARK ws_tls_handshake pems=%d", #pems)
end
'''

PROXIES = "proxy_out = { timer_B = 8, timer_F = 8, timer_C = 20 }\n"


def start(t, streams=("ws",), reject=False, ws_conf="", sip_extra="", name=None):
    inst = t.instance(SCRIPT.replace("@REJECT@", "true" if reject else "false"), name=name, start=False,
                      ipv6=False, streams=streams, ctl=True, sip_extra=sip_extra, proxies=PROXIES,
                      conf_extra="core.shutdown_grace = 1\n" + ("websocket = { %s }\n" % ws_conf if ws_conf else ""))
    inst.start()
    for k in streams:
        t.check(inst.wait_log(r"listening on %s:127\.0\.0\.1:%d\b" % (k, inst.ports[k]), 1),
                "%s: no 'listening on %s:127.0.0.1:%d' line" % (inst.name, k, inst.ports[k]))
    return inst


def connect(t, inst, kind="ws", **kw):
    """A WsClient with the opening handshake done (the test fails unless 101)."""
    ws = WsClient(t, inst.addr(kind), tls=(kind == "wss"))
    resp = ws.handshake(**kw)
    if resp is None or resp.status != 101:
        t.fail("%s upgrade: expected 101, got %r" % (kind, resp))
    return ws


def ws_options(ws, **kw):
    """An OPTIONS as a WebSocket client sends it (RFC 7118 §5.2: Via SIP/2.0/WS with an
    invalid host)."""
    kw.setdefault("via", ("df7jal23ls0d.invalid", None))
    kw.setdefault("transport", "WS")
    return request("OPTIONS", kw.pop("ruri", "sip:probe@%s" % LO), **kw)


def check_answer(t, what, f, r, msg, ws, transport="ws"):
    if not t.check(r is not None, "%s: no SIP answer (frame %r)" % (what, f)):
        return False
    t.eq(f.opcode, OP_TEXT, what + ": opcode of the answer (lunasip sends text frames)")
    t.eq(f.masked, 0, what + ": the server's frame is masked (RFC 6455 §5.1 forbids it)")
    t.eq(r.status, 200, what + ": status")
    t.eq(r.header("X-Transport"), transport, what + ": msg.transport")
    vp = r.top_via_params()
    t.eq(vp.get("branch"), msg.branch, what + ": Via branch")
    t.eq(vp.get("received"), LO, what + ": Via received (RFC 3581 on WebSocket)")
    t.eq(vp.get("rport"), str(ws.port), what + ": Via rport")
    return True


def port_lines(inst, port, words, since=0):
    return [ln for ln in inst.log_lines(words, since) if re.search(r":%d\b" % port, ln)]


# ------------------------------------------------------------------------ opening handshake

def test_ws_upgrade_with_sip_subprotocol(t):
    inst = start(t)
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()
    if not t.check(resp is not None, "no answer to the upgrade request"):
        return
    t.eq(resp.status, 101, "status of the upgrade")
    t.eq(resp.header("Sec-WebSocket-Accept"), wsclient.accept_key(ws.key), "Sec-WebSocket-Accept (RFC 6455 §4.2.2)")
    t.eq((resp.header("Sec-WebSocket-Protocol") or "").lower(), "sip", "Sec-WebSocket-Protocol (RFC 7118 §4.1)")
    t.eq((resp.header("Upgrade") or "").lower(), "websocket", "Upgrade")
    t.check("upgrade" in (resp.header("Connection") or "").lower(), "Connection: %r" % resp.header("Connection"))
    t.check(inst.wait_log(r"MARK on_connection", 2), "WebSocketEvents.on_connection did not run")
    # SIP flows on it
    m = ws_options(ws)
    f, r = ws.sip_request(m)
    check_answer(t, "OPTIONS after the upgrade", f, r, m, ws)
    # a list of subprotocols with sip among them, in another case; a path and a query
    ws2 = WsClient(t, inst.addr("ws"))
    resp = ws2.handshake(protocol="chat, SIP", path="/sip/ws?token=1")
    t.check(resp is not None and resp.status == 101, "Sec-WebSocket-Protocol: chat, SIP: %r" % resp)
    if resp is not None and resp.status == 101:
        t.eq((resp.header("Sec-WebSocket-Protocol") or "").lower(), "sip", "subprotocol chosen from a list")
    t.eq(inst.stat("ws_upgrades"), 2, "ws_upgrades")
    lsip.no_error_log(t, inst)


def test_ws_upgrade_refusals(t):
    inst = start(t)
    cases = [
        # what, handshake kwargs, accepted statuses, a header the answer must carry
        # src/conn_ws.c documents 400 for a missing sip subprotocol (426 would ask for another
        # WebSocket version, which is not the problem)
        ("without Sec-WebSocket-Protocol", dict(protocol=None), (400,), None),
        ("with Sec-WebSocket-Protocol: chat only", dict(protocol="chat"), (400,), None),
        ("Sec-WebSocket-Version: 8", dict(version="8"), (426,), ("Sec-WebSocket-Version", "13")),
        ("without Sec-WebSocket-Key", dict(key=""), (400,), None),
        ("a Sec-WebSocket-Key that is not 16 bytes", dict(key="c2hvcnQ="), (400,), None),
        ("without Upgrade: websocket", dict(upgrade=None), (400,), None),
    ]
    for what, kw, want, hdr in cases:
        ws = WsClient(t, inst.addr("ws"))
        resp = ws.handshake(**kw)
        if not t.check(resp is not None, "%s: no HTTP answer" % what):
            continue
        t.check(resp.status in want, "%s: status %r, expected %s" % (what, resp.status, " or ".join(map(str, want))))
        if hdr:
            t.eq(resp.header(hdr[0]), hdr[1], "%s: %s" % (what, hdr[0]))
        t.check(ws.wait_closed(3), "%s: connection not closed after the refusal" % what)
    # a method other than GET; an HTTP/1.0 request
    for what, raw, want in (("POST", b"POST / HTTP/1.1\r\n", 405), ("HTTP/1.0", b"GET / HTTP/1.0\r\n", 505)):
        ws = WsClient(t, inst.addr("ws"))
        req = ws.upgrade_request()
        ws.send_raw(raw + req.split(b"\r\n", 1)[1])
        resp = ws.read_http()
        t.check(resp is not None and resp.status == want, "%s: expected %d, got %r" % (what, want, resp))
    t.eq(inst.wait_stat("ws_rejected", len(cases) + 2), len(cases) + 2, "ws_rejected")
    t.eq(inst.stat("ws_upgrades"), 0, "ws_upgrades")
    t.check(not inst.log_lines(r"MARK on_connection"), "on_connection ran for a refused upgrade")
    lsip.no_error_log(t, inst)


def test_ws_allowed_origins(t):
    inst = start(t, ws_conf='allowed_origins = { "https://good.example" }')
    ws = WsClient(t, inst.addr("ws"))
    mark = inst.mark()
    resp = ws.handshake(origin="https://evil.example")
    t.check(resp is not None and resp.status == 403, "Origin https://evil.example: expected 403, got %r" % resp)
    t.check(ws.wait_closed(3), "refused origin: connection not closed")
    t.check(port_lines(inst, ws.port, r"(?i)origin", mark), "no log line naming the connection and its refused Origin")
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake(origin="https://good.example")
    t.check(resp is not None and resp.status == 101, "Origin https://good.example: expected 101, got %r" % resp)
    t.eq(inst.stat("ws_rejected"), 1, "ws_rejected")
    lsip.no_error_log(t, inst)


def test_ws_on_connection_http_reject(t):
    inst = start(t, reject=True)
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()
    t.check(inst.wait_log(r"MARK on_connection", 2), "WebSocketEvents.on_connection did not run")
    if t.check(resp is not None, "no HTTP answer"):
        t.eq(resp.start, "HTTP/1.1 403 Forbidden here", "status line of conn:http_reject(403, \"Forbidden here\")")
    t.check(ws.wait_closed(3), "connection not closed after http_reject")
    t.eq(inst.stat("ws_rejected"), 1, "ws_rejected")
    t.eq(inst.stat("ws_upgrades"), 0, "ws_upgrades")
    t.check(not inst.log_lines(r"MARK on_disconnection"), "on_disconnection ran for a connection that never opened")
    lsip.no_error_log(t, inst)


# ------------------------------------------------------------------------ SIP over frames

def test_ws_options_text_and_binary_frames(t):
    inst = start(t)
    ws = connect(t, inst)
    m = ws_options(ws)
    f, r = ws.sip_request(m)
    check_answer(t, "OPTIONS in a text frame", f, r, m, ws)
    m = ws_options(ws, cseq=2)
    f, r = ws.sip_request(m, binary=True)
    check_answer(t, "OPTIONS in a binary frame", f, r, m, ws)
    # a body, with a 16-bit length frame
    body = "v=0\r\n" + "a=x-filler:%s\r\n" % ("y" * 300)
    m = ws_options(ws, cseq=3, body=body, extra=["Content-Type: application/sdp"])
    f, r = ws.sip_request(m)
    if check_answer(t, "OPTIONS with a body (16-bit frame length)", f, r, m, ws):
        t.eq(r.header("X-Body-Length"), str(len(body)), "body length seen by the script")
    lsip.no_error_log(t, inst)


def test_ws_fragmented_message(t):
    inst = start(t)
    ws = connect(t, inst)
    m = ws_options(ws)
    raw = bytes(m)
    ws.send_fragments(OP_TEXT, [raw[:40], raw[40:]])
    f, r = ws.recv_sip(m)
    check_answer(t, "OPTIONS in two fragments", f, r, m, ws)
    # three fragments with a ping between them (control frames may interleave, RFC 6455 §5.4)
    m = ws_options(ws, cseq=2)
    raw = bytes(m)
    ws.send_fragments(OP_TEXT, [raw[:10], raw[10:100], raw[100:]], between=frame(OP_PING, b"mid"))
    pong = ws.recv_frame(3)
    t.check(pong is not None and pong.opcode == OP_PONG and pong.payload == b"mid",
            "ping between fragments: expected a pong 'mid', got %r" % pong)
    f, r = ws.recv_sip(m)
    check_answer(t, "OPTIONS in three fragments around a ping", f, r, m, ws)
    # a UTF-8 character split across two fragments is fine
    m = ws_options(ws, cseq=3, extra=["Subject: caf\u00e9 \u20ac"])
    raw = bytes(m)
    cut = raw.index("\u20ac".encode()) + 1
    ws.send_fragments(OP_TEXT, [raw[:cut], raw[cut:]])
    f, r = ws.recv_sip(m)
    check_answer(t, "OPTIONS with a UTF-8 character split between fragments", f, r, m, ws)
    lsip.no_error_log(t, inst)


def test_ws_ping_pong(t):
    inst = start(t)
    ws = connect(t, inst)
    for payload in (b"lunasip-ping-123", b"", bytes(range(125))):
        ws.send_frame(OP_PING, payload)
        f = ws.recv_frame(3)
        if t.check(f is not None, "no answer to a ping of %d bytes" % len(payload)):
            t.eq((f.opcode, f.fin, f.masked), (OP_PONG, 1, 0), "answer to a ping: opcode, FIN, mask")
            t.eq(f.payload, payload, "pong payload (RFC 6455 §5.5.3)")
    # an unsolicited pong is ignored
    ws.send_frame(OP_PONG, b"unsolicited")
    t.check(ws.recv_frame(0.5) is None and not ws.eof, "an unsolicited pong was answered or closed the connection")
    m = ws_options(ws)
    f, r = ws.sip_request(m)
    check_answer(t, "OPTIONS after pings", f, r, m, ws)
    lsip.no_error_log(t, inst)


def test_ws_client_close_echoed(t):
    inst = start(t)
    ws = connect(t, inst)
    m = ws_options(ws)
    ws.sip_request(m)
    ws.close(1000, b"bye")
    f = ws.recv_frame(3)
    if t.check(f is not None and f.opcode == OP_CLOSE, "no close frame echoed (got %r)" % f):
        t.eq(f.close_code, 1000, "code of the echoed close")
        t.eq(f.masked, 0, "echoed close masked")
    t.check(ws.wait_closed(3), "TCP connection not closed after the close handshake")
    ws.close_socket()
    t.check(inst.wait_log(r"MARK on_disconnection client_closed=true", 3),
            "WebSocketEvents.on_disconnection(conn, true) did not run: %r" % inst.log_lines(r"MARK on_disc"))
    t.eq(inst.wait_stat("conn_closed", 1), 1, "conn_closed")
    # a close without a status code is answered with 1000 (1005 is never sent on the wire)
    ws = connect(t, inst)
    ws.send_frame(OP_CLOSE, b"")
    f = ws.recv_frame(3)
    t.check(f is not None and f.opcode == OP_CLOSE and f.close_code == 1000,
            "empty close: echoed %r (1005 is never sent: 1000 answers a close without a code)" % f)
    t.check(ws.wait_closed(3), "empty close: TCP connection not closed")
    t.eq(inst.stat("ws_protocol_errors"), 0, "ws_protocol_errors")
    lsip.no_error_log(t, inst)


def _violation_cases():
    big = b"x" * 600
    opt = bytes(request("OPTIONS", "sip:probe@%s" % LO, via=("df7jal23ls0d.invalid", None), transport="WS",
                        extra=["Subject: ab"]))
    return [
        ("unmasked frame", frame(OP_TEXT, opt, mask=False), 1002),
        ("invalid UTF-8 in a text message", frame(OP_TEXT, opt.replace(b"Subject: ab", b"Subject: a\xff\xfeb")), 1007),
        ("invalid UTF-8 across fragments", frame(OP_TEXT, b"OPTIONS \xe2\x82", fin=False) + frame(OP_CONT, b"(x"), 1007),
        ("frame above max_frame_size", frame(OP_TEXT, big), 1009),
        ("message above max_message_size over fragments",
         frame(OP_TEXT, b"x" * 400, fin=False) + frame(OP_CONT, b"x" * 400, fin=False) + frame(OP_CONT, b"x" * 400), 1009),
        ("reserved data opcode 0x3", frame(0x3, b"abc"), 1002),
        ("reserved control opcode 0xB", frame(0xB, b"abc"), 1002),
        ("RSV1 set without an extension", frame(OP_TEXT, opt, rsv=4), 1002),
        ("control frame above 125 bytes", frame(OP_PING, b"p" * 126), 1002),
        ("fragmented ping", frame(OP_PING, b"abc", fin=False), 1002),
        ("continuation without a message", frame(OP_CONT, b"abc"), 1002),
        ("new text frame inside a fragmented message", frame(OP_TEXT, b"abc", fin=False) + frame(OP_TEXT, b"def"), 1002),
        ("close frame with a 1-byte payload", frame(OP_CLOSE, b"\x03"), 1002),
        ("close code 1005 on the wire", frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
        ("16-bit length for 5 bytes (not minimal)", frame(OP_TEXT, b"hello", length_form=126), 1002),
    ]


# what the log line of a connection closed for a framing error must mention (its code or its cause)
WS_ERROR_WORDS = (r"(?i)\b100[279]\b|protocol|mask|utf|too (big|large|long)|size|opcode|rsv|reserved|control"
                  r"|continuation|fragment|close|length")


def test_ws_protocol_violations_close_codes(t):
    inst = start(t, ws_conf="max_frame_size = 512, max_message_size = 1024")
    cases = _violation_cases()
    for what, data, code in cases:
        ws = connect(t, inst)
        mark = inst.mark()
        before = inst.stat("ws_protocol_errors")
        ws.send_raw(data)
        got = ws.read_close(3)
        if t.check(got is not None, "%s: no close frame (expected %d); frames %r, eof %s" % (what, code, ws.skipped, ws.eof)):
            t.eq(got[0], code, "%s: close code" % what)
            try:
                got[1].decode("utf-8")
            except UnicodeDecodeError:
                t.check(False, "%s: close reason is not UTF-8: %r" % (what, got[1]))
        ws.send_frame(OP_CLOSE, struct.pack("!H", code))  # complete the closing handshake
        t.check(ws.wait_closed(3), "%s: TCP connection not closed after the close frame" % what)
        ws.close_socket()
        t.check(port_lines(inst, ws.port, WS_ERROR_WORDS, mark),
                "%s: no log line naming the connection (:%d) and what was wrong" % (what, ws.port))
        # src/stats.h: ws_protocol_errors counts "connections closed for a framing error
        # (1002, 1007, 1009)"
        t.eq(inst.wait_stat("ws_protocol_errors", before + 1, 2) - before, 1,
             "%s: ws_protocol_errors increase (src/stats.h counts 1002, 1007 and 1009 there)" % what)
    t.check(inst.wait_log(r"MARK on_disconnection client_closed=false", 2),
            "on_disconnection(conn, false) did not run for connections lunasip closed")
    t.check(not inst.log_lines(r"MARK on_disconnection client_closed=true"),
            "on_disconnection said client_closed=true for a connection lunasip closed on an error")
    # limits are not too tight: a 512-byte frame and a 1024-byte message in fragments pass
    ws = connect(t, inst)
    m = ws_options(ws, body="b" * 100, extra=["Content-Type: text/plain"])
    raw = bytes(m)
    t.check(len(raw) <= 512, "test bug: OPTIONS of %d bytes" % len(raw))
    f, r = ws.sip_request(m)
    check_answer(t, "OPTIONS within max_frame_size", f, r, m, ws)
    m = ws_options(ws, cseq=2, body="c" * (1000 - len(raw)), extra=["Content-Type: text/plain"])
    raw = bytes(m)
    t.check(512 < len(raw) <= 1024, "test bug: OPTIONS of %d bytes" % len(raw))
    ws.send_fragments(OP_TEXT, [raw[:500], raw[500:]])
    f, r = ws.recv_sip(m)
    check_answer(t, "OPTIONS of %d bytes in two 512-byte frames" % len(raw), f, r, m, ws)
    lsip.no_error_log(t, inst)


def test_ws_keepalive_ping_and_pong_timeout(t):
    inst = start(t, ws_conf="keepalive_interval = 1, pong_timeout = 1")
    alive = connect(t, inst)      # answers pings
    mute = connect(t, inst)       # never answers
    mark = inst.mark()
    t0 = time.monotonic()
    mute_frames, mute_closed_at = [], None
    while time.monotonic() - t0 < 5.0:
        alive.recv_message(0.05)  # answers the pings it reads
        f = mute.recv_frame(0.05)
        if f is not None:
            mute_frames.append(f)
        if mute.eof and mute_closed_at is None:
            mute_closed_at = time.monotonic() - t0
    pings = [f for f in mute_frames if f.opcode == OP_PING]
    t.check(pings, "no ping from lunasip within 5 s with keepalive_interval 1 (frames %r)" % mute_frames)
    t.check(mute_closed_at is not None and mute_closed_at <= 4.5,
            "a client that never answers pings was not closed within keepalive_interval + pong_timeout + 2 s "
            "(closed at %r)" % mute_closed_at)
    t.check(len(alive.pings) >= 2, "the answering client got %d pings in 5 s" % len(alive.pings))
    t.check(not alive.eof, "a client that answers pings was closed")
    st = inst.stats("ws_")
    t.check(st.get("ws_pings_sent", 0) >= 3, "ws_pings_sent %r" % st.get("ws_pings_sent"))
    t.eq(st.get("ws_pong_timeouts"), 1, "ws_pong_timeouts")
    t.check(port_lines(inst, mute.port, r"(?i)pong|keepalive|timeout", mark),
            "no log line naming the silent connection (:%d) and the missing pong" % mute.port)
    m = ws_options(alive)
    f, r = alive.sip_request(m)
    check_answer(t, "OPTIONS on the answering connection", f, r, m, alive)
    lsip.no_error_log(t, inst)


def test_ws_via_received_rport_when_proxied(t):
    inst = start(t)
    uas = t.peer()
    ws = connect(t, inst)
    m = ws_options(ws, ruri="sip:uas@%s:%d" % (LO, uas.port), extra=["X-Route-Transport: udp"])
    ws.send_text(bytes(m))
    req = lsip.wait_request(uas, "OPTIONS", 3)
    if not t.check(req is not None, "the OPTIONS from the WebSocket client did not reach the UDP peer"):
        return
    vias = lsip.header_values(req, "Via")
    t.check(len(vias) == 2, "Vias at the UDP peer: %r" % vias)
    t.eq(lsip.top_via(req.raw)[:3], ("UDP", LO, inst.port4), "lunasip's Via")
    if len(vias) == 2:
        t.check(re.match(r"(?i)SIP\s*/\s*2\.0\s*/\s*WS\s+df7jal23ls0d\.invalid", vias[1]),
                "second Via is not the WebSocket client's: %r" % vias[1])
        p = lsip.via_params(vias[1])
        t.eq(p.get("received"), LO, "the WebSocket client's Via: received (RFC 3581, SPEC §4)")
        t.eq(p.get("rport"), str(ws.port), "the WebSocket client's Via: rport")
        t.eq(p.get("branch"), m.branch, "the WebSocket client's Via: branch")
    lsip.uas_reply(uas, req, 200, "OK")
    f, r = ws.recv_sip(m)
    if t.check(r is not None, "the 200 did not come back over the WebSocket (frame %r)" % f):
        t.eq(r.status, 200, "status over the WebSocket")
        t.eq(f.opcode, OP_TEXT, "opcode of the forwarded 200")
        t.eq(r.count("Via"), 1, "Vias at the WebSocket client")
    lsip.no_error_log(t, inst)


def test_wss_options(t):
    inst = start(t, streams=("wss",))
    ws = connect(t, inst, "wss")
    t.check(inst.wait_log(r"MARK ws_tls_handshake pems=0", 2),
            "WebSocketEvents.on_client_tls_handshake did not run with an empty chain")
    m = ws_options(ws, transport="WSS")
    f, r = ws.sip_request(m)
    check_answer(t, "OPTIONS over WSS", f, r, m, ws, transport="wss")
    ws.close(1000)
    f = ws.recv_frame(3)
    t.check(f is not None and f.opcode == OP_CLOSE and f.close_code == 1000, "WSS close: echoed %r" % f)
    t.check(ws.wait_closed(3), "WSS: TCP connection not closed after the close handshake")
    ws.close_socket()
    t.check(inst.wait_log(r"MARK on_disconnection client_closed=true", 3), "WSS: on_disconnection(conn, true) did not run")
    st = inst.stats()
    t.eq(st.get("tls_handshakes"), 1, "tls_handshakes")
    t.eq(st.get("ws_upgrades"), 1, "ws_upgrades")
    lsip.no_error_log(t, inst)


def test_ws_shutdown_closes_with_1001(t):
    """SPEC §2: on TERM lunasip closes WebSockets with 1001 and exits 0."""
    inst = start(t)
    ws = connect(t, inst)
    m = ws_options(ws)
    ws.sip_request(m)
    inst.signal(signal.SIGTERM)
    got = ws.read_close(5)
    t.check(got is not None and got[0] == 1001, "close at shutdown: expected 1001, got %r" % (got,))
    ws.send_frame(OP_CLOSE, struct.pack("!H", 1001))
    t.check(ws.wait_closed(5), "TCP connection not closed at shutdown")
    try:
        inst.proc.wait(10)
    except Exception:
        pass
    t.eq(inst.stop(), 0, "exit status after TERM")
