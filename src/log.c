/*
 * log.c - see log.h.
 */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static log_level current_level = LOG_INFO;
static log_format current_format = LOG_FORMAT_TEXT;
static int color_mode = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct recent_entry {
    double wall_time;
    log_level level;
    char *message;
} recent_entry;
static recent_entry recent[LOG_RECENT_MAX];
static size_t recent_next;   /* slot to write next */
static size_t recent_count;

int log_parse_level(const char *name, log_level *level)
{
    static const struct {
        const char *name;
        log_level level;
    } names[] = {{"DEBUG", LOG_DEBUG},     {"INFO", LOG_INFO},   {"WARNING", LOG_WARNING},
                 {"WARN", LOG_WARNING},    {"ERROR", LOG_ERROR}, {"TRACE", LOG_DEBUG},
                 {"CRITICAL", LOG_ERROR}, {"SUCCESS", LOG_INFO}};
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0) {
            *level = names[i].level;
            return 0;
        }
    return -1;
}

const char *log_level_name(log_level level)
{
    switch (level) {
    case LOG_DEBUG: return "DEBUG";
    case LOG_INFO: return "INFO";
    case LOG_WARNING: return "WARNING";
    case LOG_ERROR: return "ERROR";
    }
    return "INFO";
}

void log_set_level(log_level level) { current_level = level; }
log_level log_get_level(void) { return current_level; }
void log_set_format(log_format format) { current_format = format; }
void log_set_color(int mode) { color_mode = mode; }

static int use_color(void)
{
    if (color_mode >= 0)
        return color_mode;
    const char *no_color = getenv("NO_COLOR");
    return isatty(STDERR_FILENO) && !(no_color && *no_color);
}

static void format_time(char *buf, size_t size, double *wall, int iso)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    *wall = (double)tv.tv_sec + tv.tv_usec / 1e6;
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    if (iso)
        snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(tv.tv_usec / 1000));
    else
        snprintf(buf, size, "%04d-%02d-%02d %02d:%02d:%02d.%03d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(tv.tv_usec / 1000));
}

static void write_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (*p < 0x20)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

static void remember(double wall, log_level level, const char *message)
{
    recent_entry *slot = &recent[recent_next];
    free(slot->message);
    slot->message = strdup(message);
    slot->wall_time = wall;
    slot->level = level;
    recent_next = (recent_next + 1) % LOG_RECENT_MAX;
    if (recent_count < LOG_RECENT_MAX)
        recent_count++;
}

void log_write(log_level level, const char *message)
{
    char stamp[64];
    double wall;
    pthread_mutex_lock(&log_lock);
    format_time(stamp, sizeof stamp, &wall, current_format == LOG_FORMAT_JSON);
    if (level >= LOG_WARNING)
        remember(wall, level, message);
    if (level < current_level) {
        pthread_mutex_unlock(&log_lock);
        return;
    }
    FILE *out = stderr;
    if (current_format == LOG_FORMAT_JSON) {
        fprintf(out, "{\"time\":\"%s\",\"level\":\"%s\",\"message\":", stamp,
                log_level_name(level));
        write_json_string(out, message);
        fputs("}\n", out);
    } else {
        const char *color = "", *reset = "";
        if (use_color()) {
            reset = "\x1b[0m";
            switch (level) {
            case LOG_DEBUG: color = "\x1b[2m"; break;
            case LOG_INFO: color = "\x1b[32m"; break;
            case LOG_WARNING: color = "\x1b[33m"; break;
            case LOG_ERROR: color = "\x1b[1;31m"; break;
            }
        }
        fprintf(out, "%s %s%-7s%s ", stamp, color, log_level_name(level), reset);
        for (const char *p = message; *p; p++) {
            fputc(*p, out);
            if (*p == '\n' && p[1])
                fputs("    ", out);
        }
        fputc('\n', out);
    }
    fflush(out);
    pthread_mutex_unlock(&log_lock);
}

void log_printf(log_level level, const char *fmt, ...)
{
    if (level < current_level && level < LOG_WARNING)
        return;
    char stack[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof stack) {
        log_write(level, stack);
        return;
    }
    char *heap = malloc((size_t)n + 1);
    if (!heap) {
        log_write(level, stack);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(heap, (size_t)n + 1, fmt, ap);
    va_end(ap);
    log_write(level, heap);
    free(heap);
}

void log_recent(log_recent_fn fn, void *userdata)
{
    pthread_mutex_lock(&log_lock);
    size_t start = (recent_next + LOG_RECENT_MAX - recent_count) % LOG_RECENT_MAX;
    for (size_t i = 0; i < recent_count; i++) {
        recent_entry *e = &recent[(start + i) % LOG_RECENT_MAX];
        fn(e->wall_time, e->level, e->message, userdata);
    }
    pthread_mutex_unlock(&log_lock);
}
