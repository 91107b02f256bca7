#!/usr/bin/env python3
"""Prints the benchmark table from the raw results bench/run.sh leaves in OUT:
parse.txt and callgrind.txt (bench/parse_bench.c), options.json (bench/sip_bench.py),
calls.json (bench/sip_bench.py --mode calls), events.json (bench/evi_bench.py) and
streams.json (bench/stream_bench.py).
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


def calls_section(out):
    """Rows of the call-flow table (calls.json from sip_bench.py --mode calls): lunasip against
    Kamailio native and Kamailio with app_lua. A server that could not do the job shows n/a,
    and a note says why."""
    path = os.path.join(out, "calls.json")
    if not os.path.exists(path):
        return [], None, []
    with open(path) as f:
        c = json.load(f)
    servers = c.get("servers", [])
    failed = c.get("failed", {})
    s = c.get("summary", {})
    mx = c.get("max_clean_rate")
    peers = ("kamailio", "kamailio-lua")
    head = ("calls (UDP, stateful, Record-Route)", "lunasip", "kamailio", "ratio", "kamailio-lua", "ratio")

    def cell(name, value, digits):
        if name not in servers:
            return "-"
        if name in failed:
            return "n/a (failed)"
        return num(value, digits) if value is not None else "-"

    def ratio(a, b, name_a, name_b):
        if a is None or b is None or not b or name_a in failed or name_b in failed:
            return "-"
        return "%.2f" % (a / b)

    def row(label, key, digits, flag=False):
        vals = {n: s.get(n, {}).get(key) for n in ("lunasip",) + peers}
        mark = ""
        if flag and any(n in s and not s[n]["all_clean"] for n in servers):
            mark = " (!)"
        out_row = [label + mark, cell("lunasip", vals["lunasip"], digits)]
        for p in peers:
            out_row += [cell(p, vals[p], digits), ratio(vals["lunasip"], vals[p], "lunasip", p)]
        return tuple(out_row)

    rate = c.get("cpu_rate", 500)
    rows = [row("calls CPU us/call @%d/s" % rate, "us_per_call", 1, flag=True),
            row("server/UAC CPU @%d/s" % rate, "server_over_uac", 2)]
    if mx is not None:
        vals = {n: mx.get(n) for n in ("lunasip",) + peers}
        r = ["max clean call rate (calls/s)", cell("lunasip", vals["lunasip"], 0)]
        for p in peers:
            r += [cell(p, vals[p], 0), ratio(vals["lunasip"], vals[p], "lunasip", p)]
        rows.append(tuple(r))

    notes = []
    for name in servers:
        if name in failed:
            notes.append("calls: %s n/a (%s run failed: %s)" % (name, name, failed[name]))
    notes.append("calls: SIPp uac -> server -> SIPp uas over UDP on 127.0.0.1, INVITE 180 200 ACK BYE 200 "
                 "(bench/call_uac.xml, call_uas.xml); CPU = se.sum_exec_runtime of every thread of every process "
                 "of the server from the UAC's start to its end / calls completed; median of %d interleaved runs "
                 "of %d calls at %d calls/s%s"
                 % (c["cpu_reps"], c["cpu_calls"], rate, " (QUICK: not for quoting)" if c.get("quick") else ""))
    notes.append("calls: lunasip: bench/proxy/ (server.lua: Proxy.new(\"proxy_out\"):route(), do_record_routing), "
                 "%s process(es); Kamailio %s: record_route(); t_relay() (bench/kamailio/proxy.cfg) and the same in "
                 "Lua via app_lua/KEMI (proxy-lua.cfg, proxy.lua), children=%d, %s processes, "
                 "-m 1024 -M 16 -x fm -X fm"
                 % (c.get("processes", {}).get("lunasip", "-"),
                    c.get("kamailio_version", "").replace("version: ", "").replace("kamailio ", "").split(" (")[0].strip(),
                    c.get("kamailio_children", 2),
                    "/".join(str(c.get("processes", {}).get(p, "-")) for p in peers)))
    if mx is not None:
        notes.append("calls: clean step = no failed call on either SIPp side, no retransmission on either side, "
                     ">= 95%% of the target rate; %d s of calls per step, steps then bisection; UAC, UAS and the "
                     "server share %d cores" % (c["step_seconds"], c["host"]["nproc"]))
        for name, capped in c.get("max_search_capped", {}).items():
            if capped:
                notes.append("calls: %s was clean at the highest step tried (%d/s); its limit is higher"
                             % (name, mx[name]))
        if c.get("max_search_cut"):
            notes.append("calls: the max-rate search hit its time budget; the figures are lower bounds")
        for name in servers:
            uncl = [r for r in c["max_steps"] if r["server"] == name and not r["clean"] and not r.get("superseded")]
            if uncl:
                r = min(uncl, key=lambda r: r["rate"])
                where = ""
                if r["sipp_drops"] and not r["server_socket_drops"]:
                    where = " -> lost in SIPp's receive path"
                elif r["server_socket_drops"] and not r["sipp_drops"]:
                    where = " -> lost at the server's socket: the server could not keep up"
                if r.get("server_out_of_memory"):
                    where += "; the server logged %d out-of-memory errors" % r["server_out_of_memory"]
                elif r.get("server_log_errors"):
                    where += "; the server logged %d error lines" % r["server_log_errors"]
                notes.append("calls: %s lowest unclean step %d/s: failed %d/%d, retransmissions %d/%d (uac/uas), "
                             "%.0f/s achieved; datagrams dropped at the server's socket %d, at SIPp's %d%s"
                             % (name, r["rate"], r["failed"], r["uas_failed"], r["retransmissions"],
                                r["uas_retransmissions"], r["achieved_rate"], r["server_socket_drops"],
                                r["sipp_drops"], where))
    busy = [r for r in c["cpu"] if r.get("other_cores") is not None and r["other_cores"] > 0.25]
    if busy:
        notes.append("calls: (!) other work used > 0.25 core during %d of %d CPU runs (max %.2f cores): the machine "
                     "is shared, see calls.json other_cores" % (len(busy), len(c["cpu"]),
                                                                max(r["other_cores"] for r in busy)))
    bad = [r for r in c["cpu"] if not r["clean"]]
    if bad:
        notes.append("calls: (!) %d CPU run(s) not clean: %s" % (len(bad), ", ".join(
            "%s rep %d (fail %d/%d, retr %d/%d, %.0f/s)" % (r["server"], r["rep"], r["failed"], r["uas_failed"],
                                                           r["retransmissions"], r["uas_retransmissions"],
                                                           r["achieved_rate"]) for r in bad)))
    return rows, head, notes


def events_section(out):
    """The event-interface part (events.json from evi_bench.py): the SIP cost of raising one
    event per request (no event / udp: sink / rabbitmq: sink / tcp: sink whose peer never reads)
    and the delivery throughput per sink kind. Returns (sip table, sinks table, notes); a table is None when not run."""
    path = os.path.join(out, "events.json")
    if not os.path.exists(path):
        return None, None, []
    with open(path) as f:
        e = json.load(f)
    notes = []
    quick = " (QUICK: not for quoting)" if e.get("quick") else ""
    sip_tab = sinks_tab = None

    sip = e.get("sip")
    if sip:
        failed = sip.get("failed", {})
        s = sip.get("summary", {})
        mx = sip.get("max_clean_rate")
        evs = ("udp", "rabbitmq", "tcp-hung")  # the variants compared with "none", in column order
        head = ("events: SIP cost (OPTIONS, Lua)", "no event", "udp: sink", "ratio", "rabbitmq: sink", "ratio",
                "tcp: hung", "ratio")

        def cell(v, value, digits):
            if v in failed:
                return "n/a"
            if v not in sip.get("variants", ()):
                return "-"  # an events.json from before the variant existed
            return num(value, digits) if value is not None else "-"

        def ratio(v, a, b):
            if v in failed or "none" in failed or a is None or not b:
                return "-"
            return "%.2f" % (a / b)

        def pct(a, b):
            return "%.1f%%" % (100.0 * a / b) if b else "-"

        rows = []
        for rate in sip.get("rates", []):
            for label, key, digits in (("CPU us/req @%d/s" % rate, "us_per_req", 2),
                                       ("server/SIPp CPU @%d/s" % rate, "server_over_sipp", 2)):
                vals = {v: s.get("%s@%d" % (v, rate), {}).get(key) for v in ("none",) + evs}
                mark = ""
                if key == "us_per_req" and any(not x.get("all_clean", True) for k, x in s.items()
                                               if k.endswith("@%d" % rate)):
                    mark = " (!)"
                row = [label + mark, cell("none", vals["none"], digits)]
                for v in evs:
                    row += [cell(v, vals[v], digits), ratio(v, vals[v], vals["none"])]
                rows.append(tuple(row))
            got, lost = ["  events received/requests", "-"], ["  events dropped/raised", "-"]
            for v in evs:
                x = s.get("%s@%d" % (v, rate), {})
                if v in failed:
                    got += ["n/a", ""]
                    lost += ["n/a", ""]
                    continue
                got += [pct(x["events_received"], x["requests"]) if x.get("requests") else "-", ""]
                lost += [pct(x["events_dropped"], x["events_raised"]) if x.get("events_raised") else "-", ""]
            rows.append(tuple(got))
            rows.append(tuple(lost))
        if mx is not None:
            vals = {v: mx.get(v) for v in ("none",) + evs}
            low = min(sip.get("steps_tried") or [0])

            def mcell(v):
                if v not in failed and vals[v] == 0:
                    return "< " + num(low)  # not even the first step was clean
                return cell(v, vals[v], 0)

            def mratio(v):
                return ratio(v, vals[v], vals["none"]) if vals[v] and vals["none"] else "-"
            row = ["max clean rate (req/s)", mcell("none")]
            for v in evs:
                row += [mcell(v), mratio(v)]
            rows.append(tuple(row))
        sip_tab = (head, rows)
        for v in ("none",) + evs:
            if v in failed:
                notes.append("events: SIP cost, %s n/a: %s" % (v, failed[v]))
        hung = "tcp-hung" in sip.get("variants", ())
        notes.append("events: SIP cost = bench/options.xml (SIPp) against %s lunasip instances whose server.lua "
                     "answers OPTIONS with req:reply(200) and raises nothing / raise_event(\"E_BENCH\", {method, "
                     "call_id, n}) per request to %s / to %s%s (events.json sockets); CPU = se.sum_exec_runtime of "
                     "every thread of the instance (sink threads included) / requests; median of %d interleaved runs "
                     "of %d s%s; ratio = variant / no event; events dropped/raised = lunasip's own counters "
                     "(control socket stats)"
                     % ("four" if hung else "three", sip.get("sockets", {}).get("udp") or "a udp: sink",
                        sip.get("sockets", {}).get("rabbitmq") or "a rabbitmq: sink",
                        " / to %s, a peer that accepts and never reads" % (sip.get("sockets", {}).get("tcp-hung")
                                                                           or "a tcp: sink") if hung else "",
                        sip["reps"], sip["seconds"], quick))
        if hung:
            hp = sip.get("hung_peer", {})
            x = s.get("tcp-hung@%d" % sip["rates"][0], {}) if sip.get("rates") else {}
            txt = ("events: tcp: hung = the bench's own listener (SO_RCVBUF %s set, %s effective) that accepts and "
                   "never reads, default events settings (queue_limit 10,000, drop_oldest, send_timeout 5 s: the sink "
                   "closes a connection that moved no byte for 5 s and reconnects with backoff)"
                   % (hp.get("rcvbuf_set", "?"), hp.get("rcvbuf", "?")))
            def fate(y):
                t = "raised %s, dropped %s, delivered %s" % (num(y["events_raised"]), num(y["events_dropped"]),
                                                             num(y["events_delivered"]))
                if y["events_failed"] != y["events_dropped"]:
                    t += ", failed attempts %s" % num(y["events_failed"])
                return t
            if x.get("events_raised"):
                txt += ("; lunasip's counters over the CPU runs at %d/s: %s; over the max-rate steps: "
                        % (sip["rates"][0], fate(x)))
                m = hp.get("max_steps")
                txt += fate(m) if m else "-"
                txt += (" (dropped = lost: pushed out of the full queue, or taken when the hung connection was "
                        "closed; each is also one failed delivery attempt in events_failed; delivered = written "
                        "into the kernel's socket buffers; the rest waits in the queue, at most queue_limit)")
            if hp.get("connections") is not None:
                txt += "; the peer accepted %d connection(s)" % hp["connections"]
            notes.append(txt)
            tgt = ("events: issue 4's target for tcp: hung: SIP throughput within 10% of \"no event\" (max clean "
                   "rate ratio >= 0.90)")
            if mx is not None and mx.get("tcp-hung") and mx.get("none") and "tcp-hung" not in failed:
                r = mx["tcp-hung"] / mx["none"]
                tgt += ": %.2f here, %s" % (r, "met" if r >= 0.90 else "not met")
                # how far apart the last clean and the first unclean step were: the search's grain
                gaps = []
                for v in ("none", "tcp-hung"):
                    above = [x["rate"] for x in sip.get("max_steps", []) if x["variant"] == v and not x["clean"]
                             and not x.get("superseded") and x["rate"] > mx[v]]
                    if above:
                        gaps.append(100.0 * (min(above) - mx[v]) / mx[v])
                # the finer view of throughput: achieved rates at the same offered step
                ach = {}
                for x in sip.get("max_steps", []):
                    if x["variant"] in ("none", "tcp-hung") and not x.get("superseded"):
                        ach.setdefault(x["rate"], {})[x["variant"]] = x["achieved_rate"]
                same = ["%gk %.2f" % (rt / 1000.0, a["tcp-hung"] / a["none"]) for rt, a in sorted(ach.items())
                        if len(a) == 2 and a["none"]]
                if same:
                    tgt += "; achieved rate tcp: hung / no event at the same offered rate: " + ", ".join(same)
                if gaps and max(gaps) >= 5:
                    tgt += ("; the search ends with steps up to %.0f%% apart, so one step either way moves the max "
                            "clean rate ratio by about as much as the target allows: the achieved rates are the finer "
                            "view" % max(gaps))
            notes.append(tgt)
        hl = []
        for v in ("udp", "rabbitmq"):
            x = s.get("%s@%d" % (v, sip["rates"][0]), {}) if sip.get("rates") else {}
            if x.get("helper_us_per_req") is not None:
                hl.append("%s %.1f us/event (%s)" % (v, x["helper_us_per_req"],
                                                     "evsink" if v == "udp" else "broker + amqp_count consumer"))
        if hl:
            notes.append("events: CPU of the receiving side, not counted above, @%d/s: %s"
                         % (sip["rates"][0], ", ".join(hl)))
        for k, x in sorted(s.items()):
            if x.get("events_dropped") and not k.startswith("tcp-hung@"):  # that one has its note
                notes.append("events: SIP cost, %s: %d events dropped, %d failed over the CPU runs"
                             % (k, x["events_dropped"], x.get("events_failed", 0)))
        if mx is not None:
            notes.append("events: max clean rate: %d s per step, steps %s then %d rounds of bisection (to %d req/s), "
                         "budget %d s; "
                         "clean = no failed call, no retransmission, >= 95%% of the target rate (dropped events do "
                         "not make a step unclean: lunasip drops and counts them by design); the broker and the "
                         "receivers share the %d cores with SIPp and lunasip"
                         % (sip["step_seconds"], "/".join(str(x // 1000) + "k" for x in sip["steps_tried"]),
                            sip.get("bisect_rounds", 2), sip.get("resolution", 2500), sip["max_budget_s"], e["host"]["nproc"]))
            for v, capped in sip.get("max_search_capped", {}).items():
                if capped:
                    notes.append("events: %s was clean at the highest step tried (%d/s); its limit is higher"
                                 % (v, mx[v]))
            if sip.get("max_search_cut"):
                notes.append("events: the max-rate search hit its time budget; the figures are lower bounds")
            for v in ("none",) + evs:
                uncl = [r for r in sip.get("max_steps", []) if r["variant"] == v and not r["clean"]
                        and not r.get("superseded")]
                if uncl:
                    r = min(uncl, key=lambda r: r["rate"])
                    ev = ""
                    if r.get("events_dropped"):
                        ev = ", events dropped %d" % r["events_dropped"]
                    if not r["retransmissions"] and not r["failed"]:
                        who = {"udp": "SIPp, lunasip and the receiver", "rabbitmq": "SIPp, lunasip and the broker"}
                        ev += " -> only the rate fell short (%s share the cores)" % who.get(v, "SIPp and lunasip")
                    notes.append("events: %s lowest unclean step %d/s: %d retransmissions, %d failed, %.0f/s achieved"
                                 "%s" % (v, r["rate"], r["retransmissions"], r["failed"], r["achieved_rate"], ev))
        busy = [r for r in sip.get("cpu", []) if r.get("other_cores") is not None and r["other_cores"] > 0.25]
        if busy:
            notes.append("events: (!) other work used > 0.25 core during %d of %d SIP-cost CPU runs (max %.2f cores)"
                         % (len(busy), len(sip["cpu"]), max(r["other_cores"] for r in busy)))

    sk = e.get("sinks")
    if sk:
        failed = sk.get("failed", {})
        s = sk.get("summary", {})
        head = ("events: delivery per sink kind", "events/s", "lunasip us/event", "lunasip cores",
                "receiver us/ev", "received")
        prefix = {"udp": "udp:", "unix": "unix:", "tcp": "tcp:", "http": "http://", "flatstore": "flatstore:",
                  "rabbitmq": "rabbitmq:"}
        rows = []
        for k in sk.get("kinds", []):
            if k in failed or k not in s:
                rows.append((prefix.get(k, k), "n/a", "n/a", "-", "-", "-"))
                continue
            x = s[k]
            mark = "" if x["all_complete"] and not x.get("dropped") else " (!)"
            rows.append((prefix.get(k, k) + mark, num(x["events_per_s"]), num(x["us_per_event"], 2),
                         num(x.get("lunasip_cores"), 2),
                         num(x.get("receiver_us_per_event"), 2) if k != "flatstore" else "-",
                         "%.1f%%" % (100.0 * x["received"] / x["raised"]) if x["raised"] else "-"))
        sinks_tab = (head, rows)
        for k in sk.get("kinds", []):
            if k in failed:
                notes.append("events: sink %s n/a: %s" % (k, failed[k]))
        notes.append("events: delivery = one lunasip subscribed to one event per sink kind, each to its own counting "
                     "receiver (bench/events/evsink.c: udp, unix datagram, tcp newline-delimited, HTTP/1.1 keep-alive "
                     "answering 200; the file for flatstore; amqp_count on a private RabbitMQ broker); OPTIONS bursts "
                     "of %d raise_event calls, at most %d events raised and not yet received (events.queue_limit %d), "
                     "fed for %.1f s then drained; events/s = received / (last arrival - first burst); lunasip us/event "
                     "= its CPU (raising included) / received; lunasip cores = its CPU / the run's wall time (near 1: "
                     "lunasip was the limit; lower: the sink's protocol, the receiver or the machine was); receiver "
                     "us/event = the receiver's CPU (rabbitmq: broker + consumer); median of %d interleaved runs%s"
                     % (sk["burst"], sk["window"], sk["queue_limit"], sk["feed_s"], sk["reps"], quick))
        for k, x in s.items():
            if x.get("dropped") or x.get("failed") or not x["all_complete"]:
                notes.append("events: (!) sink %s: received %d of %d raised, lunasip counted %s dropped, %s failed"
                             % (k, x["received"], x["raised"], x.get("dropped", "?"), x.get("failed", "?")))
        busy = [r for r in sk.get("runs", []) if r.get("other_cores") is not None and r["other_cores"] > 0.25]
        if busy:
            notes.append("events: (!) other work used > 0.25 core during %d of %d delivery runs (max %.2f cores)"
                         % (len(busy), len(sk["runs"]), max(r["other_cores"] for r in busy)))
    b = e.get("broker")
    if b:
        notes.append("events: RabbitMQ %s, private node on 127.0.0.1:%d, accepting %.1f s after its start"
                     % (b.get("version", "?"), b["port"], b["start_s"]))
    return sip_tab, sinks_tab, notes


def streams_section(out):
    """The stream-transport part (streams.json from stream_bench.py): the call flow over TCP
    (lunasip vs Kamailio), OPTIONS answered over tcp/tls/ws/wss, and full TLS handshakes per
    second. Returns ([(head, rows)], notes); the list is empty when the part did not run."""
    path = os.path.join(out, "streams.json")
    if not os.path.exists(path):
        return [], []
    with open(path) as f:
        st = json.load(f)
    tabs, notes = [], []
    quick = " (QUICK: not for quoting)" if st.get("quick") else ""
    nproc = st.get("host", {}).get("nproc", "?")
    kver = st.get("kamailio_version", "").replace("version: ", "").replace("kamailio ", "").split(" (")[0].strip()

    def ratio(a, b):
        return "%.2f" % (a / b) if a is not None and b else "-"

    c = st.get("calls")
    if c and c.get("servers"):
        failed, s, mx = c.get("failed", {}), c.get("summary", {}), c.get("max_clean_rate")
        servers = c["servers"]
        rate = c.get("cpu_rate", 500)

        def cell(name, v, digits):
            if name not in servers:
                return "-"
            if name in failed:
                return "n/a (failed)"
            return num(v, digits) if v is not None else "-"

        def get(name, mode, key):
            return s.get(name, {}).get(mode, {}).get(key)

        rows = []
        for label, mode, key, digits in (("CPU us/call @%d/s, one connection" % rate, "t1", "us_per_call", 1),
                                         ("  server/UAC CPU, one connection", "t1", "server_over_uac", 2),
                                         ("CPU us/call @%d/s, conn. per call" % rate, "tn", "us_per_call", 1),
                                         ("  server/UAC CPU, conn. per call", "tn", "server_over_uac", 2)):
            if not any(mode in s.get(n, {}) for n in servers) and not failed:
                continue
            mark = ""
            if key == "us_per_call" and any(not s[n][mode]["all_clean"] for n in s if mode in s[n]):
                mark = " (!)"
            lv, kv = get("lunasip", mode, key), get("kamailio", mode, key)
            bad = "lunasip" in failed or "kamailio" in failed
            rows.append((label + mark, cell("lunasip", lv, digits), cell("kamailio", kv, digits),
                         "-" if bad else ratio(lv, kv)))
        if mx is not None:
            lv, kv = mx.get("lunasip"), mx.get("kamailio")
            rows.append(("max clean call rate, one conn.", cell("lunasip", lv, 0), cell("kamailio", kv, 0),
                         ratio(lv, kv) if lv and kv else "-"))
        tabs.append((("calls over TCP (stateful, RR)", "lunasip", "kamailio", "ratio"), rows))
        for name in servers:
            if name in failed:
                notes.append("streams calls: %s n/a (%s run failed: %s)" % (name, name, failed[name]))
        notes.append("streams calls: SIPp uac -> server -> SIPp uas over TCP on 127.0.0.1, the UDP call flow's "
                     "scenarios (bench/call_uac.xml, call_uas.xml); the UAS listens with -t t1 and the proxy "
                     "connects to it once; \"one connection\" = UAC -t t1 (every call on one connection, a trunk "
                     "or SBC in front of the proxy), \"conn. per call\" = UAC -t tn (a new connection per call, "
                     "closed by SIPp after the BYE's 200); CPU = se.sum_exec_runtime of every thread of every "
                     "process of the server from the UAC's start to its end / calls completed; median of %d "
                     "interleaved runs of %s calls at %d calls/s, the tn runs after the t1 runs%s"
                     % (c["cpu_reps"], " / ".join("%s (%s)" % (num(v), k) for k, v in sorted(c["cpu_calls"].items())),
                        rate, quick))
        notes.append("streams calls: lunasip: bench/streams/lunasip-calls.conf + server-calls.lua (proxy:route(req, "
                     "ip, port, \"tcp\"), proxy_out with do_record_routing), %s process(es); Kamailio %s: "
                     "bench/kamailio/proxy-tcp.cfg (record_route(); t_relay(), listen=tcp:), children=tcp_children=%d, "
                     "%s processes, -m 1024 -M 16 -x fm -X fm"
                     % (c.get("processes", {}).get("lunasip", "-"), kver, st.get("kamailio_children", 2),
                        c.get("processes", {}).get("kamailio", "-")))
        if mx is not None:
            notes.append("streams calls: clean step = no failed call on either side, every call complete at the UAS, "
                         ">= 95%% of the target rate, and no call whose INVITE waited 500 ms or more for its 200 "
                         "(over TCP SIPp retransmits nothing: a late answer is where UDP would have retransmitted); "
                         "%d s of calls per step, steps %s then bisection, budget %d s; UAC, UAS and server share "
                         "%s cores" % (c["step_seconds"], "/".join("%gk" % (x / 1000.0) for x in c["steps_tried"]),
                                       c["max_budget_s"], nproc))
            for name, capped in c.get("max_search_capped", {}).items():
                if capped:
                    notes.append("streams calls: %s was clean at the highest step tried (%d/s); its limit is higher"
                                 % (name, mx[name]))
            if c.get("max_search_cut"):
                notes.append("streams calls: the max-rate search hit its time budget; the figures are lower bounds")
            for name in servers:
                uncl = [r for r in c.get("max_steps", []) if r["server"] == name and not r["clean"]
                        and not r.get("superseded")]
                if uncl:
                    r = min(uncl, key=lambda r: r["rate"])
                    w = r["wall_s"] or 1
                    notes.append("streams calls: %s lowest unclean step %d/s: failed %d/%d (uac/uas), %.0f/s achieved, "
                                 "%d call(s) set up in >= 500 ms%s; cores used: server %.2f, SIPp uac %.2f, uas %s"
                                 % (name, r["rate"], r["failed"], r["uas_failed"], r["achieved_rate"],
                                    r["setup_500ms_or_more"],
                                    "; the server logged %d error lines%s" % (
                                        r["server_log_errors"], ", %d of them out of memory" % r["server_out_of_memory"]
                                        if r.get("server_out_of_memory") else "")
                                    if r.get("server_log_errors") else "",
                                    r["server_cpu_ns"] / 1e9 / w, r["uac_cpu_ns"] / 1e9 / w,
                                    "%.2f" % (r["uas_cpu_ns"] / 1e9 / w) if r.get("uas_cpu_ns") else "?"))
        busy = [r for r in c.get("cpu", []) if r.get("other_cores") is not None and r["other_cores"] > 0.25]
        if busy:
            notes.append("streams calls: (!) other work used > 0.25 core during %d of %d CPU runs (max %.2f cores): "
                         "the machine is shared, see streams.json other_cores"
                         % (len(busy), len(c["cpu"]), max(r["other_cores"] for r in busy)))
        bad = [r for r in c.get("cpu", []) if not r["clean"]]
        if bad:
            notes.append("streams calls: (!) %d CPU run(s) not clean: %s" % (len(bad), ", ".join(
                "%s %s rep %d (fail %d/%d, %.0f/s, %d slow)" % (r["server"], r["uac_transport"], r["rep"], r["failed"],
                                                               r["uas_failed"], r["achieved_rate"],
                                                               r["setup_500ms_or_more"]) for r in bad)))

    m = st.get("msgs")
    if m and m.get("targets"):
        failed, s = m.get("failed", {}), m.get("summary", {})
        cols = ("lunasip-tcp", "kamailio-tcp", "lunasip-tls", "lunasip-ws", "lunasip-wss")
        head = ("stream messages (OPTIONS, 200)", "tcp", "kamailio tcp", "ratio", "tls", "ws", "wss")

        def mcell(key, mode, field, digits):
            if key not in m["targets"]:
                return "-"
            if key in failed:
                return "n/a"
            v = s.get(key, {}).get(mode, {}).get(field)
            return num(v, digits) if v is not None else "-"

        def mrow(label, mode, field, digits, with_ratio=True):
            flag = ""
            if field in ("per_s", "us_per_msg") and any(not x.get(mode, {}).get("all_clean", True) for x in s.values()):
                flag = " (!)"
            a = s.get("lunasip-tcp", {}).get(mode, {}).get(field)
            b = s.get("kamailio-tcp", {}).get(mode, {}).get(field)
            rt = ratio(a, b) if with_ratio and "lunasip-tcp" not in failed and "kamailio-tcp" not in failed else "-"
            return (label + flag, mcell("lunasip-tcp", mode, field, digits), mcell("kamailio-tcp", mode, field, digits),
                    rt, mcell("lunasip-tls", mode, field, digits), mcell("lunasip-ws", mode, field, digits),
                    mcell("lunasip-wss", mode, field, digits))
        fixed = m.get("fixed_rate", 10000)
        rows = [mrow("messages/s, max", "max", "per_s", 0),
                mrow("  server CPU us/msg at max", "max", "us_per_msg", 2),
                mrow("  server cores at max", "max", "server_cores", 2, False),
                mrow("server CPU us/msg @%s/s" % num(fixed), "fixed", "us_per_msg", 2),
                mrow("  mean latency us @%s/s" % num(fixed), "fixed", "lat_mean_us", 0, False)]
        tabs.append((head, rows))
        for key in cols:
            if key in failed:
                notes.append("streams msgs: %s n/a: %s" % (key, failed[key]))
        notes.append("streams msgs: bench/streams/streamload.c (C, epoll, 1 thread) opens %d connections per target "
                     "(ws/wss: HTTP upgrade with Sec-WebSocket-Protocol: sip, masked text frames; tls/wss: mbedTLS, "
                     "TLS 1.2) and keeps %d OPTIONS in flight on each (max), or sends %s/s in all (fixed); lunasip "
                     "answers from Lua (bench/streams/server-msgs.lua, req:reply(200)), one process; Kamailio answers "
                     "with sl_send_reply (bench/kamailio/options-tcp.cfg, children=tcp_children=%d); server CPU = "
                     "se.sum_exec_runtime of every thread of every process over the window / answers; cores = that CPU "
                     "/ the window (near 1 for lunasip: it was the limit); median of %d interleaved runs of %g s%s"
                     % (m["conns"], m["window"], num(fixed), st.get("kamailio_children", 2), m["reps"], m["seconds"],
                        quick))
        busy = [d for d in m.get("runs", []) if d.get("other_cores") is not None and d["other_cores"] > 0.25]
        if busy:
            notes.append("streams msgs: (!) other work used > 0.25 core during %d of %d runs (max %.2f cores): the "
                         "machine is shared; the max rates and cores are the least robust figures, the CPU per message "
                         "the most" % (len(busy), len(m["runs"]), max(d["other_cores"] for d in busy)))
        bad = [d for d in m.get("runs", []) if not d["clean"]]
        if bad:
            notes.append("streams msgs: (!) %d run(s) not clean: %s" % (len(bad), ", ".join(
                "%s-%s %s rep %d (bad %d, errors %d, %.0f/s%s)" % (d["server"], d["transport"], d["mode"], d["rep"],
                                                                  d["bad"], d["errors"], d["per_s"],
                                                                  "" if d["first_error"] == "-" else ", " +
                                                                  d["first_error"].replace("_", " "))
                for d in bad)))
        pr = m.get("processes", {})
        if pr:
            notes.append("streams msgs: lunasip runs %s process (core.workers = 1, as in the UDP parts), Kamailio %s "
                         "processes of which %d read TCP: the max rates compare one event loop with %d TCP workers; "
                         "the CPU per message is the like-for-like figure"
                         % (pr.get("lunasip", "?"), pr.get("kamailio", "?"), st.get("kamailio_children", 2),
                            st.get("kamailio_children", 2)))
        cl = ["%s %.2f us" % (k, s[k]["max"]["client_us_per_msg"]) for k in cols if "max" in s.get(k, {})]
        if cl:
            notes.append("streams msgs: the load generator's own CPU per message at max (it shares the %s cores): %s"
                         % (nproc, ", ".join(cl)))

    t = st.get("tls")
    if t and t.get("targets"):
        failed, s = t.get("failed", {}), t.get("summary", {})
        cols = [k for k in ("lunasip-tls", "lunasip-tls-p256", "lunasip-tcp") if k in t["targets"]]
        names = {"lunasip-tls": "tls", "lunasip-tls-p256": "tls x25519/P256", "lunasip-tcp": "tcp (no TLS)"}
        head = ("connections/s: connect, OPTIONS, close",) + tuple(names[k] for k in cols)

        def tcell(key, field, digits):
            if key in failed:
                return "n/a"
            v = s.get(key, {}).get(field)
            return num(v, digits) if v is not None else "-"
        flag = " (!)" if any(not x["all_clean"] for x in s.values()) else ""
        rows = [("per second (lunasip)" + flag,) + tuple(tcell(k, "per_s", 0) for k in cols),
                ("  lunasip CPU us/connection",) + tuple(tcell(k, "us_per", 1) for k in cols),
                ("  lunasip cores",) + tuple(tcell(k, "server_cores", 2) for k in cols),
                ("  client CPU us/connection",) + tuple(tcell(k, "client_us_per", 1) for k in cols),
                ("  client cores",) + tuple(tcell(k, "client_cores", 2) for k in cols)]
        tabs.append((head, rows))
        for key in cols:
            if key in failed:
                notes.append("streams tls: %s n/a: %s" % (key, failed[key]))
        x = s.get("lunasip-tls", {})
        notes.append("streams tls: %d connections in parallel from bench/streams/streamload.c (mbedTLS client, no "
                     "certificate check, no session id kept and tickets off: every handshake is full), each: connect, "
                     "handshake, one OPTIONS, its 200, close_notify, close, then the next; \"tls\": the client offers "
                     "mbedTLS's whole curve list (secp521r1 among them, as OpenSSL's default list does); \"tls "
                     "x25519/P256\": it offers only x25519 and secp256r1; \"tcp\": the same cycle without TLS; %s; "
                     "lunasip's generated EC P-256 certificate, shipped tls settings; median of %d interleaved runs of "
                     "%g s%s" % (t["parallel"], "negotiated %s %s" % (x.get("version"), x.get("cipher")) if x else "",
                                 t["reps"], t["seconds"], quick))
        for case, d in sorted((t.get("openssl_probe") or {}).items()):
            notes.append("streams tls: openssl s_client (%s) negotiates with lunasip: %s"
                         % (case, ", ".join("%s %s" % kv for kv in sorted(d.items()))))
        bound = [names[k] for k in cols if s.get(k, {}).get("client_cores", 0) >= 0.9]
        if bound:
            notes.append("streams tls: the load generator (one thread) used >= 0.9 core in %s: there the rate is the "
                         "client's (per connection it spends more CPU than lunasip: the client side of an mbedTLS "
                         "handshake, or the kernel's connect and close; client and lunasip share %s cores), not "
                         "lunasip's limit; lunasip's CPU per connection is exact either way"
                         % (", ".join(bound), nproc))
        busy = [d for d in t.get("runs", []) if d.get("other_cores") is not None and d["other_cores"] > 0.25]
        if busy:
            notes.append("streams tls: (!) other work used > 0.25 core during %d of %d runs (max %.2f cores): the "
                         "machine is shared" % (len(busy), len(t["runs"]), max(d["other_cores"] for d in busy)))
        bad = [d for d in t.get("runs", []) if not d["clean"]]
        if bad:
            notes.append("streams tls: (!) %d run(s) not clean: %s" % (len(bad), ", ".join(
                "%s-%s rep %d (bad %d, errors %d%s)" % (d["server"], d["label"], d["rep"], d["bad"], d["errors"],
                                                        "" if d["first_error"] == "-" else ", " +
                                                        d["first_error"].replace("_", " ")) for d in bad)))
        notes.append("streams tls: Kamailio %s" % t.get("kamailio", "not compared"))
    return tabs, notes


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

    calls_rows, calls_head, calls_notes = calls_section(out)
    ev_sip, ev_sinks, ev_notes = events_section(out)
    st_tabs, st_notes = streams_section(out)
    w = [34, 14, 19, 8]
    if rows or not (calls_rows or ev_sip or ev_sinks or st_tabs):
        print("%-*s %*s %*s %*s" % (w[0], "benchmark", w[1], "lunasip", w[2], "libosip2/kamailio", w[3], "ratio"))
        for r in rows:
            print("%-*s %*s %*s %*s" % (w[0], r[0], w[1], r[1], w[2], r[2], w[3], r[3]))
        print()
    if calls_rows:
        cw = [34, 14, 12, 8, 14, 8]
        print("%-*s %*s %*s %*s %*s %*s" % (cw[0], calls_head[0], cw[1], calls_head[1], cw[2], calls_head[2],
                                           cw[3], calls_head[3], cw[4], calls_head[4], cw[5], calls_head[5]))
        for r in calls_rows:
            print("%-*s %*s %*s %*s %*s %*s" % (cw[0], r[0], cw[1], r[1], cw[2], r[2], cw[3], r[3], cw[4], r[4],
                                               cw[5], r[5]))
        print()
    if ev_sip:
        ew = [32, 9, 10, 6, 15, 6, 10, 6]
        for r in [ev_sip[0]] + ev_sip[1]:
            print(" ".join(("%-*s" if i == 0 else "%*s") % (ew[i], c) for i, c in enumerate(r)).rstrip())
        print()
    if ev_sinks:
        ew = [34, 10, 16, 13, 14, 9]
        for r in [ev_sinks[0]] + ev_sinks[1]:
            print("%-*s %*s %*s %*s %*s %*s" % (ew[0], r[0], ew[1], r[1], ew[2], r[2], ew[3], r[3], ew[4], r[4],
                                               ew[5], r[5]))
        print()
    for head, trows in st_tabs:
        sw = [34] + [13] * (len(head) - 1)
        for r in [head] + trows:
            print(" ".join(("%-*s" if i == 0 else "%*s") % (sw[i], c) for i, c in enumerate(r)).rstrip())
        print()
    if rows:
        print("ratio: parse = lunasip speed-up over libosip2 (higher is better); OPTIONS CPU = lunasip/kamailio "
              "(lower is better); max rate = lunasip/kamailio")
    if calls_rows:
        print("ratio: calls = lunasip/kamailio and lunasip/kamailio-lua: CPU per call and server/UAC CPU lower is "
              "better, max clean call rate higher is better")
    if ev_sip:
        print("ratio: events = with the event / without (CPU per request: lower is better, 1.00 = free; max clean "
              "rate: higher is better)")
    if st_tabs:
        print("ratio: streams = lunasip/kamailio over TCP: CPU per call or message lower is better, rates higher is "
              "better")
    for g in goals:
        print("goal: " + g)
    for n in notes + calls_notes + ev_notes + st_notes:
        print("note: " + n)
    if wall is not None:
        print("wall time of bench/run.sh: %d s; raw numbers in %s/" % (wall, out))


if __name__ == "__main__":
    main()
