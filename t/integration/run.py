#!/usr/bin/python3
"""Runs the integration layer: every test_* function of every t/integration/test_*.py, each
with its own lunasip instances on loopback. Prints `ok - name` / `not ok - name` (diagnostics
indented by two spaces under failures) and, as the last line, `N passed, M failed`; exits
non-zero on any failure.

  LUNASIP_BIN=$PWD/build/san/lunasip /usr/bin/python3 t/integration/run.py [-j JOBS] [-k SUBSTR]...
"""
import argparse
import ctypes
import importlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the checkout

import lsip  # noqa: E402

TOTAL_BUDGET = float(os.environ.get("LUNASIP_IT_BUDGET", "480"))  # seconds for the whole layer: a hang guard


def discover(filters):
    tests = []
    for fn in sorted(os.listdir(HERE)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        mod = importlib.import_module(fn[:-3])
        for name, obj in vars(mod).items():  # definition order
            if name.startswith("test_") and callable(obj):
                if not filters or any(f in name for f in filters):
                    tests.append((name, obj))
    return tests


def run_one(index, name, fn, root, keep):
    # short dirs (root/tNN): error messages quote script paths, keep them short and readable
    t = lsip.Ctx(name, root, "t%02d" % index)
    t0 = time.monotonic()
    crashed = None
    try:
        fn(t)
    except lsip.Fail as e:
        crashed = str(e)
    except Exception:  # a bug in the test or an unexpected condition: report it, go on
        crashed = "exception in the test:\n" + traceback.format_exc().rstrip()
    finally:
        try:
            t.cleanup()
        except Exception:
            t.errors.append("cleanup failed:\n" + traceback.format_exc().rstrip())
    if crashed:
        t.errors.insert(0, crashed)
    diag = []
    for e in t.errors:
        diag.extend(str(e).splitlines())
    if t.errors:
        for inst in t.instances:
            diag.append("%s log (last lines):" % inst.name)
            diag.extend("    " + ln for ln in inst.tail(8))
        for s in t._sipps:
            diag.append("sipp %s: %s" % (s.dir, " ".join(s.cmd)))
            diag.extend("    " + ln for ln in s.errors(8))
    if not keep:
        shutil.rmtree(t.dir, ignore_errors=True)
    return (not t.errors), diag, t.notes, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("LUNASIP_IT_JOBS", "3")))
    ap.add_argument("-k", action="append", default=[], help="run tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs of passing tests")
    args = ap.parse_args()

    # The daemon test waits for lunasip's forked child: make this process the subreaper of
    # its orphaned descendants (PR_SET_CHILD_SUBREAPER = 36) so it can collect that exit status.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except Exception:
        pass

    t_start = time.monotonic()
    root = tempfile.mkdtemp(prefix="lsit", dir="/tmp" if os.path.isdir("/tmp") else None)
    passed = failed = 0
    try:
        if not os.access(lsip.BIN, os.X_OK):
            print("not ok - lunasip_binary")
            print("  LUNASIP_BIN=%s is not an executable" % lsip.BIN)
            print("0 passed, 1 failed")
            return 1
        tests = discover(args.k)
        results = [None] * len(tests)
        done = threading.Condition()
        next_i = [0]

        def worker():
            while True:
                with done:
                    i = next_i[0]
                    if i >= len(tests):
                        return
                    next_i[0] += 1
                r = run_one(i, tests[i][0], tests[i][1], root, args.keep)
                with done:
                    results[i] = r
                    done.notify_all()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.jobs))]
        for th in threads:
            th.start()
        printed = 0
        deadline = t_start + TOTAL_BUDGET
        while printed < len(tests):
            with done:
                while results[printed] is None and time.monotonic() < deadline:
                    done.wait(0.5)
            if results[printed] is None:
                break
            name = tests[printed][0]
            ok, diag, notes, secs = results[printed]
            print("%s - %s" % ("ok" if ok else "not ok", name))
            for ln in diag:
                print("  " + ln)
            for ln in notes:
                print("# %s: %s" % (name, ln))
            print("# %s took %.1f s" % (name, secs))
            sys.stdout.flush()
            passed += ok
            failed += not ok
            printed += 1
        for i in range(printed, len(tests)):
            print("not ok - %s" % tests[i][0])
            print("  did not finish within the layer's %.0f s budget (hung?)" % TOTAL_BUDGET)
            failed += 1
    finally:
        left = lsip.kill_leftovers()
        for pid, what in left:
            print("# killed leftover %s (pid %d)" % (what, pid))
        if args.keep:
            print("# temp dirs kept in %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("# wall time %.1f s" % (time.monotonic() - t_start))
    print("%d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: (lsip.kill_leftovers(), os._exit(1)))
    code = main()
    os._exit(code)  # worker threads of an unfinished test must not keep us alive
