#!/usr/bin/env python3
"""The stream-transport part of `make bench` (part 5), following /work/shared/BENCH.md.

Part "calls": the call flow of the UDP call benchmark (sip_bench.py --mode calls: SIPp uac ->
proxy -> SIPp uas, INVITE 180 200 ACK BYE 200, the same scenario files call_uac.xml and
call_uas.xml) over TCP on both legs, through lunasip (bench/streams/lunasip-calls.conf,
server-calls.lua: proxy:route(req, ip, port, "tcp") with do_record_routing) and Kamailio
(bench/kamailio/proxy-tcp.cfg: record_route(); t_relay() on a tcp: listener). SIPp's UAS
listens with -t t1 (the proxy connects to it once and reuses the connection); the UAC runs
with -t t1 (one connection carrying every call, a trunk or an SBC in front of the proxy) for
the CPU figure and the rate search, and with -t tn (one connection per call, a phone per call)
for a second CPU figure. CPU per call at 500 calls/s, servers interleaved, 3 runs, medians;
the highest clean call rate, stepped then bisected.

Part "msgs": OPTIONS answered from Lua (bench/streams/server-msgs.lua, req:reply(200)) over
tcp:, tls:, ws: and wss: listeners of one lunasip, driven by bench/streams/streamload.c
(epoll, N connections, W requests in flight per connection, masked WebSocket frames with
Sec-WebSocket-Protocol: sip, mbedTLS for TLS); Kamailio answering with sl_send_reply over TCP
(bench/kamailio/options-tcp.cfg) is the peer for the tcp column. Per target: the highest
throughput (a window of W per connection, as fast as answers come back) and the CPU per
message at a fixed 10,000 messages/s; targets interleaved, 3 runs, medians.

Part "tls": full TLS handshakes per second: K connections in parallel, each connects, does a
full handshake (no session id kept, no ticket: no resumption), sends one OPTIONS, reads the
200, sends close_notify and closes, then the next one; the same cycle without TLS (plain TCP)
beside it, so the handshake's own cost is the difference. lunasip only: Kamailio's tls module
is not installed by the bench's dependencies (Debian kamailio-tls-modules).

CPU is se.sum_exec_runtime of every thread of every process of the server (sip_bench.cpu_ns;
streamload reads the same counters at the edges of its window). Writes OUT/streams.json and,
in OUT/streams/, the configurations as run, the server logs, SIPp's statistics and
streamload's output. Every process it starts is stopped by PID. Standard library only.

usage: stream_bench.py --out DIR [--lunasip PATH] [--quick] [--parts calls,msgs,tls]
                       [--servers lunasip,kamailio] [--calls N] [--no-max]
"""
import argparse
import atexit
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

import sip_bench as sb

HERE = os.path.dirname(os.path.abspath(__file__))
SDIR = os.path.join(HERE, "streams")
KAMAILIO_DIR = os.path.join(HERE, "kamailio")
PROXY_DIR = os.path.join(HERE, "proxy")
CALL_SERVERS = ("lunasip", "kamailio")
PARTS = ("calls", "msgs", "tls")
# the message part's targets: (server, transport)
MSG_TARGETS = (("lunasip", "tcp"), ("kamailio", "tcp"), ("lunasip", "tls"), ("lunasip", "ws"), ("lunasip", "wss"))
# the TLS part's targets: (server, label, transport, streamload options). "tls": the client
# offers mbedTLS's whole curve list (secp521r1 among them, as OpenSSL's default list does);
# "tls-p256": it offers x25519 and secp256r1 only, so the handshake's key exchange is P-256 or
# X25519, whichever lunasip prefers; "tcp": the same cycle without TLS.
HS_TARGETS = (("lunasip", "tls", "tls", []), ("lunasip", "tls-p256", "tls", ["-g", "x25519,secp256r1"]),
              ("lunasip", "tcp", "tcp", []))

ServerFailed = sb.ServerFailed


def log(msg):
    print(msg, flush=True)


def free_tcp_port(taken):
    return sb.free_port(taken, socket.SOCK_STREAM)


# ------------------------------------------------------------------------------------------
# TCP plumbing


def tcp_listening():
    """The ports of the IPv4 TCP sockets listening on 127.0.0.1 (or 0.0.0.0)."""
    out = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fl = line.split()
                addr, port = fl[1].split(":")
                if fl[3] == "0A" and addr in ("0100007F", "00000000"):
                    out.add(int(port, 16))
    except OSError:
        pass
    return out


