"""The limits of stream connections (SPEC §3.1 sip.header_timeout, connection_idle_timeout,
max_connections, max_connections_per_ip; §4 "Protection": enforced with a clear log line
and a counter) and the per-connection Lua table msg.cvars (SPEC §5.2; it survives a
reload, §5.6). Each limit is shown to bite on the wire (the connection ends), in the log
(a line naming the connection) and in the counters, and shown not to bite what is within it."""
import re
import select
import signal
import socket
import time

import lsip
from lsip import request
from wsclient import OP_TEXT, WsClient

LO = "127.0.0.1"

SCRIPT = r'''
local lunasip = require "lunasip"
local VERSION = "@VERSION@"
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local cv, n = req.cvars, "none"
  if cv then
    cv.n = (cv.n or 0) + 1
    n = tostring(cv.n)
  end
  req:reply(200, "OK", { ["X-Count"] = n, ["X-Version"] = VERSION })
end
'''


def start(t, streams=("tcp",), sip_extra="", conf_extra="", version="1"):
    inst = t.instance(SCRIPT.replace("@VERSION@", version), start=False, ipv6=False, streams=streams, ctl=True,
                      sip_extra=sip_extra, conf_extra=conf_extra)
    inst.start()
    for k in streams:
        t.check(inst.wait_log(r"listening on %s:127\.0\.0\.1:%d\b" % (k, inst.ports[k]), 1),
                "%s: no 'listening on %s:127.0.0.1:%d' line" % (inst.name, k, inst.ports[k]))
    return inst


def options(cseq=1, transport="TCP"):
    return request("OPTIONS", "sip:probe@%s" % LO, via=("client.invalid", 5060 if transport == "TCP" else None),
                   transport=transport, cseq=cseq)


def ask(t, c, what, cseq=1):
    """An OPTIONS on StreamClient c: the Response (None when unanswered)."""
    r = c.request(options(cseq), 3)
    t.check(r is not None and r.status == 200, "%s: no 200 (%r)" % (what, r))
    return r


# what a log line refusing a connection for a limit must say
LIMIT_WORDS = r"(?i)max_connections|limit|refus"


def port_lines(inst, port, words, since=0):
    return [ln for ln in inst.log_lines(words, since) if re.search(r":%d\b" % port, ln)]


