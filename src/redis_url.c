/*
 * redis_url.c - Redis connection URLs. See redis_url.h for the accepted forms.
 */
#include "redis_url.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void redis_url_defaults(redis_url *u)
{
    memset(u, 0, sizeof *u);
    strcpy(u->host, "localhost");
    u->port = 6379;
    u->socket_timeout = -1;
    u->connect_timeout = -1;
}

void redis_url_wipe(redis_url *u)
{
    /* volatile stores so the compiler keeps the wipe */
    volatile char *p = u->password;
    for (size_t i = 0; i < sizeof u->password; i++)
        p[i] = 0;
    p = u->username;
    for (size_t i = 0; i < sizeof u->username; i++)
        p[i] = 0;
    u->has_password = 0;
    u->has_username = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into out (cap bytes with the NUL). Returns the decoded length,
 * -1 for a bad escape, -2 when it does not fit. */
static long percent_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= cap)
            return -2;
        out[o++] = c;
    }
    out[o] = '\0';
    return (long)o;
}

/* Reads a non-negative decimal integer s[0..n) into *out (at most max). */
static int parse_uint(const char *s, size_t n, long max, long *out)
{
    if (n == 0 || n > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Reads a positive number of seconds. */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0) || v > 86400.0)
        return -1;
    *out = v;
    return 0;
}

static const char *const IGNORED_PARAMS[] = {
    "health_check_interval", "retry_on_timeout", "max_connections", "socket_keepalive",
    "client_name", "decode_responses", "encoding", "encoding_errors", NULL,
};

/* Applies the query string q[0..n) (after '?'). */
static int parse_query(const char *q, size_t n, redis_url *u, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < n) {
        size_t amp = i;
        while (amp < n && q[amp] != '&')
            amp++;
        const char *kv = q + i;
        size_t kvn = amp - i;
        i = amp + 1;
        if (kvn == 0)
            continue;
        const char *eq = memchr(kv, '=', kvn);
        size_t kn = eq ? (size_t)(eq - kv) : kvn;
        const char *v = eq ? eq + 1 : kv + kvn;
        size_t vn = eq ? kvn - kn - 1 : 0;
        char key[64];
        if (kn >= sizeof key)
            return fail(err, errlen, "URL parameter name too long");
        memcpy(key, kv, kn);
        key[kn] = '\0';
        if (strcmp(key, "password") == 0) {
            long r = percent_decode(v, vn, u->password, sizeof u->password);
            if (r < 0)
                return fail(err, errlen, "the password in the URL is %s",
                            r == -1 ? "badly percent-encoded" : "too long");
            u->has_password = 1;
            continue;
        }
        char value[128];
        long r = percent_decode(v, vn, value, sizeof value);
        if (r < 0)
            return fail(err, errlen, "URL parameter '%s' is %s", key,
                        r == -1 ? "badly percent-encoded" : "too long");
        if (strcmp(key, "db") == 0) {
            if (parse_uint(value, (size_t)r, 1000000, &u->db) != 0)
                return fail(err, errlen, "URL parameter db='%s' is not a database number",
                            value);
        } else if (strcmp(key, "socket_timeout") == 0) {
            if (parse_seconds(value, &u->socket_timeout) != 0)
                return fail(err, errlen, "URL parameter socket_timeout='%s' is not a "
                                         "positive number of seconds", value);
        } else if (strcmp(key, "socket_connect_timeout") == 0) {
            if (parse_seconds(value, &u->connect_timeout) != 0)
                return fail(err, errlen, "URL parameter socket_connect_timeout='%s' is not "
                                         "a positive number of seconds", value);
        } else {
            int ignored = 0;
            for (const char *const *p = IGNORED_PARAMS; *p; p++)
                if (strcmp(*p, key) == 0)
                    ignored = 1;
            if (!ignored)
                return fail(err, errlen,
                            "unknown URL parameter '%s' (supported: db, password, "
                            "socket_timeout, socket_connect_timeout)", key);
        }
    }
    return 0;
}

/* Splits "user:password" (userinfo without the '@'). */
static int parse_userinfo(const char *s, size_t n, redis_url *u, char *err, size_t errlen)
{
    const char *colon = memchr(s, ':', n);
    size_t un = colon ? (size_t)(colon - s) : n;
    if (un > 0) {
        long r = percent_decode(s, un, u->username, sizeof u->username);
        if (r < 0)
            return fail(err, errlen, "the username in the URL is %s",
                        r == -1 ? "badly percent-encoded" : "too long");
        u->has_username = 1;
    }
    if (colon) {
        long r = percent_decode(colon + 1, n - un - 1, u->password, sizeof u->password);
        if (r < 0)
            return fail(err, errlen, "the password in the URL is %s",
                        r == -1 ? "badly percent-encoded" : "too long");
        u->has_password = 1;
    }
    return 0;
}

