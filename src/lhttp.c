/*
 * lhttp.c - the `loreley.http` module: the HTTP face's server (http.c) and the archive
 * views its status page needs (heatmap.c). loreley.monitor drives it; docs/http.md is
 * the user documentation.
 *
 * Errors: misuse (unknown option keys, an invalid listen address, a closed server)
 * raises; failures of the world (the port is in use) return nil, message.
 *
 *   http.start{listen=, token=, endpoints={...}, control_timeout=10, max_connections=64,
 *              idle_timeout=15} -> server | nil, message
 *   server:address() -> "127.0.0.1:9464"      server:port() -> 9464
 *   server:publish(path, body[, content_type])   (GET/HEAD path serves body from now on)
 *   server:take() -> { {id=, endpoint=, body=, remote=}, ... }   queued control requests
 *   server:reply(id, status, body) -> bool       answers a taken request
 *   server:responses() -> { [status] = count }   server:close()
 *   http.heatmap(archive, {dims = {1, 2}, bins = 32, max_cells = 512}) -> json, occupied
 *       json: {dims, nx, ny, elites, occupied, lower, upper, min, max, level, count[, best]}
 *       with level[y * nx + x] = the cell's best objective scaled to 0..65535 over
 *       [min, max] (-1 when empty), count = elites per cell, and best = the exact values
 *       (null when empty) when nx * ny <= 4096
 *   http.best(archive, k) -> cells, best first
 *   http.parse_listen(text) -> {host=, port=, ipv6=} | nil, message
 *
 * The server's threads never enter Lua: a queued control request wakes the host's loop
 * (host_request_service), which takes and answers it between ticks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heatmap.h"
#include "host.h"
#include "http.h"
#include "larchive.h"
#include "lmod.h"
#include "pyfloat.h"

#define SERVER_TYPE "loreley.http.server"
#define MAX_ENDPOINTS HTTP_MAX_ENDPOINTS

typedef struct server_box {
    http_server *server;
} server_box;

static http_server *check_server(lua_State *L, int idx)
{
    server_box *box = luaL_checkudata(L, idx, SERVER_TYPE);
    if (!box->server)
        luaL_error(L, "the HTTP server is closed");
    return box->server;
}

/* Runs in a connection thread: only sets the host's flag and writes its wake pipe. */
static void wake_host(void *arg)
{
    (void)arg;
    host_request_service();
}

static const char *const start_keys[] = {"listen",          "token",           "endpoints",
                                         "control_timeout", "max_connections", "idle_timeout",
                                         NULL};

/* http.start{...} -> server | nil, message */
static int http_start_l(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lmod_check_options(L, 1, start_keys, "http.start");
    const char *listen = lmod_opt_string(L, 1, "listen", NULL);
    if (!listen)
        return luaL_error(L, "http.start: 'listen' is required (e.g. \"127.0.0.1:9464\")");
    const char *token = lmod_opt_string(L, 1, "token", NULL);
    double timeout = lmod_opt_number(L, 1, "control_timeout", 10.0);
    lua_Integer max_connections = lmod_opt_integer(L, 1, "max_connections", 64);
    lua_Integer idle = lmod_opt_integer(L, 1, "idle_timeout", 15);
    if (!(timeout > 0) || timeout > 3600)
        return luaL_error(L, "http.start: control_timeout must be in (0, 3600] seconds");
    if (max_connections < 1 || max_connections > 10000)
        return luaL_error(L, "http.start: max_connections must be in 1..10000");
    if (idle < 1 || idle > 3600)
        return luaL_error(L, "http.start: idle_timeout must be in 1..3600 seconds");

    const char *endpoints[MAX_ENDPOINTS];
    size_t n = 0;
    lua_getfield(L, 1, "endpoints");
    if (!lua_isnil(L, -1)) {
        luaL_argcheck(L, lua_istable(L, -1), 1, "endpoints must be an array of names");
        size_t len = lua_objlen(L, -1);
        if (len > MAX_ENDPOINTS)
            return luaL_error(L, "http.start: at most %d endpoints", MAX_ENDPOINTS);
        for (size_t i = 0; i < len; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "http.start: endpoints[%d] must be a string", (int)i + 1);
            endpoints[n++] = lua_tostring(L, -1);   /* anchored by the table until start */
            lua_pop(L, 1);
        }
    }

    server_box *box = lua_newuserdata(L, sizeof *box);
    box->server = NULL;
    luaL_setmetatable(L, SERVER_TYPE);
    http_config config = {
        .listen = listen,
        .token = token,
        .endpoints = endpoints,
        .endpoint_count = n,
        .control_timeout = timeout,
        .max_connections = (unsigned)max_connections,
        .idle_timeout = (unsigned)idle,
        .notify = wake_host,
        .notify_arg = NULL,
    };
    char err[512];
    int rc = http_start(&config, &box->server, err, sizeof err);
    if (rc == HTTP_START_INVALID)
        return luaL_error(L, "%s", err);
    if (rc != HTTP_START_OK)
        return lmod_fail(L, "%s", err);
    return 1;
}

