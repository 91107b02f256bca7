#!/usr/bin/env python3
"""The event-interface part of `make bench` (issue 4 item 8), following /work/shared/BENCH.md.

Part "sip", the SIP cost of events: OPTIONS answered from Lua (req:reply(200)) by four
lunasip instances that differ only in server.lua: (a) "none" raises no event, (b) "udp"
raises raise_event("E_BENCH", {method = req.method, call_id = req.call_id, n = counter}) per
request to a udp: sink, (c) "rabbitmq" the same to a rabbitmq: sink, (d) "tcp-hung" the same
to a tcp: sink whose peer (HungPeer, a thread of this script) accepts and never reads (issue 4:
SIP throughput within 10% of "none"; default events settings, so events are dropped and
counted once the kernel buffers are full). Measured exactly like the OPTIONS part of
sip_bench.py (its run_sipp and RateSearch, the same SIPp scenario options.xml): CPU per
request at a fixed rate (se.sum_exec_runtime of every thread of the instance, so the sink
threads count), variants interleaved a b c d a b c d, medians; then the highest clean rate,
stepped then bisected, one step of each variant per round. The UDP sink's datagrams go to an
evsink receiver that counts them (nothing goes to a closed port); the RabbitMQ sink publishes
to a private broker started here (picked ports, private dirs under OUT/events/rabbitmq) into a
queue that amqp_count consumes and counts.

Part "sinks", delivery throughput per sink kind: one lunasip subscribed to one event per kind
(udp:, unix:, tcp:, http://, flatstore:, rabbitmq:), each to its own counting receiver
(bench/events/evsink.c for udp/unix/tcp/http, the file itself for flatstore, amqp_count behind
the broker for rabbitmq). The bench feeds bursts: an OPTIONS carrying X-Event and X-Burst: K
makes server.lua raise K events in that handler; the bench keeps at most WINDOW events raised
and not yet received (well under events.queue_limit, so nothing is dropped), feeds for a fixed
time, then waits until the receiver has them all. events/s = received / (last arrival - first
burst sent); lunasip's CPU per event = its CPU over the run / received (raising included).
Kinds interleaved, 3 runs each, medians. A kind whose driver, receiver or broker is missing
or that delivers nothing is reported n/a with the reason; the others go on.

Writes OUT/events.json and, in OUT/events/, the configurations as run, the logs, SIPp's
statistics and the broker's files. Standard library only; every process it starts is stopped
by PID on exit (the broker's beam and the epmd started for it included).

usage: evi_bench.py --out DIR [--lunasip PATH] [--quick] [--parts sip,sinks]
                    [--sinks udp,unix,tcp,http,flatstore,rabbitmq]
"""
import argparse
import atexit
import json
import mmap
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import sip_bench as sb

HERE = os.path.dirname(os.path.abspath(__file__))
EVDIR = os.path.join(HERE, "events")
KINDS = ("udp", "unix", "tcp", "http", "flatstore", "rabbitmq")
VARIANTS = ("none", "udp", "rabbitmq", "tcp-hung")
HUNG_RCVBUF = 4096  # tcp-hung: SO_RCVBUF of the peer that never reads (the kernel doubles it)
RABBITMQ_SERVER = os.environ.get("RABBITMQ_SERVER_BIN", "/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = os.environ.get("EPMD_BIN", "/usr/bin/epmd")
SIP_QUEUE = "lunasip_bench_sip"     # part sip, variant rabbitmq
SINK_QUEUE = "lunasip_bench_sinks"  # part sinks
BROKER_START_TIMEOUT = 60.0

owned = []  # {"name", "proc"} we started and stop by PID at exit (besides sip_bench.started)


def log(msg):
    print(msg, flush=True)


def free_tcp_port(taken):
    return sb.free_port(taken, socket.SOCK_STREAM)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids, grace=3.0):
    """TERM, then KILL after grace s, each PID of the list (ours)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    end = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def cleanup():
    for rec in reversed(owned):
        if rec.get("stop"):
            try:
                rec["stop"]()
            except Exception:  # exiting anyway: stop the others
                pass
            continue
        p = rec["proc"]
        kids = sb.children_of(p.pid) if p.poll() is None else []
        sb.stop(p, grace=3.0)
        kill_pids([k for k in kids if alive(k)], grace=1.0)
    del owned[:]
    sb.cleanup()


def on_signal(signum, frame):
    cleanup()
    sys.exit(128 + signum)


def excerpt(path, limit=3):
    return sb.log_excerpt(path, limit)


# ------------------------------------------------------------------------------------------
# receivers


class Counter:
    """A receiver process (evsink or amqp_count) and the counts it publishes in its stat file:
    msgs, bytes, conns, errors, first_ns, last_ns, ready (struct evsink_stat)."""

    def __init__(self, name, argv, statfile, logpath):
        self.name, self.statfile, self.log = name, statfile, logpath
        if os.path.exists(statfile):
            os.unlink(statfile)
        logf = open(logpath, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        owned.append({"name": name, "proc": self.proc})
        self.mm = None

    def _map(self):
        if self.mm is None:
            try:
                with open(self.statfile, "rb") as f:
                    self.mm = mmap.mmap(f.fileno(), 64, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                return None
        return self.mm

    def stat(self):
        mm = self._map()
        if mm is None:
            return None
        msgs, nbytes, conns, errors, first_ns, last_ns, ready, _ = struct.unpack_from("<8Q", mm, 0)
        return {"msgs": msgs, "bytes": nbytes, "conns": conns, "errors": errors, "first_ns": first_ns,
                "last_ns": last_ns, "ready": ready}

    def count(self):
        mm = self._map()
        return struct.unpack_from("<Q", mm, 0)[0] if mm is not None else 0

    def last_ns(self):
        mm = self._map()
        return struct.unpack_from("<Q", mm, 40)[0] if mm is not None else 0

    def wait_ready(self, timeout):
        """True once the receiver listens (amqp_count: consumes); the reason otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return "%s exited (status %s): %s" % (self.name, self.proc.returncode, excerpt(self.log) or "no output")
            st = self.stat()
            if st and st["ready"]:
                return True
            time.sleep(0.05)
        return "%s not ready after %.0f s: %s" % (self.name, timeout, excerpt(self.log) or "no output")

    def pids(self):
        return [self.proc.pid] if self.proc.poll() is None else []


