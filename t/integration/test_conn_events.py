"""The built-in events of stream connections (SPEC §5.5): E_CORE_TCP_DISCONNECT for every
stream connection that was open, E_WS_CLOSED for a WebSocket one, E_TLS_HANDSHAKE_FAILED for a
handshake that fails, each with its parameters, delivered to a UDP event socket."""
import socket
import ssl
import time

import lsip
from test_events import Sink
from wsclient import WsClient

LO = "127.0.0.1"

SCRIPT = r'''
for _, e in ipairs({ "E_CORE_TCP_DISCONNECT", "E_WS_CLOSED", "E_TLS_HANDSHAKE_FAILED" }) do
  subscribe_event(e, "@SINK@")
end
function SipEvents.on_request(req) req:reply(200) end
'''


def _by_event(evs):
    out = {}
    for e in evs:
        out.setdefault(e.get("method"), []).append(e.get("params"))
    return out


def test_conn_events_ws_close_tcp_idle_and_tls_failure(t):
    sink = Sink(t)
    inst = t.instance(SCRIPT.replace("@SINK@", sink.socket), ipv6=False, start=False, streams=("tcp", "tls", "ws"),
                      sip_extra="connection_idle_timeout = 1")
    inst.start()

    # a WebSocket client that closes with 1000
    ws = WsClient(t, inst.addr("ws"))
    resp = ws.handshake()
    t.check(resp is not None and resp.status == 101, "ws upgrade: %r" % resp)
    wport = ws.sock.getsockname()[1]
    ws.close(1000, b"bye")
    ws.wait_closed(3)
    ws.close_socket()
    got = _by_event(sink.events(3, n=2))
    w = (got.get("E_WS_CLOSED") or [None])[0]
    t.eq(w, {"src_ip": LO, "src_port": wport, "code": 1000, "reason": "closed by the peer", "client_closed": True},
         "E_WS_CLOSED")
    d = (got.get("E_CORE_TCP_DISCONNECT") or [None])[0]
    t.eq(d, {"src_ip": LO, "src_port": wport, "dst_ip": LO, "dst_port": inst.ports["ws"], "proto": "ws",
             "reason": "closed by the peer"}, "E_CORE_TCP_DISCONNECT of the WebSocket")

    # a TCP client that stays silent: closed by connection_idle_timeout
    s = socket.create_connection(inst.addr("tcp"), timeout=5)
    tport = s.getsockname()[1]
    got = _by_event(sink.events(4, n=1))
    d = (got.get("E_CORE_TCP_DISCONNECT") or [None])[0]
    t.eq(d, {"src_ip": LO, "src_port": tport, "dst_ip": LO, "dst_port": inst.ports["tcp"], "proto": "tcp",
             "reason": "idle"}, "E_CORE_TCP_DISCONNECT of the idle TCP connection")
    t.check("E_WS_CLOSED" not in got, "E_WS_CLOSED for a TCP connection")
    s.close()

    # plain text on the TLS port: the handshake fails; the connection never opened, so
    # there is no E_CORE_TCP_DISCONNECT for it
    s = socket.create_connection(inst.addr("tls"), timeout=5)
    lport = s.getsockname()[1]
    s.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    got = _by_event(sink.events(3, n=1))
    f = (got.get("E_TLS_HANDSHAKE_FAILED") or [None])[0]
    t.check(f is not None and f.get("src_port") == lport and f.get("proto") == "tls" and f.get("src_ip") == LO
            and f.get("reason"), "E_TLS_HANDSHAKE_FAILED: %r" % (f,))
    extra = _by_event(sink.events(0.5))
    t.check("E_CORE_TCP_DISCONNECT" not in extra, "E_CORE_TCP_DISCONNECT for a handshake that failed: %r" % extra)
    s.close()
    lsip.no_error_log(t, inst)