static int server_address(lua_State *L)
{
    lua_pushstring(L, http_address(check_server(L, 1)));
    return 1;
}

static int server_port(lua_State *L)
{
    lua_pushinteger(L, http_port(check_server(L, 1)));
    return 1;
}

/* server:publish(path, body[, content_type]) */
static int server_publish(lua_State *L)
{
    http_server *s = check_server(L, 1);
    const char *path = luaL_checkstring(L, 2);
    size_t len;
    const char *body = luaL_checklstring(L, 3, &len);
    const char *type = luaL_optstring(L, 4, NULL);
    if (path[0] != '/')
        return luaL_argerror(L, 2, "a path starts with /");
    if (http_publish(s, path, type, body, len) != 0)
        return luaL_error(L, "server:publish: out of memory");
    return 0;
}

/* server:take() -> array of {id, endpoint, body, remote} */
static int server_take(lua_State *L)
{
    http_server *s = check_server(L, 1);
    http_request *list;
    size_t n = http_take(s, &list);
    /* Copy into Lua; a raise (out of memory) here would leak `list`, so the table is
     * made first and nothing below raises but the allocations of Lua strings. */
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 4);
        lua_pushnumber(L, (double)list[i].id);
        lua_setfield(L, -2, "id");
        lua_pushstring(L, list[i].endpoint);
        lua_setfield(L, -2, "endpoint");
        lua_pushlstring(L, list[i].body, list[i].body_len);
        lua_setfield(L, -2, "body");
        lua_pushstring(L, list[i].remote);
        lua_setfield(L, -2, "remote");
        lua_rawseti(L, -2, (int)i + 1);
    }
    http_requests_free(list, n);
    return 1;
}

/* server:reply(id, status, body) -> bool */
static int server_reply(lua_State *L)
{
    http_server *s = check_server(L, 1);
    double id = luaL_checknumber(L, 2);
    lua_Integer status = luaL_checkinteger(L, 3);
    size_t len;
    const char *body = luaL_checklstring(L, 4, &len);
    if (status < 100 || status > 599)
        return luaL_argerror(L, 3, "an HTTP status is 100..599");
    if (!(id >= 1) || id != floor(id))
        return luaL_argerror(L, 2, "a request id from server:take()");
    lua_pushboolean(L, http_reply(s, (uint64_t)id, (int)status, body, len));
    return 1;
}

/* Collects (code, count) pairs; runs under the server lock, so it only fills an array. */
typedef struct code_counts {
    int code[64];
    double count[64];
    int n;
} code_counts;

static void collect_code(int code, uint64_t count, void *arg)
{
    code_counts *cc = arg;
    if (cc->n < 64) {
        cc->code[cc->n] = code;
        cc->count[cc->n] = (double)count;
        cc->n++;
    }
}

static int server_responses(lua_State *L)
{
    http_server *s = check_server(L, 1);
    code_counts cc = {.n = 0};
    http_response_counts(s, collect_code, &cc);
    lua_createtable(L, 0, cc.n);
    for (int i = 0; i < cc.n; i++) {
        lua_pushnumber(L, cc.count[i]);
        lua_rawseti(L, -2, cc.code[i]);
    }
    return 1;
}

static int server_close(lua_State *L)
{
    server_box *box = luaL_checkudata(L, 1, SERVER_TYPE);
    http_stop(box->server);
    box->server = NULL;
    return 0;
}

static int server_tostring(lua_State *L)
{
    server_box *box = luaL_checkudata(L, 1, SERVER_TYPE);
    if (box->server)
        lua_pushfstring(L, "loreley.http.server (%s)", http_address(box->server));
    else
        lua_pushstring(L, "loreley.http.server (closed)");
    return 1;
}

/* --- archive views -------------------------------------------------------------------- */

/* Appends a number as JSON (null for NaN and infinities, which JSON cannot hold). */
static void add_number(luaL_Buffer *b, double v)
{
    char text[32];
    if (!isfinite(v)) {
        luaL_addstring(b, "null");
        return;
    }
    pyfloat_number_text(v, text, sizeof text);
    luaL_addstring(b, text);
}

/* Appends v in decimal (the heatmap's many small integers). */
static void add_unsigned(luaL_Buffer *b, unsigned v)
{
    char digits[12];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        luaL_addchar(b, digits[--n]);
}

#define EXACT_CELLS 4096   /* heatmaps up to this many cells carry exact best values */

static const char *const heatmap_keys[] = {"dims", "bins", "max_cells", NULL};

