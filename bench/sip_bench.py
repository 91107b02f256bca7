#!/usr/bin/env python3
"""Two benchmarks over UDP, driven by SIPp, following /work/shared/BENCH.md: same offered
rate in the same run, repetitions interleaved, server CPU counted exactly from
se.sum_exec_runtime of every thread of every process of the instance, and the highest clean
rate found by stepping the rate and then bisecting.

--mode options (default): OPTIONS answered by lunasip (from Lua) against Kamailio
(sl_send_reply), one scenario file for both (options.xml). Writes OUT/options.json and
SIPp's statistics of every run to OUT/sipp/.

--mode calls: the stateful proxy call flow, SIPp uac -> server -> SIPp uas (INVITE, 180, 200,
ACK, BYE, 200; call_uac.xml, call_uas.xml) through lunasip (proxy/), Kamailio
(kamailio/proxy.cfg: record_route(); t_relay()) and Kamailio routing in Lua through app_lua
(kamailio/proxy-lua.cfg, proxy.lua). CPU per call at 500 calls/s and the highest clean call
rate. Writes OUT/calls.json and, in OUT/calls/, the configurations as run, the server logs
and SIPp's statistics of every run. A server that cannot proxy a call is reported as failed
(with the reason) and the others go on.

Standard library only. Every process it starts is stopped by PID on exit.

usage: sip_bench.py --out DIR [--mode options|calls] [--lunasip PATH] [--quick]
                    [--servers lunasip,kamailio,kamailio-lua] [--calls N] [--no-max]
"""
import argparse
import atexit
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "options.xml")
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"

LUNASIP_CONF = """-- written by bench/sip_bench.py
core = { log_level = "warn", control_socket = false }
sip = { listen = { "udp:127.0.0.1:%(port)d" } }
-- Kamailio runs without pike, so lunasip does too (its default allows 50 requests/2 s/IP).
pike = { enabled = false }
"""

SERVER_LUA = """-- written by bench/sip_bench.py
function SipEvents.on_request(req)
  if req.method == "OPTIONS" then req:reply(200) else req:reply(503) end
end
"""

# Kamailio's best settings for this job (BENCH.md): f_malloc for both pools and enough
# shared memory come from the command line; here only what the job needs, and nothing that
# costs without use (TCP/SCTP listeners and their processes, DNS and reverse DNS lookups).
KAMAILIO_CFG = """#!KAMAILIO
# written by bench/sip_bench.py
debug=1
log_stderror=yes
fork=yes
children=%(children)d
dns=no
rev_dns=no
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
maxbuffer=4194304
listen=udp:127.0.0.1:%(port)d
mpath="%(mpath)s/"
loadmodule "sl.so"
loadmodule "textops.so"

request_route {
    if (is_method("OPTIONS")) {
        sl_send_reply("200", "OK");
        exit;
    }
    sl_send_reply("503", "Unavailable");
}
"""

# A max-rate step that fails while other work on the machine used more than this many
# cores is run once more (the machine is shared with other jobs).
OTHER_LOAD_RETRY = 0.25

started = []  # Popen objects we own, stopped by PID at exit


def log(msg):
    print(msg, flush=True)


def free_port(taken, kind=socket.SOCK_DGRAM):
    """A loopback port of that kind the kernel says is free, not in taken (added to it)."""
    while True:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in taken:
            taken.add(port)
            return port


def free_udp_port(taken):
    return free_port(taken, socket.SOCK_DGRAM)


def children_of(pid):
    """Every descendant of pid (pgrep -P, recursively), from /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def cpu_ns(pids):
    """Sum of se.sum_exec_runtime (ms with ns precision) over every thread of pids."""
    total = 0.0
    for pid in pids:
        tdir = "/proc/%d/task" % pid
        try:
            tids = os.listdir(tdir)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("%s/%s/sched" % (tdir, tid)) as f:
                    for line in f:
                        if line.startswith("se.sum_exec_runtime"):
                            total += float(line.split(":")[1])
                            break
            except OSError:
                pass
    return int(total * 1e6)


def stop(p, grace=5.0):
    if p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=5)
    except ProcessLookupError:
        pass


def cleanup():
    for srv in reversed(started):
        p = srv["proc"]
        kids = children_of(p.pid) if p.poll() is None else []
        stop(p)
        for k in kids:  # a child that outlived its parent (it should not)
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass


def on_signal(signum, frame):
    cleanup()
    sys.exit(128 + signum)


def options_probe(port, timeout=0.3):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    lp = s.getsockname()[1]
    msg = ("OPTIONS sip:ping@127.0.0.1:%d SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-probe%d;rport\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
           "Call-ID: probe-%d@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
           % (port, lp, time.monotonic_ns(), time.monotonic_ns())).encode()
    s.settimeout(timeout)
    try:
        s.sendto(msg, ("127.0.0.1", port))
        data = s.recv(65535)
        return data.startswith(b"SIP/2.0 200")
    except OSError:
        return False
    finally:
        s.close()


def start_server(name, argv, port, logpath):
    logf = open(logpath, "wb")
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    srv = {"name": name, "proc": p, "port": port, "argv": argv, "log": logpath}
    started.append(srv)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit("%s exited at start (status %s); log %s:\n%s"
                             % (name, p.returncode, logpath, open(logpath, errors="replace").read()))
        if options_probe(port):
            time.sleep(0.5)  # let every worker of a forking server settle
            srv["pids"] = [p.pid] + children_of(p.pid)
            return srv
        time.sleep(0.1)
    raise SystemExit("%s does not answer OPTIONS on 127.0.0.1:%d; log %s" % (name, port, logpath))


def server_pids(srv):
    """The instance's processes now (main PID and every descendant)."""
    if srv["proc"].poll() is not None:
        raise SystemExit("%s died during the benchmark (status %s); log %s"
                         % (srv["name"], srv["proc"].returncode, srv["log"]))
    return [srv["proc"].pid] + children_of(srv["proc"].pid)


