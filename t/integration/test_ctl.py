"""The control socket (SPEC §8) and `lunasip ctl` (SPEC §2), driven as an operator would: the real
client binary for every command (OpenSIPS names and lunasip's own), raw JSON-RPC 2.0 lines for
the protocol's error paths. A UDP receiver of the test checks what subscriptions deliver, the
log shows what the daemon did, and a SIP probe shows it kept serving throughout."""
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time

import lsip

CTL_CONF = ('core = { log_level = "debug", control_socket = "%s" }\n'
            'sip = { listen = { "udp:127.0.0.1:@PORT4@" } }\n'
            'pike = { enabled = false }\n')

SCRIPT = r'''
local lunasip = require "lunasip"
local VERSION = "%s"
function SystemEvents.on_user_reload()
  local f = assert(io.open("%s", "a"))
  f:write("user_reload ", VERSION, "\n")
  f:close()
  lunasip.log.notice("MARK user_reload %%s", VERSION)
end
event_route["E_MY_EVENT"] = function()
  local a = fetch_event_params("a")
  lunasip.log.notice("MARK event_route E_MY_EVENT a=%%s", tostring(a))
end
function SipEvents.on_request(req)
  if req.method ~= "ACK" then req:reply(200, "OK", { ["X-Version"] = VERSION }) end
end
'''

BAD_SCRIPT = ('local lunasip = require "lunasip"\n'
              '-- broken on purpose on the next line\n'
              'local x = = 1\n')


def _version_h():
    with open(os.path.join(lsip.REPO, "src", "version.h")) as f:
        return re.search(r'LUNASIP_VERSION "([^"]+)"', f.read()).group(1)


def start(t, version="1", sock="ctl.sock", name=None):
    """A lunasip with a control socket (relative to its config dir unless absolute)."""
    inst = t.instance("", name=name, start=False, ipv6=False, conf_text=CTL_CONF % sock)
    inst.marker = os.path.join(inst.dir, "user_reload.out")
    inst.write_script(SCRIPT % (version, inst.marker))
    inst.sock = sock if sock.startswith("/") else os.path.join(inst.dir, sock)
    inst.start()
    return inst


def ctl(t, inst, *args, dir_=None, sock=None):
    """Runs `lunasip ctl -c DIR ARGS...` (or -s SOCKET); returns (rc, stdout, stderr)."""
    opt = ["-s", sock] if sock else ["-c", dir_ or inst.dir]
    p = subprocess.run([lsip.BIN, "ctl"] + opt + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lsip.sanitizer_env(), timeout=60)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    bad = [ln for ln in err.splitlines() if any(s in ln for s in lsip.SANITIZER_PATTERNS)]
    t.check(not bad, "lunasip ctl %s: sanitizer report: %s" % (" ".join(map(str, args)), bad[:5]))
    return p.returncode, out, err


def ctl_ok(t, inst, *args):
    """The result of a command that must succeed: a string as printed, else parsed JSON."""
    rc, out, err = ctl(t, inst, *args)
    what = "lunasip ctl %s" % " ".join(map(str, args))
    if not t.check(rc == 0, "%s: exit %r, stderr %r, stdout %r" % (what, rc, err, out[:300])):
        return None
    try:
        return json.loads(out)
    except ValueError:
        return out.rstrip("\n")


def ctl_err(t, inst, code, *args, msg=None):
    """A command that must be answered with error code (exit 1, `error CODE: ...` on stderr)."""
    rc, out, err = ctl(t, inst, *args)
    what = "lunasip ctl %s" % " ".join(map(str, args))
    t.eq(rc, 1, what + ": exit status")
    t.check(err.startswith("error %d: " % code), "%s: stderr %r does not start with 'error %d: '" % (what, err, code))
    if msg:
        t.check(re.search(msg, err), "%s: stderr %r does not match %r" % (what, err, msg))
    t.eq(out, "", what + ": stdout")
    return err


