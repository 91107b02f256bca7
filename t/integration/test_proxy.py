"""The stateful proxy (SPEC §3.2, §4 "Proxy core", §5.3; RFC 3261 §16, §17; RFC 3581, 3327,
4320, 5393, 6026): lunasip between a SIPp UAC and a SIPp UAS (or raw UDP peers where the
wire must be checked precisely), all on 127.0.0.1.

Every lunasip runs t/integration/proxy/server.lua (routes each request to its R-URI over
UDP through Proxy.new("proxy_out"), one line per handler call in a file the tests read)
with t/integration/proxy/proxies.conf (timer_B = 2, timer_F = 2, timer_C = 3). The SIPp UAC
sends to lunasip with -rsa while its positional target, and so the R-URI, is the UAS. The
SIPp scenario pairs (sipp/proxy_*.xml) pass directly UAC → UAS, without lunasip:
t/integration/proxy/check_scenarios.py runs them so."""
import functools
import os
import re
import signal
import time

import lsip
from lsip import request

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY_DIR = os.path.join(HERE, "proxy")
LO = "127.0.0.1"
TRACE = ("-trace_msg", "-message_file", "messages.log")  # relative to the SIPp run's dir
REASON = 'SIP;cause=200;text="Call completed elsewhere"'  # what proxy_uac_cancel*.xml send


# --------------------------------------------------------------------------------- helpers

def _read(name):
    with open(os.path.join(PROXY_DIR, name)) as f:
        return f.read()


def _proxy(t, log_level="debug"):
    """A lunasip running proxy/server.lua with proxy/proxies.conf, UDP on 127.0.0.1 only."""
    # shutdown_grace = 1: at SIGTERM lunasip waits for its transactions (Timer K, Timer M...)
    inst = t.instance("", start=False, ipv6=False, log_level=log_level, proxies=_read("proxies.conf"),
                      conf_extra="core.shutdown_grace = 1")
    inst.cb_path = os.path.join(inst.dir, "callbacks.log")
    inst.write_script(_read("server.lua").replace("@CB_FILE@", inst.cb_path))
    inst.start()
    return inst


def _callbacks(inst, call_id=None):
    """The handler lines server.lua wrote, as lists of fields, for call_id (all when None)."""
    try:
        with open(inst.cb_path) as f:
            lines = [ln.split(" ", 5) for ln in f.read().splitlines() if ln]
    except FileNotFoundError:
        return []
    return [ln for ln in lines if call_id is None or (len(ln) > 1 and ln[1] == call_id)]


def _wait_callbacks(inst, call_id, until, timeout=3.0):
    """Polls the handler lines of call_id until until(lines) holds or timeout; returns them."""
    end = time.monotonic() + timeout
    while True:
        lines = _callbacks(inst, call_id)
        if until(lines) or time.monotonic() >= end:
            return lines
        time.sleep(0.05)


def _seq(lines, keep_100=False, keep_target=False):
    """The handler lines as short strings "handler METHOD [status]" in order, without
    on_target (checked apart) and, unless asked, without a callback for a 100 Trying."""
    out = []
    for ln in lines:
        name = ln[0]
        if name == "on_target" and not keep_target:
            continue
        s = "%s %s" % (name, ln[2] if len(ln) > 2 else "?")
        if name in ("on_provisional_response", "on_success_response", "on_failure_response", "on_error"):
            s += " " + (ln[3] if len(ln) > 3 else "?")
            if ln[3:4] == ["100"] and not keep_100:
                continue
        out.append(s)
    return out


def _check_seq(t, inst, call_id, expected, what, settle=0.3):
    """The handler lines of call_id are exactly expected (see _seq) once they stop changing."""
    lines = _wait_callbacks(inst, call_id, lambda ls: len(_seq(ls)) >= len(expected))
    time.sleep(settle)  # anything more that comes would be wrong: let it come
    lines = _callbacks(inst, call_id)
    got = _seq(lines)
    t.check(got == expected, "%s: handlers called:\n      %s\n    expected:\n      %s" % (
        what, "\n      ".join(got) or "(none)", "\n      ".join(expected)))
    for ln in lines:  # request.tvars reach the response handlers as response.tvars
        if ln[0] in ("on_provisional_response", "on_success_response", "on_failure_response"):
            t.check(len(ln) > 4 and ln[4] == "tvars=mark-" + ln[2],
                    "%s: %s %s %s: response.tvars.mark is %r, expected %r (set on request.tvars)" % (
                        what, ln[0], ln[2], ln[3], ln[4][6:] if len(ln) > 4 else None, "mark-" + ln[2]))
    return lines


def _check_target(t, lines, method, port, what):
    tg = [ln for ln in lines if ln[0] == "on_target" and ln[2] == method]
    if t.check(tg, "%s: on_target was not called for the %s" % (what, method)):
        t.eq(" ".join(tg[0][3:]).lower(), "udp %s %d" % (LO, port), "%s: on_target(target) transport ip port" % what)


_VIA1 = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*(\w+)\s+([^\s;:]+)(?::(\d+))?\s*(;.*)?$", re.I)


_no_error_log = lsip.no_error_log
_requests = lsip.requests
_wait_request = lsip.wait_request
_reply = functools.partial(lsip.uas_reply, to_tag="uas-tag-1")


def _responses(peer, msg, timeout):
    return lsip.responses(peer, msg, timeout)


def _vias(msg):
    return lsip.header_values(msg, "Via")


def _via(value):
    """(transport, host, port, params) of one Via value (port None when absent)."""
    m = _VIA1.match(value.strip())
    if not m:
        return None, None, None, {}
    return m.group(1).upper(), m.group(2), int(m.group(3)) if m.group(3) else None, lsip.via_params(m.group(4) or "")


def _check_own_via(t, what, value, inst):
    """lunasip's Via: SIP/2.0/UDP 127.0.0.1:<its port>;branch=z9hG4bK..."""
    tr, host, port, p = _via(value)
    t.check((tr, host, port) == ("UDP", LO, inst.port4),
            "%s: top Via is not lunasip's (SIP/2.0/UDP %s:%d): %r" % (what, LO, inst.port4, value))
    br = p.get("branch")
    t.check(isinstance(br, str) and br.startswith("z9hG4bK") and len(br) > 7,
            "%s: lunasip's Via has no magic-cookie branch (z9hG4bK...): %r" % (what, value))
    return br if isinstance(br, str) else None


