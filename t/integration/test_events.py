"""The event interface from Lua (SPEC §5.4, §5.5, §5.6, §6; issue 4): raise_event,
event_route with fetch_event_params, subscribe_event / unsubscribe_event, and the built-in
events E_CORE_STARTED (+ core:started), E_CORE_TERMINATING, E_CORE_RELOAD (+ core:reload),
E_CORE_THRESHOLD, E_EVENT_DROPPED and tm:local-request.

Subscribers are plain UDP sockets of the test (Sink): what they receive is the exact
JSON-RPC notification. Handlers write what they see either to the log ("[lua] EV ...") or,
where the order against on_request matters, to a file the script appends to (one line per
write, opened and closed each time, so the order of the lines is the order of the writes)."""
import json
import os
import re
import signal
import subprocess
import time

import lsip
from lsip import request

LO = "127.0.0.1"


# --------------------------------------------------------------------------------- helpers

class Sink:
    """A UDP event receiver: subscribe_event(NAME, sink.socket)."""

    def __init__(self, t):
        self.peer = t.peer()
        self.port = self.peer.port
        self.socket = "udp:127.0.0.1:%d" % self.port

    def raw(self, timeout=2.0, n=None):
        """The datagrams arriving within timeout (returns as soon as n arrived)."""
        out = []
        end = time.monotonic() + timeout
        while n is None or len(out) < n:
            left = end - time.monotonic()
            if left <= 0:
                break
            r = self.peer.recv(left)
            if r is None:
                break
            out.append(r[0])
        return out

    def events(self, timeout=2.0, n=None):
        """As raw, parsed; a datagram that is not JSON is kept as {"unparsable": bytes}."""
        out = []
        for d in self.raw(timeout, n):
            try:
                out.append(json.loads(d.decode("utf-8")))
            except ValueError:
                out.append({"unparsable": d})
        return out


def _sub(text, **kw):
    for k, v in kw.items():
        text = text.replace("@%s@" % k, str(v))
    return text


# A function every script below starts with: out(...) appends one line to the file OUT;
# dump(t) is a canonical text of a table (keys sorted, values with their Lua type).
PRELUDE = r'''local lunasip = require "lunasip"
local OUT = "@OUT@"
local function out(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
  local f = assert(io.open(OUT, "a"))
  f:write(table.concat(parts, " "), "\n")
  f:close()
end
local function dump(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = tostring(k) .. "=" .. type(t[k]) .. ":" .. tostring(t[k])
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
'''


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _wait_line(path, prefix, timeout=3.0):
    """The lines of path once one starts with prefix (or after timeout)."""
    end = time.monotonic() + timeout
    while True:
        lines = _lines(path)
        if any(ln.startswith(prefix) for ln in lines) or time.monotonic() >= end:
            return lines
        time.sleep(0.02)


def _ask(t, inst, peer, what, headers=(), method="OPTIONS"):
    """A request with extra headers from peer; returns the Response or None (checked)."""
    m = request(method, "sip:events@%s:%d" % (LO, inst.port4), via=(peer.host, peer.port), extra=list(headers))
    r = peer.request(m, inst.addr4, 3.0)
    t.check(r is not None and r.status == 200, "%s: answer %r, expected 200" % (what, r and r.status))
    return r


def _ev_lines(inst, since=0):
    """The "[lua] EV ..." lines of the log (after since), without the prefix."""
    return [m.group(1) for m in re.finditer(r"\[lua\] EV (.*)", inst.log_since(since))]


def _wait_ev(inst, pattern, timeout=3.0, since=0):
    m = inst.wait_log(r"\[lua\] EV " + pattern, timeout, since)
    return m


def _no_error_log_but(t, inst, allowed=()):
    """lsip.no_error_log, except ERROR lines (and traceback lines) matching one of allowed."""
    bad = []
    for ln in inst.log().splitlines():
        if re.search(r"\bERROR\b|traceback", ln) and not any(re.search(a, ln) for a in allowed):
            bad.append(ln)
    t.check(not bad, "%s: unexpected ERROR lines in the log:\n      %s" % (inst.name, "\n      ".join(bad[:8])))


def _check_run(inst):
    """lunasip --check -c DIR: (exit status, output)."""
    p = subprocess.run([lsip.BIN, "-c", inst.dir, "--check"], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30, env=lsip.sanitizer_env())
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


# ------------------------------------------------------------------------ 1. the workshop

WORKSHOP_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_PIKE_BLOCKED", "@SINK@")

event_route["E_PIKE_BLOCKED"] = function()
  local ip = fetch_event_params("ip")
  lunasip.log.notice("IP %s has been blocked", ip)
end

function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  -- pike does not exist yet: the script raises what it would
  raise_event("E_PIKE_BLOCKED", { ip = "10.1.2.3" })
  req:reply(200, "OK")
end
'''


def test_events_workshop_pike_blocked(t):
    """The OpenSIPS workshop example as written: event_route["E_PIKE_BLOCKED"] with
    fetch_event_params("ip") logs the IP; a UDP subscriber gets the notification."""
    sink = Sink(t)
    inst = t.instance(_sub(WORKSHOP_LUA, SINK=sink.socket), ipv6=False)
    peer = t.peer()
    _ask(t, inst, peer, "the request raising E_PIKE_BLOCKED")
    t.check(inst.wait_log(r"\[lua\] IP 10\.1\.2\.3 has been blocked", 3.0),
            "no '[lua] IP 10.1.2.3 has been blocked' line in the log")
    got = sink.raw(2.0, 1)
    t.eq(got, [b'{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"10.1.2.3"}}'],
         "E_PIKE_BLOCKED at the UDP subscriber")
    t.eq(len(re.findall(r"has been blocked", inst.log())), 1, "handler runs for one raise")
    lsip.no_error_log(t, inst)


PLAIN_TABLE_LUA = r'''local lunasip = require "lunasip"
-- a script may replace the event_route table with its own (checked after the load)
event_route = {
  E_PLAIN = function() lunasip.log.notice("EV plain %s", tostring(fetch_event_params("x"))) end,
  ["core:started"] = function() lunasip.log.notice("EV plain core:started") end,
}
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  raise_event("E_PLAIN", { x = 7 })
  req:reply(200, "OK")
end
'''


def test_events_plain_event_route_table(t):
    """A script that assigns its own table to event_route: its handlers run (core:started
    at start, E_PLAIN raised by on_request)."""
    inst = t.instance(PLAIN_TABLE_LUA, ipv6=False)
    t.check(_wait_ev(inst, r"plain core:started", 3.0), "core:started handler of a plain event_route table")
    _ask(t, inst, t.peer(), "raise E_PLAIN")
    t.check(_wait_ev(inst, r"plain 7", 2.0), "E_PLAIN handler of a plain event_route table: %r" % _ev_lines(inst))
    lsip.no_error_log(t, inst)


# ------------------------------------------------------------ 2. custom events, params

CUSTOM_LUA = PRELUDE + r'''
subscribe_event("E_MY_EVENT", "udp:127.0.0.1:@SINK@")
subscribe_event("E_ORDERED", "udp:127.0.0.1:@SINK@")
subscribe_event("E_POS", "udp:127.0.0.1:@SINK@")
subscribe_event("E_INTS", "udp:127.0.0.1:@SINK@")
subscribe_event("E_TWO", "udp:127.0.0.1:@SINK@")
subscribe_event("E_TWO", "udp:127.0.0.1:@SINK2@")
subscribe_event("E_TWO", "  udp:127.0.0.1:@SINK2@ ")   -- the same socket: a refresh, not a third

