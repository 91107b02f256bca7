"""WebRTC clients behind lunasip (SPEC §4 "Transports" WS/WSS, "Outbound"; RFC 7118, RFC 5626,
RFC 3327): a JsSIP user agent in Node (t/node/jssip_ua.js) registers over a WebSocket
through lunasip to a real Kamailio registrar (t/integration/kamailio.py), calls a SIPp UAS
over UDP, is called back through Kamailio over its WebSocket by the flow token lunasip put
in the Path, and once its WebSocket is gone that call gets 430 Flow Failed.

    JsSIP --wss/ws--> lunasip --udp--> Kamailio (usrloc, Path)        REGISTER
    JsSIP --wss/ws--> lunasip --udp--> SIPp UAS                       INVITE/ACK/BYE
    SIPp UAC --udp--> Kamailio --udp (Route = Path)--> lunasip --wss/ws--> JsSIP
    SIPp UAC --udp--> Kamailio --udp--> lunasip: flow gone --> 430 --> Kamailio --> SIPp UAC

Each test starts its own Kamailio, SIPp and lunasip on 127.0.0.1 on free ports; lunasip
runs SERVER_LUA (below), a small OverSIP-style script. The Node client prints one JSON line
per event (jssip_ua.js lists them); the tests assert those, the SIPp exit codes, stat files
and message traces, Kamailio's "LSIT" log lines and lunasip's log.

Needs node and npm (scripts/deps.sh test); t/node/node_modules is installed here with
`npm ci` when missing or older than t/node/package-lock.json."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import kamailio
import lsip

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(lsip.REPO, "t", "node")
CLIENT = os.path.join(NODE_DIR, "jssip_ua.js")
LO = "127.0.0.1"
USER = "alice"
AOR = "sip:alice@example.test"
TRACE = ("-trace_msg", "-message_file", "messages.log")

# The routing of the tests, in the shape of OverSIP's default server.rb: lunasip is the edge
# proxy of WebSocket clients in front of a registrar. Every line it logs for the tests
# starts with "LSIT".
SERVER_LUA = r"""
local lunasip = require "lunasip"
local log = lunasip.log

local REGISTRAR = { "127.0.0.1", @KAM_PORT@, "udp" }  -- Kamailio
local CALLEE = { "127.0.0.1", @UAS_PORT@, "udp" }     -- the SIPp UAS the client calls

local function route(request, ...)
  local what = request.method .. " " .. tostring(request.call_id)
  local proxy = lunasip.Proxy.new("proxy_out")
  proxy:on_success_response(function(r) log.info("LSIT %s: %d %s", what, r.status_code, r.reason_phrase) end)
  proxy:on_failure_response(function(r) log.info("LSIT %s: %d %s", what, r.status_code, r.reason_phrase) end)
  proxy:on_error(function(status, reason, code)
    log.notice("LSIT %s: error %d %s (%s)", what, status, reason, code)
  end)
  local ok, err = proxy:route(request, ...)
  if not ok then log.warn("LSIT %s: not routed: %s", what, tostring(err)) end
end

function SipEvents.on_request(request)
  log.info("LSIT on_request %s %s over %s from %s:%d", request.method, tostring(request.ruri),
           request.transport, request.source_ip, request.source_port)
  if not request:check_max_forwards(10) then return end

  -- In-dialog requests, both ways, follow the route set lunasip recorded.
  if request:is_in_dialog() then
    if request:loose_route() then
      route(request)
    elseif request.method ~= "ACK" then
      request:reply(404, "Not Here")
    end
    return
  end

  -- An initial request with a Route to lunasip: Kamailio's lookup() made the Path of the
  -- registration its route set, and the flow token in it names the client's WebSocket
  -- (430 when that connection is gone).
  if request:loose_route() then
    route(request)
    return
  end
  if request.method == "ACK" then return end

  -- From the WebSocket clients: registrations to Kamailio, calls to the SIPp UAS.
  local from_ws = request.transport == "ws" or request.transport == "wss"
  if from_ws and request.method == "REGISTER" then
    route(request, REGISTRAR[1], REGISTRAR[2], REGISTRAR[3])
  elseif from_ws and request.method == "INVITE" then
    route(request, CALLEE[1], CALLEE[2], CALLEE[3])
  else
    request:reply(403, "Forbidden")
  end
end

