"""The event sinks of SPEC §6 on the wire: udp:, unix:, tcp: and http:// receivers written
here deliver the exact JSON-RPC notification bytes; tcp newline framing and reconnect after
the receiver restarts; http POST head/body, answer framings, a 500 counted as failed and an
answer that never comes; virtual:PARALLEL|FAILOVER|ROUND-ROBIN with one member down (closed
UDP port, missing unix path, refused TCP); and a TCP peer that accepts and never reads, which
must not slow SIP down while its events are dropped, counted and reported (E_EVENT_DROPPED)."""
import json
import os
import re
import socket
import threading
import time

import lsip
from lsip import request

# ---------------------------------------------------------------------------------------------
# lunasip side

SINKS_LUA = r'''
local lunasip = require "lunasip"
local SUBS = { @SUBS@ }
for _, s in ipairs(SUBS) do
  assert(subscribe_event(s[1], s[2]))
end
@EXTRA@
function SipEvents.on_request(req)
  if req.method ~= "OPTIONS" then
    if req.method ~= "ACK" then req:reply(405) end
    return
  end
  local ev = req:header("X-Event") or "E_MY_EVENT"
  local mode = req:header("X-Mode") or "map"
  local seq = tonumber(req:header("X-Seq") or "0")
  local n, err
  if mode == "map" then
    n, err = raise_event(ev, { code = 200, caller = "alice" })
  elseif mode == "ordered" then
    n, err = raise_event(ev, { { "code", 200 }, { "caller", "alice" } })
  elseif mode == "seq" then
    n, err = raise_event(ev, { { "seq", seq } })
  elseif mode == "pad" then
    n, err = raise_event(ev, { { "seq", seq }, { "pad", string.rep("x", tonumber(req:header("X-Pad"))) } })
  end
  req:reply(200, "OK", { "X-Raised: " .. tostring(n) .. "/" .. tostring(err) })
end
'''

MAP_JSON = b'{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"caller":"alice","code":200}}'
ORDERED_JSON = b'{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"code":200,"caller":"alice"}}'


def seq_json(event, seq):
    return ('{"jsonrpc":"2.0","method":"%s","params":{"seq":%d}}' % (event, seq)).encode()


def start(t, subs, events="", extra_lua="", log_level="debug"):
    """A lunasip whose server.lua subscribes subs [(event, socket)] at load and raises an
    event per OPTIONS (see SINKS_LUA). events: the body of lunasip.conf's events = {}."""
    lua = SINKS_LUA.replace("@SUBS@", ", ".join('{ %s, %s }' % (_lua_str(e), _lua_str(s)) for e, s in subs))
    lua = lua.replace("@EXTRA@", extra_lua)
    conf = "events = { %s }" % events if events else ""
    return t.instance(lua, ipv6=False, conf_extra=conf, log_level=log_level)


def _lua_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


class Raiser:
    """Sends OPTIONS that make server.lua raise one event each; checks the answer."""

    def __init__(self, t, inst):
        self.t, self.inst = t, inst
        self.peer = t.peer()

    def raise_(self, mode="map", event=None, seq=0, pad=None, timeout=3.0):
        extra = ["X-Mode: " + mode, "X-Seq: %d" % seq]
        if event:
            extra.append("X-Event: " + event)
        if pad is not None:
            extra.append("X-Pad: %d" % pad)
        dst = self.inst.addr4
        m = request("OPTIONS", "sip:probe@%s" % lsip.hostport(*dst), via=(self.peer.host, self.peer.port),
                    extra=extra)
        r = self.peer.request(m, dst, timeout)
        if r is None:
            self.t.fail("no answer to the OPTIONS raising %s seq %d" % (event or "E_MY_EVENT", seq))
        return r


# ---------------------------------------------------------------------------------------------
# receivers (each runs in daemon threads; the test's cleanup closes their sockets)

class Collector:
    def __init__(self):
        self.msgs = []
        self.cv = threading.Condition()

    def add(self, m):
        with self.cv:
            self.msgs.append(m)
            self.cv.notify_all()

    def wait(self, n, timeout=5.0):
        """True once at least n messages arrived (waits up to timeout)."""
        end = time.monotonic() + timeout
        with self.cv:
            while len(self.msgs) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(left)
            return True

    def settle(self, quiet=0.3, timeout=5.0):
        """Waits until nothing arrived for quiet seconds; returns the messages."""
        end = time.monotonic() + timeout
        last = -1
        while time.monotonic() < end:
            with self.cv:
                n = len(self.msgs)
            if n == last:
                break
            last = n
            time.sleep(quiet)
        with self.cv:
            return list(self.msgs)

    def snapshot(self):
        with self.cv:
            return list(self.msgs)