class FileCounter:
    """flatstore's receiver is the file lunasip appends to: counts its lines as they come."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.lines = 0
        self.last = 0
        self.proc = None

    def count(self):
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return self.lines
        if size > self.off:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read(size - self.off)
            # only whole lines: a line written in two pieces is counted once complete
            cut = data.rfind(b"\n") + 1
            if cut:
                self.lines += data.count(b"\n", 0, cut)
                self.off += cut
                self.last = time.monotonic_ns()
        return self.lines

    def last_ns(self):
        return self.last

    def stat(self):
        return {"msgs": self.count(), "bytes": self.off, "conns": 0, "errors": 0, "first_ns": 0,
                "last_ns": self.last, "ready": 1}

    def pids(self):
        return []


class HungPeer:
    """The peer of variant tcp-hung: a TCP listener on 127.0.0.1 (SO_RCVBUF HUNG_RCVBUF set
    before listen, so accepted sockets inherit it) that accepts every connection, keeps it
    open and never reads. A thread of this script (it only waits in accept); stop() ends it
    and closes every socket."""

    def __init__(self):
        import threading
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HUNG_RCVBUF)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.rcvbuf = self.ls.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.conns = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, name="hung-peer", daemon=True)
        self.thread.start()
        self.rec = {"name": "hung tcp peer", "stop": self.stop}
        owned.append(self.rec)

    def _accept(self):
        while not self.done.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.conns.append(c)  # kept open, never read

    def unread(self):
        """Bytes waiting unread in the accepted sockets' receive queues (/proc/net/tcp)."""
        total = 0
        try:
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    fl = line.split()
                    if int(fl[1].split(":")[1], 16) == self.port and fl[3] == "01":
                        total += int(fl[4].split(":")[1], 16)
        except (OSError, ValueError, IndexError, StopIteration):
            return None
        return total

    def stop(self):
        if self.done.is_set():
            return
        self.done.set()
        self.thread.join(2.0)
        for c in self.conns:
            c.close()
        self.ls.close()
        if self.rec in owned:
            owned.remove(self.rec)


# ------------------------------------------------------------------------------------------
# the private RabbitMQ broker