function WebSocketEvents.on_disconnection(conn, client_closed)
  log.info("LSIT ws disconnection client_closed=%s", tostring(client_closed))
end
"""

PROXIES_CONF = """-- written by test_webrtc.py
default_proxy = {}
proxy_out = { timer_B = 4, timer_F = 4, timer_C = 20 }
"""

CONF = """-- written by test_webrtc.py
core = { log_level = "debug", control_socket = false, shutdown_grace = 1 }
sip = { listen = { "udp:127.0.0.1:@PORT4@", "%(scheme)s:127.0.0.1:@PORT_%(SCHEME)s@" } }
pike = { enabled = false }
"""
# wss: a certificate made for the test (_make_cert), self-signed: the client does not verify it
CONF_TLS = """tls = { certificate = "tls/server.crt", private_key = "tls/server.key", verify_client = "none" }
"""


# ------------------------------------------------------------------------------- Node

_npm_lock = threading.Lock()


def _node_ready(t):
    """node on PATH and t/node/node_modules installed from package-lock.json (npm ci when
    missing or older than the lock file). Fails t otherwise."""
    node = shutil.which("node")
    if not node:
        t.fail("node is not on PATH (scripts/deps.sh test installs Debian's nodejs and npm)")
    lock = os.path.join(NODE_DIR, "package-lock.json")
    stamp = os.path.join(NODE_DIR, "node_modules", ".package-lock.json")  # written by npm at install
    with _npm_lock:
        if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(lock):
            return node
        npm = shutil.which("npm")
        if not npm:
            t.fail("npm is not on PATH: cannot install t/node/node_modules (scripts/deps.sh test)")
        r = subprocess.run([npm, "ci", "--prefix", NODE_DIR, "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            t.fail("npm ci in t/node failed (exit %d):\n    %s" % (
                r.returncode, "\n    ".join((r.stdout + r.stderr).splitlines()[-15:])))
    return node


class JsSipClient:
    """t/node/jssip_ua.js in a process of its own: events() are the JSON lines it printed,
    wait() waits for one, cmd() writes a command line on its stdin."""

    def __init__(self, t, node, config, name="jssip"):
        self.t, self.name = t, name
        self.dir = os.path.join(t.dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.err_path = os.path.join(self.dir, "jssip.err")
        self.out_path = os.path.join(self.dir, "events.jsonl")
        config = dict(config, debug=True)  # JsSIP's own log (every SIP message) to jssip.err
        self._events, self._cond = [], threading.Condition()
        err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([node, CLIENT, json.dumps(config)], cwd=NODE_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        err.close()
        t.track_pid(self.proc.pid, "node %s" % name)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        with open(self.out_path, "wb") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"event": "garbage", "line": line.decode("utf-8", "replace")}
                with self._cond:
                    self._events.append(ev)
                    self._cond.notify_all()

    def events(self, name=None, **match):
        with self._cond:
            return [e for e in self._events if (name is None or e.get("event") == name)
                    and all(e.get(k) == v for k, v in match.items())]

    def wait(self, name, timeout=10.0, **match):
        """The first event name (with those field values), or None after timeout s."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events:
                    if e.get("event") == name and all(e.get(k) == v for k, v in match.items()):
                        return e
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))

    def cmd(self, line):
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def kill(self):
        """SIGKILL: the WebSocket goes away with the process, as a crashed browser's would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.t.untrack_pid(self.proc.pid)

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def diag(self, n=40):
        lines = ["%s events:" % self.name] + ["    " + json.dumps(e) for e in self.events()[-15:]]
        try:
            with open(self.err_path, "rb") as f:
                err = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            err = []
        lines.append("%s stderr (JsSIP log, last %d lines):" % (self.name, n))
        lines += ["    " + ln[:300] for ln in err[-n:]]
        return lines


# ---------------------------------------------------------------------------- helpers

def _make_cert(t, conf_dir):
    tls = os.path.join(conf_dir, "tls")
    os.makedirs(tls, exist_ok=True)
    openssl = shutil.which("openssl")
    if not openssl:
        t.fail("openssl is not on PATH (scripts/deps.sh test installs it)")
    r = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", os.path.join(tls, "server.key"), "-out", os.path.join(tls, "server.crt")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        t.fail("openssl could not make the test certificate:\n    %s" % r.stderr.strip())


def _lunasip(t, scheme, kam, uas):
    """lunasip with a UDP listener and a ws: or wss: one, running SERVER_LUA."""
    script = SERVER_LUA.replace("@KAM_PORT@", str(kam.port)).replace("@UAS_PORT@", str(uas.port))
    inst = t.instance(script, name="lunasip", start=False, ipv6=False, proxies=PROXIES_CONF, streams=(scheme,),
                      conf_text=CONF % {"scheme": scheme, "SCHEME": scheme.upper()} + (CONF_TLS if scheme == "wss" else ""))
    if scheme == "wss":
        _make_cert(t, inst.dir)
    inst.start()
    inst.ws_port = ws_port = inst.ports[scheme]
    if not inst.wait_log(r"listening on %s:\S*:%d\b" % (scheme, ws_port), timeout=3):
        t.fail("lunasip started but logs no 'listening on %s:127.0.0.1:%d': the %s listener is missing" % (
            scheme, ws_port, scheme))
    return inst


def _path_uris(values):
    out = []
    for v in values:
        out += lsip.split_commas(v)
    return out


_URI_RE = re.compile(r"<sip:(?:([^@>]+)@)?([^:;>]+)(?::(\d+))?([^>]*)>")


def _uri_parts(value):
    """(user, host, port, params set) of the <sip:...> in a header value, or None."""
    m = _URI_RE.search(value or "")
    if not m:
        return None
    params = {p.strip().lower() for p in m.group(4).split(";") if p.strip()}
    return m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None, params


def _media_port():
    return lsip.media_port(LO)


def _sipp(t, target, scenario, timeout_s, extra=()):
    """One call of scenario, traced; the last -mp on SIPp's command line wins over lsip's."""
    return t.sipp(target, scenario, 1, 1, timeout_s, extra=list(TRACE) + ["-mp", str(_media_port())] + list(extra))


def _msgs(run, direction, start=None, status=None):
    out = []
    for d, m in lsip.sipp_messages(os.path.join(run.dir, "messages.log")):
        if d != direction:
            continue
        if start and (m.is_response or not m.start.startswith(start + " ")):
            continue
        if status is not None and m.status != status:
            continue
        out.append(m)
    return out


def _sipp_ok(t, run, rc, what):
    ok = t.check(rc == 0, "%s: SIPp %s exit status %r, expected 0" % (what, os.path.basename(run.scenario), rc))
    st = run.stats()
    ok &= t.eq(st.get("SuccessfulCall(C)"), 1, "%s: successful calls" % what)
    ok &= t.eq(st.get("FailedCall(C)"), 0, "%s: failed calls" % what)
    if not ok:
        t.errors.extend("    %s: %s" % (what, ln) for ln in run.errors(8) + run.output_tail(8))
    return ok


def _wait_or_kill(run, grace):
    try:
        rc = run.proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        rc = None
    lsip._unregister(run.proc.pid)
    return rc


def _need(t, ev, what):
    """Stops the test when a step the next ones depend on did not happen (the client's
    events and log are added to the report on the way out)."""
    if ev is None:
        t.fail(what)
    return ev


# ------------------------------------------------------------------------------- flow

def _webrtc_flow(t, scheme, disconnect):
    """The whole story over scheme ("ws" or "wss"); disconnect is "close" (the client closes
    its WebSocket with 1001) or "kill" (the Node process dies)."""
    node = _node_ready(t)
    kam = kamailio.Registrar(t)
    client = None
    done = False
    try:
        kam.start()
        uas = _sipp(t, (LO, 9), "webrtc_uas.xml", 40)
        if not lsip.wait_udp_bound(uas.port):
            t.fail("SIPp UAS did not bind %s:%d" % (LO, uas.port))
        inst = _lunasip(t, scheme, kam, uas)
        url = "%s://127.0.0.1:%d" % (scheme, inst.ws_port)
        via_tp = scheme.upper()

        # 1. REGISTER over the WebSocket, through lunasip, to Kamailio
        client = JsSipClient(t, node, {"ws": url, "uri": AOR, "registrar": "sip:example.test",
                                       "answer": True})
        _need(t, client.wait("connected", 10), "the JsSIP client did not connect to %s" % url)
        reg = client.wait("registered", 10)
        if reg is None:
            failed = client.events("registration_failed")
            _need(t, None, "JsSIP did not register through lunasip (registration_failed: %r)" % failed)
        t.eq(reg.get("status"), 200, "REGISTER: status at the client")
        paths = _path_uris(reg.get("path") or [])
        stored = kam.wait_lines("REGISTER", 1)
        if t.check(stored, "Kamailio logged no REGISTER"):
            t.check(AOR in stored[0], "Kamailio saved another AoR: %r" % stored[0])
            kpath = re.search(r"path=(.*)$", stored[0])
            t.eq(_path_uris([kpath.group(1)]) if kpath else None, paths,
                 "the Path Kamailio stored vs the Path in the 200 at the client")
        if t.check(paths, "the 200 to the REGISTER has no Path (lunasip must add one: Supported: path)"):
            parts = [_uri_parts(p) for p in paths]
            t.check(all(p and p[1] == LO and p[2] in (inst.port4, inst.ws_port) and "lr" in p[3] for p in parts),
                    "Path values that do not name lunasip (%s:%d or :%d with ;lr): %r" % (
                        LO, inst.port4, inst.ws_port, paths))
            top = parts[0]
            t.check(top and top[2] == inst.port4 and ("transport=udp" in top[3] or not any(
                x.startswith("transport=") for x in top[3])),
                "the top Path (where Kamailio sends) is not lunasip's UDP address %s:%d: %r" % (LO, inst.port4, paths[0]))
            tokens = [p[0] for p in parts if p and p[0]]
            t.check(tokens and all(re.fullmatch(r"[A-Za-z0-9_-]{16,}", tok) for tok in tokens),
                    "no flow token (user part of lunasip's Path URI) in %r" % paths)
            t.check(any("ob" in p[3] for p in parts if p),
                    "no ;ob on lunasip's Path although JsSIP asked for Outbound (reg-id, +sip.instance): %r" % paths)

        # 2. JsSIP calls the SIPp UAS over UDP and hangs up after 1 s
        client.cmd("call sip:uas@%s:%d 1" % (LO, uas.port))
        acc = client.wait("call_accepted", 10, id="out1")
        ended = client.wait("call_ended", 10, id="out1")
        rc = _wait_or_kill(uas, 10)
        _sipp_ok(t, uas, rc, "JsSIP -> SIPp UAS: UAS")
        if t.check(acc is not None, "the call to the SIPp UAS was not accepted at the client: %r" % (
                client.events("call_failed"),)):
            t.eq(acc.get("status"), 200, "JsSIP -> UAS: status at the client")
        t.check(client.events("call_progress", id="out1", status=180), "JsSIP -> UAS: no 180 at the client")
        t.check(client.events("call_confirmed", id="out1"), "JsSIP -> UAS: the call was not confirmed (ACK)")
        if t.check(ended is not None, "JsSIP -> UAS: the call did not end"):
            t.eq((ended.get("originator"), ended.get("cause")), ("local", "Terminated"),
                 "JsSIP -> UAS: how the call ended (the client's BYE)")
        inv = _msgs(uas, "received", "INVITE")
        if t.check(len(inv) == 1, "UAS: %d INVITEs received, expected 1" % len(inv)):
            vias = lsip.header_values(inv[0], "Via")
            t.check(len(vias) == 2 and vias[0].upper().startswith("SIP/2.0/UDP %s:%d" % (LO, inst.port4))
                    and vias[1].upper().startswith("SIP/2.0/" + via_tp),
                    "INVITE at the UAS: Vias %r, expected lunasip's UDP one over the client's %s one" % (vias, via_tp))
            rr = [_uri_parts(v) for v in lsip.header_values(inv[0], "Record-Route")]
            t.check(rr and all(p and p[1] == LO and p[2] in (inst.port4, inst.ws_port) for p in rr)
                    and rr[0][2] == inst.port4,
                    "INVITE at the UAS: Record-Route %r, expected lunasip's (UDP side first)" % (
                        lsip.header_values(inv[0], "Record-Route"),))
        for meth in ("ACK", "BYE"):
            got = _msgs(uas, "received", meth)
            if t.check(len(got) == 1, "UAS: %d %s received from the client, expected 1" % (len(got), meth)):
                t.eq(got[0].header_all("Route"), [], "%s at the UAS: Route (lunasip's removed)" % meth)

        # 3. a SIPp UAC calls the JsSIP user through Kamailio: over the WebSocket by the flow token
        uac = _sipp(t, kam.addr, "webrtc_uac.xml", 20, ["-s", USER])
        rc = uac.wait()
        _sipp_ok(t, uac, rc, "SIPp UAC -> Kamailio -> lunasip -> JsSIP")
        inc = client.wait("incoming_call", 2)
        if t.check(inc is not None, "the JsSIP client got no incoming call"):
            contact = (reg.get("contact") or [""])[0]
            t.check(inc.get("ruri") and inc["ruri"] in contact,
                    "incoming INVITE: R-URI %r is not the registered contact %r" % (inc.get("ruri"), contact))
            vias = inc.get("via") or []
            t.check(vias and vias[0].upper().startswith("SIP/2.0/%s " % via_tp),
                    "incoming INVITE: top Via %r is not lunasip's %s Via" % (vias[:1], via_tp))
            t.eq(inc.get("route"), [], "incoming INVITE: Route left for the client (lunasip's Path entries must go)")
            end = client.wait("call_ended", 5, id=inc["id"])
            t.check(client.events("call_confirmed", id=inc["id"]), "UAC -> JsSIP: the call was not confirmed (ACK)")
            if t.check(end is not None, "UAC -> JsSIP: the call did not end at the client"):
                t.eq(end.get("originator"), "remote", "UAC -> JsSIP: who ended the call (the UAC's BYE)")
        looked = kam.lines("LOOKUP")
        if t.check(looked, "Kamailio logged no lookup for the call"):
            m = re.search(r"du=(\S+)", looked[0])
            t.check(m and paths and m.group(1).strip("<>") == paths[0].strip("<>"),
                    "Kamailio relayed to %r, not to the top Path %r" % (m and m.group(1), paths[:1]))
        ok200 = _msgs(uac, "received", status=200)
        if ok200:
            t.check(any(_uri_parts(v) and _uri_parts(v)[2] == inst.port4
                        for v in lsip.header_values(ok200[0], "Record-Route")),
                    "200 at the UAC: no Record-Route of lunasip: %r" % lsip.header_values(ok200[0], "Record-Route"))

        # 4. the client's WebSocket goes away (no un-REGISTER): the same call gets 430
        mark = inst.mark()
        if disconnect == "close":
            client.cmd("disconnect")
            _need(t, client.wait("ws_closed", 5), "the client did not close its WebSocket")
            client.stop()
        else:
            client.kill()
        t.check(inst.wait_log(r"LSIT ws disconnection", 5, since=mark),
                "lunasip did not report the WebSocket's disconnection (WebSocketEvents.on_disconnection)")
        uac = _sipp(t, kam.addr, "webrtc_uac_430.xml", 20, ["-s", USER])
        rc = uac.wait()
        _sipp_ok(t, uac, rc, "call after the disconnection: 430")
        fin = [m.status for m in _msgs(uac, "received") if m.is_response and m.status >= 200]
        t.eq(fin[:1], [430], "call after the disconnection: final status at the UAC")
        t.check(inst.wait_log(r"LSIT INVITE \S+: error 430 .*\(flow_failed\)", 3, since=mark),
                "lunasip's log has no flow failure (on_error 430 ... flow_failed) for the INVITE:\n      %s" % (
                    "\n      ".join(inst.log_since(mark).splitlines()[-12:])))
        t.check("430" in " ".join(kam.lines("REPLY")), "Kamailio saw no 430 from lunasip: %r" % kam.lines("REPLY"))
        lsip.no_error_log(t, inst)
        done = True
    finally:
        failed = bool(t.errors) or not done  # not done: t.fail or an exception is on its way
        if failed and client is not None:
            t.errors.extend(client.diag())
        if client is not None:
            client.kill()
        if failed:
            t.errors.append("kamailio log (last lines):")
            t.errors.extend("    " + ln for ln in kam.tail(15))
        kam.stop()


def test_webrtc_jssip_over_wss_register_call_and_430(t):
    """JsSIP over WSS: register (Path with a flow token), call a SIPp UAS, be called through
    Kamailio, then close the WebSocket: the next call gets 430 Flow Failed."""
    _webrtc_flow(t, "wss", "close")


def test_webrtc_jssip_over_ws_register_call_and_430(t):
    """The same over plain WS; this time the client process dies instead of closing."""
    _webrtc_flow(t, "ws", "kill")