def _thread(fn, *a):
    th = threading.Thread(target=fn, args=a, daemon=True)
    th.start()
    return th


class DgramRecv(Collector):
    """A UDP (host given) or unix datagram (path given) receiver."""

    def __init__(self, t, host="127.0.0.1", path=None):
        super().__init__()
        self.t, self.path = t, path
        self.stopped = False
        self._bind(host)

    def _bind(self, host="127.0.0.1"):
        if self.path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.path)
            self.socket = "unix:" + self.path
        else:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(fam, socket.SOCK_DGRAM)
            self.sock.bind((host, 0))
            self.port = self.sock.getsockname()[1]
            self.socket = "udp:%s" % lsip.hostport(host, self.port)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(0.1)
        self.t._sockets.append(self.sock)
        self.stopped = False
        _thread(self._loop, self.sock)

    def _loop(self, sock):
        while not self.stopped:
            try:
                data = sock.recv(70000)
            except socket.timeout:
                continue
            except OSError:
                return
            self.add(data)

    def stop(self):
        """unix: the receiver goes away (socket closed, path removed)."""
        self.stopped = True
        time.sleep(0.15)
        self.sock.close()
        if self.path:
            os.unlink(self.path)

    def restart(self):
        self._bind()


class TcpRecv(Collector):
    """A TCP receiver of newline-delimited messages: msgs are (connection number, line).
    read=False accepts and never reads (the hung peer); rcvbuf shrinks its receive buffer."""

    def __init__(self, t, rcvbuf=None, read=True):
        super().__init__()
        self.t, self.rcvbuf, self.read = t, rcvbuf, read
        self.conns = []
        self.nconn = 0
        self.port = 0
        self.partial = {}
        self._listen()
        self.socket = "tcp:127.0.0.1:%d" % self.port

    def _listen(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.settimeout(0.1)
        self.port = ls.getsockname()[1]
        self.ls = ls
        self.stopped = False
        self.t._sockets.append(ls)
        _thread(self._accept_loop, ls)

    def _accept_loop(self, ls):
        while not self.stopped:
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.t._sockets.append(c)
            self.conns.append(c)
            self.nconn += 1
            if self.read:
                _thread(self._reader, c, self.nconn)

    def _reader(self, c, cid):
        c.settimeout(0.1)
        buf = b""
        while True:
            try:
                d = c.recv(65536)
            except socket.timeout:
                if self.stopped:
                    return
                continue
            except OSError:
                return
            if not d:
                return
            buf += d
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.add((cid, line))
            self.partial[cid] = buf

    def stop(self):
        """The receiver goes away: listener and connections closed."""
        self.stopped = True
        time.sleep(0.15)
        self.ls.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []

    def restart(self):
        self._listen()


class HttpRecv(Collector):
    """A raw HTTP/1.1 server: msgs are dicts (conn, method, path, version, headers, body).
    respond(i, req) returns the bytes to answer the i-th request (0-based) with, "hang" to
    never answer, "drop" to close the connection without answering, (bytes, "close") to
    close the connection after answering, or (bytes, "trickle") to send it a byte at a time."""

    def __init__(self, t, respond):
        super().__init__()
        self.t, self.respond = t, respond
        self.nconn = 0
        self.nreq = 0
        self.lock = threading.Lock()
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        ls.settimeout(0.1)
        self.port = ls.getsockname()[1]
        self.ls = ls
        self.stopped = False
        t._sockets.append(ls)
        _thread(self._accept_loop, ls)

    def _accept_loop(self, ls):
        while not self.stopped:
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.t._sockets.append(c)
            self.nconn += 1
            _thread(self._serve, c, self.nconn)

    def _serve(self, c, cid):
        c.settimeout(0.1)
        buf = b""
        while not self.stopped:
            while b"\r\n\r\n" not in buf:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    if self.stopped:
                        return
                    continue
                except OSError:
                    return
                if not d:
                    c.close()
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            headers = []
            for ln in lines[1:]:
                k, v = ln.split(":", 1)
                headers.append((k.strip().lower(), v.strip()))
            clen = int(dict(headers).get("content-length", "0"))
            while len(buf) < clen:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not d:
                    return
                buf += d
            body, buf = buf[:clen], buf[clen:]
            req = {"conn": cid, "method": method, "path": path, "version": version,
                   "headers": headers, "body": body}
            with self.lock:
                i = self.nreq
                self.nreq += 1
            ans = self.respond(i, req)
            self.add(req)
            if ans == "hang":
                continue
            if ans == "drop":
                c.close()
                return
            close = trickle = False
            if isinstance(ans, tuple):
                ans, close, trickle = ans[0], ans[1] == "close", ans[1] == "trickle"
            try:
                if trickle:  # one byte per segment: every parser state sees a split
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for k in range(len(ans)):
                        c.sendall(ans[k:k + 1])
                        time.sleep(0.0005)
                else:
                    c.sendall(ans)
            except OSError:
                return
            if close:
                time.sleep(0.05)
                c.close()
                return


def dropped_reports(recv):
    """The E_EVENT_DROPPED notifications a receiver got: [(raw, params)]."""
    out = []
    for m in recv.snapshot():
        d = json.loads(m)
        if d.get("method") == "E_EVENT_DROPPED":
            out.append((m, d["params"]))
    return out


def dropped_count(recv, socket_text, event=None):
    return sum(p["count"] for _, p in dropped_reports(recv)
               if p["socket"] == socket_text and (event is None or p["event"] == event))


def check_dropped_format(t, recv, what):
    rx = re.compile(rb'^\{"jsonrpc":"2\.0","method":"E_EVENT_DROPPED","params":\{"event":"[^"]+",'
                    rb'"socket":"[^"]+","count":[1-9][0-9]*\}\}$')
    for raw, _ in dropped_reports(recv):
        t.check(rx.match(raw), "%s: E_EVENT_DROPPED payload not as SPEC §5.5: %r" % (what, raw))


# ---------------------------------------------------------------------------------------------
# udp: and unix:

def test_evi_sinks_udp_unix_payload(t):
    """udp (IPv4, IPv6) and unix datagram receivers get exactly the notification bytes: map
    params in sorted key order, ordered params in their order, one datagram each."""
    r4 = DgramRecv(t)
    r6 = DgramRecv(t, host="::1")
    ru = DgramRecv(t, path=os.path.join(t.dir, "ev.sock"))
    inst = start(t, [("E_MY_EVENT", r.socket) for r in (r4, r6, ru)])
    ra = Raiser(t, inst)
    ans = ra.raise_("map")
    t.eq(ans.header("X-Raised"), "3/nil", "raise_event's count (three subscribers)")
    ra.raise_("ordered")
    for r in (r4, r6, ru):
        t.check(r.wait(2, 3.0), "%s: %d datagram(s), expected 2" % (r.socket, len(r.msgs)))
        got = r.settle(0.2)
        t.eq(got, [MAP_JSON, ORDERED_JSON], r.socket + ": datagrams")
    t.check(inst.wait_log(r"event socket %s is up" % re.escape(ru.socket), 2.0),
            "no 'is up' line for the unix sink")
    lsip.no_error_log(t, inst)


def test_evi_sinks_udp_unix_receiver_down(t):
    """udp to a closed port and unix to a missing path: the event fails (E_EVENT_DROPPED counts
    it), the sink goes DOWN; once a receiver is back, events flow again and the sink is UP."""
    drops = DgramRecv(t)
    port = lsip.free_port()
    udp_sock = "udp:127.0.0.1:%d" % port
    upath = os.path.join(t.dir, "late.sock")
    unix_sock = "unix:" + upath
    inst = start(t, [("E_UDP", udp_sock), ("E_UNIX", unix_sock), ("E_EVENT_DROPPED", drops.socket)],
                 events="retry_max = 1")
    ra = Raiser(t, inst)
    for i in range(3):
        ra.raise_("seq", "E_UDP", i)
        ra.raise_("seq", "E_UNIX", i)
    t.check(inst.wait_log(r"event socket %s is down: send: Connection refused" % re.escape(udp_sock), 3.0),
            "no DOWN line for the closed UDP port")
    t.check(inst.wait_log(r"event socket %s is down: send: No such file or directory" % re.escape(unix_sock), 3.0),
            "no DOWN line for the missing unix path")
    end = time.monotonic() + 4.0
    while time.monotonic() < end and (dropped_count(drops, udp_sock) < 3 or dropped_count(drops, unix_sock) < 3):
        time.sleep(0.1)
    t.eq(dropped_count(drops, udp_sock, "E_UDP"), 3, "E_EVENT_DROPPED count for the closed UDP port")
    t.eq(dropped_count(drops, unix_sock, "E_UNIX"), 3, "E_EVENT_DROPPED count for the missing unix path")
    check_dropped_format(t, drops, "receiver down")

    # the receivers come up on the same port / path
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.settimeout(3.0)
    t._sockets.append(s)
    ru = DgramRecv(t, path=upath)
    mark = inst.mark()
    t.check(inst.wait_log(r"event socket %s is up again" % re.escape(unix_sock), 3.0, since=mark),
            "unix sink not UP again (reconnect to the path while DOWN) within 3 s")
    time.sleep(1.2)  # the udp sink's probe delay (retry_max = 1)
    for i in range(3, 6):
        ra.raise_("seq", "E_UDP", i)
        ra.raise_("seq", "E_UNIX", i)
    got = []
    try:
        for _ in range(3):
            got.append(s.recv(70000))
    except socket.timeout:
        pass
    t.eq(got, [seq_json("E_UDP", i) for i in range(3, 6)], "udp datagrams once the port is open")
    t.check(ru.wait(3, 3.0), "unix: %d datagram(s) after the receiver came back, expected 3" % len(ru.msgs))
    t.eq(ru.settle(0.2), [seq_json("E_UNIX", i) for i in range(3, 6)], "unix datagrams after the receiver came back")
    t.check(inst.wait_log(r"event socket %s is up" % re.escape(udp_sock), 2.0, since=mark),
            "no 'is up' line for the UDP sink once its port was open")

    # a unix receiver restarted on the same path (our connected socket is stale)
    ru.stop()
    ru.restart()
    ra.raise_("seq", "E_UNIX", 6)
    t.check(ru.wait(4, 3.0), "unix: event 6 not delivered to the restarted receiver")
    t.eq(ru.snapshot()[3:], [seq_json("E_UNIX", 6)], "unix datagram after the receiver restarted")
    lsip.no_error_log(t, inst)


def test_evi_sinks_udp_oversize(t):
    """A payload above 65507 bytes cannot be one IPv4 UDP datagram: it fails (EMSGSIZE),
    counted in E_EVENT_DROPPED, and the sink stays UP for the next event."""
    r = DgramRecv(t)
    drops = DgramRecv(t)
    inst = start(t, [("E_BIG", r.socket), ("E_EVENT_DROPPED", drops.socket)])
    ra = Raiser(t, inst)
    ra.raise_("pad", "E_BIG", 1, pad=65000)   # fits
    over = len(b'{"jsonrpc":"2.0","method":"E_BIG","params":{"seq":2,"pad":""}}')
    ra.raise_("pad", "E_BIG", 2, pad=65520 - over)   # 65520 bytes: above 65507, below 64 KB
    ra.raise_("pad", "E_BIG", 3, pad=10)
    t.check(r.wait(2, 3.0), "udp: %d datagram(s), expected 2" % len(r.msgs))
    got = r.settle(0.3)
    t.eq([json.loads(m)["params"]["seq"] for m in got], [1, 3], "datagrams delivered (seq)")
    t.check(got and len(got[0]) > 65000, "the 65000-byte event was not delivered whole")
    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, r.socket) < 1:
        time.sleep(0.1)
    t.eq(dropped_count(drops, r.socket, "E_BIG"), 1, "E_EVENT_DROPPED count for the oversized event")
    t.check(not re.search(r"event socket %s is down" % re.escape(r.socket), inst.log()),
            "an oversized payload set the sink DOWN")
    lsip.no_error_log(t, inst)