def udp_sockets():
    """{port: (rx_queue_bytes, drops)} of the IPv4 UDP sockets bound to 127.0.0.1."""
    out = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fl = line.split()
                addr, port = fl[1].split(":")
                if addr != "0100007F":
                    continue
                out[int(port, 16)] = (int(fl[4].split(":")[1], 16), int(fl[-1]))
    except OSError:
        pass
    return out


def net_counters():
    """Host-wide loss counters: UDP receive-buffer overflows and softnet backlog drops."""
    c = {"udp_rcvbuf_errors": 0, "softnet_drops": 0}
    try:
        with open("/proc/net/snmp") as f:
            rows = [l.split() for l in f if l.startswith("Udp:")]
        c["udp_rcvbuf_errors"] = int(dict(zip(rows[0][1:], rows[1][1:]))["RcvbufErrors"])
        with open("/proc/net/softnet_stat") as f:
            c["softnet_drops"] = sum(int(l.split()[1], 16) for l in f)
    except (OSError, KeyError, IndexError):
        pass
    return c


def machine_cpu_ns():
    """CPU time used by everything on the machine (root cpuacct cgroup), or None. It tells
    how much of the machine other work took during a run, which BENCH.md's interleaving
    spreads over both servers but which is worth seeing."""
    for path in ("/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"):
        try:
            with open(path) as f:
                return int(f.read())
        except (OSError, ValueError):
            pass
    try:
        with open("/sys/fs/cgroup/cpu.stat") as f:
            for line in f:
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) * 1000
    except (OSError, ValueError):
        pass
    return None


def parse_stat(path):
    """Last line of SIPp's -trace_stat CSV as a dict."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    if len(rows) < 2:
        return None
    return dict(zip(rows[0], rows[-1]))


def epoch(field):
    return float(field.split("\t")[-1])


def run_sipp(args, srv, rate, seconds, tag):
    """Offers `rate` OPTIONS/s for `seconds` to srv; returns SIPp's counters, its CPU time and
    the server's CPU time over the run."""
    n = int(rate * seconds)
    stat = os.path.join(args.sipp_dir, "%s.csv" % tag)
    screen = os.path.join(args.sipp_dir, "%s.screen" % tag)
    errf = os.path.join(args.sipp_dir, "%s.err" % tag)
    for pth in (stat, screen):
        if os.path.exists(pth):
            os.unlink(pth)
    argv = ["sipp", "127.0.0.1:%d" % srv["port"], "-sf", SCENARIO, "-i", "127.0.0.1",
            "-p", str(args.sipp_port), "-t", "u1",
            "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", "15000",
            "-buff_size", "4194304", "-nostdin", "-timeout", "%ds" % int(seconds + 15),
            "-trace_stat", "-stf", stat, "-fd", "1", "-trace_screen", "-screen_file", screen,
            "-trace_err", "-error_file", errf]
    pids = server_pids(srv)
    net0, sock0, mach0 = net_counters(), udp_sockets(), machine_cpu_ns()
    before = cpu_ns(pids)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    started.append({"name": "sipp", "proc": p})
    # Watch both sockets while SIPp runs (its socket's drop counter dies with it): where a
    # datagram was lost tells whose receive path could not keep up.
    sipp_drops = srv_rxq = sipp_rxq = 0
    try:
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            socks = udp_sockets()
            if args.sipp_port in socks:
                sipp_rxq = max(sipp_rxq, socks[args.sipp_port][0])
                sipp_drops = socks[args.sipp_port][1]
            if srv["port"] in socks:
                srv_rxq = max(srv_rxq, socks[srv["port"]][0])
            time.sleep(0.2)
    finally:
        started.pop()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    after = cpu_ns(server_pids(srv))
    net1, sock1, mach1 = net_counters(), udp_sockets(), machine_cpu_ns()
    st = parse_stat(stat)
    if st is None:
        raise SystemExit("SIPp wrote no statistics (exit %d); see %s" % (p.returncode, errf))
    ok = int(st["SuccessfulCall(C)"])
    failed = int(st["FailedCall(C)"])
    retrans = int(st["Retransmissions(C)"])
    elapsed = epoch(st["CurrentTime"]) - epoch(st["StartTime"])
    res = {
        "server": srv["name"], "rate": rate, "seconds": seconds, "calls": n,
        "successful": ok, "failed": failed, "retransmissions": retrans,
        "unexpected": int(st.get("FailedUnexpectedMessage(C)", 0)),
        "elapsed_s": elapsed, "wall_s": wall,
        "achieved_rate": ok / elapsed if elapsed > 0 else 0.0,
        "server_cpu_ns": after - before,
        "sipp_cpu_ns": int((ru.ru_utime + ru.ru_stime) * 1e9),
        "sipp_exit": p.returncode, "server_pids": len(pids), "stat_file": stat,
        "server_socket_drops": sock1.get(srv["port"], (0, 0))[1] - sock0.get(srv["port"], (0, 0))[1],
        "sipp_socket_drops": sipp_drops, "server_rxq_max": srv_rxq, "sipp_rxq_max": sipp_rxq,
        "udp_rcvbuf_errors": net1["udp_rcvbuf_errors"] - net0["udp_rcvbuf_errors"],
        "softnet_drops": net1["softnet_drops"] - net0["softnet_drops"],
    }
    # cores that neither the server nor SIPp used (other tenants, this script), over the run
    res["other_cores"] = (((mach1 - mach0) - res["server_cpu_ns"] - res["sipp_cpu_ns"]) / 1e9 / wall
                          if mach0 is not None and mach1 is not None else None)
    res["us_per_req"] = res["server_cpu_ns"] / 1e3 / ok if ok else float("nan")
    res["server_over_sipp"] = (res["server_cpu_ns"] / res["sipp_cpu_ns"]) if res["sipp_cpu_ns"] else float("nan")
    res["clean"] = (failed == 0 and retrans == 0 and ok == n and res["achieved_rate"] >= 0.95 * rate)
    return res


