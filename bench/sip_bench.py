#!/usr/bin/env python3
"""OPTIONS answered over UDP: lunasip (from Lua) against Kamailio (sl_send_reply), driven by
SIPp with one scenario file for both, following /work/shared/BENCH.md: same offered rate in
the same run, repetitions interleaved (lunasip, kamailio, lunasip, ...), server CPU counted
exactly from se.sum_exec_runtime of every thread of every process of the instance, and the
highest clean rate found by stepping the rate and then bisecting.

Writes the raw numbers to OUT/options.json and SIPp's statistics of every run to
OUT/sipp/. Standard library only. Every process it starts is stopped by PID on exit.

usage: sip_bench.py --out DIR [--lunasip PATH] [--quick]
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


def free_udp_port(taken):
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in taken:
            taken.add(port)
            return port


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


def max_phase(args, srvs, results):
    search = {srv["name"]: RateSearch(args.steps, args.bisect_rounds, args.resolution) for srv in srvs}
    deadline = time.monotonic() + args.max_budget
    step = 0
    cut = False
    while any(s.next_rate() is not None for s in search.values()):
        if time.monotonic() > deadline:
            cut = True
            log("  max  time budget of %d s spent: the search stops here" % args.max_budget)
            break
        step += 1
        for srv in srvs:  # interleaved: one step of each server per round
            name = srv["name"]
            rate = search[name].next_rate()
            if rate is None:
                continue
            r = run_sipp(args, srv, rate, args.step_seconds, "max-%s-s%02d-%d" % (name, step, rate))
            if not r["clean"] and (r["other_cores"] or 0) > OTHER_LOAD_RETRY:
                # The machine is shared: a step that failed while other work took a good part
                # of it says little about the server. Run it once more and keep that result.
                log("  max  %-9s %6d/s: unclean while other work used %s, once more"
                    % (name, rate, fmt_cores(r["other_cores"])))
                r["superseded"] = True
                results["max_steps"].append(r)
                settle(srvs)
                r = run_sipp(args, srv, rate, args.step_seconds, "max-%s-s%02d-%d-again" % (name, step, rate))
            results["max_steps"].append(r)
            log("  max  %-9s %6d/s: %s  achieved %.0f/s  ok %d/%d fail %d retr %d  %.2f us/req  "
                "drops server %d sipp %d  other load %s"
                % (name, rate, "clean  " if r["clean"] else "UNCLEAN", r["achieved_rate"], r["successful"],
                   r["calls"], r["failed"], r["retransmissions"], r["us_per_req"], r["server_socket_drops"],
                   r["sipp_socket_drops"], fmt_cores(r["other_cores"])))
            settle(srvs)
            search[name].record(rate, r["clean"])
    results["max_clean_rate"] = {n: s.best for n, s in search.items()}
    results["max_search_capped"] = {n: s.capped for n, s in search.items()}
    results["max_search_cut"] = cut


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lunasip", default="./lunasip")
    ap.add_argument("--kamailio", default="kamailio")
    ap.add_argument("--kamailio-children", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    args = ap.parse_args()

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