def closed_now(sock, timeout):
    """Waits up to timeout for the socket to become readable; True when the peer closed
    (EOF or RST). Data that arrives is read and ignored."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return False
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return True


def slow_send(t, sock, first, trickle, every=0.5, limit=9.0):
    """Sends first, then one byte of trickle every `every` seconds until the peer closes.
    Returns (seconds from the first byte to the close or None, bytes of trickle sent)."""
    t0 = time.monotonic()
    sock.sendall(first)
    sent = 0
    while time.monotonic() - t0 < limit:
        if closed_now(sock, every):
            return time.monotonic() - t0, sent
        try:
            sock.send(trickle[sent % len(trickle):sent % len(trickle) + 1])
            sent += 1
        except OSError:
            return time.monotonic() - t0, sent
    return None, sent


# ---------------------------------------------------------------------------- header_timeout

TRICKLE = (b"Via: SIP/2.0/TCP client.invalid:5060;branch=z9hG4bKslow;rport\r\n"
           b"X-Slow: " + b"s" * 200 + b"\r\n")


def test_limits_slowloris_tcp_header_timeout(t):
    inst = start(t, sip_extra="header_timeout = 2")
    # a well-behaved client on another connection throughout: never touched by the limit
    good = t.stream(inst, "tcp")
    mark = inst.mark()
    s = socket.create_connection(inst.addr("tcp"), 5)
    t._sockets.append(s)
    port = s.getsockname()[1]
    dt, sent = slow_send(t, s, b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n", TRICKLE)
    t.check(dt is not None, "a head trickled one byte per 0.5 s was not closed within 9 s (header_timeout 2)")
    if dt is not None:
        t.check(1.5 <= dt <= 4.5, "slow head closed after %.2f s, expected header_timeout (2 s) + at most 2 s" % dt)
        t.check(sent >= 2, "bytes kept coming until the close: only %d sent" % sent)
    t.eq(inst.wait_stat("conn_header_timeout", 1), 1, "conn_header_timeout")
    t.check(port_lines(inst, port, r"(?i)header.?timeout|head", mark),
            "no log line naming the connection (:%d) and its header timeout" % port)
    # the good connection: requests a second apart, each head complete at once, never closed
    for i in range(3):
        ask(t, good, "well-behaved connection, request %d" % (i + 1), cseq=i + 1)
        time.sleep(1.0)
    t.check(not good.eof, "the well-behaved connection was closed")
    t.eq(inst.stat("conn_header_timeout"), 1, "conn_header_timeout after the well-behaved requests")
    lsip.no_error_log(t, inst)


def test_limits_slowloris_ws_upgrade_head(t):
    inst = start(t, streams=("ws",), sip_extra="header_timeout = 2")
    mark = inst.mark()
    s = socket.create_connection(inst.addr("ws"), 5)
    t._sockets.append(s)
    port = s.getsockname()[1]
    trickle = b"Host: 127.0.0.1\r\nX-Slow: " + b"w" * 300 + b"\r\n"
    dt, sent = slow_send(t, s, b"GET / HTTP/1.1\r\n", trickle)
    t.check(dt is not None, "an upgrade head trickled one byte per 0.5 s was not closed within 9 s (header_timeout 2)")
    if dt is not None:
        t.check(1.5 <= dt <= 4.5, "slow upgrade head closed after %.2f s, expected header_timeout (2 s) + at most 2 s" % dt)
        t.check(sent >= 2, "bytes kept coming until the close: only %d sent" % sent)
    t.eq(inst.wait_stat("conn_header_timeout", 1), 1, "conn_header_timeout")
    t.check(port_lines(inst, port, r"(?i)header.?timeout|head|upgrade request", mark),
            "no log line naming the connection (:%d) and its header timeout" % port)
    t.eq(inst.stat("ws_upgrades"), 0, "ws_upgrades")
    lsip.no_error_log(t, inst)


def test_limits_slowloris_ws_fragments(t):
    """A SIP message trickled over a WebSocket in 1-byte fragments never completes its head:
    header_timeout applies inside WebSocket messages too."""
    inst = start(t, streams=("ws",), sip_extra="header_timeout = 2")
    mark = inst.mark()
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()
    if not t.check(resp is not None and resp.status == 101, "upgrade: %r" % resp):
        return
    raw = bytes(options(transport="WS"))
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 9 and not ws.eof:
        ws.send_frame(OP_TEXT if i == 0 else 0x0, raw[i:i + 1], fin=False)
        i += 1
        ws._fill(0.5)
    t.check(ws.eof, "a SIP message trickled in 1-byte fragments over a WebSocket was not closed within 9 s")
    if ws.eof:
        dt = time.monotonic() - t0
        t.check(1.5 <= dt <= 4.5, "slow fragmented message closed after %.2f s, expected header_timeout (2 s) + at most 2 s" % dt)
    t.eq(inst.wait_stat("conn_header_timeout", 1), 1, "conn_header_timeout")
    t.check(port_lines(inst, ws.port, r"(?i)header.?timeout|head", mark),
            "no log line naming the connection (:%d) and its header timeout" % ws.port)
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------- connection counts

def refused_at_once(t, inst, source, what, send=True):
    """A connection from source that lunasip must close at once; True when it did."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t._sockets.append(s)
    s.bind(source)
    s.settimeout(5)
    try:
        s.connect(inst.addr("tcp"))
    except (ConnectionResetError, ConnectionRefusedError):
        gone = True  # the reset came before connect() returned
    else:
        if send:
            try:
                s.sendall(bytes(options()))
            except OSError:
                pass
        gone = closed_now(s, 3) or closed_now(s, 0.5)
    dt = time.monotonic() - t0
    t.check(gone, "%s: not closed" % what)
    t.check(dt < 1.5, "%s: closed after %.2f s, expected at once" % (what, dt))
    return gone