def _check_forwarded(t, what, msg, inst, uac_port, uac_branch=None, mf="69", rport=True):
    """A request lunasip forwarded: two Vias (lunasip's on top with a z9hG4bK branch, the
    caller's with received and rport), Max-Forwards decremented. Returns lunasip's branch."""
    vias = _vias(msg)
    if not t.check(len(vias) == 2, "%s: %d Via values at the callee, expected 2 (lunasip's, the caller's): %r" % (
            what, len(vias), vias)):
        return None
    br = _check_own_via(t, what, vias[0], inst)
    tr, host, port, p = _via(vias[1])
    t.check((host, port) == (LO, uac_port), "%s: second Via is not the caller's %s:%d: %r" % (what, LO, uac_port, vias[1]))
    if uac_branch:
        t.eq(p.get("branch"), uac_branch, "%s: the caller's Via branch" % what)
    if rport:
        t.eq(p.get("rport"), str(uac_port), "%s: rport on the caller's Via (RFC 3581 §4)" % what)
        t.eq(p.get("received"), LO, "%s: received on the caller's Via (RFC 3581 §4)" % what)
    t.eq(msg.header("Max-Forwards"), mf, "%s: Max-Forwards" % what)
    t.check(br != (p.get("branch")), "%s: lunasip reused the caller's branch %r" % (what, br))
    return br


def _check_rr_value(t, what, value, inst):
    """<sip:127.0.0.1:PORT;transport=udp;lr> (params in any order, a user part tolerated)."""
    m = re.fullmatch(r"\s*<sip:(?:[^@>]*@)?([^:;>]+):(\d+)((?:;[^;>]*)*)>\s*", value or "")
    if not t.check(m, "%s: not <sip:%s:%d;transport=udp;lr>: %r" % (what, LO, inst.port4, value)):
        return
    params = {p.lower() for p in m.group(3).split(";") if p}
    t.check(m.group(1) == LO and int(m.group(2)) == inst.port4 and "lr" in params and "transport=udp" in params,
            "%s: expected <sip:%s:%d;transport=udp;lr>, got %r" % (what, LO, inst.port4, value))


def _msgs(run, direction=None, method=None, status=None, cseq_method=None):
    """Messages of a SIPp run traced with TRACE, filtered."""
    out = []
    for d, m in lsip.sipp_messages(os.path.join(run.dir, "messages.log")):
        if direction and d != direction:
            continue
        if method and (m.is_response or not m.start.startswith(method + " ")):
            continue
        if status is not None and m.status != status:
            continue
        if cseq_method and (m.header("CSeq") or "").split()[-1:] != [cseq_method]:
            continue
        out.append(m)
    return out


