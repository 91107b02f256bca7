"""SIGHUP reload of server.lua (SPEC §5.6): a good script is swapped in while SIPp traffic
flows, a broken one is refused with file:line and the running one keeps serving, and a
typo in a callback name is refused at reload and by --check."""
import os
import re
import signal
import subprocess
import time

import lsip


def version_lua(v):
    return ('local lunasip = require "lunasip"\n'
            'function SipEvents.on_request(req)\n'
            '  if req.method == "ACK" then return end\n'
            '  req:reply(200, "OK", { ["X-Version"] = "%s" })\n'
            'end\n') % v


SYNTAX_ERROR_LINE = 3
SYNTAX_ERROR_LUA = ('local lunasip = require "lunasip"\n'
                    '-- the next line is broken on purpose\n'
                    'local x = = 1\n'
                    'function SipEvents.on_request(req) req:reply(200, "OK", { ["X-Version"] = "3" }) end\n')

LOAD_ERROR_LINE = 4
LOAD_ERROR_LUA = ('local lunasip = require "lunasip"\n'
                  'function SipEvents.on_request(req) req:reply(200, "OK", { ["X-Version"] = "4" }) end\n'
                  'local t = nil\n'
                  'local n = t.field\n')


def _version(t, inst, what):
    resp = t.probe(inst)
    if not t.check(resp is not None, "%s: no answer" % what):
        return None
    t.eq(resp.status, 200, what + ": status")
    return resp.header("X-Version")


def _hup(inst, pattern, timeout=10):
    m = inst.mark()
    inst.signal(signal.SIGHUP)
    return inst.wait_log(pattern, timeout, m)


def test_reload_while_sipp_traffic_flows(t):
    inst = t.instance(version_lua(1), log_level="info")
    run = t.sipp(inst.addr4, "options_version.xml", calls=2000, rate=200, timeout_s=45)
    time.sleep(1.5)
    t.eq(_version(t, inst, "before reload"), "1", "X-Version before reload")

    inst.write_script(version_lua(2))
    t.check(_hup(inst, r"reload done"), "no 'reload done' after SIGHUP with a good script")
    t.eq(_version(t, inst, "after good reload"), "2", "X-Version after a good reload")
    time.sleep(0.5)

    inst.write_script(SYNTAX_ERROR_LUA)
    m = _hup(inst, r"reload failed[^\n]*")
    if t.check(m, "no 'reload failed' line after SIGHUP with a syntax error"):
        line = m.group(0)
        t.check(inst.script in line, "the reload failure does not name %s: %r" % (inst.script, line))
        t.check(":%d:" % SYNTAX_ERROR_LINE in line, "the reload failure does not name line %d: %r" % (SYNTAX_ERROR_LINE, line))
    t.eq(_version(t, inst, "after failed reload"), "2", "X-Version after a refused (syntax error) reload")

    inst.write_script(LOAD_ERROR_LUA)
    m = _hup(inst, r"reload failed[^\n]*")
    if t.check(m, "no 'reload failed' line after SIGHUP with a script failing at load"):
        line = m.group(0)
        t.check(inst.script + ":%d:" % LOAD_ERROR_LINE in line,
                "the load-time failure does not name %s:%d: %r" % (inst.script, LOAD_ERROR_LINE, line))
    t.eq(_version(t, inst, "after failed reload (load error)"), "2", "X-Version after a refused (load error) reload")

    rc = run.wait()
    st = run.stats()
    t.eq(rc, 0, "sipp exit status")
    t.eq(st.get("SuccessfulCall(C)"), 2000, "sipp successful calls")
    t.eq(st.get("FailedCall(C)"), 0, "sipp failed calls")
    if rc != 0:
        t.errors.extend("  sipp: " + ln for ln in run.output_tail(12))
    t.note("SIPp retransmissions during the reloads: %s" % st.get("Retransmissions(C)"))
    log = inst.log()
    t.eq(len(re.findall(r"reload done", log)), 1, "'reload done' lines")
    t.eq(len(re.findall(r"reload failed", log)), 2, "'reload failed' lines")
    t.check("SipEvents.on_request failed" not in log, "a handler failed during the reloads")


