"""The Proxy and Uac Lua API (SPEC §3.2, §4 "Proxy core", §5.3, §5.6; README "Proxying")
beyond t/integration/test_proxy.py: serial forking from on_failure_response, 503 → 500,
drop_response with RFC 6228 199, abort_routing, the blacklist (Timer F, RFC 4320,
add_target_to_blacklist), routing errors (no DNS, unsupported transport), double
Record-Route on an IPv4 → IPv6 change (RFC 5658), lunasip.Uac, reload with a routing in
flight, CANCEL details, stray responses.

Every lunasip runs t/integration/proxy_api/server.lua (the request's X-Case header picks
what it does; each handler call is logged as "[lua] CB <what> <Call-ID> ...") with
t/integration/proxy_api/proxies.conf (timer_B/F 2 s, timer_C 3 s; profile "bl" 1 s and
blacklist_time 3 s). Callers and callees are raw lsip.UdpPeer sockets on loopback, so the
wire is checked exactly."""
import os
import re
import signal
import time

import lsip
from lsip import request

HERE = os.path.dirname(os.path.abspath(__file__))
API_DIR = os.path.join(HERE, "proxy_api")
LO = "127.0.0.1"


# --------------------------------------------------------------------------------- helpers

def _read(name):
    with open(os.path.join(API_DIR, name)) as f:
        return f.read()


def _script(version="v1", uac_peer=0, uac_silent=0):
    return (_read("server.lua").replace("@VERSION@", version).replace("@UAC_PEER@", str(uac_peer))
            .replace("@UAC_SILENT@", str(uac_silent)))


def _proxies(timer_c_x=3):
    return _read("proxies.conf").replace("@TIMER_C_X@", str(timer_c_x))


def _inst(t, ipv6=False, **kw):
    """A lunasip running proxy_api/server.lua; shutdown_grace = 1 so the SIGTERM at cleanup
    does not wait long for transactions still in Timer K/D/M."""
    return t.instance(_script(**kw), ipv6=ipv6, proxies=_proxies(), conf_extra="core.shutdown_grace = 1")


_no_error_log = lsip.no_error_log
_values = lsip.header_values
_requests = lsip.requests
_responses = lsip.responses
_reply = lsip.uas_reply


def _wait_request(peer, method, timeout=2.0):
    return lsip.wait_request(peer, method, timeout)


def _vias(msg):
    return lsip.header_values(msg, "Via")


_CB_RE = re.compile(r"\[lua\] CB (\S+) (\S+) ?(.*)$")


def _cbs(inst, cid=None):
    """The handler lines of server.lua as (what, Call-ID, [details]) for cid (all when None)."""
    out = []
    for ln in inst.log().splitlines():
        m = _CB_RE.search(ln)
        if m and (cid is None or m.group(2) == cid):
            out.append((m.group(1), m.group(2), m.group(3).split()))
    return out


def _seq(inst, cid):
    """The handler lines of cid as strings "what details..." without the on_target ones."""
    return [" ".join([w] + d) for w, _, d in _cbs(inst, cid) if not w.endswith(".target")]


def _wait_cb(inst, what, cid=None, timeout=3.0):
    """The first handler line named what (for cid), waiting up to timeout; None if none."""
    end = time.monotonic() + timeout
    while True:
        got = [c for c in _cbs(inst, cid) if c[0] == what]
        if got:
            return got[0]
        if time.monotonic() >= end:
            return None
        time.sleep(0.02)


def _branch(via_value):
    return lsip.via_params(via_value).get("branch")


def _sent_by(via_value):
    m = re.match(r"\s*SIP\s*/\s*2\.0\s*/\s*(\w+)\s+(\[[^\]]+\]|[^\s;:]+)(?::(\d+))?", via_value, re.I)
    return (m.group(1).upper(), m.group(2), int(m.group(3)) if m.group(3) else None) if m else None


def _check_own_via(t, what, via_value, host, port):
    """lunasip's Via: SIP/2.0/UDP host:port;branch=z9hG4bK..."""
    t.eq(_sent_by(via_value), ("UDP", lsip.hostport(host), port), "%s: sent-by of lunasip's Via %r" % (what, via_value))
    br = _branch(via_value)
    t.check(isinstance(br, str) and br.startswith("z9hG4bK") and len(br) > 7,
            "%s: lunasip's Via has no magic-cookie branch: %r" % (what, via_value))
    return br


def _until_final(peer, msg, timeout=3.0, cseq_method=None):
    """The responses to msg up to and including the first final one (or timeout)."""
    out = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = peer.recv_response(msg, end - time.monotonic())
        if r is None:
            break
        if cseq_method and (r.header("CSeq") or "").split()[1:2] != [cseq_method]:
            continue
        out.append(r)
        if r.status >= 200:
            break
    return out


def _ack(uac, inv, ruri, final, inst_addr, routes=()):
    """The caller's ACK of final (a response to inv): same branch for a non-2xx, new for a 2xx."""
    two = 200 <= final.status < 300
    a = request("ACK", ruri, via=(uac.host, uac.port), branch=None if two else inv.branch, call_id=inv.call_id,
                from_tag=inv.from_tag, to_tag=lsip.tag_of(final.header("To")), cseq=inv.cseq,
                extra=["Route: " + r for r in routes])
    uac.send(a, inst_addr)
    return a


def _invite(uac, ruri, case, extra=(), via_host=None):
    return request("INVITE", ruri, via=(via_host or uac.host, uac.port),
                   extra=["X-Case: " + case, "Contact: <sip:alice@%s>" % lsip.hostport(uac.host, uac.port)]
                   + list(extra))


# ------------------------------------------------------------------------- serial forking