def _wait_or_kill(run, grace):
    """The exit status of a SIPp run, killing it (by PID) after grace seconds."""
    try:
        rc = run.proc.wait(grace)
    except Exception:
        try:
            os.kill(run.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        run.proc.wait()
        rc = None
    lsip._unregister(run.proc.pid)
    return rc


def _sipp_ok(t, run, rc, what, calls=1):
    ok = t.check(rc == 0, "%s: SIPp %s exit status %r, expected 0" % (what, os.path.basename(run.scenario), rc))
    st = run.stats()
    ok &= t.eq(st.get("SuccessfulCall(C)"), calls, "%s: successful calls" % what)
    ok &= t.eq(st.get("FailedCall(C)"), 0, "%s: failed calls" % what)
    if not ok:
        t.errors.extend("    %s: %s" % (what, ln) for ln in run.errors(6) + run.output_tail(6))
    return ok


def _call(t, inst, uac_xml, uas_xml, calls=1, rate=10, timeout_s=12, trace=True, uas_extra=(), uac_grace=None):
    """Starts the SIPp UAS, waits for its port, runs the SIPp UAC through lunasip (-rsa) and
    returns (uac, rc_uac, uas, rc_uas)."""
    tr = list(TRACE) if trace else []
    uas = t.sipp(inst.addr4, uas_xml, calls, 1, timeout_s, extra=tr + list(uas_extra))
    if not lsip.wait_udp_bound(uas.port):
        t.fail("SIPp UAS (%s) did not bind %s:%d" % (uas_xml, LO, uas.port))
    uac = t.sipp((LO, uas.port), uac_xml, calls, rate, timeout_s, extra=tr + ["-rsa", "%s:%d" % inst.addr4])
    rc_uac = uac.wait()
    rc_uas = _wait_or_kill(uas, 3 if uac_grace is None else uac_grace)
    return uac, rc_uac, uas, rc_uas


def _sent_invite_branch(uac):
    inv = _msgs(uac, "sent", "INVITE")
    return _via(_vias(inv[0])[0])[3].get("branch") if inv else None


def _call_id(run):
    ms = lsip.sipp_messages(os.path.join(run.dir, "messages.log"))
    return ms[0][1].header("Call-ID") if ms else None


# raw peers

def _final(peer, msg, timeout=3.0):
    """(provisionals, first final) to msg within timeout."""
    prov = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = peer.recv_response(msg, end - time.monotonic())
        if r is None:
            break
        if r.status >= 200:
            return prov, r
        prov.append(r)
    return prov, None


# ------------------------------------------------------------------------------ call flows

def test_proxy_call_invite_ack_bye(t):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac.xml", "proxy_uas.xml")
    _sipp_ok(t, uac, rc_uac, "UAC")
    _sipp_ok(t, uas, rc_uas, "UAS")
    cid = _call_id(uac)
    uac_branch = _sent_invite_branch(uac)

    # at the callee
    inv = _msgs(uas, "received", "INVITE")
    if t.check(len(inv) == 1, "UAS: %d INVITEs received, expected 1" % len(inv)):
        inv = inv[0]
        t.eq(inv.start, "INVITE sip:service@%s:%d SIP/2.0" % (LO, uas.port), "UAS: INVITE request line")
        _check_forwarded(t, "INVITE at the UAS", inv, inst, uac.port, uac_branch)
        rr = inv.header_all("Record-Route")
        if t.check(len(rr) == 1, "INVITE at the UAS: Record-Route values %r, expected lunasip's one" % rr):
            _check_rr_value(t, "INVITE at the UAS: Record-Route", rr[0], inst)
        sent = _msgs(uac, "sent", "INVITE")
        t.check(sent and inv.body == sent[0].body, "INVITE at the UAS: the SDP body was not passed unchanged")
    for meth in ("ACK", "BYE"):
        got = _msgs(uas, "received", meth)
        if t.check(len(got) == 1, "UAS: %d %s received, expected 1" % (len(got), meth)):
            m = got[0]
            t.check(m.start.startswith("%s sip:callee@%s:%d" % (meth, LO, uas.port)),
                    "%s at the UAS: R-URI is not the callee's Contact: %r" % (meth, m.start))
            _check_forwarded(t, "%s at the UAS" % meth, m, inst, uac.port)
            t.eq(m.header_all("Route"), [], "%s at the UAS: Route (lunasip's own must be removed by loose_route)" % meth)

    # at the caller
    t.check(_msgs(uac, "received", status=100), "UAC: no 100 Trying from lunasip for the INVITE")
    for status, cm in ((180, "INVITE"), (200, "INVITE"), (200, "BYE")):
        got = _msgs(uac, "received", status=status, cseq_method=cm)
        if t.check(got, "UAC: no %d for the %s" % (status, cm)):
            vias = _vias(got[0])
            t.check(len(vias) == 1 and _via(vias[0])[3].get("branch") == _via(_vias(_msgs(uac, "sent", cm)[0])[0])[3].get("branch"),
                    "UAC: %d %s carries Vias %r, expected only the caller's" % (status, cm, vias))
    ok200 = _msgs(uac, "received", status=200, cseq_method="INVITE")
    if ok200:
        rr = ok200[0].header_all("Record-Route")
        if t.check(len(rr) == 1, "UAC: the 200 for the INVITE has Record-Route %r, expected lunasip's" % rr):
            _check_rr_value(t, "200 at the UAC: Record-Route", rr[0], inst)

    lines = _check_seq(t, inst, cid, [
        "on_request INVITE", "on_provisional_response INVITE 180", "on_success_response INVITE 200",
        "on_request ACK", "on_request BYE", "on_success_response BYE 200"], "INVITE/ACK/BYE")
    _check_target(t, lines, "INVITE", uas.port, "INVITE/ACK/BYE")
    first = [ln for ln in lines if ln[0] == "on_request" and ln[2] == "INVITE"]
    if first:
        t.eq(first[0][3:5], ["max_forwards=70", "initial"], "on_request INVITE: max_forwards and is_in_dialog")
    _no_error_log(t, inst)


def test_proxy_reinvite_in_dialog(t):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac_reinvite.xml", "proxy_uas_reinvite.xml")
    _sipp_ok(t, uac, rc_uac, "UAC")
    _sipp_ok(t, uas, rc_uas, "UAS")
    cid = _call_id(uac)
    invs = _msgs(uas, "received", "INVITE")
    if t.check(len(invs) == 2, "UAS: %d INVITEs received, expected 2 (initial, re-INVITE)" % len(invs)):
        re_inv = invs[1]
        t.eq(re_inv.header("CSeq"), "2 INVITE", "re-INVITE at the UAS: CSeq")
        t.check(re_inv.start.startswith("INVITE sip:callee@%s:%d" % (LO, uas.port)),
                "re-INVITE at the UAS: R-URI is not the callee's Contact: %r" % re_inv.start)
        _check_forwarded(t, "re-INVITE at the UAS", re_inv, inst, uac.port)
        t.eq(re_inv.header_all("Route"), [], "re-INVITE at the UAS: Route (lunasip's own must be removed)")
        t.check(lsip.tag_of(re_inv.header("To")), "re-INVITE at the UAS: no To tag")
    acks = _msgs(uas, "received", "ACK")
    t.eq(len(acks), 2, "UAS: ACKs received")
    t.check(_msgs(uac, "received", status=200, cseq_method="INVITE")[1:],
            "UAC: no 200 for the re-INVITE")
    _check_seq(t, inst, cid, [
        "on_request INVITE", "on_provisional_response INVITE 180", "on_success_response INVITE 200",
        "on_request ACK",
        "on_request INVITE", "on_success_response INVITE 200", "on_request ACK",
        "on_request BYE", "on_success_response BYE 200"], "re-INVITE")
    dlg = [ln[4] for ln in _callbacks(inst, cid) if ln[0] == "on_request" and ln[2] == "INVITE"]
    t.eq(dlg, ["initial", "in-dialog"], "is_in_dialog() of the INVITE and the re-INVITE")
    _no_error_log(t, inst)


def _cancel_case(t, uac_xml, uas_xml, ringing):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, uac_xml, uas_xml)
    _sipp_ok(t, uac, rc_uac, "UAC (200 for the CANCEL, 487 for the INVITE)")
    _sipp_ok(t, uas, rc_uas, "UAS (lunasip's CANCEL, the ACK of the 487)")
    cid = _call_id(uac)
    inv = _msgs(uas, "received", "INVITE")
    branch = None
    if t.check(inv, "UAS: no INVITE"):
        branch = _check_forwarded(t, "INVITE at the UAS", inv[0], inst, uac.port)
    cancels = _msgs(uas, "received", "CANCEL")
    if t.check(len(cancels) == 1, "UAS: %d CANCEL received, expected lunasip's one" % len(cancels)):
        c = cancels[0]
        vias = _vias(c)
        # RFC 3261 §9.1: the CANCEL has one Via, the INVITE's (lunasip's, hop by hop) branch
        t.check(len(vias) == 1, "CANCEL at the UAS: Vias %r, expected lunasip's only (hop by hop)" % vias)
        if vias:
            b = _check_own_via(t, "CANCEL at the UAS", vias[0], inst)
            t.eq(b, branch, "CANCEL at the UAS: branch (must be the one of lunasip's INVITE)")
        if inv:
            t.eq(c.start.replace("CANCEL", "INVITE", 1), inv[0].start, "CANCEL at the UAS: R-URI (the INVITE's)")
        t.eq(c.header("CSeq"), "1 CANCEL", "CANCEL at the UAS: CSeq")
        t.eq(c.header("Reason"), REASON, "CANCEL at the UAS: Reason (copied from the caller's CANCEL)")
    acks = _msgs(uas, "received", "ACK")
    if t.check(len(acks) == 1, "UAS: %d ACK received, expected lunasip's ACK of the 487" % len(acks)):
        vias = _vias(acks[0])
        t.check(len(vias) == 1 and _via(vias[0])[3].get("branch") == branch,
                "ACK of the 487 at the UAS: Vias %r, expected lunasip's with the INVITE's branch %r" % (vias, branch))
    ok = _msgs(uac, "received", status=200, cseq_method="CANCEL")
    if t.check(ok, "UAC: no 200 for the CANCEL"):
        t.eq(len(_vias(ok[0])), 1, "UAC: Vias in the 200 for the CANCEL")
    t.check(_msgs(uac, "received", status=487, cseq_method="INVITE"), "UAC: no 487 for the INVITE")
    exp = ["on_request INVITE"]
    if ringing:
        exp.append("on_provisional_response INVITE 180")
    # as OverSIP: once canceled, the 487 is forwarded without on_failure_response
    exp.append("on_canceled INVITE")
    _check_seq(t, inst, cid, exp, "CANCEL")
    _no_error_log(t, inst)


