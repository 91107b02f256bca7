"""Shared helpers of the integration layer: a test context that owns every process, socket
and temp dir a test makes (and cleans them up even when the test fails), a lunasip instance
on loopback with its own config dir and free ports, small SIP message builders/parsers, a UDP
peer, and a SIPp runner. Python standard library only.

A test is a function ``test_x(t)`` in a ``test_*.py`` module; ``t`` is a Ctx. Soft checks
(``t.check``/``t.eq``) collect failures and let the test go on; ``t.fail`` stops it.
"""
import csv
import json
import os
import random
import re
import select
import signal
from signal import SIGKILL, SIGTERM
import socket
import ssl
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("LUNASIP_BIN") or os.path.join(REPO, "build", "san", "lunasip")
SIPP = os.environ.get("SIPP_BIN", "sipp")
TORTURE_DIR = os.path.join(REPO, "t", "data", "torture")
SIPP_DIR = os.path.join(HERE, "sipp")

# STYLE "Tests": what must never appear in a log (Test::Nginx's no_error_log).
SANITIZER_PATTERNS = ("AddressSanitizer", "runtime error", "LeakSanitizer")

STREAM_KINDS = ("tcp", "tls", "ws", "wss")  # Instance(streams=...) and inst.ports keys

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

# Every process started by any test, so run.py can kill leftovers whatever happens.
_live_lock = threading.Lock()
_live = {}  # pid -> description


def _register(pid, what):
    with _live_lock:
        _live[pid] = what


def _unregister(pid):
    with _live_lock:
        _live.pop(pid, None)


def kill_leftovers():
    """SIGKILLs every process a test started and did not reap (by PID, one at a time)."""
    with _live_lock:
        pids = list(_live.items())
        _live.clear()
    for pid, _ in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except OSError:
            pass
    return pids


def sanitizer_env(extra_asan=None, extra_ubsan=None):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if extra_asan:
        env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"] + ":" + extra_asan
    if extra_ubsan:
        env["UBSAN_OPTIONS"] = env["UBSAN_OPTIONS"] + ":" + extra_ubsan
    return env


class Fail(Exception):
    """Stops a test with a message (t.fail)."""


# ---------------------------------------------------------------------------------------------
# addresses and ports

def free_port(family=socket.AF_INET, host="127.0.0.1", kind=socket.SOCK_DGRAM):
    """A port that was free on host a moment ago (bind port 0, read it, close)."""
    s = socket.socket(family, kind)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def media_port(host="127.0.0.1"):
    """A -mp for SIPp: it binds RTP sockets on that port and on port + 2 (and owns their RTCP
    neighbours), so all four must be free, not only the one free_port() saw."""
    for _ in range(100):
        p = free_port(socket.AF_INET, host)
        if p > 65532:
            continue
        socks = []
        try:
            for q in range(p, p + 4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    return free_port(socket.AF_INET, host)


def random_loopback():
    """A random 127.a.b.c address (not 127.0.0.x), so fixed ports like 5060 bound on it do not
    collide with another test or another run on the same machine."""
    rnd = random.SystemRandom()
    for _ in range(50):
        ip = "127.%d.%d.%d" % (rnd.randint(1, 254), rnd.randint(0, 255), rnd.randint(1, 254))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((ip, 5060))
            return ip
        except OSError:
            continue
        finally:
            s.close()
    raise Fail("cannot bind UDP port 5060 on any 127.x address (a server bound to *:5060?)")


def hostport(host, port=None):
    h = "[%s]" % host if ":" in host and not host.startswith("[") else host
    return h if port is None else "%s:%d" % (h, port)


# ---------------------------------------------------------------------------------------------
# SIP messages

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "c": "content-type", "e": "content-encoding", "k": "supported", "s": "subject",
           "o": "event", "r": "refer-to", "u": "allow-events", "x": "session-expires"}


def canon(name):
    n = name.strip().lower()
    return COMPACT.get(n, n)


def rand_token(n=10):
    return "".join(random.choice("0123456789abcdef") for _ in range(n))


class Msg:
    """An outgoing request: its bytes and the values needed to match its answer."""

    def __init__(self, data, call_id, cseq, method, branch, from_tag):
        self.data, self.call_id, self.cseq, self.method = data, call_id, cseq, method
        self.branch, self.from_tag = branch, from_tag

    def __bytes__(self):
        return self.data


