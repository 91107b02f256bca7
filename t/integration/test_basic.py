"""Basic life of an instance: OPTIONS answered from Lua (Python client on IPv4/IPv6, and SIPp),
signals (USR1, TERM, INT), handler errors and slow handlers, --check, daemon mode.
SPEC §2, §5, §5.1."""
import os
import re
import signal
import socket
import subprocess
import time

import lsip
from lsip import request

OPTIONS_LUA = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "OPTIONS" then
    req:reply(200, "OK", { "X-Lunasip-Test: options-ok" })
  elseif req.method ~= "ACK" then
    req:reply(405, "Method Not Allowed")
  end
end
'''


def _check_options_answer(t, what, resp, msg, peer, inst_addr):
    if not t.check(resp is not None, "%s: no answer to OPTIONS" % what):
        return
    t.eq(resp.status, 200, what + ": status")
    t.eq(resp.header("X-Lunasip-Test"), "options-ok", what + ": header added by server.lua")
    t.eq(resp.addr[1], inst_addr[1], what + ": answer sent from the listening port")
    vp = resp.top_via_params()
    t.check(vp.get("received") in (peer.host, "[%s]" % peer.host),
            "%s: top Via received=%r, expected %s (Via: %s)" % (what, vp.get("received"), peer.host, resp.header("Via")))
    t.eq(vp.get("rport"), str(peer.port), what + ": top Via rport")
    t.eq(vp.get("branch"), msg.branch, what + ": top Via branch")
    t.eq(resp.count("Via"), 1, what + ": Via count")
    to = resp.header("To") or ""
    t.check(lsip.tag_of(to), "%s: To has no tag: %r" % (what, to))
    t.check(to.startswith("<sip:probe@lunasip.invalid>"), "%s: To changed: %r" % (what, to))
    t.eq(resp.header("Call-ID"), msg.call_id, what + ": Call-ID")
    t.eq(resp.header("CSeq"), "4711 OPTIONS", what + ": CSeq")
    t.eq(resp.header("From"), "<sip:tester@lunasip.invalid>;tag=%s" % msg.from_tag, what + ": From")
    t.eq(resp.header("Content-Length"), "0", what + ": Content-Length")


def test_options_udp_ipv4_ipv6(t):
    inst = t.instance(OPTIONS_LUA)
    for fam, host, dst in ((4, "127.0.0.1", inst.addr4), (6, "::1", inst.addr6)):
        peer = t.peer(host)
        msg = request("OPTIONS", "sip:probe@%s" % lsip.hostport(*dst), via=(peer.host, peer.port), cseq=4711)
        resp = peer.request(msg, dst)
        _check_options_answer(t, "IPv%d" % fam, resp, msg, peer, dst)
        t.check(not peer.strays, "IPv%d: unexpected extra datagrams: %r" % (fam, peer.strays[:2]))


def test_options_sipp(t):
    inst = t.instance(OPTIONS_LUA, log_level="info")
    run = t.sipp(inst.addr4, "options.xml", calls=500, rate=250, timeout_s=30)
    rc = run.wait()
    st = run.stats()
    t.eq(rc, 0, "sipp exit status")
    t.eq(st.get("SuccessfulCall(C)"), 500, "sipp successful calls")
    t.eq(st.get("FailedCall(C)"), 0, "sipp failed calls")
    if rc != 0:
        t.errors.extend("  sipp: " + ln for ln in run.output_tail(12))
    t.check(t.probe(inst) is not None, "no answer to a probe after the SIPp run")


SIGNALS_LUA = r'''
local lunasip = require "lunasip"
local n = 0
function SystemEvents.on_started() lunasip.log.notice("MARK started") end
function SystemEvents.on_user_reload()
  n = n + 1
  lunasip.log.notice("MARK user_reload n=%d", n)
end
function SystemEvents.on_terminated(err)
  lunasip.log.notice("MARK terminated error=%s", tostring(err))
end
function SipEvents.on_request(req)
  if req.method ~= "ACK" then req:reply(200, "OK", { ["X-Reloads"] = tostring(n) }) end