def test_limits_max_connections_per_ip(t):
    inst = start(t, sip_extra="max_connections_per_ip = 3")
    conns = [t.stream(inst, "tcp") for _ in range(3)]
    for i, c in enumerate(conns):
        ask(t, c, "connection %d of 3" % (i + 1))
    mark = inst.mark()
    refused_at_once(t, inst, (LO, 0), "the 4th connection from 127.0.0.1 (max_connections_per_ip = 3)")
    refused_at_once(t, inst, (LO, 0), "the 5th connection from 127.0.0.1")
    t.eq(inst.wait_stat("conn_refused_limit", 2), 2, "conn_refused_limit")
    lines = [ln for ln in inst.log_lines(LIMIT_WORDS, mark) if re.search(r"\b127\.0\.0\.1\b", ln)]
    t.eq(len(lines), 1, "log lines about refusing 127.0.0.1 for two refusals (one, rate-limited): %r" % lines)
    if lines:
        t.check("max_connections_per_ip" in lines[0], "the refusal line does not name the limit: %r" % lines[0])
    # the three keep working; another source address is not counted against 127.0.0.1
    for i, c in enumerate(conns):
        ask(t, c, "connection %d of 3 after the refusal" % (i + 1), cseq=2)
    other = t.stream(inst, "tcp", source=("127.0.0.2", 0))
    ask(t, other, "a connection from 127.0.0.2")
    # one closes: a new one from 127.0.0.1 is accepted
    before = inst.stat("conn_closed") or 0
    conns[0].close()
    t.check((inst.wait_stat("conn_closed", before + 1) or 0) > before, "conn_closed did not count a client close")
    again = t.stream(inst, "tcp")
    ask(t, again, "a new connection after one of the three closed")
    t.eq(inst.stat("conn_refused_limit"), 2, "conn_refused_limit at the end")
    lsip.no_error_log(t, inst)


def test_limits_max_connections_total(t):
    inst = start(t, streams=("tcp", "ws"), sip_extra="max_connections = 3, max_connections_per_ip = 3")
    a = t.stream(inst, "tcp", source=("127.0.0.1", 0))
    b = t.stream(inst, "tcp", source=("127.0.0.2", 0))
    ask(t, a, "connection from 127.0.0.1")
    ask(t, b, "connection from 127.0.0.2")
    ws = WsClient(t, inst.addr("ws"), source=("127.0.0.3", 0))
    resp = ws.handshake()
    t.check(resp is not None and resp.status == 101, "WebSocket from 127.0.0.3 (3rd connection): %r" % resp)
    mark = inst.mark()
    refused_at_once(t, inst, ("127.0.0.4", 0), "a 4th connection (from 127.0.0.4) with max_connections = 3", send=False)
    t.eq(inst.wait_stat("conn_refused_limit", 1), 1, "conn_refused_limit")
    lines = [ln for ln in inst.log_lines(LIMIT_WORDS, mark) if re.search(r"\b127\.0\.0\.4\b", ln)]
    t.eq(len(lines), 1, "log lines about refusing 127.0.0.4: %r" % lines)
    if lines:
        t.check(re.search(r"max_connections\b", lines[0]), "the refusal line does not name the limit: %r" % lines[0])
    ask(t, a, "connection from 127.0.0.1 after the refusal", cseq=2)
    # one leaves: room for another
    before = inst.stat("conn_closed") or 0
    b.close()
    t.check((inst.wait_stat("conn_closed", before + 1) or 0) > before, "conn_closed did not count a client close")
    c = t.stream(inst, "tcp", source=("127.0.0.5", 0))
    ask(t, c, "a connection from 127.0.0.5 after one closed")
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------- idle timeout