class Broker:
    """rabbitmq-server with everything under DIR: its own epmd (started here, so its PID is
    ours), picked free ports (AMQP, distribution, epmd), a unique node name, its own mnesia,
    logs, config, plugins file and HOME (the Erlang cookie). Listens on 127.0.0.1 only;
    guest/guest may log in over loopback. Started in the background; ready() waits for it."""

    def __init__(self, dirpath, taken):
        self.dir = dirpath
        shutil.rmtree(dirpath, ignore_errors=True)
        self.home = os.path.join(dirpath, "home")
        self.logs = os.path.join(dirpath, "log")
        for d in (self.home, self.logs, os.path.join(dirpath, "mnesia")):
            os.makedirs(d)
        self.node = "lunasipbench%d@localhost" % os.getpid()
        self.port, self.dist_port, self.epmd_port = (free_tcp_port(taken), free_tcp_port(taken),
                                                     free_tcp_port(taken))
        self.proc = self.epmd = None
        self.pids = []
        self.t0 = None
        self.start_s = None
        self.error = None
        with open(os.path.join(dirpath, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.default = 127.0.0.1:%d\n"
                    "loopback_users = none\n"
                    "disk_free_limit.absolute = 10MB\n"
                    "log.file.level = warning\n"
                    "log.console = false\n" % self.port)
        with open(os.path.join(dirpath, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(dirpath, "rabbitmq-env.conf"), "w").close()

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": self.home,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": self.logs,
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.dir, "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "rabbitmq.pid"),
        })
        return env

    def start(self):
        """Starts epmd and the broker without waiting for it; False (self.error) when it
        cannot even start."""
        for exe in (RABBITMQ_SERVER, EPMD):
            if not os.access(exe, os.X_OK):
                self.error = "%s not installed (scripts/deps.sh bench installs rabbitmq-server)" % exe
                return False
        self.t0 = time.monotonic()
        out = open(os.path.join(self.dir, "epmd.log"), "ab")
        self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env(), start_new_session=True)
        out.close()
        end = time.monotonic() + 10
        while not port_accepts(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > end:
                self.error = "epmd did not listen on port %d" % self.epmd_port
                return False
            time.sleep(0.02)
        out = open(os.path.join(self.dir, "console.log"), "ab")
        self.proc = subprocess.Popen([RABBITMQ_SERVER], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        out.close()
        self.pids = [self.proc.pid]
        owned.append({"name": "rabbitmq", "stop": self.stop})
        return True

    def track(self):
        if self.proc and self.proc.poll() is None:
            for pid in sb.children_of(self.proc.pid):
                if pid not in self.pids:
                    self.pids.append(pid)

    def ready(self, timeout=BROKER_START_TIMEOUT):
        """Waits until the AMQP port accepts: True, or False with self.error."""
        if self.error:
            return False
        if self.start_s is not None:
            return True
        end = self.t0 + timeout
        while True:
            self.track()
            if port_accepts(self.port):
                self.track()
                self.start_s = time.monotonic() - self.t0
                return True
            if self.proc.poll() is not None:
                self.error = "rabbitmq-server exited (status %s) before listening: %s" % (
                    self.proc.returncode, self.log_tail())
                return False
            if time.monotonic() > end:
                self.error = "rabbitmq-server not accepting on port %d after %.0f s: %s" % (
                    self.port, timeout, self.log_tail())
                return False
            time.sleep(0.1)

    def log_tail(self):
        lines = []
        for fn in sorted(os.listdir(self.logs)):
            with open(os.path.join(self.logs, fn), "rb") as f:
                lines += f.read().decode("utf-8", "replace").splitlines()[-3:]
        with open(os.path.join(self.dir, "console.log"), "rb") as f:
            lines += f.read().decode("utf-8", "replace").splitlines()[-3:]
        return " | ".join(l.strip()[:200] for l in lines if l.strip()) or "no log"

    def cpu_pids(self):
        self.track()
        return [p for p in self.pids if alive(p)]

    def stop(self):
        """The broker (TERM to the wrapper, which stops the VM; KILL after 5 s), then epmd."""
        self.track()
        if self.proc is not None:
            kill_pids([self.proc.pid], grace=5.0)
            kill_pids([p for p in self.pids if alive(p)], grace=1.0)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self.epmd is not None:
            kill_pids([self.epmd.pid], grace=1.0)
            self.epmd.wait()
            self.epmd = None


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------
# lunasip instances and their control socket


class Ctl:
    """The control socket (SPEC §8: JSON-RPC 2.0, newline-delimited, unix stream), one
    persistent connection. Optional: when it cannot be reached the bench counts at the
    receivers only."""

    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""
        self.id = 0
        self.error = None

    def call(self, method, params=None, timeout=5.0):
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(self.path)
            self.id += 1
            req = {"jsonrpc": "2.0", "id": self.id, "method": method}
            if params is not None:
                req["params"] = params
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise OSError("control socket closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            ans = json.loads(line)
            if "error" in ans:
                self.error = "%s: %s" % (method, ans["error"].get("message"))
                return None
            return ans.get("result")
        except (OSError, ValueError) as e:
            self.error = "%s: %s" % (self.path, e)
            self.close()
            return None

    def stats(self):
        """{'events_delivered': ..., 'sinks': {socket: {...}}} or None."""
        r = self.call("stats", ["events"])
        if not isinstance(r, dict):
            return None
        r["sinks"] = {s.get("socket"): s for s in r.get("sinks", [])}
        return r

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.buf = b""


class LunasipFailed(Exception):
    pass


def start_lunasip(args, name, ldir, conf, lua, port, logpath):
    os.makedirs(ldir, exist_ok=True)
    with open(os.path.join(ldir, "lunasip.conf"), "w") as f:
        f.write(conf)
    with open(os.path.join(ldir, "server.lua"), "w") as f:
        f.write(lua)
    for fn in ("lunasip.conf", "server.lua"):
        shutil.copy(os.path.join(ldir, fn), os.path.join(args.evdir, "%s-%s" % (name, fn)))
    argv = [os.path.abspath(args.lunasip), "-c", ldir, "--foreground", "-l", "warn"]
    logf = open(logpath, "wb")
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logf.close()
    srv = {"name": name, "proc": p, "port": port, "argv": argv, "log": logpath, "dir": ldir}
    owned.append(srv)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise LunasipFailed("lunasip exited at start (status %s): %s" % (p.returncode, excerpt(logpath) or "no log"))
        if sb.options_probe(port):
            time.sleep(0.3)
            srv["pids"] = [p.pid] + sb.children_of(p.pid)
            srv["ctl"] = Ctl(os.path.join(ldir, "lunasip.ctl"))
            return srv
        time.sleep(0.1)
    raise LunasipFailed("lunasip does not answer OPTIONS on 127.0.0.1:%d: %s" % (port, excerpt(logpath) or "no log"))


def lunasip_pids(srv):
    if srv["proc"].poll() is not None:
        raise LunasipFailed("lunasip died (status %s): %s" % (srv["proc"].returncode, excerpt(srv["log"]) or "no log"))
    return [srv["proc"].pid] + sb.children_of(srv["proc"].pid)


def stop_lunasip(srv):
    p = srv["proc"]
    if srv.get("ctl"):
        srv["ctl"].close()
    kids = sb.children_of(p.pid) if p.poll() is None else []
    sb.stop(p, grace=3.0)
    kill_pids([k for k in kids if alive(k)], grace=1.0)
    if srv in owned:
        owned.remove(srv)


def conf_text(port, extra=""):
    # As sip_bench.py's OPTIONS part (pike off: Kamailio runs without it there), plus the
    # control socket (read for the delivered/dropped counters) and the events settings.
    return ("-- written by bench/evi_bench.py\n"
            "core = { log_level = \"warn\", control_socket = \"lunasip.ctl\" }\n"
            "sip = { listen = { \"udp:127.0.0.1:%d\" } }\n"
            "pike = { enabled = false }\n%s" % (port, extra))


def sip_lua(variant, sock):
    if variant == "none":
        return ("-- written by bench/evi_bench.py: variant none (as sip_bench.py's OPTIONS part)\n"
                "function SipEvents.on_request(req)\n"
                "  if req.method == \"OPTIONS\" then req:reply(200) else req:reply(503) end\n"
                "end\n")
    return ("-- written by bench/evi_bench.py: variant %s, one event per request\n"
            "subscribe_event(\"E_BENCH\", %s)\n"
            "local n = 0\n"
            "function SipEvents.on_request(req)\n"
            "  if req.method == \"OPTIONS\" then\n"
            "    n = n + 1\n"
            "    raise_event(\"E_BENCH\", {method = req.method, call_id = req.call_id, n = n})\n"
            "    req:reply(200)\n"
            "  else\n"
            "    req:reply(503)\n"
            "  end\n"
            "end\n" % (variant, json.dumps(sock)))


SINKS_LUA = """-- written by bench/evi_bench.py: delivery throughput per sink kind.
-- One event per kind, each subscribed to its own receiver. An OPTIONS with X-Event: E_X and
-- X-Burst: K raises K events E_X in this handler; the reply says how many were queued, or
-- 503 with why the event has no subscriber.
local sinks = %s
local refused = {}
for ev, sock in pairs(sinks) do
  local ok, r, err = pcall(subscribe_event, ev, sock)
  if not ok then refused[ev] = tostring(r) elseif not r then refused[ev] = tostring(err) end
end
local n = 0
local function phrase(s) return (s:gsub("[%%c]", " "):sub(1, 200)) end
function SipEvents.on_request(req)
  local ev = req:header("X-Event")
  local k = tonumber(req:header("X-Burst") or "0") or 0
  if not ev or not sinks[ev] then
    if req.method == "OPTIONS" and not ev then req:reply(200) else req:reply(404, "no such event") end
    return
  end
  if refused[ev] then req:reply(503, phrase("refused: " .. refused[ev])) return end
  local id = req.call_id
  local q = 0
  for _ = 1, k do
    n = n + 1
    q = q + raise_event(ev, {method = "OPTIONS", call_id = id, n = n})
  end
  req:reply(200, "queued " .. q)
end
"""


# ------------------------------------------------------------------------------------------
# part sip: the SIP cost of events


def sip_part(args, results, recv_udp, rmq_counter, broker, hung, taken):
    r = results["sip"] = {
        "variants": list(VARIANTS), "rates": args.cpu_rates, "reps": args.cpu_reps, "seconds": args.cpu_seconds,
        "step_seconds": args.step_seconds, "steps_tried": args.steps, "max_budget_s": args.max_budget,
        "resolution": args.resolution, "bisect_rounds": args.bisect_rounds,
        "failed": {}, "cpu": [], "max_steps": [], "sockets": {}, "processes": {},
    }
    args.sipp_dir = os.path.join(args.evdir, "sipp")
    os.makedirs(args.sipp_dir, exist_ok=True)
    args.sipp_port = sb.free_udp_port(taken)
    srvs = []
    for v in VARIANTS:
        port = sb.free_udp_port(taken)
        sock = None
        helpers = []
        try:
            if v == "udp":
                if isinstance(recv_udp, str):
                    raise LunasipFailed("UDP receiver: " + recv_udp)
                sock = "udp:127.0.0.1:%d" % recv_udp.port
                helpers = [recv_udp]
            elif v == "rabbitmq":
                if not broker.ready():
                    raise LunasipFailed("broker: " + broker.error)
                if isinstance(rmq_counter, str):
                    raise LunasipFailed(rmq_counter)
                ok = rmq_counter.wait_ready(20)
                if ok is not True:
                    raise LunasipFailed("RabbitMQ consumer: " + ok)
                sock = "rabbitmq:guest:guest@127.0.0.1:%d/%s" % (broker.port, SIP_QUEUE)
                helpers = [rmq_counter, broker]
            elif v == "tcp-hung":
                if isinstance(hung, str):
                    raise LunasipFailed("hung TCP peer: " + hung)
                sock = "tcp:127.0.0.1:%d" % hung.port
                r["hung_peer"] = {"port": hung.port, "rcvbuf_set": HUNG_RCVBUF, "rcvbuf": hung.rcvbuf}
            r["sockets"][v] = sock
            srv = start_lunasip(args, "sip-" + v, os.path.join(args.tmp, "sip-" + v), conf_text(port),
                                sip_lua(v, sock), port, os.path.join(args.evdir, "sip-%s.log" % v))
            srv["variant"], srv["helpers"] = v, helpers
            r["processes"][v] = len(srv["pids"])
            srvs.append(srv)
            log("  sip  %-9s lunasip pid %d on udp:127.0.0.1:%d%s" % (v, srv["proc"].pid, port,
                                                                     ", sink " + sock if sock else ""))
        except LunasipFailed as e:
            r["failed"][v] = str(e)
            log("  sip  %-9s n/a (%s)" % (v, e))

    def helper_cpu(srv):
        pids = []
        for h in srv["helpers"]:
            pids += h.cpu_pids() if isinstance(h, Broker) else h.pids()
        return sb.cpu_ns(pids)

    def one(srv, rate, seconds, tag):
        """run_sipp plus the events: received at the receiver, lunasip's counters, and the
        helpers' CPU (receiver, broker) taken out of "other load"."""
        ctl = srv["ctl"]
        s0 = ctl.stats()
        c0 = srv["helpers"][0].count() if srv["helpers"] else 0
        h0 = helper_cpu(srv)
        try:
            res = sb.run_sipp(args, srv, rate, seconds, tag)
        except SystemExit as e:  # the server died, SIPp wrote nothing: this variant is out
            raise LunasipFailed(str(e))
        h1 = helper_cpu(srv)
        res["variant"] = srv["variant"]
        res["helper_cpu_ns"] = h1 - h0
        if res.get("other_cores") is not None:
            res["other_cores"] -= (h1 - h0) / 1e9 / res["wall_s"]
        if srv["helpers"]:
            # what the sink still had queued reaches the receiver shortly after SIPp's end
            end = time.monotonic() + 2.0
            want = c0 + res["successful"]
            while srv["helpers"][0].count() < want and time.monotonic() < end:
                time.sleep(0.02)
            res["events_received"] = srv["helpers"][0].count() - c0
        s1 = ctl.stats()
        if s0 and s1:
            for k in ("events_raised", "events_delivered", "events_dropped", "events_failed"):
                res[k] = s1.get(k, 0) - s0.get(k, 0)
        return res

    def drop(srv, e):
        r["failed"][srv["variant"]] = str(e)
        log("  sip  %-9s n/a (%s)" % (srv["variant"], e))
        stop_lunasip(srv)
        srvs.remove(srv)

    def line(x):
        ev = ""
        if "events_received" in x:
            ev = "  events rcvd %d" % x["events_received"]
            if "events_dropped" in x:
                ev += " dropped %d failed %d" % (x["events_dropped"], x["events_failed"])
        elif x["variant"] != "none" and "events_dropped" in x:
            # tcp-hung: nothing is received; lunasip's own counters say where the events went
            ev = "  events raised %d delivered %d dropped %d failed %d" % (
                x["events_raised"], x["events_delivered"], x["events_dropped"], x["events_failed"])
        return ("%7.2f us/req  server/SIPp %.2f  ok %d fail %d retr %d  %.0f/s%s  other load %s"
                % (x["us_per_req"], x["server_over_sipp"], x["successful"], x["failed"], x["retransmissions"],
                   x["achieved_rate"], ev, sb.fmt_cores(x["other_cores"])))

    for rate in args.cpu_rates:
        for rep in range(1, args.cpu_reps + 1):
            for srv in list(srvs):
                try:
                    x = one(srv, rate, args.cpu_seconds, "cpu-%s-%d-r%d" % (srv["variant"], rate, rep))
                except LunasipFailed as e:
                    drop(srv, e)
                    continue
                x["rep"] = rep
                r["cpu"].append(x)
                log("  cpu  %-9s %6d/s rep %d: %s" % (srv["variant"], rate, rep, line(x)))
                time.sleep(1.0)

    if args.max_budget > 0:
        search = {s["variant"]: sb.RateSearch(args.steps, args.bisect_rounds, args.resolution) for s in srvs}
        sb.max_search(srvs, "variant", search, args.max_budget,
                      lambda srv, rate, tag: one(srv, rate, args.step_seconds, tag), line, r,
                      lambda: time.sleep(1.0), drop=drop, failures=LunasipFailed)

    summary = {}
    for rate in args.cpu_rates:
        for v in VARIANTS:
            rs = [x for x in r["cpu"] if x["rate"] == rate and x["variant"] == v]
            if not rs or v in r["failed"]:
                continue
            s = summary["%s@%d" % (v, rate)] = {
                "us_per_req": statistics.median(x["us_per_req"] for x in rs),
                "server_over_sipp": statistics.median(x["server_over_sipp"] for x in rs),
                "all_clean": all(x["clean"] for x in rs), "reps": len(rs),
                "helper_us_per_req": statistics.median(x["helper_cpu_ns"] / 1e3 / x["successful"]
                                                       for x in rs if x["successful"]),
            }
            if all("events_received" in x for x in rs):
                s["events_received"] = sum(x["events_received"] for x in rs)
                s["requests"] = sum(x["successful"] for x in rs)
            if all("events_dropped" in x for x in rs):
                s["events_dropped"] = sum(x["events_dropped"] for x in rs)
                s["events_failed"] = sum(x["events_failed"] for x in rs)
                s["events_raised"] = sum(x["events_raised"] for x in rs)
                s["events_delivered"] = sum(x["events_delivered"] for x in rs)
    r["summary"] = summary
    if "hung_peer" in r and not isinstance(hung, str):
        r["hung_peer"]["connections"] = len(hung.conns)
        r["hung_peer"]["unread_bytes"] = hung.unread()
        ms = [x for x in r["max_steps"] if x["variant"] == "tcp-hung" and "events_dropped" in x]
        if ms:
            r["hung_peer"]["max_steps"] = {k: sum(x[k] for x in ms) for k in (
                "events_raised", "events_delivered", "events_dropped", "events_failed")}
    for srv in list(srvs):
        stop_lunasip(srv)


# ------------------------------------------------------------------------------------------
# part sinks: delivery throughput per sink kind


class Trigger:
    """Sends the burst requests (OPTIONS with X-Event and X-Burst) and reads their answers."""

    def __init__(self, port):
        self.port = port
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(5.0)
        self.lport = self.s.getsockname()[1]
        self.seq = 0

    def burst(self, event, k):
        """(status, reason) of the answer; (None, why) without one."""
        self.seq += 1
        msg = ("OPTIONS sip:burst@127.0.0.1:%d SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-evb%d;rport\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=evb\r\nTo: <sip:burst@127.0.0.1>\r\n"
               "Call-ID: evb-%d-%d@127.0.0.1\r\nCSeq: %d OPTIONS\r\nX-Event: %s\r\nX-Burst: %d\r\n"
               "Content-Length: 0\r\n\r\n"
               % (self.port, self.lport, self.seq, os.getpid(), self.seq, self.seq, event, k)).encode()
        self.s.sendto(msg, ("127.0.0.1", self.port))
        want = ("branch=z9hG4bK-evb%d;" % self.seq).encode()
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            try:
                data = self.s.recv(65535)
            except socket.timeout:
                break
            if want not in data:
                continue  # a late answer to an earlier burst
            first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
            parts = first.split(" ", 2)
            return int(parts[1]), parts[2] if len(parts) > 2 else ""
        return None, "no answer to the burst request within 5 s"


def self_cpu_ns():
    t = os.times()
    return int((t.user + t.system) * 1e9)


def sink_socket(kind, addr):
    return {"udp": "udp:%s", "unix": "unix:%s", "tcp": "tcp:%s", "http": "http://%s/events",
            "flatstore": "flatstore:%s", "rabbitmq": "rabbitmq:guest:guest@%s/" + SINK_QUEUE}[kind] % addr


def sink_stats(stats, sock):
    """The control socket's counters of sink sock; it shows a rabbitmq: password as ***."""
    masked = re.sub(r"^(rabbitmq:[^:@/]*:)[^@/]*@", r"\1***@", sock)
    return stats["sinks"].get(sock) or stats["sinks"].get(masked) or {}


def sink_event(kind):
    return "E_BENCH_" + kind.upper()


def sinks_part(args, results, recv, broker, taken):
    r = results["sinks"] = {
        "kinds": list(args.kinds), "feed_s": args.feed_s, "burst": args.burst, "window": args.window,
        "reps": args.sink_reps, "queue_limit": args.queue_limit, "failed": {}, "runs": [], "sockets": {},
    }
    sockets = {}
    for kind in args.kinds:
        rc = recv.get(kind)
        if isinstance(rc, str):
            r["failed"][kind] = rc
            continue
        if kind == "rabbitmq":
            if not broker.ready():
                r["failed"][kind] = "broker: " + broker.error
                continue
            ok = rc.wait_ready(20)
            if ok is not True:
                r["failed"][kind] = "RabbitMQ consumer: " + ok
                continue
        elif kind != "flatstore":
            ok = rc.wait_ready(10)
            if ok is not True:
                r["failed"][kind] = "receiver: " + ok
                continue
        sockets[sink_event(kind)] = rc.sock
        r["sockets"][kind] = rc.sock
    for kind, why in r["failed"].items():
        log("  sink %-9s n/a (%s)" % (kind, why))
    kinds = [k for k in args.kinds if k not in r["failed"]]
    if not kinds:
        return
    port = sb.free_udp_port(taken)
    # queue_limit well above the window: nothing may be dropped; retry_max 1: a sink that
    # had to reconnect is back at once.
    extra = "events = { queue_limit = %d, retry_max = 1 }\n" % args.queue_limit
    lua = SINKS_LUA % ("{ " + ", ".join("%s = %s" % (e, json.dumps(s)) for e, s in sorted(sockets.items())) + " }")
    try:
        srv = start_lunasip(args, "sinks", os.path.join(args.tmp, "sinks"), conf_text(port, extra), lua, port,
                            os.path.join(args.evdir, "sinks.log"))
    except LunasipFailed as e:
        for k in kinds:
            r["failed"][k] = str(e)
        log("  sinks lunasip n/a (%s)" % e)
        return
    log("  sinks lunasip pid %d on udp:127.0.0.1:%d" % (srv["proc"].pid, port))
    trig = Trigger(port)

    def run(kind, rep):
        rc = recv[kind]
        ev = sink_event(kind)
        pids = lunasip_pids(srv)
        s0 = srv["ctl"].stats()
        c0 = rc.count()
        hpids = rc.pids() + (broker.cpu_pids() if kind == "rabbitmq" else [])
        h0, m0, self0 = sb.cpu_ns(hpids), sb.machine_cpu_ns(), self_cpu_ns()
        cpu0 = sb.cpu_ns(pids)
        t0 = time.monotonic_ns()
        feed_end = time.monotonic() + args.feed_s
        raised = 0
        while time.monotonic() < feed_end:
            got = rc.count() - c0
            if raised - got + args.burst <= args.window:
                code, why = trig.burst(ev, args.burst)
                if code != 200:
                    raise LunasipFailed("burst refused: %s %s" % (code, why) if code else why)
                if why.strip() == "queued 0":
                    raise LunasipFailed("raise_event(%s) was queued for no subscriber" % ev)
                raised += args.burst
            else:
                time.sleep(0.0005)
        t_fed = time.monotonic_ns()
        # drain: until everything is in, or nothing has come for args.stall s
        last_got, last_change = -1, time.monotonic()
        while True:
            got = rc.count() - c0
            if got >= raised:
                break
            if got != last_got:
                last_got, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > args.stall:
                break
            time.sleep(0.001)
        cpu1 = sb.cpu_ns(lunasip_pids(srv))
        t1 = time.monotonic_ns()
        h1, m1, self1 = sb.cpu_ns(hpids), sb.machine_cpu_ns(), self_cpu_ns()
        t_last = rc.last_ns()
        got = rc.count() - c0
        s1 = srv["ctl"].stats()
        x = {"kind": kind, "rep": rep, "raised": raised, "received": got, "complete": got >= raised,
             "seconds": (t_last - t0) / 1e9 if got and t_last > t0 else None,
             "feed_seconds": (t_fed - t0) / 1e9, "lunasip_cpu_ns": cpu1 - cpu0,
             "receiver_cpu_ns": h1 - h0, "bench_cpu_ns": self1 - self0, "wall_s": (t1 - t0) / 1e9}
        # cores that neither lunasip, the receiver (and broker) nor this script used
        x["other_cores"] = ((m1 - m0 - x["lunasip_cpu_ns"] - x["receiver_cpu_ns"] - x["bench_cpu_ns"]) / (t1 - t0)
                            if m0 is not None and m1 is not None else None)
        x["events_per_s"] = got / x["seconds"] if x["seconds"] else 0.0
        x["lunasip_cores"] = x["lunasip_cpu_ns"] / (t1 - t0)  # near 1: lunasip was the bottleneck
        x["us_per_event"] = x["lunasip_cpu_ns"] / 1e3 / got if got else None
        if s0 and s1:
            k0, k1 = sink_stats(s0, rc.sock), sink_stats(s1, rc.sock)
            for k in ("delivered", "failed", "dropped"):
                x[k] = k1.get(k, 0) - k0.get(k, 0)
            x["state"] = k1.get("state")
        return x

    for rep in range(1, args.sink_reps + 1):
        for kind in list(kinds):
            try:
                x = run(kind, rep)
            except LunasipFailed as e:
                if srv["proc"].poll() is not None:
                    for k in kinds:
                        r["failed"][k] = str(e)
                    log("  sinks lunasip n/a (%s)" % e)
                    kinds[:] = []
                    break
                r["failed"][kind] = str(e)
                kinds.remove(kind)
                log("  sink %-9s n/a (%s)" % (kind, e))
                continue
            r["runs"].append(x)
            ctl = ""
            if "delivered" in x:
                ctl = "  lunasip: delivered %d failed %d dropped %d, %s" % (x["delivered"], x["failed"],
                                                                          x["dropped"], x["state"])
            log("  sink %-9s rep %d: %9.0f events/s  %6.2f us/event  received %d/%d  receiver %.2f us/event%s  "
                "other load %s" % (kind, rep, x["events_per_s"], x["us_per_event"] or float("nan"), x["received"],
                                   x["raised"], x["receiver_cpu_ns"] / 1e3 / max(x["received"], 1), ctl,
                                   sb.fmt_cores(x["other_cores"])))
            if not x["received"]:
                why = "no event arrived within %.0f s" % args.stall
                if "state" in x:
                    why += " (sink %s, failed %d, dropped %d)" % (x["state"], x["failed"], x["dropped"])
                r["failed"][kind] = why
                kinds.remove(kind)
                log("  sink %-9s n/a (%s)" % (kind, why))
            time.sleep(0.3)
    summary = {}
    for kind in args.kinds:
        rs = [x for x in r["runs"] if x["kind"] == kind]
        if kind in r["failed"] or not rs:
            continue
        summary[kind] = {
            "events_per_s": statistics.median(x["events_per_s"] for x in rs),
            "us_per_event": statistics.median(x["us_per_event"] for x in rs if x["us_per_event"] is not None),
            "received": sum(x["received"] for x in rs), "raised": sum(x["raised"] for x in rs),
            "all_complete": all(x["complete"] for x in rs), "reps": len(rs),
            "lunasip_cores": statistics.median(x["lunasip_cores"] for x in rs),
            "receiver_us_per_event": statistics.median(x["receiver_cpu_ns"] / 1e3 / x["received"]
                                                       for x in rs if x["received"]),
            "max_other_cores": max((x["other_cores"] for x in rs if x["other_cores"] is not None), default=None),
        }
        if all("dropped" in x for x in rs):
            summary[kind]["dropped"] = sum(x["dropped"] for x in rs)
            summary[kind]["failed"] = sum(x["failed"] for x in rs)
    r["summary"] = summary
    stop_lunasip(srv)


# ------------------------------------------------------------------------------------------


def build_tools(args):
    """evsink (no dependency) and amqp_count (librabbitmq); a tool that does not build leaves
    the reason instead of its path."""
    cc = os.environ.get("CC", "cc")
    out = {}
    for tool, extra in (("evsink", []), ("amqp_count", None)):
        if extra is None:
            pc = subprocess.run(["pkg-config", "--cflags", "--libs", "librabbitmq"], capture_output=True, text=True)
            extra = pc.stdout.split() if pc.returncode == 0 else ["-lrabbitmq"]
        exe = os.path.join(args.evdir, tool)
        p = subprocess.run([cc, "-O2", "-Wall", "-o", exe, os.path.join(EVDIR, tool + ".c")] + extra,
                           capture_output=True, text=True)
        if p.returncode != 0:
            out[tool] = "bench/events/%s.c did not build: %s" % (
                tool, " | ".join(p.stderr.strip().splitlines()[:2]) or "exit %d" % p.returncode)
        else:
            out[tool] = exe
    return out


def start_receiver(args, tools, kind, taken, tag):
    """A receiver for kind: a Counter with .sock (the sink's socket text), or the reason."""
    stat = os.path.join(args.tmp, "%s-%s.stat" % (tag, kind))
    logp = os.path.join(args.evdir, "%s-%s.log" % (tag, kind))
    if kind == "flatstore":
        path = os.path.join(args.tmp, "%s-events.flat" % tag)
        rc = FileCounter(path)
        rc.sock = sink_socket(kind, path)
        return rc
    if kind == "rabbitmq":
        if not os.path.isabs(tools["amqp_count"]):
            return tools["amqp_count"]
        if args.broker.error:
            return "broker: " + args.broker.error
        queue = SIP_QUEUE if tag == "sip" else SINK_QUEUE
        rc = Counter("amqp_count", [tools["amqp_count"], "127.0.0.1", str(args.broker.port), queue, stat], stat, logp)
        rc.sock = sink_socket(kind, "127.0.0.1:%d" % args.broker.port)
        return rc
    if not os.path.isabs(tools["evsink"]):
        return tools["evsink"]
    if kind == "unix":
        addr = os.path.join(args.tmp, "%s.sock" % tag)
    elif kind == "udp":
        addr = "127.0.0.1:%d" % sb.free_udp_port(taken)
    else:
        addr = "127.0.0.1:%d" % free_tcp_port(taken)
    rc = Counter("evsink " + kind, [tools["evsink"], kind, addr, stat], stat, logp)
    rc.sock = sink_socket(kind, addr)
    rc.port = int(addr.rsplit(":", 1)[1]) if kind != "unix" else None
    return rc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lunasip", default="./lunasip")
    ap.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    ap.add_argument("--parts", default="sip,sinks", help="sip (SIP cost of events), sinks (delivery per sink)")
    ap.add_argument("--sinks", default=",".join(KINDS), help="sink kinds, comma-separated, out of " + ",".join(KINDS))
    ap.add_argument("--burst", type=int, default=500, help="sinks: events raised per burst request")
    ap.add_argument("--window", type=int, default=20000, help="sinks: events raised and not yet received, at most")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.kinds = [k.strip() for k in args.sinks.split(",") if k.strip()]
    for k in args.kinds:
        if k not in KINDS:
            raise SystemExit("evi_bench: unknown sink kind %r (known: %s)" % (k, ", ".join(KINDS)))
    if args.quick:
        args.cpu_rates, args.cpu_reps, args.cpu_seconds = [10000], 1, 2
        args.steps, args.step_seconds, args.bisect_rounds, args.max_budget = [20000, 40000], 2, 0, 40
        args.feed_s, args.sink_reps = 0.7, 1
    else:
        args.cpu_rates, args.cpu_reps, args.cpu_seconds = [10000], 3, 5
        # 4 s steps (sip_bench.py: 5 s) and three steps: the whole events part stays under
        # ~5 minutes. SIPp's start costs every step the same ~2% of its achieved rate. The
        # budget, ~27 s per variant (80 s when there were three), lets every round finish.
        args.steps, args.step_seconds, args.bisect_rounds = [20000, 40000, 60000], 4, 2
        args.max_budget = 110
        args.feed_s, args.sink_reps = 1.5, 3
    args.resolution = 2500
    args.queue_limit, args.stall = max(100000, 5 * args.window), 5.0

    if "sip" in parts and not shutil.which("sipp"):
        raise SystemExit("evi_bench: sipp not found (make bench installs it: scripts/deps.sh bench)")
    if not os.access(args.lunasip, os.X_OK):
        raise SystemExit("evi_bench: %s is not an executable" % args.lunasip)

    atexit.register(cleanup)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    args.out = os.path.abspath(args.out)  # the broker runs in its own dir: every path absolute
    os.makedirs(args.out, exist_ok=True)
    args.evdir = os.path.join(args.out, "events")
    shutil.rmtree(args.evdir, ignore_errors=True)
    os.makedirs(args.evdir)
    jpath = os.path.join(args.out, "events.json")
    if os.path.exists(jpath):
        os.unlink(jpath)
    args.tmp = tempfile.mkdtemp(prefix="lunasip-evb-")
    atexit.register(shutil.rmtree, args.tmp, True)

    t0 = time.monotonic()
    sver = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines() \
        if shutil.which("sipp") else []
    results = {"host": {"nproc": os.cpu_count(), "kernel": os.uname().release}, "quick": bool(args.quick),
               "parts": parts, "sipp_version": " ".join(sver[:1]), "lunasip_argv0": os.path.abspath(args.lunasip)}
    taken = set()
    tools = build_tools(args)
    results["tools"] = tools
    # The broker boots (~8.5 s) while the other sinks are measured.
    need_broker = ("sip" in parts) or ("rabbitmq" in args.kinds and "sinks" in parts)
    args.broker = Broker(os.path.join(args.evdir, "rabbitmq"), taken)
    if need_broker and not args.broker.start():
        log("  rabbitmq n/a (%s)" % args.broker.error)
    elif not need_broker:
        args.broker.error = "not needed"

    if "sinks" in parts:
        t1 = time.monotonic()
        recv = {k: start_receiver(args, tools, k, taken, "sinks") for k in args.kinds}
        sinks_part(args, results, recv, args.broker, taken)
        results["sinks"]["wall_s"] = time.monotonic() - t1
        for rc in recv.values():
            if isinstance(rc, Counter):
                sb.stop(rc.proc, grace=1.0)
    if "sip" in parts:
        recv_udp = start_receiver(args, tools, "udp", taken, "sip")
        rmq = start_receiver(args, tools, "rabbitmq", taken, "sip")
        if isinstance(recv_udp, Counter):
            ok = recv_udp.wait_ready(10)
            if ok is not True:
                recv_udp = ok
        try:
            hung = HungPeer()
        except OSError as e:
            hung = "cannot listen: %s" % e
        t1 = time.monotonic()
        sip_part(args, results, recv_udp, rmq, args.broker, hung, taken)
        results["sip"]["wall_s"] = time.monotonic() - t1
        if not isinstance(hung, str):
            hung.stop()
    if args.broker.start_s is not None:
        results["broker"] = {"start_s": args.broker.start_s, "node": args.broker.node, "port": args.broker.port,
                             "version": rabbit_version()}
    results["wall_s"] = time.monotonic() - t0
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1)
    cleanup()
    return 0


def rabbit_version():
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], capture_output=True,
                             text=True, timeout=5).stdout
        return out.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