def test_proxy_cancel_before_180(t):
    _cancel_case(t, "proxy_uac_cancel.xml", "proxy_uas_cancel.xml", ringing=False)


def test_proxy_cancel_after_180(t):
    _cancel_case(t, "proxy_uac_cancel_180.xml", "proxy_uas_cancel_180.xml", ringing=True)


def test_proxy_cancel_waits_for_a_provisional_from_the_callee(t):
    """RFC 3261 §9.1, §16.10: the caller cancels before the callee said anything: lunasip
    answers the CANCEL at once but sends its own CANCEL only after a provisional arrives."""
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    ruri = "sip:race@%s:%d" % (LO, callee.port)
    inv = request("INVITE", ruri, via=(uac.host, uac.port), extra=["Contact: <sip:caller@%s:%d>" % (LO, uac.port)])
    uac.send(inv, inst.addr4)
    fwd = _wait_request(callee, "INVITE", 2)
    if not t.check(fwd is not None, "INVITE: not forwarded"):
        return
    cancel = request("CANCEL", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                     from_tag=inv.from_tag, cseq=inv.cseq, extra=["Reason: " + REASON])
    uac.send(cancel, inst.addr4)
    got = _responses(uac, inv, 0.7)
    t.check([r for r in got if r.status == 200 and r.header("CSeq") == "1 CANCEL"],
            "caller: no 200 for the CANCEL; got %r" % [(r.status, r.header("CSeq")) for r in got])
    # a retransmitted CANCEL gets the 200 again from its transaction
    uac.send(cancel, inst.addr4)
    again = _responses(uac, inv, 0.5)
    t.check([r for r in again if r.status == 200 and r.header("CSeq") == "1 CANCEL"],
            "caller: no 200 for the retransmitted CANCEL; got %r" % [(r.status, r.header("CSeq")) for r in again])
    early = [m for m in _requests(callee, 0.05) if m.start.startswith("CANCEL ")]
    t.eq(len(early), 0, "callee: CANCELs sent before any provisional response (RFC 3261 §9.1)")
    _reply(callee, fwd, 180, "Ringing")
    c = _wait_request(callee, "CANCEL", 2)
    if t.check(c is not None, "callee: no CANCEL after its 180"):
        more = [m for m in _requests(callee, 0.2) if m.start.startswith("CANCEL ")]
        t.eq(len(more), 0, "callee: more CANCELs (the caller's two CANCELs must make one)")
        vias = _vias(c)
        t.check(len(vias) == 1 and _via(vias[0])[3].get("branch") == _via(_vias(fwd)[0])[3].get("branch"),
                "CANCEL at the callee: Vias %r, expected lunasip's with its INVITE's branch" % vias)
        t.eq(c.header("Reason"), REASON, "CANCEL at the callee: Reason")
        _reply(callee, c, 200, "OK")
        _reply(callee, fwd, 487, "Request Terminated")
        ack = _wait_request(callee, "ACK", 2)
        t.check(ack is not None and len(_vias(ack)) == 1, "callee: no ACK of its 487 from lunasip (%r)" % ack)
    fin = [r for r in _responses(uac, inv, 1.0) if r.status >= 200 and r.header("CSeq") == "1 INVITE"]
    if t.check(fin, "caller: no final answer to the canceled INVITE"):
        t.eq(fin[0].status, 487, "caller: final status of the canceled INVITE")
        uac.send(request("ACK", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                         from_tag=inv.from_tag, to_tag=lsip.tag_of(fin[0].header("To"))), inst.addr4)
    _check_seq(t, inst, inv.call_id, ["on_request INVITE", "on_canceled INVITE"], "CANCEL before a provisional")
    _no_error_log(t, inst)


def test_proxy_486_and_its_ack_hop_by_hop(t):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac_486.xml", "proxy_uas_486.xml")
    _sipp_ok(t, uac, rc_uac, "UAC (486)")
    _sipp_ok(t, uas, rc_uas, "UAS (486, then only lunasip's ACK)")
    cid = _call_id(uac)
    inv = _msgs(uas, "received", "INVITE")
    branch = _check_forwarded(t, "INVITE at the UAS", inv[0], inst, uac.port) if inv else None
    acks = _msgs(uas, "received", "ACK")
    # the caller's ACK ends at lunasip; lunasip acknowledged the 486 itself (RFC 3261 §17.1.1.3)
    if t.check(len(acks) == 1, "UAS: %d ACKs received, expected exactly lunasip's own" % len(acks)):
        a = acks[0]
        vias = _vias(a)
        t.check(len(vias) == 1, "ACK at the UAS: Vias %r: the caller's ACK was forwarded instead of lunasip's own" % vias)
        if vias:
            t.eq(_via(vias[0])[3].get("branch"), branch, "ACK at the UAS: branch (lunasip's INVITE's)")
        t.eq(a.header("CSeq"), "1 ACK", "ACK at the UAS: CSeq")
        busy = _msgs(uas, "sent", status=486)
        if busy:
            t.eq(lsip.tag_of(a.header("To")), lsip.tag_of(busy[0].header("To")), "ACK at the UAS: To tag (the 486's)")
        if inv:
            t.eq(a.start.replace("ACK", "INVITE", 1), inv[0].start, "ACK at the UAS: R-URI (the INVITE's)")
    got = _msgs(uac, "received", status=486)
    if t.check(got, "UAC: no 486"):
        t.eq(len(_vias(got[0])), 1, "UAC: Vias in the 486")
    _check_seq(t, inst, cid, ["on_request INVITE", "on_failure_response INVITE 486"], "486")
    _no_error_log(t, inst)


