/*
 * host.c - the loreley-host runtime.
 *
 * Owns the Lua state and the only place C enters Lua for policy code (host_docall).
 * Start-up: settings (exit 2 when invalid) -> policy file (syntax or runtime error:
 * exit 1) -> validation of the returned table (tick required; init and shutdown
 * optional; any other key is an error) -> global guard -> ctx -> init -> loop.
 *
 * The loop: tick(ctx) returns a delay in seconds, nil (the poll interval) or false
 * (stop). SIGINT/SIGTERM end the loop within the current sleep; SIGHUP reloads the
 * policy between ticks, keeping the running one when the new file fails validation.
 */
#include "host.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <luajit.h>

#include "lmod.h"
#include "log.h"
#include "sha256.h"

/* --- signals and the clock ----------------------------------------------------------- */

static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t reload_flag;
static int service_flag;   /* set from HTTP threads: __atomic builtins only */
static int wake_pipe[2] = {-1, -1};

static void wake(void)
{
    if (wake_pipe[1] >= 0) {
        int saved = errno;
        ssize_t ignored = write(wake_pipe[1], "x", 1);
        (void)ignored;
        errno = saved;
    }
}

static void on_stop_signal(int sig)
{
    if (stop_flag && sig == SIGINT)
        _exit(130);   /* a second Ctrl-C: the user means it */
    stop_flag = 1;
    wake();
}

static void on_reload_signal(int sig)
{
    (void)sig;
    reload_flag = 1;
    wake();
}

void host_install_signals(void)
{
    if (wake_pipe[0] >= 0)
        return;
    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        log_warning("cannot create the wake-up pipe: %s", strerror(errno));
        wake_pipe[0] = wake_pipe[1] = -1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

int host_stop_requested(void) { return stop_flag != 0; }

void host_request_stop(void)
{
    stop_flag = 1;
    wake();
}

int host_take_reload_request(void)
{
    if (!reload_flag)
        return 0;
    reload_flag = 0;
    return 1;
}

void host_request_reload(void)
{
    reload_flag = 1;
    wake();
}

void host_request_service(void)
{
    __atomic_store_n(&service_flag, 1, __ATOMIC_SEQ_CST);
    wake();
}

int host_take_service_request(void)
{
    return __atomic_exchange_n(&service_flag, 0, __ATOMIC_SEQ_CST);
}

double host_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double host_wall_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void drain_wake_pipe(void)
{
    char buf[64];
    while (wake_pipe[0] >= 0 && read(wake_pipe[0], buf, sizeof buf) > 0) {
    }
}

int host_sleep(double seconds, int wake_on_reload)
{
    double deadline = host_now() + (seconds > 0 ? seconds : 0);
    for (;;) {
        if (stop_flag ||
            (wake_on_reload && (reload_flag || __atomic_load_n(&service_flag, __ATOMIC_SEQ_CST))))
            return 0;
        double left = deadline - host_now();
        if (left <= 0)
            return 1;
        int ms = left > 3600 ? 3600000 : (int)ceil(left * 1000.0);
        if (wake_pipe[0] >= 0) {
            struct pollfd pfd = {.fd = wake_pipe[0], .events = POLLIN};
            int r = poll(&pfd, 1, ms);
            if (r > 0)
                drain_wake_pipe();
        } else {
            struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

/* --- protected calls ------------------------------------------------------------------ */

/* Message handler: turns any error value into "message\nstack traceback:...". */
static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int host_docall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;   /* function index */
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}

/* Calls require(name)[field] with the value on top of the stack as its only argument
 * (popped) and leaves nresults. Returns the pcall status (error string on the stack). */
static int call_module_function(lua_State *L, const char *module, const char *field,
                                int nargs, int nresults)
{
    int first_arg = lua_gettop(L) - nargs + 1;
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    int status = host_docall(L, 1, 1);
    if (status != 0) {
        lua_insert(L, first_arg);
        lua_settop(L, first_arg);
        return status;
    }
    lua_getfield(L, -1, field);
    lua_remove(L, -2);
    lua_insert(L, first_arg);
    return host_docall(L, nargs, nresults);
}

/* --- policy loading -------------------------------------------------------------------- */

typedef struct policy {
    int tick_ref;
    int init_ref;       /* LUA_NOREF when absent */
    int shutdown_ref;   /* LUA_NOREF when absent */
    char version[13];   /* first 12 hex digits of the file's SHA-256 */
} policy;

static const char *const policy_keys[] = {"tick", "init", "shutdown", NULL};

static char *read_whole_file(const char *path, size_t *size, char *err, size_t errsize)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errsize, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            snprintf(err, errsize, "out of memory reading %s", path);
            return NULL;
        }
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap)
            break;
        cap *= 2;
        char *grown = realloc(buf, cap);
        if (!grown)
            free(buf);
        buf = grown;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        snprintf(err, errsize, "cannot read %s", path);
        return NULL;
    }
    *size = len;
    return buf;
}

