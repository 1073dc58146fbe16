/*
 * http.c - see http.h. libmicrohttpd with one thread per connection; the main thread
 * only ever takes the server lock for short critical sections (swap a document, move
 * the queue), so no client can hold up a tick.
 *
 * Documents. Each published path owns one libmicrohttpd response object, built once at
 * publish time with its headers. Responses are reference counted by libmicrohttpd: a
 * GET queues the current one while holding the server lock (so a concurrent publish
 * cannot free it in between); a publish swaps the pointer and drops its own reference,
 * and connections still sending the old document keep it alive until they are done.
 *
 * Control requests. A connection's thread fills a `pending` record embedded in its
 * connection state, appends it to the queue and waits on the server's condition
 * variable. States: QUEUED (in s->queue; may time out and be withdrawn), TAKEN (in
 * s->taken; the main thread owes an answer), DONE (answered; in no list). Every
 * transition happens under s->lock; a record is in at most one list, and only its own
 * thread frees it (in the completion callback), after it left every list.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "log.h"
#include "sha256.h"

#define JSON_TYPE "application/json; charset=utf-8"
#define MAX_CODES 32
#define TAKEN_GRACE_SECONDS 60.0   /* a taken request unanswered this long: 504 */
#define STOP_GRACE_SECONDS 2.0     /* http_stop waits this long for answers in flight */
#define THREAD_NICE 10             /* connection threads yield to the tick loop */

typedef struct document {
    char *path;
    struct MHD_Response *response;
} document;

typedef enum pending_state {
    PENDING_NEW,
    PENDING_QUEUED,
    PENDING_TAKEN,
    PENDING_DONE,
} pending_state;

typedef struct pending {
    struct pending *next;
    uint64_t id;
    pending_state state;
    int status;           /* the main thread's answer */
    char *reply;          /* malloc'd JSON body */
    size_t reply_len;
} pending;

/* The per-request state of a POST to a control endpoint (libmicrohttpd's con_cls). */
typedef struct control_call {
    const char *endpoint;   /* points into s->endpoints */
    char *body;
    size_t len, cap;
    int too_large;
    int counted;            /* in s->active_calls until completed */
    char remote[64];
    pending p;
} control_call;

struct http_server {
    struct MHD_Daemon *daemon;
    char address[80];
    int port;
    int loopback;                    /* bound to 127.0.0.0/8 or ::1: check Host */
    int has_token;
    unsigned char token_digest[32];
    char endpoints[HTTP_MAX_ENDPOINTS][HTTP_MAX_ENDPOINT_NAME];
    size_t endpoint_count;
    char allowed_endpoints[HTTP_MAX_ENDPOINTS * (HTTP_MAX_ENDPOINT_NAME + 2)];
    double control_timeout;
    void (*notify)(void *arg);
    void *notify_arg;

    pthread_mutex_t lock;            /* everything below */
    pthread_cond_t changed;          /* a pending record changed state, or stopping */
    document *docs;
    size_t ndocs, docs_cap;
    pending *queue_head, *queue_tail;
    pending *taken;
    unsigned active_calls;           /* control calls between queueing and completion */
    uint64_t next_id;
    int stopping;
    struct {
        int code;
        uint64_t count;
    } codes[MAX_CODES];
    size_t ncodes;
};

/* --- small helpers --------------------------------------------------------------------- */

static void set_error(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(char *err, size_t errsize, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errsize, fmt, ap);
    va_end(ap);
}

/* Compares a presented token with the configured one in constant time: both are hashed
 * (SHA-256), so neither where they differ nor their lengths show in the timing. */
static int token_matches(const http_server *s, const char *presented, size_t len)
{
    unsigned char d[32];
    sha256_t ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, presented, len);
    sha256_final(&ctx, d);
    unsigned char diff = 0;
    for (int i = 0; i < 32; i++)
        diff |= (unsigned char)(d[i] ^ s->token_digest[i]);
    return diff == 0;
}

/* CLOCK_MONOTONIC now + seconds, for pthread_cond_timedwait on s->changed. */
static struct timespec deadline_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double whole = (double)(long)seconds;
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* --- the listen address ------------------------------------------------------------------ */

