/*
 * lbroker.c - the `loreley.broker` module: a Dramatiq-compatible Redis broker over
 * hiredis. It writes messages a real Python Dramatiq worker consumes
 * (shared/spec/dramatiq-redis.md), and reads them back the way such a worker does, for
 * the example worker and the tests. docs/broker.md is the user documentation.
 *
 * Errors: misuse (wrong argument types, unknown option keys, a bad queue name, a closed
 * broker) raises; failures of the world return nil, message, code with code one of
 *   "connection"  not connected, refused, or the connection was lost
 *   "timeout"     no reply within the command timeout (the connection is reset)
 *   "auth"        the server refused the credentials, or wants some
 *   "server"      Redis answered a command with an error (e.g. WRONGTYPE)
 *   "protocol"    a reply of a type the command cannot return
 *   "invalid"     the message failed to encode or to validate; nothing was sent
 *   "config"      a URL or setting that cannot be used (connect only)
 * Messages name the server by its credential-free form (redis://host:port/db) only.
 *
 *   broker.connect(url | opts[, opts]) -> b | nil, msg, code
 *   broker.from_settings(settings[, opts]) -> b | nil, msg, code
 *   b:enqueue(queue|nil, actor, args[, {delay_ms=, dedupe=, kwargs=}])
 *       -> redis_message_id, message_id, "enqueued"|"duplicate"
 *   b:enqueue_many{ {queue=, actor=, args=, opts=}, ... } -> results, n_enqueued
 *       results[i] = {status = "enqueued"|"duplicate"|"invalid"|"failed",
 *                     redis_message_id=, message_id=, error=}
 *   b:queue_length(queue|nil) -> n
 *   b:stats(queue|nil) -> {queued, messages, held, delayed, dead}
 *   b:is_waiting(queue|nil, job_key) -> bool, "queued"|"held"|"delayed"|nil
 *   b:fetch(queue|nil, n, consumer_id) -> { {redis_message_id, payload, message, error} }
 *   b:ack(queue|nil, redis_id, consumer_id) -> bool
 *   b:nack(queue|nil, redis_id, consumer_id) -> bool
 *   b:requeue(queue|nil, consumer_id[, ids]) -> n      b:heartbeat(consumer_id) -> true
 *   b:ping() -> seconds      b:info() -> table      b:close()      tostring(b)
 *   broker.build_message(fields) -> json | nil, msg
 *   broker.validate_message(json[, queue[, redis_id]]) -> info | nil, msg
 *   broker.parse_url(url) -> table | nil, msg     broker.dedupe_id(queue, key) -> uuid
 *   broker.error_count() -> failures talking to Redis so far in this process (calls that
 *       returned nil, msg, code, and enqueue_many items that "failed"; the metrics endpoint)
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "dramatiq.h"
#include "host.h"
#include "lmod.h"
#include "log.h"
#include "redis_url.h"
#include "rng.h"

#define BROKER_TYPE "loreley.broker"
#define SCRATCH_TYPE "loreley.broker.scratch"

#define NAMESPACE_MAX 200
#define QUEUE_MAX 200          /* canonical queue names; ".DQ" may be added */
#define KEY_MAX 512            /* any Redis key this module builds */
#define CONSUMER_MAX 100
#define JOB_KEY_MAX 1024
#define FETCH_MAX 1000         /* ids per fetch (bounded Lua unpack in the script) */
#define BATCH_CHUNK 1000       /* messages per HSET/RPUSH command in a batch */
#define MAX_DELAY_MS 604800000LL   /* 7 days: Dramatiq documents delays below that */
#define ENCODE_MAX_DEPTH 32

/* ---- scripts ---------------------------------------------------------------------------
 * Our own Lua scripts, run with EVALSHA (loaded at every connection). Each one touches
 * only the keys it is given. Dramatiq's key layout and command order (spec §3, §4) are
 * followed; the text is not Dramatiq's. */

enum { SCRIPT_DEDUPE, SCRIPT_FETCH, SCRIPT_ACK, SCRIPT_NACK, SCRIPT_REQUEUE, SCRIPT_COUNT };

static const char *const SCRIPT_NAMES[SCRIPT_COUNT] = {
    "enqueue (dedupe)", "fetch", "ack", "nack", "requeue",
};

static const char *const SCRIPTS[SCRIPT_COUNT] = {
    /* dedupe enqueue. KEYS: <q>.msgs, <q>.DQ.msgs, target list, target hash.
     * ARGV: redis id, payload. Returns {1, list length} when the message was written,
     * {0, stored payload} when a message with this id is still waiting or held.
     * A key of the wrong type fails the HGETs or the HSET before anything is written; a
     * failed RPUSH undoes the HSET (a script runs alone, so nobody sees the payload). */
    "local old = redis.call('HGET', KEYS[1], ARGV[1]) or redis.call('HGET', KEYS[2], ARGV[1])\n"
    "if old then return {0, old} end\n"
    "redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])\n"
    "local n = redis.pcall('RPUSH', KEYS[3], ARGV[1])\n"
    "if type(n) == 'table' and n.err then\n"
    "  redis.call('HDEL', KEYS[4], ARGV[1])\n"
    "  return n\n"
    "end\n"
    "return {1, n}\n",

    /* fetch. KEYS: list, hash, acks set, heartbeats. ARGV: n, now ms, consumer id.
     * Returns {id1, payload1, id2, payload2, ...} (a payload may be nil). */
    "redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])\n"
    "local ids = {}\n"
    "for i = 1, tonumber(ARGV[1]) do\n"
    "  local id = redis.call('LPOP', KEYS[1])\n"
    "  if not id then break end\n"
    "  redis.call('SADD', KEYS[3], id)\n"
    "  ids[#ids + 1] = id\n"
    "end\n"
    "if #ids == 0 then return {} end\n"
    "local payloads = redis.call('HMGET', KEYS[2], unpack(ids))\n"
    "local out = {}\n"
    "for i = 1, #ids do out[2 * i - 1] = ids[i]; out[2 * i] = payloads[i] end\n"
    "return out\n",

    /* ack. KEYS: acks set, hash, heartbeats. ARGV: id, now ms, consumer id. */
    "redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])\n"
    "if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then\n"
    "  redis.call('HDEL', KEYS[2], ARGV[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n",

    /* nack (dead letter). KEYS: acks set, hash, <q>.XQ, <q>.XQ.msgs, heartbeats.
     * ARGV: id, now ms, consumer id. The stored bytes move to the dead-letter queue. */
    "redis.call('ZADD', KEYS[5], ARGV[2], ARGV[3])\n"
    "if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then\n"
    "  local data = redis.call('HGET', KEYS[2], ARGV[1])\n"
    "  if data then\n"
    "    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])\n"
    "    redis.call('HSET', KEYS[4], ARGV[1], data)\n"
    "    redis.call('HDEL', KEYS[2], ARGV[1])\n"
    "  end\n"
    "  return 1\n"
    "end\n"
    "return 0\n",

    /* requeue. KEYS: acks set, list, hash. ARGV: ids (none: every id in the set).
     * An id goes back on the list only if it was in the set and its payload exists. */
    "local ids = ARGV\n"
    "if #ids == 0 then ids = redis.call('SMEMBERS', KEYS[1]) end\n"
    "local n = 0\n"
    "for _, id in ipairs(ids) do\n"
    "  if redis.call('SREM', KEYS[1], id) == 1 and redis.call('HEXISTS', KEYS[3], id) == 1 then\n"
    "    redis.call('RPUSH', KEYS[2], id)\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n",
};

/* ---- scratch memory -------------------------------------------------------------------
 * Every buffer a call needs lives in a GC-owned object (the broker, or a scratch userdata
 * for module functions), so a Lua error at any point leaks nothing. */

typedef struct scratch {
    dq_buf args;      /* encoded args of the message being built */
    dq_buf kwargs;    /* encoded kwargs */
    dq_buf payload;   /* message JSON (a batch appends every payload here) */
    dq_buf keys;      /* key_ref stack for sorting object keys */
    dq_buf items;     /* batch_item array */
    dq_buf groups;    /* batch_group array */
    dq_buf argv;      /* argv pointers and lengths for long commands */
    dq_buf text;      /* error texts of a batch */
} scratch;

static void scratch_free(scratch *s)
{
    dq_buf_free(&s->args);
    dq_buf_free(&s->kwargs);
    dq_buf_free(&s->payload);
    dq_buf_free(&s->keys);
    dq_buf_free(&s->items);
    dq_buf_free(&s->groups);
    dq_buf_free(&s->argv);
    dq_buf_free(&s->text);
}

static int scratch_gc(lua_State *L)
{
    scratch_free(luaL_checkudata(L, 1, SCRATCH_TYPE));
    return 0;
}

/* Pushes a new scratch userdata (freed by the GC). */
static scratch *new_scratch(lua_State *L)
{
    scratch *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    luaL_getmetatable(L, SCRATCH_TYPE);
    lua_setmetatable(L, -2);
    return s;
}

/* Makes room for n elements of size `size` in buf, used as an array. Raises on OOM. */
static void *scratch_array(lua_State *L, dq_buf *buf, size_t n, size_t size)
{
    buf->len = 0;
    if (n > SIZE_MAX / size || dq_buf_reserve(buf, n * size) != DQ_OK)
        luaL_error(L, "out of memory");
    return buf->data;
}

/* ---- the broker object ---------------------------------------------------------------- */

typedef struct broker {
    redisContext *ctx;            /* NULL while disconnected */
    redisReply *reply;            /* the reply being looked at (freed on the next read / gc) */
    redis_url url;                /* where and how to connect (holds the credentials) */
    char display[REDIS_URL_PATH_MAX + REDIS_URL_HOST_MAX + 64];   /* credential-free */
    char ns[NAMESPACE_MAX + 1];
    char queue[QUEUE_MAX + 1];    /* default queue */
    double connect_timeout;       /* seconds */
    double command_timeout;       /* seconds */
    double backoff_initial, backoff_max;
    double backoff;               /* current delay between connection attempts; 0: none */
    double next_attempt;          /* host_now() before which no attempt is made */
    const char *last_code;        /* the last failed attempt, reported while backing off */
    char last_error[800];
    int closed;
    long connects;                /* successful connections so far */
    long failures;                /* failed connection attempts so far */
    char sha[SCRIPT_COUNT][41];
    const char *fail_code;        /* the failure the current call reports */
    char fail_msg[800];
    scratch s;
} broker;

static void set_failure(broker *b, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_failure(broker *b, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->fail_msg, sizeof b->fail_msg, fmt, ap);
    va_end(ap);
    b->fail_code = code;
}

/* Failures talking to Redis (broker.error_count). Only the main thread runs Lua. */
static double failure_count;

/* Returns nil, message, code for the failure recorded in b. */
static int push_failure(lua_State *L, broker *b)
{
    failure_count++;
    return lmod_fail_code(L, b->fail_code, "%s", b->fail_msg);
}

static void free_reply(broker *b)
{
    if (b->reply) {
        freeReplyObject(b->reply);
        b->reply = NULL;
    }
}

static void drop_connection(broker *b)
{
    free_reply(b);
    if (b->ctx) {
        redisFree(b->ctx);
        b->ctx = NULL;
    }
}

static void broker_release(broker *b)
{
    drop_connection(b);
    redis_url_wipe(&b->url);
    scratch_free(&b->s);
    b->closed = 1;
}

static broker *check_broker(lua_State *L, int idx)
{
    broker *b = luaL_checkudata(L, idx, BROKER_TYPE);
    if (b->closed)
        luaL_error(L, "broker is closed");
    return b;
}

static struct timeval to_timeval(double seconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    return tv;
}

static const char *reply_type_name(int type)
{
    switch (type) {
    case REDIS_REPLY_STRING: return "a string";
    case REDIS_REPLY_ARRAY: return "an array";
    case REDIS_REPLY_INTEGER: return "an integer";
    case REDIS_REPLY_NIL: return "nil";
    case REDIS_REPLY_STATUS: return "a status";
    case REDIS_REPLY_ERROR: return "an error";
    default: return "an unknown type";
    }
}

/* Records why the connection failed (hiredis put it in ctx->err) and drops it. */
static void io_failure(broker *b, const char *during)
{
    redisContext *c = b->ctx;
    int e = errno;
    if (c->err == REDIS_ERR_IO && (e == EAGAIN || e == EWOULDBLOCK ||
                                   strstr(c->errstr, "temporarily unavailable"))) {
        set_failure(b, "timeout", "%s: no reply to %s within %.3g s; connection reset",
                    b->display, during, b->command_timeout);
    } else if (c->err == REDIS_ERR_EOF) {
        set_failure(b, "connection", "%s: connection closed by the server during %s",
                    b->display, during);
    } else if (c->err == REDIS_ERR_PROTOCOL) {
        set_failure(b, "protocol", "%s: protocol error during %s: %s", b->display, during,
                    c->errstr);
    } else {
        set_failure(b, "connection", "%s: %s during %s", b->display,
                    c->errstr[0] ? c->errstr : "I/O error", during);
    }
    log_warning("broker: %s", b->fail_msg);
    drop_connection(b);
}