def test_limits_connection_idle_timeout(t):
    inst = start(t, sip_extra="connection_idle_timeout = 1")
    idle = t.stream(inst, "tcp")
    busy = t.stream(inst, "tcp")
    mark = inst.mark()
    ask(t, idle, "the connection about to idle")
    t0 = time.monotonic()
    closed_at, n = None, 0
    while time.monotonic() - t0 < 3.2:
        n += 1
        busy.request(options(n), 1)
        if closed_at is None and idle.wait_closed(0.35):
            closed_at = time.monotonic() - t0
    t.check(closed_at is not None, "an idle connection was not closed within connection_idle_timeout (1 s) + 2 s")
    if closed_at is not None:
        t.check(closed_at >= 0.7, "the idle connection was closed after %.2f s, before connection_idle_timeout" % closed_at)
    t.check(not busy.eof, "a connection used every 0.35 s was closed with connection_idle_timeout 1")
    t.eq(inst.stat("conn_idle_timeout"), 1, "conn_idle_timeout")
    t.check(port_lines(inst, idle.port, r"(?i)idle", mark),
            "no log line naming the connection (:%d) and its idle timeout" % idle.port)
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------- msg.cvars

def test_limits_cvars_persist_per_connection(t):
    inst = start(t, streams=("tcp", "ws"))
    a, b = t.stream(inst, "tcp"), t.stream(inst, "tcp")
    seen = []
    for i in range(3):
        r = a.request(options(i + 1), 3)
        seen.append(r and r.header("X-Count"))
    r = b.request(options(1), 3)
    seen.append(r and r.header("X-Count"))
    r = a.request(options(4), 3)
    seen.append(r and r.header("X-Count"))
    t.eq(seen, ["1", "2", "3", "1", "4"], "msg.cvars.n seen by requests on A, A, A, B (a new connection), A")
    # a connection that closed takes its cvars along: a new one starts fresh
    a.close()
    inst.wait_stat("conn_closed", 1)
    c = t.stream(inst, "tcp")
    r = c.request(options(1), 3)
    t.eq(r and r.header("X-Count"), "1", "msg.cvars.n on a connection opened after A closed")
    # the same over WebSocket
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()
    if t.check(resp is not None and resp.status == 101, "upgrade: %r" % resp):
        got = []
        for i in range(3):
            f, r = ws.sip_request(options(i + 1, "WS"))
            got.append(r and r.header("X-Count"))
        t.eq(got, ["1", "2", "3"], "msg.cvars.n over one WebSocket")
    lsip.no_error_log(t, inst)


def test_limits_cvars_survive_reload(t):
    """SPEC §5.6: connections survive a reload, with their cvars (copied into the new Lua state)."""
    inst = start(t, version="1")
    a = t.stream(inst, "tcp")
    for i in range(2):
        r = a.request(options(i + 1), 3)
        t.check(r is not None and r.header("X-Count") == str(i + 1), "before reload, request %d: %r" % (i + 1, r))
    inst.write_script(SCRIPT.replace("@VERSION@", "2"))
    mark = inst.mark()
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(r"reload done", 10, mark), "no 'reload done' after SIGHUP")
    r = a.request(options(3), 3)
    if t.check(r is not None, "no answer on the connection after the reload (was it closed?)"):
        t.eq(r.header("X-Version"), "2", "script version after the reload")
        t.eq(r.header("X-Count"), "3", "msg.cvars.n after the reload (carried into the new Lua state)")
    b = t.stream(inst, "tcp")
    r = b.request(options(1), 3)
    t.eq(r and r.header("X-Count"), "1", "msg.cvars.n on a new connection after the reload")
    lsip.no_error_log(t, inst)