def wait_tcp(ports, proc, seconds):
    """Waits until every port listens; proc must stay alive meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if set(ports) <= tcp_listening():
            return True
        time.sleep(0.05)
    return False


def tcp_counters():
    """Host-wide TCP counters that tell of trouble: retransmitted segments, resets, accept
    queue overflows (loopback traffic only here, but the machine is shared)."""
    c = {}
    try:
        with open("/proc/net/snmp") as f:
            rows = [l.split() for l in f if l.startswith("Tcp:")]
        d = dict(zip(rows[0][1:], rows[1][1:]))
        for k in ("RetransSegs", "EstabResets", "AttemptFails", "OutRsts"):
            c[k] = int(d.get(k, 0))
        with open("/proc/net/netstat") as f:
            rows = [l.split() for l in f if l.startswith("TcpExt:")]
        d = dict(zip(rows[0][1:], rows[1][1:]))
        for k in ("ListenOverflows", "ListenDrops"):
            c[k] = int(d.get(k, 0))
    except (OSError, IndexError, ValueError):
        pass
    return c


def diff(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in b}


def start_server(args, name, argv, ports, logpath, env=None, mode="wb"):
    """Starts a server and waits until every port of ports listens (TCP). The record goes to
    sip_bench.started, so sip_bench's stop_server and cleanup stop it by PID."""
    logf = open(logpath, mode)
    p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    logf.close()
    srv = {"name": name, "proc": p, "port": ports[0], "ports": list(ports), "argv": argv, "log": logpath,
           "env": env}
    sb.started.append(srv)
    if not wait_tcp(ports, p, 20):
        if p.poll() is not None:
            raise ServerFailed("%s exited at start (status %s): %s"
                               % (name, p.returncode, sb.log_excerpt(logpath) or "see " + logpath))
        missing = sorted(set(ports) - tcp_listening())
        raise ServerFailed("%s does not listen on tcp 127.0.0.1:%s after 20 s: %s"
                           % (name, ",".join(map(str, missing)), sb.log_excerpt(logpath) or "see " + logpath))
    time.sleep(0.7)  # let every worker of a forking server settle
    if p.poll() is not None:
        raise ServerFailed("%s exited at start (status %s): %s"
                           % (name, p.returncode, sb.log_excerpt(logpath) or "see " + logpath))
    srv["pids"] = [p.pid] + sb.children_of(p.pid)
    return srv


def restart_server(args, srv):
    """A fresh instance on the same ports after an unclean step (as sip_bench.py's)."""
    sb.stop_server(srv)
    with open(srv["log"], "ab") as f:
        f.write(b"\n-- restarted by the bench after an unclean step --\n")
    new = start_server(args, srv["name"], srv["argv"], srv["ports"], srv["log"], srv["env"], mode="ab")
    for k in ("proc", "pids"):
        srv[k] = new[k]
    sb.started.remove(new)
    sb.started.append(srv)


def kamailio_argv(args, cfg):
    return [args.kamailio, "-DD", "-E", "-m", "1024", "-M", "16", "-x", "fm", "-X", "fm", "-f", os.path.abspath(cfg)]


# ------------------------------------------------------------------------------------------
# part "calls"


# -t tn runs: each from a source address of its own (127.0.0.20, .21, ...). SIPp binds every
# call's socket to its -i address before connect(); the kernel's search for a free port then
# walks the TIME_WAIT sockets the earlier connections left on that address (60 s each), and
# past ~20,000 of them SIPp spent 4-11 s of system time on 2,500 calls here (0.3 s on a fresh
# address), so a run would measure SIPp. Any 127.0.0.0/8 address is on the loopback interface.
TN_SOURCES = ["127.0.0.%d" % i for i in range(20, 250)]


