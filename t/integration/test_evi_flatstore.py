"""The flatstore: event sink (SPEC §6) on disk: escaped lines ("E_NAME,v1,v2\\n" with the
delimiter, newline, CR and backslash escaped), two sinks appending to one file with whole
lines, rotation (mv + SIGHUP, mv + `lunasip ctl evi:flat_rotate`) losing nothing, a file
that cannot be opened (held events written once it can; a virtual:FAILOVER set writing to
its other member meanwhile), and SIP answered throughout."""
import os
import re
import signal
import stat
import subprocess
import time

import lsip
from lsip import request

FLAT_LUA = r'''
local SUBS = { @SUBS@ }
for _, s in ipairs(SUBS) do
  assert(subscribe_event(s[1], s[2]))
end
function SipEvents.on_request(req)
  if req.method ~= "OPTIONS" then
    if req.method ~= "ACK" then req:reply(405) end
    return
  end
  local id = tonumber(req:header("X-Id") or "0")
  local n, err = raise_event(req:header("X-Event") or "E_FLAT",
                             { { "id", id }, { "v", "a,b\nc\\d\re" }, { "ok", true } })
  req:reply(200, "OK", { "X-Raised: " .. tostring(n) .. "/" .. tostring(err) })
end
'''

CONF = ('core = { log_level = "debug", control_socket = "%s" }\n'
        'sip = { listen = { "udp:127.0.0.1:@PORT4@" } }\n'
        'pike = { enabled = false }\n'
        'events = { retry_max = 1 }\n')


def line(event, i):
    """The flatstore line FLAT_LUA's raise writes for id i."""
    return ("%s,%d,a\\,b\\nc\\\\d\\re,true\n" % (event, i)).encode()


def _lua_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def start(t, subs, name=None):
    """A lunasip subscribing subs [(event, socket)] with a control socket in its dir."""
    inst = t.instance("", name=name, start=False, ipv6=False, conf_text=CONF % "ctl.sock")
    inst.write_script(FLAT_LUA.replace("@SUBS@", ", ".join("{ %s, %s }" % (_lua_str(e), _lua_str(s))
                                                           for e, s in subs)))
    inst.start()
    inst.peer = t.peer()
    return inst


def raise_ids(t, inst, ids, event="E_FLAT", expect=1):
    """One OPTIONS per id (each raises event once); checks each is answered 200 with the
    raise queued for expect subscriptions. Returns the slowest answer time."""
    worst = 0.0
    for i in ids:
        m = request("OPTIONS", "sip:probe@127.0.0.1:%d" % inst.port4, via=(inst.peer.host, inst.peer.port),
                    extra=["X-Id: %d" % i, "X-Event: " + event])
        t0 = time.monotonic()
        r = inst.peer.request(m, inst.addr4, timeout=3.0)
        worst = max(worst, time.monotonic() - t0)
        if not t.check(r is not None and r.status == 200, "OPTIONS id %d: answer %r" % (i, r)):
            return worst
        t.eq(r.header("X-Raised"), "%d/nil" % expect, "OPTIONS id %d: raise_event result" % i)
    return worst


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def wait_file(path, pred, timeout=5.0):
    end = time.monotonic() + timeout
    while True:
        data = read(path)
        if pred(data) or time.monotonic() >= end:
            return data
        time.sleep(0.02)


def ids_in(t, data, what, event="E_FLAT"):
    """The ids of data's lines, checking each line is exactly what FLAT_LUA writes."""
    out = []
    for ln in data.splitlines(keepends=True):
        m = re.match(rb"^%s,(\d+)," % event.encode(), ln)
        if not t.check(m and ln == line(event, int(m.group(1))), "%s: torn or wrong line %r" % (what, ln)):
            continue
        out.append(int(m.group(1)))
    return out


def _umask():
    """This process's umask (lunasip inherits it), read without changing it."""
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("Umask:"):
                return int(ln.split()[1], 8)
    return 0o022


def ctl(t, inst, *args):
    p = subprocess.run([lsip.BIN, "ctl", "-c", inst.dir] + list(args), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lsip.sanitizer_env(), timeout=30)
    out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
    t.check(not any(s in out for s in lsip.SANITIZER_PATTERNS), "lunasip ctl: sanitizer report: %s" % out)
    return p.returncode, out


# ---------------------------------------------------------------------------------------------

def test_evi_flatstore_lines_escaped(t):
    """Every event is one whole, escaped line; two sinks on the same file (the path spelt
    twice) each append whole lines; the file is created 0640."""
    d = os.path.join(t.dir, "files")
    os.makedirs(d)
    path = os.path.join(d, "events.log")
    inst = start(t, [("E_FLAT", "flatstore:" + path), ("E_FLAT", "flatstore:" + d + "//events.log")])
    up = inst.wait_log(r"event socket flatstore:%s is up" % re.escape(path), 5)
    t.check(up, "no 'is up' line for the flatstore sink")
    n = 150
    raise_ids(t, inst, range(1, n + 1), expect=2)
    data = wait_file(path, lambda b: b.count(b"\n") >= 2 * n)
    ids = ids_in(t, data, path)
    t.eq(len(ids), 2 * n, "lines in %s (two sinks x %d events)" % (path, n))
    missing = [i for i in range(1, n + 1) if ids.count(i) != 2]
    t.check(not missing, "ids not written exactly twice: %s" % missing[:10])
    t.check(data.endswith(b"\n"), "the file does not end with a whole line")
    # each sink writes in raise order
    first = []
    for i in ids:
        if i not in first:
            first.append(i)
    t.eq(first, list(range(1, n + 1)), "order of first appearance")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    t.eq(oct(mode), oct(0o640 & ~_umask()), "file mode of %s (0640 less the umask)" % path)
    lsip.no_error_log(t, inst)