/* Classifies an error reply: credentials problems are "auth", the rest "server". */
static void server_error(broker *b, const redisReply *r, const char *what)
{
    int auth = (r->len >= 6 && strncmp(r->str, "NOAUTH", 6) == 0) ||
               (r->len >= 9 && strncmp(r->str, "WRONGPASS", 9) == 0);
    set_failure(b, auth ? "auth" : "server", "%s: %s failed: %.*s", b->display, what,
                (int)(r->len > 300 ? 300 : r->len), r->str);
}

/*
 * Checks that r has the type a command returns; on an error reply records "server" (or
 * "auth"), on any other type "protocol". Returns 0 when the type is right.
 */
static int expect_type(broker *b, const redisReply *r, int type, const char *what)
{
    if (r->type == type)
        return 0;
    if (r->type == REDIS_REPLY_ERROR)
        server_error(b, r, what);
    else
        set_failure(b, "protocol", "%s: unexpected reply to %s: %s instead of %s", b->display,
                    what, reply_type_name(r->type), reply_type_name(type));
    return -1;
}

/* Appends a command to the output buffer (nothing is sent until a reply is read). */
static void append_argv(lua_State *L, broker *b, int argc, const char **argv,
                        const size_t *lens)
{
    if (redisAppendCommandArgv(b->ctx, argc, argv, lens) != REDIS_OK)
        luaL_error(L, "out of memory formatting a Redis command");
}

/* Reads the next reply into b->reply (sending what is pending first). On an I/O failure
 * records it, drops the connection and returns NULL. */
static redisReply *read_reply(broker *b, const char *during)
{
    free_reply(b);
    void *r = NULL;
    if (redisGetReply(b->ctx, &r) != REDIS_OK || !r) {
        if (r)
            freeReplyObject(r);
        io_failure(b, during);
        return NULL;
    }
    b->reply = r;
    return b->reply;
}

/* Reads and discards n replies so the connection stays in step after a failure was
 * found mid-pipeline. Keeps the recorded failure. Returns -1 if the connection broke. */
static int drain_replies(broker *b, long n)
{
    const char *code = b->fail_code;
    char saved[sizeof b->fail_msg];
    memcpy(saved, b->fail_msg, sizeof saved);
    int rc = 0;
    for (long i = 0; i < n && b->ctx; i++)
        if (!read_reply(b, "a pipelined command")) {
            rc = -1;
            break;
        }
    free_reply(b);
    b->fail_code = code;
    memcpy(b->fail_msg, saved, sizeof saved);
    return rc;
}

/* 1 when the idle connection still looks usable: nothing is waiting to be read. A
 * server that went away has left an EOF (or a reset) there. */
static int connection_alive(redisContext *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN, .revents = 0};
    int r = poll(&p, 1, 0);
    if (r == 0)
        return 1;
    if (r < 0)
        return errno == EINTR;
    char byte;
    ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 1;
    return 0;   /* EOF, an error, or bytes nobody asked for: the stream cannot be trusted */
}

/*
 * Connects and runs the handshake in one round trip: AUTH (when a password is set),
 * SELECT (when the database is not 0), PING (which fails with NOAUTH when the server
 * wants a password we did not give), and SCRIPT LOAD of every script.
 */
static int connect_now(lua_State *L, broker *b)
{
    struct timeval ctv = to_timeval(b->connect_timeout);
    redisContext *c = b->url.is_unix ? redisConnectUnixWithTimeout(b->url.path, ctv)
                                     : redisConnectWithTimeout(b->url.host, b->url.port, ctv);
    if (!c) {
        set_failure(b, "connection", "%s: out of memory", b->display);
        return -1;
    }
    if (c->err) {
        int timeout = errno == EINPROGRESS || errno == ETIMEDOUT ||
                      strstr(c->errstr, "timed out") != NULL;
        set_failure(b, timeout ? "timeout" : "connection", "%s: cannot connect: %s",
                    b->display, c->errstr);
        redisFree(c);
        return -1;
    }
    b->ctx = c;
    if (redisSetTimeout(c, to_timeval(b->command_timeout)) != REDIS_OK) {
        io_failure(b, "setting the timeout");
        return -1;
    }

    if (b->url.has_password || b->url.has_username) {
        const char *argv[3] = {"AUTH", NULL, NULL};
        size_t lens[3] = {4, 0, 0};
        int argc = 1;
        if (b->url.has_username) {
            argv[argc] = b->url.username;
            lens[argc++] = strlen(b->url.username);
        }
        argv[argc] = b->url.has_password ? b->url.password : "";
        lens[argc] = strlen(argv[argc]);
        argc++;
        append_argv(L, b, argc, argv, lens);
    }
    char dbtext[24];
    if (b->url.db != 0) {
        snprintf(dbtext, sizeof dbtext, "%ld", b->url.db);
        const char *argv[2] = {"SELECT", dbtext};
        size_t lens[2] = {6, strlen(dbtext)};
        append_argv(L, b, 2, argv, lens);
    }
    {
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        append_argv(L, b, 1, argv, lens);
    }
    for (int i = 0; i < SCRIPT_COUNT; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", SCRIPTS[i]};
        size_t lens[3] = {6, 4, strlen(SCRIPTS[i])};
        append_argv(L, b, 3, argv, lens);
    }

    if (b->url.has_password || b->url.has_username) {
        redisReply *r = read_reply(b, "AUTH");
        if (!r)
            return -1;
        if (r->type == REDIS_REPLY_ERROR) {
            set_failure(b, "auth", "%s: authentication failed: %.*s", b->display,
                        (int)(r->len > 200 ? 200 : r->len), r->str);
            drop_connection(b);
            return -1;
        }
    }
    if (b->url.db != 0) {
        redisReply *r = read_reply(b, "SELECT");
        if (!r)
            return -1;
        if (expect_type(b, r, REDIS_REPLY_STATUS, "SELECT") != 0) {
            drop_connection(b);
            return -1;
        }
    }
    {
        redisReply *r = read_reply(b, "PING");
        if (!r)
            return -1;
        if (r->type == REDIS_REPLY_ERROR && r->len >= 6 && strncmp(r->str, "NOAUTH", 6) == 0) {
            set_failure(b, "auth", "%s: the server requires a password: %.*s", b->display,
                        (int)(r->len > 200 ? 200 : r->len), r->str);
            drop_connection(b);
            return -1;
        }
        if (expect_type(b, r, REDIS_REPLY_STATUS, "PING") != 0) {
            drop_connection(b);
            return -1;
        }
    }
    for (int i = 0; i < SCRIPT_COUNT; i++) {
        redisReply *r = read_reply(b, "SCRIPT LOAD");
        if (!r)
            return -1;
        if (expect_type(b, r, REDIS_REPLY_STRING, "SCRIPT LOAD") != 0 || r->len != 40) {
            if (r->type == REDIS_REPLY_STRING)
                set_failure(b, "protocol", "%s: SCRIPT LOAD returned a %zu-byte digest",
                            b->display, (size_t)r->len);
            drop_connection(b);
            return -1;
        }
        memcpy(b->sha[i], r->str, 40);
        b->sha[i][40] = '\0';
    }
    free_reply(b);
    return 0;
}

/*
 * Makes sure there is a usable connection: drops one the server has closed, and
 * (re)connects unless the last attempt failed less than the current backoff ago.
 * Returns 0, or -1 with the failure recorded.
 */
static int ensure_connected(lua_State *L, broker *b)
{
    if (b->ctx && !connection_alive(b->ctx)) {
        log_warning("broker: %s: the connection was closed; reconnecting", b->display);
        drop_connection(b);
    }
    if (b->ctx)
        return 0;
    double now = host_now();
    if (now < b->next_attempt) {
        set_failure(b, b->last_code, "%s (next connection attempt in %.0f ms)", b->last_error,
                    (b->next_attempt - now) * 1000.0);
        return -1;
    }
    if (connect_now(L, b) != 0) {
        b->failures++;
        b->backoff = b->backoff > 0 ? fmin(b->backoff * 2, b->backoff_max) : b->backoff_initial;
        b->next_attempt = host_now() + b->backoff;
        b->last_code = b->fail_code;
        snprintf(b->last_error, sizeof b->last_error, "%s", b->fail_msg);
        return -1;
    }
    b->backoff = 0;
    b->next_attempt = 0;
    b->connects++;
    if (b->connects > 1)
        log_info("broker: reconnected to %s", b->display);
    else
        log_debug("broker: connected to %s", b->display);
    return 0;
}

/* ---- names and keys ----------------------------------------------------------------- */

/* Builds "<ns>:<name><suffix>" into out (KEY_MAX + 1 bytes). */
static size_t make_key(const broker *b, const char *name, size_t n, const char *suffix,
                       char *out)
{
    int len = snprintf(out, KEY_MAX + 1, "%s:%.*s%s", b->ns, (int)n, name, suffix);
    return (size_t)len;
}

/* The queue argument at idx: nil means the broker's default queue. Raises unless it is a
 * Dramatiq queue name ([a-zA-Z_][a-zA-Z0-9._-]*, at most QUEUE_MAX bytes). When
 * allow_suffix is 0 the name must be canonical (no .DQ/.XQ). */
static const char *check_queue(lua_State *L, broker *b, int idx, size_t *len,
                               int allow_suffix, const char *what)
{
    if (lua_isnoneornil(L, idx)) {
        *len = strlen(b->queue);
        return b->queue;
    }
    size_t n;
    const char *q = luaL_checklstring(L, idx, &n);
    if (n > QUEUE_MAX || !dq_queue_name_valid(q, n))
        luaL_error(L, "%s: queue '%s' is not a Dramatiq queue name ([a-zA-Z_][a-zA-Z0-9._-]*, "
                      "at most %d bytes)", what, q, QUEUE_MAX);
    if (!allow_suffix && (dq_queue_is_delay(q, n) || dq_queue_is_dead(q, n)))
        luaL_error(L, "%s: queue '%s' ends in .DQ or .XQ, which Dramatiq reserves (give the "
                      "canonical name; use delay_ms for the delay queue)", what, q);
    *len = n;
    return q;
}

static const char *check_consumer(lua_State *L, int idx, const char *what)
{
    size_t n;
    const char *c = luaL_checklstring(L, idx, &n);
    int ok = n > 0 && n <= CONSUMER_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = c[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_' || ch == '.';
    }
    if (!ok)
        luaL_error(L, "%s: consumer id must be 1..%d characters of [A-Za-z0-9._-]", what,
                   CONSUMER_MAX);
    return c;
}

static void check_namespace(lua_State *L, const char *ns, size_t n)
{
    int ok = n > 0 && n <= NAMESPACE_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char ch = ns[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_' || ch == '.' || ch == ':';
    }
    if (!ok)
        luaL_error(L, "broker: namespace '%s' must be 1..%d characters of [A-Za-z0-9._:-]", ns,
                   NAMESPACE_MAX);
}

/* ---- Lua values to JSON ----------------------------------------------------------------
 * Tables with keys 1..n are arrays, tables with string keys objects (keys sorted
 * bytewise, so the same table always gives the same bytes); an empty table is [] for
 * args, {} for kwargs and {} inside them (as lua-cjson); cjson.null is null. Only raw
 * access is used: no metamethod runs while a message is built. */

typedef struct key_ref {
    const char *key;
    size_t len;
} key_ref;

typedef struct path_step {
    const char *key;     /* NULL: an array index */
    size_t len;
    lua_Integer index;
} path_step;

typedef struct encoder {
    lua_State *L;
    dq_buf *out;
    dq_buf *keys;
    const char *root;
    int depth;
    path_step path[ENCODE_MAX_DEPTH + 1];
    char err[400];
} encoder;