def run_calls(args, srv, rate, ncalls, tag, uac_tp, src_ip="127.0.0.1"):
    """One run over TCP: a fresh SIPp UAS (-t t1) behind srv, then the SIPp UAC (-t uac_tp,
    from src_ip) offering ncalls calls at rate calls/s through srv. As sip_bench.run_calls,
    with TCP in place of UDP: no datagram to lose, no retransmission (SIPp retransmits over UDP
    only), so a server that falls behind shows as a lower achieved rate and late call setups."""
    d = args.sipp_dir
    files = {k: os.path.join(d, "%s.%s" % (tag, k)) for k in
             ("uac.csv", "uas.csv", "uac.err", "uas.err", "uac.screen", "uas.screen")}
    for pth in files.values():
        if os.path.exists(pth):
            os.unlink(pth)
    expect = ncalls / float(rate)
    # -l and -max_socket: with tn every open call holds a socket; their sum stays under the
    # open-file limit SIPp checks (it warns otherwise).
    common = ["-buff_size", "4194304", "-nostdin", "-recv_timeout", "10000",
              "-max_socket", "9500", "-trace_stat", "-fd", "1", "-trace_screen", "-trace_err"]
    uas_argv = (["sipp", "-sf", sb.CALL_UAS, "-i", "127.0.0.1", "-p", str(srv["uas_port"]), "-t", "t1"] + common +
                ["-timeout", "%ds" % int(expect + 60), "-stf", files["uas.csv"],
                 "-screen_file", files["uas.screen"], "-error_file", files["uas.err"]])
    uac_argv = (["sipp", "127.0.0.1:%d" % srv["port"], "-sf", sb.CALL_UAC, "-i", src_ip, "-p", str(srv["uac_port"]),
                 "-t", uac_tp, "-r", str(rate), "-rp", "1000", "-m", str(ncalls), "-l", "9000"] + common +
                ["-timeout", "%ds" % int(expect + 30), "-stf", files["uac.csv"],
                 "-screen_file", files["uac.screen"], "-error_file", files["uac.err"]])
    pids = sb.call_server_pids(srv)
    try:
        log_at = os.path.getsize(srv["log"])
    except OSError:
        log_at = 0
    uas = subprocess.Popen(uas_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    uas_rec = {"name": "sipp-uas", "proc": uas}
    sb.started.append(uas_rec)
    uac = None
    try:
        if not wait_tcp([srv["uas_port"]], uas, 10):
            raise SystemExit("SIPp UAS did not listen on tcp:127.0.0.1:%d (exit %s); see %s"
                             % (srv["uas_port"], uas.poll(), files["uas.err"]))
        tcp0, mach0 = tcp_counters(), sb.machine_cpu_ns()
        before = sb.cpu_ns(pids)
        t0 = time.monotonic()
        uac = subprocess.Popen(uac_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
        sb.started.append({"name": "sipp-uac", "proc": uac})
        while True:
            pid, status, uac_ru = os.wait4(uac.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        uac.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        alive = srv["proc"].poll() is None
        after = sb.cpu_ns(pids + [c for c in sb.children_of(srv["proc"].pid) if c not in pids]) if alive else None
        tcp1, mach1 = tcp_counters(), sb.machine_cpu_ns()
        time.sleep(0.5)  # the UAS takes the last ACK of a BYE-first call
        if uas.poll() is None:
            uas.send_signal(signal.SIGINT)  # SIPp writes its final statistics and exits
        uas_rc, uas_ru = sb.wait_rusage(uas, 10)
        if uas_rc is None:
            uas.kill()
            uas_rc, uas_ru = sb.wait_rusage(uas, 5)
    finally:
        for rec in list(sb.started):
            if rec is uas_rec or (uac is not None and rec.get("proc") is uac):
                if rec["proc"].poll() is None:
                    sb.stop(rec["proc"])
                sb.started.remove(rec)
    if not alive:
        sb.call_server_pids(srv)  # raises ServerFailed with the reason
    st = sb.parse_stat(files["uac.csv"])
    sa = sb.parse_stat(files["uas.csv"]) if os.path.exists(files["uas.csv"]) else None
    if st is None:
        raise SystemExit("SIPp UAC wrote no statistics (exit %d); see %s" % (uac.returncode, files["uac.err"]))
    sa = sa or {}
    ok = sb.stat_int(st, "SuccessfulCall(C)")
    elapsed = sb.epoch(st["CurrentTime"]) - sb.epoch(st["StartTime"])
    # call setup time (INVITE -> 200 at the UAC, SIPp's rtd "setup"), by SIPp's buckets (ms)
    buckets = {}
    for k, v in st.items():
        if k.startswith("ResponseTimeRepartitionsetup_"):
            buckets[k[len("ResponseTimeRepartitionsetup_"):]] = sb.stat_int(st, k)
    slow = buckets.get("<1000", 0) + buckets.get(">=1000", 0)  # set up in 500 ms or more
    res = {
        "server": srv["name"], "rate": rate, "calls": ncalls, "tag": tag, "uac_transport": uac_tp, "uac_ip": src_ip,
        "successful": ok, "failed": sb.stat_int(st, "FailedCall(C)"),
        "retransmissions": sb.stat_int(st, "Retransmissions(C)"),
        "unexpected": sb.stat_int(st, "FailedUnexpectedMessage(C)"),
        "out_of_call": sb.stat_int(st, "OutOfCallMsgs(C)"),
        "uas_successful": sb.stat_int(sa, "SuccessfulCall(C)"), "uas_failed": sb.stat_int(sa, "FailedCall(C)"),
        "uas_retransmissions": sb.stat_int(sa, "Retransmissions(C)"),
        "uas_unexpected": sb.stat_int(sa, "FailedUnexpectedMessage(C)"),
        "uas_out_of_call": sb.stat_int(sa, "OutOfCallMsgs(C)"),
        "uas_stats": bool(sa), "elapsed_s": elapsed, "wall_s": wall,
        "achieved_rate": ok / elapsed if elapsed > 0 else 0.0,
        "setup_ms_buckets": buckets, "setup_500ms_or_more": slow,
        "server_cpu_ns": after - before,
        "uac_cpu_ns": int((uac_ru.ru_utime + uac_ru.ru_stime) * 1e9),
        "uas_cpu_ns": int((uas_ru.ru_utime + uas_ru.ru_stime) * 1e9) if uas_ru else None,
        "uac_exit": uac.returncode, "uas_exit": uas_rc, "server_pids": len(pids),
        "tcp": diff(tcp0, tcp1), "stat_files": [files["uac.csv"], files["uas.csv"]],
    }
    res["server_log_errors"], res["server_out_of_memory"] = sb.log_errors(srv["log"], log_at)
    res["other_cores"] = (((mach1 - mach0) - res["server_cpu_ns"] - res["uac_cpu_ns"] - (res["uas_cpu_ns"] or 0))
                          / 1e9 / wall if mach0 is not None and mach1 is not None else None)
    res["us_per_call"] = res["server_cpu_ns"] / 1e3 / ok if ok else float("nan")
    res["server_over_uac"] = res["server_cpu_ns"] / res["uac_cpu_ns"] if res["uac_cpu_ns"] else float("nan")
    # BENCH.md's clean step; over TCP nothing is retransmitted, so a call whose INVITE waited
    # 500 ms or more for its 200 (where UDP would have retransmitted it) makes the step unclean
    res["clean"] = (res["failed"] == 0 and res["uas_failed"] == 0 and ok == ncalls
                    and res["uas_successful"] == ncalls
                    and res["retransmissions"] == 0 and res["uas_retransmissions"] == 0
                    and slow == 0 and res["achieved_rate"] >= 0.95 * rate)
    return res


def call_line(r):
    return ("ok %d/%d fail %d/%d (uac/uas)  %.0f/s  %.1f us/call  server/UAC %.2f  setup>=500ms %d  "
            "tcp retrans %d  other load %s"
            % (r["successful"], r["calls"], r["failed"], r["uas_failed"], r["achieved_rate"], r["us_per_call"],
               r["server_over_uac"], r["setup_500ms_or_more"], r["tcp"].get("RetransSegs", 0),
               sb.fmt_cores(r["other_cores"]))
            + ("  server log: %d error lines" % r["server_log_errors"] if r["server_log_errors"] else ""))


def calls_part(args, results, tmp):
    names = [n for n in args.servers if n in CALL_SERVERS]
    # calls per CPU run for each UAC mode: tn runs are shorter (their connections are the
    # expensive part of the UAC) and come after the t1 runs
    if args.quick:
        ncalls, reps, rate = {"t1": args.calls or 1500, "tn": args.calls or 1000}, 1, 500
        steps, step_seconds, rounds, budget = [1000, 4000], 2, 1, 40
    else:
        ncalls, reps, rate = {"t1": args.calls or 4000, "tn": args.calls or 2500}, 3, 500
        steps = [2000, 4000, 6000, 8000, 10000, 12000, 15000, 18000, 21000]
        step_seconds, rounds, budget = 3, 2, 120
    resolution = 500
    modes = ["t1", "tn"]
    cdir = os.path.join(args.sdir, "calls")
    os.makedirs(cdir)
    args.sipp_dir = os.path.join(cdir, "sipp")
    os.makedirs(args.sipp_dir)
    r = {"servers": names, "failed": {}, "argv": {}, "processes": {}, "probe": [], "cpu": [], "max_steps": [],
         "cpu_rate": rate, "cpu_calls": ncalls, "cpu_reps": reps, "uac_modes": modes, "step_seconds": step_seconds,
         "steps_tried": steps, "max_budget_s": budget, "resolution": resolution}
    results["calls"] = r
    if not shutil.which("sipp"):
        for n in names:
            r["failed"][n] = "sipp not found"
        return
    taken = args.taken
    srvs = []
    for name in names:
        port, uas_port, uac_port = free_tcp_port(taken), free_tcp_port(taken), free_tcp_port(taken)
        logpath = os.path.join(cdir, "%s.log" % name)
        try:
            env = None
            if name == "lunasip":
                if not os.access(args.lunasip, os.X_OK):
                    raise ServerFailed("%s is not an executable" % args.lunasip)
                ldir = os.path.join(tmp, "lunasip-calls")
                os.makedirs(ldir)
                shutil.copy(os.path.join(PROXY_DIR, "proxies.conf"), os.path.join(ldir, "proxies.conf"))
                shutil.copy(os.path.join(SDIR, "server-calls.lua"), os.path.join(ldir, "server.lua"))
                sb.fill(os.path.join(SDIR, "lunasip-calls.conf"), {"PORT": port}, os.path.join(ldir, "lunasip.conf"))
                for fn in ("lunasip.conf", "proxies.conf", "server.lua"):
                    shutil.copy(os.path.join(ldir, fn), os.path.join(cdir, "lunasip-" + fn))
                env = dict(os.environ, LUNASIP_BENCH_UAS_IP="127.0.0.1", LUNASIP_BENCH_UAS_PORT=str(uas_port))
                argv = [os.path.abspath(args.lunasip), "-c", ldir, "--foreground", "-l", "warn"]
            else:
                if not shutil.which(args.kamailio):
                    raise ServerFailed("%s not found" % args.kamailio)
                vals = {"PORT": port, "CHILDREN": args.kamailio_children, "MPATH": sb.KAMAILIO_MODULES,
                        "UAS_URI": "sip:127.0.0.1:%d;transport=tcp" % uas_port}
                cfg = sb.fill(os.path.join(KAMAILIO_DIR, "proxy-tcp.cfg"), vals, os.path.join(cdir, "kamailio.cfg"))
                argv = kamailio_argv(args, cfg)
            r["argv"][name] = argv
            srv = start_server(args, name, argv, [port], logpath, env)
            srv["uas_port"], srv["uac_port"] = uas_port, uac_port
            r["processes"][name] = len(srv["pids"])
            log("  %-9s pid %d on tcp:127.0.0.1:%d, %d process(es); UAS on %d"
                % (name, srv["proc"].pid, port, len(srv["pids"]), uas_port))
            pr = run_calls(args, srv, 20, 10, "probe-%s" % name, "t1")
            r["probe"].append(pr)
            log("  probe %-9s %s" % (name, call_line(pr)))
            if pr["successful"] != 10 or pr["failed"] or pr["uas_failed"]:
                why = sb.log_excerpt(srv["log"])
                raise ServerFailed("%d of 10 probe calls completed (uac failed %d, unexpected %d; uas got %d, "
                                   "failed %d)%s" % (pr["successful"], pr["failed"], pr["unexpected"],
                                                     pr["uas_successful"], pr["uas_failed"],
                                                     "; log: " + why if why else ""))
            srvs.append(srv)
        except ServerFailed as e:
            r["failed"][name] = str(e)
            log("  %-9s n/a (%s run failed: %s)" % (name, name, e))
            for s in [x for x in sb.started if x.get("name") == name]:
                sb.stop_server(s)
        time.sleep(0.5)

    def drop(srv, e):
        r["failed"][srv["name"]] = str(e)
        log("  %-9s n/a (%s run failed: %s)" % (srv["name"], srv["name"], e))
        sb.stop_server(srv)
        srvs.remove(srv)

    # CPU per call at a fixed rate: servers interleaved A B A B, one connection (t1) first,
    # then a connection per call (tn): the tn runs leave their TIME_WAIT sockets behind.
    for mode in modes:
        for rep in range(1, reps + 1):
            for srv in list(srvs):
                try:
                    sb.wait_idle(srv)
                    src = TN_SOURCES.pop(0) if mode == "tn" else "127.0.0.1"
                    x = run_calls(args, srv, rate, ncalls[mode], "cpu-%s-%s-%d-r%d" % (srv["name"], mode, rate, rep),
                                  mode, src)
                except ServerFailed as e:
                    drop(srv, e)
                    continue
                x["rep"] = rep
                r["cpu"].append(x)
                log("  cpu  %-9s %s %5d/s rep %d: %s" % (srv["name"], mode, rate, rep, call_line(x)))
                if x["successful"] == 0:
                    drop(srv, ServerFailed("no call completed at %d calls/s (-t %s)" % (rate, mode)))
                    continue
                if not x["clean"]:
                    restart_server(args, srv)
                time.sleep(0.5)

    # the highest clean call rate, one connection (t1): steps, then bisection
    def call_step(srv, rt, tag):
        sb.wait_idle(srv)
        x = run_calls(args, srv, rt, int(rt * step_seconds), tag, "t1")
        if not x["clean"]:
            restart_server(args, srv)
        return x

    if not args.no_max:
        search = {srv["name"]: sb.RateSearch(steps, rounds, resolution) for srv in srvs}
        sb.max_search(srvs, "name", search, budget, call_step, call_line, r, lambda: time.sleep(0.5),
                      rest_retry=lambda: time.sleep(1.0), drop=drop, failures=ServerFailed)

    summary = {}
    for name in names:
        if name in r["failed"]:
            continue
        for mode in modes:
            rs = [x for x in r["cpu"] if x["server"] == name and x["uac_transport"] == mode]
            if not rs:
                continue
            summary.setdefault(name, {})[mode] = {
                "us_per_call": statistics.median(x["us_per_call"] for x in rs),
                "server_over_uac": statistics.median(x["server_over_uac"] for x in rs),
                "uac_us_per_call": statistics.median(x["uac_cpu_ns"] / 1e3 / x["successful"] for x in rs),
                "all_clean": all(x["clean"] for x in rs), "reps": len(rs),
            }
    r["summary"] = summary
    for srv in list(srvs):
        sb.stop_server(srv)


# ------------------------------------------------------------------------------------------
# parts "msgs" and "tls": streamload against one lunasip (tcp/tls/ws/wss) and one Kamailio (tcp)


def build_streamload(args):
    """bench/streams/streamload.c with mbedTLS; its path, or the reason it did not build."""
    cc = os.environ.get("CC", "cc")
    exe = os.path.join(args.sdir, "streamload")
    p = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", exe, os.path.join(SDIR, "streamload.c"),
                        "-lmbedtls", "-lmbedx509", "-lmbedcrypto", "-pthread"], capture_output=True, text=True)
    if p.returncode != 0:
        return "bench/streams/streamload.c did not build: %s" % (
            " | ".join(p.stderr.strip().splitlines()[:2]) or "exit %d" % p.returncode)
    return exe


def parse_result(text):
    for line in text.splitlines():
        if line.startswith("result "):
            d = {}
            for f in line.split()[1:]:
                if "=" in f:
                    k, v = f.split("=", 1)
                    try:
                        d[k] = int(v)
                    except ValueError:
                        try:
                            d[k] = float(v)
                        except ValueError:
                            d[k] = v
            return d
    return None


def streamload(args, kind, srv, tp, opts, tag):
    """One streamload run against srv's tp listener; its result line as a dict (with "clean")."""
    pids = sb.call_server_pids(srv)
    port = srv["tp_ports"][tp]
    argv = ([args.streamload, kind, tp, "127.0.0.1", str(port), "-p", ",".join(map(str, pids))]
            + [str(o) for o in opts])
    outp = os.path.join(args.load_dir, tag + ".out")
    tcp0 = tcp_counters()
    t0 = time.monotonic()
    with open(outp, "w") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             text=True)
        rec = {"name": "streamload", "proc": p}
        sb.started.append(rec)
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        finally:
            sb.started.remove(rec)
        f.write(out)
    wall = time.monotonic() - t0
    tcp1 = tcp_counters()
    sb.call_server_pids(srv)  # raises ServerFailed if it died
    d = parse_result(out)
    if d is None or d.get("error"):
        raise ServerFailed("streamload %s %s got no result (exit %s): %s"
                           % (kind, tp, p.returncode, " | ".join(out.strip().splitlines()[-2:])[:300]))
    d.update({"server": srv["name"], "transport": tp, "tag": tag, "wall_s": wall, "tcp": diff(tcp0, tcp1)})
    d["server_cores"] = d["server_cpu_ns"] / 1e9 / d["seconds"]
    d["client_cores"] = d["client_cpu_ns"] / 1e9 / d["seconds"]
    # cores that neither the server nor the load generator used over the window
    d["other_cores"] = ((d["machine_cpu_ns"] - d["server_cpu_ns"] - d["client_cpu_ns"]) / 1e9 / d["seconds"]
                        if d.get("machine_cpu_ns", -1) >= 0 else None)
    d["clean"] = d["errors"] == 0 and d["bad"] == 0 and d["closed_by_peer"] == 0
    if kind == "msgs" and d["rate"] > 0:
        d["clean"] = d["clean"] and d["per_s"] >= 0.95 * d["rate"]
    return d