def fmt_cores(c):
    return "?" if c is None else "%.2f cores" % c


def settle(srvs):
    """Lets the servers drain whatever a step left in their sockets."""
    time.sleep(1.0)
    for srv in srvs:
        server_pids(srv)


def cpu_phase(args, srvs, results):
    for rate in args.cpu_rates:
        for rep in range(1, args.cpu_reps + 1):
            for srv in srvs:
                r = run_sipp(args, srv, rate, args.cpu_seconds, "cpu-%s-%d-r%d" % (srv["name"], rate, rep))
                r["rep"] = rep
                results["cpu"].append(r)
                log("  cpu  %-9s %6d/s rep %d: %7.2f us/req  server/SIPp %.2f  ok %d fail %d retr %d  %.0f/s  "
                    "other load %s"
                    % (srv["name"], rate, rep, r["us_per_req"], r["server_over_sipp"], r["successful"],
                       r["failed"], r["retransmissions"], r["achieved_rate"], fmt_cores(r["other_cores"])))
                settle(srvs)


class RateSearch:
    """Steps the rate up until a step is unclean, then bisects between the last clean and
    the first unclean rate (to `resolution`, at most `rounds` times)."""

    def __init__(self, steps, rounds, resolution):
        self.steps, self.rounds, self.resolution = list(steps), rounds, resolution
        self.best, self.worst, self.i, self.bisected = 0, None, 0, 0
        self.capped = False  # clean at the highest step: the real limit is above

    def next_rate(self):
        """The next rate to try, or None when done."""
        if self.worst is None:
            if self.i < len(self.steps):
                return self.steps[self.i]
            self.capped = True
            return None
        if self.bisected >= self.rounds or self.worst - self.best <= self.resolution:
            return None
        mid = int(round((self.best + self.worst) / 2 / 500.0) * 500)
        return mid if self.best < mid < self.worst else None

    def record(self, rate, clean):
        if self.worst is None:
            self.i += 1
        else:
            self.bisected += 1
        if clean:
            self.best = max(self.best, rate)
        else:
            self.worst = rate if self.worst is None else min(self.worst, rate)


def max_search(srvs, key, search, budget, run_step, describe, results, rest, rest_retry=None, drop=None,
               failures=(), width=9):
    """The highest clean rate of each server, searched side by side: one step of each server
    per round (search: name -> RateSearch), until every search is done or budget seconds are
    spent. run_step(srv, rate, tag) runs one step and returns its result (with "clean" and
    "other_cores"); one of failures raised there drops the server (drop(srv, e)). The
    machine is shared: a step that failed while other work took a good part of it says
    little about the server, so it runs once more and that result is kept. rest() runs
    after each step, rest_retry() (default rest) before a rerun. Fills results["max_steps"],
    ["max_clean_rate"], ["max_search_capped"] and ["max_search_cut"]."""
    rest_retry = rest_retry or rest
    deadline = time.monotonic() + budget
    cut, step = False, 0
    while any(search[srv[key]].next_rate() is not None for srv in srvs):
        if time.monotonic() > deadline:
            cut = True
            log("  max  time budget of %d s spent: the search stops here" % budget)
            break
        step += 1
        for srv in list(srvs):
            name = srv[key]
            rate = search[name].next_rate()
            if rate is None:
                continue
            tag = "max-%s-s%02d-%d" % (name, step, rate)
            try:
                r = run_step(srv, rate, tag)
                if not r["clean"] and (r["other_cores"] or 0) > OTHER_LOAD_RETRY:
                    log("  max  %-*s %6d/s: unclean while other work used %s, once more"
                        % (width, name, rate, fmt_cores(r["other_cores"])))
                    r["superseded"] = True
                    results["max_steps"].append(r)
                    rest_retry()
                    r = run_step(srv, rate, tag + "-again")
            except failures as e:
                drop(srv, e)
                continue
            results["max_steps"].append(r)
            log("  max  %-*s %6d/s: %s %s" % (width, name, rate, "clean  " if r["clean"] else "UNCLEAN", describe(r)))
            rest()
            search[name].record(rate, r["clean"])
    failed = results.get("failed", {})
    results["max_clean_rate"] = {n: s.best for n, s in search.items() if n not in failed}
    results["max_search_capped"] = {n: s.capped for n, s in search.items() if n not in failed}
    results["max_search_cut"] = cut


def max_phase(args, srvs, results):
    search = {srv["name"]: RateSearch(args.steps, args.bisect_rounds, args.resolution) for srv in srvs}
    max_search(srvs, "name", search, args.max_budget,
               lambda srv, rate, tag: run_sipp(args, srv, rate, args.step_seconds, tag),
               lambda r: (" achieved %.0f/s  ok %d/%d fail %d retr %d  %.2f us/req  drops server %d sipp %d  "
                          "other load %s" % (r["achieved_rate"], r["successful"], r["calls"], r["failed"],
                                             r["retransmissions"], r["us_per_req"], r["server_socket_drops"],
                                             r["sipp_socket_drops"], fmt_cores(r["other_cores"]))),
               results, lambda: settle(srvs))


