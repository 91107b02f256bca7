"""SIP over TLS (SPEC §3.1 tls.*, sip.tls_handshake_timeout; §4 "Transports": mbedTLS, TLS
>= 1.2, SNI; §5.1 SipEvents.on_client_tls_handshake; §5.3 lunasip.tls.validate and
sip_identities, RFC 5922 §7.1): `openssl s_client` for the handshakes (SNI, versions,
client certificates), Python's ssl module for SIP over TLS. Every certificate but
lunasip's own self-signed default is made by the test with the openssl command."""
import os
import re
import socket
import ssl
import stat
import subprocess
import time

import lsip
from lsip import request

LO = "127.0.0.1"
OPENSSL = os.environ.get("OPENSSL_BIN", "openssl")

SCRIPT = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  req:reply(200, "OK", { ["X-Transport"] = tostring(req.transport) })
end
'''

# Logs what SipEvents.on_client_tls_handshake gets and what lunasip.tls makes of it;
# rejects a client whose certificate names evil.example.test.
HANDSHAKE_SCRIPT = SCRIPT + r'''
local function identities(pem)
  local ok, r, err = pcall(lunasip.tls.sip_identities, pem)
  if not ok then return "error:" .. tostring(r) end
  if type(r) == "table" then return table.concat(r, ",") end
  return "nil:" .. tostring(err)