def load_line(d):
    return ("%9.0f/s  server %7.2f us (%.2f cores)  client %6.2f us (%.2f cores)  other load %s  ok %d bad %d "
            "errors %d%s%s"
            % (d["per_s"], d["server_us_per"], d["server_cores"], d["client_us_per"], d["client_cores"],
               sb.fmt_cores(d["other_cores"]), d["ok"] if d["kind"] == "msgs" else d["cycles"], d["bad"], d["errors"],
               "  latency mean %.0f us max %.0f us" % (d["lat_mean_us"], d["lat_max_us"]) if d["kind"] == "msgs" else "",
               "" if d["first_error"] == "-" else "  first error: " + d["first_error"].replace("_", " ")))


def stream_servers(args, results, tmp, need_kamailio):
    """One lunasip with tcp:, tls:, ws: and wss: listeners and, for the tcp column, one
    Kamailio answering OPTIONS over TCP. Returns {name: srv or reason}."""
    out = {}
    ldir = os.path.join(tmp, "lunasip-msgs")
    os.makedirs(ldir)
    taken = args.taken
    ports = {tp: free_tcp_port(taken) for tp in ("tcp", "tls", "ws", "wss")}
    sb.fill(os.path.join(SDIR, "lunasip-msgs.conf"), {k.upper(): v for k, v in ports.items()},
            os.path.join(ldir, "lunasip.conf"))
    shutil.copy(os.path.join(SDIR, "server-msgs.lua"), os.path.join(ldir, "server.lua"))
    mdir = os.path.join(args.sdir, "msgs")
    os.makedirs(mdir, exist_ok=True)
    for fn in ("lunasip.conf", "server.lua"):
        shutil.copy(os.path.join(ldir, fn), os.path.join(mdir, "lunasip-" + fn))
    try:
        if not os.access(args.lunasip, os.X_OK):
            raise ServerFailed("%s is not an executable" % args.lunasip)
        argv = [os.path.abspath(args.lunasip), "-c", ldir, "--foreground", "-l", "warn"]
        t0 = time.monotonic()
        srv = start_server(args, "lunasip", argv, list(ports.values()), os.path.join(mdir, "lunasip.log"))
        srv["start_s"] = time.monotonic() - t0
        srv["tp_ports"] = ports
        srv["dir"] = ldir
        out["lunasip"] = srv
        log("  lunasip   pid %d on tcp:%d tls:%d ws:%d wss:%d, %d process(es), up in %.1f s (TLS certificate "
            "generated on this first start)" % (srv["proc"].pid, ports["tcp"], ports["tls"], ports["ws"], ports["wss"],
                                                len(srv["pids"]), srv["start_s"]))
    except ServerFailed as e:
        out["lunasip"] = str(e)
        log("  lunasip   n/a (%s)" % e)
        for s in [x for x in sb.started if x.get("name") == "lunasip"]:
            sb.stop_server(s)
    if need_kamailio:
        try:
            if not shutil.which(args.kamailio):
                raise ServerFailed("%s not found" % args.kamailio)
            kport = free_tcp_port(taken)
            cfg = sb.fill(os.path.join(KAMAILIO_DIR, "options-tcp.cfg"),
                          {"PORT": kport, "CHILDREN": args.kamailio_children, "MPATH": sb.KAMAILIO_MODULES},
                          os.path.join(mdir, "kamailio.cfg"))
            srv = start_server(args, "kamailio", kamailio_argv(args, cfg), [kport], os.path.join(mdir, "kamailio.log"))
            srv["tp_ports"] = {"tcp": kport}
            out["kamailio"] = srv
            log("  kamailio  pid %d on tcp:%d, %d processes, children=tcp_children=%d"
                % (srv["proc"].pid, kport, len(srv["pids"]), args.kamailio_children))
        except ServerFailed as e:
            out["kamailio"] = str(e)
            log("  kamailio  n/a (%s)" % e)
            for s in [x for x in sb.started if x.get("name") == "kamailio"]:
                sb.stop_server(s)
    return out


