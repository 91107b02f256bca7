"""A private RabbitMQ broker for the rabbitmq: event sink tests (SPEC §6), and a consumer.

Broker(ctx) runs the Debian rabbitmq-server (installed by `scripts/deps.sh test`) with
everything under the test's temp dir: its own epmd (started here, in the foreground, so its
PID is ours), picked free ports for AMQP, Erlang distribution and epmd, a unique node name,
its own mnesia, log, config, plugins file and HOME (the Erlang cookie). It listens on
127.0.0.1 and ::1 only and knows two users from a definitions file: guest/guest and SECRET_USER /
SECRET_PASS. start() waits until the AMQP port accepts; stop() ends the broker by PID (TERM,
then KILL) and keeps the mnesia dir, so restart() finds its durable queues again. A broker
that cannot start is a test failure that quotes its log.

Consumer(ctx, broker, queue, ...) runs t/tools/amqp_consume and collects the lines it
prints (one per message) and its "connected" lines. Every PID is registered with lsip's
leftover tracking. Python standard library only.
"""
import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import lsip

SERVER = os.environ.get("RABBITMQ_SERVER_BIN", "/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = os.environ.get("EPMD_BIN", "/usr/bin/epmd")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

SECRET_USER = "lsit-user"
SECRET_PASS = "pw-Zq7-never-logged"


def _tool(name):
    """A test tool built by `make test-build` next to the lunasip binary under test."""
    return os.path.join(os.path.dirname(lsip.BIN), "t", "tools", name)


def _hash_password(pw):
    """rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + pw.encode()).digest()).decode()


def _port_accepts(port, host="127.0.0.1", timeout=0.3):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _children(pid):
    """Direct children of pid (from /proc)."""
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _descendants(pid):
    seen, todo = [], [pid]
    while todo:
        for c in _children(todo.pop()):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is dead for us
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tail(path, n):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").splitlines()[-n:]
    except OSError:
        return []


class Broker:
    def __init__(self, ctx, name="rabbit"):
        self.ctx = ctx
        self.dir = os.path.join(ctx.dir, name)
        self.home = os.path.join(self.dir, "home")
        self.logs = os.path.join(self.dir, "log")
        for d in (self.dir, self.home, self.logs, os.path.join(self.dir, "mnesia")):
            os.makedirs(d, exist_ok=True)
        self.node = "lsit%d%s@localhost" % (os.getpid(), lsip.rand_token(6))
        self.port = lsip.free_port(kind=socket.SOCK_STREAM)
        self.dist_port = lsip.free_port(kind=socket.SOCK_STREAM)
        self.epmd_port = lsip.free_port(kind=socket.SOCK_STREAM)
        self.console = os.path.join(self.dir, "console.log")
        self.proc = None      # the rabbitmq-server wrapper (a shell that forwards TERM)
        self.pids = []        # the wrapper and what it started (beam.smp, ...)
        self.epmd = None
        self.starts = 0
        self._write_files()

    def _write_files(self):
        conf = os.path.join(self.dir, "rabbitmq.conf")
        defs = os.path.join(self.dir, "definitions.json")
        with open(conf, "w") as f:
            f.write("listeners.tcp.default = 127.0.0.1:%d\n"
                    "listeners.tcp.v6 = ::1:%d\n"
                    "loopback_users = none\n"
                    "load_definitions = %s\n"
                    "disk_free_limit.absolute = 10MB\n"
                    "log.file.level = info\n"
                    "log.console = false\n" % (self.port, self.port, defs))
        users = [("guest", "guest"), (SECRET_USER, SECRET_PASS)]
        with open(defs, "w") as f:
            json.dump({
                "users": [{"name": u, "password_hash": _hash_password(p),
                           "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator"}
                          for u, p in users],
                "vhosts": [{"name": "/"}],
                "permissions": [{"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                                for u, _ in users],
            }, f)
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(self.dir, "rabbitmq-env.conf"), "w").close()

    def env(self):
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("RABBITMQ_") or k.startswith("ERL_")]:
            del env[k]
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
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.dir, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.dir, "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "rabbitmq.pid"),
            "ERL_CRASH_DUMP_SECONDS": "0",   # a killed VM writes no crash dump
        })
        return env

    def log_tail(self, n=25):
        lines = []
        for fn in sorted(os.listdir(self.logs)) if os.path.isdir(self.logs) else []:
            lines += ["%s: %s" % (fn, ln) for ln in _tail(os.path.join(self.logs, fn), n)]
        lines += ["console: " + ln for ln in _tail(self.console, n)]
        return lines[-2 * n:]

    def _fail(self, what):
        self.ctx.fail("rabbitmq broker %s (node %s, AMQP port %d): %s; broker log tail:\n    %s" % (
            self.dir, self.node, self.port, what, "\n    ".join(self.log_tail())))

    def _start_epmd(self):
        if self.epmd and self.epmd.poll() is None:
            return
        out = open(os.path.join(self.dir, "epmd.log"), "ab")
        self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env(), start_new_session=True)
        out.close()
        self.ctx.track_pid(self.epmd.pid, "epmd (port %d)" % self.epmd_port)
        end = time.monotonic() + 10
        while not _port_accepts(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > end:
                self._fail("epmd did not listen on port %d" % self.epmd_port)
            time.sleep(0.02)

    def start(self, timeout=START_TIMEOUT):
        """Starts the broker and waits until its AMQP port accepts; returns the seconds it took."""
        if not os.access(SERVER, os.X_OK):
            self._fail("%s is not installed (scripts/deps.sh test installs rabbitmq-server)" % SERVER)
        t0 = time.monotonic()
        self._start_epmd()
        out = open(self.console, "ab")
        self.proc = subprocess.Popen([SERVER], cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        out.close()
        self.starts += 1
        self.pids = [self.proc.pid]
        self.ctx.track_pid(self.proc.pid, "rabbitmq-server %s" % self.node)
        end = t0 + timeout
        while True:
            self._track_children()
            if _port_accepts(self.port):
                self._track_children()
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                self._fail("exited with status %r before listening" % self.proc.returncode)
            if time.monotonic() > end:
                self.kill()
                self._fail("AMQP port not accepting after %.0f s" % timeout)
            time.sleep(0.1)

    def _track_children(self):
        if not self.proc:
            return
        for pid in _descendants(self.proc.pid):
            if pid not in self.pids:
                self.pids.append(pid)
                self.ctx.track_pid(pid, "rabbitmq %s child" % self.node)

    def vm_pid(self):
        """The PID of the broker's Erlang VM (beam.smp), or None."""
        self._track_children()
        for pid in self.pids:
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip().startswith("beam"):
                        return pid
            except OSError:
                continue
        return None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """Stops the broker (TERM to the wrapper, which stops the VM cleanly; KILL after
        timeout). Keeps epmd and the mnesia dir for restart(). Returns the seconds it took."""
        t0 = time.monotonic()
        if not self.proc:
            return 0.0
        self._track_children()
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.ctx.note("rabbitmq %s: still running %.0f s after TERM: killed" % (self.node, timeout))
        self._kill_pids()
        self.proc = None
        return time.monotonic() - t0

    def _kill_pids(self):
        """KILLs (by PID) what is left of the broker, waits until it is gone, forgets it."""
        if self.proc and self.proc.poll() is None:
            self._track_children()
        # the VM first, so the wrapper (still waiting for it) reaps it; the wrapper last
        for pid in reversed(self.pids):
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if self.proc and pid == self.proc.pid:
                continue
            end = time.monotonic() + 2
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.01)
        if self.proc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 5
        while any(_alive(p) for p in self.pids) and time.monotonic() < end:
            time.sleep(0.02)
        for pid in self.pids:
            self.ctx.untrack_pid(pid)
        self.pids = []

    def kill(self):
        """Ends the broker at once (SIGKILL), keeping epmd and the mnesia dir."""
        self._kill_pids()
        self.proc = None

    def restart(self, timeout=START_TIMEOUT):
        self.stop()
        return self.start(timeout)

    def close(self):
        """Ends the broker and its epmd (the test is over)."""
        self.kill()
        if self.epmd:
            if self.epmd.poll() is None:
                self.epmd.kill()
            self.epmd.wait()
            self.ctx.untrack_pid(self.epmd.pid)
            self.epmd = None