def test_evi_sinks_bad_sockets(t):
    """Malformed socket strings are refused with a message naming the socket and what is
    allowed."""
    cases = [
        ("udp:127.0.0.1", "udp:127.0.0.1: port missing; expected udp:IP:PORT or udp:[IPv6]:PORT"),
        ("udp:example.com:8888", "udp:example.com:8888: host names are not supported"),
        ("udp:127.0.0.1:0", "udp:127.0.0.1:0: port out of range 1..65535"),
        ("udp:::1:9", "udp:::1:9: an IPv6 address must be written in brackets"),
        ("udp:[::1:9", "udp:[::1:9: unterminated [IPv6] address"),
        ("tcp:1.2.3:80", "tcp:1.2.3:80: bad IPv4 address; expected tcp:IP:PORT or tcp:[IPv6]:PORT"),
        ("tcp:[::1]:99999", "tcp:[::1]:99999: port out of range 1..65535"),
        ("unix:relative.sock", "unix:relative.sock: the path must be absolute"),
        ("unix:/" + "x" * 120, "path longer than 107 bytes"),
        ("http://127.0.0.1:8080/a b", "the path has a space"),
        ("http://user:secret-pw@127.0.0.1:8080/", "http://***@127.0.0.1:8080/: user info (user@) is not supported"),
        ("http://localhost:8080/", "host names are not supported"),
    ]
    lua = "local CASES = { %s }\n" % ", ".join(_lua_str(c) for c, _ in cases)
    lua += r'''
for i, s in ipairs(CASES) do
  local ok, err = pcall(subscribe_event, "E_BAD", s)
  lunasip.log.notice("BADSOCK %d ok=%s err=%s", i, tostring(ok), tostring(err))
end
local ok, err = pcall(subscribe_event, "E_GOOD", "http://[::1]/events?x=1")
lunasip.log.notice("GOODSOCK ok=%s err=%s", tostring(ok), tostring(err))
'''
    inst = start(t, [], extra_lua=lua)
    log = inst.log()
    for i, (sock, want) in enumerate(cases, 1):
        m = re.search(r"BADSOCK %d ok=(\S+) err=(.*)" % i, log)
        if not t.check(m, "%s: no BADSOCK line" % sock):
            continue
        t.eq(m.group(1), "false", sock + ": subscribe_event refused it")
        t.check(want in m.group(2), "%s: error %r lacks %r" % (sock, m.group(2), want))
    t.check(re.search(r"GOODSOCK ok=true", log), "http://[::1]/events?x=1 (default port) refused: %s"
            % (re.findall(r"GOODSOCK.*", log) or ["?"])[0])
    t.check("secret-pw" not in log, "the password of a refused http:// URL appears in the log")
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------------------------
# tcp:

def test_evi_sinks_tcp_framing_reconnect(t):
    """tcp: one persistent connection, one line per event (payload + newline); when the
    receiver goes away the sink goes DOWN, events wait in the queue, and once the receiver is
    back on the same port the sink reconnects (backoff) and delivers them in order."""
    rx = TcpRecv(t)
    inst = start(t, [("E_MY_EVENT", rx.socket)], events="retry_max = 1, queue_limit = 100")
    t.check(inst.wait_log(r"event socket %s is up: connected" % re.escape(rx.socket), 3.0),
            "no 'is up: connected' line (the connection is opened at subscribe time)")
    ra = Raiser(t, inst)
    ra.raise_("map")
    ra.raise_("ordered")
    for i in range(5):
        ra.raise_("seq", "E_MY_EVENT", i)
    t.check(rx.wait(7, 3.0), "tcp: %d line(s), expected 7" % len(rx.msgs))
    got = rx.settle(0.2)
    t.eq([m for _, m in got], [MAP_JSON, ORDERED_JSON] + [seq_json("E_MY_EVENT", i) for i in range(5)],
         "tcp lines")
    t.eq({c for c, _ in got}, {1}, "connections used (one persistent connection)")
    t.eq(rx.partial.get(1, b""), b"", "bytes after the last newline")

    mark = inst.mark()
    rx.stop()
    t.check(inst.wait_log(r"event socket %s is down" % re.escape(rx.socket), 3.0, since=mark),
            "no DOWN line once the receiver closed")
    for i in range(5, 10):
        ra.raise_("seq", "E_MY_EVENT", i)   # queued while down
    time.sleep(0.5)
    rx.restart()
    t.check(inst.wait_log(r"event socket %s is up again" % re.escape(rx.socket), 4.0, since=mark),
            "no 'is up again' line after the receiver came back")
    t.check(rx.wait(12, 4.0), "tcp: %d line(s) after the reconnect, expected 12" % len(rx.msgs))
    got = rx.settle(0.2)
    t.eq([m for _, m in got[7:]], [seq_json("E_MY_EVENT", i) for i in range(5, 10)],
         "lines queued while the receiver was away, delivered in order after the reconnect")
    t.check(all(c > 1 for c, _ in got[7:]), "events after the restart came on the old connection?")
    lsip.no_error_log(t, inst)