static int parse_port(const char *text, int *port)
{
    if (!*text || strlen(text) > 5)
        return -1;
    int v = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535)
        return -1;
    *port = v;
    return 0;
}

int http_parse_listen(const char *listen, char *host, size_t hostsize, int *port, int *ipv6,
                      char *err, size_t errsize)
{
    static const char help[] = "expected PORT, HOST:PORT or [IPV6]:PORT with a numeric host "
                               "or localhost, e.g. 127.0.0.1:9464";
    char buf[128];
    if (!listen || !*listen || strlen(listen) >= sizeof buf) {
        set_error(err, errsize, "invalid HTTP listen address '%s': %s", listen ? listen : "",
                  help);
        return -1;
    }
    strcpy(buf, listen);
    const char *h = "127.0.0.1", *p = buf;
    *ipv6 = 0;
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close || close[1] != ':') {
            set_error(err, errsize, "invalid HTTP listen address '%s': %s", listen, help);
            return -1;
        }
        *close = '\0';
        h = buf + 1;
        p = close + 2;
        *ipv6 = 1;
    } else {
        char *colon = strrchr(buf, ':');
        if (colon) {
            if (strchr(buf, ':') != colon) {
                set_error(err, errsize, "invalid HTTP listen address '%s': write an IPv6 "
                          "address in brackets, e.g. [::1]:9464", listen);
                return -1;
            }
            *colon = '\0';
            h = buf;
            p = colon + 1;
        }
        if (strcmp(h, "localhost") == 0)
            h = "127.0.0.1";
    }
    if (parse_port(p, port) != 0) {
        set_error(err, errsize, "invalid HTTP listen address '%s': the port must be a number "
                  "from 0 to 65535", listen);
        return -1;
    }
    unsigned char probe[16];
    if (inet_pton(*ipv6 ? AF_INET6 : AF_INET, h, probe) != 1) {
        set_error(err, errsize, "invalid HTTP listen address '%s': '%s' is not a numeric %s "
                  "address (%s)", listen, h, *ipv6 ? "IPv6" : "IPv4", help);
        return -1;
    }
    if (strlen(h) >= hostsize) {
        set_error(err, errsize, "invalid HTTP listen address '%s'", listen);
        return -1;
    }
    strcpy(host, h);
    return 0;
}

/* Creates, binds and listens. Returns the socket, or -1 with err set. */
static int open_listener(const char *host, int port, int ipv6, struct sockaddr_storage *bound,
                         char *err, size_t errsize)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    if (ipv6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, host, &a->sin6_addr);
        sslen = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, host, &a->sin_addr);
        sslen = sizeof *a;
    }
    int fd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_error(err, errsize, "cannot create the HTTP socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ipv6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    const char *lb = ipv6 ? "[" : "", *rb = ipv6 ? "]" : "";
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0) {
        int e = errno;
        close(fd);
        set_error(err, errsize, "cannot listen on %s%s%s:%d for HTTP: %s%s", lb, host, rb,
                  port, strerror(e),
                  e == EADDRINUSE ? " (another process listens there: choose another port "
                                    "with --http or LORELEY_HTTP_LISTEN)" : "");
        return -1;
    }
    if (listen(fd, 64) != 0) {
        int e = errno;
        close(fd);
        set_error(err, errsize, "cannot listen on %s%s%s:%d for HTTP: %s", lb, host, rb,
                  port, strerror(e));
        return -1;
    }
    socklen_t blen = sizeof *bound;
    getsockname(fd, (struct sockaddr *)bound, &blen);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* --- responses ----------------------------------------------------------------------------- */

static void count_response(http_server *s, int code)
{
    pthread_mutex_lock(&s->lock);
    size_t i = 0;
    while (i < s->ncodes && s->codes[i].code < code)
        i++;
    if (i < s->ncodes && s->codes[i].code == code) {
        s->codes[i].count++;
    } else if (s->ncodes < MAX_CODES) {
        memmove(&s->codes[i + 1], &s->codes[i], (s->ncodes - i) * sizeof s->codes[0]);
        s->codes[i].code = code;
        s->codes[i].count = 1;
        s->ncodes++;
    }
    pthread_mutex_unlock(&s->lock);
}

