"""A private Kamailio registrar for the integration tests that need a real one behind lunasip
(test_webrtc.py): Debian's kamailio (5.6, installed by `scripts/deps.sh test`) with a
kamailio.cfg written per test.

Registrar(ctx) listens on udp:127.0.0.1:<a free port> only, with everything under the test's
temp dir: the config, the runtime dir (-Y), the PID file (-P) and the log (stderr, -E). The
routing is a plain registrar and stateful proxy:
  * REGISTER is saved in usrloc (db_mode 0, in memory) with its Path (registrar use_path:
    RFC 3327, so a later lookup makes the Path the route set of the request);
  * an initial request to a registered user: lookup("location") then t_relay() to the
    Contact through that Path, INVITE record-routed; 404 when the user is not registered;
  * in-dialog requests: loose_route() and t_relay();
  * OPTIONS to Kamailio itself: 200 (start() probes with it).
Each REGISTER and each lookup writes one "LSIT ..." line to the log (xlog), so a test sees
what Kamailio stored and where it relayed (saved() / lookups()).

start() waits until Kamailio answers an OPTIONS; stop() ends it by PID (TERM to the main
process, which stops its children; KILL, one PID at a time, to whatever is left). Every
PID is registered with lsip's leftover tracking. A Kamailio that cannot start is a test
failure that quotes its log. Python standard library only.
"""
import os
import re
import signal
import socket
import subprocess
import time

import lsip

KAMAILIO = os.environ.get("KAMAILIO_BIN", "kamailio")
MODULES = os.environ.get("KAMAILIO_MODULES", "/usr/lib/x86_64-linux-gnu/kamailio/modules")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

CFG = r"""#!KAMAILIO
# written by t/integration/kamailio.py for one test: a registrar that honours Path
debug=2
log_stderror=yes
fork=yes
children=2
dns=no
rev_dns=no
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
listen=udp:127.0.0.1:@PORT@
mpath="@MPATH@/"

loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"

modparam("usrloc", "db_mode", 0)
# RFC 3327: store the Path of a REGISTER, echo it in the 200, and make it the route set of
# the requests a lookup() sends to that contact (the first Path URI becomes $du).
modparam("registrar", "use_path", 1)
# 2 (strict): a Path is only accepted from a UA that says Supported: path (else 420)
modparam("registrar", "path_mode", 2)
modparam("registrar", "path_use_received", 0)
modparam("registrar", "max_expires", 3600)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }

    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }

    # retransmissions are absorbed by their transaction
    if (!is_method("ACK")) {
        if (t_precheck_trans()) {
            t_check_trans();
            exit;
        }
        t_check_trans();
    }

    if (has_totag()) {
        if (loose_route()) {
            route(RELAY);
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                route(RELAY);
            }
            exit;
        }
        sl_send_reply("404", "Not here");
        exit;
    }

    if (is_method("REGISTER")) {
        xlog("L_NOTICE", "LSIT REGISTER aor=$tu contact=$ct path=$(hdr(Path)[*])\n");
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }

    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "OK");
        exit;
    }

    if (is_method("INVITE|SUBSCRIBE|REFER")) {
        record_route();
    }

    if (!lookup("location")) {
        xlog("L_NOTICE", "LSIT LOOKUP $rm aor=$tu not found\n");
        sl_send_reply("404", "Not Found");
        exit;
    }
    xlog("L_NOTICE", "LSIT LOOKUP $rm ruri=$ru du=$du route=$hdr(Route)\n");
    route(RELAY);
}

route[RELAY] {
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

onreply_route {
    xlog("L_NOTICE", "LSIT REPLY $rs $rr for $rm\n");
}
"""


