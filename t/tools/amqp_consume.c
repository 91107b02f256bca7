/* A RabbitMQ consumer for the integration tests of the rabbitmq: event sink (SPEC §6): declares a
 * durable queue (and binds it to EXCHANGE with ROUTING_KEY when given, declaring a durable
 * direct exchange unless its name starts with "amq."), consumes with acks and prints every
 * message body as one line on stdout, flushed at once, before acking it. It prints
 * "connected" on stderr at each (re)connection and retries every 200 ms forever after a
 * connection is lost, so it lives through a broker restart; stop it with a signal.
 *
 *   amqp_consume [-u USER] [-p PASS] [-v] HOST PORT QUEUE [EXCHANGE ROUTING_KEY]
 *   -v  prefix each line with "CONTENT_TYPE DELIVERY_MODE REDELIVERED " */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char *user = "guest", *pass = "guest";
static int verbose;

static int rpc_ok(amqp_connection_state_t c, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        fprintf(stderr, "%s: %s\n", what, amqp_error_string2(r.library_error));
    else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = r.reply.decoded;
        fprintf(stderr, "%s: channel closed: %u %.*s\n", what, m->reply_code, (int)m->reply_text.len,
                (char *)m->reply_text.bytes);
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = r.reply.decoded;
        fprintf(stderr, "%s: connection closed: %u %.*s\n", what, m->reply_code, (int)m->reply_text.len,
                (char *)m->reply_text.bytes);
    } else
        fprintf(stderr, "%s: failed\n", what);
    return 0;
}

/* One connection: returns when it is lost (or could not be set up). */
static void session(const char *host, int port, const char *queue, const char *exchange, const char *key)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
    if (!s) {
        if (c)
            amqp_destroy_connection(c);
        return;
    }
    struct timeval tv = { 2, 0 };
    if (amqp_socket_open_noblock(s, host, port, &tv) != AMQP_STATUS_OK)
        goto out;
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);
    amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 5, AMQP_SASL_METHOD_PLAIN, user, pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "login failed\n");
        goto out;
    }
    amqp_channel_open(c, 1);
    if (!rpc_ok(c, "channel.open"))
        goto out;
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
    if (!rpc_ok(c, "queue.declare"))
        goto out;
    if (exchange) {
        if (strncmp(exchange, "amq.", 4) != 0) {
            amqp_exchange_declare(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("direct"), 0, 1, 0, 0,
                                  amqp_empty_table);
            if (!rpc_ok(c, "exchange.declare"))
                goto out;
        }
        amqp_queue_bind(c, 1, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
                        amqp_empty_table);
        if (!rpc_ok(c, "queue.bind"))
            goto out;
    }
    amqp_basic_qos(c, 1, 0, 200, 0);
    if (!rpc_ok(c, "basic.qos"))
        goto out;
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (!rpc_ok(c, "basic.consume"))
        goto out;
    fprintf(stderr, "connected\n");
    fflush(stderr);
    for (;;) {
        amqp_envelope_t env;
        struct timeval wait = { 1, 0 };
        amqp_maybe_release_buffers(c);
        r = amqp_consume_message(c, &env, &wait, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            fprintf(stderr, "lost: %s\n", r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                                              ? amqp_error_string2(r.library_error) : "server exception");
            break;
        }
        if (verbose) {
            amqp_basic_properties_t *p = &env.message.properties;
            int has_ct = (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) != 0;
            printf("%.*s %d %d ", has_ct ? (int)p->content_type.len : 1,
                   has_ct ? (char *)p->content_type.bytes : "-",
                   (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ? p->delivery_mode : 0, env.redelivered ? 1 : 0);
        }
        fwrite(env.message.body.bytes, 1, env.message.body.len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        int st = amqp_basic_ack(c, 1, env.delivery_tag, 0);
        amqp_destroy_envelope(&env);
        if (st != AMQP_STATUS_OK) {
            fprintf(stderr, "lost: ack: %s\n", amqp_error_string2(st));
            break;
        }
    }
out:
    fflush(stderr);
    amqp_destroy_connection(c);
}

int main(int argc, char **argv)
{
    int o;
    while ((o = getopt(argc, argv, "u:p:v")) != -1) {
        if (o == 'u')
            user = optarg;
        else if (o == 'p')
            pass = optarg;
        else if (o == 'v')
            verbose = 1;
        else
            return 2;
    }
    argc -= optind;
    argv += optind;
    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: amqp_consume [-u USER] [-p PASS] [-v] HOST PORT QUEUE [EXCHANGE ROUTING_KEY]\n");
        return 2;
    }
    setvbuf(stderr, NULL, _IOLBF, 0);
    for (;;) {
        session(argv[0], atoi(argv[1]), argv[2], argc == 5 ? argv[3] : NULL, argc == 5 ? argv[4] : NULL);
        usleep(200 * 1000);
    }
}