def test_evi_sinks_tcp_hung_peer(t):
    """A TCP receiver that accepts and never reads (small receive buffer), a small queue and
    a 1.5 s send_timeout, 6 KB events raised by 100 OPTIONS a second for 4 s: every OPTIONS is
    answered fast, the peer is declared hung (DOWN), drops are counted and reported."""
    hung = TcpRecv(t, rcvbuf=4096, read=False)
    drops = DgramRecv(t)
    inst = start(t, [("E_BIG", hung.socket), ("E_EVENT_DROPPED", drops.socket)],
                 events="queue_limit = 20, send_timeout = 1.5, retry_max = 1", log_level="info")
    ra = Raiser(t, inst)
    peer = ra.peer
    rate, secs = 100, 4.0
    n = int(rate * secs)
    lat = []
    missing = 0
    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i / rate
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        m = request("OPTIONS", "sip:probe@%s" % lsip.hostport(*inst.addr4), via=(peer.host, peer.port),
                    extra=["X-Mode: pad", "X-Event: E_BIG", "X-Seq: %d" % i, "X-Pad: 6000"])
        s = time.monotonic()
        r = peer.request(m, inst.addr4, 2.0)
        if r is None or r.status != 200:
            missing += 1
            continue
        lat.append(time.monotonic() - s)
    lat.sort()
    t.eq(missing, 0, "OPTIONS not answered 200")
    worst = lat[-1] if lat else None
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else None
    t.note("answer latency: median %.1f ms, p99 %.1f ms, worst %.1f ms over %d OPTIONS"
           % (lat[len(lat) // 2] * 1e3, p99 * 1e3, worst * 1e3, len(lat)) if lat else "no answers")
    t.check(worst is not None and worst < 0.3, "worst answer latency %s s (bound 0.3 s, send_timeout 1.5 s)"
            % worst)
    t.check(inst.wait_log(r"event socket %s is down: peer not reading: no progress for 1\.5 s"
                          % re.escape(hung.socket), 3.0),
            "no DOWN line for the hung peer")
    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, hung.socket) == 0:
        time.sleep(0.1)
    nd = dropped_count(drops, hung.socket, "E_BIG")
    t.check(nd > 0, "E_EVENT_DROPPED reported no drop for the hung peer")
    t.check(nd < n, "E_EVENT_DROPPED counts %d drops for %d events" % (nd, n))
    check_dropped_format(t, drops, "hung peer")
    t.note("drops reported: %d of %d events; connections accepted by the hung peer: %d" % (nd, n, hung.nconn))
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------------------------
# http://

HTTP_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody framed by the close", "close"),
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    "hang",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
]


def test_evi_sinks_http_post(t):
    """http://: a POST per event (Host, Content-Type, Content-Length, the exact body) on a
    keep-alive connection; answers framed by Content-Length, chunked (after a 100), none
    (204), close; Connection: close and HTTP/1.0 close the connection; a 500 is a failed
    event (E_EVENT_DROPPED counts it) on a kept connection; an answer that never comes fails
    the event after send_timeout and sets the sink DOWN, and it comes back UP."""
    srv = HttpRecv(t, lambda i, req: HTTP_ANSWERS[i] if i < len(HTTP_ANSWERS) else HTTP_ANSWERS[-1])
    url = "http://127.0.0.1:%d/lunasip/events?x=1" % srv.port
    drops = DgramRecv(t)
    inst = start(t, [("E_MY_EVENT", url), ("E_EVENT_DROPPED", drops.socket)],
                 events="send_timeout = 1, retry_max = 1")
    ra = Raiser(t, inst)
    ra.raise_("map")
    ra.raise_("ordered")
    for i in range(2, 7):
        ra.raise_("seq", "E_MY_EVENT", i)
    t.check(srv.wait(7, 4.0), "http: %d request(s), expected 7" % len(srv.msgs))
    reqs = srv.settle(0.2)
    bodies = [MAP_JSON, ORDERED_JSON] + [seq_json("E_MY_EVENT", i) for i in range(2, 7)]
    t.eq([r["body"] for r in reqs], bodies, "POST bodies")
    for k, r in enumerate(reqs):
        h = dict(r["headers"])
        what = "request %d" % k
        t.eq((r["method"], r["path"], r["version"]), ("POST", "/lunasip/events?x=1", "HTTP/1.1"), what + " line")
        t.eq(h.get("host"), "127.0.0.1:%d" % srv.port, what + " Host")
        t.eq(h.get("content-type"), "application/json", what + " Content-Type")
        t.eq(h.get("content-length"), str(len(r["body"])), what + " Content-Length")
        t.eq(len([1 for n, _ in r["headers"] if n == "host"]), 1, what + " Host count")
    # 0..3 on the first connection (closed by the server after 3); 4, 5 on the second
    # (closed by lunasip after the HTTP/1.0 answer); 6 on a third
    t.eq([r["conn"] for r in reqs], [1, 1, 1, 1, 2, 2, 3], "connection of each request")

    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, url) < 1:
        time.sleep(0.1)
    t.eq(dropped_count(drops, url, "E_MY_EVENT"), 1, "E_EVENT_DROPPED count (the 500)")
    check_dropped_format(t, drops, "http 500")
    t.check(re.search(r"event socket %s: POST answered 500" % re.escape(url), inst.log()),
            "no warning about the 500")
    t.check(not re.search(r"event socket %s is down" % re.escape(url), inst.log()),
            "a 500 set the sink DOWN")

    # no answer: fails after send_timeout, DOWN; reconnects and is UP again
    mark = inst.mark()
    ra.raise_("seq", "E_MY_EVENT", 7)
    t.check(inst.wait_log(r"event socket %s is down: no answer within 1\.0 s" % re.escape(url), 3.0, since=mark),
            "no DOWN line for the answer that never came")
    t.check(inst.wait_log(r"event socket %s is up again" % re.escape(url), 4.0, since=mark),
            "not UP again after the reconnect")
    ra.raise_("seq", "E_MY_EVENT", 8)
    t.check(srv.wait(9, 3.0), "http: event 8 not POSTed after the sink came back")
    reqs = srv.settle(0.2)
    t.eq([r["body"] for r in reqs[7:]], [seq_json("E_MY_EVENT", 7), seq_json("E_MY_EVENT", 8)],
         "bodies of the unanswered and the next request")
    t.check(len(reqs) >= 9 and reqs[8]["conn"] != reqs[7]["conn"], "event 8 went on the hung connection")
    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, url) < 2:
        time.sleep(0.1)
    t.eq(dropped_count(drops, url, "E_MY_EVENT"), 2, "E_EVENT_DROPPED count (the 500 and the timeout)")
    lsip.no_error_log(t, inst)


