/*
 * log.h - the host's logger. One line per message on stderr:
 *   text (default):  2026-11-29 22:01:57.123 INFO  message
 *                    (coloured level when stderr is a terminal and NO_COLOR is unset)
 *   json:            {"time":"2026-11-29T22:01:57.123Z","level":"INFO","message":"..."}
 * Thread-safe. Warnings and errors are also kept in a small ring for status pages.
 */
#ifndef LORELEY_LOG_H
#define LORELEY_LOG_H

#include <stddef.h>

typedef enum log_level {
    LOG_DEBUG = 10,
    LOG_INFO = 20,
    LOG_WARNING = 30,
    LOG_ERROR = 40,
} log_level;

typedef enum log_format {
    LOG_FORMAT_TEXT,
    LOG_FORMAT_JSON,
} log_format;

/* Parses "DEBUG", "info", "WARN", "warning", "ERROR" (case-insensitive). Returns 0 and
 * sets *level, or -1 for an unknown name. */
int log_parse_level(const char *name, log_level *level);
const char *log_level_name(log_level level);

void log_set_level(log_level level);
log_level log_get_level(void);
void log_set_format(log_format format);
/* Forces colour on (1) or off (0); -1 decides from isatty(2) and NO_COLOR (default). */
void log_set_color(int mode);

/* Writes one message if level is enabled. The message may hold newlines (tracebacks);
 * the text format indents continuation lines, the JSON format escapes them. */
void log_write(log_level level, const char *message);
void log_printf(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_printf(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_printf(LOG_INFO, __VA_ARGS__)
#define log_warning(...) log_printf(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_printf(LOG_ERROR, __VA_ARGS__)

/* The most recent warnings and errors, oldest first. Calls fn for each kept entry
 * (at most LOG_RECENT_MAX) while holding the log lock: fn must not log. */
#define LOG_RECENT_MAX 64
typedef void (*log_recent_fn)(double wall_time, log_level level, const char *message,
                              void *userdata);
void log_recent(log_recent_fn fn, void *userdata);

#endif