static void add_common_headers(struct MHD_Response *r, const char *content_type)
{
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
}

/* Sends a body (copied) with status; extra_name/extra_value add one header. */
static enum MHD_Result respond(http_server *s, struct MHD_Connection *c, int status,
                               const char *body, size_t len, const char *extra_name,
                               const char *extra_value)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    add_common_headers(r, JSON_TYPE);
    if (extra_name)
        MHD_add_response_header(r, extra_name, extra_value);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    count_response(s, status);
    return ok;
}

/* Writes s as a JSON string literal into out (at most size bytes, NUL-terminated). */
static void json_string(char *out, size_t size, const char *text)
{
    size_t n = 0;
    if (size < 3)
        return;
    out[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)text; *p && n + 8 < size; p++) {
        if (*p == '"' || *p == '\\') {
            out[n++] = '\\';
            out[n++] = (char)*p;
        } else if (*p < 0x20) {
            n += (size_t)snprintf(out + n, size - n, "\\u%04x", *p);
        } else {
            out[n++] = (char)*p;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
}

static enum MHD_Result respond_error(http_server *s, struct MHD_Connection *c, int status,
                                     const char *message, const char *extra_name,
                                     const char *extra_value)
{
    char quoted[1024], body[1100];
    json_string(quoted, sizeof quoted, message);
    int n = snprintf(body, sizeof body, "{\"error\":%s}\n", quoted);
    return respond(s, c, status, body, (size_t)n, extra_name, extra_value);
}

/* --- the snapshot ----------------------------------------------------------------------------- */

/* The document at path, or NULL (lock held). */
static document *find_document(http_server *s, const char *path)
{
    for (size_t i = 0; i < s->ndocs; i++)
        if (strcmp(s->docs[i].path, path) == 0)
            return &s->docs[i];
    return NULL;
}

int http_publish(http_server *s, const char *path, const char *content_type, const char *body,
                 size_t len)
{
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return -1;
    memcpy(copy, body, len);
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback_cls(
        len, copy, free, copy);
    if (!r) {
        free(copy);
        return -1;
    }
    add_common_headers(r, content_type ? content_type : JSON_TYPE);
    if (content_type && strncmp(content_type, "text/html", 9) == 0)
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'none'; script-src 'unsafe-inline'; "
                                "style-src 'unsafe-inline'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'");
    struct MHD_Response *old = NULL;
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    document *d = find_document(s, path);
    if (d) {
        old = d->response;
        d->response = r;
    } else {
        if (s->ndocs == s->docs_cap) {
            size_t cap = s->docs_cap ? s->docs_cap * 2 : 16;
            document *grown = realloc(s->docs, cap * sizeof *grown);
            if (!grown) {
                rc = -1;
                goto out;
            }
            s->docs = grown;
            s->docs_cap = cap;
        }
        char *p = strdup(path);
        if (!p) {
            rc = -1;
            goto out;
        }
        s->docs[s->ndocs].path = p;
        s->docs[s->ndocs].response = r;
        s->ndocs++;
    }
out:
    pthread_mutex_unlock(&s->lock);
    if (rc != 0)
        MHD_destroy_response(r);
    if (old)
        MHD_destroy_response(old);
    return rc;
}

/* Queues the document at path. Returns 1 and sets *ok, or 0 when nothing is there. */
static int serve_document(http_server *s, struct MHD_Connection *c, const char *path,
                          enum MHD_Result *ok)
{
    pthread_mutex_lock(&s->lock);
    document *d = find_document(s, path);
    if (!d) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    *ok = MHD_queue_response(c, MHD_HTTP_OK, d->response);
    pthread_mutex_unlock(&s->lock);
    count_response(s, MHD_HTTP_OK);
    return 1;
}

/* --- control requests -------------------------------------------------------------------------- */

/* The endpoint name when url is HTTP_CONTROL_PREFIX<known name>, else NULL. */
static const char *control_endpoint(http_server *s, const char *url)
{
    size_t n = strlen(HTTP_CONTROL_PREFIX);
    if (strncmp(url, HTTP_CONTROL_PREFIX, n) != 0)
        return NULL;
    for (size_t i = 0; i < s->endpoint_count; i++)
        if (strcmp(url + n, s->endpoints[i]) == 0)
            return s->endpoints[i];
    return NULL;
}

