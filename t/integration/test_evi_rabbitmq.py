"""The rabbitmq: event sink (SPEC §6) against a real Debian rabbitmq-server started by the test
(t/integration/rabbitmq.py) and a consumer on librabbitmq (t/tools/amqp_consume): exact
JSON-RPC bodies on a queue named by the routing key (default exchange) and through
`exchange=X;persistent;` (content type, delivery mode), credentials (the password never in
the log), an unroutable key and a refused login reported; a broker stopped and started
again under a steady stream of events (every event id reaches the consumer, at-least-once,
while SIP keeps being answered); a broker that hangs (SIGSTOP); and the SPEC example
`virtual:FAILOVER rabbitmq:... flatstore:...` writing to the file while the broker is down
and to the broker once it is back."""
import os
import re
import signal
import threading
import time

import lsip
import rabbitmq
from lsip import request

RMQ_LUA = r'''
local SUBS = { @SUBS@ }
for _, s in ipairs(SUBS) do
  assert(subscribe_event(s[1], s[2]))
end
for _, s in ipairs({ @BAD@ }) do
  local ok, err = pcall(subscribe_event, "E_BAD", s)
  require("lunasip").log.notice("BADSOCK %s => %s", tostring(ok), tostring(err))
end
function SipEvents.on_request(req)
  if req.method ~= "OPTIONS" then
    if req.method ~= "ACK" then req:reply(405) end
    return
  end
  local id = tonumber(req:header("X-Id") or "0")
  local n, err = raise_event(req:header("X-Event") or "E_RMQ", { { "id", id }, { "caller", "alice" } })
  req:reply(200, "OK", { "X-Raised: " .. tostring(n) .. "/" .. tostring(err) })
end
'''

CONF = ('core = { log_level = "debug", control_socket = false }\n'
        'sip = { listen = { "udp:127.0.0.1:@PORT4@" } }\n'
        'pike = { enabled = false }\n'
        'events = { connect_timeout = 1, send_timeout = 2, retry_max = 1, heartbeat = %d }\n')


# An OPTIONS answer slower than this means the loop waited on the broker: CONF's connect_timeout
# (1 s) and send_timeout (2 s) are what a blocking call would cost; ASan on a loaded machine
# stays well under it.
SLOW = 0.8


def body(event, i):
    """The JSON-RPC notification RMQ_LUA's raise publishes for id i."""
    return '{"jsonrpc":"2.0","method":"%s","params":{"id":%d,"caller":"alice"}}' % (event, i)


def _lua_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def start(t, subs, heartbeat=10, bad=()):
    """A lunasip subscribing subs [(event, socket)]; each socket of bad must be refused (its
    error is logged as a BADSOCK line)."""
    inst = t.instance("", start=False, ipv6=False, conf_text=CONF % heartbeat)
    inst.write_script(RMQ_LUA.replace("@SUBS@", ", ".join("{ %s, %s }" % (_lua_str(e), _lua_str(s))
                                                          for e, s in subs))
                      .replace("@BAD@", ", ".join(_lua_str(b) for b in bad)))
    inst.start()
    inst.peer = t.peer()
    return inst


def options(t, inst, i, event="E_RMQ", expect=1, timeout=3.0):
    """One OPTIONS raising event with id i: returns the answer time, or None (checked)."""
    m = request("OPTIONS", "sip:probe@127.0.0.1:%d" % inst.port4, via=(inst.peer.host, inst.peer.port),
                extra=["X-Id: %d" % i, "X-Event: " + event])
    t0 = time.monotonic()
    r = inst.peer.request(m, inst.addr4, timeout=timeout)
    if not t.check(r is not None and r.status == 200, "OPTIONS id %d (%s): answer %r" % (i, event, r)):
        return None
    t.eq(r.header("X-Raised"), "%d/nil" % expect, "OPTIONS id %d (%s): raise_event result" % (i, event))
    return time.monotonic() - t0