def test_proxy_503_from_callee_becomes_500(t):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac_500.xml", "proxy_uas_503.xml")
    _sipp_ok(t, uac, rc_uac, "UAC (expects 500)")
    _sipp_ok(t, uas, rc_uas, "UAS (503, then lunasip's ACK)")
    cid = _call_id(uac)
    got = [m.status for m in _msgs(uac, "received") if m.is_response and m.status >= 200]
    t.eq(got[:1], [500], "UAC: final status (RFC 3261 §16.7 step 6: a lone 503 becomes 500)")
    t.eq(len(_msgs(uas, "received", "INVITE")), 1, "UAS: INVITEs received (one target)")
    t.eq(len(_msgs(uas, "received", "ACK")), 1, "UAS: ACKs of the 503 received")
    # as OverSIP: no more targets, on_failure_response sees the 503, the caller gets a 500
    _check_seq(t, inst, cid, ["on_request INVITE", "on_failure_response INVITE 503"], "503")
    _no_error_log(t, inst)


# --------------------------------------------------------------------------------- timers

def test_proxy_timer_b_silent_callee_gets_408(t):
    inst = _proxy(t)
    callee = t.peer()  # never answers
    t0 = time.monotonic()
    uac = t.sipp((LO, callee.port), "proxy_uac_408.xml", 1, 1, 12, extra=list(TRACE) + ["-rsa", "%s:%d" % inst.addr4])
    rc = uac.wait()
    took = time.monotonic() - t0
    _sipp_ok(t, uac, rc, "UAC (100 from lunasip, then 408)")
    cid = _call_id(uac)
    t.check(_msgs(uac, "received", status=100), "UAC: no 100 Trying from lunasip")
    fin = [m for m in _msgs(uac, "received") if m.is_response and m.status >= 200]
    t.eq([m.status for m in fin][:1], [408], "UAC: final status after Timer B")
    t.check(took >= 1.5, "UAC: the 408 came after %.1f s, before Timer B (2 s)" % took)
    got = _requests(callee, 0.3)
    invs = [m for m in got if m.start.startswith("INVITE ")]
    t.check(len(invs) >= 2, "callee: %d INVITE copies, expected the original and Timer A retransmissions" % len(invs))
    branches = {_via(_vias(m)[0])[3].get("branch") for m in invs}
    t.check(len(branches) == 1, "callee: the INVITE copies have different branches %r (not retransmissions)" % branches)
    t.check(not [m for m in got if m.start.startswith("CANCEL ")],
            "callee: got a CANCEL without ever sending a provisional (RFC 3261 §9.1)")
    lines = _wait_callbacks(inst, cid, lambda ls: any(ln[0] == "on_error" for ln in ls))
    errs = [ln for ln in lines if ln[0] == "on_error"]
    if t.check(len(errs) == 1, "Timer B: on_error calls: %r, expected one (408, client_timeout)" % errs):
        t.eq(errs[0][3:5], ["408", "client_timeout"], "Timer B: on_error(status, reason, code) status and code")
    t.check(not [ln for ln in lines if ln[0] == "on_invite_timeout"], "Timer B: on_invite_timeout was called (that is Timer C)")
    t.check(not [ln for ln in lines if ln[0] == "on_request" and ln[2] == "ACK"], "Timer B: the ACK of the 408 reached on_request")
    _no_error_log(t, inst)


def test_proxy_timer_c_cancels_downstream_and_sends_408(t):
    inst = _proxy(t)
    t0 = time.monotonic()
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac_408.xml", "proxy_uas_cancel_180.xml")
    took = time.monotonic() - t0
    _sipp_ok(t, uac, rc_uac, "UAC (100, 180, then 408 from lunasip)")
    _sipp_ok(t, uas, rc_uas, "UAS (180, then lunasip's CANCEL)")
    cid = _call_id(uac)
    fin = [m.status for m in _msgs(uac, "received") if m.is_response and m.status >= 200]
    t.eq(fin[:1], [408], "UAC: final status after Timer C")
    t.check(took >= 2.5, "the call ended after %.1f s, before Timer C (3 s)" % took)
    inv = _msgs(uas, "received", "INVITE")
    branch = _check_forwarded(t, "INVITE at the UAS", inv[0], inst, uac.port) if inv else None
    cancels = _msgs(uas, "received", "CANCEL")
    if t.check(len(cancels) == 1, "UAS: %d CANCEL received on Timer C, expected 1" % len(cancels)):
        vias = _vias(cancels[0])
        t.check(len(vias) == 1 and _via(vias[0])[3].get("branch") == branch,
                "CANCEL at the UAS: Vias %r, expected lunasip's with the INVITE's branch %r" % (vias, branch))
    t.eq(len(_msgs(uas, "received", "ACK")), 1, "UAS: ACKs of its 487 received (lunasip's)")
    lines = _wait_callbacks(inst, cid, lambda ls: any(ln[0] == "on_invite_timeout" for ln in ls))
    seq = _seq(lines)
    t.check(seq[:2] == ["on_request INVITE", "on_provisional_response INVITE 180"],
            "Timer C: handlers start %r, expected on_request INVITE, on_provisional_response INVITE 180" % seq[:2])
    t.eq(seq.count("on_invite_timeout INVITE"), 1, "Timer C: on_invite_timeout calls")
    t.check("on_canceled INVITE" not in seq, "Timer C: on_canceled was called though the caller did not cancel")
    t.check(not any(s.startswith("on_request ACK") for s in seq), "Timer C: the caller's ACK of the 408 reached on_request")
    t.note("Timer C handlers: %s" % ", ".join(seq))
    _no_error_log(t, inst)


def test_proxy_non_invite_timeout_sends_no_408(t):
    """RFC 4320 §4.2: a proxy never sends a 408 for a non-INVITE transaction (Timer F)."""
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    msg = request("OPTIONS", "sip:nobody@%s:%d" % (LO, callee.port), via=(uac.host, uac.port))
    uac.send(msg, inst.addr4)
    got = _responses(uac, msg, 3.5)  # Timer F is 2 s
    t.check(not [r for r in got if r.status >= 200],
            "caller: got %r after Timer F, expected no final answer (RFC 4320)" % [r.status for r in got])
    copies = _requests(callee, 0.1, "OPTIONS")
    t.check(len(copies) >= 2, "callee: %d OPTIONS copies, expected Timer E retransmissions" % len(copies))
    lines = _callbacks(inst, msg.call_id)
    t.eq(_seq(lines)[:1], ["on_request OPTIONS"], "non-INVITE timeout: first handler")
    t.check(not [ln for ln in lines if ln[0] == "on_invite_timeout"], "non-INVITE timeout: on_invite_timeout was called")
    t.note("Timer F handlers: %s" % ", ".join(_seq(lines)))
    _no_error_log(t, inst)


# ------------------------------------------------------------------------------ REGISTER

