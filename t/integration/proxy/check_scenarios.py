#!/usr/bin/python3
"""Runs every SIPp scenario pair of the proxy tests (t/integration/sipp/proxy_*.xml) directly,
UAC → UAS on 127.0.0.1 without lunasip, so that a failure of test_proxy.py is lunasip's and
not a scenario's. The UACs expecting a status no callee scenario sends (408, 500, 482) run
against a copy of proxy_uas_486.xml answering that status. Prints one line per pair and exits
non-zero on any failure.

  /usr/bin/python3 t/integration/proxy/check_scenarios.py
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.dont_write_bytecode = True

import lsip  # noqa: E402

SIPP_DIR = lsip.SIPP_DIR
PAIRS = [
    ("proxy_uac.xml", "proxy_uas.xml"),
    ("proxy_uac_reinvite.xml", "proxy_uas_reinvite.xml"),
    ("proxy_uac_cancel.xml", "proxy_uas_cancel.xml"),
    ("proxy_uac_cancel_180.xml", "proxy_uas_cancel_180.xml"),
    ("proxy_uac_register.xml", "proxy_uas_register.xml"),
    ("proxy_uac_486.xml", "proxy_uas_486.xml"),
    ("proxy_uac_408.xml", "408"),
    ("proxy_uac_500.xml", "500"),
    ("proxy_uac_482.xml", "482"),
]


def sipp(args, cwd):
    return subprocess.Popen([lsip.SIPP] + args + ["-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "10s",
                                                  "-timeout_error", "-trace_err"],
                            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(p, timeout):
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return None


def main():
    tmp = tempfile.mkdtemp(prefix="lsip-scen")
    bad = 0
    try:
        for uac, uas in PAIRS:
            d = os.path.join(tmp, uac[:-4])
            os.makedirs(d)
            if uas.isdigit():  # a callee answering that status
                with open(os.path.join(SIPP_DIR, "proxy_uas_486.xml")) as f:
                    text = f.read().replace("SIP/2.0 486 Busy Here", "SIP/2.0 %s Test Status" % uas)
                uas_path = os.path.join(d, "uas_%s.xml" % uas)
                with open(uas_path, "w") as f:
                    f.write(text)
            else:
                uas_path = os.path.join(SIPP_DIR, uas)
            port = lsip.free_port()
            callee = sipp(["-sf", uas_path, "-p", str(port)], d)
            if not lsip.wait_udp_bound(port):
                print("not ok - %s / %s: the UAS did not bind" % (uac, uas))
                finish(callee, 0)
                bad += 1
                continue
            caller = sipp(["127.0.0.1:%d" % port, "-sf", os.path.join(SIPP_DIR, uac), "-p", str(lsip.free_port())], d)
            rc_uac = finish(caller, 20)
            rc_uas = finish(callee, 5)
            ok = rc_uac == 0 and rc_uas == 0
            bad += not ok
            print("%s - %s / %s (exit %r / %r)" % ("ok" if ok else "not ok", uac, os.path.basename(uas_path),
                                                  rc_uac, rc_uas))
            if not ok:
                for fn in sorted(os.listdir(d)):
                    if fn.endswith("_errors.log"):
                        with open(os.path.join(d, fn), errors="replace") as f:
                            print("    " + f.read().strip().replace("\n", "\n    ")[:800])
            time.sleep(0.05)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d pairs, %d failed" % (len(PAIRS), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