# ---------------------------------------------------------------------------------------------
# virtual: with one member down

def _dead_members(t):
    """The three kinds of dead member: a closed UDP port, a missing unix path, a refused TCP
    port."""
    return [("udp", "udp:127.0.0.1:%d" % lsip.free_port()),
            ("unix", "unix:" + os.path.join(t.dir, "nobody.sock")),
            ("tcp", "tcp:127.0.0.1:%d" % lsip.free_port(kind=socket.SOCK_STREAM))]


def _live_pair(t, kind):
    """Two live receivers: UDP + unix for one set, TCP + UDP for the next..."""
    if kind == "udp":
        return DgramRecv(t, path=os.path.join(t.dir, "live-%s.sock" % kind)), TcpRecv(t)
    if kind == "unix":
        return TcpRecv(t), DgramRecv(t)
    return DgramRecv(t), DgramRecv(t, path=os.path.join(t.dir, "live-%s.sock" % kind))


def _payloads(recv):
    return [m[1] if isinstance(m, tuple) else m for m in recv.snapshot()]


def _virtual(t, policy, order):
    """Starts one subscription per dead kind: virtual:POLICY with members in order (a list
    of "dead", "a", "b"), raises N events to each, returns (inst, sets, N)."""
    sets = []
    subs = []
    for kind, dead in _dead_members(t):
        a, b = _live_pair(t, kind)
        members = {"dead": dead, "a": a.socket, "b": b.socket}
        ev = "E_%s_%s" % (policy.replace("-", ""), kind.upper())
        subs.append((ev, "virtual:%s %s" % (policy, " ".join(members[m] for m in order))))
        sets.append((kind, ev, dead, a, b))
    inst = start(t, subs)
    ra = Raiser(t, inst)
    n = 12
    for i in range(n):
        for _, ev, _, _, _ in sets:
            ra.raise_("seq", ev, i)
    return inst, sets, n