def request(method="OPTIONS", ruri="sip:probe@127.0.0.1", via=("127.0.0.1", 5060), transport="UDP",
            rport=True, via_params="", branch=None, call_id=None, cseq=1, cseq_method=None,
            from_uri="<sip:tester@lunasip.invalid>", from_tag=None, to="<sip:probe@lunasip.invalid>",
            to_tag=None, extra=(), body=b"", max_forwards=70, content_length=None, raw_via=None):
    """Builds a request. via is (host, port|None); extra is a list of header lines. Returns Msg."""
    branch = branch or "z9hG4bK" + rand_token(16)
    call_id = call_id or rand_token(20) + "@lunasip-it"
    from_tag = from_tag if from_tag is not None else rand_token(8)
    if raw_via is None:
        raw_via = "SIP/2.0/%s %s;branch=%s%s%s" % (transport, hostport(via[0], via[1]), branch,
                                                   ";rport" if rport else "", via_params)
    lines = ["%s %s SIP/2.0" % (method, ruri), "Via: " + raw_via]
    lines.append("From: %s%s" % (from_uri, ";tag=" + from_tag if from_tag else ""))
    lines.append("To: %s%s" % (to, ";tag=" + to_tag if to_tag else ""))
    lines.append("Call-ID: " + call_id)
    lines.append("CSeq: %d %s" % (cseq, cseq_method or method))
    if max_forwards is not None:
        lines.append("Max-Forwards: %s" % max_forwards)
    lines.extend(extra)
    if isinstance(body, str):
        body = body.encode()
    lines.append("Content-Length: %d" % (len(body) if content_length is None else content_length))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return Msg(data, call_id, cseq, method, branch, from_tag)


class Response:
    """A parsed SIP response (or any message: is_response tells)."""

    def __init__(self, raw, addr=None):
        self.raw, self.addr = raw, addr
        sep = raw.find(b"\r\n\r\n")
        head, self.body = (raw, b"") if sep < 0 else (raw[:sep], raw[sep + 4:])
        text = head.decode("utf-8", "replace")
        text = re.sub(r"\r?\n[ \t]+", " ", text)
        lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
        self.start = lines[0]
        m = re.match(r"SIP/2\.0 (\d{3}) ?(.*)$", self.start)
        self.is_response = bool(m)
        self.status = int(m.group(1)) if m else None
        self.reason = m.group(2) if m else None
        self.headers = []
        for ln in lines[1:]:
            if ":" in ln:
                n, v = ln.split(":", 1)
                self.headers.append((n.strip(), v.strip()))

    def header_all(self, name):
        n = canon(name)
        return [v for k, v in self.headers if canon(k) == n]

    def header(self, name):
        a = self.header_all(name)
        return a[0] if a else None

    def count(self, name):
        return len(self.header_all(name))

    def top_via_params(self):
        v = self.header("Via") or ""
        first = v.split(",")[0]
        return via_params(first)

    def __repr__(self):
        return "<%s %r>" % (self.start, self.raw[:80])


def via_params(via_value):
    """Params of one via-parm as a dict (lower-case names; True for a bare name)."""
    out = {}
    parts = via_value.split(";")[1:]
    for p in parts:
        p = p.strip()
        if not p:
            continue
        if "=" in p:
            k, v = p.split("=", 1)
            out[k.strip().lower()] = v.strip()
        else:
            out[p.lower()] = True
    return out


def tag_of(value):
    m = re.search(r";\s*tag\s*=\s*([^;>\s,]+)", value or "", re.I)
    return m.group(1) if m else None


_VIA_RE = re.compile(r"^\s*SIP\s*/\s*[0-9.]+\s*/\s*([A-Za-z0-9-]+)\s+(\[[^\]]*\]|[^\s;:,\[]+)"
                     r"(?:\s*:\s*(\d+))?(.*)$", re.I | re.S)


def top_via(raw):
    """The top Via of a raw message, as the responder sees it: (transport, host, port, params)
    with the port defaulted per RFC 3261 §18.2.2 (5061 for TLS, else 5060). Handles compact
    'v:', folded lines, LWS around '/' and ':', IPv6 references. None when there is no Via."""
    sep = re.search(rb"\r?\n\r?\n", raw)
    head = raw[:sep.start()] if sep else raw
    text = head.decode("latin-1")
    text = re.sub(r"\r?\n[ \t]+", " ", text)
    for ln in re.split(r"\r?\n", text)[1:]:
        if ":" not in ln:
            continue
        name, value = ln.split(":", 1)
        if canon(name) != "via":
            continue
        first = value.split(",")[0]
        m = _VIA_RE.match(first)
        if not m:
            return None
        transport, host, port, rest = m.group(1).upper(), m.group(2), m.group(3), m.group(4)
        params = via_params(";" + rest.split(";", 1)[1]) if ";" in rest else {}
        port = int(port) if port else (5061 if transport == "TLS" else 5060)
        return transport, host, port, params
    return None