# ------------------------------------------------------------------------------------------
# calls mode: the stateful proxy call flow (SIPp uac -> server -> SIPp uas: INVITE, 180, 200,
# ACK, BYE, 200) through lunasip (bench/proxy/), Kamailio in its native configuration
# language (bench/kamailio/proxy.cfg) and Kamailio routing in Lua through app_lua
# (bench/kamailio/proxy-lua.cfg + proxy.lua). Same scenario files for all three
# (bench/call_uac.xml, bench/call_uas.xml), same offered rate in one run, repetitions
# interleaved A B C A B C, medians.

CALL_SERVERS = ("lunasip", "kamailio", "kamailio-lua")
CALL_UAC = os.path.join(HERE, "call_uac.xml")
CALL_UAS = os.path.join(HERE, "call_uas.xml")
PROXY_DIR = os.path.join(HERE, "proxy")
KAMAILIO_DIR = os.path.join(HERE, "kamailio")


class ServerFailed(Exception):
    """The server under test could not do the job (did not start, died, or could not proxy a
    call). The other servers go on; the report says n/a with this reason."""


def fill(template_path, values, out_path):
    with open(template_path) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


def port_bound(port):
    return port in udp_sockets()


def wait_port(port, proc, seconds, what):
    """Waits until something binds udp 127.0.0.1:port; proc must stay alive meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_bound(port):
            return True
        time.sleep(0.05)
    return False


def log_excerpt(path, limit=3):
    """The first error-looking lines of a server log, for the failure reason."""
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f]
    except OSError:
        return ""
    keys = ("error", "Error", "ERROR", "CRITICAL", "fatal", "panic", "traceback", "attempt to")
    hits = [l for l in lines if any(k in l for k in keys)]
    pick = hits[:limit] if hits else lines[-limit:]
    return " | ".join(l[:200] for l in pick if l)


def start_call_server(args, name, argv, port, logpath, env=None, mode="wb"):
    logf = open(logpath, mode)
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env)
    logf.close()
    srv = {"name": name, "proc": p, "port": port, "argv": argv, "log": logpath, "env": env}
    started.append(srv)
    if not wait_port(port, p, 15, name):
        if p.poll() is not None:
            raise ServerFailed("%s exited at start (status %s): %s"
                               % (name, p.returncode, log_excerpt(logpath) or "see " + logpath))
        raise ServerFailed("%s did not bind udp:127.0.0.1:%d within 15 s (log %s)" % (name, port, logpath))
    time.sleep(0.7)  # let every worker of a forking server settle
    if p.poll() is not None:
        raise ServerFailed("%s exited at start (status %s): %s"
                           % (name, p.returncode, log_excerpt(logpath) or "see " + logpath))
    srv["pids"] = [p.pid] + children_of(p.pid)
    return srv


def call_server_pids(srv):
    if srv["proc"].poll() is not None:
        raise ServerFailed("%s died during the benchmark (status %s): %s"
                           % (srv["name"], srv["proc"].returncode, log_excerpt(srv["log"]) or "see " + srv["log"]))
    return [srv["proc"].pid] + children_of(srv["proc"].pid)


def stop_server(srv):
    p = srv["proc"]
    kids = children_of(p.pid) if p.poll() is None else []
    stop(p)
    for k in kids:
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if srv in started:
        started.remove(srv)


def restart_call_server(args, srv):
    """A fresh instance on the same port: an overloaded step leaves thousands of transactions
    behind (Kamailio's tm retransmits them for up to 30 s), which must not weigh on the next
    step. Updates srv in place."""
    stop_server(srv)
    with open(srv["log"], "ab") as f:
        f.write(b"\n-- restarted by the bench after an unclean step --\n")
    new = start_call_server(args, srv["name"], srv["argv"], srv["port"], srv["log"], srv["env"], mode="ab")
    for k in ("proc", "pids"):
        srv[k] = new[k]
    started.remove(new)
    started.append(srv)


def wait_idle(srv, limit=15.0):
    """Waits (up to limit s) until the server uses less than 3% of a core: whatever the last
    step left behind is done before the next one starts."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pids = call_server_pids(srv)
        a = cpu_ns(pids)
        time.sleep(0.3)
        if cpu_ns(pids) - a < 0.03 * 0.3e9:
            return True
    return False


def wait_rusage(p, timeout):
    """Waits for p (ours) up to timeout s; returns (exit code, rusage) or (None, None)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.05)


def stat_int(st, key):
    try:
        return int(st.get(key, 0))
    except (TypeError, ValueError):
        return 0


def run_calls(args, srv, rate, ncalls, tag):
    """One run: a fresh SIPp UAS behind srv, then the SIPp UAC offering `ncalls` calls at
    `rate` calls/s through srv. Returns both SIPp's counters, their CPU time, and the server's
    CPU time from the UAC's start to its end (every call of the run is complete by then)."""
    d = args.sipp_dir
    files = {k: os.path.join(d, "%s.%s" % (tag, k)) for k in
             ("uac.csv", "uas.csv", "uac.err", "uas.err", "uac.screen", "uas.screen")}
    for pth in files.values():
        if os.path.exists(pth):
            os.unlink(pth)
    expect = ncalls / float(rate)
    # A call that gets no answer fails after recv_timeout; the whole run is bounded anyway.
    common = ["-i", "127.0.0.1", "-t", "u1", "-buff_size", "4194304", "-nostdin",
              "-recv_timeout", "10000", "-trace_stat", "-fd", "1", "-trace_screen", "-trace_err"]
    uas_argv = (["sipp", "-sf", CALL_UAS, "-p", str(srv["uas_port"])] + common +
                ["-timeout", "%ds" % int(expect + 60), "-stf", files["uas.csv"],
                 "-screen_file", files["uas.screen"], "-error_file", files["uas.err"]])
    uac_argv = (["sipp", "127.0.0.1:%d" % srv["port"], "-sf", CALL_UAC, "-p", str(srv["uac_port"]),
                 "-r", str(rate), "-rp", "1000", "-m", str(ncalls), "-l", "15000"] + common +
                ["-timeout", "%ds" % int(expect + 30), "-stf", files["uac.csv"],
                 "-screen_file", files["uac.screen"], "-error_file", files["uac.err"]])
    pids = call_server_pids(srv)
    try:
        log_at = os.path.getsize(srv["log"])
    except OSError:
        log_at = 0
    uas = subprocess.Popen(uas_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    uas_rec = {"name": "sipp-uas", "proc": uas}
    started.append(uas_rec)
    uac = None
    try:
        if not wait_port(srv["uas_port"], uas, 10, "sipp uas"):
            raise SystemExit("SIPp UAS did not start on udp:127.0.0.1:%d (exit %s); see %s"
                             % (srv["uas_port"], uas.poll(), files["uas.err"]))
        net0, sock0, mach0 = net_counters(), udp_sockets(), machine_cpu_ns()
        before = cpu_ns(pids)
        t0 = time.monotonic()
        uac = subprocess.Popen(uac_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        started.append({"name": "sipp-uac", "proc": uac})
        drops = {"uac": 0, "uas": 0}
        rxq = {"uac": 0, "uas": 0, "server": 0}
        while True:
            pid, status, uac_ru = os.wait4(uac.pid, os.WNOHANG)
            if pid:
                break
            socks = udp_sockets()
            for k, port in (("uac", srv["uac_port"]), ("uas", srv["uas_port"]), ("server", srv["port"])):
                if port in socks:
                    rxq[k] = max(rxq[k], socks[port][0])
                    if k != "server":
                        drops[k] = socks[port][1]  # their sockets die with them: read while alive
            time.sleep(0.2)
        uac.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        alive = srv["proc"].poll() is None
        after = cpu_ns(pids + [c for c in children_of(srv["proc"].pid) if c not in pids]) if alive else None
        net1, sock1, mach1 = net_counters(), udp_sockets(), machine_cpu_ns()
        time.sleep(0.5)  # the UAS takes the last ACK/200 of a BYE-first call
        socks = udp_sockets()
        if srv["uas_port"] in socks:
            drops["uas"] = socks[srv["uas_port"]][1]
        if uas.poll() is None:
            uas.send_signal(signal.SIGINT)  # SIPp writes its final statistics and exits
        uas_rc, uas_ru = wait_rusage(uas, 10)
        if uas_rc is None:
            uas.kill()
            uas_rc, uas_ru = wait_rusage(uas, 5)
    finally:
        for rec in list(started):
            if rec is uas_rec or (uac is not None and rec.get("proc") is uac):
                if rec["proc"].poll() is None:
                    stop(rec["proc"])
                started.remove(rec)
    if not alive:
        call_server_pids(srv)  # raises ServerFailed with the reason
    st = parse_stat(files["uac.csv"])
    sa = parse_stat(files["uas.csv"]) if os.path.exists(files["uas.csv"]) else None
    if st is None:
        raise SystemExit("SIPp UAC wrote no statistics (exit %d); see %s" % (uac.returncode, files["uac.err"]))
    sa = sa or {}
    ok = stat_int(st, "SuccessfulCall(C)")
    elapsed = epoch(st["CurrentTime"]) - epoch(st["StartTime"])
    res = {
        "server": srv["name"], "rate": rate, "calls": ncalls, "tag": tag,
        "successful": ok, "failed": stat_int(st, "FailedCall(C)"),
        "retransmissions": stat_int(st, "Retransmissions(C)"),
        "unexpected": stat_int(st, "FailedUnexpectedMessage(C)"),
        "timeouts": stat_int(st, "FailedCallTimeout(C)") if "FailedCallTimeout(C)" in st else None,
        "out_of_call": stat_int(st, "OutOfCallMsgs(C)"),
        "uas_successful": stat_int(sa, "SuccessfulCall(C)"), "uas_failed": stat_int(sa, "FailedCall(C)"),
        "uas_retransmissions": stat_int(sa, "Retransmissions(C)"),
        "uas_unexpected": stat_int(sa, "FailedUnexpectedMessage(C)"),
        "uas_out_of_call": stat_int(sa, "OutOfCallMsgs(C)"),
        "uas_stats": bool(sa), "elapsed_s": elapsed, "wall_s": wall,
        "achieved_rate": ok / elapsed if elapsed > 0 else 0.0,
        "server_cpu_ns": after - before,
        "uac_cpu_ns": int((uac_ru.ru_utime + uac_ru.ru_stime) * 1e9),
        "uas_cpu_ns": int((uas_ru.ru_utime + uas_ru.ru_stime) * 1e9) if uas_ru else None,
        "uac_exit": uac.returncode, "uas_exit": uas_rc, "server_pids": len(pids),
        "server_socket_drops": sock1.get(srv["port"], (0, 0))[1] - sock0.get(srv["port"], (0, 0))[1],
        "uac_socket_drops": drops["uac"], "uas_socket_drops": drops["uas"],
        "server_rxq_max": rxq["server"], "uac_rxq_max": rxq["uac"], "uas_rxq_max": rxq["uas"],
        "udp_rcvbuf_errors": net1["udp_rcvbuf_errors"] - net0["udp_rcvbuf_errors"],
        "softnet_drops": net1["softnet_drops"] - net0["softnet_drops"],
        "stat_files": [files["uac.csv"], files["uas.csv"]],
    }
    res["sipp_drops"] = res["uac_socket_drops"] + res["uas_socket_drops"]
    res["server_log_errors"], res["server_out_of_memory"] = log_errors(srv["log"], log_at)
    res["other_cores"] = (((mach1 - mach0) - res["server_cpu_ns"] - res["uac_cpu_ns"] - (res["uas_cpu_ns"] or 0))
                          / 1e9 / wall if mach0 is not None and mach1 is not None else None)
    res["us_per_call"] = res["server_cpu_ns"] / 1e3 / ok if ok else float("nan")
    res["server_over_uac"] = res["server_cpu_ns"] / res["uac_cpu_ns"] if res["uac_cpu_ns"] else float("nan")
    res["clean"] = (res["failed"] == 0 and res["uas_failed"] == 0 and ok == ncalls
                    and res["uas_successful"] == ncalls
                    and res["retransmissions"] == 0 and res["uas_retransmissions"] == 0
                    and res["achieved_rate"] >= 0.95 * rate)
    return res


def log_errors(path, offset):
    """(error lines, out-of-memory lines) the server logged from offset on: why a step failed
    is often there (Kamailio: "out of mem", "could not allocate shared memory")."""
    errors = oom = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f:
                low = line.lower()
                if b"error" in low or b"critical" in low:
                    errors += 1
                if b"out of mem" in low or b"could not allocate shared memory" in low:
                    oom += 1
    except OSError:
        pass
    return errors, oom


def call_line(r):
    return ("ok %d/%d fail %d/%d retr %d/%d (uac/uas)  %.0f/s  %.1f us/call  server/UAC %.2f  drops srv %d sipp %d  "
            "other load %s" % (r["successful"], r["calls"], r["failed"], r["uas_failed"], r["retransmissions"],
                               r["uas_retransmissions"], r["achieved_rate"], r["us_per_call"], r["server_over_uac"],
                               r["server_socket_drops"], r["sipp_drops"], fmt_cores(r["other_cores"]))
            + ("  server log: %d error lines, %d out of memory" % (r["server_log_errors"], r["server_out_of_memory"])
               if r["server_log_errors"] else ""))


def probe_calls(args, srv):
    """A handful of slow calls: can this server proxy a call at all?"""
    n = 10
    r = run_calls(args, srv, 20, n, "probe-%s" % srv["name"])
    log("  probe %-12s %s" % (srv["name"], call_line(r)))
    if r["successful"] != n or r["failed"] or r["uas_failed"]:
        why = log_excerpt(srv["log"])
        raise ServerFailed("%d of %d probe calls completed (uac failed %d, unexpected %d; uas got %d, failed %d)%s"
                           % (r["successful"], n, r["failed"], r["unexpected"], r["uas_successful"],
                              r["uas_failed"], "; log: " + why if why else ""))
    return r


def calls_main(args):
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for n in names:
        if n not in CALL_SERVERS:
            raise SystemExit("sip_bench: unknown server %r (known: %s)" % (n, ", ".join(CALL_SERVERS)))
    if args.quick:
        ncalls, reps, args.cpu_rate = args.calls or 2000, 1, 500
        steps, step_seconds, rounds, budget = [1000, 4000, 8000], 2, 1, 90
    else:
        ncalls, reps, args.cpu_rate = args.calls or 10000, 3, 500
        steps = [1000, 2000, 4000, 6000, 8000, 10000, 12000, 15000]
        step_seconds, rounds, budget = 5, 3, 420
    resolution = 500

    need = ["sipp"] + ([args.kamailio] if any(n.startswith("kamailio") for n in names) else [])
    for tool in need:
        if not shutil.which(tool):
            raise SystemExit("sip_bench: %s not found (make bench installs it: scripts/deps.sh bench)" % tool)

    atexit.register(cleanup)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    cdir = os.path.join(args.out, "calls")
    shutil.rmtree(cdir, ignore_errors=True)
    os.makedirs(cdir)
    args.sipp_dir = os.path.join(cdir, "sipp")
    os.makedirs(args.sipp_dir)
    jpath = os.path.join(args.out, "calls.json")
    if os.path.exists(jpath):
        os.unlink(jpath)
    tmp = tempfile.mkdtemp(prefix="lunasip-bench-calls-")
    atexit.register(shutil.rmtree, tmp, True)

    kver = (subprocess.run([args.kamailio, "-v"], capture_output=True, text=True).stdout.splitlines()
            if shutil.which(args.kamailio) else [])
    sver = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    kargv0 = [args.kamailio, "-DD", "-E", "-m", "1024", "-M", "16", "-x", "fm", "-X", "fm", "-f"]
    results = {
        "host": {"nproc": os.cpu_count(), "kernel": os.uname().release},
        "kamailio_version": kver[0] if kver else "?", "sipp_version": " ".join(sver[:1]),
        "kamailio_children": args.kamailio_children, "servers": names,
        "cpu_rate": args.cpu_rate, "cpu_calls": ncalls, "cpu_reps": reps,
        "step_seconds": step_seconds, "steps_tried": steps, "max_budget_s": budget,
        "failed": {}, "argv": {}, "processes": {}, "probe": [], "cpu": [], "max_steps": [],
        "quick": bool(args.quick),
    }
    taken = set()
    srvs = []
    for name in names:
        port, uas_port, uac_port = free_udp_port(taken), free_udp_port(taken), free_udp_port(taken)
        logpath = os.path.join(cdir, "%s.log" % name)
        try:
            env = None
            if name == "lunasip":
                if not os.access(args.lunasip, os.X_OK):
                    raise ServerFailed("%s is not an executable" % args.lunasip)
                ldir = os.path.join(tmp, "lunasip")
                os.makedirs(ldir)
                for fn in ("proxies.conf", "server.lua"):
                    shutil.copy(os.path.join(PROXY_DIR, fn), os.path.join(ldir, fn))
                fill(os.path.join(PROXY_DIR, "lunasip.conf"), {"PORT": port}, os.path.join(ldir, "lunasip.conf"))
                for fn in ("lunasip.conf", "proxies.conf", "server.lua"):
                    shutil.copy(os.path.join(ldir, fn), os.path.join(cdir, "lunasip-" + fn))
                env = dict(os.environ, LUNASIP_BENCH_UAS_IP="127.0.0.1", LUNASIP_BENCH_UAS_PORT=str(uas_port))
                argv = [os.path.abspath(args.lunasip), "-c", ldir, "--foreground", "-l", "warn"]
            else:
                vals = {"PORT": port, "CHILDREN": args.kamailio_children, "MPATH": KAMAILIO_MODULES,
                        "UAS_URI": "sip:127.0.0.1:%d;transport=udp" % uas_port}
                if name == "kamailio":
                    cfg = fill(os.path.join(KAMAILIO_DIR, "proxy.cfg"), vals, os.path.join(cdir, "kamailio.cfg"))
                else:
                    if not os.path.exists(os.path.join(KAMAILIO_MODULES, "app_lua.so")):
                        raise ServerFailed("app_lua.so missing (Debian kamailio-lua-modules)")
                    vals["LUA"] = os.path.abspath(os.path.join(cdir, "kamailio-lua.lua"))
                    fill(os.path.join(KAMAILIO_DIR, "proxy.lua"), vals, vals["LUA"])
                    cfg = fill(os.path.join(KAMAILIO_DIR, "proxy-lua.cfg"), vals, os.path.join(cdir, "kamailio-lua.cfg"))
                argv = kargv0 + [os.path.abspath(cfg)]
            results["argv"][name] = argv
            srv = start_call_server(args, name, argv, port, logpath, env)
            srv["uas_port"], srv["uac_port"] = uas_port, uac_port
            results["processes"][name] = len(srv["pids"])
            log("  %-12s pid %d on udp:127.0.0.1:%d, %d process(es); UAS on %d, UAC on %d"
                % (name, srv["proc"].pid, port, len(srv["pids"]), uas_port, uac_port))
            results["probe"].append(probe_calls(args, srv))
            srvs.append(srv)
        except ServerFailed as e:
            results["failed"][name] = str(e)
            log("  %-12s n/a (%s run failed: %s)" % (name, name, e))
            for s in [x for x in started if x.get("name") == name]:
                stop_server(s)
        time.sleep(0.5)

    def drop(srv, e):
        results["failed"][srv["name"]] = str(e)
        log("  %-12s n/a (%s run failed: %s)" % (srv["name"], srv["name"], e))
        stop_server(srv)
        srvs.remove(srv)

    t0 = time.monotonic()
    # CPU per call at a fixed rate, interleaved A B C A B C ...
    for rep in range(1, reps + 1):
        for srv in list(srvs):
            try:
                wait_idle(srv)
                r = run_calls(args, srv, args.cpu_rate, ncalls, "cpu-%s-%d-r%d" % (srv["name"], args.cpu_rate, rep))
            except ServerFailed as e:
                drop(srv, e)
                continue
            r["rep"] = rep
            results["cpu"].append(r)
            log("  cpu  %-12s %5d/s rep %d: %s" % (srv["name"], args.cpu_rate, rep, call_line(r)))
            if r["successful"] == 0:
                drop(srv, ServerFailed("no call completed at %d calls/s" % args.cpu_rate))
                continue
            time.sleep(1.0)

    # The highest clean rate: steps, then bisection; one step of each server per round.
    def call_step(srv, rate, tag):
        wait_idle(srv)
        r = run_calls(args, srv, rate, int(rate * step_seconds), tag)
        if not r["clean"]:
            restart_call_server(args, srv)
        return r

    if not args.no_max:
        search = {srv["name"]: RateSearch(steps, rounds, resolution) for srv in srvs}
        max_search(srvs, "name", search, budget, call_step, call_line, results, lambda: time.sleep(1.0),
                   drop=drop, failures=ServerFailed, width=12)
    results["wall_s"] = time.monotonic() - t0

    summary = {}
    for name in names:
        if name in results["failed"]:
            continue
        rs = [r for r in results["cpu"] if r["server"] == name]
        if not rs:
            continue
        summary[name] = {
            "us_per_call": statistics.median(r["us_per_call"] for r in rs),
            "server_over_uac": statistics.median(r["server_over_uac"] for r in rs),
            "uac_us_per_call": statistics.median(r["uac_cpu_ns"] / 1e3 / r["successful"] for r in rs),
            "all_clean": all(r["clean"] for r in rs), "reps": len(rs),
        }
    results["summary"] = summary
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1)
    for srv in list(srvs):
        stop_server(srv)
    cleanup()
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=("options", "calls"), default="options",
                    help="options: OPTIONS answered (default); calls: the stateful call flow")
    ap.add_argument("--servers", default=",".join(CALL_SERVERS),
                    help="calls mode: which servers, comma-separated, out of %s" % ",".join(CALL_SERVERS))
    ap.add_argument("--lunasip", default="./lunasip")
    ap.add_argument("--kamailio", default="kamailio")
    ap.add_argument("--kamailio-children", type=int, default=2)
    ap.add_argument("--calls", type=int, default=None, help="calls mode: calls per CPU run (default 10000)")
    ap.add_argument("--no-max", action="store_true", help="calls mode: skip the highest-clean-rate search")
    ap.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    args = ap.parse_args()
    if args.mode == "calls":
        return calls_main(args)
    return options_main(args)


def options_main(args):
    if args.quick:
        args.cpu_rates, args.cpu_reps, args.cpu_seconds = [2000, 10000], 1, 3
        args.steps, args.step_seconds, args.bisect_rounds = [5000, 20000, 40000, 50000], 2, 1
        args.max_budget = 60
    else:
        args.cpu_rates, args.cpu_reps, args.cpu_seconds = [2000, 10000], 5, 10
        args.steps = [5000, 10000, 20000, 30000, 40000, 50000, 60000, 70000, 80000, 100000]
        args.step_seconds, args.bisect_rounds = 5, 4
        args.max_budget = 240  # keeps make bench under ~10 minutes on a busy machine
    args.resolution = 1000

    for tool in ("sipp", args.kamailio):
        if not shutil.which(tool):
            raise SystemExit("sip_bench: %s not found (make bench installs it: scripts/deps.sh bench)" % tool)
    if not os.access(args.lunasip, os.X_OK):
        raise SystemExit("sip_bench: %s is not an executable" % args.lunasip)

    atexit.register(cleanup)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    os.makedirs(args.out, exist_ok=True)
    args.sipp_dir = os.path.join(args.out, "sipp")
    shutil.rmtree(args.sipp_dir, ignore_errors=True)
    os.makedirs(args.sipp_dir)
    tmp = tempfile.mkdtemp(prefix="lunasip-bench-")
    atexit.register(shutil.rmtree, tmp, True)

    taken = set()
    lport, kport, args.sipp_port = free_udp_port(taken), free_udp_port(taken), free_udp_port(taken)

    ldir = os.path.join(tmp, "lunasip")
    os.makedirs(ldir)
    with open(os.path.join(ldir, "lunasip.conf"), "w") as f:
        f.write(LUNASIP_CONF % {"port": lport})
    with open(os.path.join(ldir, "server.lua"), "w") as f:
        f.write(SERVER_LUA)
    kcfg = os.path.join(tmp, "kamailio.cfg")
    with open(kcfg, "w") as f:
        f.write(KAMAILIO_CFG % {"port": kport, "children": args.kamailio_children, "mpath": KAMAILIO_MODULES})
    # keep the exact configurations next to the numbers
    for src, dst in ((os.path.join(ldir, "lunasip.conf"), "lunasip.conf"),
                     (os.path.join(ldir, "server.lua"), "server.lua"), (kcfg, "kamailio.cfg")):
        shutil.copy(src, os.path.join(args.out, dst))

    kver = subprocess.run([args.kamailio, "-v"], capture_output=True, text=True).stdout.splitlines()
    sver = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    lsrv = start_server("lunasip", [os.path.abspath(args.lunasip), "-c", ldir, "--foreground", "-l", "warn"],
                        lport, os.path.join(args.out, "lunasip.log"))
    kargv = [args.kamailio, "-DD", "-E", "-m", "1024", "-M", "16", "-x", "fm", "-X", "fm", "-f", kcfg]
    ksrv = start_server("kamailio", kargv, kport, os.path.join(args.out, "kamailio.log"))
    srvs = [lsrv, ksrv]
    log("  lunasip  pid %d on udp:127.0.0.1:%d, %d process(es)" % (lsrv["proc"].pid, lport, len(lsrv["pids"])))
    log("  kamailio pid %d on udp:127.0.0.1:%d, %d process(es), children=%d"
        % (ksrv["proc"].pid, kport, len(ksrv["pids"]), args.kamailio_children))

    results = {
        "host": {"nproc": os.cpu_count(), "kernel": os.uname().release},
        "kamailio_version": kver[0] if kver else "?", "sipp_version": " ".join(sver[:1]),
        "kamailio_argv": kargv, "kamailio_children": args.kamailio_children,
        "lunasip_argv": lsrv["argv"], "lunasip_processes": len(lsrv["pids"]),
        "kamailio_processes": len(ksrv["pids"]),
        "cpu_rates": args.cpu_rates, "cpu_seconds": args.cpu_seconds, "cpu_reps": args.cpu_reps,
        "step_seconds": args.step_seconds, "steps_tried": args.steps, "cpu": [], "max_steps": [],
    }
    t0 = time.monotonic()
    cpu_phase(args, srvs, results)
    max_phase(args, srvs, results)
    results["wall_s"] = time.monotonic() - t0

    summary = {}
    for rate in args.cpu_rates:
        for srv in srvs:
            rs = [r for r in results["cpu"] if r["rate"] == rate and r["server"] == srv["name"]]
            summary["%s@%d" % (srv["name"], rate)] = {
                "us_per_req": statistics.median(r["us_per_req"] for r in rs),
                "server_over_sipp": statistics.median(r["server_over_sipp"] for r in rs),
                "all_clean": all(r["clean"] for r in rs),
                "reps": len(rs),
            }
    results["summary"] = summary
    with open(os.path.join(args.out, "options.json"), "w") as f:
        json.dump(results, f, indent=1)
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
