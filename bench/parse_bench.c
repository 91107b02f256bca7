/* Parser throughput: lunasip's sip_msg_parse against libosip2's osip_message_parse on the
 * same inputs in the same process, measured in alternation (A B A B ...) and reported as
 * medians and a ratio. Inputs: one message file (a typical INVITE with SDP) and a set of
 * files parsed in full per iteration (the RFC 4475 torture tests, valid or not).
 *
 * Each measurement parses and frees one message per call, as a UDP server would: lunasip
 * copies the datagram and validates Via/From/To/CSeq/Call-ID/Contact eagerly; libosip2's
 * osip_message_parse likewise parses every known header into its structures.
 *
 * usage: parse_bench [-t SECONDS] [-r REPS] INVITE_FILE SET_FILE...
 *        parse_bench -n ITERS -p lunasip|osip -c invite|set INVITE_FILE SET_FILE...
 *   The second form runs exactly ITERS iterations of one parser on one case and nothing
 *   else, for `valgrind --tool=callgrind --toggle-collect=loop_lunasip` (or loop_osip). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <osipparser2/osip_parser.h>

#include "sip_msg.h"

struct input {
    const char *name;
    char *buf;
    size_t len;
};

struct inputs {
    struct input *v;
    size_t n;
};

enum parser { P_LUNASIP = 0, P_OSIP, P__COUNT };
static const char *const parser_name[P__COUNT] = { "lunasip", "osip" };

/* Defeats dead-code elimination: every parse result feeds it. */
static volatile unsigned long sink;