/* Writes the path of the value being encoded ("args[2].name") into e->err + prefix. */
static void encode_fail(encoder *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void encode_fail(encoder *e, const char *fmt, ...)
{
    char where[160];
    size_t o = (size_t)snprintf(where, sizeof where, "%s", e->root);
    for (int i = 0; i < e->depth && o < sizeof where; i++) {
        const path_step *s = &e->path[i];
        if (s->key)
            o += (size_t)snprintf(where + o, sizeof where - o, ".%.*s",
                                  (int)(s->len > 40 ? 40 : s->len), s->key);
        else
            o += (size_t)snprintf(where + o, sizeof where - o, "[%lld]", (long long)s->index);
    }
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(e->err, sizeof e->err, "%s: %s", where, what);
}

static int key_cmp(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

enum { SHAPE_EMPTY, SHAPE_ARRAY, SHAPE_OBJECT };

/* Classifies the table at idx. Returns a SHAPE_*, or -1 with the reason in e->err. */
static int table_shape(encoder *e, int idx, size_t *count)
{
    lua_State *L = e->L;
    size_t n = 0;
    double max = 0;
    int numbers = 0, strings = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        int kt = lua_type(L, -1);
        if (kt == LUA_TSTRING) {
            strings = 1;
        } else if (kt == LUA_TNUMBER) {
            double k = lua_tonumber(L, -1);
            if (k < 1 || k != floor(k)) {
                lua_pop(L, 1);
                encode_fail(e, "table key %g is neither a string nor an array index", k);
                return -1;
            }
            numbers = 1;
            if (k > max)
                max = k;
        } else {
            const char *tn = luaL_typename(L, -1);
            lua_pop(L, 1);
            encode_fail(e, "table key of type %s cannot be sent as JSON", tn);
            return -1;
        }
    }
    *count = n;
    if (n == 0)
        return SHAPE_EMPTY;
    if (numbers && strings) {
        encode_fail(e, "table mixes array items and string keys");
        return -1;
    }
    if (numbers) {
        if (max != (double)n) {
            encode_fail(e, "array has holes (index %g of %zu items); use cjson.null", max, n);
            return -1;
        }
        return SHAPE_ARRAY;
    }
    return SHAPE_OBJECT;
}

static int encode_value(encoder *e, int idx, int empty_as_array);

static int encode_table(encoder *e, int idx, int empty_as_array)
{
    lua_State *L = e->L;
    if (e->depth >= ENCODE_MAX_DEPTH) {
        encode_fail(e, "nested more than %d levels (a cycle?)", ENCODE_MAX_DEPTH);
        return -1;
    }
    size_t n;
    int shape = table_shape(e, idx, &n);
    if (shape < 0)
        return -1;
    if (shape == SHAPE_EMPTY) {
        dq_buf_puts(e->out, empty_as_array ? "[]" : "{}");
        return 0;
    }
    if (!lua_checkstack(L, 4))
        luaL_error(L, "Lua stack overflow");
    path_step *step = &e->path[e->depth++];
    if (shape == SHAPE_ARRAY) {
        dq_buf_putc(e->out, '[');
        for (size_t i = 1; i <= n; i++) {
            step->key = NULL;
            step->index = (lua_Integer)i;
            if (i > 1)
                dq_buf_putc(e->out, ',');
            lua_rawgeti(L, idx, (int)i);
            int rc = encode_value(e, lua_gettop(L), 0);
            lua_pop(L, 1);
            if (rc != 0)
                return -1;
        }
        dq_buf_putc(e->out, ']');
        e->depth--;
        return 0;
    }
    /* Object: collect the keys on the key stack (above the caller's), sort, write. */
    size_t base = e->keys->len / sizeof(key_ref);
    if (dq_buf_reserve(e->keys, n * sizeof(key_ref)) != DQ_OK)
        luaL_error(L, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        key_ref k;
        k.key = lua_tolstring(L, -1, &k.len);   /* anchored by the table */
        dq_buf_put(e->keys, &k, sizeof k);
    }
    key_ref *keys = (key_ref *)(void *)e->keys->data + base;
    qsort(keys, n, sizeof(key_ref), key_cmp);
    dq_buf_putc(e->out, '{');
    for (size_t i = 0; i < n; i++) {
        key_ref k = ((key_ref *)(void *)e->keys->data)[base + i];   /* data may move */
        step->key = k.key;
        step->len = k.len;
        if (i > 0)
            dq_buf_putc(e->out, ',');
        size_t bad;
        if (dq_json_string(e->out, k.key, k.len, &bad) != DQ_OK) {
            e->depth--;   /* the key itself is at fault: name its table */
            encode_fail(e, "key is not valid UTF-8 (byte %zu)", bad);
            e->keys->len = base * sizeof(key_ref);
            return -1;
        }
        dq_buf_putc(e->out, ':');
        lua_pushlstring(L, k.key, k.len);
        lua_rawget(L, idx);
        int rc = encode_value(e, lua_gettop(L), 0);
        lua_pop(L, 1);
        if (rc != 0) {
            e->keys->len = base * sizeof(key_ref);
            return -1;
        }
    }
    e->keys->len = base * sizeof(key_ref);
    dq_buf_putc(e->out, '}');
    e->depth--;
    return 0;
}

static int encode_value(encoder *e, int idx, int empty_as_array)
{
    lua_State *L = e->L;
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t n, bad;
        const char *s = lua_tolstring(L, idx, &n);
        if (dq_json_string(e->out, s, n, &bad) != DQ_OK) {
            encode_fail(e, "string is not valid UTF-8 (byte %zu)", bad);
            return -1;
        }
        return 0;
    }
    case LUA_TNUMBER: {
        double v = lua_tonumber(L, idx);
        if (dq_json_number(e->out, v) != DQ_OK) {
            encode_fail(e, "%s has no JSON form", isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf");
            return -1;
        }
        return 0;
    }
    case LUA_TBOOLEAN:
        dq_buf_puts(e->out, lua_toboolean(L, idx) ? "true" : "false");
        return 0;
    case LUA_TTABLE:
        return encode_table(e, idx, empty_as_array);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {   /* cjson.null */
            dq_buf_puts(e->out, "null");
            return 0;
        }
        /* fall through */
    default:
        encode_fail(e, "a %s cannot be sent as JSON", luaL_typename(L, idx));
        return -1;
    }
}

/* Encodes the args array (idx) or kwargs object (idx, may be nil) into out. Returns 0,
 * or -1 with the reason in err. */
static int encode_root(lua_State *L, scratch *s, int idx, int is_kwargs, dq_buf *out,
                       char *err, size_t errlen)
{
    encoder e;
    e.L = L;
    e.out = out;
    e.keys = &s->keys;
    e.root = is_kwargs ? "kwargs" : "args";
    e.depth = 0;
    e.err[0] = '\0';
    dq_buf_reset(out);
    s->keys.len = 0;
    idx = lmod_absindex(L, idx);
    if (is_kwargs && lua_isnoneornil(L, idx)) {
        dq_buf_puts(out, "{}");
        return 0;
    }
    int rc = encode_value(&e, idx, !is_kwargs);
    if (rc == 0 && out->len > 0 && out->data[0] != (is_kwargs ? '{' : '[')) {
        snprintf(e.err, sizeof e.err, "%s must be %s", e.root,
                 is_kwargs ? "a table with string keys" : "an array (a table with keys 1..n)");
        rc = -1;
    }
    if (rc == 0 && out->failed)
        luaL_error(L, "out of memory");
    if (rc != 0)
        snprintf(err, errlen, "%s", e.err);
    return rc;
}

/* ---- building one message ------------------------------------------------------------ */

/* Pushes t[key] without metamethods: a string read this way stays anchored by t after
 * it is popped, so its pointer may be kept for the rest of the call. */
static void raw_field(lua_State *L, int idx, const char *key)
{
    idx = lmod_absindex(L, idx);
    lua_pushstring(L, key);
    lua_rawget(L, idx);
}

typedef struct enqueue_opts {
    int delayed;
    int64_t delay_ms;
    const char *dedupe_key;   /* NULL: no duplicate suppression */
    size_t dedupe_len;
    int kwargs_idx;           /* 0: none */
} enqueue_opts;

static const char *const ENQUEUE_KEYS[] = {"delay_ms", "dedupe", "kwargs", NULL};

/* Reads the enqueue options at idx; args_idx is the args table (for dedupe = true). */
static void read_enqueue_opts(lua_State *L, int idx, int args_idx, enqueue_opts *o,
                              const char *what)
{
    memset(o, 0, sizeof *o);
    idx = lmod_absindex(L, idx);
    args_idx = lmod_absindex(L, args_idx);
    lmod_check_options(L, idx, ENQUEUE_KEYS, what);
    if (!lua_istable(L, idx))
        return;
    raw_field(L, idx, "delay_ms");
    if (!lua_isnil(L, -1)) {
        double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
        if (d != floor(d) || d < 0 || d > (double)MAX_DELAY_MS)
            luaL_error(L, "%s: delay_ms must be an integer number of milliseconds in "
                          "0..%d (7 days)", what, (int)MAX_DELAY_MS);
        o->delayed = 1;
        o->delay_ms = (int64_t)d;
    }
    lua_pop(L, 1);
    raw_field(L, idx, "dedupe");
    if (lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_rawgeti(L, args_idx, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: dedupe = true takes the job key from args[1], which must be a "
                          "string (got %s)", what, luaL_typename(L, -1));
    } else if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING &&
               !(lua_type(L, -1) == LUA_TBOOLEAN)) {
        luaL_error(L, "%s: dedupe must be a job key (string) or true, got %s", what,
                   luaL_typename(L, -1));
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
        o->dedupe_key = lua_tolstring(L, -1, &o->dedupe_len);   /* anchored by opts/args */
        if (o->dedupe_len == 0 || o->dedupe_len > JOB_KEY_MAX)
            luaL_error(L, "%s: the dedupe key must be 1..%d bytes", what, JOB_KEY_MAX);
    }
    lua_pop(L, 1);
    raw_field(L, idx, "kwargs");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "%s: kwargs must be a table, got %s", what, luaL_typename(L, -1));
        o->kwargs_idx = idx;   /* read again by field when encoding */
    }
    lua_pop(L, 1);
}

/* One message ready to send. */
typedef struct prepared {
    char list_queue[QUEUE_MAX + 4];   /* "<q>" or "<q>.DQ" */
    size_t list_queue_len;
    char rid[DQ_UUID_LEN + 1];
    char mid[DQ_UUID_LEN + 1];
    size_t payload_off, payload_len;  /* in scratch.payload */
} prepared;

/*
 * Encodes args/kwargs, makes the ids (random, or derived from the dedupe key), builds the
 * JSON onto the end of s->payload and validates it against the §7 rules. `random` holds
 * 32 bytes from the OS random source. Returns 0, or -1 with the reason in err (nothing to
 * send).
 */
static int prepare_message(lua_State *L, scratch *s, const char *queue, size_t qlen,
                           const char *actor, size_t alen, int args_idx, const enqueue_opts *o,
                           const unsigned char random[32], prepared *p, char *err,
                           size_t errlen)
{
    char why[400];
    if (encode_root(L, s, args_idx, 0, &s->args, why, sizeof why) != 0) {
        snprintf(err, errlen, "message not sent: %s", why);
        return -1;
    }
    if (o->kwargs_idx) {
        raw_field(L, o->kwargs_idx, "kwargs");
        int rc = encode_root(L, s, -1, 1, &s->kwargs, why, sizeof why);
        lua_pop(L, 1);
        if (rc != 0) {
            snprintf(err, errlen, "message not sent: %s", why);
            return -1;
        }
    } else {
        dq_buf_reset(&s->kwargs);
        dq_buf_puts(&s->kwargs, "{}");
    }
    memcpy(p->list_queue, queue, qlen);
    p->list_queue_len = qlen;
    if (o->delayed) {
        memcpy(p->list_queue + qlen, ".DQ", 3);
        p->list_queue_len += 3;
    }
    p->list_queue[p->list_queue_len] = '\0';
    dq_uuid4_format(random, p->mid);
    if (o->dedupe_key)
        dq_dedupe_id(queue, qlen, o->dedupe_key, o->dedupe_len, p->rid);
    else
        dq_uuid4_format(random + 16, p->rid);

    dq_message m;
    memset(&m, 0, sizeof m);
    m.queue_name = p->list_queue;
    m.queue_name_len = p->list_queue_len;
    m.actor_name = actor;
    m.actor_name_len = alen;
    m.args_json = s->args.data;
    m.args_json_len = s->args.len;
    m.kwargs_json = s->kwargs.data;
    m.kwargs_json_len = s->kwargs.len;
    m.redis_message_id = p->rid;
    m.message_id = p->mid;
    m.timestamp_ms = dq_now_ms();
    m.has_eta = o->delayed;
    m.eta_ms = m.timestamp_ms + o->delay_ms;

    p->payload_off = s->payload.len;
    int rc = dq_message_build(&s->payload, &m, why, sizeof why);
    if (rc == DQ_ENOMEM)
        luaL_error(L, "out of memory");
    if (rc != DQ_OK) {
        s->payload.len = p->payload_off;
        snprintf(err, errlen, "message not sent: %s", why);
        return -1;
    }
    p->payload_len = s->payload.len - p->payload_off;
    if (dq_message_validate(s->payload.data + p->payload_off, p->payload_len, p->list_queue,
                            p->list_queue_len, p->rid, DQ_UUID_LEN, NULL, why,
                            sizeof why) != DQ_OK) {
        s->payload.len = p->payload_off;
        snprintf(err, errlen, "message not sent: it fails validation: %s", why);
        return -1;
    }
    return 0;
}

static void check_actor(lua_State *L, int idx, const char **actor, size_t *len,
                        const char *what)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: actor name must be a string, got %s", what, luaL_typename(L, idx));
    *actor = lua_tolstring(L, idx, len);
    if (*len == 0 || *len > 256)
        luaL_error(L, "%s: actor name must be 1..256 bytes", what);
}

static void os_random(lua_State *L, void *buf, size_t n)
{
    if (rng_os_bytes(buf, n) != 0)
        luaL_error(L, "cannot read the operating system's random source: %s", strerror(errno));
}