def test_proxy_api_serial_forking_from_on_failure_response(t):
    """on_failure_response of proxy A routes the request again with a new Proxy (README
    "Proxying": serial forking): UAS1's 486 never goes upstream, lunasip ACKs it hop by hop,
    the INVITE goes to UAS2 as a new branch whose 200 is the caller's only final."""
    inst = _inst(t)
    uac, uas1, uas2 = t.peer(), t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas1.port)
    inv = _invite(uac, ruri, "serial", ["X-Next-Port: %d" % uas2.port])
    uac.send(inv, inst.addr4)
    f1 = _wait_request(uas1, "INVITE")
    if not t.check(f1 is not None, "UAS1: no INVITE"):
        return
    br1 = _check_own_via(t, "INVITE at UAS1", _vias(f1)[0], LO, inst.port4)
    _reply(uas1, f1, 486, "Busy Here", to_tag="uas1-tag")
    ack1 = _wait_request(uas1, "ACK")
    if t.check(ack1 is not None, "UAS1: no ACK of its 486 from lunasip (RFC 3261 §17.1.1.3)"):
        v = _vias(ack1)
        t.check(len(v) == 1 and _branch(v[0]) == br1,
                "ACK at UAS1: Vias %r, expected lunasip's only with its INVITE's branch %r" % (v, br1))
        t.eq(ack1.header("CSeq"), "1 ACK", "ACK at UAS1: CSeq")
        t.eq(lsip.tag_of(ack1.header("To")), "uas1-tag", "ACK at UAS1: To tag (the 486's)")
        t.eq(ack1.start, f1.start.replace("INVITE", "ACK", 1), "ACK at UAS1: request line (the INVITE's R-URI)")

    f2 = _wait_request(uas2, "INVITE")
    if not t.check(f2 is not None, "UAS2: no INVITE after UAS1's 486 (the re-route from on_failure_response)"):
        t.note("handlers: %s" % _seq(inst, inv.call_id))
        return
    v2 = _vias(f2)
    if t.check(len(v2) == 2, "INVITE at UAS2: Vias %r, expected lunasip's and the caller's" % v2):
        br2 = _check_own_via(t, "INVITE at UAS2", v2[0], LO, inst.port4)
        t.check(br2 != br1, "INVITE at UAS2: same branch %r as to UAS1 (must be a new client transaction)" % br2)
        t.eq(_branch(v2[1]), inv.branch, "INVITE at UAS2: the caller's Via branch")
        t.eq(lsip.via_params(v2[1]).get("rport"), str(uac.port), "INVITE at UAS2: rport on the caller's Via")
    t.eq(f2.header("Max-Forwards"), "69", "INVITE at UAS2: Max-Forwards (decremented once, RFC 3261 §16.6 step 3)")
    t.eq(len(f2.header_all("Record-Route")), 1, "INVITE at UAS2: Record-Route values %r" % f2.header_all("Record-Route"))
    t.eq(f2.start, f1.start, "INVITE at UAS2: request line (R-URI untouched by the fixed destination)")
    t.eq(f2.header("X-Next-Port"), str(uas2.port), "INVITE at UAS2: the caller's headers")

    _reply(uas2, f2, 180, "Ringing", to_tag="uas2-tag")
    _reply(uas2, f2, 200, "OK", to_tag="uas2-tag", record_route=True,
           extra=["Contact: <sip:bob@%s:%d>" % (LO, uas2.port)])
    got = _responses(uac, inv, 1.5)
    st = [r.status for r in got]
    t.check(486 not in st, "caller: got UAS1's 486 (%r): on_failure_response's re-route must keep it back" % st)
    t.eq([s for s in st if s >= 200], [200], "caller: final responses")
    t.check(100 in st and 180 in st, "caller: responses %r, expected 100 (lunasip) and UAS2's 180" % st)
    ok = [r for r in got if r.status == 200]
    if ok:
        t.eq(lsip.tag_of(ok[0].header("To")), "uas2-tag", "caller: To tag of the 200")
        t.eq(len(_vias(ok[0])), 1, "caller: Vias in the 200")
        _ack(uac, inv, "sip:bob@%s:%d" % (LO, uas2.port), ok[0], inst.addr4, ok[0].header_all("Record-Route"))
        a2 = _wait_request(uas2, "ACK")
        t.check(a2 is not None and lsip.tag_of(a2.header("To")) == "uas2-tag",
                "UAS2: the caller's ACK of the 200 did not arrive (%r)" % a2)
    t.eq([m.start for m in _requests(uas1, 0.3)], [], "UAS1: requests after its ACK (CANCEL? a second INVITE?)")

    seq = _seq(inst, inv.call_id)
    t.check("A.failure 486 tvars=mark-INVITE" in seq, "handlers %r: no A.failure 486" % seq)
    t.check("reroute true nil" in seq, "handlers %r: the second Proxy:route() did not return true" % seq)
    t.check("B.success 200 tvars=mark-INVITE" in seq, "handlers %r: no B.success 200 (with request.tvars)" % seq)
    t.check(not [s for s in seq if s.startswith(("A.success", "A.error", "B.failure", "B.error"))],
            "handlers: unexpected calls in %r" % seq)
    _no_error_log(t, inst)


# --------------------------------------------------------------------------------- 503

