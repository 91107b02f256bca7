"""A raw RFC 6455 WebSocket client for the integration tests (Python standard library only):
the opening handshake with every header under the test's control, frames built bit by bit
(so a test can send what a correct client never would: unmasked frames, RSV bits, reserved
opcodes, oversized control frames, lying lengths), the server's frames read back as they
are on the wire (masked or not, FIN, opcode), close frames decoded. Optionally over TLS
(wss) with the ssl module, without certificate verification by default.

    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()                  # HttpResponse; resp.status 101
    ws.send_frame(OP_TEXT, b"OPTIONS ...") # masked, FIN set
    f = ws.recv_frame()                    # Frame(fin, rsv, opcode, masked, payload)
    code, reason = ws.read_close()         # the server's close frame
"""
import base64
import hashlib
import os
import re
import select
import socket
import ssl
import struct
import time

import lsip

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, mask_key=None, length=None, length_form=None):
    """The bytes of one frame. rsv: the three RSV bits as a number 0..7 (RSV1 = 4).
    mask_key: 4 bytes (random by default). length: the length written in the header when
    it must lie (the payload sent is still payload). length_form: force the 7-bit (None),
    16-bit (126) or 64-bit (127) form whatever the length."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0x80 if mask else 0
    if length_form == 127 or (length_form is None and n > 0xFFFF):
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    elif length_form == 126 or (length_form is None and n > 125):
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BB", b0, mbit | n)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    @property
    def close_code(self):
        """The status code of a close frame (1005 when it carries none)."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    @property
    def close_reason(self):
        return self.payload[2:]

    def __repr__(self):
        return "<Frame op=%#x fin=%d rsv=%d masked=%d len=%d %r>" % (
            self.opcode, self.fin, self.rsv, self.masked, len(self.payload), self.payload[:60])


class HttpResponse:
    """The server's answer to the opening handshake."""

    def __init__(self, raw):
        self.raw = raw
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        self.start = lines[0]
        m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)$", self.start)
        self.status = int(m.group(1)) if m else None
        self.reason = m.group(2) if m else None
        self.headers = []
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                self.headers.append((k.strip(), v.strip()))

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "<HTTP %r>" % self.start


