/* Process-wide counters, read by logs, tests, the control socket (`stats`) and metrics.
 * Plain integers: lunasip runs one event loop per process. STATS_FIELDS lists every counter
 * once (name, help text), so the control socket and the metrics endpoint can walk them. */
#ifndef LUNASIP_STATS_H
#define LUNASIP_STATS_H

#include <stddef.h>
#include <stdint.h>

#define STATS_FIELDS(X) \
    X(rx_datagrams, "datagrams received") \
    X(rx_keepalives, "CRLF keepalives received") \
    X(rx_stun, "STUN messages received on SIP UDP ports") \
    X(tx_stun, "STUN Binding answers sent (RFC 5626 keepalives)") \
    X(rx_requests, "requests received") \
    X(rx_responses, "responses received") \
    X(rx_oversized, "datagrams above sip.max_message_size, dropped") \
    X(rx_malformed, "requests answered 4xx/5xx by the parser, or dropped") \
    X(rx_dropped, "messages dropped without an answer (no Via, bad response, ...)") \
    X(rx_responses_dropped, "responses no transaction matched") \
    X(rx_acks_absorbed, "ACKs absorbed") \
    X(tx_replies, "replies sent by the core") \
    X(tx_messages, "messages sent by transactions (requests, responses, ACK, CANCEL)") \
    X(tx_errors, "sendto failures") \
    X(lua_errors, "Lua handlers that raised an error") \
    X(lua_slow, "Lua handlers slower than 100 ms") \
    X(lua_unanswered, "on_request returned without answering or routing") \
    X(reloads_ok, "reloads done") \
    X(reloads_failed, "reloads refused (the running config stayed)") \
    X(txn_retrans_absorbed, "request retransmissions absorbed by a server transaction") \
    X(txn_resp_retrans_absorbed, "response retransmissions absorbed by a client transaction") \
    X(txn_retransmits, "retransmissions sent (Timers A, E, G)") \
    X(txn_timeouts, "client transactions ended by Timer B or F") \
    X(txn_no_ack, "Timer H fired") \
    X(txn_unanswered, "server transactions that expired unanswered") \
    X(txn_send_errors, "transaction send failures") \
    X(proxy_requests, "requests routed statefully") \
    X(proxy_stateless, "ACKs of 2xx and responses forwarded statelessly") \
    X(proxy_loops, "482 Loop Detected") \
    X(proxy_too_many_hops, "483 Too Many Hops") \
    X(proxy_cancels, "CANCELs matched to an INVITE") \
    X(proxy_errors, "routings ended in on_error") \
    X(events_raised, "events raised") \
    X(events_queued, "event deliveries queued to sinks") \
    X(events_delivered, "event deliveries completed") \
    X(events_failed, "event delivery attempts that failed (a virtual set may still deliver)") \
    X(events_dropped, "events lost: queue overflow or every member failed") \
    X(events_handlers, "event_route handlers run") \
    X(events_handler_errors, "event_route handlers that raised an error") \
    X(events_depth_capped, "raises inside event_route too deep to run handlers") \
    X(events_expired, "subscriptions expired") \
    X(ctl_requests, "control socket requests") \
    X(ctl_errors, "control socket requests answered with an error") \
    X(conn_accepted, "stream connections accepted (tcp, tls, ws, wss)") \
    X(conn_connected, "stream connections lunasip opened") \
    X(conn_connect_failed, "outgoing connections that failed (refused, tcp_connect_timeout, TLS)") \
    X(conn_closed, "stream connections closed, for any reason") \
    X(conn_refused_limit, "connections refused by max_connections or max_connections_per_ip") \
    X(conn_header_timeout, "connections closed by header_timeout (a stalled message head)") \
    X(conn_idle_timeout, "connections closed by connection_idle_timeout") \
    X(conn_oversized, "connections closed for a message above the size limits") \
    X(conn_framing_errors, "connections closed for a message that cannot be framed") \
    X(conn_send_overflow, "connections closed because the peer did not read its output") \
    X(conn_keepalives, "double-CRLF keepalives answered on stream connections") \
    X(tls_handshakes, "TLS handshakes completed") \
    X(tls_handshake_failed, "TLS handshakes failed or timed out (tls_handshake_timeout)") \
    X(tls_rejected, "TLS connections rejected by a handshake callback") \
    X(ws_upgrades, "WebSocket upgrades accepted") \
    X(ws_rejected, "WebSocket upgrades refused (HTTP error, subprotocol, origin, script)") \
    X(ws_protocol_errors, "WebSocket connections closed for a framing error (1002, 1007, 1009)") \
    X(ws_pings_sent, "WebSocket pings sent") \
    X(ws_pong_timeouts, "WebSocket connections closed for a missing pong") \
    X(flow_tokens_sent, "flow tokens written into Record-Route or Path") \
    X(flow_routed, "requests sent over the flow their Route token named") \
    X(flow_failed, "430 Flow Failed: the flow of a Route token is gone") \
    X(flow_forged, "Route flow tokens refused (bad signature)")

struct stats {
#define STATS_DECLARE(name, help) uint64_t name;
    STATS_FIELDS(STATS_DECLARE)
#undef STATS_DECLARE
};

extern struct stats stats;

/* The counters as a table: name, help, offset into struct stats; ends with name NULL. */
struct stats_field {
    const char *name;
    const char *help;
    size_t offset;
};
extern const struct stats_field stats_fields[];

static inline uint64_t stats_get(const struct stats_field *f)
{
    return *(const uint64_t *)((const char *)&stats + f->offset);
}

#endif