static void unlink_pending(pending **head, pending **tail, pending *p)
{
    pending *prev = NULL;
    for (pending *q = *head; q; prev = q, q = q->next) {
        if (q != p)
            continue;
        if (prev)
            prev->next = q->next;
        else
            *head = q->next;
        if (tail && *tail == q)
            *tail = prev;
        q->next = NULL;
        return;
    }
}

/* Queues the call, wakes the main thread and waits for the answer (see the file comment). */
static enum MHD_Result run_control(http_server *s, struct MHD_Connection *c, control_call *call)
{
    pending *p = &call->p;
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return respond_error(s, c, 503, "the host is shutting down; nothing was changed", NULL,
                             NULL);
    }
    p->id = ++s->next_id;
    p->state = PENDING_QUEUED;
    call->counted = 1;
    s->active_calls++;
    p->next = NULL;
    if (s->queue_tail)
        s->queue_tail->next = p;
    else
        s->queue_head = p;
    s->queue_tail = p;
    pthread_mutex_unlock(&s->lock);

    if (s->notify)
        s->notify(s->notify_arg);

    /* A queued request is withdrawn after the control timeout; a taken one is answered
     * at once in practice, and given up (504) only if the main thread never answers. */
    struct timespec queued_until = deadline_after(s->control_timeout);
    struct timespec taken_until = deadline_after(s->control_timeout + TAKEN_GRACE_SECONDS);
    int timed_out = 0, lost = 0;
    pthread_mutex_lock(&s->lock);
    while (p->state != PENDING_DONE && !s->stopping) {
        if (p->state == PENDING_QUEUED) {
            if (pthread_cond_timedwait(&s->changed, &s->lock, &queued_until) == ETIMEDOUT &&
                p->state == PENDING_QUEUED) {
                timed_out = 1;
                break;
            }
        } else if (pthread_cond_timedwait(&s->changed, &s->lock, &taken_until) == ETIMEDOUT &&
                   p->state == PENDING_TAKEN) {
            lost = 1;
            break;
        }
    }
    int done = p->state == PENDING_DONE;
    if (!done) {
        /* Withdrawn, given up or stopping: the record leaves every list, so a late
         * http_reply finds nothing. */
        unlink_pending(&s->queue_head, &s->queue_tail, p);
        unlink_pending(&s->taken, NULL, p);
        p->state = PENDING_NEW;
    }
    pthread_mutex_unlock(&s->lock);

    if (timed_out) {
        char msg[200];
        snprintf(msg, sizeof msg, "the scheduler did not take the request within %g s (a long "
                 "tick?); nothing was changed, try again", s->control_timeout);
        return respond_error(s, c, 503, msg, "Retry-After", "5");
    }
    if (lost)
        return respond_error(s, c, 504, "the scheduler took the request but did not answer; "
                             "it may have been applied (see GET /api/control)", NULL, NULL);
    if (!done)
        return respond_error(s, c, 503, "the host is shutting down; the request was not "
                             "answered", NULL, NULL);
    return respond(s, c, p->status, p->reply ? p->reply : "{}\n",
                   p->reply ? p->reply_len : 3, NULL, NULL);
}

size_t http_take(http_server *s, http_request **out)
{
    *out = NULL;
    pthread_mutex_lock(&s->lock);
    size_t n = 0;
    for (pending *p = s->queue_head; p; p = p->next)
        n++;
    if (n == 0) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    http_request *list = calloc(n, sizeof *list);
    if (!list) {
        pthread_mutex_unlock(&s->lock);
        return 0;   /* they stay queued and time out */
    }
    size_t i = 0;
    while (s->queue_head) {
        pending *p = s->queue_head;
        control_call *call = (control_call *)((char *)p - offsetof(control_call, p));
        char *body = malloc(call->len + 1);
        if (!body)
            break;
        memcpy(body, call->body ? call->body : "", call->len);
        body[call->len] = '\0';
        s->queue_head = p->next;
        if (!s->queue_head)
            s->queue_tail = NULL;
        p->state = PENDING_TAKEN;
        p->next = s->taken;
        s->taken = p;
        list[i].id = p->id;
        snprintf(list[i].endpoint, sizeof list[i].endpoint, "%s", call->endpoint);
        list[i].body = body;
        list[i].body_len = call->len;
        snprintf(list[i].remote, sizeof list[i].remote, "%s", call->remote);
        i++;
    }
    pthread_mutex_unlock(&s->lock);
    if (i == 0) {
        free(list);
        list = NULL;
    }
    *out = list;
    return i;
}