def tls_probe(srv):
    """What an OpenSSL client negotiates with lunasip's tls: listener (openssl s_client, no
    ticket): with OpenSSL's default groups, and offering X25519 and P-256 only. Protocol,
    cipher and the server's ephemeral key per case, or None without openssl."""
    if not shutil.which("openssl"):
        return None
    out = {}
    for case, extra in (("openssl defaults", []), ("groups X25519:P-256", ["-groups", "X25519:P-256"])):
        try:
            p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv["tp_ports"]["tls"],
                                "-brief", "-no_ticket"] + extra, input="", capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        d = {}
        for line in (p.stdout + p.stderr).splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip()
                if k in ("Protocol version", "Ciphersuite", "Server Temp Key"):
                    d[k] = v.strip()
        if d:
            out[case] = d
    return out or None


def msgs_part(args, results, servers):
    if args.quick:
        reps, secs, warm = 1, 1.0, 0.3
    else:
        reps, secs, warm = 3, 1.5, 0.3
    conns, window, fixed = 50, 8, 10000
    targets = [t for t in MSG_TARGETS if t[1] in args.transports and t[0] in args.servers]
    r = {"targets": ["%s-%s" % t for t in targets], "failed": {}, "runs": [], "reps": reps, "seconds": secs,
         "warmup": warm, "conns": conns, "window": window, "fixed_rate": fixed}
    results["msgs"] = r
    for name, tp in targets:
        key = "%s-%s" % (name, tp)
        if isinstance(servers.get(name), str):
            r["failed"][key] = servers[name]
        elif isinstance(args.streamload, str) and not os.path.isabs(args.streamload):
            r["failed"][key] = args.streamload
    live = [(n, tp) for n, tp in targets if "%s-%s" % (n, tp) not in r["failed"]]
    for rep in range(1, reps + 1):
        for name, tp in live:
            key = "%s-%s" % (name, tp)
            if key in r["failed"]:
                continue
            srv = servers[name]
            for mode, opts in (("max", ["-c", conns, "-w", window]),
                               ("fixed", ["-c", conns, "-w", window, "-r", fixed])):
                try:
                    sb.wait_idle(srv)
                    d = streamload(args, "msgs", srv, tp, opts + ["-d", secs, "-W", warm],
                                   "msgs-%s-%s-r%d" % (key, mode, rep))
                except ServerFailed as e:
                    r["failed"][key] = str(e)
                    log("  msgs %-13s n/a: %s" % (key, e))
                    break
                d["mode"], d["rep"] = mode, rep
                r["runs"].append(d)
                log("  msgs %-13s %-5s rep %d: %s" % (key, mode, rep, load_line(d)))
    summary = {}
    for name, tp in targets:
        key = "%s-%s" % (name, tp)
        if key in r["failed"]:
            continue
        for mode in ("max", "fixed"):
            rs = [d for d in r["runs"] if d["server"] == name and d["transport"] == tp and d["mode"] == mode]
            if rs:
                summary.setdefault(key, {})[mode] = {
                    "per_s": statistics.median(d["per_s"] for d in rs),
                    "us_per_msg": statistics.median(d["server_us_per"] for d in rs),
                    "server_cores": statistics.median(d["server_cores"] for d in rs),
                    "client_us_per_msg": statistics.median(d["client_us_per"] for d in rs),
                    "lat_mean_us": statistics.median(d["lat_mean_us"] for d in rs),
                    "all_clean": all(d["clean"] for d in rs), "reps": len(rs),
                }
    r["summary"] = summary