end
function SipEvents.on_client_tls_handshake(conn, pems)
  local first = pems[1] and pems[1]:match("^[^\r\n]*") or "none"
  local ids = pems[1] and identities(pems[1]) or "none"
  local ok, valid, err = pcall(lunasip.tls.validate, pems)
  if not ok then valid, err = "error", valid end
  lunasip.log.notice("MARK tls_handshake pems=%d first=%s ids=%s valid=%s err=%s",
                     #pems, first, ids, tostring(valid), tostring(err))
  if ids:find("evil.example.test", 1, true) then return false end
  return true
end
'''


# ------------------------------------------------------------------------------ certificates

def openssl(t, args, cwd, what):
    p = subprocess.run([OPENSSL] + list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    if p.returncode != 0:
        t.fail("openssl %s (%s): exit %d: %s" % (args[0], what, p.returncode, p.stdout.decode("utf-8", "replace")[-600:]))
    return p.stdout.decode("utf-8", "replace")


def self_signed(t, d, name, cn, san=None):
    """name.crt / name.key: a self-signed certificate for cn (SAN when given)."""
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".crt",
            "-days", "2", "-subj", "/CN=" + cn]
    if san:
        args += ["-addext", "subjectAltName=" + san]
    openssl(t, args, d, name)
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


def make_ca(t, d, name="ca"):
    openssl(t, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".crt",
                "-days", "2", "-subj", "/CN=lunasip test CA " + name,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d, name)
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


def make_leaf(t, d, name, cn, ca, san=None, chain=False):
    """name.crt / name.key signed by ca (crt, key paths); with chain, name.crt holds the
    leaf then the CA certificate (a client sends both)."""
    openssl(t, ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                "-subj", "/CN=" + cn], d, name + " csr")
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth,serverAuth\n")
        if san:
            f.write("subjectAltName=%s\n" % san)
    openssl(t, ["x509", "-req", "-in", name + ".csr", "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
                "-out", name + ".crt", "-days", "2", "-extfile", ext], d, name + " sign")
    crt = os.path.join(d, name + ".crt")
    if chain:
        with open(ca[0]) as f:
            ca_pem = f.read()
        with open(crt, "a") as f:
            f.write(ca_pem)
    return crt, os.path.join(d, name + ".key")


def subject(t, path):
    return openssl(t, ["x509", "-in", path, "-noout", "-subject"], os.path.dirname(path), "subject of " + path).strip()


# ------------------------------------------------------------------------------ clients

class SClient:
    """The result of one `openssl s_client -brief` run (stdin closed: it quits after the
    handshake)."""

    def __init__(self, rc, out):
        self.rc, self.out = rc, out
        self.established = "CONNECTION ESTABLISHED" in out
        m = re.search(r"Peer certificate: (.*)", out)
        self.peer = m.group(1).strip() if m else None
        m = re.search(r"Protocol version: (\S+)", out)
        self.version = m.group(1) if m else None

    def __repr__(self):
        return "<s_client rc=%s established=%s peer=%r version=%r: %s>" % (
            self.rc, self.established, self.peer, self.version, " | ".join(self.out.strip().splitlines()[-4:]))


def s_client(t, port, *args, stdin=b""):
    cmd = [OPENSSL, "s_client", "-connect", "%s:%d" % (LO, port), "-brief"] + list(args)
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return SClient(p.returncode, p.stdout.decode("utf-8", "replace"))


def tls_options(t, inst, what, ssl_context=None, server_hostname=None):
    """A Python ssl client sends an OPTIONS over tls: and returns (client, response)."""
    c = t.stream(inst, "tls", ssl_context=ssl_context, server_hostname=server_hostname)
    m = request("OPTIONS", "sip:probe@%s" % LO, via=("client.invalid", 5061), transport="TLS")
    r = c.request(m, 3)
    if t.check(r is not None, "%s: no answer to OPTIONS over TLS" % what):
        t.eq(r.status, 200, what + ": status")
        t.eq(r.header("X-Transport"), "tls", what + ": msg.transport")
        vp = r.top_via_params()
        t.eq(vp.get("branch"), m.branch, what + ": Via branch")
        t.eq(vp.get("rport"), str(c.port), what + ": Via rport")
        t.eq(vp.get("received"), LO, what + ": Via received")
    return c, r


def start(t, script=SCRIPT, sip_extra="", tls_conf="", files=None, name=None, streams=("tls",)):
    """A lunasip with a tls: listener. tls_conf: the inside of its tls = { } table; files:
    a function(dir) called before the start to write certificates into its config dir."""
    inst = t.instance(script, name=name, start=False, ipv6=False, streams=streams, ctl=True,
                      sip_extra=sip_extra, conf_extra="tls = { %s }\n" % tls_conf if tls_conf else "")
    if files:
        files(inst.dir)
    inst.start()
    for k in streams:
        t.check(inst.wait_log(r"listening on %s:127\.0\.0\.1:%d\b" % (k, inst.ports[k]), 1),
                "%s: no 'listening on %s:127.0.0.1:%d' line" % (inst.name, k, inst.ports[k]))
    return inst


# ------------------------------------------------------------------------------ tests

def test_tls_self_signed_certificate_generated(t):
    inst = start(t)
    crt, key = os.path.join(inst.dir, "tls", "server.crt"), os.path.join(inst.dir, "tls", "server.key")
    t.check(os.path.isfile(crt) and os.path.isfile(key), "no self-signed pair in %s/tls/" % inst.dir)
    if not os.path.isfile(crt):
        return
    subj = subject(t, crt)
    t.check("localhost" in subj, "subject of the generated certificate: %r (expected CN localhost)" % subj)
    t.eq(stat.S_IMODE(os.stat(key).st_mode), 0o600, "mode of the generated key")
    text = openssl(t, ["x509", "-in", crt, "-noout", "-text"], inst.dir, "text")
    t.check(re.search(r"DNS:localhost", text), "the generated certificate has no subjectAltName DNS:localhost")
    t.check(inst.wait_log(r"(?i)self-signed", 1), "no log line about the generated self-signed certificate")
    sc = s_client(t, inst.ports["tls"], "-noservername")
    t.check(sc.established, "s_client handshake with the generated certificate failed: %r" % sc)
    t.check(sc.peer and "localhost" in sc.peer, "s_client: peer certificate %r" % sc.peer)
    t.check(sc.version in ("TLSv1.2", "TLSv1.3"), "s_client: negotiated version %r" % sc.version)
    t.check(inst.wait_stat("tls_handshakes", 1) == 1, "tls_handshakes: %r" % inst.stat("tls_handshakes"))
    # a restart keeps the pair (written only when both files are missing)
    with open(crt, "rb") as f:
        before = f.read()
    inst.stop()
    inst.start()
    with open(crt, "rb") as f:
        t.check(f.read() == before, "the certificate was rewritten on restart")
    sc = s_client(t, inst.ports["tls"], "-noservername")
    t.check(sc.established, "s_client after restart: %r" % sc)
    lsip.no_error_log(t, inst)


def test_tls_sni_selects_certificate(t):
    def files(d):
        self_signed(t, d, "sni", "sni.example.test", "DNS:sni.example.test")
    inst = start(t, files=files, tls_conf='sni = { ["sni.example.test"] = { certificate = "sni.crt", '
                                          'private_key = "sni.key" } }')
    for args, want in ((("-servername", "sni.example.test"), "sni.example.test"),
                       (("-servername", "other.example.test"), "localhost"),
                       (("-noservername",), "localhost")):
        sc = s_client(t, inst.ports["tls"], *args)
        what = "s_client %s" % " ".join(args)
        if t.check(sc.established, "%s: handshake failed: %r" % (what, sc)):
            t.check(sc.peer is not None and "CN = %s" % want in sc.peer,
                    "%s: peer certificate %r, expected CN = %s" % (what, sc.peer, want))
    t.eq(inst.stat("tls_handshakes"), 3, "tls_handshakes")
    # SIP over the SNI certificate's session
    tls_options(t, inst, "OPTIONS with SNI sni.example.test", server_hostname="sni.example.test")
    lsip.no_error_log(t, inst)


def test_tls_min_version_refuses_tls11(t):
    inst = start(t, tls_conf='min_version = "1.2"')
    sc = s_client(t, inst.ports["tls"], "-tls1_2", "-noservername")
    t.check(sc.established, "s_client -tls1_2: %r" % sc)
    t.eq(sc.version, "TLSv1.2", "s_client -tls1_2: version")
    mark = inst.mark()
    sc = s_client(t, inst.ports["tls"], "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-noservername")
    t.check("no protocols available" not in sc.out,
            "test environment: this openssl cannot offer TLS 1.1, the refusal is not lunasip's: %r" % sc)
    t.check(not sc.established, "s_client -tls1_1 was accepted with min_version 1.2: %r" % sc)
    t.check(re.search(r"(?i)alert", sc.out), "s_client -tls1_1: no alert from lunasip: %r" % sc)
    t.check(inst.wait_stat("tls_handshake_failed", 1) == 1, "tls_handshake_failed: %r" % inst.stat("tls_handshake_failed"))
    t.check(inst.wait_log(r"(?i)(tls|handshake)", 2, since=mark), "no log line for the refused TLS 1.1 handshake")
    # with Python's ssl: 1.2 works, capped at 1.1 fails
    tls_options(t, inst, "OPTIONS over TLS 1.2",
                ssl_context=lsip.client_ssl_context(maximum=ssl.TLSVersion.TLSv1_2))
    lsip.no_error_log(t, inst)


def test_tls_verify_client_required(t):
    def files(d):
        ca = make_ca(t, d)
        make_leaf(t, d, "client", "client.example.test", ca, san="DNS:client.example.test")
        other = make_ca(t, d, "otherca")
        make_leaf(t, d, "stranger", "stranger.example.test", other)
    inst = start(t, files=files, tls_conf='ca_file = "ca.crt", verify_client = "required"')
    d = inst.dir
    sc = s_client(t, inst.ports["tls"], "-cert", os.path.join(d, "client.crt"), "-key", os.path.join(d, "client.key"),
                  "-noservername")
    t.check(sc.established, "a client certificate from tls.ca_file's CA was refused: %r" % sc)
    mark = inst.mark()
    sc = s_client(t, inst.ports["tls"], "-noservername")
    t.check(not sc.established, "verify_client = required accepted a client without a certificate: %r" % sc)
    sc = s_client(t, inst.ports["tls"], "-cert", os.path.join(d, "stranger.crt"), "-key", os.path.join(d, "stranger.key"),
                  "-noservername")
    t.check(not sc.established, "verify_client = required accepted a certificate of another CA: %r" % sc)
    t.eq(inst.wait_stat("tls_handshake_failed", 2), 2, "tls_handshake_failed")
    t.eq(inst.stat("tls_handshakes"), 1, "tls_handshakes")
    t.check(len(inst.log_lines(r"(?i)(tls|handshake)", mark)) >= 2, "no log line for each refused client")
    # SIP flows for the client with a certificate
    ctx = lsip.client_ssl_context(certfile=os.path.join(d, "client.crt"), keyfile=os.path.join(d, "client.key"))
    tls_options(t, inst, "OPTIONS from a verified client", ssl_context=ctx)
    # Python's ssl without a certificate: the handshake fails (or the connection dies at once)
    try:
        c = t.stream(inst, "tls")
        m = request("OPTIONS", "sip:probe@%s" % LO, via=("client.invalid", 5061), transport="TLS")
        r = c.request(m, 2)
        t.check(r is None, "a client without a certificate got an answer: %r" % r)
    except (ssl.SSLError, OSError):
        pass
    lsip.no_error_log(t, inst)


def test_tls_client_handshake_callback(t):
    def files(d):
        ca = make_ca(t, d)
        make_leaf(t, d, "alice", "alice.example.test", ca, san="URI:sip:alice.example.test,DNS:ignored.example.test",
                  chain=True)
        make_leaf(t, d, "evil", "evil.example.test", ca, san="DNS:evil.example.test")
        self_signed(t, d, "selfie", "selfie.example.test")
    inst = start(t, script=HANDSHAKE_SCRIPT, files=files, tls_conf='ca_file = "ca.crt", verify_client = "optional"')
    d = inst.dir

    # alice sends her certificate and the CA's: two PEMs, identities from the sip URI only (RFC 5922 §7.1)
    mark = inst.mark()
    ctx = lsip.client_ssl_context(certfile=os.path.join(d, "alice.crt"), keyfile=os.path.join(d, "alice.key"))
    tls_options(t, inst, "alice", ssl_context=ctx)
    m = inst.wait_log(r"MARK tls_handshake pems=(\d+) first=(.*?) ids=(\S*) valid=(\S+) err=(.*)", 2, since=mark)
    if t.check(m, "on_client_tls_handshake did not run (or did not log) for alice"):
        t.eq(m.group(1), "2", "alice: #pems (leaf + CA sent)")
        t.eq(m.group(2), "-----BEGIN CERTIFICATE-----", "alice: first line of pems[1]")
        t.eq(m.group(3), "alice.example.test", "alice: lunasip.tls.sip_identities(pems[1]) (URI only, RFC 5922)")
        t.eq(m.group(4), "true", "alice: lunasip.tls.validate(pems)")

    # no certificate (verify_client optional): the callback runs with an empty list, SIP flows
    mark = inst.mark()
    tls_options(t, inst, "no certificate")
    m = inst.wait_log(r"MARK tls_handshake pems=(\d+) first=(\S+) ids=(\S*) valid=(\S+)", 2, since=mark)
    if t.check(m, "on_client_tls_handshake did not run for a client without a certificate"):
        t.eq(m.group(1), "0", "no certificate: #pems")
        t.check(m.group(4) != "true", "lunasip.tls.validate({}) answered true")

    # a self-signed certificate: accepted by the script, not valid for lunasip.tls.validate;
    # without subjectAltName its identity is the CN
    mark = inst.mark()
    ctx = lsip.client_ssl_context(certfile=os.path.join(d, "selfie.crt"), keyfile=os.path.join(d, "selfie.key"))
    tls_options(t, inst, "self-signed client", ssl_context=ctx)
    m = inst.wait_log(r"MARK tls_handshake pems=(\d+) first=(.*?) ids=(\S*) valid=(\S+) err=(.*)", 2, since=mark)
    if t.check(m, "on_client_tls_handshake did not run for the self-signed client"):
        t.eq(m.group(1), "1", "self-signed: #pems")
        t.eq(m.group(3), "selfie.example.test", "self-signed: identities (CN, no subjectAltName)")
        t.eq(m.group(4), "false", "self-signed: lunasip.tls.validate(pems)")
        t.check(m.group(5).strip() not in ("", "nil"), "self-signed: validate gave no error text")

    # the script returns false: the connection is closed, nothing is answered
    before = inst.stat("tls_rejected") or 0
    mark = inst.mark()
    ctx = lsip.client_ssl_context(certfile=os.path.join(d, "evil.crt"), keyfile=os.path.join(d, "evil.key"))
    answered = None
    try:
        c = t.stream(inst, "tls", ssl_context=ctx)
        m2 = request("OPTIONS", "sip:probe@%s" % LO, via=("client.invalid", 5061), transport="TLS")
        c.send(m2)
        answered = c.recv_response(m2, 2)
        t.check(c.wait_closed(3), "evil: the connection was not closed after the callback returned false")
    except (ssl.SSLError, OSError):
        pass
    t.check(answered is None, "evil: a rejected connection got an answer: %r" % answered)
    t.check(inst.wait_log(r"MARK tls_handshake .*ids=evil\.example\.test", 2, since=mark),
            "on_client_tls_handshake did not run for evil")
    t.eq(inst.wait_stat("tls_rejected", before + 1), before + 1, "tls_rejected")
    lsip.no_error_log(t, inst)


def test_tls_handshake_timeout(t):
    inst = start(t, sip_extra="tls_handshake_timeout = 1")
    before = inst.stat("tls_handshake_failed") or 0
    mark = inst.mark()
    s = socket.create_connection(inst.addr("tls"), 5)
    t._sockets.append(s)
    port = s.getsockname()[1]
    t0 = time.monotonic()
    s.settimeout(5)
    try:
        data = s.recv(100)
    except socket.timeout:
        data = None
    except OSError:
        data = b""
    dt = time.monotonic() - t0
    t.check(data == b"", "a client that never starts the handshake was not closed within 5 s (got %r)" % data)
    t.check(0.7 <= dt <= 3.0, "closed after %.2f s, expected tls_handshake_timeout (1 s) + a little" % dt)
    t.eq(inst.wait_stat("tls_handshake_failed", before + 1), before + 1, "tls_handshake_failed")
    t.check([ln for ln in inst.log_lines(r"(?i)(handshake|tls)", mark) if re.search(r":%d\b" % port, ln)],
            "no log line naming the connection (:%d) and its handshake timeout" % port)
    # plain text on the TLS port: the handshake fails at once, the process lives on
    s2 = socket.create_connection(inst.addr("tls"), 5)
    t._sockets.append(s2)
    s2.sendall(bytes(request("OPTIONS", "sip:probe@%s" % LO, transport="TCP")))
    s2.settimeout(5)
    t0 = time.monotonic()
    try:
        while s2.recv(4096):
            pass
        closed = True
    except socket.timeout:
        closed = False
    except OSError:
        closed = True
    t.check(closed and time.monotonic() - t0 < 1.0, "plain SIP on the TLS port: not closed at once (%.2f s)" % (time.monotonic() - t0))
    tls_options(t, inst, "OPTIONS after the failed handshakes")
    lsip.no_error_log(t, inst)


# ------------------------------------------------------------------------- outgoing TLS

OUT_SCRIPT = r'''
local lunasip = require "lunasip"
local REJECT = @REJECT@
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local p = lunasip.Proxy.new(req:header("X-Profile") or "default_proxy")
  p:on_error(function(status, reason, code)
    lunasip.log.notice("MARK error %s %s", tostring(status), tostring(code))
  end)
  if req:header("X-Sips") then
    p:route(req)            -- by the R-URI: sips: leaves over TLS (RFC 3261 §26.2)
  else
    p:route(req, "127.0.0.1", @PORT@, "tls")
  end
end
function SipEvents.on_server_tls_handshake(conn, pems)
  local ids = pems[1] and table.concat(lunasip.tls.sip_identities(pems[1]) or {}, ",") or "none"
  lunasip.log.notice("MARK server_tls transport=%s pems=%d ids=%s", conn.transport, #pems, ids)
  return not REJECT
end
'''

OUT_PROXIES = "default_proxy = { timer_B = 4, timer_F = 4 }\nnocb = { callback_on_server_tls_handshake = false }\n"


def _out_options(t, b, peer, profile=None):
    m = request("OPTIONS", "sip:probe@127.0.0.1", via=(peer.host, peer.port),
                extra=["X-Profile: " + profile] if profile else [])
    peer.send(m, b.addr4)
    end = time.monotonic() + 6
    while time.monotonic() < end:
        r = peer.recv_response(m, timeout=max(end - time.monotonic(), 0.01))
        if r is None or r.status >= 200:
            return r
    return None


def test_tls_outgoing_server_handshake_callback(t):
    """lunasip as a TLS client (a request routed with transport "tls"): the server's chain
    reaches SipEvents.on_server_tls_handshake; returning false fails the routing at once
    (500, no Timer F wait); a profile with callback_on_server_tls_handshake = false skips the
    callback; a second request reuses the connection (one handshake)."""
    a = t.instance(SCRIPT, name="server", ipv6=False, start=False, streams=("tls",))
    a.start()
    port = a.ports["tls"]
    for name, reject in (("accept", False), ("reject", True), ("nocb", False)):
        b = t.instance(OUT_SCRIPT.replace("@PORT@", str(port)).replace("@REJECT@", "true" if reject else "false"),
                       name="client_" + name, ipv6=False, start=False, streams=("tls",), proxies=OUT_PROXIES)
        b.start()
        peer = t.peer()
        profile = "nocb" if name == "nocb" else None
        t0 = time.monotonic()
        r = _out_options(t, b, peer, profile)
        took = time.monotonic() - t0
        marks = b.log_lines(r"MARK server_tls")
        if name == "accept":
            t.eq(r.status if r else None, 200, "accept: answer through the TLS hop")
            if t.check(len(marks) == 1, "accept: on_server_tls_handshake lines %r" % marks):
                t.check("transport=tls pems=1 ids=localhost" in marks[0], "accept: callback saw %r" % marks[0])
            r2 = _out_options(t, b, peer, profile)
            t.eq(r2.status if r2 else None, 200, "accept: second request")
            t.eq(len(b.log_lines(r"MARK server_tls")), 1, "accept: handshakes for two requests (connection reuse)")
        elif name == "reject":
            t.eq(r.status if r else None, 500, "reject: final answer")
            t.check(took < 3, "reject: answered after %.1f s (expected at once, not after Timer F)" % took)
            t.check(b.wait_log(r"rejected by the TLS handshake callback", 2), "reject: no log line of the rejection")
            t.check(b.log_lines(r"MARK error 500 connection_error"), "reject: on_error(500, connection_error) missing")
        else:
            t.eq(r.status if r else None, 200, "nocb: answer through the TLS hop")
            t.eq(marks, [], "nocb: on_server_tls_handshake ran despite callback_on_server_tls_handshake = false")
            # a sips: Request-URI with no explicit destination goes over TLS (the connection
            # already open to that address is reused)
            m = request("OPTIONS", "sips:probe@127.0.0.1:%d" % port, via=(peer.host, peer.port),
                        extra=["X-Profile: nocb", "X-Sips: 1"])
            peer.send(m, b.addr4)
            r3 = None
            end = time.monotonic() + 6
            while time.monotonic() < end:
                r3 = peer.recv_response(m, timeout=max(end - time.monotonic(), 0.01))
                if r3 is None or r3.status >= 200:
                    break
            t.eq(r3.status if r3 else None, 200, "sips: R-URI routed over TLS")
            if r3 is not None:
                t.eq(r3.header("X-Transport"), "tls", "transport the server saw for the sips: request")
        lsip.no_error_log(t, b)
    lsip.no_error_log(t, a)