end
'''


def test_signal_usr1_runs_on_user_reload_and_term_on_terminated(t):
    inst = t.instance(SIGNALS_LUA)
    t.check(inst.wait_log(r"\[lua\] MARK started", 3), "on_started did not run")
    for i in (1, 2):
        m = inst.mark()
        inst.signal(signal.SIGUSR1)
        t.check(inst.wait_log(r"\[lua\] MARK user_reload n=%d" % i, 5, m), "SIGUSR1 #%d: no on_user_reload marker" % i)
    resp = t.probe(inst)
    if t.check(resp is not None, "no answer after SIGUSR1"):
        t.eq(resp.header("X-Reloads"), "2", "the script state survives SIGUSR1 (on_user_reload count)")
    rc = inst.stop(signal.SIGTERM)
    t.eq(rc, 0, "exit status on SIGTERM")
    log = inst.log()
    t.check(re.search(r"\[lua\] MARK terminated error=nil", log), "SIGTERM: no on_terminated marker (error=nil)")
    i_term, i_stop = log.find("MARK terminated"), log.find("lunasip stopped")
    t.check(i_term >= 0 and (i_stop < 0 or i_term < i_stop), "on_terminated must run before the process stops")


def test_signal_int_runs_on_terminated(t):
    inst = t.instance(SIGNALS_LUA)
    t.check(t.probe(inst) is not None, "no answer before SIGINT")
    rc = inst.stop(signal.SIGINT)
    t.eq(rc, 0, "exit status on SIGINT")
    t.check(re.search(r"\[lua\] MARK terminated error=nil", inst.log()), "SIGINT: no on_terminated marker")


FAILING_EVENTS_LUA = r'''
local lunasip = require "lunasip"
function SystemEvents.on_started() error("boom in on_started") end
function SystemEvents.on_user_reload() error("boom in on_user_reload") end
function SystemEvents.on_terminated(err) error("boom in on_terminated") end
function SipEvents.on_request(req)
  if req.method ~= "ACK" then req:reply(200, "OK") end
end
'''


def test_system_event_errors_are_logged_and_survived(t):
    inst = t.instance(FAILING_EVENTS_LUA)
    t.check(inst.wait_log(r"boom in on_started", 3), "the on_started error was not logged")
    t.check(t.probe(inst) is not None, "no answer after on_started failed")
    m = inst.mark()
    inst.signal(signal.SIGUSR1)
    t.check(inst.wait_log(r"boom in on_user_reload[\s\S]*stack traceback", 5, m),
            "the on_user_reload error was not logged with a traceback")
    t.check(t.probe(inst) is not None, "no answer after on_user_reload failed")
    rc = inst.stop(signal.SIGTERM)
    t.eq(rc, 0, "exit status on SIGTERM when on_terminated fails")
    t.check("boom in on_terminated" in inst.log(), "the on_terminated error was not logged")


ERRORS_LUA = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local action = req:header("X-Action")
  if action == "error" then
    error("secret detail")
  elseif action == "error-table" then
    error({ code = "secret detail" })
  elseif action == "nil-call" then
    local f = nil
    f("secret detail")
  elseif action == "slow" then
    local t0 = os.clock()
    while os.clock() - t0 < 0.15 do end
    req:reply(200, "Slow But Answered")
    return
  elseif action == "reply-then-error" then
    req:reply(202, "Answered First")
    error("secret detail after the answer")
  end
  req:reply(200, "OK")
end
'''


def test_handler_error_answers_500_without_detail(t):
    inst = t.instance(ERRORS_LUA)
    peer = t.peer()
    for action in ("error", "error-table", "nil-call"):
        m0 = inst.mark()
        msg = request("OPTIONS", "sip:err@127.0.0.1", via=(peer.host, peer.port), extra=["X-Action: " + action])
        resp = peer.request(msg, inst.addr4)
        if not t.check(resp is not None, "%s: no answer" % action):
            continue
        t.eq(resp.status, 500, action + ": status")
        t.check(b"secret" not in resp.raw, "%s: the error text leaked to the peer: %r" % (action, resp.raw))
        t.check(inst.wait_log(r"stack traceback", 3, m0), "%s: no traceback in the log" % action)
        after = request("OPTIONS", "sip:after@127.0.0.1", via=(peer.host, peer.port))
        r2 = peer.request(after, inst.addr4)
        t.check(r2 is not None and r2.status == 200, "%s: next OPTIONS not answered 200: %r" % (action, r2))
    t.check("secret detail" in inst.log(), "the error message is not in the log")
    # A handler that answered and then failed: the answer stands, no second (500) answer.
    msg = request("OPTIONS", "sip:err@127.0.0.1", via=(peer.host, peer.port), extra=["X-Action: reply-then-error"])
    resp = peer.request(msg, inst.addr4)
    if t.check(resp is not None, "reply-then-error: no answer"):
        t.eq((resp.status, resp.reason), (202, "Answered First"), "reply-then-error: the answer given")
    extra = peer.drain(0.3)
    t.check(not extra, "reply-then-error: a second answer was sent: %r" % [d[:40] for d, _ in extra])