def tls_part(args, results, servers):
    if args.quick:
        reps, secs, warm = 1, 1.0, 0.3
    else:
        reps, secs, warm = 3, 2.0, 0.5
    parallel = 16
    targets = [t for t in HS_TARGETS if t[0] in args.servers]
    r = {"targets": ["%s-%s" % t[:2] for t in targets], "failed": {}, "runs": [], "reps": reps, "seconds": secs,
         "warmup": warm, "parallel": parallel, "options": {"%s-%s" % t[:2]: t[3] for t in targets},
         "kamailio": "not compared: its tls module (Debian kamailio-tls-modules) is not among the bench's "
                     "dependencies (scripts/deps.sh) and needs a configuration of its own"}
    results["tls"] = r
    lsrv = servers.get("lunasip")
    for name, label, tp, opts in targets:
        key = "%s-%s" % (name, label)
        if isinstance(servers.get(name), str):
            r["failed"][key] = servers[name]
        elif isinstance(args.streamload, str) and not os.path.isabs(args.streamload):
            r["failed"][key] = args.streamload
    if isinstance(lsrv, dict):
        r["openssl_probe"] = tls_probe(lsrv)
        if r["openssl_probe"]:
            for case, d in r["openssl_probe"].items():
                log("  tls  openssl s_client (%s) negotiates: %s" % (case, ", ".join("%s %s" % kv for kv in d.items())))
    for rep in range(1, reps + 1):
        for name, label, tp, opts in targets:
            key = "%s-%s" % (name, label)
            if key in r["failed"]:
                continue
            srv = servers[name]
            try:
                sb.wait_idle(srv)
                d = streamload(args, "hs", srv, tp, ["-c", parallel, "-d", secs, "-W", warm] + opts,
                               "hs-%s-r%d" % (key, rep))
            except ServerFailed as e:
                r["failed"][key] = str(e)
                log("  hs   %-16s n/a: %s" % (key, e))
                continue
            d["rep"], d["label"] = rep, label
            r["runs"].append(d)
            log("  hs   %-16s rep %d: %s%s" % (key, rep, load_line(d),
                                               "  %s %s" % (d["version"], d["cipher"]) if d["cipher"] != "-" else ""))
    summary = {}
    for name, label, tp, opts in targets:
        key = "%s-%s" % (name, label)
        rs = [d for d in r["runs"] if d["server"] == name and d["label"] == label]
        if rs and key not in r["failed"]:
            summary[key] = {
                "per_s": statistics.median(d["per_s"] for d in rs),
                "us_per": statistics.median(d["server_us_per"] for d in rs),
                "server_cores": statistics.median(d["server_cores"] for d in rs),
                "client_us_per": statistics.median(d["client_us_per"] for d in rs),
                "client_cores": statistics.median(d["client_cores"] for d in rs),
                "cipher": rs[0]["cipher"], "version": rs[0]["version"],
                "all_clean": all(d["clean"] for d in rs), "reps": len(rs),
            }
    r["summary"] = summary


