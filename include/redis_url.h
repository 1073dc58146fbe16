/*
 * redis_url.h - parsing of Redis connection URLs (TASKS_REDIS_URL), pure C.
 *
 * Accepted forms (the subset of redis-py's from_url that applies to a plain client):
 *
 *   redis://[[username]:password@]host[:port][/db][?query]
 *   unix://[[username]:password@]/path/to/redis.sock[?query]
 *
 * host may be a name, an IPv4 address or a bracketed IPv6 address ([::1]); the port
 * defaults to 6379 and the database to 0. Username, password, path and query values are
 * percent-decoded. Query parameters: db=N, password=..., socket_timeout=SECONDS,
 * socket_connect_timeout=SECONDS; redis-py pool parameters that mean nothing here
 * (health_check_interval, retry_on_timeout, max_connections, socket_keepalive,
 * client_name, decode_responses, encoding, encoding_errors) are accepted and ignored;
 * anything else is an error. rediss:// is refused: this build has no TLS.
 *
 * Error messages never contain the password (nor the username).
 */
#ifndef LORELEY_REDIS_URL_H
#define LORELEY_REDIS_URL_H

#include <stddef.h>

#define REDIS_URL_HOST_MAX 255
#define REDIS_URL_PATH_MAX 107     /* sun_path holds 108 bytes with the NUL */
#define REDIS_URL_SECRET_MAX 511

typedef struct redis_url {
    int is_unix;                          /* 1: unix socket at path; 0: TCP host:port */
    char host[REDIS_URL_HOST_MAX + 1];
    int port;
    char path[REDIS_URL_PATH_MAX + 1];
    long db;
    int has_username;
    char username[REDIS_URL_SECRET_MAX + 1];
    int has_password;
    char password[REDIS_URL_SECRET_MAX + 1];
    double socket_timeout;                /* seconds, or -1 when not given */
    double connect_timeout;               /* seconds, or -1 when not given */
} redis_url;

/* Fills *u with the defaults: TCP localhost:6379, db 0, no credentials, no timeouts. */
void redis_url_defaults(redis_url *u);

/*
 * Parses url into *u (starting from the defaults). Returns 0, or -1 with a message in
 * err (at most errlen bytes, NUL-terminated) that names what was wrong, e.g.
 * "TLS is not supported by this build (rediss://; ...): use redis:// or unix://".
 */
int redis_url_parse(const char *url, redis_url *u, char *err, size_t errlen);

/*
 * Writes the credential-free form used in logs and errors: "redis://host:port/db"
 * ("redis://[::1]:6379/0" for IPv6) or "unix:///path?db=N". Truncates to cap.
 */
void redis_url_display(const redis_url *u, char *out, size_t cap);

/* Wipes the credentials held in *u (call when they are no longer needed). */
void redis_url_wipe(redis_url *u);

#endif
