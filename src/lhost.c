/*
 * lhost.c - the `loreley.host` module: logging, clocks, the stop and reload requests,
 * seeded generators, hashing, UUIDs and the embedded resources.
 *
 * Errors: misuse raises; nothing here talks to the outside world except uuid4 (the OS
 * random source), which raises when the kernel refuses, as that is not recoverable.
 *
 *   host.log(level, fmt, ...)      host.debug/info/warn/error(fmt, ...)
 *   host.log_level() -> "INFO"     host.set_log_level(name)
 *   host.now() -> monotonic s      host.time() -> wall-clock s
 *   host.sleep(s) -> true, or false when a stop was requested meanwhile
 *   host.stop_requested()          host.request_stop()      host.request_reload()
 *   host.rng(seed) -> generator    host.sha256(s) -> hex    host.uuid4() -> string
 *   host.resource(path) -> text | nil, msg                  host.recent_logs()
 *   host.version
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "lmod.h"
#include "log.h"
#include "rng.h"
#include "sha256.h"

#define RNG_TYPE "loreley.rng"

/* Formats the message: with one argument it is used as is, otherwise string.format. */
static const char *format_message(lua_State *L, int first)
{
    int n = lua_gettop(L) - first + 1;
    if (n <= 0)
        return "";
    if (n == 1)
        return luaL_checkstring(L, first);
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_remove(L, -2);
    lua_insert(L, first);
    lua_call(L, n, 1);
    return lua_tostring(L, -1);
}

static int log_at(lua_State *L, log_level level, int first)
{
    if (level < log_get_level() && level < LOG_WARNING)
        return 0;
    log_write(level, format_message(L, first));
    return 0;
}

static int host_log(lua_State *L)
{
    log_level level;
    const char *name = luaL_checkstring(L, 1);
    if (log_parse_level(name, &level) != 0)
        return luaL_argerror(L, 1, "unknown log level (DEBUG, INFO, WARNING, ERROR)");
    return log_at(L, level, 2);
}

static int host_debug(lua_State *L) { return log_at(L, LOG_DEBUG, 1); }
static int host_info(lua_State *L) { return log_at(L, LOG_INFO, 1); }
static int host_warn(lua_State *L) { return log_at(L, LOG_WARNING, 1); }
static int host_error(lua_State *L) { return log_at(L, LOG_ERROR, 1); }

static int host_log_level(lua_State *L)
{
    lua_pushstring(L, log_level_name(log_get_level()));
    return 1;
}

static int host_set_log_level(lua_State *L)
{
    log_level level;
    if (log_parse_level(luaL_checkstring(L, 1), &level) != 0)
        return luaL_argerror(L, 1, "unknown log level (DEBUG, INFO, WARNING, ERROR)");
    log_set_level(level);
    return 0;
}

static int host_now_l(lua_State *L)
{
    lua_pushnumber(L, host_now());
    return 1;
}

static int host_time(lua_State *L)
{
    lua_pushnumber(L, host_wall_time());
    return 1;
}

static int host_sleep_l(lua_State *L)
{
    double s = luaL_checknumber(L, 1);
    if (!(s >= 0) || !isfinite(s))
        return luaL_argerror(L, 1, "seconds must be a finite number >= 0");
    lua_pushboolean(L, host_sleep(s, 0));
    return 1;
}

static int host_stop_requested_l(lua_State *L)
{
    lua_pushboolean(L, host_stop_requested());
    return 1;
}

static int host_request_stop_l(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        log_info("stop requested: %s", luaL_checkstring(L, 1));
    host_request_stop();
    return 0;
}

static int host_request_reload_l(lua_State *L)
{
    host_request_reload();
    return 0;
}

static int host_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    sha256_hex(s, n, hex);
    lua_pushlstring(L, hex, 64);
    return 1;
}

static int host_uuid4(lua_State *L)
{
    unsigned char b[16];
    if (rng_os_bytes(b, sizeof b) != 0)
        return luaL_error(L, "cannot read the operating system's random source");
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    char s[37];
    snprintf(s, sizeof s,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    lua_pushlstring(L, s, 36);
    return 1;
}

static int host_resource(lua_State *L)
{
    return lmod_push_resource(L, luaL_checkstring(L, 1));
}

static void push_recent(double wall, log_level level, const char *message, void *ud)
{
    lua_State *L = ud;
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, wall);
    lua_setfield(L, -2, "time");
    lua_pushstring(L, log_level_name(level));
    lua_setfield(L, -2, "level");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
}

static int host_recent_logs(lua_State *L)
{
    lua_createtable(L, LOG_RECENT_MAX, 0);
    log_recent(push_recent, L);
    return 1;
}

/* --- seeded generators ------------------------------------------------------------------ */

/* A seed is an integer-valued number or a string (hashed). */
static uint64_t check_seed(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        unsigned char digest[32];
        sha256_t ctx;
        sha256_init(&ctx);
        sha256_update(&ctx, s, n);
        sha256_final(&ctx, digest);
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | digest[i];
        return v;
    }
    double d = luaL_checknumber(L, idx);
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
        luaL_argerror(L, idx, "seed must be an integer (|seed| <= 2^53) or a string");
    return (uint64_t)(int64_t)d;
}

static int host_rng(lua_State *L)
{
    uint64_t seed = check_seed(L, 1);
    rng_t *r = lua_newuserdata(L, sizeof *r);
    rng_seed(r, seed);
    luaL_setmetatable(L, RNG_TYPE);
    return 1;
}