void http_requests_free(http_request *requests, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(requests[i].body);
    free(requests);
}

int http_reply(http_server *s, uint64_t id, int status, const char *body, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, body, len);
        copy[len] = '\0';
    }
    pthread_mutex_lock(&s->lock);
    pending *p = s->taken;
    while (p && p->id != id)
        p = p->next;
    if (!p) {
        pthread_mutex_unlock(&s->lock);
        free(copy);
        return 0;
    }
    unlink_pending(&s->taken, NULL, p);
    if (copy) {
        p->status = status;
        p->reply = copy;
        p->reply_len = len;
    } else {
        p->status = 500;
    }
    p->state = PENDING_DONE;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
    return 1;
}

/* --- the request handler ---------------------------------------------------------------------- */

/* Connection threads run at a lower priority than the tick loop (nice +THREAD_NICE, this
 * thread only: Linux applies setpriority to a thread id), so when they compete for a
 * core the scheduler's work goes first. Once per thread; failure only costs priority. */
static void lower_thread_priority(void)
{
    static __thread int lowered;
    if (lowered)
        return;
    lowered = 1;
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), THREAD_NICE);
}

/* A loopback server answers only requests addressed to a loopback name (DNS rebinding). */
static int host_header_allowed(http_server *s, struct MHD_Connection *c)
{
    if (!s->loopback)
        return 1;
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!host)
        return 1;   /* HTTP/1.0 */
    char name[128];
    size_t n;
    if (host[0] == '[') {
        const char *end = strchr(host, ']');
        if (!end)
            return 0;
        n = (size_t)(end - host - 1);
        if (n >= sizeof name)
            return 0;
        memcpy(name, host + 1, n);
    } else {
        n = strcspn(host, ":");
        if (n >= sizeof name)
            return 0;
        memcpy(name, host, n);
    }
    name[n] = '\0';
    if (strcasecmp(name, "localhost") == 0)
        return 1;
    unsigned char a[16];
    if (inet_pton(AF_INET, name, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, name, a) == 1) {
        static const unsigned char loop6[16] = {[15] = 1};
        return memcmp(a, loop6, 16) == 0;
    }
    return 0;
}

static void client_address(struct MHD_Connection *c, char *out, size_t size)
{
    snprintf(out, size, "unknown");
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!info || !info->client_addr)
        return;
    const struct sockaddr *sa = info->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out,
                  (socklen_t)size);
}