def test_evi_sinks_virtual_parallel(t):
    """PARALLEL: every live member gets every event, in order, whichever member is dead."""
    inst, sets, n = _virtual(t, "PARALLEL", ["a", "dead", "b"])
    for kind, ev, dead, a, b in sets:
        want = [seq_json(ev, i) for i in range(n)]
        for r in (a, b):
            r.wait(n, 4.0)
            r.settle(0.2)
            t.eq(_payloads(r), want, "PARALLEL (dead %s): events at %s" % (kind, r.socket))
    lsip.no_error_log(t, inst)


def test_evi_sinks_virtual_failover(t):
    """FAILOVER with the first member dead: every event goes to the first live member."""
    inst, sets, n = _virtual(t, "FAILOVER", ["dead", "a", "b"])
    for kind, ev, dead, a, b in sets:
        a.wait(n, 4.0)
        a.settle(0.2)
        t.eq(_payloads(a), [seq_json(ev, i) for i in range(n)], "FAILOVER (dead %s): events at the first live member" % kind)
        t.eq(_payloads(b), [], "FAILOVER (dead %s): events at the second live member" % kind)
        t.check(inst.wait_log(r"event socket %s is down" % re.escape(dead), 1.0),
                "FAILOVER: no DOWN line for the dead %s member" % kind)
    lsip.no_error_log(t, inst)


def test_evi_sinks_virtual_round_robin(t):
    """ROUND-ROBIN with a member dead: each event reaches exactly one live member, and the
    live members alternate (a dead member's turn is not given to its neighbour on top of
    the neighbour's own)."""
    inst, sets, n = _virtual(t, "ROUND-ROBIN", ["a", "dead", "b"])
    for kind, ev, dead, a, b in sets:
        end = time.monotonic() + 4.0
        while time.monotonic() < end and len(a.snapshot()) + len(b.snapshot()) < n:
            time.sleep(0.05)
        a.settle(0.2)
        b.settle(0.2)
        pa = [json.loads(m)["params"]["seq"] for m in _payloads(a)]
        pb = [json.loads(m)["params"]["seq"] for m in _payloads(b)]
        what = "ROUND-ROBIN (dead %s)" % kind
        t.eq(sorted(pa + pb), list(range(n)), what + ": every event exactly once over the live members")
        t.check(pa and pb and abs(len(pa) - len(pb)) <= 2,
                "%s: not alternating: %s got %r, %s got %r" % (what, a.socket, pa, b.socket, pb))
        t.eq(pa, sorted(pa), what + ": order at the first live member")
        t.eq(pb, sorted(pb), what + ": order at the second live member")
        t.note("%s: first live member got %r, second %r" % (what, pa, pb))
    lsip.no_error_log(t, inst)