/* ---- sending ----------------------------------------------------------------------- */

/* Runs EVALSHA of script `which` with the given keys and args, reloading the script once
 * when the server has forgotten it (NOSCRIPT). Leaves the reply in b->reply. */
static redisReply *eval_script(lua_State *L, broker *b, int which, int nkeys,
                               const char **keys, int nargs, const char **args,
                               const size_t *arglens)
{
    const char *argv[16];
    size_t lens[16];
    char numkeys[8];
    for (int attempt = 0; attempt < 2; attempt++) {
        int argc = 0;
        snprintf(numkeys, sizeof numkeys, "%d", nkeys);
        argv[argc] = "EVALSHA";
        lens[argc++] = 7;
        argv[argc] = b->sha[which];
        lens[argc++] = 40;
        argv[argc] = numkeys;
        lens[argc++] = strlen(numkeys);
        for (int i = 0; i < nkeys; i++) {
            argv[argc] = keys[i];
            lens[argc++] = strlen(keys[i]);
        }
        for (int i = 0; i < nargs; i++) {
            argv[argc] = args[i];
            lens[argc++] = arglens ? arglens[i] : strlen(args[i]);
        }
        append_argv(L, b, argc, argv, lens);
        redisReply *r = read_reply(b, SCRIPT_NAMES[which]);
        if (!r)
            return NULL;
        if (attempt == 0 && r->type == REDIS_REPLY_ERROR && r->len >= 8 &&
            strncmp(r->str, "NOSCRIPT", 8) == 0) {
            const char *load[3] = {"SCRIPT", "LOAD", SCRIPTS[which]};
            size_t loadlens[3] = {6, 4, strlen(SCRIPTS[which])};
            append_argv(L, b, 3, load, loadlens);
            redisReply *sr = read_reply(b, "SCRIPT LOAD");
            if (!sr)
                return NULL;
            if (expect_type(b, sr, REDIS_REPLY_STRING, "SCRIPT LOAD") != 0 || sr->len != 40)
                return NULL;
            memcpy(b->sha[which], sr->str, 40);
            continue;
        }
        return r;
    }
    return NULL;   /* not reached */
}

/* MULTI; HSET <hash> rid payload; RPUSH <list> rid; EXEC. Pushes the results. */
static int send_plain(lua_State *L, broker *b, const prepared *p)
{
    char list[KEY_MAX + 1], hash[KEY_MAX + 1];
    make_key(b, p->list_queue, p->list_queue_len, "", list);
    make_key(b, p->list_queue, p->list_queue_len, ".msgs", hash);
    const char *payload = b->s.payload.data + p->payload_off;
    const char *multi[1] = {"MULTI"};
    size_t multi_l[1] = {5};
    const char *hset[4] = {"HSET", hash, p->rid, payload};
    size_t hset_l[4] = {4, strlen(hash), DQ_UUID_LEN, p->payload_len};
    const char *rpush[3] = {"RPUSH", list, p->rid};
    size_t rpush_l[3] = {5, strlen(list), DQ_UUID_LEN};
    const char *exec[1] = {"EXEC"};
    size_t exec_l[1] = {4};
    append_argv(L, b, 1, multi, multi_l);
    append_argv(L, b, 4, hset, hset_l);
    append_argv(L, b, 3, rpush, rpush_l);
    append_argv(L, b, 1, exec, exec_l);

    static const char *const steps[3] = {"MULTI", "HSET (queued)", "RPUSH (queued)"};
    static const int types[3] = {REDIS_REPLY_STATUS, REDIS_REPLY_STATUS, REDIS_REPLY_STATUS};
    for (int i = 0; i < 3; i++) {
        redisReply *r = read_reply(b, steps[i]);
        if (!r)
            return push_failure(L, b);
        if (expect_type(b, r, types[i], steps[i]) != 0) {
            drain_replies(b, 3 - i);   /* EXEC then answers EXECABORT: nothing was written */
            return push_failure(L, b);
        }
    }
    redisReply *r = read_reply(b, "EXEC");
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_ARRAY, "EXEC") != 0)
        return push_failure(L, b);
    if (r->elements != 2) {
        set_failure(b, "protocol", "%s: EXEC returned %zu replies for 2 commands", b->display,
                    (size_t)r->elements);
        return push_failure(L, b);
    }
    redisReply *hr = r->element[0], *pr = r->element[1];
    int hset_ok = hr->type == REDIS_REPLY_INTEGER;
    int rpush_ok = pr->type == REDIS_REPLY_INTEGER;
    if (hset_ok && rpush_ok) {
        if (hr->integer != 1)
            log_warning("broker: HSET %s %s replaced an existing payload", hash, p->rid);
        lua_pushlstring(L, p->rid, DQ_UUID_LEN);
        lua_pushlstring(L, p->mid, DQ_UUID_LEN);
        lua_pushliteral(L, "enqueued");
        free_reply(b);
        return 3;
    }
    /* Redis ran both commands and one failed (a key of the wrong type): undo the other,
     * so no payload is left without its id and no id without its payload. */
    if (!hset_ok)
        expect_type(b, hr, REDIS_REPLY_INTEGER, "HSET");
    else
        expect_type(b, pr, REDIS_REPLY_INTEGER, "RPUSH");
    const char *code = b->fail_code;
    char saved[sizeof b->fail_msg];
    memcpy(saved, b->fail_msg, sizeof saved);
    if (hset_ok) {
        const char *hdel[3] = {"HDEL", hash, p->rid};
        size_t hdel_l[3] = {4, strlen(hash), DQ_UUID_LEN};
        append_argv(L, b, 3, hdel, hdel_l);
        read_reply(b, "HDEL (undo)");
    } else if (rpush_ok) {
        const char *lrem[4] = {"LREM", list, "0", p->rid};
        size_t lrem_l[4] = {4, strlen(list), 1, DQ_UUID_LEN};
        append_argv(L, b, 4, lrem, lrem_l);
        read_reply(b, "LREM (undo)");
    }
    free_reply(b);
    b->fail_code = code;
    memcpy(b->fail_msg, saved, sizeof saved);
    return push_failure(L, b);
}

/* Reads the message_id of a stored payload (for a duplicate). NULL when unreadable. */
static int payload_message_id(const char *json, size_t len, const char *rid,
                              char out[DQ_UUID_LEN + 1])
{
    dq_message_info info;
    if (dq_message_validate(json, len, NULL, 0, rid, DQ_UUID_LEN, &info, NULL, 0) != DQ_OK)
        return -1;
    memcpy(out, info.message_id, DQ_UUID_LEN + 1);
    return 0;
}

/* The four keys of the dedupe script for canonical queue q. */
typedef struct dedupe_keys {
    char msgs[KEY_MAX + 1], dq_msgs[KEY_MAX + 1], list[KEY_MAX + 1], hash[KEY_MAX + 1];
    const char *ptrs[4];
} dedupe_keys;

static void make_dedupe_keys(const broker *b, const char *queue, size_t qlen,
                             const prepared *p, dedupe_keys *k)
{
    make_key(b, queue, qlen, ".msgs", k->msgs);
    make_key(b, queue, qlen, ".DQ.msgs", k->dq_msgs);
    make_key(b, p->list_queue, p->list_queue_len, "", k->list);
    make_key(b, p->list_queue, p->list_queue_len, ".msgs", k->hash);
    k->ptrs[0] = k->msgs;
    k->ptrs[1] = k->dq_msgs;
    k->ptrs[2] = k->list;
    k->ptrs[3] = k->hash;
}

/* Interprets the dedupe script's reply: 1 written, 0 duplicate (mid of the stored message
 * in dup_mid, or "" when unreadable), -1 failure recorded. */
static int dedupe_result(broker *b, redisReply *r, const char *rid, char dup_mid[DQ_UUID_LEN + 1])
{
    if (expect_type(b, r, REDIS_REPLY_ARRAY, SCRIPT_NAMES[SCRIPT_DEDUPE]) != 0)
        return -1;
    if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_INTEGER) {
        set_failure(b, "protocol", "%s: unexpected reply shape from the dedupe script",
                    b->display);
        return -1;
    }
    if (r->element[0]->integer == 1)
        return 1;
    dup_mid[0] = '\0';
    redisReply *old = r->element[1];
    if (old->type == REDIS_REPLY_STRING)
        payload_message_id(old->str, old->len, rid, dup_mid);
    return 0;
}

static int send_dedupe(lua_State *L, broker *b, const char *queue, size_t qlen,
                       const prepared *p)
{
    dedupe_keys k;
    make_dedupe_keys(b, queue, qlen, p, &k);
    const char *args[2] = {p->rid, b->s.payload.data + p->payload_off};
    size_t arglens[2] = {DQ_UUID_LEN, p->payload_len};
    redisReply *r = eval_script(L, b, SCRIPT_DEDUPE, 4, k.ptrs, 2, args, arglens);
    if (!r)
        return push_failure(L, b);
    char dup_mid[DQ_UUID_LEN + 1];
    int rc = dedupe_result(b, r, p->rid, dup_mid);
    free_reply(b);
    if (rc < 0)
        return push_failure(L, b);
    lua_pushlstring(L, p->rid, DQ_UUID_LEN);
    if (rc == 1) {
        lua_pushlstring(L, p->mid, DQ_UUID_LEN);
        lua_pushliteral(L, "enqueued");
    } else {
        if (dup_mid[0])
            lua_pushlstring(L, dup_mid, DQ_UUID_LEN);
        else
            lua_pushnil(L);
        lua_pushliteral(L, "duplicate");
    }
    return 3;
}

/* b:enqueue(queue|nil, actor, args[, opts]) */
static int broker_enqueue(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen, alen;
    const char *queue = check_queue(L, b, 2, &qlen, 0, "broker:enqueue");
    const char *actor;
    check_actor(L, 3, &actor, &alen, "broker:enqueue");
    if (!lua_istable(L, 4))
        luaL_error(L, "broker:enqueue: args must be a table (an array), got %s",
                   luaL_typename(L, 4));
    enqueue_opts o;
    read_enqueue_opts(L, 5, 4, &o, "broker:enqueue");

    unsigned char random[32];
    os_random(L, random, o.dedupe_key ? 16 : 32);
    prepared p;
    char err[600];
    dq_buf_reset(&b->s.payload);
    if (prepare_message(L, &b->s, queue, qlen, actor, alen, 4, &o, random, &p, err,
                        sizeof err) != 0)
        return lmod_fail_code(L, "invalid", "%s", err);
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    if (o.dedupe_key)
        return send_dedupe(L, b, queue, qlen, &p);
    return send_plain(L, b, &p);
}

/* ---- batches -------------------------------------------------------------------------- */

enum { ITEM_READY, ITEM_INVALID, ITEM_ENQUEUED, ITEM_DUPLICATE, ITEM_FAILED };
static const char *const ITEM_STATUS[] = {"ready", "invalid", "enqueued", "duplicate", "failed"};

enum { UNDO_HDEL = 1, UNDO_LREM = 2 };

typedef struct batch_item {
    int state;
    int dedupe;
    int undo;                         /* UNDO_*: the half of a failed chunk that succeeded */
    int group;                        /* plain items: index into the groups */
    const char *queue;                /* canonical queue (anchored by the items table) */
    size_t queue_len;
    prepared p;
    char dup_mid[DQ_UUID_LEN + 1];
    size_t err_off;                   /* into scratch.text, when invalid or failed */
} batch_item;

typedef struct batch_group {
    char list_queue[QUEUE_MAX + 4];
    size_t list_queue_len;
    size_t first, count;              /* its plain items, in order: see order[] */
} batch_group;

static const char *const ITEM_KEYS[] = {"queue", "actor", "args", "opts", NULL};

static void item_error(scratch *s, batch_item *it, int state, const char *msg)
{
    it->state = state;
    it->err_off = s->text.len;
    dq_buf_put(&s->text, msg, strlen(msg) + 1);   /* keep the NUL */
}

/* Marks every item of group g (chunk [from, to) of its order) failed with the current
 * failure message. */
static void fail_items(broker *b, batch_item *items, const size_t *order, size_t from,
                       size_t to)
{
    for (size_t i = from; i < to; i++)
        item_error(&b->s, &items[order[i]], ITEM_FAILED, b->fail_msg);
}