event_route["E_MY_EVENT"] = function()
  local caller, code, none = fetch_event_params("caller", "code", "none")
  out("H E_MY_EVENT", caller, type(code), code, tostring(none), dump(fetch_event_params()),
      lunasip.events.current_event())
end
event_route["E_ORDERED"] = function()
  local missing, zeta, gone = fetch_event_params("missing", "zeta", "gone")
  out("H E_ORDERED", dump(fetch_event_params()), tostring(missing), zeta, tostring(gone))
end
event_route["E_POS"] = function()
  local a, c, d = fetch_event_params(1, 3, 4)
  out("H E_POS", a, tostring(c), tostring(d), dump(fetch_event_params()), tostring(fetch_event_params("x")))
end
event_route["E_INTS"] = function()
  local big, neg = fetch_event_params("big", "neg")
  out("H E_INTS", type(big), string.format("%.0f", big), neg)
end
event_route["E_RT"] = function() out("H E_RT", fetch_event_params("k")) end
event_route["E_ESC"] = function()
  local v = fetch_event_params("s")
  out("H E_ESC", #v, (v:gsub(".", function(c) return string.format("%02x", c:byte()) end)))
end
subscribe_event("E_ESC", "udp:127.0.0.1:@SINK@")
subscribe_event("E_EXP", "udp:127.0.0.1:@SINK2@", 2)

function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local case = req:header("X-Case")
  if case == "map" then
    out("R map", raise_event("E_MY_EVENT", { caller = "alice", code = 200 }))
  elseif case == "ordered" then
    out("R ordered", raise_event("E_ORDERED", { { "zeta", "z" }, { "alpha", 1 }, { "mid", true },
                                                 { "gone", nil }, { "off", false } }))
  elseif case == "pos" then
    out("R pos", raise_event("E_POS", { "first", 2, false }))
  elseif case == "ints" then
    out("R ints", raise_event("E_INTS", { big = 4611686018427387904LL, neg = -42 }))
  elseif case == "esc" then
    out("R esc", raise_event("E_ESC", { s = 'q"b\\s\n\1\195\169\255' }))
  elseif case == "big" then
    local rc, err = raise_event("E_ESC", { s = ("x"):rep(70000) })
    out("R big", tostring(rc), tostring(err))
  elseif case == "late" then
    if req:header("X-Assign") then
      event_route["E_LATE"] = function() out("H E_LATE", fetch_event_params("n")) end
    end
    out("R late", raise_event("E_LATE", { n = req:header("X-N") }))
  elseif case == "exp" then
    out("R exp", raise_event("E_EXP", { n = 1 }))
  elseif case == "counts" then
    out("R counts", raise_event("E_TWO", { n = 1 }), raise_event("E_NOBODY", { n = 1 }), raise_event("E_TWO"))
  elseif case == "subs" then
    local ok, err = pcall(subscribe_event, "E_RT", "bogus:127.0.0.1:1")
    out("R bad", tostring(ok), err)
    ok, err = pcall(subscribe_event, "E_RT", "udp:127.0.0.1")
    out("R noport", tostring(ok), err)
    out("R sub", tostring(subscribe_event("E_RT", "udp:127.0.0.1:@SINK3@", 60)))
    out("R sub again", tostring(subscribe_event("E_RT", "udp:127.0.0.1:@SINK3@")))
    out("R rc1", raise_event("E_RT", { k = "one" }))
  elseif case == "unsub" then
    out("R unsub", tostring(unsubscribe_event("E_RT", "udp:127.0.0.1:@SINK3@")))
    out("R unsub again", tostring(unsubscribe_event("E_RT", "udp:127.0.0.1:@SINK3@")))
    out("R rc2", raise_event("E_RT", { k = "two" }))
  elseif case == "raise_then_unsub" then
    out("R sub", tostring(subscribe_event("E_RTU", "udp:127.0.0.1:@SINK3@")))
    out("R rc3", raise_event("E_RTU", { k = "three" }))
    out("R unsub", tostring(unsubscribe_event("E_RTU", "udp:127.0.0.1:@SINK3@")))
  elseif case == "raise_then_unsub_shared" then
    out("R sub", tostring(subscribe_event("E_RTS", "udp:127.0.0.1:@SINK@")))
    out("R rc4", raise_event("E_RTS", { k = "four" }))
    out("R unsub", tostring(unsubscribe_event("E_RTS", "udp:127.0.0.1:@SINK@")))
  end
  req:reply(200, "OK")
end
'''


def test_events_custom_params_payloads_and_counts(t):
    """Custom events raised from on_request: a map is delivered as exactly the OpenSIPS
    notification (keys in name order), ordered pairs keep their order (nil as null),
    positional params give a JSON array and fetch_event_params(N); fetch_event_params()
    is the table; raise_event returns the number of subscriptions; run-time
    subscribe/unsubscribe."""
    sink, sink2, sink3 = Sink(t), Sink(t), Sink(t)
    out = os.path.join(t.dir, "custom.out")
    inst = t.instance(_sub(CUSTOM_LUA, OUT=out, SINK=sink.port, SINK2=sink2.port, SINK3=sink3.port), ipv6=False)
    started = time.monotonic()  # E_EXP's 2 s began before this
    peer = t.peer()

    # expire = 2 (given at script load): there now, gone 2.3 s after the start (end of the test)
    _ask(t, inst, peer, "expiring 1", ["X-Case: exp"])
    t.eq(sink2.events(2.0, 1), [{"jsonrpc": "2.0", "method": "E_EXP", "params": {"n": 1}}],
         "E_EXP (subscribed with expire 2) right after the start")

    _ask(t, inst, peer, "map", ["X-Case: map"])
    t.eq(sink.raw(2.0, 1), [b'{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"caller":"alice","code":200}}'],
         "E_MY_EVENT (map) at the subscriber")
    lines = _wait_line(out, "H E_MY_EVENT")
    t.check("R map 1" in lines, "raise_event(E_MY_EVENT) with one subscription did not return 1: %r" % lines)
    t.check("H E_MY_EVENT alice number 200 nil {caller=string:alice,code=number:200} E_MY_EVENT" in lines,
            "E_MY_EVENT handler: fetch_event_params values/table/current_event: %r" % lines)

    _ask(t, inst, peer, "ordered", ["X-Case: ordered"])
    t.eq(sink.raw(2.0, 1),
         [b'{"jsonrpc":"2.0","method":"E_ORDERED","params":{"zeta":"z","alpha":1,"mid":true,"gone":null,"off":false}}'],
         "E_ORDERED (ordered pairs) at the subscriber")
    lines = _wait_line(out, "H E_ORDERED")
    t.check("H E_ORDERED {alpha=number:1,mid=boolean:true,off=boolean:false,zeta=string:z} nil z nil" in lines,
            "E_ORDERED handler: fetch_event_params() and values: %r" % lines)

    _ask(t, inst, peer, "positional", ["X-Case: pos"])
    t.eq(sink.raw(2.0, 1), [b'{"jsonrpc":"2.0","method":"E_POS","params":["first",2,false]}'],
         "E_POS (positional) at the subscriber")
    lines = _wait_line(out, "H E_POS")
    t.check("H E_POS first false nil {1=string:first,2=number:2,3=boolean:false} nil" in lines,
            "E_POS handler: fetch_event_params(1, 3, 4), the table, a name: %r" % lines)

    _ask(t, inst, peer, "int64", ["X-Case: ints"])
    t.eq(sink.raw(2.0, 1), [b'{"jsonrpc":"2.0","method":"E_INTS","params":{"big":4611686018427387904,"neg":-42}}'],
         "E_INTS (int64 cdata) at the subscriber")
    lines = _wait_line(out, "H E_INTS")
    t.check("H E_INTS number 4611686018427387904 -42" in lines, "E_INTS handler: %r" % lines)

    _ask(t, inst, peer, "counts", ["X-Case: counts"])
    lines = _wait_line(out, "R counts")
    t.check("R counts 2 0 2" in lines,
            "raise_event return values (E_TWO: 2 subscriptions, E_NOBODY: 0): %r" % [l for l in lines if "counts" in l])
    one = sink.events(1.5, 2)
    two = sink2.events(1.5, 2)
    want = [{"jsonrpc": "2.0", "method": "E_TWO", "params": {"n": 1}}, {"jsonrpc": "2.0", "method": "E_TWO"}]
    t.eq(one, want, "E_TWO at the first subscriber (no params: no 'params' member)")
    t.eq(two, want, "E_TWO at the second subscriber (once per raise: the re-subscription refreshed)")
    t.eq(sink.raw(0.3) + sink2.raw(0.1), [], "more datagrams after E_TWO")

    # escaping: quote, backslash, newline, a control character, UTF-8 é, a byte that is not UTF-8
    _ask(t, inst, peer, "escapes", ["X-Case: esc"])
    t.eq(sink.raw(2.0, 1), [b'{"jsonrpc":"2.0","method":"E_ESC","params":{"s":"q\\"b\\\\s\\n\\u0001\xc3\xa9\xc3\xbf"}}'],
         "E_ESC (escapes; the non-UTF-8 byte as U+00FF) at the subscriber")
    lines = _wait_line(out, "H E_ESC")
    t.check("H E_ESC 10 7122625c730a01c3a9ff" in lines, "E_ESC handler: the string as raised (bytes): %r"
            % [l for l in lines if "E_ESC" in l])
    # a payload above 64 KB: nil, why; nothing delivered
    _ask(t, inst, peer, "big", ["X-Case: big"])
    lines = _wait_line(out, "R big")
    t.check("R big nil payload above 64 KB" in lines, "raise_event of a 70 KB param: %r" % [l for l in lines if "big" in l])
    t.eq(sink.raw(0.3), [], "a payload above 64 KB at the subscriber")
    # a handler assigned at run time (after the event was seen without one) runs
    _ask(t, inst, peer, "late 1", ["X-Case: late", "X-N: 1"])
    time.sleep(0.1)
    _ask(t, inst, peer, "late 2", ["X-Case: late", "X-N: 2", "X-Assign: 1"])
    lines = _wait_line(out, "H E_LATE", 2.0)
    time.sleep(0.1)
    lines = _lines(out)
    t.eq([l for l in lines if "LATE" in l or "late" in l], ["R late 0", "R late 0", "H E_LATE 2"],
         "event_route assigned at run time, after the event was raised without a handler")

    # run-time subscriptions from on_request
    _ask(t, inst, peer, "subscribe", ["X-Case: subs"])
    lines = _wait_line(out, "R rc1")
    bad = [l for l in lines if l.startswith("R bad ")]
    t.check(bad and bad[0].startswith("R bad false ") and "bogus:127.0.0.1:1" in bad[0] and "allowed" in bad[0],
            "subscribe_event with an unknown socket kind at run time: %r" % bad)
    nop = [l for l in lines if l.startswith("R noport ")]
    t.check(nop and nop[0].startswith("R noport false ") and "udp:127.0.0.1" in nop[0] and "port" in nop[0],
            "subscribe_event without a port at run time: %r" % nop)
    t.check("R sub true" in lines and "R sub again true" in lines and "R rc1 1" in lines,
            "run-time subscribe / re-subscribe / raise: %r" % lines[-4:])
    t.eq(sink3.events(2.0, 1), [{"jsonrpc": "2.0", "method": "E_RT", "params": {"k": "one"}}],
         "E_RT at the run-time subscriber")
    t.check("H E_RT one" in _wait_line(out, "H E_RT"), "E_RT handler not run")

    _ask(t, inst, peer, "unsubscribe", ["X-Case: unsub"])
    lines = _wait_line(out, "R rc2")
    t.check("R unsub true" in lines and "R unsub again nil" in lines and "R rc2 0" in lines,
            "unsubscribe / unsubscribe again / raise: %r" % lines[-3:])
    t.eq(sink3.raw(0.5), [], "E_RT after unsubscribe_event")
    t.check("H E_RT two" in _wait_line(out, "H E_RT two", 1.0), "E_RT handler runs without subscribers too")
    left = started + 2.3 - time.monotonic()
    if left > 0:
        time.sleep(left)
    _ask(t, inst, peer, "expiring 2", ["X-Case: exp"])
    lines = _wait_line(out, "R exp")
    exp = [l for l in lines if l.startswith("R exp")]
    t.eq(exp, ["R exp 1", "R exp 0"], "raise_event(E_EXP) at the start and 2.3 s later (expire 2)")
    t.eq(sink2.raw(0.2), [], "E_EXP after its expiry")
    t.check(inst.wait_log(r"subscription of E_EXP to udp:127\.0\.0\.1:%d expired" % sink2.port, 0.5),
            "no 'subscription ... expired' line")
    lsip.no_error_log(t, inst)


def test_events_raised_then_unsubscribed_in_one_request_is_delivered(t):
    """raise_event said the event was queued for 1 subscription: an unsubscribe_event later in
    the same on_request must not throw it away (it was raised while subscribed)."""
    sink, sink2, sink3 = Sink(t), Sink(t), Sink(t)
    out = os.path.join(t.dir, "rtu.out")
    inst = t.instance(_sub(CUSTOM_LUA, OUT=out, SINK=sink.port, SINK2=sink2.port, SINK3=sink3.port), ipv6=False)
    peer = t.peer()
    _ask(t, inst, peer, "raise then unsubscribe", ["X-Case: raise_then_unsub"])
    lines = _wait_line(out, "R unsub")
    t.check("R sub true" in lines and "R rc3 1" in lines and "R unsub true" in lines,
            "subscribe / raise / unsubscribe: %r" % lines)
    t.eq(sink3.events(1.5, 1), [{"jsonrpc": "2.0", "method": "E_RTU", "params": {"k": "three"}}],
         "E_RTU raised (rc 1) before the unsubscribe, at the subscriber")
    # the same where another subscription keeps the sink open
    _ask(t, inst, peer, "raise then unsubscribe, shared sink", ["X-Case: raise_then_unsub_shared"])
    lines = _wait_line(out, "R rc4")
    t.check("R rc4 1" in lines, "raise_event(E_RTS): %r" % lines[-3:])
    t.eq(sink.events(1.5, 1), [{"jsonrpc": "2.0", "method": "E_RTS", "params": {"k": "four"}}],
         "E_RTS raised (rc 1) before the unsubscribe, at a sink other subscriptions keep open")
    lsip.no_error_log(t, inst)


# ----------------------------------------------------- 2. when and how handlers run

ORDER_LUA = PRELUDE + r'''
event_route["E_A"] = function()
  out("H E_A begin", fetch_event_params("n"))
  out("H E_A raised E_C", raise_event("E_C", { from = "A" }))
  out("H E_A still", fetch_event_params("n"), lunasip.events.current_event())
  local t0 = os.clock()
  while os.clock() - t0 < 0.3 do end  -- meanwhile the test has the 200
  out("H E_A end")
end
event_route["E_B"] = function() out("H E_B", fetch_event_params("n")) end
event_route["E_C"] = function() out("H E_C", fetch_event_params("from")) end
event_route["E_ERR"] = function()
  out("H E_ERR")
  error("handler failed on purpose")
end
event_route["E_AFTER"] = function() out("H E_AFTER", fetch_event_params("n")) end
local runs = 0
event_route["E_LOOP"] = function()
  runs = runs + 1
  out("H E_LOOP", runs)
  raise_event("E_LOOP", { runs = runs })
end

function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local case = req:header("X-Case")
  out("R begin", case)
  if case == "order" then
    out("R raised", raise_event("E_A", { n = 1 }), raise_event("E_B", { n = 2 }))
  elseif case == "error" then
    raise_event("E_ERR")
    raise_event("E_AFTER", { n = 3 })
  elseif case == "loop" then
    runs = 0
    raise_event("E_LOOP", { runs = 0 })
  end
  req:reply(200, "OK")
  out("R end", case)
end
'''


def test_events_handlers_run_after_the_request_in_raise_order(t):
    """event_route handlers run after on_request returned (its 200 is on the wire before
    a slow handler ends), in raise order, never re-entrantly (a raise inside a handler runs
    after it and after what was already queued); a failing handler is logged with a
    traceback and the next one runs; a handler raising its own event is capped."""
    out = os.path.join(t.dir, "order.out")
    inst = t.instance(_sub(ORDER_LUA, OUT=out), ipv6=False)
    peer = t.peer()

    m = request("OPTIONS", "sip:events@%s:%d" % (LO, inst.port4), via=(peer.host, peer.port), extra=["X-Case: order"])
    peer.send(m, inst.addr4)
    r = peer.recv_response(m, 3.0)
    at_200 = _lines(out)
    t.check(r is not None and r.status == 200, "order: no 200")
    t.check("H E_A end" not in at_200,
            "the 200 arrived only after event_route[E_A] ended (handlers ran before the reply was sent): %r" % at_200)
    lines = _wait_line(out, "H E_C", 3.0)
    want = ["R begin order", "R raised 0 0", "R end order", "H E_A begin 1", "H E_A raised E_C 0",
            "H E_A still 1 E_A", "H E_A end", "H E_B 2", "H E_C A"]
    t.eq(lines, want, "order of on_request and the handlers (file lines)")

    mark = inst.mark()
    _ask(t, inst, peer, "error", ["X-Case: error"])
    lines = _wait_line(out, "H E_AFTER", 3.0)
    t.eq(lines[len(want):], ["R begin error", "R end error", "H E_ERR", "H E_AFTER 3"],
         "a failing handler, then the next one")
    t.check(inst.wait_log(r'ERROR event_route\["E_ERR"\][^\n]*handler failed on purpose', 2.0, mark),
            "the failing handler is not logged as ERROR event_route[\"E_ERR\"] ... with its message")
    t.check(re.search(r"traceback", inst.log_since(mark)), "no traceback logged for the failing handler")
    t.check(inst.script in inst.log_since(mark), "the failure does not name %s" % inst.script)

    mark = inst.mark()
    n0 = len(_lines(out))
    _ask(t, inst, peer, "loop", ["X-Case: loop"])
    t.check(inst.wait_log(r"handlers deep", 3.0, mark), "no 'handlers deep' line for a self-raising handler")
    time.sleep(0.2)
    loop = [ln for ln in _lines(out)[n0:] if ln.startswith("H E_LOOP")]
    t.check(2 <= len(loop) <= 16, "E_LOOP handler runs: %d, expected a small cap (SPEC: depth capped)" % len(loop))
    t.eq(loop, ["H E_LOOP %d" % (i + 1) for i in range(len(loop))], "E_LOOP runs one after the other")
    t.eq(len(re.findall(r"handlers deep", inst.log_since(mark))), 1, "'handlers deep' lines")
    t.note("self-raising handler ran %d times" % len(loop))
    # still serving, handlers still run
    n1 = len(_lines(out))
    _ask(t, inst, peer, "after the loop", ["X-Case: order"])
    end = time.monotonic() + 2.0
    while "H E_C A" not in _lines(out)[n1:] and time.monotonic() < end:
        time.sleep(0.02)
    t.check("H E_C A" in _lines(out)[n1:], "handlers no longer run after the depth cap: %r" % _lines(out)[n1:])
    # the failing handler's error: its first line, then its traceback's (indented) lines
    _no_error_log_but(t, inst, [r'ERROR event_route\["E_ERR"\]', r"ERROR {2,}"])


# ------------------------------------------------------ 3. E_CORE_STARTED, TERMINATING

STARTED_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_CORE_STARTED", "@SINK@")
subscribe_event("core:started", "@SINK@")
subscribe_event("E_CORE_TERMINATING", "@SINK@")
event_route["E_CORE_STARTED"] = function()
  local pid, version = fetch_event_params("pid", "version")
  lunasip.log.notice("EV E_CORE_STARTED %s %s %s %s", type(pid), tostring(pid), tostring(version), lunasip.version)
end
event_route["core:started"] = function()
  local p = fetch_event_params()
  lunasip.log.notice("EV core:started %s %s", tostring(p.pid), tostring(p.version))
end
event_route["E_CORE_TERMINATING"] = function()
  lunasip.log.notice("EV E_CORE_TERMINATING %s", tostring(fetch_event_params("pid")))
end
function SystemEvents.on_started() lunasip.log.notice("EV on_started") end
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  req:reply(200, "OK")
end
'''


def test_events_core_started_and_terminating(t):
    """E_CORE_STARTED and its alias core:started: both handlers run (after on_started) with
    pid and version, and a subscription made at script load gets both notifications;
    E_CORE_TERMINATING reaches the subscriber (and the handler) on SIGTERM."""
    sink = Sink(t)
    inst = t.instance(_sub(STARTED_LUA, SINK=sink.socket), ipv6=False)
    got = sink.events(3.0, 2)
    t.check(_wait_ev(inst, r"core:started", 3.0), "core:started handler did not run")
    evs = _ev_lines(inst)
    st = [e for e in evs if e.startswith("E_CORE_STARTED ")]
    version = st[0].split()[-1] if st else None
    t.eq(st, ["E_CORE_STARTED number %d %s %s" % (inst.pid, version, version)],
         "E_CORE_STARTED handler: pid (a number, the process's) and version (lunasip.version)")
    t.eq([e for e in evs if e.startswith("core:started")], ["core:started %d %s" % (inst.pid, version)],
         "core:started handler")
    t.check(evs and evs[0] == "on_started", "on_started did not come first: %r" % evs)
    want = [{"jsonrpc": "2.0", "method": n, "params": {"pid": inst.pid, "version": version}}
            for n in ("E_CORE_STARTED", "core:started")]
    t.eq(got, want, "E_CORE_STARTED and core:started at the subscriber made at script load")
    _ask(t, inst, t.peer(), "probe")
    t.eq(sink.raw(0.3), [], "more notifications before SIGTERM")

    rc = inst.stop(signal.SIGTERM)
    t.eq(rc, 0, "exit status on SIGTERM")
    got = sink.events(2.0, 1)
    t.eq(got, [{"jsonrpc": "2.0", "method": "E_CORE_TERMINATING", "params": {"pid": inst.pid, "version": version}}],
         "E_CORE_TERMINATING at the subscriber")
    t.check("E_CORE_TERMINATING %d" % inst.pid in _ev_lines(inst), "E_CORE_TERMINATING handler did not run")
    lsip.no_error_log(t, inst)


# ------------------------------------ 3, 4, 5. E_CORE_RELOAD, subscriptions across reloads

RELOAD_OK_LUA = r'''local lunasip = require "lunasip"
local V = "@V@"
subscribe_event("E_CORE_RELOAD", "udp:127.0.0.1:@R1@")
event_route["E_CORE_RELOAD"] = function()
  local st, err = fetch_event_params("status", "error")
  lunasip.log.notice("EV %s E_CORE_RELOAD %s %s", V, tostring(st), tostring(err))
end
event_route["core:reload"] = function()
  lunasip.log.notice("EV %s core:reload %s", V, tostring(fetch_event_params("status")))
end
event_route["E_RT"] = function()
  lunasip.log.notice("EV %s E_RT %s", V, tostring(fetch_event_params("n")))
end
function SystemEvents.on_started()
  lunasip.log.notice("EV %s subscribed %s", V, tostring(subscribe_event("E_RT", "udp:127.0.0.1:@R2@")))
end
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local name = req:header("X-Event")
  lunasip.log.notice("EV %s raised %s %s", V, name, tostring(raise_event(name, { n = req:header("X-N") })))
  req:reply(200, "OK")
end
'''

# Subscribes (and unsubscribes E_RT) at load, then fails at line RELOAD_BAD_LINE.
RELOAD_BAD_LINE = 6
RELOAD_BAD_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_LEAK", "udp:127.0.0.1:@R3@")
unsubscribe_event("E_RT", "udp:127.0.0.1:@R2@")
event_route["E_CORE_RELOAD"] = function() lunasip.log.notice("EV v3 E_CORE_RELOAD") end
local t = nil
local n = t.field
'''

# Subscribes at load, loads fine, then fails validation (a callback name typo).
RELOAD_TYPO_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_LEAK2", "udp:127.0.0.1:@R3@")
event_route["E_CORE_RELOAD"] = function() lunasip.log.notice("EV v4 E_CORE_RELOAD") end
function SipEvents.on_requets(req) req:reply(200, "OK") end
'''


def _hup(t, inst, pattern, what):
    mark = inst.mark()
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(pattern, 10.0, mark), "%s: no %r after SIGHUP" % (what, pattern))
    return mark