def test_proxy_api_503_from_single_target_becomes_500(t):
    """RFC 3261 §16.7 step 6: the only target answers 503: on_failure_response sees the 503,
    the caller gets 500 (INVITE and non-INVITE), the callee gets the ACK of its 503."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = _invite(uac, ruri, "plain")
    uac.send(inv, inst.addr4)
    f = _wait_request(uas, "INVITE")
    if not t.check(f is not None, "INVITE: not forwarded"):
        return
    _reply(uas, f, 503, "Service Unavailable", to_tag="t503", extra=["Retry-After: 30"])
    got = _until_final(uac, inv)
    fin = got[-1] if got and got[-1].status >= 200 else None
    if t.check(fin is not None, "INVITE: no final answer (got %r)" % [r.status for r in got]):
        t.eq(fin.status, 500, "INVITE: final status upstream for a lone 503")
        t.eq(lsip.tag_of(fin.header("To")), "t503", "INVITE: To tag of the 500 (the callee's response, rewritten)")
        _ack(uac, inv, ruri, fin, inst.addr4)
    a = _wait_request(uas, "ACK")
    t.check(a is not None and len(_vias(a)) == 1, "callee: no ACK of its 503 from lunasip: %r" % a)
    t.eq([m.start for m in _requests(uas, 0.3)], [], "callee: more requests (a 503 with one target: no failover)")
    t.eq(_seq(inst, inv.call_id), ["on_request INVITE plain v1", "route true nil", "A.failure 503 tvars=mark-INVITE"],
         "INVITE 503: handlers")

    opt = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: plain"])
    uac.send(opt, inst.addr4)
    f = _wait_request(uas, "OPTIONS")
    if t.check(f is not None, "OPTIONS: not forwarded"):
        _reply(uas, f, 503, "Service Unavailable")
        got = _until_final(uac, opt)
        t.eq([r.status for r in got], [500], "OPTIONS 503: answers upstream")
    t.eq(_seq(inst, opt.call_id)[-1:], ["A.failure 503 tvars=mark-OPTIONS"], "OPTIONS 503: last handler")
    _no_error_log(t, inst)


def test_proxy_api_max_forwards_clamped_by_the_script_is_decremented(t):
    """Regression: the core decremented the Max-Forwards the request arrived with, undoing
    the script's req:check_max_forwards(10). A received value is clamped to 10 and then
    decremented (70 leaves as 9, 5 as 4, 1 as 0); a missing one is added as 10 and leaves
    as 10, as the 70 of RFC 3261 §16.6 step 3 would."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    for sent, want in ((70, "9"), (5, "4"), (None, "10"), (1, "0")):
        opt = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: clamp"], max_forwards=sent)
        uac.send(opt, inst.addr4)
        f = _wait_request(uas, "OPTIONS")
        if t.check(f is not None, "Max-Forwards %s: not forwarded" % sent):
            t.eq(f.header("Max-Forwards"), want, "Max-Forwards %s: at the callee" % sent)
            _reply(uas, f, 200, "OK")
            _until_final(uac, opt)
    _no_error_log(t, inst)


# ------------------------------------------------------------------------ drop_response

def test_proxy_api_drop_response_sends_199_before_the_scripts_answer(t):
    """RFC 6228: the INVITE says Supported: 199; the callee's early dialog (180, To tag T)
    ends with a 486 that on_failure_response drops (then answers 480 itself): the caller
    gets 180, a 199 with To tag T, then the 480, and never the 486."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = _invite(uac, ruri, "drop199", ["Supported: 199"])
    uac.send(inv, inst.addr4)
    f = _wait_request(uas, "INVITE")
    if not t.check(f is not None, "INVITE: not forwarded"):
        return
    _reply(uas, f, 180, "Ringing", to_tag="early-T")
    r180 = _until_final(uac, inv, 1.0)  # up to the timeout: there is no final yet
    t.check([r for r in r180 if r.status == 180], "caller: no 180 (got %r)" % [r.status for r in r180])
    _reply(uas, f, 486, "Busy Here", to_tag="early-T")
    got = _until_final(uac, inv, 1.2)  # up to the first final, which is ACKed at once
    fin = got[-1] if got and got[-1].status >= 200 else None
    if fin is not None:
        _ack(uac, inv, ruri, fin, inst.addr4)
    after = _responses(uac, inv, 0.4)  # a 199 sent after the final would be too late
    st = [r.status for r in got] + ["(after the final) %d" % r.status for r in after]
    t.eq(st, [199, 480], "caller: responses after the 486 (RFC 6228: 199 for the early dialog, then the 480)")
    r199 = [r for r in got + after if r.status == 199]
    if r199:
        t.eq(lsip.tag_of(r199[0].header("To")), "early-T", "199: To tag (the ended early dialog's)")
        t.eq(len(_vias(r199[0])), 1, "199: Vias (the caller's only)")
        t.eq(r199[0].header("CSeq"), "1 INVITE", "199: CSeq")
    if fin is not None:
        t.eq((fin.status, fin.reason), (480, "Gone"), "final: status and reason phrase (the script's)")
    a = _wait_request(uas, "ACK")
    t.check(a is not None and lsip.tag_of(a.header("To")) == "early-T", "callee: no ACK of its 486 (%r)" % a)
    seq = _seq(inst, inv.call_id)
    t.check("A.failure 486 tvars=mark-INVITE" in seq and "reply480 true nil" in seq,
            "handlers %r: expected A.failure 486 then a successful reply(480)" % seq)
    _no_error_log(t, inst)


# ------------------------------------------------------------------------ abort_routing

def test_proxy_api_abort_routing_in_on_target(t):
    """proxy:abort_routing() from on_target: nothing is sent to the target, on_error(403,
    "Destination Aborted", "destination_aborted"), 403 upstream."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = _invite(uac, ruri, "abort")
    uac.send(inv, inst.addr4)
    got = _until_final(uac, inv, 2.0)
    fin = got[-1] if got and got[-1].status >= 200 else None
    if t.check(fin is not None, "caller: no final answer (got %r)" % [r.status for r in got]):
        t.eq((fin.status, fin.reason), (403, "Destination Aborted"), "caller: final status and reason")
        _ack(uac, inv, ruri, fin, inst.addr4)
    t.eq([m.start for m in _requests(uas, 0.5)], [], "callee: requests received (the target was aborted)")
    cbs = _cbs(inst, inv.call_id)
    tg = [d for w, _, d in cbs if w == "A.target"]
    t.eq(tg[:1], [["udp", LO, str(uas.port)]], "on_target(target): transport ip port")
    err = [d for w, _, d in cbs if w == "A.error"]
    t.eq(err, [["403", "destination_aborted", "Destination", "Aborted"]], "on_error(status, code, reason) calls")
    t.check(not [w for w, _, d in cbs if w == "on_request" and d[:1] == ["ACK"]],
            "the ACK of lunasip's 403 reached on_request (it belongs to the transaction)")
    _no_error_log(t, inst)


