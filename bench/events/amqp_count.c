/* bench/events/amqp_count.c: the RabbitMQ end of the event bench (bench/evi_bench.py).
 * Declares QUEUE (not durable: the bench's broker is private and thrown away), consumes it
 * with no-ack as fast as librabbitmq allows, and counts the messages into STATFILE, the
 * same shared layout as evsink.c (messages, bytes, connections, errors, first and last
 * CLOCK_MONOTONIC ns, ready). ready turns 1 once basic.consume is acknowledged: from then
 * on lunasip's mandatory publishes to the default exchange with routing key QUEUE are
 * routable. Retries the connection every 200 ms until the broker accepts (it takes ~8 s to
 * start) and after a loss; the bench stops it with SIGTERM.
 *
 *   amqp_count HOST PORT QUEUE STATFILE */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

struct evsink_stat {
    volatile uint64_t msgs, bytes, conns, errors, first_ns, last_ns, ready, spare;
};

static struct evsink_stat *st;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int rpc_ok(amqp_connection_state_t c, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    fprintf(stderr, "amqp_count: %s failed (%d)\n", what, (int)r.reply_type);
    return 0;
}

static void session(const char *host, int port, const char *queue)
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
    amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "amqp_count: login failed\n");
        goto out;
    }
    amqp_channel_open(c, 1);
    if (!rpc_ok(c, "channel.open"))
        goto out;
    amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 0, 0, 0, amqp_empty_table);
    if (!rpc_ok(c, "queue.declare"))
        goto out;
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
    if (!rpc_ok(c, "basic.consume"))
        goto out;
    st->conns++;
    st->ready = 1;
    for (;;) {
        amqp_envelope_t env;
        struct timeval wait = { 1, 0 };
        amqp_maybe_release_buffers(c);
        r = amqp_consume_message(c, &env, &wait, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            st->errors++;
            break;
        }
        uint64_t t = now_ns();
        if (!st->first_ns)
            st->first_ns = t;
        st->bytes += env.message.body.len;
        st->last_ns = t;
        __atomic_store_n(&st->msgs, st->msgs + 1, __ATOMIC_RELEASE);
        amqp_destroy_envelope(&env);
    }
out:
    st->ready = 0;
    amqp_destroy_connection(c);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: amqp_count HOST PORT QUEUE STATFILE\n");
        return 2;
    }
    int fd = open(argv[4], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, sizeof(struct evsink_stat)) != 0) {
        perror(argv[4]);
        return 1;
    }
    st = mmap(NULL, sizeof(*st), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (st == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    close(fd);
    for (;;) {
        session(argv[1], atoi(argv[2]), argv[3]);
        usleep(200 * 1000);
    }
}