/* Checks the bearer token. Returns 0 when accepted, else the refusal was sent (*ok). */
static int refuse_unauthorized(http_server *s, struct MHD_Connection *c, enum MHD_Result *ok)
{
    if (!s->has_token) {
        *ok = respond_error(s, c, 403, "the control plane is off: no LORELEY_HTTP_TOKEN is "
                            "configured", NULL, NULL);
        return 1;
    }
    const char *auth =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
        *ok = respond_error(s, c, 401, "this endpoint needs 'Authorization: Bearer <token>'",
                            MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"loreley-host\"");
        return 1;
    }
    const char *token = auth + 7;
    while (*token == ' ')
        token++;
    size_t len = strlen(token);
    while (len > 0 && token[len - 1] == ' ')
        len--;
    if (!token_matches(s, token, len)) {
        *ok = respond_error(s, c, 403, "wrong bearer token", NULL, NULL);
        return 1;
    }
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    http_server *s = cls;
    control_call *call = *con_cls;
    lower_thread_priority();
    if (call) {
        /* A control request's body, chunk by chunk, then an empty call at the end. */
        if (*upload_size > 0) {
            if (!call->too_large && call->len + *upload_size > HTTP_MAX_BODY)
                call->too_large = 1;
            if (!call->too_large) {
                if (call->len + *upload_size > call->cap) {
                    size_t cap = call->cap ? call->cap : 1024;
                    while (cap < call->len + *upload_size)
                        cap *= 2;
                    char *grown = realloc(call->body, cap);
                    if (!grown)
                        return MHD_NO;
                    call->body = grown;
                    call->cap = cap;
                }
                memcpy(call->body + call->len, upload_data, *upload_size);
                call->len += *upload_size;
            }
            *upload_size = 0;
            return MHD_YES;
        }
        if (call->too_large) {
            char msg[120];
            snprintf(msg, sizeof msg, "the request body is larger than %d bytes",
                     HTTP_MAX_BODY);
            return respond_error(s, c, 413, msg, NULL, NULL);
        }
        return run_control(s, c, call);
    }

    enum MHD_Result ok;
    if (!host_header_allowed(s, c))
        return respond_error(s, c, 421, "this server listens on a loopback address and "
                             "answers only requests for localhost, 127.0.0.1 or [::1]",
                             NULL, NULL);
    int is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                 strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    int is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    const char *endpoint = control_endpoint(s, url);
    if (endpoint) {
        if (!is_post)
            return respond_error(s, c, 405, "control endpoints accept POST only", "Allow",
                                 "POST");
        if (refuse_unauthorized(s, c, &ok))
            return ok;
        const char *length =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && strtoull(length, NULL, 10) > HTTP_MAX_BODY) {
            char msg[120];
            snprintf(msg, sizeof msg, "the request body is larger than %d bytes",
                     HTTP_MAX_BODY);
            return respond_error(s, c, 413, msg, NULL, NULL);
        }
        call = calloc(1, sizeof *call);
        if (!call)
            return MHD_NO;
        call->endpoint = endpoint;
        client_address(c, call->remote, sizeof call->remote);
        *con_cls = call;
        return MHD_YES;
    }
    if (is_get && serve_document(s, c, url, &ok))
        return ok;
    if (!is_get) {
        pthread_mutex_lock(&s->lock);
        int known = find_document(s, url) != NULL;
        pthread_mutex_unlock(&s->lock);
        if (known)
            return respond_error(s, c, 405, "this resource accepts GET and HEAD only", "Allow",
                                 "GET, HEAD");
    }
    if (strncmp(url, HTTP_CONTROL_PREFIX, strlen(HTTP_CONTROL_PREFIX)) == 0) {
        char msg[HTTP_MAX_ENDPOINTS * (HTTP_MAX_ENDPOINT_NAME + 2) + 100];
        snprintf(msg, sizeof msg, "unknown control endpoint (known: %s)", s->allowed_endpoints);
        return respond_error(s, c, 404, msg, NULL, NULL);
    }
    return respond_error(s, c, 404, "not found", NULL, NULL);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    control_call *call = *con_cls;
    if (!call)
        return;
    /* The record left every list before its thread answered (run_control); a body that
     * was still arriving when the client went away was never queued. */
    pthread_mutex_lock(&s->lock);
    unlink_pending(&s->queue_head, &s->queue_tail, &call->p);
    unlink_pending(&s->taken, NULL, &call->p);
    if (call->counted) {
        s->active_calls--;
        pthread_cond_broadcast(&s->changed);
    }
    pthread_mutex_unlock(&s->lock);
    free(call->body);
    free(call->p.reply);
    free(call);
    *con_cls = NULL;
}

static void on_library_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("http: %s", line);
}

/* --- start and stop ----------------------------------------------------------------------------- */