/* http.heatmap(archive, opts) -> json, occupied cells */
static int http_heatmap_l(lua_State *L)
{
    archive_t *a = larchive_check(L, 1);
    lmod_check_options(L, 2, heatmap_keys, "http.heatmap");
    lua_Integer dx = 1, dy = 2;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "dims");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1) || lua_objlen(L, -1) != 2)
                return luaL_error(L, "http.heatmap: dims must be two measure dimensions, "
                                     "e.g. {1, 2}");
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            dx = luaL_checkinteger(L, -2);
            dy = luaL_checkinteger(L, -1);
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    lua_Integer bins = lmod_opt_integer(L, 2, "bins", 32);
    lua_Integer max_cells = lmod_opt_integer(L, 2, "max_cells", 512);
    if (dx < 1 || dy < 1)
        return luaL_error(L, "http.heatmap: measure dimensions start at 1");
    heatmap h;
    char err[256];
    if (bins < 1 || max_cells < 1 ||
        heatmap_build(a, (size_t)dx - 1, (size_t)dy - 1, (size_t)bins, (size_t)max_cells, &h,
                      err, sizeof err) != 0)
        return luaL_error(L, "http.heatmap: %s", bins < 1 || max_cells < 1
                                                     ? "bins and max_cells must be >= 1"
                                                     : err);
    /* The buffer grows on the Lua stack; h is freed on every path below (no raise
     * between here and heatmap_free but luaL_Buffer's out-of-memory). */
    size_t n = h.nx * h.ny;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (h.count[i]) {
            if (h.best[i] < lo)
                lo = h.best[i];
            if (h.best[i] > hi)
                hi = h.best[i];
        }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char head[256];
    snprintf(head, sizeof head,
             "{\"dims\":[%d,%d],\"nx\":%zu,\"ny\":%zu,\"elites\":%zu,\"occupied\":%zu,"
             "\"lower\":[", (int)dx, (int)dy, h.nx, h.ny, h.elites, h.occupied);
    luaL_addstring(&b, head);
    add_number(&b, h.lower[0]);
    luaL_addchar(&b, ',');
    add_number(&b, h.lower[1]);
    luaL_addstring(&b, "],\"upper\":[");
    add_number(&b, h.upper[0]);
    luaL_addchar(&b, ',');
    add_number(&b, h.upper[1]);
    luaL_addstring(&b, "],\"min\":");
    add_number(&b, lo);
    luaL_addstring(&b, ",\"max\":");
    add_number(&b, hi);
    /* level: the best objective scaled to 0..65535 over [min, max] (-1: empty); cheap to
     * write for any size. best: the exact values, for heatmaps up to EXACT_CELLS cells
     * (a shortest-round-trip number costs about half a microsecond to format). */
    luaL_addstring(&b, ",\"level\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            luaL_addchar(&b, ',');
        if (!h.count[i]) {
            luaL_addstring(&b, "-1");
            continue;
        }
        unsigned level = hi > lo ? (unsigned)((h.best[i] - lo) / (hi - lo) * 65535.0 + 0.5)
                                 : 65535u;
        add_unsigned(&b, level);
    }
    luaL_addstring(&b, "],\"count\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            luaL_addchar(&b, ',');
        add_unsigned(&b, h.count[i]);
    }
    luaL_addchar(&b, ']');
    if (n <= EXACT_CELLS) {
        luaL_addstring(&b, ",\"best\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                luaL_addchar(&b, ',');
            if (h.count[i])
                add_number(&b, h.best[i]);
            else
                luaL_addstring(&b, "null");
        }
        luaL_addchar(&b, ']');
    }
    luaL_addchar(&b, '}');
    size_t occupied = h.occupied;
    heatmap_free(&h);
    luaL_pushresult(&b);
    lua_pushnumber(L, (double)occupied);
    return 2;
}

/* http.best(archive, k) -> cells of the k best elites, best first */
static int http_best_l(lua_State *L)
{
    archive_t *a = larchive_check(L, 1);
    lua_Integer k = luaL_checkinteger(L, 2);
    if (k < 0 || k > 1000)
        return luaL_argerror(L, 2, "k must be in 0..1000");
    size_t positions[1000];
    size_t n = heatmap_best(a, (size_t)k, positions);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushnumber(L, (double)archive_cell_at(a, positions[i]));
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* http.parse_listen(text) -> {host, port, ipv6} | nil, message */
static int http_parse_listen_l(lua_State *L)
{
    const char *text = luaL_checkstring(L, 1);
    char host[64], err[256];
    int port, ipv6;
    if (http_parse_listen(text, host, sizeof host, &port, &ipv6, err, sizeof err) != 0)
        return lmod_fail(L, "%s", err);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, port);
    lua_setfield(L, -2, "port");
    lua_pushboolean(L, ipv6);
    lua_setfield(L, -2, "ipv6");
    return 1;
}

static const luaL_Reg server_methods[] = {
    {"address", server_address},     {"port", server_port},   {"publish", server_publish},
    {"take", server_take},           {"reply", server_reply}, {"responses", server_responses},
    {"close", server_close},         {NULL, NULL},
};

static const luaL_Reg server_meta[] = {
    {"__gc", server_close},
    {"__tostring", server_tostring},
    {NULL, NULL},
};

static const luaL_Reg http_functions[] = {
    {"start", http_start_l},
    {"heatmap", http_heatmap_l},
    {"best", http_best_l},
    {"parse_listen", http_parse_listen_l},
    {NULL, NULL},
};

LMOD_OPEN(http)
{
    lmod_new_class(L, SERVER_TYPE, server_methods, server_meta);
    lmod_new_module(L, http_functions);
    return 1;
}