class Rpc:
    """A raw connection to the control socket."""

    def __init__(self, t, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(None)  # blocking: a full accept backlog makes connect wait, not fail
        self.s.connect(path)
        self.s.settimeout(timeout)
        t._sockets.append(self.s)
        self.buf = b""

    def send(self, data):
        if isinstance(data, (dict, list)):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data if data.endswith(b"\n") else data + b"\n")

    def line(self, timeout=5.0):
        """The next answer line, parsed (None when the server closed or said nothing)."""
        self.s.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                d = self.s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return None
            if not d:
                return None
            self.buf += d
        ln, self.buf = self.buf.split(b"\n", 1)
        return json.loads(ln)

    def call(self, obj):
        self.send(obj)
        return self.line()

    def closed(self, timeout=5.0):
        """Whether the server closed the connection (EOF) within timeout."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def req(method, params=None, id_=1):
    r = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        r["params"] = params
    return r


class Receiver:
    """A UDP event receiver of the test; addr is its event socket text."""

    def __init__(self, t):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        t._sockets.append(self.s)
        self.addr = "udp:127.0.0.1:%d" % self.s.getsockname()[1]


def receiver(t):
    return Receiver(t)


def datagrams(r, timeout, want=None):
    """The datagrams reaching receiver r within timeout seconds; once want of them came, only
    what follows within 0.2 s more (so a duplicate is still seen)."""
    out = []
    end = time.monotonic() + timeout
    while True:
        if want is not None and len(out) >= want:
            end = min(end, time.monotonic() + 0.2)
            want = None
        r.s.settimeout(max(end - time.monotonic(), 0.001))
        try:
            out.append(r.s.recvfrom(70000)[0])
        except socket.timeout:
            return out


def subs_of(result, event):
    """{socket: expire} of event in a subscribers_list result."""
    for e in (result or {}).get("Events", []):
        if e.get("name") == event:
            return {s["socket"]: s["expire"] for s in e.get("subscribers", [])}
    return {}


def serving(t, inst, what):
    r = t.probe(inst)
    t.check(r is not None and r.status == 200, "%s: no 200 to a SIP probe" % what)


# ---------------------------------------------------------------------------------------------

def test_ctl_subscribe_raise_expire_unsubscribe(t):
    inst = start(t)
    a, b = receiver(t), receiver(t)

    t.eq(ctl_ok(t, inst, "event_subscribe", "E_MY_EVENT", a.addr), "OK", "event_subscribe answer")
    t.eq(ctl_ok(t, inst, "raise_event", "E_MY_EVENT", '{"a":1}'), "OK", "raise_event answer")
    got = datagrams(a, 3.0, 1)
    t.eq(got, [b'{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"a":1}}'], "datagrams of raise_event {a:1}")
    t.check(inst.wait_log(r"\[lua\] MARK event_route E_MY_EVENT a=1", 3),
            "raise_event from the control socket did not run event_route[E_MY_EVENT]")
    # positional params, every kind of value; an integer-looking name param stays a string
    t.eq(ctl_ok(t, inst, "evi:raise", "E_MY_EVENT", '["x", -2, true, null, "007"]'), "OK", "evi:raise positional")
    got = datagrams(a, 3.0, 1)
    t.eq([json.loads(d) for d in got], [{"jsonrpc": "2.0", "method": "E_MY_EVENT", "params": ["x", -2, True, None, "007"]}],
         "datagram of a positional raise")
    t.eq(ctl_ok(t, inst, "raise_event", "E_MY_EVENT"), "OK", "raise_event without params")
    t.eq(datagrams(a, 3.0, 1), [b'{"jsonrpc":"2.0","method":"E_MY_EVENT"}'], "datagram of a raise without params")
    # the params of raise_event never reach the log above debug
    m = inst.mark()
    ctl_ok(t, inst, "raise_event", "E_MY_EVENT", '{"secret":"s3cr3t-value"}')
    datagrams(a, 1.0, 1)
    lines = [ln for ln in inst.log_since(m).splitlines() if "s3cr3t-value" in ln and " DEBUG " not in ln]
    t.check(not lines, "raise_event params in the log above debug: %r" % lines)
    t.check(re.search(r" DEBUG ctl: request evi:raise .*s3cr3t-value", inst.log_since(m)),
            "no debug line with the request's params")
    t.check(re.search(r"INFO ctl: evi:raise: ok", inst.log_since(m)), "no 'ctl: evi:raise: ok' line")

    lst = ctl_ok(t, inst, "subscribers_list")
    subs = subs_of(lst, "E_MY_EVENT")
    t.check(a.addr in subs and isinstance(subs[a.addr], int) and 3590 <= subs[a.addr] <= 3600,
            "subscribers_list: %s should expire in ~3600 s: %r" % (a.addr, lst))

    # expire 2 s: a timer removes it, with no raise in between
    t0 = time.monotonic()
    m = inst.mark()
    t.eq(ctl_ok(t, inst, "evi:subscribe", "E_MY_EVENT", b.addr, "2"), "OK", "evi:subscribe expire 2 (as a string)")
    subs = subs_of(ctl_ok(t, inst, "evi:subscribers", "E_MY_EVENT"), "E_MY_EVENT")
    t.check(subs.get(b.addr) in (1, 2), "evi:subscribers: %s should expire in <= 2 s: %r" % (b.addr, subs))
    t.check(a.addr in subs, "evi:subscribers E_MY_EVENT lost %s: %r" % (a.addr, subs))
    one = subs_of(ctl_ok(t, inst, "subscribers_list", "E_MY_EVENT", b.addr), "E_MY_EVENT")
    t.eq(list(one), [b.addr], "subscribers_list EVENT SOCKET shows only that socket")
    ml = inst.wait_log(r"subscription of E_MY_EVENT to %s expired" % re.escape(b.addr), 6, m)
    took = time.monotonic() - t0
    t.check(ml, "no log line of the expiry of %s" % b.addr)
    t.check(1.5 <= took <= 5.0, "the 2 s subscription expired after %.1f s" % took)
    t.check("evi:raise" not in inst.log_since(m), "something raised during the expiry wait")
    subs = subs_of(ctl_ok(t, inst, "subscribers_list"), "E_MY_EVENT")
    t.check(b.addr not in subs and a.addr in subs, "after the expiry: %r" % subs)
    ctl_err(t, inst, 404, "subscribers_list", "E_MY_EVENT", b.addr)
    ctl_ok(t, inst, "raise_event", "E_MY_EVENT", '{"a":2}')
    t.eq(len(datagrams(a, 2.0, 1)), 1, "events to the remaining subscriber")
    t.eq(datagrams(b, 0.5), [], "events to the expired subscriber")

    # re-subscribing refreshes the expiry, named params and numbers as strings (raw JSON-RPC)
    rpc = Rpc(t, inst.sock)
    r = rpc.call(req("event_subscribe", {"event": "E_MY_EVENT", "socket": a.addr, "expire": "60"}, id_="re"))
    t.eq(r, {"jsonrpc": "2.0", "id": "re", "result": "OK"}, "re-subscribe with named params")
    subs = subs_of(ctl_ok(t, inst, "subscribers_list"), "E_MY_EVENT")
    t.check(subs.get(a.addr) in (59, 60), "re-subscribe with expire 60 did not refresh: %r" % subs)

    # evi:unsubscribe; a witness subscriber shows when an event has been delivered
    w = receiver(t)
    t.eq(ctl_ok(t, inst, "event_subscribe", "E_MY_EVENT", w.addr), "OK", "subscribe the witness")
    t.eq(ctl_ok(t, inst, "evi:unsubscribe", "E_MY_EVENT", a.addr), "OK", "evi:unsubscribe")
    ctl_ok(t, inst, "raise_event", "E_MY_EVENT", '{"a":3}')
    t.eq(len(datagrams(w, 3.0, 1)), 1, "the witness got the event")
    t.eq(datagrams(a, 0.3), [], "events after evi:unsubscribe")
    ctl_err(t, inst, 404, "evi:unsubscribe", "E_MY_EVENT", a.addr, msg="not subscribed")

    # expire 0 unsubscribes
    t.eq(ctl_ok(t, inst, "event_subscribe", "E_MY_EVENT", a.addr, "600"), "OK", "subscribe again")
    t.check(a.addr in subs_of(ctl_ok(t, inst, "subscribers_list"), "E_MY_EVENT"), "subscribe again: not listed")
    t.eq(ctl_ok(t, inst, "event_subscribe", "E_MY_EVENT", a.addr, "0"), "OK", "event_subscribe expire 0")
    t.eq(list(subs_of(ctl_ok(t, inst, "subscribers_list", "E_MY_EVENT"), "E_MY_EVENT")), [w.addr], "after expire 0")
    ctl_ok(t, inst, "raise_event", "E_MY_EVENT", '{"a":4}')
    t.eq(len(datagrams(w, 3.0, 1)), 1, "the witness got the event")
    t.eq(datagrams(a, 0.3), [], "events after expire 0")

    # a bad socket is refused with the event bus' message
    err = ctl_err(t, inst, 400, "event_subscribe", "E_MY_EVENT", "udp:127.0.0.1")
    t.check("udp:127.0.0.1" in err, "the bad-socket error does not quote the socket: %r" % err)
    ctl_err(t, inst, 400, "event_subscribe", "E_MY_EVENT", "carrier-pigeon:coop")
    ctl_err(t, inst, -32602, "event_subscribe", "E_MY_EVENT", a.addr, "-5")
    ctl_err(t, inst, -32602, "event_subscribe", "E_MY_EVENT")
    ctl_err(t, inst, 400, "raise_event", "bad name!")
    ctl_err(t, inst, 404, "subscribers_list", "E_NEVER_SEEN")
    serving(t, inst, "after the subscription commands")
    lsip.no_error_log(t, inst)


def test_ctl_commands_reload_user_reload_log_level_stats(t):
    inst = start(t, version="1")
    serving(t, inst, "at start")

    ver = ctl_ok(t, inst, "version")
    t.eq((ver or {}).get("version"), _version_h(), "version")

    # events_list: the core's built-in events and custom ones
    ctl_ok(t, inst, "raise_event", "E_CUSTOM_CTL")
    ev = ctl_ok(t, inst, "events_list")
    names = [e.get("name") for e in (ev or {}).get("Events", [])]
    for n in ("E_CORE_STARTED", "E_CORE_RELOAD", "E_CORE_TERMINATING", "E_EVENT_DROPPED", "tm:local-request",
              "core:started", "E_CUSTOM_CTL"):
        t.check(n in names, "events_list lacks %s: %r" % (n, names))
    ids = [e.get("id") for e in (ev or {}).get("Events", [])]
    t.check(all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), "events_list ids: %r" % ids)
    t.eq(ctl_ok(t, inst, "evi:list"), ev, "evi:list is events_list")

    # reload: a good script is swapped in, a broken one is refused and the old one answers
    inst.write_script(SCRIPT % ("2", inst.marker))
    t.eq(ctl_ok(t, inst, "reload"), "OK", "reload with a good script")
    r = t.probe(inst)
    t.eq(r and r.header("X-Version"), "2", "X-Version after reload")
    inst.write_script(BAD_SCRIPT)
    err = ctl_err(t, inst, 500, "reload", msg=r"reload failed")
    t.check("%s:3:" % inst.script in err, "the reload error does not name %s:3: %r" % (inst.script, err))
    r = t.probe(inst)
    t.eq(r and r.header("X-Version"), "2", "X-Version after a refused reload")
    inst.write_script(SCRIPT % ("2", inst.marker))

    # user_reload runs SystemEvents.on_user_reload (before the command answers)
    t.eq(ctl_ok(t, inst, "user_reload"), "OK", "user_reload")
    try:
        with open(inst.marker) as f:
            t.eq(f.read(), "user_reload 2\n", "what on_user_reload wrote")
    except FileNotFoundError:
        t.check(False, "on_user_reload did not run (no %s)" % inst.marker)

    # log_level
    t.eq(ctl_ok(t, inst, "log_level"), {"level": "debug"}, "log_level")
    t.eq(ctl_ok(t, inst, "log_level", "info"), {"level": "info", "previous": "debug"}, "log_level info")
    m = inst.mark()
    ctl_ok(t, inst, "raise_event", "E_CUSTOM_CTL")
    t.check(inst.wait_log(r"INFO ctl: evi:raise: ok", 3, m), "no info line for a command at level info")
    t.check(" DEBUG " not in inst.log_since(m), "DEBUG lines after log_level info")
    ctl_err(t, inst, -32602, "log_level", "chatty", msg="allowed: debug, info")
    t.eq(ctl_ok(t, inst, "log_level"), {"level": "info"}, "log_level after a refused change")
    t.eq(ctl_ok(t, inst, "log_level", "debug"), {"level": "debug", "previous": "info"}, "log_level debug")
    m = inst.mark()
    ctl_ok(t, inst, "raise_event", "E_CUSTOM_CTL")
    t.check(inst.wait_log(r" DEBUG ctl: request", 3, m), "no DEBUG lines after log_level debug")

    # stats: every counter, the sinks, and a prefix filter
    before = ctl_ok(t, inst, "stats") or {}
    for k in ("rx_requests", "tx_replies", "reloads_ok", "reloads_failed", "events_raised", "ctl_requests", "ctl_errors"):
        t.check(isinstance(before.get(k), int), "stats lacks the counter %s: %r" % (k, sorted(before)))
    t.check(isinstance(before.get("sinks"), list), "stats lacks sinks: %r" % sorted(before))
    t.eq(before.get("reloads_ok"), 1, "stats reloads_ok")
    t.eq(before.get("reloads_failed"), 1, "stats reloads_failed")
    t.check(before.get("rx_requests", 0) >= 3, "stats rx_requests: %r" % before.get("rx_requests"))
    serving(t, inst, "stats")
    ctl_err(t, inst, -32601, "no_such_command")
    after = ctl_ok(t, inst, "stats", "ctl_") or {}
    t.eq(sorted(after), ["ctl_errors", "ctl_requests"], "stats ctl_")
    t.eq(after.get("ctl_requests"), before.get("ctl_requests", 0) + 2, "ctl_requests counts each request")
    t.eq(after.get("ctl_errors"), before.get("ctl_errors", 0) + 1, "ctl_errors counts the error answer")
    t.check(ctl_ok(t, inst, "stats", "rx_").get("rx_requests", 0) > before.get("rx_requests", 0),
            "stats rx_requests did not count the probe")
    ctl_err(t, inst, 404, "stats", "nothing_like_this")
    t.eq(ctl_ok(t, inst, "connections"), [], "connections")
    t.eq(ctl_ok(t, inst, "registrations"), [], "registrations")
    t.eq(ctl_ok(t, inst, "evi:flat_rotate"), {"reopened": 0}, "evi:flat_rotate with no flatstore sink")
    help_ = ctl_ok(t, inst, "help") or []
    cmds = {c.get("name") for c in help_} | {c.get("alias") for c in help_}
    for c in ("reload", "user_reload", "evi:subscribe", "event_subscribe", "evi:unsubscribe", "evi:list",
              "events_list", "evi:subscribers", "subscribers_list", "evi:raise", "raise_event", "stats",
              "connections", "registrations", "log_level", "version", "evi:flat_rotate"):
        t.check(c in cmds, "help lacks %s" % c)
    t.eq(ctl_ok(t, inst, "which"), help_, "which is help")

    # the client's own usage
    rc, out, _ = ctl(t, inst, "-h")
    t.eq(rc, 0, "lunasip ctl -h exit status")
    t.check("usage: lunasip ctl" in out and "event_subscribe" in out and "subscribers_list" in out,
            "lunasip ctl -h does not list the commands: %r" % out[:200])
    p = subprocess.run([lsip.BIN, "ctl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    t.eq(p.returncode, 2, "lunasip ctl without a command: exit status")
    rc, _, err = ctl(t, inst, "--bogus-option", "version")
    t.eq(rc, 2, "lunasip ctl with an unknown option: exit status")

    serving(t, inst, "at the end")
    rc = inst.stop(signal.SIGTERM)
    t.eq(rc, 0, "exit status on SIGTERM")
    t.check(not os.path.exists(inst.sock), "the control socket file is left behind after SIGTERM")
    lines = [ln for ln in inst.log().splitlines() if " ERROR " in ln and "reload failed" not in ln]
    t.check(not lines, "ERROR lines besides the refused reload: %r" % lines[:5])


def test_ctl_protocol_errors(t):
    inst = start(t)
    mode = stat.S_IMODE(os.stat(inst.sock).st_mode)
    t.eq(oct(mode), oct(0o660), "control socket permissions")
    rpc = Rpc(t, inst.sock)

    def check_err(answer, code, id_, what, msg=None):
        ok = (isinstance(answer, dict) and answer.get("jsonrpc") == "2.0" and answer.get("id") == id_
              and "result" not in answer and (answer.get("error") or {}).get("code") == code
              and isinstance(answer["error"].get("message"), str))
        t.check(ok, "%s: expected error %d with id %r, got %r" % (what, code, id_, answer))
        if ok and msg:
            t.check(re.search(msg, answer["error"]["message"]), "%s: message %r does not match %r"
                    % (what, answer["error"]["message"], msg))

    rpc.send('{"jsonrpc":"2.0","id":1,"method":')
    check_err(rpc.line(), -32700, None, "truncated JSON", "parse error")
    rpc.send(b'{"jsonrpc":"2.0","id":1,"method":"version","x":"\xff"}')
    check_err(rpc.line(), -32700, None, "invalid UTF-8")
    rpc.send('{"jsonrpc":"1.0","id":2,"method":"version"}')
    check_err(rpc.line(), -32600, 2, "jsonrpc 1.0")
    rpc.send('{"jsonrpc":"2.0","id":3,"method":7}')
    check_err(rpc.line(), -32600, 3, "method not a string")
    rpc.send('{"jsonrpc":"2.0","id":{"a":1},"method":"version"}')
    check_err(rpc.line(), -32600, None, "id an object")
    rpc.send('{"jsonrpc":"2.0","id":4,"method":"version","params":"x"}')
    check_err(rpc.line(), -32600, 4, "params a string")
    rpc.send('"just a string"')
    check_err(rpc.line(), -32600, None, "not an object")
    check_err(rpc.call(req("no_such_method", id_=5)), -32601, 5, "unknown method")
    check_err(rpc.call(req("event_subscribe", ["E_X"], id_=6)), -32602, 6, "a missing param", "socket")
    check_err(rpc.call(req("version", ["extra"], id_=7)), -32602, 7, "a param too many")
    check_err(rpc.call(req("event_subscribe", {"event": "E_X", "sokcet": "udp:127.0.0.1:9"}, id_=8)),
              -32602, 8, "an unknown named param", "sokcet")
    check_err(rpc.call(req("event_subscribe", ["E_X", "udp:127.0.0.1:9", "soon"], id_=9)), -32602, 9,
              "expire not a number", "expire")
    check_err(rpc.call(req("raise_event", ["E_X", "a=1"], id_=10)), -32602, 10, "raise params a string")
    check_err(rpc.call(req("raise_event", ["E_X", {"a": {"b": 1}}], id_=11)), -32602, 11, "a nested raise param")
    check_err(rpc.call(req("raise_event", ["E_X", {"a": 1.5}], id_=12)), -32602, 12, "a fractional raise param")
    check_err(rpc.call(req("event_subscribe", [["E_X"], "udp:127.0.0.1:9"], id_=13)), -32602, 13, "event an array")
    check_err(rpc.call(req("log_level", [True], id_=14)), -32602, 14, "level a boolean")

    # ids are echoed as given; a notification is never answered
    t.eq(rpc.call(req("version", id_="abc")), {"jsonrpc": "2.0", "id": "abc", "result": {"name": "lunasip", "version": _version_h()}},
         "string id")
    t.eq(rpc.call(req("version", id_=12345678901234)).get("id"), 12345678901234, "large integer id")
    t.eq(rpc.call(req("version", id_=None)).get("id"), None, "null id")
    rpc.send('{"jsonrpc":"2.0","method":"version"}')
    rpc.send('{"jsonrpc":"2.0","method":"no_such_method"}')
    rpc.send(req("stats", ["ctl_requests"], id_=20))
    a = rpc.line()
    t.eq(a and a.get("id"), 20, "the answer after two notifications is the request's")
    # a batch (JSON-RPC 2.0 §6): notifications inside get no answer
    rpc.send([req("version", id_=21), {"jsonrpc": "2.0", "method": "version"}, req("nope", id_=22), 5])
    a = rpc.line()
    ok = isinstance(a, list) and len(a) == 3
    t.check(ok, "batch: expected 3 answers, got %r" % a)
    if ok:
        t.eq(a[0].get("id"), 21, "batch answer 1")
        check_err(a[1], -32601, 22, "batch answer 2")
        check_err(a[2], -32600, None, "batch answer 3")
    rpc.send([{"jsonrpc": "2.0", "method": "version"}])
    rpc.send(req("version", id_=23))
    t.eq((rpc.line() or {}).get("id"), 23, "a batch of notifications only gets no answer")
    rpc.send("[]")
    check_err(rpc.line(), -32600, None, "empty batch")
    rpc.send("   \r")  # a blank line is ignored
    rpc.send(req("version", id_=24))
    t.eq((rpc.line() or {}).get("id"), 24, "the answer after a blank line")
    # pipelined requests in one write are answered in order
    rpc.s.sendall(b"".join(json.dumps(req("version", id_=i)).encode() + b"\n" for i in range(30, 40)))
    t.eq([(rpc.line() or {}).get("id") for _ in range(10)], list(range(30, 40)), "pipelined answers")
    # a request split across writes
    rpc.s.sendall(b'{"jsonrpc":"2.0",')
    time.sleep(0.2)
    rpc.s.sendall(b'"id":41,"method":"version"}\r\n')
    t.eq((rpc.line() or {}).get("id"), 41, "a request split across two writes")

    # a line above 64 KB: an error answer, then the connection is closed
    m = inst.mark()
    big = Rpc(t, inst.sock)
    big.s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"version","params":["' + b"x" * 70000 + b'"]}\n')
    check_err(big.line(), -32600, None, "a 70 KB line", "65536")
    t.check(big.closed(), "the connection of a 70 KB line stayed open")
    t.check(inst.wait_log(r"longer than 65536 bytes", 3, m), "no log line for the 70 KB line")
    # a line of just under 64 KB is fine
    ok_line = b'{"jsonrpc":"2.0","id":2,"method":"raise_event","params":["E_BIG",{"p":"' + b"y" * 60000 + b'"}]}\n'
    big2 = Rpc(t, inst.sock)
    big2.s.sendall(ok_line)
    t.eq(big2.line(), {"jsonrpc": "2.0", "id": 2, "result": "OK"}, "a 60 KB request")

    # 64 clients at most: the 65th is refused with an error line, the others keep working
    conns = [Rpc(t, inst.sock) for _ in range(60)]  # with rpc and big2: 62 (big is closed)
    conns += [Rpc(t, inst.sock) for _ in range(2)]
    extra = Rpc(t, inst.sock)
    check_err(extra.line(), 503, None, "the 65th client", "too many")
    t.eq((conns[-1].call(req("version", id_=50)) or {}).get("id"), 50, "the 64th client is served")
    for c in conns:
        c.close()
    time.sleep(0.3)
    t.eq((Rpc(t, inst.sock).call(req("version", id_=51)) or {}).get("id"), 51, "a client once others left")

    # a client that sends and never reads is closed once its answers back up
    m = inst.mark()
    hog = Rpc(t, inst.sock)
    line = (json.dumps(req("help", id_=1)) + "\n").encode()
    chunk = line * 200
    sent, closed = 0, False
    hog.s.settimeout(10)
    t0 = time.monotonic()
    while sent < 40 * 1024 * 1024 and time.monotonic() - t0 < 30:
        try:
            hog.s.sendall(chunk)
            sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        except socket.timeout:
            break
    t.check(closed, "a client that never reads was not closed (%d bytes of requests sent)" % sent)
    t.check(inst.wait_log(r"ctl: closing client \d+: .*unread", 5, m), "no log line for closing the non-reader")
    t.eq((rpc.call(req("version", id_=60)) or {}).get("id"), 60, "the first client is still served")
    serving(t, inst, "after the protocol errors")
    lsip.no_error_log(t, inst)


def test_ctl_socket_disabled_missing_stale_and_in_use(t):
    # control_socket = false: the client says so
    off = t.instance('function SipEvents.on_request(req) req:reply(200, "OK") end\n', name="off", ipv6=False)
    rc, out, err = ctl(t, off, "version")
    t.eq(rc, 1, "ctl with control_socket = false: exit status")
    t.check("control_socket = false" in err and off.dir in err, "ctl with the socket disabled: %r" % err)
    t.eq(out, "", "ctl with the socket disabled: stdout")
    # no instance behind a path
    nowhere = os.path.join(t.dir, "nobody.sock")
    rc, out, err = ctl(t, off, "version", sock=nowhere)
    t.eq(rc, 1, "ctl -s with nobody listening: exit status")
    t.check("no lunasip is listening on %s" % nowhere in err, "ctl -s with nobody listening: %r" % err)
    # a config dir with no lunasip.conf
    rc, out, err = ctl(t, off, "version", dir_=os.path.join(t.dir, "nothing-here"))
    t.eq(rc, 1, "ctl -c with no config: exit status")
    t.check(err.startswith("lunasip ctl: ") and "nothing-here" in err, "ctl -c with no config: %r" % err)

    # a live socket is not taken over by a second instance; a stale one is replaced
    path = os.path.join(t.dir, "shared.ctl")
    one = start(t, sock=path, name="one")
    v = ctl_ok(t, one, "version") or {}
    t.eq((v.get("name"), v.get("version")), ("lunasip", _version_h()), "first instance: version")
    two = t.instance("", name="two", start=False, ipv6=False, conf_text=CTL_CONF % path)
    two.write_script(SCRIPT % ("two", os.path.join(two.dir, "x")))
    two.start(wait=False)
    try:
        rc2 = two.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc2 = None
    two.stopped = True
    lsip._unregister(two.pid)
    t.eq(rc2, 1, "a second instance on a live control socket: exit status")
    t.check(re.search(r"another lunasip is listening", two.log()), "second instance: %r" % two.tail(3))
    rc, out, err = ctl(t, one, "version", sock=path)
    t.eq(rc, 0, "the first instance still answers on its socket (%r)" % err)

    one.kill()  # SIGKILL: the socket file stays behind
    t.check(os.path.exists(path), "the socket file vanished with a SIGKILLed instance")
    rc, out, err = ctl(t, one, "version", sock=path)
    t.check(rc == 1 and "no lunasip is listening" in err, "ctl on a stale socket: %r %r" % (rc, err))
    m = one.mark()
    one.start()
    t.check(one.wait_log(r"removed the stale control socket", 1, m), "no log line for the stale socket")
    t.eq((ctl_ok(t, one, "version") or {}).get("version"), _version_h(), "restarted instance: version")
    serving(t, one, "restarted instance")

    # a path that is not a socket is never removed
    reg = os.path.join(t.dir, "regular-file")
    with open(reg, "w") as f:
        f.write("keep me\n")
    three = t.instance("", name="three", start=False, ipv6=False, conf_text=CTL_CONF % reg)
    three.write_script(SCRIPT % ("three", os.path.join(three.dir, "x")))
    three.start(wait=False)
    try:
        rc3 = three.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc3 = None
    three.stopped = True
    lsip._unregister(three.pid)
    t.eq(rc3, 1, "control_socket on a regular file: exit status")
    t.check(re.search(r"is not a socket", three.log()), "control_socket on a regular file: %r" % three.tail(3))
    with open(reg) as f:
        t.eq(f.read(), "keep me\n", "the regular file at control_socket")


# ---------------------------------------------------------------------------------------------
# core.metrics_listen (SPEC §8)

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
                         r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9]+(?:\.[0-9]+)?)$')


def http(port, data, timeout=5.0):
    """Sends raw bytes to 127.0.0.1:port, returns (status, headers dict, body) read to EOF."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0] + " ")
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return (int(m.group(1)) if m else None), hdrs, body


