"""Hostile and broken input over UDP (SPEC §4 Parser and Protection; STYLE "Errors": input
from the network never aborts the process): every RFC 4475 / RFC 5118 torture message with
the answer its MANIFEST.tsv expects, empty and keepalive datagrams, random bytes, mutated SIP,
datagrams above sip.max_message_size, a huge header line, unsolicited responses. After each
input lunasip must still answer an OPTIONS probe; at the end its log has no sanitizer report."""
import csv
import os
import random
import re

import lsip
from lsip import request

# Exactly what the brief asks server.lua to do for the torture run.
TORTURE_LUA = r'''
function SipEvents.on_request(req)
  if not req:check_max_forwards(70) then return end
  if req.method == "ACK" then return end
  req:reply(200, "Handled")
end
'''

re_callid = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)")
DROP_WAIT = 1.0     # seconds of silence that prove a drop
ANSWER_WAIT = 2.0   # seconds to wait for an expected answer


def load_manifest():
    with open(os.path.join(lsip.TORTURE_DIR, "MANIFEST.tsv"), newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def expectations(proxy_expect):
    """proxy_expect ("reject:400|repair-forward", "forward|4xx", "drop", ...) as a list of
    alternatives: ("handled",), ("status", N), ("class", 4), ("drop",)."""
    alts = []
    for a in proxy_expect.split("|"):
        a = a.strip()
        if a.startswith("reject:"):
            a = a[len("reject:"):]
        if a in ("forward", "repair-forward"):
            alts.append(("handled",))  # no proxy yet: "handled by server.lua"
        elif a == "framing-error":
            alts.append(("status", 400))  # over UDP (RFC 3261 §18.3)
        elif a == "drop":
            alts.append(("drop",))
        elif len(a) == 3 and a[0].isdigit() and a.endswith("xx"):
            alts.append(("class", int(a[0])))
        elif a.isdigit():
            alts.append(("status", int(a)))
        else:
            raise ValueError("unknown proxy_expect alternative %r" % a)
    return alts


def matches(alt, resp):
    kind = alt[0]
    if resp is None:
        return kind == "drop"
    if kind == "handled":
        return resp.status == 200 and resp.reason == "Handled"
    if kind == "status":
        return resp.status == alt[1]
    if kind == "class":
        return resp.status is not None and resp.status // 100 == alt[1]
    return False


def _probe_ok(t, inst, what):
    resp = t.probe(inst)
    ok = resp is not None and resp.status == 200
    t.check(ok, "%s: lunasip did not answer the OPTIONS probe after it (%r)" % (what, resp))
    return ok


def test_torture_rfc4475_rfc5118(t):
    inst = t.instance(TORTURE_LUA, log_level="info")
    ip = lsip.random_loopback()  # our own 127.x: fixed ports like 5060 on it are free
    socks = {}

    def sock_at(port):
        if port not in socks:
            socks[port] = t.peer(ip, port)
        return socks[port]

    rows = load_manifest()
    t.check(len(rows) >= 60, "MANIFEST.tsv lists only %d messages" % len(rows))
    # RFC 3261 §17.2.3: a request with the branch, sent-by and method of one answered
    # earlier is a retransmission of it, and gets that answer again. Some torture
    # messages share "z9hG4bKkdjuw" with the same sent-by.
    answered = {}
    for row in rows:
        fn, pe = row["file"], row["proxy_expect"]
        with open(os.path.join(lsip.TORTURE_DIR, fn), "rb") as f:
            data = f.read()
        alts = expectations(pe)
        via = lsip.top_via(data)
        # RFC 3261 §18.2.2: no rport → source IP + sent-by port (rport → source port, which is
        # the same socket since we send from the sent-by port). No Via: any socket of ours.
        peer = sock_at(via[2]) if via else t.peer(ip)
        peer.drain(0)
        m0 = inst.mark()
        peer.send(data, inst.addr4)
        only_drop = all(a[0] == "drop" for a in alts)
        got = peer.recv(DROP_WAIT if only_drop else ANSWER_WAIT)
        resp = lsip.Response(got[0], got[1]) if got else None
        observed = "no answer" if resp is None else "%s %s" % (resp.status, resp.reason)
        if resp is not None and not resp.is_response:
            observed = "a non-response datagram: %r" % got[0][:60]
        where = "%s:%s" % (ip, via[2]) if via else "%s (no Via)" % ip
        if not t.check(any(matches(a, resp) for a in alts),
                       "%s (RFC %s §%s, %s): expected %s, observed %s (answer awaited on %s)" % (
                           fn, row["rfc"], row["section"], row["verdict"], pe, observed, where)):
            t.errors.extend("    log: " + ln.split(" ", 3)[-1] for ln in inst.log_since(m0).splitlines()[:3])
        if resp is not None and resp.is_response:
            cids = [c.strip() for c in re_callid.findall(data)]
            key = None
            if via and via[3].get("branch", "").startswith("z9hG4bK"):
                key = (via[3]["branch"], via[1].lower(), via[2], data.split(b" ", 1)[0])
            if len(cids) == 1:
                want = cids[0].decode("latin-1")
                if key in answered and resp.header("Call-ID") == answered[key]:
                    want = answered[key]  # a retransmission (same transaction key)
                t.eq(resp.header("Call-ID"), want, fn + ": Call-ID of the answer")
                if key and key not in answered and resp.status == 200:
                    answered[key] = want
        if resp is not None:
            extra = peer.drain(0.05)
            t.check(not extra, "%s: %d extra datagram(s) after the answer: %r" % (fn, len(extra), [d[:40] for d, _ in extra]))
        for p in socks.values():
            if p is not peer:
                stray = p.drain(0)
                t.check(not stray, "%s: answer went to %s:%d instead: %r" % (fn, ip, p.port, [d[:40] for d, _ in stray]))
        if not _probe_ok(t, inst, fn):
            t.fail("lunasip stopped answering after %s" % fn)


def test_empty_and_keepalive_datagrams(t):
    inst = t.instance(TORTURE_LUA)
    peer = t.peer(lsip.random_loopback())
    for what, data in (("empty datagram", b""), ("CRLF CRLF keepalive", b"\r\n\r\n"), ("single CRLF", b"\r\n"),
                       ("lone LF", b"\n"), ("NUL byte", b"\x00"), ("spaces", b"   ")):
        peer.send(data, inst.addr4)
        got = peer.drain(0.3)
        t.check(not got, "%s: answered with %r (no answer expected)" % (what, [d[:40] for d, _ in got]))
        _probe_ok(t, inst, what)
    # the same over IPv6
    peer6 = t.peer("::1")
    for data in (b"", b"\r\n\r\n"):
        peer6.send(data, inst.addr6)
    t.check(not peer6.drain(0.3), "IPv6 keepalive/empty datagram answered")
    resp = t.probe(inst, family=6)
    t.check(resp is not None and resp.status == 200, "IPv6 probe after empty datagrams: %r" % resp)


def test_random_byte_datagrams(t):
    inst = t.instance(TORTURE_LUA, log_level="info")
    peer = t.peer(lsip.random_loopback())
    rng = random.Random(4475)
    for i in range(200):
        n = rng.choice((1, 2, 3, 7, 16, 64, 200, 512, 1024, 1400, rng.randint(1, 4000)))
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 4 == 0:  # some that start like SIP so the parser gets further in
            data = rng.choice((b"OPTIONS sip:x SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b"INVITE ", b"Via: ")) + data
        peer.send(data, inst.addr4)
        if i % 20 == 19:
            if not _probe_ok(t, inst, "random datagram #%d (seed 4475)" % i):
                t.fail("lunasip stopped answering during the random datagrams (seed 4475, #%d)" % i)
    peer.drain(0.1)
    _probe_ok(t, inst, "200 random datagrams")


def _mutate(rng, data):
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        if not b:
            break
        pos = rng.randrange(len(b))
        if op == 0:  # flip a byte
            b[pos] = rng.getrandbits(8)
        elif op == 1:  # truncate
            del b[pos:]
        elif op == 2:  # insert interesting bytes
            b[pos:pos] = rng.choice((b"\x00", b"\r\n", b"\r\n ", b":", b";", b",", b"<", b">", b"\"", b"[", b"]",
                                     b"%", b"%00", b"\xff", b"9" * 20, b"-1", b" " * 50, b";tag=", b"\r\n\r\n"))
        elif op == 3:  # delete a range
            del b[pos:pos + rng.randint(1, 40)]
        elif op == 4:  # duplicate a line
            s = b.rfind(b"\n", 0, pos) + 1
            e = b.find(b"\n", pos)
            e = len(b) if e < 0 else e + 1
            b[s:s] = b[s:e] * rng.randint(1, 3)
        elif op == 5:  # CRLF -> LF
            i = b.find(b"\r\n", pos)
            if i >= 0:
                del b[i]
        else:  # change a digit run (lengths, CSeq, ports, Max-Forwards)
            for j in range(pos, len(b)):
                if 48 <= b[j] <= 57:
                    b[j:j + 1] = rng.choice((b"0", b"4294967296", b"99999999999999999999", b"-", b"65536"))
                    break
    return bytes(b)


def test_mutated_sip_datagrams(t):
    inst = t.instance(TORTURE_LUA, log_level="info")
    ip = lsip.random_loopback()
    peer = t.peer(ip)
    seeds = [request("INVITE", "sip:bob@example.com", via=(ip, peer.port), body=b"v=0\r\ns=-\r\n",
                     extra=["Contact: <sip:a@%s:%d>" % (ip, peer.port), "Route: <sip:r@x;lr>, <sip:s@y;lr>",
                            "Content-Type: application/sdp"]).data]
    for row in load_manifest():
        with open(os.path.join(lsip.TORTURE_DIR, row["file"]), "rb") as f:
            seeds.append(f.read())
    rng = random.Random(5118)
    for i in range(400):
        peer.send(_mutate(rng, rng.choice(seeds)), inst.addr4)
        if i % 25 == 24:
            peer.drain(0)
            if not _probe_ok(t, inst, "mutated datagram #%d (seed 5118)" % i):
                t.fail("lunasip stopped answering during the mutated datagrams (seed 5118, #%d)" % i)
    _probe_ok(t, inst, "400 mutated datagrams")


def _padded_options(peer, size):
    """An OPTIONS (rport) of exactly size bytes, padded with an X-Pad header."""
    base = request("OPTIONS", "sip:pad@127.0.0.1", via=(peer.host, peer.port), extra=["X-Pad: "])
    pad = size - len(base.data)
    if pad < 0:
        raise ValueError("size too small")
    return request("OPTIONS", "sip:pad@127.0.0.1", via=(peer.host, peer.port), call_id=base.call_id,
                   branch=base.branch, from_tag=base.from_tag, extra=["X-Pad: " + "p" * pad])


def test_oversized_datagram_is_dropped(t):
    inst = t.instance(TORTURE_LUA, sip_extra="max_message_size = 4096")
    peer = t.peer()
    msg = _padded_options(peer, 4096)
    t.eq(len(msg.data), 4096, "test message size")
    resp = peer.request(msg, inst.addr4)
    t.check(resp is not None and resp.status == 200, "a 4096-byte OPTIONS (= max_message_size) is not answered 200: %r" % resp)
    for size in (4097, 5000, 60000):
        m0 = inst.mark()
        msg = _padded_options(peer, size)
        peer.send(msg, inst.addr4)
        got = peer.drain(DROP_WAIT if size == 4097 else 0.3)
        t.check(not got, "%d-byte datagram (> max_message_size 4096) answered: %r" % (size, [d[:40] for d, _ in got]))
        line = inst.wait_log(r"[^\n]*max_message_size[^\n]*", 2, m0)
        t.check(line, "%d-byte datagram: no log line mentioning max_message_size" % size)
        _probe_ok(t, inst, "%d-byte datagram" % size)


def test_huge_header_line(t):
    inst = t.instance(TORTURE_LUA, log_level="info")
    peer = t.peer()
    # A 100 KB header line cannot travel in one UDP datagram (IPv4 payload limit 65507 bytes):
    # sendto refuses it, so nothing reaches lunasip; the largest datagram possible is sent next.
    big = request("OPTIONS", "sip:big@127.0.0.1", via=(peer.host, peer.port), extra=["X-Huge: " + "h" * 100000])
    try:
        peer.send(big, inst.addr4)
        t.note("a %d-byte datagram was accepted by the kernel" % len(big.data))
    except OSError:
        t.note("a 100 KB header line does not fit in a UDP datagram; sent a %d-byte one instead" % 65507)
    msg = _padded_options(peer, 65507)  # one ~65 KB header line, below the default max (65535)
    resp = peer.request(msg, inst.addr4, timeout=3)
    if t.check(resp is not None, "no answer to a 65507-byte OPTIONS with a ~65 KB header line"):
        t.eq((resp.status, resp.reason), (200, "Handled"), "answer to the 65507-byte OPTIONS")
    # many small headers (more than any sane message has)
    many = request("OPTIONS", "sip:many@127.0.0.1", via=(peer.host, peer.port),
                   extra=["X-H%d: %d" % (i, i) for i in range(3000)])
    resp = peer.request(many, inst.addr4, timeout=3)
    if t.check(resp is not None, "no answer to an OPTIONS with 3000 headers (%d bytes)" % len(many.data)):
        t.check(resp.status in (200, 400, 413, 513), "3000 headers: status %r" % resp.status)
    # a long Via chain (more Vias than the answer builder keeps)
    vias = ["Via: SIP/2.0/UDP 10.0.%d.%d:5060;branch=z9hG4bKv%d" % (i // 250, i % 250, i) for i in range(200)]
    chain = request("OPTIONS", "sip:vias@127.0.0.1", via=(peer.host, peer.port), extra=vias)
    resp = peer.request(chain, inst.addr4, timeout=1)
    if resp is not None:  # no answer is the bug test_answer_to_request_with_70_via_lines shows
        t.check(resp.status in (200, 400, 413, 500, 513), "200 Vias: status %r" % resp.status)
        if resp.status == 200:
            t.eq(sum(len(v.split(",")) for v in resp.header_all("Via")), 201, "200 Vias: Via values copied to the answer")
    _probe_ok(t, inst, "huge messages")


def test_response_datagram_is_dropped(t):
    inst = t.instance(TORTURE_LUA)
    peer = t.peer()
    p = peer.port
    responses = [
        ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKresp1\r\n"
         "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: resp1@it\r\nCSeq: 1 OPTIONS\r\n"
         "Content-Length: 0\r\n\r\n" % p).encode(),
        # a response whose top Via names lunasip itself
        ("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKresp2\r\n"
         "Via: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKresp3\r\n"
         "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: resp2@it\r\nCSeq: 1 INVITE\r\n"
         "Content-Length: 0\r\n\r\n" % (inst.port4, p)).encode(),
        b"SIP/2.0 999 Odd\r\n\r\n",
    ]
    for i, data in enumerate(responses):
        peer.send(data, inst.addr4)
        got = peer.drain(DROP_WAIT if i == 0 else 0.3)
        t.check(not got, "response #%d was answered or forwarded: %r" % (i, [d[:40] for d, _ in got]))
        _probe_ok(t, inst, "response datagram #%d" % i)