def test_evi_sinks_http_reused_connection_closed(t):
    """http://: a keep-alive connection the server closes instead of answering (as when its
    idle timer fires while our request is on the way) gets the request again, once, on a new
    connection; a new connection closed without an answer fails the event (counted) and sets
    the sink DOWN, and it comes back UP."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    answers = [ok, "drop", ok, ok, "drop", "drop", ok]
    srv = HttpRecv(t, lambda i, req: answers[i] if i < len(answers) else ok)
    url = "http://127.0.0.1:%d/" % srv.port
    drops = DgramRecv(t)
    inst = start(t, [("E_MY_EVENT", url), ("E_EVENT_DROPPED", drops.socket)], events="retry_max = 1")
    ra = Raiser(t, inst)
    for i in range(3):
        ra.raise_("seq", "E_MY_EVENT", i)
        srv.wait({0: 1, 1: 3, 2: 4}[i], 3.0)
    mark = inst.mark()
    ra.raise_("seq", "E_MY_EVENT", 3)
    t.check(inst.wait_log(r"event socket %s is down: connection closed before the answer" % re.escape(url),
                          3.0, since=mark), "no DOWN line for a new connection closed without an answer")
    t.check(inst.wait_log(r"event socket %s is up again" % re.escape(url), 4.0, since=mark),
            "not UP again after the reconnect")
    ra.raise_("seq", "E_MY_EVENT", 4)
    t.check(srv.wait(7, 3.0), "http: %d request(s), expected 7" % len(srv.msgs))
    reqs = srv.settle(0.2)
    t.eq([(r["conn"], json.loads(r["body"])["params"]["seq"]) for r in reqs],
         [(1, 0), (1, 1), (2, 1), (2, 2), (2, 3), (3, 3), (4, 4)],
         "(connection, event) of each request")
    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, url) < 1:
        time.sleep(0.1)
    t.eq(dropped_count(drops, url, "E_MY_EVENT"), 1, "E_EVENT_DROPPED count (event 3)")
    lsip.no_error_log(t, inst)


def test_evi_sinks_http_answers_in_pieces(t):
    """http://: answers that arrive a byte at a time (chunked with extensions and trailers,
    Content-Length, a 100 before the 200) are framed right and keep the connection; an
    answer head above 8 KB fails the event and sets the sink DOWN, and it comes back UP."""
    answers = [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
         b"5;a=b\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", "trickle"),
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 8\r\nX-Folded: a\r\n b\r\n\r\naccepted", "trickle"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "trickle"),
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (k, b"p" * 100) for k in range(90)) +
        b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ]
    srv = HttpRecv(t, lambda i, req: answers[min(i, len(answers) - 1)])
    url = "http://127.0.0.1:%d/in-pieces" % srv.port
    drops = DgramRecv(t)
    inst = start(t, [("E_MY_EVENT", url), ("E_EVENT_DROPPED", drops.socket)], events="retry_max = 1")
    ra = Raiser(t, inst)
    for i in range(3):
        ra.raise_("seq", "E_MY_EVENT", i)
        srv.wait(i + 1, 3.0)
    time.sleep(0.5)  # the trickled answers
    t.eq(len(srv.snapshot()), 3, "requests after three events")
    mark = inst.mark()
    ra.raise_("seq", "E_MY_EVENT", 3)
    t.check(inst.wait_log(r"event socket %s is down: bad answer: head longer than 8 KB" % re.escape(url),
                          3.0, since=mark), "no DOWN line for the 9 KB answer head")
    t.check(inst.wait_log(r"event socket %s is up again" % re.escape(url), 4.0, since=mark),
            "not UP again after the reconnect")
    ra.raise_("seq", "E_MY_EVENT", 4)
    t.check(srv.wait(5, 3.0), "http: %d request(s), expected 5" % len(srv.msgs))
    reqs = srv.settle(0.2)
    t.eq([(r["conn"], json.loads(r["body"])["params"]["seq"]) for r in reqs],
         [(1, 0), (1, 1), (1, 2), (1, 3), (2, 4)], "(connection, event) of each request")
    end = time.monotonic() + 3.0
    while time.monotonic() < end and dropped_count(drops, url) < 1:
        time.sleep(0.1)
    t.eq(dropped_count(drops, url, "E_MY_EVENT"), 1, "E_EVENT_DROPPED count (the 9 KB head only)")
    lsip.no_error_log(t, inst)
