/* Logging: one line per event to stderr ("<UTC ISO time> lunasip[pid] LEVEL msg") or to
 * syslog(3). Messages are capped at LOG_MSG_MAX bytes and control characters are escaped as
 * \xNN, so a value taken from the network can neither forge a line nor flood the log. SPEC §9. */

/* syslog.h defines LOG_DEBUG/LOG_INFO/LOG_NOTICE as priorities; log.h uses those names for
 * its macros. Capture the priorities and facilities first, then drop the syslog names. */
#include <syslog.h>

static const int prio_of_level[] = { LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR };

static const struct { const char *name; int facility; } facilities[] = {
    { "daemon", LOG_DAEMON }, { "user", LOG_USER },
    { "local0", LOG_LOCAL0 }, { "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 },
    { "local3", LOG_LOCAL3 }, { "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 },
    { "local6", LOG_LOCAL6 }, { "local7", LOG_LOCAL7 },
};

#undef LOG_DEBUG
#undef LOG_INFO
#undef LOG_NOTICE

#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_MSG_MAX 4096   /* bytes of (escaped) message text per line, "..." included */

enum log_level log_current_level = LOG_LVL_INFO;

static int use_syslog;

static const char *const level_lower[] = { "debug", "info", "notice", "warn", "error" };
static const char *const level_upper[] = { "DEBUG", "INFO", "NOTICE", "WARN", "ERROR" };

int log_level_parse(const char *s, enum log_level *out)
{
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(level_lower) / sizeof(level_lower[0]); i++) {
        if (strcmp(s, level_lower[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *log_level_name(enum log_level l)
{
    if ((unsigned)l >= sizeof(level_lower) / sizeof(level_lower[0]))
        return "unknown";
    return level_lower[l];
}

void log_set_level(enum log_level l)
{
    if ((unsigned)l > LOG_LVL_ERROR)
        l = LOG_LVL_ERROR;
    log_current_level = l;
}

static int facility_lookup(const char *name)
{
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++)
        if (strcmp(name, facilities[i].name) == 0)
            return facilities[i].facility;
    return -1;
}

/* Returns 1 when name is a facility log_open_syslog accepts, 0 otherwise. */
int log_facility_valid(const char *facility)
{
    return facility_lookup(facility) != -1;
}

/* Borrows ident: openlog(3) keeps the pointer, so it must outlive the syslog mode (a string
 * literal or the program name). */
int log_open_syslog(const char *ident, const char *facility)
{
    int fac = facility_lookup(facility);
    if (fac == -1)
        return -1;
    openlog(ident ? ident : "lunasip", LOG_PID | LOG_NDELAY, fac);
    use_syslog = 1;
    return 0;
}

/* Returns to stderr output (after a daemon fails to start, and for tests). */
void log_close_syslog(void)
{
    if (use_syslog)
        closelog();
    use_syslog = 0;
}

/* Escapes in[0..n) into out, writing at most cap bytes; returns the bytes written and sets
 * *used to the input bytes consumed. A byte < 0x20 or 0x7f becomes \xNN (never split). */
static size_t escape(char *out, size_t cap, const unsigned char *in, size_t n, size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    for (; i < n; i++) {
        unsigned char c = in[i];
        if (c < 0x20 || c == 0x7f) {
            if (o + 4 > cap)
                break;
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            if (o + 1 > cap)
                break;
            out[o++] = (char)c;
        }
    }
    *used = i;
    return o;
}

/* Escapes in[0..n) into out (room for LOG_MSG_MAX bytes); when it does not fit, cuts at a
 * character boundary and ends with "...". Returns the length written. */
static size_t escape_capped(char *out, const unsigned char *in, size_t n)
{
    size_t used;
    size_t o = escape(out, LOG_MSG_MAX, in, n, &used);
    if (used == n)
        return o;
    o = escape(out, LOG_MSG_MAX - 3, in, n, &used);
    /* Do not leave half a UTF-8 sequence before the ellipsis: bytes >= 0x80 are copied
     * verbatim, so output and input can be backed off together. */
    if (used < n && (in[used] & 0xc0) == 0x80) {
        size_t k = 0;
        while (k < 3 && used > k && (in[used - 1 - k] & 0xc0) == 0x80)
            k++;
        if (used > k && in[used - 1 - k] >= 0xc0)
            k++;
        o -= k;
    }
    memcpy(out + o, "...", 3);
    return o + 3;
}

/* Writes all of buf to fd, retrying on EINTR; gives up on any other error (including EAGAIN
 * on a non-blocking stderr) so logging never stalls the loop for long. */
static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += w;
        len -= (size_t)w;
    }
}

/* Emits one already escaped message. */
static void emit(enum log_level l, const char *msg, size_t len)
{
    if ((unsigned)l > LOG_LVL_ERROR)
        l = LOG_LVL_ERROR;
    if (use_syslog) {
        syslog(prio_of_level[l], "%.*s", (int)len, msg);
        return;
    }
    char line[LOG_MSG_MAX + 128];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t o = strftime(line, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    int n = snprintf(line + o, sizeof(line) - o, ".%03ldZ lunasip[%ld] %s ",
                     ts.tv_nsec / 1000000, (long)getpid(), level_upper[l]);
    if (n < 0)
        return;
    o += (size_t)n;
    if (len > sizeof(line) - o - 1)
        len = sizeof(line) - o - 1;
    memcpy(line + o, msg, len);
    o += len;
    line[o++] = '\n';
    write_all(STDERR_FILENO, line, o);
}

void log_vwrite(enum log_level l, const char *fmt, va_list ap)
{
    if (l < log_current_level)
        return;
    char raw[LOG_MSG_MAX + 2];   /* one byte more than fits, so overflow is detected */
    char out[LOG_MSG_MAX];
    int n = vsnprintf(raw, sizeof(raw), fmt, ap);
    if (n < 0)
        return;
    size_t rawlen = (size_t)n < sizeof(raw) - 1 ? (size_t)n : sizeof(raw) - 1;
    emit(l, out, escape_capped(out, (const unsigned char *)raw, rawlen));
}

void log_write(enum log_level l, const char *fmt, ...)
{
    if (l < log_current_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(l, fmt, ap);
    va_end(ap);
}

/* Borrows tag (may be NULL) and msg[0..len), which need not be NUL-terminated and may hold
 * any bytes: "[tag] msg", escaped and capped like log_write. */
void log_write_raw(enum log_level l, const char *tag, const char *msg, size_t len)
{
    if (l < log_current_level)
        return;
    unsigned char raw[LOG_MSG_MAX + 2];
    char out[LOG_MSG_MAX];
    size_t r = 0;
    if (tag != NULL) {
        size_t tl = strnlen(tag, 64);
        raw[r++] = '[';
        memcpy(raw + r, tag, tl);
        r += tl;
        raw[r++] = ']';
        raw[r++] = ' ';
    }
    if (msg == NULL)
        len = 0;
    if (len > sizeof(raw) - r)
        len = sizeof(raw) - r;
    if (len > 0)
        memcpy(raw + r, msg, len);
    r += len;
    emit(l, out, escape_capped(out, raw, r));
}