def test_evi_flatstore_rotation(t):
    """mv + SIGHUP, then mv + `lunasip ctl evi:flat_rotate PATH`, during a stream of events:
    every line is in exactly one of the three files, each file holds a later range than the
    one before, and what is raised after a reopen never lands in the moved file."""
    d = os.path.join(t.dir, "files")
    os.makedirs(d)
    path = os.path.join(d, "lunasip.events")
    inst = start(t, [("E_FLAT", "flatstore:" + path)])
    t.check(inst.wait_log(r"is up: writing", 5), "the flatstore sink did not come up")
    raise_ids(t, inst, range(1, 101))
    wait_file(path, lambda b: b.count(b"\n") >= 50)   # part of the first range is on disk

    os.rename(path, path + ".1")
    mark = inst.mark()
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(r"reopening %s" % re.escape(path), 5, since=mark), "no reopen after SIGHUP")
    after_hup = 101
    raise_ids(t, inst, range(101, 201))
    t.check(wait_file(path, lambda b: b.count(b"\n") >= 1), "no new %s after mv + SIGHUP" % path)

    os.rename(path, path + ".2")
    mark = inst.mark()
    rc, out = ctl(t, inst, "evi:flat_rotate", path)
    t.check(rc == 0 and '"reopened":1' in out.replace(" ", ""), "evi:flat_rotate %s: exit %r: %s" % (path, rc, out))
    t.check(inst.wait_log(r"reopening %s" % re.escape(path), 5, since=mark), "no reopen after evi:flat_rotate")
    after_ctl = 201
    raise_ids(t, inst, range(201, 301))
    wait_file(path, lambda b: b"E_FLAT,300," in b)
    time.sleep(0.2)

    f1, f2, f3 = (ids_in(t, read(p), p) for p in (path + ".1", path + ".2", path))
    for name, ids in (("file.1", f1), ("file.2", f2), ("file", f3)):
        t.check(ids, "%s is empty" % name)
    every = f1 + f2 + f3
    t.eq(sorted(every), list(range(1, 301)), "ids over the three files (each exactly once)")
    if f1 and f2 and f3:
        t.check(max(f1) < min(f2) and max(f2) < min(f3),
                "ranges overlap: file.1 %d..%d, file.2 %d..%d, file %d..%d" % (
                    min(f1), max(f1), min(f2), max(f2), min(f3), max(f3)))
        t.check(max(f1) < after_hup, "file.1 got id %d, raised after the reopen (SIGHUP)" % max(f1))
        t.check(max(f2) < after_ctl, "file.2 got id %d, raised after the reopen (ctl)" % max(f2))
    lsip.no_error_log(t, inst)


def test_evi_flatstore_unwritable_held_and_failover(t):
    """A file in a missing directory: the sink goes DOWN (cannot open, ENOENT), SIP is
    answered, the events of a direct subscription are held and all written once the
    directory exists; a virtual:FAILOVER set over it writes to its other member meanwhile
    and comes back to the first one when it is UP again."""
    d = os.path.join(t.dir, "files")
    os.makedirs(d)
    missing = os.path.join(d, "later")
    held = os.path.join(missing, "held.events")
    other = os.path.join(d, "other.events")
    inst = start(t, [("E_FLAT", "flatstore:" + held),
                     ("E_FO", "virtual:FAILOVER flatstore:%s flatstore:%s" % (held, other))])
    t.check(inst.wait_log(r"event socket flatstore:%s is down: cannot open %s: No such file or directory"
                          % (re.escape(held), re.escape(held)), 5), "no 'is down' line for %s" % held)
    worst = raise_ids(t, inst, range(1, 21))
    worst = max(worst, raise_ids(t, inst, range(101, 121), event="E_FO"))
    t.check(worst < 1.0, "slowest OPTIONS answer %.3f s while the file is unwritable" % worst)
    got = ids_in(t, wait_file(other, lambda b: b.count(b"\n") >= 20), other, event="E_FO")
    t.eq(sorted(got), list(range(101, 121)), "E_FO ids written to the FAILOVER's second member")
    t.check(not os.path.exists(held), "%s exists before its directory" % held)

    mark = inst.mark()
    os.makedirs(missing)
    t.check(inst.wait_log(r"event socket flatstore:%s is up again" % re.escape(held), 5, since=mark),
            "no 'is up again' after the directory appeared")
    data = wait_file(held, lambda b: b.count(b"\n") >= 20)
    t.eq(ids_in(t, data, held), list(range(1, 21)), "held E_FLAT ids written in order once the file opened")
    raise_ids(t, inst, range(121, 131), event="E_FO")
    data = wait_file(held, lambda b: b.count(b"E_FO,") >= 10)
    t.eq(ids_in(t, b"".join(ln for ln in data.splitlines(keepends=True) if ln.startswith(b"E_FO,")),
                held, event="E_FO"), list(range(121, 131)), "E_FO ids back on the first member once UP")
    t.eq(len(ids_in(t, read(other), other, event="E_FO")), 20, "E_FO lines on the second member (unchanged)")
    lsip.no_error_log(t, inst)