def ids_of(t, lines, event, what, prefix=""):
    """The ids of consumer lines, each checked to be exactly the published body."""
    out = []
    for ln in lines:
        m = re.match(r'^%s\{"jsonrpc":"2.0","method":"%s","params":\{"id":(\d+),' % (re.escape(prefix), event), ln)
        if t.check(m and ln == prefix + body(event, int(m.group(1))), "%s: unexpected message %r" % (what, ln)):
            out.append(int(m.group(1)))
    return out


def wait_ids(t, consumer, event, want, timeout, prefix=""):
    """Waits until consumer has received every id of want; returns the ids received."""
    want = set(want)
    lines = consumer.wait_lines(lambda ls: want <= set(_quick_ids(ls, event)), timeout)
    return ids_of(t, lines, event, "consumer", prefix)


def _quick_ids(lines, event):
    rx = re.compile(r'"method":"%s","params":\{"id":(\d+),' % re.escape(event))
    return [int(m.group(1)) for m in map(rx.search, lines) if m]


class Stream:
    """Sends OPTIONS at rate per second from a thread (ids from first up), recording every
    answer time; stop() returns the ids sent."""

    def __init__(self, t, inst, rate, event="E_RMQ", first=1):
        self.t, self.inst, self.rate, self.event = t, inst, rate, event
        self.next = first
        self.sent, self.lat, self.unanswered = [], [], []
        self._stop = threading.Event()
        self.peer = t.peer()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        try:
            self._loop()
        except OSError as e:  # the test ended under us (its sockets are closed)
            self.unanswered.append((self.next, "error", str(e)))

    def _loop(self):
        period = 1.0 / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            i = self.next
            self.next += 1
            m = request("OPTIONS", "sip:probe@127.0.0.1:%d" % self.inst.port4, via=(self.peer.host, self.peer.port),
                        extra=["X-Id: %d" % i, "X-Event: " + self.event])
            t0 = time.monotonic()
            r = self.peer.request(m, self.inst.addr4, timeout=2.0)
            self.sent.append(i)
            if r is None or r.status != 200 or r.header("X-Raised") != "1/nil":
                self.unanswered.append((i, r and r.status, r and r.header("X-Raised")))
            else:
                self.lat.append(time.monotonic() - t0)
            due += period
            left = due - time.monotonic()
            if left > 0:
                self._stop.wait(left)

    def stop(self):
        self._stop.set()
        self.th.join(10)
        return list(self.sent)


def start_broker(t):
    b = rabbitmq.Broker(t)
    took = b.start()
    t.note("broker started in %.1f s" % took)
    return b


def no_secret(t, inst):
    log = inst.log()
    t.check(rabbitmq.SECRET_PASS not in log, "the AMQP password appears in the log:\n      %s" % "\n      ".join(
        ln for ln in log.splitlines() if rabbitmq.SECRET_PASS in ln)[:1200])


# (socket, the error it must get): syntax errors name what is wrong and never show a password
BAD_SOCKETS = [
    ("rabbitmq:127.0.0.1:5672", "'/ROUTING_KEY' missing"),
    ("rabbitmq:127.0.0.1:70000/k", "port must be 1..65535"),
    ("rabbitmq:127.0.0.1:/k", "port missing after ':'"),
    ("rabbitmq:::1:5672/k", "an IPv6 address goes in brackets"),
    ("rabbitmq:[::1/k", "unterminated [IPv6] address"),
    ("rabbitmq:[::zz]:5672/k", "bad IPv6 address"),
    ("rabbitmq:127.0.0.1/", "routing key missing"),
    ("rabbitmq:127.0.0.1/exchange=x;persistent;", "routing key missing"),
    ("rabbitmq:u:%s@127.0.0.1/exchange=x" % rabbitmq.SECRET_PASS, "'exchange=X' must end with ';'"),
    ("rabbitmq:bad host/k", "bad character in host"),
]


# ---------------------------------------------------------------------------------------------