/* b:enqueue_many(items) -> results, n_enqueued */
static int broker_enqueue_many(lua_State *L)
{
    broker *b = check_broker(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = lua_objlen(L, 2);
    scratch *s = &b->s;
    dq_buf_reset(&s->payload);
    dq_buf_reset(&s->text);
    batch_item *items = scratch_array(L, &s->items, n ? n : 1, sizeof(batch_item));
    memset(items, 0, (n ? n : 1) * sizeof(batch_item));
    size_t ngroups = 0;
    /* Group order: for plain items, order[] lists item indices group by group. */
    unsigned char random[32 * 64];
    size_t random_left = 0;
    char what[64], err[600];

    /* 1. Build and validate every message (misuse raises before anything is sent). */
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        snprintf(what, sizeof what, "broker:enqueue_many: item %zu", i + 1);
        lua_rawgeti(L, 2, (int)i + 1);   /* stack: b items item */
        int item = lua_gettop(L);
        if (!lua_istable(L, item))
            luaL_error(L, "%s must be a table {queue=, actor=, args=, opts=}, got %s", what,
                       luaL_typename(L, item));
        lmod_check_options(L, item, ITEM_KEYS, what);
        raw_field(L, item, "queue");
        if (i > 0 && lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1) == items[i - 1].queue) {
            it->queue = items[i - 1].queue;   /* the same interned string: already checked */
            it->queue_len = items[i - 1].queue_len;
        } else {
            it->queue = check_queue(L, b, lua_gettop(L), &it->queue_len, 0, what);
        }
        raw_field(L, item, "actor");
        const char *actor;
        size_t alen;
        check_actor(L, lua_gettop(L), &actor, &alen, what);
        raw_field(L, item, "args");
        int args_idx = lua_gettop(L);
        if (!lua_istable(L, args_idx))
            luaL_error(L, "%s: args must be a table (an array), got %s", what,
                       luaL_typename(L, args_idx));
        raw_field(L, item, "opts");
        enqueue_opts o;
        read_enqueue_opts(L, lua_gettop(L), args_idx, &o, what);
        if (random_left < 32) {
            os_random(L, random, sizeof random);
            random_left = sizeof random;
        }
        const unsigned char *rnd = random + sizeof random - random_left;
        random_left -= 32;
        it->dedupe = o.dedupe_key != NULL;
        if (prepare_message(L, s, it->queue, it->queue_len, actor, alen, args_idx, &o, rnd,
                            &it->p, err, sizeof err) != 0) {
            item_error(s, it, ITEM_INVALID, err);
        } else {
            it->state = ITEM_READY;
        }
        lua_settop(L, 2);   /* queue, actor and the dedupe key stay anchored by the item */
    }

    /* 2. Group the plain items by the list they go to, keeping their order. */
    size_t *order = scratch_array(L, &s->argv, n ? n : 1, sizeof(size_t));
    batch_group *groups = scratch_array(L, &s->groups, n ? n : 1, sizeof(batch_group));
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        if (it->state != ITEM_READY || it->dedupe)
            continue;
        size_t g = 0;
        while (g < ngroups && !(groups[g].list_queue_len == it->p.list_queue_len &&
                                memcmp(groups[g].list_queue, it->p.list_queue,
                                       it->p.list_queue_len) == 0))
            g++;
        if (g == ngroups) {
            memcpy(groups[g].list_queue, it->p.list_queue, it->p.list_queue_len + 1);
            groups[g].list_queue_len = it->p.list_queue_len;
            groups[g].count = 0;
            ngroups++;
        }
        it->group = (int)g;
        groups[g].count++;
    }
    size_t pos = 0;
    for (size_t g = 0; g < ngroups; g++) {
        groups[g].first = pos;
        pos += groups[g].count;
        groups[g].count = 0;
    }
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        if (it->state != ITEM_READY || it->dedupe)
            continue;
        batch_group *gr = &groups[it->group];
        order[gr->first + gr->count++] = i;
    }
    size_t nplain = pos, ndedupe = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].state == ITEM_READY && items[i].dedupe)
            ndedupe++;

    /* 3. One pipeline: MULTI, per group and chunk HSET(all fields) + RPUSH(all ids), EXEC;
     *    then one EVALSHA per dedupe item. Everything is written before any reply is read. */
    if (nplain + ndedupe > 0) {
        if (ensure_connected(L, b) != 0)
            return push_failure(L, b);
        /* argv for the longest command: RPUSH/HSET of BATCH_CHUNK items */
        dq_buf *av = &s->keys;   /* free to reuse: encoding is over */
        size_t maxargs = 2 + 2 * BATCH_CHUNK;
        const char **argv = scratch_array(L, av, maxargs, sizeof(char *) + sizeof(size_t));
        size_t *lens = (size_t *)(void *)(argv + maxargs);
        long nchunks = 0;
        if (nplain > 0) {
            const char *multi[1] = {"MULTI"};
            size_t multi_l[1] = {5};
            append_argv(L, b, 1, multi, multi_l);
            for (size_t g = 0; g < ngroups; g++) {
                char list[KEY_MAX + 1], hash[KEY_MAX + 1];
                make_key(b, groups[g].list_queue, groups[g].list_queue_len, "", list);
                make_key(b, groups[g].list_queue, groups[g].list_queue_len, ".msgs", hash);
                for (size_t c = 0; c < groups[g].count; c += BATCH_CHUNK) {
                    size_t m = groups[g].count - c < BATCH_CHUNK ? groups[g].count - c
                                                                 : BATCH_CHUNK;
                    argv[0] = "HSET";
                    lens[0] = 4;
                    argv[1] = hash;
                    lens[1] = strlen(hash);
                    for (size_t j = 0; j < m; j++) {
                        batch_item *it = &items[order[groups[g].first + c + j]];
                        argv[2 + 2 * j] = it->p.rid;
                        lens[2 + 2 * j] = DQ_UUID_LEN;
                        argv[3 + 2 * j] = s->payload.data + it->p.payload_off;
                        lens[3 + 2 * j] = it->p.payload_len;
                    }
                    append_argv(L, b, (int)(2 + 2 * m), argv, lens);
                    argv[0] = "RPUSH";
                    lens[0] = 5;
                    argv[1] = list;
                    lens[1] = strlen(list);
                    for (size_t j = 0; j < m; j++) {
                        batch_item *it = &items[order[groups[g].first + c + j]];
                        argv[2 + j] = it->p.rid;
                        lens[2 + j] = DQ_UUID_LEN;
                    }
                    append_argv(L, b, (int)(2 + m), argv, lens);
                    nchunks++;
                }
            }
            const char *exec[1] = {"EXEC"};
            size_t exec_l[1] = {4};
            append_argv(L, b, 1, exec, exec_l);
        }
        for (size_t i = 0; i < n; i++) {
            batch_item *it = &items[i];
            if (it->state != ITEM_READY || !it->dedupe)
                continue;
            dedupe_keys k;
            make_dedupe_keys(b, it->queue, it->queue_len, &it->p, &k);
            char numkeys[] = "4";
            const char *ev[9] = {"EVALSHA", b->sha[SCRIPT_DEDUPE], numkeys, k.ptrs[0],
                                 k.ptrs[1], k.ptrs[2], k.ptrs[3], it->p.rid,
                                 s->payload.data + it->p.payload_off};
            size_t evl[9] = {7, 40, 1, strlen(k.ptrs[0]), strlen(k.ptrs[1]), strlen(k.ptrs[2]),
                             strlen(k.ptrs[3]), DQ_UUID_LEN, it->p.payload_len};
            append_argv(L, b, 9, ev, evl);
        }

        /* 4. Replies, in the same order. A broken connection makes the outcome unknown. */
        if (nplain > 0) {
            long queued = 1 + 2 * nchunks;   /* MULTI + each HSET/RPUSH */
            int aborted = 0;
            for (long i = 0; i < queued; i++) {
                redisReply *r = read_reply(b, i == 0 ? "MULTI" : "a queued HSET/RPUSH");
                if (!r)
                    goto lost;
                if (!aborted && expect_type(b, r, REDIS_REPLY_STATUS,
                                            i == 0 ? "MULTI" : "a queued HSET/RPUSH") != 0)
                    aborted = 1;   /* EXEC will answer EXECABORT: nothing is written */
            }
            redisReply *r = read_reply(b, "EXEC");
            if (!r)
                goto lost;
            if (aborted || expect_type(b, r, REDIS_REPLY_ARRAY, "EXEC") != 0 ||
                r->elements != (size_t)(2 * nchunks)) {
                if (!aborted && r->type == REDIS_REPLY_ARRAY)
                    set_failure(b, "protocol", "%s: EXEC returned %zu replies for %ld commands",
                                b->display, (size_t)r->elements, 2 * nchunks);
                for (size_t g = 0; g < ngroups; g++)
                    fail_items(b, items, order, groups[g].first,
                               groups[g].first + groups[g].count);
            } else {
                /* Each chunk: HSET then RPUSH. Redis runs both even when one fails (a key
                 * of the wrong type); the other is undone below. */
                long e = 0;
                for (size_t g = 0; g < ngroups; g++) {
                    for (size_t c = 0; c < groups[g].count; c += BATCH_CHUNK, e += 2) {
                        size_t m = groups[g].count - c < BATCH_CHUNK ? groups[g].count - c
                                                                     : BATCH_CHUNK;
                        redisReply *hr = r->element[e], *pr = r->element[e + 1];
                        size_t from = groups[g].first + c, to = from + m;
                        int hset_ok = hr->type == REDIS_REPLY_INTEGER;
                        int rpush_ok = pr->type == REDIS_REPLY_INTEGER;
                        if (hset_ok && rpush_ok) {
                            for (size_t j = from; j < to; j++)
                                items[order[j]].state = ITEM_ENQUEUED;
                            continue;
                        }
                        if (!hset_ok)
                            expect_type(b, hr, REDIS_REPLY_INTEGER, "HSET");
                        else
                            expect_type(b, pr, REDIS_REPLY_INTEGER, "RPUSH");
                        fail_items(b, items, order, from, to);
                        for (size_t j = from; j < to; j++)
                            items[order[j]].undo = hset_ok ? UNDO_HDEL : rpush_ok ? UNDO_LREM : 0;
                    }
                }
            }
            free_reply(b);
        }
        size_t retry = 0;
        for (size_t i = 0; i < n; i++) {
            batch_item *it = &items[i];
            if (it->state != ITEM_READY || !it->dedupe)
                continue;
            redisReply *r = read_reply(b, SCRIPT_NAMES[SCRIPT_DEDUPE]);
            if (!r)
                goto lost;
            if (r->type == REDIS_REPLY_ERROR && r->len >= 8 && strncmp(r->str, "NOSCRIPT", 8) == 0) {
                retry++;   /* stays READY: sent again below */
                continue;
            }
            int rc = dedupe_result(b, r, it->p.rid, it->dup_mid);
            if (rc < 0)
                item_error(s, it, ITEM_FAILED, b->fail_msg);
            else
                it->state = rc == 1 ? ITEM_ENQUEUED : ITEM_DUPLICATE;
        }
        free_reply(b);
        /* The server forgot the script (SCRIPT FLUSH): those items were not run. */
        for (size_t i = 0; retry > 0 && i < n; i++) {
            batch_item *it = &items[i];
            if (it->state != ITEM_READY || !it->dedupe)
                continue;
            dedupe_keys k;
            make_dedupe_keys(b, it->queue, it->queue_len, &it->p, &k);
            const char *args[2] = {it->p.rid, s->payload.data + it->p.payload_off};
            size_t arglens[2] = {DQ_UUID_LEN, it->p.payload_len};
            redisReply *r = eval_script(L, b, SCRIPT_DEDUPE, 4, k.ptrs, 2, args, arglens);
            if (!r)
                goto lost;
            int rc = dedupe_result(b, r, it->p.rid, it->dup_mid);
            if (rc < 0)
                item_error(s, it, ITEM_FAILED, b->fail_msg);
            else
                it->state = rc == 1 ? ITEM_ENQUEUED : ITEM_DUPLICATE;
            free_reply(b);
        }
        /* Undo half-written chunks: HDEL payloads whose RPUSH failed, LREM ids whose HSET
         * failed. */
        long undo_cmds = 0;
        for (size_t i = 0; i < n && b->ctx; i++) {
            batch_item *it = &items[i];
            if (it->undo == 0)
                continue;
            char key[KEY_MAX + 1];
            if (it->undo == UNDO_HDEL) {
                make_key(b, it->p.list_queue, it->p.list_queue_len, ".msgs", key);
                const char *a[3] = {"HDEL", key, it->p.rid};
                size_t l[3] = {4, strlen(key), DQ_UUID_LEN};
                append_argv(L, b, 3, a, l);
            } else {
                make_key(b, it->p.list_queue, it->p.list_queue_len, "", key);
                const char *a[4] = {"LREM", key, "0", it->p.rid};
                size_t l[4] = {4, strlen(key), 1, DQ_UUID_LEN};
                append_argv(L, b, 4, a, l);
            }
            undo_cmds++;
        }
        if (undo_cmds > 0 && b->ctx) {
            const char *code = b->fail_code;
            char saved[sizeof b->fail_msg];
            memcpy(saved, b->fail_msg, sizeof saved);
            for (long i = 0; i < undo_cmds; i++)
                if (!read_reply(b, "undo of a half-written batch"))
                    break;
            free_reply(b);
            b->fail_code = code;
            memcpy(b->fail_msg, saved, sizeof saved);
        }
    }

    /* 5. Results, in the order of the items. The field names and status words are
     * pushed once and reused (stack: ... keys[4] statuses[5] results). */
    lua_settop(L, 2);
    static const char *const fields[4] = {"status", "error", "redis_message_id", "message_id"};
    for (int k = 0; k < 4; k++)
        lua_pushstring(L, fields[k]);
    for (int k = 0; k < 5; k++)
        lua_pushstring(L, ITEM_STATUS[k]);
    enum { F_STATUS = 3, F_ERROR, F_RID, F_MID, S_FIRST };
    lua_createtable(L, (int)n, 0);
    int results = lua_gettop(L);
    lua_Integer enqueued = 0;
    for (size_t i = 0; i < n; i++) {
        batch_item *it = &items[i];
        lua_createtable(L, 0, 3);
        lua_pushvalue(L, F_STATUS);
        lua_pushvalue(L, S_FIRST + it->state);
        lua_rawset(L, -3);
        if (it->state == ITEM_FAILED)
            failure_count++;
        if (it->state == ITEM_INVALID || it->state == ITEM_FAILED) {
            lua_pushvalue(L, F_ERROR);
            lua_pushstring(L, s->text.data + it->err_off);
            lua_rawset(L, -3);
        }
        if (it->state != ITEM_INVALID) {
            lua_pushvalue(L, F_RID);
            lua_pushlstring(L, it->p.rid, DQ_UUID_LEN);
            lua_rawset(L, -3);
        }
        const char *mid = it->state == ITEM_ENQUEUED ? it->p.mid
                        : (it->state == ITEM_DUPLICATE && it->dup_mid[0]) ? it->dup_mid
                                                                          : NULL;
        if (mid) {
            lua_pushvalue(L, F_MID);
            lua_pushlstring(L, mid, DQ_UUID_LEN);
            lua_rawset(L, -3);
        }
        if (it->state == ITEM_ENQUEUED)
            enqueued++;
        lua_rawseti(L, results, (int)i + 1);
    }
    lua_pushinteger(L, enqueued);
    return 2;