class WsClient(lsip.SocketIO):
    """One WebSocket connection to lunasip (ws, or wss with tls=True)."""

    def __init__(self, ctx, addr, tls=False, ssl_context=None, server_hostname=None, source=None, timeout=5.0):
        self.ctx = ctx
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        ctx._sockets.append(s)
        if source is not None:
            s.bind(source)
        s.settimeout(timeout)
        s.connect(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            s = (ssl_context or lsip.client_ssl_context()).wrap_socket(s, server_hostname=server_hostname)
            ctx._sockets.append(s)
        self.sock = s
        self.addr = addr
        self.host = "%s:%d" % (lsip.hostport(addr[0]), addr[1])
        self.local = s.getsockname()[:2]
        self.buf = b""
        self.eof = False
        self.key = None
        self.pings = []     # payloads of the pings recv_message answered
        self.skipped = []   # frames recv_message / read_close passed over

    @property
    def port(self):
        return self.local[1]

    # ---- raw I/O
    def send_raw(self, data):
        """Sends bytes as they are; False when the connection is gone."""
        return self.send(data)

    # ---- the opening handshake
    def upgrade_request(self, path="/", host=None, protocol="sip", origin=None, version="13", key=None,
                        extra=(), upgrade="websocket", connection="Upgrade"):
        """The bytes of an upgrade request; None for a header leaves it out."""
        self.key = key if key is not None else new_key()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s" % (host or self.host)]
        if upgrade is not None:
            lines.append("Upgrade: " + upgrade)
        if connection is not None:
            lines.append("Connection: " + connection)
        if self.key:
            lines.append("Sec-WebSocket-Key: " + self.key)
        if version is not None:
            lines.append("Sec-WebSocket-Version: %s" % version)
        if protocol is not None:
            lines.append("Sec-WebSocket-Protocol: " + protocol)
        if origin is not None:
            lines.append("Origin: " + origin)
        lines += list(extra)
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def read_http(self, timeout=3.0):
        """The HTTP answer head (HttpResponse), or None when none came within timeout."""
        end = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self._fill(left)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        resp = HttpResponse(head)
        n = resp.header("Content-Length")
        if n and n.isdigit() and int(n) > 0:  # an error page: drop its body
            want = int(n)
            while len(self.buf) < want and not self.eof and time.monotonic() < end:
                self._fill(end - time.monotonic())
            self.buf = self.buf[want:]
        return resp

    def handshake(self, timeout=3.0, **kw):
        """Sends an upgrade request (see upgrade_request) and returns the answer."""
        self.send_raw(self.upgrade_request(**kw))
        return self.read_http(timeout)

    # ---- frames
    def send_frame(self, opcode, payload=b"", **kw):
        return self.send_raw(frame(opcode, payload, **kw))

    def send_text(self, data):
        return self.send_frame(OP_TEXT, data)

    def send_binary(self, data):
        return self.send_frame(OP_BINARY, data)

    def send_fragments(self, opcode, parts, between=None):
        """One message as len(parts) frames (opcode, then continuations); between: frames
        (bytes) to send after each non-final fragment (control frames may interleave)."""
        for i, p in enumerate(parts):
            if not self.send_frame(opcode if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1)):
                return False
            if between and i < len(parts) - 1 and not self.send_raw(between):
                return False
        return True

    def close(self, code=1000, reason=b""):
        """Sends a close frame (the closing handshake; the socket stays open)."""
        return self.send_frame(OP_CLOSE, close_payload(code, reason))

    def close_socket(self):
        """Closes the TCP connection (what a client does once the server closed its side)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def recv_frame(self, timeout=3.0):
        """The next frame from the server, or None on timeout or EOF."""
        end = time.monotonic() + timeout
        while True:
            f = self._parse()
            if f is not None:
                return f
            left = end - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self._fill(left)

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        fin, rsv, op = b[0] >> 7, (b[0] >> 4) & 7, b[0] & 0x0F
        masked, n = b[1] >> 7, b[1] & 0x7F
        off = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack("!H", b[2:4])[0]
            off = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack("!Q", b[2:10])[0]
            off = 10
        key = None
        if masked:
            if len(b) < off + 4:
                return None
            key = b[off:off + 4]
            off += 4
        if len(b) < off + n:
            return None
        payload = b[off:off + n]
        if key:
            payload = bytes(x ^ key[i & 3] for i, x in enumerate(payload))
        self.buf = b[off + n:]
        return Frame(fin, rsv, op, masked, payload)

    def recv_message(self, timeout=3.0, auto_pong=True):
        """The next data message (fragments joined) as a Frame with the first fragment's
        opcode; pings are answered with a pong when auto_pong and noted in self.pings; a
        close frame is returned as it is. None on timeout or EOF."""
        end = time.monotonic() + timeout
        parts, first = [], None
        while True:
            f = self.recv_frame(max(end - time.monotonic(), 0))
            if f is None:
                return None
            if f.opcode == OP_PING:
                self.pings.append(f.payload)
                if auto_pong:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                self.skipped.append(f)
                continue
            if f.opcode == OP_CLOSE:
                return f
            if first is None:
                first = f
            parts.append(f.payload)
            if f.fin:
                return Frame(1, first.rsv, first.opcode, first.masked, b"".join(parts))

    def read_close(self, timeout=3.0):
        """The server's close frame as (code, reason bytes), passing over anything else
        (kept in self.skipped); None when the connection ended or timeout passed without one."""
        end = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(end - time.monotonic(), 0))
            if f is None:
                return None
            if f.opcode == OP_CLOSE:
                return f.close_code, f.close_reason
            self.skipped.append(f)

    # ---- SIP over WebSocket (RFC 7118)
    def sip_request(self, msg, timeout=3.0, binary=False):
        """Sends msg in one text (or binary) frame; returns (Frame, Response) of the first
        message answering it (Call-ID and CSeq number), or (None, None)."""
        self.send_frame(OP_BINARY if binary else OP_TEXT, bytes(msg))
        return self.recv_sip(msg, timeout)

    def recv_sip(self, msg=None, timeout=3.0):
        end = time.monotonic() + timeout
        while True:
            f = self.recv_message(max(end - time.monotonic(), 0))
            if f is None or f.opcode == OP_CLOSE:
                return f, None
            r = lsip.Response(f.payload, self.addr)
            cseq = (r.header("CSeq") or "").split()
            if msg is None or (r.is_response and r.header("Call-ID") == msg.call_id and cseq[:1] == [str(msg.cseq)]):
                return f, r
            self.skipped.append(f)