int http_start(const http_config *config, http_server **out, char *err, size_t errsize)
{
    *out = NULL;
    char host[64];
    int port, ipv6;
    if (http_parse_listen(config->listen, host, sizeof host, &port, &ipv6, err, errsize) != 0)
        return HTTP_START_INVALID;
    if (config->endpoint_count > HTTP_MAX_ENDPOINTS) {
        set_error(err, errsize, "too many control endpoints (at most %d)", HTTP_MAX_ENDPOINTS);
        return HTTP_START_INVALID;
    }
    if (!(config->control_timeout > 0)) {
        set_error(err, errsize, "the control timeout must be > 0 seconds");
        return HTTP_START_INVALID;
    }
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        set_error(err, errsize, "out of memory starting the HTTP server");
        return HTTP_START_SYSTEM;
    }
    for (size_t i = 0; i < config->endpoint_count; i++) {
        const char *name = config->endpoints[i];
        if (!name || !*name || strlen(name) >= HTTP_MAX_ENDPOINT_NAME ||
            strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(name)) {
            set_error(err, errsize, "invalid control endpoint name '%s' (lower-case letters, "
                      "digits, _ and -, at most %d)", name ? name : "(null)",
                      HTTP_MAX_ENDPOINT_NAME - 1);
            free(s);
            return HTTP_START_INVALID;
        }
        strcpy(s->endpoints[i], name);
        if (i > 0)
            strcat(s->allowed_endpoints, ", ");
        strcat(s->allowed_endpoints, name);
    }
    s->endpoint_count = config->endpoint_count;
    s->control_timeout = config->control_timeout;
    s->notify = config->notify;
    s->notify_arg = config->notify_arg;
    if (config->token && *config->token) {
        s->has_token = 1;
        sha256_t ctx;
        sha256_init(&ctx);
        sha256_update(&ctx, config->token, strlen(config->token));
        sha256_final(&ctx, s->token_digest);
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->changed, &attr);
    pthread_condattr_destroy(&attr);

    struct sockaddr_storage bound;
    int fd = open_listener(host, port, ipv6, &bound, err, errsize);
    if (fd < 0) {
        http_stop(s);
        return HTTP_START_SYSTEM;
    }
    char numeric[64] = "";
    if (ipv6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&bound;
        inet_ntop(AF_INET6, &a->sin6_addr, numeric, sizeof numeric);
        s->port = ntohs(a->sin6_port);
        static const unsigned char loop6[16] = {[15] = 1};
        s->loopback = memcmp(&a->sin6_addr, loop6, 16) == 0;
        snprintf(s->address, sizeof s->address, "[%s]:%d", numeric, s->port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&bound;
        inet_ntop(AF_INET, &a->sin_addr, numeric, sizeof numeric);
        s->port = ntohs(a->sin_port);
        s->loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
        snprintf(s->address, sizeof s->address, "%s:%d", numeric, s->port);
    }

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_AUTO | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ipv6)
        flags |= MHD_USE_IPv6;
    unsigned max_connections = config->max_connections ? config->max_connections : 64;
    unsigned idle = config->idle_timeout ? config->idle_timeout : 15;
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_LIMIT, max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, idle,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(256 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_EXTERNAL_LOGGER, on_library_log, s,
        MHD_OPTION_END);
    if (!s->daemon) {
        close(fd);
        set_error(err, errsize, "cannot start the HTTP server on %s (libmicrohttpd refused; "
                  "run with --log-level DEBUG for its reason)", s->address);
        http_stop(s);
        return HTTP_START_SYSTEM;
    }
    *out = s;
    return HTTP_START_OK;
}

void http_stop(http_server *s)
{
    if (!s)
        return;
    /* Waiting control calls wake up and answer 503; give their answers up to
     * STOP_GRACE_SECONDS to reach the clients before the connections are torn down. */
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_broadcast(&s->changed);
    struct timespec until = deadline_after(STOP_GRACE_SECONDS);
    while (s->active_calls > 0 &&
           pthread_cond_timedwait(&s->changed, &s->lock, &until) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&s->lock);
    if (s->daemon)
        MHD_stop_daemon(s->daemon);   /* joins every connection thread; closes the socket */
    for (size_t i = 0; i < s->ndocs; i++) {
        MHD_destroy_response(s->docs[i].response);
        free(s->docs[i].path);
    }
    free(s->docs);
    pthread_cond_destroy(&s->changed);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

const char *http_address(const http_server *s) { return s->address; }

int http_port(const http_server *s) { return s->port; }

void http_response_counts(http_server *s, void (*fn)(int code, uint64_t count, void *arg),
                          void *arg)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->ncodes; i++)
        fn(s->codes[i].code, s->codes[i].count, arg);
    pthread_mutex_unlock(&s->lock);
}