def test_events_core_reload_and_subscriptions_across_reloads(t):
    """E_CORE_RELOAD (+ core:reload): ok after a good SIGHUP, handled by the NEW script,
    error null; failed after a bad one, error naming server.lua:line, handled by the old
    script. A subscription made in on_started survives reloads (delivered once, no
    duplicate); the script's own load-time subscription is refreshed, not doubled; a
    reload that fails (at load or at validation) adds none of its subscriptions and
    applies none of its unsubscriptions."""
    r1, r2, r3 = Sink(t), Sink(t), Sink(t)
    ports = dict(R1=r1.port, R2=r2.port, R3=r3.port)
    inst = t.instance(_sub(RELOAD_OK_LUA, V="v1", **ports), ipv6=False)
    t.check(_wait_ev(inst, r"v1 subscribed true", 3.0), "on_started: subscribe_event(E_RT) did not return true")
    peer = t.peer()

    # good reload: v2
    inst.write_script(_sub(RELOAD_OK_LUA, V="v2", **ports))
    mark = _hup(t, inst, r"reload done", "good reload")
    t.check(_wait_ev(inst, r"v2 core:reload", 3.0, mark), "core:reload handler of v2 did not run")
    evs = _ev_lines(inst, mark)
    t.eq([e for e in evs if "E_CORE_RELOAD" in e or "core:reload" in e],
         ["v2 E_CORE_RELOAD ok nil", "v2 core:reload ok"], "handlers after a good reload (the new script's)")
    t.eq(r1.events(2.0, 1), [{"jsonrpc": "2.0", "method": "E_CORE_RELOAD", "params": {"status": "ok", "error": None}}],
         "E_CORE_RELOAD ok at the subscriber")
    t.eq(r1.raw(0.3), [], "E_CORE_RELOAD notifications beyond one (the reloaded script re-subscribed: a refresh)")

    mark = inst.mark()
    _ask(t, inst, peer, "raise E_RT after the reload", ["X-Event: E_RT", "X-N: 1"])
    t.check(_wait_ev(inst, r"v2 E_RT 1", 2.0, mark), "E_RT handler of v2 did not run")
    t.check("v2 raised E_RT 1" in _ev_lines(inst, mark), "raise_event(E_RT) after a reload did not return 1: %r"
            % _ev_lines(inst, mark))
    t.eq(r2.events(2.0, 1), [{"jsonrpc": "2.0", "method": "E_RT", "params": {"n": "1"}}],
         "E_RT at the on_started subscriber after the reload")
    t.eq(r2.raw(0.3), [], "E_RT delivered more than once after the reload")

    # failed reload: subscribes E_LEAK, unsubscribes E_RT, then fails at load
    inst.write_script(_sub(RELOAD_BAD_LUA, **ports))
    mark = _hup(t, inst, r"reload failed", "bad reload")
    t.check(_wait_ev(inst, r"v2 core:reload failed", 3.0, mark), "core:reload handler (old script) did not run")
    evs = [e for e in _ev_lines(inst, mark) if "E_CORE_RELOAD" in e or "core:reload" in e]
    want_err = "%s:%d:" % (inst.script, RELOAD_BAD_LINE)
    t.check(len(evs) == 2 and evs[0].startswith("v2 E_CORE_RELOAD failed ") and want_err in evs[0]
            and evs[1] == "v2 core:reload failed",
            "handlers after a failed reload: %r, expected the old script's with an error naming %s" % (evs, want_err))
    got = r1.events(2.0, 1)
    ok = (len(got) == 1 and got[0].get("method") == "E_CORE_RELOAD" and got[0].get("params", {}).get("status") == "failed"
          and want_err in str(got[0].get("params", {}).get("error")))
    t.check(ok, "E_CORE_RELOAD failed at the subscriber: %r (expected error naming %s)" % (got, want_err))

    # validation failure: subscribes E_LEAK2, then on_requets is refused
    inst.write_script(_sub(RELOAD_TYPO_LUA, **ports))
    mark = _hup(t, inst, r"reload failed", "typo reload")
    t.check(_wait_ev(inst, r"v2 core:reload failed", 3.0, mark), "core:reload handler (old script) did not run")
    got = r1.events(2.0, 1)
    t.check(len(got) == 1 and got[0].get("params", {}).get("status") == "failed"
            and "on_requets" in str(got[0].get("params", {}).get("error")),
            "E_CORE_RELOAD failed (validation) at the subscriber: %r" % got)
    t.check(not any(e.startswith("v3") or e.startswith("v4") for e in _ev_lines(inst)),
            "a handler of a refused script ran")

    mark = inst.mark()
    for name in ("E_LEAK", "E_LEAK2"):
        _ask(t, inst, peer, "raise " + name, ["X-Event: " + name, "X-N: 2"])
    _ask(t, inst, peer, "raise E_RT after failed reloads", ["X-Event: E_RT", "X-N: 3"])
    evs = _ev_lines(inst, mark)
    t.eq([e for e in evs if "raised" in e], ["v2 raised E_LEAK 0", "v2 raised E_LEAK2 0", "v2 raised E_RT 1"],
         "subscriptions after failed reloads (none added, E_RT kept)")
    t.eq(r3.raw(0.5), [], "notifications to the subscriber of the refused scripts")
    t.eq(r2.events(1.0, 1), [{"jsonrpc": "2.0", "method": "E_RT", "params": {"n": "3"}}],
         "E_RT after failed reloads (the refused script's unsubscribe_event not applied)")
    _no_error_log_but(t, inst, [r"ERROR reload failed", r"\[lua\] EV v2 E_CORE_RELOAD failed"])