lost:
    failure_count++;
    return lmod_fail_code(L, b->fail_code,
                          "%s (the batch may be partly written: send it again with dedupe "
                          "to be safe)", b->fail_msg);
}

/* ---- small transactions and scripts with many arguments ------------------------------- */

/* After MULTI, ncmds commands and EXEC were appended: reads the replies and returns the
 * EXEC array (in b->reply) with exactly ncmds elements, or NULL with the failure. */
static redisReply *read_transaction(broker *b, int ncmds, const char *what)
{
    for (int i = 0; i <= ncmds; i++) {
        redisReply *r = read_reply(b, what);
        if (!r)
            return NULL;
        if (expect_type(b, r, REDIS_REPLY_STATUS, what) != 0) {
            drain_replies(b, ncmds - i + 1);
            return NULL;
        }
    }
    redisReply *r = read_reply(b, what);
    if (!r)
        return NULL;
    if (expect_type(b, r, REDIS_REPLY_ARRAY, what) != 0)
        return NULL;
    if (r->elements != (size_t)ncmds) {
        set_failure(b, "protocol", "%s: EXEC returned %zu replies for %d commands", b->display,
                    (size_t)r->elements, ncmds);
        return NULL;
    }
    return r;
}

static void append_simple(lua_State *L, broker *b, const char *a0, const char *a1,
                          const char *a2, const char *a3)
{
    const char *argv[4] = {a0, a1, a2, a3};
    size_t lens[4];
    int argc = 0;
    while (argc < 4 && argv[argc]) {
        lens[argc] = strlen(argv[argc]);
        argc++;
    }
    append_argv(L, b, argc, argv, lens);
}

/* An element of an EXEC reply that must be an integer (or nil when allow_nil). Returns 0
 * and sets *out (nil: -1), or -1 with the failure. */
static int exec_integer(broker *b, const redisReply *e, const char *what, int allow_nil,
                        long long *out)
{
    if (allow_nil && e->type == REDIS_REPLY_NIL) {
        *out = -1;
        return 0;
    }
    if (expect_type(b, e, REDIS_REPLY_INTEGER, what) != 0)
        return -1;
    *out = e->integer;
    return 0;
}

/* ---- inspection ----------------------------------------------------------------------- */

/* b:queue_length(queue|nil) -> n  (LLEN of the list; "<q>.DQ" gives the delay list) */
static int broker_queue_length(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen;
    const char *queue = check_queue(L, b, 2, &qlen, 1, "broker:queue_length");
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char list[KEY_MAX + 1];
    make_key(b, queue, qlen, "", list);
    append_simple(L, b, "LLEN", list, NULL, NULL);
    redisReply *r = read_reply(b, "LLEN");
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_INTEGER, "LLEN") != 0)
        return push_failure(L, b);
    lua_pushinteger(L, (lua_Integer)r->integer);
    free_reply(b);
    return 1;
}

/* b:stats(queue|nil) -> {queued, messages, held, delayed, dead} */
static int broker_stats(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen;
    const char *queue = check_queue(L, b, 2, &qlen, 0, "broker:stats");
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char list[KEY_MAX + 1], hash[KEY_MAX + 1], dq_hash[KEY_MAX + 1], xq[KEY_MAX + 1];
    make_key(b, queue, qlen, "", list);
    make_key(b, queue, qlen, ".msgs", hash);
    make_key(b, queue, qlen, ".DQ.msgs", dq_hash);
    make_key(b, queue, qlen, ".XQ", xq);
    append_simple(L, b, "MULTI", NULL, NULL, NULL);
    append_simple(L, b, "LLEN", list, NULL, NULL);
    append_simple(L, b, "HLEN", hash, NULL, NULL);
    append_simple(L, b, "HLEN", dq_hash, NULL, NULL);
    append_simple(L, b, "ZCARD", xq, NULL, NULL);
    append_simple(L, b, "EXEC", NULL, NULL, NULL);
    redisReply *r = read_transaction(b, 4, "the queue statistics");
    if (!r)
        return push_failure(L, b);
    static const char *const what[4] = {"LLEN", "HLEN", "HLEN (delay queue)", "ZCARD"};
    long long v[4];
    for (int i = 0; i < 4; i++)
        if (exec_integer(b, r->element[i], what[i], 0, &v[i]) != 0)
            return push_failure(L, b);
    free_reply(b);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)v[0]);
    lua_setfield(L, -2, "queued");
    lua_pushinteger(L, (lua_Integer)v[1]);
    lua_setfield(L, -2, "messages");
    lua_pushinteger(L, (lua_Integer)(v[1] > v[0] ? v[1] - v[0] : 0));
    lua_setfield(L, -2, "held");
    lua_pushinteger(L, (lua_Integer)v[2]);
    lua_setfield(L, -2, "delayed");
    lua_pushinteger(L, (lua_Integer)v[3]);
    lua_setfield(L, -2, "dead");
    return 1;
}

/* b:is_waiting(queue|nil, job_key) -> bool, "queued"|"held"|"delayed"|nil
 * Looks for the message enqueued with dedupe = job_key: its derived id in <q>.msgs
 * (then on the list: "queued", or taken by a worker and not acked: "held") or in
 * <q>.DQ.msgs ("delayed"). One MULTI/EXEC, so the answer is a consistent snapshot. */
static int broker_is_waiting(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen, klen;
    const char *queue = check_queue(L, b, 2, &qlen, 0, "broker:is_waiting");
    const char *key = luaL_checklstring(L, 3, &klen);
    if (klen == 0 || klen > JOB_KEY_MAX)
        luaL_error(L, "broker:is_waiting: the job key must be 1..%d bytes", JOB_KEY_MAX);
    char rid[DQ_UUID_LEN + 1];
    dq_dedupe_id(queue, qlen, key, klen, rid);
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char list[KEY_MAX + 1], hash[KEY_MAX + 1], dq_hash[KEY_MAX + 1];
    make_key(b, queue, qlen, "", list);
    make_key(b, queue, qlen, ".msgs", hash);
    make_key(b, queue, qlen, ".DQ.msgs", dq_hash);
    append_simple(L, b, "MULTI", NULL, NULL, NULL);
    append_simple(L, b, "HEXISTS", hash, rid, NULL);
    append_simple(L, b, "HEXISTS", dq_hash, rid, NULL);
    append_simple(L, b, "LPOS", list, rid, NULL);
    append_simple(L, b, "EXEC", NULL, NULL, NULL);
    redisReply *r = read_transaction(b, 3, "is_waiting");
    if (!r)
        return push_failure(L, b);
    long long in_hash, in_dq, pos;
    if (exec_integer(b, r->element[0], "HEXISTS", 0, &in_hash) != 0 ||
        exec_integer(b, r->element[1], "HEXISTS (delay queue)", 0, &in_dq) != 0 ||
        exec_integer(b, r->element[2], "LPOS", 1, &pos) != 0)
        return push_failure(L, b);
    free_reply(b);
    if (in_hash) {
        lua_pushboolean(L, 1);
        lua_pushstring(L, pos >= 0 ? "queued" : "held");
        return 2;
    }
    if (in_dq) {
        lua_pushboolean(L, 1);
        lua_pushliteral(L, "delayed");
        return 2;
    }
    lua_pushboolean(L, 0);
    return 1;
}

/* ---- the consumer side (what a Dramatiq worker does) ---------------------------------- */

static char DECODE_KEY;   /* registry key of cjson.safe.decode */

/* Pushes cjson.safe.decode (loaded once). */
static void push_decoder(lua_State *L)
{
    lua_pushlightuserdata(L, &DECODE_KEY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isfunction(L, -1))
        return;
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1))
        luaL_error(L, "cjson.safe.decode is not a function");
    lua_pushlightuserdata(L, &DECODE_KEY);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

static void make_acks_key(const broker *b, const char *consumer, const char *queue,
                          size_t qlen, char *out)
{
    snprintf(out, KEY_MAX + 1, "%s:__acks__.%s.%.*s", b->ns, consumer, (int)qlen, queue);
}

/* b:fetch(queue|nil, n, consumer_id) -> array of
 *   {redis_message_id=, payload=json|nil, message=decoded|nil, error=why|nil}
 * LPOPs up to n ids, records them in <ns>:__acks__.<consumer>.<queue>, HMGETs their
 * payloads and heartbeats, atomically. `error` is set when the payload is missing or
 * breaks a §7 rule (check against this queue and id); the caller should nack those. */
static int broker_fetch(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen;
    const char *queue = check_queue(L, b, 2, &qlen, 1, "broker:fetch");
    lua_Integer n = luaL_checkinteger(L, 3);
    if (n < 1 || n > FETCH_MAX)
        luaL_error(L, "broker:fetch: n must be in 1..%d", FETCH_MAX);
    const char *consumer = check_consumer(L, 4, "broker:fetch");
    push_decoder(L);
    int decode = lua_gettop(L);
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char list[KEY_MAX + 1], hash[KEY_MAX + 1], acks[KEY_MAX + 1], beats[KEY_MAX + 1];
    make_key(b, queue, qlen, "", list);
    make_key(b, queue, qlen, ".msgs", hash);
    make_acks_key(b, consumer, queue, qlen, acks);
    make_key(b, "__heartbeats__", 14, "", beats);
    char ntext[24], now[24];
    snprintf(ntext, sizeof ntext, "%lld", (long long)n);
    snprintf(now, sizeof now, "%lld", (long long)dq_now_ms());
    const char *keys[4] = {list, hash, acks, beats};
    const char *args[3] = {ntext, now, consumer};
    redisReply *r = eval_script(L, b, SCRIPT_FETCH, 4, keys, 3, args, NULL);
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_ARRAY, "fetch") != 0)
        return push_failure(L, b);
    if (r->elements % 2 != 0) {
        set_failure(b, "protocol", "%s: the fetch script returned %zu elements", b->display,
                    (size_t)r->elements);
        return push_failure(L, b);
    }
    size_t count = r->elements / 2;
    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        redisReply *id = r->element[2 * i], *payload = r->element[2 * i + 1];
        lua_createtable(L, 0, 4);
        if (id->type != REDIS_REPLY_STRING) {
            lua_pushliteral(L, "the queue held an id that is not a string");
            lua_setfield(L, -2, "error");
            lua_rawseti(L, -2, (int)i + 1);
            continue;
        }
        lua_pushlstring(L, id->str, id->len);
        lua_setfield(L, -2, "redis_message_id");
        if (payload->type != REDIS_REPLY_STRING) {
            lua_pushliteral(L, "no payload for this id in the hash (ack it to drop it)");
            lua_setfield(L, -2, "error");
            lua_rawseti(L, -2, (int)i + 1);
            continue;
        }
        lua_pushlstring(L, payload->str, payload->len);
        lua_setfield(L, -2, "payload");
        char why[400];
        if (dq_message_validate(payload->str, payload->len, queue, qlen, id->str, id->len, NULL,
                                why, sizeof why) != DQ_OK) {
            lua_pushstring(L, why);
            lua_setfield(L, -2, "error");
        }
        lua_pushvalue(L, decode);
        lua_pushlstring(L, payload->str, payload->len);
        lua_call(L, 1, 1);
        if (lua_istable(L, -1))
            lua_setfield(L, -2, "message");
        else
            lua_pop(L, 1);
        lua_rawseti(L, -2, (int)i + 1);
    }
    free_reply(b);
    return 1;
}