/* host[:port] or [v6]:port */
static int parse_hostport(const char *s, size_t n, redis_url *u, char *err, size_t errlen)
{
    const char *host = s;
    size_t hn = n;
    const char *port = NULL;
    size_t pn = 0;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return fail(err, errlen, "unterminated '[' in the URL's host");
        host = s + 1;
        hn = (size_t)(close - s) - 1;
        size_t rest = n - (size_t)(close - s) - 1;
        if (rest > 0) {
            if (close[1] != ':')
                return fail(err, errlen, "unexpected text after ']' in the URL's host");
            port = close + 2;
            pn = rest - 1;
        }
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++)
            if (s[i] == ':')
                colon = s + i;
        if (colon) {
            hn = (size_t)(colon - s);
            port = colon + 1;
            pn = n - hn - 1;
        }
    }
    if (hn > REDIS_URL_HOST_MAX)
        return fail(err, errlen, "the URL's host is longer than %d bytes", REDIS_URL_HOST_MAX);
    if (hn > 0) {
        memcpy(u->host, host, hn);
        u->host[hn] = '\0';
    }
    if (port) {
        long p;
        if (parse_uint(port, pn, 65535, &p) != 0 || p == 0)
            return fail(err, errlen, "the URL's port '%.*s' is not a number in 1..65535",
                        (int)(pn > 20 ? 20 : pn), port);
        u->port = (int)p;
    }
    return 0;
}

int redis_url_parse(const char *url, redis_url *u, char *err, size_t errlen)
{
    redis_url_defaults(u);
    const char *sep = strstr(url, "://");
    if (!sep)
        return fail(err, errlen,
                    "not a Redis URL (expected redis://host:port/db or unix:///path)");
    size_t sn = (size_t)(sep - url);
    if (sn == 6 && strncasecmp(url, "rediss", 6) == 0)
        return fail(err, errlen, "TLS is not supported by this build (rediss://; hiredis "
                                 "0.14 without SSL): use redis:// or unix://");
    if (sn == 5 && strncasecmp(url, "redis", 5) == 0)
        u->is_unix = 0;
    else if (sn == 4 && strncasecmp(url, "unix", 4) == 0)
        u->is_unix = 1;
    else
        return fail(err, errlen, "unsupported URL scheme '%.*s' (expected redis:// or unix://)",
                    (int)(sn > 20 ? 20 : sn), url);

    const char *rest = sep + 3;
    size_t len = strcspn(rest, "#");   /* a fragment means nothing here */
    const char *query = memchr(rest, '?', len);
    size_t before_query = query ? (size_t)(query - rest) : len;

    /* Authority: up to the first '/', within the part before the query. */
    const char *slash = memchr(rest, '/', before_query);
    size_t an = slash ? (size_t)(slash - rest) : before_query;
    const char *at = NULL;
    for (size_t i = 0; i < an; i++)
        if (rest[i] == '@')
            at = rest + i;
    const char *hostport = rest;
    size_t hpn = an;
    if (at) {
        if (parse_userinfo(rest, (size_t)(at - rest), u, err, errlen) != 0)
            return -1;
        hostport = at + 1;
        hpn = an - (size_t)(hostport - rest);
    }
    const char *path = slash;
    size_t pathn = slash ? before_query - an : 0;

    if (u->is_unix) {
        if (hpn > 0)
            return fail(err, errlen, "a unix:// URL takes an absolute socket path "
                                     "(unix:///path/to/redis.sock), not a host");
        if (!path || pathn <= 1)
            return fail(err, errlen, "the unix:// URL has no socket path");
        long r = percent_decode(path, pathn, u->path, sizeof u->path);
        if (r < 0)
            return fail(err, errlen, "the socket path is %s",
                        r == -1 ? "badly percent-encoded" : "longer than 107 bytes");
        u->host[0] = '\0';
        u->port = 0;
    } else {
        if (parse_hostport(hostport, hpn, u, err, errlen) != 0)
            return -1;
        if (path && pathn > 1) {
            if (parse_uint(path + 1, pathn - 1, 1000000, &u->db) != 0)
                return fail(err, errlen, "the URL's path '%.*s' is not a database number",
                            (int)(pathn > 20 ? 20 : pathn), path);
        }
    }
    if (query && parse_query(query + 1, len - before_query - 1, u, err, errlen) != 0)
        return -1;
    return 0;
}

void redis_url_display(const redis_url *u, char *out, size_t cap)
{
    if (u->is_unix)
        snprintf(out, cap, "unix://%s?db=%ld", u->path, u->db);
    else if (strchr(u->host, ':'))
        snprintf(out, cap, "redis://[%s]:%d/%ld", u->host, u->port, u->db);
    else
        snprintf(out, cap, "redis://%s:%d/%ld", u->host, u->port, u->db);
}