# ---------------------------------------------------------------------------- blacklist

def test_proxy_api_blacklist_after_timer_f_no_408(t):
    """Profile bl (timer_F = 1, blacklist_time = 3): an OPTIONS to a silent target ends on
    Timer F with on_error(..., "client_timeout") and no answer upstream (RFC 4320 §4.2);
    the target is blacklisted: a second OPTIONS gets on_error client_timeout at once and
    nothing goes to the target; after 3 s the target is tried again."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    o1 = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: bl"])
    t0 = time.monotonic()
    uac.send(o1, inst.addr4)
    e1 = _wait_cb(inst, "A.error", o1.call_id, 3.0)
    t_err = time.monotonic()
    if not t.check(e1 is not None, "OPTIONS 1: no on_error after Timer F (1 s)"):
        return
    t.check(0.8 <= t_err - t0 <= 2.2, "OPTIONS 1: on_error after %.2f s, expected Timer F (1 s)" % (t_err - t0))
    t.eq([e1[2][0], e1[2][1]], ["408", "client_timeout"], "OPTIONS 1: on_error status and code")
    copies = [m for m in _requests(uas, 0.05) if m.header("Call-ID") == o1.call_id]
    t.check(len(copies) >= 2, "target: %d OPTIONS copies, expected Timer E retransmissions" % len(copies))

    # within blacklist_time: on_error at once, nothing sent
    o2 = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: bl"])
    uac.send(o2, inst.addr4)
    e2 = _wait_cb(inst, "A.error", o2.call_id, 0.5)
    if t.check(e2 is not None, "OPTIONS 2 (target blacklisted): no on_error within 0.5 s"):
        t.eq(e2[2][1], "client_timeout", "OPTIONS 2: on_error code (the blacklist entry of a timeout)")
    t.eq([m.start for m in _requests(uas, 0.2)], [], "target: requests while blacklisted")
    t.eq([c[0] for c in _cbs(inst, o2.call_id) if c[0] == "A.target"], [],
         "OPTIONS 2: on_target called for a blacklisted target")
    # RFC 4320: no 408 to either OPTIONS, for 1.5 s after the timeout
    left = 1.5 - (time.monotonic() - t_err)
    late = [r for r in _responses(uac, o1, max(left, 0.05))]
    late += [lsip.Response(d, a) for d, a in uac.strays]
    uac.strays.clear()
    t.eq([(r.status, r.header("Call-ID") == o1.call_id and "OPTIONS 1" or "OPTIONS 2") for r in late if r.is_response], [],
         "caller: answers to the timed-out / blacklisted OPTIONS (RFC 4320 §4.2: never a 408)")

    # after blacklist_time (3 s from the timeout): sent again
    time.sleep(max(0.0, t_err + 3.2 - time.monotonic()))
    o3 = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: bl"])
    uac.send(o3, inst.addr4)
    f3 = _wait_request(uas, "OPTIONS", 1.0)
    if t.check(f3 is not None and f3.header("Call-ID") == o3.call_id,
               "OPTIONS 3 (3.2 s after the blacklisting): not sent to the target (%r)" % f3):
        _reply(uas, f3, 200, "OK")
        r = _until_final(uac, o3, 1.0)
        t.eq([x.status for x in r], [200], "OPTIONS 3: answers upstream")
    _no_error_log(t, inst)


def test_proxy_api_add_target_to_blacklist(t):
    """proxy:add_target_to_blacklist(5, 503, "Bye") from on_failure_response: the next
    request to that target gets on_error(503, "Bye", "destination_blacklisted") at once,
    503 Bye upstream, and nothing reaches the target."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    o1 = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: bl_add"])
    uac.send(o1, inst.addr4)
    f = _wait_request(uas, "OPTIONS")
    if not t.check(f is not None, "OPTIONS 1: not forwarded"):
        return
    _reply(uas, f, 404, "Not Found")
    r1 = _until_final(uac, o1)
    t.eq([r.status for r in r1], [404], "OPTIONS 1: answers upstream")
    t.check("blacklisted true nil" in _seq(inst, o1.call_id),
            "OPTIONS 1: add_target_to_blacklist did not return true: %r" % _seq(inst, o1.call_id))

    o2 = request("OPTIONS", ruri, via=(uac.host, uac.port), extra=["X-Case: bl_add"])
    t0 = time.monotonic()
    uac.send(o2, inst.addr4)
    r2 = _until_final(uac, o2, 1.0)
    took = time.monotonic() - t0
    if t.check(r2 and r2[-1].status >= 200, "OPTIONS 2: no answer within 1 s (blacklisted target)"):
        t.eq((r2[-1].status, r2[-1].reason), (503, "Bye"), "OPTIONS 2: answer (the blacklist entry's)")
        t.check(took < 0.5, "OPTIONS 2: answered after %.2f s, expected at once" % took)
    err = [d for w, _, d in _cbs(inst, o2.call_id) if w == "A.error"]
    t.eq(err, [["503", "destination_blacklisted", "Bye"]], "OPTIONS 2: on_error(status, code, reason)")
    t.eq([m.start for m in _requests(uas, 0.3)], [], "target: requests while blacklisted")
    _no_error_log(t, inst)


# ------------------------------------------------------------------------ routing errors