def test_evi_rabbitmq_delivery(t):
    """Exact bodies to the queue named by the routing key (default exchange, guest:guest),
    and through exchange=X;persistent; with credentials and a host name (content type
    application/json, delivery mode 2); an unroutable key and a refused login are reported
    and the password never reaches the log."""
    b = start_broker(t)
    try:
        c1 = rabbitmq.Consumer(t, b, "lunasip")
        c2 = rabbitmq.Consumer(t, b, "lsit.q2", exchange="lsit.x", key="k2", verbose=True)
        t.check(c1.wait_connected() and c2.wait_connected(), "consumers did not connect: %s %s" % (
            c1.errors(), c2.errors()))
        secret = "rabbitmq:%s:%s@localhost:%d/exchange=lsit.x;persistent;k2" % (
            rabbitmq.SECRET_USER, rabbitmq.SECRET_PASS, b.port)
        c3 = rabbitmq.Consumer(t, b, "lunasip6", verbose=True)
        t.check(c1.wait_connected() and c2.wait_connected() and c3.wait_connected(),
                "consumers did not connect: %s %s %s" % (c1.errors(), c2.errors(), c3.errors()))
        inst = start(t, [("E_RMQ", "rabbitmq:127.0.0.1:%d/lunasip" % b.port),
                         ("E_RMQ2", secret),
                         ("E_RMQ6", "rabbitmq:[::1]:%d/lunasip6" % b.port),
                         ("E_NOROUTE", "rabbitmq:127.0.0.1:%d/no-queue-here" % b.port),
                         ("E_BADPW", "rabbitmq:guest:bad-%s@127.0.0.1:%d/lunasip" % (rabbitmq.SECRET_PASS, b.port))],
                     bad=[bad for bad, _ in BAD_SOCKETS])
        for bad, why in BAD_SOCKETS:
            shown = bad.replace(rabbitmq.SECRET_PASS, "***")
            t.check(inst.wait_log(r"BADSOCK false => .*%s: %s" % (re.escape(shown), re.escape(why)), 0.1),
                    "subscribing %r: no error %r (BADSOCK lines: %s)" % (
                        shown, why, re.findall(r"BADSOCK .*", inst.log())))
        t.check(inst.wait_log(r"event socket rabbitmq:127\.0\.0\.1:%d/lunasip is up" % b.port, 10),
                "the rabbitmq sink did not come up")
        n = 30
        for i in range(1, n + 1):
            options(t, inst, i)
            options(t, inst, 1000 + i, event="E_RMQ2")
            options(t, inst, 2000 + i, event="E_RMQ6")
        got = wait_ids(t, c1, "E_RMQ", range(1, n + 1), 10)
        t.eq(got, list(range(1, n + 1)), "E_RMQ ids on queue lunasip, in order, once each")
        got2 = wait_ids(t, c2, "E_RMQ2", range(1001, 1001 + n), 10, prefix="application/json 2 0 ")
        t.eq(got2, list(range(1001, 1001 + n)), "E_RMQ2 ids through exchange lsit.x (persistent)")
        got6 = wait_ids(t, c3, "E_RMQ6", range(2001, 2001 + n), 10, prefix="application/json 1 0 ")
        t.eq(got6, list(range(2001, 2001 + n)), "E_RMQ6 ids over IPv6 (transient)")

        options(t, inst, 1, event="E_NOROUTE")
        t.check(inst.wait_log(r"returned unroutable \(312 NO_ROUTE\): no queue is bound for routing key "
                              r"'no-queue-here'", 5), "no 'returned unroutable' line for E_NOROUTE")
        t.check(inst.wait_log(r"is down: login to 127\.0\.0\.1:%d as guest: .*(ACCESS_REFUSED|403|closed)" % b.port, 10),
                "no 'is down' line for the refused login")
        options(t, inst, 1, event="E_BADPW")
        t.eq(len(c1.lines()), n, "messages on queue lunasip after the refused login's event")
        no_secret(t, inst)
        lsip.no_error_log(t, inst)
        for c in (c1, c2, c3):
            c.stop()
    finally:
        b.close()