def test_proxy_register_gets_path(t):
    inst = _proxy(t)
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac_register.xml", "proxy_uas_register.xml")
    _sipp_ok(t, uac, rc_uac, "UAC (REGISTER, 200)")
    _sipp_ok(t, uas, rc_uas, "registrar")
    cid = _call_id(uac)
    reg = _msgs(uas, "received", "REGISTER")
    if t.check(len(reg) == 1, "registrar: %d REGISTER received, expected 1" % len(reg)):
        r = reg[0]
        _check_forwarded(t, "REGISTER at the registrar", r, inst, uac.port)
        path = r.header_all("Path")
        if t.check(len(path) == 1, "REGISTER at the registrar: Path values %r, expected lunasip's one (RFC 3327)" % path):
            _check_rr_value(t, "REGISTER at the registrar: Path", path[0], inst)
        t.eq(r.header_all("Record-Route"), [], "REGISTER at the registrar: Record-Route (not dialog-forming)")
    _check_seq(t, inst, cid, ["on_request REGISTER", "on_success_response REGISTER 200"], "REGISTER")

    # without Supported: path no Path is added (or the REGISTER is refused with 421)
    caller, registrar = t.peer(), t.peer()
    msg = request("REGISTER", "sip:%s:%d" % (LO, registrar.port), via=(caller.host, caller.port),
                  extra=["Contact: <sip:bob@%s:%d>" % (LO, caller.port), "Expires: 600"])
    caller.send(msg, inst.addr4)
    fwd = _wait_request(registrar, "REGISTER", 2)
    if fwd is None:
        r = caller.recv_response(msg, 1)
        t.check(r is not None and r.status == 421,
                "REGISTER without Supported: path: not forwarded, and not refused with 421 either (%r)" % r)
    else:
        t.eq(fwd.header_all("Path"), [], "REGISTER without Supported: path: Path at the registrar")
        _reply(registrar, fwd, 200, "OK")
        r = caller.recv_response(msg, 2)
        t.check(r is not None and r.status == 200, "REGISTER without Supported: path: caller got %r, expected 200" % r)
    _no_error_log(t, inst)


# ------------------------------------------------------------------------- raw-peer checks

def test_proxy_max_forwards(t):
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    ruri = "sip:mf@%s:%d" % (LO, callee.port)
    for what, mf, extra in (("Max-Forwards 0 (server.lua's check_max_forwards)", 0, []),
                            ("Max-Forwards 0 (the core's own check in proxy:route)", 0, ["X-Test-Core-Max-Forwards: 1"])):
        msg = request("OPTIONS", ruri, via=(uac.host, uac.port), max_forwards=mf, extra=extra)
        r = uac.request(msg, inst.addr4)
        if t.check(r is not None, "%s: no answer" % what):
            t.eq(r.status, 483, "%s: status" % what)
        t.eq([m.start for m in _requests(callee, 0.3)], [], "%s: forwarded to the callee" % what)
        seq = _seq(_callbacks(inst, msg.call_id))
        t.check(not any(s.split()[0] in ("on_success_response", "on_failure_response", "on_provisional_response") for s in seq),
                "%s: response handlers called: %r" % (what, seq))
    for what, mf, want in (("Max-Forwards 70", 70, "69"), ("Max-Forwards 1", 1, "0"),
                           ("no Max-Forwards", None, "70")):
        msg = request("OPTIONS", ruri, via=(uac.host, uac.port), max_forwards=mf)
        uac.send(msg, inst.addr4)
        fwd = _wait_request(callee, "OPTIONS", 2)
        if not t.check(fwd is not None, "%s: not forwarded to the callee" % what):
            continue
        _check_forwarded(t, what, fwd, inst, uac.port, msg.branch, mf=want)
        t.eq(fwd.header_all("Record-Route"), [], "%s: Record-Route on an OPTIONS (not dialog-forming)" % what)
        _reply(callee, fwd, 200, "OK")
        r = uac.recv_response(msg, 2)
        t.check(r is not None and r.status == 200, "%s: caller got %r, expected 200" % (what, r))
        if r is not None:
            t.eq(len(_vias(r)), 1, "%s: Vias in the 200 at the caller" % what)
        _check_seq(t, inst, msg.call_id, ["on_request OPTIONS", "on_success_response OPTIONS 200"], what, settle=0)
    _no_error_log(t, inst)


def test_proxy_forged_loop_gets_482(t):
    """A request whose R-URI is lunasip itself: server.lua routes it back to lunasip, which
    must see its own Via and answer 482 (RFC 3261 §16.3 step 4, RFC 5393), not circle until
    Max-Forwards runs out."""
    inst = _proxy(t)
    uac = t.peer()
    msg = request("OPTIONS", "sip:loop@%s:%d" % inst.addr4, via=(uac.host, uac.port))
    uac.send(msg, inst.addr4)
    _, r = _final(uac, msg, 4)
    if t.check(r is not None, "OPTIONS loop: no final answer"):
        t.eq(r.status, 482, "OPTIONS loop: status")
    time.sleep(0.2)
    seq = _seq(_callbacks(inst, msg.call_id))
    t.check(seq.count("on_request OPTIONS") <= 2,
            "OPTIONS loop: on_request ran %d times: the loop was not detected" % seq.count("on_request OPTIONS"))
    t.check("on_failure_response OPTIONS 482" in seq, "OPTIONS loop: no on_failure_response 482: %r" % seq)
    t.note("loop (OPTIONS) handlers: %s" % ", ".join(seq))

    run = t.sipp(inst.addr4, "proxy_uac_482.xml", 1, 1, 10, extra=list(TRACE))
    rc = run.wait()
    _sipp_ok(t, run, rc, "INVITE loop (SIPp, R-URI = lunasip)")
    fin = [m.status for m in _msgs(run, "received") if m.is_response and m.status >= 200]
    t.eq(fin[:1], [482], "INVITE loop: final status")
    cid = _call_id(run)
    seq = _seq(_wait_callbacks(inst, cid, lambda ls: any(ln[0] == "on_failure_response" for ln in ls)))
    t.check(seq.count("on_request INVITE") <= 2, "INVITE loop: on_request ran %d times" % seq.count("on_request INVITE"))
    t.check(not any(s.startswith("on_request ACK") for s in seq), "INVITE loop: the ACK of the 482 reached on_request")
    _no_error_log(t, inst)