def parse_metrics(t, text):
    """{(name, labels text): value} of an exposition, checking its syntax on the way."""
    out, types, helps = {}, {}, set()
    for ln in text.splitlines():
        if ln.startswith("# HELP "):
            name = ln.split(" ")[2]
            t.check(name not in helps, "metrics: two HELP lines for %s" % name)
            helps.add(name)
            continue
        if ln.startswith("# TYPE "):
            parts = ln.split(" ")
            t.check(len(parts) == 4 and parts[3] in ("counter", "gauge"), "metrics: bad TYPE line %r" % ln)
            types[parts[2]] = parts[3]
            continue
        m = METRIC_LINE.match(ln)
        if not t.check(m, "metrics: malformed line %r" % ln):
            continue
        t.check(m.group(1) in types, "metrics: %s has no TYPE line before it" % m.group(1))
        out[(m.group(1), m.group(2) or "")] = int(m.group(3))
    return out, types


def test_metrics_endpoint(t):
    port = lsip.free_port(socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM)
    conf = CTL_CONF.replace('control_socket = "%s" }', 'control_socket = "%s", metrics_listen = "127.0.0.1:' + str(port) + '" }')
    inst = t.instance("", start=False, ipv6=False, conf_text=conf % "ctl.sock")
    inst.write_script(SCRIPT % ("1", os.path.join(inst.dir, "x")))
    inst.sock = os.path.join(inst.dir, "ctl.sock")
    inst.start()
    if not inst.wait_log(r"metrics on http://127\.0\.0\.1:%d/metrics" % port, 2):
        t.fail("no 'metrics on' line: core.metrics_listen is not served")
    a = receiver(t)
    odd_path = os.path.join(inst.dir, 'odd"sock\\name')
    odd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    odd.bind(odd_path)
    t._sockets.append(odd)
    t.eq(ctl_ok(t, inst, "event_subscribe", "E_METRIC", a.addr), "OK", "subscribe udp")
    t.eq(ctl_ok(t, inst, "event_subscribe", "E_METRIC", "unix:" + odd_path), "OK", "subscribe unix")
    for i in range(3):
        ctl_ok(t, inst, "raise_event", "E_METRIC", '{"i":%d}' % i)
    t.eq(len(datagrams(a, 3.0, 3)), 3, "events delivered to the udp sink")
    serving(t, inst, "before the scrape")

    st, hdrs, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    t.eq(st, 200, "GET /metrics status")
    t.eq(hdrs.get("content-type"), "text/plain; version=0.0.4; charset=utf-8", "GET /metrics content type")
    t.eq(hdrs.get("connection"), "close", "Connection header")
    t.eq(hdrs.get("content-length"), str(len(body)), "Content-Length")
    vals, types = parse_metrics(t, body.decode("utf-8"))
    stats_now = ctl_ok(t, inst, "stats") or {}
    for k, v in stats_now.items():
        if k == "sinks":
            continue
        name = "lunasip_%s_total" % k
        t.eq(types.get(name), "counter", "TYPE of %s" % name)
        t.check((name, "") in vals, "metrics lack %s" % name)
    t.check(vals.get(("lunasip_rx_requests_total", ""), 0) >= 1, "lunasip_rx_requests_total counts the probe")
    t.eq(vals.get(("lunasip_events_raised_total", "")), stats_now.get("events_raised"), "events_raised_total")
    t.eq(vals.get(("lunasip_event_sink_delivered_total", '{socket="%s"}' % a.addr)), 3, "udp sink delivered")
    odd_label = '{socket="unix:%s"}' % odd_path.replace("\\", "\\\\").replace('"', '\\"')
    t.eq(vals.get(("lunasip_event_sink_delivered_total", odd_label)), 3,
         "unix sink with an escaped label (%r)" % sorted(k for k in vals if k[0] == "lunasip_event_sink_delivered_total"))
    t.eq(vals.get(("lunasip_event_sink_dropped_total", '{socket="%s"}' % a.addr)), 0, "udp sink dropped")
    t.eq(vals.get(("lunasip_event_sink_up", '{socket="%s"}' % a.addr)), 1, "udp sink up")
    t.eq(vals.get(("lunasip_events_subscriptions", "")), 2, "lunasip_events_subscriptions")
    t.eq(vals.get(("lunasip_event_raised_total", '{event="E_METRIC"}')), 3, "raises of E_METRIC")
    t.eq(types.get("lunasip_events_subscriptions"), "gauge", "TYPE of lunasip_events_subscriptions")

    st, hdrs, body = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    t.check(st == 200 and body == b"" and int(hdrs.get("content-length", "0")) > 1000, "HEAD /metrics: %r %r" % (st, hdrs))
    st, _, _ = http(port, b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n")
    t.eq(st, 200, "GET /metrics with a query")
    st, _, _ = http(port, b"GET / HTTP/1.1\r\n\r\n")
    t.eq(st, 404, "GET /")
    st, _, _ = http(port, b"GET /metricsfoo HTTP/1.1\r\n\r\n")
    t.eq(st, 404, "GET /metricsfoo")
    st, hdrs, _ = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    t.eq(st, 405, "POST /metrics")
    t.eq(hdrs.get("allow"), "GET, HEAD", "Allow of the 405")
    st, _, _ = http(port, b"garbage\r\n\r\n")
    t.eq(st, 400, "a garbage request line")
    st, _, _ = http(port, b"GET /metrics HTTP/2.0\r\n\r\n")
    t.eq(st, 400, "HTTP/2.0 request line")
    st, _, _ = http(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    t.eq(st, 431, "a request head above 8 KB")
    # a client that connects and says nothing holds nobody up
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    t._sockets.append(idle)
    idle.sendall(b"GET /metr")
    t0 = time.monotonic()
    st, _, _ = http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    t.check(st == 200 and time.monotonic() - t0 < 2.0, "a scrape next to an idle client: %r" % st)
    serving(t, inst, "after the scrapes")
    rc = inst.stop(signal.SIGTERM)
    t.eq(rc, 0, "exit status on SIGTERM")
    lsip.no_error_log(t, inst)