def test_evi_rabbitmq_broker_restart(t):
    """A steady 20 events/s while the broker is stopped and started again: the consumer gets
    every id (duplicates allowed: at-least-once), the sink goes down and up again, and every
    OPTIONS is answered promptly throughout."""
    s = None
    b = start_broker(t)
    try:
        c = rabbitmq.Consumer(t, b, "lunasip")
        t.check(c.wait_connected(), "consumer did not connect: %s" % c.errors())
        inst = start(t, [("E_RMQ", "rabbitmq:127.0.0.1:%d/persistent;lunasip" % b.port)], heartbeat=2)
        sock = re.escape("rabbitmq:127.0.0.1:%d/persistent;lunasip" % b.port)
        t.check(inst.wait_log(r"event socket %s is up" % sock, 10), "the rabbitmq sink did not come up")
        s = Stream(t, inst, 20)
        time.sleep(1.5)
        mark = inst.mark()
        took = b.stop()
        t.check(inst.wait_log(r"event socket %s is down" % sock, 5, since=mark), "no 'is down' after the broker stopped")
        time.sleep(1.0)
        took2 = b.start()
        t.check(inst.wait_log(r"event socket %s is up again" % sock, 10, since=mark),
                "no 'is up again' after the broker started")
        time.sleep(1.5)
        sent = s.stop()
        t.note("broker stopped in %.1f s, started again in %.1f s; %d events sent" % (took, took2, len(sent)))
        got = wait_ids(t, c, "E_RMQ", sent, 20)
        lost = sorted(set(sent) - set(got))
        t.check(not lost, "%d of %d event ids never reached the consumer: %s" % (len(lost), len(sent), lost[:20]))
        t.check(not s.unanswered, "OPTIONS not answered 200 during the restart: %s" % s.unanswered[:10])
        if s.lat:
            worst = max(s.lat)
            t.note("OPTIONS answers: %d, slowest %.1f ms; %d duplicate deliveries" % (
                len(s.lat), worst * 1000, len(got) - len(set(got))))
            t.check(worst < SLOW, "slowest OPTIONS answer %.3f s during the broker restart" % worst)
        lsip.no_error_log(t, inst)
        c.stop()
    finally:
        if s:
            s.stop()
        b.close()


def test_evi_rabbitmq_hung_broker(t):
    """A broker that stops reading (SIGSTOP): SIP keeps its latency, the sink notices (no
    heartbeat) and goes down; on SIGCONT every event held meanwhile is delivered."""
    s = None
    b = start_broker(t)
    try:
        c = rabbitmq.Consumer(t, b, "lunasip")
        t.check(c.wait_connected(), "consumer did not connect: %s" % c.errors())
        inst = start(t, [("E_RMQ", "rabbitmq:127.0.0.1:%d/lunasip" % b.port)], heartbeat=1)
        sock = re.escape("rabbitmq:127.0.0.1:%d/lunasip" % b.port)
        t.check(inst.wait_log(r"event socket %s is up" % sock, 10), "the rabbitmq sink did not come up")
        s = Stream(t, inst, 20)
        time.sleep(1.0)
        mark = inst.mark()
        vm = b.vm_pid()
        if not vm:
            t.fail("no beam.smp process under the broker %d: %s" % (b.proc.pid, b.pids))
        os.kill(vm, signal.SIGSTOP)
        try:
            t.check(inst.wait_log(r"event socket %s is down: .*(no heartbeat|timed out|made no progress)" % sock,
                                  8, since=mark), "no 'is down' while the broker is hung")
            time.sleep(1.0)
        finally:
            os.kill(vm, signal.SIGCONT)
        t.check(inst.wait_log(r"event socket %s is up again" % sock, 15, since=mark),
                "no 'is up again' after the broker resumed")
        time.sleep(1.0)
        sent = s.stop()
        got = wait_ids(t, c, "E_RMQ", sent, 20)
        lost = sorted(set(sent) - set(got))
        t.check(not lost, "%d of %d event ids never reached the consumer: %s" % (len(lost), len(sent), lost[:20]))
        t.check(not s.unanswered, "OPTIONS not answered 200 while the broker hung: %s" % s.unanswered[:10])
        if s.lat:
            t.note("OPTIONS answers: %d, slowest %.1f ms" % (len(s.lat), max(s.lat) * 1000))
            t.check(max(s.lat) < SLOW, "slowest OPTIONS answer %.3f s while the broker hung" % max(s.lat))
        lsip.no_error_log(t, inst)
        c.stop()
    finally:
        if s:
            s.stop()
        b.close()