def test_proxy_udp_retransmissions_answered_from_the_transaction(t):
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    ruri = "sip:rtx@%s:%d" % (LO, callee.port)

    # OPTIONS answered, then retransmitted: the 200 comes again from lunasip's transaction
    msg = request("OPTIONS", ruri, via=(uac.host, uac.port))
    uac.send(msg, inst.addr4)
    fwd = _wait_request(callee, "OPTIONS", 2)
    if not t.check(fwd is not None, "OPTIONS: not forwarded"):
        return
    _reply(callee, fwd, 200, "OK")
    r1 = uac.recv_response(msg, 2)
    uac.send(msg, inst.addr4)
    r2 = uac.recv_response(msg, 2)
    if t.check(r1 is not None and r2 is not None, "OPTIONS: answers %r, %r: expected the 200 twice" % (r1, r2)):
        t.eq(r2.status, 200, "OPTIONS retransmission: status")
        t.check(r1.raw == r2.raw, "OPTIONS retransmission: the second 200 differs from the first:\n%r\n%r" % (r1.raw, r2.raw))
    t.eq([m.start for m in _requests(callee, 0.5)], [], "OPTIONS retransmission: reached the callee again")
    t.eq(_seq(_callbacks(inst, msg.call_id)), ["on_request OPTIONS", "on_success_response OPTIONS 200"],
         "OPTIONS retransmission: handlers")

    # retransmitted before the callee answers: absorbed (lunasip's own Timer E copies keep one branch)
    msg = request("OPTIONS", ruri, via=(uac.host, uac.port))
    uac.send(msg, inst.addr4)
    first = _wait_request(callee, "OPTIONS", 2)
    uac.send(msg, inst.addr4)
    uac.send(msg, inst.addr4)
    more = _requests(callee, 0.7, "OPTIONS")
    copies = ([first] if first else []) + more
    branches = {_via(_vias(m)[0])[3].get("branch") for m in copies}
    t.check(first is not None and len(branches) == 1,
            "OPTIONS retransmitted while pending: the callee got new transactions (branches %r)" % branches)
    if first is not None:
        _reply(callee, first, 200, "OK")
        r = uac.recv_response(msg, 2)
        t.check(r is not None and r.status == 200, "OPTIONS retransmitted while pending: caller got %r" % r)
    t.eq(_seq(_callbacks(inst, msg.call_id))[:1], ["on_request OPTIONS"], "pending OPTIONS: first handler")
    t.eq(_seq(_callbacks(inst, msg.call_id)).count("on_request OPTIONS"), 1, "pending OPTIONS: on_request calls")

    # INVITE: 100 at once; retransmitted after the 180 → the 180 again; after the 486 → the 486 again
    inv = request("INVITE", ruri, via=(uac.host, uac.port), extra=["Contact: <sip:caller@%s:%d>" % (LO, uac.port)])
    uac.send(inv, inst.addr4)
    r = uac.recv_response(inv, 1)
    t.check(r is not None and r.status == 100, "INVITE: first answer %r, expected 100 Trying" % r)
    fwd = _wait_request(callee, "INVITE", 2)
    if not t.check(fwd is not None, "INVITE: not forwarded"):
        return
    _reply(callee, fwd, 180, "Ringing")
    ring1 = uac.recv_response(inv, 2)
    uac.send(inv, inst.addr4)
    ring2 = uac.recv_response(inv, 2)
    if t.check(ring1 is not None and ring2 is not None and ring1.status == 180 and ring2.status == 180,
               "INVITE retransmitted after the 180: answers %r, %r, expected 180 twice" % (ring1, ring2)):
        t.check(ring1.raw == ring2.raw, "INVITE retransmission: the 180 sent again differs:\n%r\n%r" % (ring1.raw, ring2.raw))
    _reply(callee, fwd, 486, "Busy Here")
    busy1 = uac.recv_response(inv, 2)
    uac.send(inv, inst.addr4)
    busy2 = uac.recv_response(inv, 2)
    if t.check(busy1 is not None and busy2 is not None and busy1.status == 486 and busy2.status == 486,
               "INVITE retransmitted after the 486: answers %r, %r, expected 486 twice" % (busy1, busy2)):
        t.check(busy1.raw == busy2.raw, "INVITE retransmission: the 486 sent again differs:\n%r\n%r" % (busy1.raw, busy2.raw))
        ack = request("ACK", ruri, via=(uac.host, uac.port), branch=inv.branch, call_id=inv.call_id,
                      from_tag=inv.from_tag, to_tag=lsip.tag_of(busy1.header("To")), cseq=inv.cseq)
        uac.send(ack, inst.addr4)
    seen = _requests(callee, 0.7)
    t.eq([m.start.split()[0] for m in seen], ["ACK"], "INVITE retransmissions: what else reached the callee (lunasip's ACK only)")
    t.eq(_seq(_callbacks(inst, inv.call_id)),
         ["on_request INVITE", "on_provisional_response INVITE 180", "on_failure_response INVITE 486"],
         "INVITE retransmissions: handlers")
    _no_error_log(t, inst)


