"""STUN Binding on lunasip's UDP listeners (RFC 5389, the keepalive of RFC 5626 §4.4.2 and
§8.4): a Binding request gets a success response with the address it came from
(XOR-MAPPED-ADDRESS), over IPv4 and IPv6, with FINGERPRINT when the request had one; other
STUN messages get nothing; SIP keeps working on the same port."""
import os
import socket
import struct
import zlib

import lsip

COOKIE = 0x2112A442


def binding_request(txid, fingerprint=False, attrs=b""):
    body = attrs
    length = len(body) + (8 if fingerprint else 0)
    msg = struct.pack("!HHI", 0x0001, length, COOKIE) + txid + body
    if fingerprint:
        crc = (zlib.crc32(msg) & 0xffffffff) ^ 0x5354554e
        msg += struct.pack("!HHI", 0x8028, 4, crc)
    return msg


def attributes(msg):
    out, off = {}, 20
    while off + 4 <= len(msg):
        t, n = struct.unpack("!HH", msg[off:off + 4])
        out[t] = msg[off + 4:off + 4 + n]
        off += 4 + ((n + 3) & ~3)
    return out


def xor_mapped(value, txid):
    family, xport = struct.unpack("!xBH", value[:4])
    port = xport ^ (COOKIE >> 16)
    if family == 1:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("!I", struct.unpack("!I", value[4:8])[0] ^ COOKIE))
    else:
        key = struct.pack("!I", COOKIE) + txid
        ip = socket.inet_ntop(socket.AF_INET6, bytes(a ^ b for a, b in zip(value[4:20], key)))
    return ip, port


def ask(t, family, dst, msg, timeout=2.0):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    s.settimeout(timeout)
    try:
        s.sendto(msg, dst)
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            data = None
        return data, s.getsockname()
    finally:
        s.close()


def test_stun_binding_answered_on_sip_ports(t):
    inst = t.instance('function SipEvents.on_request(req) req:reply(200) end\n', log_level="info")
    for family, addr in ((socket.AF_INET, inst.addr4), (socket.AF_INET6, inst.addr6)):
        for fp in (False, True):
            txid = os.urandom(12)
            resp, me = ask(t, family, addr, binding_request(txid, fp))
            what = "%s binding%s" % ("IPv6" if family == socket.AF_INET6 else "IPv4", " with FINGERPRINT" if fp else "")
            if not t.check(resp is not None, what + ": no answer"):
                continue
            mtype, mlen, cookie = struct.unpack("!HHI", resp[:8])
            t.eq(mtype, 0x0101, what + ": message type")
            t.eq(cookie, COOKIE, what + ": cookie")
            t.eq(resp[8:20], txid, what + ": transaction id")
            t.eq(mlen + 20, len(resp), what + ": length")
            attrs = attributes(resp)
            t.check(0x0020 in attrs, what + ": no XOR-MAPPED-ADDRESS")
            if 0x0020 in attrs:
                t.eq(xor_mapped(attrs[0x0020], txid), (me[0], me[1]), what + ": mapped address")
            t.eq(0x8028 in attrs, fp, what + ": FINGERPRINT present")
            if fp and 0x8028 in attrs:
                want = (zlib.crc32(resp[:-8]) & 0xffffffff) ^ 0x5354554e
                t.eq(struct.unpack("!I", attrs[0x8028])[0], want, what + ": FINGERPRINT value")
    # an unknown comprehension-required attribute: 420 listing it
    txid = os.urandom(12)
    resp, _ = ask(t, socket.AF_INET, inst.addr4, binding_request(txid, attrs=struct.pack("!HHI", 0x0033, 4, 7)))
    t.check(resp is not None and struct.unpack("!H", resp[:2])[0] == 0x0111, "no 420 for an unknown attribute")
    if resp:
        err = attributes(resp).get(0x0009, b"\0\0\0\0")
        t.eq((err[2], err[3]), (4, 20), "error code 420")
        t.eq(attributes(resp).get(0x000A), struct.pack("!H", 0x0033), "UNKNOWN-ATTRIBUTES")
    # an indication, a bad FINGERPRINT: nothing back
    ind = bytearray(binding_request(os.urandom(12)))
    ind[1] = 0x11
    resp, _ = ask(t, socket.AF_INET, inst.addr4, bytes(ind), timeout=0.5)
    t.check(resp is None, "a Binding indication was answered")
    bad = bytearray(binding_request(os.urandom(12), True))
    bad[-1] ^= 1
    resp, _ = ask(t, socket.AF_INET, inst.addr4, bytes(bad), timeout=0.5)
    t.check(resp is None, "a request with a bad FINGERPRINT was answered")
    # SIP still answers on the same port, and nothing went wrong in the log
    r = t.probe(inst)
    t.check(r is not None and r.status == 200, "OPTIONS after STUN: no 200")
    lsip.no_error_log(t, inst)
