#!/usr/bin/env python3
"""Prints the benchmark table from the raw results bench/run.sh leaves in OUT:
parse.txt and callgrind.txt (bench/parse_bench.c), options.json (bench/sip_bench.py).
usage: report.py OUT [WALL_SECONDS]"""
import json
import os
import sys


def kv(line):
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)


def load_lines(path, kind):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [kv(l) for l in f if l.startswith(kind + " ")]


def num(x, digits=0):
    if x is None:
        return "-"
    if digits == 0:
        return "{:,.0f}".format(x)
    return "{:,.{}f}".format(x, digits)


def main():
    out = sys.argv[1]
    wall = int(sys.argv[2]) if len(sys.argv) > 2 else None
    rows = []  # (benchmark, lunasip, peer, ratio)
    notes = []
    goals = []

    med = {(d["case"], d["parser"]): d for d in load_lines(os.path.join(out, "parse.txt"), "median")}
    ratio = {d["case"]: float(d["lunasip_over_osip"]) for d in load_lines(os.path.join(out, "parse.txt"), "ratio")}
    checks = {d["case"]: d for d in load_lines(os.path.join(out, "parse.txt"), "check")}
    if med:
        li, oi = med[("invite", "lunasip")], med[("invite", "osip")]
        ls, os_ = med[("set", "lunasip")], med[("set", "osip")]
        rows.append(("parse INVITE (msgs/s)", num(float(li["msgs_per_s"])), num(float(oi["msgs_per_s"])),
                     "%.2fx" % ratio["invite"]))
        rows.append(("parse INVITE (ns/msg)", num(float(li["ns_per_msg"])), num(float(oi["ns_per_msg"])), ""))
        rows.append(("parse RFC 4475 set (sets/s)", num(float(ls["sets_per_s"])), num(float(os_["sets_per_s"])),
                     "%.2fx" % ratio["set"]))
        rows.append(("parse RFC 4475 set (ns/msg)", num(float(ls["ns_per_msg"])), num(float(os_["ns_per_msg"])), ""))
        cs = checks.get("set", {})
        ci = checks.get("invite", {})
        runs = load_lines(os.path.join(out, "parse.txt"), "run")
        shortest = min(float(d["secs"]) for d in runs) if runs else 0
        notes.append("parse: median of %s interleaved runs (A B A B), shortest %.2f s; INVITE %s bytes; RFC 4475 set = "
                     "%s files, accepted by lunasip %s, by libosip2 %s (refusals are timed too)"
                     % (li.get("reps", "?"), shortest, ci.get("bytes", "?"), cs.get("files", "?"),
                        cs.get("lunasip_accepts", "?"), cs.get("osip_accepts", "?")))
        def met(x):
            return "met" if x >= 10 else "not met"
        goals.append("parsing >= 10x libosip2: INVITE %.2fx (%s), RFC 4475 set %.2fx (%s)"
                     % (ratio["invite"], met(ratio["invite"]), ratio["set"], met(ratio["set"])))
    cg = {(d["case"], d["parser"]): int(d["instr_per_msg"])
          for d in load_lines(os.path.join(out, "callgrind.txt"), "callgrind")}
    for c, label in (("invite", "parse INVITE (instr/msg, callgrind)"), ("set", "parse RFC 4475 (instr/msg, callgrind)")):
        if (c, "lunasip") in cg and (c, "osip") in cg:
            rows.append((label, num(cg[(c, "lunasip")]), num(cg[(c, "osip")]),
                         "%.2fx" % (cg[(c, "osip")] / cg[(c, "lunasip")])))

    opath = os.path.join(out, "options.json")
    if os.path.exists(opath):
        with open(opath) as f:
            o = json.load(f)
        s = o["summary"]
        for rate in o["cpu_rates"]:
            l, k = s["lunasip@%d" % rate], s["kamailio@%d" % rate]
            flag = "" if l["all_clean"] and k["all_clean"] else " (!)"
            rows.append(("OPTIONS CPU us/req @%d/s%s" % (rate, flag), num(l["us_per_req"], 2), num(k["us_per_req"], 2),
                         "%.2f" % (l["us_per_req"] / k["us_per_req"])))
            rows.append(("  server/SIPp CPU @%d/s" % rate, num(l["server_over_sipp"], 2),
                         num(k["server_over_sipp"], 2), "%.2f" % (l["server_over_sipp"] / k["server_over_sipp"])))
        mx = o.get("max_clean_rate", {})
        if mx:
            lm, km = mx.get("lunasip"), mx.get("kamailio")
            rows.append(("OPTIONS max clean rate (req/s)", num(lm), num(km),
                         "%.2f" % (lm / km) if lm and km else "-"))
            for name, capped in o.get("max_search_capped", {}).items():
                if capped:
                    notes.append("max rate: %s was clean at the highest step tried (%d/s); its limit is higher"
                                 % (name, mx[name]))
            if o.get("max_search_cut"):
                notes.append("max rate: the search hit its time budget before it finished; the figures are "
                             "lower bounds")
        ratio2000 = s["lunasip@2000"]["us_per_req"] / s["kamailio@2000"]["us_per_req"] if "lunasip@2000" in s else None
        if ratio2000 is not None:
            goals.append("OPTIONS CPU/req <= 0.5x Kamailio: %s"
                         % ", ".join("@%d/s %.2fx (%s)" % (rate, x, "met" if x <= 0.5 else "not met")
                                     for rate, x in ((rate, s["lunasip@%d" % rate]["us_per_req"] /
                                                      s["kamailio@%d" % rate]["us_per_req"])
                                                     for rate in o["cpu_rates"])))
        notes.append("OPTIONS: %s; median of %d interleaved runs of %d s per rate; CPU = sum of se.sum_exec_runtime "
                     "of every thread of every process / requests answered"
                     % (o.get("kamailio_version", "kamailio").replace("version: ", "").strip(), o["cpu_reps"], o["cpu_seconds"]))
        notes.append("lunasip: %d process (core.workers = 1); Kamailio: children=%d (BENCH.md's reference setting), "
                     "%d processes, -m 1024 -M 16 -x fm -X fm, TCP/SCTP off"
                     % (o["lunasip_processes"], o["kamailio_children"], o["kamailio_processes"]))
        notes.append("clean step = no failed call, no retransmission, >= 95%% of the target rate, %d s per step; "
                     "SIPp, both servers share %d cores" % (o["step_seconds"], o["host"]["nproc"]))
        busy = [r for r in o["cpu"] if r.get("other_cores") is not None and r["other_cores"] > 0.25]
        if busy:
            notes.append("(!) other work used > 0.25 core during %d of %d CPU runs (max %.2f cores): the machine is "
                         "shared, see options.json other_cores" % (len(busy), len(o["cpu"]),
                                                                   max(r["other_cores"] for r in busy)))
        for name in ("lunasip", "kamailio"):
            uncl = [r for r in o["max_steps"] if r["server"] == name and not r["clean"] and not r.get("superseded")]
            if uncl:
                r = min(uncl, key=lambda r: r["rate"])
                where = ""
                if r["sipp_socket_drops"] and not r["server_socket_drops"]:
                    where = " -> lost in SIPp's receive path: this limit is SIPp's, not the server's"
                elif r["server_socket_drops"] and not r["sipp_socket_drops"]:
                    where = " -> lost at the server's socket: the server could not keep up"
                notes.append("%s lowest unclean step %d/s: %d retransmissions, %d failed, %.0f/s achieved; datagrams "
                             "dropped at the server's socket %d, at SIPp's %d (UDP rcvbuf errors host-wide %d)%s"
                             % (name, r["rate"], r["retransmissions"], r["failed"], r["achieved_rate"],
                                r["server_socket_drops"], r["sipp_socket_drops"], r["udp_rcvbuf_errors"], where))
        again = [r for r in o["max_steps"] if r.get("superseded")]
        if again:
            notes.append("max rate: %d step(s) unclean while other work used > 0.25 core were run once more: %s"
                         % (len(again), ", ".join("%s@%d" % (r["server"], r["rate"]) for r in again)))
        bad = [r for r in o["cpu"] if not r["clean"]]
        if bad:
            notes.append("(!) %d CPU run(s) not clean: %s" % (len(bad), ", ".join(
                "%s@%d rep %d (fail %d, retr %d, %.0f/s)" % (r["server"], r["rate"], r["rep"], r["failed"],
                                                             r["retransmissions"], r["achieved_rate"]) for r in bad)))

    w = [34, 14, 19, 8]
    print("%-*s %*s %*s %*s" % (w[0], "benchmark", w[1], "lunasip", w[2], "libosip2/kamailio", w[3], "ratio"))
    for r in rows:
        print("%-*s %*s %*s %*s" % (w[0], r[0], w[1], r[1], w[2], r[2], w[3], r[3]))
    print()
    print("ratio: parse = lunasip speed-up over libosip2 (higher is better); OPTIONS CPU = lunasip/kamailio "
          "(lower is better); max rate = lunasip/kamailio")
    for g in goals:
        print("goal: " + g)
    for n in notes:
        print("note: " + n)
    if wall is not None:
        print("wall time of bench/run.sh: %d s; raw numbers in %s/" % (wall, out))


if __name__ == "__main__":
    main()
