/* Logging: one line per event, to stderr (foreground) or syslog (daemon). SPEC §9. */
#ifndef LUNASIP_LOG_H
#define LUNASIP_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level {
    LOG_LVL_DEBUG = 0,
    LOG_LVL_INFO,
    LOG_LVL_NOTICE,
    LOG_LVL_WARN,
    LOG_LVL_ERROR,
};

extern enum log_level log_current_level;

/* Parses "debug|info|notice|warn|error"; returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level l);
void log_set_level(enum log_level l);
/* Switches to syslog with the given facility name ("daemon", "local0".."local7", "user").
 * Returns 0 or -1 for an unknown facility. */
int log_open_syslog(const char *ident, const char *facility);
int log_facility_valid(const char *facility);
/* Returns to stderr output (closes syslog if open). */
void log_close_syslog(void);

/* Writes "LEVEL message" (stderr lines are prefixed with a timestamp and the pid).
 * The message is capped at 4 KiB; control characters are escaped so a hostile value
 * cannot forge log lines. */
void log_write(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vwrite(enum log_level l, const char *fmt, va_list ap);
/* Same, with an already formatted message of len bytes (used by the Lua bridge). */
void log_write_raw(enum log_level l, const char *tag, const char *msg, size_t len);

#define LOG_DEBUG(...)  do { if (log_current_level <= LOG_LVL_DEBUG) log_write(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)
#define LOG_INFO(...)   do { if (log_current_level <= LOG_LVL_INFO) log_write(LOG_LVL_INFO, __VA_ARGS__); } while (0)
#define LOG_NOTICE(...) do { if (log_current_level <= LOG_LVL_NOTICE) log_write(LOG_LVL_NOTICE, __VA_ARGS__); } while (0)
#define LOG_WARN(...)   do { if (log_current_level <= LOG_LVL_WARN) log_write(LOG_LVL_WARN, __VA_ARGS__); } while (0)
#define LOG_ERROR(...)  log_write(LOG_LVL_ERROR, __VA_ARGS__)

#endif