def _children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for us
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Registrar:
    def __init__(self, ctx, name="kamailio"):
        self.ctx, self.name = ctx, name
        self.dir = os.path.join(ctx.dir, name)
        self.run_dir = os.path.join(self.dir, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.cfg = os.path.join(self.dir, "kamailio.cfg")
        self.log_path = os.path.join(self.dir, "kamailio.log")
        self.pid_file = os.path.join(self.run_dir, "kamailio.pid")
        self.proc = None
        self.pids = []
        self.port = None

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    def start(self, timeout=START_TIMEOUT):
        """Starts Kamailio on a free port and waits until it answers OPTIONS. Returns self."""
        for attempt in range(3):
            self.port = lsip.free_port()
            with open(self.cfg, "w") as f:
                f.write(CFG.replace("@PORT@", str(self.port)).replace("@MPATH@", MODULES))
            argv = [KAMAILIO, "-DD", "-E", "-m", "64", "-M", "8", "-Y", self.run_dir, "-P", self.pid_file,
                    "-w", self.dir, "-f", self.cfg]
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.dir, start_new_session=True)
            except FileNotFoundError:
                self.ctx.fail("%s not found (scripts/deps.sh test installs Debian's kamailio)" % KAMAILIO)
            finally:
                log.close()
            self.pids = [self.proc.pid]
            self.ctx.track_pid(self.proc.pid, "kamailio %s" % self.name)
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                peer.bind(("127.0.0.1", 0))
                end = time.monotonic() + timeout
                while time.monotonic() < end and self.proc.poll() is None:
                    if self._options(peer):
                        self._track_children()
                        return self
                    time.sleep(0.1)
            finally:
                peer.close()
            rc = self.proc.poll()
            self.stop()
            if rc is not None and "Address already in use" in self.log() and attempt < 2:
                continue
            why = "exited with status %r" % rc if rc is not None else "did not answer OPTIONS in %.0f s" % timeout
            self.ctx.fail("%s on udp:127.0.0.1:%d %s; log:\n    %s"
                          % (self.name, self.port, why, "\n    ".join(self.tail(20))))
        return self

    def _options(self, peer):
        host, port = peer.getsockname()
        m = lsip.request("OPTIONS", "sip:127.0.0.1:%d" % self.port, via=(host, port))
        peer.sendto(bytes(m), self.addr)
        peer.settimeout(0.3)
        try:
            while True:
                data, _ = peer.recvfrom(65535)
                r = lsip.Response(data)
                if r.is_response and r.header("Call-ID") == m.call_id and r.status >= 200:
                    return r.status == 200
        except socket.timeout:
            return False

    def _track_children(self):
        todo = [self.proc.pid]
        while todo:
            for c in _children(todo.pop()):
                if c not in self.pids:
                    self.pids.append(c)
                    self.ctx.track_pid(c, "kamailio %s child" % self.name)
                    todo.append(c)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """TERM to the main process (it stops its children), KILL by PID to what is left.
        Returns Kamailio's exit status (None when it had to be killed)."""
        if self.proc is None:
            return None
        rc = None
        if self.proc.poll() is None:
            self._track_children()
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.ctx.note("%s: still running %.0f s after TERM: killed" % (self.name, timeout))
        else:
            rc = self.proc.returncode
        for pid in reversed(self.pids):
            if pid != self.proc.pid and _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        end = time.monotonic() + 5
        while any(_alive(p) for p in self.pids) and time.monotonic() < end:
            time.sleep(0.02)
        for pid in self.pids:
            self.ctx.untrack_pid(pid)
        self.pids = []
        self.proc = None
        return rc

    # log
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, n=25):
        return self.log().splitlines()[-n:]

    def lines(self, kind):
        """The "LSIT <kind> ..." lines of the log (kind: REGISTER, LOOKUP, REPLY), text after kind."""
        return [m.group(1) for m in re.finditer(r"LSIT %s (.*)" % kind, self.log())]

    def wait_lines(self, kind, n=1, timeout=5.0):
        end = time.monotonic() + timeout
        while True:
            got = self.lines(kind)
            if len(got) >= n or time.monotonic() >= end:
                return got
            time.sleep(0.05)
