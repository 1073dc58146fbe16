/*
 * http.h - the HTTP face of a live run: an embedded server (libmicrohttpd) that serves
 * published documents (metrics, status JSON, the status page) and passes control
 * requests to the main thread. Pure C, no Lua.
 *
 * Threads. libmicrohttpd runs in its own threads (one per connection). They never call
 * back into the host: GET requests are answered from a snapshot of documents the main
 * thread publishes (http_publish); a POST to a control endpoint is authenticated here
 * (bearer token, compared in constant time), queued, and the connection's thread waits
 * until the main thread takes it (http_take), applies it and answers (http_reply). A
 * request the main thread has not taken within the control timeout is withdrawn from
 * the queue and answered 503, so it is certain that it changed nothing.
 *
 * Status codes decided here: 401 (no bearer token), 403 (wrong token, or the control
 * plane is off because no token is configured), 404 (unknown path), 405 (wrong method;
 * with an Allow header), 413 (a body over HTTP_MAX_BODY bytes), 421 (a loopback server
 * reached under another host name: DNS rebinding), 503 (not taken in time, or stopping),
 * 504 (taken but never answered: a bug on the main thread's side). Everything else (200,
 * 400 for a malformed body, ...) is the main thread's answer.
 */
#ifndef LORELEY_HTTP_H
#define LORELEY_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_BODY (64 * 1024)        /* bytes of a control request body */
#define HTTP_MAX_ENDPOINTS 16            /* control endpoints */
#define HTTP_MAX_ENDPOINT_NAME 32        /* bytes, with the NUL */
#define HTTP_CONTROL_PREFIX "/api/control/"

typedef struct http_server http_server;

typedef struct http_config {
    /* "PORT", "HOST:PORT" or "[IPV6]:PORT"; HOST is a numeric address or "localhost".
     * Port 0 takes any free port (http_port tells which). */
    const char *listen;
    /* The bearer token of the control plane; NULL or "" turns the control plane off. */
    const char *token;
    /* Control endpoint names: a POST to HTTP_CONTROL_PREFIX<name> is a control request. */
    const char *const *endpoints;
    size_t endpoint_count;
    double control_timeout;     /* seconds a request may wait to be taken (> 0) */
    unsigned max_connections;   /* concurrent connections; more are refused */
    unsigned idle_timeout;      /* seconds before an idle connection is closed */
    /* Called from a connection's thread after a control request was queued (wake the
     * main thread). Must be async-signal-safe in spirit: no locks the main thread holds. */
    void (*notify)(void *arg);
    void *notify_arg;
} http_config;

/* Why http_start failed. */
typedef enum http_start_error {
    HTTP_START_OK = 0,
    HTTP_START_INVALID = 1,   /* the configuration is wrong (address syntax, options) */
    HTTP_START_SYSTEM = 2,    /* the world refused: port in use, permission, ... */
} http_start_error;

/*
 * Binds the listening socket and starts the server threads. On success returns 0 and
 * *out owns the server (http_stop). On failure returns the http_start_error kind and
 * writes a message naming the address and the reason into err.
 */
int http_start(const http_config *config, http_server **out, char *err, size_t errsize);

/* Wakes every waiting control request (answered 503), stops the threads, frees s.
 * NULL is accepted. */
void http_stop(http_server *s);

/* The bound address as "127.0.0.1:9464" or "[::1]:9464", and the port. */
const char *http_address(const http_server *s);
int http_port(const http_server *s);

/*
 * Publishes (or replaces) the document served at `path` for GET and HEAD. body is
 * copied; content_type NULL means "application/json; charset=utf-8". Requests already
 * being answered keep the document they started with. Returns 0, or -1 when out of
 * memory (the old document stays).
 */
int http_publish(http_server *s, const char *path, const char *content_type,
                 const char *body, size_t len);

/* One control request taken by the main thread. */
typedef struct http_request {
    uint64_t id;
    char endpoint[HTTP_MAX_ENDPOINT_NAME];
    char *body;          /* NUL-terminated copy; body_len bytes */
    size_t body_len;
    char remote[64];     /* client address, "127.0.0.1" */
} http_request;

/*
 * Takes every queued control request: they can no longer time out, and each must be
 * answered with http_reply (http_stop answers the rest). *out is a malloc'd array of
 * the returned count (NULL when 0); free it with http_requests_free.
 */
size_t http_take(http_server *s, http_request **out);
void http_requests_free(http_request *requests, size_t n);

/* Answers the taken request `id` with status and a JSON body (copied). Returns 1, or 0
 * when no taken request has that id. */
int http_reply(http_server *s, uint64_t id, int status, const char *body, size_t len);

/* Responses sent so far, by status code: calls fn(code, count, arg) for each code seen,
 * in increasing order, under the server lock (fn must not call back into s). */
void http_response_counts(http_server *s, void (*fn)(int code, uint64_t count, void *arg),
                          void *arg);

/*
 * Parses a listen address (see http_config.listen) without binding. Fills host (the
 * numeric address), *port and *ipv6. Returns 0, or -1 with a message in err.
 */
int http_parse_listen(const char *listen, char *host, size_t hostsize, int *port, int *ipv6,
                      char *err, size_t errsize);

#endif