# ------------------------------------------------------------------------------------------


def cleanup():
    sb.cleanup()


def on_signal(signum, frame):
    cleanup()
    sys.exit(128 + signum)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lunasip", default="./lunasip")
    ap.add_argument("--kamailio", default="kamailio")
    ap.add_argument("--kamailio-children", type=int, default=2)
    ap.add_argument("--parts", default=",".join(PARTS), help="calls, msgs, tls (comma-separated)")
    ap.add_argument("--servers", default=",".join(CALL_SERVERS), help="lunasip, kamailio (comma-separated)")
    ap.add_argument("--transports", default="tcp,tls,ws,wss", help="msgs part: transports (comma-separated)")
    ap.add_argument("--calls", type=int, default=None, help="calls per CPU run (default 4000 with -t t1, 2500 with tn)")
    ap.add_argument("--no-max", action="store_true", help="calls: skip the highest-clean-rate search")
    ap.add_argument("--quick", action="store_true", help="short windows, for a smoke test")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.transports = [s.strip() for s in args.transports.split(",") if s.strip()]
    for p in parts:
        if p not in PARTS:
            raise SystemExit("stream_bench: unknown part %r (known: %s)" % (p, ", ".join(PARTS)))
    for s in args.servers:
        if s not in CALL_SERVERS:
            raise SystemExit("stream_bench: unknown server %r (known: %s)" % (s, ", ".join(CALL_SERVERS)))

    atexit.register(cleanup)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    args.sdir = os.path.join(args.out, "streams")
    shutil.rmtree(args.sdir, ignore_errors=True)
    os.makedirs(args.sdir)
    jpath = os.path.join(args.out, "streams.json")
    if os.path.exists(jpath):
        os.unlink(jpath)
    tmp = tempfile.mkdtemp(prefix="lunasip-streams-")
    atexit.register(shutil.rmtree, tmp, True)
    args.taken = set()

    kver = (subprocess.run([args.kamailio, "-v"], capture_output=True, text=True).stdout.splitlines()
            if shutil.which(args.kamailio) else [])
    sver = (subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
            if shutil.which("sipp") else [])
    results = {"host": {"nproc": os.cpu_count(), "kernel": os.uname().release}, "quick": bool(args.quick),
               "parts": parts, "kamailio_version": kver[0] if kver else "?", "sipp_version": " ".join(sver[:1]),
               "kamailio_children": args.kamailio_children, "lunasip_argv0": os.path.abspath(args.lunasip)}
    t0 = time.monotonic()
    if "calls" in parts:
        log(" calls over TCP")
        t1 = time.monotonic()
        calls_part(args, results, tmp)
        results["calls"]["wall_s"] = time.monotonic() - t1
    if "msgs" in parts or "tls" in parts:
        args.load_dir = os.path.join(args.sdir, "load")
        os.makedirs(args.load_dir)
        args.streamload = build_streamload(args)
        results["streamload"] = args.streamload
        if not os.path.isabs(args.streamload):
            log("  %s" % args.streamload)
        need_k = "msgs" in parts and "kamailio" in args.servers and "tcp" in args.transports
        servers = stream_servers(args, results, tmp, need_k) if "lunasip" in args.servers or need_k else {}
        if isinstance(servers.get("lunasip"), dict):
            results["lunasip_start_s"] = servers["lunasip"]["start_s"]
        if "msgs" in parts:
            log(" messages over tcp/tls/ws/wss")
            t1 = time.monotonic()
            msgs_part(args, results, servers)
            results["msgs"]["wall_s"] = time.monotonic() - t1
            results["msgs"]["processes"] = {n: len(s["pids"]) for n, s in servers.items() if isinstance(s, dict)}
        if "tls" in parts:
            log(" TLS handshakes (connect, handshake, OPTIONS, 200, close)")
            t1 = time.monotonic()
            tls_part(args, results, servers)
            results["tls"]["wall_s"] = time.monotonic() - t1
        for s in servers.values():
            if isinstance(s, dict):
                sb.stop_server(s)
    results["wall_s"] = time.monotonic() - t0
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1)
    cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