def test_slow_handler_is_logged_and_answered(t):
    inst = t.instance(ERRORS_LUA)
    peer = t.peer()
    m0 = inst.mark()
    msg = request("OPTIONS", "sip:slow@127.0.0.1", via=(peer.host, peer.port), extra=["X-Action: slow"])
    resp = peer.request(msg, inst.addr4, timeout=3)
    if t.check(resp is not None, "no answer from the slow handler"):
        t.eq((resp.status, resp.reason), (200, "Slow But Answered"), "slow handler answer")
    m = inst.wait_log(r"took (\d+) ms[^\n]*", 3, m0)
    if t.check(m, "no 'took N ms' line for a 150 ms handler"):
        t.check(int(m.group(1)) >= 100, "logged time %s ms < 100" % m.group(1))
        t.check(msg.call_id in m.group(0), "the slow-handler line does not name the Call-ID: %r" % m.group(0))
    m1 = inst.mark()
    fast = request("OPTIONS", "sip:fast@127.0.0.1", via=(peer.host, peer.port))
    t.check(peer.request(fast, inst.addr4) is not None, "no answer after the slow handler")
    time.sleep(0.1)
    t.check("took" not in inst.log_since(m1), "a fast handler was logged as slow")


# ----------------------------------------------------------------------------------- --check

GOOD_CONF = 'core = { log_level = "info", control_socket = false }\nsip = { listen = { "udp:127.0.0.1:5060" } }\n'


def _check_dir(t, name, conf=GOOD_CONF, script=OPTIONS_LUA):
    d = os.path.join(t.dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "lunasip.conf"), "w") as f:
        f.write(conf)
    with open(os.path.join(d, "server.lua"), "w") as f:
        f.write(script)
    return d


def _run_check(t, d, what):
    try:
        p = subprocess.run([lsip.BIN, "-c", d, "--check"], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=30, env=lsip.sanitizer_env())
    except subprocess.TimeoutExpired:
        t.fail("%s: --check did not finish in 30 s" % what)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    bad = [ln for ln in out.splitlines() if any(s in ln for s in lsip.SANITIZER_PATTERNS)]
    t.check(not bad, "%s: sanitizer report: %s" % (what, bad[:5]))
    return p.returncode, out


def test_check_good_config(t):
    d = _check_dir(t, "good")
    rc, out = _run_check(t, d, "good dir")
    t.check(rc == 0, "good dir: --check exit %r, expected 0; output: %r" % (rc, out))


def test_check_broken_script(t):
    script = ('local lunasip = require "lunasip"\n'
              '-- line 2\n'
              'function SipEvents.on_request(req)\n'
              '  req:reply(200, "OK"\n'          # line 4: missing ')'
              'end\n')
    d = _check_dir(t, "badlua", script=script)
    path = os.path.join(d, "server.lua")
    rc, out = _run_check(t, d, "syntax error")
    t.check(rc == 1, "syntax error: --check exit %r, expected 1; output: %r" % (rc, out))
    t.check(re.search(re.escape(path) + r":[45]:", out), "syntax error: output does not name %s:LINE: %r" % (path, out))
    # an error raised while the script runs (not a syntax error) is refused as well
    d2 = _check_dir(t, "badlua2", script='local x = 1\nerror("boom at load")\n')
    path2 = os.path.join(d2, "server.lua")
    rc, out = _run_check(t, d2, "error at load")
    t.check(rc == 1, "error at load: --check exit %r, expected 1; output: %r" % (rc, out))
    t.check(re.search(re.escape(path2) + r":2:", out) and "boom at load" in out,
            "error at load: output does not name %s:2: and the message: %r" % (path2, out))


def test_check_error_names_long_script_path(t):
    """Regression: Lua shortens chunk names to ~60 bytes ("...tail/server.lua:4:"), so an
    error in a script under a long config dir must still name the whole path."""
    sub = os.path.join("operator-configuration", "lunasip-production-cluster-a", "conf")
    os.makedirs(os.path.join(t.dir, sub))
    script = 'local x = 1\nlocal y = = 2\n'  # line 2
    d = _check_dir(t, sub, script=script)
    path = os.path.join(d, "server.lua")
    rc, out = _run_check(t, d, "long path")
    t.check(rc == 1, "long path: --check exit %r, expected 1; output: %r" % (rc, out))
    t.check((path + ":2:") in out, "long path: output does not name %s:2: (got %r)" % (path, out))