def test_proxy_api_route_to_host_name_and_tcp_fail_cleanly(t):
    """A host name as destination (no DNS in this lunasip) → on_error(478, ..., "no_dns")
    and 478 upstream, before any target; transport "tcp" to a port nobody listens on →
    on_target, then on_error(500, ..., "connection_error") and 500 upstream at once (the
    refused connect fails the transaction, RFC 3261 §17.1.4), not after Timer F/B."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    for case, method, status, code in (("dns", "INVITE", 478, "no_dns"), ("tcp", "OPTIONS", 500, "connection_error"),
                                       ("tcp", "INVITE", 500, "connection_error")):
        what = "%s %s" % (case, method)
        msg = _invite(uac, ruri, case) if method == "INVITE" else \
            request(method, ruri, via=(uac.host, uac.port), extra=["X-Case: " + case])
        uac.send(msg, inst.addr4)
        got = _until_final(uac, msg, 2.0)
        fin = got[-1] if got and got[-1].status >= 200 else None
        if t.check(fin is not None, "%s: no final answer within 2 s (got %r)" % (what, [r.status for r in got])):
            t.eq(fin.status, status, "%s: final status upstream" % what)
            if method == "INVITE":
                _ack(uac, msg, ruri, fin, inst.addr4)
        err = [d for w, _, d in _cbs(inst, msg.call_id) if w == "A.error"]
        t.check(len(err) == 1 and err[0][:2] == [str(status), code],
                "%s: on_error calls %r, expected one with (%d, %s)" % (what, err, status, code))
        targets = [c for c in _cbs(inst, msg.call_id) if c[0] == "A.target"]
        if case == "dns":
            t.check(not targets, "%s: on_target was called" % what)
        else:
            # the refused target is blacklisted (use_blacklist): the second routing skips it
            t.eq(len(targets), 1 if method == "OPTIONS" else 0, "%s: on_target calls" % what)
    t.eq([m.start for m in _requests(uas, 0.2)], [], "callee: requests received")
    _no_error_log(t, inst)


# ---------------------------------------------------------------- double Record-Route

def test_proxy_api_double_record_route_ipv4_to_ipv6(t):
    """RFC 5658 / SPEC §4: an INVITE from an IPv4 caller to an IPv6 callee gets two
    Record-Route values (the outgoing [::1] one on top, then the incoming 127.0.0.1 one);
    the callee's BYE with both as Route goes through lunasip (loose_route removes both)."""
    inst = _inst(t, ipv6=True)
    uac, uas = t.peer(), t.peer("::1")
    ruri = "sip:bob@[::1]:%d" % uas.port
    inv = _invite(uac, ruri, "plain")
    uac.send(inv, inst.addr4)
    f = _wait_request(uas, "INVITE")
    if not t.check(f is not None, "callee [::1]: no INVITE"):
        return
    v = _vias(f)
    if t.check(len(v) == 2, "INVITE at the callee: Vias %r" % v):
        _check_own_via(t, "INVITE at the callee", v[0], "::1", inst.port6)
    rr = _values(f, "Record-Route")
    want = ["<sip:[::1]:%d;transport=udp;lr>" % inst.port6, "<sip:127.0.0.1:%d;transport=udp;lr>" % inst.port4]
    t.eq(rr, want, "INVITE at the callee: Record-Route values (top: lunasip's [::1], then its 127.0.0.1)")
    uas_contact = "sip:bob@[::1]:%d" % uas.port
    _reply(uas, f, 200, "OK", to_tag="v6-tag", record_route=True, extra=["Contact: <%s>" % uas_contact])
    got = _until_final(uac, inv)
    ok = got[-1] if got and got[-1].status == 200 else None
    if not t.check(ok is not None, "caller: no 200 (got %r)" % [r.status for r in got]):
        return
    t.eq(_values(ok, "Record-Route"), rr, "200 at the caller: Record-Route")
    # the caller's route set is the Record-Route reversed (RFC 3261 §12.1.2)
    _ack(uac, inv, uas_contact, ok, inst.addr4, list(reversed(_values(ok, "Record-Route"))))
    a = _wait_request(uas, "ACK")
    if t.check(a is not None, "callee: no ACK of the 200"):
        t.eq(a.header_all("Route"), [], "ACK at the callee: Route (both of lunasip's removed)")
        t.eq(len(_vias(a)), 2, "ACK at the callee: Vias")

    bye = request("BYE", "sip:alice@%s:%d" % (LO, uac.port), via=("::1", uas.port),
                  call_id=inv.call_id, from_uri="<sip:probe@lunasip.invalid>", from_tag="v6-tag",
                  to="<sip:tester@lunasip.invalid>", to_tag=inv.from_tag, cseq=1,
                  extra=["Route: " + r for r in rr] + ["X-Case: plain"])
    uas.send(bye, inst.addr6)
    b = _wait_request(uac, "BYE")
    if t.check(b is not None, "caller: the callee's BYE did not come through lunasip"):
        t.eq(b.start, "BYE sip:alice@%s:%d SIP/2.0" % (LO, uac.port), "BYE at the caller: request line")
        t.eq(b.header_all("Route"), [], "BYE at the caller: Route (loose_route must remove both of lunasip's)")
        bv = _vias(b)
        if t.check(len(bv) == 2, "BYE at the caller: Vias %r" % bv):
            _check_own_via(t, "BYE at the caller", bv[0], LO, inst.port4)
            t.eq(_branch(bv[1]), bye.branch, "BYE at the caller: the callee's Via")
        t.eq(b.header_all("Record-Route"), [], "BYE at the caller: Record-Route (in-dialog)")
        _reply(uac, b, 200, "OK")
        r = _until_final(uas, bye)
        t.eq([x.status for x in r], [200], "callee: answers to its BYE")
    lr = [d for w, _, d in _cbs(inst, inv.call_id) if w == "loose_route"]
    t.check(["BYE", "true"] in lr, "loose_route() of the BYE: %r, expected true" % lr)
    _no_error_log(t, inst)