/* Runs the ack or nack script for one id; pushes true when the id was held by consumer. */
static int ack_or_nack(lua_State *L, int nack)
{
    const char *what = nack ? "broker:nack" : "broker:ack";
    broker *b = check_broker(L, 1);
    size_t qlen, idlen;
    const char *queue = check_queue(L, b, 2, &qlen, 1, what);
    const char *id = luaL_checklstring(L, 3, &idlen);
    if (idlen == 0 || idlen > 200)
        luaL_error(L, "%s: redis message id must be 1..200 bytes", what);
    const char *consumer = check_consumer(L, 4, what);
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char acks[KEY_MAX + 1], hash[KEY_MAX + 1], beats[KEY_MAX + 1], xq[KEY_MAX + 1],
        xq_hash[KEY_MAX + 1], now[24];
    make_acks_key(b, consumer, queue, qlen, acks);
    make_key(b, queue, qlen, ".msgs", hash);
    make_key(b, "__heartbeats__", 14, "", beats);
    size_t canon = dq_queue_canonical_len(queue, qlen);
    make_key(b, queue, canon, ".XQ", xq);
    make_key(b, queue, canon, ".XQ.msgs", xq_hash);
    snprintf(now, sizeof now, "%lld", (long long)dq_now_ms());
    const char *args[3] = {id, now, consumer};
    size_t arglens[3] = {idlen, strlen(now), strlen(consumer)};
    redisReply *r;
    if (nack) {
        const char *keys[5] = {acks, hash, xq, xq_hash, beats};
        r = eval_script(L, b, SCRIPT_NACK, 5, keys, 3, args, arglens);
    } else {
        const char *keys[3] = {acks, hash, beats};
        r = eval_script(L, b, SCRIPT_ACK, 3, keys, 3, args, arglens);
    }
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_INTEGER, nack ? "nack" : "ack") != 0)
        return push_failure(L, b);
    lua_pushboolean(L, r->integer == 1);
    free_reply(b);
    return 1;
}

/* b:ack(queue|nil, redis_id, consumer_id) -> true, or false when it was not held */
static int broker_ack(lua_State *L)
{
    return ack_or_nack(L, 0);
}

/* b:nack(queue|nil, redis_id, consumer_id) -> bool: dead-letters to <q>.XQ */
static int broker_nack(lua_State *L)
{
    return ack_or_nack(L, 1);
}

/* b:requeue(queue|nil, consumer_id[, ids]) -> n
 * Puts the consumer's unacked ids (all of them, or those listed) back at the end of the
 * queue, as Dramatiq does for a worker that stops or dies. */
static int broker_requeue(lua_State *L)
{
    broker *b = check_broker(L, 1);
    size_t qlen;
    const char *queue = check_queue(L, b, 2, &qlen, 1, "broker:requeue");
    const char *consumer = check_consumer(L, 3, "broker:requeue");
    size_t nids = 0;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        nids = lua_objlen(L, 4);
        if (nids > 100000)
            luaL_error(L, "broker:requeue: at most 100000 ids per call");
    }
    /* EVALSHA sha 3 acks list hash ids... : argv in scratch (anchored strings) */
    size_t argc = 6 + nids;
    const char **argv = scratch_array(L, &b->s.argv, argc, sizeof(char *) + sizeof(size_t));
    size_t *lens = (size_t *)(void *)(argv + argc);
    for (size_t i = 0; i < nids; i++) {
        lua_rawgeti(L, 4, (int)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "broker:requeue: ids[%d] must be a string", (int)i + 1);
        argv[6 + i] = lua_tolstring(L, -1, &lens[6 + i]);   /* anchored by the ids table */
        lua_pop(L, 1);
    }
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char acks[KEY_MAX + 1], list[KEY_MAX + 1], hash[KEY_MAX + 1];
    make_acks_key(b, consumer, queue, qlen, acks);
    make_key(b, queue, qlen, "", list);
    make_key(b, queue, qlen, ".msgs", hash);
    for (int attempt = 0; attempt < 2; attempt++) {
        argv[0] = "EVALSHA";
        argv[1] = b->sha[SCRIPT_REQUEUE];
        argv[2] = "3";
        argv[3] = acks;
        argv[4] = list;
        argv[5] = hash;
        for (int i = 0; i < 6; i++)
            lens[i] = strlen(argv[i]);
        if (redisAppendCommandArgv(b->ctx, (int)argc, argv, lens) != REDIS_OK)
            luaL_error(L, "out of memory formatting a Redis command");
        redisReply *r = read_reply(b, "requeue");
        if (!r)
            return push_failure(L, b);
        if (attempt == 0 && r->type == REDIS_REPLY_ERROR && r->len >= 8 &&
            strncmp(r->str, "NOSCRIPT", 8) == 0) {
            append_simple(L, b, "SCRIPT", "LOAD", SCRIPTS[SCRIPT_REQUEUE], NULL);
            redisReply *sr = read_reply(b, "SCRIPT LOAD");
            if (!sr)
                return push_failure(L, b);
            if (expect_type(b, sr, REDIS_REPLY_STRING, "SCRIPT LOAD") != 0 || sr->len != 40)
                return push_failure(L, b);
            memcpy(b->sha[SCRIPT_REQUEUE], sr->str, 40);
            continue;
        }
        if (expect_type(b, r, REDIS_REPLY_INTEGER, "requeue") != 0)
            return push_failure(L, b);
        lua_pushinteger(L, (lua_Integer)r->integer);
        free_reply(b);
        return 1;
    }
    return push_failure(L, b);
}

/* b:heartbeat(consumer_id) -> true: ZADD <ns>:__heartbeats__ now consumer */
static int broker_heartbeat(lua_State *L)
{
    broker *b = check_broker(L, 1);
    const char *consumer = check_consumer(L, 2, "broker:heartbeat");
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    char beats[KEY_MAX + 1], now[24];
    make_key(b, "__heartbeats__", 14, "", beats);
    snprintf(now, sizeof now, "%lld", (long long)dq_now_ms());
    const char *argv[4] = {"ZADD", beats, now, consumer};
    size_t lens[4] = {4, strlen(beats), strlen(now), strlen(consumer)};
    append_argv(L, b, 4, argv, lens);
    redisReply *r = read_reply(b, "ZADD");
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_INTEGER, "ZADD") != 0)
        return push_failure(L, b);
    free_reply(b);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- connection-level methods -------------------------------------------------------- */

/* b:ping() -> seconds of the round trip (including a reconnection, if one was needed) */
static int broker_ping(lua_State *L)
{
    broker *b = check_broker(L, 1);
    double t0 = host_now();
    if (ensure_connected(L, b) != 0)
        return push_failure(L, b);
    append_simple(L, b, "PING", NULL, NULL, NULL);
    redisReply *r = read_reply(b, "PING");
    if (!r)
        return push_failure(L, b);
    if (expect_type(b, r, REDIS_REPLY_STATUS, "PING") != 0)
        return push_failure(L, b);
    free_reply(b);
    lua_pushnumber(L, host_now() - t0);
    return 1;
}

/* b:info() -> {url, namespace, queue, connected, connects, connection_failures,
 *              timeout, connect_timeout, last_error} */
static int broker_info(lua_State *L)
{
    broker *b = luaL_checkudata(L, 1, BROKER_TYPE);
    lua_createtable(L, 0, 9);
    lua_pushstring(L, b->display);
    lua_setfield(L, -2, "url");
    lua_pushstring(L, b->ns);
    lua_setfield(L, -2, "namespace");
    lua_pushstring(L, b->queue);
    lua_setfield(L, -2, "queue");
    lua_pushboolean(L, b->ctx != NULL);
    lua_setfield(L, -2, "connected");
    lua_pushboolean(L, b->closed);
    lua_setfield(L, -2, "closed");
    lua_pushinteger(L, (lua_Integer)b->connects);
    lua_setfield(L, -2, "connects");
    lua_pushinteger(L, (lua_Integer)b->failures);
    lua_setfield(L, -2, "connection_failures");
    lua_pushnumber(L, b->command_timeout);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, b->connect_timeout);
    lua_setfield(L, -2, "connect_timeout");
    if (b->last_error[0]) {
        lua_pushstring(L, b->last_error);
        lua_setfield(L, -2, "last_error");
    }
    return 1;
}

/* b:close(): idempotent; the broker cannot be used afterwards */
static int broker_close(lua_State *L)
{
    broker *b = luaL_checkudata(L, 1, BROKER_TYPE);
    if (!b->closed)
        broker_release(b);
    return 0;
}

static int broker_gc(lua_State *L)
{
    return broker_close(L);
}

static int broker_tostring(lua_State *L)
{
    broker *b = luaL_checkudata(L, 1, BROKER_TYPE);
    if (b->closed)
        lua_pushliteral(L, "loreley.broker (closed)");
    else
        lua_pushfstring(L, "loreley.broker (%s, namespace '%s', %s)", b->display, b->ns,
                        b->ctx ? "connected" : "not connected");
    return 1;
}

/* ---- construction --------------------------------------------------------------------- */

static const char *const CONNECT_KEYS[] = {
    "url", "host", "port", "db", "username", "password", "socket", "namespace", "queue",
    "timeout", "connect_timeout", "backoff", "backoff_max", "lazy", NULL,
};

static double opt_seconds(lua_State *L, int idx, const char *key, double def, double min,
                          double max)
{
    double v = lmod_opt_number(L, idx, key, def);
    if (!(v >= min && v <= max)) {
        char range[64];
        snprintf(range, sizeof range, "[%g, %g]", min, max);
        luaL_error(L, "broker.connect: %s must be a number of seconds in %s", key, range);
    }
    return v;
}

/* Copies a string option into a fixed buffer; raises when it is too long. */
static void opt_copy(lua_State *L, int idx, const char *key, char *out, size_t cap,
                     int *present)
{
    const char *v = lmod_opt_string(L, idx, key, NULL);
    if (!v)
        return;
    if (strlen(v) >= cap)
        luaL_error(L, "broker.connect: option '%s' is longer than %d bytes", key, (int)cap - 1);
    strcpy(out, v);
    if (present)
        *present = 1;
}

/*
 * Creates a broker from the options table at idx (see CONNECT_KEYS); `label` names the
 * source of a URL in messages ("TASKS_REDIS_URL"). Leaves the broker on the stack and
 * returns 1, or returns nil, message, code.
 */
static int connect_with_options(lua_State *L, int idx, const char *label)
{
    idx = lmod_absindex(L, idx);
    lmod_check_options(L, idx, CONNECT_KEYS, "broker.connect");
    const char *url = lmod_opt_string(L, idx, "url", NULL);
    if (url) {
        static const char *const parts[] = {"host", "port", "db", "username", "password",
                                            "socket", NULL};
        for (const char *const *p = parts; *p; p++) {
            lua_getfield(L, idx, *p);
            int given = !lua_isnil(L, -1);
            lua_pop(L, 1);
            if (given)
                luaL_error(L, "broker.connect: give either url or %s, not both", *p);
        }
    }
    broker *b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    b->closed = 1;   /* until set up: __gc then has nothing to free */
    luaL_getmetatable(L, BROKER_TYPE);
    lua_setmetatable(L, -2);
    b->closed = 0;
    int ud = lua_gettop(L);

    char err[300];
    if (url) {
        if (redis_url_parse(url, &b->url, err, sizeof err) != 0) {
            broker_release(b);
            return lmod_fail_code(L, "config", "%s: %s", label, err);
        }
    } else {
        redis_url_defaults(&b->url);
        opt_copy(L, idx, "host", b->url.host, sizeof b->url.host, NULL);
        lua_Integer port = lmod_opt_integer(L, idx, "port", 6379);
        if (port < 1 || port > 65535)
            luaL_error(L, "broker.connect: port must be in 1..65535");
        b->url.port = (int)port;
        lua_Integer db = lmod_opt_integer(L, idx, "db", 0);
        if (db < 0 || db > 1000000)
            luaL_error(L, "broker.connect: db must be a database number >= 0");
        b->url.db = (long)db;
        opt_copy(L, idx, "username", b->url.username, sizeof b->url.username,
                 &b->url.has_username);
        opt_copy(L, idx, "password", b->url.password, sizeof b->url.password,
                 &b->url.has_password);
        const char *sock = lmod_opt_string(L, idx, "socket", NULL);
        if (sock) {
            if (strlen(sock) > REDIS_URL_PATH_MAX)
                luaL_error(L, "broker.connect: socket path is longer than %d bytes",
                           REDIS_URL_PATH_MAX);
            b->url.is_unix = 1;
            strcpy(b->url.path, sock);
        }
    }
    redis_url_display(&b->url, b->display, sizeof b->display);

    const char *ns = lmod_opt_string(L, idx, "namespace", "loreley");
    check_namespace(L, ns, strlen(ns));
    strcpy(b->ns, ns);
    const char *queue = lmod_opt_string(L, idx, "queue", "loreley.evolution");
    size_t qlen = strlen(queue);
    if (qlen > QUEUE_MAX || !dq_queue_name_valid(queue, qlen) || dq_queue_is_delay(queue, qlen) ||
        dq_queue_is_dead(queue, qlen))
        luaL_error(L, "broker.connect: queue '%s' is not a canonical Dramatiq queue name",
                   queue);
    strcpy(b->queue, queue);
    b->command_timeout = opt_seconds(L, idx, "timeout",
                                     b->url.socket_timeout > 0 ? b->url.socket_timeout : 5.0,
                                     0.001, 3600);
    b->connect_timeout = opt_seconds(
        L, idx, "connect_timeout", b->url.connect_timeout > 0 ? b->url.connect_timeout : 5.0,
        0.001, 3600);
    b->backoff_initial = opt_seconds(L, idx, "backoff", 0.1, 0, 3600);
    b->backoff_max = opt_seconds(L, idx, "backoff_max", 5.0, 0, 3600);
    if (b->backoff_max < b->backoff_initial)
        b->backoff_max = b->backoff_initial;
    int lazy = lmod_opt_boolean(L, idx, "lazy", 0);
    if (!lazy && ensure_connected(L, b) != 0) {
        int n = push_failure(L, b);
        broker_release(b);
        return n;
    }
    lua_pushvalue(L, ud);
    return 1;
}