class Consumer:
    """t/tools/amqp_consume on queue (bound to exchange with key when given): lines() are the
    message bodies it printed, connects() how many times it (re)connected."""

    def __init__(self, ctx, broker, queue, exchange=None, key=None, verbose=False, user=None, password=None):
        self.ctx = ctx
        exe = _tool("amqp_consume")
        if not os.access(exe, os.X_OK):
            ctx.fail("%s missing: build it with `make ... test-build`" % exe)
        cmd = [exe]
        if user:
            cmd += ["-u", user, "-p", password]
        if verbose:
            cmd.append("-v")
        cmd += ["127.0.0.1", str(broker.port), queue]
        if exchange:
            cmd += [exchange, key]
        self._lines, self._err = [], []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        ctx.track_pid(self.proc.pid, "amqp_consume %s" % queue)
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self._lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True)]
        for th in self._threads:
            th.start()

    def _read(self, stream, into):
        for raw in iter(stream.readline, b""):
            with self._lock:
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def lines(self):
        with self._lock:
            return list(self._lines)

    def errors(self):
        with self._lock:
            return list(self._err)

    def connects(self):
        return sum(1 for ln in self.errors() if ln == "connected")

    def wait_connected(self, n=1, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.connects() >= n:
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return self.connects() >= n

    def wait_lines(self, pred, timeout):
        """Waits until pred(lines) is true; returns the lines either way."""
        end = time.monotonic() + timeout
        while True:
            ls = self.lines()
            if pred(ls) or time.monotonic() >= end:
                return ls
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.ctx.untrack_pid(self.proc.pid)
        for th in self._threads:
            th.join(2)