# ---------------------------------------------------------------------------------- Uac

def test_proxy_api_uac_options_from_on_started_and_on_user_reload(t):
    """lunasip.Uac + UacRequest: from SystemEvents.on_started an OPTIONS to a raw peer (our
    Via with a z9hG4bK branch, Max-Forwards 70, a From tag); its 200 reaches
    on_success_response with response.tvars = the UacRequest's tvars. From on_user_reload
    (SIGUSR1) one to a silent peer: on_error client_timeout (profile bl, Timer F 1 s)."""
    peer, silent = t.peer(), t.peer()
    inst = _inst(t, uac_peer=peer.port, uac_silent=silent.port)
    o = _wait_request(peer, "OPTIONS", 3.0)
    if not t.check(o is not None, "peer: no OPTIONS from on_started's Uac"):
        return
    t.eq(o.start, "OPTIONS sip:127.0.0.1:%d SIP/2.0" % peer.port, "Uac OPTIONS: request line")
    v = _vias(o)
    if t.check(len(v) == 1, "Uac OPTIONS: Vias %r, expected lunasip's only" % v):
        _check_own_via(t, "Uac OPTIONS", v[0], LO, inst.port4)
    t.eq(o.header("Max-Forwards"), "70", "Uac OPTIONS: Max-Forwards")
    t.check(lsip.tag_of(o.header("From")), "Uac OPTIONS: no From tag: %r" % o.header("From"))
    t.check((o.header("From") or "").startswith("<sip:lunasip@test>"), "Uac OPTIONS: From %r" % o.header("From"))
    t.eq(lsip.tag_of(o.header("To")), None, "Uac OPTIONS: To tag")
    t.eq(o.header("CSeq"), "1 OPTIONS", "Uac OPTIONS: CSeq")
    cid = o.header("Call-ID")
    t.check(cid, "Uac OPTIONS: no Call-ID")
    _reply(peer, o, 200, "OK")
    s = _wait_cb(inst, "U.success", cid, 2.0)
    if t.check(s is not None, "on_success_response of the Uac not called (Call-ID %s): %r" % (cid, _seq(inst, cid))):
        t.eq(s[2], ["200", "tvars=uac-U"], "Uac on_success_response: status and response.tvars.mark")
    rt = _wait_cb(inst, "U.route", cid, 0.1)
    t.check(rt is not None and rt[2] == ["true", "nil"], "uac:route() did not return true: %r" % _seq(inst, cid))
    t.eq([m.start for m in _requests(peer, 0.3)], [], "peer: more requests after its 200")

    mark = inst.mark()
    inst.signal(signal.SIGUSR1)
    o2 = _wait_request(silent, "OPTIONS", 2.0)
    if not t.check(o2 is not None, "silent peer: no OPTIONS from on_user_reload's Uac"):
        return
    cid2 = o2.header("Call-ID")
    t.check(cid2 != cid, "the second Uac request reuses the Call-ID %r" % cid)
    e = _wait_cb(inst, "S.error", cid2, 3.0)
    if t.check(e is not None, "silent peer: no on_error from the Uac: %r" % _seq(inst, cid2)):
        t.eq(e[2][:2], ["408", "client_timeout"], "Uac to a silent peer: on_error status and code")
    t.check("on_user_reload" in inst.log_since(mark), "SIGUSR1: on_user_reload not logged")
    _no_error_log(t, inst)


# --------------------------------------------------------------------------------- reload