/* broker.connect(url | opts[, opts]) -> b | nil, msg, code */
static int broker_connect(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) {
        /* connect(url, opts): fold the url into a copy of opts */
        lua_newtable(L);
        int t = lua_gettop(L);
        if (!lua_isnoneornil(L, 2)) {
            if (!lua_istable(L, 2))
                luaL_error(L, "broker.connect: options must be a table, got %s",
                           luaL_typename(L, 2));
            lua_pushnil(L);
            while (lua_next(L, 2)) {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, t);
            }
            lua_getfield(L, t, "url");
            if (!lua_isnil(L, -1))
                luaL_error(L, "broker.connect: the url is given twice");
            lua_pop(L, 1);
        }
        lua_pushvalue(L, 1);
        lua_setfield(L, t, "url");
        return connect_with_options(L, t, "broker.connect: invalid Redis URL");
    }
    if (!lua_istable(L, 1))
        luaL_error(L, "broker.connect: expected a URL or an options table, got %s",
                   luaL_typename(L, 1));
    if (!lua_isnoneornil(L, 2))
        luaL_error(L, "broker.connect: give the options in one table");
    return connect_with_options(L, 1, "broker.connect: invalid Redis URL");
}

/* broker.from_settings(settings[, opts]) -> b | nil, msg, code
 * TASKS_REDIS_URL when set, else TASKS_REDIS_HOST/_PORT/_DB/_PASSWORD; the namespace from
 * TASKS_REDIS_NAMESPACE, the default queue from TASKS_QUEUE_NAME. opts: timeout,
 * connect_timeout, backoff, backoff_max, lazy (and namespace/queue to override). */
static int broker_from_settings(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const allowed[] = {"namespace", "queue", "timeout", "connect_timeout",
                                          "backoff", "backoff_max", "lazy", NULL};
    lmod_check_options(L, 2, allowed, "broker.from_settings");
    lua_newtable(L);
    int t = lua_gettop(L);
    lua_getfield(L, 1, "tasks_redis_url");
    if (lua_type(L, -1) == LUA_TSTRING && lua_objlen(L, -1) > 0) {
        lua_setfield(L, t, "url");
    } else {
        lua_pop(L, 1);
        static const char *const fields[][2] = {
            {"tasks_redis_host", "host"}, {"tasks_redis_port", "port"},
            {"tasks_redis_db", "db"}, {"tasks_redis_password", "password"},
        };
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            lua_getfield(L, 1, fields[i][0]);
            lua_setfield(L, t, fields[i][1]);
        }
    }
    lua_getfield(L, 1, "tasks_redis_namespace");
    lua_setfield(L, t, "namespace");
    lua_getfield(L, 1, "tasks_queue_name");
    lua_setfield(L, t, "queue");
    if (lua_istable(L, 2)) {
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, t);
        }
    }
    return connect_with_options(L, t, "TASKS_REDIS_URL");
}

/* ---- module functions for tests and tools --------------------------------------------- */

static const char *const BUILD_KEYS[] = {"queue", "actor", "args", "kwargs",
                                         "redis_message_id", "message_id", "timestamp_ms",
                                         "eta_ms", NULL};

static void opt_uuid(lua_State *L, int idx, const char *key, char out[DQ_UUID_LEN + 1],
                     const unsigned char *random)
{
    const char *v = lmod_opt_string(L, idx, key, NULL);
    if (!v) {
        dq_uuid4_format(random, out);
        return;
    }
    if (!dq_is_uuid(v, strlen(v)))
        luaL_error(L, "broker.build_message: %s must be a UUID string (8-4-4-4-12 lower-case "
                      "hex)", key);
    memcpy(out, v, DQ_UUID_LEN + 1);
}

/* broker.build_message{queue=, actor=, args=, kwargs=, redis_message_id=, message_id=,
 *                      timestamp_ms=, eta_ms=} -> json | nil, msg
 * The exact bytes enqueue would write (queue is the list's name: "<q>.DQ" for a delayed
 * message). Missing ids are fresh UUID4s, a missing timestamp is now. Validated. */
static int broker_build_message(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lmod_check_options(L, 1, BUILD_KEYS, "broker.build_message");
    scratch *s = new_scratch(L);
    size_t qlen, alen;
    lua_getfield(L, 1, "queue");
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "broker.build_message: queue must be a string");
    const char *queue = lua_tolstring(L, -1, &qlen);
    lua_getfield(L, 1, "actor");
    const char *actor;
    check_actor(L, -1, &actor, &alen, "broker.build_message");
    lua_getfield(L, 1, "args");
    if (!lua_istable(L, -1))
        luaL_error(L, "broker.build_message: args must be a table");
    int args_idx = lua_gettop(L);
    unsigned char random[32];
    os_random(L, random, sizeof random);
    char rid[DQ_UUID_LEN + 1], mid[DQ_UUID_LEN + 1];
    opt_uuid(L, 1, "redis_message_id", rid, random);
    opt_uuid(L, 1, "message_id", mid, random + 16);
    char why[400];
    if (encode_root(L, s, args_idx, 0, &s->args, why, sizeof why) != 0)
        return lmod_fail(L, "%s", why);
    lua_getfield(L, 1, "kwargs");
    if (!lua_isnil(L, -1) && !lua_istable(L, -1))
        luaL_error(L, "broker.build_message: kwargs must be a table");
    if (encode_root(L, s, -1, 1, &s->kwargs, why, sizeof why) != 0)
        return lmod_fail(L, "%s", why);
    lua_pop(L, 1);
    dq_message m;
    memset(&m, 0, sizeof m);
    m.queue_name = queue;
    m.queue_name_len = qlen;
    m.actor_name = actor;
    m.actor_name_len = alen;
    m.args_json = s->args.data;
    m.args_json_len = s->args.len;
    m.kwargs_json = s->kwargs.data;
    m.kwargs_json_len = s->kwargs.len;
    m.redis_message_id = rid;
    m.message_id = mid;
    m.timestamp_ms = (int64_t)lmod_opt_integer(L, 1, "timestamp_ms", (lua_Integer)dq_now_ms());
    lua_getfield(L, 1, "eta_ms");
    m.has_eta = !lua_isnil(L, -1);
    lua_pop(L, 1);
    m.eta_ms = (int64_t)lmod_opt_integer(L, 1, "eta_ms", 0);
    int rc = dq_message_build(&s->payload, &m, why, sizeof why);
    if (rc == DQ_ENOMEM)
        luaL_error(L, "out of memory");
    if (rc != DQ_OK)
        return lmod_fail(L, "%s", why);
    if (dq_message_validate(s->payload.data, s->payload.len, queue, qlen, rid, DQ_UUID_LEN, NULL,
                            why, sizeof why) != DQ_OK)
        return lmod_fail(L, "%s", why);
    lua_pushlstring(L, s->payload.data, s->payload.len);
    return 1;
}

/* broker.validate_message(json[, queue[, redis_id]]) -> {message_id, timestamp_ms,
 * eta_ms} | nil, msg: the §7 checks enqueue runs before sending. */
static int broker_validate_message(lua_State *L)
{
    size_t len, qlen = 0, rlen = 0;
    const char *json = luaL_checklstring(L, 1, &len);
    const char *queue = luaL_optlstring(L, 2, NULL, &qlen);
    const char *rid = luaL_optlstring(L, 3, NULL, &rlen);
    dq_message_info info;
    char why[400];
    if (dq_message_validate(json, len, queue, qlen, rid, rlen, &info, why, sizeof why) != DQ_OK)
        return lmod_fail(L, "%s", why);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, info.message_id);
    lua_setfield(L, -2, "message_id");
    lua_pushnumber(L, (lua_Number)info.timestamp_ms);
    lua_setfield(L, -2, "timestamp_ms");
    if (info.has_eta) {
        lua_pushnumber(L, (lua_Number)info.eta_ms);
        lua_setfield(L, -2, "eta_ms");
    }
    return 1;
}

/* broker.parse_url(url) -> {scheme, host, port, path, db, has_username, has_password,
 *   display, timeout, connect_timeout} | nil, msg  (never the credentials) */
static int broker_parse_url(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    redis_url u;
    char err[300];
    if (redis_url_parse(url, &u, err, sizeof err) != 0) {
        redis_url_wipe(&u);
        return lmod_fail(L, "%s", err);
    }
    char display[sizeof ((broker *)0)->display];
    redis_url_display(&u, display, sizeof display);
    lua_createtable(L, 0, 10);
    lua_pushstring(L, u.is_unix ? "unix" : "redis");
    lua_setfield(L, -2, "scheme");
    if (u.is_unix) {
        lua_pushstring(L, u.path);
        lua_setfield(L, -2, "path");
    } else {
        lua_pushstring(L, u.host);
        lua_setfield(L, -2, "host");
        lua_pushinteger(L, u.port);
        lua_setfield(L, -2, "port");
    }
    lua_pushinteger(L, (lua_Integer)u.db);
    lua_setfield(L, -2, "db");
    lua_pushboolean(L, u.has_username);
    lua_setfield(L, -2, "has_username");
    lua_pushboolean(L, u.has_password);
    lua_setfield(L, -2, "has_password");
    lua_pushstring(L, display);
    lua_setfield(L, -2, "display");
    if (u.socket_timeout > 0) {
        lua_pushnumber(L, u.socket_timeout);
        lua_setfield(L, -2, "timeout");
    }
    if (u.connect_timeout > 0) {
        lua_pushnumber(L, u.connect_timeout);
        lua_setfield(L, -2, "connect_timeout");
    }
    redis_url_wipe(&u);
    return 1;
}

/* broker.dedupe_id(queue, job_key) -> the redis_message_id dedupe uses */
static int broker_dedupe_id(lua_State *L)
{
    size_t qlen, klen;
    const char *queue = luaL_checklstring(L, 1, &qlen);
    const char *key = luaL_checklstring(L, 2, &klen);
    char rid[DQ_UUID_LEN + 1];
    dq_dedupe_id(queue, dq_queue_canonical_len(queue, qlen), key, klen, rid);
    lua_pushlstring(L, rid, DQ_UUID_LEN);
    return 1;
}

/* ---- registration ---------------------------------------------------------------------- */

static const luaL_Reg broker_methods[] = {
    {"enqueue", broker_enqueue},
    {"enqueue_many", broker_enqueue_many},
    {"queue_length", broker_queue_length},
    {"stats", broker_stats},
    {"is_waiting", broker_is_waiting},
    {"fetch", broker_fetch},
    {"ack", broker_ack},
    {"nack", broker_nack},
    {"requeue", broker_requeue},
    {"heartbeat", broker_heartbeat},
    {"ping", broker_ping},
    {"info", broker_info},
    {"close", broker_close},
    {NULL, NULL},
};

static const luaL_Reg broker_meta[] = {
    {"__gc", broker_gc},
    {"__tostring", broker_tostring},
    {NULL, NULL},
};

static const luaL_Reg scratch_meta[] = {
    {"__gc", scratch_gc},
    {NULL, NULL},
};

static int broker_error_count(lua_State *L)
{
    lua_pushnumber(L, failure_count);
    return 1;
}

static const luaL_Reg broker_functions[] = {
    {"connect", broker_connect},
    {"from_settings", broker_from_settings},
    {"build_message", broker_build_message},
    {"validate_message", broker_validate_message},
    {"parse_url", broker_parse_url},
    {"dedupe_id", broker_dedupe_id},
    {"error_count", broker_error_count},
    {NULL, NULL},
};

LMOD_OPEN(broker)
{
    lmod_new_class(L, BROKER_TYPE, broker_methods, broker_meta);
    lmod_new_class(L, SCRATCH_TYPE, NULL, scratch_meta);
    lmod_new_module(L, broker_functions);
    return 1;
}