# ---------------------------------------------------------------------------------------------
# UDP peer

class UdpPeer:
    """A UDP socket of the test. Receives whatever arrives; request() matches the answer by
    Call-ID and CSeq and keeps anything else in self.strays."""

    def __init__(self, ctx, host="127.0.0.1", port=0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.strays = []
        ctx._sockets.append(self.sock)

    def send(self, data, dst):
        self.sock.sendto(bytes(data), dst)

    def recv(self, timeout=2.0):
        """One datagram as (bytes, addr), or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recvfrom(70000)
        except socket.timeout:
            return None

    def drain(self, timeout=0.0):
        """Every datagram that arrives within timeout seconds (at least what is queued)."""
        out = []
        end = time.monotonic() + timeout
        while True:
            r = self.recv(max(end - time.monotonic(), 0.001))
            if r is None:
                return out
            out.append(r)

    def recv_response(self, msg=None, timeout=2.0):
        """The first response matching msg (Call-ID and CSeq number), or None."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            r = self.recv(left)
            if r is None:
                return None
            resp = Response(r[0], r[1])
            if msg is None:
                return resp
            cseq = (resp.header("CSeq") or "").split()
            if resp.is_response and resp.header("Call-ID") == msg.call_id and cseq and cseq[0] == str(msg.cseq):
                return resp
            self.strays.append(r)

    def request(self, msg, dst, timeout=2.0):
        self.send(msg, dst)
        return self.recv_response(msg, timeout)


# ---------------------------------------------------------------------------------------------
# stream peers (TCP, TLS)

def client_ssl_context(certfile=None, keyfile=None, cafile=None, minimum=None, maximum=None):
    """An ssl client context: no verification unless cafile is given (CERT_NONE: lunasip's
    default certificate is self-signed), an optional client certificate (certfile may hold
    the chain), optional version bounds (ssl.TLSVersion)."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    if cafile:
        c.load_verify_locations(cafile)
        c.verify_mode = ssl.CERT_REQUIRED
    else:
        c.verify_mode = ssl.CERT_NONE
    if certfile:
        c.load_cert_chain(certfile, keyfile)
    if minimum is not None:
        c.minimum_version = minimum
    if maximum is not None:
        c.maximum_version = maximum
    return c


def sip_frame_len(buf):
    """RFC 3261 §18.3 as a test reads a stream: the length of the first message in buf
    (head + Content-Length body), None while incomplete. A head without Content-Length
    counts as a body of 0 (what lunasip sends always has one)."""
    sep = buf.find(b"\r\n\r\n")
    if sep < 0:
        return None
    head = buf[:sep].decode("latin-1")
    m = re.search(r"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", head)
    n = sep + 4 + (int(m.group(1)) if m else 0)
    return n if len(buf) >= n else None


class SocketIO:
    """The byte I/O of a test's TCP (or TLS) connection, shared by StreamClient (SIP framed
    by Content-Length) and wsclient.WsClient (WebSocket frames): self.sock, what was read so
    far in self.buf, and self.eof once the other side closed."""

    def send(self, data):
        """Sends everything; False when the connection is gone (EPIPE, RST)."""
        try:
            self.sock.sendall(bytes(data))
            return True
        except (OSError, ssl.SSLError):
            return False

    def _fill(self, timeout):
        """Reads once into self.buf: True when bytes came, False on timeout or EOF."""
        if self.eof:
            return False
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending:
            try:
                r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
            except (OSError, ValueError):
                self.eof = True
                return False
            if not r:
                return False
        try:
            self.sock.settimeout(max(timeout, 0.001))
            d = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except (OSError, ssl.SSLError):  # RST, an alert, an abrupt end of TLS
            self.eof = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def wait_closed(self, timeout=3.0):
        """True when the other side closed within timeout (what it sent before stays in
        self.buf)."""
        end = time.monotonic() + timeout
        while not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._fill(left)
        return True


class StreamClient(SocketIO):
    """One TCP (or TLS) connection of the test: a client of a lunasip stream listener, or a
    connection a StreamServer accepted. Reads SIP messages framed by Content-Length, keeps
    what it read in self.buf, tells when the other side closed (self.eof)."""

    def __init__(self, ctx, addr=None, tls=False, ssl_context=None, server_hostname=None, source=None,
                 timeout=5.0, sock=None, nodelay=True):
        if sock is None:
            fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_STREAM)
            ctx._sockets.append(sock)
            if source is not None:
                sock.bind(source)
            sock.settimeout(timeout)
            sock.connect(addr)
            if tls:
                sc = ssl_context or client_ssl_context()
                sock = sc.wrap_socket(sock, server_hostname=server_hostname)
                ctx._sockets.append(sock)
        else:
            ctx._sockets.append(sock)
        if nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.ctx, self.sock = ctx, sock
        self.local = sock.getsockname()[:2]
        self.remote = sock.getpeername()[:2]
        self.buf = b""
        self.eof = False       # the other side closed (EOF, RST, TLS close)
        self.strays = []       # messages read while waiting for another one

    @property
    def port(self):
        return self.local[1]

    def send_slowly(self, data, chunk=1, delay=0.0):
        """Writes data chunk bytes at a time (TCP_NODELAY is on), sleeping delay between
        writes; False as soon as a write fails."""
        data = bytes(data)
        for i in range(0, len(data), chunk):
            if not self.send(data[i:i + chunk]):
                return False
            if delay:
                time.sleep(delay)
        return True

    def recv_raw(self, timeout=2.0, want=None):
        """Bytes that arrive within timeout (at least what is buffered), stopping early once
        want bytes are buffered or the other side closed. Consumes them."""
        end = time.monotonic() + timeout
        while (want is None or len(self.buf) < want) and not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                break
            self._fill(left)
        out, self.buf = self.buf, b""
        return out

    def recv_message(self, timeout=2.0, skip_crlf=True):
        """The next framed SIP message as a Response (requests too: is_response False), or
        None on timeout or EOF. Leading CRLFs (keepalive answers) are skipped unless asked."""
        end = time.monotonic() + timeout
        while True:
            if skip_crlf:
                while self.buf.startswith(b"\r\n"):
                    self.buf = self.buf[2:]
            n = sip_frame_len(self.buf)
            if n is not None:
                raw, self.buf = self.buf[:n], self.buf[n:]
                return Response(raw, self.remote)
            left = end - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self._fill(left)

    def recv_response(self, msg=None, timeout=2.0):
        """The first response matching msg (Call-ID and CSeq number), others to self.strays."""
        end = time.monotonic() + timeout
        while True:
            r = self.recv_message(max(end - time.monotonic(), 0))
            if r is None:
                return None
            cseq = (r.header("CSeq") or "").split()
            if msg is None or (r.is_response and r.header("Call-ID") == msg.call_id and cseq[:1] == [str(msg.cseq)]):
                return r
            self.strays.append(r)

    def recv_request(self, method=None, timeout=2.0):
        """The first request (of method, when given) that arrives, others to self.strays."""
        end = time.monotonic() + timeout
        while True:
            r = self.recv_message(max(end - time.monotonic(), 0))
            if r is None:
                return None
            if not r.is_response and (method is None or r.start.startswith(method + " ")):
                return r
            self.strays.append(r)

    def request(self, msg, timeout=2.0):
        if not self.send(msg):
            return None
        return self.recv_response(msg, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class StreamServer:
    """A TCP listener of the test (a UAS lunasip connects to). accept() returns StreamClient
    objects; self.accepted counts the connections taken."""

    def __init__(self, ctx, host="127.0.0.1", port=0, ssl_context=None):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(64)
        ctx._sockets.append(self.lsock)
        self.ctx, self.ssl_context = ctx, ssl_context
        self.host, self.port = self.lsock.getsockname()[:2]
        self.accepted = 0
        self.conns = []

    @property
    def addr(self):
        return (self.host, self.port)

    def pending(self, timeout=0.0):
        """Whether a connection waits to be accepted (within timeout)."""
        r, _, _ = select.select([self.lsock], [], [], max(timeout, 0))
        return bool(r)

    def accept(self, timeout=3.0):
        if not self.pending(timeout):
            return None
        s, _ = self.lsock.accept()
        if self.ssl_context is not None:
            s.settimeout(timeout)
            s = self.ssl_context.wrap_socket(s, server_side=True)
        self.accepted += 1
        c = StreamClient(self.ctx, sock=s)
        self.conns.append(c)
        return c


# ---------------------------------------------------------------------------------------------
# lunasip instances

class Instance:
    """One lunasip on loopback with its own config dir (ports picked free)."""

    def __init__(self, ctx, name, server_lua, ipv6=True, sip_extra="", conf_extra="", proxies=None,
                 log_level="debug", conf_text=None, streams=(), ctl=False):
        """streams: any of "tcp", "tls", "ws", "wss": listeners on 127.0.0.1 with free TCP
        ports, in inst.ports[kind] once started (with "udp", and "udp6" when ipv6); a
        conf_text gets them as @PORT_TCP@, @PORT_TLS@, @PORT_WS@, @PORT_WSS@ instead. ctl: a
        control socket (ctl.sock in the config dir) so inst.stats() can read the counters
        (with conf_text, set core.control_socket = "ctl.sock" in it)."""
        self.ctx, self.name = ctx, name
        self.dir = os.path.join(ctx.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.ipv6, self.sip_extra, self.conf_extra, self.log_level = ipv6, sip_extra, conf_extra, log_level
        self.conf_text = conf_text
        for k in streams:
            if k not in STREAM_KINDS:
                raise ValueError("streams: unknown transport %r (one of %s)" % (k, ", ".join(STREAM_KINDS)))
        self.streams = tuple(streams)
        self.ctl = ctl
        self.ctl_path = os.path.join(self.dir, "ctl.sock")
        self.ports = {}
        self.script = os.path.join(self.dir, "server.lua")
        self.log_path = os.path.join(self.dir, "lunasip.log")
        self.proc = None
        self.pid = None
        self.stopped = False       # stopped on purpose by the test
        self.rc = None
        self.write_script(server_lua)
        if proxies is not None:
            with open(os.path.join(self.dir, "proxies.conf"), "w") as f:
                f.write(proxies)

    # files
    def write_script(self, text):
        tmp = self.script + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.script)

    def write_conf(self):
        if self.conf_text is not None:
            text = self.conf_text.replace("@PORT4@", str(self.port4)).replace("@PORT6@", str(self.port6))
            for k in STREAM_KINDS:  # @PORT_TCP@, @PORT_TLS@, @PORT_WS@, @PORT_WSS@
                if k in self.ports:
                    text = text.replace("@PORT_%s@" % k.upper(), str(self.ports[k]))
        else:
            listen = ['"udp:127.0.0.1:%d"' % self.port4]
            if self.ipv6:
                listen.append('"udp:[::1]:%d"' % self.port6)
            listen += ['"%s:127.0.0.1:%d"' % (k, self.ports[k]) for k in self.streams]
            text = ('core = { log_level = "%s", control_socket = %s }\n'
                    'sip = { listen = { %s }%s }\n'
                    'pike = { enabled = false }\n%s\n') % (
                        self.log_level, '"ctl.sock"' if self.ctl else "false", ", ".join(listen),
                        (", " + self.sip_extra) if self.sip_extra else "", self.conf_extra)
        with open(os.path.join(self.dir, "lunasip.conf"), "w") as f:
            f.write(text)

    @property
    def addr4(self):
        return ("127.0.0.1", self.port4)

    @property
    def addr6(self):
        return ("::1", self.port6)

    def addr(self, kind):
        """("127.0.0.1", port) of the listener of that transport ("udp", "tcp", "tls", "ws", "wss")."""
        return ("127.0.0.1", self.ports[kind])

    def _pick_ports(self):
        self.port4 = free_port(socket.AF_INET, "127.0.0.1")
        self.port6 = free_port(socket.AF_INET6, "::1") if self.ipv6 else 0
        self.ports = {"udp": self.port4}
        if self.ipv6:
            self.ports["udp6"] = self.port6
        taken = set()
        for k in self.streams:
            for _ in range(20):  # distinct TCP ports, one per stream listener
                p = free_port(socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM)
                if p not in taken:
                    break
            taken.add(p)
            self.ports[k] = p

    # process
    def start(self, args=(), wait=True):
        for attempt in range(4):
            self._pick_ports()
            self.write_conf()
            since = self.mark()  # a restart appends to the log: look only at this run's lines
            self.log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen([BIN, "-c", self.dir, "--foreground"] + list(args),
                                         stdin=subprocess.DEVNULL, stdout=self.log_file,
                                         stderr=subprocess.STDOUT, env=sanitizer_env(),
                                         start_new_session=True)
            self.pid = self.proc.pid
            _register(self.pid, "lunasip " + self.name)
            self.log_file.close()
            if not wait:
                return self
            end = time.monotonic() + START_TIMEOUT
            while time.monotonic() < end:
                if re.search(r"lunasip \S+ started", self.log_since(since)):
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.kill()
                raise Fail("%s: no 'started' line in %.0f s" % (self.name, START_TIMEOUT))
            self.rc = self.proc.returncode
            _unregister(self.pid)
            if "Address already in use" in self.log_since(since) and attempt < 3:
                continue  # a port picked free was taken meanwhile: pick others
            raise Fail("%s: exited with %s before 'started'" % (self.name, self.rc))
        raise Fail("%s: could not bind" % self.name)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, sig=SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig and waits; returns the exit status (None if it had to be killed)."""
        self.stopped = True
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.ctx.check(False, "%s: still running %.0f s after signal %d: killed" % (self.name, timeout, sig))
                return None
        self.rc = self.proc.returncode
        _unregister(self.pid)
        return self.rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        if self.pid:
            _unregister(self.pid)

    # log
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def mark(self):
        """An offset in the log: wait_log(..., since=mark) looks only at what came after."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, mark):
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=5.0, since=0):
        """The first match of the regex pattern in the log after since, waiting up to timeout."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_since(since))
            if m:
                return m
            if time.monotonic() >= end or not self.running():
                m = rx.search(self.log_since(since))
                return m
            time.sleep(0.02)

    def tail(self, n=25):
        return self.log().splitlines()[-n:]

    def log_lines(self, pattern, since=0):
        """The log lines after since that match the regex pattern."""
        rx = re.compile(pattern)
        return [ln for ln in self.log_since(since).splitlines() if rx.search(ln)]

    # counters (the control socket's `stats`, SPEC §8; needs ctl=True)
    def rpc(self, method, params=None, timeout=5.0):
        """One JSON-RPC 2.0 call on the control socket: the result, or raises Fail on an
        error answer or no answer."""
        req = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            req["params"] = params
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.ctl_path)
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except OSError as e:
            raise Fail("%s: control socket %s: %s" % (self.name, self.ctl_path, e))
        finally:
            s.close()
        try:
            ans = json.loads(buf.split(b"\n", 1)[0])
        except ValueError:
            raise Fail("%s: %s: no JSON answer: %r" % (self.name, method, buf[:200]))
        if "error" in ans:
            raise Fail("%s: %s: error answer %r" % (self.name, method, ans["error"]))
        return ans.get("result")

    def stats(self, prefix=""):
        """The counters whose names start with prefix, as a dict name -> int."""
        r = self.rpc("stats", [prefix] if prefix else None)
        return {k: v for k, v in (r or {}).items() if isinstance(v, int)}

    def stat(self, name):
        return self.stats(name).get(name)

    def wait_stat(self, name, at_least, timeout=5.0):
        """Polls counter name until it is >= at_least or timeout; returns its last value."""
        end = time.monotonic() + timeout
        while True:
            v = self.stat(name)
            if (v is not None and v >= at_least) or time.monotonic() >= end or not self.running():
                return v
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# SIPp