def test_proxy_api_reload_keeps_the_routing_scripts_callbacks_and_profile(t):
    """SPEC §5.6: an INVITE routed by script v1 with profile X (timer_C = 3) is ringing when
    server.lua (v2) and proxies.conf (X timer_C = 60) change and SIGHUP reloads: its Timer C
    still fires at ~3 s with v1's on_invite_timeout, 408 upstream, CANCEL downstream. A call
    after the reload runs v2 with the new X (no Timer C within 4.5 s)."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv1 = _invite(uac, ruri, "reload")
    uac.send(inv1, inst.addr4)
    f1 = _wait_request(uas, "INVITE")
    if not t.check(f1 is not None, "call 1: INVITE not forwarded"):
        return
    _reply(uas, f1, 180, "Ringing", to_tag="c1")
    t180 = time.monotonic()

    mark = inst.mark()
    inst.write_script(_script(version="v2"))
    with open(os.path.join(inst.dir, "proxies.conf"), "w") as fh:
        fh.write(_proxies(timer_c_x=60))
    inst.signal(signal.SIGHUP)
    t.check(inst.wait_log(r"reload done", 3.0, mark), "no 'reload done' after SIGHUP")

    inv2 = _invite(uac, ruri, "reload")
    uac.send(inv2, inst.addr4)
    f2 = _wait_request(uas, "INVITE")
    if not t.check(f2 is not None and f2.header("Call-ID") == inv2.call_id, "call 2: INVITE not forwarded (%r)" % f2):
        return
    _reply(uas, f2, 180, "Ringing", to_tag="c2")
    t180b = time.monotonic()

    c = _wait_request(uas, "CANCEL", 5.0)
    tc = time.monotonic() - t180
    if t.check(c is not None, "call 1: no CANCEL from Timer C"):
        t.eq(c.header("Call-ID"), inv1.call_id, "the CANCEL after the reload: Call-ID (call 1's)")
        t.check(2.5 <= tc <= 4.5, "call 1: Timer C fired %.1f s after the 180, expected ~3 s (profile X of v1)" % tc)
        _reply(uas, c, 200, "OK")
        _reply(uas, f1, 487, "Request Terminated", to_tag="c1")
    r1 = _until_final(uac, inv1, 1.5)
    fin = r1[-1] if r1 and r1[-1].status >= 200 else None
    if t.check(fin is not None and fin.status == 408, "call 1: final upstream %r, expected 408" % [x.status for x in r1]):
        _ack(uac, inv1, ruri, fin, inst.addr4)
    to1 = [d for w, _, d in _cbs(inst, inv1.call_id) if w == "A.invite_timeout"]
    t.eq(to1, [["v1"]], "call 1: on_invite_timeout calls (the v1 script's callback)")
    rq2 = [d for w, _, d in _cbs(inst, inv2.call_id) if w == "on_request"]
    t.eq(rq2[:1], [["INVITE", "reload", "v2"]], "call 2: on_request (the reloaded script)")

    # call 2: profile X is now timer_C = 60
    left = t180b + 4.5 - time.monotonic()
    more = [m for m in _requests(uas, max(left, 0.05)) if m.header("Call-ID") == inv2.call_id]
    t.eq([m.start.split()[0] for m in more if not m.start.startswith("ACK")], [],
         "call 2: requests to the callee within 4.5 s (a CANCEL means the old timer_C = 3)")
    t.eq([d for w, _, d in _cbs(inst, inv2.call_id) if w == "A.invite_timeout"], [], "call 2: on_invite_timeout")
    got2 = [r.status for r in _responses(uac, inv2, 0.05) if r.status >= 200]
    t.eq(got2, [], "call 2: final answers upstream before the callee's")
    _reply(uas, f2, 486, "Busy Here", to_tag="c2")
    r2 = _until_final(uac, inv2, 1.5)
    if r2 and r2[-1].status >= 200:
        t.eq(r2[-1].status, 486, "call 2: final status")
        _ack(uac, inv2, ruri, r2[-1], inst.addr4)
        t.check(_wait_cb(inst, "A.failure", inv2.call_id, 1.0), "call 2: on_failure_response (v2) not called")
    else:
        t.check(False, "call 2: no final after the callee's 486: %r" % [x.status for x in r2])
    _no_error_log(t, inst)


# --------------------------------------------------------------------------------- CANCEL

def test_proxy_api_cancel_reason_200_and_481(t):
    """RFC 3261 §16.10, RFC 3326: the caller's CANCEL is answered 200 by lunasip; the CANCEL
    lunasip sends downstream carries the caller's Reason header (both rows: SIP and Q.850);
    the callee's 487 goes upstream. A CANCEL matching no transaction gets 481."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = _invite(uac, ruri, "plain")
    uac.send(inv, inst.addr4)
    f = _wait_request(uas, "INVITE")
    if not t.check(f is not None, "INVITE: not forwarded"):
        return
    _reply(uas, f, 180, "Ringing", to_tag="cx")
    _until_final(uac, inv, 0.5)
    reasons = ['SIP;cause=600;text="Busy Everywhere"', "Q.850;cause=17;text=\"User busy\""]
    cancel = request("CANCEL", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                     from_tag=inv.from_tag, cseq=inv.cseq, extra=["Reason: " + r for r in reasons])
    uac.send(cancel, inst.addr4)
    r = _until_final(uac, cancel, 1.0, cseq_method="CANCEL")
    if t.check(r and r[-1].status == 200, "caller: answers to its CANCEL %r, expected 200" % [x.status for x in r]):
        ok = r[-1]
        v = _vias(ok)
        t.check(len(v) == 1 and _branch(v[0]) == inv.branch and lsip.via_params(v[0]).get("rport") == str(uac.port),
                "200 for the CANCEL: Vias %r, expected the caller's only (branch %s, rport=%d)" % (v, inv.branch, uac.port))
        t.eq(ok.header("CSeq"), "1 CANCEL", "200 for the CANCEL: CSeq")
        t.eq(ok.header("Call-ID"), inv.call_id, "200 for the CANCEL: Call-ID")
    c = _wait_request(uas, "CANCEL")
    if t.check(c is not None, "callee: no CANCEL from lunasip"):
        v = _vias(c)
        t.check(len(v) == 1 and _branch(v[0]) == _branch(_vias(f)[0]),
                "CANCEL at the callee: Vias %r, expected lunasip's with the INVITE's branch" % v)
        t.eq(_values(c, "Reason"), reasons, "CANCEL at the callee: Reason values (the caller's CANCEL's, RFC 3326)")
        t.eq(c.header("CSeq"), "1 CANCEL", "CANCEL at the callee: CSeq")
        t.eq(c.start, f.start.replace("INVITE", "CANCEL", 1), "CANCEL at the callee: request line")
        _reply(uas, c, 200, "OK")
        _reply(uas, f, 487, "Request Terminated", to_tag="cx")
        a = _wait_request(uas, "ACK")
        t.check(a is not None, "callee: no ACK of its 487")
    fin = _until_final(uac, inv, 1.5, cseq_method="INVITE")
    if t.check(fin and fin[-1].status == 487, "caller: final to the INVITE %r, expected 487" % [x.status for x in fin]):
        _ack(uac, inv, ruri, fin[-1], inst.addr4)
    t.check(_wait_cb(inst, "A.canceled", inv.call_id, 0.5), "on_canceled not called: %r" % _seq(inst, inv.call_id))

    # a CANCEL for no transaction: 481, nothing forwarded, not shown to Lua
    stray = request("CANCEL", ruri, via=(uac.host, uac.port), extra=["Reason: " + reasons[0]])
    uac.send(stray, inst.addr4)
    r = _until_final(uac, stray, 1.0)
    t.eq([x.status for x in r], [481], "CANCEL matching no transaction: answers")
    t.eq([m.start for m in _requests(uas, 0.3) if not m.start.startswith("ACK")], [],
         "callee: requests after the stray CANCEL")
    t.eq(_cbs(inst, stray.call_id), [], "the stray CANCEL reached Lua")
    _no_error_log(t, inst)