INFLIGHT_LUA = r'''local lunasip = require "lunasip"
local V = "@V@"
@HANDLER@
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local p = lunasip.Proxy.new()
  p:on_failure_response(function(r)
    lunasip.log.notice("EV %s failure %d raised %s", V, r.status_code, tostring(raise_event("E_CB", { v = V })))
  end)
  local u = req.ruri
  p:route(req, u.host, u.port, "udp")
end
'''
INFLIGHT_HANDLER = '''event_route["E_CB"] = function()
  lunasip.log.notice("EV %s E_CB raised by %s", V, tostring(fetch_event_params("v")))
end'''


def test_events_reload_handlers_from_the_new_script_for_in_flight_callbacks(t):
    """SPEC §5.4/§5.6: handlers are taken from the new script. An INVITE routed by v1 (no
    event_route) is ringing when v2 (with event_route["E_CB"]) is loaded; the callee's 486
    runs v1's on_failure_response (the transaction's script), which raises E_CB: v2's
    handler runs."""
    uac, uas = t.peer(), t.peer()
    inst = t.instance(_sub(INFLIGHT_LUA, V="v1", HANDLER="-- no event_route in v1"), ipv6=False,
                      proxies="default_proxy = { timer_B = 2, timer_F = 2, timer_C = 10 }\n",
                      conf_extra="core.shutdown_grace = 1")
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = request("INVITE", ruri, via=(uac.host, uac.port), extra=["Contact: <sip:alice@%s:%d>" % (LO, uac.port)])
    uac.send(inv, inst.addr4)
    f = lsip.wait_request(uas, "INVITE", 3.0)
    if not t.check(f is not None, "INVITE not forwarded"):
        return
    lsip.uas_reply(uas, f, 180, "Ringing", to_tag="cx")
    inst.write_script(_sub(INFLIGHT_LUA, V="v2", HANDLER=INFLIGHT_HANDLER))
    mark = _hup(t, inst, r"reload done", "reload with the INVITE ringing")
    lsip.uas_reply(uas, f, 486, "Busy Here", to_tag="cx")
    t.check(_wait_ev(inst, r"v1 failure 486 raised 0", 2.0, mark),
            "v1's on_failure_response did not run (or raise_event failed): %r" % _ev_lines(inst, mark))
    t.check(_wait_ev(inst, r"v2 E_CB raised by v1", 1.0, mark),
            "E_CB raised by the in-flight v1 callback did not run v2's event_route: %r" % _ev_lines(inst, mark))
    r = [x for x in lsip.responses(uac, inv, 1.0) if x.status >= 200]
    if r:
        a = request("ACK", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                    from_tag=inv.from_tag, to_tag=lsip.tag_of(r[0].header("To")), cseq=inv.cseq)
        uac.send(a, inst.addr4)
    t.eq([x.status for x in r[:1]], [486], "final answer upstream")
    lsip.no_error_log(t, inst)