class Sipp:
    """A SIPp run in its own directory; wait() returns its exit status and stats()
    the final cumulative counters of its -trace_stat CSV."""

    def __init__(self, ctx, target, scenario, calls, rate, timeout_s, local_ip="127.0.0.1", extra=(),
                 transport=None):
        """transport: None (SIPp's default, UDP on one socket) or a SIPp -t mode ("u1", "un",
        "t1", "tn", ...); for TCP modes self.port is a free TCP port."""
        n = len(ctx._sipps)
        self.ctx = ctx
        self.dir = os.path.join(ctx.dir, "sipp%d" % n)
        os.makedirs(self.dir, exist_ok=True)
        self.scenario = os.path.join(SIPP_DIR, scenario)
        stream = transport is not None and transport[:1] in ("t", "l")
        self.port = free_port(socket.AF_INET, local_ip, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
        if transport is not None:
            extra = ["-t", transport] + list(extra)
            if transport.endswith("n"):  # a socket per call: SIPp's default 50000 exceeds ulimit -n here
                extra += ["-max_socket", "1000"]
        self.stat = os.path.join(self.dir, "stat.csv")
        self.out_path = os.path.join(self.dir, "sipp.out")
        cmd = [SIPP, hostport(target[0], target[1]), "-sf", self.scenario, "-m", str(calls), "-r", str(rate),
               "-i", local_ip, "-p", str(self.port),
               "-mp", str(media_port(local_ip)), "-cp", str(free_port(socket.AF_INET, "0.0.0.0")),
               "-nostdin", "-timeout", "%ds" % timeout_s, "-timeout_error",
               "-trace_stat", "-stf", self.stat, "-fd", "1", "-trace_err", "-trace_screen"] + list(extra)
        self.cmd = cmd
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.out.close()
        _register(self.proc.pid, "sipp")
        self.timeout_s = timeout_s
        ctx._sipps.append(self)

    def wait(self):
        try:
            rc = self.proc.wait(self.timeout_s + 15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        _unregister(self.proc.pid)
        return rc

    def stats(self):
        try:
            with open(self.stat, newline="") as f:
                rows = [r for r in csv.reader(f, delimiter=";") if r]
        except FileNotFoundError:
            return {}
        if len(rows) < 2:
            return {}
        head, last = rows[0], rows[-1]
        out = {}
        for k, v in zip(head, last):
            try:
                out[k] = int(v)
            except ValueError:
                out[k] = v
        return out

    def errors(self, n=15):
        lines = []
        for fn in sorted(os.listdir(self.dir)):
            if fn.endswith("_errors.log"):
                with open(os.path.join(self.dir, fn), "rb") as f:
                    lines += f.read().decode("utf-8", "replace").splitlines()[:n]
        return lines

    def output_tail(self, n=15):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()[-n:]
        except FileNotFoundError:
            return []


# ---------------------------------------------------------------------------------------------
# test context

class Ctx:
    def __init__(self, name, root, dirname=None):
        self.name = name
        self.dir = os.path.join(root, dirname or name)
        os.makedirs(self.dir, exist_ok=True)
        self.errors = []
        self.notes = []
        self.instances = []
        self._sockets = []
        self._sipps = []
        self._pids = []  # other processes (daemons) to kill at cleanup

    def check(self, cond, msg):
        if not cond:
            self.errors.append(msg)
        return bool(cond)

    def eq(self, actual, expected, what):
        return self.check(actual == expected, "%s: expected %r, got %r" % (what, expected, actual))

    def fail(self, msg):
        raise Fail(msg)

    def note(self, msg):
        self.notes.append(msg)

    def instance(self, server_lua, name=None, start=True, **kw):
        name = name or "lunasip%d" % len(self.instances)
        inst = Instance(self, name, server_lua, **kw)
        self.instances.append(inst)
        if start:
            inst.start()
        return inst

    def peer(self, host="127.0.0.1", port=0):
        return UdpPeer(self, host, port)

    def stream(self, inst_or_addr, kind="tcp", **kw):
        """A StreamClient connected to inst's kind listener ("tcp" or "tls"; TLS without
        verification unless an ssl_context is given), or to an address."""
        addr = inst_or_addr.addr(kind) if isinstance(inst_or_addr, Instance) else inst_or_addr
        return StreamClient(self, addr, tls=(kind in ("tls", "wss")), **kw)

    def stream_server(self, host="127.0.0.1", port=0, ssl_context=None):
        return StreamServer(self, host, port, ssl_context)

    def sipp(self, *a, **kw):
        return Sipp(self, *a, **kw)

    def track_pid(self, pid, what):
        self._pids.append(pid)
        _register(pid, what)

    def untrack_pid(self, pid):
        if pid in self._pids:
            self._pids.remove(pid)
        _unregister(pid)

    def probe(self, inst, peer=None, family=4, timeout=2.0, what="probe"):
        """An OPTIONS with rport: returns the Response (or None)."""
        if peer is None:  # one probe socket per instance and family
            key = "_probe_peer%d" % family
            peer = getattr(inst, key, None)
            if peer is None:
                peer = self.peer("127.0.0.1" if family == 4 else "::1")
                setattr(inst, key, peer)
            peer.drain(0)
        dst = inst.addr4 if family == 4 else inst.addr6
        m = request("OPTIONS", "sip:probe@%s" % hostport(dst[0], dst[1]), via=(peer.host, peer.port))
        return peer.request(m, dst, timeout)

    def cleanup(self):
        """Stops what is still running (TERM: must exit 0), then checks every log for
        sanitizer reports. Runs even when the test failed."""
        for s in self._sipps:
            if s.proc.poll() is None:
                try:
                    os.kill(s.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                s.proc.wait()
            _unregister(s.proc.pid)
        for inst in self.instances:
            if inst.proc is None:
                continue
            if inst.proc.poll() is None:
                rc = inst.stop(signal.SIGTERM)
                self.check(rc == 0, "%s: exit status on SIGTERM: expected 0, got %r" % (inst.name, rc))
            elif not inst.stopped:
                inst.rc = inst.proc.returncode
                _unregister(inst.pid)
                self.errors.append("%s: exited on its own during the test with status %r" % (inst.name, inst.rc))
            log = inst.log()
            bad = [ln for ln in log.splitlines() if any(p in ln for p in SANITIZER_PATTERNS)]
            if bad:
                self.errors.append("%s: sanitizer report in the log:" % inst.name)
                self.errors.extend("    " + ln for ln in bad[:10])
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            _unregister(pid)
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# helpers of the proxy tests (test_proxy.py)

_SIPP_MSG_RE = re.compile(rb"^-{20,} [^\n]*\n(UDP|TCP|TLS|SCTP) message (received|sent) "
                          rb"(?:\[(\d+)\] bytes :|\((\d+) bytes\):)\n\n", re.M)


def sipp_messages(path):
    """The SIP messages a SIPp run with -trace_msg wrote to path, in order, as a list of
    (direction, Response) where direction is "received" or "sent" and Response parses
    requests too (is_response False, start the request line)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for m in _SIPP_MSG_RE.finditer(data):
        n = int(m.group(3) or m.group(4))
        out.append((m.group(2).decode(), Response(data[m.end():m.end() + n])))
    return out


def udp_bound(port, host="127.0.0.1"):
    """Whether some socket of this machine is bound to UDP host:port (/proc/net/udp)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/udp") as f:
            return any(ln.split()[1] == want for ln in f.read().splitlines()[1:] if len(ln.split()) > 1)
    except OSError:
        return False


def tcp_listening(port, host="127.0.0.1"):
    """Whether some socket of this machine listens on TCP host:port (/proc/net/tcp, state 0A)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            rows = [ln.split() for ln in f.read().splitlines()[1:]]
    except OSError:
        return False
    return any(len(r) > 3 and r[1] == want and r[3] == "0A" for r in rows)


def wait_tcp_listening(port, host="127.0.0.1", timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tcp_listening(port, host):
            return True
        time.sleep(0.02)
    return tcp_listening(port, host)


def wait_udp_bound(port, host="127.0.0.1", timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if udp_bound(port, host):
            return True
        time.sleep(0.02)
    return udp_bound(port, host)


# ------------------------------------------------------- raw-peer helpers of the proxy tests

def split_commas(value):
    """A header value split at the commas outside quotes, each element stripped."""
    out, cur, q = [], "", False
    for ch in value:
        if ch == '"':
            q = not q
        if ch == "," and not q:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def header_values(msg, name):
    """Every value of a header in msg, comma-separated lists and rows flattened."""
    return [v for row in msg.header_all(name) for v in split_commas(row)]


def no_error_log(t, inst, what=""):
    """Fails t when inst's log has an ERROR line or a Lua traceback."""
    bad = [ln for ln in inst.log().splitlines() if re.search(r"\bERROR\b|traceback", ln)]
    t.check(not bad, "%s%s: ERROR lines in the log:\n      %s" % (what, inst.name, "\n      ".join(bad[:8])))


def wait_request(peer, method, timeout=3.0):
    """The first request method reaching a raw peer within timeout (others go to peer.strays)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = peer.recv(end - time.monotonic())
        if r is None:
            return None
        m = Response(r[0], r[1])
        if not m.is_response and m.start.startswith(method + " "):
            return m
        peer.strays.append(r)
    return None


def requests(peer, timeout=1.0, method=None):
    """Requests (of method, when given) reaching a raw peer within timeout, parsed; the
    responses go to peer.strays."""
    out = []
    for data, addr in peer.drain(timeout):
        m = Response(data, addr)
        if m.is_response:
            peer.strays.append((data, addr))
        elif method is None or m.start.startswith(method + " "):
            out.append(m)
    return out


def responses(peer, msg, timeout, cseq_method=None):
    """Every response to msg (Call-ID, CSeq number[, CSeq method]) reaching peer within timeout."""
    out = []
    for data, addr in peer.drain(timeout):
        r = Response(data, addr)
        cs = (r.header("CSeq") or "").split()
        if (r.is_response and r.header("Call-ID") == msg.call_id and cs[:1] == [str(msg.cseq)]
                and (cseq_method is None or cs[1:2] == [cseq_method])):
            out.append(r)
        else:
            peer.strays.append((data, addr))
    return out


def uas_reply(peer, req, code, reason, to_tag="uas-tag", extra=(), record_route=False, vias=None):
    """A raw UAS answers req (to where it came from), copying its Vias (or the given ones)."""
    data = reply_bytes(req, code, reason, to_tag, extra, record_route, vias)
    peer.send(data, req.addr)
    return data


def reply_bytes(req, code, reason, to_tag="uas-tag", extra=(), record_route=False, vias=None):
    """The bytes of a response to the parsed request req (a Response), copying its Vias (or
    the given ones), From, To (with to_tag added), Call-ID and CSeq."""
    lines = ["SIP/2.0 %d %s" % (code, reason)]
    lines += ["Via: " + v for v in (vias if vias is not None else req.header_all("Via"))]
    if record_route:
        lines += ["Record-Route: " + v for v in req.header_all("Record-Route")]
    lines.append("From: " + req.header("From"))
    to = req.header("To")
    lines.append("To: " + (to if tag_of(to) or code == 100 else "%s;tag=%s" % (to, to_tag)))
    lines.append("Call-ID: " + req.header("Call-ID"))
    lines.append("CSeq: " + req.header("CSeq"))
    lines += list(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