/*
 * Loads and runs the file. On success returns 0 with the file's first return value on
 * the stack and its version in version_out. On failure logs "what: message" with a
 * traceback and returns -1 with nothing pushed.
 */
static int run_policy_file(lua_State *L, const char *path, char version_out[13])
{
    char err[512];
    size_t size;
    char *source = read_whole_file(path, &size, err, sizeof err);
    if (!source) {
        log_error("%s", err);
        return -1;
    }
    char hex[65];
    sha256_hex(source, size, hex);
    memcpy(version_out, hex, 12);
    version_out[12] = '\0';

    lua_pushfstring(L, "@%s", path);
    /* Skip a "#!" first line, as the standalone interpreter does. */
    const char *start = source;
    if (size >= 2 && source[0] == '#' && source[1] == '!')
        start = source + strcspn(source, "\n");   /* keep the newline: line numbers hold */
    int status = luaL_loadbuffer(L, start, size - (size_t)(start - source),
                                 lua_tostring(L, -1));
    free(source);
    lua_remove(L, -2);
    if (status != 0) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (host_docall(L, 0, 1) != 0) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

/*
 * Validates the policy table on top of the stack (popped) and fills p with registry
 * references. Returns 0, or logs what is wrong and returns -1.
 */
static int take_policy_table(lua_State *L, const char *path, policy *p)
{
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int known = 0;
        for (const char *const *k = policy_keys; key && *k; k++)
            if (strcmp(*k, key) == 0)
                known = 1;
        if (!known) {
            if (key)
                log_error("%s: unknown key '%s' in the policy table "
                          "(allowed: tick, init, shutdown)", path, key);
            else
                log_error("%s: the policy table has a non-string key (%s); "
                          "allowed keys: tick, init, shutdown", path, luaL_typename(L, -1));
            lua_settop(L, t - 1);
            return -1;
        }
    }
    int refs[3] = {LUA_NOREF, LUA_NOREF, LUA_NOREF};
    for (int i = 0; i < 3; i++) {
        lua_getfield(L, t, policy_keys[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            if (i == 0) {
                log_error("%s: the policy table has no 'tick' function", path);
                goto fail;
            }
            continue;
        }
        if (!lua_isfunction(L, -1)) {
            log_error("%s: policy '%s' must be a function, got %s", path, policy_keys[i],
                      luaL_typename(L, -1));
            lua_pop(L, 1);
            goto fail;
        }
        refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, t - 1);
    p->tick_ref = refs[0];
    p->init_ref = refs[1];
    p->shutdown_ref = refs[2];
    return 0;
fail:
    for (int i = 0; i < 3; i++)
        luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
    lua_settop(L, t - 1);
    return -1;
}

static void release_policy(lua_State *L, policy *p)
{
    luaL_unref(L, LUA_REGISTRYINDEX, p->tick_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, p->init_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, p->shutdown_ref);
    p->tick_ref = p->init_ref = p->shutdown_ref = LUA_NOREF;
}

/* Turns the global guard on (1) or off (0): loreley.strict. */
static void set_global_guard(lua_State *L, int on)
{
    if (call_module_function(L, "loreley.strict", on ? "guard" : "unguard", 0, 0) != 0) {
        log_error("cannot %s the global guard: %s", on ? "install" : "remove",
                  lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

/* --- the Lua state ---------------------------------------------------------------------- */

/* package.path gets the policy's directory first, so a policy can require its own files. */
static void prepend_policy_dir(lua_State *L, const char *path)
{
    const char *slash = strrchr(path, '/');
    lua_getglobal(L, "package");
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path) + 1);
    else
        lua_pushliteral(L, "./");
    lua_pushliteral(L, "?.lua;");
    lua_getfield(L, -3, "path");
    lua_concat(L, 3);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

/* The global `arg`: arg[0] = the file, arg[1..n] = arguments after "--". */
static void push_args(lua_State *L, const host_options *o)
{
    lua_createtable(L, o->argc, 1);
    lua_pushstring(L, o->policy_path ? o->policy_path : "");
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < o->argc; i++) {
        lua_pushstring(L, o->argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/*
 * Loads the settings (loreley.settings.load). Leaves the settings table on the stack
 * and returns 0, or logs the problem and returns -1.
 */
static int load_settings(lua_State *L)
{
    if (call_module_function(L, "loreley.settings", "load", 0, 2) != 0) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (lua_isnil(L, -2)) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

static double settings_number(lua_State *L, int settings, const char *key, double def)
{
    lua_getfield(L, settings, key);
    double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

/* --- the host --------------------------------------------------------------------------- */

typedef struct host {
    lua_State *L;
    const host_options *options;
    policy policy;
    int ctx_ref;
    int settings_ref;
    long tick_count;
    long reload_count;
    long reload_failures;
    int monitor_ref;   /* loreley.monitor when the HTTP face runs, else LUA_NOREF */
} host;

/* Runs the optional hook (init or shutdown) with ctx. Returns 0 or -1 (logged). */
static int run_hook(host *h, int ref, const char *name)
{
    if (ref == LUA_NOREF)
        return 0;
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_ref);
    if (host_docall(L, 1, 0) != 0) {
        log_error("%s failed: %s", name, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

static void set_ctx_field_number(host *h, const char *key, double value)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->ctx_ref);
    lua_pushnumber(h->L, value);
    lua_setfield(h->L, -2, key);
    lua_pop(h->L, 1);
}

static void set_ctx_field_string(host *h, const char *key, const char *value)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->ctx_ref);
    lua_pushstring(h->L, value);
    lua_setfield(h->L, -2, key);
    lua_pop(h->L, 1);
}

/* SIGHUP: load the file again; swap only when it validates. */
static void reload_policy(host *h)
{
    lua_State *L = h->L;
    const char *path = h->options->policy_path;
    log_info("reloading policy %s", path);
    char version[13];
    set_global_guard(L, 0);
    int ok = run_policy_file(L, path, version) == 0;
    set_global_guard(L, 1);
    if (!ok) {
        log_error("policy reload failed; keeping the running policy (version %s)",
                  h->policy.version);
        goto failed;
    }
    if (!lua_istable(L, -1)) {
        log_error("%s: a policy must return a table with a tick function, got %s; "
                  "keeping the running policy", path, luaL_typename(L, -1));
        lua_pop(L, 1);
        goto failed;
    }
    policy fresh;
    if (take_policy_table(L, path, &fresh) != 0) {
        log_error("policy reload failed; keeping the running policy (version %s)",
                  h->policy.version);
        goto failed;
    }
    memcpy(fresh.version, version, sizeof version);
    release_policy(L, &h->policy);
    h->policy = fresh;
    h->reload_count++;
    set_ctx_field_string(h, "policy_version", fresh.version);
    set_ctx_field_number(h, "reloads", (double)h->reload_count);
    log_info("policy reloaded: %s (version %s)", path, fresh.version);
    return;
failed:
    h->reload_failures++;
    set_ctx_field_number(h, "reload_failures", (double)h->reload_failures);
}

/*
 * One tick. Returns 0 with *delay set (< 0 means "the poll interval") and *stop set
 * when the tick returned false; -1 when the tick raised (logged).
 */
static int run_tick(host *h, double *delay, int *stop)
{
    lua_State *L = h->L;
    h->tick_count++;
    double started = host_now();
    set_ctx_field_number(h, "tick", (double)h->tick_count);
    set_ctx_field_number(h, "tick_started", started);

    lua_rawgeti(L, LUA_REGISTRYINDEX, h->policy.tick_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_ref);
    int status = host_docall(L, 1, 1);
    double elapsed = host_now() - started;
    set_ctx_field_number(h, "last_tick_seconds", elapsed);
    *delay = -1;
    *stop = 0;
    if (status != 0) {
        log_error("tick %ld failed: %s", h->tick_count, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    int t = lua_type(L, -1);
    int rc = 0;
    if (t == LUA_TNUMBER && lua_tonumber(L, -1) >= 0 && isfinite(lua_tonumber(L, -1))) {
        *delay = lua_tonumber(L, -1);
    } else if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        *stop = 1;
    } else if (t != LUA_TNIL) {
        if (t == LUA_TNUMBER)
            log_error("tick %ld returned %g; expected a delay in seconds (>= 0), "
                      "nil or false", h->tick_count, lua_tonumber(L, -1));
        else
            log_error("tick %ld returned a %s; expected a delay in seconds, nil or false",
                      h->tick_count, luaL_typename(L, -1));
        rc = -1;
    }
    lua_pop(L, 1);
    return rc;
}

static double poll_interval(host *h)
{
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->settings_ref);
    double interval = settings_number(h->L, lua_gettop(h->L),
                                      "scheduler_poll_interval_seconds", 30.0);
    lua_pop(h->L, 1);
    return interval < 1.0 ? 1.0 : interval;   /* the contract's floor */
}

/* --- the HTTP face (loreley.monitor; docs/http.md) ---------------------------------------
 * Off unless --http or LORELEY_HTTP_LISTEN names an address, and only in daemon mode.
 * The server's threads never touch Lua: the loop hands events to loreley.monitor, which
 * publishes a snapshot after each tick and answers queued control requests between
 * ticks (a request wakes the sleep through host_request_service). */

/*
 * Starts the server when an address is configured. Returns HOST_EXIT_OK (started, or
 * nothing to start), HOST_EXIT_USAGE for an invalid address, HOST_EXIT_FAILURE when the
 * system refuses it (the port is in use): the message is logged.
 */
static int monitor_start(host *h)
{
    lua_State *L = h->L;
    const char *listen = h->options->http_listen;
    if (!listen) {
        /* The string stays alive: the settings table in the registry holds it. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, h->settings_ref);
        lua_getfield(L, -1, "loreley_http_listen");
        listen = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_pop(L, 2);
    }
    if (!listen || !*listen)
        return HOST_EXIT_OK;
#ifndef LORELEY_HTTP
    log_error("cannot serve HTTP on %s: this loreley-host was built without HTTP support "
              "(configure with -DLORELEY_HTTP=ON)", listen);
    return HOST_EXIT_USAGE;
#else
    lua_getglobal(L, "require");
    lua_pushliteral(L, "loreley.monitor");
    if (host_docall(L, 1, 1) != 0) {
        log_error("cannot load the HTTP face: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return HOST_EXIT_FAILURE;
    }
    lua_getfield(L, -1, "start");          /* stack: monitor start */
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_ref);
    lua_pushstring(L, listen);
    if (host_docall(L, 2, 3) != 0) {       /* stack: monitor error */
        log_error("cannot start the HTTP face: %s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return HOST_EXIT_FAILURE;
    }
    /* stack: monitor true|nil message kind */
    if (lua_isnil(L, -3)) {
        int invalid = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "invalid") == 0;
        log_error("%s", lua_tostring(L, -2));
        lua_pop(L, 4);
        return invalid ? HOST_EXIT_USAGE : HOST_EXIT_FAILURE;
    }
    lua_pop(L, 3);
    h->monitor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return HOST_EXIT_OK;
#endif
}

/* Calls monitor.<fn>(ctx, event, ok, wait) when the HTTP face runs; a failure is
 * logged. wait: seconds until the next tick (after "tick"), else 0. */
static void monitor_call(host *h, const char *fn, const char *event, int ok, double wait)
{
    if (h->monitor_ref == LUA_NOREF)
        return;
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->monitor_ref);
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_ref);
    lua_pushstring(L, event);
    lua_pushboolean(L, ok);
    lua_pushnumber(L, wait);
    if (host_docall(L, 4, 0) != 0) {
        log_error("HTTP face: %s(%s) failed: %s", fn, event, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

/* Events: "init", "reload", "request"; ticks go through monitor_tick. */
static void monitor_event(host *h, const char *event, int ok)
{
    monitor_call(h, "service", event, ok, 0);
}

/* After a tick: ok = it did not raise; wait = seconds until the next one. */
static void monitor_tick(host *h, int ok, double wait)
{
    monitor_call(h, "service", "tick", ok, wait);
}

static void monitor_stop(host *h)
{
    monitor_call(h, "stop", "stop", 1, 0);
    if (h->monitor_ref != LUA_NOREF) {
        luaL_unref(h->L, LUA_REGISTRYINDEX, h->monitor_ref);
        h->monitor_ref = LUA_NOREF;
    }
}

static int run_loop(host *h)
{
    int once = h->options->mode == HOST_MODE_ONCE;
    int rc = HOST_EXIT_OK;
    while (!host_stop_requested()) {
        if (host_take_reload_request()) {
            reload_policy(h);
            monitor_event(h, "reload", 1);
        }
        double delay;
        int stop;
        double started = host_now();
        int failed = run_tick(h, &delay, &stop) != 0;
        double interval = poll_interval(h);
        double elapsed = host_now() - started;
        if (failed && once)
            rc = HOST_EXIT_FAILURE;
        if (!once && elapsed > interval)
            log_warning("slow tick %ld: %.3f s, longer than the poll interval of %.3f s",
                        h->tick_count, elapsed, interval);
        double wait = once || stop ? 0 : delay >= 0 ? delay : interval - elapsed;
        double deadline = host_now() + (wait > 0 ? wait : 0);
        monitor_tick(h, !failed, wait);   /* its time comes out of the sleep */
        if (once || stop)
            break;
        for (;;) {
            double left = deadline - host_now();
            if (host_sleep(left, 1))
                break;
            if (host_stop_requested())
                break;
            if (host_take_reload_request()) {
                reload_policy(h);
                monitor_event(h, "reload", 1);
            }
            if (host_take_service_request())
                monitor_event(h, "request", 1);
        }
    }
    if (host_stop_requested())
        log_info("stop requested; shutting down");
    return rc;
}

/* Creates ctx = loreley.context.new{...} and keeps a reference. */
static int make_context(host *h)
{
    lua_State *L = h->L;
    const host_options *o = h->options;
    lua_createtable(L, 0, 9);
    lua_pushboolean(L, o->mode == HOST_MODE_ONCE);
    lua_setfield(L, -2, "once");
    push_args(L, o);
    lua_setfield(L, -2, "args");
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->settings_ref);
    lua_setfield(L, -2, "settings");
    lua_pushstring(L, o->policy_path);
    lua_setfield(L, -2, "policy_path");
    lua_pushstring(L, h->policy.version);
    lua_setfield(L, -2, "policy_version");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "tick");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "reloads");
    lua_pushnumber(L, 0);
    lua_setfield(L, -2, "reload_failures");
    if (call_module_function(L, "loreley.context", "new", 1, 1) != 0) {
        log_error("cannot create the policy context: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    h->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* Prints the resolved settings (secrets masked) for --check. */
static int print_settings(lua_State *L, int settings_ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, settings_ref);
    if (call_module_function(L, "loreley.settings", "describe", 1, 1) != 0) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    fputs(lua_tostring(L, -1), stdout);
    lua_pop(L, 1);
    return 0;
}

/* --init-db and --simulate run a Lua entry point: require(module).main(args, settings). */
static int run_lua_command(host *h, const char *module)
{
    lua_State *L = h->L;
    push_args(L, h->options);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->settings_ref);
    if (call_module_function(L, module, "main", 2, 1) != 0) {
        log_error("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return HOST_EXIT_FAILURE;
    }
    int rc = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : HOST_EXIT_OK;
    lua_pop(L, 1);
    return rc;
}

/* LORELEY_JIT: the trace compiler is off unless the setting turns it on. */
static void apply_jit_setting(lua_State *L, int settings)
{
    lua_getfield(L, settings, "loreley_jit");
    int on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | (on ? LUAJIT_MODE_ON : LUAJIT_MODE_OFF));
}

static int apply_log_settings(lua_State *L, int settings, const host_options *o)
{
    if (o->log_level)
        return 0;   /* the command line wins; main() already applied it */
    lua_getfield(L, settings, "log_level");
    log_level level;
    if (lua_isstring(L, -1) && log_parse_level(lua_tostring(L, -1), &level) == 0)
        log_set_level(level);
    lua_pop(L, 1);
    return 0;
}

static int host_run(host *h)
{
    lua_State *L = h->L;
    const host_options *o = h->options;

    luaL_openlibs(L);
    lmod_install(L);
    if (o->policy_path)
        prepend_policy_dir(L, o->policy_path);
    push_args(L, o);
    lua_setglobal(L, "arg");

    if (load_settings(L) != 0)
        return HOST_EXIT_USAGE;
    apply_log_settings(L, lua_gettop(L), o);
    apply_jit_setting(L, lua_gettop(L));
    h->settings_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    if (o->mode == HOST_MODE_INIT_DB)
        return run_lua_command(h, "loreley.schema");
    if (o->mode == HOST_MODE_SIMULATE)
        return run_lua_command(h, "loreley.lab");

    if (run_policy_file(L, o->policy_path, h->policy.version) != 0)
        return HOST_EXIT_FAILURE;
    if (!lua_istable(L, -1)) {
        if (o->mode == HOST_MODE_ONCE) {   /* a script: it has run to completion */
            lua_pop(L, 1);
            return HOST_EXIT_OK;
        }
        log_error("%s: a policy must return a table with a tick function, got %s",
                  o->policy_path, luaL_typename(L, -1));
        lua_pop(L, 1);
        return HOST_EXIT_FAILURE;
    }
    if (take_policy_table(L, o->policy_path, &h->policy) != 0)
        return HOST_EXIT_FAILURE;
    set_global_guard(L, 1);

    if (o->mode == HOST_MODE_CHECK) {
        if (print_settings(L, h->settings_ref) != 0)
            return HOST_EXIT_FAILURE;
        printf("policy %s: ok (version %s; tick%s%s)\n", o->policy_path, h->policy.version,
               h->policy.init_ref != LUA_NOREF ? ", init" : "",
               h->policy.shutdown_ref != LUA_NOREF ? ", shutdown" : "");
        return HOST_EXIT_OK;
    }

    if (make_context(h) != 0)
        return HOST_EXIT_FAILURE;
    log_debug("policy %s loaded (version %s)", o->policy_path, h->policy.version);
    if (o->mode == HOST_MODE_DAEMON) {
        int started = monitor_start(h);
        if (started != HOST_EXIT_OK)
            return started;
    }
    if (run_hook(h, h->policy.init_ref, "init") != 0) {
        monitor_stop(h);
        return HOST_EXIT_FAILURE;
    }
    monitor_event(h, "init", 1);
    int rc = run_loop(h);
    monitor_stop(h);
    if (run_hook(h, h->policy.shutdown_ref, "shutdown") != 0)
        rc = HOST_EXIT_FAILURE;
    return rc;
}

int host_main(const host_options *options)
{
    host h;
    memset(&h, 0, sizeof h);
    h.options = options;
    h.policy.tick_ref = h.policy.init_ref = h.policy.shutdown_ref = LUA_NOREF;
    h.ctx_ref = h.settings_ref = h.monitor_ref = LUA_NOREF;
    host_install_signals();
    /* Daemons started by the host (local servers) are reparented to it when their
     * launcher exits, so their exits can be reaped (loreley.sys) even under a pid 1
     * that never reaps, as in many containers. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    h.L = luaL_newstate();
    if (!h.L) {
        log_error("cannot create the Lua state (out of memory)");
        return HOST_EXIT_FAILURE;
    }
    int rc = host_run(&h);
    lua_close(h.L);   /* runs __gc: connections close, local servers stop */
    return rc;
}