# -------------------------------------------------------------------- E_CORE_THRESHOLD

THRESHOLD_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_CORE_THRESHOLD", "@SINK@")
event_route["E_CORE_THRESHOLD"] = function()
  local source, us, extra = fetch_event_params("source", "time", "extra")
  lunasip.log.notice("EV threshold %s|%s|%s|%s", tostring(source), type(us), tostring(us), tostring(extra))
end
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  if req:header("X-Slow") then
    local t0 = os.clock()
    while os.clock() - t0 < 0.15 do end
  end
  req:reply(200, "OK")
end
'''


def test_events_core_threshold_after_a_slow_on_request(t):
    """A 150 ms on_request raises E_CORE_THRESHOLD: source SipEvents.on_request, time in
    µs >= 100000, extra the Call-ID; a fast one raises nothing."""
    sink = Sink(t)
    inst = t.instance(_sub(THRESHOLD_LUA, SINK=sink.socket), ipv6=False)
    peer = t.peer()
    _ask(t, inst, peer, "fast request")
    t.eq(sink.raw(0.4), [], "E_CORE_THRESHOLD after a fast on_request")
    r = _ask(t, inst, peer, "slow request", ["X-Slow: 1"])
    cid = r.header("Call-ID") if r else None
    got = sink.events(2.0, 1)
    if t.check(len(got) == 1, "E_CORE_THRESHOLD notifications after a slow on_request: %r" % got):
        p = got[0].get("params", {})
        t.eq(got[0].get("method"), "E_CORE_THRESHOLD", "method")
        t.eq(list(p), ["source", "time", "extra"], "param names, in order")
        t.eq(p.get("source"), "SipEvents.on_request", "source")
        tm = p.get("time")
        t.check(isinstance(tm, int) and 100000 <= tm < 10000000, "time %r: expected µs >= 100000" % tm)
        t.eq(p.get("extra"), cid, "extra (the Call-ID)")
    m = _wait_ev(inst, r"threshold (.*)", 2.0)
    if t.check(m, "E_CORE_THRESHOLD handler did not run"):
        f = m.group(1).split("|")
        t.check(len(f) == 4 and f[0] == "SipEvents.on_request" and f[1] == "number" and int(f[2]) >= 100000
                and f[3] == cid, "E_CORE_THRESHOLD handler params: %r" % f)
    t.check(re.search(r"WARN.*SipEvents\.on_request took \d+ ms", inst.log()), "no WARN line for the slow handler")
    lsip.no_error_log(t, inst)


# -------------------------------------------------------------------- tm:local-request

LOCAL_LUA = r'''local lunasip = require "lunasip"
subscribe_event("tm:local-request", "@SINK@")
event_route["tm:local-request"] = function()
  local p = fetch_event_params()
  lunasip.log.notice("EV tm %s|%s|%s|%s|%s", tostring(p.method), tostring(p.ruri), tostring(p.from),
                     tostring(p.to), tostring(p.call_id))