TYPO_LUA = ('local lunasip = require "lunasip"\n'
            'function SipEvents.on_request(req) req:reply(200, "OK", { ["X-Version"] = "typo" }) end\n'
            'function SipEvents.on_requets(req) req:reply(200, "OK") end\n')

NOT_A_FUNCTION_LUA = ('function SipEvents.on_request(req) req:reply(200, "OK", { ["X-Version"] = "nf" }) end\n'
                      'SystemEvents.on_user_reload = "reload me"\n')


def test_reload_refuses_unknown_callback(t):
    inst = t.instance(version_lua(1))
    inst.write_script(TYPO_LUA)
    m = _hup(inst, r"reload failed[^\n]*")
    if t.check(m, "a script defining SipEvents.on_requets was not refused at reload"):
        t.check("on_requets" in m.group(0), "the refusal does not name on_requets: %r" % m.group(0))
        t.check(inst.script in m.group(0), "the refusal does not name the file: %r" % m.group(0))
    t.eq(_version(t, inst, "after typo reload"), "1", "X-Version after a refused (typo) reload")

    inst.write_script(NOT_A_FUNCTION_LUA)
    m = _hup(inst, r"reload failed[^\n]*")
    if t.check(m, "a script setting SystemEvents.on_user_reload to a string was not refused"):
        t.check("on_user_reload" in m.group(0), "the refusal does not name on_user_reload: %r" % m.group(0))
    t.eq(_version(t, inst, "after not-a-function reload"), "1", "X-Version after a refused reload")

    # --check says the same about the typo
    inst.write_script(TYPO_LUA)
    p = subprocess.run([lsip.BIN, "-c", inst.dir, "--check"], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30, env=lsip.sanitizer_env())
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    t.eq(p.returncode, 1, "--check exit status on the typo script")
    t.check("on_requets" in out, "--check does not name on_requets: %r" % out)

    # and a good script is still accepted afterwards
    inst.write_script(version_lua(5))
    t.check(_hup(inst, r"reload done"), "no 'reload done' for a good script after refused ones")
    t.eq(_version(t, inst, "after good reload"), "5", "X-Version after the good reload")


def test_reload_refuses_bad_proxies_conf_and_reports_listen_changes(t):
    inst = t.instance(version_lua(1), proxies="default_proxy = { timer_B = 10 }\n")
    proxies = os.path.join(inst.dir, "proxies.conf")
    with open(proxies, "w") as f:
        f.write("default_proxy = { timer_B = 10, dns_cahce_time = 5 }\n")
    inst.write_script(version_lua(2))
    m = _hup(inst, r"reload failed[^\n]*")
    if t.check(m, "a proxies.conf with an unknown key was not refused at reload"):
        t.check(proxies in m.group(0), "the refusal does not name %s: %r" % (proxies, m.group(0)))
        t.check("dns_cahce_time" in m.group(0), "the refusal does not name the key: %r" % m.group(0))
    t.eq(_version(t, inst, "after a refused proxies.conf"), "1", "X-Version (the script stays with its config)")

    with open(proxies, "w") as f:
        f.write("default_proxy = { timer_B = 10 }\n")
    # a listener change in lunasip.conf is reported, not applied (SPEC §5.6)
    old_port = inst.port4
    conf = os.path.join(inst.dir, "lunasip.conf")
    with open(conf) as f:
        text = f.read()
    new_port = lsip.free_port()
    with open(conf, "w") as f:
        f.write(text.replace("udp:127.0.0.1:%d" % old_port, "udp:127.0.0.1:%d" % new_port))
    m0 = inst.mark()
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(r"reload done", 10, m0), "no 'reload done' after fixing proxies.conf")
    t.check(re.search(r"sip\.listen changed[^\n]*restart", inst.log_since(m0)),
            "a sip.listen change was not reported as needing a restart")
    t.eq(_version(t, inst, "after the good reload"), "2", "X-Version on the old port after reload")
    peer = t.peer()
    msg = lsip.request("OPTIONS", "sip:x@127.0.0.1", via=(peer.host, peer.port))
    t.check(peer.request(msg, ("127.0.0.1", new_port), timeout=0.5) is None,
            "the new listen port answers without a restart")