def test_check_bad_listen_scheme(t):
    d = _check_dir(t, "sctp", conf='sip = { listen = { "sctp:127.0.0.1:5060" } }\n')
    rc, out = _run_check(t, d, "sctp listen")
    t.check(rc == 1, "sctp listen: --check exit %r, expected 1; output: %r" % (rc, out))
    t.check(os.path.join(d, "lunasip.conf") in out, "sctp listen: output does not name the file: %r" % out)
    t.check("sip.listen" in out, "sctp listen: output does not name sip.listen: %r" % out)


def test_check_unknown_key(t):
    d = _check_dir(t, "workres", conf='core = { workres = 2 }\nsip = { listen = { "udp:127.0.0.1:5060" } }\n')
    rc, out = _run_check(t, d, "unknown key")
    t.check(rc == 1, "unknown key: --check exit %r, expected 1; output: %r" % (rc, out))
    t.check(os.path.join(d, "lunasip.conf") in out, "unknown key: output does not name the file: %r" % out)
    t.check("core.workres" in out, "unknown key: output does not name core.workres: %r" % out)


# ------------------------------------------------------------------------------ daemon mode

def _proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_daemon_mode_pidfile(t):
    inst = lsip.Instance(t, "daemon", OPTIONS_LUA)
    inst.port4 = lsip.free_port()
    inst.port6 = lsip.free_port(socket.AF_INET6, "::1")
    inst.write_conf()
    pidfile = os.path.join(inst.dir, "lunasip.pid")
    asan_dir = os.path.join(inst.dir, "san")
    os.makedirs(asan_dir)
    # stderr is /dev/null in daemon mode: sanitizer reports go to files
    env = lsip.sanitizer_env("log_path=%s/asan" % asan_dir, "log_path=%s/ubsan" % asan_dir)
    launcher = subprocess.Popen([lsip.BIN, "-c", inst.dir, "-P", pidfile], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        out, _ = launcher.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.communicate()
        t.fail("the launcher did not exit within 20 s (daemon mode must detach)")
    t.eq(launcher.returncode, 0, "launcher exit status")
    if not t.check(os.path.exists(pidfile), "no PID file %s after the launcher exited; output %r" % (pidfile, out)):
        return
    with open(pidfile) as f:
        text = f.read()
    t.check(re.fullmatch(r"\d+\n?", text), "PID file content %r" % text)
    pid = int(text.strip())
    t.track_pid(pid, "lunasip daemon")
    t.check(pid != launcher.pid, "the PID file holds the launcher's PID %d" % pid)
    st = _proc_state(pid)
    t.check(st is not None and st != "Z", "PID %d from the PID file is not a live process (state %r)" % (pid, st))
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            t.check(b"lunasip" in f.read(), "PID %d is not lunasip" % pid)
    except OSError:
        pass
    resp = None
    for _ in range(3):
        resp = t.probe(inst, timeout=2)
        if resp:
            break
    if t.check(resp is not None, "the daemon does not answer OPTIONS"):
        t.eq(resp.status, 200, "daemon OPTIONS status")
    resp6 = t.probe(inst, family=6)
    t.check(resp6 is not None and resp6.status == 200, "the daemon does not answer OPTIONS over IPv6")

    os.kill(pid, signal.SIGTERM)
    status = None
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:  # we are the subreaper (run.py): the daemon's exit status comes to us
            wpid, wst = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                status = os.waitstatus_to_exitcode(wst)
                break
        except ChildProcessError:  # not our descendant after all: watch /proc
            if _proc_state(pid) in (None, "Z"):
                break
        time.sleep(0.05)
    gone = _proc_state(pid) in (None, "Z")
    if t.check(gone, "the daemon (pid %d) still runs 15 s after SIGTERM" % pid) and status is not None:
        t.untrack_pid(pid)  # reaped: its PID may be reused, never signal it again
    if status is not None:
        t.eq(status, 0, "daemon exit status on SIGTERM")
    else:
        t.note("daemon exit status not observable (this runner is not its subreaper)")
    t.check(not os.path.exists(pidfile), "the PID file was not removed on exit")
    reports = sorted(os.listdir(asan_dir))
    if not t.check(not reports, "sanitizer reports from the daemon: %s" % reports):
        for fn in reports[:2]:
            with open(os.path.join(asan_dir, fn), errors="replace") as f:
                t.errors.extend("    " + ln for ln in f.read().splitlines()[:15])


LOG_LUA = r'''
local lunasip = require "lunasip"
function SipEvents.on_request(req)
  if req.method == "ACK" then return end
  local a = req:header("X-Log")
  if a == "inject" then
    lunasip.log.notice("LOGTEST-INJ before\nFAKE-LINE NOTICE injected\r\nagain")
  elseif a == "big" then
    lunasip.log.notice("LOGTEST-BIG " .. string.rep("z", 100000))
  elseif a == "binary" then
    lunasip.log.notice("LOGTEST-BIN \0\1\127 end")
  elseif a == "badfmt" then
    lunasip.log.notice("LOGTEST-FMT %d", "not a number")
  end
  req:reply(200, "OK")
end
'''


def test_lua_log_lines_are_escaped_and_capped(t):
    inst = t.instance(LOG_LUA)
    peer = t.peer()
    for what in ("inject", "big", "binary", "badfmt"):
        msg = request("OPTIONS", "sip:log@127.0.0.1", via=(peer.host, peer.port), extra=["X-Log: " + what])
        resp = peer.request(msg, inst.addr4)
        expect = 500 if what == "badfmt" else 200
        t.check(resp is not None and resp.status == expect, "%s: expected %d, got %r" % (what, expect, resp))
    lines = inst.log().splitlines()
    t.check(not any(ln.startswith("FAKE-LINE") or ln.startswith("again") for ln in lines),
            "a newline from Lua started a line of its own in the log")
    inj = [ln for ln in lines if "LOGTEST-INJ" in ln]
    if t.check(len(inj) == 1, "LOGTEST-INJ lines: %d" % len(inj)):
        t.check("before\\x0aFAKE-LINE" in inj[0], "the newline is not escaped: %r" % inj[0][-80:])
    big = [ln for ln in lines if "LOGTEST-BIG" in ln]
    if t.check(len(big) == 1, "LOGTEST-BIG lines: %d" % len(big)):
        t.check(len(big[0]) < 100000 and big[0].endswith("..."),
                "a 100 KB log message is not capped with '...' (%d bytes, ends %r)" % (len(big[0]), big[0][-10:]))
    b = [ln for ln in lines if "LOGTEST-BIN" in ln]
    if t.check(len(b) == 1, "LOGTEST-BIN lines: %d" % len(b)):
        t.check("\\x00\\x01\\x7f end" in b[0], "control bytes are not escaped: %r" % b[0])


def test_user_and_group_drop_privileges_after_binding(t):
    """-u/-g: listeners are bound as root, then lunasip runs as the given user and group."""
    import pwd, grp
    try:
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrnam("nogroup")
    except KeyError:
        t.fail("no user nobody / group nogroup on this machine")
        return
    if os.getuid() != 0:
        t.fail("this test needs root (make test runs as root)")
        return
    inst = t.instance(OPTIONS_LUA, start=False)
    inst.start(args=("-u", "nobody", "-g", "nogroup"))
    with open("/proc/%d/status" % inst.pid) as f:
        status = f.read()
    uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    gid = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    t.check(uid and {int(x) for x in uid.groups()} == {nobody.pw_uid}, "uids %r, want %d" % (uid and uid.groups(), nobody.pw_uid))
    t.check(gid and {int(x) for x in gid.groups()} == {group.gr_gid}, "gids %r, want %d" % (gid and gid.groups(), group.gr_gid))
    resp = t.probe(inst)
    t.check(resp is not None and resp.status == 200, "no 200 after dropping privileges")
    t.eq(inst.stop(signal.SIGTERM), 0, "exit status on SIGTERM")


def test_unknown_user_is_refused_at_start(t):
    inst = t.instance(OPTIONS_LUA, start=False)
    try:
        inst.start(args=("-u", "no-such-user-lunasip"))
        t.fail("lunasip started with an unknown -u user")
    except lsip.Fail:
        inst.stopped = True  # refusing to start is what this test wants
    t.check(re.search(r"-u no-such-user-lunasip: no such user", inst.log()), "no clear error for an unknown user")