static void trace_nothing(const char *fi, int li, osip_trace_level_t level, const char *chfr, va_list ap)
{
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads a whole file into an exact-size heap buffer; exits on failure (a benchmark with a
 * missing input is meaningless). */
static struct input read_input(const char *path)
{
    struct input in = { path, NULL, 0 };
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "parse_bench: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    size_t cap = 4096;
    in.buf = malloc(cap);
    for (;;) {
        if (!in.buf) {
            fprintf(stderr, "parse_bench: out of memory\n");
            exit(2);
        }
        in.len += fread(in.buf + in.len, 1, cap - in.len, f);
        if (in.len < cap)
            break;
        cap *= 2;
        in.buf = realloc(in.buf, cap);
    }
    fclose(f);
    if (in.len == 0) {
        fprintf(stderr, "parse_bench: %s: empty\n", path);
        exit(2);
    }
    char *exact = malloc(in.len);
    if (!exact) {
        fprintf(stderr, "parse_bench: out of memory\n");
        exit(2);
    }
    memcpy(exact, in.buf, in.len);
    free(in.buf);
    in.buf = exact;
    return in;
}

/* One parse-and-free per input; returns how many inputs the parser accepted. */
static int __attribute__((noinline)) parse_lunasip(const struct inputs *in)
{
    int ok = 0;
    for (size_t i = 0; i < in->n; i++) {
        struct sip_parse_error err = { 0, NULL };
        struct sip_msg *m = sip_msg_parse(in->v[i].buf, in->v[i].len, SIP_PARSE_DATAGRAM, &err);
        if (m) {
            sink += m->nhdrs;
            sip_msg_unref(m);
            ok++;
        } else {
            sink += (unsigned long)err.status;
        }
    }
    return ok;
}

static int __attribute__((noinline)) parse_osip(const struct inputs *in)
{
    int ok = 0;
    for (size_t i = 0; i < in->n; i++) {
        osip_message_t *m = NULL;
        if (osip_message_init(&m) != OSIP_SUCCESS)
            abort();
        int rc = osip_message_parse(m, in->v[i].buf, in->v[i].len);
        if (rc == OSIP_SUCCESS)
            ok++;
        sink += (unsigned long)rc + (unsigned long)osip_list_size(&m->headers);
        osip_message_free(m);
    }
    return ok;
}

/* The timed loops; named so callgrind can collect inside them only. */
static void __attribute__((noinline)) loop_lunasip(const struct inputs *in, long iters)
{
    for (long k = 0; k < iters; k++)
        sink += (unsigned long)parse_lunasip(in);
}

static void __attribute__((noinline)) loop_osip(const struct inputs *in, long iters)
{
    for (long k = 0; k < iters; k++)
        sink += (unsigned long)parse_osip(in);
}

static double timed(enum parser p, const struct inputs *in, long iters)
{
    double t0 = now();
    if (p == P_LUNASIP)
        loop_lunasip(in, iters);
    else
        loop_osip(in, iters);
    return now() - t0;
}

/* A chunk of iterations that takes about `seconds`: double until a run lasts 20 ms, then
 * scale. */
static long calibrate(enum parser p, const struct inputs *in, double seconds)
{
    long n = 1;
    double t;
    for (;;) {
        t = timed(p, in, n);
        if (t >= 0.02)
            break;
        n *= 2;
    }
    double want = (double)n * seconds / t;
    return want < 1 ? 1 : (long)want + 1;
}

/* Runs chunks of `chunk` iterations until at least min_time has passed, so a measurement
 * never falls short of min_time however the machine's speed drifts. */
static double measure(enum parser p, const struct inputs *in, long chunk, double min_time, long *iters)
{
    double t0 = now(), t;
    *iters = 0;
    do {
        if (p == P_LUNASIP)
            loop_lunasip(in, chunk);
        else
            loop_osip(in, chunk);
        *iters += chunk;
        t = now() - t0;
    } while (t < min_time);
    return t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Measures one case: reps rounds of (lunasip, osip), each run lasting >= min_time. Prints
 * one `run` line per measurement, one `median` line per parser and the ratio. */
static void bench_case(const char *cname, const struct inputs *in, double min_time, int reps)
{
    long chunk[P__COUNT];
    double ns[P__COUNT][16];
    for (int p = 0; p < P__COUNT; p++) {
        chunk[p] = calibrate((enum parser)p, in, min_time / 20); /* ~20 clock reads per run */
        timed((enum parser)p, in, chunk[p]);                     /* warm caches and the allocator */
    }
    for (int r = 0; r < reps; r++) {
        for (int p = 0; p < P__COUNT; p++) {
            long iters;
            double t = measure((enum parser)p, in, chunk[p], min_time, &iters);
            double msgs = (double)iters * (double)in->n;
            ns[p][r] = t * 1e9 / msgs;
            printf("run case=%s parser=%s rep=%d iters=%ld msgs=%.0f secs=%.4f ns_per_msg=%.1f "
                   "msgs_per_s=%.0f sets_per_s=%.1f\n",
                   cname, parser_name[p], r + 1, iters, msgs, t, ns[p][r], 1e9 / ns[p][r],
                   (double)iters / t);
            fflush(stdout);
        }
    }
    double med[P__COUNT];
    for (int p = 0; p < P__COUNT; p++) {
        med[p] = median(ns[p], reps);
        printf("median case=%s parser=%s reps=%d ns_per_msg=%.1f msgs_per_s=%.0f sets_per_s=%.1f\n",
               cname, parser_name[p], reps, med[p], 1e9 / med[p], 1e9 / (med[p] * (double)in->n));
    }
    printf("ratio case=%s lunasip_over_osip=%.2f\n", cname, med[P_OSIP] / med[P_LUNASIP]);
    fflush(stdout);
}

static void usage(void)
{
    fprintf(stderr, "usage: parse_bench [-t SECONDS] [-r REPS] INVITE_FILE SET_FILE...\n"
                    "       parse_bench -n ITERS -p lunasip|osip -c invite|set INVITE_FILE SET_FILE...\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double min_time = 1.0;
    int reps = 5;
    long fixed = 0;
    const char *only_parser = NULL, *only_case = NULL;
    int c;
    while ((c = getopt(argc, argv, "t:r:n:p:c:")) != -1) {
        switch (c) {
        case 't': min_time = atof(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'n': fixed = atol(optarg); break;
        case 'p': only_parser = optarg; break;
        case 'c': only_case = optarg; break;
        default: usage();
        }
    }
    if (argc - optind < 2 || reps < 1 || reps > 16 || min_time <= 0)
        usage();

    struct input inv = read_input(argv[optind]);
    struct inputs invite = { &inv, 1 };
    struct inputs set = { calloc((size_t)(argc - optind - 1), sizeof(struct input)), 0 };
    for (int i = optind + 1; i < argc; i++)
        set.v[set.n++] = read_input(argv[i]);

    parser_init(); /* libosip2's one-time table setup */
    /* Debian's libosip2 is built with tracing on and prints every refusal to stdout/stderr,
     * which would make it pay for formatted I/O a server would not do: switch it off. */
    osip_trace_initialize_func(OSIP_FATAL, trace_nothing); /* level 0: every level off */
    for (int l = 0; l < END_TRACE_LEVEL; l++)
        osip_trace_disable_level((osip_trace_level_t)l);

    if (fixed > 0) {
        if (!only_parser || !only_case)
            usage();
        const struct inputs *in = strcmp(only_case, "set") == 0 ? &set : &invite;
        if (strcmp(only_parser, "lunasip") == 0)
            loop_lunasip(in, fixed);
        else if (strcmp(only_parser, "osip") == 0)
            loop_osip(in, fixed);
        else
            usage();
        printf("fixed case=%s parser=%s iters=%ld msgs=%ld\n", only_case, only_parser, fixed,
               fixed * (long)in->n);
        return 0;
    }

    /* Both parsers must accept the INVITE, or the comparison measures an early refusal. */
    int a = parse_lunasip(&invite), b = parse_osip(&invite);
    printf("check case=invite bytes=%zu lunasip_accepts=%d osip_accepts=%d\n", inv.len, a, b);
    if (a != 1 || b != 1) {
        fprintf(stderr, "parse_bench: %s is refused by %s\n", inv.name, a != 1 ? "lunasip" : "libosip2");
        return 1;
    }
    size_t set_bytes = 0;
    for (size_t i = 0; i < set.n; i++) {
        struct inputs one = { &set.v[i], 1 };
        set_bytes += set.v[i].len;
        printf("verdict file=%s lunasip=%s osip=%s\n", set.v[i].name,
               parse_lunasip(&one) ? "accept" : "refuse", parse_osip(&one) ? "accept" : "refuse");
    }
    printf("check case=set files=%zu bytes=%zu lunasip_accepts=%d osip_accepts=%d\n", set.n, set_bytes,
           parse_lunasip(&set), parse_osip(&set));
    fflush(stdout);

    bench_case("invite", &invite, min_time, reps);
    bench_case("set", &set, min_time, reps);
    return 0;
}