end
function SystemEvents.on_started()
  local uac = lunasip.Uac.new()
  local r = lunasip.UacRequest.new{ method = "OPTIONS", ruri = "sip:127.0.0.1:@PEER@",
                                    from = "<sip:lunasip@test>", to = "<sip:peer@test>" }
  lunasip.log.notice("EV uac %s", r.call_id)
  uac:route(r)
end
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local u = req.ruri
  lunasip.Proxy.new():route(req, u.host, u.port, "udp")
end
'''


def test_events_tm_local_request_for_uac_and_cancel(t):
    """tm:local-request for a lunasip.Uac OPTIONS sent from on_started (method, ruri, from,
    to, call_id as on the wire) and for the hop-by-hop CANCEL lunasip sends downstream;
    a proxied INVITE is not a local request."""
    peer, uac, uas = t.peer(), t.peer(), t.peer()
    sink = Sink(t)
    inst = t.instance(_sub(LOCAL_LUA, SINK=sink.socket, PEER=peer.port), ipv6=False,
                      proxies="default_proxy = { timer_B = 2, timer_F = 2, timer_C = 10 }\n",
                      conf_extra="core.shutdown_grace = 1")
    o = lsip.wait_request(peer, "OPTIONS", 3.0)
    if not t.check(o is not None, "no OPTIONS from the Uac in on_started"):
        return
    lsip.uas_reply(peer, o, 200, "OK")
    cid = o.header("Call-ID")
    got = sink.events(2.0, 1)
    if t.check(len(got) == 1, "tm:local-request notifications for the Uac OPTIONS: %r" % got):
        p = got[0].get("params", {})
        t.eq(got[0].get("method"), "tm:local-request", "method")
        t.eq(list(p), ["method", "ruri", "from", "to", "call_id"], "param names, in order")
        t.eq(p.get("method"), "OPTIONS", "Uac: method")
        t.eq(p.get("ruri"), "sip:127.0.0.1:%d" % peer.port, "Uac: ruri")
        t.eq(p.get("call_id"), cid, "Uac: call_id (the one on the wire)")
        t.eq(p.get("from"), o.header("From"), "Uac: from (as on the wire)")
        t.eq(p.get("to"), o.header("To"), "Uac: to (as on the wire)")
    t.check(_wait_ev(inst, r"tm OPTIONS\|sip:127\.0\.0\.1:%d\|[^|]*\|[^|]*\|%s" % (peer.port, re.escape(cid or "-")), 2.0),
            "tm:local-request handler for the Uac OPTIONS: %r" % _ev_lines(inst))
    t.check("uac %s" % cid in _ev_lines(inst), "the Uac request's call_id in Lua differs from the wire's")

    # a proxied INVITE, then the caller's CANCEL: lunasip CANCELs downstream
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = request("INVITE", ruri, via=(uac.host, uac.port),
                  extra=["Contact: <sip:alice@%s:%d>" % (LO, uac.port)])
    uac.send(inv, inst.addr4)
    f = lsip.wait_request(uas, "INVITE", 3.0)
    if not t.check(f is not None, "INVITE not forwarded"):
        return
    lsip.uas_reply(uas, f, 180, "Ringing", to_tag="cx")
    t.eq(sink.raw(0.3), [], "tm:local-request for a proxied INVITE")
    cancel = request("CANCEL", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                     from_tag=inv.from_tag, cseq=inv.cseq)
    uac.send(cancel, inst.addr4)
    c = lsip.wait_request(uas, "CANCEL", 3.0)
    if t.check(c is not None, "no CANCEL downstream"):
        lsip.uas_reply(uas, c, 200, "OK")
        lsip.uas_reply(uas, f, 487, "Request Terminated", to_tag="cx")
    got = sink.events(2.0, 1)
    if t.check(len(got) == 1, "tm:local-request notifications for the CANCEL: %r" % got):
        p = got[0].get("params", {})
        t.eq(p.get("method"), "CANCEL", "CANCEL: method")
        t.eq(p.get("call_id"), inv.call_id, "CANCEL: call_id")
        if c is not None:
            t.eq(p.get("ruri"), c.start.split()[1], "CANCEL: ruri (as on the wire)")
            t.eq(p.get("from"), c.header("From"), "CANCEL: from (as on the wire)")
            t.eq(p.get("to"), c.header("To"), "CANCEL: to (as on the wire)")
    t.check(_wait_ev(inst, r"tm CANCEL\|[^|]*\|[^|]*\|[^|]*\|%s" % re.escape(inv.call_id), 2.0),
            "tm:local-request handler for the CANCEL: %r" % _ev_lines(inst))
    lsip.no_error_log(t, inst)


# -------------------------------------------------------------------- E_EVENT_DROPPED

DROPPED_LUA = r'''local lunasip = require "lunasip"
subscribe_event("E_BURST", "@SINK@")
subscribe_event("E_EVENT_DROPPED", "@DSINK@")
event_route["E_EVENT_DROPPED"] = function()
  local p = fetch_event_params()
  lunasip.log.notice("EV dropped %s %s %s", tostring(p.event), tostring(p.socket), tostring(p.count))