/* rng:random() -> [0,1); rng:random(m) -> [1,m]; rng:random(m, n) -> [m,n] (integers). */
static int rng_random(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    int n = lua_gettop(L);
    if (n == 1) {
        lua_pushnumber(L, rng_double(r));
        return 1;
    }
    double lo = 1, hi;
    if (n == 2) {
        hi = luaL_checknumber(L, 2);
    } else {
        lo = luaL_checknumber(L, 2);
        hi = luaL_checknumber(L, 3);
    }
    lo = floor(lo);
    hi = floor(hi);
    if (!(lo <= hi) || hi - lo >= 9007199254740992.0)
        return luaL_error(L, "rng:random: interval is empty or too large");
    uint64_t span = (uint64_t)(hi - lo) + 1;
    lua_pushnumber(L, lo + (double)rng_below(r, span));
    return 1;
}

/* rng:below(n) -> integer in [0, n). */
static int rng_below_l(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    double n = luaL_checknumber(L, 2);
    if (!(n >= 1) || n != floor(n) || n > 9007199254740992.0)
        return luaL_argerror(L, 2, "bound must be an integer >= 1");
    lua_pushnumber(L, (double)rng_below(r, (uint64_t)n));
    return 1;
}

static int rng_uniform(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    double a = luaL_optnumber(L, 2, 0.0), b = luaL_optnumber(L, 3, 1.0);
    lua_pushnumber(L, a + (b - a) * rng_double(r));
    return 1;
}

static int rng_normal_l(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    double mu = luaL_optnumber(L, 2, 0.0), sigma = luaL_optnumber(L, 3, 1.0);
    lua_pushnumber(L, mu + sigma * rng_normal(r));
    return 1;
}

/* rng:shuffle(t): Fisher-Yates over t[1..#t], in place; returns t. */
static int rng_shuffle(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)lua_objlen(L, 2);
    for (int i = n; i > 1; i--) {
        int j = (int)rng_below(r, (uint64_t)i) + 1;
        lua_rawgeti(L, 2, i);
        lua_rawgeti(L, 2, j);
        lua_rawseti(L, 2, i);
        lua_rawseti(L, 2, j);
    }
    lua_settop(L, 2);
    return 1;
}

/* rng:choice(t) -> a uniformly chosen element of the array t (nil when empty). */
static int rng_choice(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)lua_objlen(L, 2);
    if (n == 0)
        return 0;
    lua_rawgeti(L, 2, (int)rng_below(r, (uint64_t)n) + 1);
    return 1;
}

static int rng_clone(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    rng_t *copy = lua_newuserdata(L, sizeof *copy);
    *copy = *r;
    luaL_setmetatable(L, RNG_TYPE);
    return 1;
}

/* rng:state() -> 64 hex digits; rng:set_state(hex) restores it (for persistence). */
static int rng_state(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    char hex[65];
    for (int i = 0; i < 4; i++)
        snprintf(hex + 16 * i, 17, "%016llx", (unsigned long long)r->s[i]);
    lua_pushlstring(L, hex, 64);
    return 1;
}

static int rng_set_state(lua_State *L)
{
    rng_t *r = lmod_check_rng(L, 1);
    size_t n;
    const char *hex = luaL_checklstring(L, 2, &n);
    if (n != 64 || strspn(hex, "0123456789abcdef") != 64)
        return luaL_argerror(L, 2, "state must be 64 lower-case hex digits");
    rng_t fresh;
    for (int i = 0; i < 4; i++) {
        char part[17];
        memcpy(part, hex + 16 * i, 16);
        part[16] = '\0';
        fresh.s[i] = strtoull(part, NULL, 16);
    }
    if ((fresh.s[0] | fresh.s[1] | fresh.s[2] | fresh.s[3]) == 0)
        return luaL_argerror(L, 2, "the all-zero state is not valid");
    *r = fresh;
    return 0;
}

static int rng_tostring(lua_State *L)
{
    lua_pushfstring(L, "loreley.rng (%p)", lua_touserdata(L, 1));
    return 1;
}

static const luaL_Reg rng_methods[] = {
    {"random", rng_random}, {"below", rng_below_l},   {"uniform", rng_uniform},
    {"normal", rng_normal_l}, {"shuffle", rng_shuffle}, {"choice", rng_choice},
    {"clone", rng_clone},   {"state", rng_state},     {"set_state", rng_set_state},
    {NULL, NULL},
};

static const luaL_Reg rng_meta[] = {
    {"__tostring", rng_tostring},
    {NULL, NULL},
};

static const luaL_Reg host_functions[] = {
    {"log", host_log},
    {"debug", host_debug},
    {"info", host_info},
    {"warn", host_warn},
    {"warning", host_warn},
    {"error", host_error},
    {"log_level", host_log_level},
    {"set_log_level", host_set_log_level},
    {"now", host_now_l},
    {"time", host_time},
    {"sleep", host_sleep_l},
    {"stop_requested", host_stop_requested_l},
    {"request_stop", host_request_stop_l},
    {"request_reload", host_request_reload_l},
    {"rng", host_rng},
    {"sha256", host_sha256},
    {"uuid4", host_uuid4},
    {"resource", host_resource},
    {"recent_logs", host_recent_logs},
    {NULL, NULL},
};

LMOD_OPEN(host)
{
    lmod_new_class(L, RNG_TYPE, rng_methods, rng_meta);
    lmod_new_module(L, host_functions);
    lua_pushstring(L, LORELEY_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