def test_proxy_2xx_ack_forwarded_statelessly(t):
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    ruri = "sip:ack@%s:%d" % (LO, callee.port)
    contact = "<sip:callee@%s:%d>" % (LO, callee.port)
    inv = request("INVITE", ruri, via=(uac.host, uac.port), extra=["Contact: <sip:caller@%s:%d>" % (LO, uac.port)])
    uac.send(inv, inst.addr4)
    fwd = _wait_request(callee, "INVITE", 2)
    if not t.check(fwd is not None, "INVITE: not forwarded"):
        return
    rr = fwd.header_all("Record-Route")
    ok1 = _reply(callee, fwd, 200, "OK", record_route=True, extra=["Contact: " + contact])
    _, ok = _final(uac, inv, 2)
    if not t.check(ok is not None and ok.status == 200, "INVITE: caller got %r, expected 200" % ok):
        return
    t.eq(ok.header_all("Record-Route"), rr, "200 at the caller: Record-Route")
    # RFC 6026: a retransmission of the 2xx is forwarded too
    callee.send(ok1, fwd.addr)
    again = uac.recv_response(inv, 1.5)
    t.check(again is not None and again.status == 200, "a retransmitted 200 was not forwarded (RFC 6026 §7.2): %r" % again)
    # RFC 6026 §7.1: an INVITE retransmitted after the 2xx is absorbed by the transaction (Accepted)
    uac.send(inv, inst.addr4)
    t.eq([m.start for m in _requests(callee, 0.4, "INVITE")], [], "INVITE retransmitted after the 200: reached the callee")

    ack = request("ACK", "sip:callee@%s:%d" % (LO, callee.port), via=(uac.host, uac.port), call_id=inv.call_id,
                  from_tag=inv.from_tag, to_tag=lsip.tag_of(ok.header("To")), cseq=inv.cseq,
                  extra=["Route: " + v for v in rr])
    uac.send(ack, inst.addr4)
    a = _wait_request(callee, "ACK", 2)
    if t.check(a is not None, "the ACK of the 2xx did not reach the callee"):
        t.eq(a.start, "ACK sip:callee@%s:%d SIP/2.0" % (LO, callee.port), "ACK at the callee: request line")
        br = _check_forwarded(t, "ACK at the callee", a, inst, uac.port, ack.branch)
        t.eq(a.header_all("Route"), [], "ACK at the callee: Route (lunasip's removed)")
        t.eq(a.header("CSeq"), "1 ACK", "ACK at the callee: CSeq")
        inv_br = _via(_vias(fwd)[0])[3].get("branch")
        t.check(br != inv_br, "ACK at the callee: lunasip's branch %r is the INVITE's (a 2xx ACK is a new transaction)" % br)
    t.eq([r.start for r in _responses(uac, ack, 0.3)], [], "the ACK was answered")
    time.sleep(0.3)
    lines = _callbacks(inst, inv.call_id)
    seq = _seq(lines)
    if seq.count("on_success_response INVITE 200") == 2:  # once per 2xx or once per transaction: both fine
        seq.remove("on_success_response INVITE 200")
    t.eq(seq, ["on_request INVITE", "on_success_response INVITE 200", "on_request ACK"], "2xx ACK: handlers")
    acks = [ln for ln in lines if ln[0] == "on_request" and ln[2] == "ACK"]
    if acks:
        t.eq(acks[0][4], "in-dialog", "on_request ACK: is_in_dialog()")
    _no_error_log(t, inst)


def test_proxy_record_route_only_on_dialog_forming_requests(t):
    inst = _proxy(t)
    uac, callee = t.peer(), t.peer()
    ruri = "sip:rr@%s:%d" % (LO, callee.port)
    for what, method, extra, want_rr in (
            ("SUBSCRIBE", "SUBSCRIBE", ["Event: presence", "Expires: 60", "Contact: <sip:c@%s:%d>" % (LO, uac.port)], True),
            ("REFER", "REFER", ["Refer-To: <sip:carol@example.com>", "Contact: <sip:c@%s:%d>" % (LO, uac.port)], True),
            ("OPTIONS", "OPTIONS", [], False),
            ("INVITE with do_record_routing = false", "INVITE",
             ["X-Test-Profile: proxy_norr", "Contact: <sip:c@%s:%d>" % (LO, uac.port)], False)):
        msg = request(method, ruri, via=(uac.host, uac.port), extra=extra)
        uac.send(msg, inst.addr4)
        fwd = _wait_request(callee, method, 2)
        if not t.check(fwd is not None, "%s: not forwarded" % what):
            continue
        rr = fwd.header_all("Record-Route")
        if want_rr:
            if t.check(len(rr) == 1, "%s: Record-Route %r, expected lunasip's one" % (what, rr)):
                _check_rr_value(t, what + ": Record-Route", rr[0], inst)
        else:
            t.eq(rr, [], "%s: Record-Route" % what)
        code = 486 if method == "INVITE" else 200
        _reply(callee, fwd, code, "Busy Here" if code == 486 else "OK")
        _, r = _final(uac, msg, 2)
        t.check(r is not None and r.status == code, "%s: caller got %r, expected %d" % (what, r, code))
        if method == "INVITE" and r is not None:
            uac.send(request("ACK", ruri, via=(uac.host, uac.port), branch=msg.branch, call_id=msg.call_id,
                             from_tag=msg.from_tag, to_tag=lsip.tag_of(r.header("To"))), inst.addr4)
    _no_error_log(t, inst)


# ---------------------------------------------------------------------------------- load

def test_proxy_load_10000_calls(t):
    """10,000 calls at 500 calls/s, SIPp UAC → lunasip → SIPp UAS (INVITE, 180, 200, ACK,
    BYE, 200): no failed call, no ERROR in lunasip's log, each INVITE and BYE in Lua once."""
    inst = _proxy(t, log_level="info")
    calls = 10000
    uac, rc_uac, uas, rc_uas = _call(t, inst, "proxy_uac.xml", "proxy_uas.xml", calls=calls, rate=500,
                                     timeout_s=90, trace=False, uac_grace=10)
    _sipp_ok(t, uac, rc_uac, "UAC", calls)
    _sipp_ok(t, uas, rc_uas, "UAS", calls)
    st = uac.stats()
    t.note("UAC retransmissions %s, UAS retransmissions %s" % (st.get("Retransmissions(C)"),
                                                              uas.stats().get("Retransmissions(C)")))
    time.sleep(0.3)
    counts = {}
    for ln in _callbacks(inst):
        if ln[0] == "on_target":
            continue
        k = " ".join(_seq([ln], keep_100=True))
        counts[k] = counts.get(k, 0) + 1
    t.eq(counts.get("on_request INVITE"), calls, "on_request INVITE calls (a retransmission never reaches Lua)")
    t.eq(counts.get("on_request BYE"), calls, "on_request BYE calls")
    t.check(counts.get("on_request ACK", 0) >= calls, "on_request ACK calls: %r" % counts.get("on_request ACK"))
    t.check(counts.get("on_success_response INVITE 200", 0) >= calls,
            "on_success_response INVITE 200 calls: %r" % counts.get("on_success_response INVITE 200"))
    t.eq(counts.get("on_success_response BYE 200"), calls, "on_success_response BYE 200 calls")
    t.note("handler calls: %s" % ", ".join("%s=%d" % kv for kv in sorted(counts.items())))
    _no_error_log(t, inst)
    uac, callee = t.peer(), t.peer()
    msg = request("OPTIONS", "sip:after@%s:%d" % (LO, callee.port), via=(uac.host, uac.port))
    uac.send(msg, inst.addr4)
    fwd = _wait_request(callee, "OPTIONS", 2)
    if t.check(fwd is not None, "an OPTIONS after the load was not forwarded"):
        _reply(callee, fwd, 200, "OK")
        r = uac.recv_response(msg, 2)
        t.check(r is not None and r.status == 200, "an OPTIONS after the load: caller got %r, expected 200" % r)