end
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local n = 0
  for i = 1, 50 do n = n + raise_event("E_BURST", { i = i }) end
  lunasip.log.notice("EV queued %d", n)
  req:reply(200, "OK")
end
'''


def test_events_dropped_reported_with_a_queue_limit_of_1(t):
    """events.queue_limit = 1 and 50 events raised in one on_request: the drops are
    reported as E_EVENT_DROPPED (event, socket, count > 0) to a subscriber and to the
    handler, and the count plus what arrived is what was raised."""
    sink, dsink = Sink(t), Sink(t)
    inst = t.instance(_sub(DROPPED_LUA, SINK=sink.socket, DSINK=dsink.socket), ipv6=False,
                      conf_extra="events = { queue_limit = 1 }")
    _ask(t, inst, t.peer(), "burst")
    arrived = sink.events(1.0)
    t.check(_wait_ev(inst, r"queued 50", 1.0), "raise_event did not return 1 fifty times: %r" % _ev_lines(inst))
    t.check(1 <= len(arrived) < 50, "E_BURST datagrams with queue_limit 1: %d" % len(arrived))
    t.check(all(a.get("method") == "E_BURST" for a in arrived), "not E_BURST at its subscriber: %r" % arrived[:3])
    if arrived:
        t.eq(arrived[-1].get("params"), {"i": 50}, "the last E_BURST (drop_oldest keeps the newest)")
    got = dsink.events(3.0, 1)
    if t.check(len(got) == 1, "E_EVENT_DROPPED notifications: %r" % got):
        p = got[0].get("params", {})
        t.eq(list(p), ["event", "socket", "count"], "E_EVENT_DROPPED param names, in order")
        t.eq(p.get("event"), "E_BURST", "E_EVENT_DROPPED event")
        t.eq(p.get("socket"), sink.socket, "E_EVENT_DROPPED socket")
        cnt = p.get("count")
        t.check(isinstance(cnt, int) and cnt > 0, "E_EVENT_DROPPED count %r" % cnt)
        t.eq(cnt + len(arrived) if isinstance(cnt, int) else None, 50, "dropped + delivered")
    m = _wait_ev(inst, r"dropped (\S+) (\S+) (\d+)", 2.0)
    if t.check(m, "E_EVENT_DROPPED handler did not run"):
        t.eq((m.group(1), m.group(2)), ("E_BURST", sink.socket), "E_EVENT_DROPPED handler: event, socket")
        t.check(int(m.group(3)) > 0, "E_EVENT_DROPPED handler: count %s" % m.group(3))
    t.eq(dsink.raw(1.3), [], "E_EVENT_DROPPED repeated without new drops")
    lsip.no_error_log(t, inst)


def test_events_reload_applies_new_queue_limit(t):
    """events = {} is re-read by SIGHUP: the same burst of 50 arrives whole with the default
    queue_limit, and loses events once the reloaded lunasip.conf sets queue_limit = 1."""
    sink, dsink = Sink(t), Sink(t)
    inst = t.instance(_sub(DROPPED_LUA, SINK=sink.socket, DSINK=dsink.socket), ipv6=False)
    _ask(t, inst, t.peer(), "burst before the reload")
    t.eq(len(sink.events(1.0)), 50, "E_BURST datagrams with the default queue_limit")
    inst.conf_extra = "events = { queue_limit = 1 }"
    inst.write_conf()
    mark = inst.mark()
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(r"reload done", 5.0, mark), "no 'reload done' after SIGHUP")
    _ask(t, inst, t.peer(), "burst after the reload")
    after = sink.events(1.0)
    t.check(1 <= len(after) < 50, "E_BURST datagrams after reloading queue_limit = 1: %d" % len(after))
    lsip.no_error_log(t, inst)


# -------------------------------------------------------- 5. a bad socket in server.lua

BAD_SOCKET_LINE = 3
BAD_SOCKET_LUA = r'''local lunasip = require "lunasip"
-- the next line has no port on purpose
subscribe_event("E_X", "udp:127.0.0.1")
function SipEvents.on_request(req) req:reply(200, "OK") end
'''

BAD_KIND_LUA = r'''local lunasip = require "lunasip"
function SipEvents.on_request(req) req:reply(200, "OK") end
subscribe_event("E_X", "udp:127.0.0.1:5999")
subscribe_event("E_X", "smtp:127.0.0.1:25")
'''


def test_events_bad_socket_in_the_script_refused_at_start_and_by_check(t):
    """A top-level subscribe_event with a bad socket: lunasip refuses to start with
    server.lua:LINE and the socket in the error, and --check exits 1 saying the same; an
    unknown socket kind names the allowed forms."""
    inst = t.instance(BAD_SOCKET_LUA, start=False, ipv6=False)
    inst.start(wait=False)
    try:
        inst.proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    running = inst.proc.poll() is None
    rc = inst.stop()
    t.check(not running, "lunasip started with a bad subscribe_event socket")
    t.eq(rc, 1, "exit status with a bad subscribe_event socket")
    log = inst.log()
    where = "%s:%d:" % (inst.script, BAD_SOCKET_LINE)
    t.check(where in log and "udp:127.0.0.1" in log and "port" in log,
            "the start error does not name %s and the socket: %r" % (where, log[-600:]))
    t.check("started" not in log, "a 'started' line with a bad socket")

    code, text = _check_run(inst)
    t.eq(code, 1, "--check exit status with a bad subscribe_event socket")
    t.check(where in text and "udp:127.0.0.1" in text, "--check does not name %s and the socket: %r" % (where, text))

    inst.write_script(BAD_KIND_LUA)
    code, text = _check_run(inst)
    t.eq(code, 1, "--check exit status with an unknown socket kind")
    t.check("%s:4:" % inst.script in text and "smtp:127.0.0.1:25" in text and "allowed" in text,
            "--check does not name server.lua:4, the socket and the allowed forms: %r" % text)

    inst.write_script('event_route = { E_X = "not a function" }\n')
    code, text = _check_run(inst)
    t.eq(code, 1, "--check exit status with a plain event_route table holding a string")
    t.check(inst.script in text and 'event_route["E_X"]' in text and "expected a function" in text,
            "--check does not name the file and event_route[\"E_X\"]: %r" % text)

    inst.write_script(BAD_KIND_LUA.replace('subscribe_event("E_X", "smtp:127.0.0.1:25")\n', ""))
    code, text = _check_run(inst)
    t.eq(code, 0, "--check exit status with a good subscription: %r" % text)
    bad = [ln for ln in (log + text).splitlines() if any(p in ln for p in lsip.SANITIZER_PATTERNS)]
    t.eq(bad, [], "sanitizer reports")