def test_evi_rabbitmq_failover_to_flatstore(t):
    """SPEC §6 shown by: virtual:FAILOVER rabbitmq:127.0.0.1:PORT/lunasip
    flatstore:DIR/lunasip.events writes to the broker while it is up, to the file while it is
    down (killed), and to the broker again once it is back (the FAILOVER's 30 s hold ends as
    soon as the member reports UP)."""
    b = start_broker(t)
    try:
        c = rabbitmq.Consumer(t, b, "lunasip")
        t.check(c.wait_connected(), "consumer did not connect: %s" % c.errors())
        path = os.path.join(t.dir, "lunasip.events")
        rmq = "rabbitmq:127.0.0.1:%d/lunasip" % b.port
        inst = start(t, [("E_FO", "virtual:FAILOVER %s flatstore:%s" % (rmq, path))])
        t.check(inst.wait_log(r"event socket %s is up" % re.escape(rmq), 10), "the rabbitmq member did not come up")

        for i in range(1, 21):
            options(t, inst, i, event="E_FO")
        got = wait_ids(t, c, "E_FO", range(1, 21), 10)
        t.eq(sorted(set(got)), list(range(1, 21)), "phase 1 (broker up): ids at the consumer")

        mark = inst.mark()
        b.kill()   # the VM dies at once: the connection resets (test_..._broker_restart stops it cleanly)
        t.check(inst.wait_log(r"event socket %s is down" % re.escape(rmq), 5, since=mark),
                "no 'is down' for the rabbitmq member")
        worst = 0.0
        for i in range(21, 41):
            worst = max(worst, options(t, inst, i, event="E_FO") or 0)
        t.check(worst < SLOW, "slowest OPTIONS answer %.3f s with the broker down" % worst)
        end = time.monotonic() + 5
        while time.monotonic() < end and lsip_count(path) < 20:
            time.sleep(0.02)
        with open(path) if os.path.exists(path) else open(os.devnull) as f:
            flines = f.read().splitlines()
        fids = [int(ln.split(",")[1]) for ln in flines]
        t.eq(fids, list(range(21, 41)), "phase 2 (broker down): ids in %s" % path)
        t.check(all(ln == "E_FO,%d,alice" % i for ln, i in zip(flines, fids)), "flatstore lines: %r" % flines[:3])

        b.start()
        t.check(inst.wait_log(r"event socket %s is up again" % re.escape(rmq), 15, since=mark),
                "no 'is up again' for the rabbitmq member")
        for i in range(41, 61):
            options(t, inst, i, event="E_FO")
        got = wait_ids(t, c, "E_FO", range(41, 61), 10)
        t.check(set(range(41, 61)) <= set(got), "phase 3 (broker back): ids at the consumer: %s" % sorted(set(got)))
        t.check(not set(range(21, 41)) & set(got), "phase 2 ids reached the consumer too")
        with open(path) as f:
            t.eq(len(f.read().splitlines()), 20, "lines in %s after the broker came back" % path)
        lsip.no_error_log(t, inst)
        c.stop()
    finally:
        b.close()


def lsip_count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0