def test_proxy_api_cancel_of_an_unrouted_invite_gets_487(t):
    """An INVITE the script neither answers nor routes waits in its transaction; a CANCEL
    for it is answered 200 and the INVITE 487 by the core (nothing is routed, on_request
    ran once), and a retransmitted INVITE then gets the 487 again."""
    inst = _inst(t)
    uac = t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uac.port)
    inv = _invite(uac, ruri, "hold")
    uac.send(inv, inst.addr4)
    t.eq(_until_final(uac, inv, 0.5), [], "held INVITE: answers before the CANCEL")
    cancel = request("CANCEL", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                     from_tag=inv.from_tag, cseq=inv.cseq)
    uac.send(cancel, inst.addr4)
    r = _until_final(uac, cancel, 1.0, cseq_method="CANCEL")
    t.eq([x.status for x in r], [200], "CANCEL of the held INVITE: answers")
    fin = _until_final(uac, inv, 1.0, cseq_method="INVITE")
    t.eq([x.status for x in fin], [487], "held INVITE after the CANCEL: answers")
    uac.send(inv, inst.addr4)
    again = _until_final(uac, inv, 1.0, cseq_method="INVITE")
    t.eq([x.status for x in again], [487], "retransmitted INVITE: the 487 again, from the transaction")
    if fin:
        _ack(uac, inv, ruri, fin[-1], inst.addr4)
    t.eq([w for w, _, _ in _cbs(inst, inv.call_id)], ["on_request"], "held INVITE: handlers")
    _no_error_log(t, inst)


# -------------------------------------------------------------------------- stray responses

def test_proxy_api_stray_responses(t):
    """A 200 to an INVITE arriving after lunasip's client transaction ended (Timer B) is
    forwarded statelessly (its top Via is lunasip's, RFC 3261 §16.7 step 2) without harm;
    a response whose top Via is not lunasip's (foreign branch, or foreign sent-by) is
    dropped and logged, nothing forwarded."""
    inst = _inst(t)
    uac, uas = t.peer(), t.peer()
    ruri = "sip:bob@%s:%d" % (LO, uas.port)
    inv = _invite(uac, ruri, "plain", ["X-Profile: bl"])  # timer_B = 1
    uac.send(inv, inst.addr4)
    f = _wait_request(uas, "INVITE")
    if not t.check(f is not None, "INVITE: not forwarded"):
        return
    got = _until_final(uac, inv, 3.0)
    fin = got[-1] if got and got[-1].status >= 200 else None
    if t.check(fin is not None and fin.status == 408, "caller: final %r, expected 408 (Timer B)" % [x.status for x in got]):
        _ack(uac, inv, ruri, fin, inst.addr4)
    t.check(_wait_cb(inst, "A.error", inv.call_id, 1.0), "Timer B: no on_error")
    _requests(uas, 0.2)  # the INVITE's retransmissions

    # the callee's 200, late: no client transaction any more
    _reply(uas, f, 200, "OK", to_tag="late", extra=["Contact: <sip:bob@%s:%d>" % (LO, uas.port)])
    late = [r for r in _responses(uac, inv, 1.0) if r.status == 200]
    if t.check(late, "caller: the late 200 (top Via lunasip's) was not forwarded statelessly"):
        t.eq(_vias(late[0]), [_vias(f)[1]], "late 200 at the caller: Vias (the caller's only)")
        t.eq(lsip.tag_of(late[0].header("To")), "late", "late 200 at the caller: To tag")
    t.check(inst.running(), "lunasip died on a 200 after its transaction ended")

    # foreign top Vias: dropped
    caller_via = _vias(f)[1]
    own = _vias(f)[0]
    for what, top in (("lunasip's sent-by, foreign branch",
                       "SIP/2.0/UDP %s:%d;branch=z9hG4bKforeign%s" % (LO, inst.port4, lsip.rand_token(8))),
                      ("foreign sent-by, lunasip-like branch",
                       "SIP/2.0/UDP 192.0.2.7:5060;branch=%s" % _branch(own))):
        cid = "stray-%s@lunasip-it" % lsip.rand_token(8)
        lines = ["SIP/2.0 200 OK", "Via: " + top, "Via: " + caller_via,
                 "From: <sip:tester@lunasip.invalid>;tag=abc", "To: <sip:bob@lunasip.invalid>;tag=def",
                 "Call-ID: " + cid, "CSeq: 1 INVITE", "Content-Length: 0"]
        mark = inst.mark()
        uas.send(("\r\n".join(lines) + "\r\n\r\n").encode(), inst.addr4)
        fwd = [lsip.Response(d, a) for d, a in uac.drain(0.5)]
        t.eq([r.start for r in fwd if r.header("Call-ID") == cid], [], "%s: forwarded to the second Via" % what)
        t.check(inst.wait_log(r"dropped a 200 response matching no transaction, Call-ID " + re.escape(cid), 1.0, mark),
                "%s: no 'dropped a 200 response matching no transaction' line in the log" % what)
        t.check(inst.running(), "%s: lunasip died" % what)
    # still routing (to another callee: the first one is blacklisted after Timer B)
    uas2 = t.peer()
    o = request("OPTIONS", "sip:carol@%s:%d" % (LO, uas2.port), via=(uac.host, uac.port), extra=["X-Case: plain"])
    uac.send(o, inst.addr4)
    fo = _wait_request(uas2, "OPTIONS")
    if t.check(fo is not None, "OPTIONS after the strays: not forwarded"):
        _reply(uas2, fo, 200, "OK")
        t.eq([x.status for x in _until_final(uac, o, 1.0)], [200], "OPTIONS after the strays: answers")
    _no_error_log(t, inst)
